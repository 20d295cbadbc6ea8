//! Which of this node's published segments to re-encode, and from which
//! pictures (docs/swarm.md, "Local re-encode").
//!
//! A segment whose bytes differ from the ones a majority of the nodes
//! publishing it agree on was made from other pictures (a slipped capture,
//! a clock off by half a frame or more) and published so: no verdict came
//! in time to hold it back (`crate::pipeline::rework::MajorityGate`). The
//! majority's frame fingerprints name the pictures it should have had;
//! peers' trails (the last few seconds, in every state packet) are
//! gathered into a longer history
//! ([`crate::pipeline::rework::PeerPrints`]) so the pictures of a whole
//! segment are known. The request goes to the
//! channel's rework thread (`crate::pipeline::rework`), which finds those
//! pictures among the ones it kept, checks the majority's input hash and
//! replaces the file only when its bytes are the majority's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::state::SegmentHashes;
use crate::pipeline::rework::{PeerPrints, Rework, Then, most_common};

/// Segments of peers' fingerprints kept.
pub const HISTORY_SEGMENTS: i64 = 12;
/// A segment is asked for again after this long (its pictures may not all
/// have been captured), at most [`ATTEMPTS`] times.
const RETRY: Duration = Duration::from_secs(1);
/// Requests for one segment, at most.
const ATTEMPTS: u32 = 5;

/// One channel's repair state: the segments already asked for.
#[derive(Debug, Default)]
pub struct Repair {
    asked: BTreeMap<i64, (Instant, u32)>,
}

/// A peer's recent segments, as its state packet carries them.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Node id.
    pub node: &'a str,
    /// Its recent segments.
    pub segments: &'a [SegmentHashes],
}

impl Repair {
    /// The re-encodes to ask for now: each own segment whose video bytes
    /// differ from those a majority of the nodes publishing it (this one
    /// included) agree on, with the pictures those nodes captured for it
    /// (from `prints`).
    pub fn plan(
        &mut self,
        own: &[SegmentHashes],
        peers: &[Peer<'_>],
        prints: &PeerPrints,
        frames_per_segment: i64,
        now: Instant,
    ) -> Vec<Rework> {
        if let Some(oldest) = own.first() {
            self.asked.retain(|&i, _| i >= oldest.index);
        }
        let mut out = Vec::new();
        for mine in own {
            let Some(rework) = needed(mine, peers, prints, frames_per_segment) else { continue };
            let asked = self.asked.entry(mine.index).or_insert((now, 0));
            if asked.1 >= ATTEMPTS || (asked.1 > 0 && now.duration_since(asked.0) < RETRY) {
                continue;
            }
            *asked = (now, asked.1 + 1);
            out.push(rework);
        }
        out
    }
}

/// The re-encode of `mine`, if the majority published other video bytes
/// and its pictures are known for every frame.
fn needed(mine: &SegmentHashes, peers: &[Peer<'_>], prints: &PeerPrints, frames_per_segment: i64) -> Option<Rework> {
    let theirs: Vec<(&str, &SegmentHashes)> =
        peers.iter().filter_map(|p| p.segments.iter().find(|s| s.index == mine.index).map(|s| (p.node, s))).collect();
    let voters = theirs.len() + 1;
    // The input the majority encoded, and the nodes that had it.
    let (input, count) = most_common(theirs.iter().map(|(_, s)| s.input))?;
    if input == mine.input || 2 * count <= voters {
        return None;
    }
    let agreeing: Vec<&(&str, &SegmentHashes)> = theirs.iter().filter(|(_, s)| s.input == input).collect();
    let mut expect = Vec::new();
    for (track, own_hash) in mine.tracks.iter().filter(|(t, _)| t != "audio") {
        let hashes = agreeing.iter().filter_map(|(_, s)| s.tracks.iter().find(|(t, _)| t == track).map(|(_, h)| *h));
        let (hash, count) = most_common(hashes)?;
        if hash != *own_hash && 2 * count > voters {
            expect.push((track.clone(), hash));
        }
    }
    if expect.is_empty() {
        return None;
    }
    let first = mine.index * frames_per_segment;
    let pictures = (first..first + frames_per_segment)
        .map(|n| {
            let known = agreeing.iter().filter_map(|(node, _)| prints.print(node, n));
            most_common(known).map(|(print, _)| print)
        })
        .collect::<Option<Vec<u64>>>()?;
    Some(Rework { index: mine.index, prints: pictures, input_sha256: Some(input), then: Then::Replace(expect) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const F: i64 = 4;

    fn seg(index: i64, input: u8, video: u8) -> SegmentHashes {
        SegmentHashes {
            index,
            input: [input; 32],
            tracks: vec![("360p".into(), [video; 32]), ("audio".into(), [9; 32])],
        }
    }

    /// Peers n1 and n2 captured pictures 100 + n for frame n.
    fn prints() -> PeerPrints {
        let mut p = PeerPrints::default();
        for node in ["n1", "n2"] {
            let trail: Vec<u64> = (8..16).map(|n| 100 + n).collect();
            p.observe(node, 8, &trail, HISTORY_SEGMENTS * F);
        }
        p
    }

    #[test]
    fn a_segment_the_majority_made_otherwise_is_asked_for_with_its_pictures() {
        let (mut r, p) = (Repair::default(), prints());
        let (n1, n2) = (vec![seg(2, 1, 1), seg(3, 1, 1)], vec![seg(2, 1, 1), seg(3, 1, 1)]);
        let peers = [Peer { node: "n1", segments: &n1 }, Peer { node: "n2", segments: &n2 }];
        let own = [seg(2, 1, 1), seg(3, 7, 7)];
        let now = Instant::now();
        let asked = r.plan(&own, &peers, &p, F, now);
        assert_eq!(
            asked,
            [Rework {
                index: 3,
                prints: vec![112, 113, 114, 115],
                input_sha256: Some([1; 32]),
                then: Then::Replace(vec![("360p".into(), [1; 32])]),
            }]
        );
        // Not again at once; again after a second (the re-encode may have
        // waited for a picture), and not for ever.
        assert!(r.plan(&own, &peers, &p, F, now).is_empty());
        let mut times = 1;
        for k in 1..10 {
            times += r.plan(&own, &peers, &p, F, now + RETRY * k).len();
        }
        assert_eq!(times, ATTEMPTS as usize);
    }

    #[test]
    fn nothing_is_asked_without_a_majority_or_the_pictures() {
        let (mut r, p) = (Repair::default(), prints());
        let now = Instant::now();
        let own = [seg(3, 7, 7)];
        // The two peers disagree with each other: no majority of three.
        let (n1, n2) = (vec![seg(3, 1, 1)], vec![seg(3, 2, 2)]);
        let peers = [Peer { node: "n1", segments: &n1 }, Peer { node: "n2", segments: &n2 }];
        assert!(r.plan(&own, &peers, &p, F, now).is_empty());
        // One peer alone is no majority of two.
        assert!(r.plan(&own, &peers[..1], &p, F, now).is_empty());
        // A majority, but the pictures of segment 1 are no longer known.
        let (n1, n2) = (vec![seg(1, 1, 1)], vec![seg(1, 1, 1)]);
        let peers = [Peer { node: "n1", segments: &n1 }, Peer { node: "n2", segments: &n2 }];
        assert!(r.plan(&[seg(1, 7, 7)], &peers, &p, F, now).is_empty());
        // Same bytes as the majority: nothing to do.
        assert!(r.plan(&[seg(1, 1, 1)], &peers, &p, F, now).is_empty());
    }
}
