//! A small HTTP origin serving the segment store (playlists and segments).
//! Public by design (players fetch from it); the admin page and API have
//! their own listener (`crate::admin`). With `[steering]` pathways it also
//! serves the steered multivariant playlists and the steering server
//! (`crate::edge::steering`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::services::ServeDir;

use crate::config::SteeringConfig;
use crate::edge::steering;
use crate::health::edge::EdgeAgent;

/// Responses of the origin by status class (1xx..5xx), and the latency
/// drill holding its answers.
#[derive(Debug, Default)]
pub struct OriginMetrics {
    /// Counts per class.
    pub by_class: [std::sync::atomic::AtomicU64; 5],
    drill: std::sync::Mutex<Option<LatencyDrill>>,
}

/// An origin latency drill: every answer is held, the hold growing from
/// 0 to `peak` over `ramp`, then kept until `until` — what an edge sees of
/// a degrading network between it and the origin.
#[derive(Debug, Clone, Copy)]
struct LatencyDrill {
    started: Instant,
    ramp: Duration,
    peak: Duration,
    until: Instant,
}

impl OriginMetrics {
    /// Starts a latency drill (replacing one under way).
    pub fn drill_latency(&self, peak: Duration, ramp: Duration, lasting: Duration) {
        let started = Instant::now();
        *crate::sync::lock(&self.drill) = Some(LatencyDrill { started, ramp, peak, until: started + lasting });
    }

    /// How long an answer is held now.
    pub fn hold(&self) -> Duration {
        let now = Instant::now();
        let Some(d) = *crate::sync::lock(&self.drill) else { return Duration::ZERO };
        if now >= d.until {
            return Duration::ZERO;
        }
        let into = now.duration_since(d.started);
        if into >= d.ramp { d.peak } else { d.peak.mul_f64(into.as_secs_f64() / d.ramp.as_secs_f64()) }
    }

    /// Adds the response counts to an exposition.
    pub fn export(&self, out: &mut crate::metrics::Exposition) {
        crate::metrics::status_classes(
            out,
            "lockstep_origin_requests_total",
            "Origin HTTP responses by status class.",
            &self.by_class,
        );
    }
}

/// A running origin.
#[derive(Debug)]
pub struct Origin {
    /// Address it listens on.
    pub addr: SocketAddr,
    _thread: std::thread::JoinHandle<()>,
}

/// Content types HLS players expect, set after the file service answered.
async fn hls_types(
    axum::extract::State(metrics): axum::extract::State<Arc<OriginMetrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path().to_owned();
    // Only what players and peer origins fetch; never the other files under
    // the output directory (metrics, the swarm view, the audit log, configs).
    let name = path.rsplit('/').next().unwrap_or_default();
    let steering = path.starts_with("/steering/");
    let served = [".m3u8", ".m4s", ".mp4"].iter().any(|e| name.ends_with(e))
        || name == "manifest.jsonl"
        || path == "/healthz"
        || steering;
    let hold = metrics.hold();
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    let mut res =
        if served { next.run(req).await } else { (axum::http::StatusCode::NOT_FOUND, "not found\n").into_response() };
    let class = (res.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    metrics.by_class[class].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let kind = if path.ends_with(".m3u8") {
        Some("application/vnd.apple.mpegurl")
    } else if path.ends_with(".m4s") {
        Some("video/iso.segment")
    } else if path.ends_with(".mp4") {
        Some("video/mp4")
    } else {
        None
    };
    if let Some(kind) = kind {
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    }
    let cache = if path.ends_with(".m3u8") || steering || path == "/healthz" { "no-cache" } else { "max-age=3600" };
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    res
}

/// What the origin needs to steer players between CDN edges.
#[derive(Debug, Clone)]
pub struct Steering {
    /// The pathways and the manifest's TTL.
    pub config: SteeringConfig,
    /// The edges' health.
    pub agent: Arc<EdgeAgent>,
    /// Players get the swarm's combined output (`combined/<channel>/`),
    /// not this node's own.
    pub combined: bool,
    /// The failure prediction: an edge predicted to fail is left first.
    pub predictor: Option<Arc<crate::predict::live::Predictor>>,
}

impl Steering {
    /// The pathways, preferred first.
    fn priority(&self) -> Vec<String> {
        crate::edge::standings(&self.config, &self.agent, self.predictor.as_deref()).into_iter().map(|s| s.id).collect()
    }
}

/// Where players find `channel` under `root` (the combined output in a
/// swarm, else this node's own) and its multivariant playlist; `None`
/// when there is none (yet), or the id is no path component.
fn channel_dir(root: &Path, channel: &str, combined: bool) -> Option<(String, String)> {
    let fit = !channel.is_empty() && !channel.starts_with('.') && !channel.contains(['/', '\\']);
    if !fit {
        return None;
    }
    let base = if combined { format!("combined/{channel}/") } else { format!("{channel}/") };
    std::fs::read_to_string(root.join(&base).join("master.m3u8")).ok().map(|text| (base, text))
}

fn no_channel(channel: &str) -> axum::response::Response {
    let why = format!("no channel `{channel}` on this origin, or no playlist of it yet\n");
    (StatusCode::NOT_FOUND, [(header::RETRY_AFTER, "2")], why).into_response()
}

/// `GET /steered/<channel>/master.m3u8`: the multivariant playlist with
/// every variant once per pathway (`crate::edge::steering`).
async fn steered(
    State((root, steer)): State<(PathBuf, Steering)>,
    axum::extract::Path(channel): axum::extract::Path<String>,
) -> axum::response::Response {
    let Some((base, master)) = channel_dir(&root, &channel, steer.combined) else { return no_channel(&channel) };
    let priority = steer.priority();
    let first = priority.first().map_or("", String::as_str);
    let server = format!("/steering/{channel}");
    steering::steered_playlist(&master, &base, &steer.config.pathways, &server, first).into_response()
}

/// `GET /steering/<channel>`: the steering manifest (players add
/// `_HLS_pathway` and `_HLS_throughput`, which it does not need).
async fn steering_manifest(
    State((root, steer)): State<(PathBuf, Steering)>,
    axum::extract::Path(channel): axum::extract::Path<String>,
) -> axum::response::Response {
    if channel_dir(&root, &channel, steer.combined).is_none() {
        return no_channel(&channel);
    }
    axum::Json(steering::manifest(steer.priority(), steer.config.ttl_s)).into_response()
}

/// Binds `listen` and serves `root` on a background thread; with
/// `steering`, also the steered playlists and the steering server.
pub fn start(
    listen: &str,
    root: PathBuf,
    metrics: Arc<OriginMetrics>,
    steering: Option<Steering>,
) -> std::io::Result<Origin> {
    let addr: SocketAddr =
        listen.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}")))?;
    let std_listener = std::net::TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("origin cannot listen on {addr}: {e}")))?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let thread = std::thread::Builder::new().name("origin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("origin runtime: {e}");
                return;
            }
        };
        rt.block_on(async move {
            let mut app = Router::new().route("/healthz", get(|| async { "ok\n" }));
            if let Some(steer) = steering {
                let steered_routes = Router::new()
                    .route("/steered/{channel}/master.m3u8", get(steered))
                    .route("/steering/{channel}", get(steering_manifest))
                    .with_state((root.clone(), steer));
                app = app.merge(steered_routes);
            }
            let app = app
                .fallback_service(ServeDir::new(root))
                .layer(axum::middleware::from_fn_with_state(metrics, hls_types));
            match tokio::net::TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!("origin stopped: {e}");
                    }
                }
                Err(e) => tracing::error!("origin listener: {e}"),
            }
        });
    })?;
    Ok(Origin { addr, _thread: thread })
}
