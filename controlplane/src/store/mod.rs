//! Where policy versions live: an append-only list of immutable versions,
//! numbered 1, 2, 3… and addressed by the SHA-256 of their content.
//!
//! The trait is synchronous (SQLite is); async callers run it on the blocking
//! pool. PostgreSQL for several replicas implements the same trait later.

mod sqlite;

pub use sqlite::SqliteStore;

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
}

/// The versions of the fleet's policy.
pub trait PolicyStore: Send + Sync + 'static {
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
