//! Reading a time source: ptp4l's offsets over its management socket, a
//! PTP hardware clock against the system clock, or both (ptp4l with
//! hardware timestamping disciplines the PHC, not the system clock). The
//! poller thread feeds what it reads into the clock's discipline.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lockstep_ptp::phc::{Phc, PhcError};
use lockstep_ptp::{ClockIdentity, DataSet, Pmc, PmcError, Response};

use super::{ClockState, Shared, realtime_ns};
use crate::config::{ClockConfig, ClockSource};

/// Source health, shared with the clock.
#[derive(Debug, Clone, Default)]
pub(super) struct Status {
    pub grandmaster: Option<ClockIdentity>,
    pub measurements: u64,
    pub errors: u64,
    pub malformed: u64,
    pub last_error: Option<String>,
    /// Nothing measured yet: media time is the system clock.
    pub fallback: bool,
}

/// Why a read of the time source failed (the poller reports it and tries
/// again; a socket error also drops the ptp4l client so it reconnects).
#[derive(Debug, thiserror::Error)]
enum SourceError {
    /// ptp4l's management socket failed or did not answer.
    #[error(transparent)]
    Ptp4l(#[from] PmcError),
    /// The PTP hardware clock could not be opened or read.
    #[error(transparent)]
    Phc(#[from] PhcError),
    /// The configured interface timestamps in software only.
    #[error("interface {0} has no PTP hardware clock (software timestamping only)")]
    NoPhc(String),
    /// Neither `clock.phc` nor `clock.interface` names a PHC.
    #[error("no PHC configured")]
    NoPhcConfigured,
    /// ptp4l answered, but not with the data set asked for.
    #[error("ptp4l at {} answered TIME_STATUS_NP with {answers}", .socket.display())]
    Unexpected {
        /// ptp4l's socket.
        socket: PathBuf,
        /// What it answered.
        answers: String,
    },
}

/// Where the PHC comes from.
#[derive(Debug, Clone)]
enum PhcSpec {
    Device(PathBuf),
    Interface(String),
}

/// One offset measurement: local − reference at local time `at`, ns.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    at: i64,
    offset_ns: f64,
    grandmaster: ClockIdentity,
}

/// What one read of the source gave.
#[derive(Debug)]
enum Reading {
    Measured(Measurement),
    /// ptp4l has not received a new Sync since the last read.
    NoNews,
    /// ptp4l is running but follows no grandmaster.
    NoGrandmaster,
}

/// Reads offsets from the configured source; reconnects after failures.
#[derive(Debug)]
pub(super) struct Reader {
    use_ptp4l: bool,
    socket: PathBuf,
    domain: u8,
    timeout: Duration,
    phc_spec: Option<PhcSpec>,
    pmc: Option<Pmc>,
    phc: Option<Phc>,
    last_ingress: Option<i64>,
    /// Malformed replies counted by earlier clients.
    malformed_before: u64,
}

impl Reader {
    pub(super) fn new(cfg: &ClockConfig) -> Self {
        let phc_spec = match (&cfg.phc, &cfg.interface) {
            (Some(p), _) => Some(PhcSpec::Device(p.clone())),
            (None, Some(i)) => Some(PhcSpec::Interface(i.clone())),
            (None, None) => None,
        };
        Self {
            use_ptp4l: cfg.source == ClockSource::Ptp4l,
            socket: cfg.ptp4l_socket.clone(),
            domain: cfg.domain,
            timeout: Duration::from_millis(u64::from(cfg.poll_interval_ms).clamp(20, 1_000)),
            phc_spec,
            pmc: None,
            phc: None,
            last_ingress: None,
            malformed_before: 0,
        }
    }

    pub(super) fn describe(&self) -> String {
        let phc = match &self.phc_spec {
            Some(PhcSpec::Device(p)) => format!("PHC {}", p.display()),
            Some(PhcSpec::Interface(i)) => format!("PHC of {i}"),
            None => String::new(),
        };
        match (self.use_ptp4l, phc.is_empty()) {
            (true, true) => format!("ptp4l at {} (domain {})", self.socket.display(), self.domain),
            (true, false) => format!("ptp4l at {} (domain {}) with {phc}", self.socket.display(), self.domain),
            (false, _) => phc,
        }
    }

    fn malformed(&self) -> u64 {
        self.malformed_before + self.pmc.as_ref().map_or(0, |p| p.malformed)
    }

    fn pmc(&mut self) -> Result<&mut Pmc, SourceError> {
        let pmc = match self.pmc.take() {
            Some(p) => p,
            None => Pmc::connect(&self.socket, &client_socket_path(), self.domain, self.timeout)?,
        };
        Ok(self.pmc.insert(pmc))
    }

    /// Forgets the client after a socket error, so the next read reconnects
    /// (ptp4l restarted, socket recreated).
    fn drop_client(&mut self) {
        if let Some(p) = self.pmc.take() {
            self.malformed_before += p.malformed;
        }
    }

    fn phc(&mut self) -> Result<&mut Phc, SourceError> {
        if let Some(phc) = self.phc.take() {
            return Ok(self.phc.insert(phc));
        }
        let path = match &self.phc_spec {
            Some(PhcSpec::Device(p)) => p.clone(),
            Some(PhcSpec::Interface(i)) => {
                let index = lockstep_ptp::phc::ts_info(i)?.phc_index.ok_or_else(|| SourceError::NoPhc(i.clone()))?;
                PathBuf::from(format!("/dev/ptp{index}"))
            }
            None => return Err(SourceError::NoPhcConfigured),
        };
        Ok(self.phc.insert(Phc::open(&path)?))
    }

    /// System (UTC) − PHC (TAI, moved to UTC) now, ns, and when.
    fn system_minus_phc(&mut self, utc_offset_s: i64) -> Result<(i64, f64), SourceError> {
        let sample = match self.phc()?.offset() {
            Ok(s) => s,
            Err(e) => {
                self.phc = None;
                return Err(e.into());
            }
        };
        let phc_utc = sample.phc_ns - utc_offset_s * 1_000_000_000;
        Ok((sample.system_ns, (sample.system_ns - phc_utc) as f64))
    }

    /// The grandmaster's TAI − UTC, if it announces a valid one.
    fn utc_offset(&mut self) -> Result<Option<i64>, SourceError> {
        let answers = self.pmc()?.get(DataSet::TimePropertiesDataSet)?;
        Ok(answers.iter().find_map(|r| match r {
            Response::TimeProperties(tp) if tp.utc_offset_valid && tp.ptp_timescale => {
                Some(i64::from(tp.current_utc_offset_s))
            }
            _ => None,
        }))
    }

    fn read(&mut self, utc_offset_s: i64) -> Result<Reading, SourceError> {
        if !self.use_ptp4l {
            let (at, offset_ns) = self.system_minus_phc(utc_offset_s)?;
            return Ok(Reading::Measured(Measurement { at, offset_ns, grandmaster: ClockIdentity([0; 8]) }));
        }
        let answers = match self.pmc()?.get(DataSet::TimeStatusNp) {
            Ok(a) => a,
            Err(e) => {
                if matches!(e, PmcError::Socket { .. }) {
                    self.drop_client();
                }
                return Err(e.into());
            }
        };
        let ts = answers
            .iter()
            .find_map(|r| match r {
                Response::TimeStatus(ts) => Some(*ts),
                _ => None,
            })
            .ok_or_else(|| SourceError::Unexpected { socket: self.socket.clone(), answers: format!("{answers:?}") })?;
        if !ts.gm_present {
            return Ok(Reading::NoGrandmaster);
        }
        if self.last_ingress == Some(ts.ingress_time_ns) {
            return Ok(Reading::NoNews);
        }
        self.last_ingress = Some(ts.ingress_time_ns);
        let now = realtime_ns();
        // With software timestamping the ingress time is on this clock and
        // dates the offset exactly; with a PHC it is PHC time: use now.
        let at = if (ts.ingress_time_ns - now).abs() < 2_000_000_000 { ts.ingress_time_ns } else { now };
        let mut offset_ns = ts.master_offset_ns as f64;
        if self.phc_spec.is_some() {
            offset_ns += self.system_minus_phc(utc_offset_s)?.1;
        }
        Ok(Reading::Measured(Measurement { at, offset_ns, grandmaster: ts.gm_identity }))
    }
}

/// This process's client socket for ptp4l: in the service's runtime
/// directory when systemd gives one, else the temporary directory.
fn client_socket_path() -> PathBuf {
    let dir = std::env::var_os("RUNTIME_DIRECTORY").map_or_else(std::env::temp_dir, PathBuf::from);
    dir.join(format!("lockstep-pmc-{}.sock", std::process::id()))
}

/// Polls the source until the clock is dropped.
pub(super) fn poll(shared: &Shared, mut reader: Reader, every: Duration) {
    let mut last_state = None;
    let mut properties_read: Option<Instant> = None;
    let mut offset_warned = false;
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if reader.use_ptp4l
            && properties_read.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            && let Ok(announced) = reader.utc_offset()
        {
            properties_read = Some(Instant::now());
            if let Some(gm_offset) = announced {
                adopt_utc_offset(shared, gm_offset, &mut offset_warned);
            }
        }
        let utc_offset_s = shared.utc_offset_s.load(Ordering::Relaxed);
        let reading = reader.read(utc_offset_s);
        {
            let mut status = shared.status();
            status.malformed = reader.malformed();
            match reading {
                Ok(Reading::Measured(m)) => {
                    if let Some(mut d) = shared.discipline() {
                        d.measure(m.at, m.offset_ns, m.grandmaster.0);
                    }
                    if status.last_error.take().is_some() {
                        tracing::info!(source = %shared.source, "time source answering again");
                    }
                    if reader.use_ptp4l && status.grandmaster != Some(m.grandmaster) {
                        tracing::info!(grandmaster = %m.grandmaster, "following grandmaster");
                        status.grandmaster = Some(m.grandmaster);
                    }
                    status.measurements += 1;
                    status.fallback = false;
                }
                Ok(Reading::NoNews) => {}
                Ok(Reading::NoGrandmaster) => {
                    let e = format!("ptp4l at {} follows no grandmaster", reader.socket.display());
                    if status.last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!("{e}");
                        status.last_error = Some(e);
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    status.errors += 1;
                    if status.last_error.as_deref() != Some(e.as_str()) {
                        let fallback = if status.fallback { "; media time is the system clock" } else { "" };
                        tracing::warn!("time source: {e}{fallback}");
                        status.last_error = Some(e);
                    }
                }
            }
        }
        if let Some(d) = shared.discipline() {
            let q = d.quality(realtime_ns());
            if last_state != Some(q.state) {
                let error_ns = q.error_ns.is_finite().then_some(q.error_ns.round());
                match q.state {
                    ClockState::Holdover => tracing::warn!(error_ns, "media clock in holdover"),
                    s => tracing::info!(state = s.name(), error_ns, offset_ns = q.offset_ns.round(), "media clock"),
                }
                last_state = Some(q.state);
            }
        }
        // Sleep in short steps so a dropped clock stops its poller quickly.
        while !shared.stop.load(Ordering::Relaxed) && started.elapsed() < every {
            std::thread::sleep(every.saturating_sub(started.elapsed()).min(Duration::from_millis(50)));
        }
    }
}

/// Takes the grandmaster's TAI − UTC while no media time has been handed
/// out; later a change (a leap second) would step media time, so it is
/// only reported.
fn adopt_utc_offset(shared: &Shared, gm_offset: i64, warned: &mut bool) {
    let current = shared.utc_offset_s.load(Ordering::Relaxed);
    if gm_offset == current {
        return;
    }
    if !shared.handed_out.load(Ordering::Relaxed) {
        tracing::info!(configured = current, grandmaster = gm_offset, "TAI - UTC from the grandmaster");
        shared.utc_offset_s.store(gm_offset, Ordering::Relaxed);
    } else if !*warned {
        tracing::warn!(
            in_use = current,
            grandmaster = gm_offset,
            "the grandmaster announces a different TAI - UTC; keeping the one in use until restart"
        );
        *warned = true;
    }
}

/// What the kernel knows of the system clock's discipline (NTP/chrony).
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelSync {
    pub synchronised: bool,
    pub estimated_error_ns: f64,
}

/// Reads the kernel's NTP state without changing anything.
pub(super) fn kernel_sync() -> KernelSync {
    // SAFETY: `timex` is plain old data; all-zero is a valid value, and
    // modes = 0 makes adjtimex read only.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex for the call's duration.
    let state = unsafe { libc::adjtimex(&mut tx) };
    let synchronised = state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0;
    KernelSync { synchronised, estimated_error_ns: tx.esterror as f64 * 1_000.0 }
}
