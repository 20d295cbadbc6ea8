//! Local re-encode: a segment this node published from the wrong pictures
//! (its capture slipped, its clock was off) is encoded again from the
//! input it kept and replaces the published one, atomically, once its
//! bytes are the majority's — so its output is bit-identical again without
//! waiting for the next segment.
//!
//! The fingerprint stage keeps a copy of every picture of the last few
//! segments ([`RecentInput`], `pipeline.rework_segments`), and pictures the
//! numbering passed over when the swarm moved it
//! ([`crate::capture::pool::FrameMeta::passed_over`]). The swarm asks for a
//! re-encode ([`Rework`], `crate::swarm::repair`) naming the pictures by the
//! majority's fingerprints, the input hash and the bytes the majority
//! published; [`run`] finds the pictures, checks the input hash, encodes
//! each rendition as the encoder stage would, and hands the segment to the
//! packager, which replaces the file only when its hash is the expected one.
//!
//! Most of the time nothing needs replacing: the packager holds each
//! finished video segment back ([`MajorityGate`]) until the neighbours'
//! fingerprints of its frames ([`PeerPrints`]) say whether a majority
//! captured the same pictures, and one made from other pictures is encoded
//! from the majority's before it is ever published.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use lockstep_encoder_api::VideoEncoderFactory;
use sha2::{Digest, Sha256};

use crate::capture::pool::{FrameLayout, FrameRef};
use crate::encode::{self, Input, VideoJob};
use crate::package::sink::{Gate, SegmentSink, Verdict};
use crate::package::{EncodedSegment, TrackId};
use crate::sync::lock;

/// Re-encodes the rework thread may have queued.
pub const QUEUE: usize = 8;

/// How long a re-encode of a segment held back waits for a picture not
/// kept yet, once.
const PICTURE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A re-encode the swarm asks for: segment `index` from the pictures whose
/// fingerprints the majority captured for its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Rework {
    /// Segment index.
    pub index: i64,
    /// 64-bit fingerprints of its pictures, in frame order.
    pub prints: Vec<u64>,
    /// SHA-256 the pictures found must hash to: the majority's input (its
    /// manifests' `input_sha256`), when it has published the segment.
    pub input_sha256: Option<[u8; 32]>,
    /// What becomes of the segment.
    pub then: Then,
}

/// What a re-encode is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Then {
    /// Replaces the published file of each rendition, when its bytes hash
    /// to the majority's (the SHA-256 given).
    Replace(Vec<(String, [u8; 32])>),
    /// Is published in place of the segment of this track the packager
    /// holds back ([`MajorityGate`]).
    Publish(TrackId),
}

/// Neighbours' fingerprints of a channel's recent frames, by node: the
/// swarm keeps it up to date from their state packets
/// (`crate::swarm::feed`), the packager asks it whether a finished
/// segment's pictures are the majority's before publishing it
/// ([`PeerPrints::verdict`]), and the repair of published segments reads
/// the majority's pictures from it.
#[derive(Debug, Default)]
pub struct PeerPrints {
    nodes: BTreeMap<String, BTreeMap<i64, u64>>,
}

impl PeerPrints {
    /// Adds a neighbour's trail (fingerprints of frames `first`,
    /// `first + 1`, …), forgetting its frames more than `keep` older than
    /// its newest.
    pub fn observe(&mut self, node: &str, first: i64, trail: &[u64], keep: i64) {
        let history = self.nodes.entry(node.to_string()).or_default();
        for (n, print) in (first..).zip(trail) {
            history.insert(n, *print);
        }
        if let Some(&last) = history.keys().next_back() {
            *history = history.split_off(&(last - keep));
        }
    }

    /// Keeps only these neighbours (the healthy ones publishing the channel).
    pub fn retain(&mut self, nodes: &[&str]) {
        self.nodes.retain(|n, _| nodes.contains(&n.as_str()));
        for n in nodes {
            self.nodes.entry((*n).to_string()).or_default();
        }
    }

    /// What `node` captured for frame `n`, if known.
    pub fn print(&self, node: &str, n: i64) -> Option<u64> {
        self.nodes.get(node)?.get(&n).copied()
    }

    /// Whether a majority of this node and its neighbours captured the
    /// pictures `mine` for frames `first`, `first + 1`, …: [`Verdict::Same`]
    /// when it did for every frame (or no majority either way can form),
    /// [`Verdict::Other`] with the majority's pictures when it captured
    /// others for any frame and is known for all, [`Verdict::Pending`]
    /// while fingerprints of a frame yet to arrive could still make a
    /// majority for other pictures.
    pub fn verdict(&self, first: i64, mine: &[u64]) -> Verdict {
        let voters = self.nodes.len() + 1;
        let (mut other, mut pending) = (false, false);
        let mut majority = Vec::with_capacity(mine.len());
        for (n, print) in (first..).zip(mine) {
            let known: Vec<u64> = self.nodes.values().filter_map(|h| h.get(&n).copied()).collect();
            let agree = 1 + known.iter().filter(|p| *p == print).count();
            if 2 * agree > voters {
                majority.push(*print);
                continue;
            }
            match most_common(known.iter().copied()) {
                Some((p, count)) if 2 * count > voters => {
                    other = true;
                    majority.push(p);
                }
                _ => {
                    // No majority yet. Wait only while the fingerprints yet
                    // to arrive could still make one for other pictures:
                    // otherwise this node's pictures stand whatever they
                    // say (one neighbour of two, starved and late, holds
                    // nothing back).
                    let missing = self.nodes.len() - known.len();
                    let rival = most_common(known.iter().copied().filter(|p| p != print)).map_or(0, |(_, c)| c);
                    pending |= 2 * (rival + missing) > voters;
                    majority.push(*print);
                }
            }
        }
        match (pending, other) {
            (true, _) => Verdict::Pending,
            (false, true) => Verdict::Other(majority),
            (false, false) => Verdict::Same,
        }
    }
}

/// The most frequent value and its count (the first of equals).
pub fn most_common<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Option<(T, usize)> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, c)) => *c += 1,
            None => counts.push((v, 1)),
        }
    }
    counts.into_iter().reduce(|best, c| if c.1 > best.1 { c } else { best })
}

/// The packager's [`Gate`] in a swarm: the verdict from the neighbours'
/// fingerprints, the re-encode through the channel's rework thread.
#[derive(Debug)]
pub struct MajorityGate {
    /// The channel's status: its neighbours' fingerprints
    /// (`peer_prints`) and its rework thread, while one runs (`rework`).
    pub status: Arc<crate::pipeline::ChannelStatus>,
    /// Longest a segment waits (`swarm.majority_wait_ms`).
    pub hold: std::time::Duration,
}

impl Gate for MajorityGate {
    fn hold(&self) -> std::time::Duration {
        self.hold
    }

    fn verdict(&self, seg: &EncodedSegment) -> Verdict {
        lock(&self.status.peer_prints).verdict(seg.first_unit, &seg.prints)
    }

    fn reencode(&self, seg: &EncodedSegment, prints: Vec<u64>) -> bool {
        let Some(tx) = lock(&self.status.rework).clone() else { return false };
        let asked = Rework { index: seg.index, prints, input_sha256: None, then: Then::Publish(seg.track) };
        tx.try_send(asked).is_ok()
    }
}

/// One kept picture (I420, planes back to back).
#[derive(Debug)]
struct Picture {
    layout: FrameLayout,
    data: Vec<u8>,
}

/// A kept picture and its SHA-256, as a re-encode takes it.
type KeptPicture = (Arc<Picture>, [u8; 32]);

#[derive(Debug)]
struct Kept {
    print: u64,
    hash: [u8; 32],
    picture: Arc<Picture>,
}

/// Copies of the last pictures captured, newest last, at most `capacity`.
/// Buffers are reused once full; a picture a re-encode still holds is
/// left to it and a new buffer taken.
#[derive(Debug, Default)]
pub struct RecentInput {
    kept: VecDeque<Kept>,
    capacity: usize,
}

impl RecentInput {
    /// Keeps up to `capacity` pictures (0: none).
    pub fn new(capacity: usize) -> Self {
        Self { kept: VecDeque::with_capacity(capacity), capacity }
    }

    /// Keeps a copy of the frame's picture under its fingerprint.
    pub fn keep(&mut self, frame: &FrameRef, hash: [u8; 32]) {
        if self.capacity == 0 {
            return;
        }
        let layout = frame.layout();
        let (y, u, v) = frame.planes();
        let oldest = (self.kept.len() >= self.capacity).then(|| self.kept.pop_front()).flatten();
        let mut picture = oldest.map_or_else(|| Arc::new(Picture { layout, data: Vec::new() }), |k| k.picture);
        match Arc::get_mut(&mut picture) {
            Some(p) => {
                p.layout = layout;
                p.data.clear();
            }
            None => picture = Arc::new(Picture { layout, data: Vec::new() }),
        }
        if let Some(p) = Arc::get_mut(&mut picture) {
            p.data.reserve(y.len() + u.len() + v.len());
            p.data.extend_from_slice(y);
            p.data.extend_from_slice(u);
            p.data.extend_from_slice(v);
        }
        let print = crate::analysis::short_fingerprint(&hash);
        self.kept.push_back(Kept { print, hash, picture });
    }

    /// The newest kept picture with this fingerprint.
    fn find(&self, print: u64) -> Option<KeptPicture> {
        self.kept.iter().rev().find(|k| k.print == print).map(|k| (Arc::clone(&k.picture), k.hash))
    }

    /// Pictures kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Nothing kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// Why a re-encode was not made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReworkError {
    /// A picture it needs is not (or not yet) kept.
    #[error("segment {index}: picture {frame} of {frames} not kept")]
    Missing {
        /// Segment index.
        index: i64,
        /// Position in the segment of the first missing picture.
        frame: usize,
        /// Pictures the segment has.
        frames: usize,
    },
    /// The kept pictures do not hash to the majority's input.
    #[error("segment {index}: the kept pictures are not the majority's input")]
    OtherInput {
        /// Segment index.
        index: i64,
    },
}

/// The kept pictures for a re-encode, checked against its input hash.
fn gather(recent: &Mutex<RecentInput>, rework: &Rework) -> Result<Vec<KeptPicture>, ReworkError> {
    let recent = lock(recent);
    let mut pictures = Vec::with_capacity(rework.prints.len());
    for (frame, print) in rework.prints.iter().enumerate() {
        let found = recent.find(*print).ok_or(ReworkError::Missing {
            index: rework.index,
            frame,
            frames: rework.prints.len(),
        })?;
        pictures.push(found);
    }
    drop(recent);
    let mut input = Sha256::new();
    for (_, hash) in &pictures {
        input.update(hash);
    }
    if rework.input_sha256.is_some_and(|want| <[u8; 32]>::from(input.finalize()) != want) {
        return Err(ReworkError::OtherInput { index: rework.index });
    }
    Ok(pictures)
}

/// One rendition the rework thread can encode.
pub struct Rendition {
    /// Its job, as its encoder thread has it.
    pub job: VideoJob,
    /// Its encoder backend.
    pub factory: Arc<dyn VideoEncoderFactory>,
}

impl std::fmt::Debug for Rendition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rendition({}, {})", self.job.name, self.factory.name())
    }
}

/// The rework thread: re-encodes what the swarm asks for until every
/// sender of `requests` is gone. Each segment goes to the packager with
/// the hash it must have to replace the published file, or to be
/// published in place of the one it holds back.
pub fn run(
    requests: Receiver<Rework>,
    recent: &Mutex<RecentInput>,
    renditions: &[Rendition],
    sink: &SegmentSink,
    refused: &AtomicU64,
) {
    for rework in requests {
        let mut found = gather(recent, &rework);
        if matches!((&found, &rework.then), (Err(ReworkError::Missing { .. }), Then::Publish(_))) {
            // A segment held back: the picture a frame late may be a
            // frame away.
            std::thread::sleep(PICTURE_WAIT);
            found = gather(recent, &rework);
        }
        let pictures = match (found, &rework.then) {
            (Ok(p), _) => p,
            (Err(e), Then::Publish(track)) => {
                tracing::info!("segment held back not re-encoded: {e}");
                if !sink.not_reencoded(*track, rework.index) {
                    return;
                }
                continue;
            }
            (Err(e @ ReworkError::Missing { .. }), Then::Replace(_)) => {
                tracing::debug!("re-encode waits: {e}");
                continue;
            }
            (Err(e), Then::Replace(_)) => {
                tracing::warn!("re-encode refused: {e}");
                refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let inputs: Vec<Input<'_>> = pictures
            .iter()
            .map(|(p, hash)| {
                let (y, c) = p.data.split_at(p.layout.y_len());
                let (u, v) = c.split_at(p.layout.c_len());
                Input { layout: p.layout, y, u, v, hash: *hash }
            })
            .collect();
        let encode = |r: &Rendition| {
            encode::encode_segment(&r.job, r.factory.as_ref(), rework.index, &inputs)
                .map_err(|e| tracing::warn!(rendition = %r.job.name, segment = rework.index, "re-encode failed: {e}"))
                .ok()
        };
        match &rework.then {
            Then::Replace(expect) => {
                for (track, expected) in expect {
                    let Some(r) = renditions.iter().find(|r| &r.job.name == track) else { continue };
                    if let Some(seg) = encode(r)
                        && !sink.replace(seg, *expected)
                    {
                        return;
                    }
                }
            }
            Then::Publish(track) => {
                let made = renditions.iter().find(|r| TrackId::Video(r.job.position) == *track).and_then(encode);
                let sent = match made {
                    Some(seg) => sink.reencoded(seg),
                    None => sink.not_reencoded(*track, rework.index),
                };
                if !sent {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::capture::pool::{FrameMeta, FramePool};

    fn frame(pool: &Arc<FramePool>, shade: u8, number: i64) -> (FrameRef, [u8; 32]) {
        let mut w = pool.acquire();
        let b = w.buffers();
        b.y.fill(shade);
        b.u.fill(shade);
        b.v.fill(shade);
        let f = w.publish(FrameMeta { number, ..FrameMeta::default() });
        let hash = crate::analysis::fingerprint(&f);
        (f, hash)
    }

    fn pool() -> Arc<FramePool> {
        let layout = FrameLayout { width: 16, height: 16, audio_channels: 0, max_audio_samples: 0 };
        FramePool::new(layout, 4)
    }

    #[test]
    fn the_newest_pictures_are_kept_by_fingerprint_and_the_oldest_forgotten() {
        let pool = pool();
        let mut recent = RecentInput::new(3);
        let mut hashes = Vec::new();
        for shade in 0..5u8 {
            let (f, hash) = frame(&pool, shade, i64::from(shade));
            recent.keep(&f, hash);
            hashes.push(hash);
        }
        assert_eq!(recent.len(), 3);
        let print = |i: usize| crate::analysis::short_fingerprint(&hashes[i]);
        assert!(recent.find(print(1)).is_none(), "the oldest forgotten");
        let (picture, hash) = recent.find(print(4)).unwrap();
        assert_eq!((hash, picture.data.len()), (hashes[4], 16 * 16 * 3 / 2));
        assert!(picture.data.iter().all(|&b| b == 4), "a copy of the picture");
        // A picture a re-encode holds is not overwritten by the next keeps.
        let (f, hash) = frame(&pool, 9, 9);
        for _ in 0..3 {
            recent.keep(&f, hash);
        }
        assert!(picture.data.iter().all(|&b| b == 4));
    }

    #[test]
    fn a_rework_needs_every_picture_and_the_majoritys_input() {
        let pool = pool();
        let recent = Mutex::new(RecentInput::new(8));
        let mut hashes = Vec::new();
        for shade in 0..4u8 {
            let (f, hash) = frame(&pool, shade, i64::from(shade));
            lock(&recent).keep(&f, hash);
            hashes.push(hash);
        }
        let input = |h: &[[u8; 32]]| -> [u8; 32] {
            let mut s = Sha256::new();
            h.iter().for_each(|x| s.update(x));
            s.finalize().into()
        };
        let prints = |h: &[[u8; 32]]| h.iter().map(crate::analysis::short_fingerprint).collect::<Vec<_>>();
        // In another order than captured: the majority's order counts.
        let order = [hashes[2], hashes[1], hashes[3]];
        let rework = Rework {
            index: 7,
            prints: prints(&order),
            input_sha256: Some(input(&order)),
            then: Then::Replace(Vec::new()),
        };
        let got = gather(&recent, &rework).unwrap();
        assert_eq!(got.iter().map(|(_, h)| *h).collect::<Vec<_>>(), order);
        let missing = Rework { prints: vec![1, prints(&order)[0]], ..rework.clone() };
        assert_eq!(gather(&recent, &missing).unwrap_err(), ReworkError::Missing { index: 7, frame: 0, frames: 2 });
        let other = Rework { input_sha256: Some([0; 32]), ..rework.clone() };
        assert_eq!(gather(&recent, &other).unwrap_err(), ReworkError::OtherInput { index: 7 });
        // Before publication the fingerprints alone name the pictures.
        let unchecked = Rework { input_sha256: None, ..rework };
        assert_eq!(gather(&recent, &unchecked).unwrap().len(), 3);
    }

    /// Peers n1..=n4 with the pictures 100 + n for frame n, from frame 0.
    fn peers(nodes: &[&str], upto: i64) -> PeerPrints {
        let mut p = PeerPrints::default();
        let trail: Vec<u64> = (0..=upto).map(|n| 100 + n as u64).collect();
        for node in nodes {
            p.observe(node, 0, &trail, 100);
        }
        p
    }

    #[test]
    fn a_segment_is_published_when_the_majority_has_its_pictures() {
        let p = peers(&["n1", "n2"], 20);
        assert_eq!(p.verdict(4, &[104, 105, 106]), Verdict::Same);
        // Alone, or with one neighbour that disagrees: no majority against
        // this node can form.
        assert_eq!(PeerPrints::default().verdict(4, &[1, 2]), Verdict::Same);
        let one = peers(&["n1"], 20);
        assert_eq!(one.verdict(4, &[1, 2]), Verdict::Same, "one against one");
        assert_eq!(one.verdict(21, &[121, 122]), Verdict::Same, "one of two yet to send: it cannot outvote");
    }

    #[test]
    fn a_segment_made_from_other_pictures_gets_the_majoritys_and_waits_for_them() {
        let p = peers(&["n1", "n2"], 20);
        // Slipped a frame: its frame n holds picture n - 1.
        assert_eq!(p.verdict(4, &[103, 104, 105]), Verdict::Other(vec![104, 105, 106]));
        // Frames the neighbours have not sent yet: no verdict.
        assert_eq!(p.verdict(19, &[118, 119, 120]), Verdict::Pending);
        // One neighbour has sent them and agrees with this node: a
        // majority of three already.
        let mut q = peers(&["n1", "n2"], 18);
        q.observe("n1", 19, &[119, 120, 121], 100);
        assert_eq!(q.verdict(19, &[119, 120]), Verdict::Same);
        // A neighbour that sends nothing holds the verdict back (the
        // packager's hold is the limit), until it is no longer a member.
        let mut r = peers(&["n1", "n2"], 20);
        r.retain(&["n1", "n2", "n3"]);
        assert_eq!(r.verdict(4, &[103, 104]), Verdict::Pending, "2 of 4 is no majority");
        r.retain(&["n1", "n2"]);
        assert_eq!(r.verdict(4, &[103, 104]), Verdict::Other(vec![104, 105]));
        // The oldest frames are forgotten.
        let mut s = peers(&["n1", "n2"], 20);
        s.observe("n1", 200, &[7], 10);
        assert_eq!(s.print("n1", 20), None);
        assert_eq!(s.print("n2", 20), Some(120));
    }
}
