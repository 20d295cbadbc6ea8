//! Routes of the admin API and page (the contract: docs/openapi.json).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Actor, COOKIE, Login};
use crate::channels::{Channel, ChannelError};
use crate::command::{ChannelCommand, CommandError};
use crate::config::{BITRATE_KBPS, ChannelSpec};
use crate::control::{LadderChange, unix_ms};
use crate::sync::lock;

pub(super) type Shared = State<Arc<AppState>>;

/// Paths anyone may fetch: the health probe, the page (which asks for the
/// login; its modules are under [`PAGE_MODULES`]) and the login itself.
const PUBLIC: [&str; 5] = ["/healthz", "/", "/app.css", "/hls.min.js", "/api/v1/login"];

/// Where the page's script modules are served (public, like the page).
const PAGE_MODULES: &str = "/js/";

const INDEX_HTML: &str = include_str!("page/index.html");
/// The page's script, one ES module per view (`page/js/main.js` says
/// which is which).
const APP_MODULES: [(&str, &str); 14] = [
    ("main.js", include_str!("page/js/main.js")),
    ("core.js", include_str!("page/js/core.js")),
    ("session.js", include_str!("page/js/session.js")),
    ("live.js", include_str!("page/js/live.js")),
    ("status.js", include_str!("page/js/status.js")),
    ("swarm.js", include_str!("page/js/swarm.js")),
    ("channels.js", include_str!("page/js/channels.js")),
    ("renditions.js", include_str!("page/js/renditions.js")),
    ("preview.js", include_str!("page/js/preview.js")),
    ("alignment.js", include_str!("page/js/alignment.js")),
    ("chain.js", include_str!("page/js/chain.js")),
    ("events.js", include_str!("page/js/events.js")),
    ("charts.js", include_str!("page/js/charts.js")),
    ("settings.js", include_str!("page/js/settings.js")),
];
const APP_CSS: &str = include_str!("page/app.css");
const HLS_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hls.min.js"));

/// The page's Content-Security-Policy: its own scripts only; media and
/// playlists from the origins (another port), hls.js workers from blobs.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   media-src 'self' blob: http: https:; connect-src 'self' http: https:; worker-src blob:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Longest a channel command may take (stopping finishes the frame in hand).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// An error answer: `{"error": "...", "field": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: None }
    }

    pub(super) fn field(status: StatusCode, field: &str, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: Some(field.to_string()) }
    }

    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The message and the field it names, if one.
    pub fn message(&self) -> (&str, Option<&str>) {
        (&self.error, self.field.as_deref())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(f) = self.field {
            body["field"] = Value::String(f);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

/// Parses a JSON request body strictly: the content type must be JSON,
/// unknown fields are refused, and errors name the field.
pub fn parse_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    parse_json(body)
}

/// The JSON half of [`parse_body`] (also the fuzz target's entry).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                // serde names unknown and missing fields in its message.
                let named = ["unknown field `", "missing field `"].iter().find_map(|p| {
                    message.split_once(p).and_then(|(_, rest)| rest.split_once('`')).map(|(f, _)| f.to_string())
                });
                let field = match (named, path.as_str()) {
                    (Some(f), ".") => f,
                    (Some(f), p) if p == f || p.ends_with(&format!(".{f}")) => p.to_string(),
                    (Some(f), p) => format!("{p}.{f}"),
                    (None, p) => p.to_string(),
                };
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, &field, format!("{field}: {message}"))
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}")),
        }
    })?;
    de.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

pub(super) fn json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// The API's router with its middleware.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/js/{module}", get(page_module))
        .route("/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
        .route("/hls.min.js", get(hls_js))
        .route("/metrics", get(super::metrics::metrics))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/session", get(session))
        .route("/api/v1/status", get(status))
        .route("/api/v1/channels", get(channels).post(create_channel))
        .route("/api/v1/channels/{id}", get(channel).delete(delete_channel))
        .route("/api/v1/channels/{id}/renditions/{name}", patch(set_rendition))
        .route("/api/v1/channels/{id}/start", post(start_channel))
        .route("/api/v1/channels/{id}/stop", post(stop_channel))
        .route("/api/v1/channels/{id}/drills/hang", post(super::drills::hang_drill))
        .route("/api/v1/channels/{id}/drills/slip", post(super::drills::slip_drill))
        .route("/api/v1/channels/{id}/drills/latency", post(super::drills::latency_drill))
        .route("/api/v1/channels/{id}/drills/forged-proposal", post(super::drills::forged_proposal_drill))
        .route("/api/v1/drills/origin-latency", post(super::drills::origin_latency_drill))
        .route("/api/v1/drills", get(super::drills::list).delete(super::drills::stop_all))
        .route("/api/v1/drills/cpu", post(super::drills::cpu))
        .route("/api/v1/drills/memory", post(super::drills::memory))
        .route("/api/v1/drills/disk", post(super::drills::disk))
        .route("/api/v1/predict", get(super::predict::status))
        .route("/api/v1/predict/train", post(super::predict::train))
        .route("/api/v1/channels/{id}/source/controls", get(source_controls).patch(set_source_control))
        .route("/api/v1/channels/{id}/config", get(super::settings::get).patch(super::settings::patch))
        .route("/api/v1/clock", get(clock))
        .route("/api/v1/clock/fault", put(set_clock_fault))
        .route("/api/v1/sources", get(sources))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/outputs", get(outputs))
        .route("/api/v1/health", get(health))
        .route("/api/v1/chain", get(chain))
        .route("/api/v1/health/history", get(health_history))
        .route("/api/v1/swarm", get(swarm))
        .route("/api/v1/swarm/alignment", get(alignment))
        .route("/api/v1/swarm/lockstep", get(lockstep))
        .route("/api/v1/analysis", get(analysis))
        .route("/api/v1/history", get(history))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(event_stream))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route (see docs/openapi.json)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard))
        .with_state(state)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn page_module(Path(module): Path<String>) -> Response {
    match APP_MODULES.iter().find(|(name, _)| *name == module) {
        Some((_, body)) => page(body, "text/javascript; charset=utf-8"),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no page module {module}")).into_response(),
    }
}

async fn hls_js() -> Response {
    if HLS_JS.is_empty() {
        return ApiError::new(StatusCode::NOT_FOUND, "hls.js was not built in (run ./run deps, then rebuild)")
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "max-age=86400")], HLS_JS)
        .into_response()
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Every request: login required (but for [`PUBLIC`]), CSRF token on
/// state-changing session requests, security headers, counters.
async fn guard(State(state): Shared, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut res = if PUBLIC.contains(&path.as_str()) || path.starts_with(PAGE_MODULES) {
        next.run(req).await
    } else {
        let headers = req.headers();
        match state.auth.check(cookie_value(headers, COOKIE), bearer(headers)) {
            None => ApiError::new(StatusCode::UNAUTHORIZED, "login required (POST /api/v1/login, or an API token)")
                .into_response(),
            Some(Actor::Session { csrf })
                if !matches!(*req.method(), Method::GET | Method::HEAD)
                    && headers.get("x-csrf-token").and_then(|v| v.to_str().ok()) != Some(csrf.as_str()) =>
            {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token header (GET /api/v1/session gives it)",
                )
                .into_response()
            }
            Some(actor) => {
                req.extensions_mut().insert(actor);
                next.run(req).await
            }
        }
    };
    let class = (res.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.api.by_class[class].fetch_add(1, Ordering::Relaxed);
    let h = res.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    if state.tls {
        h.insert("strict-transport-security", HeaderValue::from_static("max-age=31536000"));
    }
    if path.starts_with("/api/") && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Body of `POST /api/v1/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// The admin password.
    pub password: String,
}

async fn login(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let LoginBody { password } = parse_body(&headers, &body)?;
    let worker = Arc::clone(&state);
    let outcome = tokio::task::spawn_blocking(move || worker.auth.login(from.ip(), &password))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "login check failed"))?;
    match outcome {
        Login::Ok { session, csrf } => {
            state.audit("admin", Some(from), "login", json!({}));
            let life = state.auth.session_life().as_secs();
            let secure = if state.tls { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={life}{secure}");
            let mut res = json(StatusCode::OK, json!({ "csrf_token": csrf, "expires_in_s": life }));
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(res)
        }
        Login::Refused => {
            state.api.login_failures.fetch_add(1, Ordering::Relaxed);
            state.audit("-", Some(from), "login-failed", json!({}));
            Err(ApiError::field(StatusCode::UNAUTHORIZED, "password", "wrong password"))
        }
        Login::Limited(retry) => {
            state.api.login_limited.fetch_add(1, Ordering::Relaxed);
            let mut res = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins from {}; retry in {retry} s", from.ip()),
            )
            .into_response();
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
            Ok(res)
        }
    }
}

async fn logout(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(session) = cookie_value(&headers, COOKIE) {
        state.auth.logout(session);
        state.audit("admin", Some(from), "logout", json!({}));
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn session(State(state): Shared, axum::Extension(actor): axum::Extension<Actor>) -> Response {
    let csrf = match &actor {
        Actor::Session { csrf } => Value::String(csrf.clone()),
        Actor::Token { .. } => Value::Null,
    };
    json(
        StatusCode::OK,
        json!({ "actor": actor.name(), "csrf_token": csrf, "expires_in_s": state.auth.session_life().as_secs() }),
    )
}

fn current_segment(channel: &Channel) -> i64 {
    let status = &channel.taps.status;
    let frames = i64::from(status.segment_frames.load(Ordering::Relaxed).max(1));
    status.capture.frame.load(Ordering::Relaxed).div_euclid(frames)
}

async fn status(State(state): Shared) -> Response {
    let first = state.ctx.channels.first();
    let s = &first.taps.status;
    let view = state.ctx.swarm.as_ref().map(|sw| sw.view());
    let clock = lock(&s.clock).clone();
    let swarm = match &view {
        Some(v) => json!({
            "enabled": true,
            "leader": v.leader,
            "isolated": v.isolated,
            "members": v.peers.values().filter(|p| p.alive).count() + 1,
            "healthy": v.peers.values().filter(|p| p.healthy).count() + 1,
        }),
        None => json!({ "enabled": false, "leader": null, "isolated": false, "members": 1, "healthy": 1 }),
    };
    json(
        StatusCode::OK,
        json!({
            "appliance": state.ctx.config.appliance.id,
            "version": env!("CARGO_PKG_VERSION"),
            "image_version": image_version(),
            "hostname": hostname(),
            "role": state.ctx.config.appliance.role,
            "pid": std::process::id(),
            "watchdog_s": crate::systemd::watchdog_period().map(|w| w.as_secs_f64()),
            "provisioning": crate::provision::last_status(),
            "uptime_s": state.started.elapsed().as_secs(),
            "channel": {
                "id": first.id,
                "running": s.running.load(Ordering::Relaxed),
                "frame": s.capture.frame.load(Ordering::Relaxed),
                "segment": current_segment(&first),
            },
            "channels": state.ctx.channels.all().len(),
            "clock": clock,
            "encode_latency_ms": s.encode_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
            "write_errors": s.write_errors.load(Ordering::Relaxed),
            "frames_captured": s.capture.frames_captured.load(Ordering::Relaxed),
            "frames_dropped": s.capture.frames_dropped.load(Ordering::Relaxed),
            "swarm": swarm,
        }),
    )
}

/// The image version stamped into an appliance image, if this runs in one.
fn image_version() -> Option<String> {
    std::fs::read_to_string(crate::provision::IMAGE_VERSION_FILE).ok().map(|s| s.trim().to_string())
}

/// The host name (the provisioned identity on an appliance).
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string())
}

/// Channel `id`, or a 404 naming the channels there are.
pub(super) fn check_channel(state: &AppState, id: &str) -> Result<Arc<Channel>, ApiError> {
    state.ctx.channels.get(id).ok_or_else(|| {
        let ours: Vec<String> = state.ctx.channels.all().iter().map(|c| format!("`{}`", c.id)).collect();
        ApiError::field(
            StatusCode::NOT_FOUND,
            "id",
            format!("no channel `{id}` here (this appliance runs {})", ours.join(", ")),
        )
    })
}

/// The origin's URL as the client can reach it: a wildcard listen address
/// is replaced by the host the client used for this API.
fn origin_url(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let addr = state.ctx.origin?;
    if !addr.ip().is_unspecified() {
        return Some(format!("http://{addr}"));
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let name = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h).to_string(),
    };
    Some(format!("http://{name}:{}", addr.port()))
}

fn channel_json(state: &AppState, ch: &Channel, headers: &HeaderMap) -> Value {
    let config = &ch.supervisor.config();
    let s = &ch.taps.status;
    let segment = current_segment(ch);
    let control = &ch.taps.control;
    let resolved = lock(&s.ladder).clone();
    let rows = lock(&state.rows);
    let no_rows = BTreeMap::new();
    let segments = rows.get(&ch.id).map_or(&no_rows, |r| &r.segments);
    let renditions: Vec<Value> = config
        .renditions
        .iter()
        .map(|r| {
            let size = resolved.iter().find(|x| x.name == r.name);
            let recent: Vec<&super::SegmentRow> = segments.get(&r.name).map(|v| v.iter().collect()).unwrap_or_default();
            let last: Vec<f64> = recent.iter().rev().take(2).map(|x| x.kbps).collect();
            let measured = (!last.is_empty()).then(|| last.iter().sum::<f64>() / last.len() as f64);
            json!({
                "name": r.name,
                "width": size.map(|x| x.width),
                "height": size.map_or(r.height, |x| x.height),
                "configured_kbps": r.bitrate_kbps,
                "bitrate_kbps": control.bitrate_kbps(&r.name, segment).unwrap_or(r.bitrate_kbps),
                "measured_kbps": measured,
                "pending": control.pending(segment).into_iter().filter(|c| c.rendition == r.name).collect::<Vec<_>>(),
                "recent": recent.iter().rev().take(10).rev().collect::<Vec<_>>(),
            })
        })
        .collect();
    drop(rows);
    let combined = state.ctx.swarm.is_some() && state.ctx.origin.is_some();
    let id = &config.channel.id;
    let running = s.running.load(Ordering::Relaxed);
    json!({
        "id": id,
        "first": ch.first,
        "swarm": state.ctx.swarm.is_some(),
        "running": running,
        "error": if running { None } else { lock(&s.run_error).clone() },
        "segment_seconds": config.channel.segment_seconds,
        "current_segment": segment,
        "source": source_json(ch),
        "renditions": renditions,
        "audio": { "enabled": config.audio.enabled, "bitrate_kbps": config.audio.bitrate_kbps },
        "playlists": {
            "own": format!("/{id}/master.m3u8"),
            "combined": combined.then(|| format!("/combined/{id}/master.m3u8")),
        },
        "origin": origin_url(state, headers),
    })
}

fn source_json(ch: &Channel) -> Value {
    let config = &ch.supervisor.config();
    let status = &ch.taps.status;
    let info = lock(&status.source).clone();
    json!({
        "channel": config.channel.id,
        "kind": match config.source.kind {
            crate::config::SourceKind::Test => "test",
            crate::config::SourceKind::File => "file",
            crate::config::SourceKind::V4l2 => "v4l2",
        },
        "path": config.source.path,
        "device": (config.source.kind == crate::config::SourceKind::V4l2).then(|| config.source.device.clone()),
        "input_fault": lock(&status.capture.input_fault).clone(),
        "input_faults": status.capture.input_faults.load(Ordering::Relaxed),
        "frames": {
            "in_place": status.capture.frames_in_place.load(Ordering::Relaxed),
            "converted": status.capture.frames_converted.load(Ordering::Relaxed),
            "copied": status.capture.frames_copied.load(Ordering::Relaxed),
            "substituted": status.capture.frames_substituted.load(Ordering::Relaxed),
        },
        "description": info.as_ref().map(|i| i.description.clone()),
        "width": info.as_ref().map(|i| i.width),
        "height": info.as_ref().map(|i| i.height),
        "fps": info.as_ref().map_or_else(|| config.source.fps.clone(), |i| i.fps.clone()),
        "live": info.as_ref().map(|i| i.live),
    })
}

async fn channels(State(state): Shared, headers: HeaderMap) -> Response {
    let all = state.ctx.channels.all();
    json(StatusCode::OK, Value::Array(all.iter().map(|c| channel_json(&state, c, &headers)).collect()))
}

async fn channel(State(state): Shared, Path(id): Path<String>, headers: HeaderMap) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    Ok(json(StatusCode::OK, channel_json(&state, &ch, &headers)))
}

/// The error answer for a refused channel change.
pub(super) fn channel_error(e: ChannelError) -> ApiError {
    match e {
        ChannelError::Invalid(e) => config_error(e),
        ChannelError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        ChannelError::Missing(id) => {
            ApiError::field(StatusCode::NOT_FOUND, "id", format!("no channel `{id}` on this appliance"))
        }
        ChannelError::Start(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("channel not started: {m}")),
    }
}

/// A configuration error as a 422 naming its key.
pub(super) fn config_error(e: crate::config::ConfigError) -> ApiError {
    match e {
        crate::config::ConfigError::Invalid { key, message } => {
            ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, &key, format!("{key}: {message}"))
        }
        other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

/// `POST /api/v1/channels`: a new channel (a `[[channels]]` entry as
/// JSON), started unless `start` is false, and saved to the config file.
async fn create_channel(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let spec: ChannelSpec = parse_body(&headers, &body)?;
    let config = state.ctx.channels.first().supervisor.config().with_channel(&spec);
    config.validate().map_err(config_error)?;
    super::settings::source_present(&config)?;
    let channels = Arc::clone(&state.ctx.channels);
    let ch = tokio::task::spawn_blocking(move || channels.add(&spec))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "channel creation failed"))?
        .map_err(channel_error)?;
    let detail = json!({ "channel": ch.id, "body": serde_json::from_slice::<Value>(&body).ok() });
    state.audit(&actor.name(), Some(from), "channel-create", detail);
    state.events.push(
        "channel",
        Some(&state.ctx.config.appliance.id),
        format!("channel {} created (by {})", ch.id, actor.name()),
    );
    let saved = super::settings::save(&state).await;
    let mut body = channel_json(&state, &ch, &headers);
    body["saved"] = serde_json::to_value(saved).unwrap_or_default();
    Ok(json(StatusCode::CREATED, body))
}

/// `DELETE /api/v1/channels/{id}`: stops the channel and removes it from
/// the appliance and its config file; its segments stay on disk.
async fn delete_channel(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    check_channel(&state, &id)?;
    let channels = Arc::clone(&state.ctx.channels);
    let gone = id.clone();
    tokio::task::spawn_blocking(move || channels.remove(&gone))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "channel deletion failed"))?
        .map_err(channel_error)?;
    state.audit(&actor.name(), Some(from), "channel-delete", json!({ "channel": id }));
    state.events.push(
        "channel",
        Some(&state.ctx.config.appliance.id),
        format!("channel {id} deleted (by {})", actor.name()),
    );
    let saved = super::settings::save(&state).await;
    Ok(json(StatusCode::OK, json!({ "deleted": id, "saved": saved })))
}

/// Body of `PATCH /api/v1/channels/{id}/renditions/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenditionPatch {
    /// New target bitrate, kbit/s.
    pub bitrate_kbps: u32,
}

/// The segment a change made now applies from on every node.
pub(super) fn apply_from(ch: &Channel) -> i64 {
    current_segment(ch) + crate::control::lead_segments(ch.supervisor.config().channel.segment_seconds)
}

async fn set_rendition(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let running = ch.supervisor.config();
    if !running.renditions.iter().any(|r| r.name == name) {
        let names: Vec<&str> = running.renditions.iter().map(|r| r.name.as_str()).collect();
        return Err(ApiError::field(
            StatusCode::NOT_FOUND,
            "name",
            format!("no rendition `{name}` (the ladder has {})", names.join(", ")),
        ));
    }
    let RenditionPatch { bitrate_kbps } = parse_body(&headers, &body)?;
    if !BITRATE_KBPS.contains(&bitrate_kbps) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bitrate_kbps",
            format!("bitrate_kbps {bitrate_kbps}: allowed {} to {}", BITRATE_KBPS.start(), BITRATE_KBPS.end()),
        ));
    }
    let change = LadderChange {
        from_segment: apply_from(&ch),
        revision: unix_ms(),
        origin: state.ctx.config.appliance.id.clone(),
        rendition: name.clone(),
        bitrate_kbps,
    };
    ch.taps.control.add(change.clone());
    let detail =
        json!({ "channel": id, "rendition": name, "bitrate_kbps": bitrate_kbps, "from_segment": change.from_segment });
    state.audit(&actor.name(), Some(from), "set-bitrate", detail.clone());
    state.events.push(
        "ladder",
        Some(&state.ctx.config.appliance.id),
        format!("{id}/{name}: {bitrate_kbps} kbit/s from segment {} (by {})", change.from_segment, actor.name()),
    );
    let mut body = detail;
    body["swarm_wide"] = Value::Bool(state.ctx.swarm.is_some());
    body["saved"] = serde_json::to_value(super::settings::save(&state).await).unwrap_or_default();
    Ok(json(StatusCode::ACCEPTED, body))
}

/// The API's answer to a command the supervisor refused: 409 when the
/// channel must run first, 503 when trying again later may work.
pub(super) fn command_error(e: CommandError) -> ApiError {
    let code = match e {
        CommandError::NotRunning => StatusCode::CONFLICT,
        CommandError::ChangePending | CommandError::Busy | CommandError::NoAnswer(_) => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(code, e.to_string())
}

/// Sends `cmd` to channel `id`'s supervisor off the async runtime.
pub(super) async fn ask(ch: &Channel, cmd: ChannelCommand) -> Result<crate::command::Answer, ApiError> {
    let supervisor = ch.supervisor.clone();
    tokio::task::spawn_blocking(move || supervisor.ask(cmd, COMMAND_TIMEOUT))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "channel command failed"))?
        .map_err(command_error)
}

async fn command(state: Arc<AppState>, actor: Actor, from: SocketAddr, id: String, cmd: ChannelCommand) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let name = cmd.name();
    let starts = match cmd {
        ChannelCommand::Start => Some(true),
        ChannelCommand::Stop => Some(false),
        _ => None,
    };
    let running = match ask(&ch, cmd).await? {
        crate::command::Answer::Running(running) => running,
        other => return Err(command_error(CommandError::Unexpected(other))),
    };
    // Saved with the configuration (the saver follows within a second).
    if let Some(starts) = starts {
        ch.set_starts(starts);
    }
    state.audit(&actor.name(), Some(from), name, json!({ "channel": id }));
    Ok(json(StatusCode::OK, json!({ "running": running })))
}

async fn start_channel(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    command(state, actor, from, id, ChannelCommand::Start).await
}

async fn stop_channel(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult {
    command(state, actor, from, id, ChannelCommand::Stop).await
}

fn control_json(c: &lockstep_v4l2::ControlInfo) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "kind": c.kind,
        "minimum": c.minimum,
        "maximum": c.maximum,
        "default": c.default,
        "value": c.value,
        "menu": c.menu.iter().map(|(v, n)| json!({"value": v, "name": n})).collect::<Vec<_>>(),
    })
}

fn device_error(e: lockstep_v4l2::V4l2Error) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

/// The capture device's controls (brightness, input signal modes, ...);
/// an empty list for sources that are not devices.
async fn source_controls(State(state): Shared, Path(id): Path<String>) -> ApiResult {
    let config = &check_channel(&state, &id)?.supervisor.config();
    if config.source.kind != crate::config::SourceKind::V4l2 {
        return Ok(json(StatusCode::OK, json!({ "channel": id, "device": null, "controls": [] })));
    }
    let device = config.source.device.clone();
    let path = device.clone();
    let list = tokio::task::spawn_blocking(move || lockstep_v4l2::device_controls(&path))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "control query failed"))?
        .map_err(device_error)?;
    Ok(json(
        StatusCode::OK,
        json!({ "channel": id, "device": device, "controls": list.iter().map(control_json).collect::<Vec<_>>() }),
    ))
}

/// Body of `PATCH /api/v1/channels/{id}/source/controls`: the control by
/// id or by name, and its new value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetControl {
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    name: Option<String>,
    value: i64,
}

/// Sets one control of the capture device, live. Audited.
async fn set_source_control(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let SetControl { id: control_id, name, value } = parse_body(&headers, &body)?;
    if control_id.is_some() == name.is_some() {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
            "give the control's `id` or its `name`, not both",
        ));
    }
    let config = &ch.supervisor.config();
    if config.source.kind != crate::config::SourceKind::V4l2 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("channel `{id}`'s source is not a capture device: it has no controls"),
        ));
    }
    enum Outcome {
        Missing,
        OutOfRange(lockstep_v4l2::ControlInfo),
        Set(lockstep_v4l2::ControlInfo),
    }
    let path = config.source.device.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Outcome, lockstep_v4l2::V4l2Error> {
        let list = lockstep_v4l2::device_controls(&path)?;
        let found = list.into_iter().find(|c| Some(c.id) == control_id || name.as_deref() == Some(c.name.as_str()));
        let Some(control) = found else { return Ok(Outcome::Missing) };
        if control.kind != "button" && !(control.minimum..=control.maximum).contains(&value) {
            return Ok(Outcome::OutOfRange(control));
        }
        lockstep_v4l2::set_device_control(&path, control.id, value)?;
        if control.kind == "button" {
            // Pressed; a button may take the device away (a disconnect
            // drill), so it is not read back.
            return Ok(Outcome::Set(control));
        }
        let now = lockstep_v4l2::device_controls(&path)?.into_iter().find(|c| c.id == control.id);
        Ok(Outcome::Set(now.unwrap_or(control)))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "control change failed"))?
    .map_err(device_error)?;
    let control = match outcome {
        Outcome::Missing => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "the device has no such control (GET the list)"));
        }
        Outcome::OutOfRange(c) => {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "value",
                format!("`{}`: {value} is outside {}..={}", c.name, c.minimum, c.maximum),
            ));
        }
        Outcome::Set(c) => c,
    };
    let detail = json!({ "channel": id, "control": control.name, "id": control.id, "value": value });
    state.audit(&actor.name(), Some(from), "source-control", detail);
    state.events.push(
        "config",
        Some(&state.ctx.config.appliance.id),
        format!("channel {id}: capture control `{}` set to {value} (by {})", control.name, actor.name()),
    );
    Ok(json(StatusCode::OK, control_json(&control)))
}

fn clock_json(state: &AppState) -> Value {
    let first = state.ctx.channels.first();
    let s = &first.taps.status;
    let configured = state.ctx.config.clock.fault;
    let fault = lock(&s.clock_fault).unwrap_or(configured);
    let quality = lock(&s.media_clock).as_ref().map(|c| crate::clock::MediaClock::quality(c.as_ref()));
    json!({ "quality": quality, "fault": fault, "fault_from_api": lock(&s.clock_fault).is_some() })
}

async fn clock(State(state): Shared) -> Response {
    json(StatusCode::OK, clock_json(&state))
}

/// This appliance's health agents now (`crate::health`): CPU, memory and
/// I/O pressure, its cgroup's CPU and memory against their limits, and
/// per channel its encoder's deadline slack with its trend and its
/// output's disk space and write errors.
async fn health(State(state): Shared) -> Response {
    let node = tokio::task::spawn_blocking(crate::health::NodeHealth::sample).await.unwrap_or_default();
    let channels: Vec<Value> = state
        .ctx
        .channels
        .all()
        .iter()
        .map(|ch| {
            let status = &ch.taps.status;
            let disk = crate::health::Disk::of(&ch.supervisor.config().output.dir);
            json!({
                "channel": ch.id,
                "running": status.running.load(Ordering::Relaxed),
                "deadline_slack": lock(&status.slack).summary(),
                "output": disk.map(|d| json!({ "free_bytes": d.free_bytes, "total_bytes": d.total_bytes, "used": d.used() })),
                "write_errors": status.write_errors.load(Ordering::Relaxed),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        json!({
            "node": state.ctx.config.appliance.id,
            "pressure_scope": node.pressure_scope,
            "pressure": node.pressure,
            "cgroup": node.cgroup,
            "memory": node.memory,
            "channels": channels,
            "edges": edge_figures(&state),
        }),
    )
}

/// A handler's query string as axum extracts it: read with [`query`].
type QueryOf<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// A query string's fields, or a 400 naming what is wrong with it.
fn query<T>(q: QueryOf<T>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// A series; every series' name when left out.
    series: Option<String>,
    /// How far back, seconds (default 600).
    since_s: Option<u64>,
}

/// The health agents' figures over time (`crate::history`): the series
/// recorded, or one series over the last `since_s` seconds — raw samples
/// while they are kept, else each minute's mean, smallest and largest.
async fn health_history(State(state): Shared, q: QueryOf<HistoryQuery>) -> ApiResult {
    let HistoryQuery { series, since_s } = query(q)?;
    let Some(store) = state.ctx.history.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no history on this appliance (history.enabled = false)"));
    };
    let days = state.ctx.config.history.days;
    let since_s = since_s.unwrap_or(600);
    if since_s == 0 || since_s > u64::from(days) * 86_400 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("since_s: 1 to {} (history.days = {days})", u64::from(days) * 86_400),
        ));
    }
    let answer = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let failed = |e: redb::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("history: {e}"));
        let known = store.series().map_err(failed)?;
        let Some(name) = series else { return Ok(json!({ "series": known })) };
        if !known.iter().any(|s| s.name == name) {
            return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no series `{name}` in the history")));
        }
        let now = crate::history::now_ms();
        let span = store.span(&name, now.saturating_sub(since_s * 1000), now, now).map_err(failed)?;
        Ok(json!({ "series": name, "resolution": span.resolution, "points": span.points }))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("history: {e}")))??;
    Ok(json(StatusCode::OK, answer))
}

/// Every edge's figures and judgement (empty without `[steering]`).
fn edge_figures(state: &AppState) -> Vec<Value> {
    let figures = state.ctx.edges.as_ref().map(|a| a.figures()).unwrap_or_default();
    figures
        .into_iter()
        .map(|f| {
            let judged = crate::health::chain::edge(&f);
            json!({ "figures": f, "state": judged.state, "reasons": judged.reasons })
        })
        .collect()
}

/// Replaces the media clock's injected fault (drills): applies now to the
/// running clock, and to the clock of every later run of the pipeline.
async fn set_clock_fault(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let fault: crate::config::ClockFaultConfig = parse_body(&headers, &body)?;
    fault.check().map_err(|(field, message)| {
        ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, format!("{field}: {message}"))
    })?;
    // Every channel's pipeline keeps to the appliance's clock.
    for ch in state.ctx.channels.all() {
        ask(&ch, ChannelCommand::ClockFault(fault)).await?;
    }
    let detail = serde_json::to_value(fault).unwrap_or_default();
    state.audit(&actor.name(), Some(from), "set-clock-fault", detail);
    let what =
        if fault == crate::config::ClockFaultConfig::default() { "cleared".to_string() } else { format!("{fault:?}") };
    state.events.push(
        "clock",
        Some(&state.ctx.config.appliance.id),
        format!("clock fault injection {what} (by {})", actor.name()),
    );
    Ok(json(StatusCode::OK, clock_json(&state)))
}

/// What `lockstep devices` prints: capture devices, encoder backends, PHCs.
async fn devices() -> ApiResult {
    let report = tokio::task::spawn_blocking(crate::devices::report)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "device discovery failed"))?;
    Ok(json(StatusCode::OK, report))
}

async fn sources(State(state): Shared) -> Response {
    json(StatusCode::OK, Value::Array(state.ctx.channels.all().iter().map(|c| source_json(c)).collect()))
}

async fn outputs(State(state): Shared, headers: HeaderMap) -> Response {
    let origin = origin_url(&state, &headers);
    let list: Vec<Value> =
        state.ctx.channels.all().iter().map(|ch| output_json(&state, ch, origin.as_deref())).collect();
    json(StatusCode::OK, Value::Array(list))
}

fn output_json(state: &AppState, ch: &Channel, origin: Option<&str>) -> Value {
    let config = &ch.supervisor.config();
    let id = &config.channel.id;
    let combined = state.ctx.swarm.is_some() && state.ctx.origin.is_some();
    json!({
            "channel": id,
            "dir": config.output.dir.join(id),
            "mode": match config.output.mode { crate::config::OutputMode::Archive => "archive", _ => "live" },
            "window_segments": config.output.window_segments,
            "free_bytes": crate::health::Disk::of(&config.output.dir).map(|d| d.free_bytes),
            "origin": origin,
            "playlists": {
                "own": format!("/{id}/master.m3u8"),
                "combined": combined.then(|| format!("/combined/{id}/master.m3u8")),
            },
            "write_errors": ch.taps.status.write_errors.load(Ordering::Relaxed),
    })
}

/// A member as the API shows it. The frame, timecode, complexity,
/// latency and weight at the top are those of this appliance's first
/// channel (`null` when the member does not encode it); `channels` lists
/// every channel it encodes, with its deviation from this node on each
/// channel both run. `weights` are as this node uses them (0 for an
/// unhealthy peer).
fn member_json(
    state: &crate::swarm::state::EncodingState,
    first: &str,
    weights: &BTreeMap<String, f32>,
    decisions: &BTreeMap<String, crate::swarm::decide::ChannelDecisions>,
    flags: [bool; 4],
) -> Value {
    let [me, alive, healthy, leader] = flags;
    let own = state.channel(first);
    let weight = |id: &str| weights.get(id).copied().unwrap_or(0.0);
    let channels: Vec<Value> = state
        .channels
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "weight": weight(&c.id),
                "frame": c.frame,
                "timecode": c.timecode,
                "complexity": c.complexity,
                "encode_latency_ms": c.encode_latency_ms,
                "segment": c.segments.last().map(|s| s.index),
                "deviation": decisions.get(&c.id).and_then(|d| d.deviations.get(&state.node)),
            })
        })
        .collect();
    json!({
        "node": state.node,
        "self": me,
        "alive": alive,
        "healthy": healthy,
        "leader": leader,
        "weight": own.map(|c| weight(&c.id)),
        "confidence": state.confidence,
        "clock": state.clock,
        "load": state.load,
        "frame": own.map(|c| c.frame),
        "timecode": own.map(|c| &c.timecode),
        "complexity": own.map(|c| c.complexity),
        "uptime_s": state.uptime_s,
        "recent_errors": state.recent_errors,
        "origin": state.origin,
        "encode_latency_ms": own.map(|c| c.encode_latency_ms),
        "isolated": state.isolated,
        "channels": channels,
        "outlook": state.outlook,
    })
}

async fn swarm(State(state): Shared) -> Response {
    let Some(sw) = state.ctx.swarm.as_ref() else {
        return json(
            StatusCode::OK,
            json!({ "enabled": false, "node": state.ctx.config.appliance.id, "leader": null, "group": [], "isolated": false, "members": [], "packets": {} }),
        );
    };
    let v = sw.view();
    let first = state.ctx.channels.first().id.clone();
    let is_leader = |node: &str| v.leader.as_deref() == Some(node);
    let mut members: Vec<Value> = v
        .peers
        .values()
        .map(|p| {
            let flags = [false, p.alive, p.healthy, is_leader(&p.state.node)];
            let mut m = member_json(&p.state, &first, &p.weights, &v.channels, flags);
            m["latency_ms"] = json!(p.latency_ms);
            m["jitter_ms"] = json!(p.jitter_ms);
            m["state_age_ms"] = json!(p.state_age_ms);
            m["neighbour"] = json!(p.neighbour);
            m["throughput_mbps"] = json!(p.throughput_mbps);
            m
        })
        .collect();
    if let Some(me) = &v.me {
        let weights: BTreeMap<String, f32> = me.channels.iter().map(|c| (c.id.clone(), c.weight)).collect();
        let mut m = member_json(me, &first, &weights, &v.channels, [true, true, !v.isolated, is_leader(&me.node)]);
        m["latency_ms"] = json!(me.neighbour_latency_ms);
        m["jitter_ms"] = json!(me.neighbour_jitter_ms);
        m["state_age_ms"] = json!(0);
        members.push(m);
    }
    members.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    json(
        StatusCode::OK,
        json!({
            "enabled": true,
            "node": v.node,
            "channel": first,
            "leader": v.leader,
            "group": v.group,
            "isolated": v.isolated,
            "members": members,
            "packets": v.packets,
            "resync": v.resync,
            "standby": v.standby,
        }),
    )
}

fn in_range(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "limit", format!("limit {n}: allowed 1 to {max}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlignmentQuery {
    limit: Option<usize>,
    /// The channel; the first when left out.
    channel: Option<String>,
}

async fn alignment(State(state): Shared, q: QueryOf<AlignmentQuery>) -> ApiResult {
    let AlignmentQuery { limit, channel } = query(q)?;
    let n = in_range(limit, 12, 200)?;
    let Some(sw) = state.ctx.swarm.as_ref() else {
        return Ok(json(StatusCode::OK, json!({ "nodes": [state.ctx.config.appliance.id], "rows": [] })));
    };
    let v = sw.view();
    let channel = swarm_channel(&state, &v, channel)?;
    let selection = v.channels.get(&channel).map(|c| &c.selection);
    // Every node's hash per (index, track), from its state packets.
    let mut hashes: BTreeMap<(i64, String), BTreeMap<String, String>> = BTreeMap::new();
    let states = v.peers.values().map(|p| &p.state).chain(v.me.iter());
    let mut nodes: Vec<String> = Vec::new();
    for s in states {
        let Some(report) = s.channel(&channel) else { continue };
        nodes.push(s.node.clone());
        for seg in &report.segments {
            for (track, h) in &seg.tracks {
                hashes.entry((seg.index, track.clone())).or_default().insert(s.node.clone(), hex::encode(&h[..6]));
            }
        }
    }
    nodes.sort();
    let mut rows = Vec::new();
    for ((index, track), by_node) in hashes.iter().rev() {
        if rows.len() >= n * 8 {
            break;
        }
        let chosen = selection.and_then(|s| s.get(index)).and_then(|t| t.get(track)).cloned();
        let first = by_node.values().next();
        let agree = by_node.values().all(|h| Some(h) == first);
        rows.push(json!({ "index": index, "track": track, "chosen": chosen, "agree": agree, "hashes": by_node }));
    }
    // `limit` counts indices: keep every track of the newest `n`.
    let indices: Vec<i64> = {
        let mut i: Vec<i64> = hashes.keys().map(|(i, _)| *i).collect();
        i.dedup();
        i.into_iter().rev().take(n).collect()
    };
    rows.retain(|r| r["index"].as_i64().is_some_and(|i| indices.contains(&i)));
    Ok(json(StatusCode::OK, json!({ "channel": channel, "nodes": nodes, "rows": rows })))
}

/// The channel a swarm query names (the first of this appliance when it
/// names none). A channel this appliance does not encode may still be
/// encoded by peers: it is known when the swarm decided on it.
fn swarm_channel(state: &AppState, v: &crate::swarm::View, channel: Option<String>) -> Result<String, ApiError> {
    match channel {
        Some(id) if state.ctx.channels.get(&id).is_none() && !v.channels.contains_key(&id) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("no channel `{id}` on this appliance or its swarm")))
        }
        Some(id) => Ok(id),
        None => Ok(state.ctx.channels.first().id.clone()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelQuery {
    /// The channel; the first when left out.
    channel: Option<String>,
}

/// A channel's encoding chain as this node sees it: its source, encoder,
/// packager and origin, the encoders of the peers that run the channel
/// (whose replicas the combined output may take), the links between them,
/// and each component's state judged from its health agents
/// (`crate::health::chain`).
async fn chain(State(state): Shared, q: QueryOf<ChannelQuery>) -> ApiResult {
    use crate::health::chain::{self, Judged};
    let ChannelQuery { channel } = query(q)?;
    let ch = match channel {
        Some(id) => check_channel(&state, &id)?,
        None => state.ctx.channels.first(),
    };
    let node = tokio::task::spawn_blocking(crate::health::NodeHealth::sample).await.unwrap_or_default();
    let me = state.ctx.config.appliance.id.clone();
    let config = ch.supervisor.config();
    let segment_ms = config.channel.segment_seconds * 1000.0;
    let status = &ch.taps.status;
    let running = status.running.load(Ordering::Relaxed);
    let component = |id: String, kind: &str, node: &str, judged: Judged, figures: Value| json!({ "id": id, "kind": kind, "node": node, "state": judged.state, "reasons": judged.reasons, "figures": figures });
    let fault = lock(&status.capture.input_fault).clone();
    let slack = lock(&status.slack).summary();
    let cpu_pressure = node.pressure.cpu.map(|p| p.some_avg10);
    let disk = crate::health::Disk::of(&config.output.dir);
    let write_errors = status.write_errors.load(Ordering::Relaxed);
    let by_class = &state.ctx.origin_metrics.by_class;
    let requests: u64 = by_class.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let server_errors = by_class[4].load(Ordering::Relaxed);
    let (source_id, encoder_id, packager_id, origin_id) =
        (format!("source:{me}"), format!("encoder:{me}"), format!("packager:{me}"), format!("origin:{me}"));
    let mut components = vec![
        component(
            source_id.clone(),
            "source",
            &me,
            chain::source(running, fault.as_deref()),
            json!({ "source": config.source.kind, "input_faults": status.capture.input_faults.load(Ordering::Relaxed) }),
        ),
        component(
            encoder_id.clone(),
            "encoder",
            &me,
            chain::encoder(running, slack.as_ref(), segment_ms, cpu_pressure, node.memory),
            json!({
                "deadline_slack": slack,
                "encode_latency_ms": status.encode_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
                "cpu_pressure": cpu_pressure,
                "cpu_limit": node.cgroup.as_ref().and_then(|c| c.cpu_limit),
                "memory": node.memory,
            }),
        ),
        component(
            packager_id.clone(),
            "packager",
            &me,
            chain::packager(disk, write_errors),
            json!({
                "output": disk.map(|d| json!({ "free_bytes": d.free_bytes, "total_bytes": d.total_bytes, "used": d.used() })),
                "write_errors": write_errors,
            }),
        ),
        component(
            origin_id.clone(),
            "origin",
            &me,
            chain::origin(state.ctx.origin.is_some(), requests, server_errors),
            json!({
                "url": state.ctx.origin.map(|a| format!("http://{a}/")),
                "requests": requests,
                "server_errors": server_errors,
            }),
        ),
    ];
    let link = |from: &str, to: &str| json!({ "from": from, "to": to });
    let mut links =
        vec![link(&source_id, &encoder_id), link(&encoder_id, &packager_id), link(&packager_id, &origin_id)];
    // The peers that run the channel: their replicas reach the combined
    // output of this node's origin.
    if let Some(sw) = state.ctx.swarm.as_ref() {
        let v = sw.view();
        for p in v.peers.values() {
            let Some(c) = p.state.channel(&ch.id) else { continue };
            let id = format!("encoder:{}", p.state.node);
            components.push(component(
                id.clone(),
                "encoder",
                &p.state.node,
                chain::peer_encoder(p.healthy, c.encode_latency_ms, segment_ms),
                json!({ "encode_latency_ms": c.encode_latency_ms, "weight": p.weights.get(&ch.id) }),
            ));
            links.push(link(&id, &origin_id));
        }
    }
    // The CDN edges players are steered between, in front of the origins.
    for e in edge_figures(&state) {
        let id = format!("edge:{}", e["figures"]["id"].as_str().unwrap_or_default());
        components.push(json!({
            "id": id,
            "kind": "edge",
            "node": e["figures"]["id"],
            "state": e["state"],
            "reasons": e["reasons"],
            "figures": e["figures"],
        }));
        links.push(link(&origin_id, &id));
    }
    // The failure prediction of this node's components, where a model
    // scores them.
    if let Some(p) = &state.ctx.predictor {
        for c in &mut components {
            let key = match (c["kind"].as_str(), c["node"] == me.as_str()) {
                (Some("encoder"), true) => format!("encoder:{}", ch.id),
                (Some("packager"), _) => format!("packager:{}", ch.id),
                (Some("edge"), _) => c["id"].as_str().unwrap_or_default().to_owned(),
                _ => continue,
            };
            if let Some(r) = p.risk(&key) {
                c["risk"] = json!({ "probability": r.probability, "alarm": r.alarm });
            }
        }
    }
    Ok(json(StatusCode::OK, json!({ "channel": ch.id, "node": me, "components": components, "links": links })))
}

/// The lockstep state of a channel across the swarm, as this node sees
/// it: every node's position (frame, newest segment), its deviation from
/// this node (frame offset, hash disagreements, media clock offset, drift
/// and the predicted time to half a frame) and its last action (its
/// resynchronisation proposal; for this node, where it stands, and its
/// re-encodes).
async fn lockstep(State(state): Shared, q: QueryOf<ChannelQuery>) -> ApiResult {
    let ChannelQuery { channel } = query(q)?;
    let Some(sw) = state.ctx.swarm.as_ref() else {
        let id = channel.unwrap_or_else(|| state.ctx.channels.first().id.clone());
        return Ok(json(StatusCode::OK, json!({ "channel": id, "node": state.ctx.config.appliance.id, "nodes": [] })));
    };
    let v = sw.view();
    let channel = swarm_channel(&state, &v, channel)?;
    let local = state.ctx.channels.get(&channel);
    let frame_ms = local.as_ref().and_then(|c| {
        let frames = c.taps.status.segment_frames.load(Ordering::Relaxed);
        (frames > 0).then(|| c.supervisor.config().channel.segment_seconds * 1000.0 / f64::from(frames))
    });
    let deviations = v.channels.get(&channel).map(|c| &c.deviations);
    let mut nodes = Vec::new();
    let peers = v.peers.values().map(|p| (&p.state, p.healthy, false));
    for (s, healthy, me) in peers.chain(v.me.iter().map(|m| (m, !v.isolated, true))) {
        let Some(report) = s.channel(&channel) else { continue };
        let deviation = deviations.and_then(|d| d.get(&s.node));
        let (action, reencoded) = if me {
            let reencoded = local.as_ref().map(|c| {
                let status = &c.taps.status;
                let last = status.last_reencoded.load(Ordering::Relaxed);
                json!({
                    "segments": status.segments_reencoded.load(Ordering::Relaxed),
                    "refused": status.reencodes_refused.load(Ordering::Relaxed),
                    "last_segment": (last != 0).then_some(last),
                    "before_publication": status.segments_corrected.load(Ordering::Relaxed),
                    "unverified": status.segments_unverified.load(Ordering::Relaxed),
                })
            });
            (v.resync.get(&channel).map(|r| json!(r)), reencoded)
        } else {
            (report.proposal.as_ref().map(|p| json!({ "proposal": p, "outcome": "proposed" })), None)
        };
        nodes.push(json!({
            "node": s.node,
            "self": me,
            "healthy": healthy,
            "frame": report.frame,
            "segment": report.segments.last().map(|x| x.index),
            "frame_offset": if me { Some(0) } else { deviation.and_then(|d| d.frame_offset) },
            "hash_disagreements": deviation.map(|d| d.hash_disagreements),
            "hashes_compared": deviation.map(|d| d.hashes_compared),
            "clock": deviation.and_then(|d| d.clock),
            "action": action,
            "reencoded": reencoded,
        }));
    }
    nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Ok(json(
        StatusCode::OK,
        json!({
            "channel": channel,
            "node": v.node,
            "frame_ms": frame_ms,
            "drift_horizon_s": v.drift_horizon_s,
            "consensus": v.channels.get(&channel).and_then(|c| c.consensus),
            "nodes": nodes,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalysisQuery {
    limit: Option<usize>,
    /// The channel; the first when left out.
    channel: Option<String>,
}

async fn analysis(State(state): Shared, q: QueryOf<AnalysisQuery>) -> ApiResult {
    let AnalysisQuery { limit, channel } = query(q)?;
    let n = in_range(limit, 120, super::ANALYSIS_KEPT)?;
    let ch = match channel {
        Some(id) => check_channel(&state, &id)?,
        None => state.ctx.channels.first(),
    };
    let rows = lock(&state.rows);
    let list: Vec<&super::AnalysisRow> = rows
        .get(&ch.id)
        .map(|r| {
            let skip = r.analysis.len().saturating_sub(n);
            r.analysis.iter().skip(skip).collect()
        })
        .unwrap_or_default();
    Ok(json(StatusCode::OK, json!(list)))
}

async fn history(State(state): Shared) -> Response {
    json(StatusCode::OK, json!({ "samples": state.history.all() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Since {
    since: Option<u64>,
}

async fn events(State(state): Shared, q: QueryOf<Since>) -> ApiResult {
    let Query(Since { since }) =
        q.map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "since", format!("query: {}", e.body_text())))?;
    Ok(json(StatusCode::OK, json!(state.events.since(since.unwrap_or(0)))))
}

async fn event_stream(State(state): Shared) -> Response {
    let rx = state.events.subscribe();
    let tick = tokio::time::interval(Duration::from_secs(1));
    let stream = futures_util::stream::unfold((rx, tick), |(mut rx, mut tick)| async move {
        let event = tokio::select! {
            e = rx.recv() => match e {
                Ok(e) => SseEvent::default().event("log").json_data(&e).unwrap_or_default(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    SseEvent::default().event("lagged").data(format!("{{\"missed\":{n}}}"))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            },
            _ = tick.tick() => SseEvent::default().event("tick").data(format!("{{\"t_ms\":{}}}", unix_ms())),
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, tick)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
