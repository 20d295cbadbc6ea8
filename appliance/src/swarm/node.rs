//! The swarm's protocol thread: one UDP socket, foca (SWIM) for
//! membership, the Encoding State Packets in and out, and each round's
//! decisions (`super::decide`) applied to the node's view.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;

use super::decide::ChannelDecisions;
use super::state::{self, ChannelReport, ClockSummary, ConfidenceInputs, EncodingState, LoadSampler};
use super::wire::{Kind, Opener, Sealer};
use super::{NodeId, PeerView, Settings, Shared, View, decide, resync, timing};
use crate::clock::{MediaClock, realtime_ns};
use crate::sync::lock;

/// The protocol thread's state.
pub(super) struct Node {
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
    /// Per channel: its last proposal and where it stands.
    resync: BTreeMap<String, resync::Status>,
    /// Per channel: no new proposal before this segment (the neighbours'
    /// measurements still show the offset a correction just removed).
    quiet_until: BTreeMap<String, i64>,
    /// Media clocks against the neighbours', per channel.
    clocks: timing::ClockWatch,
    /// (channel, node, proposal id) of the clock corrections whose filter
    /// restart is scheduled.
    clock_restarts: std::collections::BTreeSet<(String, String, u64)>,
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
    pub(super) fn new(settings: Settings, socket: UdpSocket, shared: Arc<Shared>) -> Self {
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
            resync: BTreeMap::new(),
            quiet_until: BTreeMap::new(),
            clocks: timing::ClockWatch::default(),
            clock_restarts: std::collections::BTreeSet::new(),
            last_drop_log: None,
            last_seed_announce: Instant::now(),
        }
    }

    pub(super) fn run(mut self) {
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
            Kind::Timing => match timing::decode(&opened.payload) {
                Some(t) if t.node != self.settings.node => {
                    let own = self.own_media_times();
                    let own_media = |id: &str| own.iter().find(|(c, _)| c == id).map(|(_, t)| *t);
                    self.clocks.receive(&self.settings.node, &t, &own_media, realtime_ns());
                }
                Some(_) => {}
                None => {
                    self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("undecodable timing packet");
                }
            },
        }
    }

    /// Every channel's media time now, for the channels whose pipeline runs.
    fn own_media_times(&self) -> Vec<(String, i64)> {
        lock(&self.shared.local)
            .channels
            .iter()
            .filter_map(|(id, c)| {
                let clock = c.clock.as_ref()?;
                Some((id.clone(), i64::try_from(clock.now_tai_ns()).ok()?))
            })
            .collect()
    }

    fn peer_state(&mut self, state: EncodingState) {
        let now_tai = now_tai_ns();
        let latency = ((now_tai - i128::from(state.sent_tai_ns)) as f64 / 1e6).max(0.0) as f32;
        let peer = self.peers.entry(state.node.clone()).or_insert_with(|| PeerView::new(state.clone(), latency));
        peer.jitter_ms += ((latency - peer.latency_ms).abs() - peer.jitter_ms) / 8.0;
        peer.latency_ms += (latency - peer.latency_ms) / 8.0;
        // Its fingerprints reach the view at once, not at the next round:
        // the packager's gate waits for them (`crate::pipeline::rework`).
        if let Some(seen) = lock(&self.shared.view).peers.get_mut(&state.node) {
            seen.state = state.clone();
        }
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
        let own = decide::Own { isolated, predicted_risk: lock(&self.shared.local).predicted_risk };
        let decide::Decisions { group, leader, own_weights, channels } = decide::decide(&self.peers, &me, own, &prior);
        if leader != self.leader {
            tracing::info!(leader = leader.as_deref().unwrap_or("none"), "group leader");
            self.leader = leader;
        }
        self.own_weights = own_weights;
        let mut channels = channels;
        self.clock_deviations(&mut channels);
        for p in self.peers.values_mut() {
            p.weights =
                channels.iter().filter_map(|(id, c)| c.weights.get(&p.state.node).map(|w| (id.clone(), *w))).collect();
        }
        for c in &mut me.channels {
            c.weight = self.own_weights.get(&c.id).copied().unwrap_or(0.0);
        }
        me.leader = self.leader.clone();
        self.resync_round(&mut me, &channels, &group);
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
        view.resync = self.resync.clone();
        view.drift_horizon_s = self.settings.drift_horizon_s;
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

    /// Adds each neighbour's media clock against this node's to its
    /// deviation, with the time left until it reaches half a frame of the
    /// channel, and the swarm's consensus against this node's; forgets the readings of nodes and channels gone.
    fn clock_deviations(&mut self, channels: &mut BTreeMap<String, ChannelDecisions>) {
        let half_frames: BTreeMap<String, f64> = lock(&self.shared.local)
            .channels
            .iter()
            .filter(|(_, c)| c.segment_frames > 0 && c.segment_ms > 0.0)
            .map(|(id, c)| (id.clone(), f64::from(c.segment_ms) * 1e6 / c.segment_frames as f64 / 2.0))
            .collect();
        let peers = &self.peers;
        self.clocks.retain(|c, n| half_frames.contains_key(c) && peers.contains_key(n));
        self.clock_restarts.retain(|(c, n, _)| half_frames.contains_key(c) && peers.contains_key(n));
        let now = realtime_ns();
        for (id, c) in channels.iter_mut() {
            let Some(&half_frame_ns) = half_frames.get(id) else { continue };
            for (node, d) in c.deviations.iter_mut() {
                d.clock = self.clocks.drift(id, node, now, half_frame_ns, self.settings.drift_horizon_s);
            }
            self.clocks.consensus_round(id, now);
            c.consensus = self.clocks.consensus(id, now, half_frame_ns, self.settings.drift_horizon_s);
        }
    }

    /// Resynchronisation, per channel this node runs: its votes on the
    /// others' proposals, its own proposal when a majority sees it out of
    /// step (or a drill forged one), and the fate of that proposal:
    /// carried (the correction goes to the capture), outvoted, or open.
    fn resync_round(
        &mut self,
        me: &mut EncodingState,
        channels: &BTreeMap<String, ChannelDecisions>,
        group: &[String],
    ) {
        let local: BTreeMap<String, (i64, f32, bool)> = lock(&self.shared.local)
            .channels
            .iter()
            .map(|(id, c)| (id.clone(), (c.segment_frames.max(1), c.segment_ms, c.can_realign)))
            .collect();
        let mut forged = std::mem::take(&mut *lock(&self.shared.forged));
        let now_ms = u64::try_from(realtime_ns() / 1_000_000).unwrap_or(0);
        for c in &mut me.channels {
            let Some(decisions) = channels.get(&c.id) else { continue };
            let (frames_per_segment, segment_ms, can_realign) = local.get(&c.id).copied().unwrap_or((1, 0.0, false));
            let segment = c.frame.div_euclid(frames_per_segment);
            let voters: Vec<&PeerView> = self
                .peers
                .values()
                .filter(|p| p.healthy && group.contains(&p.state.node) && p.state.channel(&c.id).is_some())
                .collect();
            // When a frame of this channel is due here (within a frame).
            let frame_ns = f64::from(segment_ms) * 1e6 / frames_per_segment as f64;
            let due_ns = |frame: i64| realtime_ns() + ((frame - c.frame) as f64 * frame_ns) as i64;
            let mut moving = Vec::new();
            c.votes = voters
                .iter()
                .filter_map(|p| {
                    let proposal = p.state.channel(&c.id)?.proposal.as_ref()?;
                    let own = decisions.deviations.get(&p.state.node);
                    let approve = resync::vote(proposal, own, now_ms);
                    if approve && matches!(proposal.correction, resync::Correction::Clock { .. }) {
                        moving.push((
                            p.state.node.clone(),
                            proposal.id,
                            due_ns(proposal.at_segment * frames_per_segment),
                        ));
                    }
                    Some(resync::Vote { node: p.state.node.clone(), id: proposal.id, approve })
                })
                .collect();
            // A clock this node approved a correction of moves at its
            // boundary: the filter of it starts afresh after.
            for (node, id, at_ns) in moving {
                if self.clock_restarts.insert((c.id.clone(), node.clone(), id)) {
                    self.clocks.restart(&c.id, Some(&node), at_ns);
                }
            }
            let names: Vec<String> = voters.iter().map(|p| p.state.node.clone()).collect();
            let approvals: Vec<String> = match self.resync.get(&c.id) {
                Some(s) => voters
                    .iter()
                    .filter(|p| {
                        p.state.channel(&c.id).is_some_and(|x| {
                            x.votes.iter().any(|v| v.node == self.settings.node && v.id == s.proposal.id && v.approve)
                        })
                    })
                    .map(|p| p.state.node.clone())
                    .collect(),
                None => Vec::new(),
            };
            match self.resync.get_mut(&c.id) {
                Some(s) if s.outcome == resync::Outcome::Proposed => {
                    s.approvals = approvals;
                    s.voters = names.len();
                    if resync::carried(s.approvals.len(), s.voters) && segment < s.proposal.at_segment {
                        s.outcome = resync::Outcome::Applied;
                        let at_frame = s.proposal.at_segment * frames_per_segment;
                        let at_local_ns = due_ns(at_frame);
                        if matches!(s.proposal.correction, resync::Correction::Clock { .. }) {
                            // This clock moves against every neighbour.
                            self.clocks.restart(&c.id, None, at_local_ns);
                        }
                        lock(&self.shared.corrections).push(super::Approved {
                            channel: c.id.clone(),
                            at_frame,
                            at_local_ns,
                            correction: s.proposal.correction,
                            proposed_ms: s.proposal.id,
                        });
                        self.quiet_until.insert(c.id.clone(), s.proposal.at_segment + 3);
                        tracing::info!(channel = %c.id, approvals = ?s.approvals, at_segment = s.proposal.at_segment, "resynchronisation carried");
                    } else if segment >= s.proposal.at_segment {
                        s.outcome = resync::Outcome::Outvoted;
                        self.quiet_until.insert(c.id.clone(), segment + 2);
                        tracing::warn!(channel = %c.id, approvals = ?s.approvals, voters = s.voters, "resynchronisation outvoted; nothing changes");
                    }
                }
                // Carried and its boundary not reached yet: nothing new.
                Some(s) if s.outcome == resync::Outcome::Applied && segment <= s.proposal.at_segment => {}
                _ => {
                    let quiet = self.quiet_until.get(&c.id).is_some_and(|q| segment < *q);
                    let drill = forged.iter().position(|(id, _)| id == &c.id).map(|at| forged.remove(at));
                    let wanted = match drill {
                        // A drill: a correction nobody measured, with made-up evidence.
                        Some((_, frames)) => Some((
                            resync::Correction::Realign { frames },
                            names.iter().map(|n| (n.clone(), frames)).collect(),
                        )),
                        None if quiet => None,
                        // A source that cannot move (a file) shows its
                        // frame offset but never proposes a realignment;
                        // a clock drifting away is corrected on any source.
                        None => {
                            // Members whose clock is a quarter frame or more
                            // from this one (or not yet measured again):
                            // their frame offsets are the clock's to put right.
                            let quarter_frame_ns = frame_ns / 4.0;
                            let clock_doubt: Vec<String> = names
                                .iter()
                                .filter(|n| {
                                    self.clocks.in_step(&c.id, n, realtime_ns(), quarter_frame_ns) == Some(false)
                                })
                                .cloned()
                                .collect();
                            can_realign
                                .then(|| resync::proposal_needed(&decisions.deviations, &names, &clock_doubt))
                                .flatten()
                                .or_else(|| {
                                    resync::clock_proposal_needed(&decisions.deviations, &names, decisions.consensus)
                                })
                        }
                    };
                    if let Some((correction, evidence)) = wanted {
                        let proposal = resync::Proposal {
                            id: now_ms,
                            correction,
                            at_segment: resync::boundary(c.frame, frames_per_segment, segment_ms),
                            evidence,
                        };
                        tracing::info!(channel = %c.id, ?proposal, "proposing a resynchronisation");
                        let status = resync::Status {
                            proposal,
                            outcome: resync::Outcome::Proposed,
                            approvals: Vec::new(),
                            voters: names.len(),
                        };
                        self.resync.insert(c.id.clone(), status);
                    }
                }
            }
            // The proposal goes out while it is open, and once carried until
            // its boundary, so every voter sees how it ended.
            c.proposal = self
                .resync
                .get(&c.id)
                .filter(|s| {
                    s.outcome == resync::Outcome::Proposed
                        || (s.outcome == resync::Outcome::Applied && segment <= s.proposal.at_segment)
                })
                .map(|s| s.proposal.clone());
        }
        // A drill for a channel with a proposal under way waits its turn.
        lock(&self.shared.forged).extend(forged);
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
            predicted_risk: local.predicted_risk,
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
                trail_first: c.trail_first,
                trail: c.trail.clone(),
                proposal: None,
                votes: Vec::new(),
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
            outlook: local.outlook.clone(),
        }
    }

    fn send_state(&mut self, me: &EncodingState, members: &[NodeId]) {
        let payload = state::encode(me);
        let packet = self.sealer.seal(Kind::State, &payload, realtime_ns() / 1_000_000);
        for m in members {
            let _ = self.socket.send_to(&packet, m.addr);
        }
        // The media times last, as close to sending as they can be.
        let timing = self.clocks.packet(&self.settings.node, &self.own_media_times());
        if !timing.channels.is_empty() {
            let packet = self.sealer.seal(Kind::Timing, &timing::encode(&timing), realtime_ns() / 1_000_000);
            for m in members {
                let _ = self.socket.send_to(&packet, m.addr);
            }
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
