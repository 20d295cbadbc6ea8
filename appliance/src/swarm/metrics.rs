//! The swarm's figures for `/metrics`, from this node's view.

use crate::metrics::{self, Exposition, Kind};

use super::View;

impl View {
    /// Adds membership, leadership, weights, confidence, deviations and
    /// packet counts to an exposition.
    pub fn export(&self, out: &mut Exposition) {
        let me = self.node.as_str();
        let alive = self.peers.values().filter(|p| p.alive).count() + 1;
        let healthy = self.peers.values().filter(|p| p.healthy).count() + 1;
        out.gauge("lockstep_swarm_members", "Members this node sees alive, itself included.", &[], alive as f64);
        out.gauge("lockstep_swarm_healthy_members", "Members healthy, itself included.", &[], healthy as f64);
        out.gauge(
            "lockstep_swarm_leader",
            "1 when this node leads its group.",
            &[],
            metrics::flag(self.leader.as_deref() == Some(me)),
        );
        out.gauge("lockstep_swarm_isolated", "1 when this node hears no peer.", &[], metrics::flag(self.isolated));
        const WEIGHT: &str = "lockstep_swarm_weight_ratio";
        const WEIGHT_HELP: &str = "Encoder weight of each node for each channel, 0-1.";
        out.declare(WEIGHT, Kind::Gauge, WEIGHT_HELP);
        for (c, d) in &self.channels {
            for (n, w) in &d.weights {
                out.gauge(WEIGHT, WEIGHT_HELP, &[("channel", c), ("node", n)], f64::from(*w));
            }
        }
        const CONFIDENCE: &str = "lockstep_swarm_confidence_ratio";
        const CONFIDENCE_HELP: &str = "Confidence score of each node, 0-1.";
        out.declare(CONFIDENCE, Kind::Gauge, CONFIDENCE_HELP);
        for p in self.peers.values() {
            out.gauge(CONFIDENCE, CONFIDENCE_HELP, &[("node", &p.state.node)], f64::from(p.state.confidence));
        }
        if let Some(m) = &self.me {
            out.gauge(CONFIDENCE, CONFIDENCE_HELP, &[("node", me)], f64::from(m.confidence));
        }
        self.export_deviations(out);
        const PACKETS: &str = "lockstep_swarm_packets_total";
        const PACKETS_HELP: &str = "Swarm packets received, by outcome.";
        out.declare(PACKETS, Kind::Counter, PACKETS_HELP);
        for (outcome, n) in &self.packets {
            out.counter(PACKETS, PACKETS_HELP, &[("outcome", outcome)], *n as f64);
        }
    }

    /// Each neighbour's deviation from this node, per channel.
    fn export_deviations(&self, out: &mut Exposition) {
        const FAMILIES: [(&str, &str); 5] = [
            (
                "lockstep_swarm_frame_offset",
                "Frame offset of each neighbour's numbering of the same pictures against this node's (0: lockstep).",
            ),
            (
                "lockstep_swarm_hash_disagreements",
                "Recent segment tracks whose hash differs between each neighbour and this node.",
            ),
            (
                "lockstep_swarm_clock_offset_seconds",
                "Each neighbour's media clock minus this node's, per channel (filtered, the network delay cancelled).",
            ),
            (
                "lockstep_swarm_clock_drift_ppm",
                "How fast each neighbour's media clock moves away from this node's, ppm.",
            ),
            (
                "lockstep_swarm_half_frame_seconds",
                "Predicted seconds until a neighbour's media clock is half a frame from this node's (only while heading there).",
            ),
        ];
        for (name, help) in FAMILIES {
            out.declare(name, Kind::Gauge, help);
        }
        let [offset, disagreements, clock_offset, drift, half_frame] = FAMILIES;
        for (c, d) in &self.channels {
            for (n, x) in &d.deviations {
                let at = [("channel", c.as_str()), ("node", n.as_str())];
                if let Some(k) = x.frame_offset {
                    out.gauge(offset.0, offset.1, &at, k as f64);
                }
                out.gauge(disagreements.0, disagreements.1, &at, f64::from(x.hash_disagreements));
                if let Some(clock) = x.clock {
                    out.gauge(clock_offset.0, clock_offset.1, &at, f64::from(clock.offset_ms) / 1e3);
                    out.gauge(drift.0, drift.1, &at, f64::from(clock.drift_ppm));
                    if let Some(s) = clock.half_frame_in_s {
                        out.gauge(half_frame.0, half_frame.1, &at, f64::from(s));
                    }
                }
            }
        }
        const CONSENSUS: (&str, &str) = (
            "lockstep_swarm_consensus_offset_seconds",
            "The swarm's consensus media clock (the median of the neighbours') minus this node's, per channel (filtered).",
        );
        const CONSENSUS_HALF_FRAME: (&str, &str) = (
            "lockstep_swarm_consensus_half_frame_seconds",
            "Predicted seconds until this node's media clock is half a frame from the swarm's consensus (only while heading there).",
        );
        out.declare(CONSENSUS.0, Kind::Gauge, CONSENSUS.1);
        out.declare(CONSENSUS_HALF_FRAME.0, Kind::Gauge, CONSENSUS_HALF_FRAME.1);
        for (c, s) in self.channels.iter().filter_map(|(c, d)| Some((c, d.consensus?))) {
            let at = [("channel", c.as_str())];
            out.gauge(CONSENSUS.0, CONSENSUS.1, &at, f64::from(s.offset_ms) / 1e3);
            if let Some(left) = s.half_frame_in_s {
                out.gauge(CONSENSUS_HALF_FRAME.0, CONSENSUS_HALF_FRAME.1, &at, f64::from(left));
            }
        }
    }
}
