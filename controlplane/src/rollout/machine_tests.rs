//! Paused-clock tests of the step machine: `now` is a number the test
//! moves, and the nodes ACK when the test says so.

use std::collections::BTreeMap;

use super::*;
use crate::rollout::{Counts, Desired};

const BAKE: i64 = 60_000;
const ACK: i64 = 30_000;

fn def(shadow_ms: i64) -> Definition {
    Definition {
        id: "r1".to_owned(),
        version: 2,
        from: 1,
        server: String::new(),
        selector: BTreeMap::new(),
        steps: vec![10.0, 50.0, 100.0],
        bake_ms: BAKE,
        shadow_ms,
        max_deny_rate_increase: 0.05,
        ack_timeout_ms: ACK,
        min_calls: 0,
        started_by: "admin".to_owned(),
    }
}

fn fleet(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| NodeView {
            id: format!("node-{i}"),
            labels: BTreeMap::new(),
            connected: true,
            runs: Some(Desired::live(1)),
            applied: 1,
            refused: None,
        })
        .collect()
}

/// Every connected node ACKs what it should run.
fn ack_all(r: &Rollout, nodes: &mut [NodeView]) {
    for n in nodes.iter_mut().filter(|n| n.connected) {
        let want = r.desired(&n.id, &n.labels).unwrap_or(Desired::live(1));
        n.runs = Some(want);
        n.applied = want.version;
    }
}

fn at_new(r: &Rollout, nodes: &[NodeView]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| r.desired(&n.id, &n.labels) == Some(Desired::live(2)))
        .map(|n| n.id.clone())
        .collect()
}

fn quiet() -> DenyRate {
    DenyRate {
        new: Counts::default(),
        old: Counts::default(),
        margin: 0.05,
        min_calls: 0,
    }
}

#[test]
fn steps_move_one_then_five_then_ten_nodes_after_each_bake() {
    let mut nodes = fleet(10);
    let mut r = Rollout::start(def(0), 0, &nodes);
    let first = at_new(&r, &nodes);
    assert_eq!(first.len(), 1);
    // Not ACKed yet: nothing moves, however long it is before the timeout.
    assert!(!r.tick(ACK - 1, &nodes, &quiet()));
    ack_all(&r, &mut nodes);
    assert!(r.tick(1_000, &nodes, &quiet()), "the ACKs start the bake");
    assert_eq!(r.acked_ms, Some(1_000));
    assert!(!r.tick(1_000 + BAKE - 1, &nodes, &quiet()), "still baking");
    assert_eq!(r.step, 0);
    assert!(r.tick(1_000 + BAKE, &nodes, &quiet()));
    assert_eq!((r.step, r.phase), (1, Phase::Enforcing));
    let second = at_new(&r, &nodes);
    assert_eq!(second.len(), 5);
    assert!(second.contains(&first[0]), "the 10 % node stays chosen");
    ack_all(&r, &mut nodes);
    r.tick(70_000, &nodes, &quiet());
    r.tick(70_000 + BAKE, &nodes, &quiet());
    assert_eq!(at_new(&r, &nodes).len(), 10);
    ack_all(&r, &mut nodes);
    r.tick(140_000, &nodes, &quiet());
    r.tick(140_000 + BAKE, &nodes, &quiet());
    assert_eq!(r.state, State::Completed);
}

#[test]
fn the_chosen_node_is_the_same_for_a_restarted_control_plane_and_a_late_joiner() {
    let nodes = fleet(10);
    let r = Rollout::start(def(0), 0, &nodes);
    let first = at_new(&r, &nodes);
    // A restart rebuilds the rollout from its record; placement is pure.
    let again =
        crate::rollout::record::decode(&crate::rollout::record::encode(&r)).expect("decodes");
    assert_eq!(at_new(&again, &nodes), first);
    // A node joining mid-rollout gets the version of its place.
    let joiner = (10..200)
        .map(|i| format!("late-{i}"))
        .find(|id| placement::place("r1", id) <= r.cuts[0])
        .expect("some late node falls under the cut");
    assert_eq!(r.desired(&joiner, &BTreeMap::new()), Some(Desired::live(2)));
}

#[test]
fn a_refusal_pauses_the_step_naming_the_node() {
    let mut nodes = fleet(10);
    let mut r = Rollout::start(def(0), 0, &nodes);
    let chosen = at_new(&r, &nodes)[0].clone();
    for n in nodes.iter_mut().filter(|n| n.id == chosen) {
        n.refused = Some((2, "/servers/x: unknown key".to_owned()));
    }
    assert!(r.tick(500, &nodes, &quiet()));
    let State::Paused { reason } = &r.state else {
        panic!("paused, got {:?}", r.state)
    };
    assert!(
        reason.contains(&format!("node {chosen} refused version 2")),
        "{reason}"
    );
    assert!(reason.starts_with("step 1 of 3"), "{reason}");
}

#[test]
fn a_missing_ack_pauses_at_the_timeout() {
    let nodes = fleet(10);
    let mut r = Rollout::start(def(0), 0, &nodes);
    assert!(!r.tick(ACK - 1, &nodes, &quiet()));
    assert!(r.tick(ACK, &nodes, &quiet()));
    assert!(
        matches!(&r.state, State::Paused { reason } if reason.contains("did not ACK within 30s"))
    );
    // Resuming starts the phase over, with a new timeout.
    r.resume(100_000).expect("resumes");
    assert!(!r.tick(100_000 + ACK - 1, &nodes, &quiet()));
}

#[test]
fn the_deny_rate_gate_pauses_during_the_bake_or_waits_then_pauses() {
    let mut nodes = fleet(10);
    let mut r = Rollout::start(def(0), 0, &nodes);
    ack_all(&r, &mut nodes);
    let rising = DenyRate {
        new: Counts {
            calls: 40,
            denied: 20,
        },
        old: Counts {
            calls: 400,
            denied: 4,
        },
        margin: 0.05,
        min_calls: 20,
    };
    assert!(r.tick(1_000, &nodes, &rising), "fails at once, mid-bake");
    assert!(matches!(&r.state, State::Paused { reason } if reason.contains("deny rate 0.500")));

    let mut r = Rollout::start(def(0), 0, &nodes);
    let thin = DenyRate {
        new: Counts {
            calls: 3,
            denied: 0,
        },
        ..rising
    };
    r.tick(1_000, &nodes, &thin);
    assert!(
        !r.tick(1_000 + BAKE - 1, &nodes, &thin),
        "inconclusive waits"
    );
    assert_eq!(r.state, State::Progressing);
    assert!(r.tick(1_000 + BAKE, &nodes, &thin));
    assert!(
        matches!(&r.state, State::Paused { reason } if reason.contains("too little traffic") && reason.contains("after 60s"))
    );

    let mut r = Rollout::start(def(0), 0, &nodes);
    let fine = DenyRate {
        new: Counts {
            calls: 40,
            denied: 1,
        },
        ..rising
    };
    r.tick(1_000, &nodes, &fine);
    r.tick(1_000 + BAKE, &nodes, &fine);
    assert_eq!(r.step, 1, "a passing gate moves on after the bake");
}

#[test]
fn a_shadow_phase_comes_first_for_each_steps_new_nodes() {
    let mut nodes = fleet(10);
    let shadow = 300_000;
    let mut r = Rollout::start(def(shadow), 0, &nodes);
    assert_eq!(r.phase, Phase::Shadow);
    let shadowed: Vec<_> = nodes
        .iter()
        .filter(|n| r.desired(&n.id, &n.labels).and_then(|d| d.shadow) == Some(2))
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(shadowed.len(), 1);
    assert!(at_new(&r, &nodes).is_empty(), "nobody enforces it yet");
    ack_all(&r, &mut nodes);
    r.tick(0, &nodes, &quiet());
    assert!(!r.tick(shadow - 1, &nodes, &quiet()));
    assert!(r.tick(shadow, &nodes, &quiet()));
    assert_eq!((r.step, r.phase), (0, Phase::Enforcing));
    assert_eq!(at_new(&r, &nodes), shadowed);
}

#[test]
fn rollback_returns_each_node_to_what_it_ran_before() {
    let mut nodes = fleet(10);
    nodes[3].applied = 7; // one node ran another version before
    nodes[3].runs = Some(Desired::live(7));
    let mut d = def(0);
    d.steps = vec![100.0];
    let mut r = Rollout::start(d, 0, &nodes);
    ack_all(&r, &mut nodes);
    r.tick(1, &nodes, &quiet());
    r.tick(1 + BAKE, &nodes, &quiet());
    assert_eq!(r.state, State::Completed);
    assert!(r.pause(2 + BAKE, "admin").is_err());
    r.rollback(2 + BAKE)
        .expect("a completed rollout rolls back");
    assert_eq!(
        r.desired("node-3", &BTreeMap::new()),
        Some(Desired::live(7))
    );
    assert_eq!(
        r.desired("node-4", &BTreeMap::new()),
        Some(Desired::live(1))
    );
    let err = r.resume(3 + BAKE).expect_err("not paused");
    assert_eq!(
        err.to_string(),
        "rollout r1 is RolledBack; resume applies to a Paused rollout"
    );
}

#[test]
fn nodes_outside_the_selector_keep_their_version() {
    let mut nodes = fleet(4);
    nodes[0].labels.insert("zone".to_owned(), "a".to_owned());
    let mut d = def(0);
    d.selector.insert("zone".to_owned(), "a".to_owned());
    d.steps = vec![100.0];
    let r = Rollout::start(d, 0, &nodes);
    assert_eq!(at_new(&r, &nodes), vec!["node-0".to_owned()]);
    assert_eq!(r.desired("node-1", &BTreeMap::new()), None);
}

#[test]
fn pause_promote_and_abort() {
    let nodes = fleet(10);
    let mut r = Rollout::start(def(0), 0, &nodes);
    r.pause(5, "alice").expect("pauses");
    assert!(matches!(&r.state, State::Paused { reason } if reason.ends_with("paused by alice")));
    r.promote(6, &nodes).expect("promotes");
    assert_eq!((r.step, &r.state), (1, &State::Progressing));
    r.abort(7).expect("aborts");
    assert_eq!(
        r.desired("node-1", &BTreeMap::new()),
        Some(Desired::live(1))
    );
    assert!(r.abort(8).is_err());
}
