//! `Rollouts.ReportDecisions`: what each node decided, per policy version,
//! summed per rollout for its deny-rate gate and its "would change" report.
//!
//! Every byte is a node's: a report is at most [`MAX_REPORT_BYTES`], its
//! lists are bounded, strings are cut, and what is kept per rollout is
//! bounded (differences by key, samples by count) however many reports come.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tollgate_proto::v1::rollouts_server::Rollouts as RolloutsRpc;
use tollgate_proto::v1::{DecisionReport, DecisionReportAck, ShadowDifference, ShadowSample};
use tonic::{Request, Response, Status};

use super::super::ControlPlane;
use crate::rollout::{Counts, Phase, Rollout};

/// The largest report accepted (the gRPC decoder refuses larger).
pub const MAX_REPORT_BYTES: usize = 1 << 20;
/// Versions one report may count.
const MAX_VERSIONS_PER_REPORT: usize = 64;
/// Differences one report may carry.
const MAX_DIFFERENCES_PER_REPORT: usize = 512;
/// Samples one report may carry; more are refused.
pub const MAX_SAMPLES_PER_REPORT: usize = 20;
/// Samples kept per rollout, newest.
pub const SAMPLES_KEPT: usize = 200;
/// Distinct (server, tool, live, shadow) keys kept per rollout; later keys
/// are counted under `(other)`.
pub const DIFFERENCE_KEYS_KEPT: usize = 1000;
/// The longest string kept from a report (names, rule pointers, reasons).
const MAX_STRING: usize = 256;

/// One rollout's sums.
#[derive(Debug, Default)]
pub struct Tally {
    /// The new version's counts in the current phase (shadow decisions in
    /// a shadow phase, enforced ones otherwise).
    pub new: Counts,
    /// The old version's enforced counts since the rollout began.
    pub old: Counts,
    pub differences: BTreeMap<(String, String, String, String), u64>,
    pub samples: VecDeque<ShadowSample>,
    /// The (step, phase) `new` counts belong to.
    at: Option<(usize, Phase)>,
}

impl Tally {
    /// Adds a report's counts for `rollout`.
    pub fn add(&mut self, rollout: &Rollout, report: &DecisionReport) {
        let here = (rollout.step, rollout.phase);
        if self.at != Some(here) {
            self.at = Some(here);
            self.new = Counts::default();
        }
        let shadow_phase = rollout.phase == Phase::Shadow;
        for v in &report.versions {
            if v.version == rollout.def.version && v.shadow == shadow_phase {
                self.new.add(v.calls, v.denied);
            } else if v.version == rollout.def.from && !v.shadow {
                self.old.add(v.calls, v.denied);
            }
        }
        for d in &report.differences {
            let mut key = (cut(&d.server), cut(&d.tool), cut(&d.live), cut(&d.shadow));
            if !self.differences.contains_key(&key)
                && self.differences.len() >= DIFFERENCE_KEYS_KEPT
            {
                key = (
                    "(other)".to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                );
            }
            let n = self.differences.entry(key).or_default();
            *n = n.saturating_add(d.count);
        }
        for s in &report.samples {
            let mut s = s.clone();
            for f in [
                &mut s.server,
                &mut s.tool,
                &mut s.grant,
                &mut s.live,
                &mut s.shadow,
                &mut s.live_rule,
                &mut s.shadow_rule,
                &mut s.shadow_reason,
                &mut s.arguments_sha256,
            ] {
                *f = cut(f);
            }
            self.samples.push_back(s);
            while self.samples.len() > SAMPLES_KEPT {
                self.samples.pop_front();
            }
        }
    }

    /// The "would change" report: counts per key, most first.
    pub fn differences(&self) -> Vec<ShadowDifference> {
        let mut out: Vec<ShadowDifference> = self
            .differences
            .iter()
            .map(|((server, tool, live, shadow), count)| ShadowDifference {
                server: server.clone(),
                tool: tool.clone(),
                live: live.clone(),
                shadow: shadow.clone(),
                count: *count,
            })
            .collect();
        out.sort_by_key(|d| std::cmp::Reverse(d.count));
        out
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_STRING {
        return s.to_owned();
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Why a report is refused, if it is.
fn refuse(report: &DecisionReport) -> Option<String> {
    if report.versions.len() > MAX_VERSIONS_PER_REPORT {
        return Some(format!(
            "{} version counts in one report; at most {MAX_VERSIONS_PER_REPORT}",
            report.versions.len()
        ));
    }
    if report.differences.len() > MAX_DIFFERENCES_PER_REPORT {
        return Some(format!(
            "{} differences in one report; at most {MAX_DIFFERENCES_PER_REPORT}",
            report.differences.len()
        ));
    }
    if report.samples.len() > MAX_SAMPLES_PER_REPORT {
        return Some(format!(
            "{} samples in one report; at most {MAX_SAMPLES_PER_REPORT}",
            report.samples.len()
        ));
    }
    None
}

pub struct ReportService {
    cp: Arc<ControlPlane>,
}

impl ReportService {
    pub fn new(cp: Arc<ControlPlane>) -> Self {
        Self { cp }
    }
}

#[tonic::async_trait]
impl RolloutsRpc for ReportService {
    async fn report_decisions(
        &self,
        request: Request<DecisionReport>,
    ) -> Result<Response<DecisionReportAck>, Status> {
        let certs = request.peer_certs();
        let mut report = request.into_inner();
        let (node, _) =
            self.cp
                .admit_node("rollouts", "decision report", certs, report.node.as_ref())?;
        report.node = Some(node);
        if let Some(error) = refuse(&report) {
            return Ok(Response::new(DecisionReportAck { error }));
        }
        self.cp.rollouts.report(&report);
        Ok(Response::new(DecisionReportAck::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Definition;
    use tollgate_proto::v1::VersionCounts;

    fn rollout() -> Rollout {
        let def = Definition {
            id: "r1".to_owned(),
            version: 2,
            from: 1,
            server: String::new(),
            selector: Default::default(),
            steps: vec![10.0, 100.0],
            bake_ms: 1,
            shadow_ms: 1,
            max_deny_rate_increase: 0.05,
            ack_timeout_ms: 1,
            min_calls: 0,
            started_by: "t".to_owned(),
        };
        Rollout::start(def, 0, &[])
    }

    #[test]
    fn reports_sum_per_phase_and_what_is_kept_is_bounded() {
        let r = rollout();
        let mut t = Tally::default();
        let counts = |version, shadow, calls, denied| VersionCounts {
            version,
            shadow,
            calls,
            denied,
            ..VersionCounts::default()
        };
        let many = DecisionReport {
            versions: vec![
                counts(2, true, 10, 4),
                counts(1, false, 30, 3),
                counts(2, false, 5, 5),
            ],
            differences: (0..DIFFERENCE_KEYS_KEPT + 5)
                .map(|i| ShadowDifference {
                    server: "s".to_owned(),
                    tool: format!("t{i}"),
                    live: "allow".to_owned(),
                    shadow: "deny".to_owned(),
                    count: 1,
                })
                .collect(),
            samples: vec![ShadowSample::default(); SAMPLES_KEPT + 1],
            ..DecisionReport::default()
        };
        t.add(&r, &many);
        assert_eq!(
            t.new,
            Counts {
                calls: 10,
                denied: 4
            },
            "shadow counts in the shadow phase"
        );
        assert_eq!(
            t.old,
            Counts {
                calls: 30,
                denied: 3
            }
        );
        assert_eq!(
            t.differences.len(),
            DIFFERENCE_KEYS_KEPT + 1,
            "the rest under (other)"
        );
        assert_eq!(t.samples.len(), SAMPLES_KEPT);
        assert!(refuse(&many).is_some_and(|e| e.contains("differences")));
        let samples = DecisionReport {
            samples: vec![ShadowSample::default(); MAX_SAMPLES_PER_REPORT + 1],
            ..DecisionReport::default()
        };
        assert!(refuse(&samples).is_some_and(|e| e.contains("21 samples")));
        let mut next = r.clone();
        next.phase = Phase::Enforcing;
        t.add(&next, &DecisionReport::default());
        assert_eq!(t.new, Counts::default(), "a new phase counts afresh");
    }
}
