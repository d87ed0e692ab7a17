use std::time::Duration;

use tokio::time::{Instant, advance};
use tollgate_proto::v1::{Node, node_state::State};

use super::{Fleet, NodeStatus};
use crate::store::{NACKS_KEPT_PER_NODE, Nack};

const STALE: Duration = Duration::from_secs(10);

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        ..Default::default()
    }
}

fn nack(version: u64, error: &str, at: i64) -> Nack {
    Nack {
        version,
        content_hash: hash(version),
        error: error.to_owned(),
        at,
    }
}

/// The content hash of version `v` in these tests.
fn hash(v: u64) -> String {
    format!("{v:064x}")
}

fn state(fleet: &Fleet, id: &str) -> State {
    fleet
        .read(id, |n: &NodeStatus| n.state(Instant::now(), STALE))
        .expect("known node")
}

#[tokio::test(start_paused = true)]
async fn a_sent_version_goes_stale_only_after_the_timeout() {
    let fleet = Fleet::new(STALE);
    fleet.connect(node("a"), None);
    assert_eq!(state(&fleet, "a"), State::NotSent);

    fleet.update("a", |n| n.sent(1, Instant::now()));
    advance(STALE - Duration::from_millis(1)).await;
    assert_eq!(state(&fleet, "a"), State::NotSent);
    advance(Duration::from_millis(1)).await;
    assert_eq!(state(&fleet, "a"), State::Stale);

    // A late ACK still counts.
    fleet.update("a", |n| n.acked(1, 100));
    assert_eq!(state(&fleet, "a"), State::Synced);
}

#[tokio::test(start_paused = true)]
async fn a_node_waiting_on_a_new_version_stays_synced_until_stale() {
    let fleet = Fleet::new(STALE);
    fleet.connect(node("a"), None);
    fleet.update("a", |n| {
        n.sent(1, Instant::now());
        n.acked(1, 1);
        n.sent(2, Instant::now());
    });
    assert_eq!(state(&fleet, "a"), State::Synced);
    advance(STALE).await;
    assert_eq!(state(&fleet, "a"), State::Stale);
    fleet.update("a", |n| n.acked(2, 2));
    let applied = fleet.read("a", |n| n.applied_version).expect("row");
    assert_eq!((state(&fleet, "a"), applied), (State::Synced, 2));
}

#[tokio::test(start_paused = true)]
async fn a_nack_is_an_error_that_never_goes_stale_and_blocks_that_version() {
    let fleet = Fleet::new(STALE);
    fleet.connect(node("a"), None);
    fleet.update("a", |n| {
        n.sent(3, Instant::now());
        n.nacked(nack(3, "bad", 5));
    });
    advance(STALE * 3).await;
    assert_eq!(state(&fleet, "a"), State::Error);
    assert_eq!(fleet.read("a", |n| n.accepts(3, &hash(3))), Some(false));
    assert_eq!(fleet.read("a", |n| n.accepts(4, &hash(4))), Some(true));
    // Other content under the same number (a rebuilt store) is not refused.
    assert_eq!(fleet.read("a", |n| n.accepts(3, &hash(9))), Some(true));
    let row = &fleet.snapshot()[0];
    assert_eq!((row.last_nack_at, row.nack_error.as_str()), (5, "bad"));

    // The next version is pending: still ERROR until answered or stale.
    fleet.update("a", |n| n.sent(4, Instant::now()));
    assert_eq!(state(&fleet, "a"), State::Error);
    advance(STALE).await;
    assert_eq!(state(&fleet, "a"), State::Stale);
}

#[tokio::test(start_paused = true)]
async fn disconnected_nodes_stay_and_an_old_stream_cannot_disconnect_a_new_one() {
    let fleet = Fleet::new(STALE);
    let old = fleet.connect(node("a"), None);
    let new = fleet.connect(node("a"), None);
    fleet.disconnect("a", old);
    assert_eq!(fleet.connected(), 1);
    fleet.disconnect("a", new);
    assert_eq!(fleet.connected(), 0);
    let rows = fleet.snapshot();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].connected);
}

#[tokio::test(start_paused = true)]
async fn remembered_refusals_block_sends_and_make_a_node_still_running_older_an_error() {
    let fleet = Fleet::new(STALE);
    assert!(fleet.needs_memory("a"));
    // A restarted control plane: the store says `a` refused v2 at 50.
    fleet.connect(
        node("a"),
        Some(vec![nack(1, "old", 40), nack(2, "v2 is bad", 50)]),
    );
    assert!(!fleet.needs_memory("a"));
    assert_eq!(state(&fleet, "a"), State::NotSent);
    assert_eq!(fleet.read("a", |n| n.accepts(2, &hash(2))), Some(false));

    // It reports running v1 while v2 is the latest: its refusal stands.
    fleet.update("a", |n| n.still_refuses(2, Some(1)));
    advance(STALE * 2).await;
    assert_eq!(state(&fleet, "a"), State::Error);
    let row = &fleet.snapshot()[0];
    assert_eq!(
        (row.applied_version, row.sent_version, row.last_nack_at),
        (1, 2, 50)
    );
    assert_eq!(row.nack_error, "v2 is bad");

    // A version it never refused changes nothing.
    fleet.update("a", |n| n.still_refuses(3, Some(1)));
    assert_eq!(fleet.snapshot()[0].sent_version, 2);

    // The next version is sent and applied: SYNCED, the last NACK still shown.
    fleet.update("a", |n| {
        n.sent(3, Instant::now());
        n.acked(3, 60);
    });
    assert_eq!(state(&fleet, "a"), State::Synced);
    assert_eq!(fleet.snapshot()[0].nack_error, "v2 is bad");
}

#[tokio::test(start_paused = true)]
async fn refusals_seen_here_and_remembered_ones_merge_and_stay_bounded() {
    let fleet = Fleet::new(STALE);
    fleet.connect(node("a"), None);
    fleet.update("a", |n| n.nacked(nack(30, "newest, seen here", 90)));
    let stored: Vec<Nack> = (1..=20).map(|v| nack(v, "stored", v as i64)).collect();
    fleet.connect(node("a"), Some(stored));
    let row = &fleet.snapshot()[0];
    assert_eq!(
        (row.nack_error.as_str(), row.last_nack_at),
        ("newest, seen here", 90)
    );
    let kept = fleet
        .read("a", |n| {
            (1..=30).filter(|&v| !n.accepts(v, &hash(v))).count()
        })
        .expect("row");
    assert_eq!(kept, NACKS_KEPT_PER_NODE);
    assert_eq!(fleet.read("a", |n| n.accepts(30, &hash(30))), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_reconnecting_node_is_never_seen_connected_before_its_report() {
    // A node that refused v2 before a restart reconnects, saying it runs v1:
    // whoever reads the table sees it disconnected, then connected and
    // ERROR in one change — never connected and NOT_SENT in between.
    let fleet = Fleet::new(STALE);
    let mut changes = fleet.subscribe();
    changes.borrow_and_update();
    fleet.connect_with(
        node("picky"),
        String::new(),
        Some(vec![nack(2, "too new", 50)]),
        |n| {
            n.still_refuses(2, Some(1));
        },
    );
    assert!(changes.has_changed().expect("open"));
    assert_eq!(*changes.borrow_and_update(), 1, "one change");
    let row = fleet
        .snapshot()
        .into_iter()
        .find(|r| r.node.as_ref().is_some_and(|n| n.id == "picky"))
        .expect("row");
    assert!(row.connected);
    assert_eq!(row.state, State::Error as i32);
    assert_eq!((row.applied_version, row.sent_version), (1, 2));
    assert_eq!(row.nack_error, "too new");
}
