//! Complexity calibration and content-type accuracy on labelled clips.
//!
//! Each clip is 50 frames (one 2 s segment) at 640x360 from ffmpeg lavfi
//! sources of different character. The test prints, per clip, the
//! features `lockstep analyze` reports and the bits libx264 spends on the
//! clip at a fixed QP, then
//! - the Spearman rank correlation between the complexity score and those
//!   bits (must be ≥ 0.8), and
//! - the confusion matrix of the content-type labels (accuracy ≥ 0.8).
//!
//! Numbers go to docs/analysis.md and docs/SPECIFICATION.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const FRAMES: u32 = 50;
const LABELS: [&str; 4] = ["high_motion", "synthetic", "static", "mixed"];

/// A labelled clip: name, lavfi graphs with their lengths in frames
/// (concatenated), expected content type.
type Clip = (&'static str, Vec<(String, u32)>, &'static str);

/// The clips. Graphs produce 640x360 at 25 fps; random sources are seeded.
fn clips() -> Vec<Clip> {
    let s = "size=640x360:rate=25";
    let one = |g: String| vec![(g, FRAMES)];
    let noisy = |g: &str, n: u32| format!("{g},noise=alls={n}:allf=t");
    vec![
        // Still pictures, with and without camera-like noise, one with a small moving object.
        ("bars", one(format!("smptehdbars={s}")), "static"),
        ("bars-noise", one(noisy(&format!("smptehdbars={s}"), 12)), "static"),
        ("spectrum", one(format!("colorspectrum={s}")), "static"),
        ("chart-noise", one(noisy("colorchart=rate=25,scale=640:360", 8)), "static"),
        ("rgb", one(format!("rgbtestsrc={s}")), "static"),
        (
            "presenter",
            one(noisy(
                &format!("smptehdbars={s},drawbox=x='280+12*sin(t*4)':y=140:w=70:h=90:color=white@0.9:t=fill"),
                6,
            )),
            "static",
        ),
        // Clean animated graphics.
        ("testsrc2", one(format!("testsrc2={s}")), "synthetic"),
        ("life", one(format!("life={s}:mold=10:ratio=0.1:seed=7:death_color=#C83232:life_color=#00ff00")), "synthetic"),
        ("cellauto", one(format!("cellauto={s}:rule=110:random_seed=7")), "synthetic"),
        ("sierpinski", one(format!("sierpinski={s}:seed=7")), "synthetic"),
        ("mandelbrot", one(format!("mandelbrot={s}")), "synthetic"),
        ("gradients", one(format!("gradients={s}:speed=0.05")), "synthetic"),
        // Fast camera-like motion over detailed pictures, with sensor noise.
        ("pan-mandelbrot", one(noisy(&format!("mandelbrot={s},scroll=h=0.02:v=0.005"), 6)), "high_motion"),
        ("pan-testsrc2", one(noisy(&format!("testsrc2={s},scroll=h=-0.03"), 8)), "high_motion"),
        ("rotate-chart", one(noisy("colorchart=rate=25,scale=640:360,rotate=a='t*1.5'", 6)), "high_motion"),
        ("shake-bars", one(noisy(&format!("smptehdbars={s},scroll=h=0.04:v=0.03"), 10)), "high_motion"),
        // Several shots in one segment.
        (
            "cuts-5",
            vec![
                (format!("testsrc2={s}"), 10),
                (format!("smptehdbars={s}"), 10),
                (format!("mandelbrot={s}"), 10),
                (format!("cellauto={s}:rule=30:random_seed=7"), 10),
                (noisy(&format!("color=c=gray:{s}"), 20), 10),
            ],
            "mixed",
        ),
        (
            "cuts-3",
            vec![
                (format!("life={s}:mold=10:ratio=0.1:seed=7"), 20),
                (format!("colorspectrum={s}"), 15),
                (format!("sierpinski={s}:seed=7"), 15),
            ],
            "mixed",
        ),
        (
            "cuts-4-noisy",
            vec![
                (noisy(&format!("smptehdbars={s}"), 10), 12),
                (noisy(&format!("testsrc2={s}"), 10), 13),
                (noisy(&format!("rgbtestsrc={s}"), 10), 12),
                (noisy(&format!("colorspectrum={s}"), 10), 13),
            ],
            "mixed",
        ),
    ]
}

/// Renders a clip as Y4M (what lockstep reads directly).
fn render(path: &Path, parts: &[(String, u32)]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin", "-y"]);
    let mut graph = String::new();
    for (k, (g, len)) in parts.iter().enumerate() {
        cmd.args(["-f", "lavfi", "-i", g]);
        graph.push_str(&format!("[{k}:v]trim=end_frame={len},setpts=PTS-STARTPTS,format=yuv420p,setsar=1[v{k}];"));
    }
    for k in 0..parts.len() {
        graph.push_str(&format!("[v{k}]"));
    }
    graph.push_str(&format!("concat=n={}:v=1:a=0[out]", parts.len()));
    let ok = cmd.args(["-filter_complex", &graph, "-map", "[out]", "-f", "yuv4mpegpipe"]).arg(path).status().unwrap();
    assert!(ok.success(), "ffmpeg could not render {}", path.display());
}

/// Bytes libx264 spends on the clip at a fixed QP (one GOP, no B-frames).
fn bits_at_fixed_qp(path: &Path) -> u64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args(["-c:v", "libx264", "-qp", "28", "-g", "50", "-bf", "0", "-preset", "veryfast", "-threads", "1"])
        .args(["-f", "h264", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.len() as u64 * 8
}

/// Ranks with ties averaged.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn spearman_handles_ties_and_order() {
    assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    assert_eq!(ranks(&[5.0, 1.0, 5.0]), [2.5, 1.0, 2.5]);
}

#[test]
fn complexity_predicts_bits_and_content_labels_match() {
    require_tool("ffmpeg");
    // LOCKSTEP_CLIP_DIR keeps the rendered clips between runs (calibration).
    let keep = std::env::var_os("LOCKSTEP_CLIP_DIR").map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(dir).unwrap();
    let mut scores = Vec::new();
    let mut bits = Vec::new();
    let mut confusion = [[0u32; 4]; 4];
    eprintln!(
        "{:<15} {:>10} {:>8} {:>8} {:>7} {:>6} {:>5} {:>10}  {:<11} {:<11} {:>4}",
        "clip",
        "bits@qp28",
        "spatial",
        "temporal",
        "motion",
        "noise",
        "cuts",
        "complexity",
        "label",
        "expected",
        "conf"
    );
    for (name, parts, expected) in clips() {
        let path = dir.join(format!("{name}.y4m"));
        if keep.is_none() || !path.exists() {
            render(&path, &parts);
        }
        let out = lockstep().arg("analyze").arg(&path).arg("--json").output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let segs = report["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 1, "{name}: one 2 s segment");
        let seg = &segs[0];
        assert_eq!(seg["frames"], FRAMES, "{name}");
        let b = bits_at_fixed_qp(&path);
        let label = seg["content"].as_str().unwrap().to_string();
        let f = |k: &str| seg[k].as_f64().unwrap();
        eprintln!(
            "{name:<15} {b:>10} {:>8.2} {:>8.2} {:>7.2} {:>6.2} {:>5} {:>10.3}  {label:<11} {expected:<11} {:>4.2}",
            f("spatial"),
            f("temporal"),
            f("motion"),
            f("noise"),
            seg["scene_cuts"].as_array().unwrap().len(),
            f("complexity"),
            f("confidence"),
        );
        if std::env::var_os("LOCKSTEP_CLIP_DIR").is_some() {
            eprintln!("FEATURES {name} {expected} {b} {}", serde_json::to_string(seg).unwrap());
        }
        scores.push(f("complexity"));
        bits.push(b as f64);
        let e = LABELS.iter().position(|&l| l == expected).unwrap();
        let g = LABELS.iter().position(|l| *l == label).unwrap();
        confusion[e][g] += 1;
        if keep.is_none() {
            let _ = std::fs::remove_file(&path);
        }
    }
    let rho = spearman(&scores, &bits);
    eprintln!("Spearman(complexity, bits at QP 28) over {} clips: {rho:.3}", scores.len());
    let total: u32 = confusion.iter().flatten().sum();
    let right: u32 = (0..4).map(|i| confusion[i][i]).sum();
    let accuracy = f64::from(right) / f64::from(total);
    eprintln!("content type confusion (rows: expected, columns: labelled)");
    eprintln!("{:<12} {}", "", LABELS.map(|l| format!("{l:>11}")).join(""));
    for (i, row) in confusion.iter().enumerate() {
        eprintln!("{:<12} {}", LABELS[i], row.map(|c| format!("{c:>11}")).join(""));
    }
    eprintln!("content type accuracy: {right}/{total} = {accuracy:.3}");
    assert!(rho >= 0.8, "complexity must rank segments by encoding cost: Spearman {rho:.3} < 0.8");
    assert!(accuracy >= 0.8, "content-type accuracy {accuracy:.3} < 0.8");
}
