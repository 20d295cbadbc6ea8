//! `GET /metrics`: one Prometheus exposition for the appliance, rendered
//! by one encoder (`crate::metrics::Exposition`) from the counters in
//! memory: every channel's (state, capture, analysis, packager, media
//! clock), then the swarm's, the origin's and the API's own, each added
//! by the module that owns them.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::api::Shared;
use crate::metrics::Exposition;

/// Prometheus text for the whole appliance.
pub(super) async fn metrics(State(state): Shared) -> Response {
    let mut out = Exposition::new();
    for ch in state.ctx.channels.all() {
        ch.taps.export(&ch.id, &mut out);
        if let Some(d) = crate::health::Disk::of(&ch.supervisor.config().output.dir) {
            let at = [("channel", ch.id.as_str())];
            out.gauge(
                "lockstep_output_free_bytes",
                "Bytes free on the file system holding the channel's output.",
                &at,
                d.free_bytes as f64,
            );
            out.gauge(
                "lockstep_output_used_ratio",
                "Share of the file system holding the channel's output in use.",
                &at,
                d.used(),
            );
        }
    }
    crate::health::NodeHealth::sample().export(&mut out);
    if let Some(swarm) = state.ctx.swarm.as_ref() {
        swarm.view().export(&mut out);
    }
    state.ctx.origin_metrics.export(&mut out);
    if let Some(edges) = &state.ctx.edges {
        edges.export(&mut out);
    }
    if let Some(history) = &state.ctx.history {
        history.export(&mut out);
    }
    state.api.export(&mut out);
    out.counter("lockstep_events_total", "Events recorded in the admin event log.", &[], state.events.count() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out.render()).into_response()
}
