//! The media clock against real ptp4l (linuxptp from Debian) in two
//! network namespaces (see `lockstep_ptp::testbed`): `lockstep clock`
//! processes follow the slave's offsets, report the grandmaster `pmc`
//! reports, go to holdover when the master is killed, relock when it comes
//! back without media time going backwards, and agree with each other.
//! A third process runs with an injected offset, which must show.
//!
//! Needs root, iproute2 and linuxptp; fails, never skips, without them.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_ptp::testbed::{Testbed, field};

/// One line of `lockstep clock --json`.
#[derive(Debug, Clone)]
struct Line {
    local_ns: i64,
    tai_ns: i64,
    frame: i64,
    state: String,
    grandmaster: Option<String>,
    offset_ns: f64,
    fallback: bool,
}

/// A `lockstep clock` process and what it printed so far.
struct Watcher {
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Watcher {
    fn start(dir: &Path, name: &str, clock_section: &str) -> Self {
        let defaults = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
        let (head, rest) = defaults.split_once("[clock]").unwrap();
        let (_, tail) = rest.split_once("[channel]").unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("{head}{clock_section}\n[channel]{tail}")).unwrap();
        let mut child = common::lockstep()
            .args(["clock", "--json", "--interval-ms", "50", "--seconds", "120", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()))
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for text in BufReader::new(out).lines() {
                let Ok(text) = text else { break };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let q = &v["quality"];
                sink.lock().unwrap().push(Line {
                    local_ns: v["local_ns"].as_i64().unwrap(),
                    tai_ns: v["tai_ns"].as_i64().unwrap(),
                    frame: v["frame"].as_i64().unwrap(),
                    state: q["state"].as_str().unwrap().to_string(),
                    grandmaster: q["grandmaster"].as_str().map(str::to_string),
                    offset_ns: q["offset_ns"].as_f64().unwrap(),
                    fallback: q["fallback"].as_bool().unwrap(),
                });
            }
        });
        Self { child, lines }
    }

    fn last(&self) -> Option<Line> {
        self.lines.lock().unwrap().last().cloned()
    }

    /// Waits until the last line is in `state`; time taken.
    fn wait_for(&self, state: &str, limit: Duration, bed: &Testbed) -> Duration {
        let started = Instant::now();
        loop {
            if self.last().is_some_and(|l| l.state == state) {
                return started.elapsed();
            }
            assert!(started.elapsed() < limit, "no `{state}` within {limit:?}; last {:?}\n{}", self.last(), bed.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> Vec<Line> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.lines.lock().unwrap().clone()
    }
}

fn clock_section(socket: &Path, extra: &str) -> String {
    format!(
        "[clock]\nsource = \"ptp4l\"\nptp4l_socket = \"{}\"\npoll_interval_ms = 50\nholdover_after_ms = 1000\nlock_wait_s = 0\n{extra}",
        socket.display()
    )
}

/// Media time − local time of `w` at local time `t`, from its nearest line.
fn correction_at(lines: &[Line], t: i64) -> Option<i64> {
    let i = lines.partition_point(|l| l.local_ns < t);
    let near = [i.checked_sub(1), Some(i)].into_iter().flatten().filter_map(|i| lines.get(i));
    near.filter(|l| l.state == "locked" && (l.local_ns - t).abs() < 60_000_000)
        .min_by_key(|l| (l.local_ns - t).abs())
        .map(|l| l.tai_ns - l.local_ns)
}

#[test]
fn the_media_clock_follows_ptp4l_through_holdover_and_relock() {
    let mut bed = Testbed::start();
    let a = Watcher::start(bed.dir(), "a", &clock_section(&bed.slave_socket, ""));
    let b = Watcher::start(bed.dir(), "b", &clock_section(&bed.slave_socket, ""));
    let c = Watcher::start(bed.dir(), "c", &clock_section(&bed.slave_socket, "[clock.fault]\noffset_ns = 1000000\n"));

    let took = a.wait_for("locked", Duration::from_secs(30), &bed);
    b.wait_for("locked", Duration::from_secs(10), &bed);
    c.wait_for("locked", Duration::from_secs(10), &bed);
    eprintln!("locked {:.1} s after start", took.as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));

    // Grandmaster identity and offset as pmc reports them.
    let text = bed.pmc("TIME_STATUS_NP");
    let line = a.last().unwrap();
    assert!(!line.fallback);
    assert_eq!(line.grandmaster.as_deref(), Some(field(&text, "gmIdentity")), "{text}");
    let pmc_offset: f64 = field(&text, "master_offset").parse().unwrap();
    eprintln!("estimated offset {:.0} ns, pmc's last master_offset {pmc_offset} ns", line.offset_ns);
    assert!((line.offset_ns - pmc_offset).abs() < 20_000.0, "estimate {} vs pmc {pmc_offset}", line.offset_ns);

    // Master gone: holdover within the configured 1 s plus polling.
    bed.stop_master();
    let to_holdover = a.wait_for("holdover", Duration::from_secs(5), &bed);
    eprintln!("holdover {:.2} s after the master was killed (configured 1 s)", to_holdover.as_secs_f64());
    assert!(to_holdover <= Duration::from_secs(3), "{to_holdover:?}");
    std::thread::sleep(Duration::from_secs(2));

    bed.start_master();
    let to_relock = a.wait_for("locked", Duration::from_secs(40), &bed);
    eprintln!("relocked {:.1} s after the master came back", to_relock.as_secs_f64());
    b.wait_for("locked", Duration::from_secs(10), &bed);
    std::thread::sleep(Duration::from_secs(2));

    let (la, lb, lc) = (a.stop(), b.stop(), c.stop());
    for (name, lines) in [("a", &la), ("b", &lb), ("c", &lc)] {
        assert!(lines.len() > 100, "{name}: {} lines", lines.len());
        for w in lines.windows(2) {
            assert!(w[1].tai_ns > w[0].tai_ns, "{name}: media time went backwards: {:?} then {:?}", w[0], w[1]);
            assert!(w[1].frame >= w[0].frame, "{name}: frame counter went backwards");
        }
        assert!(lines.iter().any(|l| l.state == "holdover"), "{name} never reported holdover");
    }

    // Two processes on the same source: how far apart are their media clocks?
    let mut diffs: Vec<i64> =
        la.iter().filter_map(|l| Some(correction_at(&la, l.local_ns)? - correction_at(&lb, l.local_ns)?)).collect();
    assert!(diffs.len() > 50, "too few locked instants in common: {}", diffs.len());
    diffs.sort_unstable_by_key(|d| d.abs());
    let worst = diffs.last().unwrap().abs();
    let median = diffs[diffs.len() / 2].abs();
    eprintln!(
        "media clock offset between two processes: median {median} ns, worst {worst} ns over {} instants",
        diffs.len()
    );
    assert!(worst <= 50_000, "two processes on one time source disagree by {worst} ns");
    // Same frame for the same instant at 25 fps, unless within `worst` of a boundary.
    let frame_ns = 40_000_000;
    let disagree = la
        .iter()
        .filter(|l| {
            let (Some(ca), Some(cb)) = (correction_at(&la, l.local_ns), correction_at(&lb, l.local_ns)) else {
                return false;
            };
            (l.local_ns + ca).div_euclid(frame_ns) != (l.local_ns + cb).div_euclid(frame_ns)
        })
        .count();
    eprintln!("instants with different frame numbers: {disagree} of {}", la.len());
    assert!(disagree <= la.len() / 20);

    // The injected offset shows as 1 ms against the unfaulted process.
    let faulted: Vec<i64> =
        la.iter().filter_map(|l| Some(correction_at(&lc, l.local_ns)? - correction_at(&la, l.local_ns)?)).collect();
    assert!(!faulted.is_empty());
    let mean = faulted.iter().sum::<i64>() / faulted.len() as i64;
    eprintln!("injected 1,000,000 ns; measured {mean} ns");
    assert!((mean - 1_000_000).abs() < 50_000, "fault injection: {mean} ns");
}

#[test]
fn realtime_appliances_on_ptp4l_agree_byte_for_byte() {
    let bed = Testbed::start();
    let renditions = [("180p", 180, 300), ("90p", 90, 120)];
    let clock = format!(
        "[clock]\nsource = \"ptp4l\"\nptp4l_socket = \"{}\"\npoll_interval_ms = 100\nlock_wait_s = 30\n",
        bed.slave_socket.display()
    );
    let dirs = [bed.dir().join("a"), bed.dir().join("b")];
    let mut children = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        let config = d.join("lockstep.toml");
        std::fs::write(&config, common::config(&d.join("out"), 320, 180, None, &renditions) + &clock).unwrap();
        if i == 1 {
            std::thread::sleep(Duration::from_millis(1300));
        }
        let log = std::fs::File::create(d.join("stderr.log")).unwrap();
        children.push(
            common::lockstep()
                .args(["run", "--config"])
                .arg(&config)
                .args(["--duration", "8"])
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    for (mut c, d) in children.into_iter().zip(&dirs) {
        let status = c.wait().unwrap();
        let log = std::fs::read_to_string(d.join("stderr.log")).unwrap();
        assert!(status.success(), "{log}");
        assert!(log.contains("media clock locked"), "started on the disciplined clock: {log}");
        let metrics = std::fs::read_to_string(d.join("out/ch/metrics.prom")).unwrap();
        assert!(metrics.contains("lockstep_clock_state{channel=\"ch\",state=\"locked\"} 1"), "{metrics}");
    }
    common::assert_overlap_identical(&dirs[0].join("out/ch"), &dirs[1].join("out/ch"), 2);
}
