//! Hardware encoding sessions kept across segments.
//!
//! Every segment is coded on its own (fresh rate control, an IDR first),
//! but a hardware session is expensive to open and GPUs limit how many
//! run at once. A [`SessionPool`] keeps the session of a finished segment
//! and starts the next segment of the same shape on it ([`Session::restart`]).
//! A session that failed is closed, never handed on.

use std::sync::{Arc, Mutex, PoisonError};

use crate::{CodedPicture, EncodeError, PictureRef, VideoEncoder, VideoSettings};

/// What a kept session's next segment must share with it: everything
/// but the bitrate, which a restart applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Frame rate numerator.
    pub fps_num: u32,
    /// Frame rate denominator.
    pub fps_den: u32,
    /// IDR distance.
    pub gop_frames: u32,
}

impl From<&VideoSettings> for Shape {
    fn from(s: &VideoSettings) -> Self {
        Self { width: s.width, height: s.height, fps_num: s.fps_num, fps_den: s.fps_den, gop_frames: s.gop_frames }
    }
}

/// Checks what a hardware H.264 encoder cannot take, before a session is
/// opened: sides even and from 16 to `max_side`, a frame rate, and at
/// least `min_bitrate_bps`. Errors name the backend and the values.
pub fn check_settings(
    backend: &str,
    settings: &VideoSettings,
    max_side: u32,
    min_bitrate_bps: u32,
) -> Result<(), EncodeError> {
    let (w, h) = (settings.width, settings.height);
    if w < 16 || h < 16 || w % 2 == 1 || h % 2 == 1 || w > max_side || h > max_side {
        return Err(EncodeError::Settings(format!(
            "{backend} needs even dimensions from 16 to {max_side}, got {w}x{h}"
        )));
    }
    if settings.fps_num == 0 || settings.bitrate_bps < min_bitrate_bps.max(1) {
        return Err(EncodeError::Settings(format!(
            "{backend} needs a frame rate and a bitrate of at least {min_bitrate_bps} bit/s, got {}/{} fps at {} bit/s",
            settings.fps_num, settings.fps_den, settings.bitrate_bps
        )));
    }
    Ok(())
}

/// One hardware encoding session.
pub trait Session: Send + 'static {
    /// Whether a segment with `settings` can be coded on this session
    /// after a restart (same size, rate and GOP; the bitrate may differ).
    fn fits(&self, settings: &VideoSettings) -> bool;
    /// Starts a new segment: fresh rate control at `settings`' bitrate,
    /// the next picture an IDR.
    fn restart(&mut self, settings: &VideoSettings) -> Result<(), EncodeError>;
    /// Codes one picture, as [`VideoEncoder::encode`].
    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError>;
}

/// Idle sessions of one backend.
#[derive(Debug)]
pub struct SessionPool<S> {
    name: &'static str,
    idle: Arc<Mutex<Vec<S>>>,
    max_idle: usize,
}

impl<S: Session> SessionPool<S> {
    /// A pool for backend `name` keeping at most `max_idle` idle sessions.
    pub fn new(name: &'static str, max_idle: usize) -> Self {
        Self { name, idle: Arc::default(), max_idle }
    }

    /// Sessions idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// An encoder for one segment: a kept session that fits, restarted, or
    /// a new one from `new`.
    pub fn open(
        &self,
        settings: &VideoSettings,
        new: impl FnOnce() -> Result<S, EncodeError>,
    ) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        let kept = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.iter().position(|s| s.fits(settings)).map(|i| idle.swap_remove(i))
        };
        let session = match kept {
            Some(mut s) => {
                s.restart(settings)?;
                s
            }
            None => new()?,
        };
        Ok(Box::new(Pooled {
            name: self.name,
            session: Some(session),
            idle: Arc::clone(&self.idle),
            max_idle: self.max_idle,
            healthy: true,
        }))
    }
}

/// One segment's encoder; its session goes back to the pool when dropped.
struct Pooled<S> {
    name: &'static str,
    session: Option<S>,
    idle: Arc<Mutex<Vec<S>>>,
    max_idle: usize,
    healthy: bool,
}

impl<S: Session> VideoEncoder for Pooled<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
        let Some(session) = self.session.as_mut() else {
            return Err(EncodeError::Backend(format!("{} session already closed", self.name)));
        };
        let coded = session.encode(picture, index, out);
        self.healthy &= coded.is_ok();
        coded
    }
}

impl<S> Drop for Pooled<S> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && self.healthy
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                idle.push(session);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::PictureKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A session that records what it was asked to do.
    struct Counted {
        settings: VideoSettings,
        restarts: Arc<AtomicUsize>,
        fail_at: Option<u64>,
    }

    impl Session for Counted {
        fn fits(&self, s: &VideoSettings) -> bool {
            (s.width, s.height) == (self.settings.width, self.settings.height)
        }
        fn restart(&mut self, s: &VideoSettings) -> Result<(), EncodeError> {
            self.settings = *s;
            self.restarts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn encode(&mut self, _: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
            if self.fail_at == Some(index) {
                return Err(EncodeError::Backend("device lost".into()));
            }
            out.push(1);
            Ok(CodedPicture { len: 1, kind: if index == 0 { PictureKind::Idr } else { PictureKind::Other } })
        }
    }

    fn settings(width: u32, bitrate_bps: u32) -> VideoSettings {
        VideoSettings { width, height: 180, fps_num: 25, fps_den: 1, bitrate_bps, gop_frames: 50 }
    }

    fn picture() -> PictureRef<'static> {
        PictureRef { width: 2, height: 2, y: &[0; 4], u: &[0], v: &[0], y_stride: 2, c_stride: 1 }
    }

    #[test]
    fn a_finished_segments_session_starts_the_next_one_and_a_failed_one_is_closed() {
        let pool = SessionPool::new("hw", 4);
        let (made, restarts) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let new = |s: VideoSettings, fail_at| {
            let (made, restarts) = (Arc::clone(&made), Arc::clone(&restarts));
            move || {
                made.fetch_add(1, Ordering::SeqCst);
                Ok(Counted { settings: s, restarts, fail_at })
            }
        };
        let mut out = Vec::new();
        let mut a = pool.open(&settings(320, 1), new(settings(320, 1), None)).unwrap();
        assert_eq!(a.name(), "hw");
        a.encode(&picture(), 0, &mut out).unwrap();
        drop(a);
        assert_eq!(pool.idle(), 1);
        // The next segment, at a new bitrate, reuses the session.
        let b = pool.open(&settings(320, 2), new(settings(320, 2), None)).unwrap();
        assert_eq!((made.load(Ordering::SeqCst), restarts.load(Ordering::SeqCst)), (1, 1));
        // Another size while it is busy: a second session.
        let c = pool.open(&settings(640, 1), new(settings(640, 1), Some(1))).unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 2);
        drop(b);
        let mut c = c;
        c.encode(&picture(), 0, &mut out).unwrap();
        assert!(c.encode(&picture(), 1, &mut out).is_err());
        drop(c);
        assert_eq!(pool.idle(), 1, "the failed session is not kept");
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let pool = SessionPool::new("hw", 1);
        let restarts = Arc::new(AtomicUsize::new(0));
        let open = || {
            let r = Arc::clone(&restarts);
            pool.open(&settings(320, 1), move || Ok(Counted { settings: settings(320, 1), restarts: r, fail_at: None }))
                .unwrap()
        };
        let (a, b) = (open(), open());
        drop(a);
        drop(b);
        assert_eq!(pool.idle(), 1);
    }
}
