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

/// Why the group's leadership moved from `before` to `now`, in words,
/// from what `view` shows of both (docs/swarm.md, Decisions: the most
/// confident healthy node leads, the incumbent kept unless another is
/// 0.1 more confident).
pub fn election_reason(view: &View, before: Option<&str>, now: Option<&str>) -> String {
    let state = |n: &str| {
        if n == view.node {
            view.me.as_ref().map(|m| (m, !view.isolated))
        } else {
            view.peers.get(n).map(|p| (&p.state, p.healthy))
        }
    };
    let Some(before) = before else {
        return match now {
            Some(_) => "the first leader this node has seen".into(),
            None => "no healthy member".into(),
        };
    };
    match state(before) {
        None => format!("{before} left the swarm"),
        Some((_, false)) => format!("{before} is unhealthy (no state from it for 1.5 s) or gone"),
        Some((old, true)) => {
            let was = format!("{before}'s confidence is {:.2} ({})", old.confidence, confidence_factors(old));
            match now.and_then(state) {
                // Within a step of each other (elect: 0.05 steps): the
                // majority's incumbent, then latency and id decided.
                Some((new, _)) if (new.confidence - old.confidence).abs() < 0.05 => format!(
                    "{was}, as much as {}'s: the leader the majority named, then the lower latency to neighbours, then the lower id, decide",
                    new.node
                ),
                Some((new, _)) => {
                    format!("{was} against {}'s {:.2} ({})", new.node, new.confidence, confidence_factors(new))
                }
                None => was,
            }
        }
    }
}

/// What holds a node's confidence below 1, from its state packet.
fn confidence_factors(s: &crate::swarm::state::EncodingState) -> String {
    let mut f = Vec::new();
    if s.clock.state != "locked" {
        f.push(format!("clock {}", s.clock.state));
    }
    if s.load.cpu > 0.85 {
        f.push(format!("CPU {:.0} % over 10 s", s.load.cpu * 100.0));
    }
    if s.recent_errors > 0 {
        f.push(format!("{} output errors in the last minute", s.recent_errors));
    }
    if s.isolated {
        f.push("isolated".into());
    }
    if f.is_empty() { "nothing lowers it".into() } else { f.join(", ") }
}

/// How long after the selection moves a failure of the node it moved away
/// from still counts as the reason (failure detection takes ~1.5 s).
const FAILOVER_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

impl ViewDiff {
    /// Records in `log` what changed since the last view.
    pub fn update(&mut self, view: &View, log: &EventLog) {
        if view.leader != self.leader && (self.seen || view.leader.is_some()) {
            let why = election_reason(view, self.leader.as_deref(), view.leader.as_deref());
            match &view.leader {
                Some(l) => log.push("election", Some(l), format!("{l} leads the group: {why}")),
                None => log.push("election", None, format!("the group has no leader: {why}")),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::swarm::state::{ClockSummary, EncodingState, Load};

    fn state(node: &str, confidence: f32, cpu: f32) -> EncodingState {
        EncodingState {
            node: node.into(),
            boot: 1,
            addr: "127.0.0.1:7946".parse().unwrap(),
            origin: None,
            sent_tai_ns: 0,
            neighbour_latency_ms: 0.5,
            neighbour_jitter_ms: 0.1,
            load: Load { cpu, process_cpu: 0.2, memory: 0.3 },
            clock: ClockSummary { state: "freerun".into(), error_ns: None },
            recent_errors: 0,
            uptime_s: 60,
            isolated: false,
            confidence,
            leader: None,
            channels: Vec::new(),
            outlook: crate::swarm::state::Outlook::default(),
        }
    }

    #[test]
    fn an_election_says_why_the_leader_moved() {
        let mut view = View { node: "n1".into(), me: Some(state("n1", 0.6, 0.5)), ..View::default() };
        let peer = |s: EncodingState, healthy: bool| {
            let mut p = crate::swarm::PeerView::new(s, 0.5);
            p.healthy = healthy;
            p
        };
        view.peers.insert("n2".into(), peer(state("n2", 0.42, 0.97), true));
        let why = election_reason(&view, Some("n2"), Some("n1"));
        assert_eq!(
            why,
            "n2's confidence is 0.42 (clock freerun, CPU 97 % over 10 s) against n1's 0.60 (clock freerun)"
        );
        view.peers.insert("n2".into(), peer(state("n2", 0.62, 0.2), true));
        assert!(
            election_reason(&view, Some("n2"), Some("n1"))
                .starts_with("n2's confidence is 0.62 (clock freerun), as much as n1's:"),
            "a tie"
        );
        view.peers.insert("n2".into(), peer(state("n2", 0.6, 0.2), false));
        assert!(election_reason(&view, Some("n2"), Some("n1")).starts_with("n2 is unhealthy"));
        assert_eq!(election_reason(&view, Some("n3"), Some("n1")), "n3 left the swarm");
        assert_eq!(election_reason(&view, None, Some("n1")), "the first leader this node has seen");
    }
}
