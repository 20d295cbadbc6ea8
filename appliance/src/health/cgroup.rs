//! The daemon's cgroup: CPU used and throttled, memory in use against its
//! limit, and the memory limit's events. On the appliance (cgroup v2)
//! systemd puts the daemon in `lockstep.service`'s cgroup, where
//! `CPUQuota=` and `MemoryMax=` (or a drill) set `cpu.max` and
//! `memory.max`. On a hybrid system the `cpu` and `memory` controllers
//! are cgroup v1 hierarchies (`/sys/fs/cgroup/cpu`, `…/memory`) and the
//! figures the v2 directory lacks are read there instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::pressure::AllPressure;

/// The daemon's cgroup: its cgroup v2 directory and, on a hybrid system,
/// its directories in the v1 `cpu` and `memory` hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// Its directory under the cgroup2 mount.
    pub dir: PathBuf,
    /// Its directory in the v1 `cpu` hierarchy, where one is mounted.
    pub v1_cpu: Option<PathBuf>,
    /// Its directory in the v1 `memory` hierarchy, where one is mounted.
    pub v1_memory: Option<PathBuf>,
}

/// Where cgroup v1 hierarchies are mounted on the systems the appliance
/// runs on (Debian's and systemd's layout).
pub const V1_MOUNT: &str = "/sys/fs/cgroup";

/// A v1 `memory.limit_in_bytes` this large means no limit (the kernel
/// writes the largest page-aligned value).
const V1_NO_LIMIT: u64 = 1 << 62;

/// One sample of a cgroup's figures; a file missing gives `None` (the
/// root cgroup has no `memory.max`, a controller may be off).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CgroupSample {
    /// The cgroup, as `/proc/self/cgroup` names it.
    pub path: String,
    /// CPU time used, µs (`cpu.stat` `usage_usec`).
    pub cpu_usage_us: Option<u64>,
    /// Time throttled by `cpu.max`, µs (`throttled_usec`).
    pub cpu_throttled_us: Option<u64>,
    /// Periods throttled (`nr_throttled`).
    pub cpu_throttled_periods: Option<u64>,
    /// The CPU limit, in CPUs (`cpu.max` quota / period); `None`: none.
    pub cpu_limit: Option<f64>,
    /// Memory in use, bytes (`memory.current`).
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes (`memory.max`); `None`: none.
    pub memory_limit_bytes: Option<u64>,
    /// `memory.events`: times over `memory.high`, at `memory.max`, out of
    /// memory, and tasks killed for it.
    pub memory_events: MemoryEvents,
    /// The cgroup's own pressure (`*.pressure`).
    pub pressure: AllPressure,
}

/// Counters of `memory.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    /// Reclaim forced by `memory.high`.
    pub high: u64,
    /// Allocations that hit `memory.max`.
    pub max: u64,
    /// Out-of-memory events.
    pub oom: u64,
    /// Tasks killed by the OOM killer.
    pub oom_kill: u64,
}

impl Cgroup {
    /// The cgroup v2 this process is in, from `/proc/self/cgroup`
    /// (`0::/system.slice/lockstep.service`), under the cgroup2 mount
    /// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
    /// system); `None` without cgroup v2.
    pub fn own() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").exists())?;
        let mut own = Self::from_proc(&text, mount)?;
        // Only hierarchies that are mounted where expected count.
        own.v1_cpu = own.v1_cpu.filter(|d| d.join("cpu.cfs_quota_us").exists());
        own.v1_memory = own.v1_memory.filter(|d| d.join("memory.usage_in_bytes").exists());
        Some(own)
    }

    /// The cgroup a `/proc/<pid>/cgroup` text names: its v2 directory
    /// under `mount`, its v1 `cpu` and `memory` ones under [`V1_MOUNT`].
    pub fn from_proc(text: &str, mount: &Path) -> Option<Self> {
        let v2 = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let v1 = |controller: &str| {
            text.lines().find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                controllers.split(',').any(|c| c == controller).then_some(path)
            })
        };
        let under = |mount: &Path, path: &str| {
            let relative = path.trim().trim_start_matches('/');
            // A path with `..` would leave the mount: not a cgroup.
            let escapes = Path::new(relative).components().any(|c| matches!(c, std::path::Component::ParentDir));
            (!escapes).then(|| mount.join(relative))
        };
        Some(Self {
            dir: under(mount, v2)?,
            v1_cpu: v1("cpu").and_then(|p| under(&Path::new(V1_MOUNT).join("cpu"), p)),
            v1_memory: v1("memory").and_then(|p| under(&Path::new(V1_MOUNT).join("memory"), p)),
        })
    }

    /// Just a cgroup v2 directory.
    pub fn v2(dir: PathBuf) -> Self {
        Self { dir, v1_cpu: None, v1_memory: None }
    }

    /// Reads its figures now.
    pub fn sample(&self) -> CgroupSample {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).ok();
        let stat = read("cpu.stat").map(|t| keyed(&t)).unwrap_or_default();
        let events = read("memory.events").map(|t| keyed(&t)).unwrap_or_default();
        let number = |name: &str| read(name).and_then(|t| t.trim().parse::<u64>().ok());
        CgroupSample {
            path: self.dir.to_string_lossy().into_owned(),
            cpu_usage_us: stat.get("usage_usec").copied(),
            cpu_throttled_us: stat.get("throttled_usec").copied(),
            cpu_throttled_periods: stat.get("nr_throttled").copied(),
            cpu_limit: read("cpu.max").and_then(|t| cpu_max(&t)),
            memory_bytes: number("memory.current"),
            memory_limit_bytes: number("memory.max"),
            memory_events: MemoryEvents {
                high: events.get("high").copied().unwrap_or(0),
                max: events.get("max").copied().unwrap_or(0),
                oom: events.get("oom").copied().unwrap_or(0),
                oom_kill: events.get("oom_kill").copied().unwrap_or(0),
            },
            pressure: AllPressure::of_cgroup(&self.dir),
        }
        .or_v1(self.v1_cpu.as_deref(), self.v1_memory.as_deref())
    }
}

impl CgroupSample {
    /// Fills what the v2 directory did not give from the v1 `cpu` and
    /// `memory` directories: `cpu.stat` (`throttled_time` in ns),
    /// `cpu.cfs_quota_us`/`cpu.cfs_period_us`,
    /// `memory.usage_in_bytes`, `memory.limit_in_bytes` and
    /// `memory.failcnt` (allocations that hit the limit).
    fn or_v1(mut self, cpu: Option<&Path>, memory: Option<&Path>) -> Self {
        let read = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let number = |dir: &Path, name: &str| read(dir, name).and_then(|t| t.trim().parse::<i64>().ok());
        if let Some(dir) = cpu.filter(|_| self.cpu_limit.is_none() && self.cpu_throttled_us.is_none()) {
            let stat = read(dir, "cpu.stat").map(|t| keyed(&t)).unwrap_or_default();
            self.cpu_throttled_us = stat.get("throttled_time").map(|ns| ns / 1000);
            self.cpu_throttled_periods = stat.get("nr_throttled").copied();
            let (quota, period) = (number(dir, "cpu.cfs_quota_us"), number(dir, "cpu.cfs_period_us"));
            if let (Some(q), Some(p)) = (quota, period)
                && q > 0
                && p > 0
            {
                self.cpu_limit = Some(q as f64 / p as f64);
            }
        }
        if let Some(dir) = memory.filter(|_| self.memory_bytes.is_none()) {
            self.memory_bytes = number(dir, "memory.usage_in_bytes").and_then(|b| u64::try_from(b).ok());
            self.memory_limit_bytes =
                number(dir, "memory.limit_in_bytes").and_then(|b| u64::try_from(b).ok()).filter(|b| *b < V1_NO_LIMIT);
            self.memory_events.max = number(dir, "memory.failcnt").and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        }
        self
    }
}

/// `key value` lines (`cpu.stat`, `memory.events`); lines that are not
/// are skipped.
pub fn keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The CPUs `cpu.max` allows (`"150000 100000"`: 1.5); `None` for `max`
/// (no limit) or text that is not a limit.
pub fn cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: f64 = words.next()?.parse().ok()?;
    let period: f64 = words.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    (period > 0.0 && quota.is_finite()).then(|| quota / period)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_found_under_the_mount_and_never_outside_it() {
        let text = "12:memory:/x\n0::/system.slice/lockstep.service\n";
        let c = Cgroup::from_proc(text, Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(c.dir, Path::new("/sys/fs/cgroup/system.slice/lockstep.service"));
        assert_eq!(c.v1_memory.as_deref(), Some(Path::new("/sys/fs/cgroup/memory/x")));
        assert_eq!(c.v1_cpu, None);
        assert_eq!(Cgroup::from_proc("0::/\n", Path::new("/m")).unwrap().dir, Path::new("/m/"));
        assert_eq!(Cgroup::from_proc("4:memory:/a\n", Path::new("/m")), None, "cgroup v1 only");
        assert_eq!(Cgroup::from_proc("0::/../../etc\n", Path::new("/m")), None);
        let hybrid = Cgroup::from_proc("3:cpu,cpuacct:/lockstep\n2:memory:/../x\n0::/\n", Path::new("/m")).unwrap();
        assert_eq!(hybrid.v1_cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu/lockstep")));
        assert_eq!(hybrid.v1_memory, None, "never outside the mount");
    }

    #[test]
    fn a_cgroup_directory_is_read_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "cpu.stat",
            "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 900\n",
        );
        write("cpu.max", "50000 100000\n");
        write("memory.current", "1048576\n");
        write("memory.max", "max\n");
        write("memory.events", "low 0\nhigh 2\nmax 1\noom 0\noom_kill 0\n");
        write(
            "cpu.pressure",
            "some avg10=12.50 avg60=3.00 avg300=1.00 total=77\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=5\n",
        );
        let s = Cgroup::v2(dir.path().to_path_buf()).sample();
        assert_eq!((s.cpu_usage_us, s.cpu_throttled_us, s.cpu_throttled_periods), (Some(5000), Some(900), Some(4)));
        assert_eq!(s.cpu_limit, Some(0.5));
        assert_eq!((s.memory_bytes, s.memory_limit_bytes), (Some(1_048_576), None), "max: no limit");
        assert_eq!(s.memory_events, MemoryEvents { high: 2, max: 1, oom: 0, oom_kill: 0 });
        assert_eq!(s.pressure.cpu.map(|p| p.some_avg10), Some(12.5));
        assert_eq!(s.pressure.memory, None, "no memory.pressure file");
        // A cgroup with nothing readable gives nothing, not zeros.
        let empty = Cgroup::v2(dir.path().join("gone")).sample();
        assert_eq!((empty.cpu_usage_us, empty.memory_bytes, empty.cpu_limit), (None, None, None));
    }

    #[test]
    fn a_hybrid_system_gives_cpu_and_memory_from_the_v1_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        let (v2, cpu, memory) = (root.path().join("v2"), root.path().join("cpu"), root.path().join("memory"));
        for d in [&v2, &cpu, &memory] {
            std::fs::create_dir(d).unwrap();
        }
        let write = |dir: &Path, name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write(&v2, "cpu.stat", "usage_usec 7000\nuser_usec 3000\nsystem_usec 4000\n");
        write(&cpu, "cpu.stat", "nr_periods 50\nnr_throttled 20\nthrottled_time 3000000\n");
        write(&cpu, "cpu.cfs_quota_us", "25000\n");
        write(&cpu, "cpu.cfs_period_us", "100000\n");
        write(&memory, "memory.usage_in_bytes", "4096\n");
        write(&memory, "memory.limit_in_bytes", "9223372036854771712\n");
        write(&memory, "memory.failcnt", "3\n");
        let c = Cgroup { dir: v2, v1_cpu: Some(cpu.clone()), v1_memory: Some(memory.clone()) };
        let s = c.sample();
        assert_eq!(s.cpu_usage_us, Some(7000), "v2 figures stay");
        assert_eq!((s.cpu_throttled_us, s.cpu_throttled_periods, s.cpu_limit), (Some(3000), Some(20), Some(0.25)));
        assert_eq!((s.memory_bytes, s.memory_limit_bytes, s.memory_events.max), (Some(4096), None, 3));
        write(&memory, "memory.limit_in_bytes", "8192\n");
        write(&cpu, "cpu.cfs_quota_us", "-1\n");
        let s = c.sample();
        assert_eq!((s.memory_limit_bytes, s.cpu_limit), (Some(8192), None), "-1: no CPU limit");
    }

    #[test]
    fn cpu_max_reads_a_quota_or_no_limit() {
        assert_eq!(cpu_max("max 100000"), None);
        assert_eq!(cpu_max("150000 100000"), Some(1.5));
        assert_eq!(cpu_max("20000"), Some(0.2));
        assert_eq!(cpu_max("x y"), None);
        assert_eq!(cpu_max("1 0"), None);
    }
}
