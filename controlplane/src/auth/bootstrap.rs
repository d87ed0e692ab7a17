//! The first admin token. A control plane whose store holds no token at all
//! stores one on start: the token in `--bootstrap-token-file` if given (so
//! a deployment can provide it from its own secret store), else a new one
//! written to `<data>/admin-token` (0600). Once any token exists, starts
//! change nothing and the file is never rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::token;
use crate::role::Role;
use crate::store::{AuditEntry, PolicyStore, StoreError, StoredToken};

/// The file in the data dir holding a generated first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The first token's name, and the actor of its creation in the audit trail.
pub const BOOTSTRAP: &str = "bootstrap";

/// Why the first admin token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read --bootstrap-token-file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--bootstrap-token-file {path} does not hold a token of the form {}; make one with \
         `printf 'tgt_%s_%s' $(openssl rand -hex 8) $(openssl rand -hex 32)`",
        token::SHAPE
    )]
    Malformed { path: PathBuf },
    #[error("cannot write the first admin token to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for the first admin token: {0}")]
    Random(getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the first admin token came from, when this start stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// The store already held tokens: nothing was done.
    Already,
    /// `--bootstrap-token-file`'s token was stored.
    FromFile,
    /// A new token was written to this file.
    Generated(PathBuf),
}

/// Stores the first admin token if `store` holds none (see the module
/// docs). `now` is seconds since the Unix epoch.
pub fn bootstrap(
    store: &dyn PolicyStore,
    data: &Path,
    file: Option<&Path>,
    now: i64,
) -> Result<Bootstrapped, BootstrapError> {
    if !store.tokens()?.is_empty() {
        return Ok(Bootstrapped::Already);
    }
    let (id, salt, hash, outcome) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| BootstrapError::Read {
                path: path.to_owned(),
                source,
            })?;
            let presented = token::parse(text.trim()).ok_or_else(|| BootstrapError::Malformed {
                path: path.to_owned(),
            })?;
            let (id, salt, hash) = token::seal(presented).map_err(BootstrapError::Random)?;
            (id, salt, hash, Bootstrapped::FromFile)
        }
        None => {
            let issued = token::issue().map_err(BootstrapError::Random)?;
            let path = data.join(ADMIN_TOKEN_FILE);
            // Written before it is stored: a start that fails in between
            // finds no token and writes a new file, never a stored token
            // nobody can read.
            write_private(&path, &issued.token).map_err(|source| BootstrapError::Write {
                path: path.clone(),
                source,
            })?;
            (
                issued.id,
                issued.salt,
                issued.hash,
                Bootstrapped::Generated(path),
            )
        }
    };
    store.add_token(&StoredToken {
        id: id.clone(),
        name: BOOTSTRAP.to_owned(),
        role: Role::Admin,
        salt,
        hash,
        created_at: now,
        created_by: BOOTSTRAP.to_owned(),
        revoked_at: None,
    })?;
    let detail = match &outcome {
        Bootstrapped::Generated(path) => {
            format!("id {id}, role admin, written to {}", path.display())
        }
        _ => format!("id {id}, role admin, from --bootstrap-token-file"),
    };
    store.record_audit(&AuditEntry {
        at: now,
        actor: BOOTSTRAP.to_owned(),
        action: "token.create".to_owned(),
        target: BOOTSTRAP.to_owned(),
        outcome: "created".to_owned(),
        detail,
    })?;
    Ok(outcome)
}

/// Writes `token` and a newline to `path`, readable by this user only
/// whatever the umask.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn a_new_store_gets_an_admin_token_once_in_a_private_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(
            bootstrap(&store, dir.path(), None, 10).expect("bootstrap"),
            Bootstrapped::Generated(path.clone())
        );
        let text = std::fs::read_to_string(&path).expect("admin-token");
        let presented = token::parse(text.trim()).expect("a token");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let tokens = store.tokens().expect("tokens");
        assert_eq!(tokens.len(), 1);
        let t = &tokens[0];
        assert_eq!(
            (t.name.as_str(), t.role, t.id.as_str()),
            (BOOTSTRAP, Role::Admin, presented.id)
        );
        assert!(token::verify(&t.salt, &t.hash, presented.secret));
        assert_eq!(store.audit_since(0, 10).expect("audit").len(), 1);

        // Later starts leave the store and the file alone.
        std::fs::write(&path, "changed").expect("write");
        assert_eq!(
            bootstrap(&store, dir.path(), None, 20).expect("again"),
            Bootstrapped::Already
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "changed");
        assert_eq!(store.tokens().expect("tokens").len(), 1);
    }

    #[test]
    fn a_given_token_is_stored_and_a_malformed_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).expect("open");
        let given = dir.path().join("given");
        std::fs::write(&given, "not a token\n").expect("write");
        let err = bootstrap(&store, dir.path(), Some(&given), 10).expect_err("malformed");
        assert!(err.to_string().contains("openssl rand"), "{err}");
        assert!(store.tokens().expect("tokens").is_empty());

        let text = format!("tgt_{}_{}", "ab".repeat(8), "cd".repeat(32));
        std::fs::write(&given, format!("  {text}\n")).expect("write");
        assert_eq!(
            bootstrap(&store, dir.path(), Some(&given), 10).expect("bootstrap"),
            Bootstrapped::FromFile
        );
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());
        let tokens = store.tokens().expect("tokens");
        assert_eq!(tokens[0].id, "ab".repeat(8));
        assert!(token::verify(
            &tokens[0].salt,
            &tokens[0].hash,
            &"cd".repeat(32)
        ));
    }
}
