//! [`PolicyStore`] on one SQLite file (`DIR/tollgate.db`): the embedded store.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{PolicyStore, StoreError, StoredVersion};

/// The embedded store. One connection behind a mutex: pushes are rare and
/// reads are small, so there is nothing to gain from a pool.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/tollgate.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("tollgate.db"))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS versions (
                 version      INTEGER PRIMARY KEY,
                 content_hash TEXT    NOT NULL,
                 message      TEXT    NOT NULL,
                 created_at   INTEGER NOT NULL,
                 content      BLOB    NOT NULL
             );
             CREATE INDEX IF NOT EXISTS versions_by_hash ON versions (content_hash);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

const COLUMNS: &str = "version, content_hash, message, created_at, content";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredVersion> {
    Ok(StoredVersion {
        version: r.get::<_, i64>(0)? as u64,
        content_hash: r.get(1)?,
        message: r.get(2)?,
        created_at: r.get(3)?,
        content: r.get(4)?,
    })
}

fn latest(conn: &Connection) -> rusqlite::Result<Option<StoredVersion>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM versions ORDER BY version DESC LIMIT 1"),
        [],
        row,
    )
    .optional()
}

impl PolicyStore for SqliteStore {
    fn append(
        &self,
        content: &[u8],
        content_hash: &str,
        message: &str,
        created_at: i64,
    ) -> Result<(StoredVersion, bool), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let last = latest(&tx)?;
        if let Some(last) = last.as_ref().filter(|v| v.content_hash == content_hash) {
            return Ok((last.clone(), false));
        }
        let version = last.map_or(1, |v| v.version + 1);
        tx.execute(
            "INSERT INTO versions (version, content_hash, message, created_at, content)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![version as i64, content_hash, message, created_at, content],
        )?;
        tx.commit()?;
        let stored = StoredVersion {
            version,
            content_hash: content_hash.to_owned(),
            message: message.to_owned(),
            created_at,
            content: content.to_vec(),
        };
        Ok((stored, true))
    }

    fn latest(&self) -> Result<Option<StoredVersion>, StoreError> {
        let conn = self.conn()?;
        Ok(latest(&conn)?)
    }

    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        let conn = self.conn()?;
        let found = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM versions WHERE version = ?1"),
                [version as i64],
                row,
            )
            .optional()?;
        Ok(found)
    }

    fn list(&self) -> Result<Vec<StoredVersion>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT version, content_hash, message, created_at, x'' FROM versions ORDER BY version",
        )?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::content_hash;

    #[test]
    fn versions_are_numbered_deduplicated_against_the_latest_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let (a, b) = (b"{\"a\":1}".as_slice(), b"{\"b\":2}".as_slice());
        let (v1, created) = store.append(a, &content_hash(a), "first", 10).expect("v1");
        assert_eq!((v1.version, created), (1, true));
        let (same, created) = store
            .append(a, &content_hash(a), "again", 11)
            .expect("same");
        assert_eq!((same.version, created), (1, false));
        let (v2, _) = store.append(b, &content_hash(b), "", 12).expect("v2");
        assert_eq!(v2.version, 2);
        // Going back to older content is a new version: a rollback.
        let (v3, created) = store
            .append(a, &content_hash(a), "rollback", 13)
            .expect("v3");
        assert_eq!((v3.version, created), (3, true));
        drop(store);

        let store = SqliteStore::open(dir.path()).expect("reopen");
        assert_eq!(store.latest().expect("latest"), Some(v3));
        assert_eq!(
            store.get(1).expect("get").map(|v| v.content),
            Some(a.to_vec())
        );
        let listed: Vec<u64> = store
            .list()
            .expect("list")
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(listed, [1, 2, 3]);
        assert_eq!(store.get(9).expect("get"), None);
    }
}
