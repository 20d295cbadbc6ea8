//! This node's media clock against the swarm's consensus on a channel.
//!
//! The per-neighbour filters (`super::drift`) say how each neighbour's
//! clock moves against this one; none of them alone says which side is
//! moving. The consensus is the median of this node's latest readings
//! against every neighbour that runs the channel: one neighbour drifting
//! or stepping leaves it where it was, this node drifting moves it. A
//! [`ConsensusTracker`] filters that median with the same two-state
//! Kalman filter ([`DriftTracker`]: offset and rate), so a node sees its
//! own deviation from the swarm and when it will reach half a frame,
//! with less noise than any one neighbour's readings give (the median of
//! four readings of ±1 ms noise is good to about ±0.6 ms).

use super::drift::{DriftEstimate, DriftTracker};

/// Fewest neighbours whose readings form a consensus: with one, the
/// "consensus" is that neighbour, and the per-neighbour filter says it.
pub const MIN_NEIGHBOURS: usize = 2;

/// Median of this node's readings against its neighbours, filtered.
#[derive(Debug, Clone, Default)]
pub struct ConsensusTracker {
    tracker: DriftTracker,
    /// Newest reading time fed so far: a round without a newer reading
    /// feeds nothing (the same readings twice would count as two).
    fed_up_to: i64,
}

impl ConsensusTracker {
    /// Feeds one round at `t_ns`: `readings` are (time taken, this node's
    /// media clock minus a neighbour's, ns), one per neighbour. Returns
    /// whether a consensus was measured (enough neighbours, one of them
    /// newer than the last round's).
    pub fn measure(&mut self, t_ns: i64, readings: &[(i64, f64)]) -> bool {
        let newest = readings.iter().map(|(at, _)| *at).max().unwrap_or(i64::MIN);
        if readings.len() < MIN_NEIGHBOURS || newest <= self.fed_up_to {
            return false;
        }
        self.fed_up_to = newest;
        let mut v: Vec<f64> = readings.iter().map(|(_, r)| *r).collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] };
        self.tracker.measure(t_ns, median);
        true
    }

    /// The offset alone and its standard error, ns (see
    /// [`DriftTracker::offset`]).
    pub fn offset(&self, t_ns: i64) -> Option<(f64, f64)> {
        self.tracker.offset(t_ns)
    }

    /// This node's clock minus the swarm's consensus at `t_ns`, with its
    /// rate; `None` until the filter has settled.
    pub fn estimate(&self, t_ns: i64) -> Option<DriftEstimate> {
        self.tracker.estimate(t_ns)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::predict::Noise;
    use crate::predict::drift::half_frame_ns;

    const S: i64 = 1_000_000_000;

    /// Four neighbours read twice a second with ±1 ms noise; `own(t)` is
    /// this node's clock error and `first(t)` the first neighbour's.
    /// Returns, per neighbour and for the consensus, the first time a
    /// prediction of half a frame (25 fps) within 10 s was made.
    fn run(own: &dyn Fn(f64) -> f64, first: &dyn Fn(f64) -> f64, seconds: i64) -> (Vec<Option<f64>>, Option<f64>) {
        let limit = half_frame_ns(25.0);
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut pairs = vec![DriftTracker::default(); 4];
        let mut consensus = ConsensusTracker::default();
        let (mut pair_first, mut consensus_first) = (vec![None; 4], None);
        for round in 0..seconds * 2 {
            let t = round * S / 2;
            let secs = t as f64 / 1e9;
            let readings: Vec<(i64, f64)> = (0..4)
                .map(|i| {
                    let theirs = if i == 0 { first(secs) } else { 0.0 };
                    (t, own(secs) - theirs + noise.next(1e6))
                })
                .collect();
            for (i, (p, (_, r))) in pairs.iter_mut().zip(&readings).enumerate() {
                p.measure(t, *r);
                if pair_first[i].is_none() && p.estimate(t).and_then(|e| e.time_to(limit)).is_some_and(|s| s <= 10.0) {
                    pair_first[i] = Some(secs);
                }
            }
            consensus.measure(t, &readings);
            if consensus_first.is_none()
                && consensus.estimate(t).and_then(|e| e.time_to(limit)).is_some_and(|s| s <= 10.0)
            {
                consensus_first = Some(secs);
            }
        }
        (pair_first, consensus_first)
    }

    #[test]
    fn this_node_drifting_moves_the_consensus_and_is_predicted_no_later_than_by_any_neighbour() {
        // 500 ppm from 20 s on: 20 ms (half a frame) at 60 s.
        let own = |s: f64| if s < 20.0 { 0.0 } else { (s - 20.0) * 500e3 };
        let (pairs, consensus) = run(&own, &|_| 0.0, 60);
        let consensus = consensus.unwrap();
        assert!(consensus < 52.0, "predicted at {consensus} s, at least 8 s before half a frame");
        for p in pairs {
            assert!(consensus <= p.unwrap() + 0.5, "consensus {consensus} s, a neighbour's filter {p:?}");
        }
    }

    #[test]
    fn one_neighbour_drifting_leaves_the_consensus_steady() {
        // The first neighbour gains 500 ppm from 20 s: its own filter
        // predicts it; the consensus of four does not move.
        let (pairs, consensus) = run(&|_| 0.0, &|s| if s < 20.0 { 0.0 } else { (s - 20.0) * 500e3 }, 90);
        assert!(pairs[0].is_some_and(|s| s < 52.0), "{pairs:?}");
        assert!(pairs[1..].iter().all(Option::is_none), "{pairs:?}");
        assert_eq!(consensus, None);
    }

    #[test]
    fn one_neighbour_is_no_consensus_and_a_round_without_new_readings_feeds_nothing() {
        let mut c = ConsensusTracker::default();
        assert!(!c.measure(S, &[(S, 1e6)]));
        assert!(c.measure(S, &[(S, 1e6), (S, 3e6)]));
        assert!(!c.measure(2 * S, &[(S, 1e6), (S, 3e6)]), "the same readings again");
        assert!(c.measure(3 * S, &[(S, 1e6), (3 * S, 3e6), (3 * S, 2e6)]));
        for round in 4..20 {
            c.measure(round * S, &[(round * S, 1e6), (round * S, 3e6), (round * S, 2e6), (round * S, 9e6)]);
        }
        // The median of four: halfway between the middle two.
        let e = c.estimate(20 * S).unwrap();
        assert!((e.offset_ns - 2.5e6).abs() < 0.3e6, "{e:?}");
    }
}
