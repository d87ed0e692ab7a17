//! Per-node status (CSDS style): what each sidecar was sent, what it runs,
//! and whether it refused something.
//!
//! A [`NodeStatus`] is a small state machine driven by the distribution
//! stream; [`Fleet`] holds one per node id, keeps disconnected nodes, and
//! wakes status watchers when anything changes. STALE is derived when the
//! table is read (a sent version unacknowledged for `stale_after`), so no
//! timer per node is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_proto::v1::{Node, NodeState, node_state::State};

/// What a node last settled on; STALE is layered on top when reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    NotSent,
    Synced,
    Error,
}

/// One sidecar as the control plane sees it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    node: Node,
    connected: bool,
    /// Bumped on every connect, so a replaced stream's disconnect is ignored.
    session: u64,
    settled: Settled,
    applied_version: u64,
    sent_version: u64,
    sent_at: Option<Instant>,
    last_ack_at: i64,
    last_nack_at: i64,
    nack_error: String,
    /// Versions this node refused: never sent to it again.
    nacked: BTreeSet<u64>,
}

impl NodeStatus {
    fn new(node: Node) -> Self {
        Self {
            node,
            connected: false,
            session: 0,
            settled: Settled::NotSent,
            applied_version: 0,
            sent_version: 0,
            sent_at: None,
            last_ack_at: 0,
            last_nack_at: 0,
            nack_error: String::new(),
            nacked: BTreeSet::new(),
        }
    }

    /// The node reports it already runs `version` (on connect, when its
    /// content hash equals that version's).
    pub fn runs(&mut self, version: u64) {
        self.applied_version = version;
        self.settled = Settled::Synced;
    }

    /// `version` was sent at `now`.
    pub fn sent(&mut self, version: u64, now: Instant) {
        self.sent_version = version;
        self.sent_at = Some(now);
    }

    /// The node applied `version`.
    pub fn acked(&mut self, version: u64, wall: i64) {
        self.applied_version = version;
        self.settled = Settled::Synced;
        self.last_ack_at = wall;
    }

    /// The node refused `version` with `error`.
    pub fn nacked(&mut self, version: u64, error: String, wall: i64) {
        self.nacked.insert(version);
        self.settled = Settled::Error;
        self.last_nack_at = wall;
        self.nack_error = error;
    }

    /// Whether `version` may be sent to this node (it never refused it).
    pub fn accepts(&self, version: u64) -> bool {
        !self.nacked.contains(&version)
    }

    /// Sent, and neither acknowledged nor refused yet.
    fn pending(&self) -> bool {
        self.sent_version != 0
            && self.sent_version != self.applied_version
            && !self.nacked.contains(&self.sent_version)
    }

    /// The state at `now`: STALE when a pending version has waited
    /// `stale_after` or longer; otherwise what the node last settled on
    /// (a node waiting on a new version stays SYNCED on its old one, or
    /// ERROR, until it answers or goes stale).
    pub fn state(&self, now: Instant, stale_after: Duration) -> State {
        if self.pending()
            && self
                .sent_at
                .is_some_and(|at| now.saturating_duration_since(at) >= stale_after)
        {
            return State::Stale;
        }
        match self.settled {
            Settled::NotSent => State::NotSent,
            Settled::Synced => State::Synced,
            Settled::Error => State::Error,
        }
    }

    fn to_proto(&self, now: Instant, stale_after: Duration) -> NodeState {
        NodeState {
            node: Some(self.node.clone()),
            state: self.state(now, stale_after) as i32,
            connected: self.connected,
            applied_version: self.applied_version,
            sent_version: self.sent_version,
            last_ack_at: self.last_ack_at,
            last_nack_at: self.last_nack_at,
            nack_error: self.nack_error.clone(),
        }
    }
}

/// Seconds since the Unix epoch, for the times operators read.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Every node the control plane has seen since it started.
pub struct Fleet {
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
    stale_after: Duration,
    changed: watch::Sender<u64>,
}

/// A connected stream's claim on its node's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session(u64);

impl Fleet {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            nodes: Mutex::new(BTreeMap::new()),
            stale_after,
            changed: watch::Sender::new(0),
        }
    }

    /// Runs `f` on node `id`'s row and wakes watchers.
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut NodeStatus) -> R) -> Option<R> {
        let r = {
            // A poisoned lock means a panic mid-update; the row is still
            // usable for status, so take it rather than fail the stream.
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.get_mut(id).map(f)
        };
        self.changed.send_modify(|n| *n += 1);
        r
    }

    /// A stream for `node` opened: the row is created or refreshed.
    pub fn connect(&self, node: Node) -> Session {
        let session = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let row = nodes
                .entry(node.id.clone())
                .or_insert_with(|| NodeStatus::new(node.clone()));
            row.node = node;
            row.connected = true;
            row.session += 1;
            row.session
        };
        self.changed.send_modify(|n| *n += 1);
        Session(session)
    }

    /// The stream holding `session` closed. A newer stream for the same node
    /// keeps the row connected.
    pub fn disconnect(&self, id: &str, session: Session) {
        self.with(id, |row| {
            if row.session == session.0 {
                row.connected = false;
            }
        });
    }

    /// Updates node `id`'s row; `None` if it is unknown.
    pub fn update<R>(&self, id: &str, f: impl FnOnce(&mut NodeStatus) -> R) -> Option<R> {
        self.with(id, f)
    }

    /// Reads node `id`'s row.
    pub fn read<R>(&self, id: &str, f: impl FnOnce(&NodeStatus) -> R) -> Option<R> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.get(id).map(f)
    }

    /// The table, by node id.
    pub fn snapshot(&self) -> Vec<NodeState> {
        let now = Instant::now();
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .map(|n| n.to_proto(now, self.stale_after))
            .collect()
    }

    /// How many nodes have a stream open.
    pub fn connected(&self) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.values().filter(|n| n.connected).count()
    }

    /// Wakes on every change to the table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
