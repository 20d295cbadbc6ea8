//! How far a neighbour's encoding of a channel deviates from this node's,
//! measured every round from the two nodes' last state packets: the frame
//! offset between their numbering of the same pictures (from the
//! fingerprint trails), how many recent segments' hashes disagree, and
//! the difference in encode latency. Pure functions; the prediction and
//! the resynchronisation that act on them build on these (docs/swarm.md,
//! "Deviation").

use serde::Serialize;

use super::state::ChannelReport;

/// Largest frame offset looked for, either way.
pub const MAX_OFFSET: i64 = 12;
/// Fewest frames compared at an offset for it to count.
pub const MIN_OVERLAP: usize = 24;
/// Only the newest frames both trails hold at an offset are compared
/// (the trails hold more), so a slip shows within about this many frames
/// of the neighbour's last packet (1.3 s at 25 fps).
pub const RECENT_FRAMES: usize = 32;
/// Share of the frames compared at an offset that must match (9 in 10:
/// a frame substituted on one node during an input fault does not hide
/// the offset).
const MATCH_TENTHS: usize = 9;
/// Newest frames in a row that, matching at one offset only, give it
/// even while the older frames compared still match another (a slip
/// under way): a slip shows within about this many frames rather than
/// [`RECENT_FRAMES`] (0.5 s at 25 fps).
pub const NEWEST_RUN: usize = 12;

/// One neighbour's deviation on one channel, as this node measures it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Deviation {
    /// The neighbour's frame number for the picture this node numbers
    /// `n`, minus `n`: 0 in lockstep, 1 when its numbering runs a frame
    /// ahead (its pictures are a frame late). `None` when the trails
    /// cannot tell: too little overlap, no offset within
    /// ±[`MAX_OFFSET`] matches, or several do (a still picture).
    pub frame_offset: Option<i64>,
    /// Frames that matched at that offset.
    pub matched_frames: u32,
    /// Recent (segment, track) pairs both produced.
    pub hashes_compared: u32,
    /// Of those, the pairs whose hashes differ.
    pub hash_disagreements: u32,
    /// Its encode latency minus this node's, ms.
    pub encode_latency_ms: f32,
    /// Its media clock against this node's, once the readings have
    /// settled (`super::timing`).
    pub clock: Option<ClockDrift>,
}

/// A neighbour's media clock against this node's on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClockDrift {
    /// Its media clock minus this node's, ms.
    pub offset_ms: f32,
    /// How fast that changes, ppm (1 ppm: 1 µs a second).
    pub drift_ppm: f32,
    /// Standard error of the offset, ms.
    pub error_ms: f32,
    /// Seconds until the difference reaches half a frame at that rate
    /// (0: it has; `None`: it is not heading there).
    pub half_frame_in_s: Option<f32>,
    /// To be corrected ([`ClockDrift::due`]): what proposals, votes and
    /// `deviation` events go by.
    pub flagged: bool,
}

impl ClockDrift {
    /// Whether a clock so measured is to be corrected. With prediction
    /// (`horizon_s` > 0): predicted half a frame off within `horizon_s`,
    /// or heading there and already a quarter frame off (a slow drift
    /// gives less warning in seconds than its estimate's noise: 50 ppm
    /// moves 0.5 ms in 10 s). Without (`horizon_s` 0): only once half a
    /// frame off, the reactive baseline.
    pub fn due(half_frame_in_s: Option<f32>, offset_ms: f32, horizon_s: f64, half_frame_ms: f64) -> bool {
        match half_frame_in_s {
            None => false,
            Some(left) if horizon_s <= 0.0 => left <= 0.0,
            Some(left) => f64::from(left) <= horizon_s || f64::from(offset_ms.abs()) >= half_frame_ms / 2.0,
        }
    }
}

/// The deviation of `theirs` from `mine` (the same channel on two nodes).
pub fn deviation(mine: &ChannelReport, theirs: &ChannelReport) -> Deviation {
    let offset = frame_offset((mine.trail_first, &mine.trail), (theirs.trail_first, &theirs.trail));
    let (mut compared, mut differ) = (0u32, 0u32);
    for seg in &mine.segments {
        let Some(other) = theirs.segments.iter().find(|s| s.index == seg.index) else { continue };
        for (track, hash) in &seg.tracks {
            if let Some((_, h)) = other.tracks.iter().find(|(t, _)| t == track) {
                compared += 1;
                differ += u32::from(h != hash);
            }
        }
    }
    Deviation {
        frame_offset: offset.map(|(k, _)| k),
        matched_frames: offset.map_or(0, |(_, m)| u32::try_from(m).unwrap_or(u32::MAX)),
        hashes_compared: compared,
        hash_disagreements: differ,
        encode_latency_ms: theirs.encode_latency_ms - mine.encode_latency_ms,
        clock: None,
    }
}

/// The offset `k` for which frame `n` of `mine` carries the picture of
/// frame `n + k` of `theirs`, with the number of frames that matched; each
/// trail is (first frame number, fingerprints), and only the newest
/// [`RECENT_FRAMES`] frames both hold are compared. The offset within
/// ±[`MAX_OFFSET`] that compares at least [`MIN_OVERLAP`] frames and
/// matches 9 in 10 of them; failing that (a slip under way), the one
/// whose newest [`NEWEST_RUN`] frames or more match in a row. `None`
/// when no offset does, or more than one (a still or repeating picture).
pub fn frame_offset(mine: (i64, &[u64]), theirs: (i64, &[u64])) -> Option<(i64, usize)> {
    let (mine_first, mine) = mine;
    let (theirs_first, theirs) = theirs;
    let (mut most, mut newest) = (Vec::new(), Vec::new());
    for k in -MAX_OFFSET..=MAX_OFFSET {
        let (mut compared, mut matched, mut run) = (0usize, 0usize, 0usize);
        for (i, print) in mine.iter().enumerate().rev() {
            let j = mine_first + i as i64 + k - theirs_first;
            if let Some(other) = usize::try_from(j).ok().and_then(|j| theirs.get(j)) {
                compared += 1;
                matched += usize::from(other == print);
                if matched == compared {
                    run = matched;
                }
                if compared == RECENT_FRAMES {
                    break;
                }
            }
        }
        if compared >= MIN_OVERLAP && matched * 10 >= compared * MATCH_TENTHS {
            most.push((k, matched));
        }
        if run >= NEWEST_RUN {
            newest.push((k, run));
        }
    }
    match (most.as_slice(), newest.as_slice()) {
        ([one], _) | ([], [one]) => Some(*one),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::swarm::state::SegmentHashes;

    /// Fingerprints of a moving picture: a different value every frame.
    fn pictures(first: i64, len: usize) -> Vec<u64> {
        (first..first + len as i64).map(|n| (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect()
    }

    #[test]
    fn the_offset_between_two_numberings_of_the_same_pictures_is_found() {
        let base = pictures(1_000, 100);
        assert_eq!(frame_offset((1_000, &base), (1_000, &base)), Some((0, 32)), "in lockstep, the newest 32");
        // A node whose numbering runs one frame ahead: its frame n + 1
        // holds the picture this node numbers n. Trails sent at different
        // moments overlap only in part.
        let ahead: Vec<u64> = pictures(1_030, 100);
        assert_eq!(frame_offset((1_031, &ahead), (1_000, &base)), Some((-1, 32)));
        assert_eq!(frame_offset((1_000, &base), (1_031, &ahead)), Some((1, 32)));
        let behind3 = pictures(1_010, 100);
        assert_eq!(frame_offset((1_000, &base), (1_007, &behind3)), Some((-3, 32)));
    }

    #[test]
    fn a_still_picture_or_too_little_overlap_cannot_tell() {
        let still = vec![42u64; 100];
        assert_eq!(frame_offset((0, &still), (0, &still)), None, "every offset matches a still picture");
        let base = pictures(0, 100);
        assert_eq!(frame_offset((0, &base), (90, &pictures(90, 100))), None, "10 frames overlap");
        assert_eq!(frame_offset((0, &base), (0, &pictures(5_000, 100))), None, "other pictures");
        assert_eq!(frame_offset((0, &base), (0, &[])), None);
        assert_eq!(frame_offset((0, &base), (20, &pictures(0, 100))), None, "20 frames off: beyond the search");
    }

    #[test]
    fn a_few_substituted_frames_do_not_hide_the_offset() {
        let base = pictures(0, 100);
        let mut theirs = pictures(0, 100);
        for f in theirs.iter_mut().skip(90).take(3) {
            *f = 0; // black frames during a short input fault
        }
        assert_eq!(frame_offset((0, &base), (1, &theirs[1..])), Some((0, 29)));
        theirs[80] = 0;
        assert_eq!(frame_offset((0, &base), (1, &theirs[1..])), None, "4 in 32 are too many");
    }

    #[test]
    fn a_slip_under_way_shows_once_the_newest_frames_match_at_its_offset() {
        // Their pictures run a frame late from frame 80 on: their frame n
        // holds picture n - 1.
        let base = pictures(0, 200);
        let slipped = |to: usize| -> Vec<u64> {
            (0..to as i64).map(|n| if n < 80 { base[n as usize] } else { base[n as usize - 1] }).collect()
        };
        // 11 frames after the slip: neither offset yet (11 of 32 differ at 0).
        assert_eq!(frame_offset((0, &base), (0, &slipped(91))), None);
        // 12: the newest frames say +1 while the older still say 0.
        assert_eq!(frame_offset((0, &base), (0, &slipped(92))), Some((1, 12)));
        // Once most of the newest 32 match at +1, the 9-in-10 rule gives it.
        assert_eq!(frame_offset((0, &base[..100]), (0, &slipped(100))), Some((1, 20)), "20 newest in a row");
        assert_eq!(frame_offset((0, &base), (0, &slipped(115))), Some((1, 32)), "32 of 32");
        // A substituted frame among the newest restarts the count.
        let mut late = slipped(95);
        late[90] = 0;
        assert_eq!(frame_offset((0, &base), (0, &late)), None);
        // A still picture matches everywhere, the newest frames too.
        let still = vec![7u64; 100];
        assert_eq!(frame_offset((0, &base[..100]), (0, &still)), None);
        assert_eq!(frame_offset((0, &still), (0, &still)), None);
    }

    fn report(trail_first: i64, trail: Vec<u64>, segments: &[(i64, u8)], latency: f32) -> ChannelReport {
        ChannelReport {
            id: "main".into(),
            frame: 0,
            timecode: String::new(),
            complexity: 0.2,
            segments: segments
                .iter()
                .map(|(index, h)| SegmentHashes {
                    index: *index,
                    input: [0; 32],
                    tracks: vec![("360p".into(), [*h; 32]), ("audio".into(), [0; 32])],
                })
                .collect(),
            encode_latency_ms: latency,
            weight: 0.5,
            ladder: Vec::new(),
            trail_first,
            trail,
            proposal: None,
            votes: Vec::new(),
        }
    }

    #[test]
    fn the_deviation_counts_disagreeing_hashes_and_latency() {
        let mine = report(0, pictures(0, 100), &[(10, 1), (11, 1), (12, 1)], 300.0);
        let theirs = report(1, pictures(0, 100), &[(11, 1), (12, 2), (13, 2)], 450.0);
        let d = deviation(&mine, &theirs);
        assert_eq!(d.frame_offset, Some(1));
        assert_eq!((d.hashes_compared, d.hash_disagreements), (4, 1), "segments 11 and 12, two tracks each");
        assert_eq!(d.encode_latency_ms, 150.0);
        assert_eq!(deviation(&mine, &mine).frame_offset, Some(0));
        assert_eq!(deviation(&mine, &mine).hash_disagreements, 0);
    }
}
