//! The policy the sidecar enforces: an `ArcSwap` of the compiled bundle and
//! its version, reloaded off the request path when the file changes.
//!
//! A request loads the snapshot once and uses it to the end, so a swap never
//! fails or changes an in-flight request. An invalid file is logged with every
//! error, counted, and the previous snapshot stays. Before any valid policy
//! the store is empty: every call is denied and `/readyz` is not ready.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use tollgate_policy::{Bundle, PolicyErrors};

use crate::metrics::Metrics;

/// One compiled bundle and its version.
#[derive(Debug)]
pub struct Snapshot {
    /// The compiled bundle.
    pub bundle: Bundle,
    /// `sha256:` and the first 16 hex digits of the file's content.
    pub version: Arc<str>,
}

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy file {path} is invalid, keeping the previous policy: {errors}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every error, with its JSON pointer.
        errors: PolicyErrors,
    },
}

/// The current snapshot, if any.
#[derive(Debug, Default)]
pub struct LivePolicy {
    current: ArcSwapOption<Snapshot>,
}

impl LivePolicy {
    /// The snapshot to decide a request with.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }

    /// Whether a valid policy has been loaded.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }
}

/// The version string of policy text.
pub fn version_of(text: &[u8]) -> Arc<str> {
    let digest = Sha256::digest(text);
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}").into()
}

/// Reads and compiles a policy file.
pub fn load_file(path: &Path) -> Result<(Snapshot, Vec<u8>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let bundle = tollgate_policy::load(&text).map_err(|errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    })?;
    Ok((
        Snapshot {
            bundle,
            version: version_of(&bytes),
        },
        bytes,
    ))
}

/// Polls `path` every `every` and swaps in each valid change; `loaded` is
/// the content already in force (not compiled again). Polling (not inotify) also sees Kubernetes ConfigMap updates,
/// which replace a symlink rather than write the file.
pub async fn watch(
    path: PathBuf,
    loaded: Option<Vec<u8>>,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut last: Option<Vec<u8>> = loaded;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let unchanged = match std::fs::read(&path) {
            Ok(bytes) => last.as_deref() == Some(&bytes[..]),
            Err(_) => false,
        };
        if unchanged {
            continue;
        }
        let p = path.clone();
        // Compiling a large policy is CPU work: keep it off the request threads.
        let loaded = tokio::task::spawn_blocking(move || load_file(&p)).await;
        match loaded {
            Ok(Ok((snapshot, bytes))) => {
                tracing::info!(version = %snapshot.version, file = %path.display(), "policy loaded");
                metrics.policy_loaded(&snapshot.version);
                store.store(snapshot);
                last = Some(bytes);
            }
            Ok(Err(e)) => {
                metrics.reload_failed();
                tracing::error!("{e}");
                // Remember the bad content so it is reported once, not every tick.
                last = std::fs::read(&path).ok();
            }
            Err(e) => tracing::error!("policy reload task failed: {e}"),
        }
    }
}
