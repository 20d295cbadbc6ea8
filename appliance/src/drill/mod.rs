//! Resource drills: the daemon starves, leaks or fills on purpose, slowly,
//! so the health agents, the history and the failure prediction see the
//! trouble coming the way a real one comes (docs/operations.md, "Drills").
//!
//! - [`cpu`]: CPU starvation — the daemon's cgroup CPU limit (`cpu.max`,
//!   or `cpu.cfs_quota_us` on a cgroup v1 hierarchy) ramps down;
//! - [`memory`]: a memory leak — the daemon allocates (and touches) more
//!   and more memory, never past 97 % of its limit;
//! - [`disk`]: the output's file system fills — a file beside the output
//!   grows (allocated, not written) until only the asked space is free.
//!
//! Each drill ramps linearly from harmless to its target over `ramp_s`,
//! holds there until `seconds`, then undoes itself; `DELETE
//! /api/v1/drills` undoes every drill at once. One drill of a kind runs at
//! a time. A thread per drill applies the ramp's level every [`TICK`].

pub mod cpu;
pub mod disk;
pub mod memory;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sync::lock;

/// How often a drill's level is brought to its ramp.
pub const TICK: Duration = Duration::from_millis(250);
/// Ended drills kept for `GET /api/v1/drills`.
const ENDED_KEPT: usize = 20;

/// What went wrong starting a drill.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// One of the kind runs already.
    #[error("a {0} drill is already running (DELETE /api/v1/drills ends it)")]
    Running(Kind),
    /// Nothing the daemon can limit.
    #[error("{0}")]
    Unsupported(String),
    /// The drill asks for more than is safe or possible.
    #[error("{0}")]
    Refused(String),
    /// A file the drill works through.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl DrillError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }
}

/// The kinds of resource drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// CPU starvation.
    Cpu,
    /// Memory leak.
    Memory,
    /// Output disk filling.
    Disk,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Disk => "disk",
        })
    }
}

/// A linear ramp from `from` to `to` over `ramp`, held at `to` until
/// `lasting` (ramp included) has passed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    /// Level at the start.
    pub from: f64,
    /// Level at the end of the ramp.
    pub to: f64,
    /// Time to go from one to the other.
    pub ramp: Duration,
    /// The drill's whole length.
    pub lasting: Duration,
}

impl Ramp {
    /// The level `elapsed` into the drill; `None` once it is over.
    pub fn at(&self, elapsed: Duration) -> Option<f64> {
        if elapsed >= self.lasting {
            return None;
        }
        let share = if self.ramp.is_zero() { 1.0 } else { (elapsed.as_secs_f64() / self.ramp.as_secs_f64()).min(1.0) };
        Some(self.from + (self.to - self.from) * share)
    }
}

/// What a drill does to the daemon: brought to a level every tick, undone
/// at the end.
pub trait Stress: Send {
    /// Brings the stress to `level` (the ramp's unit); answers the level
    /// reached (a leak may stop short of its target).
    fn apply(&mut self, level: f64) -> Result<f64, DrillError>;
    /// Takes every bit of it back.
    fn undo(&mut self);
}

/// A drill as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DrillInfo {
    /// Number of the drill since the daemon started.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// What it was asked, as asked.
    pub plan: serde_json::Value,
    /// Unix ms of its start.
    pub started_ms: u64,
    /// Unix ms of its end, once ended.
    pub ended_ms: Option<u64>,
    /// The level reached last (CPUs allowed, bytes leaked, bytes filled).
    pub level: f64,
    /// Why it ended early (an error applying it, or ended by command).
    pub ended_by: Option<String>,
}

struct Active {
    info: Arc<Mutex<DrillInfo>>,
    stop: Arc<AtomicBool>,
}

/// The appliance's drills: the running ones and the last ended.
#[derive(Default)]
pub struct Drills {
    active: Mutex<Vec<Active>>,
    ended: Mutex<std::collections::VecDeque<DrillInfo>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Drills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drills").field("active", &lock(&self.active).len()).finish_non_exhaustive()
    }
}

/// Told when a drill ends: its final figures.
pub type OnEnd = Box<dyn FnOnce(&DrillInfo) + Send>;

impl Drills {
    /// Starts a drill of `kind` driving `stress` along `ramp`; `plan` is
    /// what was asked (shown and audited); `on_end` hears its end.
    pub fn start(
        self: &Arc<Self>,
        kind: Kind,
        plan: serde_json::Value,
        ramp: Ramp,
        mut stress: Box<dyn Stress>,
        on_end: OnEnd,
    ) -> Result<DrillInfo, DrillError> {
        let mut active = lock(&self.active);
        active.retain(|a| lock(&a.info).ended_ms.is_none());
        if active.iter().any(|a| lock(&a.info).kind == kind) {
            return Err(DrillError::Running(kind));
        }
        // The first level is applied here, so a drill that cannot work
        // is refused with its reason rather than ending at once.
        let level = match stress.apply(ramp.from) {
            Ok(level) => level,
            Err(e) => {
                stress.undo();
                return Err(e);
            }
        };
        let info = DrillInfo {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            kind,
            plan,
            started_ms: crate::control::unix_ms(),
            ended_ms: None,
            level,
            ended_by: None,
        };
        let shared = Arc::new(Mutex::new(info.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        active.push(Active { info: Arc::clone(&shared), stop: Arc::clone(&stop) });
        let drills = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("drill-{kind}"))
            .spawn(move || {
                let ended_by = drive(&ramp, stress.as_mut(), &shared, &stop);
                stress.undo();
                let done = {
                    let mut info = lock(&shared);
                    info.ended_ms = Some(crate::control::unix_ms());
                    info.ended_by = ended_by;
                    info.clone()
                };
                let mut ended = lock(&drills.ended);
                if ended.len() == ENDED_KEPT {
                    ended.pop_front();
                }
                ended.push_back(done.clone());
                drop(ended);
                on_end(&done);
            })
            .map_err(|e| DrillError::Unsupported(format!("cannot start the drill's thread: {e}")))?;
        Ok(info)
    }

    /// The running drills, then the last ended ones (newest last).
    pub fn list(&self) -> (Vec<DrillInfo>, Vec<DrillInfo>) {
        let running =
            lock(&self.active).iter().map(|a| lock(&a.info).clone()).filter(|i| i.ended_ms.is_none()).collect();
        (running, lock(&self.ended).iter().cloned().collect())
    }

    /// Ends every running drill (each undoes itself within a tick);
    /// answers how many were running.
    pub fn stop_all(&self) -> usize {
        let active = lock(&self.active);
        let running: Vec<&Active> = active.iter().filter(|a| lock(&a.info).ended_ms.is_none()).collect();
        for a in &running {
            a.stop.store(true, Ordering::Relaxed);
        }
        running.len()
    }
}

/// Brings `stress` along `ramp` until it is over, stopped, or failing;
/// answers why it ended early.
fn drive(ramp: &Ramp, stress: &mut dyn Stress, info: &Mutex<DrillInfo>, stop: &AtomicBool) -> Option<String> {
    let start = Instant::now();
    loop {
        std::thread::sleep(TICK);
        if stop.load(Ordering::Relaxed) {
            return Some("ended by command".into());
        }
        // Past its length: ended by itself, no reason to give.
        let level = ramp.at(start.elapsed())?;
        match stress.apply(level) {
            Ok(reached) => lock(info).level = reached,
            Err(e) => {
                tracing::warn!("drill ended: {e}");
                return Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_goes_from_its_start_to_its_target_and_holds_until_the_end() {
        let r = Ramp { from: 2.0, to: 0.5, ramp: Duration::from_secs(10), lasting: Duration::from_secs(15) };
        assert_eq!(r.at(Duration::ZERO), Some(2.0));
        assert_eq!(r.at(Duration::from_secs(5)), Some(1.25));
        assert_eq!(r.at(Duration::from_secs(12)), Some(0.5));
        assert_eq!(r.at(Duration::from_secs(15)), None);
        let at_once = Ramp { ramp: Duration::ZERO, ..r };
        assert_eq!(at_once.at(Duration::ZERO), Some(0.5));
    }

    /// A stress that records its levels and whether it was undone.
    struct Recorder(Arc<Mutex<(Vec<f64>, bool)>>, Option<f64>);

    impl Stress for Recorder {
        fn apply(&mut self, level: f64) -> Result<f64, DrillError> {
            if self.1.is_some_and(|fail| level >= fail) {
                return Err(DrillError::Refused(format!("cannot reach {level}")));
            }
            lock(&self.0).0.push(level);
            Ok(level)
        }
        fn undo(&mut self) {
            lock(&self.0).1 = true;
        }
    }

    fn ramp(lasting_ms: u64) -> Ramp {
        Ramp {
            from: 0.0,
            to: 10.0,
            ramp: Duration::from_millis(lasting_ms),
            lasting: Duration::from_millis(lasting_ms),
        }
    }

    #[test]
    fn a_drill_ramps_ends_undoes_itself_and_is_listed_as_ended() {
        let drills = Arc::new(Drills::default());
        let seen = Arc::new(Mutex::new((Vec::new(), false)));
        let (tx, rx) = std::sync::mpsc::channel();
        let info = drills
            .start(
                Kind::Memory,
                serde_json::json!({"mb": 1}),
                ramp(900),
                Box::new(Recorder(Arc::clone(&seen), None)),
                Box::new(move |i| tx.send(i.clone()).unwrap()),
            )
            .unwrap();
        assert_eq!((info.id, info.kind, info.level), (1, Kind::Memory, 0.0));
        assert_eq!(drills.list().0.len(), 1);
        let again = drills.start(
            Kind::Memory,
            serde_json::json!({}),
            ramp(100),
            Box::new(Recorder(Arc::default(), None)),
            Box::new(|_| ()),
        );
        assert!(matches!(again, Err(DrillError::Running(Kind::Memory))), "one drill of a kind");
        let done = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(done.ended_by, None, "ran its course");
        let (levels, undone) = lock(&seen).clone();
        assert!(undone);
        assert!(levels.windows(2).all(|w| w[0] <= w[1]) && levels.len() >= 3, "{levels:?}");
        assert!(*levels.last().unwrap() > 5.0, "{levels:?}");
        let (running, ended) = drills.list();
        assert!(running.is_empty());
        assert_eq!(ended.len(), 1);
    }

    #[test]
    fn a_drill_is_stopped_by_command_or_by_its_own_error_and_undone_either_way() {
        let drills = Arc::new(Drills::default());
        let seen = Arc::new(Mutex::new((Vec::new(), false)));
        let (tx, rx) = std::sync::mpsc::channel();
        let long = Ramp { lasting: Duration::from_secs(600), ..ramp(600_000) };
        let tx2 = tx.clone();
        drills
            .start(
                Kind::Cpu,
                serde_json::json!({}),
                long,
                Box::new(Recorder(Arc::clone(&seen), None)),
                Box::new(move |i| tx2.send(i.clone()).unwrap()),
            )
            .unwrap();
        assert_eq!(drills.stop_all(), 1);
        let done = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(done.ended_by.as_deref(), Some("ended by command"));
        assert!(lock(&seen).1);
        let failing = Arc::new(Mutex::new((Vec::new(), false)));
        drills
            .start(
                Kind::Disk,
                serde_json::json!({}),
                ramp(2000),
                Box::new(Recorder(Arc::clone(&failing), Some(3.0))),
                Box::new(move |i| tx.send(i.clone()).unwrap()),
            )
            .unwrap();
        let done = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(done.ended_by.unwrap().contains("cannot reach"));
        assert!(lock(&failing).1, "undone after its error");
        let refused = drills.start(
            Kind::Disk,
            serde_json::json!({}),
            Ramp { from: 5.0, ..ramp(100) },
            Box::new(Recorder(Arc::default(), Some(3.0))),
            Box::new(|_| ()),
        );
        assert!(matches!(refused, Err(DrillError::Refused(_))), "the first level is tried before the answer");
    }
}
