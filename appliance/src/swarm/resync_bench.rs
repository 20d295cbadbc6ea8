//! `lockstep bench resync`: drills on one appliance of a local swarm of
//! separate daemon processes (`lockstep run`, the built-in test source,
//! loopback), each drill run twice in the same benchmark: with drift
//! prediction (`swarm.drift_horizon_s = 10`) and without it
//! (`swarm.drift_horizon_s = 0`, the reactive baseline: only a clock
//! already half a frame off is corrected).
//!
//! For each run it prints when a majority of the other appliances flagged
//! the drilled one (detection), when its correction was in effect (its
//! boundary reached), how long before half a frame the prediction fired
//! (lead time), how far off the others measured it at worst, and how many
//! of its segments were published with bytes other than the majority's
//! (misaligned; the target is 0), and how many of those were still so at
//! the end, after the local re-encode. The test source shows the picture of
//! the undrilled clock's time, as a camera would (docs/time.md), so a clock
//! half a frame off misaligns segments as a real capture would.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::local::{LocalSwarm, Options};

/// Frames per segment of the bench channel (25 fps, 2 s segments).
const SEGMENT_FRAMES: i64 = 50;
/// Half a frame at 25 fps, ms.
const HALF_FRAME_MS: f64 = 20.0;
/// The prediction horizon of the predictive runs, s.
const HORIZON_S: f64 = 10.0;

/// A fault put on one appliance.
#[derive(Debug, Clone, Copy)]
pub enum Drill {
    /// Its capture slips this many frames.
    Slip(i64),
    /// Its media clock gains this many ppm from the drill on.
    Drift(f64),
    /// Its media clock steps this many ms at once.
    Step(f64),
}

impl Drill {
    fn describe(self) -> String {
        match self {
            Drill::Slip(k) => format!("slip {k} frame{}", if k.abs() == 1 { "" } else { "s" }),
            Drill::Drift(ppm) => format!("drift {ppm} ppm"),
            Drill::Step(ms) => format!("step {ms} ms"),
        }
    }

    /// The admin API request that starts it.
    fn request(self) -> (&'static str, &'static str, String) {
        match self {
            Drill::Slip(k) => ("POST", "/api/v1/channels/ch/drills/slip", format!(r#"{{"frames": {k}}}"#)),
            Drill::Drift(ppm) => ("PUT", "/api/v1/clock/fault", format!(r#"{{"frequency_ppm": {ppm}}}"#)),
            Drill::Step(ms) => {
                ("PUT", "/api/v1/clock/fault", format!(r#"{{"step_ns": {}}}"#, (ms * 1e6).round() as i64))
            }
        }
    }

    /// How long a run may take after the drill.
    fn limit(self) -> Duration {
        match self {
            // Half a frame at this rate, then time to correct.
            Drill::Drift(ppm) => Duration::from_secs_f64(HALF_FRAME_MS * 1e3 / ppm.abs().max(1.0) + 60.0),
            Drill::Slip(_) | Drill::Step(_) => Duration::from_secs(60),
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Drill → a majority of the others flag the node, s.
    detected_s: Option<f64>,
    /// At detection, the time the flagging nodes predicted until half a
    /// frame (median), s.
    lead_s: Option<f64>,
    /// Drill → the correction in effect (its boundary reached), s.
    corrected_s: Option<f64>,
    /// The correction, in words.
    correction: Option<String>,
    /// The largest offset of the drilled node's clock the first other node
    /// measured, ms.
    worst_ms: f64,
    /// Segments of the drilled node compared with the majority's, from the
    /// drill's segment on, and how many differed.
    compared: usize,
    misaligned: usize,
    /// Of those, still misaligned at the end (not re-encoded).
    left: usize,
}

/// A local swarm of `n` daemon processes under `dir`; the last one has
/// the admin API (the drills go through it).
fn start_swarm(dir: &Path, n: usize, horizon_s: f64, wait_ms: u32, run_s: f64) -> anyhow::Result<LocalSwarm> {
    let options = Options {
        nodes: n,
        run_s,
        height: 90,
        bitrate_kbps: 100,
        swarm: format!("drift_horizon_s = {horizon_s}\nmajority_wait_ms = {wait_ms}\n"),
        channel: String::new(),
        admin: vec![n - 1],
        standby: Vec::new(),
    };
    LocalSwarm::start(dir, &options)
}

impl LocalSwarm {
    fn drilled(&self) -> String {
        format!("n{}", self.n - 1)
    }

    /// Every node sees every other in lockstep, and the others measure
    /// the drilled node's clock.
    fn wait_for_lockstep(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let drilled = self.drilled();
        loop {
            let views: Vec<Value> = (0..self.n).filter_map(|k| self.view(k)).collect();
            let steady = views.len() == self.n
                && views.iter().enumerate().all(|(k, v)| {
                    (0..self.n).filter(|&j| j != k).all(|j| {
                        let d = &v["channels"]["ch"]["deviations"][format!("n{j}")];
                        d["frame_offset"] == 0 && (j != self.n - 1 || !d["clock"].is_null())
                    })
                });
            if steady {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "the swarm under {} did not reach lockstep (with clock readings of {drilled}) within {limit:?}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<()> {
        self.ask(self.n - 1, method, path, Some(body))?;
        Ok(())
    }

    /// Segment `index` of node `k`'s own output, if published.
    fn segment(&self, k: usize, index: i64) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(format!("n{k}/ch/90p/seg-{index}.m4s"))).ok()
    }

    /// The hash node `k` first published for segment `index` (its
    /// manifest's first line for it; a re-encode adds a later one).
    fn first_published(&self, k: usize, index: i64) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("n{k}/ch/90p/manifest.jsonl"))).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<crate::package::ManifestEntry>(l).ok())
            .find(|e| e.index == index)
            .map(|e| e.sha256)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Runs one drill on a fresh swarm of `n` with the given horizon.
fn run_one(root: &Path, n: usize, drill: Drill, horizon_s: f64, wait_ms: u32) -> anyhow::Result<Outcome> {
    let limit = drill.limit();
    let swarm = start_swarm(root, n, horizon_s, wait_ms, limit.as_secs_f64() + 90.0)?;
    swarm.wait_for_lockstep(Duration::from_secs(60))?;
    let drilled = swarm.drilled();
    let me = n - 1;
    let first_frame = swarm.view(me).and_then(|v| v["me"]["channels"][0]["frame"].as_i64()).unwrap_or_default();
    let (method, path, body) = drill.request();
    let drilled_ms = now_ms();
    swarm.request(method, path, &body)?;
    let started = Instant::now();
    let mut out = Outcome::default();
    let majority = (n - 1) / 2 + 1;
    // Until the correction has been in effect for two segments.
    let mut settle_until: Option<Instant> = None;
    while started.elapsed() < limit && settle_until.is_none_or(|t| Instant::now() < t) {
        std::thread::sleep(Duration::from_millis(100));
        let mut leads = Vec::new();
        let mut flagged = 0;
        for k in 0..n - 1 {
            let Some(v) = swarm.view(k) else { continue };
            let d = &v["channels"]["ch"]["deviations"][&drilled];
            let left = d["clock"]["half_frame_in_s"].as_f64();
            let offset = d["frame_offset"].as_i64().is_some_and(|k| k != 0);
            if offset || d["clock"]["flagged"] == true {
                flagged += 1;
                leads.extend(left);
            }
            if k == 0
                && let Some(ms) = d["clock"]["offset_ms"].as_f64()
            {
                out.worst_ms = out.worst_ms.max(ms.abs());
            }
        }
        if out.detected_s.is_none() && flagged >= majority {
            out.detected_s = Some(started.elapsed().as_secs_f64());
            // Only a prediction has a lead time.
            out.lead_s = if horizon_s > 0.0 { median(leads) } else { None };
        }
        if out.corrected_s.is_none()
            && let Some(v) = swarm.view(me)
        {
            let r = &v["resync"]["ch"];
            let frame = v["me"]["channels"][0]["frame"].as_i64().unwrap_or_default();
            let at = r["proposal"]["at_segment"].as_i64().unwrap_or(i64::MAX);
            if r["outcome"] == "applied"
                && r["proposal"]["id"].as_u64().is_some_and(|id| id >= drilled_ms)
                && frame >= at.saturating_mul(SEGMENT_FRAMES)
            {
                out.corrected_s = Some(started.elapsed().as_secs_f64());
                out.correction = Some(describe(&r["proposal"]["correction"]));
                settle_until = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }
    // Every segment from the drill's on that the drilled node and the
    // others all published: the drilled node's bytes against the others'
    // (which agree among themselves).
    let last = swarm.view(me).and_then(|v| v["me"]["channels"][0]["frame"].as_i64()).unwrap_or_default();
    for index in first_frame / SEGMENT_FRAMES..last / SEGMENT_FRAMES {
        let Some(own) = swarm.segment(me, index) else { continue };
        let others: Vec<Vec<u8>> = (0..n - 1).filter_map(|k| swarm.segment(k, index)).collect();
        if others.len() < n - 1 {
            continue;
        }
        anyhow::ensure!(
            others.windows(2).all(|w| w[0] == w[1]),
            "segment {index}: the undrilled nodes disagree among themselves (logs under {})",
            root.display()
        );
        out.compared += 1;
        // Published misaligned: the first manifest line of the index;
        // left so: the file at the end, after any re-encode.
        let majority = hex::encode(Sha256::digest(&others[0]));
        if swarm.first_published(me, index).is_some_and(|h| h != majority) {
            out.misaligned += 1;
        }
        if own != others[0] {
            out.left += 1;
        }
    }
    Ok(out)
}

fn describe(correction: &Value) -> String {
    if let Some(frames) = correction["realign"]["frames"].as_i64() {
        return format!("realign by {frames}");
    }
    let c = &correction["clock"];
    match (c["offset_ns"].as_f64(), c["rate_ppb"].as_f64()) {
        (Some(o), Some(r)) => format!("clock {:+.1} ms {:+.0} ppm", o / 1e6, r / 1e3),
        _ => correction.to_string(),
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

/// Runs the benchmark: `nodes` appliances; drills a 1-frame slip, a
/// clock step of `step_ms` and a drift of `ppm`, each with prediction and
/// without.
pub fn run(nodes: usize, ppm: f64, step_ms: f64, wait_ms: u32, only: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!((3..=9).contains(&nodes), "--nodes must be between 3 and 9");
    anyhow::ensure!(ppm != 0.0 && ppm.abs() <= 1000.0, "--ppm must be between -1000 and 1000, not 0");
    anyhow::ensure!(step_ms.abs() <= 1000.0, "--step-ms must be within ±1000");
    let root = std::env::temp_dir().join(format!("lockstep-bench-resync-{}", std::process::id()));
    for name in only {
        anyhow::ensure!(["slip", "step", "drift"].contains(&name.as_str()), "--drill {name}: slip, step or drift");
    }
    let drills: Vec<Drill> = [("slip", Drill::Slip(1)), ("step", Drill::Step(step_ms)), ("drift", Drill::Drift(ppm))]
        .into_iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .map(|(_, d)| d)
        .collect();
    println!(
        "{nodes} appliances (separate processes, 160x90 at 25 fps, 2 s segments); the drill on n{}; \
         prediction: swarm.drift_horizon_s = {HORIZON_S}, reactive baseline: 0; swarm.majority_wait_ms = {wait_ms}",
        nodes - 1
    );
    let mut drift = Vec::new();
    let (mut published, mut compared) = (0, 0);
    for (i, drill) in drills.iter().enumerate() {
        for (mode, horizon) in [("predictive", HORIZON_S), ("reactive", 0.0)] {
            let dir = root.join(format!("{i}-{mode}"));
            let o = run_one(&dir, nodes, *drill, horizon, wait_ms)?;
            println!(
                "{:<14} {mode:<10}  detected {:>7}  lead {:>7}  corrected {:>7} ({})  worst offset {:5.1} ms  misaligned segments {} of {} ({} left after re-encode)",
                drill.describe(),
                seconds(o.detected_s),
                seconds(o.lead_s),
                seconds(o.corrected_s),
                o.correction.as_deref().unwrap_or("none"),
                o.worst_ms,
                o.misaligned,
                o.compared,
                o.left
            );
            published += o.misaligned;
            compared += o.compared;
            if matches!(drill, Drill::Drift(_)) {
                drift.push(o);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    if let [predictive, reactive] = drift.as_slice() {
        println!(
            "drift {ppm} ppm: misaligned segments {} predictive vs {} reactive; prediction lead {}",
            predictive.misaligned,
            reactive.misaligned,
            seconds(predictive.lead_s)
        );
    } else {
        println!("misaligned segments published: {published} of {compared} (swarm.majority_wait_ms = {wait_ms})");
    }
    Ok(())
}
