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

/// The machine's and the daemon's health, sampled once.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeHealth {
    /// Pressure stall information: the daemon's cgroup's when it has its
    /// own (the appliance's `lockstep.service`), else the machine's.
    pub pressure: pressure::AllPressure,
    /// Where the pressure figures come from: `cgroup` or `machine`;
    /// `none` without PSI (a kernel built without it).
    pub pressure_scope: &'static str,
    /// The daemon's cgroup v2 figures; `None` without cgroup v2.
    pub cgroup: Option<cgroup::CgroupSample>,
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
        Self { pressure, pressure_scope, cgroup: sample }
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
