//! `lockstep run`: the daemon. Origin, swarm node, admin API and the
//! channel's pipeline, with a supervisor that starts and stops the
//! pipeline on command while everything else keeps running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::analysis::stage::SegmentReport;
use crate::config::Config;
use crate::origin::{self, OriginMetrics};
use crate::pipeline::{self, PipelineError, RunLimits, RunSummary, Taps};

/// A command to the channel supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelCommand {
    /// Start the pipeline (no-op when running).
    Start,
    /// Stop the pipeline (no-op when stopped); the daemon stays up.
    Stop,
}

impl ChannelCommand {
    /// Name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            ChannelCommand::Start => "channel-start",
            ChannelCommand::Stop => "channel-stop",
        }
    }
}

type Reply = Sender<Result<bool, String>>;

/// Sends commands to the supervisor: a bounded queue, answers with a
/// timeout.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tx: Sender<(ChannelCommand, Reply)>,
}

/// Commands waiting for the supervisor at most.
const COMMAND_QUEUE: usize = 8;

impl Supervisor {
    /// A supervisor handle and the receiving end for [`supervise`].
    pub fn new() -> (Self, Receiver<(ChannelCommand, Reply)>) {
        let (tx, rx) = bounded(COMMAND_QUEUE);
        (Self { tx }, rx)
    }

    /// Sends `cmd` and waits for the answer: whether the channel runs.
    pub fn send(&self, cmd: ChannelCommand, timeout: Duration) -> Result<bool, String> {
        let (reply, answer) = bounded(1);
        self.tx
            .send_timeout((cmd, reply), timeout)
            .map_err(|_| "the channel supervisor is busy; try again".to_string())?;
        answer.recv_timeout(timeout).map_err(|_| format!("no answer from the channel supervisor within {timeout:?}"))?
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

/// Starts the origin, the swarm node and the admin API for `config`.
pub fn services(config: &Config, taps: &Taps, supervisor: Supervisor) -> anyhow::Result<Services> {
    let origin_metrics = Arc::new(OriginMetrics::default());
    let origin = match &config.origin.listen {
        Some(listen) => Some(origin::start(listen, config.output.dir.clone(), Arc::clone(&origin_metrics))?),
        None => None,
    };
    let swarm = crate::swarm::join(config, taps)?;
    let admin = match &config.admin.listen {
        Some(_) => Some(crate::admin::start(crate::admin::Context {
            config: config.clone(),
            taps: taps.clone(),
            swarm: swarm.clone(),
            supervisor,
            origin: origin.as_ref().map(|o: &origin::Origin| o.addr),
            origin_metrics,
        })?),
        None => None,
    };
    Ok(Services { origin, swarm, admin })
}

/// Runs the daemon until a signal, or until the pipeline ends on its own
/// (end of a file, a limit, an error). A channel stopped by command stays
/// stopped, the daemon up, until started again.
pub fn run(config: &Config, limits: &RunLimits) -> anyhow::Result<Option<RunSummary>> {
    let taps = taps();
    let (supervisor, commands) = Supervisor::new();
    let services = services(config, &taps, supervisor)?;
    if let Some(a) = &services.admin {
        tracing::info!(url = %admin_url(a.addr, config.admin.tls_cert.is_some()), "admin page");
    }
    let stop = limits.stop.clone().unwrap_or_default();
    let standby = config.appliance.role == crate::config::Role::Standby;
    if standby {
        tracing::info!("standby unit: the channel waits for a start command");
    }
    crate::systemd::start(Arc::clone(&taps.status), config.channel.segment_seconds, standby, Arc::clone(&stop));
    supervise(config, limits, &taps, &commands, &stop)
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<RunSummary, PipelineError>>,
}

fn start_run(config: &Config, limits: &RunLimits, taps: &Taps) -> std::io::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let (config, taps) = (config.clone(), taps.clone());
    let limits = RunLimits { stop: Some(Arc::clone(&stop)), ..limits.clone() };
    let thread =
        std::thread::Builder::new().name("channel".into()).spawn(move || pipeline::run(&config, &limits, &taps))?;
    Ok(Running { stop, thread })
}

fn finish(run: Running) -> anyhow::Result<RunSummary> {
    run.stop.store(true, Ordering::Relaxed);
    match run.thread.join() {
        Ok(r) => Ok(r?),
        Err(_) => Err(PipelineError::Panic("channel").into()),
    }
}

/// First wait before a failed capture device is tried again.
const DEVICE_RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between tries.
const DEVICE_RETRY_MAX: Duration = Duration::from_secs(30);

/// The supervisor loop: one pipeline run at a time.
fn supervise(
    config: &Config,
    limits: &RunLimits,
    taps: &Taps,
    commands: &Receiver<(ChannelCommand, Reply)>,
    stop: &AtomicBool,
) -> anyhow::Result<Option<RunSummary>> {
    let mut current = match config.appliance.role {
        crate::config::Role::Encoder => Some(start_run(config, limits, taps)?),
        crate::config::Role::Standby => None,
    };
    let mut last = None;
    // A capture device that fails or disappears: the daemon stays up and
    // retries, backing off, so the channel comes back with the device.
    let device = config.source.kind == crate::config::SourceKind::V4l2;
    let mut retry_at: Option<std::time::Instant> = None;
    let mut backoff = DEVICE_RETRY_FIRST;
    let mut started_at = std::time::Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
            return Ok(match current {
                Some(run) => Some(finish(run)?),
                None => last,
            });
        }
        if current.as_ref().is_some_and(|r| r.thread.is_finished()) {
            let Some(run) = current.take() else { continue };
            match finish(run) {
                Err(e) if device && matches!(e.downcast_ref(), Some(PipelineError::Capture(_))) => {
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
            match start_run(config, limits, taps) {
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
        let Ok((cmd, reply)) = commands.recv_timeout(Duration::from_millis(100)) else { continue };
        if matches!(cmd, ChannelCommand::Stop) {
            // An operator's stop also ends the retries.
            retry_at = None;
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
        }
        let answer = match (cmd, current.take()) {
            (ChannelCommand::Start, Some(run)) => {
                current = Some(run);
                Ok(true)
            }
            (ChannelCommand::Start, None) => match start_run(config, limits, taps) {
                Ok(run) => {
                    current = Some(run);
                    Ok(true)
                }
                Err(e) => Err(format!("channel not started: {e}")),
            },
            (ChannelCommand::Stop, Some(run)) => match finish(run) {
                Ok(summary) => {
                    last = Some(summary);
                    Ok(false)
                }
                Err(e) => Err(format!("channel stopped with an error: {e:#}")),
            },
            (ChannelCommand::Stop, None) => Ok(false),
        };
        if current.is_some() {
            taps.status.waiting_for_device.store(false, Ordering::Relaxed);
        }
        let _ = reply.send(answer);
    }
}

/// The admin URL a node's config gives, for printing.
pub fn admin_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}
