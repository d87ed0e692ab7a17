//! Shadow decisions as whole binaries (issue #15, the sidecar's half): a
//! `tollgate-sidecar --control-plane …` in front of server-everything, the
//! Python `mcp` SDK client as the agent.
//!
//! The real control plane's shadow rollouts are tested in
//! `rollouts_deny_rate.rs`. Here [`ControlPlaneDouble`], a raw in-process
//! tonic `PolicyDistribution` + `Rollouts` server generated from the same
//! protos, stands in for it on purpose: it sends what a correct control
//! plane never sends (a shadow that does not compile) and refuses a report,
//! so the sidecar's handling of both is tested end to end.
//!
//! - live v1 allows everything, shadow v2 denies `echo`: the agent sees
//!   only the live decisions (server-everything answers `echo`), and the
//!   reports count every call per version and list the would-be denials
//!   with both rule pointers, the shadow's reason and the digest of the
//!   arguments;
//! - a report the control plane refuses is sent again with the next: the
//!   accepted reports add up to exactly the calls made;
//! - a response whose shadow does not compile is NACKed naming it and
//!   changes nothing; a response without a shadow removes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tollgate_e2e::{Peers, Scratch, Transport, sidecar};
use tollgate_proto::v1::policy_distribution_server::{
    PolicyDistribution, PolicyDistributionServer,
};
use tollgate_proto::v1::rollouts_server::{Rollouts, RolloutsServer};
use tollgate_proto::v1::{
    DecisionReport, DecisionReportAck, PolicyRequest, PolicyResponse, VersionCounts,
};
use tonic::{Request, Response, Status, Streaming};

/// The node id the sidecar reports (and its grant: the bundles have none).
const NODE: &str = "shadow-node";
/// How long the sidecar may take to answer a bundle or report its calls.
const WAIT: Duration = Duration::from_secs(20);
const LIVE: &str = r#"{"version": "1", "default": "allow"}"#;
const SHADOW: &str = r#"{"version": "1", "default": "allow", "tools": {"echo": {"action": "deny", "reason": "v2 retires echo"}}}"#;
const INVALID: &str = r#"{"version": "1", "default": "maybe"}"#;

/// What the double shares between its gRPC services and the test.
#[derive(Default)]
struct Shared {
    /// The responses to send, taken by the first policy stream.
    responses: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PolicyResponse>>>,
    /// The sidecar's requests (ACKs, NACKs), to the test.
    requests: Mutex<Option<mpsc::Sender<PolicyRequest>>>,
    /// Reports accepted, and how many more to refuse first.
    accepted: Mutex<Vec<DecisionReport>>,
    refuse: Mutex<usize>,
    refused: Mutex<Vec<DecisionReport>>,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl PolicyDistribution for Service {
    type StreamPolicyStream =
        Pin<Box<dyn Stream<Item = Result<PolicyResponse, Status>> + Send + 'static>>;

    async fn stream_policy(
        &self,
        request: Request<Streaming<PolicyRequest>>,
    ) -> Result<Response<Self::StreamPolicyStream>, Status> {
        let responses = lock(&self.0.responses).take();
        let Some(responses) = responses else {
            return Err(Status::unavailable("the double serves one policy stream"));
        };
        let to_test = lock(&self.0.requests).clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if let Some(tx) = &to_test {
                    let _ = tx.send(r);
                }
            }
        });
        let out = UnboundedReceiverStream::new(responses).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl Rollouts for Service {
    async fn report_decisions(
        &self,
        request: Request<DecisionReport>,
    ) -> Result<Response<DecisionReportAck>, Status> {
        let report = request.into_inner();
        let mut refuse = lock(&self.0.refuse);
        let error = if *refuse > 0 {
            *refuse -= 1;
            lock(&self.0.refused).push(report);
            "the double refuses this report".to_owned()
        } else {
            lock(&self.0.accepted).push(report);
            String::new()
        };
        Ok(Response::new(DecisionReportAck { error }))
    }
}

/// The stand-in control plane (see the module doc), on its own thread.
struct ControlPlaneDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    send: tokio::sync::mpsc::UnboundedSender<PolicyResponse>,
    requests: mpsc::Receiver<PolicyRequest>,
    _thread: std::thread::JoinHandle<()>,
}

impl ControlPlaneDouble {
    fn start(refuse_first: usize) -> ControlPlaneDouble {
        let (send, responses) = tokio::sync::mpsc::unbounded_channel();
        let (requests_tx, requests) = mpsc::channel();
        let shared = Arc::new(Shared {
            responses: Mutex::new(Some(responses)),
            requests: Mutex::new(Some(requests_tx)),
            refuse: Mutex::new(refuse_first),
            ..Shared::default()
        });
        let service = Service(Arc::clone(&shared));
        let (bound_tx, bound) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the double");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1");
                let addr = listener.local_addr().expect("the bound address");
                bound_tx.send(addr).expect("the test waits for the address");
                tonic::transport::Server::builder()
                    .add_service(PolicyDistributionServer::new(service.clone()))
                    .add_service(RolloutsServer::new(service))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
                    .expect("the double serves");
            });
        });
        let addr = bound.recv_timeout(WAIT).expect("the double listens");
        ControlPlaneDouble {
            addr,
            shared,
            send,
            requests,
            _thread: thread,
        }
    }

    /// Sends `live` as version `version`, with `shadow` (version, bundle) beside it.
    fn send(&self, version: u64, live: &str, shadow: Option<(u64, &str)>, nonce: &str) {
        let (shadow_version, shadow_bundle) = shadow.unwrap_or((0, ""));
        let response = PolicyResponse {
            version,
            content_hash: sha256_hex(live.as_bytes()),
            nonce: nonce.into(),
            bundle: live.as_bytes().to_vec(),
            shadow_version,
            shadow_content_hash: if shadow_bundle.is_empty() {
                String::new()
            } else {
                sha256_hex(shadow_bundle.as_bytes())
            },
            shadow_bundle: shadow_bundle.as_bytes().to_vec(),
            ..PolicyResponse::default()
        };
        self.send.send(response).expect("the double runs");
    }

    /// The sidecar's answer to `nonce`.
    fn answer(&self, nonce: &str) -> PolicyRequest {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self
                .requests
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {nonce} from the sidecar"));
            if r.response_nonce == nonce {
                return r;
            }
        }
    }

    /// Accepted reports, summed: per (version, shadow) counts, and per
    /// (tool, live, shadow) differences.
    fn totals(&self) -> Totals {
        let accepted = lock(&self.shared.accepted);
        let mut t = Totals::default();
        for r in accepted.iter() {
            for v in &r.versions {
                let e = t.versions.entry((v.version, v.shadow)).or_default();
                e.calls += v.calls;
                e.denied += v.denied;
                e.rate_limited += v.rate_limited;
                e.approval_required += v.approval_required;
            }
            for d in &r.differences {
                *t.differences
                    .entry((
                        d.server.clone(),
                        d.tool.clone(),
                        d.live.clone(),
                        d.shadow.clone(),
                    ))
                    .or_default() += d.count;
            }
            t.samples.extend(r.samples.iter().cloned());
        }
        t
    }

    /// Waits until the accepted reports satisfy `done`.
    fn wait_totals(&self, what: &str, done: impl Fn(&Totals) -> bool) -> Totals {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.totals();
            if done(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the reports add up to {t:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Debug, Default)]
struct Totals {
    versions: HashMap<(u64, bool), VersionCounts>,
    differences: HashMap<(String, String, String, String), u64>,
    samples: Vec<tollgate_proto::v1::ShadowSample>,
}

impl Totals {
    fn calls(&self, version: u64, shadow: bool) -> u64 {
        self.versions.get(&(version, shadow)).map_or(0, |v| v.calls)
    }

    fn denied(&self, version: u64, shadow: bool) -> u64 {
        self.versions
            .get(&(version, shadow))
            .map_or(0, |v| v.denied)
    }

    fn echo_denials(&self) -> u64 {
        let key = (
            "default".into(),
            "echo".into(),
            "allow".into(),
            "deny".into(),
        );
        self.differences.get(&key).copied().unwrap_or(0)
    }
}

/// Locks `m`, whether or not a panic poisoned it (the test reports that panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn text_of(step: &Value) -> &str {
    step["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[test]
fn the_agent_sees_live_decisions_and_the_reports_list_what_the_shadow_would_deny() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let cp = ControlPlaneDouble::start(1);
    // The first bundle waits in the double until the sidecar's stream opens.
    cp.send(1, LIVE, Some((2, SHADOW)), "n1");
    let everything = peers.everything(Transport::StreamableHttp);
    let state = Scratch::new("shadow-state");
    let sidecar = sidecar::builder()
        .upstream(everything.url())
        .node_id(NODE)
        .control_plane(format!("http://{}", cp.addr), state.path())
        .arg("--decision-report-interval")
        .arg("200ms")
        .wait_ready()
        .start();
    let ack = cp.answer("n1");
    assert!(
        ack.error_detail.is_none(),
        "v1 with shadow v2: {:?}",
        ack.error_detail
    );
    assert_eq!(ack.version_info, "1");

    let client = peers.client();
    let out = client.steps(
        &sidecar.mcp_url(),
        &json!([
            { "op": "call", "name": "echo", "arguments": { "message": "hello" }, "repeat": 3 },
            { "op": "call", "name": "get-sum", "arguments": { "a": 1, "b": 2 } }
        ]),
    );
    let results = out["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {out}"));
    assert_eq!(results.len(), 4, "{out:#}");
    for step in &results[..3] {
        assert_eq!(step["result"]["isError"], json!(false), "{step:#}");
        assert_eq!(text_of(step), "Echo: hello", "the live allow: {step:#}");
    }
    assert_eq!(results[3]["result"]["isError"], json!(false), "{out:#}");

    // The first report was refused: what it held came with the next ones.
    let t = cp.wait_totals("4 calls decided by v1 and by shadow v2", |t| {
        t.calls(1, false) >= 4 && t.calls(2, true) >= 4
    });
    assert_eq!(lock(&cp.shared.refused).len(), 1, "one report refused");
    assert_eq!((t.calls(1, false), t.denied(1, false)), (4, 0), "{t:#?}");
    assert_eq!((t.calls(2, true), t.denied(2, true)), (4, 3), "{t:#?}");
    assert_eq!(t.echo_denials(), 3, "{t:#?}");
    assert_eq!(t.differences.len(), 1, "get-sum is decided alike: {t:#?}");
    let sample = t
        .samples
        .first()
        .unwrap_or_else(|| panic!("no sample: {t:#?}"));
    assert_eq!(
        (
            sample.server.as_str(),
            sample.tool.as_str(),
            sample.grant.as_str()
        ),
        ("default", "echo", NODE)
    );
    assert_eq!(
        (sample.live.as_str(), sample.shadow.as_str()),
        ("allow", "deny")
    );
    assert_eq!(sample.live_rule, "(default allow)");
    assert_eq!(sample.shadow_rule, "/tools/echo");
    assert_eq!(sample.shadow_reason, "v2 retires echo");
    assert_eq!(
        sample.arguments_sha256,
        sha256_hex(br#"{"message":"hello"}"#)
    );
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("tollgate_shadow_differences_total{live=\"allow\",shadow=\"deny\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_decision_reports_total{result=\"refused\"} 1"),
        "{metrics}"
    );

    // A new live version with a shadow that does not compile: NACKed naming
    // the shadow; v1 and shadow v2 stay.
    cp.send(3, SHADOW, Some((4, INVALID)), "n2");
    let nack = cp.answer("n2");
    let detail = nack.error_detail.expect("a NACK");
    assert!(detail.message.contains("shadow, version 4"), "{detail:?}");
    assert_eq!(nack.version_info, "1");
    let out = client.steps(
        &sidecar.mcp_url(),
        &json!([{ "op": "call", "name": "echo", "arguments": { "message": "again" } }]),
    );
    assert_eq!(text_of(&out["results"][0]), "Echo: again", "{out:#}");
    cp.wait_totals("the shadow still decides", |t| t.echo_denials() == 4);

    // Without a shadow: only the live version counts, no more differences.
    cp.send(1, LIVE, None, "n3");
    assert!(cp.answer("n3").error_detail.is_none());
    let out = client.steps(
        &sidecar.mcp_url(),
        &json!([{ "op": "call", "name": "echo", "arguments": { "message": "last" } }]),
    );
    assert_eq!(text_of(&out["results"][0]), "Echo: last", "{out:#}");
    let t = cp.wait_totals("the last call counted", |t| t.calls(1, false) == 6);
    assert_eq!(t.calls(2, true), 5, "{t:#?}");
    assert_eq!(t.echo_denials(), 4, "{t:#?}");
}
