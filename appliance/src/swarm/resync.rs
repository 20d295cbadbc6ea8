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

use super::deviation::{ClockDrift, Deviation};

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
    /// Correct its media clock from the boundary on: add `offset_ns`
    /// plus `rate_ppb` times the time since the proposal was made (its
    /// id), so its clock runs with its neighbours' again (the clock
    /// difference they measure, from its side; docs/swarm.md, Drift).
    Clock {
        /// Offset to add, as measured when the proposal was made, ns.
        offset_ns: i64,
        /// Rate to add, parts per 10⁹.
        rate_ppb: i64,
    },
}

impl Correction {
    /// In words, for events and logs.
    pub fn describe(&self) -> String {
        match *self {
            Self::Realign { frames } => {
                format!("realign its capture by {frames} frame{}", if frames.abs() == 1 { "" } else { "s" })
            }
            Self::Clock { offset_ns, rate_ppb } => format!(
                "correct its media clock by {:+.1} ms and {:+.0} ppm",
                offset_ns as f64 / 1e6,
                rate_ppb as f64 / 1e3
            ),
        }
    }
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
    /// Its evidence, for each neighbour: the frame offset it measured
    /// (a realignment) or the neighbour's media clock minus its own in µs
    /// (a clock correction).
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

/// The realignment this node should propose on a channel, if any: when a
/// majority of the `members` (the healthy nodes of its group that run the
/// channel, this one excluded) measure the same frame offset `k ≠ 0`
/// against it, it is the one out of step and proposes to move by `k`.
/// Members in `clock_doubt` (their media clock and this node's are a
/// quarter frame or more apart, or not yet measured since a step or a
/// correction) are not counted: a clock that far off numbers pictures
/// differently by itself, and correcting the clock (a clock proposal)
/// puts the numbering right too, where a realignment as well would move
/// it twice.
pub fn proposal_needed(
    deviations: &BTreeMap<String, Deviation>,
    members: &[String],
    clock_doubt: &[String],
) -> Option<(Correction, Vec<(String, i64)>)> {
    let evidence: Vec<(String, i64)> = members
        .iter()
        .filter(|n| !clock_doubt.contains(n))
        .filter_map(|n| Some((n.clone(), deviations.get(n)?.frame_offset?)))
        .collect();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, k) in &evidence {
        *counts.entry(*k).or_default() += 1;
    }
    let (k, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
    (k != 0 && majority(n, members.len() + 1)).then_some((Correction::Realign { frames: k }, evidence))
}

/// The clock correction this node should propose on a channel, if any:
/// when a majority of the `members` have its media clock flagged
/// ([`ClockDrift::due`]: heading half a frame away within the horizon, a
/// quarter frame off and heading there, or half a frame off already), all
/// the same way, it is the one drifting and proposes to take what they
/// measure: their clocks minus its own, offset and rate. That is the
/// swarm's `consensus` against it (`crate::predict::consensus`: one
/// filter over the median of every neighbour's readings, less noisy than
/// any one) when it is flagged the same way; else the median of the
/// flagged neighbours' own estimates.
pub fn clock_proposal_needed(
    deviations: &BTreeMap<String, Deviation>,
    members: &[String],
    consensus: Option<ClockDrift>,
) -> Option<(Correction, Vec<(String, i64)>)> {
    let flagged: Vec<(&String, ClockDrift)> =
        members.iter().filter_map(|n| Some((n, deviations.get(n)?.clock?))).filter(|(_, c)| c.flagged).collect();
    // The larger side by direction of drift (the neighbours of a fast
    // clock all see it running ahead: their clocks fall behind); by the
    // offset's while the rate is not known yet (a step).
    let ahead_of_it = |c: &ClockDrift| if c.drift_ppm == 0.0 { c.offset_ms > 0.0 } else { c.drift_ppm > 0.0 };
    let (ahead, behind): (Vec<_>, Vec<_>) = flagged.into_iter().partition(|(_, c)| ahead_of_it(c));
    let is_ahead = ahead.len() >= behind.len();
    let side = if is_ahead { ahead } else { behind };
    if !majority(side.len(), members.len() + 1) {
        return None;
    }
    let evidence = side.iter().map(|(n, c)| ((*n).clone(), (f64::from(c.offset_ms) * 1e3).round() as i64)).collect();
    if let Some(c) = consensus.filter(|c| c.flagged && ahead_of_it(c) == is_ahead) {
        let correction = Correction::Clock {
            offset_ns: (f64::from(c.offset_ms) * 1e6).round() as i64,
            rate_ppb: (f64::from(c.drift_ppm) * 1e3).round() as i64,
        };
        return Some((correction, evidence));
    }
    let median = |f: &dyn Fn(&ClockDrift) -> f32| {
        let mut v: Vec<f32> = side.iter().map(|(_, c)| f(c)).collect();
        v.sort_by(f32::total_cmp);
        f64::from(v[v.len() / 2])
    };
    let correction = Correction::Clock {
        offset_ns: (median(&|c| c.offset_ms) * 1e6).round() as i64,
        rate_ppb: (median(&|c| c.drift_ppm) * 1e3).round() as i64,
    };
    Some((correction, evidence))
}

/// This node's vote on `proposal` from `proposer`: approve only when its
/// own measurement of the proposer shows what the correction removes. A
/// realign by `k` is right when this node sees the proposer at `-k`; a
/// clock correction when this node, too, has the proposer's clock flagged
/// ([`ClockDrift::due`]), at about the opposite of the
/// correction's rate and offset (now, `now_ms`; within 30 %, at least
/// 100 ppm and 3 ms).
pub fn vote(proposal: &Proposal, own: Option<&Deviation>, now_ms: u64) -> bool {
    match proposal.correction {
        Correction::Realign { frames } => own.and_then(|d| d.frame_offset) == Some(-frames) && frames != 0,
        Correction::Clock { offset_ns, rate_ppb } => {
            let Some(c) = own.and_then(|d| d.clock) else { return false };
            let since_s = now_ms.saturating_sub(proposal.id) as f64 / 1e3;
            let offset_ms = (offset_ns as f64 + rate_ppb as f64 * since_s) / 1e6;
            let rate_ppm = rate_ppb as f64 / 1e3;
            c.flagged
                && (f64::from(c.offset_ms) + offset_ms).abs() <= (0.3 * offset_ms.abs()).max(3.0)
                && (f64::from(c.drift_ppm) + rate_ppm).abs() <= (0.3 * rate_ppm.abs()).max(100.0)
        }
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

    /// With every member's clock in step.
    fn proposal_needed_clear(
        d: &BTreeMap<String, Deviation>,
        members: &[String],
    ) -> Option<(Correction, Vec<(String, i64)>)> {
        proposal_needed(d, members, &[])
    }

    #[test]
    fn a_frame_offset_the_clocks_explain_is_left_to_the_clock_correction() {
        // Five nodes: this one is a frame off from the four others, but
        // two of them measure its clock a quarter frame or more away (or
        // are still measuring it after a step): only two count, no majority.
        let four = members(&["a", "b", "c", "d"]);
        let d = seen(&[("a", Some(-1)), ("b", Some(-1)), ("c", Some(-1)), ("d", Some(-1))]);
        assert_eq!(proposal_needed(&d, &four, &members(&["a", "b"])), None);
        // One in doubt leaves three of five: a slip, realigned.
        let (c, evidence) = proposal_needed(&d, &four, &members(&["a"])).unwrap();
        assert_eq!(c, Correction::Realign { frames: -1 });
        assert_eq!(evidence.len(), 3, "the member in doubt is not evidence: {evidence:?}");
    }

    #[test]
    fn the_node_out_of_step_proposes_and_the_others_do_not() {
        // n1 slipped a frame: it sees n0 and n2 a frame behind; each of
        // them sees n1 a frame ahead and the other in lockstep.
        let all = members(&["n0", "n2"]);
        let (c, evidence) = proposal_needed_clear(&seen(&[("n0", Some(-1)), ("n2", Some(-1))]), &all).unwrap();
        assert_eq!(c, Correction::Realign { frames: -1 });
        assert_eq!(evidence, [("n0".to_string(), -1), ("n2".to_string(), -1)]);
        assert_eq!(proposal_needed_clear(&seen(&[("n1", Some(1)), ("n2", Some(0))]), &members(&["n1", "n2"])), None);
        // Five nodes, one slipped: the slipped one has four at -1.
        let four = members(&["a", "b", "c", "d"]);
        let d = seen(&[("a", Some(-1)), ("b", Some(-1)), ("c", Some(-1)), ("d", None)]);
        assert!(proposal_needed_clear(&d, &four).is_some(), "three of five agree");
        // Each healthy node sees one neighbour at +1 and three at 0: none moves.
        let d = seen(&[("a", Some(1)), ("b", Some(0)), ("c", Some(0)), ("d", Some(0))]);
        assert_eq!(proposal_needed_clear(&d, &four), None);
        // No majority for any offset: stay.
        let d = seen(&[("a", Some(-1)), ("b", Some(2)), ("c", None), ("d", None)]);
        assert_eq!(proposal_needed_clear(&d, &four), None);
        // Alone, or seeing nobody, nothing to move by.
        assert_eq!(proposal_needed_clear(&BTreeMap::new(), &[]), None);
    }

    #[test]
    fn voters_judge_by_their_own_measurements() {
        let p = Proposal { id: 1, correction: Correction::Realign { frames: -1 }, at_segment: 10, evidence: vec![] };
        let d = |k: Option<i64>| Deviation { frame_offset: k, ..Deviation::default() };
        let vote = |p: &Proposal, d: Option<&Deviation>| vote(p, d, 1);
        assert!(vote(&p, Some(&d(Some(1)))), "the voter sees the proposer a frame ahead");
        assert!(!vote(&p, Some(&d(Some(0)))), "a proposer in step is not moved, whatever its evidence says");
        assert!(!vote(&p, Some(&d(Some(-1)))), "the wrong way");
        assert!(!vote(&p, Some(&d(None))), "unknown");
        assert!(!vote(&p, None), "no measurement");
        let zero = Proposal { correction: Correction::Realign { frames: 0 }, ..p };
        assert!(!vote(&zero, Some(&d(Some(0)))), "moving by nothing is no correction");
    }

    /// A deviation whose clock is `offset_ms` and `ppm` from this node's,
    /// reaching half a frame (20 ms) in `left_s`, flagged with a 10 s horizon.
    fn clock(offset_ms: f32, ppm: f32, left_s: Option<f32>) -> Deviation {
        let flagged = ClockDrift::due(left_s, offset_ms, 10.0, 20.0);
        let clock = ClockDrift { offset_ms, drift_ppm: ppm, error_ms: 0.2, half_frame_in_s: left_s, flagged };
        Deviation { clock: Some(clock), ..Deviation::default() }
    }

    #[test]
    fn only_the_node_a_majority_sees_drifting_proposes_a_clock_correction() {
        let all = members(&["n0", "n1"]);
        // n2 gains 1000 ppm: both others' clocks fall behind it.
        let mut seen = BTreeMap::new();
        seen.insert("n0".to_string(), clock(-12.0, -1000.0, Some(8.0)));
        seen.insert("n1".to_string(), clock(-13.0, -980.0, Some(7.0)));
        let (c, evidence) = clock_proposal_needed(&seen, &all, None).unwrap();
        assert_eq!(c, Correction::Clock { offset_ns: -12_000_000, rate_ppb: -980_000 }, "the median of two: the upper");
        assert_eq!(evidence, vec![("n0".to_string(), -12_000), ("n1".to_string(), -13_000)]);
        assert_eq!(c.describe(), "correct its media clock by -12.0 ms and -980 ppm");
        // n0 sees n2 drifting and n1 in step: one of two, no proposal.
        let mut one = BTreeMap::new();
        one.insert("n1".to_string(), clock(0.1, 5.0, None));
        one.insert("n2".to_string(), clock(12.0, 1000.0, Some(8.0)));
        assert_eq!(clock_proposal_needed(&one, &all_but("n0"), None), None);
        // Beyond the horizon and within a quarter frame, or the neighbours
        // disagreeing on the way: none.
        seen.insert("n1".to_string(), clock(-8.0, -400.0, Some(30.0)));
        assert_eq!(clock_proposal_needed(&seen, &all, None), None);
        seen.insert("n1".to_string(), clock(13.0, 980.0, Some(7.0)));
        assert_eq!(clock_proposal_needed(&seen, &all, None), None);
        // Already half a frame off (0 s left) counts.
        seen.insert("n1".to_string(), clock(-21.0, -900.0, Some(0.0)));
        assert!(clock_proposal_needed(&seen, &all, None).is_some());
        // The swarm's consensus against it, flagged the same way, is what
        // it corrects by; one flagged the other way, or not at all, is not.
        let consensus = clock(-12.5, -995.0, Some(7.5)).clock;
        let (c, _) = clock_proposal_needed(&seen, &all, consensus).unwrap();
        assert_eq!(c, Correction::Clock { offset_ns: -12_500_000, rate_ppb: -995_000 });
        for other in [clock(12.5, 995.0, Some(7.5)).clock, clock(-0.5, -2.0, None).clock] {
            let (c, _) = clock_proposal_needed(&seen, &all, other).unwrap();
            assert_eq!(c, Correction::Clock { offset_ns: -12_000_000, rate_ppb: -900_000 }, "{other:?}");
        }
        // A consensus alone, without a majority of the neighbours: none.
        assert_eq!(clock_proposal_needed(&one, &all_but("n0"), consensus), None);
    }

    #[test]
    fn a_slow_drift_is_flagged_a_quarter_frame_off_with_prediction_and_half_a_frame_off_without() {
        // 50 ppm: 11 ms off, 180 s from half a frame (20 ms).
        assert!(ClockDrift::due(Some(180.0), -11.0, 10.0, 20.0), "a quarter frame off and heading there");
        assert!(!ClockDrift::due(Some(220.0), -9.0, 10.0, 20.0), "less than a quarter frame, beyond the horizon");
        assert!(ClockDrift::due(Some(8.0), 2.0, 10.0, 20.0), "within the horizon");
        assert!(!ClockDrift::due(None, 15.0, 10.0, 20.0), "steady: not heading there");
        // Without prediction only half a frame off counts.
        assert!(!ClockDrift::due(Some(8.0), 19.0, 0.0, 20.0));
        assert!(!ClockDrift::due(Some(180.0), -11.0, 0.0, 20.0));
        assert!(ClockDrift::due(Some(0.0), 20.5, 0.0, 20.0));
    }

    fn all_but(me: &str) -> Vec<String> {
        ["n0", "n1", "n2"].iter().filter(|n| **n != me).map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_clock_correction_is_approved_only_by_those_who_see_it() {
        // Proposed at t = 10 s: add -13 ms and -1000 ppm. Voted 2 s later,
        // when the proposer is about 15 ms ahead of the voter.
        let p = Proposal {
            id: 10_000,
            correction: Correction::Clock { offset_ns: -13_000_000, rate_ppb: -1_000_000 },
            at_segment: 10,
            evidence: vec![],
        };
        assert!(vote(&p, Some(&clock(15.0, 1000.0, Some(5.0))), 12_000));
        assert!(vote(&p, Some(&clock(16.5, 800.0, Some(4.0))), 12_000), "within 30 %");
        let mut unflagged = clock(15.0, 1000.0, Some(5.0));
        unflagged.clock = unflagged.clock.map(|c| ClockDrift { flagged: false, ..c });
        assert!(!vote(&p, Some(&unflagged), 12_000), "not flagged here");
        assert!(!vote(&p, Some(&clock(0.2, 3.0, None)), 12_000), "in step here: a forged correction");
        assert!(!vote(&p, Some(&clock(-15.0, -1000.0, Some(5.0))), 12_000), "the wrong way");
        assert!(!vote(&p, Some(&clock(15.0, 300.0, Some(5.0))), 12_000), "a different rate");
        assert!(!vote(&p, Some(&Deviation::default()), 12_000), "no clock reading");
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
            outlook: state::Outlook::default(),
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
