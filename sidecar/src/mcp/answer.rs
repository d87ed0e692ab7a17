//! The replies the sidecar writes itself (ARCHITECTURE.md §2): refused calls as
//! `isError` tool results the model can act on, hidden tools as the upstream's
//! own "Unknown tool" error, and JSON-RPC errors for what cannot be read.
//! Each is HTTP 200 except transport-level errors; never 401/403 for a
//! policy decision, since clients take those for authentication failures.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tollgate_policy::{Decision, Outcome};

/// JSON-RPC error codes the sidecar uses.
pub mod code {
    /// Not JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i32 = -32600;
    /// Unknown tool (what an upstream answers for a tool it lacks).
    pub const INVALID_PARAMS: i32 = -32602;
    /// The upstream could not be reached or failed.
    pub const UPSTREAM_UNAVAILABLE: i32 = -32010;
    /// The caller is not identified (grants are configured).
    pub const UNAUTHENTICATED: i32 = -32011;
    /// An `Mcp-Method`/`Mcp-Name` header disagrees with the body.
    pub const HEADER_MISMATCH: i32 = -32020;
}

/// A JSON-RPC error response.
pub fn error(id: Option<&RawValue>, code: i32, message: &str) -> Bytes {
    let id = id.map_or(Value::Null, |raw| {
        serde_json::from_str(raw.get()).unwrap_or(Value::Null)
    });
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            .to_string(),
    )
}

/// The sidecar's reply to a `tools/call` that policy refused: an `isError`
/// result for deny, rate limit and approval; the upstream's unknown-tool error
/// for a hidden tool.
pub fn refusal(
    id: Option<&RawValue>,
    tool: &str,
    decision: &Decision,
    decision_id: &str,
    policy_version: &str,
) -> Bytes {
    if decision.outcome == Outcome::Hidden {
        return error(id, code::INVALID_PARAMS, &format!("Unknown tool: {tool}"));
    }
    let text = refusal_text(tool, decision, decision_id);
    let mut details = json!({
        "decision": decision.outcome.as_str(),
        "decision_id": decision_id,
        "rule": &*decision.rule,
        "policy_version": policy_version,
    });
    if let Some(r) = decision.retry_after {
        details["retry_after_ms"] = json!(r.as_millis() as u64);
    }
    let id = id.map_or(Value::Null, |raw| {
        serde_json::from_str(raw.get()).unwrap_or(Value::Null)
    });
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "content": [{"type": "text", "text": text}],
            "isError": true,
            "_meta": {"tollgate/decision": details},
        },
    });
    Bytes::from(body.to_string())
}

/// The text the model reads.
pub fn refusal_text(tool: &str, d: &Decision, decision_id: &str) -> String {
    let reason = d
        .reason
        .as_deref()
        .unwrap_or("the policy refuses this call");
    match d.outcome {
        Outcome::RateLimited => {
            let secs = d
                .retry_after
                .map_or(1, |r| r.as_millis().div_ceil(1000).max(1));
            match &d.limit {
                Some(l) => format!(
                    "Rate limit: {} call{} per {} for {tool}; retry in {secs} s",
                    l.max,
                    if l.max == 1 { "" } else { "s" },
                    l.window
                ),
                None => format!("Rate limit: {reason}; retry in {secs} s"),
            }
        }
        Outcome::RequireApproval => format!(
            "Approval required: calling {tool} needs a person's approval, which is requested only \
             for a call sent on its own; send this call again alone (not in a batch) to request \
             it (decision {decision_id})."
        ),
        Outcome::Deny | Outcome::Hidden | Outcome::Allow => format!("Denied by policy: {reason}"),
    }
}

/// One JSON-RPC message as a complete SSE event.
pub fn sse_event(json: &[u8]) -> Bytes {
    // Compact JSON has no raw newlines, so one data line carries it.
    let mut out = Vec::with_capacity(json.len() + 22);
    out.extend_from_slice(b"event: message\ndata: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn decision(outcome: Outcome, rule: &str) -> Decision {
        let bundle = tollgate_policy::load(r#"{"version":"1","default":"deny"}"#).unwrap();
        let mut d = bundle.decide(
            &tollgate_policy::Call::new("s", "x"),
            Duration::ZERO,
            &tollgate_policy::LocalCounters::new(),
        );
        d.outcome = outcome;
        d.rule = Arc::from(rule);
        d
    }

    #[test]
    fn denied_calls_are_error_results_with_details() {
        let id = RawValue::from_string("7".into()).unwrap();
        let mut d = decision(Outcome::Deny, "/tools/delete_*");
        d.reason = Some("Deleting is not allowed.".into());
        let v: Value =
            serde_json::from_slice(&refusal(Some(&id), "delete_x", &d, "d1", "sha256:abc"))
                .unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(
            v["result"]["content"][0]["text"],
            "Denied by policy: Deleting is not allowed."
        );
        let meta = &v["result"]["_meta"]["tollgate/decision"];
        assert_eq!(meta["rule"], "/tools/delete_*");
        assert_eq!(meta["policy_version"], "sha256:abc");
        assert_eq!(meta["decision_id"], "d1");
    }

    #[test]
    fn hidden_tools_are_unknown() {
        let id = RawValue::from_string(r#""a""#.into()).unwrap();
        let d = decision(Outcome::Hidden, "/hide/0");
        let v: Value =
            serde_json::from_slice(&refusal(Some(&id), "debug_dump", &d, "d1", "v")).unwrap();
        assert_eq!(v["error"]["code"], -32602);
        assert_eq!(v["error"]["message"], "Unknown tool: debug_dump");
        assert_eq!(v["id"], "a");
    }

    #[test]
    fn sse_events_frame_one_message() {
        assert_eq!(&sse_event(b"{}")[..], b"event: message\ndata: {}\n\n");
    }
}
