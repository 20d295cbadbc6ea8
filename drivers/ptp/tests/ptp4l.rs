//! The management client against real ptp4l (linuxptp from Debian): a
//! master and a slave in two network namespaces joined by a veth pair,
//! software timestamping, the slave with `free_running 1` so nothing
//! touches this machine's clock. The client's answers must match `pmc`'s.
//!
//! Needs root (namespaces), `ip` (iproute2) and linuxptp; it fails, never
//! skips, when one is missing (`./run test` installs them).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_ptp::{DataSet, Pmc, Response};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces and a veth pair, removed on drop.
struct Net {
    names: [String; 2],
}

impl Net {
    fn new() -> Self {
        let tag = std::process::id();
        let names = [format!("lsptp-m{tag}"), format!("lsptp-s{tag}")];
        for n in &names {
            run(Command::new("ip").args(["netns", "add", n]));
        }
        let net = Self { names };
        let [m, s] = &net.names;
        run(Command::new("ip")
            .args(["link", "add", "ptpm0", "netns", m, "type", "veth", "peer", "name", "ptps0", "netns", s]));
        for (ns, dev, addr) in [(m, "ptpm0", "10.77.0.1/24"), (s, "ptps0", "10.77.0.2/24")] {
            run(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A ptp4l process, killed (by PID) on drop.
struct Ptp4l(Child);

impl Drop for Ptp4l {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ptp4l(ns: &str, dev: &str, conf: &Path, log: &Path) -> Ptp4l {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "ptp4l", "-S", "-i", dev, "-f"])
        .arg(conf)
        .args(["-m", "-q"])
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Ptp4l(child)
}

fn config(dir: &Path, name: &str, extra: &str) -> (PathBuf, PathBuf) {
    let uds = dir.join(format!("{name}.sock"));
    let text = format!(
        "[global]\nuds_address {}\nlogSyncInterval -3\nlogAnnounceInterval -2\nannounceReceiptTimeout 3\n{extra}",
        uds.display()
    );
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, text).unwrap();
    (conf, uds)
}

/// `pmc` from linuxptp, in the slave's namespace, answering `GET what`.
fn pmc(ns: &str, uds: &Path, what: &str) -> String {
    let conf = uds.with_extension("pmc.conf");
    std::fs::write(&conf, format!("[global]\nuds_address {}\n", uds.display())).unwrap();
    run(Command::new("ip")
        .args(["netns", "exec", ns, "pmc", "-u", "-b", "0", "-f"])
        .arg(&conf)
        .arg(format!("GET {what}")))
}

/// Value of `key` in pmc's output.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("pmc printed no {key}:\n{text}"))
}

#[test]
fn answers_match_pmc_for_a_real_ptp4l_pair() {
    assert!(is_root(), "this test creates network namespaces and needs root (CI runs as root)");
    for tool in ["ip", "ptp4l", "pmc"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success();
        assert!(found, "this test needs `{tool}` (apt-get install iproute2 linuxptp; `./run test` installs them)");
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new();
    let [m, s] = &net.names;
    let (mconf, _muds) = config(dir.path(), "master", "priority1 100\n");
    let (sconf, suds) = config(dir.path(), "slave", "slaveOnly 1\nfree_running 1\n");
    let _master = ptp4l(m, "ptpm0", &mconf, &dir.path().join("master.log"));
    let _slave = ptp4l(s, "ptps0", &sconf, &dir.path().join("slave.log"));

    // The client runs in this test's namespace: the UNIX socket is a file,
    // reachable from any network namespace.
    let mut client = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let status = loop {
        assert!(Instant::now() < deadline, "the slave never reported a grandmaster: {last}");
        std::thread::sleep(Duration::from_millis(250));
        if client.is_none() {
            client = Pmc::connect(&suds, &dir.path().join("client.sock"), 0, Duration::from_millis(500)).ok();
        }
        let Some(c) = client.as_mut() else { continue };
        match c.get(DataSet::TimeStatusNp) {
            Ok(r) => match r.as_slice() {
                // Offsets come once the slave has measured the path delay.
                [Response::TimeStatus(ts)] if ts.gm_present && ts.master_offset_ns != 0 => break *ts,
                other => last = format!("{other:?}"),
            },
            Err(e) => last = e.to_string(),
        }
    };
    let c = client.as_mut().unwrap();

    // Grandmaster identity: ours, pmc's, and the master's own clock id.
    let text = pmc(s, &suds, "TIME_STATUS_NP");
    assert_eq!(status.gm_identity.to_string(), field(&text, "gmIdentity"), "{text}");
    let parent = match c.get(DataSet::ParentDataSet).unwrap().as_slice() {
        [Response::Parent(p)] => *p,
        other => panic!("{other:?}"),
    };
    assert_eq!(parent.gm_identity, status.gm_identity);
    assert_eq!(parent.gm_priority1, 100, "the master's priority1 from its config");
    let text = pmc(s, &suds, "PARENT_DATA_SET");
    assert_eq!(parent.gm_identity.to_string(), field(&text, "grandmasterIdentity"));
    assert_eq!(parent.gm_priority1.to_string(), field(&text, "grandmasterPriority1"));

    // Offsets: software timestamps on a veth pair, a free-running slave.
    // Ours and pmc's are read moments apart, so they agree in magnitude.
    let pmc_offset: i64 = field(&pmc(s, &suds, "TIME_STATUS_NP"), "master_offset").parse().unwrap();
    assert!(status.master_offset_ns.abs() < 1_000_000, "offset {} ns", status.master_offset_ns);
    assert!(pmc_offset != 0 && pmc_offset.abs() < 1_000_000, "pmc offset {pmc_offset} ns");
    eprintln!("grandmaster {}, offset {} ns (pmc: {pmc_offset} ns)", status.gm_identity, status.master_offset_ns);

    let port = match c.get(DataSet::PortDataSet).unwrap().as_slice() {
        [Response::Port(p)] => *p,
        other => panic!("{other:?}"),
    };
    let text = pmc(s, &suds, "PORT_DATA_SET");
    assert_eq!(format!("{:?}", port.state).to_uppercase(), field(&text, "portState"), "{text}");
    assert_eq!(port.port.to_string(), field(&text, "portIdentity"));
    let current = match c.get(DataSet::CurrentDataSet).unwrap().as_slice() {
        [Response::Current(cur)] => *cur,
        other => panic!("{other:?}"),
    };
    assert_eq!(current.steps_removed.to_string(), field(&pmc(s, &suds, "CURRENT_DATA_SET"), "stepsRemoved"));
    assert_eq!(c.malformed, 0);
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
