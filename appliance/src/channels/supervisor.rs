//! A channel's supervisor as a pure state machine: [`step`] takes the
//! state and one event (a command, a run that ended, the passing of time)
//! and returns the next state with the actions to carry out. It starts no
//! thread and reads no clock, so every path (start, stop, reconfigure by
//! handover or reopen or restart, rollback, device retries with back-off)
//! is tested here without threads; `super::driver` carries the actions out
//! and feeds the events in.

use std::time::{Duration, Instant};

use crate::command::{Answer, Applied, ChannelCommand, CommandError};
use crate::config::{ClockFaultConfig, Config, Pacing, Role, SourceKind};

/// A pipeline run, numbered by the supervisor from 1.
pub type RunId = u64;

/// The run whose playlists a new run continues, and the segment it starts
/// at (none: the next boundary once it runs).
pub type After = (RunId, Option<i64>);

/// Where the channel is.
#[derive(Debug, Clone)]
pub enum ChannelState {
    /// No run: stopped by command, or a standby unit not started yet.
    Stopped,
    /// One run.
    Running {
        /// The run.
        run: RunId,
    },
    /// `run` (the new configuration) takes over from `retiring` at a
    /// boundary; `retiring` ends there.
    HandingOver {
        /// The successor.
        run: RunId,
        /// The run that ends at the boundary.
        retiring: RunId,
        /// The configuration `retiring` runs, to go back to.
        retiring_config: Box<Config>,
    },
    /// The successor failed before its turn; the supervisor asked to take
    /// back the end it had scheduled on `retiring`.
    TakingBack {
        /// The run that was to end.
        retiring: RunId,
        /// Its configuration.
        retiring_config: Box<Config>,
        /// Why the successor failed.
        error: String,
    },
    /// `run` ends at a boundary, then a run of the new configuration opens
    /// the source again (a capture device cannot be opened twice).
    Reopening {
        /// The run that ends.
        run: RunId,
        /// The configuration before, if the run fails first.
        previous: Box<Config>,
    },
    /// The capture device failed; the channel is started again at `retry_at`.
    WaitingForDevice {
        /// When.
        retry_at: Instant,
    },
    /// The run ended on its own (a file's end, a limit, an error); the
    /// channel waits for a start command. The daemon's first channel ends
    /// the daemon here.
    Ended {
        /// Why, if it failed.
        error: Option<String>,
    },
}

impl ChannelState {
    /// The run making the channel's segments now, if any.
    pub fn current(&self) -> Option<RunId> {
        match self {
            ChannelState::Running { run }
            | ChannelState::HandingOver { run, .. }
            | ChannelState::Reopening { run, .. } => Some(*run),
            ChannelState::TakingBack { retiring, .. } => Some(*retiring),
            ChannelState::Stopped | ChannelState::WaitingForDevice { .. } | ChannelState::Ended { .. } => None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Without an error: stopped, at a handover, or the source ended.
    Done,
    /// The capture device failed (worth a retry).
    Capture(String),
    /// Any other error, or the run could not be started.
    Failed(String),
}

impl RunEnd {
    fn error(&self) -> Option<&str> {
        match self {
            RunEnd::Done => None,
            RunEnd::Capture(e) | RunEnd::Failed(e) => Some(e),
        }
    }
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A command, when the channel is at segment `segment`.
    Command {
        /// The command.
        cmd: ChannelCommand,
        /// The segment the channel captures now.
        segment: i64,
        /// When.
        now: Instant,
    },
    /// A run finished (its thread is joined).
    RunEnded {
        /// The run.
        run: RunId,
        /// Whether it ended at a handover (its playlists continue).
        handed_over: bool,
        /// How.
        end: RunEnd,
        /// When.
        now: Instant,
    },
    /// The answer to [`Action::TakeBack`]: whether the run goes on.
    TakenBack {
        /// The run.
        run: RunId,
        /// True when it had not reached its end yet.
        kept: bool,
        /// When.
        now: Instant,
    },
    /// Time passes.
    Tick(Instant),
}

/// A status field the supervisor sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// Whether the channel waits for its capture device.
    WaitingForDevice(bool),
    /// The input's fault.
    InputFault(String),
    /// Why the last configuration change was rolled back.
    ConfigError(Option<String>),
    /// Why the last run ended with an error, while the channel is stopped.
    RunError(Option<String>),
}

/// What the driver does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Start run `run` with `config`; after `predecessor` (its playlists),
    /// from segment `first` (none: the next boundary once it runs).
    Start {
        /// The new run.
        run: RunId,
        /// Its configuration.
        config: Box<Config>,
        /// The run whose playlists it continues, and from which segment.
        after: Option<After>,
    },
    /// Stop run `run` and wait for it; its end comes back as an event.
    Stop {
        /// The run.
        run: RunId,
    },
    /// End run `run` before segment `segment` for a successor.
    ScheduleEnd {
        /// The run.
        run: RunId,
        /// The first segment it does not make.
        segment: i64,
    },
    /// Take back the end scheduled on `run`; answered by
    /// [`Event::TakenBack`].
    TakeBack {
        /// The run.
        run: RunId,
    },
    /// The configuration the channel runs with now, for readers.
    Publish(Box<Config>),
    /// Set a status field.
    Status(StatusChange),
    /// Stop the running capture loop for this long (a drill).
    Hang(Duration),
    /// Shift the capture's pictures against the timeline by this many
    /// frames (a drill).
    Slip(i64),
    /// Hold each finished segment this long, for that long (a drill).
    LatencySpike(Duration, Duration),
    /// Apply this clock fault to the running clock and later runs.
    ClockFault(ClockFaultConfig),
    /// Answer the command being handled.
    Reply(Result<Answer, CommandError>),
}

/// First wait before a failed capture device is tried again.
pub const DEVICE_RETRY_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between tries.
pub const DEVICE_RETRY_MAX: Duration = Duration::from_secs(30);
/// A run this long starts the device back-off afresh when it fails.
const GOOD_RUN: Duration = Duration::from_secs(60);
/// How long a configuration applied by a restart may fail and be rolled
/// back to the previous one.
pub const FALLBACK_WINDOW: Duration = Duration::from_secs(30);

/// Everything the supervisor remembers.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// Where the channel is.
    pub state: ChannelState,
    /// The configuration it runs (or will run when started).
    pub config: Config,
    /// The configuration before a restart, while the new one proves itself.
    fallback: Option<(Config, Instant)>,
    /// The next wait before the capture device is tried again.
    backoff: Duration,
    /// When the current run started.
    started_at: Instant,
    /// The last run id handed out.
    last_run: RunId,
}

impl Supervision {
    /// A channel with `config`: started unless the unit is a standby.
    pub fn new(config: Config, now: Instant) -> (Self, Vec<Action>) {
        let start = config.appliance.role == Role::Encoder;
        let mut s = Self {
            state: ChannelState::Stopped,
            config,
            fallback: None,
            backoff: DEVICE_RETRY_FIRST,
            started_at: now,
            last_run: 0,
        };
        let mut actions = Vec::new();
        if start {
            let run = s.start(&mut actions, None, now);
            s.state = ChannelState::Running { run };
        }
        (s, actions)
    }

    fn start(&mut self, actions: &mut Vec<Action>, after: Option<After>, now: Instant) -> RunId {
        self.last_run += 1;
        self.started_at = now;
        actions.push(Action::Start { run: self.last_run, config: Box::new(self.config.clone()), after });
        self.last_run
    }

    fn publish(&self, actions: &mut Vec<Action>) {
        actions.push(Action::Publish(Box::new(self.config.clone())));
    }
}

/// One step: the state after `event` and what to do for it.
pub fn step(mut s: Supervision, event: Event) -> (Supervision, Vec<Action>) {
    let mut actions = Vec::new();
    match event {
        Event::Tick(now) => tick(&mut s, &mut actions, now),
        Event::RunEnded { run, handed_over, end, now } => ended(&mut s, &mut actions, run, handed_over, end, now),
        Event::TakenBack { run, kept, now } => taken_back(&mut s, &mut actions, run, kept, now),
        Event::Command { cmd, segment, now } => command(&mut s, &mut actions, cmd, segment, now),
    }
    (s, actions)
}

fn tick(s: &mut Supervision, actions: &mut Vec<Action>, now: Instant) {
    s.fallback.take_if(|(_, since)| now.duration_since(*since) >= FALLBACK_WINDOW);
    if let ChannelState::WaitingForDevice { retry_at } = s.state
        && now >= retry_at
    {
        tracing::info!(channel = %s.config.channel.id, "starting the channel again");
        let run = s.start(actions, None, now);
        s.state = ChannelState::Running { run };
        actions.push(Action::Status(StatusChange::WaitingForDevice(false)));
    }
}

fn ended(s: &mut Supervision, actions: &mut Vec<Action>, run: RunId, handed_over: bool, end: RunEnd, now: Instant) {
    let id = s.config.channel.id.clone();
    match std::mem::replace(&mut s.state, ChannelState::Stopped) {
        ChannelState::HandingOver { run: next, retiring, .. } if retiring == run => {
            match end.error() {
                None => tracing::info!(channel = %id, "the previous run handed over and ended"),
                Some(e) => {
                    tracing::error!(channel = %id, "the previous run ended with an error after the handover: {e}")
                }
            }
            s.state = ChannelState::Running { run: next };
        }
        ChannelState::HandingOver { run: next, retiring, retiring_config } if next == run => match end.error() {
            // The successor failed before its turn: the run it was to take
            // over from goes on, if it has not ended yet.
            Some(error) => {
                actions.push(Action::TakeBack { run: retiring });
                let error = error.to_string();
                s.state = ChannelState::TakingBack { retiring, retiring_config, error };
            }
            None => {
                actions.push(Action::Stop { run: retiring });
                run_failed(s, actions, end, now);
            }
        },
        ChannelState::Reopening { run: current, previous } if current == run => {
            if handed_over {
                if let Some(e) = end.error() {
                    tracing::warn!(channel = %id, "the previous run ended with an error at the handover: {e}");
                }
                tracing::info!(channel = %id, "the previous run ended at its boundary; the new configuration starts");
                s.fallback = Some((*previous, now));
                let next = s.start(actions, Some((run, None)), now);
                s.state = ChannelState::Running { run: next };
            } else {
                // Failed before its boundary: the change is dropped.
                s.config = *previous;
                s.publish(actions);
                run_failed(s, actions, end, now);
            }
        }
        ChannelState::Running { run: current } if current == run => run_failed(s, actions, end, now),
        ChannelState::TakingBack { retiring, error, .. } if retiring == run => {
            // Ended before the answer came: the successor's failure stands.
            run_failed(s, actions, RunEnd::Failed(error), now);
        }
        other => {
            // A run the supervisor stopped itself.
            if let Some(e) = end.error() {
                tracing::warn!(channel = %id, run, "a stopped run ended with an error: {e}");
                if matches!(other, ChannelState::Stopped) {
                    actions.push(Action::Status(StatusChange::RunError(Some(e.to_string()))));
                }
            }
            s.state = other;
        }
    }
}

/// The current run ended on its own: roll back a configuration that has
/// just failed, retry a capture device, or stop.
fn run_failed(s: &mut Supervision, actions: &mut Vec<Action>, end: RunEnd, now: Instant) {
    let id = s.config.channel.id.clone();
    if let Some(e) = end.error()
        && let Some((previous, _)) = s.fallback.take()
    {
        tracing::error!(channel = %id, "new configuration failed, the channel goes back to the previous one: {e}");
        actions.push(Action::Status(StatusChange::ConfigError(Some(e.to_string()))));
        s.config = previous;
        s.publish(actions);
        let run = s.start(actions, None, now);
        s.state = ChannelState::Running { run };
        return;
    }
    match end {
        RunEnd::Capture(e) if s.config.source.kind == SourceKind::V4l2 => {
            if now.duration_since(s.started_at) >= GOOD_RUN {
                s.backoff = DEVICE_RETRY_FIRST;
            }
            tracing::error!(channel = %id, "channel stopped: {e}; retrying in {} s", s.backoff.as_secs());
            actions.push(Action::Status(StatusChange::InputFault(e)));
            actions.push(Action::Status(StatusChange::WaitingForDevice(true)));
            s.state = ChannelState::WaitingForDevice { retry_at: now + s.backoff };
            s.backoff = (s.backoff * 2).min(DEVICE_RETRY_MAX);
        }
        end => {
            let error = end.error().map(str::to_string);
            match &error {
                Some(e) => tracing::error!(channel = %id, "channel stopped: {e}; it waits for a start command"),
                None => tracing::info!(channel = %id, "the channel's run ended; it waits for a start command"),
            }
            actions.push(Action::Status(StatusChange::RunError(error.clone())));
            s.state = ChannelState::Ended { error };
        }
    }
}

fn taken_back(s: &mut Supervision, actions: &mut Vec<Action>, run: RunId, kept: bool, now: Instant) {
    let ChannelState::TakingBack { retiring, retiring_config, error } =
        std::mem::replace(&mut s.state, ChannelState::Stopped)
    else {
        return;
    };
    if retiring != run {
        s.state = ChannelState::TakingBack { retiring, retiring_config, error };
        return;
    }
    if kept {
        tracing::error!(channel = %s.config.channel.id, "new configuration failed, the channel goes back to the previous one: {error}");
        actions.push(Action::Status(StatusChange::ConfigError(Some(error))));
        s.config = *retiring_config;
        s.publish(actions);
        s.state = ChannelState::Running { run: retiring };
    } else {
        // Too late: the old run ends at its boundary with nobody to hand
        // over to. It is stopped; the failure is handled as any other.
        actions.push(Action::Stop { run: retiring });
        run_failed(s, actions, RunEnd::Failed(error), now);
    }
}

fn command(s: &mut Supervision, actions: &mut Vec<Action>, cmd: ChannelCommand, segment: i64, now: Instant) {
    let reply = match cmd {
        ChannelCommand::Start => {
            if s.state.current().is_none() {
                let run = s.start(actions, None, now);
                s.state = ChannelState::Running { run };
                actions.push(Action::Status(StatusChange::RunError(None)));
            }
            actions.push(Action::Status(StatusChange::WaitingForDevice(false)));
            Ok(Answer::Running(true))
        }
        ChannelCommand::Stop => {
            for run in runs(&s.state) {
                actions.push(Action::Stop { run });
            }
            if matches!(s.state, ChannelState::Ended { .. }) {
                // Stays ended: nothing runs, and the error stays shown.
            } else {
                s.state = ChannelState::Stopped;
            }
            actions.push(Action::Status(StatusChange::WaitingForDevice(false)));
            Ok(Answer::Running(false))
        }
        ChannelCommand::Reconfigure(new) => reconfigure(s, actions, *new, segment, now),
        ChannelCommand::Hang(d) => match s.state.current() {
            Some(_) => {
                actions.push(Action::Hang(d));
                Ok(Answer::Done)
            }
            None => Err(CommandError::NotRunning),
        },
        ChannelCommand::Slip(frames) => match s.state.current() {
            Some(_) => {
                actions.push(Action::Slip(frames));
                Ok(Answer::Done)
            }
            None => Err(CommandError::NotRunning),
        },
        ChannelCommand::LatencySpike { hold, lasting } => match s.state.current() {
            Some(_) => {
                actions.push(Action::LatencySpike(hold, lasting));
                Ok(Answer::Done)
            }
            None => Err(CommandError::NotRunning),
        },
        ChannelCommand::ClockFault(fault) => {
            actions.push(Action::ClockFault(fault));
            Ok(Answer::Done)
        }
    };
    actions.push(Action::Reply(reply));
}

/// Every run alive in `state`.
fn runs(state: &ChannelState) -> Vec<RunId> {
    match state {
        ChannelState::HandingOver { run, retiring, .. } => vec![*retiring, *run],
        other => other.current().into_iter().collect(),
    }
}

fn reconfigure(
    s: &mut Supervision,
    actions: &mut Vec<Action>,
    new: Config,
    segment: i64,
    now: Instant,
) -> Result<Answer, CommandError> {
    actions.push(Action::Status(StatusChange::ConfigError(None)));
    if !more_than_bitrates(&s.config, &new) {
        s.config = new;
        s.publish(actions);
        return Ok(Answer::Applied(Applied::Live));
    }
    let run = match &s.state {
        ChannelState::Running { run } => *run,
        ChannelState::HandingOver { .. } | ChannelState::Reopening { .. } | ChannelState::TakingBack { .. } => {
            return Err(CommandError::ChangePending);
        }
        ChannelState::Stopped | ChannelState::WaitingForDevice { .. } | ChannelState::Ended { .. } => {
            s.config = new;
            s.publish(actions);
            return Ok(Answer::Applied(Applied::Stored));
        }
    };
    let from = segment + crate::control::lead_segments(s.config.channel.segment_seconds);
    let id = s.config.channel.id.clone();
    let applied = if seamless(&s.config, &new) {
        tracing::info!(channel = %id, from_segment = from, "new configuration: handover scheduled");
        actions.push(Action::ScheduleEnd { run, segment: from });
        let retiring_config = Box::new(std::mem::replace(&mut s.config, new));
        let next = s.start(actions, Some((run, Some(from))), now);
        s.state = ChannelState::HandingOver { run: next, retiring: run, retiring_config };
        Applied::Handover { from_segment: from }
    } else if continuous(&s.config, &new) {
        tracing::info!(channel = %id, from_segment = from, "new configuration: the channel reopens its source at a boundary");
        actions.push(Action::ScheduleEnd { run, segment: from });
        let previous = Box::new(std::mem::replace(&mut s.config, new));
        s.state = ChannelState::Reopening { run, previous };
        Applied::Reopen { from_segment: from }
    } else {
        tracing::info!(channel = %id, "new configuration: the channel restarts");
        actions.push(Action::Stop { run });
        s.fallback = Some((std::mem::replace(&mut s.config, new), now));
        let next = s.start(actions, None, now);
        s.state = ChannelState::Running { run: next };
        Applied::Restart
    };
    s.publish(actions);
    Ok(Answer::Applied(applied))
}

/// Whether `a` and `b` differ in more than rendition bitrates.
pub fn more_than_bitrates(a: &Config, b: &Config) -> bool {
    let without = |c: &Config| {
        let mut c = c.clone();
        c.renditions.iter_mut().for_each(|r| r.bitrate_kbps = 0);
        serde_json::to_value(&c).unwrap_or_default()
    };
    without(a) != without(b)
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(kind: SourceKind) -> Config {
        let mut c = Config::embedded_default();
        c.source.kind = kind;
        c
    }

    /// The same channel with a different picture size: more than bitrates.
    fn resized(c: &Config) -> Config {
        let mut c = c.clone();
        c.source.width = 1280;
        c
    }

    fn command_at(s: Supervision, cmd: ChannelCommand, now: Instant) -> (Supervision, Vec<Action>) {
        step(s, Event::Command { cmd, segment: 100, now })
    }

    /// Reconfigures with [`resized`].
    fn resize(s: Supervision, now: Instant) -> (Supervision, Vec<Action>) {
        let new = resized(&s.config);
        command_at(s, ChannelCommand::Reconfigure(Box::new(new)), now)
    }

    fn ended_at(
        s: Supervision,
        run: RunId,
        handed_over: bool,
        end: RunEnd,
        now: Instant,
    ) -> (Supervision, Vec<Action>) {
        step(s, Event::RunEnded { run, handed_over, end, now })
    }

    fn starts(actions: &[Action]) -> Vec<(RunId, Option<After>)> {
        actions
            .iter()
            .filter_map(|a| if let Action::Start { run, after, .. } = a { Some((*run, *after)) } else { None })
            .collect()
    }

    fn stops(actions: &[Action]) -> Vec<RunId> {
        actions.iter().filter_map(|a| if let Action::Stop { run } = a { Some(*run) } else { None }).collect()
    }

    fn reply(actions: &[Action]) -> Result<Answer, CommandError> {
        let replies: Vec<_> =
            actions.iter().filter_map(|a| if let Action::Reply(r) = a { Some(r.clone()) } else { None }).collect();
        assert_eq!(replies.len(), 1, "one answer per command: {actions:?}");
        replies[0].clone()
    }

    fn status(actions: &[Action]) -> Vec<StatusChange> {
        actions.iter().filter_map(|a| if let Action::Status(c) = a { Some(c.clone()) } else { None }).collect()
    }

    fn published_width(actions: &[Action]) -> Option<u32> {
        actions.iter().rev().find_map(|a| if let Action::Publish(c) = a { Some(c.source.width) } else { None })
    }

    #[test]
    fn an_encoder_starts_a_standby_waits_and_start_and_stop_are_idempotent() {
        let t = Instant::now();
        let (s, actions) = Supervision::new(config(SourceKind::Test), t);
        assert_eq!(starts(&actions), [(1, None)]);
        assert!(matches!(s.state, ChannelState::Running { run: 1 }));
        let (s, actions) = command_at(s, ChannelCommand::Start, t);
        assert!(starts(&actions).is_empty(), "already running");
        assert_eq!(reply(&actions), Ok(Answer::Running(true)));
        let (s, actions) = command_at(s, ChannelCommand::Stop, t);
        assert_eq!(stops(&actions), [1]);
        assert_eq!(reply(&actions), Ok(Answer::Running(false)));
        assert!(matches!(s.state, ChannelState::Stopped));
        let (s, actions) = command_at(s, ChannelCommand::Stop, t);
        assert!(stops(&actions).is_empty());
        assert_eq!(reply(&actions), Ok(Answer::Running(false)));
        let (s, actions) = command_at(s, ChannelCommand::Start, t);
        assert_eq!(starts(&actions), [(2, None)]);
        assert!(matches!(s.state, ChannelState::Running { run: 2 }));

        let mut standby = config(SourceKind::Test);
        standby.appliance.role = Role::Standby;
        let (s, actions) = Supervision::new(standby, t);
        assert!(actions.is_empty());
        assert!(matches!(s.state, ChannelState::Stopped));
    }

    #[test]
    fn bitrates_apply_live_and_a_stopped_channel_stores_its_configuration() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::Test), t);
        let mut cheaper = s.config.clone();
        cheaper.renditions[0].bitrate_kbps /= 2;
        let (s, actions) = command_at(s, ChannelCommand::Reconfigure(Box::new(cheaper)), t);
        assert_eq!(reply(&actions), Ok(Answer::Applied(Applied::Live)));
        assert!(starts(&actions).is_empty() && stops(&actions).is_empty(), "{actions:?}");
        let (s, _) = command_at(s, ChannelCommand::Stop, t);
        let new = resized(&s.config);
        let (s, actions) = command_at(s, ChannelCommand::Reconfigure(Box::new(new)), t);
        assert_eq!(reply(&actions), Ok(Answer::Applied(Applied::Stored)));
        assert!(starts(&actions).is_empty());
        assert_eq!(published_width(&actions), Some(1280));
        let (_, actions) = command_at(s, ChannelCommand::Start, t);
        assert!(matches!(&actions[0], Action::Start { config, .. } if config.source.width == 1280));
    }

    #[test]
    fn a_live_test_source_hands_over_at_a_boundary_and_refuses_a_second_change_meanwhile() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::Test), t);
        let from = 100 + crate::control::lead_segments(s.config.channel.segment_seconds);
        let new = resized(&s.config);
        let (s, actions) = command_at(s, ChannelCommand::Reconfigure(Box::new(new.clone())), t);
        assert_eq!(reply(&actions), Ok(Answer::Applied(Applied::Handover { from_segment: from })));
        assert!(matches!(actions[1], Action::ScheduleEnd { run: 1, segment } if segment == from), "{actions:?}");
        assert_eq!(starts(&actions), [(2, Some((1, Some(from))))], "the successor starts at once");
        assert!(stops(&actions).is_empty());
        let mut other = new.clone();
        other.source.width = 640;
        let (s, actions) = command_at(s, ChannelCommand::Reconfigure(Box::new(other)), t);
        assert_eq!(reply(&actions), Err(CommandError::ChangePending));
        let (s, actions) = ended_at(s, 1, true, RunEnd::Done, t);
        assert!(actions.is_empty());
        assert!(matches!(s.state, ChannelState::Running { run: 2 }));
        assert_eq!(s.config.source.width, 1280);
    }

    #[test]
    fn a_successor_that_fails_before_its_turn_gives_the_channel_back_to_the_old_run() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::Test), t);
        let (s, _) = resize(s, t);
        let (s, actions) = ended_at(s, 2, false, RunEnd::Failed("encoder: no".into()), t);
        assert!(matches!(actions[..], [Action::TakeBack { run: 1 }]), "{actions:?}");
        let (s, actions) = step(s, Event::TakenBack { run: 1, kept: true, now: t });
        assert!(matches!(s.state, ChannelState::Running { run: 1 }));
        assert_eq!(s.config.source.width, 1920, "the old configuration again");
        assert_eq!(published_width(&actions), Some(1920));
        assert_eq!(status(&actions), [StatusChange::ConfigError(Some("encoder: no".into()))]);

        // Too late to take back: the old run is stopped and the channel ends.
        let (s, _) = resize(s, t);
        let (s, _) = ended_at(s, 3, false, RunEnd::Failed("encoder: no".into()), t);
        let (s, actions) = step(s, Event::TakenBack { run: 1, kept: false, now: t });
        assert_eq!(stops(&actions), [1]);
        assert!(matches!(&s.state, ChannelState::Ended { error: Some(e) } if e == "encoder: no"));
    }

    #[test]
    fn a_capture_device_reopens_at_a_boundary_and_a_new_configuration_that_fails_is_rolled_back() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::V4l2), t);
        let from = 100 + crate::control::lead_segments(s.config.channel.segment_seconds);
        let (s, actions) = resize(s, t);
        assert_eq!(reply(&actions), Ok(Answer::Applied(Applied::Reopen { from_segment: from })));
        assert!(starts(&actions).is_empty(), "the device is opened once the old run let it go");
        let (s, actions) = ended_at(s, 1, true, RunEnd::Done, t);
        assert_eq!(starts(&actions), [(2, Some((1, None)))]);
        // The new run fails soon: the previous configuration runs again.
        let later = t + Duration::from_secs(5);
        let (s, actions) = ended_at(s, 2, false, RunEnd::Failed("format refused".into()), later);
        assert_eq!(starts(&actions), [(3, None)]);
        assert_eq!(s.config.source.width, 1920);
        assert_eq!(status(&actions), [StatusChange::ConfigError(Some("format refused".into()))]);

        // A run that fails before its boundary drops the change.
        let (s, _) = resize(s, later);
        let (s, actions) = ended_at(s, 3, false, RunEnd::Failed("gone".into()), later);
        assert_eq!(published_width(&actions), Some(1920));
        assert!(matches!(&s.state, ChannelState::Ended { error: Some(e) } if e == "gone"));
    }

    #[test]
    fn a_restart_is_rolled_back_only_within_its_window() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::File), t);
        let (s, actions) = resize(s, t);
        assert_eq!(reply(&actions), Ok(Answer::Applied(Applied::Restart)));
        assert_eq!(stops(&actions), [1]);
        assert_eq!(starts(&actions), [(2, None)]);
        // The old run's end, joined by the stop, changes nothing.
        let (s, actions) = ended_at(s, 1, false, RunEnd::Done, t);
        assert!(actions.is_empty() && matches!(s.state, ChannelState::Running { run: 2 }));
        let (s, actions) = ended_at(s, 2, false, RunEnd::Failed("no such file".into()), t + Duration::from_secs(1));
        assert_eq!(starts(&actions), [(3, None)], "rolled back");
        assert_eq!(s.config.source.width, 1920);

        let (s, _) = resize(s, t);
        let (s, _) = step(s, Event::Tick(t + FALLBACK_WINDOW));
        let (s, actions) = ended_at(s, 4, false, RunEnd::Failed("decoder".into()), t + FALLBACK_WINDOW);
        assert!(starts(&actions).is_empty(), "too late to roll back");
        assert_eq!(status(&actions), [StatusChange::RunError(Some("decoder".into()))]);
        let (s, actions) = command_at(s, ChannelCommand::Start, t + FALLBACK_WINDOW);
        assert_eq!(starts(&actions), [(5, None)]);
        assert!(status(&actions).contains(&StatusChange::RunError(None)));
        assert_eq!(s.config.source.width, 1280, "the failed configuration stays for the operator to fix");
    }

    #[test]
    fn a_failed_capture_device_is_retried_with_back_off_until_stopped() {
        let t = Instant::now();
        let (mut s, _) = Supervision::new(config(SourceKind::V4l2), t);
        let mut now = t;
        let mut run = 1;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (next, actions) = ended_at(s, run, false, RunEnd::Capture("no signal".into()), now);
            assert!(status(&actions).contains(&StatusChange::WaitingForDevice(true)));
            let ChannelState::WaitingForDevice { retry_at } = next.state else { panic!("{:?}", next.state) };
            waits.push(retry_at.duration_since(now).as_secs());
            let (next, actions) = step(next, Event::Tick(retry_at - Duration::from_millis(1)));
            assert!(starts(&actions).is_empty(), "not before its time");
            let (next, actions) = step(next, Event::Tick(retry_at));
            run += 1;
            assert_eq!(starts(&actions), [(run, None)]);
            assert!(status(&actions).contains(&StatusChange::WaitingForDevice(false)));
            (s, now) = (next, retry_at);
        }
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        // A long good run starts the back-off afresh.
        now += GOOD_RUN;
        let (s, _) = ended_at(s, run, false, RunEnd::Capture("no signal".into()), now);
        let ChannelState::WaitingForDevice { retry_at } = s.state else { panic!("{:?}", s.state) };
        assert_eq!(retry_at.duration_since(now), DEVICE_RETRY_FIRST);
        // An operator's stop ends the retries.
        let (s, actions) = command_at(s, ChannelCommand::Stop, now);
        assert!(status(&actions).contains(&StatusChange::WaitingForDevice(false)));
        let (s, actions) = step(s, Event::Tick(now + DEVICE_RETRY_MAX));
        assert!(starts(&actions).is_empty());
        assert!(matches!(s.state, ChannelState::Stopped));
        // A file's capture error is not retried.
        let (s, _) = Supervision::new(config(SourceKind::File), t);
        let (s, _) = ended_at(s, 1, false, RunEnd::Capture("truncated".into()), t);
        assert!(matches!(s.state, ChannelState::Ended { .. }));
    }

    #[test]
    fn drills_need_a_run_and_a_stop_that_finds_an_error_shows_it() {
        let t = Instant::now();
        let (s, _) = Supervision::new(config(SourceKind::Test), t);
        let (s, actions) = command_at(s, ChannelCommand::Hang(Duration::from_secs(3)), t);
        assert!(matches!(actions[0], Action::Hang(d) if d == Duration::from_secs(3)));
        assert_eq!(reply(&actions), Ok(Answer::Done));
        let (s, actions) = command_at(s, ChannelCommand::Slip(-2), t);
        assert!(matches!(actions[0], Action::Slip(-2)));
        assert_eq!(reply(&actions), Ok(Answer::Done));
        let spike = ChannelCommand::LatencySpike { hold: Duration::from_millis(800), lasting: Duration::from_secs(5) };
        let (s, actions) = command_at(s, spike.clone(), t);
        assert!(matches!(actions[0], Action::LatencySpike(h, l) if h.as_millis() == 800 && l.as_secs() == 5));
        assert_eq!(reply(&actions), Ok(Answer::Done));
        let (s, _) = command_at(s, ChannelCommand::Stop, t);
        let (s, actions) = ended_at(s, 1, false, RunEnd::Failed("disk full".into()), t);
        assert_eq!(status(&actions), [StatusChange::RunError(Some("disk full".into()))]);
        let (s, actions) = command_at(s, ChannelCommand::Hang(Duration::from_secs(3)), t);
        assert_eq!(reply(&actions), Err(CommandError::NotRunning));
        let (s, actions) = command_at(s, ChannelCommand::Slip(1), t);
        assert_eq!(reply(&actions), Err(CommandError::NotRunning));
        let (s, actions) = command_at(s, spike, t);
        assert_eq!(reply(&actions), Err(CommandError::NotRunning));
        let (_, actions) = command_at(s, ChannelCommand::ClockFault(ClockFaultConfig::default()), t);
        assert!(matches!(actions[0], Action::ClockFault(_)), "a fault is kept for the next run");
    }
}
