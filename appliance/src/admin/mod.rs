//! The admin page and REST API (docs/admin.md, docs/api.md, docs/openapi.json).
//!
//! Served by axum on its own listener (`[admin] listen`), on its own
//! threads: it reads the data plane's shared status and sends it typed
//! commands over bounded queues with timeouts, so a busy or stuck client
//! never slows the pipeline down.

pub mod api;
pub mod auth;
pub mod bench;
mod drills;
pub mod events;
mod metrics;
mod predict;
pub mod settings;
mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::channels::{Channel, Channels};
use crate::config::Config;
use crate::origin::OriginMetrics;
use crate::swarm::Swarm;

use crate::sync::lock;
use auth::Auth;
use events::{EventLog, History, Sample, ViewDiff};

/// What the admin API works on.
#[derive(Debug, Clone)]
pub struct Context {
    /// The daemon's configuration.
    pub config: Config,
    /// The appliance's channels: their status, controls, feeds and
    /// supervisors.
    pub channels: Arc<Channels>,
    /// The swarm node (of the first channel), when in a swarm.
    pub swarm: Option<Arc<Swarm>>,
    /// The origin's address, when it runs.
    pub origin: Option<SocketAddr>,
    /// The origin's counters.
    pub origin_metrics: Arc<OriginMetrics>,
    /// The edge health agent, when `[steering]` names pathways.
    pub edges: Option<Arc<crate::health::edge::EdgeAgent>>,
    /// The history store, unless `history.enabled = false`.
    pub history: Option<Arc<crate::history::History>>,
    /// The resource drills.
    pub drills: Arc<crate::drill::Drills>,
    /// The failure prediction, unless the history is off.
    pub predictor: Option<Arc<crate::predict::live::Predictor>>,
}

/// A running admin server.
#[derive(Debug)]
pub struct Admin {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Its event log.
    pub events: Arc<EventLog>,
    _threads: Vec<std::thread::JoinHandle<()>>,
}

/// One analysed segment, as the timeline shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisRow {
    /// Segment index.
    pub index: i64,
    /// Timecode of its first frame.
    pub timecode: String,
    /// Complexity, 0–1.
    pub complexity: f32,
    /// Content type.
    pub content: &'static str,
    /// Scene cuts in it.
    pub scene_cuts: usize,
    /// Pictures the analysis left out.
    pub frames_skipped: u32,
}

/// One published segment of a track.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentRow {
    /// Segment index.
    pub index: i64,
    /// File size.
    pub bytes: u64,
    /// Bitrate it came out at, kbit/s.
    pub kbps: f64,
}

/// What the admin server keeps of one channel for the page.
#[derive(Debug, Default)]
pub struct Rows {
    /// Its analysed segments, oldest first.
    pub analysis: VecDeque<AnalysisRow>,
    /// Its published segments by track, oldest first.
    pub segments: BTreeMap<String, VecDeque<SegmentRow>>,
}

/// Counters of the API itself.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    /// Requests by status class (1xx..5xx).
    pub by_class: [AtomicU64; 5],
    /// Failed logins.
    pub login_failures: AtomicU64,
    /// Logins refused by the rate limit.
    pub login_limited: AtomicU64,
}

impl ApiMetrics {
    /// Adds the API's counters to an exposition.
    pub fn export(&self, out: &mut crate::metrics::Exposition) {
        crate::metrics::status_classes(
            out,
            "lockstep_api_requests_total",
            "Admin API responses by status class.",
            &self.by_class,
        );
        let n = |a: &AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
        out.counter("lockstep_api_login_failures_total", "Failed admin logins.", &[], n(&self.login_failures));
        out.counter(
            "lockstep_api_logins_limited_total",
            "Logins refused by the rate limit.",
            &[],
            n(&self.login_limited),
        );
    }
}

/// The client's address, for the login limit and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState {
    ctx: Context,
    auth: Auth,
    events: Arc<EventLog>,
    history: History,
    /// By channel id.
    rows: Mutex<BTreeMap<String, Rows>>,
    api: ApiMetrics,
    audit: Mutex<Option<std::fs::File>>,
    tls: bool,
    started: Instant,
}

/// Analysed segments kept for the timeline.
const ANALYSIS_KEPT: usize = 600;
/// Published segments kept per track.
const SEGMENTS_KEPT: usize = 30;

impl AppState {
    /// Appends a line to the audit log: who changed what, from where.
    fn audit(&self, actor: &str, from: Option<SocketAddr>, action: &str, detail: serde_json::Value) {
        let line = serde_json::json!({
            "t_ms": crate::control::unix_ms(),
            "actor": actor,
            "from": from.map(|a| a.ip().to_string()),
            "action": action,
            "detail": detail,
        });
        tracing::info!(actor, action, %detail, "audit");
        if let Some(f) = lock(&self.audit).as_mut()
            && writeln!(f, "{line}").and_then(|()| f.flush()).is_err()
        {
            tracing::warn!("audit log not written");
        }
    }
}

/// Starts the admin server `ctx.config.admin` describes.
pub fn start(ctx: Context) -> anyhow::Result<Admin> {
    let admin = &ctx.config.admin;
    let listen = admin.listen.clone().unwrap_or_default();
    let addr: SocketAddr = listen.parse().map_err(|_| anyhow::anyhow!("admin.listen `{listen}` is not an address"))?;
    let auth = Auth::load(admin)?;
    let tls = match (&admin.tls_cert, &admin.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    let audit_path = admin.audit_log.clone().unwrap_or_else(|| ctx.config.output.dir.join("audit.jsonl"));
    if let Some(parent) = audit_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let audit = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&audit_path)
            .map_err(|e| anyhow::anyhow!("admin audit log {}: {e}", audit_path.display()))?
    };
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("admin API cannot listen on {addr}: {e}"))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let events = Arc::new(EventLog::default());
    let tls_on = tls.is_some();
    let state = Arc::new(AppState {
        ctx,
        auth,
        events: Arc::clone(&events),
        history: History::default(),
        rows: Mutex::default(),
        api: ApiMetrics::default(),
        audit: Mutex::new(Some(audit)),
        tls: tls.is_some(),
        started: Instant::now(),
    });
    let watcher = {
        let state = Arc::clone(&state);
        std::thread::Builder::new().name("admin-watch".into()).spawn(move || watch(&state))?
    };
    let server = std::thread::Builder::new().name("admin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("admin-io")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("admin runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("admin listener: {e}");
                    return;
                }
            };
            let app = api::router(state).into_make_service_with_connect_info::<PeerAddr>();
            let served = match tls {
                Some(config) => axum::serve(tls::TlsListener::new(listener, config), app).await,
                None => axum::serve(listener, app).await,
            };
            if let Err(e) = served {
                tracing::error!("admin API stopped: {e}");
            }
        });
    })?;
    tracing::info!(%addr, tls = tls_on, "admin page and API listening");
    Ok(Admin { addr, events, _threads: vec![watcher, server] })
}

/// What the watcher follows of one channel.
struct Follow {
    channel: Arc<Channel>,
    analyses: Option<tokio::sync::broadcast::Receiver<Arc<crate::analysis::stage::SegmentReport>>>,
    segments: Option<tokio::sync::broadcast::Receiver<Arc<crate::pipeline::PublishedSegment>>>,
    running: bool,
    write_errors: u64,
    run_error: Option<String>,
    /// The newest segment seen encoded from the majority's pictures
    /// before publication.
    corrected: i64,
}

impl Follow {
    fn new(channel: Arc<Channel>) -> Self {
        let taps = &channel.taps;
        let analyses = taps.analysis.as_ref().map(tokio::sync::broadcast::Sender::subscribe);
        let segments = taps.segments.as_ref().map(tokio::sync::broadcast::Sender::subscribe);
        let corrected = taps.status.last_corrected.load(Ordering::Relaxed);
        Self { channel, analyses, segments, running: false, write_errors: 0, run_error: None, corrected }
    }

    /// Takes in what the channel published since the last call.
    fn update(&mut self, state: &AppState) {
        let mut all = lock(&state.rows);
        let rows = all.entry(self.channel.id.clone()).or_default();
        if let Some(rx) = self.analyses.as_mut() {
            while let Ok(r) = rx.try_recv() {
                rows.analysis.push_back(AnalysisRow {
                    index: r.index,
                    timecode: r.timecode.clone(),
                    complexity: r.analysis.complexity,
                    content: r.analysis.content.name(),
                    scene_cuts: r.analysis.scene_cuts.len(),
                    frames_skipped: r.analysis.frames_skipped,
                });
                while rows.analysis.len() > ANALYSIS_KEPT {
                    rows.analysis.pop_front();
                }
            }
        }
        // A segment published again under its index is a re-encode that
        // replaced it (`crate::pipeline::rework`).
        let mut reencoded: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        if let Some(rx) = self.segments.as_mut() {
            while let Ok(p) = rx.try_recv() {
                let track = rows.segments.entry(p.track.clone()).or_default();
                let kbps = if p.duration_s > 0.0 { p.bytes as f64 * 8.0 / p.duration_s / 1000.0 } else { 0.0 };
                let row = SegmentRow { index: p.index, bytes: p.bytes, kbps };
                if let Some(old) = track.iter_mut().find(|r| r.index == p.index) {
                    *old = row;
                    reencoded.entry(p.index).or_default().push(p.track.clone());
                    continue;
                }
                track.push_back(row);
                while track.len() > SEGMENTS_KEPT {
                    track.pop_front();
                }
            }
        }
        drop(all);
        let status = &self.channel.taps.status;
        let me = Some(state.ctx.config.appliance.id.as_str());
        for (index, tracks) in reencoded {
            state.events.push(
                "resync",
                me,
                format!(
                    "channel {}: segment {index} re-encoded from the input kept ({}); the same bytes as the majority's again",
                    self.channel.id,
                    tracks.join(", ")
                ),
            );
        }
        let now_running = status.running.load(Ordering::Relaxed);
        if now_running != self.running {
            let what = if now_running { "started" } else { "stopped" };
            state.events.push("channel", me, format!("channel {} {what}", self.channel.id));
            self.running = now_running;
        }
        let run_error = lock(&status.run_error).clone();
        if run_error != self.run_error {
            if let Some(why) = &run_error {
                state.events.push("error", me, format!("channel {} stopped: {why}", self.channel.id));
            }
            self.run_error = run_error;
        }
        let corrected = status.last_corrected.load(Ordering::Relaxed);
        if corrected > self.corrected {
            state.events.push(
                "resync",
                me,
                format!(
                    "channel {}: segment {corrected} encoded from the majority's pictures before publication \
                     (this node's capture numbered them otherwise); no misaligned copy was published",
                    self.channel.id
                ),
            );
            self.corrected = corrected;
        }
        let errors = status.write_errors.load(Ordering::Relaxed);
        if errors > self.write_errors {
            state.events.push(
                "error",
                me,
                format!(
                    "channel {}: {} segment writes failed (total {errors}); see the journal",
                    self.channel.id,
                    errors - self.write_errors
                ),
            );
            self.write_errors = errors;
        }
    }
}

/// Follows the channels and the swarm: feeds the timelines, the charts
/// and the event log.
fn watch(state: &Arc<AppState>) {
    crate::rt::lower_priority(crate::rt::ADMIN_NICE);
    let mut follows: Vec<Follow> = Vec::new();
    let mut diff = ViewDiff::default();
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let mut steering: Option<Vec<crate::edge::steering::Standing>> = None;
    loop {
        // Channels come and go through the API.
        let channels = state.ctx.channels.all();
        follows.retain(|f| channels.iter().any(|c| Arc::ptr_eq(c, &f.channel)));
        for c in channels {
            if !follows.iter().any(|f| Arc::ptr_eq(&c, &f.channel)) {
                follows.push(Follow::new(c));
            }
        }
        lock(&state.rows).retain(|id, _| follows.iter().any(|f| &f.channel.id == id));
        for f in &mut follows {
            f.update(state);
        }
        let view = state.ctx.swarm.as_ref().map(|s| s.view());
        if let Some(view) = &view {
            diff.update(view, &state.events);
        }
        // A standby unit's decisions, each with the prediction or failure
        // that caused it.
        for what in state.ctx.swarm.as_ref().map(|s| s.take_standby_events()).unwrap_or_default() {
            state.events.push("standby", Some(&state.ctx.config.appliance.id), what);
        }
        if let Some(p) = &state.ctx.predictor {
            for change in p.take_changes() {
                let r = &change.risk;
                let what = if change.raised {
                    format!(
                        "{}: failure predicted within {} s (probability {:.2})",
                        r.component,
                        crate::predict::live::HORIZON_S,
                        r.probability
                    )
                } else {
                    format!("{}: failure no longer predicted (probability {:.2})", r.component, r.probability)
                };
                state.events.push("prediction", Some(&state.ctx.config.appliance.id), what);
            }
        }
        // Every change of the players' pathway priority, with its reasons.
        if let Some(agent) = &state.ctx.edges {
            let now = crate::edge::standings(&state.ctx.config.steering, agent, state.ctx.predictor.as_deref());
            let before = steering.get_or_insert_with(|| {
                // At start: the configured order, all taken as healthy.
                crate::edge::steering::standings(&state.ctx.config.steering.pathways, |_| None, |_| None)
            });
            if let Some(what) = crate::edge::steering::change_message(before, &now) {
                state.events.push("steering", Some(&state.ctx.config.appliance.id), what);
            }
            *before = now;
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            state.history.push(sample(state, view.as_ref()));
        }
        if Arc::strong_count(state) == 1 {
            return; // the server is gone
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn sample(state: &AppState, view: Option<&crate::swarm::View>) -> Sample {
    let me = &state.ctx.config.appliance.id;
    let first = state.ctx.channels.first();
    let complexity = lock(&state.rows).get(&first.id).and_then(|r| r.analysis.back()).map_or(0.0, |r| r.complexity);
    let latency = first.taps.status.encode_latency_us.load(Ordering::Relaxed) as f32 / 1000.0;
    let (mut weights, mut cpu) = (BTreeMap::new(), BTreeMap::new());
    if let Some(view) = view {
        weights = view.channels.get(&first.id).map(|c| c.weights.clone()).unwrap_or_default();
        for (node, p) in &view.peers {
            cpu.insert(node.clone(), p.state.load.cpu);
        }
        if let Some(m) = &view.me {
            cpu.insert(me.clone(), m.load.cpu);
        }
    }
    Sample { t_ms: crate::control::unix_ms(), weights, cpu, complexity, encode_latency_ms: latency }
}
