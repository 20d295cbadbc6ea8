//! The systemd side of the daemon: `sd_notify` readiness, status and
//! watchdog pings driven by the data plane's health.
//!
//! Under `Type=notify`, systemd starts the next units only after READY=1,
//! which the daemon sends once the pipeline has captured its first frame
//! (or, for a standby unit, once its services are up). With `WatchdogSec=`
//! it expects WATCHDOG=1 at least once per period; the daemon pings only
//! while the pipeline makes progress, so a stalled data plane stops the
//! pings and systemd restarts the service (`Restart=on-failure`).
//! Without `NOTIFY_SOCKET` (a terminal, tests) everything here is a no-op.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::pipeline::ChannelStatus;

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names, if systemd gave one.
    pub fn from_env() -> std::io::Result<Option<Self>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(path) => Self::connect(&path.to_string_lossy()).map(Some),
            None => Ok(None),
        }
    }

    /// A socket path, or `@name` for the abstract namespace.
    pub fn connect(path: &str) -> std::io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let addr = match path.strip_prefix('@') {
            Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?,
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        Ok(Self { socket: UnixDatagram::unbound()?, addr })
    }

    /// Sends newline-separated `KEY=value` assignments.
    pub fn send(&self, state: &str) -> std::io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`, for this
/// process when `WATCHDOG_PID` is set).
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One look at the channel's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The pipeline runs.
    pub running: bool,
    /// Frames captured since the daemon started.
    pub frames: u64,
    /// Segments published since the daemon started.
    pub segments: u64,
}

impl Sample {
    /// The counters now.
    pub fn of(status: &ChannelStatus) -> Self {
        Self {
            running: status.running.load(Ordering::Relaxed),
            frames: status.capture.frames_captured.load(Ordering::Relaxed),
            segments: status.segments_published.load(Ordering::Relaxed),
        }
    }
}

/// Judges the data plane's progress from successive samples: frames must
/// keep arriving, and segments keep being published, while the pipeline
/// runs. A channel stopped on purpose is healthy (the daemon serves its
/// API and swarm; nothing is due).
#[derive(Debug)]
pub struct Health {
    frame_limit: Duration,
    segment_limit: Duration,
    last: Sample,
    frames_moved: Instant,
    segments_moved: Instant,
}

/// What stopped moving.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Stall {
    /// Capture stopped delivering frames.
    #[error("no frame captured for {seconds:.1} s (frame {frame})")]
    Frames {
        /// How long since the last frame.
        seconds: f64,
        /// Frames captured so far.
        frame: u64,
    },
    /// Frames arrive but no segment is published.
    #[error("no segment published for {seconds:.1} s ({segments} so far)")]
    Segments {
        /// How long since the last segment.
        seconds: f64,
        /// Segments published so far.
        segments: u64,
    },
}

impl Health {
    /// Frames must move within `frame_limit`, segments within
    /// `segment_limit` (a few segment lengths plus the encode time).
    pub fn new(frame_limit: Duration, segment_limit: Duration, now: Instant) -> Self {
        let last = Sample { running: false, frames: 0, segments: 0 };
        Self { frame_limit, segment_limit, last, frames_moved: now, segments_moved: now }
    }

    /// Takes `sample` seen at `now`; `Err` says what stalled.
    pub fn check(&mut self, sample: Sample, now: Instant) -> Result<(), Stall> {
        let last = std::mem::replace(&mut self.last, sample);
        if !sample.running || !last.running {
            // Stopped, or just (re)started: the clocks start now.
            self.frames_moved = now;
            self.segments_moved = now;
            return Ok(());
        }
        if sample.frames != last.frames {
            self.frames_moved = now;
        }
        if sample.segments != last.segments {
            self.segments_moved = now;
        }
        let still = now.duration_since(self.frames_moved);
        if still > self.frame_limit {
            return Err(Stall::Frames { seconds: still.as_secs_f64(), frame: sample.frames });
        }
        let still = now.duration_since(self.segments_moved);
        if still > self.segment_limit {
            return Err(Stall::Segments { seconds: still.as_secs_f64(), segments: sample.segments });
        }
        Ok(())
    }
}

/// Starts the thread that tells systemd about the daemon: READY=1 once the
/// pipeline captures (at once when `standby`), STATUS= lines, and WATCHDOG=1
/// while [`Health`] holds. Does nothing outside systemd.
pub fn start(status: Arc<ChannelStatus>, segment_s: f64, standby: bool, stop: Arc<AtomicBool>) {
    let notifier = match Notifier::from_env() {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("NOTIFY_SOCKET unusable, systemd is not told about readiness: {e}");
            return;
        }
    };
    let watchdog = watchdog_period();
    let spawned = std::thread::Builder::new().name("sd-notify".into()).spawn(move || {
        notify_loop(&notifier, &status, segment_s, standby, watchdog, &stop);
    });
    if let Err(e) = spawned {
        tracing::error!("systemd notification thread not started: {e}");
    }
}

fn notify_loop(
    notifier: &Notifier,
    status: &ChannelStatus,
    segment_s: f64,
    standby: bool,
    watchdog: Option<Duration>,
    stop: &AtomicBool,
) {
    // Pings at a third of the period; status at least once a second.
    let tick = watchdog.map_or(Duration::from_secs(1), |w| (w / 3).min(Duration::from_secs(1)));
    let frame_limit = Duration::from_secs(5);
    let segment_limit = Duration::from_secs_f64(3.0 * segment_s + 10.0);
    let mut health = Health::new(frame_limit, segment_limit, Instant::now());
    let mut ready = false;
    let mut stalled: Option<Stall> = None;
    let send = |state: &str| {
        if let Err(e) = notifier.send(state) {
            tracing::warn!("sd_notify: {e}");
        }
    };
    if let Some(w) = watchdog {
        tracing::info!(period_s = w.as_secs_f64(), "systemd watchdog on: pinged while the pipeline makes progress");
    }
    while !stop.load(Ordering::Relaxed) {
        let sample = Sample::of(status);
        // Waiting for a capture device is a state the operator must see
        // (admin API), not a failed start for systemd to repeat.
        let waiting = status.waiting_for_device.load(Ordering::Relaxed);
        if !ready && (standby || waiting || (sample.running && sample.frames > 0)) {
            ready = true;
            send("READY=1\nSTATUS=running");
            tracing::info!("ready (told systemd)");
        }
        match health.check(sample, Instant::now()) {
            Ok(()) => {
                if stalled.take().is_some() {
                    tracing::info!("data plane moving again; watchdog pings resume");
                }
                let what = match (sample.running, waiting) {
                    (true, _) => "encoding",
                    (false, true) => "waiting for the capture device",
                    (false, false) => "channel stopped",
                };
                // Pinged while starting too: start-up (the clock's lock wait
                // can exceed the watchdog period) is bounded by
                // TimeoutStartSec, not by the watchdog.
                let ping = if watchdog.is_some() { "WATCHDOG=1\n" } else { "" };
                send(&format!("{ping}STATUS={what}: {} frames, {} segments", sample.frames, sample.segments));
            }
            Err(why) => {
                if stalled.is_none() {
                    tracing::error!("data plane stalled: {why}; watchdog pings stopped");
                }
                send(&format!("STATUS=stalled: {why}"));
                stalled = Some(why);
            }
        }
        std::thread::sleep(tick);
    }
    send("STOPPING=1");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(base: Instant, s: f64) -> Instant {
        base + Duration::from_secs_f64(s)
    }

    fn running(frames: u64, segments: u64) -> Sample {
        Sample { running: true, frames, segments }
    }

    #[test]
    fn progress_is_healthy_and_a_frame_stall_is_not() {
        let t = Instant::now();
        let mut h = Health::new(Duration::from_secs(5), Duration::from_secs(20), t);
        assert!(h.check(running(1, 0), at(t, 0.0)).is_ok());
        for i in 1..10 {
            assert!(h.check(running(1 + i * 25, i / 2), at(t, i as f64)).is_ok());
        }
        // Frames stop at 9 s.
        assert!(h.check(running(226, 4), at(t, 12.0)).is_ok());
        assert!(h.check(running(226, 4), at(t, 13.9)).is_ok());
        let err = h.check(running(226, 4), at(t, 14.5)).unwrap_err();
        assert!(matches!(err, Stall::Frames { frame: 226, .. }), "{err}");
        assert!(err.to_string().contains("no frame captured"), "{err}");
    }

    #[test]
    fn frames_without_segments_is_a_stall() {
        let t = Instant::now();
        let mut h = Health::new(Duration::from_secs(5), Duration::from_secs(16), t);
        assert!(h.check(running(1, 0), at(t, 0.0)).is_ok());
        for i in 1..=15 {
            assert!(h.check(running(1 + i * 25, 0), at(t, i as f64)).is_ok(), "at {i} s");
        }
        let err = h.check(running(500, 0), at(t, 17.0)).unwrap_err();
        assert!(matches!(err, Stall::Segments { segments: 0, .. }), "{err}");
        // A segment clears it.
        assert!(h.check(running(525, 1), at(t, 18.0)).is_ok());
    }

    #[test]
    fn a_stopped_channel_is_healthy_and_a_restart_gets_fresh_limits() {
        let t = Instant::now();
        let mut h = Health::new(Duration::from_secs(5), Duration::from_secs(16), t);
        assert!(h.check(running(10, 1), at(t, 0.0)).is_ok());
        let stopped = Sample { running: false, frames: 10, segments: 1 };
        assert!(h.check(stopped, at(t, 1.0)).is_ok());
        assert!(h.check(stopped, at(t, 100.0)).is_ok());
        // Started again at 100 s: limits count from here.
        assert!(h.check(running(10, 1), at(t, 101.0)).is_ok());
        assert!(h.check(running(11, 1), at(t, 104.0)).is_ok());
        assert!(h.check(running(11, 1), at(t, 110.0)).is_err());
    }

    #[test]
    fn notifications_reach_the_socket_path_and_abstract_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        Notifier::connect(path.to_str().unwrap()).unwrap().send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("lockstep-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::connect(&format!("@{name}")).unwrap().send("WATCHDOG=1").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
