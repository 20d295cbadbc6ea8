//! A channel's encoding chain as a graph — source → encoder(s) →
//! packager → origin — and each component's health judged from what its
//! agents read: `ok`, `warn` (trouble ahead: act before it fails), `bad`
//! (failing now) or `down` (gone), with the reasons in words. Pure
//! functions of the figures, so every rule is unit-tested; the admin API
//! (`GET /api/v1/chain`) gathers the figures and draws the graph.

use serde::Serialize;

use super::Disk;
use super::slack::Slack;

/// A component's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Nothing wrong.
    Ok,
    /// Trouble ahead.
    Warn,
    /// Failing now.
    Bad,
    /// Gone (a peer unhealthy, a channel stopped).
    Down,
}

impl State {
    /// As a number for the history and the metrics: 0 ok, 1 warn, 2 bad,
    /// 3 down.
    pub fn level(self) -> f64 {
        match self {
            Self::Ok => 0.0,
            Self::Warn => 1.0,
            Self::Bad => 2.0,
            Self::Down => 3.0,
        }
    }
}

/// A component's state and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judged {
    /// The worst of the findings (`ok` without any).
    pub state: State,
    /// Each finding, in words.
    pub reasons: Vec<String>,
}

impl Judged {
    fn of(findings: Vec<(State, String)>) -> Self {
        let state = findings.iter().map(|(s, _)| *s).max().unwrap_or(State::Ok);
        Self { state, reasons: findings.into_iter().map(|(_, r)| r).collect() }
    }
}

/// Segments to the deadline, at the slack's trend, below which an
/// encoder is in trouble ahead.
pub const SLACK_WARN_SEGMENTS: f32 = 10.0;
/// Share of a segment's length below which the slack is thin.
pub const SLACK_WARN_SHARE: f64 = 0.25;
/// CPU pressure (share of 10 s in which some task waited, percent) above
/// which the encoder's CPU is contended.
pub const PRESSURE_WARN: f32 = 40.0;
/// Share of the output's file system in use from which it is filling up.
pub const DISK_WARN: f64 = 0.90;
/// From which it is about to be full.
pub const DISK_BAD: f64 = 0.98;
/// Share of a segment's length a peer's encode latency may reach before
/// its deadline is in doubt.
pub const PEER_LATENCY_WARN: f64 = 0.75;

/// Share of the memory limit in use from which memory is short.
pub const MEMORY_WARN: f64 = 0.85;
/// From which the limit is about to be hit.
pub const MEMORY_BAD: f64 = 0.95;

/// This node's encoder of a channel.
pub fn encoder(
    running: bool,
    slack: Option<&Slack>,
    segment_ms: f64,
    cpu_pressure: Option<f32>,
    memory: Option<super::MemoryUse>,
) -> Judged {
    let mut f = Vec::new();
    if !running {
        return Judged::of(vec![(State::Down, "the channel is not running".into())]);
    }
    if let Some(s) = slack {
        if s.last_ms <= 0.0 {
            f.push((State::Bad, format!("segment {} published {:.0} ms after its deadline", s.segment, -s.last_ms)));
        } else if f64::from(s.last_ms) < SLACK_WARN_SHARE * segment_ms {
            f.push((State::Warn, format!("{:.0} ms of slack left before the deadline", s.last_ms)));
        }
        if let (Some(left), Some(trend)) = (s.segments_to_deadline, s.trend_ms_per_segment)
            && left > 0.0
            && left < SLACK_WARN_SEGMENTS
        {
            f.push((State::Warn, format!("slack shrinking {:.0} ms a segment: out in {left:.0} segments", -trend)));
        }
    }
    if let Some(p) = cpu_pressure.filter(|p| *p > PRESSURE_WARN) {
        f.push((State::Warn, format!("CPU contended: tasks waited {p:.0} % of the last 10 s")));
    }
    if let Some(m) = memory.filter(|m| m.used() >= MEMORY_WARN) {
        let state = if m.used() >= MEMORY_BAD { State::Bad } else { State::Warn };
        let mib = |b: u64| b >> 20;
        f.push((
            state,
            format!(
                "memory {:.0} % of the {} limit ({} of {} MiB)",
                m.used() * 100.0,
                m.scope,
                mib(m.used_bytes),
                mib(m.limit_bytes)
            ),
        ));
    }
    Judged::of(f)
}

/// A peer's encoder of the channel, from its state packets.
pub fn peer_encoder(healthy: bool, encode_latency_ms: f32, segment_ms: f64) -> Judged {
    if !healthy {
        return Judged::of(vec![(State::Down, "unhealthy or gone".into())]);
    }
    let mut f = Vec::new();
    let latency = f64::from(encode_latency_ms);
    if segment_ms > 0.0 && latency >= segment_ms {
        f.push((State::Bad, format!("encode latency {latency:.0} ms: behind real time")));
    } else if segment_ms > 0.0 && latency >= PEER_LATENCY_WARN * segment_ms {
        f.push((State::Warn, format!("encode latency {latency:.0} ms of a {segment_ms:.0} ms segment")));
    }
    Judged::of(f)
}

/// The source (capture) of a channel on this node.
pub fn source(running: bool, input_fault: Option<&str>) -> Judged {
    if !running {
        return Judged::of(vec![(State::Down, "the channel is not running".into())]);
    }
    Judged::of(input_fault.map(|fault| (State::Bad, format!("input fault: {fault}"))).into_iter().collect())
}

/// The packager: its output's file system and its write errors.
pub fn packager(disk: Option<Disk>, write_errors: u64) -> Judged {
    let mut f = Vec::new();
    match disk {
        None => f.push((State::Warn, "the output's file system cannot be read".into())),
        Some(d) if d.used() >= DISK_BAD => f.push((State::Bad, format!("output disk {:.0} % full", d.used() * 100.0))),
        Some(d) if d.used() >= DISK_WARN => {
            f.push((State::Warn, format!("output disk filling: {:.0} % full", d.used() * 100.0)));
        }
        Some(_) => {}
    }
    if write_errors > 0 {
        f.push((State::Warn, format!("{write_errors} segment writes failed since the start")));
    }
    Judged::of(f)
}

/// The origin: its server errors against its requests.
pub fn origin(listening: bool, requests: u64, server_errors: u64) -> Judged {
    if !listening {
        return Judged::of(vec![(State::Down, "no origin on this appliance".into())]);
    }
    Judged::of(
        (server_errors > 0)
            .then(|| (State::Warn, format!("{server_errors} of {requests} responses were server errors")))
            .into_iter()
            .collect(),
    )
}

/// Probes in a row an edge did not answer from which it is down.
pub const EDGE_DOWN_AFTER: usize = 2;
/// Median probe time (edge and origin behind it) above which an edge is
/// slow, ms.
pub const EDGE_LATENCY_WARN_MS: f32 = 300.0;

/// A CDN edge, from its probes (`super::edge`).
pub fn edge(f: &super::edge::EdgeFigures) -> Judged {
    let why = f.last_error.as_deref().unwrap_or("no answer");
    if f.probes == 0 {
        return Judged::of(vec![(State::Warn, "not probed yet".into())]);
    }
    if f.failing_in_a_row >= EDGE_DOWN_AFTER.min(f.probes) {
        return Judged::of(vec![(State::Down, format!("{} probes in a row failed: {why}", f.failing_in_a_row))]);
    }
    let mut found = Vec::new();
    if f.failed > 0 {
        let state = if f.probes >= 4 && f.failed * 2 >= f.probes { State::Bad } else { State::Warn };
        found.push((state, format!("{} of the last {} probes failed: {why}", f.failed, f.probes)));
    }
    if f.upstream_errors > 0 {
        found.push((
            State::Warn,
            format!("{} of the last {} probes found the origin behind it failing", f.upstream_errors, f.probes),
        ));
    }
    if let Some(ms) = f.latency_ms.filter(|ms| *ms > EDGE_LATENCY_WARN_MS) {
        found.push((State::Warn, format!("slow: its probes take {ms:.0} ms (median)")));
    }
    Judged::of(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_is_down_after_two_failed_probes_and_slow_or_erring_ones_warn() {
        let f = super::super::edge::EdgeFigures {
            id: "edge-1".into(),
            url: "http://127.0.0.1:1".into(),
            probes: 10,
            failed: 0,
            upstream_errors: 0,
            failing_in_a_row: 0,
            latency_ms: Some(5.0),
            latency_max_ms: Some(9.0),
            active_connections: None,
            requests_per_s: None,
            last_error: None,
        };
        assert_eq!(edge(&f).state, State::Ok);
        let slow = super::super::edge::EdgeFigures { latency_ms: Some(400.0), ..f.clone() };
        assert_eq!(edge(&slow).state, State::Warn);
        assert!(edge(&slow).reasons[0].contains("400 ms"));
        let erring = super::super::edge::EdgeFigures { failed: 1, last_error: Some("timeout".into()), ..f.clone() };
        assert_eq!(edge(&erring).reasons, ["1 of the last 10 probes failed: timeout"]);
        let failing = super::super::edge::EdgeFigures { failed: 5, ..f.clone() };
        assert_eq!(edge(&failing).state, State::Bad);
        let down = super::super::edge::EdgeFigures { failed: 2, failing_in_a_row: 2, ..f.clone() };
        assert_eq!(edge(&down).state, State::Down);
        let upstream = super::super::edge::EdgeFigures { upstream_errors: 1, ..f };
        assert_eq!(edge(&upstream).state, State::Warn);
    }

    fn slack(last_ms: f32, trend: Option<f32>, left: Option<f32>) -> Slack {
        Slack {
            segment: 7,
            last_ms,
            min_ms: last_ms,
            trend_ms_per_segment: trend,
            segments_to_deadline: left,
            segments: 16,
        }
    }

    #[test]
    fn an_encoder_is_judged_by_its_slack_its_trend_and_its_cpu() {
        let ok = encoder(true, Some(&slack(1500.0, Some(-1.0), Some(1500.0))), 2000.0, Some(3.0), None);
        assert_eq!(ok, Judged { state: State::Ok, reasons: vec![] });
        let shrinking = encoder(true, Some(&slack(1200.0, Some(-150.0), Some(8.0))), 2000.0, None, None);
        assert_eq!(shrinking.state, State::Warn);
        assert_eq!(shrinking.reasons, vec!["slack shrinking 150 ms a segment: out in 8 segments"]);
        let thin = encoder(true, Some(&slack(300.0, None, None)), 2000.0, None, None);
        assert_eq!((thin.state, thin.reasons[0].as_str()), (State::Warn, "300 ms of slack left before the deadline"));
        let late = encoder(true, Some(&slack(-250.0, Some(-100.0), Some(0.0))), 2000.0, Some(70.0), None);
        assert_eq!(late.state, State::Bad);
        assert_eq!(
            late.reasons,
            vec!["segment 7 published 250 ms after its deadline", "CPU contended: tasks waited 70 % of the last 10 s"]
        );
        assert_eq!(encoder(false, None, 2000.0, None, None).state, State::Down);
        assert_eq!(encoder(true, None, 2000.0, None, None).state, State::Ok, "no segment yet");
        let memory =
            |used: u64| Some(super::super::MemoryUse { used_bytes: used, limit_bytes: 100 << 20, scope: "cgroup" });
        assert_eq!(encoder(true, None, 2000.0, None, memory(50 << 20)).state, State::Ok);
        assert_eq!(encoder(true, None, 2000.0, None, memory(90 << 20)).state, State::Warn);
        let short = encoder(true, None, 2000.0, None, memory(96 << 20));
        assert_eq!(short.state, State::Bad);
        assert!(short.reasons[0].contains("96 % of the cgroup limit (96 of 100 MiB)"), "{:?}", short.reasons);
    }

    #[test]
    fn peers_sources_packagers_and_origins_are_judged_by_their_own_figures() {
        assert_eq!(peer_encoder(false, 10.0, 2000.0).state, State::Down);
        assert_eq!(peer_encoder(true, 500.0, 2000.0).state, State::Ok);
        assert_eq!(peer_encoder(true, 1600.0, 2000.0).state, State::Warn);
        assert_eq!(peer_encoder(true, 2100.0, 2000.0).state, State::Bad);
        assert_eq!(source(true, None).state, State::Ok);
        let fault = source(true, Some("no signal"));
        assert_eq!((fault.state, fault.reasons[0].as_str()), (State::Bad, "input fault: no signal"));
        let disk = |free: u64| Some(Disk { free_bytes: free, total_bytes: 1000 });
        assert_eq!(packager(disk(500), 0).state, State::Ok);
        assert_eq!(packager(disk(80), 0).reasons, vec!["output disk filling: 92 % full"]);
        assert_eq!(packager(disk(10), 2).state, State::Bad);
        assert_eq!(packager(None, 0).state, State::Warn);
        assert_eq!(origin(true, 100, 0).state, State::Ok);
        assert_eq!(origin(true, 100, 3).reasons, vec!["3 of 100 responses were server errors"]);
        assert_eq!(origin(false, 0, 0).state, State::Down);
    }
}
