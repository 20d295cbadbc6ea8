//! `GET /metrics`: one Prometheus exposition for the appliance. Each
//! channel's per-segment figures (analysis, packager, clock) are rendered
//! from its counters in memory (`Taps::render_metrics`, the same text the
//! pipeline writes to `metrics.prom`), merged (one `# HELP`/`# TYPE` per
//! family, every channel's samples under it), and followed by the live
//! counters of the channels, the swarm, the origin and the API itself.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::api::Shared;
use crate::sync::lock;

/// Prometheus text: what the pipeline writes each segment (analysis,
/// packager, clock) plus live pipeline, swarm, origin and API counters.
pub(super) async fn metrics(State(state): Shared) -> Response {
    use std::fmt::Write;
    let config = &state.ctx.config;
    let channels = state.ctx.channels.all();
    let rendered: Vec<String> = channels.iter().map(|ch| ch.taps.render_metrics(&ch.id)).collect();
    let mut text = merge_metrics(&rendered);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(text, "{name} {v}");
            } else {
                let _ = writeln!(text, "{name}{{{labels}}} {v}");
            }
        }
    };
    let per_channel = |read: &dyn Fn(&crate::pipeline::ChannelStatus) -> f64| -> Vec<(String, f64)> {
        channels.iter().map(|ch| (format!("channel=\"{}\"", ch.id), read(&ch.taps.status))).collect()
    };
    metric(
        "lockstep_channel_running",
        "gauge",
        "1 while the channel's pipeline runs.",
        &per_channel(&|s| f64::from(u8::from(s.running.load(Ordering::Relaxed)))),
    );
    metric(
        "lockstep_frames_captured_total",
        "counter",
        "Frames captured since the daemon started.",
        &per_channel(&|s| s.capture.frames_captured.load(Ordering::Relaxed) as f64),
    );
    metric(
        "lockstep_frames_dropped_total",
        "counter",
        "Frames skipped because capture fell behind real time.",
        &per_channel(&|s| s.capture.frames_dropped.load(Ordering::Relaxed) as f64),
    );
    // How pictures reached the pool: in place (no copy), converted once,
    // copied (a repeat filling a gap), or black standing in for a fault.
    let mut paths = Vec::new();
    for ch in &channels {
        let s = &ch.taps.status;
        for (p, v) in [
            ("in_place", &s.capture.frames_in_place),
            ("converted", &s.capture.frames_converted),
            ("copied", &s.capture.frames_copied),
            ("substituted", &s.capture.frames_substituted),
        ] {
            paths.push((format!("channel=\"{}\",path=\"{p}\"", ch.id), v.load(Ordering::Relaxed) as f64));
        }
    }
    metric(
        "lockstep_capture_frames_total",
        "counter",
        "Frames from a device-paced source by how they reached the frame pool (path=in_place means no copy).",
        &paths,
    );
    metric(
        "lockstep_input_faults_total",
        "counter",
        "Input faults (no signal, no lock, timeouts, corrupt frames) since the daemon started.",
        &per_channel(&|s| s.capture.input_faults.load(Ordering::Relaxed) as f64),
    );
    metric(
        "lockstep_input_fault",
        "gauge",
        "1 while the input has a fault.",
        &per_channel(&|s| f64::from(u8::from(lock(&s.capture.input_fault).is_some()))),
    );
    metric(
        "lockstep_encode_latency_seconds",
        "gauge",
        "Capture of a segment's last frame to its publication.",
        &per_channel(&|s| s.encode_latency_us.load(Ordering::Relaxed) as f64 / 1e6),
    );
    if let Some(sw) = state.ctx.swarm.as_ref() {
        let v = sw.view();
        let me = &config.appliance.id;
        metric(
            "lockstep_swarm_members",
            "gauge",
            "Members this node sees alive, itself included.",
            &[(String::new(), (v.peers.values().filter(|p| p.alive).count() + 1) as f64)],
        );
        metric(
            "lockstep_swarm_healthy_members",
            "gauge",
            "Members healthy, itself included.",
            &[(String::new(), (v.peers.values().filter(|p| p.healthy).count() + 1) as f64)],
        );
        metric(
            "lockstep_swarm_leader",
            "gauge",
            "1 when this node leads its group.",
            &[(String::new(), f64::from(u8::from(v.leader.as_deref() == Some(me))))],
        );
        metric(
            "lockstep_swarm_isolated",
            "gauge",
            "1 when this node hears no peer.",
            &[(String::new(), f64::from(u8::from(v.isolated)))],
        );
        let weights: Vec<(String, f64)> = v
            .channels
            .iter()
            .flat_map(|(c, d)| {
                d.weights.iter().map(move |(n, w)| (format!("channel=\"{c}\",node=\"{n}\""), f64::from(*w)))
            })
            .collect();
        metric("lockstep_swarm_weight_ratio", "gauge", "Encoder weight of each node for each channel, 0-1.", &weights);
        let mut confidence: Vec<(String, f64)> =
            v.peers.values().map(|p| (format!("node=\"{}\"", p.state.node), f64::from(p.state.confidence))).collect();
        if let Some(m) = &v.me {
            confidence.push((format!("node=\"{me}\""), f64::from(m.confidence)));
        }
        metric("lockstep_swarm_confidence_ratio", "gauge", "Confidence score of each node, 0-1.", &confidence);
        let deviations = || {
            v.channels
                .iter()
                .flat_map(|(c, d)| d.deviations.iter().map(move |(n, x)| (format!("channel=\"{c}\",node=\"{n}\""), x)))
        };
        let offsets: Vec<(String, f64)> =
            deviations().filter_map(|(l, x)| x.frame_offset.map(|k| (l, k as f64))).collect();
        metric(
            "lockstep_swarm_frame_offset",
            "gauge",
            "Frame offset of each neighbour's numbering of the same pictures against this node's (0: lockstep).",
            &offsets,
        );
        let disagreements: Vec<(String, f64)> =
            deviations().map(|(l, x)| (l, f64::from(x.hash_disagreements))).collect();
        metric(
            "lockstep_swarm_hash_disagreements",
            "gauge",
            "Recent segment tracks whose hash differs between each neighbour and this node.",
            &disagreements,
        );
        let clocks = || deviations().filter_map(|(l, x)| x.clock.map(|c| (l, c)));
        metric(
            "lockstep_swarm_clock_offset_seconds",
            "gauge",
            "Each neighbour's media clock minus this node's, per channel (filtered, the network delay cancelled).",
            &clocks().map(|(l, c)| (l, f64::from(c.offset_ms) / 1e3)).collect::<Vec<_>>(),
        );
        metric(
            "lockstep_swarm_clock_drift_ppm",
            "gauge",
            "How fast each neighbour's media clock moves away from this node's, ppm.",
            &clocks().map(|(l, c)| (l, f64::from(c.drift_ppm))).collect::<Vec<_>>(),
        );
        metric(
            "lockstep_swarm_half_frame_seconds",
            "gauge",
            "Predicted seconds until a neighbour's media clock is half a frame from this node's (only while heading there).",
            &clocks().filter_map(|(l, c)| c.half_frame_in_s.map(|s| (l, f64::from(s)))).collect::<Vec<_>>(),
        );
        let packets: Vec<(String, f64)> =
            v.packets.iter().map(|(k, n)| (format!("outcome=\"{k}\""), *n as f64)).collect();
        metric("lockstep_swarm_packets_total", "counter", "Swarm packets received, by outcome.", &packets);
    }
    let o = &state.ctx.origin_metrics;
    let classes = |counts: &[std::sync::atomic::AtomicU64; 5]| -> Vec<(String, f64)> {
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("code=\"{}xx\"", i + 1), n.load(Ordering::Relaxed) as f64))
            .collect()
    };
    metric(
        "lockstep_origin_requests_total",
        "counter",
        "Origin HTTP responses by status class.",
        &classes(&o.by_class),
    );
    metric(
        "lockstep_api_requests_total",
        "counter",
        "Admin API responses by status class.",
        &classes(&state.api.by_class),
    );
    metric(
        "lockstep_api_login_failures_total",
        "counter",
        "Failed admin logins.",
        &[(String::new(), state.api.login_failures.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "lockstep_api_logins_limited_total",
        "counter",
        "Logins refused by the rate limit.",
        &[(String::new(), state.api.login_limited.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "lockstep_events_total",
        "counter",
        "Events recorded in the admin event log.",
        &[(String::new(), state.events.count() as f64)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Every channel's per-segment figures as one exposition: a family's `# HELP`
/// and `# TYPE` lines once (the format allows them once), the samples of
/// every channel together under them, families in first-seen order.
fn merge_metrics(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for file in texts {
        let mut family = String::new();
        for line in file.lines().filter(|l| !l.trim().is_empty()) {
            let head = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE "));
            let name = match head {
                Some(rest) => rest.split_whitespace().next().unwrap_or_default().to_string(),
                None if line.starts_with('#') => continue,
                // A sample belongs to the family above it, or its own.
                None if family.is_empty() => line.split(['{', ' ']).next().unwrap_or_default().to_string(),
                None => family.clone(),
            };
            if !families.contains_key(&name) {
                order.push(name.clone());
            }
            let (heads, samples) = families.entry(name.clone()).or_default();
            match head {
                Some(_) => {
                    family = name;
                    if !heads.iter().any(|h| h == line) {
                        heads.push(line.to_string());
                    }
                }
                None => samples.push(line.to_string()),
            }
        }
    }
    let mut text = String::new();
    for name in order {
        let (heads, samples) = &families[&name];
        for line in heads.iter().chain(samples) {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::merge_metrics;

    #[test]
    fn channels_files_merge_under_one_header_per_family() {
        let a = "# HELP x_total Frames.\n# TYPE x_total counter\nx_total{channel=\"a\"} 1\n\
                 # HELP y Seconds.\n# TYPE y gauge\ny{channel=\"a\"} 0.5\n";
        let b = "# HELP x_total Frames.\n# TYPE x_total counter\nx_total{channel=\"b\"} 2\nz 3\n";
        let text = merge_metrics(&[a.to_string(), b.to_string()]);
        assert_eq!(text.matches("# TYPE x_total counter").count(), 1, "{text}");
        assert_eq!(text.matches("# HELP x_total").count(), 1, "{text}");
        let x = text.find("x_total{channel=\"a\"} 1").unwrap();
        let xb = text.find("x_total{channel=\"b\"} 2").unwrap();
        let y = text.find("# HELP y ").unwrap();
        assert!(x < xb && xb < y, "a family's samples stay together, families in first-seen order:\n{text}");
        assert!(text.contains("z 3"), "a sample after another family's samples is kept: {text}");
        assert_eq!(merge_metrics(&[String::new(), String::new()]), "");
    }
}
