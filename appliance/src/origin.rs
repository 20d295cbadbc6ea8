//! A small HTTP origin serving the segment store (playlists and segments).
//! Public by design (players fetch from it); the admin page and API have
//! their own listener (`crate::admin`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::services::ServeDir;

/// Responses of the origin by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct OriginMetrics {
    /// Counts per class.
    pub by_class: [std::sync::atomic::AtomicU64; 5],
}

impl OriginMetrics {
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
    let served =
        [".m3u8", ".m4s", ".mp4"].iter().any(|e| name.ends_with(e)) || name == "manifest.jsonl" || path == "/healthz";
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
    let cache = if path.ends_with(".m3u8") { "no-cache" } else { "max-age=3600" };
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    res
}

/// Binds `listen` and serves `root` on a background thread.
pub fn start(listen: &str, root: PathBuf, metrics: Arc<OriginMetrics>) -> std::io::Result<Origin> {
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
            let app = Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
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
