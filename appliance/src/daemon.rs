//! `lockstep run`: the daemon. Origin, swarm node, admin API and the
//! channel's pipeline, with a supervisor that starts and stops the
//! pipeline on command while everything else keeps running, and applies a
//! new channel configuration by handing the channel over to a new run at a
//! segment boundary (`crate::handover`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::analysis::stage::SegmentReport;
use crate::channels::{Channel, Channels};
use crate::config::{Config, Pacing, SourceKind};
use crate::handover::Handover;
use crate::origin::{self, OriginMetrics};
use crate::pipeline::{self, PipelineError, RunLimits, RunSummary, Taps};

/// A command to the channel supervisor.
#[derive(Debug, Clone)]
pub enum ChannelCommand {
    /// Start the pipeline (no-op when running).
    Start,
    /// Stop the pipeline (no-op when stopped); the daemon stays up.
    Stop,
    /// Run the channel with this configuration from now on (validated).
    Reconfigure(Box<Config>),
}

impl ChannelCommand {
    /// Name in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelCommand::Start => "channel-start",
            ChannelCommand::Stop => "channel-stop",
            ChannelCommand::Reconfigure(_) => "channel-config",
        }
    }
}

/// How a new configuration took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum Applied {
    /// A new run takes over at segment `from_segment`; the playlists go on
    /// without a seam.
    Handover {
        /// First segment made with the new configuration.
        from_segment: i64,
    },
    /// The channel was stopped and started again (a capture device cannot
    /// be opened twice, a file starts over): segments are missing between.
    Restart,
    /// The running source cannot be opened twice (a capture device): the
    /// run ends before segment `from_segment`, then the new one opens the
    /// source and starts at the next boundary. The playlists go on, with a
    /// discontinuity over the segments missing between.
    Reopen {
        /// First segment the old run does not make.
        from_segment: i64,
    },
    /// The channel is stopped; its next start uses the configuration.
    Stored,
    /// Only bitrates changed: the running encoders take them from the
    /// segment their live changes name (`crate::control`).
    Live,
}

/// The supervisor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Whether the channel runs (start, stop).
    Running(bool),
    /// How a configuration took effect.
    Applied(Applied),
}

type Reply = Sender<Result<Answer, String>>;

/// Sends commands to the supervisor: a bounded queue, answers with a
/// timeout. Holds the configuration the channel runs with.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tx: Sender<(ChannelCommand, Reply)>,
    config: Arc<RwLock<Config>>,
}

/// Commands waiting for the supervisor at most.
const COMMAND_QUEUE: usize = 8;

/// The receiving end of a [`Supervisor`], for [`supervise`].
#[derive(Debug)]
pub struct Commands {
    rx: Receiver<(ChannelCommand, Reply)>,
    config: Arc<RwLock<Config>>,
}

impl Commands {
    /// The configuration the supervisor has published last.
    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Supervisor {
    /// A supervisor handle for a channel that starts with `config`.
    pub fn new(config: &Config) -> (Self, Commands) {
        let (tx, rx) = bounded(COMMAND_QUEUE);
        let config = Arc::new(RwLock::new(config.clone()));
        (Self { tx, config: Arc::clone(&config) }, Commands { rx, config })
    }

    /// The configuration the channel runs with now.
    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn ask(&self, cmd: ChannelCommand, timeout: Duration) -> Result<Answer, String> {
        let (reply, answer) = bounded(1);
        self.tx
            .send_timeout((cmd, reply), timeout)
            .map_err(|_| "the channel supervisor is busy; try again".to_string())?;
        answer.recv_timeout(timeout).map_err(|_| format!("no answer from the channel supervisor within {timeout:?}"))?
    }

    /// Sends start or stop and waits for the answer: whether the channel runs.
    pub fn send(&self, cmd: ChannelCommand, timeout: Duration) -> Result<bool, String> {
        match self.ask(cmd, timeout)? {
            Answer::Running(running) => Ok(running),
            Answer::Applied(_) => Ok(true),
        }
    }

    /// Applies a new configuration (already validated).
    pub fn reconfigure(&self, config: Config, timeout: Duration) -> Result<Applied, String> {
        match self.ask(ChannelCommand::Reconfigure(Box::new(config)), timeout)? {
            Answer::Applied(applied) => Ok(applied),
            Answer::Running(_) => Err("the supervisor answered a configuration with a start/stop".into()),
        }
    }
}

/// The channel's taps: the analysis and segment feeds (the swarm and the
/// admin API subscribe), with a journal line per analysed segment.
pub fn taps() -> Taps {
    let (tx, mut rx) = tokio::sync::broadcast::channel::<Arc<SegmentReport>>(64);
    let spawned = std::thread::Builder::new().name("analysis-log".into()).spawn(move || {
        loop {
            match rx.blocking_recv() {
                Ok(r) => tracing::debug!(
                    segment = r.index,
                    timecode = %r.timecode,
                    complexity = r.analysis.complexity,
                    content = r.analysis.content.name(),
                    cuts = r.analysis.scene_cuts.len(),
                    skipped = r.analysis.frames_skipped,
                    "segment analysed"
                ),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::debug!(n, "analysis log lagged"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("analysis log not started: {e}");
    }
    let (segments, _) = tokio::sync::broadcast::channel(256);
    Taps { analysis: Some(tx), segments: Some(segments), ..Default::default() }
}

/// What the daemon runs besides the pipeline.
#[derive(Debug)]
pub struct Services {
    /// The origin.
    pub origin: Option<origin::Origin>,
    /// The swarm node.
    pub swarm: Option<Arc<crate::swarm::Swarm>>,
    /// The admin server.
    pub admin: Option<crate::admin::Admin>,
}

/// Starts the origin, the swarm node (for the first channel) and the
/// admin API for `config`.
pub fn services(config: &Config, channels: &Arc<Channels>) -> anyhow::Result<Services> {
    let origin_metrics = Arc::new(OriginMetrics::default());
    let origin = match &config.origin.listen {
        Some(listen) => Some(origin::start(listen, config.output.dir.clone(), Arc::clone(&origin_metrics))?),
        None => None,
    };
    let swarm = crate::swarm::join(config, &channels.first().taps)?;
    let admin = match &config.admin.listen {
        Some(_) => Some(crate::admin::start(crate::admin::Context {
            config: config.clone(),
            channels: Arc::clone(channels),
            swarm: swarm.clone(),
            origin: origin.as_ref().map(|o: &origin::Origin| o.addr),
            origin_metrics,
        })?),
        None => None,
    };
    Ok(Services { origin, swarm, admin })
}

/// Runs the daemon until a signal, or until the first channel's pipeline
/// ends on its own (end of a file, a limit, an error). A channel stopped
/// by command stays stopped, the daemon up, until started again. The other
/// channels (`[[channels]]`, or created through the API) run beside it
/// until the daemon ends.
pub fn run(config: &Config, file: Option<&ConfigFile>, limits: &RunLimits) -> anyhow::Result<Option<RunSummary>> {
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    let (first, commands) = Channel::first(config);
    let taps = first.taps.clone();
    let stop = limits.stop.clone().unwrap_or_default();
    let saver = file.map(|f| Arc::new(crate::persist::Saver::new(&f.path, &f.text)));
    let channels = Channels::new(first, limits, saver);
    for spec in &config.channels {
        channels.add(spec).map_err(|e| anyhow::anyhow!("channel `{}`: {e}", spec.channel.id))?;
    }
    if file.is_some() {
        keep_saved(Arc::clone(&channels), Arc::clone(&stop));
    }
    let services = services(config, &channels)?;
    if let Some(a) = &services.admin {
        tracing::info!(url = %admin_url(a.addr, config.admin.tls_cert.is_some()), "admin page");
    }
    let standby = config.appliance.role == crate::config::Role::Standby;
    if standby {
        tracing::info!("standby unit: the channel waits for a start command");
    }
    crate::systemd::start(Arc::clone(&taps.status), config.channel.segment_seconds, standby, Arc::clone(&stop));
    let mut first_config = config.clone();
    first_config.channels.clear();
    let outcome = supervise(&first_config, limits, &taps, &commands, &stop);
    channels.shut_down();
    outcome
}

/// The configuration file the daemon runs from, as it read it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Its text at start.
    pub text: String,
}

/// How often the effective configuration is compared with the file.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the effective configuration whenever it changes, whoever changed
/// it (this appliance's API, a bitrate agreed with the swarm, a rollback).
fn keep_saved(channels: Arc<Channels>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("config-save".into()).spawn(move || {
        let mut last = serde_json::Value::Null;
        while !stop.load(Ordering::Relaxed) {
            let value = serde_json::to_value(channels.effective()).unwrap_or_default();
            if value != last {
                // An error is logged by the saver (once) and shown in the API.
                channels.save();
                last = value;
            }
            std::thread::sleep(SAVE_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("live configuration changes will not be saved: {e}");
    }
}

struct Running {
    stop: Arc<AtomicBool>,
    handover: Arc<Handover>,
    thread: std::thread::JoinHandle<Result<RunSummary, PipelineError>>,
}

/// Starts a run; `after` = (first segment, the predecessor's handover) for
/// a successor (no first segment: the next boundary once it runs).
fn start_run(
    config: &Config,
    limits: &RunLimits,
    taps: &Taps,
    after: Option<(Option<i64>, Arc<Handover>)>,
) -> std::io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let handover = Arc::new(Handover::default());
    let (config, taps) = (config.clone(), taps.clone());
    let limits = RunLimits {
        stop: Some(Arc::clone(&stop)),
        handover: Some(Arc::clone(&handover)),
        start_segment: after.as_ref().and_then(|(s, _)| *s),
        predecessor: after.map(|(_, h)| h),
        ..limits.clone()
    };
    let thread =
        std::thread::Builder::new().name("channel".into()).spawn(move || pipeline::run(&config, &limits, &taps))?;
    Ok(Running { stop, handover, thread })
}

fn finish(run: Running) -> anyhow::Result<RunSummary> {
    run.stop.store(true, Ordering::Relaxed);
    let result = run.thread.join();
    // Whatever happened, a successor waiting for the playlists stops waiting.
    run.handover.abandon();
    match result {
        Ok(r) => Ok(r?),
        Err(_) => Err(PipelineError::Panic("channel").into()),
    }
}

/// First wait before a failed capture device is tried again.
const DEVICE_RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between tries.
const DEVICE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Whether `a` and `b` differ in more than rendition bitrates.
pub fn more_than_bitrates(a: &Config, b: &Config) -> bool {
    let without = |c: &Config| {
        let mut c = c.clone();
        c.renditions.iter_mut().for_each(|r| r.bitrate_kbps = 0);
        serde_json::to_value(&c).unwrap_or_default()
    };
    without(a) != without(b)
}

/// How long a configuration applied by a restart may fail and be rolled
/// back to the previous one.
const FALLBACK_WINDOW: Duration = Duration::from_secs(30);

/// Whether a run of `old` can hand over to a run of `new` without a seam:
/// both live test sources on the same timeline (a capture device cannot be
/// opened twice, a file would start over).
fn seamless(old: &Config, new: &Config) -> bool {
    let live_test = |c: &Config| c.source.kind == SourceKind::Test && c.source.pacing == Pacing::Realtime;
    live_test(old)
        && live_test(new)
        && old.source.fps == new.source.fps
        && old.channel.segment_seconds == new.channel.segment_seconds
        && old.channel.id == new.channel.id
        && old.output.dir == new.output.dir
}

/// Whether a run of `old` can end at a boundary and hand its playlists to
/// a run of `new` started after it (both live, same channel and grid).
fn continuous(old: &Config, new: &Config) -> bool {
    let live = |c: &Config| c.source.kind != SourceKind::File && c.source.pacing == Pacing::Realtime;
    live(old)
        && live(new)
        && old.channel.segment_seconds == new.channel.segment_seconds
        && old.channel.id == new.channel.id
        && old.output.dir == new.output.dir
}

/// A configuration waiting for the running one to end at its boundary:
/// the one before, to go back to.
struct Reopen {
    previous: Config,
}

/// A run that hands over and the configuration it ran, kept until it ends
/// (the handover is taken back if the successor fails first).
struct Retiring {
    run: Running,
    config: Config,
}

/// The supervisor loop: one pipeline run at a time, two during a handover.
pub(crate) fn supervise(
    config: &Config,
    limits: &RunLimits,
    taps: &Taps,
    commands: &Commands,
    stop: &AtomicBool,
) -> anyhow::Result<Option<RunSummary>> {
    let mut config = config.clone();
    // --duration counts from the daemon's start, not from each run's.
    let limits = &RunLimits { daemon_end: Some(Arc::default()), ..limits.clone() };
    let publish = |c: &Config| {
        *commands.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = c.clone();
    };
    let mut current = match config.appliance.role {
        crate::config::Role::Encoder => Some(start_run(&config, limits, taps, None)?),
        crate::config::Role::Standby => None,
    };
    let mut retiring: Option<Retiring> = None;
    // The configuration before a restart, while the new one proves itself.
    let mut fallback: Option<(Config, std::time::Instant)> = None;
    let mut reopen: Option<Reopen> = None;
    let mut last = None;
    // A capture device that fails or disappears: the daemon stays up and
    // retries, backing off, so the channel comes back with the device.
    let device = |c: &Config| c.source.kind == SourceKind::V4l2;
    let mut retry_at: Option<std::time::Instant> = None;
    let mut backoff = DEVICE_RETRY_FIRST;
    let mut started_at = std::time::Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
            if let Some(old) = retiring.take() {
                let _ = finish(old.run);
            }
            return Ok(match current {
                Some(run) => Some(finish(run)?),
                None => last,
            });
        }
        fallback.take_if(|(_, since)| since.elapsed() >= FALLBACK_WINDOW);
        if retiring.as_ref().is_some_and(|r| r.run.thread.is_finished())
            && let Some(old) = retiring.take()
        {
            match finish(old.run) {
                Ok(summary) => tracing::info!(frames = summary.frames, "the previous run handed over and ended"),
                Err(e) => tracing::error!("the previous run ended with an error after the handover: {e:#}"),
            }
        }
        if current.as_ref().is_some_and(|r| r.thread.is_finished()) {
            let Some(run) = current.take() else { continue };
            let (handed, handover) = (run.handover.ended(), Arc::clone(&run.handover));
            let result = finish(run);
            if let Some(next) = reopen.take() {
                if handed {
                    if let Err(e) = &result {
                        tracing::warn!("the previous run ended with an error at the handover: {e:#}");
                    }
                    tracing::info!("the previous run ended at its boundary; the new configuration starts");
                    fallback = Some((next.previous, std::time::Instant::now()));
                    current = start_run(&config, limits, taps, Some((None, handover))).ok();
                    continue;
                }
                // Failed before its boundary: the change is dropped.
                config = next.previous;
                publish(&config);
            }
            if let Err(e) = &result {
                let failed = |e: &anyhow::Error| {
                    tracing::error!("new configuration failed, the channel goes back to the previous one: {e:#}");
                    *pipeline::lock(&taps.status.config_error) = Some(format!("{e:#}"));
                };
                // Before its turn: the run it was to take over from goes on.
                if retiring.as_ref().is_some_and(|r| r.run.handover.cancel())
                    && let Some(old) = retiring.take()
                {
                    failed(e);
                    config = old.config;
                    publish(&config);
                    current = Some(old.run);
                    continue;
                }
                // Soon after a restart: the previous configuration runs again.
                if let Some((previous, _)) = fallback.take() {
                    failed(e);
                    config = previous;
                    publish(&config);
                    current = start_run(&config, limits, taps, None).ok();
                    continue;
                }
            }
            match result {
                Err(e) if device(&config) && matches!(e.downcast_ref(), Some(PipelineError::Capture(_))) => {
                    // A long good run starts the back-off afresh.
                    if started_at.elapsed() >= Duration::from_secs(60) {
                        backoff = DEVICE_RETRY_FIRST;
                    }
                    tracing::error!("channel stopped: {e:#}; retrying in {} s", backoff.as_secs());
                    *pipeline::lock(&taps.status.input_fault) = Some(format!("{e:#}"));
                    taps.status.waiting_for_device.store(true, Ordering::Relaxed);
                    retry_at = Some(std::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(DEVICE_RETRY_MAX);
                }
                // Ended on its own: the daemon's run is over, as without a
                // supervisor.
                outcome => return outcome.map(Some),
            }
        }
        if current.is_none() && retry_at.is_some_and(|at| std::time::Instant::now() >= at) {
            tracing::info!("starting the channel again");
            started_at = std::time::Instant::now();
            retry_at = None;
            match start_run(&config, limits, taps, None) {
                Ok(run) => {
                    current = Some(run);
                    taps.status.waiting_for_device.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!("channel not started: {e}");
                    retry_at = Some(std::time::Instant::now() + backoff);
                }
            }
        }
        let Ok((cmd, reply)) = commands.rx.recv_timeout(Duration::from_millis(100)) else { continue };
        if matches!(cmd, ChannelCommand::Stop) {
            // An operator's stop also ends the retries.
            retry_at = None;
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
        }
        let answer = match (cmd, current.take()) {
            (ChannelCommand::Start, Some(run)) => {
                current = Some(run);
                Ok(Answer::Running(true))
            }
            (ChannelCommand::Start, None) => match start_run(&config, limits, taps, None) {
                Ok(run) => {
                    current = Some(run);
                    Ok(Answer::Running(true))
                }
                Err(e) => Err(format!("channel not started: {e}")),
            },
            (ChannelCommand::Stop, Some(run)) => {
                reopen = None;
                if let Some(old) = retiring.take() {
                    let _ = finish(old.run);
                }
                match finish(run) {
                    Ok(summary) => {
                        last = Some(summary);
                        Ok(Answer::Running(false))
                    }
                    Err(e) => Err(format!("channel stopped with an error: {e:#}")),
                }
            }
            (ChannelCommand::Stop, None) => Ok(Answer::Running(false)),
            (ChannelCommand::Reconfigure(new), run) => {
                let previous = config.clone();
                let (answer, run) = reconfigure(&mut config, *new, run, &mut retiring, &mut reopen, limits, taps);
                if matches!(answer, Ok(Answer::Applied(Applied::Restart))) {
                    fallback = Some((previous, std::time::Instant::now()));
                }
                current = run;
                publish(&config);
                answer
            }
        };
        if current.is_some() {
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
        }
        let _ = reply.send(answer);
    }
}

/// Applies `new` to the channel: a handover when [`seamless`], else a
/// restart, or only stored when the channel is stopped.
fn reconfigure(
    config: &mut Config,
    new: Config,
    run: Option<Running>,
    retiring: &mut Option<Retiring>,
    reopen: &mut Option<Reopen>,
    limits: &RunLimits,
    taps: &Taps,
) -> (Result<Answer, String>, Option<Running>) {
    *pipeline::lock(&taps.status.config_error) = None;
    if !more_than_bitrates(config, &new) {
        *config = new;
        return (Ok(Answer::Applied(Applied::Live)), run);
    }
    let Some(run) = run else {
        *config = new;
        return (Ok(Answer::Applied(Applied::Stored)), None);
    };
    if retiring.is_some() || reopen.is_some() {
        return (Err("a configuration change is still being applied; try again in a few seconds".into()), Some(run));
    }
    let status = &taps.status;
    let frames = i64::from(status.segment_frames.load(Ordering::Relaxed).max(1));
    let now = status.frame.load(Ordering::Relaxed).div_euclid(frames);
    let from = now + crate::control::lead_segments(config.channel.segment_seconds);
    if !seamless(config, &new)
        && continuous(config, &new)
        && !run.thread.is_finished()
        && run.handover.schedule(from, from * frames)
    {
        tracing::info!(from_segment = from, "new configuration: the channel reopens its source at a boundary");
        let previous = std::mem::replace(config, new);
        *reopen = Some(Reopen { previous });
        return (Ok(Answer::Applied(Applied::Reopen { from_segment: from })), Some(run));
    }
    if seamless(config, &new) && !run.thread.is_finished() && run.handover.schedule(from, from * frames) {
        return match start_run(&new, limits, taps, Some((Some(from), Arc::clone(&run.handover)))) {
            Ok(next) => {
                tracing::info!(from_segment = from, "new configuration: handover scheduled");
                *retiring = Some(Retiring { run, config: std::mem::replace(config, new) });
                (Ok(Answer::Applied(Applied::Handover { from_segment: from })), Some(next))
            }
            Err(e) => {
                run.handover.cancel();
                (Err(format!("new configuration not started: {e}")), Some(run))
            }
        };
    }
    // Stop, then start with the new configuration.
    if let Err(e) = finish(run) {
        tracing::warn!("the channel stopped with an error before the restart: {e:#}");
    }
    let previous = std::mem::replace(config, new);
    match start_run(config, limits, taps, None) {
        Ok(next) => (Ok(Answer::Applied(Applied::Restart)), Some(next)),
        Err(e) => {
            *config = previous;
            let back = start_run(config, limits, taps, None).ok();
            (Err(format!("channel not started with the new configuration: {e}")), back)
        }
    }
}

/// The admin URL a node's config gives, for printing.
pub fn admin_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}
