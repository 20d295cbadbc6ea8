//! `lockstep analyze` on awkward inputs: each gives a clear result or a
//! clear error, never a panic, and keeps what it could read.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn ffmpeg(args: &[&str], out: &Path) -> PathBuf {
    let ok = Command::new("ffmpeg").args(["-v", "error", "-nostdin", "-y"]).args(args).arg(out).status().unwrap();
    assert!(ok.success(), "ffmpeg could not make {}", out.display());
    out.to_path_buf()
}

fn analyze(path: &Path) -> Output {
    let out = lockstep().arg("analyze").arg(path).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{}: panic\n{stderr}", path.display());
    assert_ne!(out.status.code(), Some(101), "{}: panic exit", path.display());
    out
}

/// Runs analyze and expects success: returns the report.
fn report(path: &Path) -> serde_json::Value {
    let out = analyze(path);
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs analyze and expects a failure whose message names the file.
fn error(path: &Path) -> String {
    let out = analyze(path);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{} should fail", path.display());
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(stderr.contains(name.as_ref()), "the error must name the file: {stderr}");
    stderr
}

fn testsrc(size: &str, seconds: u32) -> String {
    format!("testsrc2=size={size}:rate=25:d={seconds}")
}

#[test]
fn truncated_and_corrupt_files_keep_what_was_readable() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let good = ffmpeg(
        &["-f", "lavfi", "-i", &testsrc("640x360", 4), "-c:v", "libx264", "-movflags", "+faststart"],
        &dir.path().join("good.mp4"),
    );
    let bytes = std::fs::read(&good).unwrap();

    // Cut at 60 %: the frames before the cut are analysed.
    let trunc = dir.path().join("trunc.mp4");
    std::fs::write(&trunc, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let r = report(&trunc);
    let frames = r["frames"].as_u64().unwrap();
    assert!((25..100).contains(&frames), "a cut file gives the frames before the cut: {frames}");

    // 20 kB of garbage in the middle: decoded with concealment, all frames counted.
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid..mid + 20_000].fill(b'X');
    let corrupt = dir.path().join("corrupt.mp4");
    std::fs::write(&corrupt, bad).unwrap();
    let r = report(&corrupt);
    assert!(r["frames"].as_u64().unwrap() >= 50, "{r}");
    assert!(!r["segments"].as_array().unwrap().is_empty());

    // A Y4M file cut inside frame 12: the 12 whole frames are analysed.
    let y4m = ffmpeg(&["-f", "lavfi", "-i", &testsrc("640x360", 1), "-pix_fmt", "yuv420p"], &dir.path().join("t.y4m"));
    let bytes = std::fs::read(&y4m).unwrap();
    let frame = 6 + 640 * 360 * 3 / 2;
    let header = bytes.len() - 25 * frame;
    let cut = dir.path().join("cut.y4m");
    std::fs::write(&cut, &bytes[..header + 12 * frame + frame / 2]).unwrap();
    assert_eq!(report(&cut)["frames"], 12);

    // Nothing readable: a clear error naming the file.
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let msg = error(&empty);
    assert!(msg.contains("cannot read") || msg.contains("empty"), "{msg}");
    let noise = dir.path().join("noise.mkv");
    std::fs::write(&noise, (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect::<Vec<_>>())
        .unwrap();
    error(&noise);
    error(&dir.path().join("missing.mp4"));
}

#[test]
fn odd_sizes_ten_bit_and_empty_audio_are_analysed() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1918x1080: read directly (Y4M) and decoded (H.264), same picture size.
    for (name, extra) in [("odd.y4m", vec!["-pix_fmt", "yuv420p"]), ("odd.mp4", vec!["-c:v", "libx264"])] {
        let mut args = vec!["-f", "lavfi", "-i"];
        let src = testsrc("1918x1080", 1);
        args.push(&src);
        args.extend(extra);
        let r = report(&ffmpeg(&args, &d.join(name)));
        assert_eq!(
            (r["width"].as_u64(), r["height"].as_u64(), r["frames"].as_u64()),
            (Some(1918), Some(1080), Some(25))
        );
        assert!(r["segments"][0]["complexity"].as_f64().unwrap() > 0.0);
    }
    // Odd width and height, 4:4:4: decoded by ffmpeg, cropped to even.
    let r =
        report(&ffmpeg(&["-f", "lavfi", "-i", &testsrc("1917x1079", 1), "-pix_fmt", "yuv444p"], &d.join("odd444.y4m")));
    assert_eq!((r["width"].as_u64(), r["height"].as_u64()), (Some(1916), Some(1078)));
    // 10-bit, as Y4M and as FFV1 in Matroska: converted to 8 bits by ffmpeg.
    let src = testsrc("640x360", 1);
    for (name, extra) in [
        ("ten.y4m", vec!["-pix_fmt", "yuv420p10le", "-strict", "-1"]),
        ("ten.mkv", vec!["-pix_fmt", "yuv420p10le", "-c:v", "ffv1"]),
    ] {
        let mut args = vec!["-f", "lavfi", "-i", src.as_str()];
        args.extend(extra);
        let r = report(&ffmpeg(&args, &d.join(name)));
        assert_eq!(r["frames"], 25, "{name}");
        let spatial = r["segments"][0]["spatial"].as_f64().unwrap();
        assert!(spatial > 1.0, "{name}: the picture must survive the conversion: {spatial}");
    }
    // An audio stream without a single sample: analysed as silence.
    let src = testsrc("320x240", 2);
    let silent = "-f lavfi -i anullsrc=r=48000:cl=stereo -filter_complex [1:a]atrim=end_sample=0[a] \
                  -map 0:v -map [a] -c:v libx264 -c:a pcm_s16le";
    let mut args = vec!["-f", "lavfi", "-i", src.as_str()];
    args.extend(silent.split_whitespace());
    let r = report(&ffmpeg(&args, &d.join("no-samples.mkv")));
    assert_eq!(r["frames"], 50);
    let audio = &r["segments"][0]["audio"];
    assert_eq!(audio["silence"], 1.0, "{r}");
    assert_eq!(audio["complexity"], 0.0);
    // And audio with sound is measured.
    let mut args = vec!["-f", "lavfi", "-i", src.as_str()];
    args.extend("-f lavfi -i sine=frequency=1000:d=2 -c:v libx264".split_whitespace());
    let tone = ffmpeg(&args, &d.join("tone.mkv"));
    let r = report(&tone);
    let loudness = r["segments"][0]["audio"]["loudness_dbfs"].as_f64().unwrap();
    assert!((-30.0..-10.0).contains(&loudness), "ffmpeg's sine peaks at −18 dBFS: −21 dBFS RMS: {loudness}");
}
