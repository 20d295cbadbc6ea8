//! The resource drills against a running daemon, with the kernel's real
//! limits: the daemon runs in a memory cgroup with a limit and writes its
//! output to a small tmpfs; through the admin API a CPU drill lowers its
//! cgroup CPU limit until its encoder misses deadlines, a memory drill
//! leaks towards the limit and a disk drill fills the output's file
//! system. Each time the chain's component says so with the reason, and
//! ending the drills gives everything back.
//!
//! In a swarm of two, a node whose encoder failure is predicted (a model
//! trained on a first CPU drill) hands its work over before it fails: its
//! weight drains while it is still healthy and the other node's replicas
//! are chosen, ahead of the failure a second drill brings.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One test of this file at a time: each starves a daemon of CPU.
static SERIAL: Mutex<()> = Mutex::new(());

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", at.display());
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A memory cgroup with a limit, made for the test: cgroup v1's `memory`
/// hierarchy where the machine has one, else a cgroup v2 child of the
/// root. Removed on drop (the daemon has ended by then).
struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    fn new(limit_mib: u64) -> Self {
        let name = format!("lockstep-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists();
        let v2_root = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let dir = if v1 {
            Path::new("/sys/fs/cgroup/memory").join(&name)
        } else {
            let controllers = std::fs::read_to_string(v2_root).unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "memory"),
                "this test needs a memory cgroup controller (v1 `memory` hierarchy or v2 `memory`); this machine has neither"
            );
            std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory").unwrap();
            Path::new("/sys/fs/cgroup").join(&name)
        };
        std::fs::create_dir_all(&dir).unwrap();
        let limit = (limit_mib << 20).to_string();
        std::fs::write(dir.join(if v1 { "memory.limit_in_bytes" } else { "memory.max" }), limit).unwrap();
        Self { dir, v1 }
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = self.v1;
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Api {
    base: String,
    token: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let mut r = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            (_, None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Ends the running drills and waits until each has undone itself.
    fn end_drills(&self) {
        let (status, ended) = self.call("DELETE", "/api/v1/drills", None);
        assert_eq!((status, ended["ended"].as_u64()), (200, Some(1)), "{ended}");
        let started = Instant::now();
        while !self.call("GET", "/api/v1/drills", None).1["running"].as_array().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "the drill did not end");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn component(&self, kind: &str) -> Value {
        let (status, chain) = self.call("GET", "/api/v1/chain", None);
        assert_eq!(status, 200, "{chain}");
        chain["components"].as_array().unwrap().iter().find(|c| c["kind"] == kind).cloned().unwrap()
    }

    /// Waits until `kind`'s component satisfies `ok`; answers it.
    fn wait(&self, what: &str, kind: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let c = self.component(kind);
            if ok(&c) {
                return c;
            }
            assert!(started.elapsed() < limit, "{what} not within {limit:?}; last: {c}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn reasons(c: &Value) -> String {
    c["reasons"].to_string()
}

#[test]
fn cpu_memory_and_disk_drills_show_in_the_chain_and_are_undone() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(common::is_root(), "this test needs root: it mounts a tmpfs and makes a memory cgroup");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let _tmpfs = Tmpfs::mount(&out, 64);
    let cgroup = MemoryCgroup::new(320);
    let passwd = dir.path().join("admin.passwd");
    common::lockstep_stdin(&["passwd", "--file", passwd.to_str().unwrap()], "drill-test secret\n");
    let tokens = dir.path().join("tokens");
    let token = common::lockstep_stdin(&["token", "--file", tokens.to_str().unwrap(), "--name", "drills"], "");
    let admin = common::free_ports(1);
    let text = format!(
        "[appliance]\nid = \"unit-1\"\n[channel]\nid = \"ch\"\nsegment_seconds = 1.0\n\
         [source]\nkind = \"test\"\nwidth = 320\nheight = 180\nfps = \"25\"\n[audio]\nenabled = false\n\
         [[renditions]]\nname = \"180p\"\nheight = 180\nbitrate_kbps = 900\n\
         [output]\ndir = \"{}\"\nwindow_segments = 10\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\npassword_file = \"{}\"\ntokens_file = \"{}\"\n",
        out.display(),
        passwd.display(),
        tokens.display(),
    );
    let config = dir.path().join("lockstep.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child =
        common::lockstep().args(["run", "--duration", "240", "--config"]).arg(&config).stderr(log).spawn().unwrap();
    cgroup.add(child.id());
    let pid = child.id();
    let daemon = common::Stopped(child);
    let api = Api { base: format!("http://127.0.0.1:{admin}"), token: token.trim().to_string() };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "admin API not up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let encoder = api.wait("a first segment", "encoder", Duration::from_secs(20), |c| {
        c["figures"]["deadline_slack"].is_object() && c["state"] == "ok"
    });
    assert_eq!(encoder["figures"]["memory"]["scope"], "cgroup", "the test's limit is the one judged: {encoder}");
    // Calm history first: what the failure prediction compares with.
    std::thread::sleep(Duration::from_secs(15));

    // Bad requests name the field; nothing starts.
    let (status, e) = api.call("POST", "/api/v1/drills/cpu", Some(json!({ "cpus": 0, "seconds": 10 })));
    assert_eq!((status, e["field"].as_str()), (422, Some("cpus")), "{e}");
    let (status, e) = api.call("POST", "/api/v1/drills/disk", Some(json!({ "free_mb": 4096, "seconds": 10 })));
    assert_eq!((status, e["field"].as_str()), (422, Some("free_mb")), "{e}");
    let (status, e) = api.call("POST", "/api/v1/drills/memory", Some(json!({ "mb": 10, "ramp_s": 20, "seconds": 10 })));
    assert_eq!((status, e["field"].as_str()), (422, Some("ramp_s")), "{e}");

    // CPU: down to 2 % of a CPU over 8 s; the encoder falls behind.
    let (status, drill) =
        api.call("POST", "/api/v1/drills/cpu", Some(json!({ "cpus": 0.02, "ramp_s": 8, "seconds": 120 })));
    assert_eq!(status, 202, "{drill}");
    assert_eq!(drill["kind"], "cpu");
    let (status, again) = api.call("POST", "/api/v1/drills/cpu", Some(json!({ "cpus": 0.5, "seconds": 10 })));
    assert_eq!(status, 409, "one CPU drill at a time: {again}");
    let starved = api.wait("the encoder behind real time", "encoder", Duration::from_secs(40), |c| {
        c["state"] == "bad" && reasons(c).contains("after its deadline")
    });
    let limit = starved["figures"]["cpu_limit"].as_f64().unwrap();
    assert!((limit - 0.02).abs() < 0.005, "the limit the drill set is what the agent reads: {starved}");
    let cgroup_during = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    eprintln!("CPU drill: {}; cgroups {}", reasons(&starved), cgroup_during.replace('\n', " "));
    let (_, drills) = api.call("GET", "/api/v1/drills", None);
    assert_eq!(drills["running"][0]["kind"], "cpu", "{drills}");
    // The failure lasts long enough for the history (1 s rounds) to keep it.
    std::thread::sleep(Duration::from_secs(3));
    api.end_drills();
    assert!(api.component("encoder")["figures"]["cpu_limit"].is_null(), "the CPU limit given back");
    let cgroup_after = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if cgroup_during.contains("lockstep-drill-") {
        assert!(!cgroup_after.contains("lockstep-drill-"), "moved back: {cgroup_after}");
    }
    api.wait("the encoder caught up", "encoder", Duration::from_secs(60), |c| c["state"] == "ok");

    // Memory: a leak towards the test's 320 MiB limit, stopped at 97 %.
    let before = api.component("encoder")["figures"]["memory"]["used_bytes"].as_f64().unwrap();
    let (status, drill) =
        api.call("POST", "/api/v1/drills/memory", Some(json!({ "mb": 1000, "ramp_s": 4, "seconds": 120 })));
    assert_eq!(status, 202, "{drill}");
    let short = api.wait("memory near the limit", "encoder", Duration::from_secs(30), |c| {
        c["state"] == "bad" && reasons(c).contains("of the cgroup limit")
    });
    let used = short["figures"]["memory"]["used_bytes"].as_f64().unwrap();
    let limit = short["figures"]["memory"]["limit_bytes"].as_f64().unwrap();
    assert_eq!(limit, 320.0 * 1048576.0);
    assert!(used / limit < 0.99, "the leak stops short of the limit: {short}");
    eprintln!("memory drill: {}", reasons(&short));
    assert!(daemon_alive(pid), "the daemon was not killed for memory");
    // The failure lasts long enough for the history (1 s rounds) to keep it.
    std::thread::sleep(Duration::from_secs(3));
    api.end_drills();
    api.wait("memory given back", "encoder", Duration::from_secs(10), |c| {
        c["figures"]["memory"]["used_bytes"].as_f64().unwrap() < before + 32.0 * 1048576.0
    });

    // Disk: the 64 MiB output file system filled until 1 MiB is free.
    let (status, drill) =
        api.call("POST", "/api/v1/drills/disk", Some(json!({ "free_mb": 1, "ramp_s": 3, "seconds": 120 })));
    assert_eq!(status, 202, "{drill}");
    let full = api.wait("the output disk full", "packager", Duration::from_secs(20), |c| {
        c["state"] == "bad" && reasons(c).contains("% full")
    });
    assert!(out.join(".lockstep-disk-drill").exists(), "{full}");
    eprintln!("disk drill: {}", reasons(&full));
    // The failure lasts long enough for the history (1 s rounds) to keep it.
    std::thread::sleep(Duration::from_secs(3));
    api.end_drills();
    api.wait("the disk given back", "packager", Duration::from_secs(10), |c| c["state"] == "ok");
    assert!(!out.join(".lockstep-disk-drill").exists());

    // The failures above label the history: a model per kind that failed,
    // once the history holds calm moments past the last recovery (moments
    // whose 20 s window holds a failure are not learnt from).
    std::thread::sleep(Duration::from_secs(25));
    let (status, e) = api.call("POST", "/api/v1/predict/train", Some(json!({ "since_s": 0 })));
    assert_eq!((status, e["field"].as_str()), (422, Some("since_s")), "{e}");
    let (status, trained) = api.call("POST", "/api/v1/predict/train", Some(json!({ "since_s": 3600 })));
    assert_eq!(status, 200, "{trained}");
    eprintln!("trained: {trained}");
    for kind in ["encoder", "packager"] {
        let m = &trained["trained"][kind];
        assert!(m["positives"].as_u64().unwrap() >= 3, "{kind} learned from its failure: {trained}");
        assert!(m["quality"]["failures"].as_u64().unwrap() >= 1, "{trained}");
    }
    assert!(trained["skipped"]["edge"].as_str().unwrap().contains("no edge failure"), "{trained}");
    assert!(out.join("models.json").exists(), "the models are saved beside the history");
    let predict = wait_json(&api, "/api/v1/predict", |p| p["components"].as_array().is_some_and(|c| c.len() == 2));
    assert_eq!(predict["horizon_s"], 30);
    let encoder = api.component("encoder");
    let p = encoder["risk"]["probability"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p) && encoder["risk"]["alarm"].is_boolean(), "{encoder}");

    // A second CPU drill, slower: the trained model sees it coming.
    let (status, second) =
        api.call("POST", "/api/v1/drills/cpu", Some(json!({ "cpus": 0.02, "ramp_s": 20, "seconds": 120 })));
    assert_eq!(status, 202, "{second}");
    let drill_ms = second["started_ms"].as_u64().unwrap();
    let started = Instant::now();
    let starved = api.wait("the encoder behind real time again", "encoder", Duration::from_secs(60), |c| {
        c["state"] == "bad" && reasons(c).contains("after its deadline")
    });
    let failed_after = started.elapsed();
    let seen_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (_, events) = api.call("GET", "/api/v1/events", None);
    let predicted: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "prediction" && e["message"].as_str().unwrap().contains("encoder:ch: failure predicted")
        })
        .map(|e| e["t_ms"].as_u64().unwrap())
        .collect();
    // The first alarm after the drill's start (the alarm may fall and rise
    // again while the encoder struggles); none in the calm before it.
    let trained_ms = events
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "prediction" && e["message"].as_str().unwrap().contains("trained"))
        .unwrap()["t_ms"]
        .as_u64()
        .unwrap();
    let calm_alarms = predicted.iter().filter(|t| **t >= trained_ms && **t < drill_ms).count();
    let lead_s = predicted.iter().find(|t| **t >= drill_ms).map(|t| (seen_ms as f64 - *t as f64) / 1000.0);
    eprintln!(
        "second CPU drill: failed {failed_after:?} after its start; predicted {lead_s:?} s before; {}",
        starved["risk"]
    );
    // The failure lasts long enough for the history (1 s rounds) to keep it.
    std::thread::sleep(Duration::from_secs(3));
    api.end_drills();
    assert_eq!(calm_alarms, 0, "no alarm between the training and the drill: {events}");
    assert!(lead_s.is_some_and(|s| s > 0.0), "the alarm for the encoder rose before its failure was seen: {events}");

    let (_, drills) = api.call("GET", "/api/v1/drills", None);
    let ended: Vec<&str> = drills["ended"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(ended, ["cpu", "memory", "disk", "cpu"], "{drills}");
    assert!(drills["running"].as_array().unwrap().is_empty());
    let (_, events) = api.call("GET", "/api/v1/events", None);
    let said = events.to_string();
    for kind in ["cpu", "memory", "disk"] {
        assert!(said.contains(&format!("{kind} drill ")) && said.contains("ended (ended by command)"), "{said}");
    }
    drop(daemon);
}

/// GET `path` until `ok`; answers it.
fn wait_json(api: &Api, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, v) = api.call("GET", path, None);
        assert_eq!(status, 200, "{v}");
        if ok(&v) {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{path}: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn daemon_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Unix time, ms.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What the other node's view said of the drilled one at a moment.
#[derive(Debug, Clone, Copy)]
struct Seen {
    t_ms: u64,
    healthy: bool,
    /// The two nodes' weights for the channel, in the 0.05 steps replica
    /// selection goes by: drilled, other.
    weights: (f64, f64),
}

impl Seen {
    /// The other node's replicas are chosen while the drilled one is
    /// still healthy: drained by weight, not dropped by a failure (a
    /// handover is this held for 2 s).
    fn handed_over(&self) -> bool {
        self.healthy && self.weights.0 < self.weights.1
    }
}

/// Reads `status` (the other node's swarm view) every 200 ms until `stop`.
fn watch_view(status: PathBuf, drilled: &'static str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Seen>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let view: Option<Value> = std::fs::read_to_string(&status).ok().and_then(|t| serde_json::from_str(&t).ok());
            if let Some(v) = view {
                let w = &v["channels"]["ch"]["weights"];
                let step = |x: &Value| x.as_f64().map(|w| (w * 20.0).round() / 20.0);
                let me = v["node"].as_str().unwrap_or_default().to_string();
                if let (Some(a), Some(b)) = (step(&w[drilled]), step(&w[&me])) {
                    let healthy = v["peers"][drilled]["healthy"].as_bool().unwrap_or(false);
                    seen.push(Seen { t_ms: unix_ms(), healthy, weights: (a, b) });
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
}

/// Two daemons in a swarm, each with its origin and admin API (one token
/// for both): n1 an encoder, n2 as `n2_role` says. Channel `ch`, 320x180
/// in 1 s segments at 900 kbit/s, enough for a CPU drill to starve.
struct Pair {
    dir: tempfile::TempDir,
    /// n1's API, then n2's.
    apis: [Api; 2],
    _nodes: Vec<common::Stopped>,
}

impl Pair {
    fn start(n2_role: &str, swarm_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fleet.key");
        std::fs::write(&key, lockstep::swarm::wire::FleetKey::generate().to_hex()).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let passwd = dir.path().join("admin.passwd");
        common::lockstep_stdin(&["passwd", "--file", passwd.to_str().unwrap()], "handover-test secret\n");
        let tokens = dir.path().join("tokens");
        let token = common::lockstep_stdin(&["token", "--file", tokens.to_str().unwrap(), "--name", "drills"], "");
        let (admin, origin, swarm) = (common::free_ports(2), common::free_ports(2), common::free_ports(2));
        let mut nodes = Vec::new();
        for k in 0..2u16 {
            let out = dir.path().join(format!("n{}", k + 1));
            std::fs::create_dir_all(&out).unwrap();
            let text = format!(
                "[appliance]\nid = \"n{}\"\nrole = \"{}\"\n[channel]\nid = \"ch\"\nsegment_seconds = 1.0\n\
                 [source]\nkind = \"test\"\nwidth = 320\nheight = 180\nfps = \"25\"\n[audio]\nenabled = false\n\
                 [[renditions]]\nname = \"180p\"\nheight = 180\nbitrate_kbps = 900\n\
                 [output]\ndir = \"{}\"\nwindow_segments = 10\n[origin]\nlisten = \"127.0.0.1:{}\"\n\
                 [swarm]\nenabled = true\nbind = \"127.0.0.1:{}\"\nseeds = [\"127.0.0.1:{}\"]\nfleet_key_file = \"{}\"\n\
                 status_file = \"{}\"\n{swarm_extra}\n\
                 [admin]\nlisten = \"127.0.0.1:{}\"\npassword_file = \"{}\"\ntokens_file = \"{}\"\n",
                k + 1,
                if k == 0 { "encoder" } else { n2_role },
                out.display(),
                origin + k,
                swarm + k,
                swarm + 1 - k,
                key.display(),
                out.join("swarm.json").display(),
                admin + k,
                passwd.display(),
                tokens.display(),
            );
            let config = out.join("lockstep.toml");
            std::fs::write(&config, text).unwrap();
            let log = std::fs::File::create(out.join("stderr.log")).unwrap();
            let child = common::lockstep()
                .args(["run", "--duration", "400", "--config"])
                .arg(&config)
                .stderr(log)
                .spawn()
                .unwrap();
            nodes.push(common::Stopped(child));
        }
        let api = |k: u16| Api { base: format!("http://127.0.0.1:{}", admin + k), token: token.trim().to_string() };
        for k in 0..2 {
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", admin + k)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(20), "n{}'s admin API not up", k + 1);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { dir, apis: [api(0), api(1)], _nodes: nodes }
    }

    /// n2's view of the swarm, as it last wrote it.
    fn n2_view(&self) -> Value {
        std::fs::read_to_string(self.dir.path().join("n2/swarm.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// A CPU drill on n1 ramping down over `ramp_s` until its encoder
    /// fails, held 3 s, then ended; answers when it started (unix ms).
    fn drill(&self, ramp_s: u32) -> u64 {
        let api = &self.apis[0];
        let (status, d) =
            api.call("POST", "/api/v1/drills/cpu", Some(json!({ "cpus": 0.02, "ramp_s": ramp_s, "seconds": 120 })));
        assert_eq!(status, 202, "{d}");
        let started_ms = d["started_ms"].as_u64().unwrap();
        api.wait("n1's encoder behind real time", "encoder", Duration::from_secs(60), |c| {
            c["state"] == "bad" && reasons(c).contains("after its deadline")
        });
        // The failure lasts long enough for the history (1 s rounds) to keep it.
        std::thread::sleep(Duration::from_secs(3));
        api.end_drills();
        api.wait("n1's encoder caught up", "encoder", Duration::from_secs(60), |c| c["state"] == "ok");
        started_ms
    }

    /// Trains n1's failure prediction on its history, once it holds calm
    /// moments past the last recovery (moments whose 20 s window holds a
    /// failure are not learnt from).
    fn train(&self) {
        std::thread::sleep(Duration::from_secs(22));
        let (status, trained) = self.apis[0].call("POST", "/api/v1/predict/train", Some(json!({ "since_s": 3600 })));
        assert_eq!(status, 200, "{trained}");
        assert!(trained["trained"]["encoder"]["positives"].as_u64().unwrap() >= 3, "{trained}");
    }

    /// When n1's encoder failed (its own judged-state history) at or after
    /// `from_ms`, unix ms.
    fn n1_failed_after(&self, from_ms: u64) -> u64 {
        let (status, history) =
            self.apis[0].call("GET", "/api/v1/health/history?series=channel/ch/encoder_state&since_s=600", None);
        assert_eq!(status, 200, "{history}");
        history["points"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|p| {
                let t = p["t_ms"].as_u64()?;
                (t >= from_ms && p["max"].as_f64()? >= 2.0).then_some(t)
            })
            .unwrap_or_else(|| panic!("no failure of n1's encoder after {from_ms}: {history}"))
    }
}

#[test]
fn a_node_predicted_to_fail_hands_its_work_over_before_it_fails() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(common::is_root(), "this test needs root: its CPU drills set the daemon's cgroup CPU limit");
    let pair = Pair::start("encoder", "");
    // n1 is drilled; n2 watches it.
    let api = &pair.apis[0];
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_view(pair.dir.path().join("n2/swarm.json"), "n1", Arc::clone(&stop));
    let level = |limit: Duration| {
        // Both weights up and level, as n2 sees them.
        let since = Instant::now();
        loop {
            let v = pair.n2_view();
            let w = &v["channels"]["ch"]["weights"];
            let (a, b) = (w["n1"].as_f64().unwrap_or(0.0), w["n2"].as_f64().unwrap_or(0.0));
            if v["peers"]["n1"]["healthy"] == true && a > 0.5 && (a - b).abs() < 0.05 {
                return;
            }
            assert!(since.elapsed() < limit, "the two nodes' weights did not settle level: {v}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    api.wait("a first segment", "encoder", Duration::from_secs(30), |c| c["state"] == "ok");
    level(Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(15));

    // The first drill, before any model: what the swarm does unwarned.
    let first = pair.drill(8);
    std::thread::sleep(Duration::from_secs(2));
    pair.train();
    level(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(10));

    // The second, slower: the trained model sees it coming.
    let second = pair.drill(20);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();

    // Seconds from the handover in a drill (from its start to `until`) to
    // the failure; `None` without a handover while n1 was healthy.
    let lead = |from_ms: u64, until_ms: u64| {
        let failed = pair.n1_failed_after(from_ms);
        // A handover holds 2 s: a weight dipping one step for a poll is noise.
        let within: Vec<&Seen> = seen.iter().filter(|s| (from_ms..until_ms).contains(&s.t_ms)).collect();
        let held = within.iter().enumerate().find_map(|(i, s)| {
            let stretch = within[i..].iter().take_while(|x| x.handed_over()).last()?;
            (stretch.t_ms >= s.t_ms + 2000).then_some(s.t_ms)
        });
        held.map(|t| (failed as f64 - t as f64) / 1000.0)
    };
    let (unwarned, warned) = (lead(first, second), lead(second, u64::MAX));
    let (_, events) = api.call("GET", "/api/v1/events", None);
    let alarms: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "prediction" && e["message"].as_str().unwrap().contains("encoder:ch: failure predicted")
        })
        .collect();
    eprintln!(
        "handover ahead of the failure, s (negative: after it; none: only once n1 was unhealthy): \
         before training {unwarned:?}, with the model {warned:?}; alarms {alarms:?}"
    );
    assert!(
        warned.is_some_and(|s| s > 0.0),
        "with the model, n2's replicas were chosen while n1 was healthy, before n1's encoder failed: \
         {warned:?}; what n2 saw after the drill: {:?}",
        seen.iter().filter(|s| s.t_ms >= second).collect::<Vec<_>>()
    );
}

/// One look at n2's playlists: its own and the combined output's segment
/// indices.
#[derive(Debug, Clone)]
struct Look {
    t_ms: u64,
    own: Vec<i64>,
    combined: Vec<i64>,
}

/// Reads n2's own and combined playlists every 250 ms until `stop`.
fn watch_playlists(n2: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Look>> {
    std::thread::spawn(move || {
        let mut looks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            looks.push(Look {
                t_ms: unix_ms(),
                own: common::listed(&n2.join("ch/180p/playlist.m3u8")),
                combined: common::listed(&n2.join("combined/ch/180p/playlist.m3u8")),
            });
            std::thread::sleep(Duration::from_millis(250));
        }
        looks
    })
}

/// n2's first event of `kind` from `from_ms` on whose message has `text`:
/// (unix ms, message).
fn event_after(api: &Api, kind: &str, text: &str, from_ms: u64) -> Option<(u64, String)> {
    let (status, events) = api.call("GET", "/api/v1/events", None);
    assert_eq!(status, 200, "{events}");
    events.as_array().unwrap().iter().find_map(|e| {
        let (t, message) = (e["t_ms"].as_u64()?, e["message"].as_str()?);
        (e["kind"] == kind && t >= from_ms && message.contains(text)).then(|| (t, message.to_string()))
    })
}

#[test]
fn a_standby_unit_is_encoding_before_a_predicted_failure_and_viewers_lose_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(common::is_root(), "this test needs root: its CPU drills set the daemon's cgroup CPU limit");
    let pair = Pair::start("standby", "standby_release_s = 8");
    let (n1, n2) = (&pair.apis[0], &pair.apis[1]);
    n1.wait("a first segment", "encoder", Duration::from_secs(30), |c| c["state"] == "ok");
    // n2 stands by for ch: not encoding it, ready to.
    let since = Instant::now();
    loop {
        let v = pair.n2_view();
        let s = &v["standby"]["ch"];
        if s["standbys"] == json!(["n2"]) && s["prepared"] == false && v["peers"]["n1"]["healthy"] == true {
            break;
        }
        assert!(since.elapsed() < Duration::from_secs(20), "n2 does not stand by for ch: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The encoder's API (and page) shows n2 as a standby unit, from its packets.
    let (status, swarm) = n1.call("GET", "/api/v1/swarm", None);
    assert_eq!(status, 200, "{swarm}");
    let member = swarm["members"].as_array().unwrap().iter().find(|m| m["node"] == "n2").cloned().unwrap_or_default();
    assert_eq!(member["outlook"]["standing_by"], json!(["ch"]), "n2 as n1 shows it: {member}");
    assert_eq!(member["outlook"]["prepared"], json!([]), "{member}");
    // Its origin serves the combined output already, from n1's segments.
    let since = Instant::now();
    let combined = pair.dir.path().join("n2/combined/ch");
    while common::listed(&combined.join("180p/playlist.m3u8")).len() < 3 || !combined.join("180p/init.mp4").exists() {
        assert!(since.elapsed() < Duration::from_secs(20), "n2 serves no combined output of n1's segments");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(common::listed(&pair.dir.path().join("n2/ch/180p/playlist.m3u8")).is_empty(), "n2 encodes nothing yet");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_playlists(pair.dir.path().join("n2"), Arc::clone(&stop));

    // Before any model: the standby starts once n1 has failed, if it does.
    let first = pair.drill(8);
    let unwarned = event_after(n2, "standby", "prepares channel ch", first);
    // Once no encoder has been in trouble for the release time, n2 stops.
    let released = || {
        let since = Instant::now();
        while pair.n2_view()["standby"]["ch"]["prepared"] != false {
            assert!(since.elapsed() < Duration::from_secs(60), "n2 did not release ch: {}", pair.n2_view());
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    if unwarned.is_some() {
        released();
        assert!(event_after(n2, "standby", "releases channel ch", first).is_some());
    }
    pair.train();
    // Scored just after training, the recovery from the first drill may
    // still look like its run-up for a while.
    std::thread::sleep(Duration::from_secs(10));
    released();
    // From here n2 stands by: its next preparation is the second drill's
    // (the alarm may rise before the drill's first second is over).
    let armed = unix_ms();
    std::thread::sleep(Duration::from_secs(5));

    // The second, slower drill: the model sees it coming and n2 prepares.
    let second = pair.drill(20);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let looks = watcher.join().unwrap();
    let failed = pair.n1_failed_after(second);
    let (prepared, why) = event_after(n2, "standby", "prepares channel ch", armed).unwrap_or_else(|| {
        panic!("n2 never prepared ch in the second drill: {}", n2.call("GET", "/api/v1/events", None).1)
    });
    // n2's own segments: the first one published in the second drill.
    let before = looks.iter().rfind(|l| l.t_ms <= armed).and_then(|l| l.own.iter().max().copied());
    let encoding = looks
        .iter()
        .find(|l| l.t_ms >= armed && l.own.iter().max().copied() > before)
        .map(|l| l.t_ms)
        .unwrap_or_else(|| panic!("n2 published no segment of its own in the second drill"));
    // The indices the combined output listed in a span, and those missing
    // between its first and last.
    let span = |from: u64, to: u64| {
        let seen: std::collections::BTreeSet<i64> =
            looks.iter().filter(|l| (from..to).contains(&l.t_ms)).flat_map(|l| l.combined.clone()).collect();
        let (lo, hi) = (*seen.first().unwrap(), *seen.last().unwrap());
        let missing: Vec<i64> = (lo..=hi).filter(|i| !seen.contains(i)).collect();
        (lo..=hi, missing)
    };
    let (unwarned_span, unwarned_missing) = span(first, second);
    let (warned_span, warned_missing) = span(second, u64::MAX);
    let s = |t: u64, failed: u64| (failed as f64 - t as f64) / 1000.0;
    eprintln!(
        "standby, s before n1's encoder failed: before training prepared {:?} ({unwarned:?}), combined output \
         {unwarned_span:?} missing {unwarned_missing:?}; with the model prepared {} ({why}), its first segment {}, \
         combined output {warned_span:?} missing {warned_missing:?}",
        unwarned.as_ref().map(|(t, _)| s(*t, pair.n1_failed_after(first))),
        s(prepared, failed),
        s(encoding, failed),
    );
    assert!(why.contains("predicted to fail"), "prepared for the prediction: {why}");
    assert!(encoding < failed, "n2's segments were ready before n1's encoder failed ({} s)", s(encoding, failed));
    assert!(warned_missing.is_empty(), "the combined output at n2 lost segments {warned_missing:?} of {warned_span:?}");
}
