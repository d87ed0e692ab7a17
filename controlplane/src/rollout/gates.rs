//! A step's gates: every chosen node ACKed in time and none refused, and
//! the new version's deny rate has not risen more than the margin.
//!
//! Gates are values computed from what the caller observed; deciding what a
//! gate's outcome does to the rollout is the state machine's (`machine.rs`).

use super::Desired;

/// What a gate says.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Pass,
    Fail(String),
    /// Too little to judge yet.
    Inconclusive(String),
}

/// One node in scope as the caller sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub connected: bool,
    /// What it last ACKed (live and shadow versions); `None`: nothing yet.
    pub runs: Option<Desired>,
    /// The live version it reports running (ACKed, or reported on connect).
    pub applied: u64,
    /// Its latest refusal: the version refused and the error.
    pub refused: Option<(u64, String)>,
}

/// The ACK gate over the nodes that should run `want` now: fails on the
/// first refusal, or, once `waited_ms ≥ timeout_ms`, on the first
/// connected node still not running it; inconclusive while some are
/// pending; passes when every connected one runs it. Disconnected nodes
/// run nothing and are not waited for.
pub fn acks<'a>(
    nodes: impl IntoIterator<Item = (&'a NodeView, Desired)>,
    waited_ms: i64,
    timeout_ms: i64,
) -> Gate {
    let mut pending: Vec<&str> = Vec::new();
    for (node, want) in nodes {
        if let Some((version, error)) = &node.refused
            && (*version == want.version || Some(*version) == want.shadow)
        {
            return Gate::Fail(format!(
                "node {} refused version {version}: {error}",
                node.id
            ));
        }
        if node.connected && node.runs != Some(want) {
            pending.push(&node.id);
        }
    }
    if pending.is_empty() {
        return Gate::Pass;
    }
    let list = pending.join(", ");
    if waited_ms >= timeout_ms {
        Gate::Fail(format!(
            "node(s) {list} did not ACK within {}s",
            timeout_ms / 1000
        ))
    } else {
        Gate::Inconclusive(format!("waiting for the ACK of {list}"))
    }
}

/// Decision counts of one version over some nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub denied: u64,
}

impl Counts {
    pub fn add(&mut self, calls: u64, denied: u64) {
        self.calls = self.calls.saturating_add(calls);
        self.denied = self.denied.saturating_add(denied.min(calls));
    }

    /// Denied per call; 0 without calls.
    pub fn rate(self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.denied as f64 / self.calls as f64
        }
    }
}

/// The deny-rate gate's values, as `rollout status` shows them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenyRate {
    /// The new version on the chosen nodes (shadow decisions in the shadow
    /// phase).
    pub new: Counts,
    /// The old version on the nodes running it.
    pub old: Counts,
    pub margin: f64,
    /// Below this many calls on either side the gate is inconclusive.
    pub min_calls: u64,
}

impl DenyRate {
    pub fn increase(&self) -> f64 {
        self.new.rate() - self.old.rate()
    }

    /// Fails when the increase exceeds the margin (as soon as there are
    /// `min_calls` new calls, whatever the old side); inconclusive with too
    /// few calls on either side.
    pub fn gate(&self) -> Gate {
        let desc = format!(
            "deny rate {:.3} ({}/{}) on the new version vs {:.3} ({}/{}) on the old: +{:.3}, \
             margin {:.3}",
            self.new.rate(),
            self.new.denied,
            self.new.calls,
            self.old.rate(),
            self.old.denied,
            self.old.calls,
            self.increase(),
            self.margin
        );
        if self.new.calls < self.min_calls {
            return Gate::Inconclusive(format!(
                "too little traffic on the new version ({} of {} calls needed)",
                self.new.calls, self.min_calls
            ));
        }
        if self.increase() > self.margin {
            return Gate::Fail(desc);
        }
        if self.old.calls < self.min_calls {
            return Gate::Inconclusive(format!(
                "too little traffic on the old version ({} of {} calls needed)",
                self.old.calls, self.min_calls
            ));
        }
        Gate::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, runs: Option<u64>, refused: Option<u64>) -> NodeView {
        NodeView {
            id: id.to_owned(),
            labels: Default::default(),
            connected: true,
            runs: runs.map(Desired::live),
            applied: runs.unwrap_or(0),
            refused: refused.map(|v| (v, "bad bundle".to_owned())),
        }
    }

    #[test]
    fn the_ack_gate_passes_waits_and_fails() {
        let a = node("a", Some(2), None);
        let b = node("b", Some(1), None);
        let want = Desired::live(2);
        assert_eq!(acks([(&a, want)], 0, 1000), Gate::Pass);
        assert!(
            matches!(acks([(&a, want), (&b, want)], 999, 1000), Gate::Inconclusive(m) if m.contains('b'))
        );
        assert!(
            matches!(acks([(&a, want), (&b, want)], 1000, 1000), Gate::Fail(m) if m.contains("node(s) b did not ACK"))
        );
        let c = node("c", Some(1), Some(2));
        assert!(
            matches!(acks([(&a, want), (&c, want)], 0, 1000), Gate::Fail(m) if m.contains("node c refused version 2"))
        );
        let mut gone = node("d", None, None);
        gone.connected = false;
        assert_eq!(acks([(&a, want), (&gone, want)], 5000, 1000), Gate::Pass);
    }

    fn rate(new: (u64, u64), old: (u64, u64)) -> DenyRate {
        DenyRate {
            new: Counts {
                calls: new.0,
                denied: new.1,
            },
            old: Counts {
                calls: old.0,
                denied: old.1,
            },
            margin: 0.05,
            min_calls: 20,
        }
    }

    #[test]
    fn the_deny_rate_gate_passes_fails_and_is_inconclusive() {
        assert_eq!(rate((100, 6), (100, 2)).gate(), Gate::Pass);
        assert!(matches!(rate((100, 10), (100, 2)).gate(), Gate::Fail(m) if m.contains("+0.080")));
        assert!(
            matches!(rate((19, 19), (100, 0)).gate(), Gate::Inconclusive(m) if m.contains("new version"))
        );
        assert!(
            matches!(rate((40, 20), (0, 0)).gate(), Gate::Fail(_)),
            "a clear rise fails without old traffic"
        );
        assert!(
            matches!(rate((40, 0), (5, 0)).gate(), Gate::Inconclusive(m) if m.contains("old version"))
        );
        let none = DenyRate {
            min_calls: 0,
            ..rate((0, 0), (0, 0))
        };
        assert_eq!(
            none.gate(),
            Gate::Pass,
            "no traffic required: no traffic passes"
        );
    }
}
