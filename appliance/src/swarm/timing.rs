//! Timing packets: how far each node's media clock is from its
//! neighbours', per channel, and where that is heading.
//!
//! Twice a second a node sends, for every channel it runs, the channel's
//! media time as the packet is made and, for each neighbour it heard, the
//! latest *one-way reading*: its own media time when that neighbour's
//! packet arrived minus the media time in it. A reading is the network
//! delay plus the clock difference; the two directions carry the same
//! delay with opposite differences, so half their difference is the clock
//! difference alone (as NTP does it). Each (channel, neighbour) pair feeds
//! a [`DriftTracker`] (`crate::predict::drift`), and every round the
//! median of a channel's latest readings feeds its [`ConsensusTracker`]
//! (`crate::predict::consensus`): this node against the swarm.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::deviation::ClockDrift;
use crate::predict::consensus::ConsensusTracker;
use crate::predict::drift::{DriftEstimate, DriftTracker};

/// A node's timing packet ([`super::wire::Kind::Timing`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Appliance id of the sender.
    pub node: String,
    /// Every channel it runs.
    pub channels: Vec<ChannelTiming>,
}

/// One channel's media time and readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelTiming {
    /// Channel id.
    pub id: String,
    /// The channel's media time when the packet was made, TAI ns.
    pub media_tai_ns: i64,
    /// (node, one-way reading in ns) for every neighbour heard on this
    /// channel: the sender's media time at arrival minus the neighbour's
    /// at sending.
    pub heard: Vec<(String, i64)>,
}

/// Decodes a timing packet's payload; `None` when malformed.
pub fn decode(payload: &[u8]) -> Option<Timing> {
    postcard::from_bytes(payload).ok()
}

/// Encodes a timing packet's payload.
pub fn encode(timing: &Timing) -> Vec<u8> {
    postcard::to_allocvec(timing).unwrap_or_default()
}

/// This node's readings and trackers, per (channel, neighbour).
#[derive(Debug, Default)]
pub struct ClockWatch {
    heard: BTreeMap<(String, String), i64>,
    trackers: BTreeMap<(String, String), DriftTracker>,
    /// Filters to start afresh with the first reading from this time on
    /// (a clock correction takes effect then).
    fresh_from: BTreeMap<(String, String), i64>,
    /// The last clock difference measured per pair, and when.
    latest: BTreeMap<(String, String), (i64, f64)>,
    /// Per channel: this node against the median of its neighbours.
    consensus: BTreeMap<String, ConsensusTracker>,
    /// Consensus filters to start afresh from this time on (this node's
    /// own clock was corrected).
    consensus_fresh_from: BTreeMap<String, i64>,
}

/// Readings older than this are left out of the consensus (a neighbour
/// that stopped sending timing packets).
pub const CONSENSUS_READING_NS: i64 = 1_500_000_000;

/// Readings this long after a correction takes effect start the fresh
/// filter: a reading pairs this node's latest view with the neighbour's
/// of up to a round before, so the first ones after the step mix both.
pub const SETTLE_NS: i64 = 1_200_000_000;

impl ClockWatch {
    /// A neighbour's packet arrived at `now_ns` (this node's clock);
    /// `own_media(channel)` is this node's media time now on a channel it
    /// runs. Returns how many channels gave a clock difference.
    pub fn receive(
        &mut self,
        me: &str,
        timing: &Timing,
        own_media: &dyn Fn(&str) -> Option<i64>,
        now_ns: i64,
    ) -> usize {
        let mut measured = 0;
        for c in &timing.channels {
            let Some(mine) = own_media(&c.id) else { continue };
            let reading = mine.saturating_sub(c.media_tai_ns);
            let key = (c.id.clone(), timing.node.clone());
            self.heard.insert(key.clone(), reading);
            // Theirs of us: their clock minus ours plus the same delay.
            let Some(&(_, back)) = c.heard.iter().find(|(n, _)| n == me) else { continue };
            let own_minus_theirs = (reading as f64 - back as f64) / 2.0;
            if let Some(&from) = self.fresh_from.get(&key) {
                if now_ns < from {
                    continue; // the correction is under way: no reading yet
                }
                self.fresh_from.remove(&key);
                self.trackers.remove(&key);
            }
            self.trackers.entry(key.clone()).or_default().measure(now_ns, own_minus_theirs);
            self.latest.insert(key, (now_ns, own_minus_theirs));
            measured += 1;
        }
        measured
    }

    /// This node's packet: `channels` with their media times now.
    pub fn packet(&self, me: &str, channels: &[(String, i64)]) -> Timing {
        Timing {
            node: me.to_string(),
            channels: channels
                .iter()
                .map(|(id, media_tai_ns)| ChannelTiming {
                    id: id.clone(),
                    media_tai_ns: *media_tai_ns,
                    heard: self
                        .heard
                        .range((id.clone(), String::new())..)
                        .take_while(|((c, _), _)| c == id)
                        .map(|((_, node), reading)| (node.clone(), *reading))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The filtered difference of this node's clock from `node`'s on
    /// `channel` at `now_ns` (None until it has settled).
    pub fn estimate(&self, channel: &str, node: &str, now_ns: i64) -> Option<DriftEstimate> {
        self.trackers.get(&(channel.to_string(), node.to_string()))?.estimate(now_ns)
    }

    /// `node`'s media clock against this node's on `channel`, as a
    /// deviation tells it (from the neighbour's side, like the frame
    /// offset), with the time left until it reaches `half_frame_ns`
    /// ([`seen_from_the_other_side`]). `horizon_s` is the prediction horizon ([`ClockDrift::due`]).
    pub fn drift(
        &self,
        channel: &str,
        node: &str,
        now_ns: i64,
        half_frame_ns: f64,
        horizon_s: f64,
    ) -> Option<ClockDrift> {
        let tracker = self.trackers.get(&(channel.to_string(), node.to_string()))?;
        seen_from_the_other_side(tracker.estimate(now_ns), tracker.offset(now_ns), half_frame_ns, horizon_s)
    }

    /// Feeds `channel`'s consensus filter with the median of this node's
    /// latest readings against its neighbours (those of the last
    /// [`CONSENSUS_READING_NS`], none whose filter is starting afresh after
    /// a correction). Call once a round.
    pub fn consensus_round(&mut self, channel: &str, now_ns: i64) {
        if let Some(&from) = self.consensus_fresh_from.get(channel) {
            if now_ns < from {
                return; // this node's correction is under way
            }
            self.consensus_fresh_from.remove(channel);
            self.consensus.remove(channel);
        }
        let readings: Vec<(i64, f64)> = self
            .latest
            .range((channel.to_string(), String::new())..)
            .take_while(|((c, _), _)| c == channel)
            .filter(|(key, (at, _))| !self.fresh_from.contains_key(*key) && now_ns - at <= CONSENSUS_READING_NS)
            .map(|(_, reading)| *reading)
            .collect();
        self.consensus.entry(channel.to_string()).or_default().measure(now_ns, &readings);
    }

    /// The swarm's consensus media clock against this node's on
    /// `channel`, as [`ClockWatch::drift`] tells a neighbour's: from the
    /// swarm's side (positive: the swarm is ahead), with the time left
    /// until this node is half a frame from it.
    pub fn consensus(&self, channel: &str, now_ns: i64, half_frame_ns: f64, horizon_s: f64) -> Option<ClockDrift> {
        let c = self.consensus.get(channel)?;
        seen_from_the_other_side(c.estimate(now_ns), c.offset(now_ns), half_frame_ns, horizon_s)
    }

    /// Whether `node`'s media clock on `channel` is known to be within
    /// `limit_ns` of this node's: `None` when it never sent a reading (a
    /// member without timing packets gives no evidence either way);
    /// `Some(false)` beyond the limit, or while its offset is not known
    /// (the first readings, a step under way, a correction taking effect).
    pub fn in_step(&self, channel: &str, node: &str, now_ns: i64, limit_ns: f64) -> Option<bool> {
        let key = (channel.to_string(), node.to_string());
        // A tracker only ever exists for a pair heard from.
        if !self.heard.contains_key(&key) {
            return None;
        }
        if self.fresh_from.contains_key(&key) {
            return Some(false);
        }
        let tracker = self.trackers.get(&key);
        Some(tracker.and_then(|t| t.offset(now_ns)).is_some_and(|(offset, _)| offset.abs() < limit_ns))
    }

    /// A clock correction on `channel` (of this node, or of `node`)
    /// takes effect at `at_ns`: the filters concerned start afresh with
    /// the readings from [`SETTLE_NS`] after it, since the rate they learnt
    /// no longer holds. `node` None: every neighbour (this node's clock
    /// moves against all of them).
    pub fn restart(&mut self, channel: &str, node: Option<&str>, at_ns: i64) {
        let keys: Vec<(String, String)> = match node {
            Some(n) => vec![(channel.to_string(), n.to_string())],
            None => {
                self.consensus_fresh_from.insert(channel.to_string(), at_ns + SETTLE_NS);
                self.heard.keys().filter(|(c, _)| c == channel).cloned().collect()
            }
        };
        for key in keys {
            self.fresh_from.insert(key, at_ns + SETTLE_NS);
        }
    }

    /// Forgets a channel's or a node's readings (it left).
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.heard.retain(|(c, n), _| keep(c, n));
        self.trackers.retain(|(c, n), _| keep(c, n));
        self.fresh_from.retain(|(c, n), _| keep(c, n));
        self.latest.retain(|(c, n), _| keep(c, n));
        let channels: std::collections::BTreeSet<&String> = self.heard.keys().map(|(c, _)| c).collect();
        self.consensus.retain(|c, _| channels.contains(c));
        self.consensus_fresh_from.retain(|c, _| channels.contains(c));
    }
}

/// A filter's view of this node's clock minus another's (`estimate`, or
/// before the rate is known `offset` alone), turned round: the other's
/// clock against this node's, with the time left until it is
/// `half_frame_ns` away.
///
/// Before the rate is known (the first readings, or after a step) only
/// a clock already half a frame off is shown, at rate 0, due now: a
/// step is corrected without waiting six seconds for its rate.
fn seen_from_the_other_side(
    estimate: Option<DriftEstimate>,
    offset: Option<(f64, f64)>,
    half_frame_ns: f64,
    horizon_s: f64,
) -> Option<ClockDrift> {
    let (offset_ms, drift_ppm, error_ms, half_frame_in_s) = match estimate {
        Some(e) => (-e.offset_ns / 1e6, -e.drift_ppm, e.error_ns / 1e6, e.time_to(half_frame_ns)),
        None => {
            let (offset, error) = offset?;
            if offset.abs() < half_frame_ns || error > half_frame_ns / 4.0 {
                return None;
            }
            (-offset / 1e6, 0.0, error / 1e6, Some(0.0))
        }
    };
    let half_frame_in_s = half_frame_in_s.map(|s| s as f32);
    Some(ClockDrift {
        offset_ms: offset_ms as f32,
        drift_ppm: drift_ppm as f32,
        error_ms: error_ms as f32,
        half_frame_in_s,
        flagged: ClockDrift::due(half_frame_in_s, offset_ms as f32, horizon_s, half_frame_ns / 1e6),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn the_delay_cancels_and_the_clock_difference_is_found_both_ways() {
        // b's clock runs 3 ms ahead of a's; packets take 0.4 ms.
        let (mut a, mut b) = (ClockWatch::default(), ClockWatch::default());
        let delay = 400_000;
        let clock_a = |t: i64| t;
        let clock_b = |t: i64| t + 3_000_000;
        let ch = "main".to_string();
        for round in 0..20 {
            let t = round * S / 2;
            let from_a = a.packet("a", &[(ch.clone(), clock_a(t))]);
            let arrive = t + delay;
            b.receive("b", &decode(&encode(&from_a)).unwrap(), &|_| Some(clock_b(arrive)), arrive);
            let from_b = b.packet("b", &[(ch.clone(), clock_b(t + S / 4))]);
            let arrive = t + S / 4 + delay;
            a.receive("a", &from_b, &|_| Some(clock_a(arrive)), arrive);
        }
        let seen_by_a = a.drift("main", "b", 10 * S, 20e6, 10.0).unwrap();
        let seen_by_b = b.drift("main", "a", 10 * S, 20e6, 10.0).unwrap();
        assert!((seen_by_a.offset_ms - 3.0).abs() < 0.05, "{seen_by_a:?}");
        assert!((seen_by_b.offset_ms + 3.0).abs() < 0.05, "{seen_by_b:?}");
        assert!(seen_by_a.drift_ppm.abs() < 5.0 && seen_by_a.half_frame_in_s.is_none(), "{seen_by_a:?}");
        // A channel only one of them runs gives nothing; an unknown one is skipped.
        let other = b.packet("b", &[("other".into(), 0)]);
        assert_eq!(a.receive("a", &other, &|c| (c == "main").then_some(0), 11 * S), 0);
        a.retain(|_, n| n != "b");
        assert!(a.estimate("main", "b", 11 * S).is_none());
        assert!(a.packet("a", &[(ch, 0)]).channels[0].heard.is_empty());
    }

    /// b's packet to a at `t`, b's clock `ahead` of a's (no delay).
    fn from_b(t: i64, ahead: i64) -> Timing {
        Timing {
            node: "b".into(),
            channels: vec![ChannelTiming {
                id: "main".into(),
                media_tai_ns: t + ahead,
                heard: vec![("a".into(), ahead)],
            }],
        }
    }

    #[test]
    fn a_clock_stepped_half_a_frame_away_is_shown_before_its_rate_is_known() {
        let mut a = ClockWatch::default();
        let mut seen = Vec::new();
        // b steps 30 ms ahead at 10 s (half a frame: 20 ms).
        for round in 0..60 {
            let t = round * S / 2;
            a.receive("a", &from_b(t, if t < 10 * S { 0 } else { 30_000_000 }), &|_| Some(t), t);
            seen.push((t, a.drift("main", "b", t, 20e6, 10.0)));
        }
        let first = seen.iter().find(|(t, d)| *t >= 10 * S && d.is_some_and(|d| d.offset_ms > 25.0)).unwrap();
        // Three readings held back as a possible late packet, then a fresh
        // filter: its offset after three readings, the rate not yet.
        assert!(first.0 <= 12 * S, "shown {} s after the step", (first.0 - 10 * S) as f64 / 1e9);
        let early = first.1.unwrap();
        assert_eq!((early.drift_ppm, early.half_frame_in_s), (0.0, Some(0.0)), "{early:?}");
        // Before the step nothing was off; once the rate is known, the full estimate.
        assert!(seen.iter().filter(|(t, _)| *t < 10 * S).all(|(_, d)| d.is_none_or(|d| d.offset_ms.abs() < 1.0)));
        let later = a.drift("main", "b", 29 * S, 20e6, 10.0).unwrap();
        assert!((later.offset_ms - 30.0).abs() < 0.1 && later.drift_ppm.abs() < 5.0, "{later:?}");
        // A step within half a frame shows nothing until the rate is known.
        let mut c = ClockWatch::default();
        for round in 0..30 {
            let t = round * S / 2;
            c.receive("a", &from_b(t, if t < 10 * S { 0 } else { 8_000_000 }), &|_| Some(t), t);
            if (10 * S..15 * S).contains(&t) {
                assert!(c.drift("main", "b", t, 20e6, 10.0).is_none_or(|d| d.offset_ms.abs() < 1.0), "at {t}");
            }
        }
    }

    #[test]
    fn after_a_correction_the_filter_starts_afresh_once_the_readings_settle() {
        let mut a = ClockWatch::default();
        // b runs 15 ms ahead, then corrects itself at 20 s.
        for round in 0..40 {
            let t = round * S / 2;
            a.receive("a", &from_b(t, 15_000_000), &|_| Some(t), t);
        }
        assert!((a.drift("main", "b", 20 * S, 20e6, 10.0).unwrap().offset_ms - 15.0).abs() < 0.1);
        // 15 ms is beyond a quarter frame (10 ms at 25 fps), within 20 ms.
        assert_eq!(a.in_step("main", "b", 20 * S, 10e6), Some(false));
        assert_eq!(a.in_step("main", "b", 20 * S, 20e6), Some(true));
        assert_eq!(a.in_step("main", "c", 20 * S, 10e6), None, "never heard: no evidence");
        a.restart("main", Some("b"), 20 * S);
        for round in 40..70 {
            let t = round * S / 2;
            a.receive("a", &from_b(t, 0), &|_| Some(t), t);
            if t < 20 * S + SETTLE_NS {
                assert!(
                    (a.drift("main", "b", t, 20e6, 10.0).unwrap().offset_ms - 15.0).abs() < 0.1,
                    "kept until settled"
                );
            }
            if t < 20 * S + SETTLE_NS + S {
                assert_eq!(a.in_step("main", "b", t, 20e6), Some(false), "unsettled at {t}");
            }
        }
        let after = a.drift("main", "b", 35 * S, 20e6, 10.0).unwrap();
        assert!(after.offset_ms.abs() < 0.1 && after.drift_ppm.abs() < 5.0, "{after:?}");
        assert_eq!(a.in_step("main", "b", 35 * S, 10e6), Some(true));
    }

    /// `node`'s packet to a at `t`, its clock `ahead` of a's (no delay).
    fn from(node: &str, t: i64, ahead: i64) -> Timing {
        Timing { node: node.into(), ..from_b(t, ahead) }
    }

    #[test]
    fn the_consensus_is_the_median_neighbour_and_restarts_when_this_clock_is_corrected() {
        let mut a = ClockWatch::default();
        // a runs 6 ms behind b and c; d, 30 ms ahead of a, is off on its own.
        let round = |a: &mut ClockWatch, t: i64, behind: i64| {
            for (node, ahead) in [("b", behind), ("c", behind), ("d", 30_000_000)] {
                a.receive("a", &from(node, t, ahead), &|_| Some(t), t);
            }
            a.consensus_round("main", t);
        };
        for r in 0..30 {
            round(&mut a, r * S / 2, 6_000_000);
        }
        let seen = a.consensus("main", 15 * S, 20e6, 10.0).unwrap();
        assert!((seen.offset_ms - 6.0).abs() < 0.1 && !seen.flagged, "{seen:?}");
        // Corrected at 15 s: the consensus starts afresh after it settles
        // (nothing known until its readings are in again).
        a.restart("main", None, 15 * S);
        for r in 30..36 {
            round(&mut a, r * S / 2, 0);
        }
        assert!(a.consensus("main", 18 * S, 20e6, 10.0).is_none());
        for r in 36..70 {
            round(&mut a, r * S / 2, 0);
        }
        let seen = a.consensus("main", 35 * S, 20e6, 10.0).unwrap();
        assert!(seen.offset_ms.abs() < 0.1, "{seen:?}");
        // Neighbours gone: no consensus kept.
        a.retain(|_, n| n == "b");
        assert!(a.consensus("main", 35 * S, 20e6, 10.0).is_some(), "b still runs the channel");
        a.retain(|_, _| false);
        assert!(a.consensus("main", 35 * S, 20e6, 10.0).is_none());
    }

    #[test]
    fn garbage_does_not_decode_and_a_packet_round_trips() {
        assert_eq!(decode(&[0xff; 3]), None);
        let t = Timing {
            node: "n1".into(),
            channels: vec![ChannelTiming { id: "main".into(), media_tai_ns: -5, heard: vec![("n2".into(), 7)] }],
        };
        assert_eq!(decode(&encode(&t)), Some(t));
    }
}
