//! Hardware encoders (NVENC, QSV) against the portable OpenH264 path on the
//! same frames, in one run: two renditions of the same size, one on the
//! backend under test and one in software. They must agree on everything
//! the timeline promises — the segment list, the frame count, every
//! packet's timestamps, an IDR at every segment start — decode cleanly,
//! and show the same pictures (PSNR between the two decoded outputs).
//!
//! The hardware tests are ignored by plain `cargo test` (no GPU on a
//! build machine); `hwtests/encoders.sh` runs them on an appliance, and
//! each fails, naming what is missing, when its hardware is absent. The
//! comparison itself runs everywhere with software on both sides, so it
//! is kept working.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// Frames per run, from a segment boundary: four 2 s segments at 25 fps,
/// of which the first goes to the start (as in every run of the source
/// with audio, whose encoder warms up over it); three are compared.
const FRAMES: usize = 200;
const COMPARED: usize = 150;

/// Fails, saying why, unless `backend` opens sessions on this machine.
fn require_session(backend: &str) {
    let out = lockstep().args(["devices", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let enc = report["encoders"].as_array().unwrap().iter().find(|e| e["name"] == backend).cloned().unwrap();
    assert!(
        enc["session"] == true,
        "{backend} cannot encode on this machine: {} {}",
        enc["detail"].as_str().unwrap_or(""),
        enc["note"].as_str().unwrap_or("")
    );
}

/// Encodes the test source with `backend` and in software side by side
/// and compares the two renditions.
fn matches_the_portable_path(backend: &str) {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("out"), 1280, 720, Some(9_000_000 * 50), &[])
        + &format!(
            "[[renditions]]\nname = \"hw\"\nheight = 720\nbitrate_kbps = 3000\nbackend = \"{backend}\"\n\
             [[renditions]]\nname = \"sw\"\nheight = 720\nbitrate_kbps = 3000\nbackend = \"software\"\n"
        );
    let run = run_config(dir.path(), &cfg, &["--frames", &FRAMES.to_string()]);
    assert!(run.status.success(), "{backend}: the run failed");
    let log = String::from_utf8_lossy(&run.stderr);
    let fell_back =
        log.lines().find(|l| l.contains("using openh264") || l.contains("encoding in openh264 from now on"));
    assert!(fell_back.is_none() || backend == "software", "{backend} was not used: {fell_back:?}");
    let (hw, sw) = (dir.path().join("out/ch/hw"), dir.path().join("out/ch/sw"));
    let segments = playlist_segments(&hw);
    assert_eq!(segments, playlist_segments(&sw), "{backend}: the segment lists differ");
    assert_eq!(segments.len(), COMPARED / 50, "{backend}: {segments:?}");
    let (a, b) =
        (concat(&hw, &segments, &dir.path().join("hw.mp4")), concat(&sw, &segments, &dir.path().join("sw.mp4")));
    let (pa, pb) = (packets(&a), packets(&b));
    assert_eq!(pa.len(), COMPARED, "{backend}: frame count");
    let times = |p: &[(i64, i64, i64, bool)]| p.iter().map(|&(pts, dts, d, _)| (pts, dts, d)).collect::<Vec<_>>();
    assert_eq!(times(&pa), times(&pb), "{backend}: packet timestamps differ from the software path");
    for (i, p) in pa.iter().enumerate().step_by(50) {
        assert!(p.3, "{backend}: segment {} does not start with a key frame", i / 50);
    }
    let errors = decode_errors(&a);
    assert!(errors.is_empty(), "{backend}: decode errors: {errors}");
    for (x, y) in manifest(&hw).iter().zip(manifest(&sw).iter()) {
        assert_eq!((x.index, x.samples, x.base_time), (y.index, y.samples, y.base_time), "{backend}: manifests differ");
        assert_eq!(x.input_sha256, y.input_sha256, "{backend}: the renditions were fed different frames");
    }
    let db = psnr(&a, &b);
    eprintln!("PSNR {backend} vs OpenH264: {db:.2} dB");
    assert!(db > 30.0, "{backend} and OpenH264 pictures differ too much: {db} dB");
}

#[test]
fn the_comparison_runs_on_the_portable_path_itself() {
    matches_the_portable_path("software");
}

#[test]
#[ignore = "needs an NVIDIA GPU and its driver: run hwtests/encoders.sh on an appliance"]
fn nvenc_output_matches_the_portable_path() {
    require_session("nvenc");
    matches_the_portable_path("nvenc");
}

#[test]
#[ignore = "needs an Intel GPU with oneVPL and its GPU runtime: run hwtests/encoders.sh on an appliance"]
fn qsv_output_matches_the_portable_path() {
    require_session("qsv");
    matches_the_portable_path("qsv");
}
