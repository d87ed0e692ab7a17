//! Where a node stands in a rollout: a stable place in [0, 1) from the
//! SHA-256 of the rollout id and the node id, and the cut each step chooses
//! nodes by.
//!
//! A place depends on nothing but the two ids, so a node keeps it across
//! reconnects and control-plane restarts, and a node that joins mid-rollout
//! is chosen exactly when its place is at or below the current step's cut.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// A node's place in rollout `rollout`: the first 8 bytes of
/// SHA-256(rollout id ‖ 0x00 ‖ node id), as a fraction of 2^64.
pub fn place(rollout: &str, node: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(rollout.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits keep the value exact in an f64 and strictly below 1.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The cut for a step taking `percent` of the nodes in scope, given the
/// nodes known now (their ids): the place of the last node of the
/// `ceil(percent × n)` lowest, so exactly that many known nodes are chosen;
/// 1.0 (everyone, later nodes too) at 100 %; `percent / 100` when no node is
/// known yet.
pub fn cut(rollout: &str, percent: f64, known: &[&str]) -> f64 {
    if percent >= 100.0 {
        return 1.0;
    }
    if known.is_empty() {
        return percent / 100.0;
    }
    let mut places: Vec<f64> = known.iter().map(|n| place(rollout, n)).collect();
    places.sort_by(f64::total_cmp);
    let wanted = ((percent / 100.0) * places.len() as f64).ceil() as usize;
    let wanted = wanted.clamp(1, places.len());
    places[wanted - 1]
}

/// Whether a node at `place` is chosen by a step with cut `cut`.
pub fn chosen(place: f64, cut: f64) -> bool {
    cut >= 1.0 || place <= cut
}

/// Whether `labels` match every `key=value` of `selector` (an empty
/// selector matches every node).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_stable_and_in_the_unit_interval() {
        let a = place("r1", "node-3");
        assert_eq!(a, place("r1", "node-3"));
        assert!((0.0..1.0).contains(&a));
        assert_ne!(a, place("r2", "node-3"), "another rollout shuffles nodes");
    }

    #[test]
    fn a_cut_chooses_exactly_the_share_of_known_nodes() {
        let ids: Vec<String> = (0..10).map(|i| format!("node-{i}")).collect();
        let known: Vec<&str> = ids.iter().map(String::as_str).collect();
        for (percent, count) in [(1.0, 1), (10.0, 1), (50.0, 5), (55.0, 6), (100.0, 10)] {
            let c = cut("r", percent, &known);
            let n = known.iter().filter(|n| chosen(place("r", n), c)).count();
            assert_eq!(n, count, "{percent} %");
        }
        // Steps only grow: the 10 % node is among the 50 %.
        let ten = cut("r", 10.0, &known);
        let fifty = cut("r", 50.0, &known);
        assert!(ten <= fifty);
    }

    #[test]
    fn selectors_match_every_pair() {
        let labels: BTreeMap<String, String> = [("app", "a"), ("zone", "z1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut sel = BTreeMap::new();
        assert!(selects(&sel, &labels));
        sel.insert("app".to_owned(), "a".to_owned());
        assert!(selects(&sel, &labels));
        sel.insert("zone".to_owned(), "z2".to_owned());
        assert!(!selects(&sel, &labels));
    }
}
