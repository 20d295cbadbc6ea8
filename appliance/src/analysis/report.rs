//! `lockstep analyze`: content analysis of a file, without encoding.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::analysis::segment::SegmentAnalysis;
use crate::analysis::stage::Analyzer;
use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};
use crate::capture::{CaptureDevice, CaptureError, Captured, FileCapture};
use crate::timeline::Grid;

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
    /// Whether the file's audio was analysed.
    pub audio: bool,
    /// Per-segment results.
    pub segments: Vec<ReportSegment>,
}

/// Analyses `path` in segments of `segment_seconds`; `progress` is called
/// with the frame count from time to time.
pub fn analyze_file(path: &Path, segment_seconds: f64, progress: &mut dyn FnMut(u64)) -> Result<Report, CaptureError> {
    let mut device = FileCapture::open(path, false, 2)?;
    let format = device.format();
    let seg_frames = (segment_seconds * format.rate.fps()).round().max(1.0) as u32;
    let grid = Grid { rate: format.rate, frames_per_segment: seg_frames, sample_rate: 48_000, audio_frame: 960 };
    let max_audio_samples = (48_000 * u64::from(format.rate.den)).div_ceil(u64::from(format.rate.num)) as usize + 1;
    let layout = FrameLayout {
        width: format.width,
        height: format.height,
        audio_channels: format.audio_channels,
        max_audio_samples,
    };
    let pool = FramePool::new(layout, 1);
    let mut analyzer = Analyzer::new(grid, format.width, format.height, format.audio_channels);
    let mut reports = Vec::new();
    device.start()?;
    let mut n: i64 = 0;
    let mut last_report = Instant::now();
    loop {
        let mut writer = pool.acquire();
        let first_sample = format.rate.audio_sample_at(n, 48_000);
        let samples = usize::try_from(format.rate.audio_sample_at(n + 1, 48_000) - first_sample).unwrap_or(0);
        match device.read(n, first_sample, samples, &mut writer.buffers())? {
            Captured::End => break,
            Captured::Frame => {}
        }
        let audio_len = samples * usize::from(format.audio_channels);
        let frame = writer.publish(FrameMeta { number: n, audio_len, captured_tai_ns: 0, passed_over: false });
        analyzer.frame(&frame, true, &mut reports);
        n += 1;
        if last_report.elapsed().as_millis() >= 250 {
            progress(n as u64);
            last_report = Instant::now();
        }
    }
    device.stop();
    reports.extend(analyzer.finish());
    progress(n as u64);
    let segments: Vec<ReportSegment> = reports
        .into_iter()
        .map(|r| ReportSegment {
            index: u64::try_from(r.index).unwrap_or(0),
            first_frame: r.first_frame,
            start_s: r.first_frame as f64 / format.rate.fps(),
            analysis: r.analysis,
        })
        .collect();
    Ok(Report {
        input: path.display().to_string(),
        width: format.width,
        height: format.height,
        fps: format.rate.fps(),
        frames: n as u64,
        segment_frames: seg_frames,
        scene_cuts: segments.iter().flat_map(|s| s.analysis.scene_cuts.iter().copied()).collect(),
        audio: format.audio_channels > 0,
        segments,
    })
}

/// The report as CSV, one line per segment.
pub fn to_csv(report: &Report) -> String {
    let mut s = String::from(
        "segment,first_frame,start_s,frames,complexity,spatial,temporal,motion,motion_variance,mean_luma,low_light,noise,content,confidence,scene_cuts,loudness_dbfs,silence,spectral_flux,mix_complexity,audio_complexity\n",
    );
    for seg in &report.segments {
        let a = &seg.analysis;
        let cuts: Vec<String> = a.scene_cuts.iter().map(i64::to_string).collect();
        let content = a.content.name();
        s.push_str(&format!(
            "{},{},{:.3},{},{:.4},{:.3},{:.3},{:.3},{:.3},{:.2},{:.2},{:.3},{},{:.2},{},{}\n",
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
            cuts.join(" "),
            a.audio.as_ref().map_or(",,,,".into(), |au| format!(
                "{:.2},{:.2},{:.4},{:.3},{:.3}",
                au.loudness_dbfs, au.silence, au.flux, au.mix_complexity, au.complexity
            ))
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
    s.push_str(
        "segment   start(s)  complexity  spatial  temporal  motion  content      conf  audio(dBFS, cplx)  cuts\n",
    );
    for seg in &report.segments {
        let a = &seg.analysis;
        let content = a.content.name();
        s.push_str(&format!(
            "{:>7}  {:>9.2}  {:>10.3}  {:>7.2}  {:>8.2}  {:>6.2}  {:<11}  {:>4.2}  {:>17}  {:?}\n",
            seg.index,
            seg.start_s,
            a.complexity,
            a.spatial,
            a.temporal,
            a.motion,
            content,
            a.confidence,
            a.audio.as_ref().map_or("-".into(), |au| format!("{:.1}, {:.2}", au.loudness_dbfs, au.complexity)),
            a.scene_cuts
        ));
    }
    s
}
