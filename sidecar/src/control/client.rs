//! The policy-distribution stream, from the sidecar's side.
//!
//! One task: take the shared connection ([`super::connection`]), open `StreamPolicy`, send the
//! node and what it runs, then for each response compile the bundle (its
//! keyed grants with the `grant_key` that came beside it) on a blocking
//! thread, swap it in whole, persist both, and ACK — or keep the old snapshot
//! and NACK with every validation error, or with what is missing. A response
//! may carry a shadow bundle beside the live one: it is checked and compiled
//! with it, and the two are swapped in together ([`Shadow`]); the ACK or NACK
//! covers both (a shadow that does not compile or match its hash is a NACK
//! naming it, and neither is swapped in). A response without a shadow drops
//! the one in force. Shadows are not persisted: a restarted sidecar enforces
//! the saved live bundle and decides with a shadow again once the control
//! plane sends it. When the stream ends,
//! [`keep_open`] waits a [`Backoff`] delay and starts over; the snapshot in force never changes
//! because of a lost stream.

use std::sync::Arc;

use super::FleetConfig;
use super::backoff::Backoff;
use super::connection::{Connection, Unreachable};
use super::state_dir::{SavedBundle, StateDir, content_hash};
use super::stream::{ControlStream, End, Recovery, chain, classify, keep_open, requests};
use crate::metrics::Metrics;
use crate::rollout_report::Decisions;
use crate::snapshot::{LivePolicy, Shadow, Snapshot};
use tokio::sync::mpsc;
use tollgate_policy::{Bundle, GrantKey};
use tollgate_proto::v1::policy_distribution_client::PolicyDistributionClient;
use tollgate_proto::v1::{ErrorDetail, FieldError, Node, PolicyRequest, PolicyResponse};
use tonic::transport::Channel;

/// The bundle in force, as the control plane names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The control plane's version number.
    pub version: u64,
    /// SHA-256 (hex) of the bundle's bytes.
    pub content_hash: String,
}

/// The snapshot version (decision records, `/readyz`, metrics) of control
/// plane version `n`.
pub fn version_label(n: u64) -> Arc<str> {
    format!("v{n}").into()
}

/// The stream client (see the module doc).
#[derive(Debug)]
pub struct Client {
    config: FleetConfig,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    state: Option<StateDir>,
    applied: Option<Applied>,
    /// Where decisions are counted per version (rollout reports).
    decisions: Arc<Decisions>,
}

impl Client {
    /// A client that reports `applied` as what it runs until it applies another.
    pub fn new(
        config: FleetConfig,
        store: Arc<LivePolicy>,
        metrics: Arc<Metrics>,
        state: Option<StateDir>,
        applied: Option<Applied>,
        decisions: Arc<Decisions>,
    ) -> Self {
        Self {
            config,
            store,
            metrics,
            state,
            applied,
            decisions,
        }
    }

    /// Keeps the stream open over `connection`; returns only when the task is dropped.
    pub async fn run(self, connection: Arc<Connection>) {
        let backoff = self.config.backoff;
        keep_open(connection, self, backoff).await;
    }

    /// Applies one response and returns its ACK or NACK.
    async fn apply(&mut self, response: PolicyResponse) -> PolicyRequest {
        let PolicyResponse {
            version,
            content_hash: claimed,
            nonce,
            rollout_id,
            bundle,
            grant_key,
            shadow_version,
            shadow_content_hash,
            shadow_bundle,
        } = response;
        let actual = content_hash(&bundle);
        if !claimed.is_empty() && !claimed.eq_ignore_ascii_case(&actual) {
            let message = format!(
                "version {version}: content_hash {claimed} is not the bundle's SHA-256 {actual}"
            );
            return self.refuse(version, nonce, only(message));
        }
        let grant_key = if grant_key.is_empty() {
            None
        } else {
            match GrantKey::from_slice(&grant_key) {
                Some(key) => Some(key),
                None => {
                    let message = format!(
                        "version {version}: grant_key is {} bytes, a grant key is {}; keeping {}",
                        grant_key.len(),
                        GrantKey::LEN,
                        self.running()
                    );
                    return self.refuse(version, nonce, only(message));
                }
            }
        };
        if !shadow_bundle.is_empty() {
            let actual = content_hash(&shadow_bundle);
            if !shadow_content_hash.is_empty() && !shadow_content_hash.eq_ignore_ascii_case(&actual)
            {
                let message = format!(
                    "version {version}: shadow version {shadow_version}'s shadow_content_hash \
                     {shadow_content_hash} is not the shadow bundle's SHA-256 {actual}; keeping {}",
                    self.running()
                );
                return self.refuse(version, nonce, only(message));
            }
        }
        // Compiling a large bundle is CPU work: keep it off the request threads.
        let key = grant_key.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let shadow = (!shadow_bundle.is_empty()).then(|| compile(&shadow_bundle, key.as_ref()));
            (compile(&bundle, key.as_ref()), shadow, bundle)
        })
        .await;
        let (compiled, shadow, bytes) = match compiled {
            Ok(c) => c,
            Err(e) => {
                let message = format!("version {version}: compiling failed: {e}");
                return self.refuse(version, nonce, only(message));
            }
        };
        let bundle = match compiled {
            Ok(b) => b,
            Err(Unusable::Invalid(errors)) => {
                let n = errors.len();
                let message = format!(
                    "version {version} is invalid ({n} error{}), keeping {}",
                    if n == 1 { "" } else { "s" },
                    self.running()
                );
                return self.refuse(version, nonce, ErrorDetail { message, errors });
            }
            Err(Unusable::NoGrantKey) => {
                let message = format!(
                    "version {version} names its grants' tokens by token_hmac_sha256, but came \
                     without the control plane's grant_key to check them with; keeping {}",
                    self.running()
                );
                return self.refuse(version, nonce, only(message));
            }
        };
        let shadow = match shadow {
            None => None,
            Some(Ok(b)) => Some(Shadow::new(b, shadow_version, Arc::clone(&self.decisions))),
            Some(Err(Unusable::Invalid(errors))) => {
                let n = errors.len();
                let message = format!(
                    "version {version}: its shadow, version {shadow_version}, is invalid ({n} \
                     error{}); applying neither, keeping {}",
                    if n == 1 { "" } else { "s" },
                    self.running()
                );
                return self.refuse(version, nonce, ErrorDetail { message, errors });
            }
            Some(Err(Unusable::NoGrantKey)) => {
                let message = format!(
                    "version {version}: its shadow, version {shadow_version}, names its grants' \
                     tokens by token_hmac_sha256, but came without the control plane's grant_key \
                     to check them with; applying neither, keeping {}",
                    self.running()
                );
                return self.refuse(version, nonce, only(message));
            }
        };
        let label = version_label(version);
        let shadow_version = shadow.as_ref().map(Shadow::version);
        self.store.store(
            Snapshot::new(bundle, Arc::clone(&label))
                .with_grant_key(grant_key.as_ref())
                .with_tally(self.decisions.tally(version, false))
                .with_shadow(shadow),
        );
        self.metrics.policy_loaded(&label);
        self.metrics.bundle_applied();
        tracing::info!(
            version = %label,
            hash = %actual,
            rollout = %rollout_id,
            shadow = ?shadow_version,
            "policy applied"
        );
        let applied = Applied {
            version,
            content_hash: actual,
        };
        self.persist(&applied, bytes, grant_key).await;
        self.applied = Some(applied);
        self.request(None, nonce, None)
    }

    /// Writes the bundle in force to the state dir. A failure is logged, not
    /// NACKed: the bundle is valid and in force; only a restart while the
    /// control plane is down would miss it.
    async fn persist(&self, applied: &Applied, bytes: Vec<u8>, grant_key: Option<GrantKey>) {
        let Some(dir) = self.state.clone() else {
            return;
        };
        let saved = SavedBundle {
            version: applied.version,
            content_hash: applied.content_hash.clone(),
            bytes,
            grant_key,
        };
        let failed = match tokio::task::spawn_blocking(move || dir.save(&saved)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        self.metrics.state_save_failed();
        tracing::error!(
            "cannot save policy v{} for restarts ({failed}); it is in force, but a restart while the control plane is down would not find it: check --state-dir",
            applied.version
        );
    }

    /// Counts and logs a refused bundle and builds its NACK.
    fn refuse(&self, version: u64, nonce: String, detail: ErrorDetail) -> PolicyRequest {
        self.metrics.bundle_refused();
        let errors: Vec<String> = detail
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.pointer, e.message))
            .collect();
        tracing::error!(
            refused = version,
            running = %self.running(),
            ?errors,
            "NACK: {}", detail.message
        );
        self.request(None, nonce, Some(detail))
    }

    /// A request reporting what runs now, answering `nonce`.
    fn request(
        &self,
        node: Option<Node>,
        nonce: String,
        error_detail: Option<ErrorDetail>,
    ) -> PolicyRequest {
        let (version_info, content_hash) = match &self.applied {
            Some(a) => (a.version.to_string(), a.content_hash.clone()),
            None => (String::new(), String::new()),
        };
        PolicyRequest {
            node,
            version_info,
            content_hash,
            response_nonce: nonce,
            error_detail,
        }
    }

    fn running(&self) -> String {
        match &self.applied {
            Some(a) => format!("v{}", a.version),
            None => "no policy (deny all)".to_owned(),
        }
    }
}

impl ControlStream for Client {
    /// One stream, until it ends.
    async fn session(&mut self, channel: Channel, backoff: &mut Backoff) -> End {
        let mut grpc = PolicyDistributionClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        let first = self.request(Some(self.config.node.clone()), String::new(), None);
        // The channel is new and empty: the first send always fits.
        if tx.try_send(first).is_err() {
            return End::Closed;
        }
        let mut inbound = match grpc.stream_policy(requests(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return End::Status(s),
        };
        self.metrics.control_connected(true);
        tracing::info!(
            control_plane = %self.config.control_plane,
            node = %self.config.node.id,
            running = ?self.applied.as_ref().map(|a| a.version),
            "policy stream open"
        );
        loop {
            match inbound.message().await {
                Ok(Some(response)) => {
                    // Only a response proves the control plane works for us.
                    backoff.reset();
                    let reply = self.apply(response).await;
                    if tx.send(reply).await.is_err() {
                        return End::Closed;
                    }
                }
                Ok(None) => return End::Closed,
                Err(s) => return End::Status(s),
            }
        }
    }

    fn ended(&mut self, end: &End, backoff: &mut Backoff) {
        self.metrics.control_connected(false);
        let url = &self.config.control_plane;
        match end {
            End::Unreachable(Unreachable::Setup(e)) => {
                tracing::error!(control_plane = %url, "cannot connect to the control plane: {e}")
            }
            End::Unreachable(Unreachable::Connect(e)) => {
                tracing::warn!(control_plane = %url, "cannot connect to the control plane: {}", chain(e))
            }
            End::Closed => {
                tracing::info!(control_plane = %url, "the control plane closed the policy stream")
            }
            End::Status(s) => match classify(s.code()) {
                Recovery::Transient => tracing::warn!(
                    control_plane = %url,
                    code = ?s.code(),
                    "the policy stream failed: {}", s.message()
                ),
                Recovery::Refused => {
                    tracing::error!(
                        control_plane = %url,
                        code = ?s.code(),
                        node = %self.config.node.id,
                        "the control plane refused this sidecar: {}; still enforcing the current policy, retrying at the backoff cap",
                        s.message()
                    );
                    backoff.saturate();
                }
            },
        }
    }
}

/// A refusal with a message and no field errors.
fn only(message: String) -> ErrorDetail {
    ErrorDetail {
        message,
        errors: Vec::new(),
    }
}

/// Why a received bundle cannot be put in force.
enum Unusable {
    /// It is not a valid policy: every error, with its JSON pointer.
    Invalid(Vec<FieldError>),
    /// Its grants are keyed, and no key came with it.
    NoGrantKey,
}

/// Compiles a received bundle with the grant key that came with it.
fn compile(bundle: &[u8], grant_key: Option<&GrantKey>) -> Result<Bundle, Unusable> {
    let value: serde_json::Value = serde_json::from_slice(bundle).map_err(|e| {
        Unusable::Invalid(vec![FieldError {
            pointer: String::new(),
            message: format!("the bundle is not valid JSON: {e}"),
        }])
    })?;
    if grant_key.is_none() && tollgate_policy::needs_grant_key(&value) {
        return Err(Unusable::NoGrantKey);
    }
    tollgate_policy::load_distributed(&value, grant_key).map_err(|errors| {
        Unusable::Invalid(
            errors
                .iter()
                .map(|e| FieldError {
                    pointer: e.pointer.clone(),
                    message: e.message.clone(),
                })
                .collect(),
        )
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
