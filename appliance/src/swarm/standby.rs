//! Standby units: a standby appliance starts encoding a channel when an
//! encoder of that channel is predicted to fail (its own prediction's
//! alarm, carried in its state packets) or has failed (down, silent, or
//! publishing its segments a segment or more behind its own pace),
//! so its segments are ready and identical before they are needed; it
//! stops again once no encoder has needed it for a while.
//!
//! [`Planner::round`] decides from the peers' last packets alone, so
//! every standby unit of a channel comes to the same answer: the units
//! that stand by for it are ranked (those already preparing it first,
//! then by id) and the first as many as there are encoders in trouble
//! prepare it. [`run`] carries the decisions out on this appliance's
//! channels and tells the swarm what it stands by for. See docs/swarm.md,
//! "Standby units".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{PeerView, Swarm};
use crate::config::StandbyPrepares;
use crate::sync::lock;

/// Why a channel needs a standby unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// An encoder's own prediction sees its failure coming.
    Predicted {
        /// The encoder node.
        node: String,
        /// Its component whose alarm is up.
        component: String,
        /// The probability of that failure within the horizon.
        probability: f32,
    },
    /// An encoder went down or silent while it encoded the channel.
    Lost {
        /// The encoder node.
        node: String,
    },
    /// An encoder publishes the channel's segments later than its own
    /// pace by at least a segment: alive, but failing.
    Behind {
        /// The encoder node.
        node: String,
        /// How far behind its pace, s.
        seconds: f64,
    },
}

impl Cause {
    /// The encoder node in trouble.
    pub fn node(&self) -> &str {
        match self {
            Cause::Predicted { node, .. } | Cause::Lost { node } | Cause::Behind { node, .. } => node,
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Predicted { node, component, probability } => write!(
                f,
                "{component} on {node} predicted to fail within {} s (probability {probability:.2})",
                crate::predict::live::HORIZON_S
            ),
            Cause::Lost { node } => write!(f, "{node} went down or silent while encoding it"),
            Cause::Behind { node, seconds } => {
                write!(f, "{node} publishes its segments {seconds:.1} s behind its pace")
            }
        }
    }
}

/// What this unit does about a channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start encoding it.
    Prepare {
        /// The channel.
        channel: String,
        /// Why.
        cause: Cause,
    },
    /// Stop encoding it: no encoder has needed it for the release time.
    Release {
        /// The channel.
        channel: String,
    },
}

/// Where one channel stands, for the swarm view and the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Status {
    /// This unit encodes it for the swarm.
    pub prepared: bool,
    /// Why it started to (while prepared).
    pub cause: Option<Cause>,
    /// The encoders in trouble now, with why.
    pub trouble: Vec<Cause>,
    /// The standby units for the channel in rank order (this one included).
    pub standbys: Vec<String>,
    /// Seconds left until it stops, once no longer needed.
    pub release_in_s: Option<f64>,
}

/// A node seen encoding a channel.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Since when it has been down or silent.
    lost_since: Option<Instant>,
    /// Its boot (a restarted node keeps a pace of its own).
    boot: u64,
    /// Its pace: the least delay seen between the start of a segment's
    /// index (its index times the segment length) and a packet of its
    /// that announced the segment, ms.
    pace_ms: Option<i64>,
    /// How much later than that its newest segment is now, ms.
    behind_ms: i64,
}

impl Seen {
    /// Takes a packet of the node sent at `sent_ms` whose newest segment
    /// of the channel is `newest` (segments of `segment_ms`).
    fn pace(&mut self, boot: u64, sent_ms: i64, newest: Option<i64>, segment_ms: i64) {
        if boot != self.boot {
            *self = Seen { boot, ..Seen::default() };
        }
        self.lost_since = None;
        let Some(index) = newest else { return };
        let delay = sent_ms - index * segment_ms;
        let pace = *self.pace_ms.get_or_insert(delay);
        self.pace_ms = Some(pace.min(delay));
        self.behind_ms = delay - pace.min(delay);
    }
}

/// What the planner keeps between rounds.
#[derive(Debug)]
pub struct Planner {
    me: String,
    prepares: StandbyPrepares,
    release_after: Duration,
    /// Per channel: the other nodes seen encoding it, lost ones included
    /// until they are back (a node that stops the channel while healthy
    /// did so on purpose and is forgotten).
    encoders: BTreeMap<String, BTreeMap<String, Seen>>,
    /// Channels this unit prepared: why, and since when not needed.
    prepared: BTreeMap<String, (Cause, Option<Instant>)>,
    status: BTreeMap<String, Status>,
}

impl Planner {
    /// The planner of unit `me`.
    pub fn new(me: &str, prepares: StandbyPrepares, release_after: Duration) -> Self {
        Self {
            me: me.to_string(),
            prepares,
            release_after,
            encoders: BTreeMap::new(),
            prepared: BTreeMap::new(),
            status: BTreeMap::new(),
        }
    }

    /// The channels it prepared.
    pub fn prepared(&self) -> BTreeSet<String> {
        self.prepared.keys().cloned().collect()
    }

    /// Where each channel it stands by for stands.
    pub fn status(&self) -> &BTreeMap<String, Status> {
        &self.status
    }

    /// One round: `standing_by` are the channels this unit holds ready
    /// (and those it prepared) with their segment length, ms; `peers` the
    /// swarm as this node sees it.
    pub fn round(
        &mut self,
        standing_by: &BTreeMap<String, u64>,
        peers: &BTreeMap<String, PeerView>,
        now: Instant,
    ) -> Vec<Action> {
        // A channel taken out of the swarm's hands (an operator's command,
        // or deleted) is no longer this planner's.
        self.prepared.retain(|c, _| standing_by.contains_key(c));
        self.encoders.retain(|c, _| standing_by.contains_key(c));
        self.status.clear();
        let mut actions = Vec::new();
        for (channel, segment_ms) in standing_by {
            let trouble = self.trouble(channel, *segment_ms, peers, now);
            let in_trouble: BTreeSet<&str> = trouble.iter().map(Cause::node).collect();
            // The standby units for the channel, those preparing it first.
            let mut standbys: Vec<(bool, String)> = peers
                .values()
                .filter(|p| p.healthy && !in_trouble.contains(p.state.node.as_str()))
                .filter(|p| p.state.outlook.standing_by.contains(channel))
                .map(|p| (!p.state.outlook.prepared.contains(channel), p.state.node.clone()))
                .chain(std::iter::once((!self.prepared.contains_key(channel), self.me.clone())))
                .collect();
            standbys.sort();
            let rank = standbys.iter().position(|(_, n)| *n == self.me).unwrap_or(usize::MAX);
            let needed = rank < trouble.len();
            let mut release_in_s = None;
            match (needed, self.prepared.get_mut(channel)) {
                (true, Some((_, idle))) => *idle = None,
                (true, None) => {
                    let cause = trouble[0].clone();
                    self.prepared.insert(channel.clone(), (cause.clone(), None));
                    actions.push(Action::Prepare { channel: channel.clone(), cause });
                }
                (false, Some((_, idle))) => {
                    let since = *idle.get_or_insert(now);
                    let left = self.release_after.saturating_sub(now.saturating_duration_since(since));
                    if left.is_zero() {
                        self.prepared.remove(channel);
                        actions.push(Action::Release { channel: channel.clone() });
                    } else {
                        release_in_s = Some(left.as_secs_f64());
                    }
                }
                (false, None) => {}
            }
            let prepared = self.prepared.get(channel);
            self.status.insert(
                channel.clone(),
                Status {
                    prepared: prepared.is_some(),
                    cause: prepared.map(|(c, _)| c.clone()),
                    trouble,
                    standbys: standbys.into_iter().map(|(_, n)| n).collect(),
                    release_in_s,
                },
            );
        }
        actions
    }

    /// The encoders of `channel` (segments of `segment_ms`) in trouble
    /// now: lost ones, then those behind their pace, then those whose
    /// failure is predicted, each once, by node id within each.
    fn trouble(
        &mut self,
        channel: &str,
        segment_ms: u64,
        peers: &BTreeMap<String, PeerView>,
        now: Instant,
    ) -> Vec<Cause> {
        if self.prepares == StandbyPrepares::Manual {
            return Vec::new();
        }
        let seen = self.encoders.entry(channel.to_string()).or_default();
        for p in peers.values().filter(|p| p.state.node != self.me) {
            let node = &p.state.node;
            match (p.healthy, p.state.channel(channel)) {
                (true, Some(report)) => {
                    let newest = report.segments.iter().map(|s| s.index).max();
                    let sent_ms = p.state.sent_tai_ns / 1_000_000;
                    let segment = i64::try_from(segment_ms).unwrap_or(i64::MAX);
                    seen.entry(node.clone()).or_default().pace(p.state.boot, sent_ms, newest, segment);
                }
                (true, None) => {
                    seen.remove(node);
                }
                (false, _) => {
                    if let Some(s) = seen.get_mut(node) {
                        s.lost_since.get_or_insert(now);
                    }
                }
            }
        }
        // A node forgotten by the swarm (down for a minute) stays lost here.
        for (node, s) in seen.iter_mut() {
            if !peers.contains_key(node) {
                s.lost_since.get_or_insert(now);
            }
        }
        let mut trouble: Vec<Cause> =
            seen.iter().filter(|(_, s)| s.lost_since.is_some()).map(|(n, _)| Cause::Lost { node: n.clone() }).collect();
        // A whole segment late: its newest segment is two segment lengths
        // behind its pace (the delay saws by one between publications).
        let behind = |s: &Seen| s.lost_since.is_none() && s.behind_ms >= 2 * segment_ms as i64;
        trouble.extend(seen.iter().filter(|(_, s)| behind(s)).map(|(n, s)| Cause::Behind {
            node: n.clone(),
            seconds: (s.behind_ms - segment_ms as i64) as f64 / 1000.0,
        }));
        if self.prepares == StandbyPrepares::Predicted {
            let late: BTreeSet<&String> = seen.iter().filter(|(_, s)| behind(s)).map(|(n, _)| n).collect();
            for p in peers.values().filter(|p| p.healthy && seen.contains_key(&p.state.node)) {
                if late.contains(&p.state.node) {
                    continue;
                }
                // The alarm of this channel's encoder first, else the node's worst.
                let alarms = &p.state.outlook.alarms;
                let own = alarms.iter().find(|a| a.component.rsplit(':').next() == Some(channel));
                let worst = alarms.iter().max_by(|a, b| a.probability.total_cmp(&b.probability));
                if let Some(a) = own.or(worst) {
                    trouble.push(Cause::Predicted {
                        node: p.state.node.clone(),
                        component: a.component.clone(),
                        probability: a.probability,
                    });
                }
            }
        }
        trouble
    }
}

/// How often the standby unit decides.
const ROUND: Duration = Duration::from_millis(250);

/// A command to a channel's supervisor waits this long at most.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the planner of a standby unit until the swarm node is dropped:
/// every round it tells the swarm which channels it stands by for (each
/// not started or stopped by an operator since the daemon started, and
/// not running unless prepared), keeps their combined output, and starts
/// or stops them as the planner decides; every decision is queued for the
/// event log ([`Swarm::take_standby_events`]).
pub(super) fn run(
    swarm: &Weak<Swarm>,
    channels: &crate::channels::Channels,
    prepares: StandbyPrepares,
    release_after: Duration,
) {
    let Some(me) = swarm.upgrade().map(|s| s.view().node) else { return };
    let mut planner = Planner::new(&me, prepares, release_after);
    while let Some(swarm) = swarm.upgrade() {
        let prepared = planner.prepared();
        let all = channels.all();
        let standing_by: BTreeMap<String, u64> = all
            .iter()
            .filter(|c| !c.operated())
            .filter(|c| prepared.contains(&c.id) || !c.taps.status.running.load(Ordering::Relaxed))
            .map(|c| (c.id.clone(), (c.supervisor.config().channel.segment_seconds * 1000.0) as u64))
            .collect();
        let view = swarm.view();
        let actions = planner.round(&standing_by, &view.peers, Instant::now());
        for action in actions {
            let (channel, cmd, what) = match &action {
                Action::Prepare { channel, cause } => (
                    channel,
                    crate::command::ChannelCommand::Start,
                    format!("{me} prepares channel {channel}: {cause}"),
                ),
                Action::Release { channel } => (
                    channel,
                    crate::command::ChannelCommand::Stop,
                    format!(
                        "{me} releases channel {channel}: no encoder of it in trouble for {} s",
                        release_after.as_secs()
                    ),
                ),
            };
            let Some(ch) = channels.get(channel) else { continue };
            let what = match ch.supervisor.ask(cmd, COMMAND_TIMEOUT) {
                Ok(_) => what,
                Err(e) => format!("{what}; the channel did not follow: {e}"),
            };
            let mut events = lock(&swarm.shared.standby_events);
            events.push(what);
            let excess = events.len().saturating_sub(100);
            events.drain(..excess);
        }
        let prepared = planner.prepared();
        swarm.local(|l| {
            l.outlook.standing_by = standing_by.keys().cloned().collect();
            l.outlook.prepared = prepared.iter().cloned().collect();
        });
        if swarm.shared.serves {
            let mut targets = lock(&swarm.shared.targets);
            for ch in all.iter().filter(|c| standing_by.contains_key(&c.id)) {
                targets.entry(ch.id.clone()).or_insert_with(|| super::replicate::Target::of(&ch.supervisor.config()));
            }
        }
        lock(&swarm.shared.view).standby = planner.status().clone();
        drop(swarm);
        std::thread::sleep(ROUND);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::swarm::decide::tests::{on, report};
    use crate::swarm::state::{Alarm, EncodingState, Outlook};

    fn node(name: &str, encodes: &[&str], outlook: Outlook) -> EncodingState {
        let channels = encodes.iter().map(|id| report(id, 0.8, 0.3, &[])).collect();
        EncodingState { outlook, ..on(name, 0.9, channels) }
    }

    fn alarmed(probability: f32) -> Outlook {
        Outlook { alarms: vec![Alarm { component: "encoder:main".into(), probability }], ..Outlook::default() }
    }

    fn standing_by(prepared: bool) -> Outlook {
        Outlook {
            standing_by: vec!["main".into()],
            prepared: if prepared { vec!["main".into()] } else { Vec::new() },
            ..Outlook::default()
        }
    }

    fn swarm(nodes: Vec<(EncodingState, bool)>) -> BTreeMap<String, PeerView> {
        nodes
            .into_iter()
            .map(|(s, healthy)| {
                let view = PeerView { alive: healthy, healthy, ..PeerView::new(s, 1.0) };
                (view.state.node.clone(), view)
            })
            .collect()
    }

    /// Channel `main` of 1 s segments.
    fn main() -> BTreeMap<String, u64> {
        [("main".to_string(), 1000)].into()
    }

    #[test]
    fn a_predicted_failure_prepares_the_first_standby_and_a_calm_spell_releases_it() {
        let t0 = Instant::now();
        let mut s1 = Planner::new("s1", StandbyPrepares::Predicted, Duration::from_secs(60));
        let mut s2 = Planner::new("s2", StandbyPrepares::Predicted, Duration::from_secs(60));
        let calm = |s: &str| {
            let other = if s == "s1" { "s2" } else { "s1" };
            swarm(vec![(node("e1", &["main"], Outlook::default()), true), (node(other, &[], standing_by(false)), true)])
        };
        assert!(s1.round(&main(), &calm("s1"), t0).is_empty());
        assert!(s2.round(&main(), &calm("s2"), t0).is_empty());
        assert_eq!(s1.status()["main"].standbys, ["s1", "s2"]);

        // e1's encoder alarm goes up: s1 (first by id) prepares, s2 waits.
        let alarm = |other: &str| {
            swarm(vec![(node("e1", &["main"], alarmed(0.93)), true), (node(other, &[], standing_by(false)), true)])
        };
        let t1 = t0 + Duration::from_secs(1);
        let actions = s1.round(&main(), &alarm("s2"), t1);
        let cause = Cause::Predicted { node: "e1".into(), component: "encoder:main".into(), probability: 0.93 };
        assert_eq!(actions, [Action::Prepare { channel: "main".into(), cause: cause.clone() }]);
        assert_eq!(
            cause.to_string(),
            "encoder:main on e1 predicted to fail within 30 s (probability 0.93)",
            "the event says why"
        );
        assert!(s2.round(&main(), &alarm("s1"), t1).is_empty(), "one encoder in trouble: one standby");
        // Again next round: nothing new.
        assert!(s1.round(&main(), &alarm("s2"), t1 + ROUND).is_empty());

        // The alarm clears: s1 keeps encoding for the release time, then stops.
        let t2 = t1 + Duration::from_secs(10);
        assert!(s1.round(&main(), &calm("s1"), t2).is_empty());
        assert_eq!(s1.status()["main"].release_in_s, Some(60.0));
        // It flickers back up meanwhile: the count starts again.
        assert!(s1.round(&main(), &alarm("s2"), t2 + Duration::from_secs(30)).is_empty());
        assert!(s1.round(&main(), &calm("s1"), t2 + Duration::from_secs(31)).is_empty());
        assert!(s1.round(&main(), &calm("s1"), t2 + Duration::from_secs(90)).is_empty());
        assert_eq!(
            s1.round(&main(), &calm("s1"), t2 + Duration::from_secs(91)),
            [Action::Release { channel: "main".into() }]
        );
        assert!(!s1.status()["main"].prepared);
    }

    #[test]
    fn a_lost_encoder_is_replaced_until_it_is_back_and_a_prepared_standby_keeps_its_rank() {
        let t0 = Instant::now();
        let mut s2 = Planner::new("s2", StandbyPrepares::Failed, Duration::from_secs(5));
        let up = swarm(vec![
            (node("e1", &["main"], alarmed(0.9)), true),
            (node("e2", &["main"], Outlook::default()), true),
            (node("s1", &[], standing_by(false)), true),
        ]);
        assert!(s2.round(&main(), &up, t0).is_empty(), "a predicted failure prepares nothing when only failures do");
        // e1 and e2 both go silent: two standbys needed, s2 is the second.
        let mut down = up.clone();
        down.get_mut("e1").unwrap().healthy = false;
        down.get_mut("e2").unwrap().healthy = false;
        let actions = s2.round(&main(), &down, t0 + ROUND);
        assert_eq!(actions.len(), 1, "{actions:?}");
        assert_eq!(s2.status()["main"].trouble.len(), 2);
        // e1 is back; s1 now prepares too: s2, prepared, keeps its place.
        let mut back = swarm(vec![
            (node("e1", &["main"], Outlook::default()), true),
            (node("s1", &["main"], standing_by(true)), true),
        ]);
        let t1 = t0 + Duration::from_secs(2);
        assert!(s2.round(&main(), &back, t1).is_empty(), "e2, forgotten by the swarm, stays lost here");
        assert_eq!(s2.status()["main"].standbys, ["s1", "s2"]);
        assert!(s2.status()["main"].prepared);
        // e2 comes back healthy: no one is needed; released after 5 s.
        back.extend(swarm(vec![(node("e2", &["main"], Outlook::default()), true)]));
        assert!(s2.round(&main(), &back, t1 + ROUND).is_empty());
        assert_eq!(
            s2.round(&main(), &back, t1 + ROUND + Duration::from_secs(5)),
            [Action::Release { channel: "main".into() }]
        );
        // A node that stops the channel while healthy did so on purpose.
        let stopped = swarm(vec![
            (node("e1", &[], Outlook::default()), true),
            (node("e2", &["main"], Outlook::default()), true),
            (node("s1", &["main"], standing_by(true)), true),
        ]);
        assert!(s2.round(&main(), &stopped, t1 + Duration::from_secs(20)).is_empty());
        assert!(s2.status()["main"].trouble.is_empty());
    }

    #[test]
    fn an_encoder_alive_but_a_segment_behind_its_pace_is_replaced() {
        let t0 = Instant::now();
        let mut s1 = Planner::new("s1", StandbyPrepares::Failed, Duration::from_secs(5));
        // e1 announces segment i 1.3 s after its index's start (its end
        // plus 300 ms), so the delay saws by a segment between publications.
        let at = |sent_ms: i64, newest: i64| {
            let mut state = node("e1", &["main"], Outlook::default());
            state.sent_tai_ns = sent_ms * 1_000_000;
            state.channels[0].segments =
                vec![crate::swarm::state::SegmentHashes { index: newest, input: [0; 32], tracks: Vec::new() }];
            swarm(vec![(state, true)])
        };
        for sent in (2_000..=5_500).step_by(500) {
            assert!(s1.round(&main(), &at(sent, (sent - 1_300) / 1_000), t0).is_empty(), "on pace at {sent} ms");
        }
        // Its encoder falls behind: the newest segment stays at 4 for 3 s.
        let stuck = |sent: i64| at(sent, 4);
        assert!(s1.round(&main(), &stuck(6_000), t0).is_empty(), "within a segment of its pace");
        let actions = s1.round(&main(), &stuck(7_600), t0);
        assert_eq!(actions.len(), 1, "{actions:?}");
        let Action::Prepare { cause, .. } = &actions[0] else { panic!("{actions:?}") };
        assert!(matches!(cause, Cause::Behind { node, .. } if node == "e1"), "{cause:?}");
        assert_eq!(cause.to_string(), "e1 publishes its segments 1.1 s behind its pace");
        // It catches up: no longer in trouble.
        assert!(s1.round(&main(), &at(8_000, 6), t0).is_empty());
        assert!(s1.status()["main"].trouble.is_empty());
    }

    #[test]
    fn a_manual_standby_and_a_channel_taken_by_an_operator_are_left_alone() {
        let t0 = Instant::now();
        let up = swarm(vec![(node("e1", &["main"], Outlook::default()), true)]);
        let mut down = up.clone();
        down.get_mut("e1").unwrap().healthy = false;
        let mut manual = Planner::new("s1", StandbyPrepares::Manual, Duration::from_secs(5));
        assert!(manual.round(&main(), &up, t0).is_empty());
        assert!(manual.round(&main(), &down, t0 + ROUND).is_empty());
        let mut auto = Planner::new("s1", StandbyPrepares::Predicted, Duration::from_secs(5));
        assert!(auto.round(&main(), &up, t0).is_empty());
        assert_eq!(auto.round(&main(), &down, t0 + ROUND).len(), 1);
        // An operator stops it: the planner forgets it, without a release.
        assert!(auto.round(&BTreeMap::new(), &down, t0 + Duration::from_secs(1)).is_empty());
        assert!(auto.prepared().is_empty());
    }
}
