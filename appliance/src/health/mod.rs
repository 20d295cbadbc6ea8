//! Health agents: what each part of a channel's encoding chain shows of
//! its health, sampled where the kernel and the pipeline keep it, for the
//! API (`GET /api/v1/health`), the metrics and the failure prediction
//! that builds on them (docs/architecture.md, "Health agents").
//!
//! - [`pressure`]: pressure stall information (`/proc/pressure/*`, or the
//!   daemon's own cgroup's `*.pressure`): how much of the time work waited
//!   for CPU, memory or I/O;
//! - [`cgroup`]: the daemon's cgroup v2: CPU used and throttled
//!   (`cpu.stat`), memory in use against its limit (`memory.current`,
//!   `memory.max`) and the limit's events (`memory.events`);
//! - [`slack`]: an encoder's deadline slack per segment — how long before
//!   the next segment's end each segment was published — and its trend,
//!   the leading indicator of an encoder falling behind real time;
//! - [`edge`]: every CDN edge players are steered between, probed from
//!   here: answered or not, its latency, the origin behind it, its load;
//! - [`chain`]: a channel's chain (source → encoders → packager → origin
//!   → edges) and each component's state judged from those figures.

pub mod cgroup;
pub mod chain;
pub mod edge;
pub mod pressure;
pub mod slack;

use std::path::Path;

use serde::Serialize;

use crate::metrics::Exposition;

/// Space on the file system holding the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Disk {
    /// Bytes free for the daemon.
    pub free_bytes: u64,
    /// Size of the file system, bytes.
    pub total_bytes: u64,
}

impl Disk {
    /// The file system holding `path`; `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        let st = nix::sys::statvfs::statvfs(path).ok()?;
        let block = st.fragment_size();
        Some(Self {
            free_bytes: st.blocks_available().saturating_mul(block),
            total_bytes: st.blocks().saturating_mul(block),
        })
    }

    /// Share in use, 0–1.
    pub fn used(&self) -> f64 {
        if self.total_bytes == 0 { 0.0 } else { 1.0 - self.free_bytes as f64 / self.total_bytes as f64 }
    }
}

/// Memory in use against the limit that matters: the daemon's cgroup's
/// when it has one, else the machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUse {
    /// Bytes in use (the cgroup's, or the machine's total less what it has
    /// available).
    pub used_bytes: u64,
    /// The limit, bytes.
    pub limit_bytes: u64,
    /// `cgroup` or `machine`.
    pub scope: &'static str,
}

impl MemoryUse {
    /// Reads it now.
    pub fn now() -> Option<Self> {
        let cgroup = cgroup::Cgroup::own().map(|c| c.sample());
        Self::of(cgroup.as_ref(), std::fs::read_to_string("/proc/meminfo").ok().as_deref())
    }

    /// From a cgroup sample (when it has a limit) or `/proc/meminfo`.
    pub fn of(cgroup: Option<&cgroup::CgroupSample>, meminfo: Option<&str>) -> Option<Self> {
        if let Some(c) = cgroup
            && let (Some(used), Some(limit)) = (c.memory_bytes, c.memory_limit_bytes)
        {
            return Some(Self { used_bytes: used, limit_bytes: limit, scope: "cgroup" });
        }
        let kb = |key: &str| {
            meminfo?.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        };
        let (total, available) = (kb("MemTotal:")?, kb("MemAvailable:")?);
        Some(Self { used_bytes: total.saturating_sub(available) * 1024, limit_bytes: total * 1024, scope: "machine" })
    }

    /// Share of the limit in use, 0–1.
    pub fn used(&self) -> f64 {
        if self.limit_bytes == 0 { 0.0 } else { self.used_bytes as f64 / self.limit_bytes as f64 }
    }
}

/// The machine's and the daemon's health, sampled once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeHealth {
    /// Pressure stall information: the daemon's cgroup's when it has its
    /// own (the appliance's `lockstep.service`), else the machine's.
    pub pressure: pressure::AllPressure,
    /// Where the pressure figures come from: `cgroup` or `machine`;
    /// `none` without PSI (a kernel built without it).
    pub pressure_scope: &'static str,
    /// The daemon's cgroup figures; `None` without cgroup v2.
    pub cgroup: Option<cgroup::CgroupSample>,
    /// Memory in use against its limit.
    pub memory: Option<MemoryUse>,
}

/// The CPUs the daemon could still use: its cgroup's CPU limit (else the
/// machine's CPUs) less what it used since the last reading. It shrinks
/// as a limit comes down towards the daemon's need, before the encoder
/// falls behind: the failure prediction's leading input for CPU
/// starvation.
#[derive(Debug, Default)]
pub struct CpuHeadroom {
    last: std::sync::Mutex<Option<(std::time::Instant, f64)>>,
}

impl CpuHeadroom {
    /// The headroom since the last reading, CPUs; `None` at the first.
    pub fn read(&self, limit: Option<f64>) -> Option<f64> {
        let now = (std::time::Instant::now(), crate::bench::cpu_seconds());
        let (then, used_before) = crate::sync::lock(&self.last).replace(now)?;
        let secs = now.0.duration_since(then).as_secs_f64();
        if secs < 0.1 {
            return None;
        }
        let used = (now.1 - used_before).max(0.0) / secs;
        let available = limit.unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64));
        Some(available - used)
    }
}

impl NodeHealth {
    /// Samples the daemon's cgroup (when it runs in one of cgroup v2)
    /// and the pressure figures.
    pub fn sample() -> Self {
        let own = cgroup::Cgroup::own();
        let sample = own.as_ref().map(cgroup::Cgroup::sample);
        let cgroup_pressure = sample.as_ref().map(|s| s.pressure).filter(|p| p.cpu.is_some());
        let (pressure, pressure_scope) = match cgroup_pressure {
            Some(p) => (p, "cgroup"),
            None => {
                let p = pressure::AllPressure::machine();
                let scope = if p.cpu.is_some() { "machine" } else { "none" };
                (p, scope)
            }
        };
        let memory = MemoryUse::of(sample.as_ref(), std::fs::read_to_string("/proc/meminfo").ok().as_deref());
        Self { pressure, pressure_scope, cgroup: sample, memory }
    }

    /// Adds the figures to an exposition.
    pub fn export(&self, out: &mut Exposition) {
        for (resource, p) in [("cpu", self.pressure.cpu), ("memory", self.pressure.memory), ("io", self.pressure.io)] {
            if let Some(p) = p {
                out.gauge(
                    "lockstep_pressure_ratio",
                    "Share of the last 10 s in which some of the daemon's tasks waited for the resource (PSI some avg10 of its cgroup, else of the machine).",
                    &[("resource", resource)],
                    f64::from(p.some_avg10) / 100.0,
                );
            }
        }
        if let Some(m) = self.memory {
            out.gauge(
                "lockstep_memory_used_ratio",
                "Share of the memory limit in use: the daemon's cgroup's when it has a limit, else the machine's.",
                &[("scope", m.scope)],
                m.used(),
            );
        }
        let Some(c) = &self.cgroup else { return };
        if let Some(us) = c.cpu_throttled_us {
            out.counter(
                "lockstep_cgroup_cpu_throttled_seconds_total",
                "Time the daemon's cgroup was held back by its CPU limit (cpu.max).",
                &[],
                us as f64 / 1e6,
            );
        }
        if let Some(bytes) = c.memory_bytes {
            out.gauge(
                "lockstep_cgroup_memory_bytes",
                "Memory the daemon's cgroup uses (memory.current).",
                &[],
                bytes as f64,
            );
        }
        if let Some(bytes) = c.memory_limit_bytes {
            out.gauge(
                "lockstep_cgroup_memory_limit_bytes",
                "The daemon's cgroup's memory limit (memory.max).",
                &[],
                bytes as f64,
            );
        }
        let e = c.memory_events;
        for (event, n) in [("high", e.high), ("max", e.max), ("oom", e.oom), ("oom_kill", e.oom_kill)] {
            out.counter(
                "lockstep_cgroup_memory_events_total",
                "The daemon's cgroup's memory limit events (memory.events).",
                &[("event", event)],
                n as f64,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn memory_use_is_the_cgroups_when_it_has_a_limit_else_the_machines() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        let machine = MemoryUse::of(None, Some(meminfo)).unwrap();
        assert_eq!((machine.used_bytes, machine.limit_bytes, machine.scope), (750 * 1024, 1000 * 1024, "machine"));
        assert!((machine.used() - 0.75).abs() < 1e-9);
        let limited =
            cgroup::CgroupSample { memory_bytes: Some(60), memory_limit_bytes: Some(100), ..Default::default() };
        assert_eq!(MemoryUse::of(Some(&limited), Some(meminfo)).unwrap().scope, "cgroup");
        let unlimited = cgroup::CgroupSample { memory_bytes: Some(60), ..Default::default() };
        assert_eq!(MemoryUse::of(Some(&unlimited), Some(meminfo)).unwrap().scope, "machine", "no limit: the machine's");
        assert_eq!(MemoryUse::of(None, Some("MemTotal: 5 kB\n")), None);
    }
}
