//! Encoding State Packets: what each node tells the swarm about itself,
//! twice a second, and the confidence score it computes from it.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Hashes of one segment index as this node produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHashes {
    /// Segment index on the shared timeline.
    pub index: i64,
    /// SHA-256 of the input frames (video) of that segment.
    pub input: [u8; 32],
    /// (track name, SHA-256 of the segment file), every track published.
    pub tracks: Vec<(String, [u8; 32])>,
}

/// Resource use of a node.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Machine CPU busy, 0–1, averaged over about the last
    /// [`CPU_AVERAGE_S`] seconds (a moment's load, such as a browser
    /// opening a page, does not move the leader).
    pub cpu: f32,
    /// This process's CPU share of the machine, 0–1 (the encoders).
    pub process_cpu: f32,
    /// Memory in use, 0–1 of total.
    pub memory: f32,
}

/// The media clock as the node reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockSummary {
    /// `freerun`, `locking`, `locked`, `holdover`.
    pub state: String,
    /// Estimated error, ns (`None`: unknown).
    pub error_ns: Option<f64>,
}

/// One channel as a node reports it in its Encoding State Packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelReport {
    /// Channel id (`[channel] id`); the same channel has the same id on
    /// every appliance that encodes it.
    pub id: String,
    /// Current frame number.
    pub frame: i64,
    /// Timecode of the last analysed segment.
    pub timecode: String,
    /// Complexity of the last analysed segment, 0–1.
    pub complexity: f32,
    /// Recent segments, oldest first.
    pub segments: Vec<SegmentHashes>,
    /// Capture of a segment's last frame to its publication, ms.
    pub encode_latency_ms: f32,
    /// The node's encoder weight for this channel, 0–1, as it updates it
    /// each round (`election::update_weight`).
    pub weight: f32,
    /// Live ladder changes it knows (docs/swarm.md, "Live changes").
    pub ladder: Vec<crate::control::LadderChange>,
    /// Frame number of the first fingerprint in `trail`.
    pub trail_first: i64,
    /// 64-bit fingerprints of its last captured frames, consecutive from
    /// `trail_first` (`crate::analysis::FrameTrail`).
    pub trail: Vec<u64>,
    /// Its open proposal to get back into lockstep, if any
    /// (docs/swarm.md, "Resynchronisation").
    pub proposal: Option<super::resync::Proposal>,
    /// Its votes on the other nodes' open proposals for this channel.
    pub votes: Vec<super::resync::Vote>,
}

/// One node's Encoding State Packet: the node, then every channel it
/// encodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodingState {
    /// Appliance id (`appliance.id`).
    pub node: String,
    /// Boot id of the sending process.
    pub boot: u64,
    /// Swarm address.
    pub addr: SocketAddr,
    /// Origin base URL, if it serves one.
    pub origin: Option<String>,
    /// Media time when sent, TAI ns (gives one-way latency on a shared clock).
    pub sent_tai_ns: i64,
    /// Mean one-way latency to this node's neighbours, ms.
    pub neighbour_latency_ms: f32,
    /// Mean jitter of that latency, ms.
    pub neighbour_jitter_ms: f32,
    /// Resource use.
    pub load: Load,
    /// Media clock.
    pub clock: ClockSummary,
    /// Errors in the last minute (segment writes, capture).
    pub recent_errors: u32,
    /// Seconds since the process started.
    pub uptime_s: u64,
    /// The node hears no peer although it has been in a swarm.
    pub isolated: bool,
    /// Self-assessed stability, 0–1 ([`confidence`]).
    pub confidence: f32,
    /// The leader of its group as this node computes it.
    pub leader: Option<String>,
    /// Every channel it encodes, by id.
    pub channels: Vec<ChannelReport>,
    /// Its standby role and its failure predictions (last: a member from
    /// before it reads the packet without it, see [`decode`]).
    pub outlook: Outlook,
}

/// What a node tells the swarm for the failover of its channels: the
/// channels it holds ready as a standby unit and the failures its own
/// prediction sees coming (docs/swarm.md, "Standby units").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outlook {
    /// A standby unit: the channels it can take on (configured here and
    /// left to the swarm, running or not).
    pub standing_by: Vec<String>,
    /// The channels among them it runs because the swarm needs it to
    /// (`super::standby`).
    pub prepared: Vec<String>,
    /// Its encoder and packager components whose failure alarm is up.
    pub alarms: Vec<Alarm>,
}

/// A failure the node's own prediction sees coming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// The component, as the chain names it (`encoder:main`).
    pub component: String,
    /// Probability of its failure within the prediction's horizon.
    pub probability: f32,
}

impl EncodingState {
    /// Its report of channel `id`, if it encodes it.
    pub fn channel(&self, id: &str) -> Option<&ChannelReport> {
        self.channels.iter().find(|c| c.id == id)
    }
}

/// Decodes a state packet's payload (postcard, [`wire::Kind::State`]);
/// `None` when malformed.
///
/// The outlook is the packet's last field, so a member from before it
/// reads a newer packet and ignores the rest (postcard stops at the last
/// field it knows); a packet of such a member ends before the outlook and
/// is read with an empty one.
///
/// [`wire::Kind::State`]: super::wire::Kind::State
pub fn decode(payload: &[u8]) -> Option<EncodingState> {
    postcard::from_bytes(payload).ok().or_else(|| {
        let mut older = payload.to_vec();
        older.extend(postcard::to_allocvec(&Outlook::default()).ok()?);
        postcard::from_bytes(&older).ok()
    })
}

/// Encodes a state packet's payload.
pub fn encode(state: &EncodingState) -> Vec<u8> {
    postcard::to_allocvec(state).unwrap_or_default()
}

/// The packet of a node from before channel lists
/// ([`wire::Kind::SingleChannelState`]): one channel, its fields beside the
/// node's. Decoded so that a swarm keeps its older members during a
/// rolling upgrade; never sent.
///
/// [`wire::Kind::SingleChannelState`]: super::wire::Kind::SingleChannelState
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SingleChannelState {
    node: String,
    boot: u64,
    addr: SocketAddr,
    origin: Option<String>,
    channel: String,
    sent_tai_ns: i64,
    frame: i64,
    timecode: String,
    complexity: f32,
    segments: Vec<SegmentHashes>,
    encode_latency_ms: f32,
    neighbour_latency_ms: f32,
    neighbour_jitter_ms: f32,
    load: Load,
    clock: ClockSummary,
    recent_errors: u32,
    uptime_s: u64,
    isolated: bool,
    confidence: f32,
    weight: f32,
    leader: Option<String>,
    ladder: Vec<crate::control::LadderChange>,
}

/// Decodes the payload of a single-channel state packet (an older member)
/// as a packet with one channel; `None` when malformed.
pub fn decode_single_channel(payload: &[u8]) -> Option<EncodingState> {
    let s: SingleChannelState = postcard::from_bytes(payload).ok()?;
    let channel = ChannelReport {
        id: s.channel,
        frame: s.frame,
        timecode: s.timecode,
        complexity: s.complexity,
        segments: s.segments,
        encode_latency_ms: s.encode_latency_ms,
        weight: s.weight,
        ladder: s.ladder,
        trail_first: 0,
        trail: Vec::new(),
        proposal: None,
        votes: Vec::new(),
    };
    Some(EncodingState {
        node: s.node,
        boot: s.boot,
        addr: s.addr,
        origin: s.origin,
        sent_tai_ns: s.sent_tai_ns,
        neighbour_latency_ms: s.neighbour_latency_ms,
        neighbour_jitter_ms: s.neighbour_jitter_ms,
        load: s.load,
        clock: s.clock,
        recent_errors: s.recent_errors,
        uptime_s: s.uptime_s,
        isolated: s.isolated,
        confidence: s.confidence,
        leader: s.leader,
        channels: vec![channel],
        outlook: Outlook::default(),
    })
}

/// What the confidence score is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidenceInputs<'a> {
    /// Clock state name.
    pub clock_state: &'a str,
    /// Clock error estimate, ns.
    pub clock_error_ns: Option<f64>,
    /// One frame, ns.
    pub frame_ns: f64,
    /// Machine CPU busy, 0–1.
    pub cpu: f32,
    /// Errors in the last minute.
    pub recent_errors: u32,
    /// Capture-to-publish latency over segment length, the worst channel's.
    pub latency_ratio: f32,
    /// Isolated from the swarm.
    pub isolated: bool,
    /// The failure prediction's probability that this node's encoder or
    /// packager fails within its horizon, while its alarm is up (else 0).
    pub predicted_risk: f32,
}

/// Confidence score: the product of six factors, each 0–1, so any one
/// weakness pulls the score down (docs/swarm.md):
///
/// - clock: locked 1; locking 0.7; free-running 0.6 (no PTP; same for all
///   nodes of a lab swarm); holdover 0.9 falling linearly to 0.3 as the
///   error estimate grows to a quarter frame;
/// - CPU headroom: 1 up to 85 % busy (averaged over about
///   [`CPU_AVERAGE_S`] seconds), falling linearly to 0.5 at 100 %;
/// - errors: 1 / (1 + errors in the last minute);
/// - latency: 1 while every channel publishes a segment within one
///   segment length of its end, else segment length / latency of the
///   worst channel;
/// - isolation: 0.5 when the node hears no peer;
/// - prediction: 1 − 0.8 × the predicted risk of failing (a node whose
///   failure is predicted hands its work over before it fails, yet is
///   never scored 0 while it still works).
pub fn confidence(i: &ConfidenceInputs<'_>) -> f32 {
    let quarter_frame = i.frame_ns / 4.0;
    let clock = match i.clock_state {
        "locked" => 1.0,
        "locking" => 0.7,
        "holdover" => {
            let e = i.clock_error_ns.unwrap_or(quarter_frame).clamp(0.0, quarter_frame);
            0.9 - 0.6 * (e / quarter_frame) as f32
        }
        _ => 0.6,
    };
    let cpu = if i.cpu <= 0.85 { 1.0 } else { 1.0 - 0.5 * ((i.cpu.min(1.0) - 0.85) / 0.15) };
    let errors = 1.0 / (1.0 + i.recent_errors as f32);
    let latency = if i.latency_ratio <= 1.0 { 1.0 } else { 1.0 / i.latency_ratio };
    let isolation = if i.isolated { 0.5 } else { 1.0 };
    let prediction = 1.0 - 0.8 * i.predicted_risk.clamp(0.0, 1.0);
    (clock * cpu * errors * latency * isolation * prediction).clamp(0.0, 1.0)
}

/// Samples machine and process CPU and memory from /proc.
#[derive(Debug, Default)]
pub struct LoadSampler {
    last_machine: Option<(u64, u64)>,
    last_process: Option<(u64, std::time::Instant)>,
    /// Machine CPU, averaged, and when it was last updated.
    cpu: Option<(f32, std::time::Instant)>,
}

/// Time constant of the machine CPU average, seconds.
pub const CPU_AVERAGE_S: f32 = 10.0;

/// `average` moved towards `sample` taken `dt_s` seconds after the last
/// one: an exponential average with time constant [`CPU_AVERAGE_S`].
pub fn cpu_average(average: f32, sample: f32, dt_s: f32) -> f32 {
    let alpha = 1.0 - (-dt_s.max(0.0) / CPU_AVERAGE_S).exp();
    average + alpha * (sample - average)
}

impl LoadSampler {
    /// Load since the previous call (0 on the first); machine CPU
    /// averaged ([`cpu_average`]).
    pub fn sample(&mut self) -> Load {
        let mut load = Load::default();
        let now = std::time::Instant::now();
        if let Some((busy, total)) = machine_ticks() {
            if let Some((b0, t0)) = self.last_machine
                && total > t0
            {
                let sample = (busy.saturating_sub(b0)) as f32 / (total - t0) as f32;
                let average = match self.cpu {
                    Some((avg, at)) => cpu_average(avg, sample, now.duration_since(at).as_secs_f32()),
                    None => sample,
                };
                self.cpu = Some((average, now));
                load.cpu = average;
            }
            self.last_machine = Some((busy, total));
        }
        if let Some(ticks) = process_ticks() {
            if let Some((p0, at)) = self.last_process {
                let hz = 100.0; // USER_HZ on Linux
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f32;
                let secs = now.duration_since(at).as_secs_f32().max(1e-3);
                load.process_cpu = ((ticks.saturating_sub(p0)) as f32 / hz / secs / cores).min(1.0);
            }
            self.last_process = Some((ticks, now));
        }
        load.memory = memory_used().unwrap_or(0.0);
        load
    }
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// utime + stime of this process, jiffies.
fn process_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = text.rsplit_once(')')?.1;
    let v: Vec<&str> = rest.split_whitespace().collect();
    Some(v.get(11)?.parse::<u64>().ok()? + v.get(12)?.parse::<u64>().ok()?)
}

fn memory_used() -> Option<f32> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<f64>().ok());
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    Some((1.0 - available / total.max(1.0)) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ConfidenceInputs<'static> {
        ConfidenceInputs {
            clock_state: "locked",
            clock_error_ns: Some(500.0),
            frame_ns: 40e6,
            cpu: 0.5,
            recent_errors: 0,
            latency_ratio: 0.4,
            isolated: false,
            predicted_risk: 0.0,
        }
    }

    #[test]
    fn a_healthy_locked_node_is_fully_confident() {
        assert_eq!(confidence(&inputs()), 1.0);
    }

    #[test]
    fn each_weakness_lowers_the_score() {
        let base = confidence(&inputs());
        let cases = [
            ConfidenceInputs { clock_state: "holdover", clock_error_ns: Some(5e6), ..inputs() },
            ConfidenceInputs { clock_state: "locking", ..inputs() },
            ConfidenceInputs { cpu: 0.97, ..inputs() },
            ConfidenceInputs { recent_errors: 2, ..inputs() },
            ConfidenceInputs { latency_ratio: 2.5, ..inputs() },
            ConfidenceInputs { isolated: true, ..inputs() },
            ConfidenceInputs { predicted_risk: 0.9, ..inputs() },
        ];
        for c in cases {
            let v = confidence(&c);
            assert!(v < base && v > 0.0, "{c:?}: {v}");
        }
        let holdover =
            |e: f64| confidence(&ConfidenceInputs { clock_state: "holdover", clock_error_ns: Some(e), ..inputs() });
        assert!(holdover(1e6) > holdover(5e6) && holdover(5e6) > holdover(20e6), "falls with the error estimate");
        assert!((holdover(20e6) - 0.3).abs() < 1e-6);
    }

    /// A packet of a member from before channel lists.
    fn older_packet() -> SingleChannelState {
        SingleChannelState {
            node: "old".into(),
            boot: 7,
            addr: "127.0.0.1:7946".parse().unwrap_or_else(|_| unreachable!()),
            origin: Some("http://127.0.0.1:8080".into()),
            channel: "main".into(),
            sent_tai_ns: 1,
            frame: 500,
            timecode: "00:00:20:00".into(),
            complexity: 0.4,
            segments: vec![SegmentHashes { index: 10, input: [1; 32], tracks: vec![("360p".into(), [2; 32])] }],
            encode_latency_ms: 300.0,
            neighbour_latency_ms: 0.5,
            neighbour_jitter_ms: 0.1,
            load: Load { cpu: 0.3, process_cpu: 0.2, memory: 0.4 },
            clock: ClockSummary { state: "locked".into(), error_ns: Some(50.0) },
            recent_errors: 1,
            uptime_s: 60,
            isolated: false,
            confidence: 0.9,
            weight: 0.6,
            leader: Some("old".into()),
            ladder: Vec::new(),
        }
    }

    #[test]
    fn an_older_members_single_channel_packet_reads_as_one_channel() {
        let old = older_packet();
        let bytes = postcard::to_allocvec(&old).unwrap_or_default();
        let s = decode_single_channel(&bytes).unwrap_or_else(|| panic!("not decoded"));
        assert_eq!((s.node.as_str(), s.confidence, s.leader.as_deref()), ("old", 0.9, Some("old")));
        let c = s.channel("main").unwrap_or_else(|| panic!("no channel main: {s:?}"));
        assert_eq!((c.frame, c.weight, c.segments.len(), c.timecode.as_str()), (500, 0.6, 1, "00:00:20:00"));
        assert_eq!(decode(&encode(&s)), Some(s.clone()), "the channel-list form round-trips");
        // The two forms are not confused: each decoder refuses the other's bytes.
        assert!(decode_single_channel(&encode(&s)).is_none());
        assert!(decode(&bytes).is_none());
    }

    #[test]
    fn the_outlook_travels_last_and_an_older_members_packet_reads_without_it() {
        let old = older_packet();
        let bytes = postcard::to_allocvec(&old).unwrap_or_default();
        let mut s = decode_single_channel(&bytes).unwrap_or_else(|| panic!("not decoded"));
        s.outlook = Outlook {
            standing_by: vec!["main".into()],
            prepared: vec!["main".into()],
            alarms: vec![Alarm { component: "encoder:main".into(), probability: 0.9 }],
        };
        let newer = encode(&s);
        assert_eq!(decode(&newer).as_ref(), Some(&s));
        // A member from before the outlook sends the same bytes up to it.
        let plain = Outlook::default();
        let empty = postcard::to_allocvec(&plain).unwrap_or_default();
        let cut = newer.len() - postcard::to_allocvec(&s.outlook).unwrap_or_default().len();
        let before = &newer[..cut];
        assert_eq!(decode(before).map(|d| d.outlook), Some(plain), "read with an empty outlook");
        assert_eq!([before, &empty].concat(), encode(&EncodingState { outlook: Outlook::default(), ..s }));
    }

    #[test]
    fn a_moment_of_full_load_does_not_take_the_cpu_average_over_the_line() {
        // Idle at 30 %, then 100 % for 2 s in rounds of 0.5 s (a browser
        // opening the page): the average stays under 85 %, where the
        // confidence starts to fall.
        let mut avg = 0.3;
        for _ in 0..4 {
            avg = cpu_average(avg, 1.0, 0.5);
        }
        assert!(avg < 0.85 && avg > 0.3, "{avg}");
        let idle_again = (0..20).fold(avg, |a, _| cpu_average(a, 0.3, 0.5));
        assert!((idle_again - 0.3).abs() < 0.05, "{idle_again}");
        // Sustained load is followed: 30 s at 100 %.
        let loaded = (0..60).fold(0.3, |a, _| cpu_average(a, 1.0, 0.5));
        assert!(loaded > 0.95, "{loaded}");
        // A round that took no time moves nothing.
        assert_eq!(cpu_average(0.3, 1.0, 0.0), 0.3);
    }

    #[test]
    fn load_is_read_from_proc() {
        let mut s = LoadSampler::default();
        let _ = s.sample();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let l = s.sample();
        assert!((0.0..=1.0).contains(&l.cpu) && (0.0..=1.0).contains(&l.process_cpu), "{l:?}");
        assert!(l.memory > 0.0 && l.memory < 1.0, "{l:?}");
    }
}
