//! The control plane's Prometheus metrics, served on `--http` `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters the distribution and admin services bump.
pub struct Metrics {
    registry: Registry,
    /// Nodes with a distribution stream open (set at scrape time).
    pub connected_nodes: Gauge,
    /// The newest policy version.
    pub latest_version: Gauge,
    /// Pushes that created a new version.
    pub pushes: Counter,
    /// Pushes refused by validation.
    pub pushes_refused: Counter,
    /// Bundles sent to nodes.
    pub bundles_sent: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    /// Requests whose nonce was not the last one sent (ignored).
    pub stale_nonces: Counter,
    /// Streams refused by the admission limit.
    pub streams_refused: Counter,
    /// Policy and quota streams refused for their node identity (no
    /// certificate, or one naming another node).
    pub streams_unauthenticated: Counter,
    /// Quota reports received (one per message, of any number of buckets).
    pub quota_reports: Counter,
    /// Leases sent to sidecars.
    pub quota_leases: Counter,
    /// Bucket reports refused (invalid, or not accepted by the allocator).
    pub quota_bucket_errors: Counter,
    /// Fleet-wide buckets tracked (set at scrape time).
    pub quota_buckets: Gauge,
    /// Quota streams open.
    pub quota_streams: Gauge,
    /// Approval requests and their webhook.
    pub approvals: ApprovalMetrics,
    /// Admission reviews the injection webhook answered, by `outcome`.
    pub webhook_reviews: Family<Vec<(String, String)>, Counter>,
}

/// The approvals' metrics, cloned into the approvals core (each metric is a
/// handle on shared counts).
#[derive(Clone, Default)]
pub struct ApprovalMetrics {
    /// Requests pending now.
    pub pending: Gauge,
    /// Approvals streams open (one per sidecar process).
    pub streams: Gauge,
    /// Requests filed, approved, denied, expired and used, by `event`.
    pub events: Family<Vec<(String, String)>, Counter>,
    /// Webhook notices delivered (a 2xx answer).
    pub webhook_delivered: Counter,
    /// Webhook tries that failed (each retry counts).
    pub webhook_failures: Counter,
    /// Webhook notices given up: all tries failed, or the queue was full.
    pub webhook_dropped: Counter,
}

impl ApprovalMetrics {
    /// Counts one `event` (`filed`, `approved`, `denied`, `expired`, `used`).
    pub fn event(&self, event: &str) {
        self.events
            .get_or_create(&vec![("event".to_owned(), event.to_owned())])
            .inc();
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate_controlplane");
        let m = Self {
            connected_nodes: Gauge::default(),
            latest_version: Gauge::default(),
            pushes: Counter::default(),
            pushes_refused: Counter::default(),
            bundles_sent: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            stale_nonces: Counter::default(),
            streams_refused: Counter::default(),
            streams_unauthenticated: Counter::default(),
            quota_reports: Counter::default(),
            quota_leases: Counter::default(),
            quota_bucket_errors: Counter::default(),
            quota_buckets: Gauge::default(),
            quota_streams: Gauge::default(),
            approvals: ApprovalMetrics::default(),
            webhook_reviews: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "connected_nodes",
            "Nodes with a policy stream open",
            m.connected_nodes.clone(),
        );
        r.register(
            "latest_version",
            "The newest policy version",
            m.latest_version.clone(),
        );
        r.register("pushes", "Pushes that created a version", m.pushes.clone());
        r.register(
            "pushes_refused",
            "Pushes refused by validation",
            m.pushes_refused.clone(),
        );
        r.register(
            "bundles_sent",
            "Bundles sent to nodes",
            m.bundles_sent.clone(),
        );
        r.register("acks", "Bundles nodes applied", m.acks.clone());
        r.register("nacks", "Bundles nodes refused", m.nacks.clone());
        r.register(
            "stale_nonces",
            "Requests with a stale nonce, ignored",
            m.stale_nonces.clone(),
        );
        r.register(
            "streams_refused",
            "Streams refused by the admission limit",
            m.streams_refused.clone(),
        );
        r.register(
            "streams_unauthenticated",
            "Policy and quota streams refused for their node identity",
            m.streams_unauthenticated.clone(),
        );
        r.register(
            "quota_reports",
            "Quota reports received from sidecars",
            m.quota_reports.clone(),
        );
        r.register(
            "quota_leases",
            "Fleet-wide rate-limit leases granted",
            m.quota_leases.clone(),
        );
        r.register(
            "quota_bucket_errors",
            "Bucket reports refused (invalid or not accounted)",
            m.quota_bucket_errors.clone(),
        );
        r.register(
            "quota_buckets",
            "Fleet-wide rate-limit buckets tracked",
            m.quota_buckets.clone(),
        );
        r.register(
            "quota_streams",
            "Quota streams open",
            m.quota_streams.clone(),
        );
        r.register(
            "approvals_pending",
            "Approval requests waiting for a person",
            m.approvals.pending.clone(),
        );
        r.register(
            "approval_streams",
            "Approvals streams open",
            m.approvals.streams.clone(),
        );
        r.register(
            "approvals",
            "Approval requests filed, approved, denied, expired and used",
            m.approvals.events.clone(),
        );
        r.register(
            "approval_webhook_delivered",
            "Approval webhook notices delivered",
            m.approvals.webhook_delivered.clone(),
        );
        r.register(
            "approval_webhook_failures",
            "Approval webhook tries that failed (each retry counts)",
            m.approvals.webhook_failures.clone(),
        );
        r.register(
            "approval_webhook_dropped",
            "Approval webhook notices given up (tries exhausted or queue full)",
            m.approvals.webhook_dropped.clone(),
        );
        r.register(
            "webhook_reviews",
            "Admission reviews the injection webhook answered, by outcome",
            m.webhook_reviews.clone(),
        );
        // Every outcome shows from the start, at zero.
        for outcome in WEBHOOK_OUTCOMES {
            m.webhook_review_counter(outcome);
        }
        Self { registry, ..m }
    }

    /// Counts one admission review answered with `outcome` (one of
    /// [`WEBHOOK_OUTCOMES`]).
    pub fn webhook_review(&self, outcome: &str) {
        self.webhook_review_counter(outcome).inc();
    }

    fn webhook_review_counter(&self, outcome: &str) -> Counter {
        self.webhook_reviews
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .clone()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The `outcome` labels of `webhook_reviews_total`: the sidecar was added,
/// brought up to date, already as asked, not wanted (opt-out), refused
/// (the pod cannot be injected), or the review could not be read.
pub const WEBHOOK_OUTCOMES: [&str; 6] = [
    "injected",
    "updated",
    "unchanged",
    "skipped",
    "refused",
    "invalid",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
