//! The analysis stage: picture and audio features of every frame, summed
//! per segment of the timeline grid into [`SegmentReport`]s.
//!
//! The pipeline runs it on its own thread beside the encoders (frames are
//! lent to it without copying; when it falls behind it analyses every 2nd
//! or 4th picture and says so in [`AnalysisMetrics`] and in the segment's
//! `frames_skipped`). `lockstep analyze` runs the same stage on a file.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::Serialize;

use crate::analysis::audio::{AudioAnalyzer, AudioWindow};
use crate::analysis::segment::{ContentType, SegmentAccumulator, SegmentAnalysis};
use crate::analysis::video::VideoAnalyzer;
use crate::capture::pool::FrameRef;
use crate::metrics::{self, Exposition};
use crate::timeline::{Grid, Timecode};

/// Largest subsampling step (analyse every 4th picture).
pub const MAX_STEP: u32 = 4;

/// What analysis says about one segment of the timeline, as it is
/// broadcast to the rest of the daemon and written into the manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentReport {
    /// Segment index on the channel timeline.
    pub index: i64,
    /// First frame of the segment.
    pub first_frame: i64,
    /// Time of day of the first frame (HH:MM:SS:FF).
    pub timecode: String,
    /// The analysis.
    #[serde(flatten)]
    pub analysis: SegmentAnalysis,
}

/// Live counters of the analysis stage (exported as metrics).
#[derive(Debug)]
pub struct AnalysisMetrics {
    /// Pictures analysed.
    pub frames_analysed: AtomicU64,
    /// Pictures not analysed (subsampling or a full analysis queue).
    pub frames_skipped: AtomicU64,
    /// Current step: 1 = every picture, 2 = every 2nd, 4 = every 4th.
    pub subsample_step: AtomicU32,
    /// Segments reported.
    pub segments: AtomicU64,
    /// Scene cuts seen.
    pub scene_cuts: AtomicU64,
    /// Last segment's complexity score (f32 bits).
    pub complexity: AtomicU32,
    /// Last segment's content type (index into [`ContentType::ALL`]).
    pub content: AtomicU32,
    /// Last segment's audio loudness in dBFS (f32 bits; NaN without audio).
    pub loudness_dbfs: AtomicU32,
    /// Last segment's audio complexity (f32 bits).
    pub audio_complexity: AtomicU32,
}

impl Default for AnalysisMetrics {
    fn default() -> Self {
        Self {
            frames_analysed: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            subsample_step: AtomicU32::new(1),
            segments: AtomicU64::new(0),
            scene_cuts: AtomicU64::new(0),
            complexity: AtomicU32::new(0),
            content: AtomicU32::new(0),
            loudness_dbfs: AtomicU32::new(f32::NAN.to_bits()),
            audio_complexity: AtomicU32::new(f32::NAN.to_bits()),
        }
    }
}

impl AnalysisMetrics {
    fn record(&self, r: &SegmentReport) {
        let a = &r.analysis;
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.scene_cuts.fetch_add(a.scene_cuts.len() as u64, Ordering::Relaxed);
        self.complexity.store(a.complexity.to_bits(), Ordering::Relaxed);
        let content = ContentType::ALL.iter().position(|&c| c == a.content).unwrap_or(0);
        self.content.store(content as u32, Ordering::Relaxed);
        let (loudness, audio) = a.audio.as_ref().map_or((f32::NAN, f32::NAN), |s| (s.loudness_dbfs, s.complexity));
        self.loudness_dbfs.store(loudness.to_bits(), Ordering::Relaxed);
        self.audio_complexity.store(audio.to_bits(), Ordering::Relaxed);
    }

    /// Adds the counters to an exposition, labelled with the channel; the
    /// audio gauges only once there is audio (they are NaN before).
    pub fn export(&self, channel: &str, out: &mut Exposition) {
        let f = |a: &AtomicU32| f64::from(f32::from_bits(a.load(Ordering::Relaxed)));
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let at = [("channel", channel)];
        out.counter("lockstep_analysis_frames_total", "Pictures analysed.", &at, n(&self.frames_analysed));
        out.counter(
            "lockstep_analysis_frames_skipped_total",
            "Pictures left out because analysis fell behind.",
            &at,
            n(&self.frames_skipped),
        );
        out.gauge(
            "lockstep_analysis_subsample_step",
            "1 = every picture analysed, N = every Nth.",
            &at,
            f64::from(self.subsample_step.load(Ordering::Relaxed).max(1)),
        );
        out.counter("lockstep_analysis_segments_total", "Segments analysed.", &at, n(&self.segments));
        out.counter("lockstep_analysis_scene_cuts_total", "Scene cuts detected.", &at, n(&self.scene_cuts));
        out.gauge(
            "lockstep_analysis_complexity_ratio",
            "Complexity score of the last segment, 0-1.",
            &at,
            f(&self.complexity),
        );
        for (name, help, v) in [
            (
                "lockstep_analysis_audio_loudness_dbfs",
                "RMS level of the last segment's audio, dBFS.",
                f(&self.loudness_dbfs),
            ),
            (
                "lockstep_analysis_audio_complexity_ratio",
                "Audio complexity of the last segment, 0-1.",
                f(&self.audio_complexity),
            ),
        ] {
            if !v.is_nan() {
                out.gauge(name, help, &at, v);
            }
        }
        let content = ContentType::ALL.get(self.content.load(Ordering::Relaxed) as usize).copied();
        for c in ContentType::ALL {
            let on = Some(c) == content && self.segments.load(Ordering::Relaxed) > 0;
            out.gauge(
                "lockstep_analysis_content_info",
                "Content type of the last segment.",
                &[("channel", channel), ("content", c.name())],
                metrics::flag(on),
            );
        }
    }
}

struct Open {
    index: i64,
    next_frame: i64,
    acc: SegmentAccumulator,
}

/// Analyses frames in timeline order and reports finished segments.
#[derive(Debug)]
pub struct Analyzer {
    grid: Grid,
    video: VideoAnalyzer,
    audio: Option<AudioAnalyzer>,
    windows: Vec<AudioWindow>,
    open: Option<Open>,
    last_picture: Option<i64>,
    started: bool,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Open(segment {}, next frame {})", self.index, self.next_frame)
    }
}

impl Analyzer {
    /// A stage for pictures of `width`×`height` and `audio_channels`
    /// interleaved channels (0 = no audio) on `grid`.
    pub fn new(grid: Grid, width: u32, height: u32, audio_channels: u16) -> Self {
        Self {
            grid,
            video: VideoAnalyzer::new(width, height),
            audio: (audio_channels > 0).then(|| AudioAnalyzer::new(audio_channels)),
            windows: Vec::new(),
            open: None,
            last_picture: None,
            started: false,
        }
    }

    /// Takes frame `frame` (analysing its picture only if `picture`) and
    /// returns the segments it completed: the previous one when the frame
    /// starts a new segment, and its own when it is the segment's last.
    pub fn frame(&mut self, frame: &FrameRef, picture: bool, out: &mut Vec<SegmentReport>) {
        let n = frame.meta().number;
        let s = self.grid.segment_of(n);
        if let Some(mut done) = self.open.take_if(|o| o.index != s) {
            // Its last frames never reached the stage.
            done.acc.skip(u32::try_from(self.grid.first_frame(done.index + 1) - done.next_frame).unwrap_or(0));
            out.push(self.report(done));
        }
        // The first segment may be joined in the middle; later ones start
        // at their first frame, and frames before `n` were lost.
        let first = if self.started { self.grid.first_frame(s) } else { self.grid.first_frame(s).max(n) };
        self.started = true;
        let open =
            self.open.get_or_insert_with(|| Open { index: s, next_frame: first, acc: SegmentAccumulator::default() });
        // Frames that never reached the stage (a full queue) count as skipped.
        open.acc.skip(u32::try_from(n - open.next_frame).unwrap_or(0));
        open.next_frame = n + 1;
        if let Some(audio) = &mut self.audio {
            self.windows.clear();
            audio.push(frame.audio(), &mut self.windows);
            open.acc.add_audio(&self.windows);
        }
        if picture && let Some(luma) = crate::analysis::luma_view(frame) {
            let gap = self.last_picture.map_or(1, |p| u32::try_from(n - p).unwrap_or(1).max(1));
            let features = self.video.analyse_after(luma, gap);
            open.acc.add(n, &features);
            self.last_picture = Some(n);
        } else {
            open.acc.skip(1);
        }
        if n + 1 == self.grid.first_frame(s + 1)
            && let Some(done) = self.open.take()
        {
            out.push(self.report(done));
        }
    }

    /// Reports the segment still open (end of input), if any.
    pub fn finish(&mut self) -> Option<SegmentReport> {
        let open = self.open.take()?;
        Some(self.report(open))
    }

    fn report(&self, open: Open) -> SegmentReport {
        let first_frame = self.grid.first_frame(open.index);
        SegmentReport {
            index: open.index,
            first_frame,
            timecode: Timecode(self.grid.rate, first_frame).to_string(),
            analysis: open.acc.finish(),
        }
    }
}

/// Chooses the subsampling step from the analysis queue's backlog: double
/// it when the queue is nearly full, halve it once a whole segment went by
/// with the queue (almost) empty.
#[derive(Debug, Clone)]
pub struct Subsampler {
    capacity: usize,
    step: u32,
    max_backlog: usize,
}

impl Subsampler {
    /// For a queue of `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(2), step: 1, max_backlog: 0 }
    }

    /// Current step.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// Whether frame `n` gets its picture analysed, given the backlog seen
    /// when it was taken from the queue.
    pub fn take(&mut self, n: i64, backlog: usize) -> bool {
        self.max_backlog = self.max_backlog.max(backlog);
        if backlog + 1 >= self.capacity && self.step < MAX_STEP {
            self.step *= 2;
            tracing::warn!(step = self.step, "content analysis behind; analysing every {}th picture", self.step);
        }
        n.rem_euclid(i64::from(self.step)) == 0
    }

    /// Called at each segment end.
    pub fn segment_done(&mut self) {
        if self.step > 1 && self.max_backlog <= 1 {
            self.step /= 2;
            tracing::info!(step = self.step, "content analysis catching up");
        }
        self.max_backlog = 0;
    }
}

/// Runs the stage over a queue of frames until it closes; every report is
/// handed to `report` (manifest, broadcast) and counted in `metrics`.
/// `capacity` is the queue's size for subsampling; 0 analyses every frame
/// (the sender waits instead).
pub fn run(
    mut analyzer: Analyzer,
    rx: crossbeam_channel::Receiver<FrameRef>,
    capacity: usize,
    metrics: &AnalysisMetrics,
    mut report: impl FnMut(SegmentReport),
) {
    let mut sub = Subsampler::new(capacity);
    let mut out = Vec::new();
    for frame in &rx {
        let picture = capacity == 0 || sub.take(frame.meta().number, rx.len());
        metrics.subsample_step.store(sub.step(), Ordering::Relaxed);
        analyzer.frame(&frame, picture, &mut out);
        drop(frame);
        let counter = if picture { &metrics.frames_analysed } else { &metrics.frames_skipped };
        counter.fetch_add(1, Ordering::Relaxed);
        for r in out.drain(..) {
            sub.segment_done();
            metrics.record(&r);
            report(r);
        }
    }
    if let Some(r) = analyzer.finish() {
        metrics.record(&r);
        report(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};
    use crate::timeline::Rate;

    fn grid() -> Grid {
        Grid { rate: Rate { num: 25, den: 1 }, frames_per_segment: 10, sample_rate: 48_000, audio_frame: 960 }
    }

    fn frames(pool: &std::sync::Arc<FramePool>, numbers: impl Iterator<Item = i64>) -> Vec<FrameRef> {
        numbers
            .map(|n| {
                let mut w = pool.acquire();
                w.buffers().y.fill((n * 7 % 200) as u8);
                w.buffers().audio.fill(1000);
                w.publish(FrameMeta { number: n, audio_len: 1920 * 2, captured_tai_ns: 0, passed_over: false })
            })
            .collect()
    }

    #[test]
    fn segments_are_reported_on_their_last_frame_with_skips_counted() {
        let layout = FrameLayout { width: 64, height: 32, audio_channels: 2, max_audio_samples: 1920 };
        let pool = FramePool::new(layout, 40);
        let mut a = Analyzer::new(grid(), 64, 32, 2);
        let mut out = Vec::new();
        // Frames 5..=39 minus 12, 13, 29, 30 (lost), pictures of odd frames not analysed.
        for f in frames(&pool, (5..40).filter(|n| !(12..14).contains(n) && !(29..31).contains(n))) {
            let n = f.meta().number;
            a.frame(&f, n % 2 == 0, &mut out);
            if n == 9 {
                assert_eq!(out.len(), 1, "segment 0 ends at frame 9");
            }
        }
        assert!(a.finish().is_none(), "frame 39 closed segment 3");
        let idx: Vec<i64> = out.iter().map(|r| r.index).collect();
        assert_eq!(idx, [0, 1, 2, 3]);
        let seen = |i: usize| out[i].analysis.frames + out[i].analysis.frames_skipped;
        assert_eq!((seen(2), seen(3)), (10, 10), "lost frames at a segment's end and start count as skipped");
        assert_eq!(out[1].first_frame, 10);
        assert_eq!(out[1].analysis.frames, 4, "10, 14, 16, 18");
        assert_eq!(out[1].analysis.frames_skipped, 6, "11, 12, 13, 15, 17, 19");
        assert_eq!(out[0].analysis.frames + out[0].analysis.frames_skipped, 5, "joined at frame 5");
        let windows: u32 = out.iter().filter_map(|r| r.analysis.audio.as_ref()).map(|a| a.windows).sum();
        assert_eq!(windows, 12, "31 frames of 40 ms = 1.24 s = twelve 100 ms windows");
        let audio = out[1].analysis.audio.as_ref().expect("audio");
        assert!(audio.silence == 0.0 && audio.loudness_dbfs < -20.0);
        assert_eq!(out[1].timecode, "00:00:00:10");
    }

    #[test]
    fn subsampling_follows_the_backlog() {
        let mut s = Subsampler::new(8);
        assert!(s.take(1, 0) && s.take(2, 3));
        assert!(!s.take(3, 7), "queue full: step 2, odd frames skipped");
        assert_eq!(s.step(), 2);
        s.take(4, 7);
        assert_eq!(s.step(), 4);
        s.take(5, 7);
        assert_eq!(s.step(), MAX_STEP, "never beyond the maximum");
        s.segment_done();
        assert_eq!(s.step(), 4, "a busy segment keeps the step");
        s.take(8, 0);
        s.segment_done();
        assert_eq!(s.step(), 2);
        s.segment_done();
        assert_eq!(s.step(), 1);
    }

    #[test]
    fn metrics_render_as_prometheus_text() {
        let m = AnalysisMetrics::default();
        m.frames_analysed.store(10, Ordering::Relaxed);
        let mut e = Exposition::new();
        m.export("news", &mut e);
        let text = e.render();
        assert!(text.contains("lockstep_analysis_frames_total{channel=\"news\"} 10"), "{text}");
        assert!(!text.contains("loudness"), "no audio yet: NaN gauges are left out: {text}");
        assert!(text.lines().all(|l| l.starts_with('#') || l.split(' ').count() == 2), "{text}");
    }
}

#[cfg(test)]
mod programme {
    use super::*;
    use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};
    use crate::capture::testsrc::{Section, TestSource, section_at};
    use crate::timeline::Rate;

    /// Held-out check of the content-type rules (designed on lavfi clips):
    /// the built-in programme's sections, 2 s segments at 640x360.
    #[test]
    fn the_test_programme_is_labelled_by_section() {
        let rate = Rate { num: 25, den: 1 };
        let grid = Grid { rate, frames_per_segment: 50, sample_rate: 48_000, audio_frame: 960 };
        let (w, h) = (640, 360);
        let pool = FramePool::new(FrameLayout { width: w, height: h, audio_channels: 0, max_audio_samples: 0 }, 2);
        let src = TestSource::new(w, h, rate, 0);
        let mut a = Analyzer::new(grid, w, h, 0);
        let mut out = Vec::new();
        let start = 25 * 3600 * 10; // a whole minute: the programme's cycle
        for n in start..start + 25 * 60 {
            let mut wr = pool.acquire();
            src.render(n, &mut wr.buffers());
            let f = wr.publish(FrameMeta { number: n, audio_len: 0, captured_tai_ns: 0, passed_over: false });
            a.frame(&f, true, &mut out);
        }
        // The programme is rendered, so its still shot is also clean
        // graphics (either label is right there), and its field section
        // is a slow pan (1–2 px per frame) over clean graphics.
        let expected = |s: Section| match s {
            Section::Objects | Section::Field => Some(&[ContentType::Synthetic][..]),
            Section::TalkingHead => Some(&[ContentType::Static, ContentType::Synthetic][..]),
            Section::HighMotion => Some(&[ContentType::HighMotion][..]),
            Section::Cuts => Some(&[ContentType::Mixed][..]),
            Section::LowLight => None, // dark and still or moving: no single right answer
        };
        let (mut right, mut total) = (0, 0);
        for r in &out {
            let second = r.first_frame / 25;
            let (a, b) = (section_at(second), section_at(second + 1));
            let Some(want) = expected(a).filter(|_| a == b) else { continue };
            total += 1;
            right += usize::from(want.contains(&r.analysis.content));
            let x = &r.analysis;
            eprintln!(
                "{a:?}: {:?} (expected {want:?}; difference {:.2}, temporal {:.2}, motion {:.2}, flat {:.2})",
                x.content, x.difference, x.temporal, x.motion, x.flat
            );
        }
        eprintln!("test programme: {right}/{total} segments labelled as their section");
        assert!(total >= 20);
        assert!(right * 10 >= total * 9, "{right}/{total}");
    }
}
