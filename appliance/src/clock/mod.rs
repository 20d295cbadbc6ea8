//! Media clock: the time base that stamps every frame.
//!
//! Media time is TAI in nanoseconds since 1970-01-01 TAI. Every source is
//! read against the local CLOCK_REALTIME (UTC): the system source uses it
//! as it is (NTP/chrony keep it right); the PTP sources feed offsets of the
//! local clock against the grandmaster (from ptp4l, or read from a PTP
//! hardware clock) into a [`Discipline`], which filters them, tracks lock
//! and holdover, and turns local time into disciplined time without ever
//! going backwards. Deliberate errors for tests and drills come on top
//! ([`fault`]). See docs/time.md.

pub mod fault;
mod source;
pub mod trim;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use lockstep_ptp::servo::ClockState;
use lockstep_ptp::servo::{Discipline, ServoConfig};

use crate::config::{ClockConfig, ClockSource};
use crate::metrics::{self, Exposition};
use fault::Fault;

/// A source of media time.
pub trait MediaClock: Send + Sync {
    /// Current TAI time in nanoseconds since the epoch.
    fn now_tai_ns(&self) -> i128;
    /// TAI − UTC in seconds.
    fn utc_tai_offset_s(&self) -> i64;
    /// State, error estimate and source health, for status and confidence.
    fn quality(&self) -> ClockQuality;
    /// Short description for logs.
    fn describe(&self) -> String;

    /// Sleeps until the clock reads at least `tai_ns` (returns at once if past).
    fn sleep_until(&self, tai_ns: i128) {
        loop {
            let now = self.now_tai_ns();
            if now >= tai_ns {
                return;
            }
            let wait = u64::try_from(tai_ns - now).unwrap_or(u64::MAX).min(50_000_000);
            std::thread::sleep(Duration::from_nanos(wait));
        }
    }
}

/// What a media clock reports about itself (exported as metrics, shown by
/// `lockstep clock`; feeds the appliance's confidence score).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClockQuality {
    /// Configured source and where it is read.
    pub source: String,
    /// Lock state.
    #[serde(serialize_with = "state_name")]
    pub state: ClockState,
    /// Estimated error of media time (1 σ), ns; `None` when unknown (a
    /// free-running clock with no estimate).
    pub error_ns: Option<f64>,
    /// Estimated offset of the local clock from the reference, ns.
    pub offset_ns: f64,
    /// Estimated frequency error of the local clock, parts per billion.
    pub frequency_ppb: f64,
    /// Seconds since the last offset measurement (0 when none yet).
    pub since_measurement_s: f64,
    /// Seconds in holdover (0 unless in holdover).
    pub holdover_s: f64,
    /// Grandmaster identity (`xxxxxx.xxxx.xxxxxx`), when known.
    pub grandmaster: Option<String>,
    /// Grandmaster changes seen.
    pub grandmaster_changes: u32,
    /// Offset measurements taken.
    pub measurements: u64,
    /// Failed reads of the source.
    pub source_errors: u64,
    /// Malformed replies from the source, dropped.
    pub malformed: u64,
    /// The last source error, if the source is failing now.
    pub last_error: Option<String>,
    /// The source could not be read yet: media time is the system clock.
    pub fallback: bool,
    /// TAI − UTC in use, s.
    pub utc_tai_offset_s: i64,
    /// Injected fault, if any (tests and drills).
    pub fault: Option<String>,
}

fn state_name<S: serde::Serializer>(s: &ClockState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.name())
}

impl ClockQuality {
    /// Adds the clock's figures to an exposition, labelled with the channel.
    pub fn export(&self, channel: &str, out: &mut Exposition) {
        for s in ClockState::ALL {
            out.gauge(
                "lockstep_clock_state",
                "Media clock lock state (1 for the current state).",
                &[("channel", channel), ("state", s.name())],
                metrics::flag(s == self.state),
            );
        }
        let at = [("channel", channel)];
        out.gauge(
            "lockstep_clock_error_ns",
            "Estimated media clock error (1 sigma), ns; NaN if unknown.",
            &at,
            self.error_ns.unwrap_or(f64::NAN),
        );
        out.gauge(
            "lockstep_clock_offset_ns",
            "Estimated local clock offset from the reference, ns.",
            &at,
            self.offset_ns,
        );
        out.gauge(
            "lockstep_clock_frequency_ppb",
            "Estimated local clock frequency error, ppb.",
            &at,
            self.frequency_ppb,
        );
        out.gauge("lockstep_clock_holdover_seconds", "Time in holdover, s.", &at, self.holdover_s);
        out.gauge(
            "lockstep_clock_fallback",
            "1 when the time source is unreachable and the system clock is used.",
            &at,
            metrics::flag(self.fallback),
        );
        out.counter(
            "lockstep_clock_grandmaster_changes_total",
            "Grandmaster changes seen.",
            &at,
            f64::from(self.grandmaster_changes),
        );
        out.counter("lockstep_clock_measurements_total", "Offset measurements taken.", &at, self.measurements as f64);
        out.counter(
            "lockstep_clock_source_errors_total",
            "Failed reads of the time source.",
            &at,
            self.source_errors as f64,
        );
        out.counter(
            "lockstep_clock_malformed_total",
            "Malformed time source replies dropped.",
            &at,
            self.malformed as f64,
        );
    }
}

/// Why a clock could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The clock's poller thread could not start.
    #[error("media clock: cannot start the {0} poller: {1}")]
    Thread(&'static str, std::io::Error),
}

/// CLOCK_REALTIME in nanoseconds since 1970 (UTC).
pub fn realtime_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// State shared between a clock and its poller thread.
#[derive(Debug)]
struct Shared {
    source: String,
    /// `None` for the system source (nothing to discipline).
    discipline: Option<Mutex<Discipline>>,
    status: Mutex<source::Status>,
    utc_offset_s: AtomicI64,
    fault: Fault,
    /// The swarm's corrections of this channel's media clock, once set.
    trim: std::sync::OnceLock<Arc<trim::Trim>>,
    /// Media time has been read: TAI − UTC may no longer change.
    handed_out: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, source::Status> {
        crate::sync::lock(&self.status)
    }

    fn discipline(&self) -> Option<MutexGuard<'_, Discipline>> {
        self.discipline.as_ref().map(|d| crate::sync::lock(d))
    }
}

/// The daemon's media clock.
#[derive(Debug)]
pub struct Clock {
    shared: Arc<Shared>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl Clock {
    /// The system clock plus a TAI offset, no poller.
    pub fn system(utc_tai_offset_s: i64) -> Self {
        Self::from_shared(shared("system clock".into(), None, utc_tai_offset_s, Fault::default()), None)
    }

    /// Opens the configured clock. A PTP source that cannot be reached is
    /// not an error: the clock runs on the system clock, says so in its
    /// quality report and the log, and keeps trying. Waits up to
    /// `lock_wait_s` for a PTP source to lock.
    pub fn open(cfg: &ClockConfig) -> Result<Self, ClockError> {
        let fault = Fault::from_config(&cfg.fault);
        let clock = match cfg.source {
            ClockSource::System => {
                Self::from_shared(shared("system clock".into(), None, cfg.utc_tai_offset_s, fault), None)
            }
            ClockSource::Ptp4l | ClockSource::Phc => {
                let servo = ServoConfig {
                    measurement_noise_ns: cfg.measurement_noise_ns,
                    lock_threshold_ns: cfg.lock_threshold_ns,
                    holdover_after_ns: i64::from(cfg.holdover_after_ms) * 1_000_000,
                    max_slew: cfg.max_slew_ppm * 1e-6,
                    ..ServoConfig::default()
                };
                let reader = source::Reader::new(cfg);
                let sh =
                    shared(reader.describe(), Some(Mutex::new(Discipline::new(servo))), cfg.utc_tai_offset_s, fault);
                sh.status().fallback = true;
                let poll = Duration::from_millis(u64::from(cfg.poll_interval_ms));
                let for_thread = Arc::clone(&sh);
                let handle = std::thread::Builder::new()
                    .name("clock".into())
                    .spawn(move || source::poll(&for_thread, reader, poll))
                    .map_err(|e| ClockError::Thread("clock", e))?;
                let clock = Self::from_shared(sh, Some(handle));
                clock.wait_for_lock(Duration::from_secs_f64(cfg.lock_wait_s));
                clock
            }
        };
        if let Some(f) = clock.shared.fault.describe() {
            tracing::warn!(fault = %f, "media clock fault injection active");
        }
        Ok(clock)
    }

    fn from_shared(shared: Arc<Shared>, poller: Option<std::thread::JoinHandle<()>>) -> Self {
        Self { shared, poller }
    }

    fn wait_for_lock(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let q = self.quality();
            if q.state == ClockState::Locked {
                tracing::info!(waited_ms = started.elapsed().as_millis() as u64, source = %q.source, "media clock locked");
                return;
            }
            if started.elapsed() >= limit {
                tracing::warn!(
                    state = q.state.name(),
                    source = %q.source,
                    error = q.last_error.as_deref().unwrap_or("none"),
                    "media clock not locked after {:.0} s; starting on {} time, corrections will be slewed in",
                    limit.as_secs_f64(),
                    if q.fallback { "system clock" } else { "partly disciplined" }
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The local clock reading and the media time made from it.
    pub fn read(&self) -> (i64, i128) {
        let local = realtime_ns();
        self.shared.handed_out.store(true, Ordering::Relaxed);
        let disciplined = match self.shared.discipline() {
            Some(mut d) => d.now(local),
            None => local,
        };
        let tai = i128::from(disciplined)
            + i128::from(self.shared.utc_offset_s.load(Ordering::Relaxed)) * 1_000_000_000
            + i128::from(self.shared.fault.at(local))
            + self.shared.trim.get().map_or(0, |t| t.at(local));
        (local, tai)
    }

    /// How far drills (the injected fault) and the swarm's corrections move
    /// this clock from the time it would read without them, now, ns. A
    /// live test source shows the picture of that undisturbed time, as a
    /// camera shows the world's (`capture::run`).
    pub fn adjustment_ns(&self) -> i128 {
        let local = realtime_ns();
        i128::from(self.shared.fault.at(local)) + self.shared.trim.get().map_or(0, |t| t.at(local))
    }

    /// The capture is about to take frame `n`: swarm corrections due at
    /// that frame start now ([`trim::Trim::reach`]).
    pub fn reach_frame(&self, n: i64) {
        if let Some(t) = self.shared.trim.get() {
            t.reach(n, realtime_ns());
        }
    }

    /// Takes the channel's swarm corrections (set once, before media time
    /// is first read; they outlive the clock, a new run's clock takes the
    /// same).
    pub fn follow_trim(&self, trim: Arc<trim::Trim>) {
        let _ = self.shared.trim.set(trim);
    }

    /// The fault injection of this clock (tests, drills, the admin API).
    pub fn fault(&self) -> &Fault {
        &self.shared.fault
    }
}

fn shared(source: String, discipline: Option<Mutex<Discipline>>, utc_offset_s: i64, fault: Fault) -> Arc<Shared> {
    Arc::new(Shared {
        source,
        discipline,
        status: Mutex::new(source::Status::default()),
        utc_offset_s: AtomicI64::new(utc_offset_s),
        fault,
        trim: std::sync::OnceLock::new(),
        handed_out: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    })
}

impl MediaClock for Clock {
    fn now_tai_ns(&self) -> i128 {
        self.read().1
    }

    fn utc_tai_offset_s(&self) -> i64 {
        self.shared.utc_offset_s.load(Ordering::Relaxed)
    }

    fn quality(&self) -> ClockQuality {
        let now = realtime_ns();
        let status = self.shared.status().clone();
        let mut q = ClockQuality {
            source: self.shared.source.clone(),
            state: ClockState::Freerun,
            error_ns: None,
            offset_ns: 0.0,
            frequency_ppb: 0.0,
            since_measurement_s: 0.0,
            holdover_s: 0.0,
            grandmaster: status.grandmaster.map(|g| g.to_string()),
            grandmaster_changes: 0,
            measurements: status.measurements,
            source_errors: status.errors,
            malformed: status.malformed,
            last_error: status.last_error.clone(),
            fallback: status.fallback,
            utc_tai_offset_s: self.utc_tai_offset_s(),
            fault: self.shared.fault.describe(),
        };
        match self.shared.discipline() {
            Some(d) => {
                let r = d.quality(now);
                q.state = r.state;
                q.error_ns = r.error_ns.is_finite().then_some(r.error_ns);
                q.offset_ns = r.offset_ns;
                q.frequency_ppb = r.frequency * 1e9;
                q.since_measurement_s = r.since_last_ns as f64 * 1e-9;
                q.grandmaster_changes = r.grandmaster_changes;
                if r.state == ClockState::Holdover {
                    q.holdover_s = q.since_measurement_s;
                }
            }
            None => {
                // What the kernel knows of NTP/chrony's discipline.
                let k = source::kernel_sync();
                q.state = if k.synchronised { ClockState::Locked } else { ClockState::Freerun };
                q.error_ns = k.synchronised.then_some(k.estimated_error_ns);
            }
        }
        q
    }

    fn describe(&self) -> String {
        format!("{}, TAI = UTC + {} s", self.shared.source, self.utc_tai_offset_s())
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.poller.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_adds_the_tai_offset() {
        let c = Clock::system(37);
        let utc = realtime_ns();
        let tai = c.now_tai_ns();
        let diff = tai - i128::from(utc) - 37_000_000_000;
        assert!((0..1_000_000_000).contains(&diff), "offset not applied: {diff}");
        assert!(c.describe().contains("TAI = UTC + 37 s"), "{}", c.describe());
    }

    #[test]
    fn sleep_until_the_past_returns() {
        let c = Clock::system(0);
        c.sleep_until(0);
        let target = c.now_tai_ns() + 5_000_000;
        c.sleep_until(target);
        assert!(c.now_tai_ns() >= target);
    }

    #[test]
    fn a_missing_ptp4l_falls_back_to_the_system_clock_and_says_why() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = ClockConfig {
            source: ClockSource::Ptp4l,
            ptp4l_socket: dir.path().join("no-ptp4l"),
            poll_interval_ms: 20,
            holdover_after_ms: 100,
            lock_wait_s: 0.3,
            ..ClockConfig::default()
        };
        let c = Clock::open(&cfg).expect("opens anyway");
        let q = c.quality();
        assert!(q.fallback, "{q:?}");
        assert_eq!(q.state, ClockState::Freerun);
        let e = q.last_error.expect("an error is reported");
        assert!(e.contains("no-ptp4l"), "the error names the socket: {e}");
        assert!(q.source_errors > 0);
        let (local, tai) = c.read();
        assert!((tai - i128::from(local) - 37_000_000_000).abs() < 1_000_000, "system time while falling back");
    }

    #[test]
    fn quality_renders_as_prometheus_text() {
        let c = Clock::system(37);
        let mut e = Exposition::new();
        c.quality().export("ch", &mut e);
        let text = e.render();
        assert!(text.contains("lockstep_clock_state{channel=\"ch\",state=\"freerun\"}"), "{text}");
        assert!(text.contains("lockstep_clock_fallback{channel=\"ch\"} 0"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        }
    }
}
