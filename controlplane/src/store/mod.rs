//! Where policy versions live: an append-only list of immutable versions,
//! numbered 1, 2, 3… and addressed by the SHA-256 of their content; per
//! node, the versions it refused (NACKed), so that a refused version is
//! never resent to that node, even by a control plane restarted since; and
//! the deployment's secrets, made once and kept for its lifetime.
//!
//! Beside the policy, the store keeps the operators' tokens (a salted hash
//! each, never the token), the audit trail of what operators did, and the
//! fleet's approval requests with where each stands.
//!
//! The trait is synchronous (SQLite is); async callers run it on the blocking
//! pool. PostgreSQL for several replicas implements the same trait later.

mod rollouts;
mod sqlite;

pub use rollouts::{RolloutStore, StoredRollout};

pub use sqlite::SqliteStore;

use tollgate_policy::approvals::{ApprovalRecord, ApprovalState};

use crate::role::Role;

/// One stored policy version. Never changes once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// 1, 2, 3… in push order.
    pub version: u64,
    /// SHA-256 of `content`, lowercase hex.
    pub content_hash: String,
    /// The operator's message (`-m`), possibly empty.
    pub message: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// The policy file as distributed (canonical JSON).
    pub content: Vec<u8>,
}

/// One node's refusal (NACK) of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The version refused.
    pub version: u64,
    /// SHA-256 of that version's content, lowercase hex: the refusal holds
    /// for this content only, should a store ever be rebuilt and number
    /// different content the same.
    pub content_hash: String,
    /// The node's error, on one line (message and field errors).
    pub error: String,
    /// When the NACK arrived, in seconds since the Unix epoch.
    pub at: i64,
}

/// How many refusals are kept per node, newest versions first. Only the
/// latest version is ever sent, and versions only grow, so a refusal older
/// than this many newer ones can no longer stop a send.
pub const NACKS_KEPT_PER_NODE: usize = 16;

/// One operator token as stored: who it names and a salted hash of its
/// secret. The secret itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// The token's public id (lowercase hex), part of the token itself.
    pub id: String,
    /// Unique among live tokens; what the audit trail calls its holder.
    pub name: String,
    pub role: Role,
    /// Random bytes hashed before the secret.
    pub salt: Vec<u8>,
    /// SHA-256(salt ‖ secret).
    pub hash: Vec<u8>,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// The name of the token that created it (`bootstrap`'s own: itself).
    pub created_by: String,
    /// When it was revoked (seconds since the Unix epoch); `None` while live.
    pub revoked_at: Option<i64>,
}

/// One operator action in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Seconds since the Unix epoch.
    pub at: i64,
    /// The name of the token that acted.
    pub actor: String,
    /// What was attempted, e.g. `policy.push`, `token.revoke`.
    pub action: String,
    /// What it was done to, e.g. `version 3`, a token's name.
    pub target: String,
    /// `accepted`, `unchanged`, `refused`, `created`, `revoked`, or
    /// `denied: needs role R`.
    pub outcome: String,
    /// More about it: the first validation error, a role, a token id.
    pub detail: String,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("policy store (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the policy store lock was poisoned by a panic")]
    Poisoned,
    #[error("the deployment secret `{name}` cannot be made or read: {reason}")]
    Secret { name: String, reason: String },
    #[error(
        "the store in {path} has schema version {found}, newer than this tollgate knows \
         ({known}); run the tollgate release that wrote it, or a newer one"
    )]
    NewerSchema {
        path: String,
        found: i64,
        known: i64,
    },
    #[error(
        "a live operator token is already named {0:?}; pick another name, or revoke that one \
         first (`tollgate token revoke {0}`)"
    )]
    TokenNameTaken(String),
    #[error("the store holds a token with role {0:?}, which this tollgate does not know")]
    UnknownRole(String),
    #[error(
        "the store holds an approval request in state {0:?}, which this tollgate does not know"
    )]
    UnknownApprovalState(String),
    #[error("the store task failed: {0}")]
    Task(String),
}

/// The versions of the fleet's policy.
pub trait PolicyStore: RolloutStore + Send + Sync + 'static {
    /// Appends `content` as a new version, unless the latest version already
    /// has exactly this content: then returns the latest and `false`.
    ///
    /// Deduplicating against the latest only (not every older version) keeps
    /// a rollback — pushing an older version's content again — a real push
    /// that the fleet applies.
    fn append(
        &self,
        content: &[u8],
        content_hash: &str,
        message: &str,
        created_at: i64,
    ) -> Result<(StoredVersion, bool), StoreError>;

    /// The newest version, if any.
    fn latest(&self) -> Result<Option<StoredVersion>, StoreError>;

    /// One version by number.
    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError>;

    /// Every version, oldest first, without content.
    fn list(&self) -> Result<Vec<StoredVersion>, StoreError>;

    /// Records that `node_id` refused `nack.version`, durably, replacing an
    /// earlier refusal of the same version. Keeps the node's
    /// [`NACKS_KEPT_PER_NODE`] newest versions.
    fn record_nack(&self, node_id: &str, nack: &Nack) -> Result<(), StoreError>;

    /// The versions `node_id` refused, oldest version first.
    fn nacks(&self, node_id: &str) -> Result<Vec<Nack>, StoreError>;

    /// The deployment secret `name`: the stored value, or, when there is
    /// none yet, `make()`'s, stored durably before it is returned. Every later
    /// call, in this process or another on the same store, returns the same
    /// value.
    fn secret_or_create(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<Vec<u8>, StoreError>,
        created_at: i64,
    ) -> Result<Vec<u8>, StoreError>;
    /// Stores a new token. Fails with [`StoreError::TokenNameTaken`] when a
    /// live token already has its name.
    fn add_token(&self, token: &StoredToken) -> Result<(), StoreError>;

    /// Every token, revoked ones included, oldest first.
    fn tokens(&self) -> Result<Vec<StoredToken>, StoreError>;

    /// Marks the live token `id` revoked at `at`; `false` if there is no
    /// live token with that id.
    fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError>;

    /// Appends one entry to the audit trail.
    fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// The newest `limit` entries at or after `since` (seconds since the
    /// Unix epoch), oldest first.
    fn audit_since(&self, since: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores an approval request as it now stands, replacing the row of
    /// the same id.
    fn put_approval(&self, record: &ApprovalRecord) -> Result<(), StoreError>;

    /// Every stored approval request, oldest first.
    fn approvals(&self) -> Result<Vec<ApprovalRecord>, StoreError>;

    /// Deletes the requests that ended (denied, expired, used) before
    /// `before_ms` (Unix milliseconds), as the ledger forgets them; returns
    /// how many.
    fn forget_ended_approvals(&self, before_ms: i64) -> Result<usize, StoreError>;

    /// Makes everything written so far durable in the store's main file, for
    /// a clean stop.
    fn flush(&self) -> Result<(), StoreError>;
}

/// SHA-256 of `content` in lowercase hex: a version's content address.
pub fn content_hash(content: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let digest = Sha256::digest(content);
    let mut hex = String::with_capacity(64);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The state an approval request is stored as ([`ApprovalState::as_str`]).
pub fn approval_state(s: &str) -> Option<ApprovalState> {
    [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::Expired,
        ApprovalState::Used,
    ]
    .into_iter()
    .find(|state| state.as_str() == s)
}
