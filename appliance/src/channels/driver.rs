//! The thread that drives a channel's [`supervisor`](super::supervisor):
//! it receives commands, starts and joins pipeline runs, and feeds what
//! happened to [`step`] as events. Every decision is the state machine's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use super::supervisor::{Action, ChannelState, Event, RunEnd, RunId, StatusChange, Supervision, step};
use crate::analysis::stage::SegmentReport;
use crate::command::{Answer, Applied, ChannelCommand, CommandError};
use crate::config::Config;
use crate::handover::Handover;
use crate::pipeline::{self, PipelineError, RunLimits, RunSummary, Taps};
use crate::sync::{lock, read, write};

type Reply = Sender<Result<Answer, CommandError>>;

/// Sends commands to a channel's supervisor: a bounded queue, answers
/// with a timeout. Holds the configuration the channel runs with.
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

impl Supervisor {
    /// A supervisor handle for a channel that starts with `config`.
    pub fn new(config: &Config) -> (Self, Commands) {
        let (tx, rx) = bounded(COMMAND_QUEUE);
        let config = Arc::new(RwLock::new(config.clone()));
        (Self { tx, config: Arc::clone(&config) }, Commands { rx, config })
    }

    /// The configuration the channel runs with now.
    pub fn config(&self) -> Config {
        read(&self.config).clone()
    }

    /// Sends `cmd` and waits for the answer, at most `timeout` each way.
    pub fn ask(&self, cmd: ChannelCommand, timeout: Duration) -> Result<Answer, CommandError> {
        let (reply, answer) = bounded(1);
        self.tx.send_timeout((cmd, reply), timeout).map_err(|_| CommandError::Busy)?;
        answer.recv_timeout(timeout).map_err(|_| CommandError::NoAnswer(timeout))?
    }

    /// Applies a new configuration (already validated).
    pub fn reconfigure(&self, config: Config, timeout: Duration) -> Result<Applied, CommandError> {
        match self.ask(ChannelCommand::Reconfigure(Box::new(config)), timeout)? {
            Answer::Applied(applied) => Ok(applied),
            other => Err(CommandError::Unexpected(other)),
        }
    }
}

/// A channel's taps: the analysis and segment feeds (the swarm and the
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

/// A pipeline run on its thread.
struct Running {
    stop: Arc<AtomicBool>,
    handover: Arc<Handover>,
    thread: std::thread::JoinHandle<Result<RunSummary, PipelineError>>,
}

/// Handovers of ended runs kept for a successor that starts after them.
const ENDED_KEPT: usize = 4;

/// How often the driver looks at its runs and the time when no command
/// comes.
const POLL: Duration = Duration::from_millis(100);

/// Carries out the state machine's actions for one channel.
struct Driver<'a> {
    limits: RunLimits,
    taps: &'a Taps,
    commands: &'a Commands,
    runs: BTreeMap<RunId, Running>,
    /// Handovers of runs that ended, for a successor (a reopen).
    ended: BTreeMap<RunId, Arc<Handover>>,
    /// The summary of the run that ended last.
    last: Option<RunSummary>,
    /// Events the actions gave (a joined run, an answer to a take-back).
    queue: VecDeque<Event>,
    /// Where the answer to the command being handled goes.
    reply: Option<Reply>,
}

/// Supervises a channel until `stop` is set, or, when `ends_daemon`, until
/// its run ends on its own (the daemon's first channel: the end of a file,
/// a limit, an error). Returns the last run's summary.
pub(crate) fn supervise(
    config: &Config,
    limits: &RunLimits,
    taps: &Taps,
    commands: &Commands,
    stop: &AtomicBool,
    ends_daemon: bool,
) -> anyhow::Result<Option<RunSummary>> {
    // --duration counts from the daemon's start, not from each run's.
    let limits = RunLimits { daemon_end: Some(Arc::default()), ..limits.clone() };
    let mut driver = Driver {
        limits,
        taps,
        commands,
        runs: BTreeMap::new(),
        ended: BTreeMap::new(),
        last: None,
        queue: VecDeque::new(),
        reply: None,
    };
    let (mut sup, actions) = Supervision::new(config.clone(), Instant::now());
    driver.carry_out(actions);
    loop {
        if stop.load(Ordering::Relaxed) {
            return driver.shut_down(sup.state.current());
        }
        driver.reap();
        driver.queue.push_back(Event::Tick(Instant::now()));
        sup = driver.drain(sup);
        if ends_daemon && let ChannelState::Ended { error } = &sup.state {
            return match error {
                Some(e) => Err(anyhow::anyhow!("{e}")),
                None => Ok(driver.last.take()),
            };
        }
        let Ok((cmd, reply)) = commands.rx.recv_timeout(POLL) else { continue };
        let status = &taps.status;
        let frames = i64::from(status.segment_frames.load(Ordering::Relaxed).max(1));
        let segment = status.capture.frame.load(Ordering::Relaxed).div_euclid(frames);
        driver.reply = Some(reply);
        driver.queue.push_back(Event::Command { cmd, segment, now: Instant::now() });
        sup = driver.drain(sup);
        if let Some(reply) = driver.reply.take() {
            let _ = reply.send(Err(CommandError::NoAnswer(Duration::ZERO)));
        }
    }
}

impl Driver<'_> {
    fn drain(&mut self, mut sup: Supervision) -> Supervision {
        while let Some(event) = self.queue.pop_front() {
            let (next, actions) = step(sup, event);
            sup = next;
            self.carry_out(actions);
        }
        sup
    }

    /// Joins every run whose thread has finished.
    fn reap(&mut self) {
        let done: Vec<RunId> = self.runs.iter().filter(|(_, r)| r.thread.is_finished()).map(|(id, _)| *id).collect();
        for id in done {
            self.join(id);
        }
    }

    /// Stops run `id` (if it has not ended), joins it and queues its end.
    fn join(&mut self, id: RunId) {
        let Some(run) = self.runs.remove(&id) else { return };
        let handed_over = run.handover.ended();
        let handover = Arc::clone(&run.handover);
        let end = match finish(run) {
            Ok(summary) => {
                self.last = Some(summary);
                RunEnd::Done
            }
            Err(e @ PipelineError::Capture(_)) => RunEnd::Capture(crate::errors::one_line(&e)),
            Err(e) => RunEnd::Failed(crate::errors::one_line(&e)),
        };
        self.ended.insert(id, handover);
        while self.ended.len() > ENDED_KEPT {
            self.ended.pop_first();
        }
        self.queue.push_back(Event::RunEnded { run: id, handed_over, end, now: Instant::now() });
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        let status = &self.taps.status;
        for action in actions {
            match action {
                Action::Start { run, config, after } => {
                    let after = after.and_then(|(before, first)| {
                        let handover = match self.runs.get(&before) {
                            Some(r) => Some(Arc::clone(&r.handover)),
                            None => self.ended.get(&before).cloned(),
                        };
                        handover.map(|h| (first, h))
                    });
                    match start_run(&config, &self.limits, self.taps, after) {
                        Ok(running) => {
                            self.runs.insert(run, running);
                        }
                        Err(e) => {
                            let end = RunEnd::Failed(format!("channel not started: {e}"));
                            self.queue.push_back(Event::RunEnded { run, handed_over: false, end, now: Instant::now() });
                        }
                    }
                }
                Action::Stop { run } => self.join(run),
                Action::ScheduleEnd { run, segment } => {
                    let frames = i64::from(status.segment_frames.load(Ordering::Relaxed).max(1));
                    let scheduled = self.runs.get(&run).is_some_and(|r| r.handover.schedule(segment, segment * frames));
                    if !scheduled {
                        tracing::warn!(run, segment, "the run ended before its end could be scheduled");
                    }
                }
                Action::TakeBack { run } => {
                    let kept = self.runs.get(&run).is_some_and(|r| r.handover.cancel());
                    self.queue.push_back(Event::TakenBack { run, kept, now: Instant::now() });
                }
                Action::Publish(config) => {
                    *write(&self.commands.config) = *config;
                }
                Action::Status(change) => match change {
                    StatusChange::WaitingForDevice(w) => status.waiting_for_device.store(w, Ordering::Relaxed),
                    StatusChange::InputFault(e) => *lock(&status.capture.input_fault) = Some(e),
                    StatusChange::ConfigError(e) => *lock(&status.config_error) = e,
                    StatusChange::RunError(e) => *lock(&status.run_error) = e,
                },
                Action::Hang(d) => {
                    status.capture.hang_ms.store(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                }
                Action::Slip(frames) => {
                    status.capture.slip_frames.fetch_add(frames, Ordering::Relaxed);
                }
                Action::LatencySpike(hold, lasting) => status.latency_drill.set(hold, lasting),
                Action::ClockFault(fault) => {
                    *lock(&status.clock_fault) = Some(fault);
                    if let Some(c) = lock(&status.media_clock).as_ref() {
                        c.fault().set(&fault);
                    }
                }
                Action::Reply(answer) => {
                    if let Some(reply) = self.reply.take() {
                        let _ = reply.send(answer);
                    }
                }
            }
        }
    }

    /// Stops every run, the one handing over first; the current run's
    /// summary, or the last one's when none runs.
    fn shut_down(&mut self, current: Option<RunId>) -> anyhow::Result<Option<RunSummary>> {
        self.taps.status.waiting_for_device.store(false, Ordering::Relaxed);
        let mut outcome = Ok(self.last.take());
        while let Some((id, run)) = self.runs.pop_first() {
            let result = finish(run);
            if Some(id) == current {
                outcome = result.map(Some).map_err(anyhow::Error::from);
            }
        }
        outcome
    }
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

/// Stops a run and joins it.
fn finish(run: Running) -> Result<RunSummary, PipelineError> {
    run.stop.store(true, Ordering::Relaxed);
    let result = run.thread.join();
    // Whatever happened, a successor waiting for the playlists stops waiting.
    run.handover.abandon();
    result.unwrap_or(Err(PipelineError::Panic("channel")))
}
