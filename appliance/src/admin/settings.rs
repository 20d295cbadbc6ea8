//! `GET/PATCH /api/v1/channels/{id}/config`: the channel's configuration,
//! changed live. A change is validated like the config file (errors name
//! the key), then applied by the supervisor: bitrates by the running
//! encoders at an agreed segment, anything else by a handover to a new run
//! at a segment boundary (`crate::handover`), or a restart where a
//! handover cannot be made (capture devices, files).

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::{
    ApiError, ApiResult, COMMAND_TIMEOUT, Shared, apply_from, channel_error, check_channel, config_error, json,
    parse_body,
};
use super::auth::Actor;
use crate::channels::Channel;
use crate::config::{AudioConfig, Config, EncoderConfig, OutputMode, RenditionConfig, SourceConfig, SourceKind};
use crate::control::{LadderChange, unix_ms};
use crate::sync::lock;

/// Body of `PATCH /api/v1/channels/{id}/config`: the sections to replace,
/// each whole; sections left out stay as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEdit {
    /// `[source]`.
    pub source: Option<SourceConfig>,
    /// `[audio]`.
    pub audio: Option<AudioConfig>,
    /// `[encoder]`.
    pub encoder: Option<EncoderConfig>,
    /// `[[renditions]]`, highest first.
    pub renditions: Option<Vec<RenditionConfig>>,
    /// The live-editable part of `[output]`.
    pub output: Option<OutputEdit>,
}

/// `[output]` keys that may change live (the directory may not).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputEdit {
    /// Sliding window or archive.
    pub mode: Option<OutputMode>,
    /// Segments in a sliding-window playlist.
    pub window_segments: Option<u32>,
}

/// The editable view; bitrates are those in force or announced (a live
/// change wins over the configured value), so a form sent back unchanged
/// changes nothing.
fn view(config: &Config, ch: &Channel, state: &AppState) -> Value {
    let control = &ch.taps.control;
    let renditions: Vec<RenditionConfig> = config
        .renditions
        .iter()
        .map(|r| RenditionConfig {
            bitrate_kbps: control.bitrate_kbps(&r.name, i64::MAX).unwrap_or(r.bitrate_kbps),
            ..r.clone()
        })
        .collect();
    json!({
        "channel": config.channel.id,
        "source": config.source,
        "audio": config.audio,
        "encoder": config.encoder,
        "renditions": renditions,
        "output": { "mode": config.output.mode, "window_segments": config.output.window_segments },
        "fixed": {
            "segment_seconds": config.channel.segment_seconds,
            "output_dir": config.output.dir,
        },
        "swarm": state.ctx.swarm.is_some(),
        "first": ch.first,
        "last_error": lock(&ch.taps.status.config_error).clone(),
        "saved": state.ctx.channels.saved(),
    })
}

pub(super) async fn get(State(state): Shared, Path(id): Path<String>) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    Ok(json(StatusCode::OK, view(&ch.supervisor.config(), &ch, &state)))
}

/// The edit applied to `running`, validated; errors name the key.
pub fn merged(running: &Config, edit: ChannelEdit) -> Result<Config, ApiError> {
    let mut next = running.clone();
    if let Some(source) = edit.source {
        next.source = source;
    }
    if let Some(audio) = edit.audio {
        next.audio = audio;
    }
    if let Some(encoder) = edit.encoder {
        next.encoder = encoder;
    }
    if let Some(renditions) = edit.renditions {
        next.renditions = renditions;
    }
    if let Some(output) = edit.output {
        next.output.mode = output.mode.unwrap_or(next.output.mode);
        next.output.window_segments = output.window_segments.unwrap_or(next.output.window_segments);
    }
    next.validate().map_err(config_error)?;
    source_present(&next)?;
    Ok(next)
}

/// What the loader cannot see: the source of `next` must be there now.
pub(super) fn source_present(next: &Config) -> Result<(), ApiError> {
    match next.source.kind {
        SourceKind::File => {
            if let Some(path) = &next.source.path
                && let Err(e) = std::fs::File::open(path)
            {
                return Err(ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "source.path",
                    format!("source.path {}: {e}", path.display()),
                ));
            }
        }
        SourceKind::V4l2 if !next.source.device.exists() => {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "source.device",
                format!("source.device {}: no such device (see GET /api/v1/devices)", next.source.device.display()),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// The ladder's shape: names and sizes, not bitrates or backends.
fn shape(c: &Config) -> Vec<(String, u32, Option<u32>)> {
    c.renditions.iter().map(|r| (r.name.clone(), r.height, r.width)).collect()
}

pub(super) async fn patch(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(peer)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ch = check_channel(&state, &id)?;
    let edit: ChannelEdit = parse_body(&headers, &body)?;
    if !ch.first && edit.output.is_some() {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "output",
            "output: the appliance's output is shared by its channels; change it on the first channel",
        ));
    }
    // With the bitrates in force or announced: an edit that leaves the
    // renditions out keeps them, rather than reverting a live change.
    let running = ch.effective();
    let next = merged(&running, edit)?;
    state.ctx.channels.check(&id, &next).map_err(channel_error)?;
    if state.ctx.swarm.is_some() && shape(&next) != shape(&running) {
        return Err(ApiError::field(
            StatusCode::CONFLICT,
            "renditions",
            "renditions: in a swarm every node encodes the same ladder, so names and sizes change through each \
             node's configuration file; bitrates change live (agreed across the swarm)",
        ));
    }
    // Bitrates go through the live changes, which the swarm agrees on and
    // which win over the configured values from their segment on.
    let from_segment = apply_from(&ch);
    let control = &ch.taps.control;
    let mut changes = Vec::new();
    for r in &next.renditions {
        let now = running.renditions.iter().find(|o| o.name == r.name);
        let effective = now.map(|o| control.bitrate_kbps(&o.name, i64::MAX).unwrap_or(o.bitrate_kbps));
        if effective.is_some_and(|kbps| kbps != r.bitrate_kbps) {
            changes.push(LadderChange {
                from_segment,
                revision: unix_ms(),
                origin: state.ctx.config.appliance.id.clone(),
                rendition: r.name.clone(),
                bitrate_kbps: r.bitrate_kbps,
            });
        }
    }
    let restructure = crate::channels::supervisor::more_than_bitrates(&running, &next);
    if !restructure && changes.is_empty() {
        return Ok(json(
            StatusCode::ACCEPTED,
            json!({ "applied": { "how": "unchanged" }, "config": view(&running, &ch, &state) }),
        ));
    }
    for c in &changes {
        control.add(c.clone());
    }
    let supervisor = ch.supervisor.clone();
    let applied = tokio::task::spawn_blocking(move || supervisor.reconfigure(next, COMMAND_TIMEOUT))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "configuration change failed"))?
        .map_err(super::api::command_error)?;
    let applied = match applied {
        // Only bitrates: the running encoders take them at `from_segment`.
        crate::command::Applied::Live => json!({ "how": "live", "from_segment": from_segment }),
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    let detail = json!({ "channel": id, "applied": applied, "body": serde_json::from_slice::<Value>(&body).ok() });
    state.audit(&actor.name(), Some(peer), "channel-config", detail);
    let words = match applied["how"].as_str() {
        Some("handover") | Some("live") => format!("from segment {}", applied["from_segment"]),
        Some("reopen") => {
            format!("after segment {} (the source reopens; a gap)", applied["from_segment"].as_i64().unwrap_or(0) - 1)
        }
        Some("restart") => "by a restart (a gap in the segments)".into(),
        _ => "at the next start".into(),
    };
    state.events.push(
        "config",
        Some(&state.ctx.config.appliance.id),
        format!("channel {id}: new configuration {words} (by {})", actor.name()),
    );
    let running_now = ch.taps.status.running.load(Ordering::Relaxed);
    let saved = save(&state).await;
    Ok(json(
        StatusCode::ACCEPTED,
        json!({
            "applied": applied,
            "running": running_now,
            "saved": saved,
            "config": view(&ch.supervisor.config(), &ch, &state),
        }),
    ))
}

/// Writes the effective configuration to the daemon's file now (off the
/// async runtime: it is file I/O); `None` when the daemon has no file.
pub(super) async fn save(state: &std::sync::Arc<AppState>) -> Option<crate::persist::SaveStatus> {
    let channels = std::sync::Arc::clone(&state.ctx.channels);
    tokio::task::spawn_blocking(move || channels.save()).await.ok().flatten()
}
