//! Files as input: any file ffmpeg reads (odd sizes, 25 and 29.97 fps,
//! with audio) and Y4M read directly; every frame comes out, at the file's
//! own rate and size.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn make_clip(path: &Path, lavfi: &str, rate: &str, frames: u32, audio: bool) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", &format!("{lavfi}:rate={rate}")]);
    if audio {
        cmd.args(["-f", "lavfi", "-i", "sine=frequency=500:sample_rate=44100"]);
    }
    cmd.args(["-frames:v", &frames.to_string()]);
    if audio {
        cmd.args(["-shortest", "-c:a", "aac"]);
    }
    let ext = path.extension().unwrap().to_string_lossy().into_owned();
    if ext != "y4m" {
        cmd.args(["-c:v", "libx264", "-pix_fmt", "yuv420p"]);
    }
    let ok = cmd.arg(path).status().unwrap();
    assert!(ok.success(), "ffmpeg could not make the test clip");
}

fn total_frames(track: &Path) -> usize {
    let segs = playlist_segments(track);
    let all = concat(track, &segs, &track.join("all.mp4.check"));
    let n = packets(&all).len();
    std::fs::remove_file(all).unwrap();
    n
}

#[test]
fn ntsc_rate_odd_size_file_with_audio_keeps_every_frame() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    // 29.97 fps, 2.5 segments; odd height is cropped to even.
    make_clip(&clip, "testsrc2=size=427x241", "30000/1001", 150, true);
    let out = dir.path().join("out");
    assert!(demo_on(&clip, &out).status.success());
    let root = out.join("main");
    let master = std::fs::read_to_string(root.join("master.m3u8")).unwrap();
    assert!(master.contains("FRAME-RATE=29.970"), "{master}");
    // The demo ladder's 360p rung is taller than the source: only 180p remains.
    assert!(!root.join("360p").exists());
    assert_eq!(total_frames(&root.join("180p")), 150, "every source frame is encoded");
    let first = manifest(&root.join("180p"));
    assert_eq!(first[0].first_unit % 60, 0, "a file starts on a segment boundary");
    assert!(root.join("audio/playlist.m3u8").exists(), "the file's audio is encoded");
    let audio_s: f64 = manifest(&root.join("audio")).iter().map(|e| e.duration).sum();
    assert!((audio_s - 150.0 * 1001.0 / 30000.0).abs() < 0.03, "audio lasts {audio_s} s");
}

#[test]
fn y4m_is_read_directly_at_its_own_rate_and_size() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.y4m");
    make_clip(&clip, "testsrc2=size=480x270", "25", 60, false);
    let out = dir.path().join("out");
    let o = demo_on(&clip, &out);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Y4M read directly"));
    let root = out.join("main");
    assert_eq!(total_frames(&root.join("180p")), 60);
    assert!(!root.join("audio").exists(), "a Y4M file has no audio track");
    let v = ffprobe_json(&["-show_entries", "stream=width,height"], &root.join("180p/init.mp4"));
    assert_eq!(v["streams"][0]["width"], 320);
    assert_eq!(v["streams"][0]["height"], 180);
}
