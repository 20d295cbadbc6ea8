//! The drills of the admin API: faults an operator sets off on purpose to
//! see the appliance, the swarm and the prediction deal with them — a hung
//! or slow encoder, a slipped capture, a forged proposal, a slow origin,
//! and the resource drills of [`crate::drill`] (CPU starvation, a memory
//! leak, the output disk filling). Every drill is audited and is an event.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::{ApiError, ApiResult, Shared, ask, check_channel, json, parse_body};
use super::auth::Actor;
use crate::channels::Channel;
use crate::command::ChannelCommand;
use crate::drill::{DrillError, DrillInfo, Kind};

/// Body of `POST /api/v1/channels/{id}/drills/hang`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HangDrill {
    seconds: u32,
}

/// The longest hang drill, s.
const HANG_DRILL_MAX_S: u32 = 600;

/// A drill under way: audited as `action` (with `detail`, also the
/// answer), and a `drill` event saying what it does.
fn drill_done(
    state: &AppState,
    actor: &Actor,
    from: SocketAddr,
    action: &str,
    detail: Value,
    event: String,
) -> Response {
    state.audit(&actor.name(), Some(from), action, detail.clone());
    state.events.push("drill", Some(&state.ctx.config.appliance.id), event);
    json(StatusCode::ACCEPTED, detail)
}

/// A drill's `field` from 1 to `max`.
fn drill_range(field: &'static str, value: u32, max: u32) -> Result<(), ApiError> {
    if (1..=max).contains(&value) {
        return Ok(());
    }
    Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, format!("{field} {value}: allowed 1 to {max}")))
}

/// A drill needs the channel running (`nothing to …` what it would do).
fn drill_running(ch: &Channel, what: &str) -> Result<(), ApiError> {
    if ch.taps.status.running.load(Ordering::Relaxed) {
        return Ok(());
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("channel `{}` is not running; nothing to {what}", ch.id)))
}

/// A hang drill: the channel's capture loop stops for `seconds`, as a
/// wedged data plane would. Under systemd the watchdog pings stop and the
/// service is restarted; that is what the drill proves.
pub(super) async fn hang_drill(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let HangDrill { seconds } = parse_body(&headers, &body)?;
    drill_range("seconds", seconds, HANG_DRILL_MAX_S)?;
    drill_running(&ch, "hang")?;
    ask(&ch, ChannelCommand::Hang(Duration::from_secs(u64::from(seconds)))).await?;
    let watchdog_s = crate::systemd::watchdog_period().map(|w| w.as_secs_f64());
    let detail = json!({ "channel": id, "seconds": seconds, "watchdog_s": watchdog_s });
    Ok(drill_done(
        &state,
        &actor,
        from,
        "hang-drill",
        detail,
        format!("hang drill: channel {id}'s capture stops for {seconds} s (by {})", actor.name()),
    ))
}

/// Body of `POST /api/v1/channels/{id}/drills/latency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyDrill {
    /// Hold per segment, ms.
    ms: u32,
    /// How long the drill lasts.
    seconds: u32,
}

/// Longest hold per segment of a latency drill, ms.
const LATENCY_DRILL_MAX_MS: u32 = 10_000;

/// An encode-latency spike drill: every rendition of the channel holds
/// each segment it finishes `ms` before publishing it, for `seconds`. Its
/// neighbours see its encode latency rise (the deviation's
/// `encode_latency_ms`); a hold longer than the frame pool stalls capture.
pub(super) async fn latency_drill(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let LatencyDrill { ms, seconds } = parse_body(&headers, &body)?;
    drill_range("ms", ms, LATENCY_DRILL_MAX_MS)?;
    drill_range("seconds", seconds, HANG_DRILL_MAX_S)?;
    drill_running(&ch, "delay")?;
    let (hold, lasting) = (Duration::from_millis(u64::from(ms)), Duration::from_secs(u64::from(seconds)));
    ask(&ch, ChannelCommand::LatencySpike { hold, lasting }).await?;
    let detail = json!({ "channel": id, "ms": ms, "seconds": seconds });
    Ok(drill_done(
        &state,
        &actor,
        from,
        "latency-drill",
        detail,
        format!(
            "latency drill: channel {id}'s encoders hold every segment {ms} ms for {seconds} s (by {})",
            actor.name()
        ),
    ))
}

/// Body of `POST /api/v1/drills/origin-latency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginLatencyDrill {
    /// Hold of every answer at the end of the ramp, ms.
    ms: u32,
    /// Seconds the hold takes to grow from 0 to `ms` (0: at once).
    #[serde(default)]
    ramp_s: u32,
    /// How long the drill lasts, ramp included.
    seconds: u32,
}

/// An origin latency drill: every answer of this appliance's origin is
/// held, the hold growing from 0 to `ms` over `ramp_s`, for `seconds` —
/// the edges in front of it (and the edge agents' probes through them)
/// see their upstream degrade, as with a failing network between them.
pub(super) async fn origin_latency_drill(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let OriginLatencyDrill { ms, ramp_s, seconds } = parse_body(&headers, &body)?;
    drill_range("ms", ms, LATENCY_DRILL_MAX_MS)?;
    drill_range("seconds", seconds, HANG_DRILL_MAX_S)?;
    if ramp_s > seconds {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "ramp_s: at most seconds"));
    }
    if state.ctx.origin.is_none() {
        return Err(ApiError::new(StatusCode::CONFLICT, "no origin on this appliance (origin.listen)"));
    }
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    state.ctx.origin_metrics.drill_latency(Duration::from_millis(u64::from(ms)), secs(ramp_s), secs(seconds));
    let detail = json!({ "ms": ms, "ramp_s": ramp_s, "seconds": seconds });
    Ok(drill_done(
        &state,
        &actor,
        from,
        "origin-latency-drill",
        detail,
        format!(
            "origin latency drill: every answer of this origin held up to {ms} ms (reached in {ramp_s} s) for \
             {seconds} s (by {})",
            actor.name()
        ),
    ))
}

/// Body of `POST /api/v1/channels/{id}/drills/slip`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlipDrill {
    frames: i64,
}

/// The frames of a slip or forged-proposal drill: within the offsets the
/// swarm looks for, not 0.
fn drill_frames(headers: &HeaderMap, body: &Bytes) -> Result<i64, ApiError> {
    let SlipDrill { frames } = parse_body(headers, body)?;
    let max = crate::swarm::deviation::MAX_OFFSET;
    if frames == 0 || frames.abs() > max {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "frames",
            format!("frames {frames}: allowed -{max} to {max}, not 0"),
        ));
    }
    Ok(frames)
}

/// A slip drill: the channel's capture slips by `frames` against the
/// shared timeline, as a capture that lost (positive) or gained frames
/// would; its neighbours see the frame offset and the hashes disagree.
/// The built-in test source only (a device or a file slips by itself).
pub(super) async fn slip_drill(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let frames = drill_frames(&headers, &body)?;
    if ch.supervisor.config().source.kind != crate::config::SourceKind::Test {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "channel `{id}`: a slip drill needs the built-in test source (a capture device or file slips by itself)"
            ),
        ));
    }
    drill_running(&ch, "slip")?;
    ask(&ch, ChannelCommand::Slip(frames)).await?;
    let slip = ch.taps.status.capture.slip_frames.load(Ordering::Relaxed);
    let detail = json!({ "channel": id, "frames": frames, "slip_frames": slip });
    Ok(drill_done(
        &state,
        &actor,
        from,
        "slip-drill",
        detail,
        format!(
            "slip drill: channel {id}'s capture slips {} frame{} {} (now {slip} in all; by {})",
            frames.abs(),
            if frames.abs() == 1 { "" } else { "s" },
            if frames > 0 { "late" } else { "early" },
            actor.name()
        ),
    ))
}

/// A forged-proposal drill: this node proposes to realign its capture of
/// the channel by `frames` with made-up evidence. Its neighbours measure
/// no such offset, vote it down, and nothing changes (the outcome shows in
/// `GET /api/v1/swarm` and the events).
pub(super) async fn forged_proposal_drill(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let frames = drill_frames(&headers, &body)?;
    let Some(swarm) = state.ctx.swarm.as_ref() else {
        return Err(ApiError::new(StatusCode::CONFLICT, "this appliance is in no swarm: nobody to propose to"));
    };
    drill_running(&ch, "propose")?;
    swarm.forge_proposal(&id, frames);
    let detail = json!({ "channel": id, "frames": frames });
    Ok(drill_done(
        &state,
        &actor,
        from,
        "forged-proposal-drill",
        detail,
        format!(
            "forged-proposal drill: channel {id}: a realignment by {frames} frames proposed without cause (by {})",
            actor.name()
        ),
    ))
}

/// Body of `POST /api/v1/drills/cpu`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CpuDrill {
    /// CPUs the daemon is left at the end of the ramp.
    cpus: f64,
    /// Seconds the limit takes to come down from every CPU (0: at once).
    #[serde(default)]
    ramp_s: u32,
    /// How long the drill lasts, ramp included.
    seconds: u32,
}

/// Body of `POST /api/v1/drills/memory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryDrill {
    /// MiB leaked at the end of the ramp.
    mb: u32,
    #[serde(default)]
    ramp_s: u32,
    seconds: u32,
}

/// Body of `POST /api/v1/drills/disk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskDrill {
    /// MiB left free on the output's file system at the end of the ramp.
    free_mb: u32,
    #[serde(default)]
    ramp_s: u32,
    seconds: u32,
}

/// The largest leak a memory drill may ask for, MiB.
const MEMORY_DRILL_MAX_MB: u32 = 1 << 20;

/// A resource drill's ramp: `from` to `to` over `ramp_s`, `seconds` long.
fn resource_ramp(from: f64, to: f64, ramp_s: u32, seconds: u32) -> Result<crate::drill::Ramp, ApiError> {
    drill_range("seconds", seconds, HANG_DRILL_MAX_S)?;
    if ramp_s > seconds {
        return Err(ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, "ramp_s", "ramp_s: at most seconds"));
    }
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    Ok(crate::drill::Ramp { from, to, ramp: secs(ramp_s), lasting: secs(seconds) })
}

/// A resource drill about to start.
struct Resource {
    kind: Kind,
    /// What was asked (shown and audited).
    plan: Value,
    ramp: crate::drill::Ramp,
    stress: Box<dyn crate::drill::Stress>,
    /// What it does, for the event.
    says: String,
}

/// Starts a resource drill: audited, an event at its start and its end.
fn start_resource(state: &Arc<AppState>, actor: &Actor, from: SocketAddr, drill: Resource) -> ApiResult {
    let Resource { kind, plan, ramp, stress, says } = drill;
    let (events, node) = (Arc::clone(&state.events), state.ctx.config.appliance.id.clone());
    let on_end = Box::new(move |done: &DrillInfo| {
        let how = done.ended_by.as_deref().map_or_else(|| "ran its course".to_string(), str::to_string);
        events.push("drill", Some(&node), format!("{} drill {} ended ({how}); undone", done.kind, done.id));
    });
    let info = state.ctx.drills.start(kind, plan, ramp, stress, on_end).map_err(|e| {
        let status = match e {
            DrillError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    })?;
    let detail = serde_json::to_value(&info).unwrap_or(Value::Null);
    Ok(drill_done(state, actor, from, &format!("{kind}-drill"), detail, format!("{says} (by {})", actor.name())))
}

/// A CPU starvation drill: the daemon's cgroup CPU limit comes down from
/// every CPU of the machine to `cpus` over `ramp_s`, for `seconds`.
pub(super) async fn cpu(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let CpuDrill { cpus, ramp_s, seconds } = parse_body(&headers, &body)?;
    let all = crate::drill::cpu::cpus();
    if !(cpus > 0.0 && cpus <= all) {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cpus",
            format!("cpus {cpus}: allowed above 0 up to {all} (this machine's)"),
        ));
    }
    let ramp = resource_ramp(all, cpus, ramp_s, seconds)?;
    let own = crate::health::cgroup::Cgroup::own()
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no cgroup v2 on this machine: no CPU limit to lower"))?;
    let limit =
        crate::drill::cpu::CpuLimit::take(&own).map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let plan = json!({ "cpus": cpus, "ramp_s": ramp_s, "seconds": seconds });
    let says = format!("CPU drill: the daemon's CPU limit comes down to {cpus} CPUs over {ramp_s} s, for {seconds} s");
    let stress = Box::new(crate::drill::cpu::CpuStarvation(limit));
    start_resource(&state, &actor, from, Resource { kind: Kind::Cpu, plan, ramp, stress, says })
}

/// A memory-leak drill: the daemon allocates up to `mb` MiB over
/// `ramp_s`, for `seconds` (never past 97 % of its memory limit).
pub(super) async fn memory(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let MemoryDrill { mb, ramp_s, seconds } = parse_body(&headers, &body)?;
    drill_range("mb", mb, MEMORY_DRILL_MAX_MB)?;
    let ramp = resource_ramp(0.0, f64::from(mb) * 1048576.0, ramp_s, seconds)?;
    let plan = json!({ "mb": mb, "ramp_s": ramp_s, "seconds": seconds });
    let says = format!("memory drill: the daemon leaks up to {mb} MiB over {ramp_s} s, for {seconds} s");
    let stress = Box::new(crate::drill::memory::Leak::default());
    start_resource(&state, &actor, from, Resource { kind: Kind::Memory, plan, ramp, stress, says })
}

/// A disk-filling drill: the output's file system fills until `free_mb`
/// MiB are left, over `ramp_s`, for `seconds`.
pub(super) async fn disk(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    use crate::drill::disk::Filler;
    let DiskDrill { free_mb, ramp_s, seconds } = parse_body(&headers, &body)?;
    let dir = state.ctx.config.output.dir.clone();
    let disk = crate::health::Disk::of(&dir).ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: its file system cannot be read", dir.display()))
    })?;
    let fill = Filler::to_leave(disk, u64::from(free_mb) << 20);
    if fill == 0 {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "free_mb",
            format!("free_mb {free_mb}: only {} MiB are free now; nothing to fill", disk.free_bytes >> 20),
        ));
    }
    let ramp = resource_ramp(0.0, fill as f64, ramp_s, seconds)?;
    let filler = Filler::new(&dir).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let plan = json!({ "free_mb": free_mb, "ramp_s": ramp_s, "seconds": seconds, "fill_bytes": fill });
    let says = format!(
        "disk drill: {} fills until {free_mb} MiB are free ({} MiB) over {ramp_s} s, for {seconds} s",
        dir.display(),
        fill >> 20
    );
    start_resource(&state, &actor, from, Resource { kind: Kind::Disk, plan, ramp, stress: Box::new(filler), says })
}

/// `GET /api/v1/drills`: the running resource drills and the last ended.
pub(super) async fn list(State(state): Shared) -> Response {
    let (running, ended) = state.ctx.drills.list();
    json(StatusCode::OK, json!({ "running": running, "ended": ended }))
}

/// `DELETE /api/v1/drills`: ends every running resource drill now.
pub(super) async fn stop_all(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Response {
    let ended = state.ctx.drills.stop_all();
    let detail = json!({ "ended": ended });
    state.audit(&actor.name(), Some(from), "drills-ended", detail.clone());
    if ended > 0 {
        state.events.push(
            "drill",
            Some(&state.ctx.config.appliance.id),
            format!("{ended} drills ended by command (by {})", actor.name()),
        );
    }
    json(StatusCode::OK, detail)
}
