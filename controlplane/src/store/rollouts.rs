//! Where rollouts live: one row a rollout (its record, rewritten on every
//! change), and which versions are staged — pushed for a rollout, so stored
//! but not what every node is sent.
//!
//! What every node is sent without a rollout (the served version) is the
//! newest version not staged; a rollout that completes over every node
//! unstages its version, which makes it the served one.

use rusqlite::{OptionalExtension, params};

use super::sqlite::{COLUMNS, SqliteStore, row};
use super::{StoreError, StoredVersion};

/// One stored rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRollout {
    /// 1, 2, 3…: the id is `r{seq}`.
    pub seq: u64,
    pub id: String,
    /// Its state's name, for listing without decoding.
    pub state: String,
    /// The rollout as `rollout::record` encodes it.
    pub record: String,
    pub updated_ms: i64,
}

/// How many rollouts `rollouts` returns at most, newest first.
pub const ROLLOUTS_LISTED: usize = 100;

/// Rollouts and staged versions.
pub trait RolloutStore {
    /// Writes a rollout (new, or its new state).
    fn put_rollout(&self, rollout: &StoredRollout) -> Result<(), StoreError>;
    /// The newest [`ROLLOUTS_LISTED`] rollouts, newest first.
    fn rollouts(&self) -> Result<Vec<StoredRollout>, StoreError>;
    /// Marks `version` staged (`true`) or served (`false`).
    fn stage(&self, version: u64, staged: bool) -> Result<(), StoreError>;
    /// Whether `version` is staged.
    fn staged(&self, version: u64) -> Result<bool, StoreError>;
    /// The newest version that is not staged: what every node is sent.
    fn served(&self) -> Result<Option<StoredVersion>, StoreError>;
}

impl RolloutStore for SqliteStore {
    fn put_rollout(&self, r: &StoredRollout) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO rollouts (seq, id, state, record, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (seq) DO UPDATE SET state = ?3, record = ?4, updated_ms = ?5",
            params![r.seq as i64, r.id, r.state, r.record, r.updated_ms],
        )?;
        Ok(())
    }

    fn rollouts(&self) -> Result<Vec<StoredRollout>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT seq, id, state, record, updated_ms FROM rollouts ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([ROLLOUTS_LISTED as i64], |r| {
            Ok(StoredRollout {
                seq: r.get::<_, i64>(0)? as u64,
                id: r.get(1)?,
                state: r.get(2)?,
                record: r.get(3)?,
                updated_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn stage(&self, version: u64, staged: bool) -> Result<(), StoreError> {
        let conn = self.conn()?;
        if staged {
            conn.execute(
                "INSERT OR IGNORE INTO staged_versions (version) VALUES (?1)",
                [version as i64],
            )?;
        } else {
            conn.execute(
                "DELETE FROM staged_versions WHERE version = ?1",
                [version as i64],
            )?;
        }
        Ok(())
    }

    fn staged(&self, version: u64) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let found = conn
            .query_row(
                "SELECT 1 FROM staged_versions WHERE version = ?1",
                [version as i64],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    fn served(&self) -> Result<Option<StoredVersion>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM versions WHERE version NOT IN
                     (SELECT version FROM staged_versions) ORDER BY version DESC LIMIT 1"
                ),
                [],
                row,
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PolicyStore;

    #[test]
    fn a_staged_version_is_stored_but_not_served_and_rollouts_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("opens");
        store.append(b"{}", "h1", "", 1).expect("v1");
        store.append(b"{ }", "h2", "", 2).expect("v2");
        store.stage(2, true).expect("stages");
        assert!(store.staged(2).expect("reads"));
        assert_eq!(store.served().expect("reads").map(|v| v.version), Some(1));
        assert_eq!(store.latest().expect("reads").map(|v| v.version), Some(2));
        store.stage(2, false).expect("serves");
        assert_eq!(store.served().expect("reads").map(|v| v.version), Some(2));

        let mut r = StoredRollout {
            seq: 1,
            id: "r1".to_owned(),
            state: "Progressing".to_owned(),
            record: "{}".to_owned(),
            updated_ms: 5,
        };
        store.put_rollout(&r).expect("writes");
        r.state = "Paused".to_owned();
        store.put_rollout(&r).expect("rewrites");
        drop(store);
        let again = SqliteStore::open(dir.path()).expect("reopens");
        assert_eq!(again.rollouts().expect("reads"), vec![r]);
    }
}
