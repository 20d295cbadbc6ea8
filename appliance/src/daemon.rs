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
    let origin = match &config.origin.listen {
        Some(listen) => Some(origin::start(listen, config.output.dir.clone(), Arc::clone(&origin_metrics))?),
        None => None,
    };
    let swarm = crate::swarm::join(config, channels)?;
    let admin = match &config.admin.listen {
        Some(_) => Some(crate::admin::start(crate::admin::Context {
            config: config.clone(),
            channels: Arc::clone(channels),
            swarm: swarm.clone(),
            origin: origin.as_ref().map(|o: &origin::Origin| o.addr),
            origin_metrics,
        })?),
        None => None,
    };
    Ok(Services { origin, swarm, admin })
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
