//! The sidecar's Prometheus metrics (`/metrics` on the admin port).
//!
//! Tool labels are bounded: a tool the server listed or a rule names gets its
//! own label; any other name an agent sends is counted as `(unlisted)`, so a
//! caller cannot grow the metrics without limit.
//!
//! Longer than 500 lines: every metric is registered here with its help text, in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tollgate_policy::Outcome;

/// A label value shared without copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    server: Label,
    tool: Label,
    decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ServerLabels {
    server: Label,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApprovalLabels {
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReportLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DifferenceLabels {
    live: &'static str,
    shadow: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: Label,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Allow,
    Outcome::Deny,
    Outcome::RateLimited,
    Outcome::RequireApproval,
    Outcome::Hidden,
];

/// One tool's decision counters, one per [`Outcome`].
#[derive(Debug, Clone, Default)]
pub struct ToolCounters([Counter; 5]);

impl ToolCounters {
    /// Counts one decision.
    pub fn count(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::Allow => 0,
            Outcome::Deny => 1,
            Outcome::RateLimited => 2,
            Outcome::RequireApproval => 3,
            Outcome::Hidden => 4,
        };
        self.0[i].inc();
    }
}

/// One server's per-request metrics, held by its route.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    request_seconds: Histogram,
    /// Decisions on names outside the server's catalog.
    pub unlisted: ToolCounters,
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    request_seconds: Family<ServerLabels, Histogram>,
    upstream_errors: Family<ServerLabels, Counter>,
    policy_info: Family<VersionLabels, Gauge>,
    reload_failures: Counter,
    log_dropped: Counter,
    log_errors: Counter,
    control_connected: Gauge,
    bundles_applied: Counter,
    bundles_refused: Counter,
    quota_connected: Gauge,
    quota_reports: Counter,
    quota_leases: Counter,
    quota_unleased: Counter,
    quota_capacity: Gauge,
    connections: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    evictions: Family<StateLabels, Counter>,
    state_save_failures: Counter,
    approvals_pending: Gauge,
    approvals: Family<ApprovalLabels, Counter>,
    decision_reports: Family<ReportLabels, Counter>,
    shadow_differences: Family<DifferenceLabels, Counter>,
    current_version: std::sync::Mutex<Option<Arc<str>>>,
    unlisted: Arc<str>,
    requests: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "tools/call decisions by server, tool and decision",
            decisions.clone(),
        );
        let request_seconds = Family::<ServerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response's headers, per server",
            request_seconds.clone(),
        );
        let upstream_errors = Family::<ServerLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the upstream could not answer",
            upstream_errors.clone(),
        );
        let policy_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The policy version in force (value 1)",
            policy_info.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "policy_reload_failures",
            "Policy files that failed to load",
            reload_failures.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision records dropped because the log sink was full",
            log_dropped.clone(),
        );
        let log_errors = Counter::default();
        registry.register(
            "decision_log_write_errors",
            "Decision records the log sink failed to write",
            log_errors.clone(),
        );
        let control_connected = Gauge::default();
        registry.register(
            "control_plane_connected",
            "1 while a policy stream to the control plane is open, else 0",
            control_connected.clone(),
        );
        let bundles_applied = Counter::default();
        registry.register(
            "bundles_applied",
            "Bundles received from the control plane, compiled and put in force (ACKed)",
            bundles_applied.clone(),
        );
        let bundles_refused = Counter::default();
        registry.register(
            "bundles_refused",
            "Bundles received from the control plane and refused (NACKed)",
            bundles_refused.clone(),
        );
        let quota_connected = Gauge::default();
        registry.register(
            "quota_stream_connected",
            "1 while the quota stream (fleet-wide limit leases) to the control plane is open, else 0",
            quota_connected.clone(),
        );
        let quota_reports = Counter::default();
        registry.register(
            "quota_reports",
            "Quota reports sent to the control plane",
            quota_reports.clone(),
        );
        let quota_leases = Counter::default();
        registry.register(
            "quota_leases",
            "Fleet-wide limit leases received and taken (renewals included)",
            quota_leases.clone(),
        );
        let quota_unleased = Counter::default();
        registry.register(
            "quota_unleased_admissions",
            "Calls a fleet-wide limit admitted without a lease (control plane unreachable: on_unavailable fallback or allow)",
            quota_unleased.clone(),
        );
        let quota_capacity = Gauge::default();
        registry.register(
            "quota_lease_capacity",
            "Calls the fleet-wide leases held let this sidecar admit, summed over buckets, at the last report",
            quota_capacity.clone(),
        );
        let connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open, per listener (mcp, admin)",
            connections.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed as they were accepted because the listener's connection cap (--max-connections for mcp) was reached",
            connections_refused.clone(),
        );
        let evictions = Family::<StateLabels, Counter>::default();
        registry.register(
            "state_evictions",
            "Entries dropped because a bounded table was full (session_buckets, legacy_sessions, decision_log_bytes, catalog_tools, decision_versions)",
            evictions.clone(),
        );
        let state_save_failures = Counter::default();
        registry.register(
            "state_save_failures",
            "Bundles in force that could not be saved to --state-dir (a restart while the control plane is down would not find them)",
            state_save_failures.clone(),
        );
        let approvals_pending = Gauge::default();
        registry.register(
            "approvals_pending",
            "Approval requests waiting for a person in this sidecar's ledger",
            approvals_pending.clone(),
        );
        let approvals = Family::<ApprovalLabels, Counter>::default();
        registry.register(
            "approvals",
            "Approval events (requested, held, approved, denied, expired, used, pending)",
            approvals.clone(),
        );
        let decision_reports = Family::<ReportLabels, Counter>::default();
        registry.register(
            "decision_reports",
            "Decision reports sent to the control plane for staged rollouts, by result (accepted, refused, failed)",
            decision_reports.clone(),
        );
        let shadow_differences = Family::<DifferenceLabels, Counter>::default();
        registry.register(
            "shadow_differences",
            "Calls on which the shadow policy version decided otherwise than the live one, by both decisions",
            shadow_differences.clone(),
        );
        Self {
            registry,
            decision_reports,
            shadow_differences,
            approvals_pending,
            approvals,
            state_save_failures,
            connections,
            connections_refused,
            evictions,
            quota_unleased,
            quota_capacity,
            quota_connected,
            quota_reports,
            quota_leases,
            decisions,
            request_seconds,
            upstream_errors,
            policy_info,
            reload_failures,
            log_dropped,
            log_errors,
            control_connected,
            bundles_applied,
            bundles_refused,
            current_version: std::sync::Mutex::new(None),
            unlisted: Arc::from("(unlisted)"),
            requests: AtomicU64::new(0),
        }
    }

    /// The decision counters of one tool (`None`: names outside the catalog),
    /// one per outcome. They are handles into the `decisions` family, made once
    /// per tool so that counting a decision is one atomic add, not a label
    /// lookup.
    pub fn tool_counters(&self, server: &Arc<str>, tool: Option<&Arc<str>>) -> ToolCounters {
        ToolCounters(OUTCOMES.map(|outcome| {
            self.decisions
                .get_or_create(&DecisionLabels {
                    server: Label(Arc::clone(server)),
                    tool: Label(Arc::clone(tool.unwrap_or(&self.unlisted))),
                    decision: outcome.as_str(),
                })
                .clone()
        }))
    }

    /// The per-request metrics of one server, as handles (see [`Self::tool_counters`]).
    pub fn server(&self, server: &Arc<str>) -> ServerMetrics {
        ServerMetrics {
            request_seconds: self
                .request_seconds
                .get_or_create(&ServerLabels {
                    server: Label(Arc::clone(server)),
                })
                .clone(),
            unlisted: self.tool_counters(server, None),
        }
    }

    /// Records one request's time to response headers.
    pub fn request(&self, server: &ServerMetrics, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        server.request_seconds.observe(took.as_secs_f64());
    }

    /// Counts an upstream failure.
    pub fn upstream_error(&self, server: &Arc<str>) {
        self.upstream_errors
            .get_or_create(&ServerLabels {
                server: Label(Arc::clone(server)),
            })
            .inc();
    }

    /// Marks `version` as the policy in force.
    pub fn policy_loaded(&self, version: &Arc<str>) {
        let mut current = self
            .current_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = current.take() {
            self.policy_info
                .get_or_create(&VersionLabels {
                    version: Label(old),
                })
                .set(0);
        }
        self.policy_info
            .get_or_create(&VersionLabels {
                version: Label(Arc::clone(version)),
            })
            .set(1);
        *current = Some(Arc::clone(version));
    }

    /// Counts a policy file that failed to load.
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    /// Counts a decision record dropped by a full log.
    pub fn log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Counts a decision record the sink failed to write.
    pub fn log_error(&self) {
        self.log_errors.inc();
    }

    /// Marks the policy stream to the control plane as open or closed.
    pub fn control_connected(&self, connected: bool) {
        self.control_connected.set(i64::from(connected));
    }

    /// Counts a bundle from the control plane that was put in force.
    pub fn bundle_applied(&self) {
        self.bundles_applied.inc();
    }

    /// Counts a bundle from the control plane that was refused.
    pub fn bundle_refused(&self) {
        self.bundles_refused.inc();
    }

    /// Marks the quota stream as open or closed.
    pub fn quota_connected(&self, connected: bool) {
        self.quota_connected.set(i64::from(connected));
    }

    /// Counts a quota report sent.
    pub fn quota_report(&self) {
        self.quota_reports.inc();
    }

    /// Counts a call admitted without a lease.
    pub fn quota_unleased(&self) {
        self.quota_unleased.inc();
    }

    /// Sets the capacity left in the leases held.
    pub fn quota_capacity(&self, calls: u64) {
        self.quota_capacity
            .set(i64::try_from(calls).unwrap_or(i64::MAX));
    }

    /// Counts leases taken (first leases and renewals).
    pub fn quota_leases(&self, n: usize) {
        self.quota_leases.inc_by(n as u64);
    }

    /// Counts an open connection of `listener` until the guard is dropped.
    pub fn connection_opened(&self, listener: &'static str) -> OpenConnection {
        let gauge = self
            .connections
            .get_or_create(&ListenerLabels { listener })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts a connection `listener` closed because it was full.
    pub fn connection_refused(&self, listener: &'static str) {
        self.connections_refused
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    /// Counts a bundle that could not be saved to the state dir.
    pub fn state_save_failed(&self) {
        self.state_save_failures.inc();
    }

    /// Counts one decision report by `result` (`accepted`, `refused`, `failed`).
    pub fn decision_report(&self, result: &'static str) {
        self.decision_reports
            .get_or_create(&ReportLabels { result })
            .inc();
    }

    /// Counts one call the shadow version decided otherwise than the live one.
    pub fn shadow_difference(&self, live: &'static str, shadow: &'static str) {
        self.shadow_differences
            .get_or_create(&DifferenceLabels { live, shadow })
            .inc();
    }

    /// Counts `n` entries dropped from the bounded table `state`.
    pub fn evicted(&self, state: &'static str, n: u64) {
        if n > 0 {
            self.evictions
                .get_or_create(&StateLabels { state })
                .inc_by(n);
        }
    }

    /// Counts one approval event (`requested`, `held`, `approved`, `denied`,
    /// `expired`, `used` or `pending`).
    pub fn approval(&self, event: &'static str) {
        self.approvals
            .get_or_create(&ApprovalLabels { event })
            .inc();
    }

    /// Sets how many approval requests are pending.
    pub fn approvals_pending(&self, n: usize) {
        self.approvals_pending.set(n as i64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// An open connection, counted in `tollgate_connections_open` while it lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
