//! Scene-cut accuracy against ground truth: clips assembled from distinct
//! ffmpeg lavfi sources with known cut frames. Prints precision and recall
//! for `lockstep analyze` and for ffmpeg's own `scdet` on the same clips.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

const FPS: u32 = 25;
const SIZE: &str = "640x360";

/// Distinct sources (lavfi graphs producing `SIZE` at `FPS`).
fn sources() -> Vec<String> {
    let s = SIZE;
    let r = FPS;
    vec![
        format!("testsrc2=size={s}:rate={r}"),
        format!("mandelbrot=size={s}:rate={r}"),
        format!("life=size={s}:rate={r}:mold=10:ratio=0.1:death_color=#C83232:life_color=#00ff00"),
        format!("cellauto=size={s}:rate={r}:rule=110"),
        format!("smptehdbars=size={s}:rate={r}"),
        format!("color=c=gray:size={s}:rate={r},noise=alls=60:allf=t+u"),
        format!("rgbtestsrc=size={s}:rate={r}"),
        format!("gradients=size={s}:rate={r}:speed=0.05"),
        format!("sierpinski=size={s}:rate={r}"),
        format!("yuvtestsrc=size={s}:rate={r}"),
        format!("colorspectrum=size={s}:rate={r}"),
        format!("colorchart=rate={r},scale={}", s.replace('x', ":")),
    ]
}

/// Builds a clip of `order` (indices into `sources()`) with the given
/// lengths in frames; returns the ground-truth cut frames.
fn make_clip(path: &Path, order: &[usize], lengths: &[u32]) -> BTreeSet<i64> {
    let srcs = sources();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-y"]);
    let mut graph = String::new();
    for (k, (&i, &len)) in order.iter().zip(lengths).enumerate() {
        cmd.args(["-f", "lavfi", "-i", &srcs[i]]);
        graph.push_str(&format!("[{k}:v]trim=end_frame={len},setpts=PTS-STARTPTS,format=yuv420p,setsar=1[v{k}];"));
    }
    for k in 0..order.len() {
        graph.push_str(&format!("[v{k}]"));
    }
    graph.push_str(&format!("concat=n={}:v=1:a=0[out]", order.len()));
    let ok = cmd
        .args(["-filter_complex", &graph, "-map", "[out]", "-c:v", "libx264", "-crf", "16", "-preset", "veryfast"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "ffmpeg could not build the clip");
    let mut cuts = BTreeSet::new();
    let mut at = 0i64;
    for &len in &lengths[..lengths.len() - 1] {
        at += i64::from(len);
        cuts.insert(at);
    }
    cuts
}

fn lockstep_cuts(path: &Path) -> BTreeSet<i64> {
    let out = lockstep().arg("analyze").arg(path).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["scene_cuts"].as_array().unwrap().iter().map(|c| c.as_i64().unwrap()).collect()
}

fn scdet_cuts(path: &Path) -> BTreeSet<i64> {
    let out = Command::new("ffmpeg")
        .args(["-v", "info", "-nostdin", "-i"])
        .arg(path)
        .args(["-vf", "scdet=threshold=10", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    log.split("lavfi.scd.time:")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|t| (t * f64::from(FPS)).round() as i64)
        .collect()
}

/// (true positives, false positives, false negatives), a cut within one
/// frame of the truth counting as found.
fn score(found: &BTreeSet<i64>, truth: &BTreeSet<i64>) -> (usize, usize, usize) {
    let hit = |c: &i64| truth.iter().any(|t| (t - c).abs() <= 1);
    let tp = found.iter().filter(|c| hit(c)).count();
    let fp = found.len() - tp;
    let fn_ = truth.iter().filter(|t| !found.iter().any(|c| (*t - c).abs() <= 1)).count();
    (tp, fp, fn_)
}

#[test]
fn scene_cuts_match_ground_truth() {
    require_tool("ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    // Three clips, every source used, no source next to itself; lengths
    // vary between 19 and 67 frames.
    let plans: [(&[usize], &[u32]); 3] = [
        (&[0, 1, 2, 3, 4, 5, 6, 7], &[40, 27, 55, 31, 48, 23, 61, 36]),
        (&[8, 9, 10, 11, 0, 2, 5, 1], &[33, 45, 19, 52, 29, 67, 38, 44]),
        (&[3, 6, 9, 4, 11, 7, 10, 8], &[50, 21, 36, 58, 25, 41, 30, 47]),
    ];
    let (mut ours, mut theirs, mut agree, mut total_ours) = ((0, 0, 0), (0, 0, 0), 0, 0);
    for (k, (order, lengths)) in plans.iter().enumerate() {
        let clip = dir.path().join(format!("clip{k}.mp4"));
        let truth = make_clip(&clip, order, lengths);
        let found = lockstep_cuts(&clip);
        let reference = scdet_cuts(&clip);
        let (a, b) = (score(&found, &truth), score(&reference, &truth));
        eprintln!("clip {k}: truth {truth:?}\n  lockstep {found:?} {a:?}\n  scdet    {reference:?} {b:?}");
        ours = (ours.0 + a.0, ours.1 + a.1, ours.2 + a.2);
        theirs = (theirs.0 + b.0, theirs.1 + b.1, theirs.2 + b.2);
        agree += found.iter().filter(|c| reference.iter().any(|r| (r - *c).abs() <= 1)).count();
        total_ours += found.len();
    }
    let pr = |(tp, fp, fn_): (usize, usize, usize)| {
        (tp as f64 / (tp + fp).max(1) as f64, tp as f64 / (tp + fn_).max(1) as f64)
    };
    let (p, r) = pr(ours);
    let (sp, sr) = pr(theirs);
    println!("scene cuts, lockstep: precision {p:.3}, recall {r:.3}");
    println!("scene cuts, ffmpeg scdet (threshold 10): precision {sp:.3}, recall {sr:.3}");
    println!("agreement: {agree} of lockstep's {total_ours} cuts also found by scdet");
    assert!(p >= 0.95, "precision {p:.3} below 0.95");
    assert!(r >= 0.95, "recall {r:.3} below 0.95");
}
