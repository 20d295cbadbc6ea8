//! What the daemon's channels report, fed to the swarm node ten times a
//! second, and the live ladder changes peers advertise, adopted per
//! channel.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::repair::{HISTORY_SEGMENTS, Peer, Repair};
use super::state::{ChannelReport, ClockSummary};
use super::{ChannelLocal, Swarm, View, replicate};
use crate::sync::lock;

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

/// One channel's feeds, as the swarm's feeding thread reads them.
struct Feed {
    analyses: Option<tokio::sync::broadcast::Receiver<Arc<crate::analysis::stage::SegmentReport>>>,
    segments: Option<tokio::sync::broadcast::Receiver<Arc<crate::pipeline::PublishedSegment>>>,
    errors_seen: u64,
    repair: Repair,
}

impl Feed {
    fn subscribe(taps: &crate::pipeline::Taps) -> Self {
        Self {
            analyses: taps.analysis.as_ref().map(tokio::sync::broadcast::Sender::subscribe),
            segments: taps.segments.as_ref().map(tokio::sync::broadcast::Sender::subscribe),
            errors_seen: taps.status.write_errors.load(Ordering::Relaxed),
            repair: Repair::default(),
        }
    }

    /// Gathers the healthy peers' fingerprints of this channel (the
    /// packager's gate and the repair read them) and, every few rounds
    /// (`repair`), asks the channel's rework thread to re-encode each
    /// published segment the majority made from other pictures.
    fn prints(&mut self, view: &View, channel: &str, c: &mut ChannelLocal, taps: &crate::pipeline::Taps, repair: bool) {
        let frames = c.segment_frames;
        if frames <= 0 {
            return;
        }
        let peers: Vec<(&str, &ChannelReport)> = view
            .peers
            .values()
            .filter(|p| p.healthy)
            .filter_map(|p| Some((p.state.node.as_str(), p.state.channel(channel)?)))
            .collect();
        let mut prints = lock(&taps.status.peer_prints);
        for (node, r) in &peers {
            prints.observe(node, r.trail_first, &r.trail, HISTORY_SEGMENTS * frames);
        }
        prints.retain(&peers.iter().map(|(n, _)| *n).collect::<Vec<_>>());
        let Some(rework) = lock(&taps.status.rework).clone().filter(|_| repair) else { return };
        let segments: Vec<Peer<'_>> = peers.iter().map(|(node, r)| Peer { node, segments: &r.segments }).collect();
        let asked = self.repair.plan(c.segments.make_contiguous(), &segments, &prints, frames, Instant::now());
        drop(prints);
        for asked in asked {
            tracing::info!(
                channel,
                segment = asked.index,
                asked = ?asked.then,
                "segment published from other pictures than the majority's: re-encoding it from kept input"
            );
            if rework.try_send(asked).is_err() {
                tracing::debug!(channel, "rework queue full; asked again next round");
            }
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
        (c.trail_first, c.trail) = lock(&status.trail).snapshot();
        c.segment_frames = i64::from(status.segment_frames.load(Ordering::Relaxed));
        c.frame = status.capture.frame.load(Ordering::Relaxed);
        c.can_realign = status.capture.can_realign.load(Ordering::Relaxed);
        c.clock = lock(&status.media_clock).clone();
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
pub(super) fn feed(swarm: &std::sync::Weak<Swarm>, channels: &crate::channels::Channels, serves: bool) {
    let mut feeds: BTreeMap<String, Feed> = BTreeMap::new();
    let mut rounds = 0u64;
    while let Some(swarm) = swarm.upgrade() {
        rounds += 1;
        let running: Vec<_> =
            channels.all().into_iter().filter(|c| c.taps.status.running.load(Ordering::Relaxed)).collect();
        feeds.retain(|id, _| running.iter().any(|c| &c.id == id));
        // The peers' fingerprints every round (the packager's gate waits
        // for them); the rest every third.
        let view = swarm.view();
        let slow = rounds.is_multiple_of(3);
        let mut targets = BTreeMap::new();
        swarm.local(|l| {
            l.channels.retain(|id, _| running.iter().any(|c| &c.id == id));
            for ch in &running {
                let config = ch.supervisor.config();
                if slow {
                    let renditions: Vec<String> = config.renditions.iter().map(|r| r.name.clone()).collect();
                    adopt_ladder_changes(&view, &ch.id, &ch.taps.control, &renditions);
                }
                let c = l.channels.entry(ch.id.clone()).or_default();
                c.segment_ms = (config.channel.segment_seconds * 1000.0) as f32;
                let feed = feeds.entry(ch.id.clone()).or_insert_with(|| Feed::subscribe(&ch.taps));
                feed.read(&ch.taps, c, &mut l.errors);
                feed.prints(&view, &ch.id, c, &ch.taps, slow);
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
        // Corrections the swarm approved go to the channels' captures.
        let approved = std::mem::take(&mut *lock(&swarm.shared.corrections));
        for a in approved {
            let Some(ch) = channels.get(&a.channel) else { continue };
            let (id, at_frame) = (&a.channel, a.at_frame);
            match a.correction {
                super::resync::Correction::Realign { frames } => {
                    ch.taps.status.capture.realign_frames.store(frames, Ordering::Relaxed);
                    ch.taps.status.capture.realign_at.store(at_frame, Ordering::Relaxed);
                    tracing::info!(channel = %id, frames, at_frame, "the swarm approved a realignment of this capture");
                }
                super::resync::Correction::Clock { offset_ns, rate_ppb } => {
                    // At the boundary frame, as the capture reaches it;
                    // a second after its estimated time at the latest.
                    ch.taps.status.clock_trim.add(crate::clock::trim::Correction {
                        from_ns: a.at_local_ns.saturating_add(1_000_000_000),
                        at_frame: Some(at_frame),
                        measured_ns: i64::try_from(a.proposed_ms).unwrap_or(0).saturating_mul(1_000_000),
                        offset_ns,
                        rate_ppb,
                    });
                    tracing::info!(channel = %id, offset_ns, rate_ppb, at_frame, "the swarm approved a correction of this media clock");
                }
            }
        }
        drop(swarm);
        std::thread::sleep(Duration::from_millis(100));
    }
}
