//! A PTP test bed with real linuxptp (feature `testbed`, for tests only):
//! two network namespaces joined by a veth pair, `ptp4l -S` (software
//! timestamping) as master in one and as slave in the other. The slave
//! runs with `free_running 1`, so nothing changes this machine's clock;
//! it still measures and reports the master offset. Each ptp4l has its
//! own management socket. Namespaces and processes are removed on drop.
//!
//! Master and slave share this machine's clock, so the offset the slave
//! measures is about zero. [`Testbed::with_proxy`] puts a [`proxy::Proxy`]
//! of the project's own in a third namespace between them, which shifts
//! the master's timestamps by a known offset (and drift): a real offset
//! that pmc reports and a daemon must follow.
//!
//! Needs root (namespaces), `ip` (iproute2) and linuxptp: [`Testbed::start`]
//! panics naming what is missing, it never skips.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod proxy;

/// Runs `cmd`, panics with its stderr if it fails, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics unless this runs as root with `ip`, `ptp4l` and `pmc` installed.
pub fn require_tools() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(uid.trim(), "0", "the PTP test bed creates network namespaces and needs root (CI runs as root)");
    for tool in ["ip", "ptp4l", "pmc"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success();
        assert!(
            found,
            "the PTP test bed needs `{tool}` (apt-get install iproute2 linuxptp; `./run test` installs them)"
        );
    }
}

/// A ptp4l process, killed (by PID) on drop.
#[derive(Debug)]
struct Ptp4l(Child);

impl Drop for Ptp4l {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Master and slave ptp4l in two namespaces (three with the proxy).
#[derive(Debug)]
pub struct Testbed {
    dir: tempfile::TempDir,
    /// Master's, slave's, and the proxy's when there is one.
    namespaces: Vec<String>,
    /// Master's and slave's interface.
    devices: [String; 2],
    /// The proxy between them, when there is one.
    pub proxy: Option<proxy::Proxy>,
    master: Option<Ptp4l>,
    slave: Option<Ptp4l>,
    master_conf: PathBuf,
    /// The slave's management socket (`uds_address`).
    pub slave_socket: PathBuf,
    /// The master's management socket.
    pub master_socket: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Testbed {
    /// Creates the namespaces and starts master and slave. Sync 8/s,
    /// announce 4/s, announce timeout 3 intervals.
    pub fn start() -> Self {
        Self::build(false)
    }

    /// As [`Testbed::start`], with the slave behind a [`proxy::Proxy`]
    /// (shift 0 until [`proxy::Proxy::set`]).
    pub fn with_proxy() -> Self {
        Self::build(true)
    }

    fn build(proxied: bool) -> Self {
        require_tools();
        let tag = format!("{}{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed));
        let mut namespaces = vec![format!("lsptp-m{tag}"), format!("lsptp-s{tag}")];
        if proxied {
            namespaces.push(format!("lsptp-p{tag}"));
        }
        let devices = [format!("lpm{tag}"), format!("lps{tag}")];
        let dir = tempfile::tempdir().unwrap();
        for n in &namespaces {
            run(Command::new("ip").args(["netns", "add", n]));
        }
        let mut bed = Self {
            master_conf: PathBuf::new(),
            slave_socket: PathBuf::new(),
            master_socket: PathBuf::new(),
            dir,
            namespaces,
            devices,
            proxy: None,
            master: None,
            slave: None,
        };
        let (m, s, [dm, ds]) = (&bed.namespaces[0], &bed.namespaces[1], &bed.devices);
        let up = |ns: &str, dev: &str, addr: &str| {
            run(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        };
        if let Some(p) = bed.namespaces.get(2) {
            // master 10.77.1.1 ─ 10.77.1.2 proxy 10.77.2.1 ─ 10.77.2.2 slave
            let (pm, ps) = (format!("lxm{tag}"), format!("lxs{tag}"));
            run(Command::new("ip")
                .args(["link", "add", dm, "netns", m, "type", "veth", "peer", "name", &pm, "netns", p]));
            run(Command::new("ip")
                .args(["link", "add", ds, "netns", s, "type", "veth", "peer", "name", &ps, "netns", p]));
            up(m, dm, "10.77.1.1/24");
            up(p, &pm, "10.77.1.2/24");
            up(p, &ps, "10.77.2.1/24");
            up(s, ds, "10.77.2.2/24");
            bed.proxy = Some(proxy::Proxy::start(
                p,
                proxy::Side { device: pm, address: std::net::Ipv4Addr::new(10, 77, 1, 2) },
                proxy::Side { device: ps, address: std::net::Ipv4Addr::new(10, 77, 2, 1) },
            ));
        } else {
            run(Command::new("ip")
                .args(["link", "add", dm, "netns", m, "type", "veth", "peer", "name", ds, "netns", s]));
            up(m, dm, "10.77.0.1/24");
            up(s, ds, "10.77.0.2/24");
        }
        let (mconf, muds) = bed.config("master", "priority1 100\n");
        let (sconf, suds) = bed.config("slave", "slaveOnly 1\nfree_running 1\n");
        bed.master_conf = mconf;
        bed.master_socket = muds;
        bed.slave_socket = suds;
        bed.slave = Some(bed.ptp4l(1, &sconf, "slave.log"));
        bed.start_master();
        bed
    }

    fn config(&self, name: &str, extra: &str) -> (PathBuf, PathBuf) {
        let uds = self.dir.path().join(format!("{name}.sock"));
        let text = format!(
            "[global]\nuds_address {}\nnetwork_transport UDPv4\nlogSyncInterval -3\nlogAnnounceInterval -2\nannounceReceiptTimeout 3\n{extra}",
            uds.display()
        );
        let conf = self.dir.path().join(format!("{name}.conf"));
        std::fs::write(&conf, text).unwrap();
        (conf, uds)
    }

    fn ptp4l(&self, which: usize, conf: &Path, log: &str) -> Ptp4l {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[which], "ptp4l", "-S", "-i", &self.devices[which], "-f"])
            .arg(conf)
            .args(["-m", "-q"])
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Ptp4l(child)
    }

    /// Starts (or restarts) the master.
    pub fn start_master(&mut self) {
        if self.master.is_none() {
            self.master = Some(self.ptp4l(0, &self.master_conf.clone(), "master.log"));
        }
    }

    /// Kills the master: the slave loses its grandmaster.
    pub fn stop_master(&mut self) {
        self.master = None;
    }

    /// Directory for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `pmc` from linuxptp asking the slave `GET what`; its output.
    pub fn pmc(&self, what: &str) -> String {
        let conf = self.dir.path().join("pmc.conf");
        std::fs::write(&conf, format!("[global]\nuds_address {}\n", self.slave_socket.display())).unwrap();
        run(Command::new("ip")
            .args(["netns", "exec", &self.namespaces[1], "pmc", "-u", "-b", "0", "-f"])
            .arg(&conf)
            .arg(format!("GET {what}")))
    }

    /// The logs of master and slave, for failure messages.
    pub fn logs(&self) -> String {
        ["master.log", "slave.log"]
            .iter()
            .map(|l| format!("--- {l}\n{}", std::fs::read_to_string(self.dir.path().join(l)).unwrap_or_default()))
            .collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.master = None;
        self.slave = None;
        self.proxy = None;
        for n in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Value of `key` in pmc's output.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("pmc printed no {key}:\n{text}"))
}
