//! The swarm with separate processes on loopback: a demo swarm whose
//! nodes agree byte for byte and on their leader; a killed leader detected
//! and replaced; forged, truncated, random, replayed and newer-version
//! packets dropped and counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use lockstep::swarm::wire::{FleetKey, Kind, Sealer};
use lockstep::swarm::{Settings, Swarm};

/// The tests that run appliance processes in real time take turns: on a
/// 2-core machine, running them at once would starve their encoders.
static REAL_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    REAL_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn view(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[test]
fn the_demo_checks_its_input_and_ports_before_it_prints_or_writes_anything() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (web, admin, swarm) = (common::free_ports(3), common::free_ports(3), common::free_ports(3));
    let demo = |extra: &[&str]| {
        let run = common::lockstep()
            .args(["demo", "--nodes", "3", "--duration", "4", "--listen"])
            .arg(format!("127.0.0.1:{web}"))
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin}"))
            .args(["--swarm-port", &swarm.to_string(), "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        (run.status.success(), String::from_utf8_lossy(&run.stderr).into_owned())
    };
    let left = || -> Vec<String> {
        std::fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    // Node 2's origin port taken: the demo names it and the option, once,
    // prints no node line and writes no key or password.
    let taken = std::net::TcpListener::bind(("127.0.0.1", web + 1)).unwrap();
    let (ok, stderr) = demo(&[]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains(&format!("node-2's origin cannot listen on 127.0.0.1:{}", web + 1)), "{stderr}");
    assert!(stderr.contains("--listen") && stderr.contains("--no-origin"), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "the cause once: {stderr}");
    assert!(!stderr.contains(" pid "), "no node line before the check: {stderr}");
    assert!(left().is_empty(), "nothing written: {:?}", left());
    drop(taken);
    // A swarm port taken: the same, naming --swarm-port.
    let taken = std::net::UdpSocket::bind(("127.0.0.1", swarm + 2)).unwrap();
    let (ok, stderr) = demo(&[]);
    assert!(!ok && stderr.contains("node-3's swarm cannot listen") && stderr.contains("--swarm-port"), "{stderr}");
    assert!(left().is_empty(), "nothing written: {:?}", left());
    drop(taken);
    // A missing input: named with its option, nothing written.
    let (ok, stderr) = demo(&["--input", "/nonexistent/clip.mp4"]);
    assert!(!ok && stderr.contains("--input /nonexistent/clip.mp4"), "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "the cause once: {stderr}");
    assert!(left().is_empty(), "nothing written: {:?}", left());
    // All free: one line per node, and the key and password kept.
    let (ok, stderr) = demo(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(stderr.matches(" pid ").count(), 3, "{stderr}");
    let names = left();
    for name in ["fleet.key", "admin-password", "node-1", "node-3"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

#[test]
fn a_demo_swarm_agrees_on_bytes_and_leader() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (web, swarm) = (common::free_ports(3), common::free_ports(3));
    let run = common::lockstep()
        .args(["demo", "--nodes", "3", "--duration", "7", "--listen"])
        .arg(format!("127.0.0.1:{web}"))
        .args(["--swarm-port", &swarm.to_string(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for k in 1..=3 {
        assert!(stderr.contains(&format!("node-{k} pid ")), "one line per node: {stderr}");
    }
    // Every index produced by more than one node is byte-identical.
    let verify = common::lockstep().arg("verify").arg(&out).arg("--json").output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    for (track, r) in report.as_object().unwrap() {
        assert!(r["shared"].as_u64().unwrap() >= 2, "{track}: {r}");
        assert_eq!(r["conflicts"].as_array().unwrap().len(), 0, "{track}: {r}");
        assert_eq!(r["nodes"].as_object().unwrap().len(), 3, "{track}: {r}");
        // Files, not only manifests: every file on disk hashed again, and
        // every node's combined output checked against the manifests.
        assert!(r["rehashed"].as_u64().unwrap() >= 6, "{track}: {r}");
        assert!(r["altered"].as_object().unwrap().is_empty(), "{track}: {r}");
        let combined = r["combined"].as_object().unwrap();
        assert_eq!(combined.len(), 3, "{track}: {r}");
        for (node, c) in combined {
            assert!(c[0].as_u64().unwrap() >= 1 && c[1].as_array().unwrap().is_empty(), "{track}: {node} {c}");
        }
    }
    // Each node saw the two others, healthy, through authenticated packets
    // only, and all name the same leader.
    let views: Vec<serde_json::Value> =
        (1..=3).map(|k| view(&out.join(format!("node-{k}/swarm.json"))).expect("swarm.json")).collect();
    for v in &views {
        let peers = v["peers"].as_object().unwrap();
        assert_eq!(peers.len(), 2, "{v}");
        assert!(peers.values().all(|p| p["healthy"] == true), "{v}");
        assert!(v["packets"]["accepted"].as_u64().unwrap() > 10, "{v}");
        assert_eq!(v["packets"]["auth"], 0);
        assert_eq!(v["isolated"], false);
    }
    let leaders: Vec<&serde_json::Value> = views.iter().map(|v| &v["leader"]).collect();
    assert!(leaders[0].is_string() && leaders.iter().all(|l| *l == leaders[0]), "leaders {leaders:?}");
    // The run ended: the combined playlists end, as each node's own do.
    for k in 1..=3 {
        let combined = out.join(format!("node-{k}/combined/main"));
        let tracks: Vec<_> =
            std::fs::read_dir(&combined).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        assert!(!tracks.is_empty(), "node-{k}: no combined tracks in {}", combined.display());
        for track in tracks {
            let playlist = std::fs::read_to_string(track.join("playlist.m3u8")).unwrap();
            assert!(playlist.trim_end().ends_with("#EXT-X-ENDLIST"), "{}:\n{playlist}", track.display());
        }
    }
}

/// A new fleet key in `dir/fleet.key`, mode 600, as the nodes need it.
fn fleet_key(dir: &Path) -> std::path::PathBuf {
    let key = dir.join("fleet.key");
    std::fs::write(&key, FleetKey::generate().to_hex()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    key
}

/// An admin API for one node of a test: its address, a bearer token and
/// the `[admin]` table that turns it on.
fn admin_api(dir: &Path) -> (String, String, String) {
    let passwd = dir.join("admin.passwd");
    common::lockstep_stdin(&["passwd", "--file", passwd.to_str().unwrap()], "a long enough password\n");
    let tokens = dir.join("tokens");
    let token = common::lockstep_stdin(&["token", "--file", tokens.to_str().unwrap(), "--name", "ci"], "");
    let admin = format!("127.0.0.1:{}", common::free_ports(1));
    let table = format!(
        "[admin]\nlisten = \"{admin}\"\npassword_file = \"{}\"\ntokens_file = \"{}\"\n",
        passwd.display(),
        tokens.display()
    );
    (admin, token, table)
}

/// A light appliance process in the swarm.
fn node(dir: &Path, k: u16, ports: (u16, u16), key: &Path) -> Child {
    node_with(dir, k, ports, key, "")
}

/// A node with extra `[output]` keys.
fn node_with(dir: &Path, k: u16, ports: (u16, u16), key: &Path, output: &str) -> Child {
    node_full(dir, k, ports, key, output, "")
}

/// A node with extra `[output]` keys and more tables at the end (`[[channels]]`).
fn node_full(dir: &Path, k: u16, ports: (u16, u16), key: &Path, output: &str, tables: &str) -> Child {
    let seeds: Vec<String> = (0..3).filter(|&j| j != k).map(|j| format!("\"127.0.0.1:{}\"", ports.1 + j)).collect();
    let out = dir.join(format!("n{k}"));
    std::fs::create_dir_all(&out).unwrap();
    let text = format!(
        "[appliance]\nid = \"n{k}\"\n[channel]\nid = \"ch\"\n[source]\nkind = \"test\"\nwidth = 160\nheight = 90\nfps = \"25\"\n\
         [audio]\nenabled = false\n[[renditions]]\nname = \"90p\"\nheight = 90\nbitrate_kbps = 100\n\
         [output]\ndir = \"{}\"\n{output}[origin]\nlisten = \"127.0.0.1:{}\"\n\
         [swarm]\nenabled = true\nbind = \"127.0.0.1:{}\"\nseeds = [{}]\nfleet_key_file = \"{}\"\nstatus_file = \"{}\"\n{tables}",
        out.display(),
        ports.0 + k,
        ports.1 + k,
        seeds.join(", "),
        key.display(),
        out.join("swarm.json").display()
    );
    let config = out.join("lockstep.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(out.join("stderr.log")).unwrap();
    // A bounded run, in case the test dies before it kills the node.
    common::lockstep().args(["run", "--duration", "60", "--config"]).arg(&config).stderr(log).spawn().unwrap()
}

/// Nodes killed (SIGKILL) and reaped when the test ends, even by a panic.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for three nodes to see each other healthy and agree on a
/// leader; returns it.
fn agreed_leader(status: &dyn Fn(usize) -> Option<serde_json::Value>) -> String {
    let started = Instant::now();
    let leader = loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no agreement: {:?}",
            (0..3).map(status).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
        let views: Vec<serde_json::Value> = (0..3).filter_map(status).collect();
        if views.len() == 3
            && views.iter().all(|v| {
                v["peers"].as_object().is_some_and(|p| p.len() == 2 && p.values().all(|x| x["healthy"] == true))
            })
            && views.iter().all(|v| v["leader"].is_string() && v["leader"] == views[0]["leader"])
        {
            break views[0]["leader"].as_str().unwrap().to_string();
        }
    };
    eprintln!("swarm formed in {:.1} s; leader {leader}", started.elapsed().as_secs_f64());
    leader
}

#[test]
fn bursts_of_full_cpu_load_do_not_move_the_leader() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    let ports = (common::free_ports(3), common::free_ports(3));
    let _nodes = Nodes((0..3).map(|k| node(dir.path(), k, ports, &key)).collect());
    let status = |k: usize| view(&dir.path().join(format!("n{k}/swarm.json")));
    let leader = agreed_leader(&status);
    // Every core busy for 0.6 s, idle for 0.6 s, for 20 s: what a browser
    // opening the admin page does to a loaded 2-core machine, in turns.
    // Each node samples the machine's CPU at its own moments, so the
    // bursts reach them unevenly; a leader that followed them would move.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let burst = Instant::now();
                    let mut x = 0u64;
                    while burst.elapsed() < Duration::from_millis(600) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    std::thread::sleep(Duration::from_millis(600));
                }
            })
        })
        .collect();
    let loaded = Instant::now();
    let mut changes = Vec::new();
    let mut cpu_seen = 0.0f64;
    while loaded.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_millis(100));
        for k in 0..3 {
            let Some(v) = status(k) else { continue };
            cpu_seen = cpu_seen.max(v["me"]["load"]["cpu"].as_f64().unwrap_or(0.0));
            if v["leader"] != leader.as_str() {
                changes.push((loaded.elapsed().as_secs_f64(), k, v["leader"].clone()));
            }
        }
        if loaded.elapsed() > Duration::from_secs(20) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    for h in hogs {
        h.join().unwrap();
    }
    eprintln!("machine CPU (averaged) up to {:.0} % under the bursts", cpu_seen * 100.0);
    assert!(cpu_seen > 0.35, "the bursts loaded the machine: {cpu_seen}");
    // (With the CPU figure not averaged, the leader moved back and forth
    // every few seconds here.)
    assert!(
        changes.is_empty(),
        "the leader {leader} moved under load, {} times seen: {:?}",
        changes.len(),
        &changes[..changes.len().min(6)]
    );
}

#[test]
fn a_killed_leader_is_detected_and_replaced() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    let ports = (common::free_ports(3), common::free_ports(3));
    let mut nodes = Nodes((0..3).map(|k| node(dir.path(), k, ports, &key)).collect());
    let status = |k: usize| view(&dir.path().join(format!("n{k}/swarm.json")));
    let leader = agreed_leader(&status);
    let victim: usize = leader.trim_start_matches('n').parse().unwrap();
    nodes.0[victim].kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let (mut detected, mut reelected) = (None, None);
    while detected.is_none() || reelected.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "not detected/re-elected: {:?}",
            (0..3).map(status).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
        let others: Vec<serde_json::Value> = (0..3).filter(|&k| k != victim).filter_map(status).collect();
        if detected.is_none() && others.iter().all(|v| v["peers"][&leader]["healthy"] != true) {
            detected = Some(killed.elapsed());
        }
        if reelected.is_none()
            && others.iter().all(|v| {
                v["leader"].is_string() && v["leader"] != leader.as_str() && v["leader"] == others[0]["leader"]
            })
        {
            reelected = Some(killed.elapsed());
        }
    }
    let (d, r) = (detected.unwrap(), reelected.unwrap());
    eprintln!(
        "kill -9 of the leader: unhealthy everywhere after {:.2} s, new leader agreed after {:.2} s",
        d.as_secs_f64(),
        r.as_secs_f64()
    );
    assert!(d < Duration::from_secs(5) && r < Duration::from_secs(5));
}

/// An in-process swarm node with no seeds, on a free loopback port (another
/// one when the port found free is taken before the node binds it: the
/// tests beside it open sockets too).
fn lone_node(name: &str, key: &FleetKey) -> (Swarm, SocketAddr) {
    for _ in 0..10 {
        let addr: SocketAddr = format!("127.0.0.1:{}", common::free_ports(1)).parse().unwrap();
        match lone_node_at(name, key, addr) {
            Err(lockstep::swarm::SwarmError::Bind { .. }) => continue,
            started => return (started.unwrap(), addr),
        }
    }
    panic!("no free loopback port in 10 tries");
}

fn lone_node_at(name: &str, key: &FleetKey, addr: SocketAddr) -> Result<Swarm, lockstep::swarm::SwarmError> {
    Swarm::start(Settings {
        node: name.into(),
        bind: addr,
        advertise: addr,
        seeds: Vec::new(),
        key: key.clone(),
        state_interval: Duration::from_millis(100),
        probe_period: Duration::from_millis(300),
        suspect_after: Duration::from_millis(900),
        expected_nodes: 3,
        neighbours: 3,
        origin: None,
        frame_ns: 40e6,
        status_file: None,
        drift_horizon_s: 10.0,
    })
}

#[test]
fn bad_packets_are_dropped_and_counted() {
    let key = FleetKey::generate();
    let (swarm, addr) = lone_node("target", &key);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let now_ms = || lockstep::clock::realtime_ns() / 1_000_000;
    let ours = Sealer::new(&key);
    let forger = Sealer::new(&FleetKey::generate());
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect::<Vec<u8>>()
    };
    let valid = ours.seal(Kind::Membership, b"not a SWIM message", now_ms());
    let sends: Vec<Vec<u8>> = vec![
        random(200),
        random(3),
        valid[..40].to_vec(),
        forger.seal(Kind::State, b"forged", now_ms()),
        ours.seal_with(9, Kind::State, 1_000, b"from the future", now_ms()),
        ours.seal(Kind::State, b"sent long ago", now_ms() - 120_000),
        valid.clone(),
        valid,
    ];
    for p in &sends {
        sock.send_to(p, addr).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let counts = loop {
        let c: std::collections::BTreeMap<&str, u64> = swarm.stats().snapshot().into_iter().collect();
        if c.values().sum::<u64>() >= sends.len() as u64 || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{counts:?}");
    assert_eq!(counts["malformed"], 3, "random, short and truncated: {counts:?}");
    assert_eq!(counts["auth"], 1, "{counts:?}");
    assert_eq!(counts["version"], 1, "{counts:?}");
    assert_eq!(counts["stale"], 1, "{counts:?}");
    assert_eq!(counts["replay"], 1, "{counts:?}");
    assert_eq!(counts["accepted"], 1, "{counts:?}");
    // The node kept running: its rounds after the drops report them.
    std::thread::sleep(Duration::from_millis(300));
    let v = swarm.view();
    assert_eq!((v.packets["replay"], v.packets["auth"]), (1, 1), "{:?}", v.packets);
    swarm.stop();
}

#[test]
fn a_late_node_catches_up_and_its_combined_output_survives_a_kill() {
    let _turn = one_at_a_time();
    common::require_tool("ffprobe");
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    let ports = (common::free_ports(3), common::free_ports(3));
    let window = "window_segments = 30\n";
    let mut nodes = Nodes(vec![node_with(dir.path(), 0, ports, &key, window)]);
    std::thread::sleep(Duration::from_secs(5));
    nodes.0.push(node_with(dir.path(), 1, ports, &key, window));
    let (a, b) = (dir.path().join("n0/ch/90p"), dir.path().join("n1/ch/90p"));
    let combined = dir.path().join("n1/combined/ch/90p");
    let indices = |text: &str| -> Vec<i64> {
        text.lines().filter_map(|l| l.strip_prefix("seg-")?.strip_suffix(".m4s")?.parse().ok()).collect()
    };
    // B's combined output gains segments from before B started, from A.
    let started = Instant::now();
    let first_own = loop {
        assert!(started.elapsed() < Duration::from_secs(30), "B never caught up");
        std::thread::sleep(Duration::from_millis(200));
        let own = std::fs::read_to_string(b.join("manifest.jsonl")).unwrap_or_default();
        let Some(first_own) = own
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["index"].as_i64())
            .min()
        else {
            continue;
        };
        let have = indices(&std::fs::read_to_string(combined.join("playlist.m3u8")).unwrap_or_default());
        if have.iter().any(|&i| i < first_own) {
            break first_own;
        }
    };
    eprintln!(
        "B caught up on segments before its first own one ({first_own}) after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    nodes.0[0].kill().unwrap(); // kill -9 of A
    let killed_at = std::fs::read_to_string(a.join("manifest.jsonl")).unwrap().lines().count();
    std::thread::sleep(Duration::from_secs(7));

    let text = std::fs::read_to_string(combined.join("playlist.m3u8")).unwrap();
    let have = indices(&text);
    assert!(!text.contains("#EXT-X-DISCONTINUITY"), "{text}");
    assert!(have.windows(2).all(|w| w[1] == w[0] + 1), "no missing index: {have:?}");
    let last_a = common::manifest(&a).iter().map(|e| e.index).max().unwrap();
    assert!(
        have.first().unwrap() < &first_own && have.last().unwrap() > &(last_a + 1),
        "spans catch-up and failover: {have:?}, A's last {last_a} ({killed_at} entries)"
    );
    // Where each combined segment came from, proved by the files: up to
    // A's last segment it equals A's file (and B's where B made one; B has
    // none before its first), after it B's own, A having none. A combined
    // segment found in neither node's own output fails, as does one that
    // differs.
    let killed_last = last_a;
    for i in &have {
        let f = format!("seg-{i}.m4s");
        let bytes = std::fs::read(combined.join(&f)).unwrap();
        let theirs = std::fs::read(a.join(&f)).ok();
        let own = std::fs::read(b.join(&f)).ok();
        let alive = *i <= killed_last;
        let equal = |x: &Option<Vec<u8>>| x.as_ref() == Some(&bytes);
        let proved = if alive {
            equal(&theirs) && (own.is_none() || equal(&own)) && (*i >= first_own || own.is_none())
        } else {
            equal(&own) && theirs.is_none()
        };
        assert!(
            proved,
            "{f}: combined {} bytes must equal {}; A's {:?}, B's {:?} (B's first own {first_own}, A's last {killed_last}); \
             B's log:\n{}",
            bytes.len(),
            if alive { "A's file, A being alive" } else { "B's own file, A having stopped" },
            theirs.as_ref().map(Vec::len),
            own.as_ref().map(Vec::len),
            std::fs::read_to_string(dir.path().join("n1/stderr.log")).unwrap_or_default()
        );
    }
    let after_kill = have.iter().filter(|&&i| i > killed_last).count();
    assert!(after_kill >= 3, "at least 3 segments after the kill come from B alone: {have:?}");
    eprintln!(
        "combined output: {} segments from A alone, {} from both, {after_kill} from B alone after the kill",
        have.iter().filter(|&&i| i < first_own).count(),
        have.iter().filter(|&&i| i >= first_own && i <= killed_last).count()
    );
    // The combined stream decodes across the catch-up and the failure with
    // continuous timestamps and every frame.
    let segs = common::playlist_segments(&combined);
    let file = common::concat(&combined, &segs, &dir.path().join("combined.mp4"));
    let packets = common::packets(&file);
    assert_eq!(packets.len(), segs.len() * 50, "{} segments", segs.len());
    let step = packets[1].1 - packets[0].1;
    assert!(packets.windows(2).all(|w| w[1].1 - w[0].1 == step), "DTS continuous");
    assert_eq!(common::decode_errors(&file), "");
    eprintln!(
        "combined output: {} segments, {} frames, continuous across catch-up and kill -9",
        segs.len(),
        packets.len()
    );

    // A restarts: it rejoins, fills the segments it missed into its own
    // combined output from B, and is weighted back in gradually.
    let log = dir.path().join("n0/stderr.log");
    std::fs::rename(&log, dir.path().join("n0/stderr-1.log")).unwrap();
    nodes.0[0] = node_with(dir.path(), 0, ports, &key, window);
    let restarted = Instant::now();
    let a_combined = dir.path().join("n0/combined/ch/90p");
    let mut weights = Vec::new();
    loop {
        assert!(restarted.elapsed() < Duration::from_secs(30), "A did not catch up: {:?}", weights);
        std::thread::sleep(Duration::from_millis(250));
        if let Some(v) = view(&dir.path().join("n1/swarm.json"))
            && let Some(w) = v["peers"]["n0"]["weights"]["ch"].as_f64()
            && v["peers"]["n0"]["healthy"] == true
        {
            weights.push(w);
        }
        let have = indices(&std::fs::read_to_string(a_combined.join("playlist.m3u8")).unwrap_or_default());
        if have.contains(&(last_a + 1)) && weights.len() >= 4 {
            break;
        }
    }
    eprintln!("A back after {:.1} s; its weight as B sees it: {weights:?}", restarted.elapsed().as_secs_f64());
    assert!(weights.windows(2).all(|w| w[1] >= w[0] - 1e-6), "weighted back in monotonically: {weights:?}");
    assert!(weights[0] < 0.5, "gradually, from low: {weights:?}");
    let text = std::fs::read_to_string(combined.join("playlist.m3u8")).unwrap();
    let have = indices(&text);
    assert!(
        !text.contains("#EXT-X-DISCONTINUITY") && have.windows(2).all(|w| w[1] == w[0] + 1),
        "B's combined output after A's return: {have:?}"
    );
}

/// A network namespace joined to this one by a veth pair, removed on drop.
struct Netns {
    name: String,
    host_dev: String,
}

impl Netns {
    fn new(tag: u32) -> Self {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let (name, host_dev, peer) = (format!("lsw{tag}"), format!("lswh{tag}"), format!("lswn{tag}"));
        run(&["netns", "add", &name]);
        let ns = Self { name, host_dev };
        run(&["link", "add", &ns.host_dev, "type", "veth", "peer", "name", &peer, "netns", &ns.name]);
        let net = tag % 250;
        run(&["addr", "add", &format!("10.78.{net}.1/24"), "dev", &ns.host_dev]);
        run(&["link", "set", &ns.host_dev, "up"]);
        run(&["-n", &ns.name, "addr", "add", &format!("10.78.{net}.2/24"), "dev", &peer]);
        run(&["-n", &ns.name, "link", "set", &peer, "up"]);
        run(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn link(&self, up: bool) {
        let out = std::process::Command::new("ip")
            .args(["link", "set", &self.host_dev, if up { "up" } else { "down" }])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_dev]).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A node at `ip` (inside namespace `ns` if given) seeded with `seed`.
fn node_at(dir: &Path, name: &str, ip: &str, seed: &str, key: &Path, ns: Option<&str>) -> Child {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let text = format!(
        "[appliance]\nid = \"{name}\"\n[channel]\nid = \"ch\"\n[source]\nkind = \"test\"\nwidth = 160\nheight = 90\nfps = \"25\"\n\
         [audio]\nenabled = false\n[[renditions]]\nname = \"90p\"\nheight = 90\nbitrate_kbps = 100\n\
         [output]\ndir = \"{}\"\nwindow_segments = 60\n[origin]\nlisten = \"{ip}:8080\"\n\
         [swarm]\nenabled = true\nbind = \"{ip}:7946\"\nseeds = [\"{seed}:7946\"]\nfleet_key_file = \"{}\"\nstatus_file = \"{}\"\n",
        out.display(),
        key.display(),
        out.join("swarm.json").display()
    );
    let config = out.join("lockstep.toml");
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(out.join("stderr.log")).unwrap();
    let exe = env!("CARGO_BIN_EXE_lockstep");
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, exe]);
            c
        }
        None => std::process::Command::new(exe),
    };
    cmd.args(["run", "--duration", "90", "--config"]).arg(&config).stderr(log).spawn().unwrap()
}

#[test]
fn a_cut_off_node_keeps_producing_flags_itself_isolated_and_converges() {
    assert!(common::is_root(), "this test creates a network namespace and needs root (CI runs as root)");
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    let tag = std::process::id() % 100_000;
    let ns = Netns::new(tag);
    let net = tag % 250;
    let (ip_a, ip_b) = (format!("10.78.{net}.1"), format!("10.78.{net}.2"));
    let _nodes = Nodes(vec![
        node_at(dir.path(), "na", &ip_a, &ip_b, &key, None),
        node_at(dir.path(), "nb", &ip_b, &ip_a, &key, Some(&ns.name)),
    ]);
    let b_view = || view(&dir.path().join("nb/swarm.json"));
    let peer_healthy = |v: &serde_json::Value, peer: &str| v["peers"][peer]["healthy"] == true;
    let wait = |what: &str, limit: u64, ok: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !ok() {
            let log = |n: &str| std::fs::read_to_string(dir.path().join(n).join("stderr.log")).unwrap_or_default();
            let tail = |t: String| t.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            assert!(
                started.elapsed() < Duration::from_secs(limit),
                "{what} not within {limit} s\n--- na\n{}\n--- nb\n{}",
                tail(log("na")),
                tail(log("nb"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    };
    wait("swarm formed", 30, &|| b_view().is_some_and(|v| peer_healthy(&v, "na") && v["isolated"] == false));
    std::thread::sleep(Duration::from_secs(2));

    ns.link(false);
    let own_segments =
        || std::fs::read_to_string(dir.path().join("nb/ch/90p/manifest.jsonl")).unwrap_or_default().lines().count();
    let before = own_segments();
    let t = wait("isolation flagged", 15, &|| b_view().is_some_and(|v| v["isolated"] == true));
    eprintln!("link down: B flagged itself isolated after {:.1} s", t.as_secs_f64());
    std::thread::sleep(Duration::from_secs(4));
    assert!(own_segments() > before, "B keeps producing while cut off");

    ns.link(true);
    let t = wait("convergence after healing", 30, &|| {
        b_view().is_some_and(|v| peer_healthy(&v, "na") && v["isolated"] == false)
            && view(&dir.path().join("na/swarm.json")).is_some_and(|v| peer_healthy(&v, "nb") && v["isolated"] == false)
    });
    eprintln!("link up: converged after {:.1} s", t.as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));

    // Never a conflicting segment: own outputs agree wherever both have an
    // index, and so do the combined outputs.
    let verify = common::lockstep().arg("verify").arg(dir.path()).arg("--json").output().unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let (ca, cb) = (dir.path().join("na/combined/ch/90p"), dir.path().join("nb/combined/ch/90p"));
    let mut compared = 0;
    for entry in std::fs::read_dir(&ca).unwrap().filter_map(Result::ok) {
        let f = entry.file_name();
        if f.to_string_lossy().ends_with(".m4s")
            && let Ok(theirs) = std::fs::read(cb.join(&f))
        {
            assert!(std::fs::read(entry.path()).unwrap() == theirs, "{f:?} differs between the combined outputs");
            compared += 1;
        }
    }
    assert!(compared >= 5, "only {compared} combined segments in common");
}

#[test]
fn each_channel_has_its_own_replicas_weights_and_combined_output_and_survives_a_kill() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    let ports = (common::free_ports(3), common::free_ports(3));
    // n0 and n1 encode `ch` and `two` (another picture size, another
    // ladder); n2 encodes `ch` only.
    let two = "[[channels]]\nchannel = { id = \"two\" }\n\
               source = { kind = \"test\", width = 128, height = 72, fps = \"25\" }\n\
               audio = { enabled = false }\n\
               renditions = [{ name = \"72p\", height = 72, bitrate_kbps = 100 }]\n";
    let window = "window_segments = 30\n";
    let mut nodes =
        Nodes((0..3).map(|k| node_full(dir.path(), k, ports, &key, window, if k < 2 { two } else { "" })).collect());
    let status = |k: usize| view(&dir.path().join(format!("n{k}/swarm.json")));
    let combined = |k: usize, ch: &str, track: &str| dir.path().join(format!("n{k}/combined/{ch}/{track}"));
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    };
    // Each channel's weights name the nodes that encode it, and the
    // combined output of both channels grows on n0 and n1.
    let started = Instant::now();
    let victim = loop {
        assert!(started.elapsed() < Duration::from_secs(40), "channels never settled: {:?}", status(1));
        std::thread::sleep(Duration::from_millis(250));
        let Some(v) = status(1) else { continue };
        let settled = names(&v["channels"]["ch"]["weights"]) == ["n0", "n1", "n2"]
            && names(&v["channels"]["two"]["weights"]) == ["n0", "n1"]
            && v["peers"].as_object().is_some_and(|p| p.len() == 2 && p.values().all(|x| x["healthy"] == true));
        let growing = (0..2).all(|k| {
            common::listed(&combined(k, "ch", "90p").join("playlist.m3u8")).len() >= 3
                && common::listed(&combined(k, "two", "72p").join("playlist.m3u8")).len() >= 3
        });
        // The node selected for the newest index of `two`.
        let chosen = v["channels"]["two"]["selection"]
            .as_object()
            .and_then(|s| s.iter().max_by_key(|(i, _)| i.parse::<i64>().unwrap_or(i64::MIN)))
            .and_then(|(_, tracks)| tracks["72p"].as_str().map(str::to_string));
        if settled
            && growing
            && let Some(chosen) = chosen
        {
            break chosen;
        }
    };
    eprintln!("two channels settled in {:.1} s; {victim} is selected for `two`", started.elapsed().as_secs_f64());
    // n2 knows `two` from its peers' packets, and keeps no combined output
    // of a channel it does not encode.
    let v2 = status(2).unwrap();
    assert_eq!(names(&v2["channels"]["two"]["weights"]), ["n0", "n1"], "{v2}");
    assert!(!dir.path().join("n2/combined/two").exists(), "n2 encodes no `two`");

    // kill -9 of the node selected for `two`; the other one that runs
    // `two` survives and is judged.
    let dead: usize = victim.trim_start_matches('n').parse().unwrap();
    let alive = 1 - dead;
    nodes.0[dead].kill().unwrap();
    let _ = nodes.0[dead].wait();
    std::thread::sleep(Duration::from_secs(7));

    for (ch, track) in [("ch", "90p"), ("two", "72p")] {
        let own = |k: usize| dir.path().join(format!("n{k}/{ch}/{track}"));
        let last_dead = common::manifest(&own(dead)).iter().map(|e| e.index).max().unwrap();
        let have = common::listed(&combined(alive, ch, track).join("playlist.m3u8"));
        assert!(have.windows(2).all(|w| w[1] == w[0] + 1), "{ch}: no missing index: {have:?}");
        assert!(
            have.first().is_some_and(|&f| f <= last_dead) && have.last().is_some_and(|&l| l >= last_dead + 3),
            "{ch}: spans the kill: {have:?}, {victim}'s last {last_dead}"
        );
        // Where a segment came from, proven by the bytes: after the kill,
        // the survivor's own file (the dead node has none); before it, the
        // bytes of every node that has the index.
        for i in &have {
            let f = format!("seg-{i}.m4s");
            let bytes = std::fs::read(combined(alive, ch, track).join(&f)).unwrap();
            let theirs = std::fs::read(own(dead).join(&f)).ok();
            let mine = std::fs::read(own(alive).join(&f)).ok();
            if *i > last_dead {
                assert!(theirs.is_none(), "{ch}/{f}: {victim} was dead");
                assert_eq!(mine.as_ref(), Some(&bytes), "{ch}/{f}: after the kill, the survivor's own bytes");
            } else {
                assert!(theirs.is_some() || mine.is_some(), "{ch}/{f}: from nowhere");
                for x in [&theirs, &mine].into_iter().flatten() {
                    assert!(*x == bytes, "{ch}/{f}: the combined copy differs from a producer's file");
                }
            }
        }
    }
    // The dead node weighs nothing for either channel now.
    let v = status(alive).unwrap();
    for ch in ["ch", "two"] {
        assert_eq!(v["channels"][ch]["weights"][&victim].as_f64(), Some(0.0), "{ch}: {}", v["channels"][ch]);
    }
    // One channel's pictures are not another's.
    let one = std::fs::read(combined(alive, "ch", "90p").join("init.mp4")).unwrap();
    let other = std::fs::read(combined(alive, "two", "72p").join("init.mp4")).unwrap();
    assert_ne!(one, other);
}

/// A segment's hashes as an older member sends them: index, input hash,
/// (track, file hash).
type OldSegment = (i64, [u8; 32], Vec<(String, [u8; 32])>);

/// The Encoding State Packet of a member from before channel lists, as
/// such a member encodes it (postcard, fields in this order).
#[derive(serde::Serialize)]
struct SingleChannelPacket {
    node: String,
    boot: u64,
    addr: SocketAddr,
    origin: Option<String>,
    channel: String,
    sent_tai_ns: i64,
    frame: i64,
    timecode: String,
    complexity: f32,
    segments: Vec<OldSegment>,
    encode_latency_ms: f32,
    neighbour_latency_ms: f32,
    neighbour_jitter_ms: f32,
    load: (f32, f32, f32),
    clock: (String, Option<f64>),
    recent_errors: u32,
    uptime_s: u64,
    isolated: bool,
    confidence: f32,
    weight: f32,
    leader: Option<String>,
    ladder: Vec<(i64, u64, String, String, u32)>,
}

#[test]
fn an_older_member_sending_single_channel_packets_stays_in_the_swarm() {
    let key = FleetKey::generate();
    let (swarm, addr) = lone_node("new", &key);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let old = Sealer::new(&key);
    let now_ms = lockstep::clock::realtime_ns() / 1_000_000;
    let packet = SingleChannelPacket {
        node: "old".into(),
        boot: old.boot(),
        addr: sock.local_addr().unwrap(),
        origin: Some("http://127.0.0.1:1".into()),
        channel: "main".into(),
        sent_tai_ns: now_ms * 1_000_000,
        frame: 1_000,
        timecode: "00:00:40:00".into(),
        complexity: 0.3,
        segments: vec![(20, [1; 32], vec![("360p".into(), [9; 32])])],
        encode_latency_ms: 400.0,
        neighbour_latency_ms: 0.2,
        neighbour_jitter_ms: 0.05,
        load: (0.2, 0.1, 0.3),
        clock: ("locked".into(), Some(100.0)),
        recent_errors: 0,
        uptime_s: 100,
        isolated: false,
        confidence: 0.95,
        weight: 0.8,
        leader: Some("old".into()),
        ladder: vec![(30, 1, "old".into(), "360p".into(), 800)],
    };
    let payload = postcard::to_allocvec(&packet).unwrap();
    sock.send_to(&old.seal(Kind::SingleChannelState, &payload, now_ms), addr).unwrap();
    // The new member reads it as a member with one channel, whose segment
    // and ladder it knows, and decides on that channel.
    let deadline = Instant::now() + Duration::from_secs(5);
    let v = loop {
        let v = swarm.view();
        if v.peers.contains_key("old") && v.channels.contains_key("main") {
            break v;
        }
        assert!(Instant::now() < deadline, "the older member's packet was not taken: {:?}", v.packets);
        std::thread::sleep(Duration::from_millis(50));
    };
    let state = &v.peers["old"].state;
    let main = state.channel("main").expect("channel main");
    assert_eq!((main.frame, main.weight, main.timecode.as_str()), (1_000, 0.8, "00:00:40:00"));
    assert_eq!(main.segments[0].index, 20);
    assert_eq!(main.segments[0].tracks, vec![("360p".to_string(), [9u8; 32])]);
    assert_eq!((main.ladder[0].rendition.as_str(), main.ladder[0].bitrate_kbps), ("360p", 800));
    assert_eq!((state.confidence, state.leader.as_deref()), (0.95, Some("old")));
    assert_eq!(v.packets["accepted"], 1, "{:?}", v.packets);
    assert_eq!(v.packets["malformed"], 0, "{:?}", v.packets);
    swarm.stop();
}

/// Sends `method path` with `body` (JSON) to an admin API with a bearer
/// token; the status code and the body.
fn request(admin: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

#[test]
fn a_capture_slip_is_never_published_and_is_corrected_by_majority_vote() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    common::require_tool("ffprobe");
    const N: usize = 5;
    let ports = (common::free_ports(N as u16), common::free_ports(N as u16));
    // n1 has the admin API, for the drill.
    let (admin, token, admin_table) = admin_api(dir.path());
    let window = "window_segments = 30\n";
    let _nodes = Nodes(
        (0..N as u16)
            .map(|k| node_full(dir.path(), k, ports, &key, window, if k == 1 { &admin_table } else { "" }))
            .collect(),
    );
    let status = |k: usize| view(&dir.path().join(format!("n{k}/swarm.json")));
    let offset = |v: &serde_json::Value, node: &str| v["channels"]["ch"]["deviations"][node]["frame_offset"].as_i64();
    // In lockstep first: every node finds its neighbours at offset 0.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "no offsets: {:?}", status(0));
        std::thread::sleep(Duration::from_millis(250));
        let views: Vec<_> = (0..N).filter_map(status).collect();
        let zero = |v: &serde_json::Value| {
            let me = v["node"].as_str().unwrap_or_default().to_string();
            (0..N).map(|k| format!("n{k}")).filter(|n| *n != me).all(|n| offset(v, &n) == Some(0))
        };
        // Each has published a few segments (the one the slip lands in is
        // not the first).
        let published = |k: usize| {
            std::fs::read_to_string(dir.path().join(format!("n{k}/ch/90p/manifest.jsonl")))
                .map_or(0, |m| m.lines().count())
        };
        if views.len() == N && views.iter().all(zero) && (0..N).all(|k| published(k) >= 2) {
            break;
        }
    }
    // n1's capture slips one frame (its pictures late).
    let (code, body) = request(&admin, &token, "POST", "/api/v1/channels/ch/drills/slip", r#"{"frames": 1}"#);
    assert_eq!(code, 202, "{body}");
    let slipped = Instant::now();
    let slip_frame = status(1).unwrap()["me"]["channels"][0]["frame"].as_i64().unwrap();
    // Its neighbours see it a frame ahead, it sees them a frame behind,
    // the others stay in lockstep.
    let (seen, v0) = loop {
        assert!(slipped.elapsed() < Duration::from_secs(15), "slip not seen: {:?}", status(0));
        std::thread::sleep(Duration::from_millis(100));
        let views: Vec<_> = (0..N).filter_map(status).collect();
        if views.len() < N {
            continue;
        }
        let others_see_it_ahead = [0, 2, 3, 4].iter().all(|&k| offset(&views[k], "n1") == Some(1));
        if others_see_it_ahead && offset(&views[1], "n0") == Some(-1) && offset(&views[0], "n2") == Some(0) {
            break (slipped.elapsed(), views[0].clone());
        }
    };
    eprintln!("slip seen by the neighbours after {:.1} s: {}", seen.as_secs_f64(), v0["channels"]["ch"]["deviations"]);
    // n1 finds itself out of step with the majority, proposes to realign
    // by -1 at a boundary, the four others approve from their own measurements,
    // and n1's capture moves at that boundary.
    let resync = |v: &serde_json::Value| v["resync"]["ch"].clone();
    let (at, carried) = loop {
        assert!(slipped.elapsed() < Duration::from_secs(30), "not carried: {:?}", status(1).map(|v| resync(&v)));
        std::thread::sleep(Duration::from_millis(100));
        let Some(v1) = status(1) else { continue };
        let r = resync(&v1);
        if r["outcome"] == "applied" {
            break (r["proposal"]["at_segment"].as_i64().unwrap(), r);
        }
    };
    assert_eq!(carried["proposal"]["correction"], serde_json::json!({"realign": {"frames": -1}}), "{carried}");
    // Carried once a majority of the four approved (the fourth may come after).
    let approvals: Vec<&str> = carried["approvals"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert!(approvals.len() >= 3 && approvals.iter().all(|a| ["n0", "n2", "n3", "n4"].contains(a)), "{carried}");
    // Back in lockstep: offsets 0 again, and n1's segments from the
    // boundary on are the others' bytes again.
    let segment_frames = 50;
    let back = loop {
        assert!(slipped.elapsed() < Duration::from_secs(45), "not back in lockstep: {:?}", status(0));
        std::thread::sleep(Duration::from_millis(100));
        let (Some(v0), Some(v1)) = (status(0), status(1)) else { continue };
        let done = (0..N).all(|k| dir.path().join(format!("n{k}/ch/90p/seg-{}.m4s", at + 1)).exists());
        if offset(&v0, "n1") == Some(0) && offset(&v1, "n0") == Some(0) && done {
            break slipped.elapsed();
        }
    };
    eprintln!(
        "slip at frame {slip_frame} (segment {}), corrected from segment {at}, in lockstep again after {:.1} s",
        slip_frame / segment_frames,
        back.as_secs_f64()
    );
    let slip_segment = slip_frame / segment_frames;
    // Seen within about 2 s; the vote needs 1.5 s before the boundary it
    // acts at: the capture is realigned at the second or third boundary
    // after the slip. Its output is right all along (below).
    assert!(at - slip_segment <= 3, "realigned within 3 segments of the slip (segment {slip_segment}): {at}");
    let own = |k: usize, i: i64| std::fs::read(dir.path().join(format!("n{k}/ch/90p/seg-{i}.m4s"))).ok();
    for i in at..=at + 1 {
        assert!(
            own(1, i).is_some() && own(1, i) == own(0, i) && own(2, i) == own(0, i),
            "segment {i}: identical again"
        );
    }
    // The combined output of n0 never took n1's slipped segments: every
    // index between the slip and the correction has n0's bytes.
    let first_after = slip_frame / segment_frames + 1;
    let combined = dir.path().join("n0/combined/ch/90p");
    let have = common::listed(&combined.join("playlist.m3u8"));
    let slipped_indices: Vec<i64> = have.iter().copied().filter(|&i| i >= first_after && i < at).collect();
    assert!(!slipped_indices.is_empty(), "segments made slipped: {have:?} (slip at frame {slip_frame}, back at {at})");
    for i in &slipped_indices {
        let f = format!("seg-{i}.m4s");
        let bytes = std::fs::read(combined.join(&f)).unwrap();
        assert_eq!(own(0, *i).as_ref(), Some(&bytes), "{f}: the majority's bytes");
    }
    assert!(have.windows(2).all(|w| w[1] == w[0] + 1), "no index missing from the combined output: {have:?}");
    // n1 never published a segment from the slipped pictures: each of its
    // segments from the slip to after the correction was held back until
    // its neighbours' fingerprints came, then encoded from the majority's
    // pictures; its manifest has one entry per index, the others' bytes.
    let manifest =
        |k: usize| std::fs::read_to_string(dir.path().join(format!("n{k}/ch/90p/manifest.jsonl"))).unwrap_or_default();
    let lines = |text: &str, i: i64| -> Vec<String> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["index"] == i)
            .map(|e| e["sha256"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let (mine, theirs) = (manifest(1), manifest(0));
    for i in slip_segment..=at + 1 {
        let (mine, theirs) = (lines(&mine, i), lines(&theirs, i));
        assert_eq!(theirs.len(), 1, "segment {i}: n0 published once");
        assert_eq!(mine, theirs, "segment {i}: n1 published the majority's bytes, and only those");
        assert_eq!(own(1, i), own(0, i), "segment {i}: the files are the same bytes");
    }
    // `lockstep verify` re-hashes every file of the five nodes: no index
    // with two different segments, none altered since its manifest.
    let verify = common::lockstep().arg("verify").arg(dir.path()).arg("--json").output().unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}{}", String::from_utf8_lossy(&verify.stderr));
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    for (track, r) in report.as_object().unwrap() {
        assert_eq!(r["nodes"].as_object().unwrap().len(), N, "{track}: {r}");
        assert_eq!(r["conflicts"].as_array().unwrap().len(), 0, "{track}: {r}");
        assert!(r["altered"].as_object().unwrap().is_empty(), "{track}: {r}");
    }
    // Outside evidence, across the event: n1's own segments decode as one
    // stream with every frame and continuous timestamps.
    // (From the segment before the slip when n1 made one.)
    let from = if lines(&mine, slip_segment - 1).is_empty() { slip_segment } else { slip_segment - 1 };
    let names: Vec<String> = (from..=at + 1).map(|i| format!("seg-{i}.m4s")).collect();
    let joined = common::concat(&dir.path().join("n1/ch/90p"), &names, &dir.path().join("n1-across-slip.mp4"));
    let packets = common::packets(&joined);
    assert_eq!(packets.len(), names.len() * segment_frames as usize, "every frame of {names:?}");
    let step = packets[1].0 - packets[0].0;
    assert!(step > 0, "{:?}", &packets[..2]);
    for w in packets.windows(2) {
        assert_eq!(w[1].0 - w[0].0, step, "continuous timestamps, one frame apart: {:?}", &w);
    }

    // The lockstep state in the API: n1 in step with the others again, its
    // carried realignment and the segments it corrected before publication.
    let (code, body) = request(&admin, &token, "GET", "/api/v1/swarm/lockstep?channel=ch", "");
    assert_eq!(code, 200, "{body}");
    let ls: serde_json::Value = serde_json::from_str(&body).unwrap();
    let nodes = ls["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.iter().map(|n| n["node"].as_str().unwrap()).collect::<Vec<_>>(),
        ["n0", "n1", "n2", "n3", "n4"],
        "{ls}"
    );
    assert!(nodes.iter().all(|n| n["frame_offset"] == 0), "all in step: {ls}");
    let me = &nodes[1];
    assert_eq!(me["self"], true);
    assert_eq!(me["action"]["proposal"]["correction"], serde_json::json!({"realign": {"frames": -1}}), "{me}");
    // Every segment from the slip to the realignment (the slip may land
    // in the segment after the one the drill was sent in).
    let corrected = (at - slip_segment - 1).max(1);
    assert!(me["reencoded"]["before_publication"].as_i64() >= Some(corrected), "{me}");

    // A node that forges a proposal (no neighbour measures the offset it
    // claims) is outvoted, and nothing changes.
    let (code, body) =
        request(&admin, &token, "POST", "/api/v1/channels/ch/drills/forged-proposal", r#"{"frames": 3}"#);
    assert_eq!(code, 202, "{body}");
    let forged = Instant::now();
    let outvoted = loop {
        assert!(forged.elapsed() < Duration::from_secs(20), "not outvoted: {:?}", status(1).map(|v| resync(&v)));
        std::thread::sleep(Duration::from_millis(100));
        let Some(v1) = status(1) else { continue };
        let r = resync(&v1);
        if r["proposal"]["correction"]["realign"]["frames"] == 3 {
            assert_ne!(r["outcome"], "applied", "a forged proposal carried: {r}");
            if r["outcome"] == "outvoted" {
                break r;
            }
        }
    };
    assert_eq!(outvoted["approvals"], serde_json::json!([]), "{outvoted}");
    std::thread::sleep(Duration::from_secs(3));
    let (v0, v1) = (status(0).unwrap(), status(1).unwrap());
    assert_eq!((offset(&v0, "n1"), offset(&v1, "n0")), (Some(0), Some(0)), "nothing moved");

    // n1 logged it all as events.
    let (code, events) = request(&admin, &token, "GET", "/api/v1/events?since=0", "");
    assert_eq!(code, 200, "{events}");
    for needle in [
        "slip drill: channel ch's capture slips 1 frame late",
        "channel ch: n0 numbers the same pictures 1 frame behind n1",
        "channel ch: n1 proposes to realign its capture by -1 frame at segment",
        "channel ch: n1 will realign its capture by -1 frame at segment",
        "channel ch: n0 is in lockstep with n1 again",
        "proposal to realign its capture by 3 frames at segment",
        "was outvoted (0 of 4 approved); nothing changes",
        &format!("channel ch: segment {} encoded from the majority's pictures before publication", at - 1),
    ] {
        assert!(events.contains(needle), "no event with {needle:?}: {events}");
    }
    assert!(events.contains("carried by 3 of 4 (") || events.contains("carried by 4 of 4 ("), "{events}");

    // An encode-latency spike on n1: its neighbours see its segments
    // published later than theirs.
    let (code, body) =
        request(&admin, &token, "POST", "/api/v1/channels/ch/drills/latency", r#"{"ms": 900, "seconds": 8}"#);
    assert_eq!(code, 202, "{body}");
    let spiked = Instant::now();
    loop {
        assert!(spiked.elapsed() < Duration::from_secs(12), "latency spike not seen: {:?}", status(0));
        std::thread::sleep(Duration::from_millis(200));
        let late = status(0).and_then(|v| v["channels"]["ch"]["deviations"]["n1"]["encode_latency_ms"].as_f64());
        if late.is_some_and(|ms| ms > 600.0) {
            eprintln!("latency spike seen by n0 after {:.1} s: {late:?} ms", spiked.elapsed().as_secs_f64());
            break;
        }
    }
    let (_, events) = request(&admin, &token, "GET", "/api/v1/events?since=0", "");
    assert!(events.contains("latency drill: channel ch's encoders hold every segment 900 ms for 8 s"), "{events}");
}

#[test]
fn a_drifting_media_clock_is_predicted_and_corrected_by_majority_vote_before_it_is_half_a_frame_off() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let key = fleet_key(dir.path());
    // Five appliances; n4's media clock gains 1000 ppm from its start:
    // 1 ms a second, half a frame (20 ms at 25 fps) after 20 s. n4 has the
    // admin API (events).
    const N: usize = 5;
    let drifter = "n4";
    let ports = (common::free_ports(N as u16), common::free_ports(N as u16));
    let (admin, token, admin_table) = admin_api(dir.path());
    let drifting = format!("{admin_table}[clock.fault]\nfrequency_ppm = 1000.0\n");
    let window = "window_segments = 30\n";
    let _nodes = Nodes(
        (0..N as u16)
            .map(|k| node_full(dir.path(), k, ports, &key, window, if k == 4 { &drifting } else { "" }))
            .collect(),
    );
    let status = |k: usize| view(&dir.path().join(format!("n{k}/swarm.json")));
    let clock = |v: &serde_json::Value, node: &str| v["channels"]["ch"]["deviations"][node]["clock"].clone();
    let offset_ms = |v: &serde_json::Value, node: &str| clock(v, node)["offset_ms"].as_f64();
    let started = Instant::now();
    // The largest offset of n4 that n0 measured, all along.
    let mut worst = 0.0f64;
    let watch = |worst: &mut f64| {
        if let Some(o) = status(0).and_then(|v| offset_ms(&v, drifter)) {
            *worst = worst.max(o.abs());
        }
    };
    // The others predict n4 reaching half a frame within the horizon
    // (10 s), or see it a quarter frame off and heading there, while it is
    // still less than half a frame off; once a
    // majority does, n4 proposes to correct its clock, they approve from
    // their own readings, and it applies at the boundary (a late one may
    // never flag it: corrected, n4 no longer drifts).
    let resync = |v: &serde_json::Value| v["resync"]["ch"].clone();
    let mut flagged: Vec<Option<(f64, f64, f64)>> = vec![None; N - 1];
    // n4 sees itself heading away from the swarm's consensus (the median
    // of its four neighbours); n0, with one neighbour of four drifting,
    // never sees its consensus move.
    let consensus = |v: &serde_json::Value| v["channels"]["ch"]["consensus"].clone();
    let mut own_flag: Option<(f64, f64, f64, f64)> = None;
    let carried = loop {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "not carried: {flagged:?} {:?}",
            status(4).map(|v| resync(&v))
        );
        std::thread::sleep(Duration::from_millis(100));
        watch(&mut worst);
        for (k, flag) in flagged.iter_mut().enumerate() {
            let Some(v) = status(k) else { continue };
            let c = clock(&v, drifter);
            // Flagged (what proposals and votes go by): predicted half a
            // frame off within the horizon, or a quarter frame off and
            // heading there.
            if flag.is_none()
                && c["flagged"] == true
                && let (Some(left), Some(offset), Some(ppm)) =
                    (c["half_frame_in_s"].as_f64(), c["offset_ms"].as_f64(), c["drift_ppm"].as_f64())
            {
                assert!(offset.abs() < 20.0, "n{k} flagged n4 only once half a frame off: {c}");
                // The first estimates are the roughest: within a factor of
                // two of the truth on a loaded machine (a CI run saw 1800
                // ppm with readings disturbed to ±2 ms); the correction's
                // is held to 30 % below.
                assert!((500.0..2000.0).contains(&ppm), "n{k} measures n4's drift at {ppm} ppm: {c}");
                *flag = Some((started.elapsed().as_secs_f64(), offset, left));
            }
        }
        if let Some(v) = status(0) {
            assert!(consensus(&v)["flagged"] != true, "n0's consensus moved with one neighbour: {}", consensus(&v));
        }
        if let Some(c) = status(4).map(|v| consensus(&v))
            && own_flag.is_none()
            && c["flagged"] == true
            && let (Some(left), Some(offset), Some(ppm)) =
                (c["half_frame_in_s"].as_f64(), c["offset_ms"].as_f64(), c["drift_ppm"].as_f64())
        {
            own_flag = Some((started.elapsed().as_secs_f64(), offset, left, ppm));
        }
        if let Some(r) = status(4).map(|v| resync(&v))
            && r["outcome"] == "applied"
        {
            break r;
        }
    };
    for (k, f) in flagged.iter().enumerate() {
        if let Some((at, offset, left)) = f {
            eprintln!("n{k} predicted n4 half a frame off in {left:.1} s, at {at:.1} s, with n4 {offset:+.1} ms off");
        }
    }
    assert!(flagged.iter().flatten().count() >= 3, "a majority predicted it: {flagged:?}");
    // n4's own consensus filter saw it before the correction, less than
    // half a frame off, the swarm falling behind it at about 1000 ppm.
    let Some((at, offset, left, ppm)) = own_flag else { panic!("n4's consensus never flagged its clock") };
    eprintln!("n4 predicted itself half a frame from the swarm in {left:.1} s, at {at:.1} s, {offset:+.1} ms off");
    assert!(offset < 0.0 && offset > -20.0, "the swarm behind n4, less than half a frame: {offset} ms");
    assert!((-2000.0..-500.0).contains(&ppm), "the swarm falls behind n4 at about 1000 ppm: {ppm}");
    // The four others are in step with each other: none is flagged, and
    // what drift their noisy early readings show is far below n4's.
    let v0 = status(0).unwrap();
    for other in ["n1", "n2", "n3"] {
        let between = clock(&v0, other);
        assert!(between["drift_ppm"].as_f64().is_some_and(|p| p.abs() < 300.0), "n0 on {other}: {between}");
        assert!(between["offset_ms"].as_f64().is_some_and(|o| o.abs() < 5.0), "n0 on {other}: {between}");
        assert!(between["half_frame_in_s"].as_f64().is_none_or(|s| s > 60.0), "n0 on {other}: {between}");
    }
    let correction = &carried["proposal"]["correction"]["clock"];
    let rate = correction["rate_ppb"].as_i64().unwrap_or_default();
    assert!((rate + 1_000_000).abs() < 300_000, "n4 slows its clock by about 1000 ppm: {carried}");
    assert!(correction["offset_ns"].as_i64().is_some_and(|o| o < 0), "and steps it back: {carried}");
    let approvals = carried["approvals"].as_array().map_or(0, Vec::len);
    assert!(approvals >= 3 && carried["voters"] == 4, "a majority of five: {carried}");
    let at = carried["proposal"]["at_segment"].as_i64().unwrap();
    let applied = started.elapsed();
    // Back with the others: once its filter has learnt the new rate, n0
    // reads n4 within 3 ms, not heading half a frame off for a minute (what
    // rate is left, within 300 ppm, a later correction takes), and never
    // saw it half a frame off.
    let settled = loop {
        assert!(
            started.elapsed() < applied + Duration::from_secs(20),
            "n4 not back in step: {:?}",
            status(0).map(|v| clock(&v, drifter))
        );
        std::thread::sleep(Duration::from_millis(100));
        watch(&mut worst);
        let Some(v0) = status(0) else { continue };
        let c = clock(&v0, drifter);
        if let (Some(o), Some(p)) = (c["offset_ms"].as_f64(), c["drift_ppm"].as_f64())
            && o.abs() < 3.0
            && p.abs() < 300.0
            && c["half_frame_in_s"].as_f64().is_none_or(|s| s > 60.0)
            && started.elapsed() > applied + Duration::from_secs(6)
        {
            break c;
        }
    };
    eprintln!("corrected at segment {at}; n0 reads n4 at {settled}; at most {worst:.1} ms off all along");
    assert!(worst < 20.0, "n4 was half a frame off: {worst} ms");
    // Its segments stayed the others' bytes all along.
    let own = |k: usize, i: i64| std::fs::read(dir.path().join(format!("n{k}/ch/90p/seg-{i}.m4s"))).ok();
    let both: Vec<i64> = (at - 8..=at + 2).filter(|&i| own(0, i).is_some() && own(4, i).is_some()).collect();
    assert!(both.len() >= 8, "segments around the correction: {both:?}");
    for i in both {
        assert_eq!(own(4, i), own(0, i), "segment {i}");
    }
    // n4 logged the prediction (of at least the neighbours it proposed
    // on) and the vote.
    let logged = Instant::now();
    loop {
        let (code, events) = request(&admin, &token, "GET", "/api/v1/events?since=0", "");
        assert_eq!(code, 200, "{events}");
        let needles = [
            "s media clock drifts -",
            "channel ch: n4 proposes to correct its media clock by -",
            "channel ch: n4 will correct its media clock by -",
            "of 4 (n",
        ];
        if needles.iter().all(|n| events.contains(n)) {
            break;
        }
        assert!(logged.elapsed() < Duration::from_secs(5), "events missing ({needles:?}): {events}");
        std::thread::sleep(Duration::from_millis(250));
    }
}
