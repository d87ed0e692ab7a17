//! Fleet mode: the policy comes from the control plane over the
//! policy-distribution stream (ARCHITECTURE.md §4, stream 1) instead of a file,
//! and fleet-wide limits are decided from leases taken over the quota stream
//! (stream 2).
//!
//! Every stream rides one HTTP/2 connection ([`connect`] makes the
//! [`Connection`]; it dials on first use and again after a stream finds it
//! broken, re-reading the TLS files). Each stream is a [`stream::ControlStream`]
//! that [`stream::keep_open`] keeps open with its own [`backoff`]: the policy
//! stream in [`client`], the quota stream in [`quota`], the approvals stream
//! in [`approvals`]; decision reports for staged rollouts are unary calls
//! made by [`rollouts`]. A new stream plugs in the same way.
//!
//! [`start`] first restores the last good bundle from the state dir (so a
//! sidecar restarted while the control plane is down enforces it at once),
//! then spawns the [`client`] task that keeps the stream open, applies each
//! bundle off the request path, and ACKs or NACKs it. Until a bundle is in
//! force the [`LivePolicy`] is empty: every call is denied and `/readyz` is
//! not ready.

pub mod approvals;
pub mod backoff;
pub mod client;
pub mod connection;
pub mod dial;
pub mod quota;
pub mod rollouts;
pub mod state_dir;
pub mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tollgate_proto::v1::Node;

use crate::metrics::Metrics;
use crate::rollout_report::Decisions;
use crate::snapshot::{LivePolicy, Snapshot};
use backoff::BackoffConfig;
use client::{Applied, Client};
use connection::Connection;
use dial::ClientTls;
use state_dir::{StateDir, StateError};

/// Everything fleet mode needs to know.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The control plane's gRPC URL (`http://host:port`).
    pub control_plane: String,
    /// Who this sidecar is; sent on the first request of every stream.
    pub node: Node,
    /// Where the last good bundle is kept (none: nothing survives a restart).
    pub state_dir: Option<PathBuf>,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// For an `https://` control plane: the CA to trust and the client
    /// certificate to present.
    pub tls: Option<ClientTls>,
}

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `--control-plane` is not a URL tonic can connect to.
    #[error(
        "--control-plane {url:?} is not a usable URL (expected http://HOST:PORT, e.g. http://127.0.0.1:50051): {reason}"
    )]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--labels` entry or a labels-file line is not `key=value`.
    #[error("{origin}: {entry:?} is not a label (expected key=value)")]
    Label {
        /// `--labels` or the file and line.
        origin: String,
        /// The offending text.
        entry: String,
    },
    /// The labels file could not be read.
    #[error("cannot read the labels file {path}: {source}")]
    LabelsFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state dir could not be created.
    #[error(transparent)]
    StateDir(#[from] StateError),
}

/// Reads `--labels` values (each `key=value`; commas already split).
pub fn parse_labels(values: &[String]) -> Result<HashMap<String, String>, ControlError> {
    let mut out = HashMap::new();
    for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        match v.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), val.trim().to_owned());
            }
            _ => {
                return Err(ControlError::Label {
                    origin: "--labels".into(),
                    entry: v.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// Reads a Kubernetes downward-API labels file: one `key="value"` a line,
/// the value quoted with Go escapes (`\"`, `\\`, `\n`, `\t`).
pub fn parse_labels_file(path: &Path, text: &str) -> Result<HashMap<String, String>, ControlError> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || ControlError::Label {
            origin: format!("{}:{}", path.display(), i + 1),
            entry: line.to_owned(),
        };
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        let k = k.trim();
        if k.is_empty() {
            return Err(bad());
        }
        let v = v.trim();
        let v = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(quoted) => unquote(quoted).ok_or_else(bad)?,
            None => v.to_owned(),
        };
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            other => other,
        });
    }
    Some(out)
}

/// The labels to report: the labels file first, `--labels` overriding it.
pub fn labels(
    flags: &[String],
    file: Option<&Path>,
) -> Result<HashMap<String, String>, ControlError> {
    let mut out = match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ControlError::LabelsFile {
                    path: path.to_owned(),
                    source,
                })?;
            parse_labels_file(path, &text)?
        }
        None => HashMap::new(),
    };
    out.extend(parse_labels(flags)?);
    Ok(out)
}

/// The one connection every stream shares; checks the URL and its TLS
/// files' pairing, and connects on the first stream's demand.
pub fn connect(config: &FleetConfig) -> Result<Arc<Connection>, ControlError> {
    let connection = Connection::new(&config.control_plane, config.tls.clone())?;
    if config.tls.is_none() {
        tracing::warn!(
            control_plane = %config.control_plane,
            "plaintext control plane: bundles and quota travel unencrypted and unauthenticated \
             (a development setup); use an https:// control plane with --ca, --cert and --key"
        );
    }
    Ok(Arc::new(connection))
}

/// Restores the last good bundle, then spawns the policy stream over
/// `connection`. On return the store holds the restored bundle if there was
/// a usable one.
pub fn start(
    config: FleetConfig,
    connection: &Arc<Connection>,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    decisions: Arc<Decisions>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let state = config.state_dir.as_ref().map(StateDir::open).transpose()?;
    let applied = state
        .as_ref()
        .and_then(|dir| restore(dir, &store, &metrics, &decisions));
    if applied.is_none() {
        tracing::warn!(
            control_plane = %config.control_plane,
            "no policy yet: every tools/call is denied until the control plane sends one"
        );
    }
    let client = Client::new(config, store, metrics, state, applied, decisions);
    Ok(tokio::spawn(client.run(Arc::clone(connection))))
}

/// Starts the quota stream (fleet-wide limits) beside the policy stream, on
/// the same connection.
pub fn start_quota(
    config: &FleetConfig,
    connection: &Arc<Connection>,
    counters: Arc<quota::FleetCounters>,
    store: Arc<LivePolicy>,
    metrics: Arc<Metrics>,
    servers: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    let reporter = quota::Reporter::new(config.node.clone(), counters, store, metrics, servers);
    tokio::spawn(reporter.run(Arc::clone(connection), config.backoff))
}

/// Starts the decision reporter (staged rollouts) on the same connection:
/// a report of `decisions` every `every`.
pub fn start_rollouts(
    config: &FleetConfig,
    connection: &Arc<Connection>,
    decisions: Arc<Decisions>,
    metrics: Arc<Metrics>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let reporter = rollouts::Reporter::new(config.node.clone(), decisions, metrics, every);
    tokio::spawn(reporter.run(Arc::clone(connection)))
}

/// Puts the saved bundle in force; `None` (and a log line) when there is none
/// or it is unusable.
fn restore(
    dir: &StateDir,
    store: &LivePolicy,
    metrics: &Metrics,
    decisions: &Decisions,
) -> Option<Applied> {
    let saved = match dir.load() {
        Ok(Some(saved)) => saved,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("{e}; denying every call until the control plane sends a policy");
            return None;
        }
    };
    // Runs once before serving: compiling here, not on a blocking thread, is fine.
    let bundle = match serde_json::from_slice::<serde_json::Value>(&saved.bytes)
        .map_err(|e| format!("not valid JSON: {e}"))
        .and_then(|value| {
            tollgate_policy::load_distributed(&value, saved.grant_key.as_ref())
                .map_err(|e| e.to_string())
        }) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(
                dir = %dir.path().display(),
                "the saved bundle v{} no longer compiles, ignoring it: {e}",
                saved.version
            );
            return None;
        }
    };
    let label = client::version_label(saved.version);
    store.store(
        Snapshot::new(bundle, Arc::clone(&label))
            .with_grant_key(saved.grant_key.as_ref())
            .with_tally(decisions.tally(saved.version, false)),
    );
    metrics.policy_loaded(&label);
    tracing::info!(
        version = %label,
        dir = %dir.path().display(),
        "enforcing the last good policy from the state dir until the control plane answers"
    );
    Some(Applied {
        version: saved.version,
        content_hash: saved.content_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_flags_and_downward_api_file() {
        let file = "app=\"agent\"\ntier=\"a \\\"quoted\\\" value\"\n\nteam=\"x\"\n";
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), file).unwrap();
        let got = labels(&["team=y".into(), " zone = z1 ".into()], Some(tmp.path())).unwrap();
        assert_eq!(got["app"], "agent");
        assert_eq!(got["tier"], "a \"quoted\" value");
        assert_eq!(got["team"], "y", "--labels overrides the file");
        assert_eq!(got["zone"], "z1");

        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=v".into()]).is_err());
        let err = parse_labels_file(Path::new("f"), "ok=\"1\"\nbroken\n").unwrap_err();
        assert!(err.to_string().contains("f:2"), "{err}");
    }
}
