//! The plan of one run, decided before any thread starts: the segment
//! grid, the ladder resolved against the source, the first frame and the
//! first segment (a file starts at a boundary, a live source joins the
//! clock, a handover's successor starts early enough to warm its audio
//! encoder up), and where capture stops. A pure function of the
//! configuration, the source's format, the present frame and the limits,
//! unit-tested without a device or a thread.

use lockstep_encoder_api::AudioSettings;

use crate::capture::SourceFormat;
use crate::config::{Config, Pacing};
use crate::encode::AudioJob;
use crate::pipeline::RunLimits;
use crate::timeline::Grid;

/// Audio sample rate of every channel.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples per audio packet (20 ms).
const AUDIO_FRAME: u32 = 960;

/// The audio encoder's settings for a source (None: it has no audio).
pub fn audio_settings(config: &Config, format: &SourceFormat) -> Option<AudioSettings> {
    (format.audio_channels > 0).then_some(AudioSettings {
        sample_rate: SAMPLE_RATE,
        channels: format.audio_channels,
        bitrate_bps: config.audio.bitrate_kbps * 1000,
    })
}

/// What a run will do.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The segment grid.
    pub grid: Grid,
    /// The ladder resolved against the source size.
    pub ladder: Vec<ResolvedRendition>,
    /// Audio encoder settings (None: the source has no audio).
    pub audio: Option<AudioSettings>,
    /// The audio encoder's lookahead, samples.
    pub lookahead: usize,
    /// Packets encoded and dropped before each audio segment.
    pub warmup_packets: u32,
    /// The source is live (paced by the clock) rather than a file.
    pub live: bool,
    /// First frame captured.
    pub first_frame: i64,
    /// First segment published.
    pub first_segment: i64,
    /// Capture stops before this frame (None: at the end of the source).
    pub end_frame: Option<i64>,
}

impl RunPlan {
    /// The plan for `config` on a source of `format`, `now_frame` being
    /// the first frame still to come on the media clock and `lookahead`
    /// the audio encoder's.
    pub fn new(config: &Config, format: &SourceFormat, now_frame: i64, lookahead: usize, limits: &RunLimits) -> Self {
        let rate = format.rate;
        let frames_per_segment = (config.channel.segment_seconds * rate.fps()).round().max(1.0) as u32;
        let grid = Grid { rate, frames_per_segment, sample_rate: SAMPLE_RATE, audio_frame: AUDIO_FRAME };
        let audio = audio_settings(config, format);
        let mut plan = RunPlan {
            grid,
            ladder: resolve_ladder(config, format.width, format.height),
            lookahead: if audio.is_some() { lookahead } else { 0 },
            audio,
            warmup_packets: config.audio.warmup_packets,
            live: format.live,
            first_frame: 0,
            first_segment: 0,
            end_frame: None,
        };
        // Where the timeline starts: live sources join at the current
        // frame, files start at the next segment boundary so no frame of
        // them is lost.
        let mut first_frame = match (config.source.pacing, config.source.start_frame) {
            (Pacing::Fast, Some(n)) => n,
            _ => now_frame,
        };
        if !format.live {
            first_frame = grid.first_frame(grid.next_boundary_segment(first_frame));
        }
        // The audio warm-up of a segment reaches back before its first frame.
        let warm = |plan: &RunPlan, s: i64| plan.audio.is_some().then(|| plan.audio_job(s).first_input_sample(s));
        let first_segment = match limits.start_segment {
            Some(s) if format.live => {
                // A successor: capture starts early enough for the audio
                // warm-up of segment `s`, which is the first published.
                first_frame = grid.first_frame(s);
                while warm(&plan, s).is_some_and(|sample| sample < rate.audio_sample_at(first_frame, SAMPLE_RATE)) {
                    first_frame -= 1;
                }
                s
            }
            _ if format.live => {
                let mut s = grid.next_boundary_segment(first_frame);
                let first_sample = rate.audio_sample_at(first_frame, SAMPLE_RATE);
                while warm(&plan, s).is_some_and(|sample| sample < first_sample) {
                    s += 1;
                }
                s
            }
            _ => grid.segment_of(first_frame),
        };
        // Frames past the last boundary that give the last audio segment
        // its encoder lookahead.
        let tail = (plan.lookahead as f64 * rate.fps() / f64::from(SAMPLE_RATE)).ceil() as i64;
        plan.end_frame = stop_frame(&grid, first_frame, limits, format.live, tail);
        plan.first_frame = first_frame;
        plan.first_segment = first_segment;
        plan
    }

    /// The audio encoder's job from segment `first_segment` on.
    pub fn audio_job(&self, first_segment: i64) -> AudioJob {
        AudioJob {
            grid: self.grid,
            settings: self.audio.unwrap_or(AudioSettings {
                sample_rate: SAMPLE_RATE,
                channels: 2,
                bitrate_bps: 96_000,
            }),
            warmup_packets: self.warmup_packets,
            lookahead: self.lookahead,
            first_segment,
            silence_before_start: !self.live,
            partial_at_end: !self.live,
        }
    }
}

/// A rendition resolved against the source size.
#[derive(Debug, Clone)]
pub struct ResolvedRendition {
    /// Name.
    pub name: String,
    /// Coded width.
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Target bitrate.
    pub bitrate_bps: u32,
}

/// Resolves the ladder for a source size: widths keep the source aspect
/// (rounded to even); rungs taller than the source are left out.
pub fn resolve_ladder(config: &Config, src_w: u32, src_h: u32) -> Vec<ResolvedRendition> {
    let mut out: Vec<ResolvedRendition> = config
        .renditions
        .iter()
        .filter(|r| r.height <= src_h)
        .map(|r| {
            let width = r.width.unwrap_or_else(|| {
                let w = (u64::from(r.height) * u64::from(src_w) + u64::from(src_h) / 2) / u64::from(src_h);
                (w as u32 + 1) & !1
            });
            ResolvedRendition {
                name: r.name.clone(),
                width: width.max(16),
                height: r.height,
                bitrate_bps: r.bitrate_kbps * 1000,
            }
        })
        .collect();
    if out.is_empty() {
        let first = &config.renditions[0];
        tracing::warn!(source = %format!("{src_w}x{src_h}"), "every rendition is taller than the source; encoding at source size");
        out.push(ResolvedRendition {
            name: first.name.clone(),
            width: src_w,
            height: src_h,
            bitrate_bps: first.bitrate_kbps * 1000,
        });
    } else if out.len() < config.renditions.len() {
        tracing::info!(kept = out.len(), of = config.renditions.len(), "renditions taller than the source left out");
    }
    out
}

/// Where capture stops. A live run with a duration ends on a segment
/// boundary plus `tail` frames, which give the last audio segment its
/// encoder lookahead (the incomplete segment they start is not published).
fn stop_frame(grid: &Grid, first: i64, limits: &RunLimits, live: bool, tail: i64) -> Option<i64> {
    let by_frames = limits.frames.map(|f| first + i64::try_from(f).unwrap_or(i64::MAX));
    let by_time = limits.duration_s.map(|d| {
        let end = match limits.daemon_end.as_ref().and_then(|e| e.get()) {
            Some(&ns) if live => grid.rate.frame_at(ns),
            _ => first + (d * grid.rate.fps()).ceil() as i64,
        };
        if let Some(cell) = &limits.daemon_end
            && live
        {
            let _ = cell.set(grid.rate.frame_time_ns(end));
        }
        if live { grid.first_frame(grid.next_boundary_segment(end)) + tail } else { end }
    });
    match (by_frames, by_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::timeline::Rate;

    const RATE: Rate = Rate { num: 25, den: 1 };

    fn config() -> Config {
        let mut config = Config::from_toml(crate::config::DEFAULT_TOML, "test").unwrap();
        config.channel.segment_seconds = 2.0;
        config
    }

    fn source(live: bool, audio_channels: u16) -> SourceFormat {
        SourceFormat { width: 1280, height: 720, rate: RATE, audio_channels, live, device_paced: false }
    }

    #[test]
    fn a_file_starts_at_the_next_boundary_and_runs_to_its_end() {
        let plan = RunPlan::new(&config(), &source(false, 0), 101, 0, &RunLimits::default());
        assert_eq!(plan.grid.frames_per_segment, 50);
        assert_eq!((plan.first_frame, plan.first_segment, plan.end_frame), (150, 3, None));
        assert!(plan.audio.is_none());
        // Ten seconds of it: 250 frames from the first.
        let limits = RunLimits { duration_s: Some(10.0), ..RunLimits::default() };
        let plan = RunPlan::new(&config(), &source(false, 0), 101, 0, &limits);
        assert_eq!(plan.end_frame, Some(400));
    }

    #[test]
    fn a_live_source_with_audio_publishes_from_the_first_segment_its_warm_up_fits_in() {
        // Joining just after a boundary: the next boundary's segment needs
        // 10 warm-up packets (200 ms, 5 frames) before it, which are there.
        let plan = RunPlan::new(&config(), &source(true, 2), 110, 312, &RunLimits::default());
        assert_eq!((plan.first_frame, plan.first_segment), (110, 3));
        let job = plan.audio_job(3);
        assert!(job.first_input_sample(3) >= RATE.audio_sample_at(110, SAMPLE_RATE));
        // Joining 2 frames before a boundary: its warm-up reaches back
        // before the first frame, so the segment after it comes first.
        let plan = RunPlan::new(&config(), &source(true, 2), 148, 312, &RunLimits::default());
        assert_eq!((plan.first_frame, plan.first_segment), (148, 4));
        // Without audio, the boundary right after the first frame.
        let plan = RunPlan::new(&config(), &source(true, 0), 148, 312, &RunLimits::default());
        assert_eq!((plan.first_segment, plan.lookahead), (3, 0));
    }

    #[test]
    fn a_successor_captures_early_enough_to_warm_its_audio_encoder_up() {
        let limits = RunLimits { start_segment: Some(7), ..RunLimits::default() };
        let plan = RunPlan::new(&config(), &source(true, 2), 200, 312, &limits);
        assert_eq!(plan.first_segment, 7);
        assert!(plan.first_frame < 350, "capture starts before segment 7's first frame");
        let job = plan.audio_job(7);
        let first_sample = RATE.audio_sample_at(plan.first_frame, SAMPLE_RATE);
        assert!(job.first_input_sample(7) >= first_sample, "the warm-up is captured");
        let later = RATE.audio_sample_at(plan.first_frame + 1, SAMPLE_RATE);
        assert!(job.first_input_sample(7) < later, "and not a frame more");
        // Video only: exactly at the boundary.
        let plan = RunPlan::new(&config(), &source(true, 0), 200, 0, &limits);
        assert_eq!(plan.first_frame, 350);
    }

    #[test]
    fn a_live_run_with_a_duration_ends_on_a_boundary_plus_the_audio_lookahead() {
        let end = Arc::new(std::sync::OnceLock::new());
        let limits = RunLimits { duration_s: Some(3.0), daemon_end: Some(Arc::clone(&end)), ..RunLimits::default() };
        let plan = RunPlan::new(&config(), &source(true, 2), 110, 312, &limits);
        // 3 s from frame 110 is frame 185; the boundary after it is 200;
        // 312 samples of lookahead are one frame more.
        assert_eq!(plan.end_frame, Some(201));
        // A later run of the same daemon keeps to that end.
        assert_eq!(end.get().copied(), Some(RATE.frame_time_ns(185)));
        let plan = RunPlan::new(&config(), &source(true, 2), 160, 312, &limits);
        assert_eq!(plan.end_frame, Some(201));
    }

    #[test]
    fn the_ladder_leaves_out_rungs_taller_than_the_source_and_keeps_its_aspect() {
        let config = config();
        let ladder = resolve_ladder(&config, 640, 360);
        assert!(ladder.iter().all(|r| r.height <= 360), "{ladder:?}");
        assert!(ladder.iter().all(|r| r.width % 2 == 0 && r.width * 9 / 16 <= r.height + 1));
        let tiny = resolve_ladder(&config, 64, 36);
        assert_eq!((tiny.len(), tiny[0].width, tiny[0].height), (1, 64, 36));
    }
}
