//! `lockstep run`: the daemon. Origin, swarm node, admin API and the
//! appliance's channels; the daemon's own thread drives the first
//! channel's supervisor (`crate::channels::driver`), which starts and
//! stops its pipeline on command while everything else keeps running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::channels::{Channel, Channels, driver};
use crate::config::Config;
use crate::origin::{self, OriginMetrics};
use crate::pipeline::{RunLimits, RunSummary};

/// What the daemon runs besides the pipeline.
#[derive(Debug)]
pub struct Services {
    /// The origin.
    pub origin: Option<origin::Origin>,
    /// The swarm node.
    pub swarm: Option<Arc<crate::swarm::Swarm>>,
    /// The admin server.
    pub admin: Option<crate::admin::Admin>,
}

/// Starts the origin, the swarm node (for the first channel) and the
/// admin API for `config`.
pub fn services(config: &Config, channels: &Arc<Channels>) -> anyhow::Result<Services> {
    let origin_metrics = Arc::new(OriginMetrics::default());
    let history_path = config.history.path(&config.output.dir);
    // The prediction learns from the history: without it, none.
    let predictor = config.history.enabled.then(|| models_path(&history_path)).and_then(|path| {
        crate::predict::live::Predictor::open(path)
            .map(Arc::new)
            .map_err(|e| tracing::error!("failure prediction off for this run: {}", crate::errors::one_line(&*e)))
            .ok()
    });
    let edges = crate::health::edge::EdgeAgent::start(&config.steering);
    let steering = edges.as_ref().map(|agent| origin::Steering {
        config: config.steering.clone(),
        agent: Arc::clone(agent),
        combined: config.swarm.enabled,
        predictor: predictor.clone(),
    });
    let origin = match &config.origin.listen {
        Some(listen) => Some(origin::start(listen, config.output.dir.clone(), Arc::clone(&origin_metrics), steering)?),
        None => None,
    };
    // A disk drill's filler left by a daemon killed during the drill.
    crate::drill::disk::remove_left(&config.output.dir);
    let swarm = crate::swarm::join(config, channels)?;
    let history = {
        let (channels, edges, predictor) = (Arc::clone(channels), edges.clone(), predictor.clone());
        let swarm = swarm.clone();
        let headroom = crate::health::CpuHeadroom::default();
        let sample = move || {
            let mut samples = health_samples(&channels, edges.as_deref(), &headroom);
            if let Some(p) = &predictor {
                let (_, record) = p.observe(crate::history::now_ms(), &samples);
                samples.extend(record);
                // The swarm hands this node's work over before a predicted
                // failure (its confidence and weight fall with the risk),
                // and standby units prepare from its alarms.
                if let Some(sw) = &swarm {
                    let risks = p.risks();
                    let (risk, alarms) = (own_risk(&risks), own_alarms(&risks));
                    sw.local(|l| {
                        l.predicted_risk = risk;
                        l.outlook.alarms = alarms;
                    });
                }
            }
            samples
        };
        // Without its history the appliance still encodes: said, not fatal.
        crate::history::start(&config.history, &history_path, sample).unwrap_or_else(|e| {
            tracing::error!("history off for this run: {}", crate::errors::one_line(&*e));
            None
        })
    };
    let admin = match &config.admin.listen {
        Some(_) => Some(crate::admin::start(crate::admin::Context {
            config: config.clone(),
            channels: Arc::clone(channels),
            swarm: swarm.clone(),
            origin: origin.as_ref().map(|o: &origin::Origin| o.addr),
            origin_metrics,
            edges,
            history,
            drills: Arc::default(),
            predictor,
        })?),
        None => None,
    };
    Ok(Services { origin, swarm, admin })
}

/// The risk this node's own components carry for the swarm: the highest
/// probability of an encoder or packager whose alarm is up, else 0.
fn own_risk(risks: &[crate::predict::live::Risk]) -> f32 {
    use crate::predict::failure::Kind;
    risks
        .iter()
        .filter(|r| r.alarm && matches!(r.kind, Kind::Encoder | Kind::Packager))
        .map(|r| r.probability as f32)
        .fold(0.0, f32::max)
}

/// This node's encoder and packager components whose alarm is up, for
/// its state packets (standby units prepare from them).
fn own_alarms(risks: &[crate::predict::live::Risk]) -> Vec<crate::swarm::state::Alarm> {
    use crate::predict::failure::Kind;
    risks
        .iter()
        .filter(|r| r.alarm && matches!(r.kind, Kind::Encoder | Kind::Packager))
        .map(|r| crate::swarm::state::Alarm { component: r.component.clone(), probability: r.probability as f32 })
        .collect()
}

/// Where the failure models are saved: beside the history store.
fn models_path(history: &std::path::Path) -> std::path::PathBuf {
    history.with_file_name("models.json")
}

/// One round of the health agents' figures for the history store:
/// `node/…` (pressure, memory, CPU headroom), `channel/<id>/…` (deadline slack, encode
/// latency, output disk) and `edge/<id>/…` (probe latency, failed share,
/// up).
fn health_samples(
    channels: &Channels,
    edges: Option<&crate::health::edge::EdgeAgent>,
    headroom: &crate::health::CpuHeadroom,
) -> Vec<(String, f64)> {
    use crate::health::chain;
    let node = crate::health::NodeHealth::sample();
    let mut out = Vec::new();
    if let Some(cpus) = headroom.read(node.cgroup.as_ref().and_then(|c| c.cpu_limit)) {
        out.push(("node/cpu_headroom".into(), cpus));
    }
    for (name, p) in [("cpu", node.pressure.cpu), ("memory", node.pressure.memory), ("io", node.pressure.io)] {
        if let Some(p) = p {
            out.push((format!("node/pressure_{name}"), f64::from(p.some_avg10)));
        }
    }
    if let Some(bytes) = node.cgroup.as_ref().and_then(|c| c.memory_bytes) {
        out.push(("node/memory_bytes".into(), bytes as f64));
    }
    if let Some(m) = node.memory {
        out.push(("node/memory_used".into(), m.used()));
    }
    let cpu_pressure = node.pressure.cpu.map(|p| p.some_avg10);
    for ch in channels.all() {
        let status = &ch.taps.status;
        let config = ch.supervisor.config();
        let slack = crate::sync::lock(&status.slack).summary();
        if let Some(slack) = &slack {
            out.push((format!("channel/{}/slack_ms", ch.id), f64::from(slack.last_ms)));
        }
        let latency_ms = status.encode_latency_us.load(Ordering::Relaxed) as f64 / 1000.0;
        out.push((format!("channel/{}/encode_latency_ms", ch.id), latency_ms));
        let disk = crate::health::Disk::of(&config.output.dir);
        if let Some(d) = disk {
            out.push((format!("channel/{}/disk_used", ch.id), d.used()));
        }
        // The judged states label the history: the failure prediction
        // learns what came before each failure from them.
        let running = status.running.load(Ordering::Relaxed);
        let segment_ms = config.channel.segment_seconds * 1000.0;
        let encoder = chain::encoder(running, slack.as_ref(), segment_ms, cpu_pressure, node.memory);
        out.push((format!("channel/{}/encoder_state", ch.id), encoder.state.level()));
        let packager = chain::packager(disk, status.write_errors.load(Ordering::Relaxed));
        out.push((format!("channel/{}/packager_state", ch.id), packager.state.level()));
    }
    for f in edges.map(crate::health::edge::EdgeAgent::figures).unwrap_or_default() {
        out.push((format!("edge/{}/state", f.id), chain::edge(&f).state.level()));
        if let Some(ms) = f.latency_ms {
            out.push((format!("edge/{}/latency_ms", f.id), f64::from(ms)));
        }
        let failed = if f.probes == 0 { 0.0 } else { f.failed as f64 / f.probes as f64 };
        out.push((format!("edge/{}/failed_ratio", f.id), failed));
        out.push((format!("edge/{}/up", f.id), crate::metrics::flag(f.probes > 0 && f.failing_in_a_row == 0)));
    }
    out
}

/// Runs the daemon until a signal, or until the first channel's pipeline
/// ends on its own (end of a file, a limit, an error). A channel stopped
/// by command stays stopped, the daemon up, until started again. The other
/// channels (`[[channels]]`, or created through the API) run beside it
/// until the daemon ends.
pub fn run(config: &Config, file: Option<&ConfigFile>, limits: &RunLimits) -> anyhow::Result<Option<RunSummary>> {
    for w in config.warnings() {
        tracing::warn!("configuration: {w}");
    }
    let (first, commands) = Channel::first(config);
    let taps = first.taps.clone();
    let stop = limits.stop.clone().unwrap_or_default();
    let saver = file.map(|f| Arc::new(crate::persist::Saver::new(&f.path, &f.text)));
    let channels = Channels::new(first, limits, saver);
    for spec in &config.channels {
        channels.add(spec).map_err(|e| anyhow::anyhow!("channel `{}`: {e}", spec.channel.id))?;
    }
    if file.is_some() {
        keep_saved(Arc::clone(&channels), Arc::clone(&stop));
    }
    let services = services(config, &channels)?;
    if let Some(a) = &services.admin {
        tracing::info!(url = %admin_url(a.addr, config.admin.tls_cert.is_some()), "admin page");
    }
    let standby = config.appliance.role == crate::config::Role::Standby;
    if standby {
        tracing::info!("standby unit: the channel waits for a start command");
    }
    crate::systemd::start(Arc::clone(&taps.status), config.channel.segment_seconds, standby, Arc::clone(&stop));
    let mut first_config = config.clone();
    first_config.channels.clear();
    let outcome = driver::supervise(&first_config, limits, &taps, &commands, &stop, true);
    channels.shut_down();
    if let Some(swarm) = &services.swarm {
        swarm.close_output();
    }
    outcome
}

/// The configuration file the daemon runs from, as it read it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Its path.
    pub path: std::path::PathBuf,
    /// Its text at start.
    pub text: String,
}

/// How often the effective configuration is compared with the file.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the effective configuration whenever it changes, whoever changed
/// it (this appliance's API, a bitrate agreed with the swarm, a rollback).
fn keep_saved(channels: Arc<Channels>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("config-save".into()).spawn(move || {
        let mut last = serde_json::Value::Null;
        while !stop.load(Ordering::Relaxed) {
            let value = serde_json::to_value(channels.effective()).unwrap_or_default();
            if value != last {
                // An error is logged by the saver (once) and shown in the API.
                channels.save();
                last = value;
            }
            std::thread::sleep(SAVE_EVERY);
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("live configuration changes will not be saved: {e}");
    }
}

/// The admin URL a node's config gives, for printing.
pub fn admin_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}/", if tls { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::failure::Kind;
    use crate::predict::live::Risk;

    #[test]
    fn the_swarm_hears_the_highest_risk_of_this_nodes_own_components_in_alarm() {
        let risk =
            |component: &str, kind, probability, alarm| Risk { component: component.into(), kind, probability, alarm };
        assert_eq!(own_risk(&[]), 0.0);
        let risks = [
            risk("encoder:a", Kind::Encoder, 0.9, true),
            risk("packager:a", Kind::Packager, 0.95, false),
            risk("edge:e1", Kind::Edge, 0.99, true),
            risk("encoder:b", Kind::Encoder, 0.7, true),
        ];
        assert!((own_risk(&risks) - 0.9).abs() < 1e-6, "not an edge's, not one without alarm");
    }
}
