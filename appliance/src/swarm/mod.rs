//! The swarm: membership and failure detection with foca (SWIM), every
//! datagram sealed with the fleet key ([`wire`]), Encoding State Packets
//! ([`state`]) sent to every member, and the decisions each node computes
//! from them ([`election`]): group leaders, weights, and which replica of
//! each segment the combined output uses. See docs/swarm.md.
//!
//! One thread per node runs the protocol over one UDP socket; the data
//! plane never waits for it.

pub mod bench;
pub mod decide;
pub mod election;
pub mod replicate;
pub mod state;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::clock::realtime_ns;
use crate::sync::lock;

use decide::ChannelDecisions;
use state::{ChannelReport, ClockSummary, ConfidenceInputs, EncodingState, LoadSampler, SegmentHashes};
use wire::{FleetKey, Kind, Opener, Sealer, WireStats};

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
    /// Hears no peer although it has been in a swarm.
    pub isolated: bool,
    /// Datagrams accepted and dropped, by reason.
    pub packets: BTreeMap<String, u64>,
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
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("swarm".into())
            .spawn(move || Node::new(settings, socket, for_thread).run())
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

/// The protocol thread's state.
struct Node {
    settings: Settings,
    socket: UdpSocket,
    shared: Arc<Shared>,
    foca: Foca<NodeId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>,
    runtime: AccumulatingRuntime<NodeId>,
    timers: Vec<(Instant, Timer<NodeId>)>,
    sealer: Sealer,
    opener: Opener,
    peers: BTreeMap<String, PeerView>,
    own_weights: BTreeMap<String, f32>,
    leader: Option<String>,
    load: LoadSampler,
    started: Instant,
    ever_joined: bool,
    last_drop_log: Option<Instant>,
    last_seed_announce: Instant,
}

fn foca_config(s: &Settings) -> foca::Config {
    let n = NonZeroU32::new(s.expected_nodes.max(2)).unwrap_or(NonZeroU32::MIN);
    let mut c = foca::Config::new_lan(n);
    c.probe_period = s.probe_period;
    c.probe_rtt = s.probe_period / 3;
    c.suspect_to_down_after = s.suspect_after;
    c.max_packet_size = NonZeroUsize::new(1_200).unwrap_or(NonZeroUsize::MIN);
    // Re-announce often enough that a healed partition or a restarted
    // seed converges within seconds, not minutes.
    c.periodic_announce =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(2), num_members: NonZeroUsize::MIN });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(2),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

impl Node {
    fn new(settings: Settings, socket: UdpSocket, shared: Arc<Shared>) -> Self {
        let id = NodeId {
            addr: settings.advertise,
            name: settings.node.clone(),
            incarnation: u64::try_from(realtime_ns() / 1_000_000).unwrap_or(0),
        };
        let rng = rand::rngs::StdRng::try_from_rng(&mut rand::rngs::SysRng)
            .unwrap_or_else(|_| rand::rngs::StdRng::seed_from_u64(id.incarnation ^ u64::from(std::process::id())));
        let foca = Foca::new(id, foca_config(&settings), rng, PostcardCodec);
        let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
        let sealer = Sealer::new(&settings.key);
        let opener = Opener::new(&settings.key);
        lock(&shared.view).boot = format!("{:016x}", sealer.boot());
        Self {
            settings,
            socket,
            shared,
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: Vec::new(),
            sealer,
            opener,
            peers: BTreeMap::new(),
            own_weights: BTreeMap::new(),
            leader: None,
            load: LoadSampler::default(),
            started: Instant::now(),
            ever_joined: false,
            last_drop_log: None,
            last_seed_announce: Instant::now(),
        }
    }

    fn run(mut self) {
        tracing::info!(node = %self.settings.node, addr = %self.settings.advertise, seeds = self.settings.seeds.len(), "joining the swarm");
        self.announce_to_seeds();
        let mut next_round = Instant::now();
        let mut buf = vec![0u8; 65_536];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut due = Vec::new();
            self.timers.retain(|(at, t)| {
                if *at <= now {
                    due.push(t.clone());
                    false
                } else {
                    true
                }
            });
            for t in due {
                let _ = self.foca.handle_timer(t, &mut self.runtime);
            }
            self.drain();
            if now >= next_round {
                self.round();
                next_round = now + self.settings.state_interval;
            }
            match self.socket.recv_from(&mut buf) {
                Ok((n, _from)) => self.receive(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => tracing::debug!("swarm socket: {e}"),
            }
        }
    }

    fn receive(&mut self, packet: &[u8]) {
        let opened = self.opener.open(packet, realtime_ns() / 1_000_000);
        self.shared.stats.count(opened.as_ref().map(|_| ()).map_err(|e| *e));
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                let quiet = self.last_drop_log.is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                if !quiet {
                    let counts: Vec<String> =
                        self.shared.stats.snapshot().iter().map(|(k, v)| format!("{k}={v}")).collect();
                    tracing::warn!(packets = %counts.join(" "), "swarm packet dropped: {e} (logged at most every 10 s)");
                    self.last_drop_log = Some(Instant::now());
                }
                return;
            }
        };
        match opened.kind {
            Kind::Membership => {
                if let Err(e) = self.foca.handle_data(&opened.payload, &mut self.runtime) {
                    tracing::debug!("swarm membership message refused: {e}");
                }
                self.drain();
            }
            Kind::State | Kind::SingleChannelState => match if opened.kind == Kind::State {
                state::decode(&opened.payload)
            } else {
                state::decode_single_channel(&opened.payload)
            } {
                Some(state) if state.node != self.settings.node => self.peer_state(state),
                Some(_) => {}
                None => {
                    // Authenticated yet undecodable: a peer with a bug.
                    self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("undecodable state packet");
                }
            },
        }
    }

    fn peer_state(&mut self, state: EncodingState) {
        let now_tai = now_tai_ns();
        let latency = ((now_tai - i128::from(state.sent_tai_ns)) as f64 / 1e6).max(0.0) as f32;
        let peer = self.peers.entry(state.node.clone()).or_insert_with(|| PeerView {
            state: state.clone(),
            alive: true,
            healthy: true,
            state_age_ms: 0,
            latency_ms: latency,
            jitter_ms: 0.0,
            weights: BTreeMap::new(),
            neighbour: false,
            throughput_mbps: None,
            last_state: None,
            down_since: None,
        });
        peer.jitter_ms += ((latency - peer.latency_ms).abs() - peer.jitter_ms) / 8.0;
        peer.latency_ms += (latency - peer.latency_ms) / 8.0;
        peer.state = state;
        peer.last_state = Some(Instant::now());
    }

    /// Sends what foca asked for, schedules its timers, handles its news.
    fn drain(&mut self) {
        let now_ms = realtime_ns() / 1_000_000;
        while let Some((to, data)) = self.runtime.to_send() {
            let packet = self.sealer.seal(Kind::Membership, &data, now_ms);
            let _ = self.socket.send_to(&packet, to.addr);
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.push((now + after, timer));
        }
        while let Some(n) = self.runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(peer = %id.name, addr = %id.addr, "swarm member up");
                    self.ever_joined = true;
                    if let Some(p) = self.peers.get_mut(&id.name) {
                        p.alive = true;
                        p.down_since = None;
                    }
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::warn!(peer = %id.name, addr = %id.addr, "swarm member down");
                    if let Some(p) = self.peers.get_mut(&id.name) {
                        p.alive = false;
                        p.down_since = Some(Instant::now());
                    }
                }
                OwnedNotification::Idle => tracing::warn!("no swarm member reachable"),
                OwnedNotification::Active => tracing::info!("swarm reachable"),
                other => tracing::debug!(notification = ?other, "swarm"),
            }
        }
    }

    /// Announces to every seed. At start, and again every 2 s while no
    /// member is reachable: after a partition longer than foca keeps down
    /// members, the seeds are the way back.
    fn announce_to_seeds(&mut self) {
        for seed in self.settings.seeds.clone() {
            if seed != self.settings.advertise {
                let target = NodeId { addr: seed, name: String::new(), incarnation: 0 };
                let _ = self.foca.announce(target, &mut self.runtime);
            }
        }
        self.last_seed_announce = Instant::now();
        self.drain();
    }

    fn alive_members(&self) -> Vec<NodeId> {
        self.foca.iter_members().map(|m| m.id().clone()).collect()
    }

    /// One round: health, decisions, own state out, view written.
    fn round(&mut self) {
        let mut members = self.alive_members();
        if members.is_empty() && self.last_seed_announce.elapsed() >= Duration::from_secs(2) {
            self.announce_to_seeds();
            members = self.alive_members();
        }
        let stale_after = self.settings.state_interval * 3;
        for p in self.peers.values_mut() {
            p.alive = members.iter().any(|m| m.name == p.state.node);
            let age = p.last_state.map_or(Duration::MAX, |t| t.elapsed());
            p.state_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            p.healthy = p.alive && age < stale_after;
            if !p.alive && p.down_since.is_none() {
                p.down_since = Some(Instant::now());
            }
        }
        // Forget peers down for a minute.
        self.peers.retain(|_, p| p.down_since.is_none_or(|t| t.elapsed() < Duration::from_secs(60)));
        let isolated = self.ever_joined && members.is_empty();

        let (neighbours, latency, jitter) = decide::neighbours(&self.peers, self.settings.neighbours);
        for p in self.peers.values_mut() {
            p.neighbour = neighbours.contains(&p.state.node);
        }
        let mut me = self.own_state(latency, jitter, isolated);
        let prior = decide::Prior { leader: self.leader.clone(), weights: self.own_weights.clone() };
        let decide::Decisions { group, leader, own_weights, channels } =
            decide::decide(&self.peers, &me, isolated, &prior);
        if leader != self.leader {
            tracing::info!(leader = leader.as_deref().unwrap_or("none"), "group leader");
            self.leader = leader;
        }
        self.own_weights = own_weights;
        for p in self.peers.values_mut() {
            p.weights = channels
                .iter()
                .filter_map(|(id, c)| c.weights.get(&p.state.node).map(|w| (id.clone(), *w)))
                .collect();
        }
        for c in &mut me.channels {
            c.weight = self.own_weights.get(&c.id).copied().unwrap_or(0.0);
        }
        me.leader = self.leader.clone();
        self.send_state(&me, &members);
        let mut view = lock(&self.shared.view);
        view.me = Some(me);
        view.peers = self.peers.clone();
        let throughput = lock(&self.shared.throughput);
        for (node, p) in view.peers.iter_mut() {
            p.throughput_mbps = throughput.get(node).copied();
        }
        drop(throughput);
        view.group = group;
        view.leader = self.leader.clone();
        view.channels = channels;
        if isolated != view.isolated {
            if isolated {
                tracing::warn!("isolated: no swarm member reachable; producing locally");
            } else {
                tracing::info!("rejoined the swarm");
            }
        }
        view.isolated = isolated;
        view.packets = self.shared.stats.snapshot().iter().map(|(k, v)| ((*k).to_string(), *v)).collect();
        if let Some(path) = &self.settings.status_file {
            write_view(path, &view);
        }
    }

    fn own_state(&mut self, latency: f32, jitter: f32, isolated: bool) -> EncodingState {
        let load = self.load.sample();
        let local = lock(&self.shared.local);
        let clock = local.clock.clone().unwrap_or(ClockSummary { state: "freerun".into(), error_ns: None });
        let recent_errors =
            local.errors.iter().filter(|t| t.elapsed() < Duration::from_secs(60)).count().min(u32::MAX as usize) as u32;
        let latency_ratio = local
            .channels
            .values()
            .filter(|c| c.segment_ms > 0.0)
            .map(|c| c.encode_latency_ms / c.segment_ms)
            .fold(0.0, f32::max);
        let confidence = state::confidence(&ConfidenceInputs {
            clock_state: &clock.state,
            clock_error_ns: clock.error_ns,
            frame_ns: self.settings.frame_ns,
            cpu: load.cpu,
            recent_errors,
            latency_ratio,
            isolated,
        });
        let channels = local
            .channels
            .iter()
            .map(|(id, c)| ChannelReport {
                id: id.clone(),
                frame: c.frame,
                timecode: c.timecode.clone(),
                complexity: c.complexity,
                segments: c.segments.iter().cloned().collect(),
                encode_latency_ms: c.encode_latency_ms,
                weight: self.own_weights.get(id).copied().unwrap_or(0.0),
                ladder: c.ladder.clone(),
            })
            .collect();
        EncodingState {
            node: self.settings.node.clone(),
            boot: self.sealer.boot(),
            addr: self.settings.advertise,
            origin: self.settings.origin.clone(),
            sent_tai_ns: i64::try_from(now_tai_ns()).unwrap_or(i64::MAX),
            neighbour_latency_ms: latency,
            neighbour_jitter_ms: jitter,
            load,
            clock,
            recent_errors,
            uptime_s: self.started.elapsed().as_secs(),
            isolated,
            confidence,
            leader: self.leader.clone(),
            channels,
        }
    }

    fn send_state(&mut self, me: &EncodingState, members: &[NodeId]) {
        let payload = state::encode(me);
        let packet = self.sealer.seal(Kind::State, &payload, realtime_ns() / 1_000_000);
        for m in members {
            let _ = self.socket.send_to(&packet, m.addr);
        }
    }
}

/// Media time for latency stamps: the system clock in TAI terms is enough
/// here (PTP-disciplined appliances keep it within microseconds).
fn now_tai_ns() -> i128 {
    i128::from(realtime_ns())
}

fn write_view(path: &std::path::Path, view: &View) {
    let Ok(text) = serde_json::to_vec_pretty(view) else { return };
    if crate::files::write_atomic(path, &text, crate::files::Mode::Default, false).is_err() {
        tracing::debug!(path = %path.display(), "swarm view not written");
    }
}

/// Takes the ladder changes of `channel` that peers advertise and this
/// node does not know. A change for a rendition this node lacks, or out of
/// range, is ignored (logged): the ladders differ, and hash agreement will
/// say so.
fn adopt_ladder_changes(view: &View, channel: &str, control: &crate::control::LiveControl, renditions: &[String]) {
    for peer in view.peers.values().filter(|p| p.alive) {
        for change in peer.state.channel(channel).map_or(&[][..], |c| &c.ladder[..]) {
            if !renditions.contains(&change.rendition) || !crate::config::BITRATE_KBPS.contains(&change.bitrate_kbps) {
                tracing::debug!(peer = %peer.state.node, channel, rendition = %change.rendition, "ladder change not applicable here");
                continue;
            }
            if control.add(change.clone()) {
                tracing::info!(
                    channel,
                    rendition = %change.rendition,
                    kbps = change.bitrate_kbps,
                    from_segment = change.from_segment,
                    by = %change.origin,
                    "ladder change from the swarm"
                );
            }
        }
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
    };
    let swarm = Arc::new(Swarm::start(settings)?);
    let weak = Arc::downgrade(&swarm);
    let serves = config.origin.listen.is_some();
    let list = Arc::clone(channels);
    std::thread::Builder::new()
        .name("swarm-feed".into())
        .spawn(move || feed(&weak, &list, serves))
        .map_err(SwarmError::Thread)?;
    if serves {
        let weak = Arc::downgrade(&swarm);
        let thread = std::thread::Builder::new()
            .name("replicate".into())
            .spawn(move || replicate::run(&weak))
            .map_err(SwarmError::Thread)?;
        *lock(&swarm.replicator) = Some(thread);
    }
    Ok(Some(swarm))
}

/// One channel's feeds, as the swarm's feeding thread reads them.
struct Feed {
    analyses: Option<tokio::sync::broadcast::Receiver<Arc<crate::analysis::stage::SegmentReport>>>,
    segments: Option<tokio::sync::broadcast::Receiver<Arc<crate::pipeline::PublishedSegment>>>,
    errors_seen: u64,
}

impl Feed {
    fn subscribe(taps: &crate::pipeline::Taps) -> Self {
        Self {
            analyses: taps.analysis.as_ref().map(tokio::sync::broadcast::Sender::subscribe),
            segments: taps.segments.as_ref().map(tokio::sync::broadcast::Sender::subscribe),
            errors_seen: taps.status.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Moves what the channel reported since the last call into `c`, and
    /// the time of each new error into `errors`.
    fn read(&mut self, taps: &crate::pipeline::Taps, c: &mut ChannelLocal, errors: &mut VecDeque<Instant>) {
        c.ladder = taps.control.advertised();
        if let Some(rx) = self.analyses.as_mut() {
            while let Ok(r) = rx.try_recv() {
                c.timecode = r.timecode.clone();
                c.complexity = r.analysis.complexity;
            }
        }
        if let Some(rx) = self.segments.as_mut() {
            while let Ok(p) = rx.try_recv() {
                c.add_segment(&p.track, p.index, p.sha256, p.input_sha256);
            }
        }
        let status = &taps.status;
        c.frame = status.frame.load(Ordering::Relaxed);
        c.encode_latency_ms = status.encode_latency_us.load(Ordering::Relaxed) as f32 / 1_000.0;
        let written = status.write_errors.load(Ordering::Relaxed);
        for _ in self.errors_seen..written {
            errors.push_back(Instant::now());
        }
        self.errors_seen = written;
    }
}

/// Feeds the swarm node what every running channel reports, ten times a
/// second, until the node is dropped. A stopped or deleted channel leaves
/// the node's packets (its peers then select other replicas for it);
/// ladder changes peers advertise are adopted per channel.
fn feed(swarm: &std::sync::Weak<Swarm>, channels: &crate::channels::Channels, serves: bool) {
    let mut feeds: BTreeMap<String, Feed> = BTreeMap::new();
    let mut rounds = 0u64;
    while let Some(swarm) = swarm.upgrade() {
        rounds += 1;
        let running: Vec<_> =
            channels.all().into_iter().filter(|c| c.taps.status.running.load(Ordering::Relaxed)).collect();
        feeds.retain(|id, _| running.iter().any(|c| &c.id == id));
        let view = rounds.is_multiple_of(3).then(|| swarm.view());
        let mut targets = BTreeMap::new();
        swarm.local(|l| {
            l.channels.retain(|id, _| running.iter().any(|c| &c.id == id));
            for ch in &running {
                let config = ch.supervisor.config();
                if let Some(view) = &view {
                    let renditions: Vec<String> = config.renditions.iter().map(|r| r.name.clone()).collect();
                    adopt_ladder_changes(view, &ch.id, &ch.taps.control, &renditions);
                }
                let c = l.channels.entry(ch.id.clone()).or_default();
                c.segment_ms = (config.channel.segment_seconds * 1000.0) as f32;
                feeds.entry(ch.id.clone()).or_insert_with(|| Feed::subscribe(&ch.taps)).read(
                    &ch.taps,
                    c,
                    &mut l.errors,
                );
                if (l.clock.is_none() || ch.first)
                    && let Some(q) = lock(&ch.taps.status.clock).as_ref()
                {
                    l.clock = Some(ClockSummary { state: q.state.name().to_string(), error_ns: q.error_ns });
                }
                if serves {
                    targets.insert(ch.id.clone(), replicate::Target::of(&config));
                }
            }
            while l.errors.front().is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                l.errors.pop_front();
            }
        });
        // A channel stopped keeps its combined output open (it may start
        // again); one deleted has it ended.
        let mut kept = lock(&swarm.shared.targets);
        kept.retain(|id, _| channels.get(id).is_some());
        kept.extend(targets);
        drop(kept);
        drop(swarm);
        std::thread::sleep(Duration::from_millis(100));
    }
}
