//! Replacing a file so that a reader, or the next boot after a power
//! loss, sees either the old contents or the new, never a part: write a
//! temporary file beside it, sync it, rename it over the target, sync the
//! directory. Every writer that renames into place goes through here
//! (the segment store through [`rename_into_place`], after its own
//! io_uring writes and sync).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The permissions of a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The process's default (umask).
    Default,
    /// These bits (0o600 for keys and password hashes).
    Exactly(u32),
    /// Those of the file replaced, if there is one.
    KeepExisting,
}

/// The temporary name `path`'s new contents are written under: hidden,
/// in the same directory (a rename cannot cross file systems).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Replaces `path` with `bytes` atomically and durably. Creates the
/// parent directories when `create_dirs`. On error the target is as it
/// was and no temporary file is left.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode, create_dirs: bool) -> std::io::Result<()> {
    if create_dirs && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if let Mode::Exactly(bits) = mode {
            options.mode(bits);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        if mode == Mode::KeepExisting
            && let Ok(meta) = std::fs::metadata(path)
        {
            f.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))?;
        }
        f.sync_all()?;
        drop(f);
        rename_into_place(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames the synced file `tmp` over `path` and syncs the directory, so
/// the rename itself survives a power loss.
pub fn rename_into_place(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_the_permissions_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        assert!(write_atomic(&path, b"x", Mode::Default, false).is_err(), "no directory, not asked to make one");
        write_atomic(&path, b"secret", Mode::Exactly(0o600), true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        write_atomic(&path, b"longer secret", Mode::KeepExisting, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"longer secret");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "kept");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["key"], "no temporary file left");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("target");
        write_atomic(&path, b"old", Mode::Default, false).unwrap();
        // A directory where the target is: the rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"").unwrap();
        assert!(write_atomic(&blocked, b"new", Mode::Default, false).is_err());
        assert!(!temp_path(&blocked).exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
