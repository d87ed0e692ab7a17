//! What a node may file: an approval request from a node is hostile input,
//! checked here before anything is stored. A refusal names the field and
//! the limit, so the sidecar's log says what to fix.

use tollgate_policy::approvals::ApprovalRecord;

/// Requests one node may have pending at once.
pub const MAX_PENDING_PER_NODE: usize = 1_000;
/// Bytes of any one string field but the arguments.
pub const MAX_FIELD: usize = 1024;
/// Bytes of the arguments' canonical JSON.
pub const MAX_ARGUMENTS_JSON: usize = 64 * 1024;
/// The longest a request may wait for a person, from its creation.
pub const MAX_LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;
/// `ap_` and this many characters of lowercase base32.
const ID_RANDOM_CHARS: usize = 26;

/// Why a filed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("approval request id {0:?} is not `ap_` followed by 26 lowercase base32 characters")]
    BadId(String),
    #[error("approval request {id}: field `{field}` is {len} bytes, over the limit of {max}")]
    TooLong {
        id: String,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("approval request {id}: field `{field}` is empty; it is required")]
    Missing { id: String, field: &'static str },
    #[error("approval request {id}: `arguments_sha256` is not 64 hex characters")]
    BadDigest { id: String },
    #[error(
        "approval request {id}: `arguments_json` does not hash to `arguments_sha256`; approvers \
         would see other arguments than the call's"
    )]
    DigestMismatch { id: String },
    #[error("approval request {id}: it expires before it is created, or already expired")]
    Expired { id: String },
    #[error(
        "approval request {id}: it expires more than 24 h after its creation (or from now); \
         lower the rule's approval timeout"
    )]
    TooLate { id: String },
    #[error(
        "node {node} has {max} approval requests pending already; decide or let some expire \
         before it files more"
    )]
    TooManyPending { node: String, max: usize },
}

/// Checks `r` (its node already set from the stream's proved identity)
/// against every bound but the per-node count, at `now_ms`.
pub fn check(r: &ApprovalRecord, now_ms: i64) -> Result<(), Refused> {
    if !is_id(&r.id) {
        return Err(Refused::BadId(r.id.chars().take(64).collect()));
    }
    let id = || r.id.clone();
    for (field, value) in [
        ("node", &r.node),
        ("grant", &r.call.grant),
        ("server", &r.call.server),
        ("tool", &r.call.tool),
        ("session", &r.session),
        ("policy_version", &r.policy_version),
        ("rule", &r.rule),
        ("arguments_sha256", &r.call.arguments_sha256),
    ] {
        if value.len() > MAX_FIELD {
            return Err(Refused::TooLong {
                id: id(),
                field,
                len: value.len(),
                max: MAX_FIELD,
            });
        }
    }
    if r.arguments_json.len() > MAX_ARGUMENTS_JSON {
        return Err(Refused::TooLong {
            id: id(),
            field: "arguments_json",
            len: r.arguments_json.len(),
            max: MAX_ARGUMENTS_JSON,
        });
    }
    for (field, value) in [
        ("node", &r.node),
        ("server", &r.call.server),
        ("tool", &r.call.tool),
    ] {
        if value.is_empty() {
            return Err(Refused::Missing { id: id(), field });
        }
    }
    let digest = &r.call.arguments_sha256;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::BadDigest { id: id() });
    }
    if !r.arguments_json.is_empty()
        && !crate::store::content_hash(r.arguments_json.as_bytes()).eq_ignore_ascii_case(digest)
    {
        return Err(Refused::DigestMismatch { id: id() });
    }
    if r.expires_ms <= now_ms || r.expires_ms <= r.created_ms {
        return Err(Refused::Expired { id: id() });
    }
    if r.expires_ms - r.created_ms > MAX_LIFETIME_MS || r.expires_ms - now_ms > MAX_LIFETIME_MS {
        return Err(Refused::TooLate { id: id() });
    }
    Ok(())
}

/// Whether `id` is `ap_` and 26 characters of the RFC 4648 base32
/// alphabet, lowercase.
pub fn is_id(id: &str) -> bool {
    id.strip_prefix("ap_").is_some_and(|rest| {
        rest.len() == ID_RANDOM_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}
