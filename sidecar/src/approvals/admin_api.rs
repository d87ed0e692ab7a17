//! The admin port's approval endpoints, for a sidecar without a control
//! plane (loopback peers only):
//!
//! - `GET /approvals[?state=pending]`: the requests, newest first
//! - `GET /approvals/ID`: one request
//! - `POST /approvals/ID/approve`: approve (optional `reason`, `by`)
//! - `POST /approvals/ID/deny`: deny (`reason` required)
//!
//! A body is JSON (`{"reason": "...", "by": "..."}`) or a form
//! (`reason=...&by=...`). With a control plane every one of them answers
//! 409: requests are decided there.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use serde_json::{Value, json};

use super::{ApprovalError, ApprovalRecord, ApprovalState, Broker, DecideError, ids};
use crate::decision_log::rfc3339_ms;

/// The largest decision body read, in bytes.
pub const MAX_BODY: usize = 4096;

/// The approvals the admin port serves.
#[derive(Debug, Clone)]
pub struct AdminApprovals {
    /// Where requests live.
    pub broker: Arc<dyn Broker>,
    /// Whether a control plane decides them (then these endpoints refuse).
    pub fleet: bool,
}

/// An answer: status and JSON body.
pub type Answer = (StatusCode, Value);

fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    (status, json!({"error": message.into()}))
}

/// Whether `path` is one of these endpoints.
pub fn serves(path: &str) -> bool {
    path == "/approvals" || path.starts_with("/approvals/")
}

/// Answers one request to an approval endpoint.
pub async fn handle(
    approvals: &AdminApprovals,
    peer: SocketAddr,
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Answer {
    if !peer.ip().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "approval endpoints answer loopback clients only; decide from the sidecar's host",
        );
    }
    let rest = path
        .trim_start_matches("/approvals")
        .trim_start_matches('/');
    let mut parts = rest.splitn(2, '/');
    let id = parts.next().unwrap_or_default();
    let action = parts.next();
    if approvals.fleet {
        let shown = if ids::is_id(id) { id } else { "ID" };
        return error(
            StatusCode::CONFLICT,
            format!("decide on the control plane: tollgate approvals approve {shown}"),
        );
    }
    let broker = &approvals.broker;
    match (method, id, action) {
        (&http::Method::GET, "", None) => {
            let state = match query.and_then(|q| form_value(q.as_bytes(), "state")) {
                None => None,
                Some(s) => match parse_state(&s) {
                    Some(st) => Some(st),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "unknown state {s:?}; use pending, approved, denied, expired or used"
                            ),
                        );
                    }
                },
            };
            let list: Vec<Value> = broker.list(state).await.iter().map(to_json).collect();
            (StatusCode::OK, json!({"approvals": list}))
        }
        (&http::Method::GET, id, None) => match broker.get(id).await {
            Some(r) if ids::is_id(id) => (StatusCode::OK, to_json(&r)),
            _ => unknown(id),
        },
        (&http::Method::POST, id, Some(verb @ ("approve" | "deny"))) => {
            if !ids::is_id(id) {
                return unknown(id);
            }
            let reason = body_value(body, "reason").unwrap_or_default();
            let by = body_value(body, "by")
                .filter(|b| !b.trim().is_empty())
                .unwrap_or_else(|| "admin".to_owned());
            match broker.decide(id, verb == "approve", &reason, &by).await {
                Ok(r) => (StatusCode::OK, to_json(&r)),
                Err(e) => decide_error(e),
            }
        }
        (_, _, Some(_)) | (_, _, None) => error(
            StatusCode::NOT_FOUND,
            "not found: GET /approvals, GET /approvals/ID, POST /approvals/ID/approve or POST /approvals/ID/deny",
        ),
    }
}

fn unknown(id: &str) -> Answer {
    let shown: String = id.chars().take(64).collect();
    error(
        StatusCode::NOT_FOUND,
        ApprovalError::Unknown(shown).to_string().replace(
            "`tollgate approvals list`",
            "GET /approvals on this admin port",
        ),
    )
}

fn decide_error(e: DecideError) -> Answer {
    let status = match &e {
        DecideError::Ledger(ApprovalError::Unknown(_)) => StatusCode::NOT_FOUND,
        DecideError::Ledger(ApprovalError::NoReason(_)) | DecideError::TooLong(_) => {
            StatusCode::BAD_REQUEST
        }
        DecideError::Ledger(_) | DecideError::Remote(_) => StatusCode::CONFLICT,
    };
    if let DecideError::Ledger(ApprovalError::Unknown(id)) = &e {
        return unknown(id);
    }
    error(status, e.to_string())
}

fn parse_state(s: &str) -> Option<ApprovalState> {
    Some(match s {
        "pending" => ApprovalState::Pending,
        "approved" => ApprovalState::Approved,
        "denied" => ApprovalState::Denied,
        "expired" => ApprovalState::Expired,
        "used" => ApprovalState::Used,
        _ => return None,
    })
}

/// `name` from a JSON object or form body.
fn body_value(body: &[u8], name: &str) -> Option<String> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        let v: Value = serde_json::from_slice(body).ok()?;
        return v.get(name)?.as_str().map(str::to_owned);
    }
    form_value(body, name)
}

/// `name` from `a=b&c=d` (percent-decoded, `+` as space).
fn form_value(form: &[u8], name: &str) -> Option<String> {
    form.split(|b| *b == b'&').find_map(|pair| {
        let mut kv = pair.splitn(2, |b| *b == b'=');
        let k = kv.next()?;
        (k == name.as_bytes()).then(|| decode(kv.next().unwrap_or_default()))
    })
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request as the admin port shows it.
pub fn to_json(r: &ApprovalRecord) -> Value {
    let time = |ms: i64| (ms > 0).then(|| rfc3339_ms(ms));
    json!({
        "id": r.id,
        "state": r.state.as_str(),
        "grant": r.call.grant,
        "server": r.call.server,
        "tool": r.call.tool,
        "arguments_sha256": r.call.arguments_sha256,
        "node": r.node,
        "session": r.session,
        "policy_version": r.policy_version,
        "rule": r.rule,
        "created": time(r.created_ms),
        "expires": time(r.expires_ms),
        "reason": r.reason,
        "decided_by": r.decided_by,
        "decided": time(r.decided_ms),
        "used_by": r.used_by,
        "used": time(r.used_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_json_bodies_give_the_reason() {
        assert_eq!(
            body_value(b"reason=too+risky%21&by=bob", "reason").as_deref(),
            Some("too risky!")
        );
        assert_eq!(
            body_value(br#" {"reason":"no","by":"bob"}"#, "by").as_deref(),
            Some("bob")
        );
        assert_eq!(body_value(b"", "reason"), None);
        assert_eq!(body_value(b"reason=%4", "reason").as_deref(), Some("%4"));
    }

    #[tokio::test]
    async fn only_loopback_peers_are_answered_and_fleet_mode_sends_to_the_control_plane() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let events = super::super::events::Events::new(
            Arc::clone(&metrics),
            crate::decision_log::DecisionLog::disabled(metrics),
        );
        let broker: Arc<dyn Broker> = Arc::new(super::super::LocalBroker::new("n1".into(), events));
        let mut approvals = AdminApprovals {
            broker,
            fleet: false,
        };
        let get = http::Method::GET;
        let remote: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let (status, _) = handle(&approvals, remote, &get, "/approvals", None, b"").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = handle(&approvals, local, &get, "/approvals", None, b"").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = handle(
            &approvals,
            local,
            &get,
            "/approvals",
            Some("state=odd"),
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        approvals.fleet = true;
        let id = "ap_abcdefghijklmnopqrstuvwxyz";
        let path = format!("/approvals/{id}/approve");
        let (status, body) = handle(&approvals, local, &http::Method::POST, &path, None, b"").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body["error"],
            format!("decide on the control plane: tollgate approvals approve {id}")
        );
    }
}
