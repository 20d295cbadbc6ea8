//! The packager thread of a running channel: encoders and the analysis
//! stage hand it segments and reports through a [`SegmentSink`]; it writes
//! them in order, adopts a predecessor's playlists on a handover and gives
//! its own to a successor, and tells the channel what it published
//! through a [`Publisher`].
//!
//! In a swarm a [`Gate`] may hold each finished video segment back until
//! the neighbours' fingerprints of its frames have arrived: when a
//! majority captured other pictures for them (this node's capture slipped,
//! its clock is off), the segment is not published as it is but encoded
//! again from the majority's pictures first (docs/swarm.md, "Agreement
//! before publication").

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use crate::analysis::segment::SegmentAnalysis;
use crate::handover::Handover;
use crate::package::{EncodedSegment, ManifestEntry, Packager, PackagerStats, TrackId};

/// Longest a successor waits for its predecessor's packager.
const ADOPT_WAIT: Duration = Duration::from_secs(20);

/// Messages the packager may have queued.
const QUEUE: usize = 64;

/// How often segments held back are looked at again.
const RECHECK: Duration = Duration::from_millis(20);

/// What the packager thread receives.
enum ToPackager {
    Segment(EncodedSegment),
    Analysis(i64, SegmentAnalysis),
    Replace(EncodedSegment, [u8; 32]),
    Reencoded(EncodedSegment),
    NotReencoded(TrackId, i64),
}

/// What the swarm says of a finished segment's pictures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A majority captured the same pictures for its frames (or this node
    /// is alone): publish it.
    Same,
    /// Not every neighbour's fingerprints of its frames have arrived, and
    /// no majority is known yet.
    Pending,
    /// A majority captured these other pictures (fingerprints in frame
    /// order).
    Other(Vec<u64>),
}

/// Decides whether a finished video segment may be published as it is.
pub trait Gate: Send {
    /// Longest a segment waits for the swarm's verdict.
    fn hold(&self) -> Duration;
    /// The verdict on `seg` now.
    fn verdict(&self, seg: &EncodedSegment) -> Verdict;
    /// Asks for `seg` to be encoded from the pictures `prints` names; the
    /// segment comes back through [`SegmentSink::reencoded`]. False when
    /// it cannot be asked.
    fn reencode(&self, seg: &EncodedSegment, prints: Vec<u64>) -> bool;
}

/// How a segment held back was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The majority had the same pictures.
    Agreed,
    /// Encoded from the majority's pictures instead of its own.
    Corrected,
    /// As captured: no verdict within the hold, or the re-encode did not
    /// come before the next segment.
    AsCaptured,
}

/// A video segment held back for the swarm's verdict.
struct Waiting {
    seg: EncodedSegment,
    since: Instant,
    /// A re-encode was asked for.
    asked: bool,
}

/// The encoders' (and the analysis stage's) side of the packager queue.
#[derive(Clone)]
pub struct SegmentSink(Sender<ToPackager>);

impl std::fmt::Debug for SegmentSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentSink({} queued)", self.0.len())
    }
}

impl SegmentSink {
    /// Hands a segment to the packager; false once it has stopped.
    pub fn send(&self, seg: EncodedSegment) -> bool {
        self.0.send(ToPackager::Segment(seg)).is_ok()
    }

    /// Hands the packager a re-encode of a published segment, to replace
    /// it if its bytes hash to `expect` (`crate::pipeline::rework`); false
    /// once it has stopped.
    pub fn replace(&self, seg: EncodedSegment, expect: [u8; 32]) -> bool {
        self.0.send(ToPackager::Replace(seg, expect)).is_ok()
    }

    /// Hands the packager a segment it held back, encoded from the
    /// majority's pictures (`crate::pipeline::rework`); false once it has
    /// stopped.
    pub fn reencoded(&self, seg: EncodedSegment) -> bool {
        self.0.send(ToPackager::Reencoded(seg)).is_ok()
    }

    /// Tells the packager that a segment it held back cannot be encoded
    /// from the majority's pictures (they were not kept): it is published
    /// as captured now. False once the packager has stopped.
    pub fn not_reencoded(&self, track: TrackId, index: i64) -> bool {
        self.0.send(ToPackager::NotReencoded(track, index)).is_ok()
    }

    /// Hands a segment's content analysis to the packager (its manifest
    /// entries carry it); false once it has stopped.
    pub fn analysis(&self, index: i64, analysis: SegmentAnalysis) -> bool {
        self.0.send(ToPackager::Analysis(index, analysis)).is_ok()
    }
}

/// The packager's queue: the sink for the stages, the end for [`run`].
pub fn queue() -> (SegmentSink, Inbox) {
    let (tx, rx) = bounded(QUEUE);
    (SegmentSink(tx), Inbox(rx))
}

/// The packager's end of its queue.
pub struct Inbox(Receiver<ToPackager>);

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inbox({} queued)", self.0.len())
    }
}

/// What the packager thread tells the channel.
pub trait Publisher {
    /// A segment could not be written (the error is logged; files already
    /// written are intact).
    fn write_failed(&mut self);
    /// A segment's analysis arrived: its figures are final.
    fn analysed(&mut self, packager: &mut Packager);
    /// A segment of `track` was published.
    fn published(&mut self, track: String, entry: &ManifestEntry);
    /// A re-encode of segment `index` replaced the published file
    /// (`replaced`), or was refused because its bytes were not the ones
    /// expected or the segment had left the playlist.
    fn reworked(&mut self, track: TrackId, index: i64, replaced: bool);
    /// A segment held back for the swarm's verdict was published, `waited`
    /// after it was finished.
    fn held(&mut self, track: TrackId, index: i64, how: Held, waited: Duration);
}

/// The packager and what it tells the channel, with the segments held
/// back.
struct Loop<'a> {
    packager: Packager,
    to: &'a mut dyn Publisher,
    gate: Option<&'a dyn Gate>,
    waiting: Vec<Waiting>,
}

impl Loop<'_> {
    fn add(&mut self, seg: EncodedSegment) {
        if let Err(e) = self.packager.add(seg) {
            tracing::error!("{e}; continuing, files already written are intact");
            self.to.write_failed();
        }
    }

    fn release(&mut self, at: usize, seg: Option<EncodedSegment>, how: Held) {
        let w = self.waiting.remove(at);
        let (track, index) = (w.seg.track, w.seg.index);
        self.add(seg.unwrap_or(w.seg));
        self.to.held(track, index, how, w.since.elapsed());
    }

    /// A finished segment: held back for the gate's verdict when there is
    /// one (video), published at once otherwise. A segment of the same
    /// track still held goes first, as captured.
    fn segment(&mut self, seg: EncodedSegment) {
        if let Some(at) = self.waiting.iter().position(|w| w.seg.track == seg.track) {
            tracing::warn!(
                segment = self.waiting[at].seg.index,
                "no verdict or re-encode before the next segment: published as captured"
            );
            self.release(at, None, Held::AsCaptured);
        }
        if self.gate.is_some() && !seg.prints.is_empty() {
            self.waiting.push(Waiting { seg, since: Instant::now(), asked: false });
            self.recheck();
        } else {
            self.add(seg);
        }
    }

    /// A held segment encoded from the majority's pictures: published in
    /// its place. One that comes after its segment was published is left.
    fn reencoded(&mut self, seg: EncodedSegment) {
        match self.waiting.iter().position(|w| w.seg.track == seg.track && w.seg.index == seg.index && w.asked) {
            Some(at) => self.release(at, Some(seg), Held::Corrected),
            None => tracing::debug!(segment = seg.index, "re-encode came after its segment was published; left"),
        }
    }

    /// A held segment whose re-encode cannot be made: published as captured.
    fn not_reencoded(&mut self, track: TrackId, index: i64) {
        if let Some(at) = self.waiting.iter().position(|w| w.seg.track == track && w.seg.index == index && w.asked) {
            tracing::warn!(segment = index, "the majority's pictures were not kept: published as captured");
            self.release(at, None, Held::AsCaptured);
        }
    }

    /// Publishes each held segment the gate has a verdict on, or whose
    /// hold is over; asks for the re-encodes the majority calls for.
    fn recheck(&mut self) {
        let Some(gate) = self.gate else { return };
        let mut at = 0;
        while at < self.waiting.len() {
            let w = &mut self.waiting[at];
            if w.asked {
                at += 1;
                continue;
            }
            match gate.verdict(&w.seg) {
                Verdict::Same => self.release(at, None, Held::Agreed),
                Verdict::Other(prints) => {
                    if gate.reencode(&w.seg, prints) {
                        w.asked = true;
                        at += 1;
                    } else {
                        self.release(at, None, Held::AsCaptured);
                    }
                }
                Verdict::Pending if w.since.elapsed() >= gate.hold() => {
                    tracing::debug!(
                        segment = w.seg.index,
                        "no majority verdict within the hold: published as captured"
                    );
                    self.release(at, None, Held::AsCaptured);
                }
                Verdict::Pending => at += 1,
            }
        }
    }
}

/// The packager loop: runs until every sink is dropped, then hands the
/// packager to `outgoing`'s successor if the run ended by handover, or
/// finishes its playlists. With a `gate`, video segments wait for its
/// verdict first. Returns its figures.
pub fn run(
    packager: Packager,
    inbox: Inbox,
    mut predecessor: Option<Arc<Handover>>,
    outgoing: Option<Arc<Handover>>,
    to: &mut dyn Publisher,
    gate: Option<&dyn Gate>,
) -> PackagerStats {
    let mut l = Loop { packager, to, gate, waiting: Vec::new() };
    loop {
        let msg = if l.waiting.is_empty() {
            inbox.0.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            inbox.0.recv_timeout(RECHECK)
        };
        let msg = match msg {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        // Taking over: the predecessor's playlists and window continue,
        // so nothing is written before they arrive.
        if let Some(before) = predecessor.take() {
            match before.take(ADOPT_WAIT) {
                Some(old) => l.packager.adopt(old),
                None => tracing::warn!("the previous run handed over no playlists; they start afresh"),
            }
        }
        match msg {
            Some(ToPackager::Segment(seg)) => l.segment(seg),
            Some(ToPackager::Reencoded(seg)) => l.reencoded(seg),
            Some(ToPackager::NotReencoded(track, index)) => l.not_reencoded(track, index),
            Some(ToPackager::Replace(seg, expect)) => {
                let (track, index) = (seg.track, seg.index);
                match l.packager.replace(seg, expect) {
                    Ok(replaced) => l.to.reworked(track, index, replaced),
                    Err(e) => {
                        tracing::error!("{e}; the segment published before stays");
                        l.to.write_failed();
                    }
                }
            }
            Some(ToPackager::Analysis(index, analysis)) => {
                l.packager.add_analysis(index, &analysis);
                l.to.analysed(&mut l.packager);
            }
            None => {}
        }
        l.recheck();
        for (track, entry) in l.packager.take_published() {
            l.to.published(track, &entry);
        }
    }
    // Nothing more comes: what is still held is published as it is.
    while !l.waiting.is_empty() {
        l.release(0, None, Held::AsCaptured);
    }
    for (track, entry) in l.packager.take_published() {
        l.to.published(track, &entry);
    }
    let Loop { mut packager, .. } = l;
    let stats = packager.stats();
    match &outgoing {
        Some(h) if h.ended() => h.give(packager),
        _ => {
            if let Err(e) = packager.finish() {
                tracing::error!("{e}");
            }
            if let Some(h) = &outgoing {
                h.abandon();
            }
        }
    }
    stats
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::package::tests::{packager, segment};

    /// A gate that answers as scripted per segment, and records what it
    /// was asked to re-encode.
    struct Scripted {
        verdicts: Mutex<Vec<(i64, Verdict)>>,
        asked: Mutex<Vec<(i64, Vec<u64>)>>,
        hold: Duration,
    }

    impl Gate for Scripted {
        fn hold(&self) -> Duration {
            self.hold
        }
        fn verdict(&self, seg: &EncodedSegment) -> Verdict {
            let v = self.verdicts.lock().unwrap();
            v.iter().find(|(i, _)| *i == seg.index).map_or(Verdict::Pending, |(_, v)| v.clone())
        }
        fn reencode(&self, seg: &EncodedSegment, prints: Vec<u64>) -> bool {
            self.asked.lock().unwrap().push((seg.index, prints));
            true
        }
    }

    #[derive(Default)]
    struct Seen {
        published: Vec<(i64, String)>,
        held: Vec<(i64, Held)>,
    }

    impl Publisher for Seen {
        fn write_failed(&mut self) {}
        fn analysed(&mut self, _: &mut Packager) {}
        fn published(&mut self, _: String, entry: &ManifestEntry) {
            self.published.push((entry.index, entry.sha256.clone()));
        }
        fn reworked(&mut self, _: TrackId, _: i64, _: bool) {}
        fn held(&mut self, _: TrackId, index: i64, how: Held, _: Duration) {
            self.held.push((index, how));
        }
    }

    fn with_prints(index: i64, fill: u8) -> EncodedSegment {
        EncodedSegment { prints: vec![u64::from(fill)], ..segment(index, fill) }
    }

    #[test]
    fn held_segments_are_published_as_the_majority_says_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Scripted {
            // 1: the same pictures; 2: others (re-encoded as fill 9);
            // 3: no verdict (published as captured after the hold).
            verdicts: Mutex::new(vec![(1, Verdict::Same), (2, Verdict::Other(vec![9]))]),
            asked: Mutex::new(Vec::new()),
            hold: Duration::from_millis(100),
        };
        let (sink, inbox) = queue();
        sink.send(with_prints(1, 1));
        sink.send(with_prints(2, 2));
        // The re-encode of 2 from the majority's pictures.
        sink.reencoded(segment(2, 9));
        sink.send(with_prints(3, 3));
        let feeder = std::thread::spawn(move || {
            // Longer than the hold: 3 goes out without a verdict.
            std::thread::sleep(Duration::from_millis(400));
            drop(sink);
        });
        let mut seen = Seen::default();
        run(packager(dir.path()), inbox, None, None, &mut seen, Some(&gate));
        feeder.join().unwrap();
        let indices: Vec<i64> = seen.published.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, [1, 2, 3], "each published once, in order");
        assert_eq!(seen.held, [(1, Held::Agreed), (2, Held::Corrected), (3, Held::AsCaptured)]);
        assert_eq!(*gate.asked.lock().unwrap(), [(2, vec![9])]);
        let file = std::fs::read(dir.path().join("audio/seg-2.m4s")).unwrap();
        assert!(file.ends_with(&[9; 4]), "segment 2 is the re-encode's bytes");
    }

    #[test]
    fn a_segment_whose_reencode_cannot_come_goes_out_as_captured_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let other = Verdict::Other(vec![7]);
        let gate = Scripted {
            verdicts: Mutex::new(vec![(1, other.clone()), (2, other), (3, Verdict::Same)]),
            asked: Mutex::new(Vec::new()),
            hold: Duration::from_secs(60),
        };
        let (sink, inbox) = queue();
        // The rework thread cannot make 1 (its pictures were not kept);
        // the re-encode of 2 never comes before 3 arrives.
        sink.send(with_prints(1, 1));
        sink.not_reencoded(TrackId::Audio, 1);
        sink.send(with_prints(2, 2));
        sink.send(with_prints(3, 3));
        drop(sink);
        let mut seen = Seen::default();
        run(packager(dir.path()), inbox, None, None, &mut seen, Some(&gate));
        assert_eq!(seen.held, [(1, Held::AsCaptured), (2, Held::AsCaptured), (3, Held::Agreed)]);
        assert_eq!(seen.published.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2, 3]);
        let file = std::fs::read(dir.path().join("audio/seg-1.m4s")).unwrap();
        assert!(file.ends_with(&[1; 4]), "segment 1 as captured");
    }
}
