//! Frame numbers for a device that paces itself (a capture card): each
//! buffer's capture time, mapped onto the media clock, places it on the
//! timeline; gaps are filled and faults stood in for so every segment of
//! the timeline still completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::capture::pool::{FrameMeta, FramePool, FrameRef};
use crate::capture::run::CaptureStatus;
use crate::capture::{Delivery, FramePath};
use crate::clock::{Clock, MediaClock};
use crate::sync::lock;
use crate::timeline::Rate;

/// Frame numbers for a device that paces itself: each buffer's capture
/// time, mapped onto the media clock, says which frame of the timeline it
/// is. Small jitter keeps the running count; a jump of two frames or more
/// resynchronises (a gap is filled by repeating the last picture, a frame
/// ahead of the timeline is dropped). While the input has a fault, black
/// frames stand in so every segment of the timeline still completes.
///
/// A realignment the swarm approved ([`DevicePacing::realign`]) moves the
/// numbering against the capture times for good: forward, the numbers
/// passed over carry the last picture again; back, as many pictures are
/// dropped.
#[derive(Default)]
pub struct DevicePacing {
    last: Option<FrameRef>,
    fault: bool,
    /// Frames added to the timeline slot a capture time maps to.
    shift: i64,
    /// Deliveries still to drop for a realignment backwards.
    skip: u64,
}

impl std::fmt::Debug for DevicePacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.last.as_ref().map(|frame| frame.meta().number);
        f.debug_struct("DevicePacing")
            .field("last", &last)
            .field("fault", &self.fault)
            .field("shift", &self.shift)
            .field("skip", &self.skip)
            .finish()
    }
}

impl DevicePacing {
    /// Turns one delivery into the frames to publish, advancing `n` (the
    /// next frame number), and hands each to `emit` as soon as it is made:
    /// a gap can be longer than the pool has free slots, and frames held
    /// back here would wait for slots only they occupy. When `emit` refuses
    /// a frame (past the run's end, or downstream gone) it returns `false`.
    #[allow(clippy::too_many_arguments)]
    pub fn place(
        &mut self,
        delivery: Delivery,
        n: &mut i64,
        pool: &Arc<FramePool>,
        clock: &Clock,
        rate: Rate,
        status: &CaptureStatus,
        emit: &mut dyn FnMut(FrameRef) -> bool,
    ) -> bool {
        let meta = |number| FrameMeta { number, audio_len: 0, captured_tai_ns: clock.now_tai_ns(), passed_over: false };
        match delivery {
            Delivery::Fault(why) => {
                if !self.fault {
                    self.fault = true;
                    status.input_faults.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("input fault: {why}; black frames stand in until the signal is back");
                }
                *lock(&status.input_fault) = Some(why);
                // Every frame due by now, so the timeline keeps moving.
                let now = rate.frame_at(clock.now_tai_ns()) + self.shift;
                while *n <= now {
                    let mut w = pool.acquire();
                    let b = w.buffers();
                    b.y.fill(16);
                    b.u.fill(128);
                    b.v.fill(128);
                    status.frames_substituted.fetch_add(1, Ordering::Relaxed);
                    let number = *n;
                    *n += 1;
                    if !emit(w.publish(meta(number))) {
                        return false;
                    }
                }
                self.last = None;
                true
            }
            Delivery::Frame { writer, captured_mono_ns, path } => {
                if std::mem::take(&mut self.fault) {
                    tracing::info!("input fault cleared: frames flow again");
                }
                *lock(&status.input_fault) = None;
                if self.skip > 0 {
                    // A realignment backwards: this picture's number went
                    // to the one before it. It is kept for a re-encode of
                    // the segments made before (`crate::pipeline::rework`).
                    self.skip -= 1;
                    status.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    return emit(writer.publish(FrameMeta { number: *n, passed_over: true, ..FrameMeta::default() }));
                }
                let age = (crate::capture::v4l2::monotonic_ns() - captured_mono_ns).max(0);
                let tai = clock.now_tai_ns() - age;
                // The nearest frame slot of the timeline.
                let nearest = rate.frame_at(tai) + self.shift;
                let ahead = nearest - *n;
                if ahead <= -2 {
                    // The device runs ahead of the media clock: this frame has no slot.
                    status.frames_dropped.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // More than a second missing (a stall, a clock step):
                // rejoin at the present rather than repeat that much.
                if ahead > rate.fps().ceil() as i64 {
                    status.frames_dropped.fetch_add(u64::try_from(ahead).unwrap_or(0), Ordering::Relaxed);
                    tracing::warn!(behind = ahead, "capture fell behind the device; frames dropped");
                    *n = nearest;
                } else if ahead >= 2 {
                    // Frames missing (the driver or the pipeline dropped
                    // them): repeat the last picture so segments stay whole.
                    if !self.repeat(ahead, n, pool, clock, status, emit) {
                        return false;
                    }
                }
                match path {
                    FramePath::InPlace => status.frames_in_place.fetch_add(1, Ordering::Relaxed),
                    FramePath::Converted => status.frames_converted.fetch_add(1, Ordering::Relaxed),
                };
                let frame =
                    writer.publish(FrameMeta { number: *n, audio_len: 0, captured_tai_ns: tai, passed_over: false });
                *n += 1;
                self.last = Some(frame.clone());
                emit(frame)
            }
        }
    }

    /// Moves the numbering by `frames` from `n` on (a realignment the
    /// swarm approved): the picture that would have been numbered `m` is
    /// numbered `m + frames`. Forward, the numbers passed over repeat the
    /// last picture, handed to `emit` at once; back, the next `-frames`
    /// pictures are dropped. False when `emit` refused a frame.
    pub fn realign(
        &mut self,
        frames: i64,
        n: &mut i64,
        pool: &Arc<FramePool>,
        clock: &Clock,
        status: &CaptureStatus,
        emit: &mut dyn FnMut(FrameRef) -> bool,
    ) -> bool {
        self.shift += frames;
        if frames < 0 {
            self.skip += frames.unsigned_abs();
            return true;
        }
        self.repeat(frames, n, pool, clock, status, emit)
    }

    /// Publishes `count` copies of the last picture (black before the
    /// first) as the next frames, each handed to `emit` before the next
    /// slot is taken.
    fn repeat(
        &self,
        count: i64,
        n: &mut i64,
        pool: &Arc<FramePool>,
        clock: &Clock,
        status: &CaptureStatus,
        emit: &mut dyn FnMut(FrameRef) -> bool,
    ) -> bool {
        for _ in 0..count {
            let mut w = pool.acquire();
            let b = w.buffers();
            match &self.last {
                Some(last) => {
                    let (y, u, v) = last.planes();
                    b.y.copy_from_slice(y);
                    b.u.copy_from_slice(u);
                    b.v.copy_from_slice(v);
                }
                None => {
                    b.y.fill(16);
                    b.u.fill(128);
                    b.v.fill(128);
                }
            }
            status.frames_copied.fetch_add(1, Ordering::Relaxed);
            let number = *n;
            *n += 1;
            if !emit(w.publish(FrameMeta {
                number,
                audio_len: 0,
                captured_tai_ns: clock.now_tai_ns(),
                passed_over: false,
            })) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::capture::pool::FrameLayout;
    use crate::capture::v4l2::monotonic_ns;

    const RATE: Rate = Rate { num: 25, den: 1 };

    fn setup() -> (Arc<FramePool>, Clock, CaptureStatus) {
        let layout = FrameLayout { width: 16, height: 8, audio_channels: 0, max_audio_samples: 0 };
        (
            FramePool::new(layout, 64),
            Clock::open(&crate::config::ClockConfig::default()).unwrap(),
            CaptureStatus::default(),
        )
    }

    /// A frame the device stamped 5 ms into timeline frame `k`
    /// (k in the past), its luma starting with `mark`.
    fn frame(pool: &Arc<FramePool>, clock: &Clock, k: i64, mark: u8) -> Delivery {
        let mut writer = pool.acquire();
        writer.buffers().y[0] = mark;
        let age = clock.now_tai_ns() - (RATE.frame_time_ns(k) + 5_000_000);
        Delivery::Frame { writer, captured_mono_ns: monotonic_ns() - age, path: FramePath::Converted }
    }

    fn numbers(frames: &[FrameRef]) -> Vec<i64> {
        frames.iter().map(|f| f.meta().number).collect()
    }

    /// Everything `place` emits, collected.
    fn place(
        pacing: &mut DevicePacing,
        delivery: Delivery,
        n: &mut i64,
        pool: &Arc<FramePool>,
        clock: &Clock,
        status: &CaptureStatus,
    ) -> Vec<FrameRef> {
        let mut out = Vec::new();
        assert!(pacing.place(delivery, n, pool, clock, RATE, status, &mut |f| {
            out.push(f);
            true
        }));
        out
    }

    #[test]
    fn a_gap_longer_than_the_pool_is_filled_while_downstream_takes_frames() {
        // 4 slots; vivid under emulation has left gaps of 24 frames. Each
        // repeat must reach downstream (which lets go of it) before the
        // next slot is taken, or the capture thread waits forever.
        let layout = FrameLayout { width: 16, height: 8, audio_channels: 0, max_audio_samples: 0 };
        let (pool, clock, status) = (FramePool::new(layout, 4), setup().1, CaptureStatus::default());
        let mut pacing = DevicePacing::default();
        let n0 = RATE.frame_at(clock.now_tai_ns()) - 100;
        let mut n = n0;
        let mut seen = Vec::new();
        let mut take = |f: FrameRef| {
            seen.push(f.meta().number);
            true
        };
        assert!(pacing.place(frame(&pool, &clock, n0, 1), &mut n, &pool, &clock, RATE, &status, &mut take));
        assert!(pacing.place(frame(&pool, &clock, n0 + 24, 2), &mut n, &pool, &clock, RATE, &status, &mut take));
        assert_eq!(seen, (n0..=n0 + 24).collect::<Vec<_>>());
        assert_eq!(status.frames_copied.load(Ordering::Relaxed), 23);
        // The same for black frames standing in during a fault.
        let mut black = 0;
        let mut count = |_: FrameRef| {
            black += 1;
            true
        };
        n = RATE.frame_at(clock.now_tai_ns()) - 30;
        assert!(pacing.place(Delivery::Fault("no signal".into()), &mut n, &pool, &clock, RATE, &status, &mut count));
        assert!(black >= 31, "{black} black frames");
        // Downstream gone: it stops at the first refused frame.
        let mut offered = 0;
        n = RATE.frame_at(clock.now_tai_ns()) - 30;
        let mut refuse = |_: FrameRef| {
            offered += 1;
            false
        };
        assert!(!pacing.place(Delivery::Fault("no signal".into()), &mut n, &pool, &clock, RATE, &status, &mut refuse));
        assert_eq!(offered, 1);
    }

    #[test]
    fn device_frames_get_timeline_numbers_and_gaps_are_filled() {
        let (pool, clock, status) = setup();
        let mut pacing = DevicePacing::default();
        let n0 = RATE.frame_at(clock.now_tai_ns()) - 100;
        let mut n = n0;
        let out = place(&mut pacing, frame(&pool, &clock, n0, 1), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0]);
        // One frame of jitter keeps the running count.
        let out = place(&mut pacing, frame(&pool, &clock, n0, 2), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 1]);
        // Three missing: the last picture stands in for them.
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 5, 3), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 2, n0 + 3, n0 + 4, n0 + 5]);
        assert!(out[..3].iter().all(|f| f.planes().0[0] == 2), "repeats carry the previous picture");
        assert_eq!(out[3].planes().0[0], 3);
        assert_eq!(status.frames_copied.load(Ordering::Relaxed), 3);
        assert_eq!(status.frames_converted.load(Ordering::Relaxed), 3);
        // A frame two slots behind the count has no place: dropped.
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 4, 4), &mut n, &pool, &clock, &status);
        assert!(out.is_empty());
        assert_eq!((n, status.frames_dropped.load(Ordering::Relaxed)), (n0 + 6, 1));
        // Over a second ahead: rejoin there, no repeats.
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 60, 5), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 60]);
        assert_eq!(status.frames_copied.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_input_fault_keeps_the_timeline_with_black_frames() {
        let (pool, clock, status) = setup();
        let mut pacing = DevicePacing::default();
        let now = RATE.frame_at(clock.now_tai_ns());
        let mut n = now - 10;
        let out = place(&mut pacing, Delivery::Fault("no signal".into()), &mut n, &pool, &clock, &status);
        assert!(out.len() >= 11, "every frame due by now: {}", out.len());
        assert_eq!(numbers(&out)[0], now - 10);
        assert!(out.iter().all(|f| f.planes().0.iter().all(|&y| y == 16) && f.planes().1[0] == 128));
        assert_eq!(lock(&status.input_fault).as_deref(), Some("no signal"));
        assert_eq!(status.input_faults.load(Ordering::Relaxed), 1);
        // Still bad: the same fault, not a new one.
        place(&mut pacing, Delivery::Fault("no signal".into()), &mut n, &pool, &clock, &status);
        assert_eq!(status.input_faults.load(Ordering::Relaxed), 1);
        // The first good frame clears it.
        let next = n;
        let out = place(&mut pacing, frame(&pool, &clock, next, 9), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [next]);
        assert!(lock(&status.input_fault).is_none());
    }

    #[test]
    fn a_realignment_moves_the_numbering_against_the_capture_times_for_good() {
        let (pool, clock, status) = setup();
        let mut pacing = DevicePacing::default();
        let n0 = RATE.frame_at(clock.now_tai_ns()) - 100;
        let mut n = n0;
        place(&mut pacing, frame(&pool, &clock, n0, 1), &mut n, &pool, &clock, &status);
        // Forward by 2: two repeats of picture 1 take the next numbers, and
        // the picture captured in slot n0 + 1 is numbered n0 + 3.
        let mut out = Vec::new();
        assert!(pacing.realign(2, &mut n, &pool, &clock, &status, &mut |f| {
            out.push(f);
            true
        }));
        assert_eq!(numbers(&out), [n0 + 1, n0 + 2]);
        assert!(out.iter().all(|f| f.planes().0[0] == 1));
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 1, 2), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 3]);
        // It stays moved: the next slot's picture is the next number.
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 2, 3), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 4]);
        // Back by 1 (a single frame, which the jitter tolerance alone
        // would never absorb): one picture is dropped, the next one takes
        // its number, and the count follows the slots again.
        let dropped = status.frames_dropped.load(Ordering::Relaxed);
        assert!(pacing.realign(-1, &mut n, &pool, &clock, &status, &mut |_| true));
        // It leaves the numbering but goes on, passed over, for a re-encode.
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 3, 4), &mut n, &pool, &clock, &status);
        assert_eq!(out.iter().map(|f| (f.meta().passed_over, f.planes().0[0])).collect::<Vec<_>>(), [(true, 4)]);
        assert_eq!(status.frames_dropped.load(Ordering::Relaxed), dropped + 1);
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 4, 5), &mut n, &pool, &clock, &status);
        assert_eq!((numbers(&out), out[0].planes().0[0]), (vec![n0 + 5], 5));
        let out = place(&mut pacing, frame(&pool, &clock, n0 + 5, 6), &mut n, &pool, &clock, &status);
        assert_eq!(numbers(&out), [n0 + 6]);
    }
}
