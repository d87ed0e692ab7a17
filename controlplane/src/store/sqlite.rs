//! [`PolicyStore`] on one SQLite file (`DIR/tollgate.db`): the embedded store.
//!
//! Longer than 500 lines: the schema's migration steps are append-only and
//! listed in one place, beside the queries they serve.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use tollgate_policy::approvals::{ApprovalRecord, ApprovalState, CallKey};

use super::{
    AuditEntry, NACKS_KEPT_PER_NODE, Nack, PolicyStore, StoreError, StoredToken, StoredVersion,
};
use crate::role::Role;

/// The embedded store. One connection behind a mutex: pushes are rare and
/// reads are small, so there is nothing to gain from a pool.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// The schema, one step a migration: step `i` takes a store from schema
/// version `i` (`PRAGMA user_version`) to `i + 1`. Steps are append-only;
/// a released step never changes. Step 0 is the original schema, which data
/// dirs made before schema versions existed already have (version 0, the
/// table present): hence `IF NOT EXISTS`.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS versions (
         version      INTEGER PRIMARY KEY,
         content_hash TEXT    NOT NULL,
         message      TEXT    NOT NULL,
         created_at   INTEGER NOT NULL,
         content      BLOB    NOT NULL
     );
     CREATE INDEX IF NOT EXISTS versions_by_hash ON versions (content_hash);",
    "CREATE TABLE node_nacks (
         node_id      TEXT    NOT NULL,
         version      INTEGER NOT NULL,
         content_hash TEXT    NOT NULL,
         error        TEXT    NOT NULL,
         nacked_at    INTEGER NOT NULL,
         PRIMARY KEY (node_id, version)
     ) WITHOUT ROWID;",
    // Operator tokens (only a salted hash is kept), the audit trail of
    // operator actions, and the deployment's own secrets (e.g. the key that
    // salts grant token hashes in distributed bundles).
    "CREATE TABLE tokens (
         id          TEXT    PRIMARY KEY,
         name        TEXT    NOT NULL,
         role        TEXT    NOT NULL,
         salt        BLOB    NOT NULL,
         hash        BLOB    NOT NULL,
         created_at  INTEGER NOT NULL,
         created_by  TEXT    NOT NULL,
         revoked_at  INTEGER
     );
     CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
     CREATE TABLE audit (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         at          INTEGER NOT NULL,
         actor       TEXT    NOT NULL,
         action      TEXT    NOT NULL,
         target      TEXT    NOT NULL,
         outcome     TEXT    NOT NULL,
         detail      TEXT    NOT NULL
     );
     CREATE INDEX audit_by_time ON audit (at);
     CREATE TABLE secrets (
         name        TEXT    PRIMARY KEY,
         value       BLOB    NOT NULL,
         created_at  INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // Approval requests filed by nodes, and where each stands (one row a
    // request, rewritten on every change).
    "CREATE TABLE approvals (
         id               TEXT    PRIMARY KEY,
         grant_name       TEXT    NOT NULL,
         server           TEXT    NOT NULL,
         tool             TEXT    NOT NULL,
         arguments_sha256 TEXT    NOT NULL,
         node             TEXT    NOT NULL,
         session          TEXT    NOT NULL,
         arguments_json   TEXT    NOT NULL,
         policy_version   TEXT    NOT NULL,
         rule             TEXT    NOT NULL,
         created_ms       INTEGER NOT NULL,
         expires_ms       INTEGER NOT NULL,
         state            TEXT    NOT NULL,
         reason           TEXT    NOT NULL,
         decided_by       TEXT    NOT NULL,
         decided_ms       INTEGER NOT NULL,
         used_by          TEXT    NOT NULL,
         used_ms          INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // Staged rollouts (one row a rollout, its whole record rewritten on
    // every change), and the versions pushed for a rollout: stored, but not
    // what every node is sent.
    "CREATE TABLE rollouts (
         seq         INTEGER PRIMARY KEY,
         id          TEXT    NOT NULL UNIQUE,
         state       TEXT    NOT NULL,
         record      TEXT    NOT NULL,
         updated_ms  INTEGER NOT NULL
     );
     CREATE TABLE staged_versions (
         version     INTEGER PRIMARY KEY
     );",
];

impl SqliteStore {
    /// Opens (creating if needed) `dir/tollgate.db` and brings its schema up
    /// to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("tollgate.db");
        let mut conn = Connection::open(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;",
        )?;
        migrate(&mut conn, &path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

/// Applies the steps of [`MIGRATIONS`] the store lacks, each in its own
/// transaction with the version bump, so a crash mid-way leaves a store at
/// a whole step.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::NewerSchema {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // PRAGMA takes no bound parameters; `step` is a small integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", step + 1))?;
        tx.commit()?;
    }
    if found < known {
        tracing::info!(store = %path.display(), from = found, to = known, "store schema brought up to date");
    }
    Ok(())
}

pub(super) const COLUMNS: &str = "version, content_hash, message, created_at, content";

pub(super) fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredVersion> {
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

    fn record_nack(&self, node_id: &str, nack: &Nack) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO node_nacks (node_id, version, content_hash, error, nacked_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                node_id,
                nack.version as i64,
                nack.content_hash,
                nack.error,
                nack.at
            ],
        )?;
        tx.execute(
            "DELETE FROM node_nacks WHERE node_id = ?1 AND version NOT IN (
                 SELECT version FROM node_nacks WHERE node_id = ?1
                 ORDER BY version DESC LIMIT ?2)",
            params![node_id, NACKS_KEPT_PER_NODE as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn nacks(&self, node_id: &str) -> Result<Vec<Nack>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT version, content_hash, error, nacked_at FROM node_nacks
             WHERE node_id = ?1 ORDER BY version",
        )?;
        let rows = stmt.query_map([node_id], |r| {
            Ok(Nack {
                version: r.get::<_, i64>(0)? as u64,
                content_hash: r.get(1)?,
                error: r.get(2)?,
                at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn secret_or_create(
        &self,
        name: &str,
        make: &mut dyn FnMut() -> Result<Vec<u8>, StoreError>,
        created_at: i64,
    ) -> Result<Vec<u8>, StoreError> {
        let mut conn = self.conn()?;
        // IMMEDIATE: another process opening the same store waits here, so
        // the two cannot each make a different secret.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(value) = found {
            return Ok(value);
        }
        let value = make()?;
        tx.execute(
            "INSERT INTO secrets (name, value, created_at) VALUES (?1, ?2, ?3)",
            params![name, value, created_at],
        )?;
        tx.commit()?;
        Ok(value)
    }

    fn add_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        let conn = self.conn()?;
        let added = conn.execute(
            "INSERT INTO tokens (id, name, role, salt, hash, created_at, created_by, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                token.id,
                token.name,
                token.role.as_str(),
                token.salt,
                token.hash,
                token.created_at,
                token.created_by,
                token.revoked_at
            ],
        );
        match added {
            Ok(_) => Ok(()),
            // The only constraints are the id (random, 64 bits) and the live name.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::TokenNameTaken(token.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, name, role, salt, hash, created_at, created_by, revoked_at
             FROM tokens ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(2)?,
                StoredToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    // Parsed below, where an unknown role can be named.
                    role: Role::Viewer,
                    salt: r.get(3)?,
                    hash: r.get(4)?,
                    created_at: r.get(5)?,
                    created_by: r.get(6)?,
                    revoked_at: r.get(7)?,
                },
            ))
        })?;
        let mut tokens = Vec::new();
        for row in rows {
            let (role, mut token) = row?;
            token.role = role.parse().map_err(|_| StoreError::UnknownRole(role))?;
            tokens.push(token);
        }
        Ok(tokens)
    }

    fn revoke_token(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let changed = conn.execute(
            "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, at],
        )?;
        Ok(changed == 1)
    }

    fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO audit (at, actor, action, target, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                entry.at,
                entry.actor,
                entry.action,
                entry.target,
                entry.outcome,
                entry.detail
            ],
        )?;
        Ok(())
    }

    fn audit_since(&self, since: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT at, actor, action, target, outcome, detail FROM (
                 SELECT seq, at, actor, action, target, outcome, detail FROM audit
                 WHERE at >= ?1 ORDER BY seq DESC LIMIT ?2)
             ORDER BY seq",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![since, limit], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                outcome: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn put_approval(&self, r: &ApprovalRecord) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO approvals (id, grant_name, server, tool, arguments_sha256,
                 node, session, arguments_json, policy_version, rule, created_ms, expires_ms,
                 state, reason, decided_by, decided_ms, used_by, used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18)",
        )?
        .execute(params![
            r.id,
            r.call.grant,
            r.call.server,
            r.call.tool,
            r.call.arguments_sha256,
            r.node,
            r.session,
            r.arguments_json,
            r.policy_version,
            r.rule,
            r.created_ms,
            r.expires_ms,
            r.state.as_str(),
            r.reason,
            r.decided_by,
            r.decided_ms,
            r.used_by,
            r.used_ms
        ])?;
        Ok(())
    }

    fn approvals(&self) -> Result<Vec<ApprovalRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, grant_name, server, tool, arguments_sha256, node, session,
                 arguments_json, policy_version, rule, created_ms, expires_ms, state, reason,
                 decided_by, decided_ms, used_by, used_ms
             FROM approvals ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(12)?,
                ApprovalRecord {
                    id: r.get(0)?,
                    call: CallKey {
                        grant: r.get(1)?,
                        server: r.get(2)?,
                        tool: r.get(3)?,
                        arguments_sha256: r.get(4)?,
                    },
                    node: r.get(5)?,
                    session: r.get(6)?,
                    arguments_json: r.get(7)?,
                    policy_version: r.get(8)?,
                    rule: r.get(9)?,
                    created_ms: r.get(10)?,
                    expires_ms: r.get(11)?,
                    // Parsed below, where an unknown state can be named.
                    state: ApprovalState::Pending,
                    reason: r.get(13)?,
                    decided_by: r.get(14)?,
                    decided_ms: r.get(15)?,
                    used_by: r.get(16)?,
                    used_ms: r.get(17)?,
                },
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (state, mut record) = row?;
            record.state = super::approval_state(&state)
                .ok_or_else(|| StoreError::UnknownApprovalState(state.clone()))?;
            out.push(record);
        }
        Ok(out)
    }

    fn forget_ended_approvals(&self, before_ms: i64) -> Result<usize, StoreError> {
        let conn = self.conn()?;
        let gone = conn.execute(
            "DELETE FROM approvals WHERE state IN ('denied', 'expired', 'used')
                 AND max(decided_ms, used_ms, expires_ms) < ?1",
            [before_ms],
        )?;
        Ok(gone)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let conn = self.conn()?;
        // Commits are already durable (synchronous = FULL); the checkpoint
        // moves the write-ahead log into tollgate.db, so the data dir is one
        // self-contained file once the control plane has stopped.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
