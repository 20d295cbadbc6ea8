//! The swarm: membership and failure detection with foca (SWIM), every
//! datagram sealed with the fleet key ([`wire`]), Encoding State Packets
//! ([`state`]) sent to every member, and the decisions each node computes
//! from them ([`election`]): group leaders, weights, and which replica of
//! each segment the combined output uses. See docs/swarm.md.
//!
//! One thread per node runs the protocol over one UDP socket ([`node`]);
//! another feeds it what the channels report ([`feed`]); with an origin, a
//! third keeps the combined outputs ([`replicate`]). The data plane never
//! waits for any of them.

pub mod bench;
pub mod decide;
pub mod deviation;
pub mod election;
mod feed;
pub mod local;
mod metrics;
mod node;
pub mod repair;
pub mod replicate;
pub mod resync;
pub mod resync_bench;
pub mod standby;
pub mod state;
pub mod timing;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sync::lock;

use decide::ChannelDecisions;
use state::{ClockSummary, EncodingState, SegmentHashes};
use wire::{FleetKey, WireStats};

/// Segments of hashes each node gossips.
pub const RECENT_SEGMENTS: usize = 4;

/// A member's identity for SWIM: its address plus an incarnation that
/// grows across restarts (start time in ms), so a restarted node replaces
/// its dead predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    /// Swarm address.
    pub addr: SocketAddr,
    /// Appliance id.
    pub name: String,
    /// Start time in ms; bumped when the node rejoins after being declared down.
    pub incarnation: u64,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self { incarnation: self.incarnation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The fleet key could not be loaded.
    #[error(transparent)]
    Key(#[from] wire::KeyError),
    /// The UDP socket could not be bound.
    #[error("swarm: cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The protocol thread could not start.
    #[error("swarm: cannot start its thread: {0}")]
    Thread(std::io::Error),
}

/// Everything a node needs to take part.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Appliance id.
    pub node: String,
    /// Socket to bind.
    pub bind: SocketAddr,
    /// Address peers use.
    pub advertise: SocketAddr,
    /// Nodes to announce to.
    pub seeds: Vec<SocketAddr>,
    /// Fleet key.
    pub key: FleetKey,
    /// State packet interval.
    pub state_interval: Duration,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// Suspect → down.
    pub suspect_after: Duration,
    /// Expected swarm size.
    pub expected_nodes: u32,
    /// Preferred neighbours.
    pub neighbours: usize,
    /// Origin URL, if served.
    pub origin: Option<String>,
    /// One frame of the first channel, ns (the clock's share of the
    /// confidence score is judged against it).
    pub frame_ns: f64,
    /// Where to write the view.
    pub status_file: Option<PathBuf>,
    /// Flag a neighbour's clock predicted to reach half a frame within
    /// this long, s.
    pub drift_horizon_s: f64,
}

/// What the local pipelines report to the swarm.
#[derive(Debug, Default)]
pub struct Local {
    /// Clock state.
    pub clock: Option<ClockSummary>,
    /// When errors happened (last minute kept), every channel's.
    pub errors: VecDeque<Instant>,
    /// Every channel this node encodes, by id.
    pub channels: BTreeMap<String, ChannelLocal>,
    /// The failure prediction's risk for this node (its confidence's
    /// prediction factor; `swarm::state::confidence`).
    pub predicted_risk: f32,
    /// What its packets say for failover: the channels it stands by for
    /// and prepares (`standby`), its alarms (the daemon's prediction).
    pub outlook: state::Outlook,
}

/// What one channel's pipeline reports to the swarm.
#[derive(Debug, Default)]
pub struct ChannelLocal {
    /// Current frame.
    pub frame: i64,
    /// Timecode of the last analysed segment.
    pub timecode: String,
    /// Complexity of the last analysed segment.
    pub complexity: f32,
    /// Recent segment hashes, oldest first.
    pub segments: VecDeque<SegmentHashes>,
    /// Capture-to-publish latency, ms.
    pub encode_latency_ms: f32,
    /// Segment length, ms.
    pub segment_ms: f32,
    /// Live ladder changes known here.
    pub ladder: Vec<crate::control::LadderChange>,
    /// Frame number of the first fingerprint in `trail`.
    pub trail_first: i64,
    /// Fingerprints of the last frames captured.
    pub trail: Vec<u64>,
    /// Frames per segment.
    pub segment_frames: i64,
    /// Its capture can move its numbering (a file cannot): only then does
    /// it propose a realignment.
    pub can_realign: bool,
    /// Its running media clock (timing packets carry its time).
    pub clock: Option<std::sync::Arc<crate::clock::Clock>>,
}

impl ChannelLocal {
    /// Records a published segment's hash under its index.
    pub fn add_segment(&mut self, track: &str, index: i64, sha256: [u8; 32], input: [u8; 32]) {
        match self.segments.iter_mut().find(|s| s.index == index) {
            Some(s) => {
                if track != "audio" {
                    s.input = input;
                }
                s.tracks.retain(|(t, _)| t != track);
                s.tracks.push((track.to_string(), sha256));
                s.tracks.sort();
            }
            None => {
                let input = if track == "audio" { [0; 32] } else { input };
                self.segments.push_back(SegmentHashes { index, input, tracks: vec![(track.to_string(), sha256)] });
                self.segments.make_contiguous().sort_by_key(|s| s.index);
                while self.segments.len() > RECENT_SEGMENTS {
                    self.segments.pop_front();
                }
            }
        }
    }
}

/// A peer as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Its last state packet.
    pub state: EncodingState,
    /// SWIM says it is up.
    pub alive: bool,
    /// Alive and sending state.
    pub healthy: bool,
    /// Since its last state packet, ms.
    pub state_age_ms: u64,
    /// One-way latency from it (shared media clock), ms, running mean.
    pub latency_ms: f32,
    /// Jitter of that latency, ms, running mean.
    pub jitter_ms: f32,
    /// Its weight for each channel it encodes (0 while unhealthy).
    pub weights: BTreeMap<String, f32>,
    /// One of this node's preferred neighbours.
    pub neighbour: bool,
    /// Throughput of this node's segment fetches from it, Mbit/s (running
    /// mean; a lower bound of the bandwidth); `None` before any fetch.
    pub throughput_mbps: Option<f32>,
    #[serde(skip)]
    last_state: Option<Instant>,
    #[serde(skip)]
    down_since: Option<Instant>,
}

impl PeerView {
    /// A peer first heard with `state`, `latency_ms` away: alive and
    /// healthy, no weights or fetches yet.
    pub fn new(state: EncodingState, latency_ms: f32) -> Self {
        Self {
            state,
            alive: true,
            healthy: true,
            state_age_ms: 0,
            latency_ms,
            jitter_ms: 0.0,
            weights: BTreeMap::new(),
            neighbour: false,
            throughput_mbps: None,
            last_state: None,
            down_since: None,
        }
    }
}

/// A correction the swarm approved for one of this node's channels, on
/// its way to the channel (`feed`).
#[derive(Debug, Clone)]
pub(crate) struct Approved {
    /// Channel id.
    pub channel: String,
    /// First frame it applies to.
    pub at_frame: i64,
    /// When that frame is due, local clock ns (within a frame).
    pub at_local_ns: i64,
    /// What to do.
    pub correction: resync::Correction,
    /// When it was proposed, ms since 1970 (its proposal's id).
    pub proposed_ms: u64,
}

/// This node's view of the swarm, written to `swarm.status_file`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct View {
    /// This node.
    pub node: String,
    /// Its boot id (hex).
    pub boot: String,
    /// Its own last state packet.
    pub me: Option<EncodingState>,
    /// Peers by node id.
    pub peers: BTreeMap<String, PeerView>,
    /// Its group (sorted node ids).
    pub group: Vec<String>,
    /// The group's leader.
    pub leader: Option<String>,
    /// Per channel any node reports: every node's weight and the replica
    /// chosen for each recent segment.
    pub channels: BTreeMap<String, ChannelDecisions>,
    /// Per channel this node runs: its last proposal to get back into
    /// lockstep and where it stands.
    pub resync: BTreeMap<String, resync::Status>,
    /// Hears no peer although it has been in a swarm.
    pub isolated: bool,
    /// A neighbour's clock predicted to reach half a frame within this
    /// many seconds is flagged (`swarm.drift_horizon_s`).
    pub drift_horizon_s: f64,
    /// Datagrams accepted and dropped, by reason.
    pub packets: BTreeMap<String, u64>,
    /// A standby unit: where each channel it stands by for stands.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub standby: BTreeMap<String, standby::Status>,
}

/// Shared between the swarm thread and the rest of the daemon.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// The daemon ends: the combined output's playlists are ended.
    closing: AtomicBool,
    local: Mutex<Local>,
    view: Mutex<View>,
    stats: WireStats,
    throughput: Mutex<BTreeMap<String, f32>>,
    /// The combined outputs to keep, by channel.
    targets: Mutex<BTreeMap<String, replicate::Target>>,
    /// Corrections the swarm approved, for the channels' captures:
    /// (channel, first frame, correction).
    corrections: Mutex<Vec<Approved>>,
    /// Forged proposals asked for by a drill: (channel, frames).
    forged: Mutex<Vec<(String, i64)>>,
    /// A standby unit's decisions not yet taken by the event log.
    standby_events: Mutex<Vec<String>>,
    /// The node serves an origin (and so the combined output).
    serves: bool,
}

/// A running swarm node.
#[derive(Debug)]
pub struct Swarm {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The thread keeping the combined output, while it runs.
    replicator: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Swarm {
    /// Binds the socket and starts the protocol thread.
    pub fn start(settings: Settings) -> Result<Self, SwarmError> {
        let socket =
            UdpSocket::bind(settings.bind).map_err(|source| SwarmError::Bind { addr: settings.bind, source })?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            local: Mutex::new(Local::default()),
            view: Mutex::new(View { node: settings.node.clone(), ..View::default() }),
            stats: WireStats::default(),
            throughput: Mutex::default(),
            targets: Mutex::default(),
            corrections: Mutex::default(),
            forged: Mutex::default(),
            standby_events: Mutex::default(),
            serves: settings.origin.is_some(),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("swarm".into())
            .spawn(move || node::Node::new(settings, socket, for_thread).run())
            .map_err(SwarmError::Thread)?;
        Ok(Self { shared, thread: Some(thread), replicator: Mutex::default() })
    }

    /// The daemon ends: the combined playlists get `#EXT-X-ENDLIST`, as the
    /// node's own do. Waits for the replicator (at most one fetch, 3 s).
    pub fn close_output(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let taken = lock(&self.replicator).take();
        if let Some(t) = taken
            && t.thread().id() != std::thread::current().id()
            && t.join().is_err()
        {
            tracing::error!("the combined output's thread panicked");
        }
    }

    /// Drill: this node proposes to realign its capture of `channel` by
    /// `frames` with forged evidence at its next round. Its neighbours'
    /// own measurements do not agree, so they vote it down and nothing
    /// changes (docs/swarm.md, "Resynchronisation").
    pub fn forge_proposal(&self, channel: &str, frames: i64) {
        lock(&self.shared.forged).push((channel.to_string(), frames));
    }

    /// A standby unit's decisions since the last call, in words, for the
    /// event log (at most the last 100 are kept).
    pub fn take_standby_events(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.standby_events))
    }

    /// The combined outputs to keep, by channel.
    fn targets(&self) -> BTreeMap<String, replicate::Target> {
        lock(&self.shared.targets).clone()
    }

    /// Whether the daemon is ending ([`Swarm::close_output`]).
    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }

    /// Updates what the node reports about its pipeline.
    pub fn local(&self, f: impl FnOnce(&mut Local)) {
        f(&mut lock(&self.shared.local));
    }

    /// A copy of the node's current view.
    pub fn view(&self) -> View {
        lock(&self.shared.view).clone()
    }

    /// Records a transfer of `bytes` from `node` that took `seconds`
    /// (segment replication), for the throughput estimate.
    pub fn record_transfer(&self, node: &str, bytes: usize, seconds: f64) {
        // Small files over a fast link say more about latency than bandwidth.
        if bytes < 16 * 1024 || seconds <= 0.0 {
            return;
        }
        let mbps = (bytes as f64 * 8.0 / seconds / 1e6) as f32;
        let mut t = lock(&self.shared.throughput);
        let e = t.entry(node.to_string()).or_insert(mbps);
        *e += (mbps - *e) * 0.3;
    }

    /// Datagram counters.
    pub fn stats(&self) -> &WireStats {
        &self.shared.stats
    }

    /// Stops without leaving the swarm (peers detect the silence).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the node `config.swarm` describes (`None` when disabled), a
/// thread feeding it what every channel's taps report and, when the
/// appliance serves an origin, the thread keeping the combined output of
/// every channel.
pub fn join(
    config: &crate::config::Config,
    channels: &Arc<crate::channels::Channels>,
) -> Result<Option<Arc<Swarm>>, SwarmError> {
    let s = &config.swarm;
    if !s.enabled {
        return Ok(None);
    }
    let key_file = s.fleet_key_file.clone().unwrap_or_default();
    let key = FleetKey::from_file(&key_file)?;
    let rate = config.source_rate().ok();
    let settings = Settings {
        node: config.appliance.id.clone(),
        bind: s.bind,
        advertise: s.advertise.unwrap_or(s.bind),
        seeds: s.seeds.clone(),
        key,
        state_interval: Duration::from_millis(u64::from(s.state_interval_ms)),
        probe_period: Duration::from_millis(u64::from(s.probe_period_ms)),
        suspect_after: Duration::from_millis(u64::from(s.suspect_after_ms)),
        expected_nodes: s.expected_nodes,
        neighbours: s.neighbours as usize,
        origin: config.origin.listen.as_ref().map(|l| format!("http://{l}")),
        frame_ns: rate.map_or(40e6, |r| 1e9 / r.fps()),
        status_file: s.status_file.clone(),
        drift_horizon_s: s.drift_horizon_s,
    };
    let swarm = Arc::new(Swarm::start(settings)?);
    let weak = Arc::downgrade(&swarm);
    let serves = config.origin.listen.is_some();
    let list = Arc::clone(channels);
    std::thread::Builder::new()
        .name("swarm-feed".into())
        .spawn(move || feed::feed(&weak, &list, serves))
        .map_err(SwarmError::Thread)?;
    if serves {
        let weak = Arc::downgrade(&swarm);
        let thread = std::thread::Builder::new()
            .name("replicate".into())
            .spawn(move || replicate::run(&weak))
            .map_err(SwarmError::Thread)?;
        *lock(&swarm.replicator) = Some(thread);
    }
    if config.appliance.role == crate::config::Role::Standby {
        let weak = Arc::downgrade(&swarm);
        let (list, prepares) = (Arc::clone(channels), s.standby_prepares);
        let release_after = Duration::from_secs(u64::from(s.standby_release_s));
        std::thread::Builder::new()
            .name("standby".into())
            .spawn(move || standby::run(&weak, &list, prepares, release_after))
            .map_err(SwarmError::Thread)?;
    }
    Ok(Some(swarm))
}
