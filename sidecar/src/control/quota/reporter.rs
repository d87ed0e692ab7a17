//! The quota stream's task: [`Reporter`] keeps `StreamQuota` open over the
//! shared connection, sends what [`FleetCounters`] reports (every refresh
//! interval, early when a bucket is first hit or its lease runs dry, and when
//! a new bundle names new buckets) and hands it the leases that come back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tollgate_proto::MAX_QUOTA_MESSAGE_BYTES;
use tollgate_proto::v1::quota_client::QuotaClient;
use tollgate_proto::v1::{Node, QuotaReport};
use tonic::transport::Channel;

use super::leases::{FleetCounters, policy_version};
use super::{EARLY_REPORT_GAP, wire};
use crate::control::backoff::{Backoff, BackoffConfig};
use crate::control::connection::Connection;
use crate::control::stream::{ControlStream, End, Recovery, classify, keep_open, requests};
use crate::metrics::Metrics;
use crate::snapshot::LivePolicy;

/// How often the reporter looks for a new bundle in force.
const POLICY_WATCH: Duration = Duration::from_millis(100);
/// Reports whose send time is remembered, to time the leases answering them
/// (a sidecar with many buckets sends several reports at once).
const SENT_REMEMBERED: usize = 256;

/// Keeps the quota stream open (see the module doc).
#[derive(Debug)]
pub struct Reporter {
    /// For logs: where the stream goes.
    control_plane: String,
    node: Node,
    counters: Arc<FleetCounters>,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    /// The servers this sidecar serves, and its grant when the bundle has none.
    servers: Vec<String>,
    node_grant: Arc<str>,
    report_seq: u64,
    /// (report_seq, sent at) of recent reports.
    sent: VecDeque<(u64, Duration)>,
}

impl Reporter {
    /// A reporter for `counters`, speaking for `node`.
    pub fn new(
        node: Node,
        counters: Arc<FleetCounters>,
        store: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        servers: Vec<String>,
    ) -> Self {
        let node_grant = Arc::from(node.id.as_str());
        Self {
            control_plane: String::new(),
            servers,
            node_grant,
            node,
            counters,
            store,
            metrics,
            report_seq: 0,
            sent: VecDeque::with_capacity(SENT_REMEMBERED),
        }
    }

    /// Keeps the stream open over `connection`; runs until the task is dropped.
    pub async fn run(mut self, connection: Arc<Connection>, backoff: BackoffConfig) {
        connection.url().clone_into(&mut self.control_plane);
        keep_open(connection, self, backoff).await;
    }

    /// The policy version in force, after standing by on its fleet buckets.
    fn version(&self, now: Duration) -> u64 {
        let snapshot = self.store.load();
        let Some(bundle) = snapshot.bundle() else {
            return 0;
        };
        let servers: Vec<&str> = self.servers.iter().map(String::as_str).collect();
        let known = bundle.fleet_buckets(&servers, &self.node_grant);
        self.counters.stand_by(&known, &self.node_grant, now);
        policy_version(snapshot.version())
    }

    /// The next reports (one, unless the buckets fill more); the first of a
    /// stream names the node.
    fn next_reports(&mut self, first: bool) -> Vec<QuotaReport> {
        let now = self.counters.now();
        let version = self.version(now);
        let buckets = self.counters.report(version, now);
        let mut reports = wire::reports(buckets, self.report_seq + 1, self.counters.epoch());
        if let Some(last) = reports.last() {
            self.counters.reported(last.report_seq);
        }
        if first && let Some(r) = reports.first_mut() {
            r.node = Some(self.node.clone());
        }
        for r in &reports {
            self.report_seq = r.report_seq;
            if self.sent.len() == SENT_REMEMBERED {
                self.sent.pop_front();
            }
            self.sent.push_back((r.report_seq, now));
            self.metrics.quota_report();
        }
        reports
    }

    /// Sends the next reports on `tx`; false once the stream is gone.
    async fn send_reports(&mut self, tx: &mpsc::Sender<QuotaReport>) -> bool {
        for report in self.next_reports(false) {
            if tx.send(report).await.is_err() {
                return false;
            }
        }
        true
    }
}

impl ControlStream for Reporter {
    async fn session(&mut self, channel: Channel, backoff: &mut Backoff) -> End {
        let mut grpc = QuotaClient::new(channel)
            .max_decoding_message_size(MAX_QUOTA_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_QUOTA_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(4);
        // The first reports are queued before the stream opens: the channel
        // takes what it can hold, the rest follow once the stream is up.
        let mut first = self.next_reports(true).into_iter();
        for report in first.by_ref().take(4) {
            if tx.try_send(report).is_err() {
                return End::Closed;
            }
        }
        let rest: Vec<QuotaReport> = first.collect();
        let mut inbound = match grpc.stream_quota(requests(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // Refused (identity, permission): retry from the backoff cap,
                // as the policy stream does.
                if classify(s.code()) == Recovery::Refused {
                    backoff.saturate();
                }
                return End::Status(s);
            }
        };
        self.counters.stream_opened();
        self.metrics.quota_connected(true);
        for report in rest {
            if tx.send(report).await.is_err() {
                return End::Closed;
            }
        }
        let mut last_sent = Instant::now();
        let mut policy = self.store.load();
        let mut watch = tokio::time::interval(POLICY_WATCH);
        // A report is wanted early (a first call, a lease run dry): sent
        // EARLY_REPORT_GAP after the last one rather than a refresh after.
        let mut early = false;
        loop {
            let due = if early {
                last_sent + EARLY_REPORT_GAP
            } else {
                last_sent + self.counters.refresh()
            };
            tokio::select! {
                // Answers first: a busy sidecar wakes the reporter on every
                // refused call, and leases left unread behind its reports
                // would reach it too late to use.
                biased;
                message = inbound.message() => match message {
                    Ok(Some(answer)) => {
                        backoff.reset();
                        for e in &answer.errors {
                            tracing::warn!("the control plane did not account a fleet bucket: {e}");
                        }
                        let sent = self
                            .sent
                            .iter()
                            .find(|(seq, _)| *seq == answer.answers_report)
                            .map(|(_, at)| *at);
                        // A lease answering a report no longer remembered is
                        // too old to time safely: it is dropped.
                        if let Some(sent) = sent {
                            let n = self.counters.take(&wire::leases(&answer), sent);
                            self.metrics.quota_leases(n);
                        }
                    }
                    Ok(None) => return End::Closed,
                    Err(s) => return End::Status(s),
                },
                () = tokio::time::sleep_until(due.into()) => {
                    if !self.send_reports(&tx).await {
                        return End::Closed;
                    }
                    last_sent = Instant::now();
                    early = false;
                }
                _ = watch.tick() => {
                    // A new bundle may name new fleet buckets: ask for their
                    // standing leases now rather than at the next interval.
                    let now_in_force = self.store.load();
                    let changed = !Arc::ptr_eq(&policy, &now_in_force);
                    if changed {
                        policy = now_in_force;
                        if !self.send_reports(&tx).await {
                            return End::Closed;
                        }
                        last_sent = Instant::now();
                        early = false;
                    }
                }
                // Early, but not more often than EARLY_REPORT_GAP.
                () = self.counters.wake.notified(), if !early => early = true,
            }
        }
    }

    fn ended(&mut self, end: &End, _backoff: &mut Backoff) {
        self.counters.stream_closed();
        self.metrics.quota_connected(false);
        tracing::warn!(
            control_plane = %self.control_plane,
            "the quota stream ended ({end}); fleet-wide limits use their leases until they run out, then on_unavailable"
        );
    }
}

#[cfg(test)]
#[path = "reporter_tests.rs"]
mod tests;
