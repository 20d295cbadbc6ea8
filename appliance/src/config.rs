//! Appliance configuration: TOML, strict, validated once at load.
//!
//! Unknown keys are errors (`deny_unknown_fields`), and every semantic check
//! names the key and the values it allows. The default configuration ships
//! in the repository (`appliance/config/default.toml`) and is embedded in
//! the binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::timeline::Rate;

/// The configuration the appliance runs with when given no file.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// The light configuration `lockstep demo` runs (three fit on two cores).
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key.
    #[error("config {origin}: {message}")]
    Parse {
        /// File path or "embedded defaults".
        origin: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value outside what is allowed.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Allowed video bitrates, kbit/s.
pub const BITRATE_KBPS: std::ops::RangeInclusive<u32> = 50..=100_000;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// Whole appliance configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity of this unit.
    #[serde(default)]
    pub appliance: ApplianceConfig,
    /// Media clock.
    #[serde(default)]
    pub clock: ClockConfig,
    /// The channel this appliance encodes.
    pub channel: ChannelConfig,
    /// Where frames come from.
    pub source: SourceConfig,
    /// Audio track.
    #[serde(default)]
    pub audio: AudioConfig,
    /// Video encoder backend.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// ABR ladder, highest first.
    pub renditions: Vec<RenditionConfig>,
    /// Segment store and playlists.
    pub output: OutputConfig,
    /// Built-in HTTP origin.
    #[serde(default)]
    pub origin: OriginConfig,
    /// Buffering between pipeline stages.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Membership in a swarm of appliances.
    #[serde(default)]
    pub swarm: SwarmConfig,
    /// Admin page and REST API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// CDN edges in front of the origins, their health and the players'
    /// steering between them (HLS Content Steering).
    #[serde(default)]
    pub steering: SteeringConfig,
    /// The health agents' figures over time (`crate::history`).
    #[serde(default)]
    pub history: HistoryConfig,
    /// More channels on this appliance besides `[channel]` (also created
    /// and deleted through the API): each with its own source, ladder and
    /// playlists, encoded by this appliance alone (`crate::channels`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelSpec>,
}

/// One more channel of the appliance: `[[channels]]`, with the sections
/// of the first channel (`channel`, `source`, `audio`, `encoder`,
/// `renditions`); everything else (clock, output, pipeline) is the
/// appliance's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// Its id and segment duration.
    pub channel: ChannelConfig,
    /// Where its frames come from.
    pub source: SourceConfig,
    /// Its audio track.
    #[serde(default)]
    pub audio: AudioConfig,
    /// Its video encoder backend.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// Its ABR ladder, highest first.
    pub renditions: Vec<RenditionConfig>,
    /// Whether it runs from the daemon's start (`false`: it waits for a
    /// start command).
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// Channel ids no channel may take: `combined` holds the swarm's
/// combined playlists in the output directory.
const RESERVED_CHANNEL_IDS: [&str; 1] = ["combined"];

/// The admin page and REST API (docs/admin.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listen address ("127.0.0.1:9080"); absent = no admin page or API.
    pub listen: Option<String>,
    /// File with the argon2 hash of the admin password, written by
    /// `lockstep passwd` (no password is built in).
    pub password_file: Option<PathBuf>,
    /// File of API token hashes (`lockstep token`), one per line.
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain; with `tls_key`, the API speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Audit log of changes and logins (JSON lines); default
    /// `<output.dir>/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// Lifetime of a login session, minutes.
    pub session_minutes: u32,
    /// Failed logins allowed per client address per minute.
    pub login_attempts_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            password_file: None,
            tokens_file: None,
            tls_cert: None,
            tls_key: None,
            audit_log: None,
            session_minutes: 480,
            login_attempts_per_minute: 5,
        }
    }
}

impl AdminConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(listen) = &self.listen else { return Ok(()) };
        listen
            .parse::<SocketAddr>()
            .map_err(|_| invalid("admin.listen", format!("`{listen}` is not an address like \"127.0.0.1:9080\"")))?;
        if self.password_file.is_none() && self.tokens_file.is_none() {
            return Err(invalid(
                "admin.password_file",
                "required with admin.listen (set a password with `lockstep passwd --file PATH`); there is no default password",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("admin.tls_key", "set both admin.tls_cert and admin.tls_key, or neither"));
        }
        if !(1..=10_080).contains(&self.session_minutes) {
            return Err(invalid("admin.session_minutes", "allowed: 1 to 10080 (a week)"));
        }
        if !(1..=1000).contains(&self.login_attempts_per_minute) {
            return Err(invalid("admin.login_attempts_per_minute", "allowed: 1 to 1000"));
        }
        Ok(())
    }
}

/// Swarm membership and state exchange (docs/swarm.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// Join a swarm.
    pub enabled: bool,
    /// UDP address the swarm traffic uses.
    pub bind: SocketAddr,
    /// Address peers reach this node at, if not `bind` (NAT, 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Nodes to announce to at start (any members; others are learnt).
    pub seeds: Vec<SocketAddr>,
    /// File with the fleet key: 64 hex digits, mode 600.
    pub fleet_key_file: Option<PathBuf>,
    /// How often each node sends its Encoding State Packet, ms.
    pub state_interval_ms: u32,
    /// SWIM probe period, ms.
    pub probe_period_ms: u32,
    /// A suspected member is declared down after this long, ms.
    pub suspect_after_ms: u32,
    /// Expected swarm size (sizes gossip fan-out).
    pub expected_nodes: u32,
    /// Preferred neighbours kept per node (3–7).
    pub neighbours: u32,
    /// A neighbour's media clock predicted to reach half a frame from
    /// this node's within this many seconds is flagged and corrected
    /// (docs/swarm.md, "Drift"); 0 switches prediction off: only a clock
    /// measured half a frame off is (the reactive baseline of
    /// `lockstep bench resync`).
    pub drift_horizon_s: f64,
    /// Longest a finished video segment waits, before it is published,
    /// for the neighbours' fingerprints of its frames; one a majority
    /// captured other pictures for is encoded from theirs first
    /// (docs/swarm.md, "Agreement before publication"). 0 publishes at
    /// once (a misaligned segment is then replaced after). Needs
    /// `pipeline.rework_segments` above 0.
    pub majority_wait_ms: u32,
    /// Where the node writes its view of the swarm (JSON), if anywhere.
    pub status_file: Option<PathBuf>,
    /// What starts a standby unit's channel (`appliance.role =
    /// "standby"`; docs/swarm.md, "Standby units").
    pub standby_prepares: StandbyPrepares,
    /// A standby unit stops a channel it started once no encoder of it
    /// has been in trouble this long, s (5–3600).
    pub standby_release_s: u32,
}

/// What starts a standby unit's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StandbyPrepares {
    /// An encoder of the channel predicted to fail (its alarm up), or one
    /// that failed (down or silent).
    Predicted,
    /// Only an encoder that failed: the reactive baseline.
    Failed,
    /// Only an operator's start command.
    Manual,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            bind: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            seeds: Vec::new(),
            fleet_key_file: None,
            state_interval_ms: 500,
            probe_period_ms: 500,
            suspect_after_ms: 1_500,
            expected_nodes: 16,
            neighbours: 5,
            drift_horizon_s: 10.0,
            majority_wait_ms: 1_000,
            status_file: None,
            standby_prepares: StandbyPrepares::Predicted,
            standby_release_s: 60,
        }
    }
}

impl SwarmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.fleet_key_file.is_none() {
            return Err(invalid(
                "swarm.fleet_key_file",
                "required when swarm.enabled = true (swarm traffic is always authenticated)",
            ));
        }
        if self.advertise.is_none() && self.bind.ip().is_unspecified() {
            return Err(invalid("swarm.advertise", "required when swarm.bind is a wildcard address"));
        }
        if !(50..=10_000).contains(&self.state_interval_ms) {
            return Err(invalid("swarm.state_interval_ms", "must be between 50 and 10000"));
        }
        if !(100..=10_000).contains(&self.probe_period_ms) {
            return Err(invalid("swarm.probe_period_ms", "must be between 100 and 10000"));
        }
        if self.suspect_after_ms < self.probe_period_ms {
            return Err(invalid("swarm.suspect_after_ms", "must be at least swarm.probe_period_ms"));
        }
        if !(2..=1000).contains(&self.expected_nodes) {
            return Err(invalid("swarm.expected_nodes", "must be between 2 and 1000"));
        }
        if !(3..=7).contains(&self.neighbours) {
            return Err(invalid("swarm.neighbours", "must be between 3 and 7"));
        }
        if self.drift_horizon_s != 0.0 && !(1.0..=600.0).contains(&self.drift_horizon_s) {
            return Err(invalid("swarm.drift_horizon_s", "must be 0 (no prediction) or between 1 and 600 seconds"));
        }
        if !(5..=3600).contains(&self.standby_release_s) {
            return Err(invalid("swarm.standby_release_s", "must be between 5 and 3600 seconds"));
        }
        if self.majority_wait_ms > 10_000 {
            return Err(invalid("swarm.majority_wait_ms", "must be 0 (publish at once) to 10000"));
        }
        Ok(())
    }
}

/// Identity of this unit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Unit name, unique in a fleet.
    pub id: String,
    /// What the unit does when the daemon starts.
    pub role: Role,
}

impl Default for ApplianceConfig {
    fn default() -> Self {
        Self { id: "lockstep-1".into(), role: Role::Encoder }
    }
}

/// An appliance's part in its fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Encodes its channel from start-up.
    Encoder,
    /// Starts with its channel stopped: the daemon, origin, admin API and
    /// swarm membership run, and the channel starts on command.
    Standby,
}

/// Media clock source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSource {
    /// The system clock (NTP/chrony-disciplined) plus the TAI offset.
    System,
    /// Offsets ptp4l reports over its management socket (software
    /// timestamping, or hardware timestamping with `phc`/`interface` set).
    Ptp4l,
    /// A PTP hardware clock kept on time by something else (ptp4l without
    /// a reachable socket, ts2phc from GNSS).
    Phc,
}

/// Media clock settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Where media time comes from.
    pub source: ClockSource,
    /// TAI − UTC in seconds (37 since 2017). With `source = "ptp4l"` the
    /// grandmaster's announced offset wins when it marks it valid.
    pub utc_tai_offset_s: i64,
    /// ptp4l's management socket (its `uds_address`).
    pub ptp4l_socket: PathBuf,
    /// PTP domain ptp4l runs in.
    pub domain: u8,
    /// PTP hardware clock device (`/dev/ptp0`): for `source = "phc"`, or
    /// with `ptp4l` when ptp4l uses hardware timestamping.
    pub phc: Option<PathBuf>,
    /// Network interface whose PTP hardware clock to use (instead of `phc`).
    pub interface: Option<String>,
    /// How often the source is read, ms.
    pub poll_interval_ms: u32,
    /// How long start-up waits for the clock to lock before it starts on
    /// the system clock (and slews once locked), s.
    pub lock_wait_s: f64,
    /// Locked when the estimated error is below this, ns.
    pub lock_threshold_ns: f64,
    /// Standard deviation of one offset measurement, ns.
    pub measurement_noise_ns: f64,
    /// No measurement for this long: holdover, ms.
    pub holdover_after_ms: u32,
    /// Largest correction rate, parts per million of elapsed time.
    pub max_slew_ppm: f64,
    /// Deliberate errors for tests and drills.
    pub fault: ClockFaultConfig,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            source: ClockSource::System,
            utc_tai_offset_s: 37,
            ptp4l_socket: PathBuf::from("/var/run/ptp4l"),
            domain: 0,
            phc: None,
            interface: None,
            poll_interval_ms: 250,
            lock_wait_s: 15.0,
            lock_threshold_ns: 10_000.0,
            measurement_noise_ns: 1_000.0,
            holdover_after_ms: 2_000,
            max_slew_ppm: 500.0,
            fault: ClockFaultConfig::default(),
        }
    }
}

/// Errors injected into the media clock on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockFaultConfig {
    /// Constant offset added to media time, ns.
    pub offset_ns: i64,
    /// Frequency error: media time gains this many ppm from start.
    pub frequency_ppm: f64,
    /// A step added `step_after_s` after start, ns (negative: back).
    pub step_ns: i64,
    /// When the step happens, s after the clock starts.
    pub step_after_s: f64,
}

impl ClockFaultConfig {
    /// Checks the values: the field at fault and what is allowed.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        const HOUR_NS: i64 = 3_600_000_000_000;
        if !(-1_000.0..=1_000.0).contains(&self.frequency_ppm) {
            return Err(("frequency_ppm", "must be between -1000 and 1000"));
        }
        if !(0.0..=1e6).contains(&self.step_after_s) {
            return Err(("step_after_s", "must be between 0 and 1e6"));
        }
        if self.offset_ns.abs() > HOUR_NS {
            return Err(("offset_ns", "must be within one hour (±3.6e12 ns)"));
        }
        if self.step_ns.abs() > HOUR_NS {
            return Err(("step_ns", "must be within one hour (±3.6e12 ns)"));
        }
        Ok(())
    }
}

impl ClockConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(-100..=100).contains(&self.utc_tai_offset_s) {
            return Err(invalid("clock.utc_tai_offset_s", "must be between -100 and 100 (37 since 2017)"));
        }
        if !(10..=10_000).contains(&self.poll_interval_ms) {
            return Err(invalid("clock.poll_interval_ms", "must be between 10 and 10000"));
        }
        if self.holdover_after_ms < 2 * self.poll_interval_ms {
            return Err(invalid("clock.holdover_after_ms", "must be at least twice clock.poll_interval_ms"));
        }
        if !(0.0..=600.0).contains(&self.lock_wait_s) {
            return Err(invalid("clock.lock_wait_s", "must be between 0 and 600"));
        }
        if !(10.0..=1e9).contains(&self.lock_threshold_ns) {
            return Err(invalid("clock.lock_threshold_ns", "must be between 10 and 1e9"));
        }
        if !(1.0..=1e9).contains(&self.measurement_noise_ns) {
            return Err(invalid("clock.measurement_noise_ns", "must be between 1 and 1e9"));
        }
        if !(1.0..=100_000.0).contains(&self.max_slew_ppm) {
            return Err(invalid("clock.max_slew_ppm", "must be between 1 and 100000"));
        }
        if self.phc.is_some() && self.interface.is_some() {
            return Err(invalid("clock.interface", "set clock.phc or clock.interface, not both"));
        }
        if self.source == ClockSource::Phc && self.phc.is_none() && self.interface.is_none() {
            return Err(invalid("clock.phc", "source = \"phc\" needs clock.phc (a /dev/ptpN) or clock.interface"));
        }
        self.fault.check().map_err(|(field, message)| invalid(format!("clock.fault.{field}"), message))?;
        Ok(())
    }
}

/// Channel settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Channel id: names the output directory; `[a-z0-9_-]`.
    pub id: String,
    /// Nominal segment duration; rounded to whole frames.
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: f64,
}

fn default_segment_seconds() -> f64 {
    2.0
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// The built-in deterministic test pattern and tone generator.
    Test,
    /// A file: Y4M read directly, anything else decoded by ffmpeg.
    File,
    /// A Video4Linux2 capture device (capture card, camera).
    V4l2,
}

/// Pacing of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// One frame per frame period of the media clock (live).
    Realtime,
    /// As fast as the pipeline takes frames (tests, benchmarks, transcode).
    Fast,
}

/// Source settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Which source.
    pub kind: SourceKind,
    /// File path (kind = "file").
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Test source width.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Test source height.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Test source frame rate ("25", "29.97", "30000/1001"; a bare number
    /// such as `fps = 29.97` is taken as its text).
    #[serde(default = "default_fps", deserialize_with = "fps_text")]
    pub fps: String,
    /// Real time or as fast as possible.
    #[serde(default = "default_pacing")]
    pub pacing: Pacing,
    /// Restart a file at its end.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Fast pacing only: the frame number of the first frame (default: the
    /// media clock's current frame).
    #[serde(default)]
    pub start_frame: Option<i64>,
    /// V4L2 device node (kind = "v4l2").
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// V4L2 input to select (default: the device's current input).
    #[serde(default)]
    pub input: Option<u32>,
    /// V4L2 pixel format: auto, yu12, nv12, yuyv or uyvy.
    #[serde(default = "default_pixel_format")]
    pub pixel_format: String,
    /// V4L2 buffers in the ring.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// V4L2: a frame missing this long is an input fault.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_pixel_format() -> String {
    "auto".into()
}
fn default_buffers() -> u32 {
    8
}
fn default_timeout_ms() -> u32 {
    500
}

fn default_width() -> u32 {
    1920
}
fn default_height() -> u32 {
    1080
}
fn default_fps() -> String {
    "30".into()
}

/// A frame rate as text: `"29.97"`, `"30000/1001"`, or a bare number
/// (`29.97`, `25`) written without quotes.
fn fps_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Fps {
        Text(String),
        Whole(u64),
        Number(f64),
    }
    match Fps::deserialize(d) {
        Ok(Fps::Text(s)) => Ok(s),
        Ok(Fps::Whole(n)) => Ok(n.to_string()),
        Ok(Fps::Number(x)) => Ok(x.to_string()),
        Err(_) => Err(serde::de::Error::custom(
            "a frame rate: a number (25, 29.97) or a fraction as a string (\"30000/1001\")",
        )),
    }
}
fn default_pacing() -> Pacing {
    Pacing::Realtime
}

/// Audio settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// Encode an audio track (when the source has audio).
    pub enabled: bool,
    /// Opus bitrate.
    pub bitrate_kbps: u32,
    /// 1 or 2.
    pub channels: u16,
    /// Audio packets encoded before each segment and dropped, so the
    /// encoder is warm at the boundary (20 ms each).
    pub warmup_packets: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self { enabled: true, bitrate_kbps: 128, channels: 2, warmup_packets: 10 }
    }
}

/// Encoder backend choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The best available at run time (hardware when present).
    Auto,
    /// OpenH264 software encoder (always present).
    Openh264,
    /// libx264 software encoder (binaries built with `--features x264`).
    X264,
    /// The portable software encoder (OpenH264), whatever hardware exists.
    Software,
    /// NVIDIA NVENC (driver libraries loaded at run time).
    Nvenc,
    /// Intel Quick Sync Video through oneVPL (loaded at run time).
    Qsv,
}

impl Backend {
    /// Config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Openh264 => "openh264",
            Self::X264 => "x264",
            Self::Software => "software",
            Self::Nvenc => "nvenc",
            Self::Qsv => "qsv",
        }
    }
}

/// Encoder settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderConfig {
    /// Backend; `auto` picks the best available at run time.
    pub backend: Backend,
    /// Use the software encoder for every rendition, whatever `backend`
    /// (the channel's or a rendition's) says: an operator's override.
    pub force_software: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self { backend: Backend::Auto, force_software: false }
    }
}

/// One rung of the ABR ladder.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RenditionConfig {
    /// Name; becomes the directory ("720p").
    pub name: String,
    /// Coded height (even).
    pub height: u32,
    /// Coded width (even); default keeps the source's aspect ratio.
    #[serde(default)]
    pub width: Option<u32>,
    /// Target bitrate.
    pub bitrate_kbps: u32,
    /// Encoder backend for this rendition (default: `encoder.backend`).
    #[serde(default)]
    pub backend: Option<Backend>,
}

/// Playlist window mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Live sliding window; old segments deleted.
    Sliding,
    /// Keep everything; EVENT playlist.
    Archive,
}

/// Output settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Root of the segment store.
    pub dir: PathBuf,
    /// Sliding window or archive.
    #[serde(default = "default_mode")]
    pub mode: OutputMode,
    /// Segments in a sliding-window playlist.
    #[serde(default = "default_window")]
    pub window_segments: u32,
}

fn default_mode() -> OutputMode {
    OutputMode::Sliding
}
fn default_window() -> u32 {
    6
}

/// CDN edges (or other origins) players can fetch the channels through:
/// each is a pathway of HLS Content Steering. With pathways, the origin
/// serves a steered multivariant playlist (`/steered/<channel>/master.m3u8`)
/// and the steering server (`/steering/<channel>`), and the edge health
/// agent probes every pathway (`crate::health::edge`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SteeringConfig {
    /// The pathways, in the order players prefer them while all are
    /// healthy.
    pub pathways: Vec<PathwayConfig>,
    /// Seconds a player keeps the steering manifest before asking again
    /// (the `TTL` it is given).
    pub ttl_s: u32,
    /// How often each pathway is probed, ms.
    pub probe_interval_ms: u32,
}

impl Default for SteeringConfig {
    fn default() -> Self {
        Self { pathways: Vec::new(), ttl_s: 2, probe_interval_ms: 500 }
    }
}

/// One pathway: a CDN edge's base URL, under which the origin's paths
/// are served (`<url>/combined/<channel>/master.m3u8`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathwayConfig {
    /// Its PATHWAY-ID: letters, digits, `-`, `.` and `_`.
    pub id: String,
    /// Base URL (`http://edge-1.example.net`), no trailing slash.
    pub url: String,
}

impl SteeringConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.pathways.iter().enumerate() {
            let key = format!("steering.pathways[{i}]");
            let id_ok = !p.id.is_empty()
                && p.id.len() <= 64
                && p.id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !id_ok {
                return Err(invalid(
                    format!("{key}.id"),
                    format!("`{}`: 1 to 64 letters, digits, `-`, `.` or `_`", p.id),
                ));
            }
            if !seen.insert(p.id.as_str()) {
                return Err(invalid(format!("{key}.id"), format!("`{}` is named twice", p.id)));
            }
            let scheme_ok = p.url.starts_with("http://") || p.url.starts_with("https://");
            if !scheme_ok || p.url.ends_with('/') || p.url.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("{key}.url"),
                    format!("`{}` is not a base URL like \"http://edge-1.example.net\" (no trailing slash)", p.url),
                ));
            }
        }
        if !(1..=300).contains(&self.ttl_s) {
            return Err(invalid("steering.ttl_s", "allowed: 1 to 300"));
        }
        if !(100..=60_000).contains(&self.probe_interval_ms) {
            return Err(invalid("steering.probe_interval_ms", "allowed: 100 to 60000"));
        }
        Ok(())
    }
}

/// The history store of the health agents' figures (`crate::history`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Record the figures.
    pub enabled: bool,
    /// The store; `<output.dir>/history.redb` when left out.
    pub file: Option<PathBuf>,
    /// How often the agents are sampled, ms.
    pub interval_ms: u32,
    /// Hours raw samples are kept.
    pub raw_hours: u32,
    /// Days each minute's mean, smallest and largest value are kept.
    pub days: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self { enabled: true, file: None, interval_ms: 1000, raw_hours: 6, days: 7 }
    }
}

impl HistoryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(200..=60_000).contains(&self.interval_ms) {
            return Err(invalid("history.interval_ms", "allowed: 200 to 60000"));
        }
        if !(1..=168).contains(&self.raw_hours) {
            return Err(invalid("history.raw_hours", "allowed: 1 to 168 (a week)"));
        }
        if !(1..=366).contains(&self.days) {
            return Err(invalid("history.days", "allowed: 1 to 366"));
        }
        Ok(())
    }

    /// The store's path for an appliance writing under `output`.
    pub fn path(&self, output: &Path) -> PathBuf {
        self.file.clone().unwrap_or_else(|| output.join("history.redb"))
    }
}

/// Built-in HTTP origin.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// Listen address ("127.0.0.1:8080"); absent = no origin.
    pub listen: Option<String>,
}

/// Buffering between stages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Frame buffers in the capture pool.
    pub pool_frames: u32,
    /// Lock memory and run capture at real-time priority (needs root or
    /// CAP_SYS_NICE/CAP_IPC_LOCK; degrades with a warning otherwise).
    pub realtime: bool,
    /// Segments of input pictures kept (a copy of each) so a segment
    /// published from the wrong pictures can be re-encoded once the swarm
    /// names the right ones (`crate::pipeline::rework`); 0 keeps none.
    pub rework_segments: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self { pool_frames: 16, realtime: false, rework_segments: 3 }
    }
}

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also giving the text read (the daemon keeps it to
    /// save live changes into the same file).
    pub fn load_with_text(path: &Path) -> Result<(Self, String), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Ok((Self::from_toml(&text, &path.display().to_string())?, text))
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_TOML, "embedded defaults")
            .unwrap_or_else(|e| unreachable!("embedded default config is checked by tests: {e}"))
    }

    /// The embedded demo configuration.
    pub fn embedded_demo() -> Self {
        Self::from_toml(DEMO_TOML, "embedded demo")
            .unwrap_or_else(|e| unreachable!("embedded demo config is checked by tests: {e}"))
    }

    /// The test source's frame rate (validated).
    pub fn source_rate(&self) -> Result<Rate, ConfigError> {
        Rate::parse(&self.source.fps).ok_or_else(|| {
            invalid(
                "source.fps",
                format!("`{}` is not a frame rate; use e.g. \"25\", \"29.97\" or \"30000/1001\"", self.source.fps),
            )
        })
    }

    /// Checks every value; called by the loaders.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.clock.validate()?;
        self.swarm.validate()?;
        self.admin.validate()?;
        self.steering.validate()?;
        self.history.validate()?;
        if self.appliance.id.is_empty() || self.appliance.id.len() > 64 {
            return Err(invalid("appliance.id", "must be 1 to 64 characters"));
        }
        if !is_name(&self.channel.id) {
            return Err(invalid("channel.id", format!("`{}`: use 1-32 of a-z, 0-9, '-', '_'", self.channel.id)));
        }
        if RESERVED_CHANNEL_IDS.contains(&self.channel.id.as_str()) {
            return Err(invalid("channel.id", format!("`{}` is reserved", self.channel.id)));
        }
        if !(self.channel.segment_seconds >= 0.5 && self.channel.segment_seconds <= 30.0) {
            return Err(invalid("channel.segment_seconds", "must be between 0.5 and 30"));
        }
        let rate = self.source_rate()?;
        if rate.fps() > 120.0 || rate.fps() < 1.0 {
            return Err(invalid("source.fps", format!("{rate} is outside 1..=120 frames per second")));
        }
        match self.source.kind {
            SourceKind::File if self.source.path.is_none() => {
                return Err(invalid("source.path", "required when source.kind = \"file\""));
            }
            SourceKind::Test => {
                check_even_dim("source.width", self.source.width, 16, 3840)?;
                check_even_dim("source.height", self.source.height, 16, 2160)?;
            }
            SourceKind::File => {}
            SourceKind::V4l2 => {
                check_even_dim("source.width", self.source.width, 16, 3840)?;
                check_even_dim("source.height", self.source.height, 16, 2160)?;
                if !["auto", "yu12", "nv12", "yuyv", "uyvy"].contains(&self.source.pixel_format.as_str()) {
                    return Err(invalid(
                        "source.pixel_format",
                        format!("`{}`: use auto, yu12, nv12, yuyv or uyvy", self.source.pixel_format),
                    ));
                }
                if !(2..=32).contains(&self.source.buffers) {
                    return Err(invalid("source.buffers", "must be between 2 and 32"));
                }
                if !(20..=10_000).contains(&self.source.timeout_ms) {
                    return Err(invalid("source.timeout_ms", "must be between 20 and 10000"));
                }
                if self.source.pacing != Pacing::Realtime {
                    return Err(invalid("source.pacing", "a V4L2 device runs in real time (pacing = \"realtime\")"));
                }
            }
        }
        if self.source.start_frame.is_some() && self.source.pacing != Pacing::Fast {
            return Err(invalid("source.start_frame", "only allowed with source.pacing = \"fast\""));
        }
        if !(6..=510).contains(&self.audio.bitrate_kbps) {
            return Err(invalid("audio.bitrate_kbps", "Opus takes 6 to 510 kbit/s"));
        }
        if !(1..=2).contains(&self.audio.channels) {
            return Err(invalid("audio.channels", "allowed: 1 or 2"));
        }
        if self.audio.warmup_packets > 50 {
            return Err(invalid("audio.warmup_packets", "allowed: 0 to 50 (20 ms each)"));
        }
        if self.renditions.is_empty() {
            return Err(invalid("renditions", "at least one [[renditions]] entry is needed"));
        }
        for (i, r) in self.renditions.iter().enumerate() {
            let key = |k: &str| format!("renditions[{i}].{k}");
            if !is_name(&r.name) {
                return Err(invalid(key("name"), format!("`{}`: use 1-32 of a-z, 0-9, '-', '_'", r.name)));
            }
            if r.name == "audio" {
                return Err(invalid(key("name"), "`audio` is reserved for the audio track"));
            }
            if self.renditions[..i].iter().any(|o| o.name == r.name) {
                return Err(invalid(key("name"), format!("`{}` is used twice", r.name)));
            }
            check_even_dim(&key("height"), r.height, 16, 2160)?;
            if let Some(w) = r.width {
                check_even_dim(&key("width"), w, 16, 3840)?;
            }
            if !BITRATE_KBPS.contains(&r.bitrate_kbps) {
                return Err(invalid(key("bitrate_kbps"), "allowed: 50 to 100000"));
            }
        }
        if self.output.dir.as_os_str().is_empty() {
            return Err(invalid("output.dir", "must not be empty"));
        }
        if !(2..=1000).contains(&self.output.window_segments) {
            return Err(invalid("output.window_segments", "allowed: 2 to 1000"));
        }
        if let Some(listen) = &self.origin.listen {
            listen.parse::<SocketAddr>().map_err(|_| {
                invalid("origin.listen", format!("`{listen}` is not an address like \"127.0.0.1:8080\""))
            })?;
        }
        let x264_missing = "\"x264\": this binary was built without x264 (rebuild with `--features x264`); allowed: \"auto\", \"openh264\", \"software\", \"nvenc\", \"qsv\"";
        if self.encoder.backend == Backend::X264 && !cfg!(feature = "x264") {
            return Err(invalid("encoder.backend", x264_missing));
        }
        for (i, r) in self.renditions.iter().enumerate() {
            if r.backend == Some(Backend::X264) && !cfg!(feature = "x264") {
                return Err(invalid(format!("renditions[{i}].backend"), x264_missing));
            }
        }
        if !(4..=256).contains(&self.pipeline.pool_frames) {
            return Err(invalid("pipeline.pool_frames", "allowed: 4 to 256"));
        }
        if self.pipeline.rework_segments > 10 {
            return Err(invalid("pipeline.rework_segments", "allowed: 0 (keep no input) to 10"));
        }
        self.validate_channels()
    }

    /// Checks `[[channels]]`: each as the configuration it runs with, ids
    /// unique, no capture device shared.
    fn validate_channels(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&Config> = Vec::new();
        let derived: Vec<Config> = self.channels.iter().map(|spec| self.with_channel(spec)).collect();
        for (i, c) in derived.iter().enumerate() {
            let key = |k: &str| format!("channels[{i}].{k}");
            c.validate().map_err(|e| match e {
                ConfigError::Invalid { key: k, message } => invalid(key(&k), message),
                other => other,
            })?;
            for other in std::iter::once(self).chain(seen.iter().copied()) {
                if other.channel.id == c.channel.id {
                    return Err(invalid(key("channel.id"), format!("`{}` is used twice", c.channel.id)));
                }
                if let Some(by) = other.same_device(c) {
                    return Err(invalid(key("source.device"), by));
                }
            }
            seen.push(c);
        }
        Ok(())
    }

    /// Why `other` may not run beside this channel's source: both capture
    /// from the same device.
    pub fn same_device(&self, other: &Config) -> Option<String> {
        fn device(c: &Config) -> Option<&std::path::Path> {
            (c.source.kind == SourceKind::V4l2).then_some(c.source.device.as_path())
        }
        match (device(self), device(other)) {
            (Some(a), Some(b)) if a == b => {
                Some(format!("{} is already the source of channel `{}`", a.display(), self.channel.id))
            }
            _ => None,
        }
    }

    /// What loads but is probably a mistake, in words naming the keys: a
    /// rendition with fewer lines than another but a higher bitrate
    /// (players stepping up to it would get less picture for more bits).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ladders = std::iter::once((String::new(), &self.renditions))
            .chain(self.channels.iter().enumerate().map(|(i, c)| (format!("channels[{i}]."), &c.renditions)));
        for (prefix, ladder) in ladders {
            for (j, low) in ladder.iter().enumerate() {
                let above =
                    ladder.iter().enumerate().find(|(_, r)| r.height > low.height && r.bitrate_kbps < low.bitrate_kbps);
                if let Some((i, high)) = above {
                    out.push(format!(
                        "{prefix}renditions[{j}] (`{}`, {} lines) at {} kbit/s is above {prefix}renditions[{i}] (`{}`, {} lines) at {} kbit/s: a rung with fewer lines normally gets fewer bits",
                        low.name, low.height, low.bitrate_kbps, high.name, high.height, high.bitrate_kbps
                    ));
                }
            }
        }
        out
    }

    /// The configuration channel `spec` runs with: this one's appliance
    /// sections with its own channel sections. It is not in the swarm (the
    /// swarm federates `[channel]`).
    pub fn with_channel(&self, spec: &ChannelSpec) -> Config {
        let mut c = self.clone();
        c.channel = spec.channel.clone();
        c.source = spec.source.clone();
        c.audio = spec.audio.clone();
        c.encoder = spec.encoder.clone();
        c.renditions = spec.renditions.clone();
        c.channels.clear();
        c.swarm.enabled = false;
        c.appliance.role = if spec.start { Role::Encoder } else { Role::Standby };
        c
    }

    /// The `[[channels]]` entry of a channel that runs with this
    /// configuration.
    pub fn spec(&self, start: bool) -> ChannelSpec {
        ChannelSpec {
            channel: self.channel.clone(),
            source: self.source.clone(),
            audio: self.audio.clone(),
            encoder: self.encoder.clone(),
            renditions: self.renditions.clone(),
            start,
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_even_dim(key: &str, v: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if v < min || v > max || v % 2 == 1 {
        return Err(invalid(key, format!("{v}: must be even and between {min} and {max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_configs_are_valid() {
        let d = Config::embedded_default();
        assert_eq!(d.renditions.len(), 4);
        let demo = Config::embedded_demo();
        assert!(demo.renditions.len() <= 2);
    }

    fn with(replace: (&str, &str)) -> Result<Config, ConfigError> {
        Config::from_toml(&DEFAULT_TOML.replace(replace.0, replace.1), "test")
    }

    #[test]
    fn errors_name_the_key() {
        let e = with(("fps = \"30\"", "fps = \"fast\"")).expect_err("bad fps");
        assert!(e.to_string().contains("source.fps"), "{e}");
        let e = with(("bitrate_kbps = 5000", "bitrate_kbps = 1")).expect_err("bad bitrate");
        assert!(e.to_string().contains("renditions[0].bitrate_kbps"), "{e}");
        let e = with(("[channel]", "[channel]\ncolour = 1")).expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = with(("kind = \"test\"", "kind = \"sdi\"")).expect_err("unknown kind");
        assert!(e.to_string().contains("sdi") && e.to_string().contains("test"), "{e}");
        let e = with(("height = 720", "height = 721")).expect_err("odd height");
        assert!(e.to_string().contains("renditions[1].height"), "{e}");
    }

    /// The default configuration with `extra` appended (`[[channels]]`).
    fn plus(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{DEFAULT_TOML}\n{extra}"), "test")
    }

    #[test]
    fn steering_pathways_need_unique_ids_and_base_urls() {
        let pathways = |a: &str, b: &str| {
            plus(&format!(
                "[steering]\npathways = [{{ id = \"edge-1\", url = \"{a}\" }}, {{ id = \"{b}\", url = \"http://e2\" }}]"
            ))
        };
        let c = pathways("http://e1:8180", "edge-2").expect("two edges");
        assert_eq!(c.steering.pathways[1], PathwayConfig { id: "edge-2".into(), url: "http://e2".into() });
        assert_eq!((c.steering.ttl_s, c.steering.probe_interval_ms), (2, 500));
        let e = pathways("http://e1/", "edge-2").expect_err("trailing slash");
        assert!(e.to_string().contains("steering.pathways[0].url"), "{e}");
        let e = pathways("ftp://e1", "edge-2").expect_err("not http");
        assert!(e.to_string().contains("steering.pathways[0].url"), "{e}");
        let e = pathways("http://e1", "edge-1").expect_err("twice");
        assert!(e.to_string().contains("steering.pathways[1].id") && e.to_string().contains("twice"), "{e}");
        let e = pathways("http://e1", "edge 2").expect_err("a space");
        assert!(e.to_string().contains("steering.pathways[1].id"), "{e}");
        let e = plus("[steering]\nttl_s = 0").expect_err("ttl");
        assert!(e.to_string().contains("steering.ttl_s"), "{e}");
        assert!(plus("").expect("defaults").steering.pathways.is_empty());
    }

    const SECOND: &str = r#"
[[channels]]
channel = { id = "news" }
source = { kind = "test", width = 640, height = 360, fps = "25" }
renditions = [{ name = "360p", height = 360, bitrate_kbps = 600 }]
"#;

    #[test]
    fn more_channels_are_checked_as_their_own_configurations() {
        let c = plus(SECOND).expect("a second channel");
        assert_eq!(c.channels.len(), 1);
        let news = c.with_channel(&c.channels[0]);
        assert_eq!((news.channel.id.as_str(), news.renditions.len()), ("news", 1));
        assert!(!news.swarm.enabled && news.channels.is_empty());
        assert_eq!(news.output.dir, c.output.dir, "the output is the appliance's");
        assert!(c.channels[0].start, "a channel starts by default");

        let e = plus(&SECOND.replace("600", "1")).expect_err("bad bitrate");
        assert!(e.to_string().contains("channels[0].renditions[0].bitrate_kbps"), "{e}");
        let e = plus(&SECOND.replace("\"news\"", "\"main\"")).expect_err("the first channel's id");
        assert!(e.to_string().contains("channels[0].channel.id") && e.to_string().contains("twice"), "{e}");
        let e = plus(&format!("{SECOND}{SECOND}")).expect_err("the same id twice");
        assert!(e.to_string().contains("channels[1].channel.id"), "{e}");
        let e = plus(&SECOND.replace("\"news\"", "\"combined\"")).expect_err("reserved id");
        assert!(e.to_string().contains("channels[0].channel.id") && e.to_string().contains("combined"), "{e}");
        let e = plus(&SECOND.replace("renditions = ", "colour = 1\nrenditions = ")).expect_err("unknown key");
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn the_commented_channels_example_of_the_defaults_loads() {
        let start = DEFAULT_TOML.find("# [[channels]]").expect("the example is in default.toml");
        let example: String =
            DEFAULT_TOML[start..].lines().map(|l| format!("{}\n", l.trim_start_matches("# "))).collect();
        let c = plus(&example).expect("the example, uncommented");
        assert_eq!((c.channels[0].channel.id.as_str(), c.channels[0].renditions.len()), ("news", 2));
    }

    #[test]
    fn two_channels_may_not_share_a_capture_device() {
        let v4l2 = |id: &str| {
            format!(
                "[[channels]]\nchannel = {{ id = \"{id}\" }}\nsource = {{ kind = \"v4l2\", device = \"/dev/video7\" }}\n\
                 renditions = [{{ name = \"360p\", height = 360, bitrate_kbps = 600 }}]\n"
            )
        };
        plus(&v4l2("a")).expect("one channel on the device");
        let e = plus(&format!("{}{}", v4l2("a"), v4l2("b"))).expect_err("shared device");
        assert!(e.to_string().contains("channels[1].source.device") && e.to_string().contains("/dev/video7"), "{e}");
    }

    #[test]
    fn a_spec_round_trips_through_its_configuration() {
        let c = plus(SECOND).expect("a second channel");
        let spec = c.with_channel(&c.channels[0]).spec(false);
        assert!(!spec.start);
        assert_eq!(c.with_channel(&spec).appliance.role, Role::Standby, "a channel not started waits");
        let text = toml::to_string(&spec).expect("serialises");
        let back: ChannelSpec = toml::from_str(&text).expect("parses back");
        assert_eq!((back.channel.id.as_str(), back.renditions[0].bitrate_kbps), ("news", 600));
    }

    #[test]
    fn a_frame_rate_may_be_written_as_a_bare_number() {
        let c = with(("fps = \"30\"", "fps = 29.97")).expect("29.97 as a number");
        assert_eq!(Some(c.source_rate().expect("a rate")), Rate::new(30000, 1001));
        let c = with(("fps = \"30\"", "fps = 25")).expect("25 as a number");
        assert_eq!(c.source.fps, "25");
        let e = with(("fps = \"30\"", "fps = true")).expect_err("not a rate");
        assert!(e.to_string().contains("\"30000/1001\""), "{e}");
    }

    #[test]
    fn a_lower_rung_above_a_higher_ones_bitrate_is_warned_about() {
        assert!(Config::embedded_default().warnings().is_empty(), "the shipped ladder is in order");
        let c = with(("bitrate_kbps = 700", "bitrate_kbps = 70000")).expect("loads");
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("renditions[3] (`360p`") && w[0].contains("renditions[0] (`1080p`"), "{w:?}");
        let c = plus(&SECOND.replace("}]", "}, { name = \"180p\", height = 180, bitrate_kbps = 900 }]"))
            .expect("two rungs");
        assert!(c.warnings()[0].starts_with("channels[0].renditions[1]"), "{:?}", c.warnings());
    }

    #[test]
    fn file_source_needs_a_path() {
        let e = with(("kind = \"test\"", "kind = \"file\"")).expect_err("no path");
        assert!(e.to_string().contains("source.path"), "{e}");
    }
}
