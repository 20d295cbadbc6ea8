//! One channel's data plane: capture → analysis → encode → package.
//!
//! Threads: capture (paced by the media clock), fingerprint, content
//! analysis (beside the encoders, never blocking them), one encoder per
//! rendition, one audio encoder, one packager. Frames move between them as
//! pool indices over bounded channels; a slow stage applies back-pressure
//! to capture instead of growing memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use crossbeam_channel::{Sender, bounded};
use lockstep_encoder_api::{AudioEncoder, AudioSettings, EncodeError, VideoEncoderFactory, VideoSettings};

use crate::analysis::stage::{self, AnalysisMetrics, Analyzer, SegmentReport};
use crate::capture::pool::{FrameLayout, FrameMeta, FramePool, FrameRef};
use crate::capture::{CaptureDevice, CaptureError, Captured, Delivery, FileCapture, FramePath, TestCapture};
use crate::clock::{Clock, ClockError, MediaClock};
use crate::config::{Config, Pacing, SourceKind};
use crate::encode::{self, AudioJob, VideoJob, Work, WorkerError};
use crate::handover::Handover;
use crate::package::store::StoreError;
use crate::package::{self, Packager, PackagerConfig, PackagerStats, TrackId, TrackSpec};
use crate::sync::lock;
use crate::timeline::Grid;

/// Why a channel could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration does not fit the source.
    #[error("config: {0}")]
    Config(String),
    /// The source failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The output directory cannot be used.
    #[error("output: {0}")]
    Output(#[from] StoreError),
    /// An encoder failed.
    #[error(transparent)]
    Encode(#[from] WorkerError),
    /// An encoder could not be opened.
    #[error("encoder: {0}")]
    Encoder(#[from] EncodeError),
    /// The media clock could not start.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A pipeline thread died.
    #[error("internal: pipeline thread `{0}` panicked")]
    Panic(&'static str),
}

/// When to stop, besides end of input.
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    /// Stop after this many frames.
    pub frames: Option<u64>,
    /// Stop after this many seconds of media, rounded up to a segment boundary.
    pub duration_s: Option<f64>,
    /// Set to stop (Ctrl-C).
    pub stop: Option<Arc<AtomicBool>>,
    /// Live sources: begin with this segment, waiting for the media clock
    /// to reach it, instead of the next boundary (a handover's successor).
    pub start_segment: Option<i64>,
    /// This run's end, which the supervisor may schedule for a handover.
    pub handover: Option<Arc<Handover>>,
    /// The run this one takes over from: its packager is adopted before
    /// the first segment is written.
    pub predecessor: Option<Arc<Handover>>,
    /// Where `duration_s` runs out for the daemon as a whole (media time,
    /// TAI ns): set by its first live run, kept to by every later run (a
    /// handover's successor, a restart), so the daemon's duration counts
    /// from its start.
    pub daemon_end: Option<Arc<std::sync::OnceLock<i128>>>,
}

/// Longest a successor waits for its predecessor's packager.
const ADOPT_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Frames the analysis stage may queue.
const ANALYSIS_QUEUE: usize = 4;

impl Taps {
    /// The channel's per-segment figures as Prometheus text (analysis,
    /// packager, media clock): what `metrics.prom` holds and `/metrics`
    /// serves, rendered from the same counters by this one function.
    pub fn render_metrics(&self, channel: &str) -> String {
        let mut text = String::new();
        self.metrics.render(channel, &mut text);
        if let Some(stats) = lock(&self.status.packaged).as_ref() {
            stats.render(channel, &mut text);
        }
        if let Some(quality) = lock(&self.status.clock).as_ref() {
            quality.render(channel, &mut text);
        }
        text
    }
}

/// Who listens to a running channel besides its files.
#[derive(Debug, Clone, Default)]
pub struct Taps {
    /// Per-segment content analysis, as soon as a segment's last frame is
    /// analysed (swarm, admin API). A slow subscriber loses old reports
    /// (`RecvError::Lagged`); the data plane never waits for it.
    pub analysis: Option<tokio::sync::broadcast::Sender<Arc<SegmentReport>>>,
    /// Analysis counters.
    pub metrics: Arc<AnalysisMetrics>,
    /// Every segment as it is published (the swarm gossips the hashes).
    pub segments: Option<tokio::sync::broadcast::Sender<Arc<PublishedSegment>>>,
    /// Live status of the channel.
    pub status: Arc<ChannelStatus>,
    /// Live changes (bitrates), shared with the swarm and the admin API.
    pub control: Arc<crate::control::LiveControl>,
}

/// A segment the packager published.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedSegment {
    /// Track name (rendition or `audio`).
    pub track: String,
    /// Segment index.
    pub index: i64,
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
    /// SHA-256 of the input it was made from.
    pub input_sha256: [u8; 32],
    /// File size.
    pub bytes: u64,
    /// Media duration, seconds.
    pub duration_s: f64,
}

/// Live status of a running channel, for the swarm and the admin API.
#[derive(Debug, Default)]
pub struct ChannelStatus {
    /// Frame number last captured.
    pub frame: std::sync::atomic::AtomicI64,
    /// Segment writes that failed.
    pub write_errors: std::sync::atomic::AtomicU64,
    /// From capture of a video segment's last frame to its publication, µs.
    pub encode_latency_us: std::sync::atomic::AtomicU64,
    /// Media clock quality, refreshed every segment.
    pub clock: std::sync::Mutex<Option<crate::clock::ClockQuality>>,
    /// The packager's figures, refreshed every segment.
    pub packaged: std::sync::Mutex<Option<crate::package::PackagerStats>>,
    /// The pipeline is running.
    pub running: AtomicBool,
    /// Fingerprints of the last frames captured (the swarm compares them
    /// with its neighbours' to find frame offsets).
    pub trail: std::sync::Mutex<crate::analysis::FrameTrail>,
    /// Frames per segment of the running grid (0 before the first run).
    pub segment_frames: std::sync::atomic::AtomicU32,
    /// Frames captured since the daemon started.
    pub frames_captured: std::sync::atomic::AtomicU64,
    /// Frames skipped because capture fell behind real time.
    pub frames_dropped: std::sync::atomic::AtomicU64,
    /// Segments (every track) published since the daemon started.
    pub segments_published: std::sync::atomic::AtomicU64,
    /// Frames whose picture stayed in the device's buffer (no copy).
    pub frames_in_place: std::sync::atomic::AtomicU64,
    /// Frames converted once from the device's pixel format.
    pub frames_converted: std::sync::atomic::AtomicU64,
    /// Frames copied (a repeated picture filling a gap the device left).
    pub frames_copied: std::sync::atomic::AtomicU64,
    /// Frames stood in for by black while the input had a fault.
    pub frames_substituted: std::sync::atomic::AtomicU64,
    /// Input faults (no signal, no lock, timeouts) since the daemon started.
    pub input_faults: std::sync::atomic::AtomicU64,
    /// The input fault now, in words (None: the input is good).
    pub input_fault: std::sync::Mutex<Option<String>>,
    /// Why the last configuration change was rolled back, if it was.
    pub config_error: std::sync::Mutex<Option<String>>,
    /// Why the channel's last run ended with an error (a channel besides
    /// the first then waits, stopped, for a start command).
    pub run_error: std::sync::Mutex<Option<String>>,
    /// The capture device failed; the daemon retries it.
    pub waiting_for_device: AtomicBool,
    /// A hang drill: the capture loop stops for this many ms, once (the
    /// systemd watchdog is expected to restart the daemon).
    pub hang_ms: std::sync::atomic::AtomicU64,
    /// A slip drill: the test source's pictures run this many frames late
    /// against their numbers (frame `n` shows picture `n - slip_frames`),
    /// from the next frame on, across runs, until changed again.
    pub slip_frames: std::sync::atomic::AtomicI64,
    /// A realignment the swarm approved: from frame `realign_at` on, the
    /// capture's numbering moves by `realign_frames` (0: none;
    /// `crate::swarm::resync`).
    pub realign_at: std::sync::atomic::AtomicI64,
    /// Frames of that realignment.
    pub realign_frames: std::sync::atomic::AtomicI64,
    /// The source as the running pipeline opened it.
    pub source: std::sync::Mutex<Option<SourceInfo>>,
    /// The ladder resolved against the source size.
    pub ladder: std::sync::Mutex<Vec<ResolvedRendition>>,
    /// The running media clock (the admin API injects faults into it).
    pub media_clock: std::sync::Mutex<Option<Arc<Clock>>>,
    /// A fault set through the admin API: replaces the configured one, and
    /// is applied again when the pipeline restarts.
    pub clock_fault: std::sync::Mutex<Option<crate::config::ClockFaultConfig>>,
}

/// The source of a running channel.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// What it is, in words.
    pub description: String,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frame rate (`num/den`).
    pub fps: String,
    /// A live source (paced by the clock) rather than a file.
    pub live: bool,
}

fn hash32(hex_text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(b) = hex::decode(hex_text)
        && b.len() == 32
    {
        out.copy_from_slice(&b);
    }
    out
}

/// What the packager thread receives.
enum ToPackager {
    Segment(package::EncodedSegment),
    Analysis(i64, crate::analysis::segment::SegmentAnalysis),
}

/// The encoders' side of the packager queue.
#[derive(Clone)]
pub struct SegmentSink(Sender<ToPackager>);

impl std::fmt::Debug for SegmentSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SegmentSink({} queued)", self.0.len())
    }
}

impl SegmentSink {
    /// Hands a segment to the packager; false once it has stopped.
    pub fn send(&self, seg: package::EncodedSegment) -> bool {
        self.0.send(ToPackager::Segment(seg)).is_ok()
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Frames captured.
    pub frames: u64,
    /// Frames the capture stage skipped because it fell behind real time.
    pub frames_dropped: u64,
    /// First frame number captured.
    pub first_frame: i64,
    /// First segment published.
    pub first_segment: i64,
    /// Per-track segments written and write errors.
    pub packager: PackagerStats,
    /// Output root of the channel.
    pub root: std::path::PathBuf,
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

/// Opens the configured source.
pub fn open_source(config: &Config) -> Result<Box<dyn CaptureDevice>, PipelineError> {
    let audio = if config.audio.enabled { config.audio.channels } else { 0 };
    Ok(match config.source.kind {
        SourceKind::Test => {
            let rate = config.source_rate().map_err(|e| PipelineError::Config(e.to_string()))?;
            Box::new(TestCapture::open(config.source.width, config.source.height, rate, audio))
        }
        SourceKind::File => {
            let path =
                config.source.path.as_deref().ok_or_else(|| PipelineError::Config("source.path missing".into()))?;
            Box::new(FileCapture::open(path, config.source.looping, audio)?)
        }
        SourceKind::V4l2 => {
            if audio > 0 {
                tracing::info!("V4L2 capture carries no audio: the channel has video only");
            }
            Box::new(crate::capture::v4l2::V4l2Capture::open(config)?)
        }
    })
}

/// The video encoder backend of the channel (`encoder.backend`). `auto`
/// takes hardware (NVENC, QSV) when it is present and usable, OpenH264
/// otherwise; a fallback is logged once with its reason.
pub fn video_factory(config: &Config) -> Arc<dyn VideoEncoderFactory> {
    backend_for(config, None)
}

/// The backend for one rendition (its own `backend`, else the channel's).
fn backend_for(config: &Config, rendition: Option<&str>) -> Arc<dyn VideoEncoderFactory> {
    let asked = rendition
        .and_then(|name| config.renditions.iter().find(|r| r.name == name))
        .and_then(|r| r.backend)
        .unwrap_or(config.encoder.backend);
    let choice = encode::backend::choose(
        asked,
        config.encoder.force_software,
        encode::backend::hardware(),
        &encode::backend::session,
    );
    if let Some(why) = &choice.fallback {
        let level_warn = asked != crate::config::Backend::Auto;
        if level_warn {
            tracing::warn!(
                rendition = rendition.unwrap_or("*"),
                asked = asked.name(),
                "{why}; using {}",
                choice.factory.name()
            );
        } else {
            tracing::info!(rendition = rendition.unwrap_or("*"), "{why}; using {}", choice.factory.name());
        }
    }
    choice.factory
}

fn open_opus(settings: &AudioSettings) -> Result<Box<dyn AudioEncoder>, EncodeError> {
    Ok(Box::new(lockstep_opus::OpusEncoder::open(settings)?))
}

/// Runs the configured channel until the source ends or a limit is hit.
pub fn run(config: &Config, limits: &RunLimits, taps: &Taps) -> Result<RunSummary, PipelineError> {
    let device = open_source(config)?;
    run_with_device(config, device, video_factory(config), limits, taps)
}

/// Runs the channel on a given device and encoder backend.
pub fn run_with_device(
    config: &Config,
    mut device: Box<dyn CaptureDevice>,
    factory: Arc<dyn VideoEncoderFactory>,
    limits: &RunLimits,
    taps: &Taps,
) -> Result<RunSummary, PipelineError> {
    let clock = Arc::new(Clock::open(&config.clock)?);
    if let Some(f) = *lock(&taps.status.clock_fault) {
        clock.fault().set(&f);
    }
    *lock(&taps.status.media_clock) = Some(Arc::clone(&clock));
    let format = device.format();
    let rate = format.rate;
    let fps_segment = (config.channel.segment_seconds * rate.fps()).round().max(1.0) as u32;
    let grid = Grid { rate, frames_per_segment: fps_segment, sample_rate: 48_000, audio_frame: 960 };
    let ladder = resolve_ladder(config, format.width, format.height);
    *lock(&taps.status.ladder) = ladder.clone();
    *lock(&taps.status.source) = Some(SourceInfo {
        description: device.describe(),
        width: format.width,
        height: format.height,
        fps: format!("{}/{}", rate.num, rate.den),
        live: format.live,
    });
    let audio_settings = (format.audio_channels > 0).then_some(AudioSettings {
        sample_rate: 48_000,
        channels: format.audio_channels,
        bitrate_bps: config.audio.bitrate_kbps * 1000,
    });
    let lookahead = match &audio_settings {
        Some(s) => open_opus(s)?.lookahead(),
        None => 0,
    };

    // Where the timeline starts: live sources join at the current frame,
    // files start at the next segment boundary so no frame of them is lost.
    let now_frame = rate.frame_at(clock.now_tai_ns()) + 1;
    let mut first_frame = match (config.source.pacing, config.source.start_frame) {
        (Pacing::Fast, Some(n)) => n,
        _ => now_frame,
    };
    if !format.live {
        first_frame = grid.first_frame(grid.next_boundary_segment(first_frame));
    }
    let audio_job = |first_segment: i64| AudioJob {
        grid,
        settings: audio_settings.unwrap_or(AudioSettings { sample_rate: 48_000, channels: 2, bitrate_bps: 96_000 }),
        warmup_packets: config.audio.warmup_packets,
        lookahead,
        first_segment,
        silence_before_start: !format.live,
        partial_at_end: !format.live,
    };
    let first_segment = if let (true, Some(s)) = (format.live, limits.start_segment) {
        // A successor: capture starts early enough for the audio warm-up of
        // segment `s`, which is the first published.
        first_frame = grid.first_frame(s);
        while audio_settings.is_some() && audio_job(s).first_input_sample(s) < rate.audio_sample_at(first_frame, 48_000)
        {
            first_frame -= 1;
        }
        s
    } else if format.live {
        let mut s = grid.next_boundary_segment(first_frame);
        let first_sample = rate.audio_sample_at(first_frame, 48_000);
        while audio_settings.is_some() && audio_job(s).first_input_sample(s) < first_sample {
            s += 1;
        }
        s
    } else {
        grid.segment_of(first_frame)
    };
    let tail = if audio_settings.is_some() { (lookahead as f64 * rate.fps() / 48_000.0).ceil() as i64 } else { 0 };
    let end_frame = stop_frame(&grid, first_frame, limits, format.live, tail);

    let root = config.output.dir.join(&config.channel.id);
    let mut specs: Vec<TrackSpec> = ladder
        .iter()
        .enumerate()
        .map(|(i, r)| TrackSpec {
            id: TrackId::Video(i),
            name: r.name.clone(),
            timescale: encode::video_timescale(&grid).0,
            size: Some((r.width, r.height)),
            bitrate_bps: u64::from(r.bitrate_bps),
            channels: 0,
            pre_skip: 0,
        })
        .collect();
    if let Some(a) = &audio_settings {
        specs.push(TrackSpec {
            id: TrackId::Audio,
            name: "audio".into(),
            timescale: 48_000,
            size: None,
            bitrate_bps: u64::from(a.bitrate_bps),
            channels: a.channels,
            pre_skip: 0,
        });
    }
    let mut packager = Packager::new(
        PackagerConfig {
            root: root.clone(),
            archive: config.output.mode == crate::config::OutputMode::Archive,
            window: config.output.window_segments as usize,
            segment_seconds: grid.segment_seconds(),
            frame_rate: rate.fps(),
            utc_tai_offset_s: clock.utc_tai_offset_s(),
            producer: config.appliance.id.clone(),
        },
        specs,
    )?;
    tracing::info!(
        source = %device.describe(),
        clock = %clock.describe(),
        renditions = %ladder.iter().map(|r| format!("{} {}x{} {}k", r.name, r.width, r.height, r.bitrate_bps / 1000)).collect::<Vec<_>>().join(", "),
        encoder = factory.name(),
        audio = audio_settings.is_some(),
        segment_frames = grid.frames_per_segment,
        first_frame,
        first_segment,
        io = ?packager.io_path(),
        output = %root.display(),
        "channel starting"
    );

    let max_audio = (48_000 * u64::from(rate.den)).div_ceil(u64::from(rate.num)) as usize + 1;
    let layout = FrameLayout {
        width: format.width,
        height: format.height,
        audio_channels: format.audio_channels,
        max_audio_samples: max_audio,
    };
    // The analysis stage may hold its queue plus the frame in hand; those
    // slots come on top of the configured pool so encoders never wait for it.
    let pool = device.frame_pool(layout, config.pipeline.pool_frames + ANALYSIS_QUEUE as u32 + 1)?;
    let depth = config.pipeline.pool_frames as usize;
    let (pkg_tx, pkg_rx) = bounded::<ToPackager>(64);
    let metrics_taps = taps.clone();
    let channel_id = config.channel.id.clone();
    let clock_for_metrics = Arc::clone(&clock);
    let (status, segment_bus) = (Arc::clone(&taps.status), taps.segments.clone());
    let rate_for_latency = rate;
    let (outgoing, mut predecessor) = (limits.handover.clone(), limits.predecessor.clone());

    let packager_thread = thread::Builder::new()
        .name("package".into())
        .spawn(move || {
            let metrics_path = packager.root().join("metrics.prom");
            for msg in pkg_rx {
                // Taking over: the predecessor's playlists and window
                // continue, so nothing is written before they arrive.
                if let Some(before) = predecessor.take() {
                    match before.take(ADOPT_WAIT) {
                        Some(old) => packager.adopt(old),
                        None => tracing::warn!("the previous run handed over no playlists; they start afresh"),
                    }
                }
                match msg {
                    ToPackager::Segment(seg) => {
                        if let Err(e) = packager.add(seg) {
                            tracing::error!("{e}; continuing, files already written are intact");
                            status.write_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    ToPackager::Analysis(index, analysis) => {
                        packager.add_analysis(index, &analysis);
                        // Metrics once a segment, next to the playlists (a
                        // Prometheus textfile for a node without the admin API).
                        *lock(&status.packaged) = Some(packager.stats());
                        *lock(&status.clock) = Some(clock_for_metrics.quality());
                        let text = metrics_taps.render_metrics(&channel_id);
                        if let Err(e) = packager.write_file(&metrics_path, text.as_bytes()) {
                            tracing::warn!("metrics: {e}");
                        }
                    }
                }
                for (track, entry) in packager.take_published() {
                    status.segments_published.fetch_add(1, Ordering::Relaxed);
                    if track != "audio" {
                        // From the capture time of the segment's last frame.
                        let last = entry.first_unit + i64::from(entry.samples.max(1)) - 1;
                        let end = rate_for_latency.frame_time_ns(last);
                        let latency = (clock_for_metrics.now_tai_ns() - end).max(0) / 1_000;
                        status.encode_latency_us.store(u64::try_from(latency).unwrap_or(0), Ordering::Relaxed);
                    }
                    if let Some(bus) = &segment_bus {
                        let _ = bus.send(Arc::new(PublishedSegment {
                            track,
                            index: entry.index,
                            sha256: hash32(&entry.sha256),
                            input_sha256: hash32(&entry.input_sha256),
                            bytes: entry.bytes,
                            duration_s: entry.duration,
                        }));
                    }
                }
            }
            let stats = packager.stats();
            match &outgoing {
                Some(h) if h.ended() => h.give(packager),
                _ => {
                    if let Err(e) = packager.finish() {
                        tracing::error!("{e}");
                    }
                    if let Some(h) = &outgoing {
                        h.abandon();
                    }
                }
            }
            stats
        })
        .map_err(|_| PipelineError::Panic("package"))?;
    let seg_tx = SegmentSink(pkg_tx.clone());

    let mut worker_txs: Vec<Sender<Work>> = Vec::new();
    let mut workers = Vec::new();
    for (i, r) in ladder.iter().enumerate() {
        let (tx, rx) = bounded::<Work>(depth);
        worker_txs.push(tx);
        let job = VideoJob {
            position: i,
            name: r.name.clone(),
            settings: VideoSettings {
                width: r.width,
                height: r.height,
                fps_num: rate.num,
                fps_den: rate.den,
                bitrate_bps: r.bitrate_bps,
                gop_frames: grid.frames_per_segment,
            },
            grid,
            first_segment,
            partial_at_end: !format.live,
            control: Arc::clone(&taps.control),
        };
        let out = seg_tx.clone();
        let own_backend = config.renditions.iter().any(|c| c.name == r.name && c.backend.is_some());
        let factory = if own_backend { backend_for(config, Some(&r.name)) } else { Arc::clone(&factory) };
        workers.push(
            thread::Builder::new()
                .name(format!("encode-{}", r.name))
                .spawn(move || encode::run_video(job, factory.as_ref(), rx, out))
                .map_err(|_| PipelineError::Panic("encode"))?,
        );
    }
    if audio_settings.is_some() {
        let (tx, rx) = bounded::<Work>(depth);
        worker_txs.push(tx);
        let job = audio_job(first_segment);
        let out = seg_tx.clone();
        workers.push(
            thread::Builder::new()
                .name("encode-audio".into())
                .spawn(move || encode::run_audio(job, &open_opus, rx, out))
                .map_err(|_| PipelineError::Panic("encode"))?,
        );
    }
    drop(seg_tx);

    let realtime = config.source.pacing == Pacing::Realtime;
    // Content analysis beside the encoders: frames are lent to it through a
    // short queue that never blocks; a full queue or a slow stage means
    // pictures left out, counted in the metrics and the segment's analysis.
    let (ana_tx, ana_rx) = bounded::<FrameRef>(ANALYSIS_QUEUE);
    let successor = limits.start_segment.is_some();
    let analyzer = Analyzer::new(grid, format.width, format.height, format.audio_channels);
    let (metrics, bus) = (Arc::clone(&taps.metrics), taps.analysis.clone());
    let analysis = thread::Builder::new()
        .name("analysis".into())
        .spawn(move || {
            stage::run(analyzer, ana_rx, if realtime { ANALYSIS_QUEUE } else { 0 }, &metrics, |report| {
                if successor && report.index < first_segment {
                    return; // warm-up frames of a successor: the predecessor reported that segment
                }
                let _ = pkg_tx.send(ToPackager::Analysis(report.index, report.analysis.clone()));
                if let Some(bus) = &bus {
                    let _ = bus.send(Arc::new(report)); // no subscriber is not an error
                }
            });
        })
        .map_err(|_| PipelineError::Panic("analysis"))?;

    // The fingerprint (input hash, part of the timeline contract) runs in
    // line: every encoder needs it.
    let (cap_tx, cap_rx) = bounded::<FrameRef>(depth);
    let skipped = Arc::clone(&taps.metrics);
    let status = Arc::clone(&taps.status);
    // A successor's warm-up frames are the predecessor's to report.
    let trail_from = if successor { first_segment * i64::from(grid.frames_per_segment) } else { i64::MIN };
    let fingerprint = thread::Builder::new()
        .name("fingerprint".into())
        .spawn(move || {
            for frame in cap_rx {
                let hash = crate::analysis::fingerprint(&frame);
                let number = frame.meta().number;
                if number >= trail_from {
                    lock(&status.trail).push(number, crate::analysis::short_fingerprint(&hash));
                }
                // Real time: never wait for analysis. Files and fast runs:
                // analyse every frame, the result is the same on every run.
                if !realtime {
                    let _ = ana_tx.send(frame.clone());
                } else if ana_tx.try_send(frame.clone()).is_err() {
                    skipped.frames_skipped.fetch_add(1, Ordering::Relaxed);
                }
                for tx in &worker_txs {
                    if tx.send(Work::Frame { frame: frame.clone(), hash }).is_err() {
                        return;
                    }
                }
            }
            for tx in &worker_txs {
                let _ = tx.send(Work::End);
            }
        })
        .map_err(|_| PipelineError::Panic("fingerprint"))?;

    let stop = limits.stop.clone().unwrap_or_default();
    let mut n = first_frame;
    let mut frames = 0u64;
    let mut dropped = 0u64;
    let mut capture_result = device.start();
    taps.status.segment_frames.store(grid.frames_per_segment, Ordering::Relaxed);
    taps.status.running.store(capture_result.is_ok(), Ordering::Relaxed);
    // After every other thread and child process exists: they must not
    // inherit the real-time policy.
    if config.pipeline.realtime && capture_result.is_ok() {
        crate::rt::enter_realtime();
    }
    let mut paced = format.device_paced.then(DevicePacing::default);
    let handed_over = |n: i64| limits.handover.as_ref().is_some_and(|h| h.ends_at(n));
    while capture_result.is_ok()
        && !stop.load(Ordering::Relaxed)
        && end_frame.is_none_or(|end| n < end)
        && !handed_over(n)
    {
        if let Some(state) = paced.as_mut() {
            hang_drill(&taps.status);
            let delivery = match device.deliver(&pool) {
                Ok(delivery) => delivery,
                Err(e) => {
                    capture_result = Err(e);
                    break;
                }
            };
            // Past the end or the handover: the frame is not sent, and the
            // loop condition ends the run.
            let mut downstream_gone = false;
            let mut emit = |frame: FrameRef| {
                let number = frame.meta().number;
                if end_frame.is_some_and(|end| number >= end) || handed_over(number) {
                    return false;
                }
                taps.status.frame.store(number, Ordering::Relaxed);
                taps.status.frames_captured.fetch_add(1, Ordering::Relaxed);
                if cap_tx.send(frame).is_err() {
                    downstream_gone = true;
                    return false;
                }
                frames += 1;
                true
            };
            state.place(delivery, &mut n, &pool, &clock, rate, &taps.status, &mut emit);
            if downstream_gone {
                break;
            }
            continue;
        }
        if realtime {
            let due = rate.frame_time_ns(n);
            clock.sleep_until(due);
            // More than a segment behind real time: rejoin at the present.
            let now = rate.frame_at(clock.now_tai_ns());
            if format.live && now - n > i64::from(grid.frames_per_segment) {
                dropped += u64::try_from(now - n).unwrap_or(0);
                taps.status.frames_dropped.fetch_add(u64::try_from(now - n).unwrap_or(0), Ordering::Relaxed);
                tracing::warn!(behind = now - n, "capture fell behind real time; frames dropped");
                n = now;
            }
        }
        hang_drill(&taps.status);
        let mut writer = pool.acquire();
        // The picture (and its sound) the source gives for frame n: picture
        // n, unless a slip drill shifted it or a realignment moved it back.
        realign(&taps.status, n);
        let picture = n - taps.status.slip_frames.load(Ordering::Relaxed);
        let first_sample = rate.audio_sample_at(picture, 48_000);
        let samples = usize::try_from(rate.audio_sample_at(picture + 1, 48_000) - first_sample).unwrap_or(0);
        match device.read(picture, first_sample, samples, &mut writer.buffers()) {
            Ok(Captured::Frame) => {}
            Ok(Captured::End) => break,
            Err(e) => {
                capture_result = Err(e);
                break;
            }
        }
        let audio_len = if format.audio_channels > 0 { samples * usize::from(format.audio_channels) } else { 0 };
        let frame = writer.publish(FrameMeta { number: n, audio_len, captured_tai_ns: clock.now_tai_ns() });
        taps.status.frame.store(n, Ordering::Relaxed);
        taps.status.frames_captured.fetch_add(1, Ordering::Relaxed);
        if cap_tx.send(frame).is_err() {
            break; // a downstream stage stopped; its error is reported below
        }
        frames += 1;
        n += 1;
    }
    device.stop();
    if !limits.handover.as_ref().is_some_and(|h| h.ended()) {
        taps.status.running.store(false, Ordering::Relaxed); // else the successor runs
    }
    drop(cap_tx);
    fingerprint.join().map_err(|_| PipelineError::Panic("fingerprint"))?;
    analysis.join().map_err(|_| PipelineError::Panic("analysis"))?;
    let mut worker_error = None;
    for w in workers {
        match w.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => worker_error = worker_error.or(Some(e)),
            Err(_) => return Err(PipelineError::Panic("encode")),
        }
    }
    let stats = packager_thread.join().map_err(|_| PipelineError::Panic("package"))?;
    if let Some(e) = worker_error {
        return Err(e.into());
    }
    capture_result?;
    Ok(RunSummary { frames, frames_dropped: dropped, first_frame, first_segment, packager: stats, root })
}

/// A hang drill asked for through the API: the capture loop stops here.
/// Applies the realignment the swarm approved once frame `n` reaches its
/// boundary: the picture numbered `m` before is numbered `m + frames`
/// from then on.
fn realign(status: &ChannelStatus, n: i64) {
    let at = status.realign_at.load(Ordering::Relaxed);
    if at != 0 && n >= at && status.realign_at.swap(0, Ordering::Relaxed) == at {
        let frames = status.realign_frames.load(Ordering::Relaxed);
        let slip = status.slip_frames.fetch_add(frames, Ordering::Relaxed) + frames;
        tracing::info!(frame = n, frames, slip, "capture realigned with the swarm's majority");
    }
}

fn hang_drill(status: &ChannelStatus) {
    let hang_ms = status.hang_ms.swap(0, Ordering::Relaxed);
    if hang_ms > 0 {
        tracing::warn!(ms = hang_ms, "hang drill: the capture loop stops");
        std::thread::sleep(std::time::Duration::from_millis(hang_ms));
    }
}

/// Frame numbers for a device that paces itself: each buffer's capture
/// time, mapped onto the media clock, says which frame of the timeline it
/// is. Small jitter keeps the running count; a jump of two frames or more
/// resynchronises (a gap is filled by repeating the last picture, a frame
/// ahead of the timeline is dropped). While the input has a fault, black
/// frames stand in so every segment of the timeline still completes.
#[derive(Default)]
struct DevicePacing {
    last: Option<FrameRef>,
    fault: bool,
}

impl DevicePacing {
    /// Turns one delivery into the frames to publish, advancing `n` (the
    /// next frame number), and hands each to `emit` as soon as it is made:
    /// a gap can be longer than the pool has free slots, and frames held
    /// back here would wait for slots only they occupy. When `emit` refuses
    /// a frame (past the run's end, or downstream gone) it returns `false`.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        delivery: Delivery,
        n: &mut i64,
        pool: &Arc<FramePool>,
        clock: &Clock,
        rate: crate::timeline::Rate,
        status: &ChannelStatus,
        emit: &mut dyn FnMut(FrameRef) -> bool,
    ) -> bool {
        let meta = |number| FrameMeta { number, audio_len: 0, captured_tai_ns: clock.now_tai_ns() };
        match delivery {
            Delivery::Fault(why) => {
                if !self.fault {
                    self.fault = true;
                    status.input_faults.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("input fault: {why}; black frames stand in until the signal is back");
                }
                *lock(&status.input_fault) = Some(why);
                // Every frame due by now, so the timeline keeps moving.
                let now = rate.frame_at(clock.now_tai_ns());
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
                let age = (crate::capture::v4l2::monotonic_ns() - captured_mono_ns).max(0);
                let tai = clock.now_tai_ns() - age;
                // The nearest frame slot of the timeline.
                let nearest = rate.frame_at(tai);
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
                    for _ in 0..ahead {
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
                        if !emit(w.publish(meta(number))) {
                            return false;
                        }
                    }
                }
                match path {
                    FramePath::InPlace => status.frames_in_place.fetch_add(1, Ordering::Relaxed),
                    FramePath::Converted => status.frames_converted.fetch_add(1, Ordering::Relaxed),
                };
                let frame = writer.publish(FrameMeta { number: *n, audio_len: 0, captured_tai_ns: tai });
                *n += 1;
                self.last = Some(frame.clone());
                emit(frame)
            }
        }
    }
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
    use super::*;
    use crate::capture::v4l2::monotonic_ns;
    use crate::timeline::Rate;

    const RATE: Rate = Rate { num: 25, den: 1 };

    fn setup() -> (Arc<FramePool>, Clock, ChannelStatus) {
        let layout = FrameLayout { width: 16, height: 8, audio_channels: 0, max_audio_samples: 0 };
        (
            FramePool::new(layout, 64),
            Clock::open(&crate::config::ClockConfig::default()).unwrap(),
            ChannelStatus::default(),
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
        status: &ChannelStatus,
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
        let (pool, clock, status) = (FramePool::new(layout, 4), setup().1, ChannelStatus::default());
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
}
