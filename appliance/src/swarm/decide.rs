//! The swarm's decisions each round as pure functions of what the node
//! knows (its peers' last packets and health, its own state and what it
//! decided the round before): preferred neighbours, the group and its
//! leader, and per channel the weights and the replica chosen for every
//! recent segment.
//! The node's thread (`super::Node`) only gathers the inputs and applies
//! the result; these are tested without sockets, threads or clocks.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::PeerView;
use super::deviation::{ClockDrift, Deviation, deviation};
use super::election::{self, Candidate, Replica, WeightInputs};
use super::state::EncodingState;

/// The preferred neighbours: the `n` healthy peers with the lowest
/// latency (ties: lower id), with their mean latency and jitter, ms.
pub fn neighbours(peers: &BTreeMap<String, PeerView>, n: usize) -> (Vec<String>, f32, f32) {
    let mut by_latency: Vec<&PeerView> = peers.values().filter(|p| p.healthy).collect();
    by_latency.sort_by(|a, b| a.latency_ms.total_cmp(&b.latency_ms).then_with(|| a.state.node.cmp(&b.state.node)));
    by_latency.truncate(n);
    let chosen = by_latency.iter().map(|p| p.state.node.clone()).collect();
    if by_latency.is_empty() {
        return (chosen, 0.0, 0.0);
    }
    let k = by_latency.len() as f32;
    let latency = by_latency.iter().map(|p| p.latency_ms).sum::<f32>() / k;
    let jitter = by_latency.iter().map(|p| p.jitter_ms).sum::<f32>() / k;
    (chosen, latency, jitter)
}

/// What the node decided the round before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prior {
    /// The leader it named.
    pub leader: Option<String>,
    /// Its own weight for each channel it encodes.
    pub weights: BTreeMap<String, f32>,
}

/// What the node knows of itself that its state packet does not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Own {
    /// No swarm member is reachable.
    pub isolated: bool,
    /// The failure prediction's probability that this node's encoder or
    /// packager fails within its horizon, while its alarm is up (else 0).
    pub predicted_risk: f32,
}

/// One channel's decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelDecisions {
    /// Weight of every node that encodes the channel (0 for an unhealthy
    /// peer), this one included when it encodes it.
    pub weights: BTreeMap<String, f32>,
    /// For each recent segment index and track: the node whose replica the
    /// combined output uses.
    pub selection: BTreeMap<i64, BTreeMap<String, String>>,
    /// How far each peer that runs the channel deviates from this node
    /// (empty when this node does not run it).
    pub deviations: BTreeMap<String, Deviation>,
    /// The swarm's consensus media clock (the median of the neighbours')
    /// against this node's, once measured (`crate::predict::consensus`;
    /// filled in by `super::node`, like the deviations' clocks).
    pub consensus: Option<ClockDrift>,
}

/// One round's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decisions {
    /// This node's group (sorted node ids).
    pub group: Vec<String>,
    /// The group's leader.
    pub leader: Option<String>,
    /// This node's new weight for each channel it encodes.
    pub own_weights: BTreeMap<String, f32>,
    /// Per channel any node reports.
    pub channels: BTreeMap<String, ChannelDecisions>,
}

/// The round's decisions from the peers' last packets, this node's state
/// `me` (its weight and leader fields are ignored), what else it knows of
/// itself (`own`) and the round before.
///
/// The group and its leader are the appliance's (the leader is the most
/// confident node, whatever it encodes). Weights and replicas are per
/// channel: a node's weight for a channel follows that channel's
/// complexity, and only nodes that encode a channel offer replicas of it.
pub fn decide(peers: &BTreeMap<String, PeerView>, me: &EncodingState, own: Own, prior: &Prior) -> Decisions {
    // Leader of this node's group.
    let mut everyone: Vec<Candidate> = peers
        .values()
        .map(|p| Candidate {
            node: p.state.node.clone(),
            confidence: p.state.confidence,
            latency_ms: p.state.neighbour_latency_ms,
            healthy: p.healthy,
        })
        .collect();
    everyone.push(Candidate {
        node: me.node.clone(),
        confidence: me.confidence,
        latency_ms: me.neighbour_latency_ms,
        healthy: true,
    });
    let groups = election::groups(everyone.iter().map(|c| c.node.clone()).collect());
    let group = groups.into_iter().find(|g| g.contains(&me.node)).unwrap_or_default();
    let in_group: Vec<Candidate> = everyone.into_iter().filter(|c| group.contains(&c.node)).collect();
    // The incumbent is the leader a majority of the group's healthy members
    // named in their last packets: the same for every observer.
    let named: Vec<Option<String>> = peers
        .values()
        .filter(|p| p.healthy && group.contains(&p.state.node))
        .map(|p| p.state.leader.clone())
        .chain(std::iter::once(prior.leader.clone()))
        .collect();
    let incumbent = election::majority(&named);
    let leader = election::elect(&in_group, incumbent.as_deref());

    // This node's weight per channel; the others' come in their packets.
    let own_weights: BTreeMap<String, f32> = me
        .channels
        .iter()
        .map(|c| {
            let predicted = election::predicted_weight(&WeightInputs {
                complexity: c.complexity,
                process_cpu: me.load.process_cpu,
                confidence: me.confidence,
                healthy: !own.isolated,
                predicted_risk: own.predicted_risk,
            });
            let before = prior.weights.get(&c.id).copied().unwrap_or(0.0);
            (c.id.clone(), election::update_weight(before, predicted))
        })
        .collect();
    let ids: BTreeSet<&str> =
        peers.values().flat_map(|p| &p.state.channels).chain(&me.channels).map(|c| c.id.as_str()).collect();
    let channels = ids
        .into_iter()
        .map(|id| {
            let mut weights: BTreeMap<String, f32> = peers
                .values()
                .filter_map(|p| {
                    let c = p.state.channel(id)?;
                    Some((p.state.node.clone(), if p.healthy { c.weight } else { 0.0 }))
                })
                .collect();
            if let Some(w) = own_weights.get(id) {
                weights.insert(me.node.clone(), *w);
            }
            // Replicas are chosen by the weights the nodes published: this
            // node's from its last packet, as its peers hold it, not the
            // one just computed. While weights move (they all rise after a
            // start) a fresh own weight would run a round ahead of the
            // others and every observer would choose itself.
            let mut published = weights.clone();
            if me.channel(id).is_some() {
                published.insert(me.node.clone(), prior.weights.get(id).copied().unwrap_or(0.0));
            }
            let selection = select(peers, me, id, &published);
            let deviations = match me.channel(id) {
                Some(mine) => peers
                    .values()
                    .filter_map(|p| Some((p.state.node.clone(), deviation(mine, p.state.channel(id)?))))
                    .collect(),
                None => BTreeMap::new(),
            };
            (id.to_string(), ChannelDecisions { weights, selection, deviations, consensus: None })
        })
        .collect();
    Decisions { group, leader, own_weights, channels }
}

/// The replica of `channel` chosen for every (segment index, track) any
/// node reports.
fn select(
    peers: &BTreeMap<String, PeerView>,
    me: &EncodingState,
    channel: &str,
    weights: &BTreeMap<String, f32>,
) -> BTreeMap<i64, BTreeMap<String, String>> {
    let mut replicas: BTreeMap<(i64, String), Vec<Replica>> = BTreeMap::new();
    let sources = peers.values().map(|p| (&p.state, p.healthy)).chain(std::iter::once((me, true)));
    for (state, healthy) in sources {
        let Some(report) = state.channel(channel) else { continue };
        // In 0.05 steps: observers a packet apart still agree.
        let weight = (weights.get(&state.node).copied().unwrap_or(0.0) * 20.0).round() / 20.0;
        for seg in &report.segments {
            for (track, hash) in &seg.tracks {
                replicas.entry((seg.index, track.clone())).or_default().push(Replica {
                    node: state.node.clone(),
                    hash: *hash,
                    weight,
                    healthy,
                });
            }
        }
    }
    let mut out: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
    for ((index, track), r) in replicas {
        if let Some((node, _)) = election::select(&r) {
            out.entry(index).or_default().insert(track, node);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::swarm::state::{ChannelReport, ClockSummary, Load, SegmentHashes};

    /// A channel report: weight, complexity and (index, hash byte) of its
    /// 360p segments.
    pub(crate) fn report(id: &str, weight: f32, complexity: f32, segments: &[(i64, u8)]) -> ChannelReport {
        ChannelReport {
            id: id.into(),
            frame: 0,
            timecode: String::new(),
            complexity,
            segments: segments
                .iter()
                .map(|(index, h)| SegmentHashes {
                    index: *index,
                    input: [0; 32],
                    tracks: vec![("360p".into(), [*h; 32])],
                })
                .collect(),
            encode_latency_ms: 100.0,
            weight,
            ladder: Vec::new(),
            trail_first: 0,
            trail: Vec::new(),
            proposal: None,
            votes: Vec::new(),
        }
    }

    /// A node encoding channel `main` only.
    fn state(node: &str, confidence: f32, weight: f32, segments: &[(i64, u8)]) -> EncodingState {
        on(node, confidence, vec![report("main", weight, 0.3, segments)])
    }

    /// A node with these channels.
    pub(crate) fn on(node: &str, confidence: f32, channels: Vec<ChannelReport>) -> EncodingState {
        EncodingState {
            node: node.into(),
            boot: 1,
            addr: "127.0.0.1:1".parse().unwrap(),
            origin: None,
            sent_tai_ns: 0,
            neighbour_latency_ms: 1.0,
            neighbour_jitter_ms: 0.1,
            load: Load { cpu: 0.2, process_cpu: 0.1, memory: 0.3 },
            clock: ClockSummary { state: "locked".into(), error_ns: Some(100.0) },
            recent_errors: 0,
            uptime_s: 60,
            isolated: false,
            confidence,
            leader: None,
            channels,
            outlook: crate::swarm::state::Outlook::default(),
        }
    }

    fn prior(weight: f32) -> Prior {
        Prior { leader: None, weights: [("main".to_string(), weight)].into() }
    }

    fn peer(state: EncodingState, healthy: bool, latency_ms: f32) -> (String, PeerView) {
        let view =
            PeerView { alive: healthy, healthy, jitter_ms: latency_ms / 10.0, ..PeerView::new(state, latency_ms) };
        (view.state.node.clone(), view)
    }

    #[test]
    fn neighbours_are_the_nearest_healthy_peers() {
        let peers: BTreeMap<_, _> = [
            peer(state("a", 0.9, 0.5, &[]), true, 3.0),
            peer(state("b", 0.9, 0.5, &[]), true, 1.0),
            peer(state("c", 0.9, 0.5, &[]), false, 0.5),
            peer(state("d", 0.9, 0.5, &[]), true, 1.0),
        ]
        .into();
        let (near, latency, jitter) = neighbours(&peers, 2);
        assert_eq!(near, ["b", "d"], "nearest first, ties by id, the unhealthy one left out");
        assert_eq!((latency, jitter), (1.0, 0.1));
        assert_eq!(neighbours(&BTreeMap::new(), 2), (vec![], 0.0, 0.0));
    }

    #[test]
    fn the_most_confident_leads_and_an_incumbent_named_by_the_majority_stays() {
        let me = state("b", 0.8, 0.5, &[]);
        let peers: BTreeMap<_, _> =
            [peer(state("a", 0.9, 0.5, &[]), true, 1.0), peer(state("c", 0.85, 0.5, &[]), true, 1.0)].into();
        let d = decide(&peers, &me, Own::default(), &Prior::default());
        assert_eq!(d.group, ["a", "b", "c"]);
        assert_eq!(d.leader.as_deref(), Some("a"));
        // c was named by a and c (and this node): its bonus keeps it
        // leading over the slightly more confident a while it is healthy.
        let mut named = peers.clone();
        for p in named.values_mut() {
            p.state.leader = Some("c".into());
        }
        let d = decide(&named, &me, Own::default(), &Prior { leader: Some("c".into()), ..prior(0.5) });
        assert_eq!(d.leader.as_deref(), Some("c"));
        named.get_mut("c").unwrap().healthy = false;
        let d = decide(&named, &me, Own::default(), &Prior { leader: Some("c".into()), ..prior(0.5) });
        assert_eq!(d.leader.as_deref(), Some("a"), "an unhealthy incumbent is replaced");
    }

    #[test]
    fn an_unhealthy_peer_weighs_nothing_and_an_isolated_node_drains() {
        let me = state("b", 0.9, 0.0, &[]);
        let peers: BTreeMap<_, _> =
            [peer(state("a", 0.9, 0.7, &[]), true, 1.0), peer(state("c", 0.9, 0.6, &[]), false, 1.0)].into();
        let d = decide(&peers, &me, Own::default(), &prior(0.5));
        let weights = &d.channels["main"].weights;
        assert_eq!(weights["a"], 0.7);
        assert_eq!(weights["c"], 0.0);
        assert_eq!(weights["b"], d.own_weights["main"]);
        let alone = decide(&peers, &me, Own { isolated: true, ..Own::default() }, &prior(0.5));
        assert!(alone.own_weights["main"] < 0.5, "isolated: the weight drifts down ({:?})", alone.own_weights);
        assert!(d.own_weights["main"] > alone.own_weights["main"]);
    }

    #[test]
    fn a_node_predicted_to_fail_drains_round_by_round_and_its_peer_is_chosen() {
        let me = state("a", 0.9, 0.0, &[(10, 1)]);
        let peers: BTreeMap<_, _> = [peer(state("b", 0.9, 0.9, &[(10, 1)]), true, 1.0)].into();
        let risky = Own { predicted_risk: 0.7, ..Own::default() };
        let (mut calm, mut alarmed) = (prior(0.9), prior(0.9));
        for _ in 0..10 {
            calm.weights = decide(&peers, &me, Own::default(), &calm).own_weights;
            let d = decide(&peers, &me, risky, &alarmed);
            assert!(d.own_weights["main"] < alarmed.weights["main"], "gradually, every round: {:?}", d.own_weights);
            alarmed.weights = d.own_weights;
        }
        assert!(calm.weights["main"] > 0.9, "{:?}", calm.weights);
        assert!(alarmed.weights["main"] < 0.4, "{:?}", alarmed.weights);
        let d = decide(&peers, &me, risky, &alarmed);
        assert_eq!(d.channels["main"].selection[&10]["360p"], "b", "the healthy peer's replica");
    }

    #[test]
    fn the_heaviest_healthy_replica_of_the_majority_hash_is_chosen() {
        // Segment 10: a and b agree, c differs; c is heaviest but outvoted.
        // Segment 11: only the unhealthy a has it, so nothing is chosen.
        let me = state("b", 0.9, 0.0, &[(10, 1)]);
        let peers: BTreeMap<_, _> = [
            peer(state("a", 0.9, 0.9, &[(10, 1), (11, 1)]), true, 1.0),
            peer(state("c", 0.9, 1.0, &[(10, 2)]), true, 1.0),
        ]
        .into();
        let d = decide(&peers, &me, Own::default(), &prior(0.5));
        let selection = &d.channels["main"].selection;
        assert_eq!(selection[&10]["360p"], "a");
        assert_eq!(selection[&11]["360p"], "a");
        let mut down = peers.clone();
        down.get_mut("a").unwrap().healthy = false;
        let d = decide(&down, &me, Own::default(), &prior(0.5));
        let selection = &d.channels["main"].selection;
        assert_eq!(selection[&10]["360p"], "b", "a is down: b has the majority's bytes");
        assert!(!selection.contains_key(&11), "no healthy node has segment 11");
    }

    #[test]
    fn every_observer_chooses_by_the_published_weights() {
        // All weights rising after a start: each node's fresh weight is a
        // round ahead of the one its peers hold. Chosen by the published
        // ones, a and b agree on a (ties: lower id), whoever observes.
        let published = 0.5;
        let seen_by = |me: &str, other: &str| {
            let peers: BTreeMap<_, _> = [peer(state(other, 0.9, published, &[(10, 1)]), true, 1.0)].into();
            let d = decide(&peers, &state(me, 0.9, 0.0, &[(10, 1)]), Own::default(), &prior(published));
            assert!(d.own_weights["main"] > published + 0.05, "the fresh weight runs ahead: {:?}", d.own_weights);
            d.channels["main"].selection[&10]["360p"].clone()
        };
        assert_eq!(seen_by("a", "b"), "a");
        assert_eq!(seen_by("b", "a"), "a");
    }

    #[test]
    fn each_channel_has_its_own_weights_and_replicas() {
        // b (this node) encodes main and news, a encodes both too, c only
        // main, d only sport. The same segment index means different
        // pictures on different channels.
        let me = on("b", 0.9, vec![report("main", 0.0, 0.2, &[(10, 1)]), report("news", 0.0, 0.9, &[(10, 5)])]);
        let peers: BTreeMap<_, _> = [
            peer(
                on("a", 0.9, vec![report("main", 0.8, 0.2, &[(10, 1)]), report("news", 0.2, 0.9, &[(10, 5)])]),
                true,
                1.0,
            ),
            peer(on("c", 0.9, vec![report("main", 0.9, 0.2, &[(10, 2)])]), true, 1.0),
            peer(on("d", 0.9, vec![report("sport", 0.6, 0.5, &[(10, 7)])]), true, 1.0),
        ]
        .into();
        let before = Prior { leader: None, weights: [("main".into(), 0.5), ("news".into(), 0.5)].into() };
        let d = decide(&peers, &me, Own::default(), &before);
        assert_eq!(d.channels.keys().collect::<Vec<_>>(), ["main", "news", "sport"]);
        assert_eq!(d.own_weights.keys().collect::<Vec<_>>(), ["main", "news"], "weights only for what it encodes");
        assert!(d.own_weights["main"] > d.own_weights["news"], "the busier channel weighs less: {:?}", d.own_weights);
        let main = &d.channels["main"];
        assert_eq!(main.weights.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(main.selection[&10]["360p"], "a", "a and b agree on main; c is outvoted");
        let news = &d.channels["news"];
        assert_eq!(news.weights.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(news.selection[&10]["360p"], "b", "b outweighs a on news");
        assert_eq!(d.channels["sport"].selection[&10]["360p"], "d", "a channel only a peer encodes");
        // The leader is the appliance's, whatever channels it encodes.
        assert_eq!(d.group, ["a", "b", "c", "d"]);
        assert!(d.leader.is_some());
    }
}
