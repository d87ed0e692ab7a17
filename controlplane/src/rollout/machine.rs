//! The step state machine: a rollout starts at step 1 (in its shadow phase
//! when it has one), waits for the step's nodes to ACK, holds for the bake
//! (or shadow) period with its gates watched, then moves on — or pauses,
//! naming why. And the operator's actions: pause, resume, promote, abort,
//! rollback.
//!
//! `tick` is called whenever something changed (an ACK, a NACK, a report, a
//! node joining) and on a timer; it is idempotent for a given `now` and
//! observation.

use super::gates::{self, DenyRate, Gate, NodeView};
use super::placement;
use super::{Definition, Phase, Rollout, State};

/// Why an operator's action does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is {state}; {action} applies to {applies}")]
pub struct ActionError {
    pub id: String,
    pub state: &'static str,
    pub action: &'static str,
    pub applies: &'static str,
}

impl Rollout {
    /// Starts `def` at `now`, choosing step 1's nodes among `nodes` (the
    /// nodes known now, in scope or not).
    pub fn start(def: Definition, now: i64, nodes: &[NodeView]) -> Self {
        let phase = first_phase(&def);
        let mut r = Self {
            def,
            state: State::Progressing,
            step: 0,
            phase,
            started_ms: now,
            phase_started_ms: now,
            acked_ms: None,
            updated_ms: now,
            cuts: Vec::new(),
            previous: Default::default(),
        };
        r.cut_step(nodes);
        r.remember_previous(nodes);
        r
    }

    fn cut_step(&mut self, nodes: &[NodeView]) {
        let known: Vec<&str> = nodes
            .iter()
            .filter(|n| self.selects(&n.labels))
            .map(|n| n.id.as_str())
            .collect();
        let cut = placement::cut(&self.def.id, self.def.steps[self.step], &known);
        self.cuts.truncate(self.step);
        self.cuts.push(cut);
    }

    /// Records, for every node about to be given the new version, the
    /// version it runs now, once.
    fn remember_previous(&mut self, nodes: &[NodeView]) -> bool {
        let mut changed = false;
        for n in nodes {
            if self.previous.contains_key(&n.id) || !self.chosen(&n.id, &n.labels) {
                continue;
            }
            let before = if n.applied == 0 || n.applied == self.def.version {
                self.def.from
            } else {
                n.applied
            };
            self.previous.insert(n.id.clone(), before);
            changed = true;
        }
        changed
    }

    /// Moves the rollout on at `now` given the nodes known (`nodes`) and the
    /// deny-rate values of the current phase (`rate`). Returns whether the
    /// rollout changed (and should be stored).
    pub fn tick(&mut self, now: i64, nodes: &[NodeView], rate: &DenyRate) -> bool {
        let mut changed = self.remember_previous(nodes);
        if self.state != State::Progressing {
            return changed;
        }
        let chosen = nodes
            .iter()
            .filter_map(|n| self.desired(&n.id, &n.labels).map(|d| (n, d)))
            .filter(|(n, _)| self.chosen(&n.id, &n.labels));
        let waited = now.saturating_sub(self.phase_started_ms);
        match gates::acks(chosen, waited, self.def.ack_timeout_ms) {
            Gate::Fail(why) => {
                self.pause_at(now, why);
                return true;
            }
            Gate::Inconclusive(_) => return changed,
            Gate::Pass => {}
        }
        let acked = match self.acked_ms {
            Some(at) => at,
            None => {
                self.acked_ms = Some(now);
                self.updated_ms = now;
                changed = true;
                now
            }
        };
        let hold = match self.phase {
            Phase::Shadow => self.def.shadow_ms,
            Phase::Enforcing => self.def.bake_ms,
        };
        let held = now.saturating_sub(acked) >= hold;
        match rate.gate() {
            Gate::Fail(why) => {
                self.pause_at(now, why);
                true
            }
            Gate::Inconclusive(why) if held => {
                self.pause_at(now, format!("{why} after {}s", hold / 1000));
                true
            }
            Gate::Pass if held => {
                self.advance(now, nodes);
                true
            }
            _ => changed,
        }
    }

    fn pause_at(&mut self, now: i64, why: String) {
        let (k, n) = self.step_of();
        self.state = State::Paused {
            reason: format!("step {k} of {n} ({}): {why}", self.phase.as_str()),
        };
        self.updated_ms = now;
    }

    /// The next phase or step, or Completed after the last.
    fn advance(&mut self, now: i64, nodes: &[NodeView]) {
        self.state = State::Progressing;
        self.phase_started_ms = now;
        self.acked_ms = None;
        self.updated_ms = now;
        if self.phase == Phase::Shadow {
            self.phase = Phase::Enforcing;
        } else if self.step + 1 < self.def.steps.len() {
            self.step += 1;
            self.phase = first_phase(&self.def);
            self.cut_step(nodes);
        } else {
            self.state = State::Completed;
        }
        self.remember_previous(nodes);
    }

    fn refuse(&self, action: &'static str, applies: &'static str) -> ActionError {
        ActionError {
            id: self.def.id.clone(),
            state: self.state.name(),
            action,
            applies,
        }
    }

    /// An operator pauses a Progressing rollout.
    pub fn pause(&mut self, now: i64, by: &str) -> Result<(), ActionError> {
        if self.state != State::Progressing {
            return Err(self.refuse("pause", "a Progressing rollout"));
        }
        self.pause_at(now, format!("paused by {by}"));
        Ok(())
    }

    /// An operator resumes a Paused rollout: the current phase starts over
    /// (its nodes have a new ACK timeout, its bake is timed again).
    pub fn resume(&mut self, now: i64) -> Result<(), ActionError> {
        if !matches!(self.state, State::Paused { .. }) {
            return Err(self.refuse("resume", "a Paused rollout"));
        }
        self.state = State::Progressing;
        self.phase_started_ms = now;
        self.acked_ms = None;
        self.updated_ms = now;
        Ok(())
    }

    /// An operator passes the current phase without its gates.
    pub fn promote(&mut self, now: i64, nodes: &[NodeView]) -> Result<(), ActionError> {
        if !self.state.active() {
            return Err(self.refuse("promote", "a Progressing or Paused rollout"));
        }
        self.advance(now, nodes);
        Ok(())
    }

    /// An operator stops the rollout: the nodes in scope return to `from`.
    pub fn abort(&mut self, now: i64) -> Result<(), ActionError> {
        if !self.state.active() {
            return Err(self.refuse("abort", "a Progressing or Paused rollout"));
        }
        self.state = State::Aborted;
        self.updated_ms = now;
        Ok(())
    }

    /// An operator returns every node the rollout gave the version to, to
    /// the version it ran before.
    pub fn rollback(&mut self, now: i64) -> Result<(), ActionError> {
        if !(self.state.active() || self.state == State::Completed) {
            return Err(self.refuse("rollback", "a Progressing, Paused or Completed rollout"));
        }
        self.state = State::RolledBack;
        self.updated_ms = now;
        Ok(())
    }
}

fn first_phase(def: &Definition) -> Phase {
    if def.shadow_ms > 0 {
        Phase::Shadow
    } else {
        Phase::Enforcing
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
