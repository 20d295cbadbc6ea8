//! The channels of one appliance.
//!
//! The first channel is `[channel]` of the configuration: systemd's
//! watchdog follows it, and the daemon's run ends when it ends on its own.
//! More channels come from `[[channels]]` or are created through the API
//! (`POST /api/v1/channels`). Each has its own source, ladder, supervisor
//! (start, stop, live changes, handovers) and playlists under
//! `<output.dir>/<id>/`, and shares the appliance's clock, output
//! directory, origin and admin API. In a swarm every running channel is
//! in the node's state packets: appliances that encode a channel of the
//! same id agree on its replicas, weights and combined output
//! (`crate::swarm`), each channel on its own.
//!
//! The effective configuration written back to the file is the first
//! channel's with every other channel as a `[[channels]]` entry, so a
//! channel created or changed through the API is there after a restart.

pub mod bench;
pub mod driver;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{ChannelSpec, Config, ConfigError};
use crate::persist::{SaveStatus, Saver};
use crate::pipeline::{RunLimits, Taps};
use crate::sync::{lock, read, write};
use driver::Supervisor;

/// One channel as the daemon runs it.
#[derive(Debug)]
pub struct Channel {
    /// Its id (`[channel] id`).
    pub id: String,
    /// Its status, live controls and feeds.
    pub taps: Taps,
    /// Starts, stops and reconfigures it.
    pub supervisor: Supervisor,
    /// Whether it is the appliance's first channel (`[channel]`).
    pub first: bool,
    /// Whether it runs from the daemon's start (`[[channels]] start`):
    /// follows the last start or stop command, so a channel an operator
    /// stopped stays stopped after a restart.
    start: AtomicBool,
    /// An operator started or stopped it since the daemon started.
    operated: AtomicBool,
    /// The supervisor thread of a channel other than the first (the
    /// daemon's own thread supervises the first), and its stop flag.
    thread: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
}

impl Channel {
    /// The first channel, supervised by the caller.
    pub fn first(config: &Config) -> (Arc<Self>, driver::Commands) {
        let mut config = config.clone();
        config.channels.clear();
        let (supervisor, commands) = Supervisor::new(&config);
        let channel = Self {
            id: config.channel.id.clone(),
            taps: driver::taps(),
            supervisor,
            first: true,
            start: AtomicBool::new(true),
            operated: AtomicBool::new(false),
            thread: Mutex::default(),
        };
        (Arc::new(channel), commands)
    }

    /// The configuration it runs with now, bitrates as in force or announced.
    pub fn effective(&self) -> Config {
        crate::persist::effective(&self.supervisor.config(), &self.taps.control)
    }

    /// Whether it runs from the daemon's start.
    pub fn starts(&self) -> bool {
        self.start.load(Ordering::Relaxed)
    }

    /// Records an operator's start (`true`) or stop command, for the
    /// saved configuration (the first channel has no such key: it always
    /// starts, unless the appliance is a standby unit). On a standby unit
    /// the channel is the operator's from then on, not the swarm's.
    pub fn set_starts(&self, start: bool) {
        self.start.store(start, Ordering::Relaxed);
        self.operated.store(true, Ordering::Relaxed);
    }

    /// Whether an operator started or stopped it since the daemon started
    /// (a standby unit then leaves it alone: `crate::swarm::standby`).
    pub fn operated(&self) -> bool {
        self.operated.load(Ordering::Relaxed)
    }

    /// Stops its supervisor and waits for it (not the first's).
    fn shut_down(&self) {
        let taken = lock(&self.thread).take();
        if let Some((stop, thread)) = taken {
            stop.store(true, Ordering::Relaxed);
            if thread.join().is_err() {
                tracing::error!(channel = %self.id, "the channel's supervisor panicked");
            }
        }
    }
}

/// Why a channel cannot be created, changed or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A value is wrong; the key is the channel's (`source.width`).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The id is taken, or the channel is the first.
    #[error("{0}")]
    Conflict(String),
    /// No such channel.
    #[error("no channel `{0}` on this appliance")]
    Missing(String),
    /// Its supervisor could not be started.
    #[error("channel not started: {0}")]
    Start(String),
}

/// Channels on one appliance at most: each runs its own capture, analysis
/// and encoders.
pub const MAX_CHANNELS: usize = 16;

/// Every channel of the appliance, the first one first.
#[derive(Debug)]
pub struct Channels {
    list: RwLock<Vec<Arc<Channel>>>,
    /// Limits of the daemon's run that other channels keep to.
    limits: RunLimits,
    saver: Option<Arc<Saver>>,
}

impl Channels {
    /// The set with its first channel; `saver` writes the effective
    /// configuration to the daemon's file.
    pub fn new(first: Arc<Channel>, limits: &RunLimits, saver: Option<Arc<Saver>>) -> Arc<Self> {
        let limits = RunLimits { frames: None, duration_s: None, stop: None, ..limits.clone() };
        Arc::new(Self { list: RwLock::new(vec![first]), limits, saver })
    }

    /// Every channel, the first one first.
    pub fn all(&self) -> Vec<Arc<Channel>> {
        self.read().clone()
    }

    /// The first channel (`[channel]`).
    pub fn first(&self) -> Arc<Channel> {
        Arc::clone(&self.read()[0])
    }

    /// The channel `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Channel>> {
        self.read().iter().find(|c| c.id == id).cloned()
    }

    /// The effective configuration of the appliance: the first channel's,
    /// with every other channel as a `[[channels]]` entry.
    pub fn effective(&self) -> Config {
        let list = self.read();
        let mut config = list[0].effective();
        config.channels = list[1..].iter().map(|c| c.effective().spec(c.starts())).collect();
        config
    }

    /// Checks `next` as the configuration of channel `id` beside the
    /// others, as the loader would check the file; errors name the key as
    /// in the channel's own sections (`source.device`).
    pub fn check(&self, id: &str, next: &Config) -> Result<(), ChannelError> {
        let list = self.read();
        Self::check_in(&list, id, next)
    }

    fn check_in(list: &[Arc<Channel>], id: &str, next: &Config) -> Result<(), ChannelError> {
        next.validate()?;
        for other in list.iter().filter(|c| c.id != id) {
            if let Some(why) = other.supervisor.config().same_device(next) {
                return Err(ConfigError::Invalid { key: "source.device".into(), message: why }.into());
            }
        }
        Ok(())
    }

    /// Creates channel `spec` and starts its supervisor (which starts it
    /// unless `spec.start` is false).
    pub fn add(&self, spec: &ChannelSpec) -> Result<Arc<Channel>, ChannelError> {
        let mut list = write(&self.list);
        let id = spec.channel.id.clone();
        if list.iter().any(|c| c.id == id) {
            return Err(ChannelError::Conflict(format!("channel `{id}` exists already")));
        }
        if list.len() >= MAX_CHANNELS {
            return Err(ChannelError::Conflict(format!("this appliance runs {MAX_CHANNELS} channels at most")));
        }
        let config = list[0].supervisor.config().with_channel(spec);
        Self::check_in(&list, &id, &config)?;
        let (supervisor, commands) = Supervisor::new(&config);
        let taps = driver::taps();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (taps, stop, limits) = (taps.clone(), Arc::clone(&stop), self.limits.clone());
            std::thread::Builder::new()
                .name(format!("ch-{id}"))
                .spawn(move || keep_supervising(config, &limits, &taps, &commands, &stop))
                .map_err(|e| ChannelError::Start(e.to_string()))?
        };
        let channel = Arc::new(Channel {
            id: id.clone(),
            taps,
            supervisor,
            first: false,
            start: AtomicBool::new(spec.start),
            operated: AtomicBool::new(false),
            thread: Mutex::new(Some((stop, thread))),
        });
        list.push(Arc::clone(&channel));
        tracing::info!(channel = %id, "channel added");
        Ok(channel)
    }

    /// Stops channel `id` and removes it (its segments stay on disk). The
    /// first channel cannot be removed.
    pub fn remove(&self, id: &str) -> Result<(), ChannelError> {
        let channel = {
            let mut list = write(&self.list);
            let Some(at) = list.iter().position(|c| c.id == id) else {
                return Err(ChannelError::Missing(id.to_string()));
            };
            if list[at].first {
                return Err(ChannelError::Conflict(format!(
                    "`{id}` is the appliance's first channel ([channel] in the configuration): it can be stopped, \
                     not deleted"
                )));
            }
            list.remove(at)
        };
        channel.shut_down();
        tracing::info!(channel = %id, "channel deleted");
        Ok(())
    }

    /// Stops every channel but the first (the daemon ends).
    pub fn shut_down(&self) {
        for channel in self.all() {
            channel.shut_down();
        }
    }

    /// Writes the effective configuration to the daemon's file now; `None`
    /// without a file.
    pub fn save(&self) -> Option<SaveStatus> {
        let saver = self.saver.as_ref()?;
        Some(saver.save(&self.effective()))
    }

    /// The outcome of the last save; `None` without a file.
    pub fn saved(&self) -> Option<SaveStatus> {
        self.saver.as_ref().map(|s| s.status())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Channel>>> {
        read(&self.list)
    }
}

/// Supervises a channel other than the first until `stop`: when its run
/// ends on its own (a file's end, an error), the channel stays, stopped,
/// and waits for a start command.
fn keep_supervising(config: Config, limits: &RunLimits, taps: &Taps, commands: &driver::Commands, stop: &AtomicBool) {
    if let Err(e) = driver::supervise(&config, limits, taps, commands, stop, false) {
        tracing::warn!(channel = %config.channel.id, "the channel's last run ended with an error: {}", crate::errors::one_line(&*e));
    }
}
