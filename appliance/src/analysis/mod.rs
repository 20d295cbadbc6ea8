//! Content analysis and the input fingerprint.
//!
//! [`fingerprint`] is the SHA-256 of each picture (the input hash the
//! timeline contract compares between appliances); it runs in line, every
//! encoder needs it. The analysis proper ([`stage`]: picture features in
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
    }
}
