//! The answers a held call gets when it is not forwarded: pending (in the
//! form the client understands), denied, or refused for a bad
//! `requestState`. Each is a complete JSON-RPC response.

use bytes::Bytes;
use serde_json::{Value, json};

use super::ApprovalRecord;
use crate::decision_log::rfc3339_ms;

/// JSON-RPC's "URL elicitation required" error (2025-11-25).
pub const URL_ELICITATION_REQUIRED: i32 = -32042;

/// Which pending answer a client understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingForm {
    /// 2026-07-28 with URL elicitation: an `input_required` result with a
    /// URL-mode elicitation and a sealed `requestState`.
    InputRequired,
    /// 2025-11-25 with URL elicitation: error -32042 naming the URL.
    UrlElicitationError,
    /// Anyone else: an `isError` tool result the model reads.
    ToolError,
}

/// The text shown to the agent (and to a person, in an elicitation).
pub fn pending_text(r: &ApprovalRecord, url: &str) -> String {
    format!(
        "Approval required: request {} to call `{}` on `{}` is pending. Ask an approver to \
         decide it at {url}; once approved, call the tool again with the same arguments \
         (the request expires at {}).",
        r.id,
        r.call.tool,
        r.call.server,
        rfc3339_ms(r.expires_ms)
    )
}

/// The pending answer in `form`. `state` is the sealed `requestState`
/// (only [`PendingForm::InputRequired`] uses it; without one that form
/// falls back to the tool error).
pub fn pending(
    id: &Value,
    r: &ApprovalRecord,
    url: &str,
    form: PendingForm,
    state: Option<String>,
) -> Bytes {
    let message = pending_text(r, url);
    match (form, state) {
        (PendingForm::InputRequired, Some(state)) => response(
            id,
            json!({
                "resultType": "input_required",
                "inputRequests": {
                    "approval": {
                        "method": "elicitation/create",
                        "params": {
                            "mode": "url",
                            "url": url,
                            "message": message,
                            "elicitationId": r.id,
                        },
                    },
                },
                "requestState": state,
                "_meta": meta(r, url),
            }),
        ),
        (PendingForm::UrlElicitationError, _) => Bytes::from(
            json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": URL_ELICITATION_REQUIRED,
                    "message": message,
                    "data": {
                        "elicitations": [{
                            "mode": "url",
                            "elicitationId": r.id,
                            "url": url,
                            "message": message,
                        }],
                    },
                },
            })
            .to_string(),
        ),
        _ => tool_error(id, &message, Some(meta(r, url))),
    }
}

/// The answer to a call whose approval was denied.
pub fn denied(id: &Value, r: &ApprovalRecord, url: &str) -> Bytes {
    let by = if r.decided_by.is_empty() {
        "an approver"
    } else {
        &r.decided_by
    };
    let text = format!(
        "Approval {} was denied by {by}: {}. Do not retry this call as it is.",
        r.id, r.reason
    );
    let mut m = meta(r, url);
    m["tollgate.dev/approval"]["reason"] = json!(r.reason);
    tool_error(id, &text, Some(m))
}

/// An `isError` tool result saying `text`.
pub fn tool_error(id: &Value, text: &str, meta: Option<Value>) -> Bytes {
    let mut result = json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
    });
    if let Some(m) = meta {
        result["_meta"] = m;
    }
    response(id, result)
}

fn meta(r: &ApprovalRecord, url: &str) -> Value {
    json!({
        "tollgate.dev/approval": {
            "id": r.id,
            "url": url,
            "state": r.state.as_str(),
            "expires": rfc3339_ms(r.expires_ms),
        }
    })
}

fn response(id: &Value, result: Value) -> Bytes {
    Bytes::from(json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string())
}
