//! `tollgate serve --approval-webhook` as a whole binary, with a node filing
//! requests over a raw gRPC approvals stream and a plain HTTP/1.1 receiver
//! on 127.0.0.1 standing in for the chat hook.
//!
//! - each new request is POSTed once, its `X-Tollgate-Signature` the
//!   HMAC-SHA256 of `timestamp.body` with the secret from
//!   `--approval-webhook-secret-file`, naming who wants which tool and the
//!   page under `--public-url`;
//! - with the hook down (a closed port), filing and retries are answered
//!   while the webhook's retries are still pending, and the retries are
//!   then counted until the notice is given up.

#[path = "approvals_cp/node.rs"]
mod node;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::{ApprovalsNode, request};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_e2e::Scratch;
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::net::free_addr;
use tollgate_proto::v1::ApprovalState;

/// How long a notice, or the end of its retries, may take.
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "a-webhook-secret-of-some-length-0123456789";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Notice {
    headers: BTreeMap<String, String>,
    body: String,
}

/// An HTTP/1.1 receiver answering 200 to everything, keeping what it got.
fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Notice>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap_or_else(|e| panic!("{e}")));
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // the request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            keep.lock().unwrap_or_else(|e| e.into_inner()).push(Notice {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (addr, got)
}

/// HMAC-SHA256 (RFC 2104), written out so the check does not share code
/// with the control plane.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::digest([pad(0x36).as_slice(), message].concat());
    let outer = Sha256::digest([pad(0x5c).as_slice(), inner.as_slice()].concat());
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_new_request_is_posted_signed_with_its_page() {
    let (addr, got) = receiver();
    let scratch = Scratch::new("webhook");
    let secret_file = scratch.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap_or_else(|e| panic!("{e}"));
    let hook = format!("http://{addr}/hooks/approvals");
    let cp = tokio::task::block_in_place(|| {
        ControlPlane::start_with_args(&[
            "--approval-webhook",
            &hook,
            "--approval-webhook-secret-file",
            secret_file.to_str().unwrap_or_default(),
            "--public-url",
            "https://tollgate.example.com/",
        ])
    });
    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;
    let req = request("delete", r#"{"path":"/srv"}"#, Duration::from_secs(600));
    assert_eq!(a.file(req.clone()).await.error, "");

    tokio::task::block_in_place(|| {
        wait_until("the notice", || {
            !got.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
        })
    });
    let notice = got.lock().unwrap_or_else(|e| e.into_inner())[0].clone();
    let timestamp = &notice.headers["x-tollgate-timestamp"];
    let sent_at: i64 = timestamp
        .parse()
        .unwrap_or_else(|e| panic!("{timestamp}: {e}"));
    assert!((node::now_ms() / 1000 - sent_at).abs() < 300, "{sent_at}");
    let expected = hmac_sha256(
        SECRET.as_bytes(),
        format!("{timestamp}.{}", notice.body).as_bytes(),
    );
    assert_eq!(
        notice.headers["x-tollgate-signature"],
        format!("sha256={expected}")
    );
    assert_eq!(notice.headers["content-type"], "application/json");

    let body: Value = serde_json::from_str(&notice.body).unwrap_or_else(|e| panic!("{e}"));
    let page = format!("https://tollgate.example.com/approvals/{}", req.id);
    let approval = &body["approval"];
    assert_eq!(approval["id"], req.id.as_str());
    assert_eq!(approval["node"], "node-a");
    assert_eq!(approval["grant"], "ci");
    assert_eq!(approval["server"], "files");
    assert_eq!(approval["tool"], "delete");
    assert_eq!(approval["arguments_sha256"], req.arguments_sha256.as_str());
    assert_eq!(approval["url"], page.as_str());
    let expires = approval["expires"].as_str().unwrap_or_default();
    assert!(expires.ends_with('Z') && expires.contains('T'), "{expires}");
    let text = body["text"].as_str().unwrap_or_default();
    for part in ["node-a", "delete", "files", "ci", &page, expires] {
        assert!(text.contains(part), "{part:?} not in {text:?}");
    }
    // Counted once the receiver's 2xx is read, which may be just after it
    // recorded the notice.
    tokio::task::block_in_place(|| {
        wait_until("the delivery counted", || {
            cp.metric("tollgate_controlplane_approval_webhook_delivered_total") == 1.0
        })
    });
    // Decisions and uses are not new requests: no more notices.
    let alice = tokio::task::block_in_place(|| {
        cp.cli(&["token", "create", "--role", "approver", "--name", "alice"])
    });
    let alice = alice.stdout.trim().to_owned();
    let approved = tokio::task::block_in_place(|| {
        cp.cli_with_token(&alice, &["approvals", "approve", &req.id])
    });
    assert!(approved.status.success(), "{}", approved.stderr);
    assert_eq!(a.decided().await.state, ApprovalState::Approved as i32);
    let second = request("write", "{}", Duration::from_secs(600));
    assert_eq!(a.file(second.clone()).await.error, "");
    tokio::task::block_in_place(|| {
        wait_until("the second notice", || {
            got.lock().unwrap_or_else(|e| e.into_inner()).len() >= 2
        })
    });
    let notices = got.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(notices[1].body.contains(&second.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_is_down_never_holds_up_filing_or_use() {
    // Nothing listens here: every try is refused.
    let down = free_addr();
    let hook = format!("http://{down}/hook");
    let mut cp = tokio::task::block_in_place(|| {
        ControlPlane::start_with_args(&["--approval-webhook", &hook])
    });
    let generated = cp.data_dir().join("approval-webhook-secret");
    assert!(generated.exists(), "no generated secret in the data dir");

    let mut a = ApprovalsNode::connect(&cp.url(), "node-a").await;
    let req = request("delete", "{}", Duration::from_secs(600));
    assert_eq!(a.file(req.clone()).await.error, "");
    let answer = a.use_approval(&req, "").await;
    assert_eq!(answer.state, ApprovalState::Pending as i32);
    // Both answered while the notice is still being retried (5 tries with
    // 0.5 s, 1 s, 2 s and 4 s between them): not given up yet.
    let dropped = "tollgate_controlplane_approval_webhook_dropped_total";
    let failures = "tollgate_controlplane_approval_webhook_failures_total";
    assert_eq!(cp.metric(dropped), 0.0);

    tokio::task::block_in_place(|| wait_until("the notice given up", || cp.metric(dropped) == 1.0));
    assert_eq!(cp.metric(failures), 5.0);
    assert_eq!(
        cp.metric("tollgate_controlplane_approval_webhook_delivered_total"),
        0.0
    );
    let output = cp.process().output();
    assert!(
        output.contains("approval webhook gave up"),
        "no warning in the log:\n{output}"
    );
}
