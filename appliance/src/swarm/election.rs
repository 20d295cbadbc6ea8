//! Deterministic decisions every node computes from the same gossiped
//! state: segment groups and their leaders, encoder weights, and which
//! replica of each segment the combined output uses. No decision depends
//! on who asks: latencies are the nodes' own reported means, not the
//! observer's.

use std::collections::BTreeMap;

/// Nodes per segment group.
pub const GROUP_SIZE: usize = 10;
/// Confidence steps (0.05) an incumbent leader is given, against flapping.
pub const INCUMBENT_BONUS: i32 = 2;

/// What the election looks at for one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node id.
    pub node: String,
    /// Confidence score, 0–1.
    pub confidence: f32,
    /// The node's own mean latency to its neighbours, ms.
    pub latency_ms: f32,
    /// Alive and sending state.
    pub healthy: bool,
}

/// Groups of at most [`GROUP_SIZE`] nodes: ids sorted, cut in order.
pub fn groups(mut nodes: Vec<String>) -> Vec<Vec<String>> {
    nodes.sort();
    nodes.dedup();
    nodes.chunks(GROUP_SIZE).map(<[String]>::to_vec).collect()
}

/// Leader of a group: highest confidence (in 0.05 steps, the incumbent
/// getting [`INCUMBENT_BONUS`] steps), then lowest latency (5 ms steps),
/// then lowest node id. Unhealthy nodes never lead.
pub fn elect(group: &[Candidate], incumbent: Option<&str>) -> Option<String> {
    group
        .iter()
        .filter(|c| c.healthy)
        .max_by(|a, b| {
            let key = |c: &Candidate| {
                let bonus = if incumbent == Some(c.node.as_str()) { INCUMBENT_BONUS } else { 0 };
                let conf = (c.confidence.clamp(0.0, 1.0) * 20.0).round() as i32 + bonus;
                let latency = (c.latency_ms.max(0.0) / 5.0).round() as i64;
                (conf, -latency)
            };
            key(a).cmp(&key(b)).then_with(|| b.node.cmp(&a.node))
        })
        .map(|c| c.node.clone())
}

/// The name more than half of `named` agree on, if any.
pub fn majority(named: &[Option<String>]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in named.iter().flatten() {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    counts.into_iter().find(|(_, c)| 2 * c > named.len()).map(|(n, _)| n.to_string())
}

/// Weight update rate per decision round.
pub const WEIGHT_RATE: f32 = 0.2;

/// Inputs of a node's predicted weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightInputs {
    /// Complexity of the current content, 0–1 (the same on every node).
    pub complexity: f32,
    /// The node's process CPU share, 0–1.
    pub process_cpu: f32,
    /// Confidence, 0–1 (performance).
    pub confidence: f32,
    /// Alive, sending state and agreeing with the majority.
    pub healthy: bool,
    /// The failure prediction's probability that the node's encoder or
    /// packager fails within its horizon, while its alarm is up (else 0).
    pub predicted_risk: f32,
}

/// `predicted = (0.7 × complexity_fit + 0.3 × performance) × (1 − risk)`,
/// where complexity_fit = 1 − complexity × process_cpu (a loaded node fits
/// complex content worse), performance = confidence and risk the predicted
/// failure's probability while its alarm is up (a node about to fail hands
/// its work over before it does); 0 for an unhealthy node (drained).
pub fn predicted_weight(i: &WeightInputs) -> f32 {
    if !i.healthy {
        return 0.0;
    }
    let fit = (1.0 - i.complexity.clamp(0.0, 1.0) * i.process_cpu.clamp(0.0, 1.0)).clamp(0.0, 1.0);
    (0.7 * fit + 0.3 * i.confidence.clamp(0.0, 1.0)) * (1.0 - i.predicted_risk.clamp(0.0, 1.0))
}

/// One round: `w += (predicted − w) × rate`, clamped to 0–1. A failing
/// node drains towards 0; a recovered one comes back gradually.
pub fn update_weight(w: f32, predicted: f32) -> f32 {
    (w + (predicted - w) * WEIGHT_RATE).clamp(0.0, 1.0)
}

/// One replica of a segment: who made it and its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// Node id.
    pub node: String,
    /// SHA-256 of the segment file.
    pub hash: [u8; 32],
    /// The node's weight.
    pub weight: f32,
    /// The node is healthy.
    pub healthy: bool,
}

/// The replica the combined output uses: the majority hash among all
/// replicas (ties: the hash of the heavier, then lower-id node), then the
/// heaviest healthy node with that hash (ties: lower id). `None` when no
/// healthy node has the majority's bytes.
pub fn select(replicas: &[Replica]) -> Option<(String, [u8; 32])> {
    let mut votes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    for r in replicas {
        *votes.entry(r.hash).or_default() += 1;
    }
    let top = votes.values().copied().max()?;
    let majority = replicas
        .iter()
        .filter(|r| votes[&r.hash] == top)
        .max_by(|a, b| a.weight.total_cmp(&b.weight).then_with(|| b.node.cmp(&a.node)))?
        .hash;
    replicas
        .iter()
        .filter(|r| r.healthy && r.hash == majority)
        .max_by(|a, b| a.weight.total_cmp(&b.weight).then_with(|| b.node.cmp(&a.node)))
        .map(|r| (r.node.clone(), r.hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(node: &str, confidence: f32, latency_ms: f32) -> Candidate {
        Candidate { node: node.into(), confidence, latency_ms, healthy: true }
    }

    #[test]
    fn groups_are_sorted_and_cut_at_ten() {
        let nodes: Vec<String> = (0..23).rev().map(|i| format!("n{i:02}")).collect();
        let g = groups(nodes);
        assert_eq!(g.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 3]);
        assert_eq!(g[0][0], "n00");
    }

    #[test]
    fn confidence_then_latency_then_id() {
        assert_eq!(elect(&[c("b", 0.9, 10.0), c("a", 0.7, 1.0)], None).as_deref(), Some("b"));
        assert_eq!(elect(&[c("b", 0.9, 10.0), c("a", 0.9, 1.0)], None).as_deref(), Some("a"));
        assert_eq!(elect(&[c("b", 0.9, 1.0), c("a", 0.9, 2.0)], None).as_deref(), Some("a"), "same 5 ms step");
        let mut sick = c("z", 1.0, 0.0);
        sick.healthy = false;
        assert_eq!(elect(&[sick, c("y", 0.2, 50.0)], None).as_deref(), Some("y"));
        assert_eq!(elect(&[], None), None);
    }

    #[test]
    fn the_incumbent_keeps_the_lead_against_small_changes() {
        let g = [c("a", 0.90, 5.0), c("b", 0.95, 5.0)];
        assert_eq!(elect(&g, Some("a")).as_deref(), Some("a"), "0.05 better is not enough");
        let g = [c("a", 0.80, 5.0), c("b", 0.95, 5.0)];
        assert_eq!(elect(&g, Some("a")).as_deref(), Some("b"), "0.15 better is");
    }

    #[test]
    fn the_incumbent_is_who_a_majority_names() {
        let s = |x: &str| Some(x.to_string());
        assert_eq!(majority(&[s("a"), s("b"), s("c")]), None, "each names itself at start");
        assert_eq!(majority(&[s("a"), s("a"), s("c")]), s("a"));
        assert_eq!(majority(&[s("a"), None]), None);
    }

    #[test]
    fn every_permutation_elects_the_same_leader() {
        let g = [c("c", 0.9, 12.0), c("a", 0.9, 12.0), c("b", 0.85, 1.0), c("d", 0.9, 14.0)];
        let mut perms = vec![g.to_vec()];
        for i in 0..g.len() {
            let mut p = g.to_vec();
            p.rotate_left(i);
            p.reverse();
            perms.push(p);
        }
        for p in perms {
            assert_eq!(elect(&p, None).as_deref(), Some("a"));
        }
    }

    #[test]
    fn weights_drain_and_recover_gradually() {
        let healthy =
            WeightInputs { complexity: 0.5, process_cpu: 0.4, confidence: 1.0, healthy: true, predicted_risk: 0.0 };
        let p = predicted_weight(&healthy);
        assert!((p - (0.7 * 0.8 + 0.3)).abs() < 1e-6);
        let mut w = p;
        let mut drained = Vec::new();
        for _ in 0..20 {
            w = update_weight(w, predicted_weight(&WeightInputs { healthy: false, ..healthy }));
            drained.push(w);
        }
        assert!(drained.windows(2).all(|x| x[1] < x[0]) && w < 0.02, "{drained:?}");
        let w1 = update_weight(w, p);
        assert!(w1 > w && w1 < p / 2.0, "weighted back in gradually: {w1}");
    }

    #[test]
    fn the_majority_hash_wins_then_the_heaviest_healthy_replica() {
        let r = |node: &str, h: u8, weight: f32, healthy: bool| Replica {
            node: node.into(),
            hash: [h; 32],
            weight,
            healthy,
        };
        // b is heaviest but disagrees with the majority.
        let set = [r("a", 1, 0.5, true), r("b", 2, 0.9, true), r("c", 1, 0.6, true)];
        assert_eq!(select(&set), Some(("c".to_string(), [1; 32])));
        // The heaviest majority node is down: the next one.
        let set = [r("a", 1, 0.5, true), r("b", 2, 0.9, true), r("c", 1, 0.6, false)];
        assert_eq!(select(&set), Some(("a".to_string(), [1; 32])));
        // Two against two: the heavier side's hash.
        let set = [r("a", 1, 0.5, true), r("b", 2, 0.9, true)];
        assert_eq!(select(&set), Some(("b".to_string(), [2; 32])));
        assert_eq!(select(&[]), None);
    }
}
