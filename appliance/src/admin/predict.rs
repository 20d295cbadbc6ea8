//! The failure prediction's routes: its models and every component's
//! prediction now (`GET /api/v1/predict`), and training from the history
//! (`POST /api/v1/predict/train`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::{ApiError, ApiResult, Shared, json, parse_body};
use super::auth::Actor;
use crate::predict::failure::{Component, Series};
use crate::predict::live::{HORIZON_S, Predictor};

fn predictor(state: &AppState) -> Result<Arc<Predictor>, ApiError> {
    state.ctx.predictor.clone().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no failure prediction on this appliance (history.enabled = false)")
    })
}

/// `GET /api/v1/predict`: the models (what each was fitted on and how it
/// did) and every component's probability of failing within the horizon.
pub(super) async fn status(State(state): Shared) -> ApiResult {
    let p = predictor(&state)?;
    let models: serde_json::Map<String, Value> = p
        .models()
        .models
        .into_iter()
        .map(|(kind, m)| {
            let summary = json!({
                "trained_ms": m.trained_ms,
                "examples": m.examples,
                "positives": m.positives,
                "threshold": m.threshold,
                "features": m.features,
                "weights": m.weights,
                "quality": m.quality,
            });
            (kind.to_string(), summary)
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        json!({
            "horizon_s": HORIZON_S,
            "window_s": crate::predict::failure::WINDOW_MS / 1000,
            "file": p.path().display().to_string(),
            "models": models,
            "components": p.risks(),
        }),
    ))
}

/// Body of `POST /api/v1/predict/train`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Train {
    /// The span of history to learn from, s (default: all raw samples).
    since_s: Option<u64>,
}

/// `POST /api/v1/predict/train`: fits a model per kind of component on
/// the history's raw samples, saves the models and uses them from now.
pub(super) async fn train(
    State(state): Shared,
    ConnectInfo(super::PeerAddr(from)): ConnectInfo<super::PeerAddr>,
    axum::Extension(actor): axum::Extension<Actor>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let p = predictor(&state)?;
    let Train { since_s } = if body.is_empty() { Train::default() } else { parse_body(&headers, &body)? };
    let raw_s = u64::from(state.ctx.config.history.raw_hours) * 3600;
    let since_s = since_s.unwrap_or(raw_s);
    if since_s == 0 || since_s > raw_s {
        return Err(ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "since_s",
            format!("since_s {since_s}: 1 to {raw_s} (the raw samples kept: history.raw_hours)"),
        ));
    }
    let Some(store) = state.ctx.history.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no history on this appliance (history.enabled = false)"));
    };
    let trained = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let failed = |e: redb::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("history: {e}"));
        let known = store.series().map_err(failed)?;
        let components = Component::all_in(known.iter().map(|s| s.name.as_str()));
        let now = crate::history::now_ms();
        let mut data = Series::new();
        for name in components.iter().flat_map(|c| c.inputs.iter().chain([&c.state])) {
            if data.contains_key(name) {
                continue;
            }
            let span = store.span(name, now.saturating_sub(since_s * 1000), now, now).map_err(failed)?;
            data.insert(name.clone(), span.points.iter().map(|pt| (pt.t_ms, pt.mean)).collect());
        }
        p.train(&data, now).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, crate::errors::one_line(&*e)))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("training: {e}")))??;
    let fitted: serde_json::Map<String, Value> = trained
        .models
        .iter()
        .map(|(kind, m)| {
            let summary =
                json!({ "examples": m.examples, "positives": m.positives, "threshold": m.threshold, "quality": m.quality });
            (kind.to_string(), summary)
        })
        .collect();
    let skipped: serde_json::Map<String, Value> =
        trained.skipped.iter().map(|(k, why)| (k.to_string(), Value::String(why.clone()))).collect();
    let detail = json!({ "since_s": since_s, "trained": fitted, "skipped": skipped });
    state.audit(&actor.name(), Some(from), "predict-train", detail.clone());
    state.events.push(
        "prediction",
        Some(&state.ctx.config.appliance.id),
        format!(
            "failure models trained on {since_s} s of history: {} fitted, {} without failures to learn from (by {})",
            trained.models.len(),
            trained.skipped.len(),
            actor.name()
        ),
    );
    Ok(json(StatusCode::OK, detail))
}
