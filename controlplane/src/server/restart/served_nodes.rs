//! The nodes the control plane serves quota to, kept in the data dir
//! (`quota-nodes`) so that a control plane started after this one knows whom
//! to wait for.
//!
//! A sidecar cut off from the control plane admits calls on fallback once its
//! lease runs out; only its own report tells how many. A successor that
//! granted before hearing from every such node would grant against a window
//! it believes emptier than it is. So a node is written down before it is
//! sent its first lease (which is also what sets its fallback), and the
//! successor grants nothing new until each node written down has reported or
//! [`AWAIT_SERVED`] has passed, and on a bucket, for a node still silent then,
//! until the calls it may admit on fallback are out of the bucket's window
//! (see `Allocator::await_nodes` and `Allocator::await_fallback`). A node is
//! therefore kept written down while it may still admit such calls.
//!
//! The file holds one JSON string (a node id) per line. A node is appended
//! when its first stream opens — one short write, no sync, so thousands of
//! nodes connecting at once cost thousands of small writes, not thousands of
//! rewrites — and the file is rewritten (atomically, synced) only when nodes
//! gone for longer than [`KEEP_CLOSED`], and past their fallback, are dropped
//! from it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

/// How long a successor waits for the nodes this control plane served: the
/// sidecar's longest reconnect backoff (30 s) with a margin, so that every
/// sidecar still running and able to reach it has reported by then.
pub const AWAIT_SERVED: Duration = Duration::from_secs(35);

/// How long a node whose streams all closed stays written down at least:
/// one that is still running retries within its 30 s backoff. One silent
/// for longer is gone or cut off, and stays written down while it may still
/// admit calls on fallback counted in a window (see [`ServedNodes::prune`]).
pub const KEEP_CLOSED: Duration = Duration::from_secs(35);

#[derive(Debug, Clone, Copy)]
struct Served {
    /// Quota streams open now.
    open: u32,
    /// When the last one closed (or when this control plane started, for a
    /// node read from its predecessor's file).
    since: Instant,
}

/// The served nodes and their file.
pub struct ServedNodes {
    path: PathBuf,
    nodes: HashMap<String, Served>,
}

impl ServedNodes {
    /// Reads the nodes an earlier control plane on this data dir wrote down
    /// (returned, to be waited for) and keeps them written down until they
    /// are back or [`KEEP_CLOSED`] has passed, in case this one stops too.
    pub fn open(path: PathBuf, now: Instant) -> (Self, Vec<String>) {
        let prior = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    "cannot read the nodes an earlier control plane served ({e}); granting without waiting for them"
                );
                Vec::new()
            }
        };
        let nodes = prior
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    Served {
                        open: 0,
                        since: now,
                    },
                )
            })
            .collect();
        (Self { path, nodes }, prior)
    }

    /// A stream of `node` opened; written down first if it is new.
    pub fn connected(&mut self, node: &str) {
        if let Some(served) = self.nodes.get_mut(node) {
            served.open += 1;
            return;
        }
        self.nodes.insert(
            node.to_owned(),
            Served {
                open: 1,
                since: Instant::now(),
            },
        );
        if let Err(e) = self.append(node) {
            tracing::error!(
                path = %self.path.display(),
                node,
                "cannot write down a node served quota ({e}); a control plane restarted on this data dir may grant before hearing its fallback calls"
            );
        }
    }

    /// A stream of `node` closed.
    pub fn disconnected(&mut self, node: &str, now: Instant) {
        if let Some(served) = self.nodes.get_mut(node) {
            served.open = served.open.saturating_sub(1);
            if served.open == 0 {
                served.since = now;
            }
        }
    }

    /// Drops nodes closed for longer than [`KEEP_CLOSED`] that can no
    /// longer admit calls on fallback counted in a window (`may_fall_back`
    /// names those that can: their fallback reservation here, or their wait
    /// as nodes an earlier control plane served, has not ended; asked only
    /// when a node is closed that long), and rewrites the file if any were.
    pub fn prune<'a>(&mut self, now: Instant, may_fall_back: impl FnOnce() -> HashSet<&'a str>) {
        let stale =
            |s: &Served| s.open == 0 && now.saturating_duration_since(s.since) >= KEEP_CLOSED;
        if !self.nodes.values().any(stale) {
            return;
        }
        let keep = may_fall_back();
        let before = self.nodes.len();
        self.nodes
            .retain(|node, s| !stale(s) || keep.contains(node.as_str()));
        if self.nodes.len() == before {
            return;
        }
        if let Err(e) = self.rewrite() {
            tracing::warn!(
                path = %self.path.display(),
                "cannot rewrite the served nodes ({e}); a restarted control plane may wait for nodes that are gone"
            );
        }
    }

    fn append(&self, node: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line(node).as_bytes())
    }

    fn rewrite(&self) -> std::io::Result<()> {
        let mut ids: Vec<&String> = self.nodes.keys().collect();
        ids.sort();
        let text: String = ids.into_iter().map(|id| line(id)).collect();
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

fn line(node: &str) -> String {
    let mut s = serde_json::Value::from(node).to_string();
    s.push('\n');
    s
}

/// The node ids of a `quota-nodes` file, each once; a line that is not a
/// JSON string (a write cut short) is skipped with a warning.
fn parse(text: &str, path: &std::path::Path) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<String>(l) {
            Ok(id) => {
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = n + 1,
                "skipping a line that is not a node id in JSON ({e})"
            ),
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &std::path::Path) -> Vec<String> {
        let mut ids = parse(&std::fs::read_to_string(path).unwrap_or_default(), path);
        ids.sort();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_are_written_down_on_connect_and_dropped_once_gone_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("quota-nodes");
        let (mut served, prior) = ServedNodes::open(path.clone(), Instant::now());
        assert!(prior.is_empty());
        served.connected("pod-a");
        served.connected("pod \"b\"\nwith a newline");
        served.connected("pod-a"); // a second stream: not written again
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("written")
                .lines()
                .count(),
            2
        );
        assert_eq!(read(&path), ["pod \"b\"\nwith a newline", "pod-a"]);

        // pod-a closes one of its two streams: still served.
        served.disconnected("pod-a", Instant::now());
        served.disconnected("pod \"b\"\nwith a newline", Instant::now());
        tokio::time::advance(KEEP_CLOSED).await;
        served.prune(Instant::now(), HashSet::new);
        assert_eq!(read(&path), ["pod-a"]);

        // A successor reads pod-a back, and keeps it written down until it
        // is back or gone long enough.
        let (mut next, prior) = ServedNodes::open(path.clone(), Instant::now());
        assert_eq!(prior, ["pod-a"]);
        tokio::time::advance(KEEP_CLOSED - Duration::from_secs(1)).await;
        next.prune(Instant::now(), HashSet::new);
        assert_eq!(read(&path), ["pod-a"]);
        // Still able to admit on fallback: kept, however long it is gone.
        tokio::time::advance(Duration::from_secs(1)).await;
        next.prune(Instant::now(), || HashSet::from(["pod-a"]));
        assert_eq!(read(&path), ["pod-a"]);
        tokio::time::advance(Duration::from_secs(600)).await;
        next.prune(Instant::now(), || HashSet::from(["pod-a"]));
        assert_eq!(read(&path), ["pod-a"]);
        // Once it cannot, dropped.
        next.prune(Instant::now(), HashSet::new);
        assert!(read(&path).is_empty());
    }

    #[test]
    fn a_torn_line_is_skipped() {
        let path = std::path::Path::new("quota-nodes");
        assert_eq!(
            parse("\"pod-a\"\n\"pod-b\"\n\"pod-a\"\n\"pod-c", path),
            ["pod-a", "pod-b"]
        );
    }
}
