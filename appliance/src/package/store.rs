//! Segment store: atomic file writes (write to a hidden temporary, fsync,
//! rename), so a reader never sees a partial segment or playlist, and a
//! failed write (disk full, read-only) leaves every earlier file intact.
//!
//! Writes go through io_uring when the kernel allows it, with plain
//! `write`/`fsync` as the fallback (`LOCKSTEP_NO_URING=1` forces it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A write that failed, naming the file and the cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct StoreError {
    /// File that could not be written.
    pub path: PathBuf,
    /// Cause (e.g. "No space left on device").
    pub source: std::io::Error,
}

/// Which I/O path the store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPath {
    /// io_uring submission (write + fsync linked).
    Uring,
    /// Plain syscalls.
    Plain,
}

/// Writes files atomically.
pub struct Store {
    ring: Option<io_uring::IoUring>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.io_path())
    }
}

impl Store {
    /// Opens a store, trying io_uring first.
    pub fn new() -> Self {
        let ring = if std::env::var_os("LOCKSTEP_NO_URING").is_some() { None } else { io_uring::IoUring::new(8).ok() };
        Self { ring }
    }

    /// The I/O path in use.
    pub fn io_path(&self) -> IoPath {
        if self.ring.is_some() { IoPath::Uring } else { IoPath::Plain }
    }

    /// Writes `data` to `path` atomically and durably.
    pub fn write_atomic(&mut self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let tmp = crate::files::temp_path(path);
        let err = |source| StoreError { path: path.to_path_buf(), source };
        let result = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            self.write_and_sync(&file, data)?;
            drop(file);
            crate::files::rename_into_place(&tmp, path)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(())
    }

    /// Appends `data` to `path` and syncs it (manifests: one JSON line per
    /// segment; a reader ignores an unterminated last line).
    pub fn append(&mut self, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let err = |source| StoreError { path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().append(true).create(true).open(path).map_err(err)?;
        file.write_all(data).map_err(err)?;
        file.sync_data().map_err(err)
    }

    fn write_and_sync(&mut self, file: &File, data: &[u8]) -> std::io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            let mut f = file;
            f.write_all(data)?;
            return f.sync_data();
        };
        let fd = io_uring::types::Fd(file.as_raw_fd());
        let mut done = 0usize;
        while done < data.len() {
            let chunk = &data[done..];
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let write = io_uring::opcode::Write::new(fd, chunk.as_ptr(), len).offset(done as u64).build().user_data(1);
            // SAFETY: `chunk` and `file` outlive the submission: we wait for
            // its completion below before returning or touching them.
            unsafe { ring.submission().push(&write) }.map_err(|_| std::io::Error::other("io_uring queue full"))?;
            ring.submit_and_wait(1)?;
            let cqe = ring.completion().next().ok_or_else(|| std::io::Error::other("io_uring: no completion"))?;
            let res = cqe.result();
            if res < 0 {
                return Err(std::io::Error::from_raw_os_error(-res));
            }
            if res == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0"));
            }
            done += res as usize;
        }
        let fsync = io_uring::opcode::Fsync::new(fd).flags(io_uring::types::FsyncFlags::DATASYNC).build().user_data(2);
        // SAFETY: the file stays open until the completion is reaped below.
        unsafe { ring.submission().push(&fsync) }.map_err(|_| std::io::Error::other("io_uring queue full"))?;
        ring.submit_and_wait(1)?;
        let cqe = ring.completion().next().ok_or_else(|| std::io::Error::other("io_uring: no completion"))?;
        if cqe.result() < 0 {
            return Err(std::io::Error::from_raw_os_error(-cqe.result()));
        }
        Ok(())
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks that `dir` can be created and written, naming the cause if not.
pub fn check_writable(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".lockstep-write-probe");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.m3u8");
        for mut store in [Store::new(), Store { ring: None }] {
            store.write_atomic(&path, b"one").expect("write");
            store.write_atomic(&path, b"two two").expect("rewrite");
            assert_eq!(std::fs::read(&path).expect("read"), b"two two");
        }
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn failure_names_the_file() {
        let mut store = Store::new();
        let e = store.write_atomic(Path::new("/nonexistent-dir/x.m4s"), b"x").expect_err("must fail");
        assert!(e.to_string().contains("/nonexistent-dir/x.m4s"), "{e}");
    }
}
