//! Bad configuration, missing and unreadable inputs, read-only and full
//! output directories: each gives a clear error and leaves segments
//! already written intact.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(&dir.path().join("out"), 320, 180, Some(0), &[("180p", 180, 400)]);
    for (from, to, key) in [
        ("fps = \"25\"", "fps = \"quick\"", "source.fps"),
        ("bitrate_kbps = 400", "bitrate_kbps = 5", "renditions[0].bitrate_kbps"),
        ("[channel]", "[channel]\nsegment_length = 3", "segment_length"),
        ("kind = \"test\"", "kind = \"sdi\"", "sdi"),
        ("height = 180\nbitrate", "height = 181\nbitrate", "renditions[0].height"),
        ("channels = 2", "channels = 6", "audio.channels"),
    ] {
        let text = good.replacen(from, to, 1);
        assert_ne!(text, good, "test setup: `{from}` not found");
        let out = run_config(dir.path(), &text, &["--frames", "1"]);
        assert!(!out.status.success(), "config with `{to}` was accepted");
        assert!(stderr(&out).contains(key), "error does not name `{key}`: {}", stderr(&out));
    }
    let out = lockstep().args(["run", "--config", "/nonexistent/lockstep.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/nonexistent/lockstep.toml"), "{}", stderr(&out));
}

/// Runs the demo on `input`; asserts it fails and that stderr names every
/// word in `words`.
fn assert_input_refused(input: &Path, out: &Path, words: &[&str]) {
    let o = demo_on(input, out);
    assert!(!o.status.success(), "{} was accepted", input.display());
    let e = stderr(&o);
    for w in words {
        assert!(e.contains(w), "error does not say `{w}`: {e}");
    }
}

#[test]
fn missing_and_unreadable_inputs_are_named() {
    require_tool("ffprobe");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    assert_input_refused(Path::new("/nonexistent/clip.mp4"), &out, &["/nonexistent/clip.mp4", "No such file"]);

    let junk = dir.path().join("junk.mp4");
    std::fs::write(&junk, b"this is not a video file at all").unwrap();
    assert_input_refused(&junk, &out, &["junk.mp4", "ffmpeg cannot read it"]);

    // 4:4:4 Y4M goes to ffmpeg, which finds no whole frame in it.
    let y4m = dir.path().join("bad.y4m");
    std::fs::write(&y4m, b"YUV4MPEG2 W64 H64 F25:1 C444\nFRAME\n").unwrap();
    assert_input_refused(&y4m, &out, &["bad.y4m", "no frame could be read"]);
    // A Y4M header and nothing else.
    let bare = dir.path().join("bare.y4m");
    std::fs::write(&bare, b"YUV4MPEG2 W64 H64 F25:1 C420\n").unwrap();
    assert_input_refused(&bare, &out, &["bare.y4m", "no frame could be read"]);
}

/// Mounts a tmpfs of `size` at `dir`; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        assert!(is_root(), "this test mounts a tmpfs and needs root (CI runs as root)");
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs failed");
        Self(dir.to_path_buf())
    }
    fn remount_ro(&self) {
        let ok = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap();
        assert!(ok.success(), "remount ro failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Every segment a playlist lists exists and matches its manifest hash;
/// no temporary file is left behind. Returns the number of segments.
fn assert_intact(track: &Path) -> usize {
    let entries = manifest(track);
    let listed = playlist_segments(track);
    for name in &listed {
        let e = entries.iter().find(|e| &e.file == name).unwrap_or_else(|| panic!("{name} not in manifest"));
        let bytes = std::fs::read(track.join(name)).unwrap();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), e.sha256, "{name} damaged");
    }
    for f in std::fs::read_dir(track).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "temporary file {name} left behind");
    }
    listed.len()
}

#[test]
fn read_only_output_is_refused_and_earlier_segments_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let fs = Tmpfs::mount(&mnt, "32m");
    let cfg = config(&mnt, 320, 180, Some(50 * 1000 + 10), &[("180p", 180, 400)]);
    let first = run_config(dir.path(), &cfg, &["--frames", "190"]);
    assert!(first.status.success());
    let before = assert_intact(&mnt.join("ch/180p"));
    assert!(before >= 2);
    let snapshot: Vec<Vec<u8>> = playlist_segments(&mnt.join("ch/180p"))
        .iter()
        .map(|s| std::fs::read(mnt.join("ch/180p").join(s)).unwrap())
        .collect();

    fs.remount_ro();
    let second = run_config(dir.path(), &cfg.replace("50010", "60010"), &["--frames", "190"]);
    assert!(!second.status.success(), "writing to a read-only directory succeeded?");
    let e = stderr(&second);
    assert!(e.contains("Read-only file system") && e.contains(mnt.to_str().unwrap()), "{e}");
    assert_eq!(assert_intact(&mnt.join("ch/180p")), before);
    let after: Vec<Vec<u8>> = playlist_segments(&mnt.join("ch/180p"))
        .iter()
        .map(|s| std::fs::read(mnt.join("ch/180p").join(s)).unwrap())
        .collect();
    assert_eq!(snapshot, after);
}

#[test]
fn full_disk_is_reported_and_earlier_segments_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "600k");
    // ~100 kB per 2 s segment at 180p/400k: the disk fills after a few.
    let cfg = config(&mnt, 320, 180, Some(50 * 2000 + 10), &[("180p", 180, 400)]);
    let out = run_config(dir.path(), &cfg, &["--frames", "640"]);
    assert_eq!(out.status.code(), Some(3), "expected exit 3 (segments not written)");
    let e = stderr(&out);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(e.contains(mnt.to_str().unwrap()), "error does not name the path: {e}");
    let kept = assert_intact(&mnt.join("ch/180p"));
    assert!(kept >= 1, "no segment survived");
}
