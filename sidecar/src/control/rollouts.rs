//! The decision reporter for staged rollouts: every `--decision-report-interval`
//! it drains [`Decisions`] and, when there is something to report, sends one
//! `Rollouts.ReportDecisions` call over the shared connection
//! ([`super::connection`]). A report the control plane refuses (a non-empty
//! `error`) or that fails (no connection, a status) is restored into the
//! accumulator, within its bounds, and goes out with the next one: counts are
//! deltas since the last accepted report. Failures are logged at the first
//! one and when reports are accepted again, not at every interval.

use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::v1::Node;
use tollgate_proto::v1::rollouts_client::RolloutsClient;

use super::connection::{Connection, Unreachable};
use super::stream::chain;
use crate::metrics::Metrics;
use crate::rollout_report::{Decisions, unix_ms};

/// The interval's default (`--decision-report-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The longest a report call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends decision reports (see the module doc).
#[derive(Debug)]
pub struct Reporter {
    node: Node,
    decisions: Arc<Decisions>,
    metrics: Arc<Metrics>,
    every: Duration,
    /// Whether the last report was not accepted (to log a run of failures once).
    failing: bool,
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Nothing was decided since the last report: none sent.
    Nothing,
    /// The control plane accepted it.
    Accepted,
    /// The control plane answered with an error; the counts were restored.
    Refused,
    /// It could not be delivered; the counts were restored.
    Failed,
}

impl Reporter {
    /// A reporter speaking for `node`, every `every` (at least 100 ms).
    pub fn new(
        node: Node,
        decisions: Arc<Decisions>,
        metrics: Arc<Metrics>,
        every: Duration,
    ) -> Self {
        Self {
            node,
            decisions,
            metrics,
            every: every.max(Duration::from_millis(100)),
            failing: false,
        }
    }

    /// Reports every interval; returns only when the task is dropped.
    pub async fn run(mut self, connection: Arc<Connection>) {
        let mut interval = tokio::time::interval(self.every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: nothing is decided yet.
        interval.tick().await;
        loop {
            interval.tick().await;
            self.report(&connection).await;
        }
    }

    /// Sends one report, if there is anything to report.
    pub async fn report(&mut self, connection: &Connection) -> Sent {
        let pending = self.decisions.drain();
        if pending.is_empty() {
            return Sent::Nothing;
        }
        let mut report = pending.report(unix_ms());
        report.node = Some(self.node.clone());
        let failure = match connection.link().await {
            Err(Unreachable::Setup(e)) => Some((Sent::Failed, e)),
            Err(Unreachable::Connect(e)) => Some((Sent::Failed, chain(&e))),
            Ok(link) => {
                let mut grpc = RolloutsClient::new(link.channel());
                match tokio::time::timeout(CALL_TIMEOUT, grpc.report_decisions(report)).await {
                    Ok(Ok(ack)) if ack.get_ref().error.is_empty() => None,
                    Ok(Ok(ack)) => Some((Sent::Refused, ack.into_inner().error)),
                    Ok(Err(status)) => {
                        // A transport failure: the next call dials afresh.
                        if std::error::Error::source(&status).is_some() {
                            connection.broken(&link).await;
                        }
                        Some((
                            Sent::Failed,
                            format!("{:?}: {}", status.code(), status.message()),
                        ))
                    }
                    Err(_) => Some((
                        Sent::Failed,
                        format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
                    )),
                }
            }
        };
        let Some((sent, why)) = failure else {
            self.metrics.decision_report("accepted");
            if std::mem::take(&mut self.failing) {
                tracing::info!(
                    control_plane = %connection.url(),
                    "decision reports are accepted again"
                );
            }
            return Sent::Accepted;
        };
        self.metrics.decision_report(if sent == Sent::Refused {
            "refused"
        } else {
            "failed"
        });
        self.decisions.restore(pending);
        if !std::mem::replace(&mut self.failing, true) {
            tracing::warn!(
                control_plane = %connection.url(),
                "a decision report for staged rollouts was not {}: {why}; its counts are kept \
                 (within their bounds) and sent with the next report",
                if sent == Sent::Refused { "accepted" } else { "delivered" }
            );
        }
        sent
    }
}

#[cfg(test)]
#[path = "rollouts_tests.rs"]
mod tests;
