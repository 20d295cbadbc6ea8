//! What happened (elections, failovers, nodes lost and back, isolation,
//! ladder changes, channel start/stop, errors) and what was measured over
//! time (weights, CPU, complexity), for the page's log and charts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::control::unix_ms;
use crate::swarm::View;
use crate::sync::lock;

/// Events kept.
const EVENTS_KEPT: usize = 1000;
/// History samples kept (one a second: ten minutes).
const SAMPLES_KEPT: usize = 600;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing id (`/api/v1/events?since=`).
    pub id: u64,
    /// Unix time, ms.
    pub t_ms: u64,
    /// `election`, `failover`, `node-down`, `node-up`, `isolated`,
    /// `rejoined`, `ladder`, `channel`, `clock`, `error`.
    pub kind: &'static str,
    /// The node it is about, if one.
    pub node: Option<String>,
    /// What happened, in words.
    pub message: String,
}

/// The event log, with a live feed for the event stream.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<VecDeque<Event>>,
    next: AtomicU64,
    feed: tokio::sync::broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self { events: Mutex::default(), next: AtomicU64::new(1), feed: tokio::sync::broadcast::channel(256).0 }
    }
}

impl EventLog {
    /// Records an event (and logs it).
    pub fn push(&self, kind: &'static str, node: Option<&str>, message: String) {
        tracing::info!(kind, node = node.unwrap_or("-"), "{message}");
        let e = Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            t_ms: unix_ms(),
            kind,
            node: node.map(str::to_string),
            message,
        };
        let mut events = lock(&self.events);
        events.push_back(e.clone());
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
        let _ = self.feed.send(e); // nobody listening is fine
    }

    /// Events with an id above `since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        lock(&self.events).iter().filter(|e| e.id > since).cloned().collect()
    }

    /// Live events.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.feed.subscribe()
    }

    /// Events recorded so far.
    pub fn count(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - 1
    }
}

/// One sample of the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix time, ms.
    pub t_ms: u64,
    /// Encoder weight per node, for the appliance's first channel.
    pub weights: BTreeMap<String, f32>,
    /// Machine CPU busy per node, 0–1.
    pub cpu: BTreeMap<String, f32>,
    /// Complexity of this node's last analysed segment.
    pub complexity: f32,
    /// This node's capture-to-publish latency, ms.
    pub encode_latency_ms: f32,
}

/// Chart history.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Adds a sample.
    pub fn push(&self, s: Sample) {
        let mut h = lock(&self.0);
        h.push_back(s);
        while h.len() > SAMPLES_KEPT {
            h.pop_front();
        }
    }

    /// All samples, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        lock(&self.0).iter().cloned().collect()
    }
}

/// Swarm events found by comparing two views of the swarm.
#[derive(Debug, Default)]
pub struct ViewDiff {
    leader: Option<String>,
    healthy: BTreeMap<String, bool>,
    isolated: bool,
    /// The node chosen for the newest index, by (channel, track).
    chosen: BTreeMap<(String, String), (i64, String)>,
    moves: Vec<Move>,
    /// The last known frame offset of each (channel, neighbour).
    offsets: BTreeMap<(String, String), i64>,
    /// (channel, neighbour) whose media clock is flagged as drifting.
    drifting: std::collections::BTreeSet<(String, String)>,
    /// This node's last proposal per channel: (id, outcome).
    proposals: BTreeMap<String, (u64, crate::swarm::resync::Outcome)>,
    seen: bool,
}

/// A change of the chosen node not yet explained.
#[derive(Debug)]
struct Move {
    channel: String,
    from: String,
    to: String,
    index: i64,
    tracks: Vec<String>,
    at: std::time::Instant,
}

/// How long after the selection moves a failure of the node it moved away
/// from still counts as the reason (failure detection takes ~1.5 s).
const FAILOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

impl ViewDiff {
    /// Records in `log` what changed since the last view.
    pub fn update(&mut self, view: &View, log: &EventLog) {
        if view.leader != self.leader && (self.seen || view.leader.is_some()) {
            match &view.leader {
                Some(l) => log.push("election", Some(l), format!("{l} leads the group")),
                None => log.push("election", None, "the group has no leader".into()),
            }
            self.leader = view.leader.clone();
        }
        for (node, peer) in &view.peers {
            let was = self.healthy.insert(node.clone(), peer.healthy);
            match (was, peer.healthy) {
                (Some(true), false) => {
                    log.push("node-down", Some(node), format!("{node} is unhealthy or gone; its weight drains to 0"))
                }
                (Some(false) | None, true) => log.push("node-up", Some(node), format!("{node} is healthy")),
                _ => {}
            }
        }
        if view.isolated != self.isolated {
            if view.isolated {
                log.push(
                    "isolated",
                    Some(&view.node),
                    format!("{} hears no peer: isolated, producing on its own", view.node),
                );
            } else {
                log.push("rejoined", Some(&view.node), format!("{} hears the swarm again", view.node));
            }
            self.isolated = view.isolated;
        }
        // Failover: the chosen replica of the newest settled index (the
        // one before the newest, which may so far hold only the first node
        // to publish it) moves away from a node that is, or within a few
        // seconds turns out to be, gone or unhealthy (selection may move
        // before failure detection does).
        let gone = |node: &str| view.peers.get(node).is_none_or(|p| !p.healthy) && node != view.node;
        for (channel, decisions) in &view.channels {
            let settled = decisions.selection.iter().rev().nth(1).or_else(|| decisions.selection.iter().next_back());
            let Some((index, tracks)) = settled else { continue };
            for (track, node) in tracks {
                let before = self.chosen.insert((channel.clone(), track.clone()), (*index, node.clone()));
                if let Some((_, previous)) = before
                    && previous != *node
                {
                    match self.moves.iter_mut().find(|m| m.channel == *channel && m.from == previous && m.to == *node) {
                        Some(m) if !m.tracks.contains(track) => m.tracks.push(track.clone()),
                        Some(_) => {}
                        None => self.moves.push(Move {
                            channel: channel.clone(),
                            from: previous,
                            to: node.clone(),
                            index: *index,
                            tracks: vec![track.clone()],
                            at: std::time::Instant::now(),
                        }),
                    }
                }
            }
        }
        self.deviations(view, log);
        self.resync(view, log);
        let mut still = Vec::new();
        for m in std::mem::take(&mut self.moves) {
            if gone(&m.from) {
                log.push(
                    "failover",
                    Some(&m.to),
                    format!(
                        "channel {}: segments from {} instead of {} from index {} ({})",
                        m.channel,
                        m.to,
                        m.from,
                        m.index,
                        m.tracks.join(", ")
                    ),
                );
            } else if m.at.elapsed() < FAILOVER_WINDOW {
                still.push(m);
            }
        }
        self.moves = still;
        self.seen = true;
    }

    /// This node's resynchronisation proposals and their outcomes
    /// (`resync` events).
    fn resync(&mut self, view: &View, log: &EventLog) {
        use crate::swarm::resync::{Correction, Outcome};
        for (channel, s) in &view.resync {
            let now = (s.proposal.id, s.outcome);
            if self.proposals.insert(channel.clone(), now) == Some(now) {
                continue;
            }
            let what = format!("{} at segment {}", s.proposal.correction.describe(), s.proposal.at_segment);
            let me = &view.node;
            let evidence: Vec<String> = match s.proposal.correction {
                Correction::Realign { .. } => s.proposal.evidence.iter().map(|(n, k)| format!("{n} {k:+}")).collect(),
                Correction::Clock { .. } => {
                    s.proposal.evidence.iter().map(|(n, us)| format!("{n} {:+.1} ms", *us as f64 / 1e3)).collect()
                }
            };
            let text = match s.outcome {
                Outcome::Proposed => {
                    format!("channel {channel}: {me} proposes to {what} (offsets measured: {})", evidence.join(", "))
                }
                Outcome::Applied => format!(
                    "channel {channel}: {me} will {what}: carried by {} of {} ({})",
                    s.approvals.len(),
                    s.voters,
                    s.approvals.join(", ")
                ),
                Outcome::Outvoted => format!(
                    "channel {channel}: {me}'s proposal to {what} was outvoted ({} of {} approved); nothing changes",
                    s.approvals.len(),
                    s.voters
                ),
            };
            log.push("resync", Some(me), text);
        }
    }

    /// A neighbour whose numbering of the same pictures moves away from
    /// this node's, or back into lockstep, and one whose media clock is
    /// predicted to reach half a frame from this node's within the
    /// horizon, or no longer is (`deviation` events).
    fn deviations(&mut self, view: &View, log: &EventLog) {
        for (channel, decisions) in &view.channels {
            for (node, d) in &decisions.deviations {
                let drifting = d.clock.filter(|c| c.flagged);
                let key = (channel.clone(), node.clone());
                if drifting.is_some() != self.drifting.contains(&key) {
                    let me = &view.node;
                    let text = match drifting {
                        Some(c) => {
                            self.drifting.insert(key);
                            format!(
                                "channel {channel}: {node}'s media clock drifts {:+.0} ppm against {me}'s ({:+.1} ms now): \
                                 half a frame in {:.0} s",
                                c.drift_ppm,
                                c.offset_ms,
                                c.half_frame_in_s.unwrap_or(0.0)
                            )
                        }
                        None => {
                            self.drifting.remove(&key);
                            format!(
                                "channel {channel}: {node}'s media clock is no longer heading half a frame away from {me}'s"
                            )
                        }
                    };
                    log.push("deviation", Some(node), text);
                }
                let Some(k) = d.frame_offset else { continue };
                let before = self.offsets.insert((channel.clone(), node.clone()), k);
                if before == Some(k) || (before.is_none() && k == 0) {
                    continue;
                }
                let me = &view.node;
                let text = match k {
                    0 => format!("channel {channel}: {node} is in lockstep with {me} again"),
                    k => format!(
                        "channel {channel}: {node} numbers the same pictures {} frame{} {} {me} \
                         ({} of {} recent segment hashes differ)",
                        k.abs(),
                        if k.abs() == 1 { "" } else { "s" },
                        if k > 0 { "ahead of" } else { "behind" },
                        d.hash_disagreements,
                        d.hashes_compared
                    ),
                };
                log.push("deviation", Some(node), text);
            }
        }
    }
}
