use std::time::Duration;

use tokio::time::{Instant, advance};
use tollgate_proto::v1::{Node, node_state::State};

use super::{Fleet, NodeStatus};

const STALE: Duration = Duration::from_secs(10);

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        ..Default::default()
    }
}

fn state(fleet: &Fleet, id: &str) -> State {
    fleet
        .read(id, |n: &NodeStatus| n.state(Instant::now(), STALE))
        .expect("known node")
}

#[tokio::test(start_paused = true)]
async fn a_sent_version_goes_stale_only_after_the_timeout() {
    let fleet = Fleet::new(STALE);
    fleet.connect(node("a"));
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
    fleet.connect(node("a"));
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
    fleet.connect(node("a"));
    fleet.update("a", |n| {
        n.sent(3, Instant::now());
        n.nacked(3, "bad".into(), 5);
    });
    advance(STALE * 3).await;
    assert_eq!(state(&fleet, "a"), State::Error);
    assert_eq!(fleet.read("a", |n| n.accepts(3)), Some(false));
    assert_eq!(fleet.read("a", |n| n.accepts(4)), Some(true));
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
    let old = fleet.connect(node("a"));
    let new = fleet.connect(node("a"));
    fleet.disconnect("a", old);
    assert_eq!(fleet.connected(), 1);
    fleet.disconnect("a", new);
    assert_eq!(fleet.connected(), 0);
    let rows = fleet.snapshot();
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].connected);
}
