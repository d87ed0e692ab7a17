//! The last good bundle on disk, so a sidecar restarted while the control
//! plane is down enforces it at once instead of denying everything.
//!
//! Up to three files in the state dir: `bundle.json` (the bundle's bytes as
//! the control plane sent them), `grant.key` (the control plane's grant key,
//! 32 raw bytes, present when the bundle's grants are keyed) and
//! `bundle.meta.json` (`{"version": N, "content_hash": "<sha256 hex>"}`, and
//! `"grant_key_sha256": "<sha256 hex of the key>"` when there is a key). Each
//! is written to a temporary file (0600), fsynced, renamed over the old one,
//! and the directory is fsynced. The key and the bundle are written first and
//! the meta last; on load the bundle's SHA-256 and the key's must match the
//! meta's, so a crash between renames, a torn write or a hand edit reads as
//! "no saved bundle" (deny all until the control plane answers) rather than
//! as a policy nobody sent, or one checked against the wrong key.
//!
//! The key is kept beside the bundle, not in it: `bundle.json` alone (copied
//! into a support ticket, say) holds only keyed token hashes.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tollgate_policy::GrantKey;

const BUNDLE: &str = "bundle.json";
const META: &str = "bundle.meta.json";
const KEY: &str = "grant.key";

/// A bundle the control plane sent and this sidecar applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedBundle {
    /// The control plane's version number.
    pub version: u64,
    /// SHA-256 (lower-case hex) of `bytes`.
    pub content_hash: String,
    /// The bundle, as the JSON policy file.
    pub bytes: Vec<u8>,
    /// The key of its keyed grants, when the control plane sent one.
    pub grant_key: Option<GrantKey>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    version: u64,
    content_hash: String,
    /// SHA-256 (hex) of `grant.key`, when the bundle came with a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grant_key_sha256: Option<String>,
}

/// Why the state dir could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on a file of the state dir.
    #[error("state dir: {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The saved files do not form a bundle this sidecar wrote.
    #[error("state dir {dir}: the saved bundle is unusable ({reason}); ignoring it")]
    Corrupt {
        /// The state dir.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// SHA-256 of `bytes`, lower-case hex (the protocol's `content_hash`).
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The state dir of one sidecar.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens `dir`, creating it if needed, and makes it owner-only (0700):
    /// the bundle names grants and their token hashes.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir.into();
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved bundle: `Ok(None)` when there is none, `Err(Corrupt)` when
    /// the files exist but do not agree.
    pub fn load(&self) -> Result<Option<SavedBundle>, StateError> {
        let meta_path = self.dir.join(META);
        let meta = match std::fs::read(&meta_path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: meta_path,
                    source,
                });
            }
        };
        let corrupt = |reason: String| StateError::Corrupt {
            dir: self.dir.clone(),
            reason,
        };
        let meta: Meta = serde_json::from_slice(&meta)
            .map_err(|e| corrupt(format!("{META} is not valid: {e}")))?;
        let bundle_path = self.dir.join(BUNDLE);
        let bytes = std::fs::read(&bundle_path).map_err(|e| corrupt(format!("{BUNDLE}: {e}")))?;
        let actual = content_hash(&bytes);
        if actual != meta.content_hash {
            return Err(corrupt(format!(
                "{BUNDLE} has SHA-256 {actual}, {META} says {}",
                meta.content_hash
            )));
        }
        let grant_key = match &meta.grant_key_sha256 {
            None => None,
            Some(expected) => {
                let key = std::fs::read(self.dir.join(KEY))
                    .map_err(|e| corrupt(format!("{META} names a grant key, but {KEY}: {e}")))?;
                let actual = content_hash(&key);
                if actual != *expected {
                    return Err(corrupt(format!(
                        "{KEY} has SHA-256 {actual}, {META} says {expected}"
                    )));
                }
                let key = GrantKey::from_slice(&key).ok_or_else(|| {
                    corrupt(format!(
                        "{KEY} holds {} bytes, a grant key is {}",
                        key.len(),
                        GrantKey::LEN
                    ))
                })?;
                Some(key)
            }
        };
        Ok(Some(SavedBundle {
            version: meta.version,
            content_hash: meta.content_hash,
            bytes,
            grant_key,
        }))
    }

    /// Saves `bundle` atomically (see the module doc).
    pub fn save(&self, bundle: &SavedBundle) -> Result<(), StateError> {
        if let Some(key) = &bundle.grant_key {
            self.write_atomic(KEY, key.as_bytes())?;
        }
        self.write_atomic(BUNDLE, &bundle.bytes)?;
        let meta = Meta {
            version: bundle.version,
            content_hash: bundle.content_hash.clone(),
            grant_key_sha256: bundle
                .grant_key
                .as_ref()
                .map(|k| content_hash(k.as_bytes())),
        };
        // Serializing a struct of a number and strings cannot fail.
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        self.write_atomic(META, &meta)?;
        if bundle.grant_key.is_none() {
            // No saved bundle needs the key any more: keep no copy of it.
            match std::fs::remove_file(self.dir.join(KEY)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        path: self.dir.join(KEY),
                        source,
                    });
                }
            }
        }
        self.sync_dir()
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(name);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Makes the renames durable: on Linux a rename is only on disk once its
    /// directory is synced.
    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(version: u64, text: &str) -> SavedBundle {
        SavedBundle {
            version,
            content_hash: content_hash(text.as_bytes()),
            bytes: text.as_bytes().to_vec(),
            grant_key: None,
        }
    }

    fn keyed(version: u64, text: &str, key: u8) -> SavedBundle {
        SavedBundle {
            grant_key: Some(GrantKey::new([key; 32])),
            ..saved(version, text)
        }
    }

    #[test]
    fn the_grant_key_is_kept_beside_the_bundle_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save(&keyed(1, r#"{"a":1}"#, 7)).unwrap();
        assert_eq!(dir.load().unwrap(), Some(keyed(1, r#"{"a":1}"#, 7)));
        assert_eq!(std::fs::read(tmp.path().join(KEY)).unwrap(), [7; 32]);
        let bundle = std::fs::read(tmp.path().join(BUNDLE)).unwrap();
        assert_eq!(bundle, br#"{"a":1}"#, "the key is not in the bundle file");

        // Another control plane's key, written before a crash that left the
        // old meta: not trusted.
        std::fs::write(tmp.path().join(KEY), [8; 32]).unwrap();
        let err = dir.load().unwrap_err();
        assert!(err.to_string().contains(KEY), "{err}");
        // A missing key: not trusted either.
        std::fs::remove_file(tmp.path().join(KEY)).unwrap();
        assert!(matches!(dir.load(), Err(StateError::Corrupt { .. })));

        // A bundle without keyed grants leaves no key behind.
        dir.save(&keyed(2, r#"{"b":2}"#, 7)).unwrap();
        dir.save(&saved(3, r#"{"c":3}"#)).unwrap();
        assert_eq!(dir.load().unwrap(), Some(saved(3, r#"{"c":3}"#)));
        assert!(!tmp.path().join(KEY).exists());
    }

    #[test]
    fn empty_dir_has_no_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("nested/state")).unwrap();
        assert_eq!(dir.load().unwrap(), None);
    }

    #[test]
    fn round_trip_and_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save(&saved(1, r#"{"a":1}"#)).unwrap();
        assert_eq!(dir.load().unwrap(), Some(saved(1, r#"{"a":1}"#)));
        dir.save(&saved(2, r#"{"b":2}"#)).unwrap();
        assert_eq!(dir.load().unwrap(), Some(saved(2, r#"{"b":2}"#)));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_state_dir_and_its_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = StateDir::open(&path).unwrap();
        dir.save(&saved(1, r#"{"a":1}"#)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        dir.save(&keyed(2, r#"{"a":1}"#, 7)).unwrap();
        for name in [BUNDLE, META, KEY] {
            assert_eq!(mode(&path.join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn corrupt_files_are_reported_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        dir.save(&saved(3, r#"{"a":1}"#)).unwrap();

        // A bundle that does not match its meta (torn write, crash between renames).
        std::fs::write(tmp.path().join(BUNDLE), r#"{"a":2}"#).unwrap();
        assert!(matches!(dir.load(), Err(StateError::Corrupt { .. })));

        // Unreadable meta.
        std::fs::write(tmp.path().join(META), "{not json").unwrap();
        assert!(matches!(dir.load(), Err(StateError::Corrupt { .. })));

        // Meta without its bundle.
        dir.save(&saved(3, r#"{"a":1}"#)).unwrap();
        std::fs::remove_file(tmp.path().join(BUNDLE)).unwrap();
        let err = dir.load().unwrap_err();
        assert!(err.to_string().contains("ignoring it"), "{err}");
    }
}
