//! The edge health agent: every pathway of `[steering]` (a CDN edge) is
//! probed from this appliance, one thread each, every
//! `steering.probe_interval_ms`:
//! - `GET <edge>/healthz`, which the edge passes to an origin uncached:
//!   whether the edge answers, how long the whole path takes, and what the
//!   origin behind it answered (`X-Upstream-Status`, written by the
//!   project's edge configuration, `crate::edge::nginx`);
//! - `GET <edge>/lockstep-edge/status` (nginx's stub status): its open
//!   connections and the requests it serves per second.
//!
//! The newest [`WINDOW`] probes are kept; [`super::chain::edge`] judges
//! them and the steering server orders the pathways by that judgement.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{PathwayConfig, SteeringConfig};
use crate::metrics::Exposition;

/// Probes kept per edge.
pub const WINDOW: usize = 20;

/// Newest answered probes whose median is the edge's latency: few, so a
/// degrading path shows within a few probes.
pub const RECENT: usize = 5;

/// Longest a probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe of an edge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// The edge answered 2xx.
    pub ok: bool,
    /// The origin behind it answered 2xx (false when the edge did not
    /// answer, or said its upstream failed).
    pub upstream_ok: bool,
    /// Time to the answer (or to the failure), ms.
    pub latency_ms: f32,
}

/// What the agent knows of one edge.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeFigures {
    /// Pathway id.
    pub id: String,
    /// Base URL.
    pub url: String,
    /// Probes in the window.
    pub probes: usize,
    /// Of those, probes the edge did not answer with 2xx.
    pub failed: usize,
    /// Probes the edge answered but whose origin failed behind it.
    pub upstream_errors: usize,
    /// Probes in a row, newest last, that the edge did not answer.
    pub failing_in_a_row: usize,
    /// Median time of the newest [`RECENT`] answered probes, ms.
    pub latency_ms: Option<f32>,
    /// Slowest answered probe in the window, ms.
    pub latency_max_ms: Option<f32>,
    /// Connections open at the edge (its stub status).
    pub active_connections: Option<u64>,
    /// Requests the edge served per second between the last two reads of
    /// its stub status.
    pub requests_per_s: Option<f64>,
    /// The newest failure, in words.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Record {
    figures: EdgeFigures,
    window: heapless::Deque<Probe, WINDOW>,
    requests: Option<(Instant, u64)>,
}

impl Record {
    fn new(p: &PathwayConfig) -> Self {
        Self {
            figures: EdgeFigures {
                id: p.id.clone(),
                url: p.url.clone(),
                probes: 0,
                failed: 0,
                upstream_errors: 0,
                failing_in_a_row: 0,
                latency_ms: None,
                latency_max_ms: None,
                active_connections: None,
                requests_per_s: None,
                last_error: None,
            },
            window: heapless::Deque::new(),
            requests: None,
        }
    }

    fn record(&mut self, probe: Probe, error: Option<String>, status: Option<StubStatus>) {
        if self.window.is_full() {
            self.window.pop_front();
        }
        let _ = self.window.push_back(probe);
        let f = &mut self.figures;
        f.probes = self.window.len();
        f.failed = self.window.iter().filter(|p| !p.ok).count();
        f.upstream_errors = self.window.iter().filter(|p| p.ok && !p.upstream_ok).count();
        f.failing_in_a_row = self.window.iter().rev().take_while(|p| !p.ok).count();
        let answered = || self.window.iter().filter(|p| p.ok).map(|p| p.latency_ms);
        let mut recent: Vec<f32> = answered().rev().take(RECENT).collect();
        recent.sort_unstable_by(f32::total_cmp);
        f.latency_ms = recent.get(recent.len() / 2).copied();
        f.latency_max_ms = answered().max_by(f32::total_cmp);
        if error.is_some() {
            f.last_error = error;
        }
        let now = Instant::now();
        f.active_connections = status.map(|s| s.active);
        f.requests_per_s = match (status, self.requests) {
            (Some(s), Some((then, before))) if s.requests >= before => {
                Some((s.requests - before) as f64 / now.duration_since(then).as_secs_f64().max(1e-3))
            }
            _ => None,
        };
        self.requests = status.map(|s| (now, s.requests));
    }
}

/// The agent: the figures of every edge, kept up to date by its threads
/// while it lives.
#[derive(Debug)]
pub struct EdgeAgent {
    edges: Mutex<Vec<Record>>,
}

impl EdgeAgent {
    /// Starts probing the pathways of `config`; `None` without pathways.
    pub fn start(config: &SteeringConfig) -> Option<Arc<Self>> {
        if config.pathways.is_empty() {
            return None;
        }
        let agent = Arc::new(Self { edges: Mutex::new(config.pathways.iter().map(Record::new).collect()) });
        let every = Duration::from_millis(u64::from(config.probe_interval_ms));
        for (i, p) in config.pathways.iter().enumerate() {
            let weak = Arc::downgrade(&agent);
            let url = p.url.clone();
            let spawned =
                std::thread::Builder::new().name(format!("edge-{i}")).spawn(move || probe_loop(&weak, i, &url, every));
            if let Err(e) = spawned {
                tracing::error!(edge = %p.id, "edge health agent: {e}");
            }
        }
        Some(agent)
    }

    /// Every edge's figures, in the configured order.
    pub fn figures(&self) -> Vec<EdgeFigures> {
        self.edges.lock().map(|e| e.iter().map(|r| r.figures.clone()).collect()).unwrap_or_default()
    }

    fn record(&self, i: usize, probe: Probe, error: Option<String>, status: Option<StubStatus>) {
        if let Ok(mut edges) = self.edges.lock()
            && let Some(r) = edges.get_mut(i)
        {
            r.record(probe, error, status);
        }
    }

    /// Adds the figures to an exposition.
    pub fn export(&self, out: &mut Exposition) {
        for f in self.figures() {
            let judged = super::chain::edge(&f);
            let labels = [("edge", f.id.as_str())];
            out.gauge(
                "lockstep_edge_up",
                "Whether the edge answered its newest probe.",
                &labels,
                crate::metrics::flag(f.failing_in_a_row == 0 && f.probes > 0),
            );
            out.gauge(
                "lockstep_edge_state",
                "The edge's judged state: 0 ok, 1 warn, 2 bad, 3 down.",
                &labels,
                f64::from(judged.state as u8),
            );
            if let Some(ms) = f.latency_ms {
                out.gauge(
                    "lockstep_edge_latency_seconds",
                    "Median time of the edge's answered probes (edge and origin behind it).",
                    &labels,
                    f64::from(ms) / 1000.0,
                );
            }
            out.gauge(
                "lockstep_edge_failed_probes_ratio",
                "Share of the edge's recent probes it did not answer with 2xx.",
                &labels,
                if f.probes == 0 { 0.0 } else { f.failed as f64 / f.probes as f64 },
            );
        }
    }
}

/// Probes edge `i` at `url` every `every` until the agent is dropped.
fn probe_loop(agent: &Weak<EdgeAgent>, i: usize, url: &str, every: Duration) {
    let http = ureq::Agent::config_builder()
        .timeout_global(Some(PROBE_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent();
    loop {
        let started = Instant::now();
        let (probe, error) = probe(&http, url);
        let status = probe.ok.then(|| stub_status(&http, url)).flatten();
        let Some(a) = agent.upgrade() else { return };
        a.record(i, probe, error, status);
        drop(a);
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
}

/// One probe of `<url>/healthz` and, when it failed, why.
fn probe(http: &ureq::Agent, url: &str) -> (Probe, Option<String>) {
    let started = Instant::now();
    let answer = http.get(&format!("{url}/healthz")).call();
    let latency_ms = started.elapsed().as_secs_f32() * 1000.0;
    match answer {
        Ok(r) if r.status().is_success() => {
            let upstream = r.headers().get("x-upstream-status").and_then(|v| v.to_str().ok()).unwrap_or("");
            // nginx lists every upstream tried ("502, 200"): the last answered.
            let last = upstream.rsplit([',', ':']).next().unwrap_or("").trim();
            let upstream_ok = last.is_empty() || last.starts_with('2');
            let error = (!upstream_ok).then(|| format!("the origin behind it answered {upstream}"));
            (Probe { ok: true, upstream_ok, latency_ms }, error)
        }
        Ok(r) => (Probe { ok: false, upstream_ok: false, latency_ms }, Some(format!("it answered {}", r.status()))),
        Err(e) => (Probe { ok: false, upstream_ok: false, latency_ms }, Some(format!("no answer: {e}"))),
    }
}

/// nginx's stub status figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubStatus {
    /// Connections open.
    pub active: u64,
    /// Requests served since nginx started.
    pub requests: u64,
}

fn stub_status(http: &ureq::Agent, url: &str) -> Option<StubStatus> {
    let mut r = http.get(&format!("{url}{}", crate::edge::nginx::STATUS_PATH)).call().ok()?;
    if !r.status().is_success() {
        return None;
    }
    parse_stub_status(&r.body_mut().read_to_string().ok()?)
}

/// Parses nginx's stub status page; `None` when it is not one.
pub fn parse_stub_status(text: &str) -> Option<StubStatus> {
    let mut lines = text.lines();
    let active = lines.next()?.strip_prefix("Active connections:")?.trim().parse().ok()?;
    lines.next().filter(|l| l.starts_with("server accepts handled requests"))?;
    let requests = lines.next()?.split_whitespace().nth(2)?.parse().ok()?;
    Some(StubStatus { active, requests })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nginx_stub_status_is_read_and_anything_else_is_not() {
        let page =
            "Active connections: 3 \nserver accepts handled requests\n 17 17 42 \nReading: 0 Writing: 1 Waiting: 2 \n";
        assert_eq!(parse_stub_status(page), Some(StubStatus { active: 3, requests: 42 }));
        assert_eq!(parse_stub_status("<html>not found</html>"), None);
        assert_eq!(parse_stub_status("Active connections: 3\nsomething else\n"), None);
    }

    #[test]
    fn the_window_counts_failures_in_a_row_and_the_median_latency() {
        let p = PathwayConfig { id: "edge-1".into(), url: "http://127.0.0.1:1".into() };
        let mut r = Record::new(&p);
        for ms in [10.0, 30.0, 20.0] {
            r.record(Probe { ok: true, upstream_ok: true, latency_ms: ms }, None, None);
        }
        r.record(Probe { ok: true, upstream_ok: false, latency_ms: 15.0 }, Some("502".into()), None);
        assert_eq!((r.figures.latency_ms, r.figures.latency_max_ms), (Some(20.0), Some(30.0)));
        for ms in [400.0, 500.0, 600.0] {
            r.record(Probe { ok: true, upstream_ok: true, latency_ms: ms }, None, None);
        }
        assert_eq!(r.figures.latency_ms, Some(400.0), "the median of the newest 5: 20, 15, 400, 500, 600");
        assert_eq!(r.figures.upstream_errors, 1);
        for _ in 0..2 {
            r.record(Probe { ok: false, upstream_ok: false, latency_ms: 1.0 }, Some("refused".into()), None);
        }
        assert_eq!((r.figures.failed, r.figures.failing_in_a_row), (2, 2));
        assert_eq!(r.figures.last_error.as_deref(), Some("refused"));
        for _ in 0..WINDOW {
            r.record(Probe { ok: true, upstream_ok: true, latency_ms: 5.0 }, None, None);
        }
        assert_eq!((r.figures.probes, r.figures.failed, r.figures.failing_in_a_row), (WINDOW, 0, 0));
    }
}
