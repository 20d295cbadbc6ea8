//! CPU starvation: the daemon's CPU limit, lowered step by step.
//!
//! The limit is its cgroup's: `cpu.max` on cgroup v2, `cpu.cfs_quota_us`
//! on a v1 `cpu` hierarchy. A daemon in the hierarchy's root (which has no
//! limit) is moved into a child cgroup for the drill and back after it.
//! Writing a cgroup needs root or a delegated cgroup (systemd
//! `Delegate=yes`); the error says so.

use std::path::{Path, PathBuf};

use super::{DrillError, Stress};
use crate::health::cgroup::{Cgroup, V1_MOUNT};

/// The CFS period the drill sets, µs.
const PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes, µs.
const MIN_QUOTA_US: u64 = 1_000;

/// Where the limit is written.
#[derive(Debug)]
enum Place {
    /// A v2 cgroup's `cpu.max` (its text before the drill).
    V2 { dir: PathBuf, before: String },
    /// A v1 cgroup's quota and period (before the drill).
    V1 { dir: PathBuf, before: (String, String) },
    /// A child cgroup made for the drill; the daemon moves back `home`.
    Child { home: PathBuf, child: PathBuf, v1: bool },
}

/// The daemon's CPU limit, held for a drill.
#[derive(Debug)]
pub struct CpuLimit {
    place: Place,
    undone: bool,
}

fn read(path: &Path) -> Result<String, DrillError> {
    std::fs::read_to_string(path).map_err(|e| DrillError::io(path, e))
}

fn write(path: &Path, text: &str) -> Result<(), DrillError> {
    std::fs::write(path, text).map_err(|e| cgroup_error(path, e))
}

/// A cgroup file or directory that cannot be written: the permission
/// case says what the service needs.
fn cgroup_error(path: &Path, e: std::io::Error) -> DrillError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            DrillError::Unsupported(format!(
                "cannot write {}: {e} (a CPU drill needs root or a delegated cgroup: systemd Delegate=yes and no \
                 ProtectControlGroups)",
                path.display()
            ))
        }
        _ => DrillError::io(path, e),
    }
}

impl CpuLimit {
    /// Takes hold of the CPU limit of the daemon's cgroup `own`.
    pub fn take(own: &Cgroup) -> Result<Self, DrillError> {
        let v2 = own.dir.join("cgroup.controllers").exists();
        if own.dir.join("cpu.max").exists() {
            let dir = own.dir.clone();
            let before = read(&dir.join("cpu.max"))?;
            return Ok(Self { place: Place::V2 { dir, before }, undone: false });
        }
        if let Some(dir) = &own.v1_cpu {
            if dir.as_path() == Path::new(V1_MOUNT).join("cpu") {
                return Self::child(dir, true);
            }
            let before = (read(&dir.join("cpu.cfs_quota_us"))?, read(&dir.join("cpu.cfs_period_us"))?);
            return Ok(Self { place: Place::V1 { dir: dir.clone(), before }, undone: false });
        }
        let controllers = read(&own.dir.join("cgroup.controllers")).unwrap_or_default();
        if v2 && controllers.split_whitespace().any(|c| c == "cpu") {
            // The daemon leaves first: a cgroup v2 below the root that
            // holds processes cannot enable controllers for its children.
            let limit = Self::child(&own.dir, false)?;
            write(&own.dir.join("cgroup.subtree_control"), "+cpu")?;
            return Ok(limit);
        }
        Err(DrillError::Unsupported(format!(
            "the daemon's cgroup {} has no CPU limit to lower (no cpu.max, no cgroup v1 cpu hierarchy): give the \
             service the cpu controller (systemd CPUAccounting=yes)",
            own.dir.display()
        )))
    }

    /// Moves the daemon into a new child of `home` for the drill.
    fn child(home: &Path, v1: bool) -> Result<Self, DrillError> {
        let child = home.join(format!("lockstep-drill-{}", std::process::id()));
        match std::fs::create_dir(&child) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(cgroup_error(&child, e)),
        }
        let limit = Self { place: Place::Child { home: home.to_path_buf(), child: child.clone(), v1 }, undone: false };
        // From here, dropping `limit` moves the daemon back and removes
        // the child.
        write(&child.join("cgroup.procs"), &std::process::id().to_string())?;
        Ok(limit)
    }

    /// Allows the daemon `cpus` CPUs (0.5: half of one).
    pub fn set(&self, cpus: f64) -> Result<(), DrillError> {
        let quota = ((cpus * PERIOD_US as f64) as u64).max(MIN_QUOTA_US);
        match &self.place {
            Place::V2 { dir, .. } | Place::Child { child: dir, v1: false, .. } => {
                write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))
            }
            Place::V1 { dir, .. } | Place::Child { child: dir, v1: true, .. } => {
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())
            }
        }
    }

    /// Gives the limit back as it was.
    pub fn release(&mut self) {
        if std::mem::replace(&mut self.undone, true) {
            return;
        }
        let result = match &self.place {
            Place::V2 { dir, before } => write(&dir.join("cpu.max"), before.trim()),
            Place::V1 { dir, before } => write(&dir.join("cpu.cfs_quota_us"), "-1")
                .and_then(|()| write(&dir.join("cpu.cfs_period_us"), before.1.trim()))
                .and_then(|()| write(&dir.join("cpu.cfs_quota_us"), before.0.trim())),
            Place::Child { home, child, v1 } => {
                let quota = if *v1 { ("cpu.cfs_quota_us", "-1") } else { ("cpu.max", "max") };
                let _ = write(&child.join(quota.0), quota.1);
                // Below the root, the controller enabled for the drill is
                // disabled again so the daemon may come back (a cgroup v2
                // with controllers for its children holds no processes).
                // (The root has no `cgroup.type`.)
                if !*v1 && home.join("cgroup.type").exists() {
                    let _ = write(&home.join("cgroup.subtree_control"), "-cpu");
                }
                let moved = write(&home.join("cgroup.procs"), &std::process::id().to_string());
                moved.and_then(|()| std::fs::remove_dir(child).map_err(|e| DrillError::io(child, e)))
            }
        };
        if let Err(e) = result {
            tracing::error!("CPU drill: the limit could not be given back: {e}");
        }
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        self.release();
    }
}

/// The CPU drill's stress: level = CPUs allowed.
#[derive(Debug)]
pub struct CpuStarvation(pub CpuLimit);

impl Stress for CpuStarvation {
    fn apply(&mut self, level: f64) -> Result<f64, DrillError> {
        self.0.set(level)?;
        Ok(level)
    }

    fn undo(&mut self) {
        self.0.release();
    }
}

/// CPUs the machine has (where the ramp starts).
pub fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_limit_is_lowered_and_given_back_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        let own = Cgroup::v2(dir.path().to_path_buf());
        let mut s = CpuStarvation(CpuLimit::take(&own).unwrap());
        assert_eq!(s.apply(0.25).unwrap(), 0.25);
        assert_eq!(std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(), "25000 100000");
        s.apply(0.0).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(), "1000 100000", "never 0");
        s.undo();
        assert_eq!(std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(), "max 100000");
    }

    #[test]
    fn a_v1_quota_is_lowered_and_given_back_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("lockstep");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let own = Cgroup { dir: root.path().join("v2-absent"), v1_cpu: Some(dir.clone()), v1_memory: None };
        let limit = CpuLimit::take(&own).unwrap();
        limit.set(1.5).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(), "150000");
        drop(limit);
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(), "-1");
    }

    #[test]
    fn without_any_cpu_control_the_drill_says_what_the_service_needs() {
        let dir = tempfile::tempdir().unwrap();
        let e = CpuLimit::take(&Cgroup::v2(dir.path().to_path_buf())).unwrap_err().to_string();
        assert!(e.contains("no CPU limit to lower") && e.contains("CPUAccounting"), "{e}");
    }
}
