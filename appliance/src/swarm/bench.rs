//! `lockstep bench swarm`: gossip convergence and failure detection on
//! loopback, with in-process nodes (one protocol thread and one UDP
//! socket each, the same code the daemon runs).
//!
//! Baseline measured in the same run: the convergence time of a 2-node
//! swarm. Printed: N-node convergence (and its ratio to the baseline),
//! then, after the leader is stopped without leaving (as by kill -9), the
//! time until every other node marks it unhealthy and until they agree on
//! a new leader (and their ratio to the configured detection bound,
//! probe period + suspicion timeout).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::wire::FleetKey;
use super::{Settings, Swarm};

const PROBE: Duration = Duration::from_millis(500);
const SUSPECT: Duration = Duration::from_millis(1_500);

fn settings(node: usize, addr: SocketAddr, seed: SocketAddr, key: &FleetKey, n: usize) -> Settings {
    Settings {
        node: format!("b{node:02}"),
        bind: addr,
        advertise: addr,
        seeds: vec![seed],
        key: key.clone(),
        state_interval: Duration::from_millis(500),
        probe_period: PROBE,
        suspect_after: SUSPECT,
        expected_nodes: u32::try_from(n).unwrap_or(16),
        neighbours: 5,
        origin: None,
        frame_ns: 40e6,
        status_file: None,
        drift_horizon_s: 10.0,
    }
}

/// Free loopback addresses (bound once by the OS, then released).
fn addresses(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
    Ok(socks.iter().map(UdpSocket::local_addr).collect::<Result<_, _>>()?)
}

fn start(n: usize, key: &FleetKey) -> anyhow::Result<Vec<Swarm>> {
    let addrs = addresses(n)?;
    addrs.iter().enumerate().map(|(i, a)| Ok(Swarm::start(settings(i, *a, addrs[0], key, n))?)).collect()
}

/// Time until every node sees all the others healthy.
fn converge(nodes: &[Swarm], limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let done = nodes.iter().all(|s| {
            let v = s.view();
            v.peers.len() == nodes.len() - 1 && v.peers.values().all(|p| p.healthy)
        });
        if done {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < limit, "{} nodes did not converge within {limit:?}", nodes.len());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the benchmark with `n` nodes.
pub fn run(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!((3..=64).contains(&n), "--nodes must be between 3 and 64");
    let key = FleetKey::generate();
    let limit = Duration::from_secs(20);

    let pair = start(2, &key)?;
    let base = converge(&pair, limit)?;
    drop(pair);
    println!("baseline: 2 nodes converged in {:.2} s", base.as_secs_f64());

    let mut nodes = start(n, &key)?;
    let took = converge(&nodes, limit)?;
    let ratio = took.as_secs_f64() / base.as_secs_f64().max(1e-3);
    println!(
        "{n} nodes (all seeded with node 0) converged in {:.2} s ({ratio:.2}x the 2-node time)",
        took.as_secs_f64()
    );

    // Let the leader settle, then stop it without a goodbye.
    std::thread::sleep(Duration::from_secs(2));
    // The leader of node 0's group (groups are sorted ids cut in tens).
    let leader = nodes[0].view().leader.unwrap_or_default();
    let victim = nodes.iter().position(|s| s.view().node == leader).unwrap_or(0);
    let leader = nodes[victim].view().node;
    nodes.remove(victim).stop();
    let killed = Instant::now();
    let (mut detected, mut reelected) = (None, None);
    while detected.is_none() || reelected.is_none() {
        let views: Vec<_> = nodes.iter().map(Swarm::view).collect();
        anyhow::ensure!(
            killed.elapsed() < limit,
            "failure of {leader} not handled within {limit:?}: detected {detected:?}, leaders {:?}",
            views.iter().map(|v| (v.node.clone(), v.leader.clone())).collect::<Vec<_>>()
        );
        if detected.is_none() && views.iter().all(|v| v.peers.get(&leader).is_none_or(|p| !p.healthy)) {
            detected = Some(killed.elapsed());
        }
        // Groups of ten: members of one group must name the same leader,
        // from that group, never the stopped node.
        let agreed = views.iter().all(|v| {
            v.leader.as_ref().is_some_and(|l| *l != leader && v.group.contains(l))
                && views.iter().filter(|w| w.group == v.group).all(|w| w.leader == v.leader)
        });
        if reelected.is_none() && agreed {
            reelected = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (d, r) = (detected.unwrap_or_default(), reelected.unwrap_or_default());
    let bound = (PROBE + SUSPECT).as_secs_f64();
    println!(
        "leader {leader} stopped: unhealthy on all {} others after {:.2} s ({:.2}x the {bound:.1} s bound), every group agreed on a leader again after {:.2} s",
        nodes.len(),
        d.as_secs_f64(),
        d.as_secs_f64() / bound,
        r.as_secs_f64()
    );
    println!(
        "swarm: {n} nodes converged in {:.2} s ({ratio:.2}x baseline); leader loss detected in {:.2} s, re-elected in {:.2} s",
        took.as_secs_f64(),
        d.as_secs_f64(),
        r.as_secs_f64()
    );
    Ok(())
}
