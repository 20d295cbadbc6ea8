//! Helpers for the multi-process tests: run the real binary, judge output
//! with ffprobe/ffmpeg.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lockstep::package::{ManifestEntry, read_manifest};

/// The binary under test.
pub fn lockstep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
}

/// Runs the binary with `args`, `input` on its stdin; its stdout, trimmed
/// (fails on an error exit).
pub fn lockstep_stdin(args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child =
        lockstep().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "lockstep {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Fails loudly (never skips) when a tool the test needs is missing.
pub fn require_tool(name: &str) {
    let ok = Command::new(name).arg("-version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "this test needs `{name}` (apt-get install ffmpeg; `./run test` installs it)");
}

/// A small, fast configuration: test source at `w`x`h`, 25 fps, 2 s
/// segments (50 frames), renditions given as (name, height, kbps).
pub fn config(out: &Path, w: u32, h: u32, start_frame: Option<i64>, renditions: &[(&str, u32, u32)]) -> String {
    let mut s = format!(
        "[appliance]\nid = \"test-1\"\n[channel]\nid = \"ch\"\nsegment_seconds = 2.0\n\
         [source]\nkind = \"test\"\nwidth = {w}\nheight = {h}\nfps = \"25\"\npacing = \"{}\"\n{}\
         [audio]\nenabled = true\nbitrate_kbps = 64\nchannels = 2\n\
         [output]\ndir = \"{}\"\nmode = \"archive\"\n",
        if start_frame.is_some() { "fast" } else { "realtime" },
        start_frame.map(|n| format!("start_frame = {n}\n")).unwrap_or_default(),
        out.display()
    );
    for (name, height, kbps) in renditions {
        s.push_str(&format!("[[renditions]]\nname = \"{name}\"\nheight = {height}\nbitrate_kbps = {kbps}\n"));
    }
    s
}

/// Writes `text` as a config file in `dir` and runs `lockstep run` on it.
pub fn run_config(dir: &Path, text: &str, extra: &[&str]) -> Output {
    let path = dir.join("lockstep.toml");
    std::fs::write(&path, text).unwrap();
    let out = lockstep().arg("run").arg("--config").arg(&path).args(extra).output().unwrap();
    eprintln!("--- lockstep stderr ---\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `lockstep demo` on a file, as fast as possible, without an origin.
pub fn demo_on(input: &Path, out: &Path) -> Output {
    let o = lockstep()
        .args(["demo", "--nodes", "1", "--no-origin", "--fast", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    eprintln!("--- lockstep stderr ---\n{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Manifest entries of a track directory.
pub fn manifest(track: &Path) -> Vec<ManifestEntry> {
    read_manifest(&track.join("manifest.jsonl")).unwrap()
}

/// Segment file names listed in a media playlist.
pub fn playlist_segments(track: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(track.join("playlist.m3u8")).unwrap();
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(String::from).collect()
}

/// Indices of the segments a media playlist lists (`seg-<index>.m4s`);
/// none when it cannot be read (not written yet).
pub fn listed(playlist: &Path) -> Vec<i64> {
    std::fs::read_to_string(playlist)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("seg-")?.strip_suffix(".m4s")?.parse().ok())
        .collect()
}

/// init.mp4 followed by the given segments, as one file for ffprobe.
pub fn concat(track: &Path, segments: &[String], out: &Path) -> PathBuf {
    let mut data = std::fs::read(track.join("init.mp4")).unwrap();
    for s in segments {
        data.extend(std::fs::read(track.join(s)).unwrap());
    }
    std::fs::write(out, data).unwrap();
    out.to_path_buf()
}

/// Runs ffprobe with JSON output.
pub fn ffprobe_json(args: &[&str], file: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe").args(["-v", "error", "-of", "json"]).args(args).arg(file).output().unwrap();
    assert!(out.status.success(), "ffprobe failed on {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Packets of the first stream as (pts, dts, duration, keyframe) in ticks.
pub fn packets(file: &Path) -> Vec<(i64, i64, i64, bool)> {
    let v = ffprobe_json(&["-show_entries", "packet=pts,dts,duration,flags"], file);
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pts"].as_i64().unwrap(),
                p["dts"].as_i64().unwrap(),
                p["duration"].as_i64().unwrap_or(0),
                p["flags"].as_str().unwrap_or("").contains('K'),
            )
        })
        .collect()
}

/// Average PSNR (dB) between the pictures of two files, by ffmpeg.
pub fn psnr(a: &Path, b: &Path) -> f64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "info", "-nostdin", "-i"])
        .arg(a)
        .arg("-i")
        .arg(b)
        .args(["-lavfi", "psnr", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    log.split("average:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no PSNR in ffmpeg output: {log}"))
}

/// Decodes a file fully; returns ffmpeg's error output (empty when clean).
pub fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        err.push_str(" (ffmpeg exit failure)");
    }
    err
}

/// Whether this process runs as root (mount tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Tracks of the two-rendition test ladder.
pub const TRACKS: [&str; 3] = ["180p", "90p", "audio"];

/// Every published segment of a track. A live appliance that stops
/// mid-segment does not publish the incomplete segment, so all of them
/// must match the other appliance's.
pub fn segment_files(root: &Path, track: &str) -> BTreeMap<String, Vec<u8>> {
    let segs = playlist_segments(&root.join(track));
    segs.into_iter()
        .map(|s| {
            let bytes = std::fs::read(root.join(track).join(&s)).unwrap();
            (s, bytes)
        })
        .collect()
}

/// The segments both channel roots published are byte-identical, and
/// there are at least `at_least` of them per track.
pub fn assert_overlap_identical(a: &Path, b: &Path, at_least: usize) {
    for track in TRACKS {
        let (sa, sb) = (segment_files(a, track), segment_files(b, track));
        let common: Vec<&String> = sa.keys().filter(|k| sb.contains_key(*k)).collect();
        assert!(
            common.len() >= at_least,
            "{track}: only {} overlapping segments ({:?} vs {:?})",
            common.len(),
            sa.keys(),
            sb.keys()
        );
        for k in common {
            assert!(sa[k] == sb[k], "{track}/{k} differs between the two appliances");
        }
        assert_eq!(
            std::fs::read(a.join(track).join("init.mp4")).unwrap(),
            std::fs::read(b.join(track).join("init.mp4")).unwrap(),
            "{track}: init segments differ"
        );
    }
}

/// A free UDP/TCP port block start (ports `p..p+n` were free a moment ago).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let p = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < 60_000
            && (0..n).all(|i| {
                std::net::UdpSocket::bind(("127.0.0.1", p + i)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()
            })
        {
            return p;
        }
    }
    panic!("no block of {n} free ports on 127.0.0.1");
}

/// A process the test started: asked to stop (SIGTERM) and waited for
/// when dropped, also when the test fails.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Fails loudly (never skips) unless the browser tests' tools are here:
/// node, Debian's chromium, and playwright-core and hls.js in `web`
/// (appliance/web/node_modules).
pub fn require_browser(web: &Path) {
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "this test needs node (`./run test` installs nodejs)"
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "this test needs Debian's chromium (`./run test` installs it)");
    assert!(
        web.join("node_modules/playwright-core").exists(),
        "this test needs playwright-core (`./run deps` runs npm ci in appliance/web)"
    );
    assert!(
        web.join("node_modules/hls.js/dist/hls.min.js").exists(),
        "this test needs hls.js built into the page (`./run deps`, then rebuild)"
    );
}
