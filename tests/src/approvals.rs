//! A standalone sidecar's approval endpoints on its admin port, as a person
//! (or a test) uses them: list, read, approve and deny requests, and wait
//! until a held call has filed one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::net::{self, Reply};

/// `GET /approvals[?state=STATE]`: the requests, newest first.
pub fn list(admin: SocketAddr, state: Option<&str>) -> Vec<Value> {
    let path = match state {
        Some(s) => format!("/approvals?state={s}"),
        None => "/approvals".to_owned(),
    };
    let reply = net::get(admin, &path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
    let json: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", reply.text()));
    json["approvals"]
        .as_array()
        .unwrap_or_else(|| panic!("GET {path} has no `approvals`: {json}"))
        .clone()
}

/// `GET /approvals/ID`.
pub fn get(admin: SocketAddr, id: &str) -> Reply {
    net::get(admin, &format!("/approvals/{id}")).unwrap_or_else(|e| panic!("GET {id}: {e}"))
}

/// `POST /approvals/ID/VERB` (`approve` or `deny`) with a JSON body.
pub fn decide(admin: SocketAddr, id: &str, verb: &str, body: &Value) -> Reply {
    let text = body.to_string();
    net::request(
        admin,
        "POST",
        &format!("/approvals/{id}/{verb}"),
        &[("Content-Type", "application/json")],
        Some(text.as_bytes()),
    )
    .unwrap_or_else(|e| panic!("POST /approvals/{id}/{verb}: {e}"))
}

/// Approves `id`, asserting it worked.
pub fn approve(admin: SocketAddr, id: &str) {
    let reply = decide(
        admin,
        id,
        "approve",
        &serde_json::json!({"by": "alice", "reason": "fine"}),
    );
    assert_eq!(reply.status, 200, "approve {id}: {}", reply.text());
}

/// Waits (up to 30 s) until a pending request other than those in `seen`
/// exists, and returns it.
pub fn wait_new_pending(admin: SocketAddr, seen: &[String]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = list(admin, Some("pending"))
            .into_iter()
            .find(|r| !seen.iter().any(|s| r["id"] == s.as_str()))
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no new pending approval request within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `ap_…` id in a text, if any.
pub fn id_in(text: &str) -> Option<String> {
    let at = text.find("ap_")?;
    let id: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (id.len() == 29).then_some(id)
}
