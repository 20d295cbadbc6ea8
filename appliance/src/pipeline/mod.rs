//! One channel's data plane: capture → analysis → encode → package.
//!
//! Threads: capture (paced by the media clock), fingerprint, content
//! analysis (beside the encoders, never blocking them), one encoder per
//! rendition, one audio encoder, one packager. Frames move between them as
//! pool indices over bounded channels; a slow stage applies back-pressure
//! to capture instead of growing memory.

pub mod plan;
pub mod rework;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use lockstep_encoder_api::{AudioEncoder, AudioSettings, EncodeError, VideoEncoderFactory, VideoSettings};

use crate::analysis::stage::{self, AnalysisMetrics, Analyzer, SegmentReport};
use crate::capture::pool::{FrameLayout, FrameRef};
use crate::capture::run::{CaptureLoop, CaptureStatus, Captures};
use crate::capture::{CaptureDevice, CaptureError, FileCapture, TestCapture};
use crate::clock::{Clock, ClockError, MediaClock};
use crate::config::{Config, Pacing, SourceKind};
use crate::encode::{self, VideoJob, Work, WorkerError};
use crate::handover::Handover;
use crate::metrics::{self, Exposition};
use crate::package::sink::{self, Publisher, SegmentSink};
use crate::package::store::StoreError;
use crate::package::{ManifestEntry, Packager, PackagerConfig, PackagerStats, TrackId, TrackSpec};
use crate::sync::lock;
use crate::timeline::Rate;

pub use plan::{ResolvedRendition, RunPlan, resolve_ladder};

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

/// Frames the analysis stage may queue.
const ANALYSIS_QUEUE: usize = 4;

impl Taps {
    /// Adds the channel's figures to an exposition, labelled with the
    /// channel: its state and capture counters, analysis, packager and
    /// media clock, each from the module that owns them. What `metrics.prom`
    /// holds and `/metrics` serves for the channel.
    pub fn export(&self, channel: &str, out: &mut Exposition) {
        let status = &self.status;
        let at = [("channel", channel)];
        out.gauge(
            "lockstep_channel_running",
            "1 while the channel's pipeline runs.",
            &at,
            metrics::flag(status.running.load(Ordering::Relaxed)),
        );
        status.capture.export(channel, out);
        out.gauge(
            "lockstep_encode_latency_seconds",
            "Capture of a segment's last frame to the segment ready for publication (the wait for the majority's verdict is lockstep_majority_wait_seconds).",
            &at,
            status.encode_latency_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        if let Some(s) = lock(&status.slack).summary() {
            out.gauge(
                "lockstep_deadline_slack_seconds",
                "How long before its deadline (the next segment's end) the last video segment was published; negative: late.",
                &at,
                f64::from(s.last_ms) / 1e3,
            );
            if let Some(t) = s.trend_ms_per_segment {
                out.gauge(
                    "lockstep_deadline_slack_trend_seconds",
                    "Change of the deadline slack per segment over the last 16 (least squares); negative: shrinking.",
                    &at,
                    f64::from(t) / 1e3,
                );
            }
        }
        out.counter(
            "lockstep_segments_reencoded_total",
            "Published segments replaced by a re-encode from kept input, bytes identical to the majority's.",
            &at,
            status.segments_reencoded.load(Ordering::Relaxed) as f64,
        );
        out.counter(
            "lockstep_reencodes_refused_total",
            "Re-encodes not used: the kept input or the bytes were not the majority's.",
            &at,
            status.reencodes_refused.load(Ordering::Relaxed) as f64,
        );
        out.counter(
            "lockstep_segments_corrected_before_publication_total",
            "Video segments made from other pictures than the majority's, encoded from the majority's before they were published.",
            &at,
            status.segments_corrected.load(Ordering::Relaxed) as f64,
        );
        out.counter(
            "lockstep_segments_unverified_total",
            "Video segments published without the majority's verdict on their pictures (none within swarm.majority_wait_ms).",
            &at,
            status.segments_unverified.load(Ordering::Relaxed) as f64,
        );
        out.gauge(
            "lockstep_majority_wait_seconds",
            "How long the last video segment waited for the majority's verdict on its pictures.",
            &at,
            status.verdict_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
        );
        self.metrics.export(channel, out);
        if let Some(stats) = lock(&status.packaged).as_ref() {
            stats.export(channel, out);
        }
        if let Some(quality) = lock(&status.clock).as_ref() {
            quality.export(channel, out);
        }
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
    /// What the capture loop counts and is told (drills, realignment).
    pub capture: CaptureStatus,
    /// Segment writes that failed.
    pub write_errors: std::sync::atomic::AtomicU64,
    /// From capture of a video segment's last frame to its publication, µs.
    pub encode_latency_us: std::sync::atomic::AtomicU64,
    /// Deadline slack of the recent video segments (`crate::health::slack`).
    pub slack: std::sync::Mutex<crate::health::slack::SlackHistory>,
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
    /// Segments (every track) published since the daemon started.
    pub segments_published: std::sync::atomic::AtomicU64,
    /// Why the last configuration change was rolled back, if it was.
    pub config_error: std::sync::Mutex<Option<String>>,
    /// Why the channel's last run ended with an error (a channel besides
    /// the first then waits, stopped, for a start command).
    pub run_error: std::sync::Mutex<Option<String>>,
    /// The capture device failed; the daemon retries it.
    pub waiting_for_device: AtomicBool,
    /// The source as the running pipeline opened it.
    pub source: std::sync::Mutex<Option<SourceInfo>>,
    /// The ladder resolved against the source size.
    pub ladder: std::sync::Mutex<Vec<ResolvedRendition>>,
    /// The running media clock (the admin API injects faults into it).
    pub media_clock: std::sync::Mutex<Option<Arc<Clock>>>,
    /// Re-encodes the swarm asks for go to the running rework thread
    /// through this (None while no run keeps input to re-encode from).
    pub rework: std::sync::Mutex<Option<Sender<rework::Rework>>>,
    /// Published segments (every rendition) replaced by their re-encode.
    pub segments_reencoded: std::sync::atomic::AtomicU64,
    /// An encode-latency spike drill (held segments), for every run.
    pub latency_drill: Arc<encode::LatencyDrill>,
    /// The newest segment a re-encode replaced (0: none yet).
    pub last_reencoded: std::sync::atomic::AtomicI64,
    /// The neighbours' fingerprints of the channel's recent frames (the
    /// swarm fills it; the packager's gate reads it).
    pub peer_prints: std::sync::Mutex<rework::PeerPrints>,
    /// Video segments (every rendition) held back for the majority's
    /// verdict and encoded from its pictures before publication: each one
    /// a misaligned segment no viewer saw.
    pub segments_corrected: std::sync::atomic::AtomicU64,
    /// The newest segment so corrected (0: none yet).
    pub last_corrected: std::sync::atomic::AtomicI64,
    /// Video segments published as captured because no verdict came
    /// within the hold (or the re-encode before the next segment).
    pub segments_unverified: std::sync::atomic::AtomicU64,
    /// How long the last video segment waited for the majority's verdict, µs.
    pub verdict_wait_us: std::sync::atomic::AtomicU64,
    /// Re-encodes refused: the kept pictures were not the majority's input
    /// or the bytes were not the majority's.
    pub reencodes_refused: std::sync::atomic::AtomicU64,
    /// The media clock corrections the swarm approved (every run's clock
    /// follows them).
    pub clock_trim: Arc<crate::clock::trim::Trim>,
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

/// Runs the channel on a given device and encoder backend: the plan, one
/// thread per stage (packager, encoders, analysis, fingerprint), then the
/// capture loop on this thread until the run ends, then every stage joined
/// in order so each drains what the one before it sent.
pub fn run_with_device(
    config: &Config,
    mut device: Box<dyn CaptureDevice>,
    factory: Arc<dyn VideoEncoderFactory>,
    limits: &RunLimits,
    taps: &Taps,
) -> Result<RunSummary, PipelineError> {
    let clock = Arc::new(Clock::open(&config.clock)?);
    clock.follow_trim(Arc::clone(&taps.status.clock_trim));
    if let Some(f) = *lock(&taps.status.clock_fault) {
        clock.fault().set(&f);
    }
    *lock(&taps.status.media_clock) = Some(Arc::clone(&clock));
    let format = device.format();
    let rate = format.rate;
    let lookahead = match plan::audio_settings(config, &format) {
        Some(settings) => open_opus(&settings)?.lookahead(),
        None => 0,
    };
    let plan = RunPlan::new(config, &format, rate.frame_at(clock.now_tai_ns()) + 1, lookahead, limits);
    *lock(&taps.status.ladder) = plan.ladder.clone();
    *lock(&taps.status.source) = Some(SourceInfo {
        description: device.describe(),
        width: format.width,
        height: format.height,
        fps: format!("{}/{}", rate.num, rate.den),
        live: format.live,
    });

    let root = config.output.dir.join(&config.channel.id);
    let packager = Packager::new(
        PackagerConfig {
            root: root.clone(),
            archive: config.output.mode == crate::config::OutputMode::Archive,
            window: config.output.window_segments as usize,
            segment_seconds: plan.grid.segment_seconds(),
            frame_rate: rate.fps(),
            utc_tai_offset_s: clock.utc_tai_offset_s(),
            producer: config.appliance.id.clone(),
        },
        track_specs(&plan),
    )?;
    tracing::info!(
        source = %device.describe(),
        clock = %clock.describe(),
        renditions = %plan.ladder.iter().map(|r| format!("{} {}x{} {}k", r.name, r.width, r.height, r.bitrate_bps / 1000)).collect::<Vec<_>>().join(", "),
        encoder = factory.name(),
        audio = plan.audio.is_some(),
        segment_frames = plan.grid.frames_per_segment,
        first_frame = plan.first_frame,
        first_segment = plan.first_segment,
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
    let realtime = config.source.pacing == Pacing::Realtime;

    let (sink, inbox) = sink::queue();
    let publisher = ChannelPublisher {
        taps: taps.clone(),
        channel: config.channel.id.clone(),
        clock: Arc::clone(&clock),
        rate,
        metrics_path: root.join("metrics.prom"),
        waited: std::collections::BTreeMap::new(),
    };
    // In a swarm that keeps input, video segments wait for the majority's
    // verdict on their pictures before they are published.
    let gate = (reworks(config, &plan) && config.swarm.majority_wait_ms > 0).then(|| rework::MajorityGate {
        status: Arc::clone(&taps.status),
        hold: Duration::from_millis(u64::from(config.swarm.majority_wait_ms)),
    });
    let packager_thread = spawn_packager(packager, inbox, limits, publisher, gate)?;
    let (worker_txs, workers) = spawn_encoders(config, &plan, &factory, &sink, taps)?;
    let kept = if reworks(config, &plan) {
        config.pipeline.rework_segments as usize * plan.grid.frames_per_segment as usize
    } else {
        0
    };
    let recent = Arc::new(std::sync::Mutex::new(rework::RecentInput::new(kept)));
    let (rework_tx, reworker) = spawn_rework(config, &plan, &factory, &sink, &recent, taps)?;
    let (analysis_tx, analysis) = spawn_analysis(&plan, &format, realtime, limits.start_segment.is_some(), sink, taps)?;
    // A successor's warm-up frames are the predecessor's to fingerprint.
    let trail_from = match limits.start_segment {
        Some(_) => plan.grid.first_frame(plan.first_segment),
        None => i64::MIN,
    };
    let (capture_tx, fingerprint) = spawn_fingerprint(
        config.pipeline.pool_frames as usize,
        worker_txs,
        analysis_tx,
        (realtime, trail_from),
        recent,
        taps,
    )?;

    let mut started = device.start();
    taps.status.segment_frames.store(plan.grid.frames_per_segment, Ordering::Relaxed);
    taps.status.running.store(started.is_ok(), Ordering::Relaxed);
    let mut captured = Captures { frames: 0, dropped: 0, result: Ok(()) };
    if started.is_ok() {
        // After every other thread and child process exists: they must
        // not inherit the real-time policy.
        if config.pipeline.realtime {
            crate::rt::enter_realtime();
        }
        let stop = limits.stop.clone().unwrap_or_default();
        captured = CaptureLoop {
            device: device.as_mut(),
            pool: &pool,
            clock: &clock,
            rate,
            audio_channels: format.audio_channels,
            live: format.live,
            realtime,
            device_paced: format.device_paced,
            segment_frames: plan.grid.frames_per_segment,
            first_frame: plan.first_frame,
            end_frame: plan.end_frame,
            stop: &stop,
            handover: limits.handover.as_deref(),
            status: &taps.status.capture,
        }
        .run(&capture_tx);
        started = std::mem::replace(&mut captured.result, Ok(()));
    }
    device.stop();
    if !limits.handover.as_ref().is_some_and(|h| h.ended()) {
        taps.status.running.store(false, Ordering::Relaxed); // else the successor runs
    }
    drop(capture_tx);
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
    // The rework thread ends once no sender is left: this run's own and
    // the one the swarm reaches it through (a successor's stays).
    let mut current = lock(&taps.status.rework);
    if current.as_ref().is_some_and(|tx| tx.same_channel(&rework_tx)) {
        *current = None;
    }
    drop(current);
    drop(rework_tx);
    if let Some(r) = reworker {
        r.join().map_err(|_| PipelineError::Panic("rework"))?;
    }
    let stats = packager_thread.join().map_err(|_| PipelineError::Panic("package"))?;
    if let Some(e) = worker_error {
        return Err(e.into());
    }
    started?;
    Ok(RunSummary {
        frames: captured.frames,
        frames_dropped: captured.dropped,
        first_frame: plan.first_frame,
        first_segment: plan.first_segment,
        packager: stats,
        root,
    })
}

/// One track per rendition of the plan's ladder, then audio if it has any.
fn track_specs(plan: &RunPlan) -> Vec<TrackSpec> {
    let mut specs: Vec<TrackSpec> = plan
        .ladder
        .iter()
        .enumerate()
        .map(|(i, r)| TrackSpec {
            id: TrackId::Video(i),
            name: r.name.clone(),
            timescale: encode::video_timescale(&plan.grid).0,
            size: Some((r.width, r.height)),
            bitrate_bps: u64::from(r.bitrate_bps),
            channels: 0,
            pre_skip: 0,
        })
        .collect();
    if let Some(a) = &plan.audio {
        specs.push(TrackSpec {
            id: TrackId::Audio,
            name: "audio".into(),
            timescale: plan::SAMPLE_RATE,
            size: None,
            bitrate_bps: u64::from(a.bitrate_bps),
            channels: a.channels,
            pre_skip: 0,
        });
    }
    specs
}

/// What the packager tells the channel: status and metrics once a segment,
/// every publication to the segment bus (the swarm gossips the hashes).
struct ChannelPublisher {
    taps: Taps,
    channel: String,
    clock: Arc<Clock>,
    rate: Rate,
    metrics_path: PathBuf,
    /// How long the last segments waited for the majority's verdict, by
    /// index: not part of their encode latency.
    waited: std::collections::BTreeMap<i64, Duration>,
}

impl Publisher for ChannelPublisher {
    fn write_failed(&mut self) {
        self.taps.status.write_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn analysed(&mut self, packager: &mut Packager) {
        // Metrics once a segment, next to the playlists (a Prometheus
        // textfile for a node without the admin API).
        *lock(&self.taps.status.packaged) = Some(packager.stats());
        *lock(&self.taps.status.clock) = Some(self.clock.quality());
        let mut exposition = Exposition::new();
        self.taps.export(&self.channel, &mut exposition);
        let text = exposition.render();
        if let Err(e) = packager.write_file(&self.metrics_path, text.as_bytes()) {
            tracing::warn!("metrics: {e}");
        }
    }

    fn reworked(&mut self, track: TrackId, index: i64, replaced: bool) {
        let status = &self.taps.status;
        if replaced {
            status.segments_reencoded.fetch_add(1, Ordering::Relaxed);
            status.last_reencoded.fetch_max(index, Ordering::Relaxed);
            tracing::info!(channel = %self.channel, ?track, segment = index, "segment re-encoded from kept input: identical to the majority's again");
        } else {
            status.reencodes_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(channel = %self.channel, ?track, segment = index, "re-encode not used: its bytes are not the majority's (or the segment left the playlist)");
        }
    }

    fn held(&mut self, track: TrackId, index: i64, how: sink::Held, waited: Duration) {
        let status = &self.taps.status;
        status.verdict_wait_us.store(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.waited.insert(index, waited);
        self.waited.retain(|&i, _| i > index - 4);
        match how {
            sink::Held::Agreed => {}
            sink::Held::Corrected => {
                status.segments_corrected.fetch_add(1, Ordering::Relaxed);
                status.last_corrected.fetch_max(index, Ordering::Relaxed);
                tracing::info!(channel = %self.channel, ?track, segment = index, "segment encoded from the majority's pictures before publication: its own were numbered otherwise");
            }
            sink::Held::AsCaptured => {
                status.segments_unverified.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn published(&mut self, track: String, entry: &ManifestEntry) {
        let status = &self.taps.status;
        status.segments_published.fetch_add(1, Ordering::Relaxed);
        if track != "audio" {
            // From the capture time of the segment's last frame to the
            // segment ready: the wait for the majority's verdict is its own
            // figure (`verdict_wait_us`), not the encoder's.
            let last = entry.first_unit + i64::from(entry.samples.max(1)) - 1;
            let end = self.rate.frame_time_ns(last);
            let waited = self.waited.get(&entry.index).map_or(0, |w| i128::try_from(w.as_nanos()).unwrap_or(0));
            let latency = (self.clock.now_tai_ns() - end - waited).max(0) / 1_000;
            status.encode_latency_us.store(u64::try_from(latency).unwrap_or(0), Ordering::Relaxed);
            // Its deadline: the end of the next segment (one segment length
            // after its own end), the wait for the majority left out.
            let slack_ms = entry.duration * 1e3 - latency as f64 / 1e3;
            lock(&status.slack).record(entry.index, slack_ms as f32);
        }
        if let Some(bus) = &self.taps.segments {
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

fn spawn_packager(
    packager: Packager,
    inbox: sink::Inbox,
    limits: &RunLimits,
    mut publisher: ChannelPublisher,
    gate: Option<rework::MajorityGate>,
) -> Result<JoinHandle<PackagerStats>, PipelineError> {
    let (predecessor, outgoing) = (limits.predecessor.clone(), limits.handover.clone());
    thread::Builder::new()
        .name("package".into())
        .spawn(move || {
            let gate = gate.as_ref().map(|g| g as &dyn sink::Gate);
            sink::run(packager, inbox, predecessor, outgoing, &mut publisher, gate)
        })
        .map_err(|_| PipelineError::Panic("package"))
}

type Workers = (Vec<Sender<Work>>, Vec<JoinHandle<Result<u64, WorkerError>>>);

/// One encoder thread per rendition of the ladder and one for audio; each
/// takes frames from its own queue (returned) and sends segments to the
/// packager.
fn spawn_encoders(
    config: &Config,
    plan: &RunPlan,
    factory: &Arc<dyn VideoEncoderFactory>,
    sink: &SegmentSink,
    taps: &Taps,
) -> Result<Workers, PipelineError> {
    let depth = config.pipeline.pool_frames as usize;
    let (mut queues, mut workers) = (Vec::new(), Vec::new());
    for (i, r) in plan.ladder.iter().enumerate() {
        let (tx, rx) = bounded::<Work>(depth);
        queues.push(tx);
        let job = video_job(plan, i, r, taps);
        let out = sink.clone();
        let factory = rendition_factory(config, &r.name, factory);
        workers.push(
            thread::Builder::new()
                .name(format!("encode-{}", r.name))
                .spawn(move || encode::run_video(job, factory.as_ref(), rx, out))
                .map_err(|_| PipelineError::Panic("encode"))?,
        );
    }
    if plan.audio.is_some() {
        let (tx, rx) = bounded::<Work>(depth);
        queues.push(tx);
        let job = plan.audio_job(plan.first_segment);
        let out = sink.clone();
        workers.push(
            thread::Builder::new()
                .name("encode-audio".into())
                .spawn(move || encode::run_audio(job, &open_opus, rx, out))
                .map_err(|_| PipelineError::Panic("encode"))?,
        );
    }
    Ok((queues, workers))
}

/// The job of rendition `i` of the plan's ladder, as its encoder thread
/// (and a re-encode of one of its segments) has it.
fn video_job(plan: &RunPlan, i: usize, r: &ResolvedRendition, taps: &Taps) -> VideoJob {
    let rate = plan.grid.rate;
    VideoJob {
        position: i,
        name: r.name.clone(),
        settings: VideoSettings {
            width: r.width,
            height: r.height,
            fps_num: rate.num,
            fps_den: rate.den,
            bitrate_bps: r.bitrate_bps,
            gop_frames: plan.grid.frames_per_segment,
        },
        grid: plan.grid,
        first_segment: plan.first_segment,
        partial_at_end: !plan.live,
        control: Arc::clone(&taps.control),
        latency: Arc::clone(&taps.status.latency_drill),
    }
}

/// The backend of a rendition: its own when it names one, else the channel's.
fn rendition_factory(
    config: &Config,
    name: &str,
    channel: &Arc<dyn VideoEncoderFactory>,
) -> Arc<dyn VideoEncoderFactory> {
    if config.renditions.iter().any(|c| c.name == name && c.backend.is_some()) {
        backend_for(config, Some(name))
    } else {
        Arc::clone(channel)
    }
}

/// A run keeps input for re-encodes: live, in a swarm (only a majority
/// can say a segment was made from the wrong pictures), and
/// `pipeline.rework_segments` above 0.
fn reworks(config: &Config, plan: &RunPlan) -> bool {
    plan.live && config.swarm.enabled && config.pipeline.rework_segments > 0
}

/// The rework thread of a run that keeps input ([`reworks`]): its sender
/// is returned and given to the swarm through the channel's status.
fn spawn_rework(
    config: &Config,
    plan: &RunPlan,
    factory: &Arc<dyn VideoEncoderFactory>,
    sink: &SegmentSink,
    recent: &Arc<std::sync::Mutex<rework::RecentInput>>,
    taps: &Taps,
) -> Result<(Sender<rework::Rework>, Option<JoinHandle<()>>), PipelineError> {
    let (tx, rx) = bounded::<rework::Rework>(rework::QUEUE);
    if !reworks(config, plan) {
        return Ok((tx, None));
    }
    let renditions: Vec<rework::Rendition> = plan
        .ladder
        .iter()
        .enumerate()
        .map(|(i, r)| rework::Rendition {
            job: video_job(plan, i, r, taps),
            factory: rendition_factory(config, &r.name, factory),
        })
        .collect();
    let (out, recent, status) = (sink.clone(), Arc::clone(recent), Arc::clone(&taps.status));
    let thread = thread::Builder::new()
        .name("rework".into())
        .spawn(move || rework::run(rx, &recent, &renditions, &out, &status.reencodes_refused))
        .map_err(|_| PipelineError::Panic("rework"))?;
    *lock(&taps.status.rework) = Some(tx.clone());
    Ok((tx, Some(thread)))
}

/// Content analysis beside the encoders: frames are lent to it through a
/// short queue (returned) that never blocks; a full queue or a slow stage
/// means pictures left out, counted in the metrics and the segment's
/// analysis. Its reports go to the packager (which holds the last sink)
/// and the analysis bus.
fn spawn_analysis(
    plan: &RunPlan,
    format: &crate::capture::SourceFormat,
    realtime: bool,
    successor: bool,
    sink: SegmentSink,
    taps: &Taps,
) -> Result<(Sender<FrameRef>, JoinHandle<()>), PipelineError> {
    let (tx, rx) = bounded::<FrameRef>(ANALYSIS_QUEUE);
    let analyzer = Analyzer::new(plan.grid, format.width, format.height, format.audio_channels);
    let (metrics, bus) = (Arc::clone(&taps.metrics), taps.analysis.clone());
    let first_segment = plan.first_segment;
    let thread = thread::Builder::new()
        .name("analysis".into())
        .spawn(move || {
            stage::run(analyzer, rx, if realtime { ANALYSIS_QUEUE } else { 0 }, &metrics, |report| {
                if successor && report.index < first_segment {
                    return; // warm-up frames of a successor: the predecessor reported that segment
                }
                let _ = sink.analysis(report.index, report.analysis.clone());
                if let Some(bus) = &bus {
                    let _ = bus.send(Arc::new(report)); // no subscriber is not an error
                }
            });
        })
        .map_err(|_| PipelineError::Panic("analysis"))?;
    Ok((tx, thread))
}

/// The fingerprint (input hash, part of the timeline contract) runs in
/// line: every encoder needs it. It takes captured frames from its queue
/// (returned), keeps the trail the swarm compares and a copy of the
/// picture for re-encodes (`rework`), and passes each frame on to every
/// encoder and, without waiting in real time, to analysis.
fn spawn_fingerprint(
    depth: usize,
    encoders: Vec<Sender<Work>>,
    analysis: Sender<FrameRef>,
    (realtime, trail_from): (bool, i64),
    recent: Arc<std::sync::Mutex<rework::RecentInput>>,
    taps: &Taps,
) -> Result<(Sender<FrameRef>, JoinHandle<()>), PipelineError> {
    let (tx, rx) = bounded::<FrameRef>(depth);
    let skipped = Arc::clone(&taps.metrics);
    let status = Arc::clone(&taps.status);
    let thread = thread::Builder::new()
        .name("fingerprint".into())
        .spawn(move || {
            for frame in rx {
                let hash = crate::analysis::fingerprint(&frame);
                lock(&recent).keep(&frame, hash);
                let meta = frame.meta();
                if meta.passed_over {
                    continue; // kept for a re-encode only
                }
                let number = meta.number;
                if number >= trail_from {
                    lock(&status.trail).push(number, crate::analysis::short_fingerprint(&hash));
                }
                // Real time: never wait for analysis. Files and fast runs:
                // analyse every frame, the result is the same on every run.
                if !realtime {
                    let _ = analysis.send(frame.clone());
                } else if analysis.try_send(frame.clone()).is_err() {
                    skipped.frames_skipped.fetch_add(1, Ordering::Relaxed);
                }
                for tx in &encoders {
                    if tx.send(Work::Frame { frame: frame.clone(), hash }).is_err() {
                        return;
                    }
                }
            }
            for tx in &encoders {
                let _ = tx.send(Work::End);
            }
        })
        .map_err(|_| PipelineError::Panic("fingerprint"))?;
    Ok((tx, thread))
}
