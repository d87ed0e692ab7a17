//! What nodes are sent: each stored version in its distributed form, its
//! grants' tokens keyed with the deployment's grant key.
//!
//! Stored versions keep the operator's form (`token_sha256`: what was pushed,
//! what `tollgate policy show` prints). A node is sent the version with every
//! grant's token as `token_hmac_sha256` (see `tollgate_policy::grant_key`)
//! and the key in `PolicyResponse.grant_key`, beside the bundle. The form is
//! a pure function of the stored content and the key, and the key never
//! changes for a data dir, so a version's distributed content hash is stable
//! across restarts: it is the hash nodes report, ACK and NACK, and the one
//! the stream compares to decide whether to send.
//!
//! The key is 32 random bytes made on the first start and kept in the
//! store's `secrets` table as [`GRANT_KEY_SECRET`].

use bytes::Bytes;
use tollgate_policy::GrantKey;

use crate::store::{PolicyStore, StoreError, content_hash};

/// The name of the grant key in the store's secrets.
pub const GRANT_KEY_SECRET: &str = "grant_key";

/// The deployment's grant key: read from the store, or made and stored on
/// the first start.
pub fn grant_key(store: &dyn PolicyStore, now: i64) -> Result<GrantKey, StoreError> {
    let mut make = || {
        let mut key = vec![0u8; GrantKey::LEN];
        getrandom::fill(&mut key).map_err(|e| StoreError::Secret {
            name: GRANT_KEY_SECRET.into(),
            reason: format!("the system's random source failed: {e}"),
        })?;
        Ok(key)
    };
    let stored = store.secret_or_create(GRANT_KEY_SECRET, &mut make, now)?;
    GrantKey::from_slice(&stored).ok_or_else(|| StoreError::Secret {
        name: GRANT_KEY_SECRET.into(),
        reason: format!(
            "the store holds {} bytes, a grant key is {}; the store was edited by hand or is \
             damaged: restore the data dir from a backup",
            stored.len(),
            GrantKey::LEN
        ),
    })
}

/// A version as nodes are sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distributed {
    /// SHA-256 of `content`, lowercase hex.
    pub content_hash: String,
    /// The bundle, grants keyed.
    pub content: Bytes,
    /// The grant key, sent beside `content`; empty when it has no keyed grants.
    pub grant_key: Bytes,
}

/// The distributed form of stored `content`. Content without grants is sent
/// as stored (same bytes, same hash), and so is content that is not JSON,
/// which holds no grant to key (the node refuses it).
pub fn distribute(content: &[u8], stored_hash: &str, key: &GrantKey) -> Distributed {
    let unchanged = || Distributed {
        content_hash: stored_hash.to_owned(),
        content: Bytes::copy_from_slice(content),
        grant_key: Bytes::new(),
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(content) else {
        return unchanged();
    };
    if tollgate_policy::key_grant_tokens(&mut value, key) == 0 {
        return unchanged();
    }
    // Pretty JSON with a trailing newline, as versions are stored.
    // Serializing a Value cannot fail: its keys are strings.
    let mut keyed = serde_json::to_vec_pretty(&value).unwrap_or_default();
    keyed.push(b'\n');
    let grant_key = if tollgate_policy::needs_grant_key(&value) {
        Bytes::copy_from_slice(key.as_bytes())
    } else {
        Bytes::new()
    };
    Distributed {
        content_hash: content_hash(&keyed),
        content: Bytes::from(keyed),
        grant_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn bundle() -> Vec<u8> {
        format!(
            r#"{{"servers": {{"s": {{"version": "1", "default": "allow"}}}},
                "grants": {{"ci": {{"token_sha256": "{TOKEN_SHA256}"}}}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn grants_are_keyed_and_the_key_goes_beside_them() {
        let key = GrantKey::new([1; 32]);
        let stored = bundle();
        let d = distribute(&stored, &content_hash(&stored), &key);
        let text = std::str::from_utf8(&d.content).expect("UTF-8");
        assert!(!text.contains(TOKEN_SHA256), "{text}");
        assert!(!text.contains("\"token_sha256\""), "{text}");
        let key_hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&key_hex), "the key is never in the bundle");
        assert_eq!(&d.grant_key[..], key.as_bytes());
        assert_eq!(d.content_hash, content_hash(&d.content));
        let value: serde_json::Value = serde_json::from_slice(&d.content).expect("JSON");
        let compiled = tollgate_policy::load_distributed(&value, Some(&key)).expect("loads");
        assert_eq!(compiled.grant_for_token(b"test").map(|g| &**g), Some("ci"));

        // The same content and key give the same bytes; another key, others.
        assert_eq!(distribute(&stored, &content_hash(&stored), &key), d);
        let other = distribute(&stored, &content_hash(&stored), &GrantKey::new([2; 32]));
        assert_ne!(other.content_hash, d.content_hash);
    }

    #[test]
    fn content_without_grants_is_sent_as_stored() {
        let key = GrantKey::new([1; 32]);
        for stored in [
            &br#"{"version": "1", "default": "deny"}"#[..],
            br#"{"servers": {}}"#,
            b"not json",
        ] {
            let d = distribute(stored, "h", &key);
            assert_eq!(&d.content[..], stored);
            assert_eq!(d.content_hash, "h");
            assert!(d.grant_key.is_empty());
        }
    }

    #[test]
    fn the_key_is_made_once_per_store() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let store_a = crate::store::SqliteStore::open(a.path()).expect("open");
        let first = grant_key(&store_a, 1).expect("made");
        assert_eq!(grant_key(&store_a, 2).expect("read"), first);
        let store_b = crate::store::SqliteStore::open(b.path()).expect("open");
        assert_ne!(grant_key(&store_b, 1).expect("made"), first);
    }
}
