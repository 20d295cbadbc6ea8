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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;
use lockstep_encoder_api::VideoEncoderFactory;
use sha2::{Digest, Sha256};

use crate::capture::pool::{FrameLayout, FrameRef};
use crate::encode::{self, Input, VideoJob};
use crate::package::sink::SegmentSink;
use crate::sync::lock;

/// Re-encodes the rework thread may have queued.
pub const QUEUE: usize = 8;

/// A re-encode the swarm asks for: segment `index` from the pictures whose
/// fingerprints the majority captured for its frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Rework {
    /// Segment index.
    pub index: i64,
    /// 64-bit fingerprints of its pictures, in frame order.
    pub prints: Vec<u64>,
    /// SHA-256 of the majority's input for it (its manifests' `input_sha256`).
    pub input_sha256: [u8; 32],
    /// Per rendition to replace: the SHA-256 of the majority's file.
    pub expect: Vec<(String, [u8; 32])>,
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
    if <[u8; 32]>::from(input.finalize()) != rework.input_sha256 {
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
/// the hash it must have to replace the published file.
pub fn run(
    requests: Receiver<Rework>,
    recent: &Mutex<RecentInput>,
    renditions: &[Rendition],
    sink: &SegmentSink,
    refused: &AtomicU64,
) {
    for rework in requests {
        let pictures = match gather(recent, &rework) {
            Ok(p) => p,
            Err(e @ ReworkError::Missing { .. }) => {
                tracing::debug!("re-encode waits: {e}");
                continue;
            }
            Err(e) => {
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
        for (track, expected) in &rework.expect {
            let Some(r) = renditions.iter().find(|r| &r.job.name == track) else { continue };
            match encode::encode_segment(&r.job, r.factory.as_ref(), rework.index, &inputs) {
                Ok(seg) => {
                    if !sink.replace(seg, *expected) {
                        return;
                    }
                }
                Err(e) => tracing::warn!(rendition = %track, segment = rework.index, "re-encode failed: {e}"),
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
        let rework = Rework { index: 7, prints: prints(&order), input_sha256: input(&order), expect: Vec::new() };
        let got = gather(&recent, &rework).unwrap();
        assert_eq!(got.iter().map(|(_, h)| *h).collect::<Vec<_>>(), order);
        let missing = Rework { prints: vec![1, prints(&order)[0]], ..rework.clone() };
        assert_eq!(gather(&recent, &missing).unwrap_err(), ReworkError::Missing { index: 7, frame: 0, frames: 2 });
        let other = Rework { input_sha256: [0; 32], ..rework };
        assert_eq!(gather(&recent, &other).unwrap_err(), ReworkError::OtherInput { index: 7 });
    }
}
