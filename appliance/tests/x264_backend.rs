//! The optional x264 backend against the portable OpenH264 path on the same
//! frames: same frame count and grid, and pictures that agree (PSNR between
//! the two decoded outputs). Built only with `--features x264`.
#![cfg(feature = "x264")]
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn x264_output_matches_the_portable_path() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let start = 9_000_000 * 50;
    let mut decoded = Vec::new();
    for backend in ["openh264", "x264"] {
        let d = dir.path().join(backend);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = config(&d.join("out"), 320, 180, Some(start), &[("180p", 180, 600)])
            + &format!("[encoder]\nbackend = \"{backend}\"\n");
        let run = run_config(&d, &cfg, &["--frames", "150"]);
        assert!(run.status.success(), "{backend} run failed");
        let log = String::from_utf8_lossy(&run.stderr);
        assert!(
            log.contains(&format!("encoder={backend}")) || log.contains(&format!("encoder=\"{backend}\"")),
            "{backend} not used: {log}"
        );
        let t = d.join("out/ch/180p");
        let segs = playlist_segments(&t);
        assert_eq!(segs.len(), 2, "{backend}: {segs:?}");
        let all = concat(&t, &segs, &d.join("all.mp4"));
        let pk = packets(&all);
        assert_eq!(pk.len(), 100, "{backend}: frame count");
        assert!(pk[0].3 && pk[50].3, "{backend}: every segment starts with a key frame");
        decoded.push(all);
    }
    let avg = psnr(&decoded[0], &decoded[1]);
    eprintln!("PSNR x264 vs OpenH264: {avg:.2} dB");
    assert!(avg > 30.0, "x264 and OpenH264 pictures differ too much: {avg} dB");
}
