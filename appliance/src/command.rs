//! Commands to a channel's supervisor, its answers and why a command
//! failed. A leaf module: the admin API sends these, `channels` carries
//! them out, and neither imports the other's internals. The API changes a
//! running channel only through these.

use std::time::Duration;

use crate::config::{ClockFaultConfig, Config};

/// A command to a channel's supervisor.
#[derive(Debug, Clone)]
pub enum ChannelCommand {
    /// Start the pipeline (no-op when running).
    Start,
    /// Stop the pipeline (no-op when stopped); the daemon stays up.
    Stop,
    /// Run the channel with this configuration from now on (validated).
    Reconfigure(Box<Config>),
    /// Drill: the capture loop stops for this long, as a wedged data plane
    /// would (the watchdog's test).
    Hang(Duration),
    /// Replace the media clock's injected fault (drills), for the running
    /// clock and every later run.
    ClockFault(ClockFaultConfig),
    /// Drill: the capture slips by this many frames against the timeline
    /// (positive: its pictures arrive late, each numbered that many frames
    /// after the one the other appliances give it), as a capture that
    /// lost or gained frames would. The built-in test source only.
    Slip(i64),
    /// Drill: every rendition holds each segment it finishes this long
    /// before publishing it, for that long (an encode-latency spike).
    LatencySpike {
        /// Hold per segment.
        hold: Duration,
        /// How long the drill lasts.
        lasting: Duration,
    },
}

impl ChannelCommand {
    /// Name in the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            ChannelCommand::Start => "channel-start",
            ChannelCommand::Stop => "channel-stop",
            ChannelCommand::Reconfigure(_) => "channel-config",
            ChannelCommand::Hang(_) => "hang-drill",
            ChannelCommand::ClockFault(_) => "set-clock-fault",
            ChannelCommand::Slip(_) => "slip-drill",
            ChannelCommand::LatencySpike { .. } => "latency-drill",
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
    /// A drill or clock fault was handed to the running pipeline.
    Done,
}

/// Why a command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The command queue is full.
    #[error("the channel supervisor is busy; try again")]
    Busy,
    /// No answer in time (the supervisor is stuck or gone).
    #[error("no answer from the channel supervisor within {0:?}")]
    NoAnswer(Duration),
    /// A configuration change is still being applied.
    #[error("a configuration change is still being applied; try again in a few seconds")]
    ChangePending,
    /// The command needs a running channel.
    #[error("the channel is not running")]
    NotRunning,
    /// The supervisor answered with something else (a bug).
    #[error("the channel supervisor gave an unexpected answer: {0:?}")]
    Unexpected(Answer),
}
