//! Staged rollouts of a policy version: which version (and which shadow)
//! each node should run, and how a rollout moves through its steps.
//!
//! A pure core: no I/O, no async, no clock. The caller passes `now` (Unix
//! milliseconds) and what it observed of the nodes (`NodeView`) and of
//! their decisions (`DenyRate`); the core answers with desired versions and
//! state changes, which the caller stores and distributes.
//!
//! - `placement`: a node's stable place in [0, 1) and each step's cut.
//! - `gates`: the ACK gate and the deny-rate gate (pass / fail / inconclusive).
//! - `machine`: the step state machine and the operator's actions.
//! - `record`: the rollout as stored (JSON), so a restart resumes it.
//!
//! Versions are whole bundles. A rollout moves the nodes in its scope
//! (those its selector matches) from the version they were sent before
//! (`from`) to `version`; nodes outside the scope keep the version every
//! node is sent without a rollout. So one rollout is active at a time: two
//! would each carry a whole bundle and the later would undo the earlier.
//! `--server NAME` names what the rollout changes (the version differs from
//! `from` in that server's section) for the operator and the audit trail.

pub mod gates;
pub mod machine;
pub mod placement;
pub mod record;

use std::collections::BTreeMap;

pub use gates::{Counts, DenyRate, Gate, NodeView};
pub use machine::ActionError;

/// What a node should run: a live version and, in a shadow phase, a second
/// version decided beside it but not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    pub version: u64,
    pub shadow: Option<u64>,
}

impl Desired {
    pub fn live(version: u64) -> Self {
        Self {
            version,
            shadow: None,
        }
    }
}

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// `r1`, `r2`…: unique in the store.
    pub id: String,
    /// The version rolled out.
    pub version: u64,
    /// The version the nodes in scope were sent before.
    pub from: u64,
    /// The server whose section the version changes ("" for any).
    pub server: String,
    /// `key=value` labels a node must all carry to be in scope.
    pub selector: BTreeMap<String, String>,
    /// Percent of the nodes in scope per step, ascending, the last 100.
    pub steps: Vec<f64>,
    /// How long each step holds after its nodes ACKed, gates watched.
    pub bake_ms: i64,
    /// How long each step's new nodes run the version as a shadow first;
    /// 0: no shadow phase.
    pub shadow_ms: i64,
    /// The deny-rate increase allowed (0.05: five points).
    pub max_deny_rate_increase: f64,
    /// How long a step's nodes have to ACK.
    pub ack_timeout_ms: i64,
    /// Below this many calls the deny-rate gate is inconclusive.
    pub min_calls: u64,
    /// Who started it (the token's name).
    pub started_by: String,
}

/// Why a definition cannot be started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DefinitionError {
    #[error(
        "steps must be ascending percentages above 0 ending at 100 (e.g. 1,10,50,100); got {0}"
    )]
    Steps(String),
    #[error("version {0} is what the nodes already run; push a new version first")]
    SameVersion(u64),
    #[error("--max-deny-rate-increase must be between 0 and 1; got {0}")]
    Margin(f64),
    #[error("at most {max} steps; got {got}")]
    TooManySteps { max: usize, got: usize },
}

/// Steps a rollout may have.
pub const MAX_STEPS: usize = 20;

impl Definition {
    /// Checks what an operator gave, before anything is stored.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let shown = || {
            self.steps
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if self.steps.len() > MAX_STEPS {
            return Err(DefinitionError::TooManySteps {
                max: MAX_STEPS,
                got: self.steps.len(),
            });
        }
        let ascending = self.steps.windows(2).all(|w| w[0] < w[1]);
        let bounded = self.steps.iter().all(|s| *s > 0.0 && *s <= 100.0);
        if self.steps.last() != Some(&100.0) || !ascending || !bounded {
            return Err(DefinitionError::Steps(shown()));
        }
        if self.version == self.from {
            return Err(DefinitionError::SameVersion(self.version));
        }
        if !(0.0..=1.0).contains(&self.max_deny_rate_increase) {
            return Err(DefinitionError::Margin(self.max_deny_rate_increase));
        }
        Ok(())
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The step's new nodes decide with the version beside their live one.
    Shadow,
    /// The step's nodes enforce the version.
    Enforcing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Shadow => "Shadow",
            Phase::Enforcing => "Enforcing",
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Progressing,
    Paused {
        reason: String,
    },
    Completed,
    Aborted,
    /// Every node returns to the version it ran before.
    RolledBack,
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Progressing => "Progressing",
            State::Paused { .. } => "Paused",
            State::Completed => "Completed",
            State::Aborted => "Aborted",
            State::RolledBack => "RolledBack",
        }
    }

    /// Progressing or Paused: it still moves nodes, and no push or other
    /// rollout may start.
    pub fn active(&self) -> bool {
        matches!(self, State::Progressing | State::Paused { .. })
    }
}

/// One rollout: its definition and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub def: Definition,
    pub state: State,
    /// Index into `def.steps`.
    pub step: usize,
    pub phase: Phase,
    pub started_ms: i64,
    /// When the current phase began (its ACK timeout counts from here).
    pub phase_started_ms: i64,
    /// When every node of the current phase had ACKed (its bake or shadow
    /// period counts from here).
    pub acked_ms: Option<i64>,
    pub updated_ms: i64,
    /// The cut of every step reached, by step.
    pub cuts: Vec<f64>,
    /// Per node given the new version: the live version it ran before, to
    /// which a rollback returns it.
    pub previous: BTreeMap<String, u64>,
}

impl Rollout {
    /// Whether a node with `labels` is in scope.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        placement::selects(&self.def.selector, labels)
    }

    /// What node `id` (with `labels`) should run; `None` when this rollout
    /// does not govern it (out of scope), so it runs what every node is sent.
    pub fn desired(&self, id: &str, labels: &BTreeMap<String, String>) -> Option<Desired> {
        if !self.selects(labels) {
            return None;
        }
        let def = &self.def;
        match &self.state {
            State::Aborted => Some(Desired::live(def.from)),
            State::Completed => Some(Desired::live(def.version)),
            State::RolledBack => Some(Desired::live(
                self.previous.get(id).copied().unwrap_or(def.from),
            )),
            State::Progressing | State::Paused { .. } => {
                let place = placement::place(&def.id, id);
                let earlier = self
                    .step
                    .checked_sub(1)
                    .and_then(|s| self.cuts.get(s))
                    .is_some_and(|c| placement::chosen(place, *c));
                let now = self
                    .cuts
                    .get(self.step)
                    .is_some_and(|c| placement::chosen(place, *c));
                Some(if earlier || (now && self.phase == Phase::Enforcing) {
                    Desired::live(def.version)
                } else if now {
                    Desired {
                        version: def.from,
                        shadow: Some(def.version),
                    }
                } else {
                    Desired::live(def.from)
                })
            }
        }
    }

    /// Whether node `id` decides with the new version now (enforced, or as
    /// a shadow): the nodes the gates judge.
    pub fn chosen(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.desired(id, labels)
            .is_some_and(|d| d.version == self.def.version || d.shadow == Some(self.def.version))
    }

    /// `step k of n`, 1-based.
    pub fn step_of(&self) -> (usize, usize) {
        (self.step + 1, self.def.steps.len())
    }
}
