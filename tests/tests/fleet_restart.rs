//! The control plane restarting under its fleet, as the real `tollgate serve`
//! binary on the same data dir:
//!
//! - a crash (SIGKILL) under 2,000 connected nodes: every node reconnects at
//!   once through the admission throttle (deliberately tight here, so the
//!   storm overflows it and refused nodes retry with backoff), reports what
//!   it runs, is resent nothing, and shows `SYNCED`; the next push reaches
//!   them all;
//! - a crash after a node refused a version: that version is not resent to
//!   it, it shows `ERROR` with its refusal, and the next version arrives;
//! - a clean stop (SIGTERM) under a real `tollgate-sidecar`: the control
//!   plane ends the stream, flushes its store and exits 0; the sidecar logs
//!   one line, keeps enforcing, and resyncs without a resend once the
//!   control plane is back.
//!
//! The nodes of the first two are simulated in this process: real tonic
//! clients of `tollgate.v1.PolicyDistribution` that ACK (or NACK) what they
//! receive, as `tollgate-sidecar` does minus compiling the bundle.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_e2e::controlplane::{ControlPlane, metric};
use tollgate_e2e::{DemoUpstream, Scratch, sidecar};
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{ErrorDetail, FieldError, Node, PolicyRequest, PolicyResponse};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// Simulated nodes in the storm.
const STORM_NODES: usize = 2_000;
/// Simulated nodes per HTTP/2 connection (a real sidecar has its own; 80
/// connections keep the storm's socket count modest for one test process).
const NODES_PER_CONNECTION: usize = 25;
/// How long any one phase may take (each takes a few seconds at most here).
const PHASE: Duration = Duration::from_secs(30);

/// A policy document allowing `tool`.
fn policy(tool: &str) -> Value {
    json!({ "version": "1", "default": "deny", "tools": { tool: {} } })
}

/// What one simulated node has seen, read by the test thread.
#[derive(Debug, Default)]
struct Seen {
    /// Streams it opened.
    opened: AtomicU32,
    /// Streams that ended (the control plane went away).
    ended: AtomicU32,
    /// Opens refused with UNAVAILABLE (admission, or nothing listening).
    refused: AtomicU32,
    /// Bundles it received.
    bundles: AtomicU32,
    /// The version it runs (0: none).
    runs: AtomicU64,
    /// Why it gave up, if it did (a status no sidecar would retry).
    failed: Mutex<Option<String>>,
}

/// A simulated node: its identity, the versions it refuses, what it runs.
struct SimNode {
    id: String,
    refuses: HashSet<u64>,
    runs: Option<(u64, String)>,
    seen: Arc<Seen>,
    /// How many streams it may open in all: the test raises it to let the
    /// fleet reconnect at one instant.
    allowed: watch::Receiver<u32>,
}

impl SimNode {
    /// Opens streams (as many as allowed) and answers every bundle, until
    /// the runtime is dropped.
    async fn run(mut self, channel: Channel) {
        let mut client = PolicyDistributionClient::new(channel);
        loop {
            let opened = self.seen.opened.load(Ordering::SeqCst);
            if self.allowed.wait_for(|n| *n > opened).await.is_err() {
                return;
            }
            let Some((tx, mut inbound)) = self.open(&mut client).await else {
                return;
            };
            self.seen.opened.fetch_add(1, Ordering::SeqCst);
            while let Ok(Some(bundle)) = inbound.message().await {
                self.seen.bundles.fetch_add(1, Ordering::SeqCst);
                if tx.send(self.answer(bundle)).await.is_err() {
                    break;
                }
            }
            self.seen.ended.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Opens one stream, reporting what it runs; retries refusals with
    /// full-jitter backoff (50 ms doubling to 1 s), as a sidecar does.
    /// `None` (and [`Seen::failed`] set) on a status no sidecar retries soon.
    async fn open(
        &self,
        client: &mut PolicyDistributionClient<Channel>,
    ) -> Option<(
        mpsc::Sender<PolicyRequest>,
        tonic::Streaming<PolicyResponse>,
    )> {
        let mut ceiling = Duration::from_millis(50);
        loop {
            let (tx, rx) = mpsc::channel(4);
            let (version_info, content_hash) = self.reported();
            let first = PolicyRequest {
                node: Some(Node {
                    id: self.id.clone(),
                    labels: [("app".to_owned(), "fleet-restart".to_owned())].into(),
                    ..Default::default()
                }),
                version_info,
                content_hash,
                ..Default::default()
            };
            // The receiver is alive just above: this cannot fail.
            let _ = tx.send(first).await;
            match client.stream_policy(ReceiverStream::new(rx)).await {
                Ok(response) => return Some((tx, response.into_inner())),
                Err(status) if !matches!(status.code(), Code::Unavailable | Code::Unknown) => {
                    let why = format!("opening the stream failed for good: {status}");
                    *self
                        .seen
                        .failed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(why);
                    return None;
                }
                Err(_) => {
                    self.seen.refused.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
                    ceiling = (ceiling * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// What it reports running: `version_info` and `content_hash`.
    fn reported(&self) -> (String, String) {
        self.runs
            .as_ref()
            .map(|(v, h)| (v.to_string(), h.clone()))
            .unwrap_or_default()
    }

    /// An ACK (and it now runs the bundle), or a NACK for a refused version.
    fn answer(&mut self, bundle: PolicyResponse) -> PolicyRequest {
        let error_detail = self.refuses.contains(&bundle.version).then(|| ErrorDetail {
            message: format!("version {} needs a newer sidecar", bundle.version),
            errors: vec![FieldError {
                pointer: "/tools".to_owned(),
                message: "unknown rule kind".to_owned(),
            }],
        });
        if error_detail.is_none() {
            self.runs = Some((bundle.version, bundle.content_hash));
            self.seen.runs.store(bundle.version, Ordering::SeqCst);
        }
        let (version_info, content_hash) = self.reported();
        PolicyRequest {
            node: None,
            version_info,
            content_hash,
            response_nonce: bundle.nonce,
            error_detail,
        }
    }
}

/// Simulated nodes on their own runtime, and the switch that lets them
/// (re)connect.
struct SimFleet {
    /// Runs the nodes; dropping it stops them.
    _runtime: Runtime,
    nodes: Vec<(String, Arc<Seen>)>,
    allowed: watch::Sender<u32>,
}

impl SimFleet {
    /// `ids` (with the versions each refuses) against `cp`, allowed one
    /// stream each for now.
    fn connect(cp: &ControlPlane, ids: Vec<(String, HashSet<u64>)>) -> SimFleet {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the simulated nodes");
        let (allowed, gate) = watch::channel(1);
        let endpoint = Endpoint::from_shared(cp.url())
            .expect("the control plane's URL")
            .connect_timeout(Duration::from_secs(5));
        // One lazily connected channel per group of nodes: it reconnects by
        // itself once the control plane is back.
        let channels: Vec<Channel> = {
            let _in_runtime = runtime.enter();
            (0..ids.len().div_ceil(NODES_PER_CONNECTION))
                .map(|_| endpoint.connect_lazy())
                .collect()
        };
        let mut nodes = Vec::new();
        for (i, (id, refuses)) in ids.into_iter().enumerate() {
            let seen = Arc::new(Seen::default());
            let node = SimNode {
                id: id.clone(),
                refuses,
                runs: None,
                seen: seen.clone(),
                allowed: gate.clone(),
            };
            nodes.push((id, seen));
            runtime.spawn(node.run(channels[i / NODES_PER_CONNECTION].clone()));
        }
        SimFleet {
            _runtime: runtime,
            nodes,
            allowed,
        }
    }

    /// Lets every node open one more stream (all at the same instant).
    fn reconnect(&self) {
        self.allowed.send_modify(|n| *n += 1);
    }

    fn seen(&self, id: &str) -> &Seen {
        self.nodes
            .iter()
            .find(|(n, _)| n == id)
            .map(|(_, s)| s.as_ref())
            .unwrap_or_else(|| panic!("no simulated node {id}"))
    }

    /// Waits until `done` holds for every node; panics with `what` and the
    /// first node it does not hold for.
    fn wait_all(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + PHASE;
        loop {
            for (id, seen) in &self.nodes {
                let failed = seen.failed.lock().unwrap_or_else(PoisonError::into_inner);
                assert!(failed.is_none(), "{what}: {id} gave up: {failed:?}");
            }
            let Some((id, seen)) = self.nodes.iter().find(|(_, s)| !done(s)) else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {PHASE:?}; {id} has seen {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The rows of `status` (`tollgate status --json`) whose node id starts with `prefix`.
fn rows<'a>(status: &'a Value, prefix: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    status
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |r| r["node"].as_str().is_some_and(|n| n.starts_with(prefix)))
}

/// Whether `n` rows with `prefix` are connected and `SYNCED` on `version`.
fn all_synced(status: &Value, prefix: &str, n: usize, version: u64) -> bool {
    rows(status, prefix)
        .filter(|r| {
            r["connected"] == true && r["state"] == "SYNCED" && r["applied_version"] == version
        })
        .count()
        == n
}

/// Node `id`'s row in `status`.
fn row<'a>(status: &'a Value, id: &str) -> &'a Value {
    status
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == id))
        .unwrap_or_else(|| panic!("no row for {id} in {status:#}"))
}

#[test]
fn two_thousand_nodes_reconnect_after_a_crash_through_the_throttle_without_a_resend() {
    let started = Instant::now();
    // A tight admission gate, so that the storm overflows it: 8 streams in
    // their opening handshake, 64 waiting, the rest refused at once.
    let mut cp = ControlPlane::start_with_args(&[
        "--max-opening-streams",
        "8",
        "--max-waiting-streams",
        "64",
    ]);
    let v1 = cp.push(&policy("one"));
    let ids = (0..STORM_NODES)
        .map(|i| (format!("storm-{i:04}"), HashSet::new()))
        .collect();
    let fleet = SimFleet::connect(&cp, ids);
    fleet.wait_all("every node runs v1", |s| {
        s.runs.load(Ordering::SeqCst) == v1
    });
    cp.wait_for_status("all SYNCED on v1", PHASE, |s| {
        all_synced(s, "storm-", STORM_NODES, v1)
    });
    let connected = started.elapsed();

    // The control plane crashes: every stream breaks.
    cp.kill();
    fleet.wait_all("every node saw its stream end", |s| {
        s.ended.load(Ordering::SeqCst) == 1
    });

    // It comes back on the same store; the whole fleet reconnects at once.
    cp.restart();
    let restarted = Instant::now();
    fleet.reconnect();
    fleet.wait_all("every node reopened its stream", |s| {
        s.opened.load(Ordering::SeqCst) == 2
    });
    let status = cp.wait_for_status("all SYNCED on v1 after the restart", PHASE, |s| {
        all_synced(s, "storm-", STORM_NODES, v1)
    });
    let resynced = restarted.elapsed();
    assert_eq!(rows(&status, "storm-").count(), STORM_NODES);

    // Each node reported what it runs, so nothing was resent.
    let metrics = cp.metrics();
    assert_eq!(
        metric(&metrics, "tollgate_controlplane_bundles_sent_total"),
        0.0,
        "the restarted control plane resent a bundle to a node that runs it"
    );
    fleet.wait_all("no node received a second bundle", |s| {
        s.bundles.load(Ordering::SeqCst) == 1
    });
    // The storm overflowed the gate, and every refused node got in later.
    let refused = metric(&metrics, "tollgate_controlplane_streams_refused_total");
    assert!(
        refused > 0.0,
        "{STORM_NODES} simultaneous reconnects never filled 8 opening + 64 waiting places"
    );
    let retried: u32 = fleet
        .nodes
        .iter()
        .map(|(_, s)| s.refused.load(Ordering::SeqCst))
        .sum();
    eprintln!(
        "{STORM_NODES} nodes: connected and SYNCED in {connected:?}; after the crash, all \
         reopened and SYNCED {resynced:?} after the restart; opens refused by the restarted \
         control plane: {refused}; open attempts retried in all: {retried}"
    );

    // The restarted control plane serves the whole fleet: the next push
    // reaches every node.
    let v2 = cp.push(&policy("two"));
    fleet.wait_all("every node runs v2", |s| {
        s.runs.load(Ordering::SeqCst) == v2
    });
    cp.wait_for_status("all SYNCED on v2", PHASE, |s| {
        all_synced(s, "storm-", STORM_NODES, v2)
    });
    assert_eq!(
        cp.metric("tollgate_controlplane_bundles_sent_total"),
        STORM_NODES as f64
    );
    drop(fleet);
    eprintln!("the whole scenario took {:?}", started.elapsed());
}

#[test]
fn a_refused_version_is_not_resent_after_a_crash_and_the_next_version_arrives() {
    let mut cp = ControlPlane::start();
    let v1 = cp.push(&policy("one"));
    let fleet = SimFleet::connect(
        &cp,
        vec![
            ("picky".to_owned(), HashSet::from([2])),
            ("plain".to_owned(), HashSet::new()),
        ],
    );
    fleet.wait_all("both run v1", |s| s.runs.load(Ordering::SeqCst) == v1);
    let v2 = cp.push(&policy("two"));
    assert_eq!(v2, 2);
    let before = cp.wait_for_status("picky refused v2, plain runs it", PHASE, |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["node"] == "picky" && r["state"] == "ERROR")
                && all_synced(s, "plain", 1, v2)
        })
    });
    let refusal = row(&before, "picky").clone();
    assert_eq!(
        refusal["nack_error"],
        "version 2 needs a newer sidecar; /tools: unknown rule kind"
    );

    // The control plane crashes and comes back; both reconnect, reporting
    // what they run (picky v1, plain v2).
    cp.kill();
    fleet.wait_all("both saw the stream end", |s| {
        s.ended.load(Ordering::SeqCst) == 1
    });
    cp.restart();
    fleet.reconnect();
    let after = cp.wait_for_status("both reconnected", PHASE, |s| {
        ["picky", "plain"]
            .iter()
            .all(|n| rows(s, n).any(|r| r["connected"] == true))
    });
    // A refusal shows ERROR with its message and time; and the restarted
    // control plane did not resend v2 to the node that refused it.
    let picky = row(&after, "picky");
    assert_eq!(picky["state"], "ERROR", "{picky}");
    assert_eq!(picky["nack_error"], refusal["nack_error"]);
    assert_eq!(picky["last_nack_at"], refusal["last_nack_at"]);
    assert_eq!(
        (
            picky["applied_version"].as_u64(),
            picky["sent_version"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert!(all_synced(&after, "plain", 1, v2), "{after:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cp.metric("tollgate_controlplane_bundles_sent_total"), 0.0);
    assert_eq!(fleet.seen("picky").bundles.load(Ordering::SeqCst), 2);
    assert_eq!(fleet.seen("picky").runs.load(Ordering::SeqCst), v1);

    // The next version reaches it.
    let v3 = cp.push(&policy("three"));
    fleet.wait_all("both run v3", |s| s.runs.load(Ordering::SeqCst) == v3);
    let status = cp.wait_for_status("both SYNCED on v3", PHASE, |s| {
        all_synced(s, "picky", 1, v3) && all_synced(s, "plain", 1, v3)
    });
    assert_eq!(row(&status, "picky")["nack_error"], refusal["nack_error"]);
    drop(fleet);
}

#[test]
fn a_stopped_control_plane_ends_the_sidecars_stream_cleanly_and_exits_0() {
    let mut cp = ControlPlane::start();
    let upstream = DemoUpstream::start();
    let state = Scratch::new("drain-state");
    let mut sc = sidecar::builder()
        .upstream(upstream.url())
        .node_id("drain-a")
        .control_plane(cp.url(), state.path())
        .start();
    let v1 = cp.push(&policy("one"));
    cp.wait_for_status("the sidecar SYNCED on v1", PHASE, |s| {
        all_synced(s, "drain-a", 1, v1)
    });

    let ended = cp.stop().expect("it was running");
    assert_eq!(
        ended.status.and_then(|s| s.code()),
        Some(0),
        "tollgate serve did not exit 0 on SIGTERM; its output:\n{}",
        ended.output
    );
    assert!(
        ended.output.contains("control plane stopped cleanly"),
        "{}",
        ended.output
    );
    // The start's warning that --insecure-dev (the harness's default) takes
    // node ids as declared is not about the stop.
    let stop_output: String = ended
        .output
        .lines()
        .filter(|l| !l.contains("--insecure-dev"))
        .collect::<Vec<_>>()
        .join("\n");
    for bad in ["ERROR", "WARN", "panicked"] {
        assert!(
            !stop_output.contains(bad),
            "a clean stop logged {bad}:\n{}",
            ended.output
        );
    }

    // The sidecar says once that the stream ended, and keeps enforcing v1.
    let closed = "the control plane closed the policy stream";
    sc.process().wait_for_output(closed, Duration::from_secs(5));
    assert_eq!(sc.readiness().trim(), format!("ready: policy v{v1}"));

    // Back on the same store: the sidecar reconnects with its backoff and
    // is SYNCED without being sent anything.
    cp.restart();
    cp.wait_for_status("the sidecar SYNCED again", PHASE, |s| {
        all_synced(s, "drain-a", 1, v1)
    });
    assert_eq!(cp.metric("tollgate_controlplane_bundles_sent_total"), 0.0);
    let output = sc.process().output();
    assert_eq!(output.matches(closed).count(), 1, "{output}");
    for bad in ["ERROR", "panicked"] {
        assert!(!output.contains(bad), "the sidecar logged {bad}:\n{output}");
    }
}
