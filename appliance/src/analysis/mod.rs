//! Content analysis and the input fingerprint.
//!
//! [`fingerprint`] is the SHA-256 of each picture (the input hash the
//! timeline contract compares between appliances); it runs in line, every
//! encoder needs it. Its first 64 bits, kept for the last
//! [`TRAIL_FRAMES`] frames in a [`FrameTrail`], let the swarm find by how
//! many frames two appliances' numbering of the same pictures differs. The analysis proper ([`stage`]: picture features in
//! [`video`], audio in [`audio`], per-segment results in [`segment`]) runs
//! beside the encoders and reads frames in place through `ndarray` views
//! over the pool buffer (no copy).

pub mod audio;
pub mod report;
pub mod segment;
pub mod stage;
pub mod video;

use ndarray::ArrayView2;
use sha2::{Digest, Sha256};

use crate::capture::pool::FrameRef;

/// Luma plane of a frame as a 2-D view (rows × stride) over the pool buffer.
pub fn luma_view(frame: &FrameRef) -> Option<ArrayView2<'_, u8>> {
    let layout = frame.layout();
    let (y, _, _) = frame.planes();
    ArrayView2::from_shape((layout.height as usize, layout.y_stride()), y).ok()
}

/// Frames in a channel's fingerprint trail: 4 s at 25 fps, 1.7 s at 60.
pub const TRAIL_FRAMES: usize = 100;

/// The 64-bit fingerprints of a channel's last captured frames, by frame
/// number, consecutive (a gap in the numbering starts it afresh). Fixed
/// capacity: the capture path never allocates for it.
#[derive(Debug, Default)]
pub struct FrameTrail {
    first: i64,
    prints: heapless::Deque<u64, TRAIL_FRAMES>,
}

impl FrameTrail {
    /// Adds frame `number`'s fingerprint, forgetting the oldest when full.
    pub fn push(&mut self, number: i64, print: u64) {
        let next = self.first + self.prints.len() as i64;
        if self.prints.is_empty() || number != next {
            self.prints.clear();
            self.first = number;
        }
        if self.prints.is_full() {
            self.prints.pop_front();
            self.first += 1;
        }
        let _ = self.prints.push_back(print);
    }

    /// The first frame number and the fingerprints from it, in order.
    pub fn snapshot(&self) -> (i64, Vec<u64>) {
        (self.first, self.prints.iter().copied().collect())
    }
}

/// A frame's 64-bit fingerprint: the first 8 bytes of its [`fingerprint`].
pub fn short_fingerprint(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

/// SHA-256 of the frame's Y, U and V planes.
pub fn fingerprint(frame: &FrameRef) -> [u8; 32] {
    let (y, u, v) = frame.planes();
    let mut h = Sha256::new();
    h.update(y);
    h.update(u);
    h.update(v);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};

    #[test]
    fn the_fingerprint_follows_the_picture() {
        let pool = FramePool::new(FrameLayout { width: 32, height: 16, audio_channels: 0, max_audio_samples: 0 }, 2);
        let mut w = pool.acquire();
        w.buffers().y.fill(100);
        let a = w.publish(FrameMeta::default());
        let mut w = pool.acquire();
        w.buffers().y.fill(100);
        w.buffers().y[0] = 101;
        let b = w.publish(FrameMeta::default());
        assert_eq!(fingerprint(&a), fingerprint(&a));
        assert_ne!(fingerprint(&a), fingerprint(&b), "a one-pixel change must change the fingerprint");
        assert_ne!(short_fingerprint(&fingerprint(&a)), short_fingerprint(&fingerprint(&b)));
    }

    #[test]
    fn the_trail_keeps_the_last_consecutive_frames() {
        let mut t = FrameTrail::default();
        assert_eq!(t.snapshot(), (0, vec![]));
        for n in 10..10 + TRAIL_FRAMES as i64 + 5 {
            t.push(n, n as u64 * 3);
        }
        let (first, prints) = t.snapshot();
        assert_eq!((first, prints.len()), (15, TRAIL_FRAMES), "the oldest forgotten");
        assert_eq!((prints[0], *prints.last().unwrap_or(&0)), (45, (14 + TRAIL_FRAMES as u64) * 3));
        t.push(500, 7);
        assert_eq!(t.snapshot(), (500, vec![7]), "a gap starts afresh");
        t.push(501, 8);
        t.push(501, 9);
        assert_eq!(t.snapshot(), (501, vec![9]), "a repeated number starts afresh too");
    }
}
