//! What every transport does with a held call (a single `tools/call` whose
//! decision is `require_approval`): use an approval if one is granted,
//! else find or file the request, hold the call up to the rule's `hold`
//! while a person may decide, and answer pending, denied or refused.
//!
//! Nothing is forwarded unless the ledger granted this exact call (grant,
//! server, tool, arguments digest) just now; a grant is used once.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use tollgate_policy::ApprovalSpec;

use super::canonical::{canonical_value, sha256_hex};
use super::pending::{self, PendingForm};
use super::{ApprovalRecord, ApprovalState, Approvals, CallKey, UseOutcome, ids, now_ms};
use crate::mcp::request_state::{self, StateError};
use crate::snapshot::Snapshot;
use crate::verdict::RefusedCall;

/// The protocol revision whose clients get `input_required`.
const MRTR_VERSION: &str = "2026-07-28";
/// Where a 2026-07-28 request names its protocol revision.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// Where a 2026-07-28 request declares its capabilities.
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// A held call and what is known about its request.
#[derive(Debug)]
pub struct HeldCall<'a> {
    /// The server (its name in the policy).
    pub server: &'a str,
    /// The policy that decided.
    pub snapshot: &'a Snapshot,
    /// The caller's grant.
    pub grant: &'a str,
    /// The MCP session, if any.
    pub session: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The decision.
    pub refused: &'a RefusedCall,
    /// The message's bytes.
    pub message: &'a [u8],
}

/// What to do with a held call.
#[derive(Debug)]
pub enum Resolution {
    /// Forward this message (approved: used now, once).
    Forward(Bytes),
    /// Answer with this JSON-RPC response; nothing is forwarded.
    Answer(Bytes),
}

/// Resolves a held call; may wait up to the rule's `hold`.
pub async fn resolve(sc: &Approvals, call: HeldCall<'_>) -> Resolution {
    let id: Value = call
        .refused
        .id
        .as_ref()
        .and_then(|raw| serde_json::from_slice(raw).ok())
        .unwrap_or(Value::Null);
    let Ok(message) = serde_json::from_slice::<Value>(call.message) else {
        // The peek read it; a failure here means it is not what it seemed.
        return Resolution::Answer(pending::tool_error(
            &id,
            "the call could not be read to request an approval; send it as one JSON-RPC message",
            None,
        ));
    };
    let params = message.get("params");
    let canonical = params
        .and_then(|p| p.get("arguments"))
        .map_or_else(|| "{}".to_owned(), canonical_value);
    let key = CallKey {
        grant: call.grant.to_owned(),
        server: call.server.to_owned(),
        tool: call.refused.tool.to_string(),
        arguments_sha256: sha256_hex(&canonical),
    };
    let form = form(sc, params, call.headers, call.session);
    let spec = call.refused.decision.approval.unwrap_or(ApprovalSpec {
        timeout: std::time::Duration::from_secs(600),
        hold: std::time::Duration::ZERO,
        show_arguments: false,
    });
    let url_of = |r: &ApprovalRecord| format!("{}/approvals/{}", sc.url, r.id);

    let state = params.and_then(|p| p.get("requestState"));
    let outcome = match state {
        Some(text) => match open_state(sc, call.snapshot, text, &key) {
            Ok(named) => sc.broker.use_for(&key, Some(&named)).await,
            Err(e) => {
                return Resolution::Answer(pending::tool_error(&id, &e.to_string(), None));
            }
        },
        None => sc.broker.use_for(&key, None).await,
    };
    let record = match outcome {
        UseOutcome::Granted(_) => return Resolution::Forward(forwarded(call.message, &message)),
        UseOutcome::Found(r) if r.state == ApprovalState::Pending => r,
        UseOutcome::Found(r) if r.state == ApprovalState::Denied && now_ms() < r.expires_ms => {
            return Resolution::Answer(pending::denied(&id, &r, &url_of(&r)));
        }
        UseOutcome::Found(_) | UseOutcome::None => {
            match file(sc, &call, key.clone(), &canonical, &spec).await {
                Ok(r) => r,
                Err(e) => {
                    return Resolution::Answer(pending::tool_error(
                        &id,
                        &format!("This call needs an approval, and none could be requested: {e}"),
                        None,
                    ));
                }
            }
        }
    };

    if !spec.hold.is_zero() {
        sc.events.record(&record, "held");
        match sc.broker.wait(&record.id, spec.hold).await {
            Some(r) if r.state == ApprovalState::Approved => {
                if let UseOutcome::Granted(_) = sc.broker.use_for(&key, Some(&r.id)).await {
                    return Resolution::Forward(forwarded(call.message, &message));
                }
            }
            Some(r) if r.state == ApprovalState::Denied => {
                return Resolution::Answer(pending::denied(&id, &r, &url_of(&r)));
            }
            Some(r) if r.state == ApprovalState::Expired => {
                let text = format!(
                    "Approval {} expired before anyone decided it; call the tool again to request a new approval.",
                    r.id
                );
                return Resolution::Answer(pending::tool_error(&id, &text, None));
            }
            _ => {}
        }
    }

    sc.events.record(&record, "pending");
    let sealed = (form == PendingForm::InputRequired)
        .then(|| {
            state_key(sc, call.snapshot).and_then(|k| {
                k.seal(&request_state::ApprovalState {
                    approval_id: record.id.clone(),
                    grant: key.grant.clone(),
                    server: key.server.clone(),
                    tool: key.tool.clone(),
                    arguments_sha256: key.arguments_sha256.clone(),
                    expires_ms: record.expires_ms,
                })
            })
        })
        .flatten();
    Resolution::Answer(pending::pending(
        &id,
        &record,
        &url_of(&record),
        form,
        sealed,
    ))
}

/// The message to forward: as it came, or, on a 2026-07-28 retry, without
/// the `requestState` and `inputResponses` that were the sidecar's.
fn forwarded(raw: &[u8], message: &Value) -> Bytes {
    let mine = message
        .get("params")
        .is_some_and(|p| p.get("requestState").is_some() || p.get("inputResponses").is_some());
    if !mine {
        return Bytes::copy_from_slice(raw);
    }
    let mut out = message.clone();
    if let Some(p) = out.get_mut("params").and_then(Value::as_object_mut) {
        p.remove("requestState");
        p.remove("inputResponses");
    }
    Bytes::from(out.to_string())
}

/// The key `requestState`s are sealed with: the deployment's, else this
/// sidecar's own.
fn state_key<'a>(sc: &'a Approvals, snapshot: &'a Snapshot) -> Option<&'a request_state::StateKey> {
    snapshot
        .state_key()
        .map(|k| &**k)
        .or(sc.state_key.as_deref())
}

/// Opens a retry's `requestState` for `key`; the approval id it names.
fn open_state(
    sc: &Approvals,
    snapshot: &Snapshot,
    text: &Value,
    key: &CallKey,
) -> Result<String, StateError> {
    let text = text
        .as_str()
        .filter(|t| t.len() <= request_state::MAX_STATE)
        .ok_or(StateError::Malformed)?;
    let Some(state_key) = state_key(sc, snapshot) else {
        return Err(StateError::Forged);
    };
    let call = request_state::ApprovalState {
        approval_id: String::new(),
        grant: key.grant.clone(),
        server: key.server.clone(),
        tool: key.tool.clone(),
        arguments_sha256: key.arguments_sha256.clone(),
        expires_ms: 0,
    };
    state_key.open(text, &call, now_ms()).map(|s| s.approval_id)
}

/// Files a new request for `key`.
/// The largest arguments shown to approvers, in bytes of canonical JSON
/// (larger ones are shown by digest only).
const MAX_SHOWN_ARGUMENTS: usize = 64 * 1024;

async fn file(
    sc: &Approvals,
    call: &HeldCall<'_>,
    key: CallKey,
    canonical: &str,
    spec: &ApprovalSpec,
) -> Result<ApprovalRecord, String> {
    let id = ids::new_id().ok_or("the system gave no randomness for a request id")?;
    let now = now_ms();
    let record = ApprovalRecord {
        id,
        call: key,
        node: sc.node.to_string(),
        session: call.session.unwrap_or_default().to_owned(),
        // Approvers see the digest, and the arguments only where the rule
        // says `show_arguments` (and they fit the control plane's bound).
        arguments_json: if spec.show_arguments && canonical.len() <= MAX_SHOWN_ARGUMENTS {
            canonical.to_owned()
        } else {
            String::new()
        },
        policy_version: call.refused.policy_version.to_string(),
        rule: call.refused.decision.rule.to_string(),
        created_ms: now,
        expires_ms: now.saturating_add(spec.timeout.as_millis().min(i64::MAX as u128) as i64),
        state: ApprovalState::Pending,
        reason: String::new(),
        decided_by: String::new(),
        decided_ms: 0,
        used_by: String::new(),
        used_ms: 0,
    };
    sc.broker.file(record.clone()).await?;
    Ok(record)
}

/// Which pending answer the client understands.
fn form(
    sc: &Approvals,
    params: Option<&Value>,
    headers: &HeaderMap,
    session: Option<&str>,
) -> PendingForm {
    let meta = params.and_then(|p| p.get("_meta"));
    let version = meta
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
        .or_else(|| {
            headers
                .get("mcp-protocol-version")
                .and_then(|v| v.to_str().ok())
        });
    if version == Some(MRTR_VERSION) {
        let url = meta
            .and_then(|m| m.get(META_CAPABILITIES))
            .and_then(|c| c.pointer("/elicitation/url"))
            .is_some_and(Value::is_object);
        // InputRequiredResult carries no text: without a URL elicitation the
        // model would never learn whom to ask, so such clients get the tool
        // error, which names the request and the page.
        return if url {
            PendingForm::InputRequired
        } else {
            PendingForm::ToolError
        };
    }
    if session.is_some_and(|s| sc.url_sessions.contains(s)) {
        return PendingForm::UrlElicitationError;
    }
    PendingForm::ToolError
}
