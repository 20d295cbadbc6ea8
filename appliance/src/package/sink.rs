//! The packager thread of a running channel: encoders and the analysis
//! stage hand it segments and reports through a [`SegmentSink`]; it writes
//! them in order, adopts a predecessor's playlists on a handover and gives
//! its own to a successor, and tells the channel what it published
//! through a [`Publisher`].

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::analysis::segment::SegmentAnalysis;
use crate::handover::Handover;
use crate::package::{EncodedSegment, ManifestEntry, Packager, PackagerStats, TrackId};

/// Longest a successor waits for its predecessor's packager.
const ADOPT_WAIT: Duration = Duration::from_secs(20);

/// Messages the packager may have queued.
const QUEUE: usize = 64;

/// What the packager thread receives.
enum ToPackager {
    Segment(EncodedSegment),
    Analysis(i64, SegmentAnalysis),
    Replace(EncodedSegment, [u8; 32]),
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
}

/// The packager loop: runs until every sink is dropped, then hands the
/// packager to `outgoing`'s successor if the run ended by handover, or
/// finishes its playlists. Returns its figures.
pub fn run(
    mut packager: Packager,
    inbox: Inbox,
    mut predecessor: Option<Arc<Handover>>,
    outgoing: Option<Arc<Handover>>,
    to: &mut dyn Publisher,
) -> PackagerStats {
    for msg in inbox.0 {
        // Taking over: the predecessor's playlists and window continue,
        // so nothing is written before they arrive.
        if let Some(before) = predecessor.take() {
            match before.take(ADOPT_WAIT) {
                Some(old) => packager.adopt(old),
                None => tracing::warn!("the previous run handed over no playlists; they start afresh"),
            }
        }
        match msg {
            ToPackager::Segment(seg) => {
                if let Err(e) = packager.add(seg) {
                    tracing::error!("{e}; continuing, files already written are intact");
                    to.write_failed();
                }
            }
            ToPackager::Replace(seg, expect) => {
                let (track, index) = (seg.track, seg.index);
                match packager.replace(seg, expect) {
                    Ok(replaced) => to.reworked(track, index, replaced),
                    Err(e) => {
                        tracing::error!("{e}; the segment published before stays");
                        to.write_failed();
                    }
                }
            }
            ToPackager::Analysis(index, analysis) => {
                packager.add_analysis(index, &analysis);
                to.analysed(&mut packager);
            }
        }
        for (track, entry) in packager.take_published() {
            to.published(track, &entry);
        }
    }
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
