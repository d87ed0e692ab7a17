use rusqlite::Connection;

use super::*;
use crate::role::Role;
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

fn nack(version: u64, error: &str, at: i64) -> Nack {
    Nack {
        version,
        content_hash: format!("{version:064x}"),
        error: error.to_owned(),
        at,
    }
}

#[test]
fn refusals_survive_reopening_per_node_and_only_the_newest_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert_eq!(store.nacks("a").expect("nacks"), []);
    for v in 1..=20 {
        store
            .record_nack("a", &nack(v, "bad", 100 + v as i64))
            .expect("record");
    }
    store
        .record_nack("b", &nack(3, "first", 7))
        .expect("record");
    // The same version refused again: the newer error replaces the older.
    store
        .record_nack("b", &nack(3, "second", 8))
        .expect("record");
    store.flush().expect("flush");
    drop(store);

    let store = SqliteStore::open(dir.path()).expect("reopen");
    let a: Vec<u64> = store
        .nacks("a")
        .expect("nacks")
        .iter()
        .map(|n| n.version)
        .collect();
    let newest: Vec<u64> = (21 - NACKS_KEPT_PER_NODE as u64..=20).collect();
    assert_eq!(a, newest);
    assert_eq!(store.nacks("b").expect("nacks"), [nack(3, "second", 8)]);
}

#[test]
fn a_data_dir_from_before_schema_versions_is_migrated_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The store as the first release wrote it: no user_version, no
    // node_nacks table.
    let old = Connection::open(dir.path().join("tollgate.db")).expect("old");
    old.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE versions (
             version      INTEGER PRIMARY KEY,
             content_hash TEXT    NOT NULL,
             message      TEXT    NOT NULL,
             created_at   INTEGER NOT NULL,
             content      BLOB    NOT NULL
         );
         CREATE INDEX versions_by_hash ON versions (content_hash);
         INSERT INTO versions VALUES (1, 'h1', 'seed', 10, x'7b7d');",
    )
    .expect("old schema");
    drop(old);

    let store = SqliteStore::open(dir.path()).expect("migrated");
    let v1 = store.get(1).expect("get").expect("version 1 kept");
    assert_eq!((v1.message.as_str(), v1.content), ("seed", b"{}".to_vec()));
    store.record_nack("a", &nack(1, "bad", 11)).expect("record");
    assert_eq!(store.nacks("a").expect("nacks").len(), 1);
    let schema: i64 = store
        .conn()
        .expect("conn")
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(schema, MIGRATIONS.len() as i64);
    drop(store);
    // Opening again runs nothing more and loses nothing.
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.nacks("a").expect("nacks").len(), 1);
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn a_store_written_by_a_newer_tollgate_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let newer = Connection::open(dir.path().join("tollgate.db")).expect("db");
    newer
        .execute_batch("PRAGMA user_version = 99")
        .expect("user_version");
    drop(newer);
    let err = SqliteStore::open(dir.path())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("tollgate release that wrote it"),
        "{err}"
    );
}

#[test]
fn flushing_empties_the_write_ahead_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    store.record_nack("a", &nack(1, "bad", 1)).expect("record");
    let wal = dir.path().join("tollgate.db-wal");
    assert!(std::fs::metadata(&wal).map_or(0, |m| m.len()) > 0);
    store.flush().expect("flush");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
}

#[test]
fn a_secret_is_made_once_and_kept_across_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let made = std::cell::Cell::new(0);
    let make = |value: u8| {
        let made = &made;
        move || -> Result<Vec<u8>, StoreError> {
            made.set(made.get() + 1);
            Ok(vec![value; 4])
        }
    };
    let a = store.secret_or_create("k", &mut make(1), 10).expect("made");
    assert_eq!(a, [1; 4]);
    let again = store
        .secret_or_create("k", &mut make(2), 11)
        .expect("read back");
    assert_eq!(again, a, "the stored secret, not a new one");
    let other = store
        .secret_or_create("other", &mut make(3), 12)
        .expect("made");
    assert_eq!(other, [3; 4], "each name has its own secret");
    drop(store);

    let store = SqliteStore::open(dir.path()).expect("reopen");
    let reopened = store
        .secret_or_create("k", &mut make(4), 13)
        .expect("read back");
    assert_eq!(reopened, a);
    assert_eq!(made.get(), 2, "made once for `k` and once for `other`");

    // A failure to make one stores nothing.
    let mut failing = || -> Result<Vec<u8>, StoreError> {
        Err(StoreError::Secret {
            name: "f".into(),
            reason: "no randomness".into(),
        })
    };
    assert!(store.secret_or_create("f", &mut failing, 14).is_err());
    assert_eq!(
        store.secret_or_create("f", &mut make(5), 15).expect("made"),
        [5; 4]
    );
}

fn token(id: &str, name: &str, role: Role, at: i64) -> StoredToken {
    StoredToken {
        id: id.to_owned(),
        name: name.to_owned(),
        role,
        salt: vec![1, 2],
        hash: vec![3; 32],
        created_at: at,
        created_by: "bootstrap".to_owned(),
        revoked_at: None,
    }
}

#[test]
fn tokens_survive_reopening_live_names_are_unique_and_revocation_sticks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert_eq!(store.tokens().expect("tokens"), []);
    store
        .add_token(&token("a1", "ops", Role::Admin, 10))
        .expect("add");
    store
        .add_token(&token("v1", "ci", Role::Viewer, 11))
        .expect("add");
    let err = store
        .add_token(&token("v2", "ci", Role::Approver, 12))
        .expect_err("a live token is named ci");
    assert!(
        matches!(err, StoreError::TokenNameTaken(ref n) if n == "ci"),
        "{err}"
    );

    assert!(store.revoke_token("v1", 13).expect("revoke"));
    assert!(
        !store.revoke_token("v1", 14).expect("again"),
        "already revoked"
    );
    assert!(!store.revoke_token("nope", 14).expect("unknown"));
    // The name is free again once its token is revoked.
    store
        .add_token(&token("v2", "ci", Role::Approver, 15))
        .expect("reuse the name");
    drop(store);

    let store = SqliteStore::open(dir.path()).expect("reopen");
    let tokens = store.tokens().expect("tokens");
    let summary: Vec<_> = tokens
        .iter()
        .map(|t| (t.id.as_str(), t.name.as_str(), t.role, t.revoked_at))
        .collect();
    assert_eq!(
        summary,
        [
            ("a1", "ops", Role::Admin, None),
            ("v1", "ci", Role::Viewer, Some(13)),
            ("v2", "ci", Role::Approver, None),
        ]
    );
    assert_eq!(tokens[0], token("a1", "ops", Role::Admin, 10));
}

#[test]
fn a_token_with_a_role_this_tollgate_does_not_know_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    store
        .add_token(&token("a1", "ops", Role::Admin, 10))
        .expect("add");
    store
        .conn()
        .expect("conn")
        .execute("UPDATE tokens SET role = 'root'", [])
        .expect("update");
    let err = store.tokens().expect_err("unknown role");
    assert!(
        matches!(err, StoreError::UnknownRole(ref r) if r == "root"),
        "{err}"
    );
}

fn entry(at: i64, action: &str) -> AuditEntry {
    AuditEntry {
        at,
        actor: "ops".to_owned(),
        action: action.to_owned(),
        target: "version 1".to_owned(),
        outcome: "accepted".to_owned(),
        detail: String::new(),
    }
}

#[test]
fn the_audit_trail_lists_the_newest_entries_since_a_time_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path()).expect("open");
    for (at, action) in [(10, "a"), (20, "b"), (20, "c"), (30, "d")] {
        store.record_audit(&entry(at, action)).expect("record");
    }
    let actions = |since, limit| -> Vec<String> {
        store
            .audit_since(since, limit)
            .expect("audit")
            .into_iter()
            .map(|e| e.action)
            .collect()
    };
    assert_eq!(actions(0, 100), ["a", "b", "c", "d"]);
    assert_eq!(actions(20, 100), ["b", "c", "d"]);
    assert_eq!(actions(0, 2), ["c", "d"], "the newest, oldest first");
    assert_eq!(actions(31, 100), Vec::<String>::new());
    drop(store);
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.audit_since(0, 1).expect("audit"),
        [entry(30, "d")],
        "kept across restarts"
    );
}
