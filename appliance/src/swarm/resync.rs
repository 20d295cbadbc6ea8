//! Resynchronisation by majority vote: a node that finds itself out of
//! lockstep on a channel proposes to move (an action with its evidence),
//! the other nodes that run the channel check the proposal against their
//! own measurements and vote in their next packets, and the proposer
//! moves only once a majority of the group's healthy members that run the
//! channel approved. Each voter judges from what it measured itself, so a
//! node cannot talk the others into approving a move they do not see, and
//! a node that does not need to move cannot be approved. Pure functions of
//! the round's inputs; `super::node` applies them (docs/swarm.md,
//! "Resynchronisation").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::deviation::Deviation;

/// Time the votes need before the boundary a proposal acts at: the
/// proposal out, the votes back, a round to count them (state every
/// 500 ms), with room to spare.
pub const VOTE_TIME_MS: f32 = 1_500.0;

/// The boundary a proposal made at `frame` acts at: the next one when at
/// least [`VOTE_TIME_MS`] away, else the one after.
pub fn boundary(frame: i64, frames_per_segment: i64, segment_ms: f32) -> i64 {
    let per = frames_per_segment.max(1);
    let segment = frame.div_euclid(per);
    let left = (per - frame.rem_euclid(per)) as f32 / per as f32 * segment_ms;
    if left >= VOTE_TIME_MS { segment + 1 } else { segment + 2 }
}

/// What a node proposes to do to get back into lockstep.
/// (Externally tagged: the packets are postcard, which cannot read an
/// internally tagged enum.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Re-number its capture from the boundary on so that the picture it
    /// numbered `n` becomes `n + frames`: the frame offset its neighbours
    /// see (`Deviation::frame_offset` of theirs, as it measures them).
    Realign {
        /// Frames to move its numbering by.
        frames: i64,
    },
}

/// A proposal, in the proposer's packets until it is applied or dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Identifies it among the proposer's proposals (ms since 1970 when made).
    pub id: u64,
    /// What it would do.
    pub correction: Correction,
    /// The first segment made after it (applied at that boundary).
    pub at_segment: i64,
    /// Its evidence: the frame offset it measured for each neighbour.
    pub evidence: Vec<(String, i64)>,
}

/// A vote on another node's proposal, in the voter's packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The proposer.
    pub node: String,
    /// The proposal's id.
    pub id: u64,
    /// Whether the voter's own measurements agree.
    pub approve: bool,
}

/// Where a node's own proposal on a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, waiting for votes.
    Proposed,
    /// Carried: the capture moves at the proposal's boundary.
    Applied,
    /// Not carried before its boundary: nothing changed.
    Outvoted,
}

/// A node's last proposal on a channel and where it stands (its view,
/// the API and the events show it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The proposal.
    pub proposal: Proposal,
    /// Where it stands.
    pub outcome: Outcome,
    /// The nodes that approved it.
    pub approvals: Vec<String>,
    /// The healthy members of the group that run the channel, the proposer
    /// excluded (the electorate).
    pub voters: usize,
}

/// The correction this node should propose on a channel, if any: when a
/// majority of the `members` (the healthy nodes of its group that run the
/// channel, this one excluded) measure the same frame offset `k ≠ 0`
/// against it, it is the one out of step and proposes to move by `k`.
pub fn proposal_needed(
    deviations: &BTreeMap<String, Deviation>,
    members: &[String],
) -> Option<(Correction, Vec<(String, i64)>)> {
    let evidence: Vec<(String, i64)> =
        members.iter().filter_map(|n| Some((n.clone(), deviations.get(n)?.frame_offset?))).collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, k) in &evidence {
        *counts.entry(*k).or_default() += 1;
    }
    let (k, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    (k != 0 && majority(n, members.len() + 1)).then_some((Correction::Realign { frames: k }, evidence))
}

/// This node's vote on `proposal` from `proposer`: approve only when its
/// own measurement of the proposer shows the offset the correction
/// removes (a realign by `k` is right when this node sees the proposer at
/// `-k`).
pub fn vote(proposal: &Proposal, own: Option<&Deviation>) -> bool {
    match proposal.correction {
        Correction::Realign { frames } => own.and_then(|d| d.frame_offset) == Some(-frames) && frames != 0,
    }
}

/// Whether `approvals` of the `members` (the healthy nodes of the group
/// that run the channel, the proposer excluded) carry the proposal: a
/// majority of the group's healthy members that run the channel, the
/// proposer counted among them but not voting.
pub fn carried(approvals: usize, members: usize) -> bool {
    members > 0 && majority(approvals, members + 1)
}

/// More than half of `of`.
fn majority(n: usize, of: usize) -> bool {
    2 * n > of
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seen(offsets: &[(&str, Option<i64>)]) -> BTreeMap<String, Deviation> {
        offsets
            .iter()
            .map(|(n, k)| ((*n).to_string(), Deviation { frame_offset: *k, ..Deviation::default() }))
            .collect()
    }

    fn members(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn the_node_out_of_step_proposes_and_the_others_do_not() {
        // n1 slipped a frame: it sees n0 and n2 a frame behind; each of
        // them sees n1 a frame ahead and the other in lockstep.
        let all = members(&["n0", "n2"]);
        let (c, evidence) = proposal_needed(&seen(&[("n0", Some(-1)), ("n2", Some(-1))]), &all).unwrap();
        assert_eq!(c, Correction::Realign { frames: -1 });
        assert_eq!(evidence, [("n0".to_string(), -1), ("n2".to_string(), -1)]);
        assert_eq!(proposal_needed(&seen(&[("n1", Some(1)), ("n2", Some(0))]), &members(&["n1", "n2"])), None);
        // Five nodes, one slipped: the slipped one has four at -1.
        let four = members(&["a", "b", "c", "d"]);
        let d = seen(&[("a", Some(-1)), ("b", Some(-1)), ("c", Some(-1)), ("d", None)]);
        assert!(proposal_needed(&d, &four).is_some(), "three of five agree");
        // Each healthy node sees one neighbour at +1 and three at 0: none moves.
        let d = seen(&[("a", Some(1)), ("b", Some(0)), ("c", Some(0)), ("d", Some(0))]);
        assert_eq!(proposal_needed(&d, &four), None);
        // No majority for any offset: stay.
        let d = seen(&[("a", Some(-1)), ("b", Some(2)), ("c", None), ("d", None)]);
        assert_eq!(proposal_needed(&d, &four), None);
        // Alone, or seeing nobody, nothing to move by.
        assert_eq!(proposal_needed(&BTreeMap::new(), &[]), None);
    }

    #[test]
    fn voters_judge_by_their_own_measurements() {
        let p = Proposal { id: 1, correction: Correction::Realign { frames: -1 }, at_segment: 10, evidence: vec![] };
        let d = |k: Option<i64>| Deviation { frame_offset: k, ..Deviation::default() };
        assert!(vote(&p, Some(&d(Some(1)))), "the voter sees the proposer a frame ahead");
        assert!(!vote(&p, Some(&d(Some(0)))), "a proposer in step is not moved, whatever its evidence says");
        assert!(!vote(&p, Some(&d(Some(-1)))), "the wrong way");
        assert!(!vote(&p, Some(&d(None))), "unknown");
        assert!(!vote(&p, None), "no measurement");
        let zero = Proposal { correction: Correction::Realign { frames: 0 }, ..p };
        assert!(!vote(&zero, Some(&d(Some(0)))), "moving by nothing is no correction");
    }

    #[test]
    fn proposals_and_votes_travel_in_state_packets() {
        use crate::swarm::state::{self, ChannelReport, ClockSummary, EncodingState, Load};
        let proposal = Proposal {
            id: 7,
            correction: Correction::Realign { frames: -1 },
            at_segment: 12,
            evidence: vec![("n0".into(), -1)],
        };
        let s = EncodingState {
            node: "n1".into(),
            boot: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
            origin: None,
            sent_tai_ns: 0,
            neighbour_latency_ms: 0.0,
            neighbour_jitter_ms: 0.0,
            load: Load::default(),
            clock: ClockSummary { state: "locked".into(), error_ns: None },
            recent_errors: 0,
            uptime_s: 1,
            isolated: false,
            confidence: 1.0,
            leader: None,
            channels: vec![ChannelReport {
                id: "main".into(),
                frame: 600,
                timecode: String::new(),
                complexity: 0.1,
                segments: Vec::new(),
                encode_latency_ms: 1.0,
                weight: 0.5,
                ladder: Vec::new(),
                trail_first: 500,
                trail: vec![1, 2, 3],
                proposal: Some(proposal),
                votes: vec![Vote { node: "n2".into(), id: 9, approve: true }],
            }],
        };
        assert_eq!(state::decode(&state::encode(&s)), Some(s));
    }

    #[test]
    fn a_proposal_acts_at_the_first_boundary_the_votes_can_reach() {
        // 2 s segments of 50 frames: 1.5 s is 37.5 frames.
        assert_eq!(boundary(1_000, 50, 2_000.0), 21, "at a segment's start: the next boundary");
        assert_eq!(boundary(1_012, 50, 2_000.0), 21, "38 frames (1.52 s) left");
        assert_eq!(boundary(1_013, 50, 2_000.0), 22, "37 frames (1.48 s) left: the one after");
        assert_eq!(boundary(1_049, 50, 2_000.0), 22);
        assert_eq!(boundary(1_000, 25, 1_000.0), 42, "1 s segments: always the one after");
    }

    #[test]
    fn a_majority_of_the_group_carries_a_proposal() {
        assert!(carried(2, 2), "3 nodes: both others approve");
        assert!(!carried(1, 2), "3 nodes: one of two is not a majority of three");
        assert!(carried(3, 4) && !carried(2, 4), "5 nodes: three approvals needed");
        assert!(!carried(0, 0), "alone: no one to agree");
    }
}
