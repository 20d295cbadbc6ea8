//! `lockstep bench chain`: CPU starvation drills on one appliance of a
//! local swarm of two daemon processes (`crate::swarm::local`), measured
//! from outside the drilled appliance, with the failure prediction acting
//! and without it (the reactive baseline), in the same run:
//!
//! 1. training: a swarm runs `--training-calm-minutes` without drills
//!    (an appliance's history is mostly calm), then `--training` drills of
//!    random ramps on `n0`, then fits its models (`POST
//!    /api/v1/predict/train`);
//! 2. held-out drills of other random ramps and calm spells, each run on a
//!    swarm whose `n0` has those models (prediction on) and again on one
//!    without (prediction off);
//! 3. a calm spell of `--calm-minutes` on the swarm with the models:
//!    false alarms per hour.
//!
//! A drill ramps `n0`'s cgroup CPU limit down to 0.02 CPU. Its failure is
//! taken from the outputs: the first segment `n0` publishes a whole
//! segment after `n1` published the same index; the drill then holds
//! until `n0` judges its own encoder failed, so its history (which the
//! training labels) records the failure. The handover is the start
//! of the first stretch of at least 2 s in which `n1`'s view weighs `n0`
//! below itself (in the 0.05 steps replica selection goes by) while `n0`
//! is still healthy. A combined segment at
//! `n1` is late when it appears a whole segment after `n1`'s own copy,
//! missing when it never does. Needs root (the CPU drill sets the cgroup
//! limit of `n0`).
//!
//! With `--standby`, `n1` is a standby unit (`appliance.role =
//! "standby"`): it encodes nothing until an encoder of the channel is
//! predicted to fail or fails (`crate::swarm::standby`). Without peer
//! copies to compare with, times are taken against each playlist's own
//! pace before the drill (its median delay behind the segment's index):
//! `n0` fails when a segment of its own comes a whole segment later than
//! its pace, a combined segment at `n1` is late when it comes a whole
//! segment later than the combined output's pace, and the standby is
//! ready when its first segment of its own appears.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

use crate::swarm::local::{LocalSwarm, Options};

/// Segment length of the bench channel, ms.
const SEGMENT_MS: u64 = 1000;
/// The CPUs a drill leaves the drilled appliance at the end of its ramp.
const STARVED_CPUS: f64 = 0.02;
/// Longest wait for a drill's failure after its ramp, s.
const FAIL_WITHIN_S: u32 = 60;
/// Time the failure is held before the drill ends (the history keeps it).
const HOLD: Duration = Duration::from_secs(3);
/// Time given to recover after a drill.
const RECOVER: Duration = Duration::from_secs(15);
/// The drilled appliance and the one watching it.
const DRILLED: usize = 0;
const WATCHER: usize = 1;

/// Minutes without drills: on the training swarm before its drills, and
/// on the swarm with the models after the held-out drills.
#[derive(Debug, Clone, Copy)]
pub struct Calm {
    /// Before the training drills.
    pub training: f64,
    /// After the held-out drills (false alarms).
    pub held_out: f64,
}

/// One drill: how long its limit takes to fall, and the calm before it.
#[derive(Debug, Clone, Copy)]
struct Drill {
    ramp_s: u32,
    calm_s: u32,
}

/// What one drill measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Drill start → failure, s (`None`: it did not fail).
    failed_s: Option<f64>,
    /// Failure − the first alarm for the drilled encoder, s.
    alarm_lead_s: Option<f64>,
    /// Failure − the handover, s (negative: after the failure; `None`:
    /// no handover while the drilled node was healthy).
    handover_lead_s: Option<f64>,
    /// Combined segments at the watcher from the drill on: compared, late,
    /// missing, and the slowest behind the watcher's own, s.
    compared: usize,
    late: usize,
    missing: usize,
    slowest_s: f64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When each index first appeared in a playlist, and when it was first
/// read (what it listed then appeared earlier, at an unknown time).
#[derive(Debug, Default)]
struct Appearances(BTreeMap<i64, u64>, Option<u64>);

/// How long after its index's start (the index times the segment length,
/// on the media clock's scale: a constant apart from the system clock) a
/// segment appeared, ms.
fn delay(index: i64, t_ms: u64) -> i64 {
    t_ms as i64 - index * SEGMENT_MS as i64
}

impl Appearances {
    /// The median delay of the segments that appeared before `until_ms`
    /// (after the first read: a segment listed then is older than its sight).
    fn pace(&self, until_ms: u64) -> Option<i64> {
        let seen = |t: u64| self.1.is_none_or(|first| t > first) && t < until_ms;
        let mut d: Vec<i64> = self.0.iter().filter(|(_, t)| seen(**t)).map(|(i, t)| delay(*i, *t)).collect();
        d.sort_unstable();
        d.get(d.len() / 2).copied()
    }

    fn read(&mut self, playlist: &Path, at_ms: u64) {
        let Ok(text) = std::fs::read_to_string(playlist) else { return };
        self.1.get_or_insert(at_ms);
        for line in text.lines() {
            let index = line.strip_prefix("seg-").and_then(|l| l.strip_suffix(".m4s")).and_then(|i| i.parse().ok());
            if let Some(i) = index {
                self.0.entry(i).or_insert(at_ms);
            }
        }
    }
}

/// The swarm's playlists a drill watches, and what the watcher's view
/// says of the drilled node.
struct Watch {
    drilled_own: Appearances,
    watcher_own: Appearances,
    combined: Appearances,
    /// Start of the first handover that began after counting began.
    handed_over_ms: Option<u64>,
    handovers: Handovers,
    /// The watcher is a standby unit.
    standby: bool,
}

/// A handover: the drilled node weighed below the watcher while healthy,
/// held for [`HANDOVER_HELD_MS`] — a weight dipping one 0.05 step for a
/// round is noise, not a handover.
#[derive(Debug, Default)]
struct Handovers {
    /// Since when the condition holds, and whether that stretch was
    /// counted already.
    since: Option<(u64, bool)>,
    /// Stretches that began while it did not hold (at the start, one
    /// under way is not counted).
    armed: bool,
}

/// How long the drilled node stays weighed below the watcher before that
/// counts as a handover, ms.
const HANDOVER_HELD_MS: u64 = 2000;

impl Handovers {
    /// The condition at `t_ms`; answers the start of a handover once it
    /// has held long enough (once per stretch).
    fn observe(&mut self, holds: bool, t_ms: u64) -> Option<u64> {
        if !holds {
            self.since = None;
            self.armed = true;
            return None;
        }
        let (start, counted) = self.since.get_or_insert((t_ms, false));
        if self.armed && !*counted && t_ms >= *start + HANDOVER_HELD_MS {
            *counted = true;
            return Some(*start);
        }
        None
    }
}

impl Watch {
    fn new() -> Self {
        Self {
            drilled_own: Appearances::default(),
            watcher_own: Appearances::default(),
            combined: Appearances::default(),
            handed_over_ms: None,
            handovers: Handovers::default(),
            standby: false,
        }
    }

    fn poll(&mut self, swarm: &LocalSwarm) {
        let t = now_ms();
        self.drilled_own.read(&swarm.out(DRILLED).join("ch/180p/playlist.m3u8"), t);
        self.watcher_own.read(&swarm.out(WATCHER).join("ch/180p/playlist.m3u8"), t);
        self.combined.read(&swarm.out(WATCHER).join("combined/ch/180p/playlist.m3u8"), t);
        let holds = !self.standby && swarm.view(WATCHER).is_some_and(|v| handed_over(&v));
        if let Some(start) = self.handovers.observe(holds, t) {
            self.handed_over_ms = self.handed_over_ms.or(Some(start));
        }
    }

    /// The first index from `from_ms` on that the drilled node published a
    /// whole segment after the watcher (a standby watcher: a whole segment
    /// behind its own pace before `from_ms`): when that happened.
    fn failure_ms(&self, from_ms: u64) -> Option<u64> {
        if self.standby {
            let pace = self.drilled_own.pace(from_ms)?;
            return self
                .drilled_own
                .0
                .iter()
                .find(|(i, t)| **t >= from_ms && delay(**i, **t) >= pace + SEGMENT_MS as i64)
                .map(|(_, t)| *t);
        }
        self.drilled_own
            .0
            .iter()
            .filter(|(_, t)| **t >= from_ms)
            .find(|(i, t)| self.watcher_own.0.get(i).is_some_and(|w| **t >= w + SEGMENT_MS))
            .map(|(_, t)| *t)
    }
}

/// The weights in the 0.05 steps selection uses.
fn step(w: &Value) -> Option<f64> {
    w.as_f64().map(|w| (w * 20.0).round() / 20.0)
}

/// The watcher weighs the drilled node below itself while it is healthy.
fn handed_over(view: &Value) -> bool {
    let w = &view["channels"]["ch"]["weights"];
    let healthy = view["peers"][format!("n{DRILLED}")]["healthy"] == true;
    match (step(&w[format!("n{DRILLED}")]), step(&w[format!("n{WATCHER}")])) {
        (Some(d), Some(me)) => healthy && d < me,
        _ => false,
    }
}

/// Waits until both nodes are up and weigh the same in the watcher's
/// view (a standby watcher: until it stands by again, encoding nothing).
fn wait_level(swarm: &LocalSwarm, standby: bool, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if standby && let Some(v) = swarm.view(WATCHER) {
            if v["standby"]["ch"]["prepared"] == false && v["peers"]["n0"]["healthy"] == true {
                return Ok(());
            }
        } else if let Some(v) = swarm.view(WATCHER) {
            let w = &v["channels"]["ch"]["weights"];
            let level = matches!((step(&w["n0"]), step(&w["n1"])), (Some(a), Some(b)) if a > 0.5 && a == b);
            if level && v["peers"]["n0"]["healthy"] == true {
                return Ok(());
            }
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "the two appliances under {} did not settle (the same weight, or standing by) within {limit:?}: {}",
            swarm.dir.display(),
            swarm.view(WATCHER).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether the drilled node's chain shows its encoder failed (`bad`);
/// false while the starved node does not answer.
fn judged_failed(swarm: &LocalSwarm) -> bool {
    let Ok(chain) = swarm.ask(DRILLED, "GET", "/api/v1/chain", None) else {
        return false;
    };
    chain["components"].as_array().into_iter().flatten().any(|c| c["kind"] == "encoder" && c["state"] == "bad")
}

/// Ends the drilled node's drills, retrying while it is starved.
fn end_drills(swarm: &LocalSwarm) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match swarm.ask(DRILLED, "DELETE", "/api/v1/drills", None) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no answer")).context("ending the CPU drill"))
}

/// Runs `drill` on `swarm` and measures it.
fn run_drill(swarm: &LocalSwarm, standby: bool, drill: Drill) -> anyhow::Result<Outcome> {
    wait_level(swarm, standby, Duration::from_secs(90))?;
    let mut watch = Watch { standby, ..Watch::new() };
    let calm_until = Instant::now() + Duration::from_secs(u64::from(drill.calm_s));
    while Instant::now() < calm_until {
        watch.poll(swarm);
        std::thread::sleep(Duration::from_millis(200));
    }
    watch.handed_over_ms = None;
    watch.handovers = Handovers::default();
    let body = format!(
        r#"{{"cpus": {STARVED_CPUS}, "ramp_s": {}, "seconds": {}}}"#,
        drill.ramp_s,
        drill.ramp_s + FAIL_WITHIN_S + 30
    );
    let started = swarm.ask(DRILLED, "POST", "/api/v1/drills/cpu", Some(&body))?;
    let start_ms = started["started_ms"].as_u64().context("the drill's start")?;
    let give_up = Instant::now() + Duration::from_secs(u64::from(drill.ramp_s + FAIL_WITHIN_S));
    let mut failed_ms = None;
    while Instant::now() < give_up {
        watch.poll(swarm);
        failed_ms = watch.failure_ms(start_ms);
        if failed_ms.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if failed_ms.is_some() {
        // Training labels the drilled node's own history: hold the
        // failure until the node itself judges its encoder failed.
        let judged_by = Instant::now() + Duration::from_secs(u64::from(FAIL_WITHIN_S));
        let mut asked = Instant::now();
        while !judged_failed(swarm) && Instant::now() < judged_by {
            while asked.elapsed() < Duration::from_secs(1) {
                watch.poll(swarm);
                std::thread::sleep(Duration::from_millis(200));
            }
            asked = Instant::now();
        }
    }
    let hold_until = Instant::now() + HOLD;
    while Instant::now() < hold_until {
        watch.poll(swarm);
        std::thread::sleep(Duration::from_millis(200));
    }
    end_drills(swarm)?;
    let recovered = Instant::now() + RECOVER;
    while Instant::now() < recovered {
        watch.poll(swarm);
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = swarm.ask(DRILLED, "GET", "/api/v1/events", None)?;
    let alarm_ms = events.as_array().into_iter().flatten().find_map(|e| {
        let t = e["t_ms"].as_u64()?;
        let alarm = e["kind"] == "prediction"
            && e["message"].as_str().is_some_and(|m| m.starts_with("encoder:ch: failure predicted"));
        (alarm && t >= start_ms).then_some(t)
    });
    let secs = |a: u64, b: u64| (a as f64 - b as f64) / 1000.0;
    let mut out = Outcome {
        failed_s: failed_ms.map(|f| secs(f, start_ms)),
        alarm_lead_s: failed_ms.zip(alarm_ms).map(|(f, a)| secs(f, a)),
        handover_lead_s: failed_ms.zip(watch.handed_over_ms).map(|(f, h)| secs(f, h)),
        ..Outcome::default()
    };
    if standby {
        // The standby is ready with its first segment of its own.
        let ready = watch.watcher_own.0.values().copied().filter(|t| *t >= start_ms).min();
        out.handover_lead_s = failed_ms.zip(ready).map(|(f, r)| secs(f, r));
        standby_combined(&watch, start_ms, &mut out);
        return Ok(out);
    }
    // Every index the watcher published from the drill on, but the last
    // two (their combined copies may still be on their way).
    let own: Vec<(&i64, &u64)> = watch.watcher_own.0.iter().filter(|(_, t)| **t >= start_ms).collect();
    for (index, own_ms) in own.iter().take(own.len().saturating_sub(2)) {
        out.compared += 1;
        match watch.combined.0.get(index) {
            Some(t) => {
                let behind = secs(*t, **own_ms);
                out.slowest_s = out.slowest_s.max(behind);
                if *t >= **own_ms + SEGMENT_MS {
                    out.late += 1;
                }
            }
            None => out.missing += 1,
        }
    }
    Ok(out)
}

/// The combined segments at a standby watcher from the drill on: every
/// index from the first one anyone published after `start_ms` to the
/// newest but two, late when it came a whole segment behind the combined
/// output's pace before the drill.
fn standby_combined(watch: &Watch, start_ms: u64, out: &mut Outcome) {
    let Some(pace) = watch.combined.pace(start_ms) else { return };
    let after = [&watch.drilled_own, &watch.watcher_own, &watch.combined]
        .into_iter()
        .flat_map(|a| a.0.iter().filter(|(_, t)| **t >= start_ms).map(|(i, _)| *i))
        .collect::<Vec<_>>();
    let (Some(first), Some(last)) = (after.iter().min(), after.iter().max()) else { return };
    for index in *first..=last - 2 {
        out.compared += 1;
        match watch.combined.0.get(&index) {
            Some(t) => {
                let behind = (delay(index, *t) - pace) as f64 / 1000.0;
                out.slowest_s = out.slowest_s.max(behind);
                if behind >= SEGMENT_MS as f64 / 1000.0 {
                    out.late += 1;
                }
            }
            None => out.missing += 1,
        }
    }
}

/// Starts a swarm of two under `dir` (the watcher a standby unit with
/// `standby`); `models` (a `models.json`) goes beside the drilled node's
/// history first.
fn start(dir: &Path, models: Option<&Path>, run_s: f64, standby: bool) -> anyhow::Result<LocalSwarm> {
    if let Some(m) = models {
        let at = dir.join(format!("n{DRILLED}"));
        std::fs::create_dir_all(&at)?;
        std::fs::copy(m, at.join("models.json")).context("copying the trained models")?;
    }
    let options = Options {
        nodes: 2,
        run_s,
        height: 180,
        bitrate_kbps: 900,
        channel: "segment_seconds = 1.0\n".into(),
        admin: vec![DRILLED],
        standby: if standby { vec![WATCHER] } else { Vec::new() },
        swarm: "standby_release_s = 10\n".into(),
    };
    LocalSwarm::start(dir, &options)
}

fn seconds(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// A drill's run time at most, s.
fn drill_s(d: Drill) -> f64 {
    f64::from(d.calm_s + d.ramp_s + FAIL_WITHIN_S) + (HOLD + RECOVER).as_secs_f64() + 90.0
}

/// Runs the benchmark: `training` drills to learn from, `drills` held-out
/// ones with prediction on and off, `calm` minutes without drills; the
/// ramps and calm spells drawn from `seed`.
pub fn run(training: usize, drills: usize, calm: Calm, seed: u64, standby: bool) -> anyhow::Result<()> {
    anyhow::ensure!((1..=10).contains(&training), "--training must be between 1 and 10");
    anyhow::ensure!((1..=20).contains(&drills), "--drills must be between 1 and 20");
    anyhow::ensure!((0.0..=240.0).contains(&calm.held_out), "--calm-minutes must be between 0 and 240");
    anyhow::ensure!((0.0..=240.0).contains(&calm.training), "--training-calm-minutes must be between 0 and 240");
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "lockstep bench chain needs root: its CPU drills set the cgroup CPU limit of an appliance"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw =
        |ramp: std::ops::Range<u32>| Drill { ramp_s: rng.random_range(ramp), calm_s: rng.random_range(5..20) };
    let learn: Vec<Drill> = (0..training).map(|_| draw(5..30)).collect();
    let held_out: Vec<Drill> = (0..drills).map(|_| draw(10..40)).collect();
    let root: PathBuf = std::env::temp_dir().join(format!("lockstep-bench-chain-{}", std::process::id()));
    let result = run_in(&root, &learn, &held_out, calm, seed, standby);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("the appliances' logs are under {}", root.display());
    }
    result
}

fn run_in(
    root: &Path,
    learn: &[Drill],
    held_out: &[Drill],
    calm: Calm,
    seed: u64,
    standby: bool,
) -> anyhow::Result<()> {
    let calm_minutes = calm.held_out;
    println!(
        "2 appliances (separate processes, 320x180 at 25 fps, 900 kbit/s, 1 s segments{}); CPU drills on n{DRILLED} \
         down to {STARVED_CPUS} CPU; seed {seed}; {} calm minutes and {} drills to train on, {} held out, \
         {calm_minutes} calm minutes",
        if standby { format!("; n{WATCHER} a standby unit") } else { String::new() },
        calm.training,
        learn.len(),
        held_out.len()
    );
    let lead = if standby { "standby ready" } else { "handover lead" };
    // 1. Training.
    let models = root.join("models.json");
    {
        let run_s = learn.iter().map(|d| drill_s(*d)).sum::<f64>() + calm.training * 60.0 + 120.0;
        let swarm = start(&root.join("training"), None, run_s, standby)?;
        if calm.training > 0.0 {
            // An appliance's history is mostly calm: the model learns what
            // calm looks like from a spell of it too.
            wait_level(&swarm, standby, Duration::from_secs(90))?;
            std::thread::sleep(Duration::from_secs_f64(calm.training * 60.0));
        }
        for (i, d) in learn.iter().enumerate() {
            let o = run_drill(&swarm, standby, *d)?;
            println!("training drill {}: ramp {} s, failed after {}", i + 1, d.ramp_s, seconds(o.failed_s));
        }
        std::thread::sleep(Duration::from_secs(2));
        let trained = swarm.ask(DRILLED, "POST", "/api/v1/predict/train", Some(r#"{"since_s": 21600}"#))?;
        let m = &trained["trained"]["encoder"];
        anyhow::ensure!(m.is_object(), "no encoder model from the training drills: {trained}");
        println!(
            "trained on {} examples ({} before a failure), threshold {}",
            m["examples"], m["positives"], m["threshold"]
        );
        std::fs::copy(swarm.out(DRILLED).join("models.json"), &models).context("the saved models")?;
    }
    // 2. Held-out drills, prediction on and off.
    let mut rows: BTreeMap<&str, Vec<Outcome>> = BTreeMap::new();
    for (mode, with) in [("prediction on", Some(models.as_path())), ("prediction off", None)] {
        let calm_s = if with.is_some() { calm_minutes * 60.0 } else { 0.0 };
        let run_s = held_out.iter().map(|d| drill_s(*d)).sum::<f64>() + calm_s + 120.0;
        let swarm = start(&root.join(mode.replace(' ', "-")), with, run_s, standby)?;
        for (i, d) in held_out.iter().enumerate() {
            let o = run_drill(&swarm, standby, *d)?;
            println!(
                "drill {} (ramp {:>2} s) {mode:<14}  failed after {:>7}  alarm lead {:>7}  {lead} {:>7}  \
                 combined at n{WATCHER}: {} late, {} missing of {} (slowest {:.1} s behind its own)",
                i + 1,
                d.ramp_s,
                seconds(o.failed_s),
                seconds(o.alarm_lead_s),
                seconds(o.handover_lead_s),
                o.late,
                o.missing,
                o.compared,
                o.slowest_s
            );
            rows.entry(mode).or_default().push(o);
        }
        // 3. The calm spell, on the swarm with the models.
        if with.is_some() && calm_minutes > 0.0 {
            let before = alarms(&swarm)?;
            let until = Instant::now() + Duration::from_secs_f64(calm_minutes * 60.0);
            // A preparation still under way from the last drill is not this spell's.
            let prepared_now = |v: Option<Value>| v.is_some_and(|v| v["standby"]["ch"]["prepared"] == true);
            let (mut handovers, mut seen, mut prepared) = (0, Handovers::default(), prepared_now(swarm.view(WATCHER)));
            while Instant::now() < until {
                let view = swarm.view(WATCHER);
                if standby {
                    // A preparation of the standby is this spell's handover.
                    let now = prepared_now(view);
                    handovers += usize::from(now && !prepared);
                    prepared = now;
                } else {
                    let holds = view.is_some_and(|v| handed_over(&v));
                    handovers += usize::from(seen.observe(holds, now_ms()).is_some());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let false_alarms = alarms(&swarm)? - before;
            println!(
                "calm {calm_minutes} min with the models: {false_alarms} false alarms ({:.1} per hour), {handovers} {}",
                false_alarms as f64 * 60.0 / calm_minutes,
                if standby { "standby preparations" } else { "handovers" }
            );
        }
    }
    let summary = |mode: &str| {
        let o = rows.get(mode).map_or(&[][..], Vec::as_slice);
        let late: usize = o.iter().map(|o| o.late + o.missing).sum();
        let lead = median(o.iter().filter_map(|o| o.handover_lead_s).collect());
        let alarmed = o.iter().filter(|o| o.alarm_lead_s.is_some_and(|s| s > 0.0)).count();
        (late, lead, alarmed, o.len())
    };
    let (late_on, lead_on, alarmed, n) = summary("prediction on");
    let (late_off, lead_off, _, _) = summary("prediction off");
    println!(
        "held-out drills predicted ahead: {alarmed} of {n}; late or missing combined segments: {late_on} with \
         prediction, {late_off} without; {} ahead of the failure (median): {} with, {} without",
        if standby { "standby ready" } else { "handover" },
        seconds(lead_on),
        seconds(lead_off)
    );
    Ok(())
}

/// Alarms for the drilled node's encoder so far.
fn alarms(swarm: &LocalSwarm) -> anyhow::Result<usize> {
    let events = swarm.ask(DRILLED, "GET", "/api/v1/events", None)?;
    Ok(events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["kind"] == "prediction"
                && e["message"].as_str().is_some_and(|m| m.starts_with("encoder:ch: failure predicted"))
        })
        .count())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_a_segment_published_a_whole_segment_after_the_peer() {
        let mut w = Watch::new();
        w.watcher_own.0 = [(10, 1_000), (11, 2_000), (12, 3_000)].into();
        w.drilled_own.0 = [(10, 1_100), (11, 2_900), (12, 4_100)].into();
        assert_eq!(w.failure_ms(0), Some(4_100), "0.9 s behind is not yet a failure; 1.1 s is");
        assert_eq!(w.failure_ms(4_200), None);
    }

    #[test]
    fn the_handover_is_a_lighter_drilled_node_that_is_still_healthy() {
        let view = |w0: f64, healthy: bool| {
            serde_json::json!({
                "channels": { "ch": { "weights": { "n0": w0, "n1": 0.8 } } },
                "peers": { "n0": { "healthy": healthy } },
            })
        };
        assert!(handed_over(&view(0.6, true)));
        assert!(!handed_over(&view(0.79, true)), "the same 0.05 step");
        assert!(!handed_over(&view(0.0, false)), "dropped, not handed over");
    }

    #[test]
    fn a_handover_holds_two_seconds_and_one_under_way_at_the_start_is_not_counted() {
        let mut h = Handovers::default();
        assert_eq!(h.observe(true, 0), None, "under way when counting began");
        assert_eq!(h.observe(true, 5_000), None);
        assert_eq!(h.observe(false, 5_200), None);
        assert_eq!(h.observe(true, 6_000), None);
        assert_eq!(h.observe(false, 6_400), None, "a dip of one round is noise");
        assert_eq!(h.observe(true, 7_000), None);
        assert_eq!(h.observe(true, 8_000), None);
        assert_eq!(h.observe(true, 9_000), Some(7_000), "held 2 s: it began at 7 s");
        assert_eq!(h.observe(true, 9_200), None, "once per stretch");
    }

    #[test]
    fn with_a_standby_watcher_times_are_judged_against_each_playlists_own_pace() {
        let mut w = Watch { standby: true, ..Watch::new() };
        // n0 publishes 300 ms after each index's start, then falls behind.
        w.drilled_own.0 = [(10, 10_300), (11, 11_300), (12, 12_300), (13, 13_900), (14, 15_400)].into();
        assert_eq!(w.drilled_own.pace(12_000), Some(300));
        assert_eq!(w.failure_ms(12_000), Some(15_400), "1.3 s behind its pace at 14; 0.6 s at 13 is not yet");
        // The combined output at the standby: 500 ms behind; 13 late,
        // 14 missing, 15 on time (the standby's), 16 and 17 too new to judge.
        w.combined.0 =
            [(10, 10_500), (11, 11_500), (12, 12_500), (13, 14_600), (15, 15_500), (16, 16_500), (17, 17_500)].into();
        let mut out = Outcome::default();
        standby_combined(&w, 12_000, &mut out);
        assert_eq!((out.compared, out.late, out.missing), (4, 1, 1), "{out:?}");
        assert!((out.slowest_s - 1.1).abs() < 1e-9, "{out:?}");
    }

    #[test]
    fn appearances_keep_the_first_sight_of_each_segment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("playlist.m3u8");
        std::fs::write(&p, "#EXTM3U\n#EXTINF:2.0,\nseg-7.m4s\n").unwrap();
        let mut a = Appearances::default();
        a.read(&p, 100);
        std::fs::write(&p, "#EXTM3U\n#EXTINF:2.0,\nseg-7.m4s\n#EXTINF:2.0,\nseg-8.m4s\n").unwrap();
        a.read(&p, 200);
        assert_eq!(a.0, [(7, 100), (8, 200)].into());
        assert_eq!(a.pace(1_000), Some(200 - 8 * SEGMENT_MS as i64), "7, listed at the first read, is left out");
    }
}
