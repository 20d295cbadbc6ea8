//! The capture loop of a running channel: the one place frames get their
//! timeline numbers. A source read by frame number (test pattern, file)
//! is paced by the media clock; a device that paces itself is placed on
//! the timeline by [`DevicePacing`]. The loop owns the capture counters
//! ([`CaptureStatus`]) and the capture drills (hang, slip) and applies the
//! realignment the swarm approved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crossbeam_channel::Sender;

use crate::capture::pacing::DevicePacing;
use crate::capture::pool::{FrameMeta, FramePool, FrameRef};
use crate::capture::{CaptureDevice, CaptureError, Captured};
use crate::clock::{Clock, MediaClock};
use crate::handover::Handover;
use crate::metrics::{self, Exposition};
use crate::sync::lock;
use crate::timeline::Rate;

/// What the capture loop counts and what it is told, shared with the
/// swarm and the admin API (part of the channel's status).
#[derive(Debug, Default)]
pub struct CaptureStatus {
    /// Frame number last captured.
    pub frame: AtomicI64,
    /// Frames captured since the daemon started.
    pub frames_captured: AtomicU64,
    /// Frames skipped because capture fell behind real time.
    pub frames_dropped: AtomicU64,
    /// Frames whose picture stayed in the device's buffer (no copy).
    pub frames_in_place: AtomicU64,
    /// Frames converted once from the device's pixel format.
    pub frames_converted: AtomicU64,
    /// Frames copied (a repeated picture filling a gap the device left).
    pub frames_copied: AtomicU64,
    /// Frames stood in for by black while the input had a fault.
    pub frames_substituted: AtomicU64,
    /// Input faults (no signal, no lock, timeouts) since the daemon started.
    pub input_faults: AtomicU64,
    /// The input fault now, in words (None: the input is good).
    pub input_fault: std::sync::Mutex<Option<String>>,
    /// A hang drill: the capture loop stops for this many ms, once (the
    /// systemd watchdog is expected to restart the daemon).
    pub hang_ms: AtomicU64,
    /// A slip drill: the test source's pictures run this many frames late
    /// against their numbers (frame `n` shows picture `n - slip_frames`),
    /// from the next frame on, across runs, until changed again.
    pub slip_frames: AtomicI64,
    /// A realignment the swarm approved: from frame `realign_at` on, the
    /// capture's numbering moves by `realign_frames` (0: none;
    /// `crate::swarm::resync`).
    pub realign_at: AtomicI64,
    /// Frames of that realignment.
    pub realign_frames: AtomicI64,
    /// The running source can be realigned: a live source read by frame
    /// number (the test source) or a device that paces itself. A file is
    /// read in order and cannot, so the swarm never proposes it moves.
    pub can_realign: AtomicBool,
}

impl CaptureStatus {
    /// Adds the capture counters to an exposition, labelled with the channel.
    pub fn export(&self, channel: &str, out: &mut Exposition) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let at = [("channel", channel)];
        out.counter(
            "lockstep_frames_captured_total",
            "Frames captured since the daemon started.",
            &at,
            n(&self.frames_captured),
        );
        out.counter(
            "lockstep_frames_dropped_total",
            "Frames skipped because capture fell behind real time.",
            &at,
            n(&self.frames_dropped),
        );
        // How pictures reached the pool: in place (no copy), converted once,
        // copied (a repeat filling a gap), or black standing in for a fault.
        for (path, v) in [
            ("in_place", &self.frames_in_place),
            ("converted", &self.frames_converted),
            ("copied", &self.frames_copied),
            ("substituted", &self.frames_substituted),
        ] {
            out.counter(
                "lockstep_capture_frames_total",
                "Frames from a device-paced source by how they reached the frame pool (path=in_place means no copy).",
                &[("channel", channel), ("path", path)],
                n(v),
            );
        }
        out.counter(
            "lockstep_input_faults_total",
            "Input faults (no signal, no lock, timeouts, corrupt frames) since the daemon started.",
            &at,
            n(&self.input_faults),
        );
        out.gauge(
            "lockstep_input_fault",
            "1 while the input has a fault.",
            &at,
            metrics::flag(lock(&self.input_fault).is_some()),
        );
    }

    /// A realignment due at frame `n`, taken (it applies once): the
    /// picture numbered `m` before is numbered `m + frames` from then on.
    fn realignment_due(&self, n: i64) -> Option<i64> {
        let at = self.realign_at.load(Ordering::Relaxed);
        if at != 0 && n >= at && self.realign_at.swap(0, Ordering::Relaxed) == at {
            Some(self.realign_frames.load(Ordering::Relaxed))
        } else {
            None
        }
    }

    /// A hang drill asked for through the API: the capture loop stops here.
    fn hang_drill(&self) {
        let hang_ms = self.hang_ms.swap(0, Ordering::Relaxed);
        if hang_ms > 0 {
            tracing::warn!(ms = hang_ms, "hang drill: the capture loop stops");
            std::thread::sleep(std::time::Duration::from_millis(hang_ms));
        }
    }
}

/// One run of the capture loop: the device (started), where its frames go
/// on the timeline, and when to stop.
pub struct CaptureLoop<'a> {
    /// The source, started.
    pub device: &'a mut dyn CaptureDevice,
    /// Slots for its frames.
    pub pool: &'a Arc<FramePool>,
    /// The media clock.
    pub clock: &'a Clock,
    /// Frame rate of the timeline.
    pub rate: Rate,
    /// Interleaved audio channels the source delivers (0: none).
    pub audio_channels: u16,
    /// A live source: more than a segment behind real time, it rejoins
    /// at the present.
    pub live: bool,
    /// Paced by the media clock (else as fast as downstream takes frames).
    pub realtime: bool,
    /// The device delivers frames at its own pace.
    pub device_paced: bool,
    /// Frames per segment.
    pub segment_frames: u32,
    /// First frame number.
    pub first_frame: i64,
    /// No frame at or past this one.
    pub end_frame: Option<i64>,
    /// Set to stop.
    pub stop: &'a AtomicBool,
    /// A handover that may end this run at a segment boundary.
    pub handover: Option<&'a Handover>,
    /// Counters, drills, realignment.
    pub status: &'a CaptureStatus,
}

impl std::fmt::Debug for CaptureLoop<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureLoop")
            .field("device", &self.device.describe())
            .field("first_frame", &self.first_frame)
            .field("end_frame", &self.end_frame)
            .field("device_paced", &self.device_paced)
            .finish_non_exhaustive()
    }
}

/// What a capture run did.
#[derive(Debug)]
pub struct Captures {
    /// Frames sent downstream.
    pub frames: u64,
    /// Frames skipped because capture fell behind real time.
    pub dropped: u64,
    /// Why capture ended early, if it did.
    pub result: Result<(), CaptureError>,
}

impl CaptureLoop<'_> {
    /// Captures until the end frame, the handover, a stop, the end of the
    /// source or an error; every frame goes to `out`. Stops too when
    /// downstream has gone (its error is the pipeline's to report).
    pub fn run(self, out: &Sender<FrameRef>) -> Captures {
        let Self { device, pool, clock, rate, status, .. } = self;
        let handed_over = |n: i64| self.handover.is_some_and(|h| h.ends_at(n));
        let past_end = |n: i64| self.end_frame.is_some_and(|end| n >= end) || handed_over(n);
        let mut result = Ok(());
        let mut n = self.first_frame;
        let (mut frames, mut dropped) = (0u64, 0u64);
        let mut paced = self.device_paced.then(DevicePacing::default);
        let mut shown: Option<i64> = None;
        status.can_realign.store(self.device_paced || self.live, Ordering::Relaxed);
        while !self.stop.load(Ordering::Relaxed) && !past_end(n) {
            status.hang_drill();
            // A clock correction due at this frame starts before the wait
            // for it, so the frame is the first on the corrected clock.
            clock.reach_frame(n);
            if let Some(pacing) = paced.as_mut() {
                // Past the end or the handover: the frame is not sent, and
                // the loop condition ends the run.
                let mut downstream_gone = false;
                let mut emit = |frame: FrameRef| {
                    let meta = frame.meta();
                    if meta.passed_over {
                        return out.send(frame).is_ok();
                    }
                    let number = meta.number;
                    if past_end(number) {
                        return false;
                    }
                    status.frame.store(number, Ordering::Relaxed);
                    status.frames_captured.fetch_add(1, Ordering::Relaxed);
                    if out.send(frame).is_err() {
                        downstream_gone = true;
                        return false;
                    }
                    frames += 1;
                    true
                };
                if let Some(moved) = status.realignment_due(n) {
                    tracing::info!(frame = n, frames = moved, "capture realigned with the swarm's majority");
                    pacing.realign(moved, &mut n, pool, clock, status, &mut emit);
                }
                let delivery = match device.deliver(pool) {
                    Ok(delivery) => delivery,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                };
                pacing.place(delivery, &mut n, pool, clock, rate, status, &mut emit);
                if downstream_gone {
                    break;
                }
                continue;
            }
            if self.realtime {
                clock.sleep_until(rate.frame_time_ns(n));
                // More than a segment behind real time: rejoin at the present.
                let now = rate.frame_at(clock.now_tai_ns());
                if self.live && now - n > i64::from(self.segment_frames) {
                    let behind = u64::try_from(now - n).unwrap_or(0);
                    dropped += behind;
                    status.frames_dropped.fetch_add(behind, Ordering::Relaxed);
                    tracing::warn!(behind = now - n, "capture fell behind real time; frames dropped");
                    n = now;
                }
            }
            let mut writer = pool.acquire();
            // The picture (and its sound) the source gives for frame n:
            // picture n, unless a slip drill shifted it or a realignment
            // moved it back. A live source stands for a camera: it shows
            // the world's picture of the moment frame n is due by the clock
            // without drills or swarm corrections, so a drilled clock
            // numbers pictures as a drifting or stepped camera clock would
            // (half a frame off, its frames show the neighbouring pictures).
            if let Some(moved) = status.realignment_due(n) {
                let slip = status.slip_frames.fetch_add(moved, Ordering::Relaxed) + moved;
                tracing::info!(frame = n, frames = moved, slip, "capture realigned with the swarm's majority");
            }
            let world = if self.live && self.realtime {
                rate.frame_at(rate.frame_time_ns(n) - clock.adjustment_ns())
            } else {
                n
            };
            let picture = world - status.slip_frames.load(Ordering::Relaxed);
            // Pictures the numbering passed over (a realignment back, a
            // clock correction forward) are still the world's: they go on
            // for a re-encode of the segments made before the move.
            if self.live
                && let Some(last) = shown
                && (2..=i64::from(self.segment_frames)).contains(&(picture - last))
            {
                for p in last + 1..picture {
                    let mut kept = pool.acquire();
                    let first_sample = rate.audio_sample_at(p, 48_000);
                    if let Ok(Captured::Frame) = device.read(p, first_sample, 0, &mut kept.buffers()) {
                        let meta = FrameMeta { number: n, passed_over: true, ..FrameMeta::default() };
                        if out.send(kept.publish(meta)).is_err() {
                            break;
                        }
                    }
                }
            }
            shown = Some(picture);
            let first_sample = rate.audio_sample_at(picture, 48_000);
            let samples = usize::try_from(rate.audio_sample_at(picture + 1, 48_000) - first_sample).unwrap_or(0);
            match device.read(picture, first_sample, samples, &mut writer.buffers()) {
                Ok(Captured::Frame) => {}
                Ok(Captured::End) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            let audio_len = samples * usize::from(self.audio_channels);
            let frame = writer.publish(FrameMeta {
                number: n,
                audio_len,
                captured_tai_ns: clock.now_tai_ns(),
                passed_over: false,
            });
            status.frame.store(n, Ordering::Relaxed);
            status.frames_captured.fetch_add(1, Ordering::Relaxed);
            if out.send(frame).is_err() {
                break; // a downstream stage stopped; its error is reported by the pipeline
            }
            frames += 1;
            n += 1;
        }
        Captures { frames, dropped, result }
    }
}
