//! `lockstep analyze`: content analysis of a file, without encoding.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::analysis::segment::{SegmentAccumulator, SegmentAnalysis};
use crate::analysis::video::VideoAnalyzer;
use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};
use crate::capture::{CaptureDevice, CaptureError, Captured, FileCapture};

/// One segment of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSegment {
    /// Segment number from the start of the file.
    pub index: u64,
    /// First frame (from the start of the file).
    pub first_frame: i64,
    /// Start time in seconds from the start of the file.
    pub start_s: f64,
    /// The analysis.
    #[serde(flatten)]
    pub analysis: SegmentAnalysis,
}

/// Analysis of a whole file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// File analysed.
    pub input: String,
    /// Picture size.
    pub width: u32,
    /// Picture size.
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
    /// Frames analysed.
    pub frames: u64,
    /// Frames per segment.
    pub segment_frames: u32,
    /// Every scene cut (frame numbers from the start of the file).
    pub scene_cuts: Vec<i64>,
    /// Per-segment results.
    pub segments: Vec<ReportSegment>,
}

/// Analyses `path` in segments of `segment_seconds`; `progress` is called
/// with the frame count from time to time.
pub fn analyze_file(path: &Path, segment_seconds: f64, progress: &mut dyn FnMut(u64)) -> Result<Report, CaptureError> {
    let mut device = FileCapture::open(path, false, 0)?;
    let format = device.format();
    let seg_frames = (segment_seconds * format.rate.fps()).round().max(1.0) as u32;
    let layout = FrameLayout { width: format.width, height: format.height, audio_channels: 0, max_audio_samples: 0 };
    let pool = FramePool::new(layout, 1);
    let mut analyzer = VideoAnalyzer::new(format.width, format.height);
    let mut acc = SegmentAccumulator::default();
    let mut segments = Vec::new();
    let mut cuts = Vec::new();
    device.start()?;
    let mut n: i64 = 0;
    let mut last_report = Instant::now();
    let finish = |acc: &SegmentAccumulator, n: i64, segments: &mut Vec<ReportSegment>| {
        let index = segments.len() as u64;
        let first_frame = index as i64 * i64::from(seg_frames);
        debug_assert!(first_frame < n);
        segments.push(ReportSegment {
            index,
            first_frame,
            start_s: first_frame as f64 / format.rate.fps(),
            analysis: acc.finish(),
        });
    };
    loop {
        let mut writer = pool.acquire();
        match device.read(n, 0, 0, &mut writer.buffers())? {
            Captured::End => break,
            Captured::Frame => {}
        }
        let frame = writer.publish(FrameMeta { number: n, audio_len: 0, captured_tai_ns: 0 });
        let f = crate::analysis::luma_view(&frame).map(|v| analyzer.analyse(v)).unwrap_or_default();
        if f.scene_cut {
            cuts.push(n);
        }
        acc.add(n, &f);
        n += 1;
        if n % i64::from(seg_frames) == 0 {
            finish(&acc, n, &mut segments);
            acc = SegmentAccumulator::default();
        }
        if last_report.elapsed().as_millis() >= 250 {
            progress(n as u64);
            last_report = Instant::now();
        }
    }
    device.stop();
    if n % i64::from(seg_frames) != 0 {
        finish(&acc, n, &mut segments);
    }
    progress(n as u64);
    Ok(Report {
        input: path.display().to_string(),
        width: format.width,
        height: format.height,
        fps: format.rate.fps(),
        frames: n as u64,
        segment_frames: seg_frames,
        scene_cuts: cuts,
        segments,
    })
}

/// The report as CSV, one line per segment.
pub fn to_csv(report: &Report) -> String {
    let mut s = String::from(
        "segment,first_frame,start_s,frames,complexity,spatial,temporal,motion,motion_variance,mean_luma,low_light,noise,content,confidence,scene_cuts\n",
    );
    for seg in &report.segments {
        let a = &seg.analysis;
        let cuts: Vec<String> = a.scene_cuts.iter().map(i64::to_string).collect();
        let content =
            serde_json::to_value(a.content).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        s.push_str(&format!(
            "{},{},{:.3},{},{:.4},{:.3},{:.3},{:.3},{:.3},{:.2},{:.2},{:.3},{},{:.2},{}\n",
            seg.index,
            seg.first_frame,
            seg.start_s,
            a.frames,
            a.complexity,
            a.spatial,
            a.temporal,
            a.motion,
            a.motion_variance,
            a.mean_luma,
            a.low_light,
            a.noise,
            content,
            a.confidence,
            cuts.join(" ")
        ));
    }
    s
}

/// The report as a readable table.
pub fn to_table(report: &Report) -> String {
    let mut s = format!(
        "{}: {}x{} @ {:.3} fps, {} frames, {} scene cuts\n",
        report.input,
        report.width,
        report.height,
        report.fps,
        report.frames,
        report.scene_cuts.len()
    );
    s.push_str("segment   start(s)  complexity  spatial  temporal  motion  content      conf  cuts\n");
    for seg in &report.segments {
        let a = &seg.analysis;
        let content =
            serde_json::to_value(a.content).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        s.push_str(&format!(
            "{:>7}  {:>9.2}  {:>10.3}  {:>7.2}  {:>8.2}  {:>6.2}  {:<11}  {:>4.2}  {:?}\n",
            seg.index, seg.start_s, a.complexity, a.spatial, a.temporal, a.motion, content, a.confidence, a.scene_cuts
        ));
    }
    s
}
