//! Simulated sidecars: each is what `tollgate-sidecar --control-plane` runs
//! for fleet-wide limits — its own [`FleetCounters`], [`Metrics`] and quota
//! stream ([`Reporter`], a real tonic client on a connection of its own) over a
//! [`LivePolicy`] holding a compiled bundle — without the HTTP proxy around
//! them. Calls go straight to `FleetCounters::acquire` with the limit's
//! [`Charge`], as the sidecar's decision would.
//!
//! The bundle is one the control plane stored (pushed as an operator does),
//! and each simulated sidecar says on a policy stream that it runs it, as a
//! sidecar does on connecting: the control plane accounts quota reports only
//! under versions a node was given, by their limits as it stored them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tollgate_policy::{Admission, Charge, Counters, FleetBucket};
use tollgate_proto::v1::admin_client::AdminClient;
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{GetVersionRequest, Node, PolicyRequest, PushPolicyRequest};
use tollgate_sidecar::control::backoff::BackoffConfig;
use tollgate_sidecar::control::client::version_label;
use tollgate_sidecar::control::connection::Connection;
use tollgate_sidecar::control::quota::{FleetCounters, Reporter};
use tollgate_sidecar::metrics::Metrics;
use tollgate_sidecar::snapshot::{LivePolicy, Snapshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::analysis::Call;

/// The server every simulated sidecar fronts.
pub const SERVER: &str = "bench";

/// A policy in force with one fleet-wide limit, and that limit's bucket.
pub struct Limit {
    store: Arc<LivePolicy>,
    bucket: FleetBucket,
    /// The control plane's number and content hash of the policy.
    version: u64,
    content_hash: String,
    /// A connection to the control plane, for the sidecars' policy streams.
    channel: Channel,
}

impl Limit {
    /// Pushes to the control plane at `endpoint`, and compiles, a policy
    /// whose one tool has a limit of `max` calls per `window_s` seconds on
    /// `counter`, with `scope` (`global` or `grant`). The bundle has no
    /// grants, so a `grant` limit is keyed by `node_grant`, the sidecar's
    /// node id. `admin_token` is an operator token with role admin.
    pub async fn new(
        endpoint: &Endpoint,
        admin_token: &str,
        counter: &str,
        scope: &str,
        max: u64,
        window_s: u64,
        node_grant: &str,
    ) -> anyhow::Result<Self> {
        let text = format!(
            r#"{{"version": "1", "default": "allow", "tools": {{"call": {{"limits": [
                {{"counter": "{counter}", "window": {window_s}, "max": {max}, "scope": "{scope}"}}
            ]}}}}}}"#
        );
        let bundle = tollgate_policy::load(&text)
            .map_err(|e| anyhow!("the benchmark's policy does not compile: {e}"))?;
        let mut buckets = bundle.fleet_buckets(&[SERVER], &Arc::from(node_grant));
        let Some(bucket) = buckets.pop().filter(|_| buckets.is_empty()) else {
            bail!("the benchmark's policy should define exactly one fleet bucket");
        };
        let channel = endpoint
            .connect()
            .await
            .context("cannot connect to the control plane")?;
        let bearer: MetadataValue<Ascii> = format!("Bearer {admin_token}")
            .parse()
            .context("the admin token is not printable ASCII")?;
        let mut admin =
            AdminClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            });
        let pushed = admin
            .push_policy(PushPolicyRequest {
                content: text.into_bytes(),
                server: String::new(),
                message: "fleet-limits benchmark".to_owned(),
                ..PushPolicyRequest::default()
            })
            .await
            .context("cannot push the benchmark's policy")?
            .into_inner();
        if !pushed.accepted {
            bail!("the control plane refused the benchmark's policy: {pushed:?}");
        }
        let stored = admin
            .get_version(GetVersionRequest {
                version: pushed.version,
            })
            .await
            .context("cannot read back the pushed version")?
            .into_inner();
        let store = LivePolicy::default();
        store.store(Snapshot::new(bundle, version_label(pushed.version)));
        Ok(Self {
            store: Arc::new(store),
            bucket,
            version: pushed.version,
            content_hash: stored.content_hash,
            channel,
        })
    }

    /// Node `node` says on a policy stream that it runs this policy, as a
    /// sidecar does on connecting; the stream closes again once open (the
    /// control plane keeps what the node said).
    async fn announce(&self, node: Node) -> anyhow::Result<()> {
        let first = PolicyRequest {
            node: Some(node),
            version_info: self.version.to_string(),
            content_hash: self.content_hash.clone(),
            ..Default::default()
        };
        PolicyDistributionClient::new(self.channel.clone())
            .stream_policy(tokio_stream::once(first))
            .await
            .context("cannot open a policy stream")?;
        Ok(())
    }

    /// What one call to the tool charges: the sidecar's own `Charge`.
    pub fn charge(&self) -> Charge<'_> {
        let b = &self.bucket;
        Charge {
            counter: &b.counter,
            server: &b.server,
            scope: b.scope,
            key: &b.key,
            window: b.window,
            max: b.max,
            on_unavailable: b.on_unavailable,
        }
    }
}

/// What a sidecar's quota stream did, from its `/metrics` counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaCounts {
    pub connected: bool,
    pub reports: u64,
    pub leases: u64,
    pub unleased: u64,
}

impl std::ops::AddAssign for QuotaCounts {
    fn add_assign(&mut self, o: Self) {
        self.connected &= o.connected;
        self.reports += o.reports;
        self.leases += o.leases;
        self.unleased += o.unleased;
    }
}

/// One simulated sidecar process; its quota stream ends when it is dropped.
pub struct Sidecar {
    pub counters: Arc<FleetCounters>,
    metrics: Arc<Metrics>,
    reporter: JoinHandle<()>,
}

impl Sidecar {
    /// Starts node `id`'s quota stream to `endpoint`, once its policy stream
    /// has said it runs `limit`'s policy. Every sidecar of the run shares
    /// `origin`, so their `now`s are on one clock.
    pub async fn start(
        id: &str,
        endpoint: &Endpoint,
        origin: Instant,
        limit: &Limit,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let counters = Arc::new(FleetCounters::new(origin, Arc::clone(&metrics)));
        let node = Node {
            id: id.to_owned(),
            pod: id.to_owned(),
            namespace: "bench".to_owned(),
            build: "fleet-limits".to_owned(),
            ..Default::default()
        };
        limit
            .announce(node.clone())
            .await
            .with_context(|| format!("node {id}"))?;
        // Plaintext, as the in-process control plane serves.
        let connection = Connection::new(&endpoint.uri().to_string(), None)
            .context("the control plane's URL")?;
        let reporter = Reporter::new(
            node,
            Arc::clone(&counters),
            Arc::clone(&limit.store),
            Arc::clone(&metrics),
            vec![SERVER.to_owned()],
        );
        Ok(Self {
            counters,
            metrics,
            reporter: tokio::spawn(reporter.run(Arc::new(connection), BackoffConfig::default())),
        })
    }

    pub fn quota(&self) -> QuotaCounts {
        let text = self.metrics.encode();
        let get = |name| sample(&text, name).unwrap_or(0.0) as u64;
        QuotaCounts {
            connected: get("tollgate_quota_stream_connected") == 1,
            reports: get("tollgate_quota_reports_total"),
            leases: get("tollgate_quota_leases_total"),
            unleased: get("tollgate_quota_unleased_admissions_total"),
        }
    }

    /// One call now: admitted or not.
    pub fn call(&self, limit: &Limit) -> Call {
        let at = self.counters.origin().elapsed();
        let admitted = self.counters.acquire(&[limit.charge()], at) == Admission::Admitted;
        Call { at, admitted }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

/// Waits until every sidecar's quota stream is up and has taken a lease.
pub async fn wait_connected(sidecars: &[Arc<Sidecar>], timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let waiting = sidecars
            .iter()
            .filter(|s| {
                let q = s.quota();
                !q.connected || q.leases == 0
            })
            .count();
        if waiting == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{waiting} of {} simulated sidecars have no quota stream with a lease after {timeout:?}",
                sidecars.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls at `rate` per second from `first` until `end`, on a fixed schedule
/// (a tick missed under load is skipped, not made up in a burst).
pub async fn drive(
    sidecar: Arc<Sidecar>,
    limit: Arc<Limit>,
    rate: f64,
    first: tokio::time::Instant,
    end: tokio::time::Instant,
) -> Vec<Call> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let expected = (end - first).as_secs_f64() * rate;
    let mut calls = Vec::with_capacity(expected as usize + 16);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        if tick.tick().await >= end {
            return calls;
        }
        calls.push(sidecar.call(&limit));
    }
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET path` over HTTP/1.1 on loopback; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let Some((head, body)) = out.split_once("\r\n\r\n") else {
        bail!("{addr}{path}: not an HTTP response");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}{path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(body.to_owned())
}
