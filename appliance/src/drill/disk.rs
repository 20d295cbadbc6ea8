//! The output's file system fills: a file in the output directory grows
//! (its blocks allocated with `fallocate`, not written, so the drill costs
//! no disk bandwidth) until only the asked space is left free. The file
//! is removed when the drill ends, and at the daemon's next start should
//! it have died during one.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};

use super::{DrillError, Stress};
use crate::health::Disk;

/// The filler's name in the output directory.
pub const FILLER: &str = ".lockstep-disk-drill";

/// The disk drill's stress: level = bytes allocated.
#[derive(Debug)]
pub struct Filler {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl Filler {
    /// A filler in `dir` (removing one a previous run left).
    pub fn new(dir: &Path) -> Result<Self, DrillError> {
        let path = dir.join(FILLER);
        remove_left(dir);
        let file = File::create(&path).map_err(|e| DrillError::io(&path, e))?;
        Ok(Self { path, file: Some(file), size: 0 })
    }

    /// The bytes to allocate so that `free_bytes` are left on `disk`.
    pub fn to_leave(disk: Disk, free_bytes: u64) -> u64 {
        disk.free_bytes.saturating_sub(free_bytes)
    }
}

/// Removes a filler a drill left in `dir` (a daemon killed during it).
pub fn remove_left(dir: &Path) {
    let path = dir.join(FILLER);
    if path.exists() {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!("removed {} left by a disk drill", path.display()),
            Err(e) => tracing::error!("cannot remove {} left by a disk drill: {e}", path.display()),
        }
    }
}

impl Stress for Filler {
    fn apply(&mut self, level: f64) -> Result<f64, DrillError> {
        let Some(file) = &self.file else { return Ok(0.0) };
        let want = level.max(0.0) as u64;
        if want > self.size {
            let len = i64::try_from(want - self.size).unwrap_or(i64::MAX);
            let offset = i64::try_from(self.size).unwrap_or(i64::MAX);
            match fallocate(file, FallocateFlags::empty(), offset, len) {
                Ok(()) => self.size = want,
                // Full: as much as fits is taken; that is the drill's point.
                Err(nix::errno::Errno::ENOSPC) => {
                    let free = self.path.parent().and_then(Disk::of).map_or(0, |d| d.free_bytes);
                    let fits = free - free % (1 << 20);
                    if fits > 0 && fallocate(file, FallocateFlags::empty(), offset, fits as i64).is_ok() {
                        self.size += fits;
                    }
                }
                Err(e) => return Err(DrillError::io(&self.path, e.into())),
            }
        } else if want < self.size {
            file.set_len(want).map_err(|e| DrillError::io(&self.path, e))?;
            self.size = want;
        }
        Ok(self.size as f64)
    }

    fn undo(&mut self) {
        if self.file.take().is_some()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::error!("disk drill: cannot remove {}: {e}", self.path.display());
        }
        self.size = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_filler_takes_space_gives_it_back_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let before = Disk::of(dir.path()).unwrap();
        let mut f = Filler::new(dir.path()).unwrap();
        assert_eq!(f.apply(64.0 * 1024.0 * 1024.0).unwrap(), 64.0 * 1024.0 * 1024.0);
        let during = Disk::of(dir.path()).unwrap();
        assert!(before.free_bytes - during.free_bytes >= 60 << 20, "{before:?} {during:?}");
        assert_eq!(f.apply(1.0 * 1024.0 * 1024.0).unwrap(), 1024.0 * 1024.0, "shrinks with the ramp");
        f.undo();
        assert!(!dir.path().join(FILLER).exists());
        assert_eq!(Filler::to_leave(Disk { free_bytes: 100, total_bytes: 1000 }, 30), 70);
        assert_eq!(Filler::to_leave(Disk { free_bytes: 10, total_bytes: 1000 }, 30), 0);
    }

    #[test]
    fn a_filler_left_by_a_killed_daemon_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILLER), b"x").unwrap();
        remove_left(dir.path());
        assert!(!dir.path().join(FILLER).exists());
    }
}
