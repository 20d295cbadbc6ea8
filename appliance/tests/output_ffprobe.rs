//! The pipeline's output judged by ffprobe/ffmpeg: playlists parse, every
//! segment decodes, exact frame counts, IDR at every segment start,
//! continuous timestamps on the epoch grid, audio present and in sync.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;

const FPS: i64 = 25;
const SEG: i64 = 50;
/// A segment index whose start is a multiple of 5 s (sync flash + beep).
const START_SEG: i64 = 40_000_000;
const SEGMENTS: i64 = 4;

#[test]
fn output_is_valid_cmaf_hls_on_the_epoch_grid() {
    require_tool("ffprobe");
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A live source joins one segment early: the first (partial) segment
    // only warms the audio encoder and is not published. One frame past
    // the last segment gives its audio the encoder's lookahead (the
    // segment that frame starts is incomplete and not published).
    let cfg = config(&out, 320, 180, Some((START_SEG - 1) * SEG + 17), &[("180p", 180, 400), ("90p", 90, 150)]);
    let run = run_config(dir.path(), &cfg, &["--frames", &((SEGMENTS + 1) * SEG - 17 + 1).to_string()]);
    assert!(run.status.success(), "lockstep failed");
    let root = out.join("ch");

    // Multivariant playlist: both variants and the audio rendition.
    let master = std::fs::read_to_string(root.join("master.m3u8")).unwrap();
    assert!(master.starts_with("#EXTM3U\n"), "{master}");
    assert_eq!(master.matches("#EXT-X-STREAM-INF:").count(), 2, "{master}");
    assert!(master.contains("TYPE=AUDIO") && master.contains("URI=\"audio/playlist.m3u8\""), "{master}");
    assert!(master.contains("CODECS=\"avc1.") && master.contains(",opus\""), "{master}");
    // ffprobe reads the whole HLS presentation: two programs with video + audio.
    let hls = ffprobe_json(&["-show_entries", "stream=codec_name,width,height"], &root.join("master.m3u8"));
    let codecs: Vec<&str> =
        hls["streams"].as_array().unwrap().iter().filter_map(|s| s["codec_name"].as_str()).collect();
    assert!(codecs.contains(&"h264") && codecs.contains(&"opus"), "{codecs:?}");

    for (track, height) in [("180p", 180), ("90p", 90)] {
        let t = root.join(track);
        let segs = playlist_segments(&t);
        assert_eq!(segs.len() as i64, SEGMENTS, "{track}: {segs:?}");
        let playlist = std::fs::read_to_string(t.join("playlist.m3u8")).unwrap();
        assert!(playlist.contains(&format!("#EXT-X-MEDIA-SEQUENCE:{START_SEG}\n")), "{playlist}");
        assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
        assert_eq!(playlist.matches("#EXT-X-PROGRAM-DATE-TIME:").count() as i64, SEGMENTS);

        // Every segment decodes on its own (with the init segment), starts
        // with an IDR, holds exactly one segment of frames, sits on the grid.
        for (k, seg) in segs.iter().enumerate() {
            let f = concat(&t, std::slice::from_ref(seg), &dir.path().join(format!("{track}-{k}.mp4")));
            assert_eq!(decode_errors(&f), "", "{track}/{seg} does not decode cleanly");
            let frames = ffprobe_json(
                &["-select_streams", "v:0", "-show_entries", "frame=key_frame,pict_type,width,height"],
                &f,
            );
            let frames = frames["frames"].as_array().unwrap();
            assert_eq!(frames.len() as i64, SEG, "{track}/{seg}: frame count");
            assert_eq!(frames[0]["key_frame"], 1, "{track}/{seg}: first frame is not a key frame");
            assert_eq!(frames[0]["pict_type"], "I", "{track}/{seg}");
            assert_eq!(frames[0]["height"], height);
            let stream = ffprobe_json(&["-show_entries", "stream=start_time,r_frame_rate"], &f);
            let start: f64 = stream["streams"][0]["start_time"].as_str().unwrap().parse().unwrap();
            let expected = ((START_SEG + k as i64) * SEG) as f64 / FPS as f64;
            assert!((start - expected).abs() < 1e-3, "{track}/{seg}: starts at {start}, grid says {expected}");
            assert_eq!(stream["streams"][0]["r_frame_rate"], "25/1");
        }

        // Whole track: exact frame count, PTS/DTS continuous across segments.
        let all = concat(&t, &segs, &dir.path().join(format!("{track}-all.mp4")));
        let pk = packets(&all);
        assert_eq!(pk.len() as i64, SEGMENTS * SEG, "{track}: total frames");
        let step = pk[1].0 - pk[0].0;
        assert!(step > 0);
        for w in pk.windows(2) {
            assert_eq!(w[1].0 - w[0].0, step, "{track}: PTS jump between {:?} and {:?}", w[0], w[1]);
            assert_eq!(w[1].1 - w[0].1, step, "{track}: DTS jump");
        }
        assert!(pk.iter().filter(|p| p.3).count() as i64 >= SEGMENTS, "{track}: fewer key frames than segments");

        // Manifest: hashes match the files, frames on the grid.
        for (k, e) in manifest(&t).iter().enumerate() {
            let bytes = std::fs::read(t.join(&e.file)).unwrap();
            assert_eq!(e.sha256, sha256_hex(&bytes), "{track}/{}", e.file);
            assert_eq!(e.first_unit, (START_SEG + k as i64) * SEG);
            assert_eq!(e.samples as i64, SEG);
        }
    }

    // Audio: present, continuous, same length as video within one Opus frame,
    // each segment starting within one audio frame of its video segment.
    let a = root.join("audio");
    let asegs = playlist_segments(&a);
    assert_eq!(asegs.len() as i64, SEGMENTS);
    let all = concat(&a, &asegs, &dir.path().join("audio-all.mp4"));
    assert_eq!(decode_errors(&all), "");
    let pk = packets(&all);
    for w in pk.windows(2) {
        assert_eq!(w[1].0 - w[0].0, 960, "audio packets not continuous");
    }
    let audio_s = pk.len() as f64 * 0.02;
    let video_s = (SEGMENTS * SEG) as f64 / FPS as f64;
    assert!((audio_s - video_s).abs() <= 0.02, "audio {audio_s} s vs video {video_s} s");
    for (k, e) in manifest(&a).iter().enumerate() {
        let video_start = ((START_SEG + k as i64) * SEG) as f64 / FPS as f64;
        let audio_start = e.base_time as f64 / 48_000.0;
        assert!(
            (audio_start - video_start).abs() <= 0.02,
            "segment {k}: audio starts {audio_start}, video {video_start}"
        );
    }

    // Lip sync: the sync flash (video) and the 1 kHz beep (audio) start together.
    let video = concat(&root.join("180p"), &playlist_segments(&root.join("180p")), &dir.path().join("v.mp4"));
    let flashes = flash_times(&video);
    let beeps = beep_times(&all);
    assert!(flashes.len() >= 2, "expected sync flashes at 0 s and 5 s, got {flashes:?}");
    assert_eq!(flashes.len(), beeps.len(), "flashes {flashes:?} vs beeps {beeps:?}");
    for (f, b) in flashes.iter().zip(&beeps) {
        assert!((f - b).abs() <= 0.02, "A/V offset {:.1} ms exceeds one audio frame", (b - f) * 1000.0);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Times (s, from the file start) of frames whose centre flashes white.
fn flash_times(file: &std::path::Path) -> Vec<f64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-vf", "crop=iw/4:ih/4:3*iw/8:3*ih/8,scale=4:4,format=gray", "-f", "rawvideo", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let means: Vec<f64> =
        out.stdout.chunks_exact(16).map(|c| c.iter().map(|&p| f64::from(p)).sum::<f64>() / 16.0).collect();
    means
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            let prev = if *i > 0 { means[i - 1] } else { 0.0 };
            let next = means.get(i + 1).copied().unwrap_or(0.0);
            **m > 225.0 && prev < 215.0 && next < 215.0
        })
        .map(|(i, _)| i as f64 / FPS as f64)
        .collect()
}

/// Onset times (s, from the file start) of the loud 1 kHz beeps.
fn beep_times(file: &std::path::Path) -> Vec<f64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(file)
        .args(["-ac", "1", "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let samples: Vec<i16> = out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut onsets = Vec::new();
    let mut last: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        if s.unsigned_abs() > 22_000 && last.is_none_or(|l| i - l > 48_000) {
            onsets.push(i as f64 / 48_000.0);
            last = Some(i);
        } else if s.unsigned_abs() > 22_000 {
            last = Some(i);
        }
    }
    onsets
}
