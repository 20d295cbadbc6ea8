//! `lockstep demo --nodes N`: a local swarm of N appliance processes on
//! loopback, each with its own origin and output directory, sharing a
//! fleet key made for the run — with `--edge`, two CDN edges (nginx) in
//! front of the origins that players are steered between; and `lockstep
//! verify DIR`, which compares what the nodes wrote.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, Pacing, SourceKind};
use crate::package::read_manifest;
use crate::swarm::wire::FleetKey;

/// How to run the demo swarm.
#[derive(Debug, Clone)]
pub struct SwarmDemo {
    /// Output root: node k writes under `out/node-k/`.
    pub out: PathBuf,
    /// A file instead of the built-in source.
    pub input: Option<PathBuf>,
    /// Origin of node 1; node k listens on the next ports.
    pub listen: SocketAddr,
    /// Swarm UDP port of node 1; node k uses the next ports.
    pub swarm_port: u16,
    /// Nodes.
    pub nodes: u32,
    /// No origins.
    pub no_origin: bool,
    /// As fast as possible.
    pub fast: bool,
    /// `--duration` for every node.
    pub duration: Option<f64>,
    /// `--frames` for every node.
    pub frames: Option<u64>,
    /// Admin page and API of node 1 (node k on the next ports); `None`: none.
    pub admin: Option<SocketAddr>,
    /// CDN edges (nginx) in front of the origins, edge k on this port
    /// plus k-1; `None`: none.
    pub edge_port: Option<u16>,
}

/// Edges the demo runs with `--edge`: two pathways to steer between.
pub const DEMO_EDGES: u16 = 2;

/// The edges of the demo: edge k listens on `--edge-port` plus k-1; its
/// upstream is node ((k-1) mod N)+1's origin, the other origins its
/// backups, so the edges spread over the nodes.
pub fn edge_specs(d: &SwarmDemo, root: &Path) -> anyhow::Result<Vec<crate::edge::nginx::EdgeSpec>> {
    let Some(base) = d.edge_port else { return Ok(Vec::new()) };
    anyhow::ensure!(!d.no_origin, "--edge needs the origins: leave out --no-origin");
    let origins: Vec<SocketAddr> = (0..d.nodes)
        .map(|i| {
            let p = d.listen.port().checked_add(u16::try_from(i)?).context("origin port out of range")?;
            Ok(SocketAddr::new(d.listen.ip(), p))
        })
        .collect::<anyhow::Result<_>>()?;
    (1..=DEMO_EDGES)
        .map(|k| {
            let port = base.checked_add(k - 1).context("--edge-port out of range")?;
            let mut upstream = origins.clone();
            upstream.rotate_left(usize::from(k - 1) % origins.len().max(1));
            Ok(crate::edge::nginx::EdgeSpec {
                id: format!("edge-{k}"),
                listen: SocketAddr::new(d.listen.ip(), port),
                origins: upstream,
                dir: root.join(format!("edge-{k}")),
            })
        })
        .collect()
}

/// Name of the file holding the demo's admin password (mode 600).
pub const PASSWORD_FILE: &str = "admin-password";

/// The configuration of node `k` (1-based).
pub fn node_config(d: &SwarmDemo, k: u32, root: &Path) -> anyhow::Result<Config> {
    let mut c = Config::embedded_demo();
    let port = |base: u16, k: u32| base.checked_add(u16::try_from(k - 1).unwrap_or(u16::MAX));
    c.appliance.id = format!("node-{k}");
    c.output.dir = root.join(format!("node-{k}"));
    if let Some(path) = &d.input {
        c.source.kind = SourceKind::File;
        c.source.path = Some(std::fs::canonicalize(path).with_context(|| format!("--input {}", path.display()))?);
    }
    if d.fast {
        c.source.pacing = Pacing::Fast;
    }
    c.origin.listen = if d.no_origin {
        None
    } else {
        let p = port(d.listen.port(), k).context("origin port out of range")?;
        Some(SocketAddr::new(d.listen.ip(), p).to_string())
    };
    let swarm_addr = |k: u32| port(d.swarm_port, k).map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    c.swarm.enabled = true;
    c.swarm.bind = swarm_addr(k).context("swarm port out of range")?;
    c.swarm.seeds = (1..=d.nodes).filter(|&j| j != k).filter_map(swarm_addr).collect();
    c.swarm.fleet_key_file = Some(root.join("fleet.key"));
    c.swarm.status_file = Some(c.output.dir.join("swarm.json"));
    c.swarm.expected_nodes = d.nodes.max(2);
    c.steering.pathways =
        edge_specs(d, root)?.iter().map(|e| crate::config::PathwayConfig { id: e.id.clone(), url: e.url() }).collect();
    if let Some(admin) = d.admin {
        let p = port(admin.port(), k).context("admin port out of range")?;
        c.admin.listen = Some(SocketAddr::new(admin.ip(), p).to_string());
        c.admin.password_file = Some(root.join("admin.passwd"));
    }
    c.validate()?;
    Ok(c)
}

/// Checks that every address node `k` (1-based) of the demo would
/// listen on is free, naming the option that moves it when one is not.
fn check_ports(k: u32, c: &Config) -> anyhow::Result<()> {
    let taken = |what: &str, addr: &str, e: std::io::Error, option: &str, off: &str| {
        anyhow::anyhow!(
            "node-{k}'s {what} cannot listen on {addr}: {e}; node k uses the port of {option} plus k-1: \
             choose free ports with {option}{off}"
        )
    };
    if let Some(addr) = &c.origin.listen {
        std::net::TcpListener::bind(addr).map_err(|e| taken("origin", addr, e, "--listen", " or --no-origin"))?;
    }
    if let Some(addr) = &c.admin.listen {
        std::net::TcpListener::bind(addr).map_err(|e| taken("admin page", addr, e, "--admin", " or --no-admin"))?;
    }
    let swarm = c.swarm.bind.to_string();
    std::net::UdpSocket::bind(c.swarm.bind).map_err(|e| taken("swarm", &swarm, e, "--swarm-port", ""))?;
    Ok(())
}

/// Files the demo made for a run that did not start: removed, so a
/// failed start leaves no key or password behind.
struct MadeForRun(Vec<PathBuf>);

impl MadeForRun {
    /// The run started: the files stay.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for MadeForRun {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Asks every child to stop (SIGTERM).
fn terminate(children: &[(u32, Child)]) {
    for (_, c) in children {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// How long a node has to start listening before the demo gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until node `k` accepts connections on its origin (or its admin
/// page; a node with neither is taken as started). An error when it
/// exits first or does not within [`START_TIMEOUT`].
fn wait_started(k: u32, child: &mut Child, c: &Config) -> anyhow::Result<()> {
    let Some(addr) = c.origin.listen.as_ref().or(c.admin.listen.as_ref()) else { return Ok(()) };
    let addr: SocketAddr = addr.parse().with_context(|| format!("node-{k}: address {addr}"))?;
    let since = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            // Done already (a short --frames run) is a start.
            anyhow::ensure!(status.success(), "node-{k} did not start: it exited with {status} (its error is above)");
            return Ok(());
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            since.elapsed() < START_TIMEOUT,
            "node-{k} did not start listening on {addr} within {} s",
            START_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the demo swarm until every node stops or `stop` is set.
///
/// Everything a node would need is checked before anything is written or
/// started (the input, every port); the nodes' lines are printed once
/// each listens. A node that fails to start stops the others, and the
/// key and password made for the run are removed.
pub fn run(d: &SwarmDemo, stop: &Arc<AtomicBool>) -> anyhow::Result<bool> {
    anyhow::ensure!((2..=16).contains(&d.nodes), "--nodes must be between 1 and 16");
    let root = std::path::absolute(&d.out).with_context(|| format!("--out {}", d.out.display()))?;
    let configs = (1..=d.nodes).map(|k| node_config(d, k, &root)).collect::<anyhow::Result<Vec<_>>>()?;
    for (k, c) in (1..).zip(&configs) {
        check_ports(k, c)?;
    }
    let edge_specs = edge_specs(d, &root)?;
    for e in &edge_specs {
        std::net::TcpListener::bind(e.listen).map_err(|err| {
            anyhow::anyhow!(
                "{} cannot listen on {}: {err}; edge k uses the port of --edge-port plus k-1: choose free ports \
                 with --edge-port",
                e.id,
                e.listen
            )
        })?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("--out {}", root.display()))?;
    let key_path = root.join("fleet.key");
    let mut made = MadeForRun(vec![key_path.clone()]);
    crate::admin::auth::write_private(&key_path, &FleetKey::generate().to_hex())?;
    if d.admin.is_some() {
        // A password made for the run; no password is built in.
        made.0.extend([root.join(PASSWORD_FILE), root.join("admin.passwd")]);
        let password = hex::encode(crate::admin::auth::random_bytes::<12>()?);
        crate::admin::auth::write_private(&root.join(PASSWORD_FILE), &format!("{password}\n"))?;
        crate::admin::auth::set_password(&root.join("admin.passwd"), &password)?;
    }
    let exe = std::env::current_exe().context("cannot find the lockstep binary")?;
    let mut children: Vec<(u32, Child)> = Vec::new();
    let mut edges = Vec::new();
    let started = spawn_all(d, &exe, &configs, &mut children).and_then(|()| {
        for spec in edge_specs {
            edges.push(crate::edge::nginx::Edge::start(spec)?);
        }
        Ok(())
    });
    if let Err(e) = started {
        terminate(&children);
        for (_, c) in &mut children {
            let _ = c.wait();
        }
        return Err(e);
    }
    made.keep();
    for ((k, child), config) in children.iter().zip(&configs) {
        let origin = match &config.origin.listen {
            Some(l) => format!("http://{l}/{}/master.m3u8", config.channel.id),
            None => "none".into(),
        };
        let admin = config.admin.listen.as_ref().map_or_else(|| "none".into(), |l| format!("http://{l}/"));
        eprintln!(
            "lockstep demo: node-{k} pid {} origin {origin} admin {admin} swarm {} output {}",
            child.id(),
            config.swarm.bind,
            config.output.dir.display()
        );
    }
    for e in &edges {
        let names: Vec<String> =
            e.spec.origins.iter().map(|o| node_of(&configs, *o).unwrap_or_else(|| o.to_string())).collect();
        eprintln!(
            "lockstep demo: {} pid {} url {} (nginx in front of {}; backups {})",
            e.spec.id,
            e.pid(),
            e.spec.url(),
            names.first().map_or("", String::as_str),
            names.get(1..).unwrap_or_default().join(", ")
        );
    }
    if let (Some(first), false) = (configs.first().and_then(|c| c.origin.listen.as_ref()), edges.is_empty()) {
        eprintln!(
            "lockstep demo: steered playlist (players move between the edges) http://{first}/steered/{}/master.m3u8",
            configs[0].channel.id
        );
    }
    if d.admin.is_some() {
        eprintln!("lockstep demo: admin password (made for this run) in {}", root.join(PASSWORD_FILE).display());
    }
    eprintln!(
        "lockstep demo: {} nodes; Ctrl-C stops them; `lockstep verify {}` compares their output",
        d.nodes,
        root.display()
    );
    let mut ok = true;
    let mut signalled = false;
    let mut gone: Vec<String> = Vec::new();
    while !children.is_empty() {
        if stop.load(Ordering::Relaxed) && !signalled {
            terminate(&children);
            signalled = true;
        }
        let mut still = Vec::new();
        for (k, mut c) in children {
            match c.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("lockstep demo: node-{k} exited with {status}");
                        ok = false;
                    }
                }
                Ok(None) => still.push((k, c)),
                Err(e) => {
                    eprintln!("lockstep demo: node-{k}: {e}");
                    ok = false;
                }
            }
        }
        children = still;
        for e in &mut edges {
            if !gone.contains(&e.spec.id) && !e.running() {
                eprintln!("lockstep demo: {} (nginx) is gone; players are steered to the other edge", e.spec.id);
                gone.push(e.spec.id.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(ok)
}

/// The name of the node whose origin is `addr`.
fn node_of(configs: &[Config], addr: SocketAddr) -> Option<String> {
    configs
        .iter()
        .find(|c| c.origin.listen.as_deref() == Some(addr.to_string().as_str()))
        .map(|c| c.appliance.id.clone())
}

/// Writes each node's configuration and starts it, then waits until
/// every node listens; `children` holds those started, also on error.
fn spawn_all(d: &SwarmDemo, exe: &Path, configs: &[Config], children: &mut Vec<(u32, Child)>) -> anyhow::Result<()> {
    for (k, config) in (1..).zip(configs) {
        std::fs::create_dir_all(&config.output.dir)?;
        let path = config.output.dir.join("lockstep.toml");
        std::fs::write(&path, toml::to_string(config)?)?;
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--config"]).arg(&path);
        if let Some(s) = d.duration {
            cmd.arg("--duration").arg(s.to_string());
        }
        if let Some(f) = d.frames {
            cmd.arg("--frames").arg(f.to_string());
        }
        let child = cmd.spawn().with_context(|| format!("starting node-{k}"))?;
        children.push((k, child));
    }
    for ((k, child), config) in children.iter_mut().zip(configs) {
        wait_started(*k, child, config)?;
    }
    Ok(())
}

/// What `lockstep verify` found for one track.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrackReport {
    /// Node → (first index, last index, segments).
    pub nodes: BTreeMap<String, (i64, i64, usize)>,
    /// Indices published by more than one node.
    pub shared: usize,
    /// Of those, indices whose bytes differ between nodes.
    pub conflicts: Vec<i64>,
    /// Node → indices missing inside its own range.
    pub gaps: BTreeMap<String, Vec<i64>>,
    /// Segment files on disk re-hashed (files that left the window are
    /// compared by their manifest entries only).
    pub rehashed: usize,
    /// Node → indices whose file on disk does not hash to its manifest.
    pub altered: BTreeMap<String, Vec<i64>>,
    /// Node → (combined segments checked, indices whose bytes no node's
    /// manifest has).
    pub combined: BTreeMap<String, (usize, Vec<i64>)>,
}

impl TrackReport {
    /// Indices whose bytes are wrong anywhere: differing between nodes,
    /// differing from their manifest, or in a combined output.
    pub fn problems(&self) -> usize {
        self.conflicts.len()
            + self.altered.values().map(Vec::len).sum::<usize>()
            + self.combined.values().map(|(_, bad)| bad.len()).sum::<usize>()
    }
}

/// SHA-256 of a file, hex; `None` when it cannot be read (gone).
fn file_sha256(path: &Path) -> Option<String> {
    use sha2::Digest;
    std::fs::read(path).ok().map(|b| hex::encode(sha2::Sha256::digest(&b)))
}

/// Compares the segments of every node under `dir`
/// (`node-*/<channel>/<track>/manifest.jsonl`): every file still on disk is
/// hashed again and checked against its manifest entry, the entries are
/// compared between nodes, and each node's combined output
/// (`node-*/combined/<channel>/<track>/`) is checked against them.
pub fn verify(dir: &Path) -> anyhow::Result<BTreeMap<String, TrackReport>> {
    let mut by_track: BTreeMap<String, BTreeMap<String, BTreeMap<i64, String>>> = BTreeMap::new();
    let mut rehashed: BTreeMap<String, usize> = BTreeMap::new();
    let mut altered: BTreeMap<String, BTreeMap<String, Vec<i64>>> = BTreeMap::new();
    // Per track: segment file name → index (the same name on every node).
    let mut names: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    nodes.sort();
    for node in nodes {
        let name = node.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Directories that vanish or cannot be read while the nodes run
        // are skipped: only manifests are compared.
        let dirs = |p: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        };
        for channel in dirs(&node).into_iter().filter(|c| !c.ends_with("combined")) {
            for track in dirs(&channel) {
                let manifest = track.join("manifest.jsonl");
                if !manifest.exists() {
                    continue;
                }
                let key = format!(
                    "{}/{}",
                    channel.file_name().unwrap_or_default().to_string_lossy(),
                    track.file_name().unwrap_or_default().to_string_lossy()
                );
                let entries = read_manifest(&manifest).with_context(|| format!("{}", manifest.display()))?;
                for e in &entries {
                    names.entry(key.clone()).or_default().insert(e.file.clone(), e.index);
                    let Some(actual) = file_sha256(&track.join(&e.file)) else { continue };
                    *rehashed.entry(key.clone()).or_default() += 1;
                    if actual != e.sha256 {
                        altered.entry(key.clone()).or_default().entry(name.clone()).or_default().push(e.index);
                    }
                }
                let hashes = entries.into_iter().map(|e| (e.index, e.sha256)).collect();
                by_track.entry(key).or_default().insert(name.clone(), hashes);
            }
        }
    }
    anyhow::ensure!(
        !by_track.is_empty(),
        "no node output under {} (want node-*/<channel>/<track>/manifest.jsonl)",
        dir.display()
    );
    let mut out = BTreeMap::new();
    for (track, per_node) in by_track {
        let mut r = TrackReport {
            rehashed: rehashed.remove(&track).unwrap_or(0),
            altered: altered.remove(&track).unwrap_or_default(),
            combined: check_combined(dir, &track, &per_node, names.get(&track)),
            ..TrackReport::default()
        };
        let mut all: BTreeMap<i64, Vec<&String>> = BTreeMap::new();
        for (node, hashes) in &per_node {
            let (first, last) =
                (hashes.keys().next().copied().unwrap_or(0), hashes.keys().last().copied().unwrap_or(0));
            r.nodes.insert(node.clone(), (first, last, hashes.len()));
            let gaps: Vec<i64> = (first..=last).filter(|i| !hashes.contains_key(i)).collect();
            if !gaps.is_empty() {
                r.gaps.insert(node.clone(), gaps);
            }
            for (i, h) in hashes {
                all.entry(*i).or_default().push(h);
            }
        }
        for (i, hs) in all {
            if hs.len() > 1 {
                r.shared += 1;
                if hs.iter().any(|h| *h != hs[0]) {
                    r.conflicts.push(i);
                }
            }
        }
        out.insert(track, r);
    }
    Ok(out)
}

/// Each node's combined output of `track` (`<channel>/<track>`): every
/// segment its playlist lists must hash to what some node's manifest says
/// for that index.
fn check_combined(
    dir: &Path,
    track: &str,
    per_node: &BTreeMap<String, BTreeMap<i64, String>>,
    names: Option<&BTreeMap<String, i64>>,
) -> BTreeMap<String, (usize, Vec<i64>)> {
    let mut out = BTreeMap::new();
    for node in per_node.keys() {
        let combined = dir.join(node).join("combined").join(track);
        let Ok(playlist) = std::fs::read_to_string(combined.join("playlist.m3u8")) else { continue };
        let (mut checked, mut bad) = (0, Vec::new());
        for file in playlist.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let Some(index) = names.and_then(|n| n.get(file)).copied() else { continue };
            // A segment that left the window meanwhile is not counted.
            let Some(actual) = file_sha256(&combined.join(file)) else { continue };
            checked += 1;
            if !per_node.values().any(|hashes| hashes.get(&index) == Some(&actual)) {
                bad.push(index);
            }
        }
        out.insert(node.clone(), (checked, bad));
    }
    out
}

/// `lockstep verify` in words: one line per track, then the verdict. A
/// node whose last index is behind the newest by more than one segment
/// is named as having stopped early (killed, or ended first).
pub fn describe(report: &BTreeMap<String, TrackReport>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stopped: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (track, r) in report {
        let nodes: Vec<String> =
            r.nodes.iter().map(|(n, (a, b, c))| format!("{n} has {c} segments ({a} to {b})")).collect();
        let mut line = format!("{track}: {}; {} indices on more than one node", nodes.join(", "), r.shared);
        if !r.conflicts.is_empty() {
            line += &format!("; bytes differ at {}", list(&r.conflicts));
        }
        for (node, gaps) in &r.gaps {
            line += &format!("; {node} misses {}", list(gaps));
        }
        line += &format!("; {} files hashed again", r.rehashed);
        for (node, indices) in &r.altered {
            line += &format!("; {node}'s files differ from its manifest at {}", list(indices));
        }
        for (node, (checked, bad)) in &r.combined {
            line += &format!("; {node}'s combined output: {checked} checked");
            if !bad.is_empty() {
                line += &format!(", wrong bytes at {}", list(bad));
            }
        }
        lines.push(line);
        let newest = r.nodes.values().map(|(_, last, _)| *last).max().unwrap_or(0);
        for (node, (_, last, _)) in &r.nodes {
            if *last < newest - 1 {
                let e = stopped.entry(node.clone()).or_insert((*last, newest));
                *e = (e.0.max(*last), e.1.max(newest));
            }
        }
    }
    for (node, (last, newest)) in &stopped {
        lines.push(format!("{node} stopped early: its last segment is {last}, the others went on to {newest}"));
    }
    let problems: usize = report.values().map(TrackReport::problems).sum();
    let shared: usize = report.values().map(|r| r.shared).sum();
    lines.push(match (problems, shared) {
        (0, 0) => "verdict: nothing to compare (no index was published by two nodes)".into(),
        (0, n) => format!("verdict: identical (all {n} shared segments have the same bytes on every node)"),
        (p, _) => format!(
            "verdict: DIFFERENT ({p} segments with wrong bytes: between nodes, against a manifest or in a combined output)"
        ),
    });
    lines
}

/// `1, 2, 5` (at most 10, then how many more).
fn list(indices: &[i64]) -> String {
    let mut s: Vec<String> = indices.iter().take(10).map(i64::to_string).collect();
    if indices.len() > 10 {
        s.push(format!("and {} more", indices.len() - 10));
    }
    s.join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn track(nodes: &[(&str, i64, i64)], shared: usize, conflicts: &[i64]) -> TrackReport {
        TrackReport {
            nodes: nodes.iter().map(|(n, a, b)| ((*n).to_string(), (*a, *b, (b - a + 1) as usize))).collect(),
            shared,
            conflicts: conflicts.to_vec(),
            ..TrackReport::default()
        }
    }

    #[test]
    fn verify_says_in_words_what_agrees_who_stopped_early_and_its_verdict() {
        let report: BTreeMap<String, TrackReport> = [
            ("main/180p".to_string(), track(&[("node-1", 10, 14), ("node-2", 10, 20)], 5, &[])),
            ("main/360p".to_string(), track(&[("node-1", 10, 14), ("node-2", 10, 20)], 5, &[])),
        ]
        .into();
        let lines = describe(&report);
        assert_eq!(
            lines[0],
            "main/180p: node-1 has 5 segments (10 to 14), node-2 has 11 segments (10 to 20); 5 indices on more than \
             one node; 0 files hashed again"
        );
        assert_eq!(lines[2], "node-1 stopped early: its last segment is 14, the others went on to 20");
        assert_eq!(lines[3], "verdict: identical (all 10 shared segments have the same bytes on every node)");
        let mut bad = report.clone();
        if let Some(r) = bad.get_mut("main/360p") {
            r.conflicts = vec![12];
        }
        assert!(describe(&bad).last().is_some_and(|l| l.starts_with("verdict: DIFFERENT (1 segments")));
        assert!(describe(&bad)[1].contains("; bytes differ at 12;"));
        assert!(describe(&BTreeMap::new()).last().is_some_and(|l| l.starts_with("verdict: nothing to compare")));
    }

    /// Writes node `node`'s segments `(index, bytes)` of main/180p with a
    /// manifest that says `claimed` bytes for each.
    fn node_output(dir: &Path, node: &str, segments: &[(i64, &[u8], &[u8])]) {
        use sha2::Digest;
        let track = dir.join(node).join("main/180p");
        std::fs::create_dir_all(&track).unwrap();
        let mut manifest = String::new();
        for (index, bytes, claimed) in segments {
            let file = format!("seg-{index}.m4s");
            std::fs::write(track.join(&file), bytes).unwrap();
            let entry = crate::package::ManifestEntry {
                index: *index,
                file,
                first_unit: 0,
                samples: 1,
                base_time: 0,
                timescale: 90_000,
                duration: 1.0,
                bytes: bytes.len() as u64,
                sha256: hex::encode(sha2::Sha256::digest(claimed)),
                input_sha256: String::new(),
                program_date_time: String::new(),
                producer: node.into(),
                analysis: None,
            };
            manifest += &format!("{}\n", serde_json::to_string(&entry).unwrap());
        }
        std::fs::write(track.join("manifest.jsonl"), manifest).unwrap();
    }

    #[test]
    fn verify_hashes_the_files_not_only_the_manifests_and_checks_the_combined_output() {
        let dir = tempfile::tempdir().unwrap();
        node_output(dir.path(), "node-1", &[(1, b"one", b"one"), (2, b"two", b"two")]);
        // node-2's manifest agrees with node-1's, but its file 2 does not.
        node_output(dir.path(), "node-2", &[(1, b"one", b"one"), (2, b"TWO", b"two")]);
        let combined = dir.path().join("node-1/combined/main/180p");
        std::fs::create_dir_all(&combined).unwrap();
        std::fs::write(combined.join("seg-1.m4s"), b"one").unwrap();
        std::fs::write(combined.join("seg-2.m4s"), b"bad").unwrap();
        std::fs::write(combined.join("playlist.m3u8"), "#EXTM3U\n#EXTINF:1.0,\nseg-1.m4s\n#EXTINF:1.0,\nseg-2.m4s\n")
            .unwrap();
        let report = verify(dir.path()).unwrap();
        let r = &report["main/180p"];
        assert_eq!(r.shared, 2);
        assert!(r.conflicts.is_empty(), "the manifests agree");
        assert_eq!(r.rehashed, 4);
        assert_eq!(r.altered.get("node-2"), Some(&vec![2]), "{r:?}");
        assert_eq!(r.combined.get("node-1"), Some(&(2, vec![2])), "{r:?}");
        assert!(!r.combined.contains_key("node-2"), "node-2 has no combined output");
        assert_eq!(r.problems(), 2);
        assert!(describe(&report).last().is_some_and(|l| l.starts_with("verdict: DIFFERENT")));
    }
}
