//! Per-node status (CSDS style): what each sidecar was sent, what it runs,
//! and whether it refused something.
//!
//! A [`NodeStatus`] is a small state machine driven by the distribution
//! stream; [`Fleet`] holds one per node id, keeps disconnected nodes, and
//! wakes status watchers when anything changes. STALE is derived when the
//! table is read (a sent version unacknowledged for `stale_after`), so no
//! timer per node is needed.
//!
//! A node's refusals outlive the control plane: they are kept in the store
//! and [remembered](NodeStatus::remember) into its row when the node first
//! connects to this process, before anything is sent to it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_proto::v1::{Node, NodeState, node_state::State};

use crate::rollout::{Desired, NodeView};
use crate::store::{NACKS_KEPT_PER_NODE, Nack};

/// How many versions given to a node are kept, newest first. A node runs
/// one version and reports under it; older ones matter only for the reports
/// already on their way when it moves on.
pub const GIVEN_KEPT: usize = 16;

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
    /// A second process with this node id refused a quota stream (see
    /// [`NodeStatus::quota_conflict`]), and when (Unix seconds).
    quota_conflict: String,
    quota_conflict_at: i64,
    /// The SPIFFE id of the certificate its policy stream came with (""
    /// when node ids are taken as declared).
    identity: String,
    /// Versions this node refused, by number: never sent to it again.
    nacked: BTreeMap<u64, Nack>,
    /// Versions this process sent to the node, or that the node said it
    /// runs (by their content hash), newest [`GIVEN_KEPT`]: the only
    /// versions its quota reports may name.
    given: BTreeSet<u64>,
    /// Whether its refusals were read from the store since this process
    /// started.
    remembered: bool,
    /// What it should run, once the distribution computed it.
    desired: Option<Desired>,
    /// The shadow version it last ACKed beside its live one (0: none).
    applied_shadow: u64,
    /// Whether it ever ACKed or reported what it runs.
    answered: bool,
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
            quota_conflict: String::new(),
            quota_conflict_at: 0,
            identity: String::new(),
            nacked: BTreeMap::new(),
            given: BTreeSet::new(),
            remembered: false,
            desired: None,
            applied_shadow: 0,
            answered: false,
        }
    }

    /// What the node should run now.
    pub fn desire(&mut self, desired: Desired) {
        self.desired = Some(desired);
    }

    /// The shadow version the node ACKed beside its live one (0: none).
    pub fn acked_shadow(&mut self, shadow: u64) {
        self.applied_shadow = shadow;
    }

    /// Whether the node runs what it should (true when that is not known).
    pub fn runs_desired(&self) -> bool {
        self.desired.is_none_or(|d| {
            self.settled == Settled::Synced
                && d.version == self.applied_version
                && d.shadow.unwrap_or(0) == self.applied_shadow
        })
    }

    /// The node as a rollout's gates see it, refusals of `version` only.
    pub fn view(&self, version: u64) -> NodeView {
        let shadow = (self.applied_shadow != 0).then_some(self.applied_shadow);
        NodeView {
            id: self.node.id.clone(),
            labels: self.node.labels.clone().into_iter().collect(),
            connected: self.connected,
            runs: (self.answered && self.settled == Settled::Synced).then_some(Desired {
                version: self.applied_version,
                shadow,
            }),
            applied: self.applied_version,
            refused: self
                .nacked
                .get(&version)
                .map(|n| (n.version, n.error.clone())),
        }
    }

    /// The node reports it already runs `version` (on connect, when its
    /// content hash equals that version's).
    pub fn runs(&mut self, version: u64) {
        self.applied_version = version;
        self.applied_shadow = 0;
        self.answered = true;
        self.settled = Settled::Synced;
        self.given(version);
    }

    /// `version` is about to be sent to the node, or the node said it runs
    /// it (its content hash matched that version's): the node may name it
    /// in quota reports. Recorded before the send, so no report of it can
    /// arrive first.
    pub fn given(&mut self, version: u64) {
        self.given.insert(version);
        while self.given.len() > GIVEN_KEPT {
            self.given.pop_first();
        }
    }

    /// Whether `version` was sent to the node by this process, or the node
    /// said it runs it (see [`given`](Self::given)).
    pub fn was_given(&self, version: u64) -> bool {
        self.given.contains(&version)
    }

    /// A second sidecar process with this node id was refused a quota stream
    /// at `wall` (Unix seconds), because of `conflict`.
    pub fn quota_conflict(&mut self, conflict: String, wall: i64) {
        self.quota_conflict = conflict;
        self.quota_conflict_at = wall;
    }

    /// A new sidecar process of this node opened its quota stream (the one
    /// that reported before is gone): any earlier conflict is over.
    pub fn quota_resolved(&mut self) {
        self.quota_conflict.clear();
    }

    /// `version` was sent at `now`.
    pub fn sent(&mut self, version: u64, now: Instant) {
        self.sent_version = version;
        self.sent_at = Some(now);
    }

    /// The node applied `version`.
    pub fn acked(&mut self, version: u64, wall: i64) {
        self.applied_version = version;
        self.answered = true;
        self.settled = Settled::Synced;
        self.last_ack_at = wall;
    }

    /// The node refused `nack.version`.
    pub fn nacked(&mut self, nack: Nack) {
        self.settled = Settled::Error;
        self.last_nack_at = nack.at;
        self.nack_error.clone_from(&nack.error);
        self.keep(nack);
    }

    fn keep(&mut self, nack: Nack) {
        self.nacked.insert(nack.version, nack);
        while self.nacked.len() > NACKS_KEPT_PER_NODE {
            self.nacked.pop_first();
        }
    }

    /// Whether the refusals were already read from the store.
    pub fn remembers(&self) -> bool {
        self.remembered
    }

    /// Adds the refusals read from the store (which may be older or newer
    /// than those this process saw), and shows the newest as the last NACK.
    /// The state does not change: whether a refusal still matters depends on
    /// what the node reports running (see [`still_refuses`](Self::still_refuses)).
    pub fn remember(&mut self, stored: Vec<Nack>) {
        self.remembered = true;
        for nack in stored {
            if nack.at >= self.last_nack_at {
                self.last_nack_at = nack.at;
                self.nack_error.clone_from(&nack.error);
            }
            self.nacked.entry(nack.version).or_insert(nack);
        }
        while self.nacked.len() > NACKS_KEPT_PER_NODE {
            self.nacked.pop_first();
        }
    }

    /// Whether `version`, whose content hashes to `content_hash`, may be sent
    /// to this node: it never refused that version with that content.
    pub fn accepts(&self, version: u64, content_hash: &str) -> bool {
        self.nacked
            .get(&version)
            .is_none_or(|n| n.content_hash != content_hash)
    }

    /// The node says it runs `running` (its `version_info`, if any), not
    /// `version`, which is the latest and which it refused earlier — maybe
    /// before the control plane restarted.
    ///
    /// It is ERROR, with that refusal's error and time, and `version` counts
    /// as sent: the node does not run what it should, and nothing will be
    /// sent to it until a newer version is pushed, so an operator has to act
    /// — exactly what ERROR says. NOT_SENT would hide that it was sent and
    /// refused, SYNCED would claim it runs the latest, and STALE would
    /// suggest an answer is still awaited.
    pub fn still_refuses(&mut self, version: u64, running: Option<u64>) {
        let Some(nack) = self.nacked.get(&version) else {
            return;
        };
        self.settled = Settled::Error;
        self.last_nack_at = nack.at;
        self.nack_error.clone_from(&nack.error);
        self.sent_version = version;
        if let Some(running) = running {
            self.applied_version = running;
        }
    }

    /// Sent, and neither acknowledged nor refused yet.
    fn pending(&self) -> bool {
        self.sent_version != 0
            && self.sent_version != self.applied_version
            && !self.nacked.contains_key(&self.sent_version)
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
        if self.settled == Settled::Synced && !self.runs_desired() {
            // SYNCED means it runs what it should; it does not yet.
            return if self.pending() {
                State::Pending
            } else {
                State::NotSent
            };
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
            quota_conflict: self.quota_conflict.clone(),
            quota_conflict_at: self.quota_conflict_at,
            identity: self.identity.clone(),
            desired_version: self.desired.map_or(0, |d| d.version),
            desired_shadow_version: self.desired.and_then(|d| d.shadow).unwrap_or(0),
            applied_shadow_version: self.applied_shadow,
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

    /// Whether node `id`'s refusals are yet to be read from the store.
    pub fn needs_memory(&self, id: &str) -> bool {
        self.read(id, |n| !n.remembers()).unwrap_or(true)
    }

    /// A stream for `node` opened: the row is created or refreshed, with the
    /// refusals `stored` read from the store if given.
    pub fn connect(&self, node: Node, stored: Option<Vec<Nack>>) -> Session {
        self.connect_with(node, String::new(), stored, |_| {})
    }

    /// As [`connect`](Self::connect), and `first` applied to the row in the
    /// same change (what the node says it runs as it connects), so nobody
    /// reads it connected with what its previous stream left.
    pub fn connect_with(
        &self,
        node: Node,
        identity: String,
        stored: Option<Vec<Nack>>,
        first: impl FnOnce(&mut NodeStatus),
    ) -> Session {
        let session = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let row = nodes
                .entry(node.id.clone())
                .or_insert_with(|| NodeStatus::new(node.clone()));
            if let Some(stored) = stored {
                row.remember(stored);
            }
            row.node = node;
            row.identity = identity;
            row.connected = true;
            row.session += 1;
            first(row);
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

    /// Every node as a rollout of `version` sees it.
    pub fn views(&self, version: u64) -> Vec<NodeView> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.values().map(|n| n.view(version)).collect()
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
