//! The policy the sidecar enforces: an `ArcSwap` of the compiled bundle and
//! its version, reloaded off the request path when the file changes.
//!
//! A request loads the snapshot once and uses it to the end, so a swap never
//! fails or changes an in-flight request. An invalid file is logged with every
//! error, counted, and the previous snapshot stays. Before any valid policy
//! is in force the snapshot is [`Snapshot::none`], a value like any other:
//! it denies every call, lists no tool, and `/readyz` is not ready.
//!
//! In fleet mode a snapshot also carries the [`Tally`] its decisions are
//! counted in, and may carry a [`Shadow`]: a second bundle every call is
//! decided with too, never enforced, never charging a limit (see
//! [`crate::rollout_report`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::HeaderName;
use sha2::{Digest, Sha256};
use tollgate_policy::{
    Annotations, Bundle, Call, Counters, Decision, Listing, Outcome, PolicyErrors,
};

use crate::identity::{IdentityError, identify};
use crate::metrics::Metrics;
use crate::rollout_report::{Decisions, Tally};

/// The policy in force: a compiled bundle and its version, or, before any
/// has loaded, none (which denies everything).
#[derive(Debug)]
pub struct Snapshot {
    bundle: Option<Bundle>,
    version: Arc<str>,
    /// The key approval `requestState`s are sealed with, derived from the
    /// deployment's grant key when the control plane sent one.
    state_key: Option<Arc<crate::mcp::request_state::StateKey>>,
    /// Where this version's decisions are counted (fleet mode).
    tally: Option<Arc<Tally>>,
    /// The version decided beside this one, not enforced.
    shadow: Option<Shadow>,
}

/// A bundle every call is decided with beside the live one: enforced never,
/// charging no limit, filing no approval; its decisions are counted and the
/// calls on which it differs recorded in [`Decisions`].
#[derive(Debug)]
pub struct Shadow {
    bundle: Bundle,
    version: u64,
    tally: Arc<Tally>,
    decisions: Arc<Decisions>,
}

impl Shadow {
    /// Control-plane version `version`, counted in `decisions`.
    pub fn new(bundle: Bundle, version: u64, decisions: Arc<Decisions>) -> Self {
        Self {
            tally: decisions.tally(version, true),
            bundle,
            version,
            decisions,
        }
    }

    /// The control plane's version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Decides one call as this version would, without charging any limit:
    /// every limit admits it (a shadow never reports `rate_limited`), and
    /// the live counters are left as they are.
    pub fn decide(&self, call: &Call<'_>, now: Duration) -> Decision {
        let decision = self.bundle.decide(call, now, &NoCharge);
        self.tally.count(decision.outcome);
        decision
    }

    /// Where differences from the live version are recorded.
    pub fn decisions(&self) -> &Decisions {
        &self.decisions
    }
}

/// Limits as a shadow sees them: every call admitted, nothing charged.
#[derive(Debug)]
struct NoCharge;

impl Counters for NoCharge {
    fn acquire(
        &self,
        _: &[tollgate_policy::Charge<'_>],
        _: Duration,
    ) -> tollgate_policy::Admission {
        tollgate_policy::Admission::Admitted
    }
}

impl Snapshot {
    /// A loaded bundle; `version` is `sha256:` and the first 16 hex digits
    /// of its content, or `v<N>` for a control plane's version.
    pub fn new(bundle: Bundle, version: Arc<str>) -> Self {
        Self {
            bundle: Some(bundle),
            version,
            state_key: None,
            tally: None,
            shadow: None,
        }
    }

    /// Counts this version's decisions in `tally`.
    pub fn with_tally(mut self, tally: Arc<Tally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Decides every call with `shadow` too.
    pub fn with_shadow(mut self, shadow: Option<Shadow>) -> Self {
        self.shadow = shadow;
        self
    }

    /// Where this version's decisions are counted, in fleet mode.
    pub fn tally(&self) -> Option<&Tally> {
        self.tally.as_deref()
    }

    /// The shadow version decided beside this one, if any.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref()
    }

    /// Seals approval states with a key derived from `grant_key`, the
    /// secret every sidecar of the deployment shares (so one sidecar opens
    /// another's states); without one the sidecar's own key is used.
    pub fn with_grant_key(mut self, grant_key: Option<&tollgate_policy::GrantKey>) -> Self {
        self.state_key =
            grant_key.map(|k| Arc::new(crate::mcp::request_state::StateKey::derive(k.as_bytes())));
        self
    }

    /// The deployment's `requestState` key, if the control plane sent one.
    pub fn state_key(&self) -> Option<&Arc<crate::mcp::request_state::StateKey>> {
        self.state_key.as_ref()
    }

    /// What is in force before any valid policy: every call denied.
    pub fn none() -> Self {
        Self {
            bundle: None,
            version: Arc::from("(none)"),
            state_key: None,
            tally: None,
            shadow: None,
        }
    }

    /// The version decisions are recorded with (`(none)` without a policy).
    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// The compiled bundle, if a policy has loaded.
    pub fn bundle(&self) -> Option<&Bundle> {
        self.bundle.as_ref()
    }

    /// Whether a valid policy has loaded.
    pub fn is_loaded(&self) -> bool {
        self.bundle.is_some()
    }

    /// Decides one call.
    pub fn decide(&self, call: &Call<'_>, now: Duration, counters: &dyn Counters) -> Decision {
        match &self.bundle {
            Some(b) => b.decide(call, now, counters),
            None => no_policy(),
        }
    }

    /// How `grant` sees tool `name` of `server` in a `tools/list` result.
    pub fn listing(
        &self,
        server: &str,
        grant: &str,
        name: &str,
        annotations: Option<&Annotations>,
    ) -> Listing {
        match &self.bundle {
            Some(b) => b.listing(server, grant, name, annotations),
            None => Listing::Denied,
        }
    }

    /// The caller's grant: the one the bearer token in `header` identifies,
    /// or `node_id` when the bundle has no grants (or there is no bundle).
    pub fn caller(
        &self,
        headers: &HeaderMap,
        header: &HeaderName,
        node_id: &Arc<str>,
    ) -> Result<Arc<str>, IdentityError> {
        match &self.bundle {
            Some(b) => identify(headers, header, b, node_id),
            None => Ok(Arc::clone(node_id)),
        }
    }

    /// Whether callers are told apart by grant tokens (then the token header
    /// is not forwarded upstream).
    pub fn has_grants(&self) -> bool {
        self.bundle.as_ref().is_some_and(Bundle::has_grants)
    }
}

/// `grant`'s view of `server`'s tools under `snapshot`, for filtering
/// `tools/list` results.
pub fn listing(
    snapshot: Arc<Snapshot>,
    server: Arc<str>,
    grant: Arc<str>,
) -> impl Fn(&str, Option<&Annotations>) -> Listing + Send + Sync + 'static {
    move |name, annotations| snapshot.listing(&server, &grant, name, annotations)
}

/// The decision when no valid policy has loaded: deny everything.
fn no_policy() -> Decision {
    Decision {
        outcome: Outcome::Deny,
        rule: Arc::from("(no policy loaded)"),
        reason: Some(Arc::from(
            "the sidecar has no valid policy yet and denies every call until one loads; check its --policy file or control plane",
        )),
        retry_after: None,
        limit: None,
        approval: None,
        class: None,
        shadow: false,
    }
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

/// The snapshot in force.
#[derive(Debug)]
pub struct LivePolicy {
    current: ArcSwap<Snapshot>,
}

impl Default for LivePolicy {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::none()),
        }
    }
}

impl LivePolicy {
    /// The snapshot to decide a request with.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }

    /// Whether a valid policy has been loaded.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_loaded()
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
    Ok((Snapshot::new(bundle, version_of(&bytes)), bytes))
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
                tracing::info!(version = %snapshot.version(), file = %path.display(), "policy loaded");
                metrics.policy_loaded(snapshot.version());
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
