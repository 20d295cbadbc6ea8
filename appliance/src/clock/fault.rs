//! Deliberate media clock errors, for tests and drills: a constant offset,
//! a frequency error and a step at a set time. They are applied on top of
//! the disciplined time, so they look to the rest of the appliance (and to
//! the swarm's drift detection) exactly like a misbehaving clock.
//!
//! Values are atomics: the admin API changes them on a running clock.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::ClockFaultConfig;

/// Fault settings of one clock.
#[derive(Debug)]
pub struct Fault {
    offset_ns: AtomicI64,
    /// Frequency error in parts per 10¹².
    frequency_ppt: AtomicI64,
    step_ns: AtomicI64,
    /// Local time of the step, ns (i64::MAX: none).
    step_at_local_ns: AtomicI64,
    /// Local time frequency errors count from, ns.
    since_local_ns: AtomicI64,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            offset_ns: AtomicI64::new(0),
            frequency_ppt: AtomicI64::new(0),
            step_ns: AtomicI64::new(0),
            step_at_local_ns: AtomicI64::new(i64::MAX),
            since_local_ns: AtomicI64::new(super::realtime_ns()),
        }
    }
}

impl Fault {
    /// The configured fault, counted from now.
    pub fn from_config(c: &ClockFaultConfig) -> Self {
        let f = Self::default();
        f.set(c);
        f
    }

    /// Replaces the fault; frequency error and the step's delay count from now.
    pub fn set(&self, c: &ClockFaultConfig) {
        let now = super::realtime_ns();
        self.offset_ns.store(c.offset_ns, Ordering::Relaxed);
        self.frequency_ppt.store((c.frequency_ppm * 1e6).round() as i64, Ordering::Relaxed);
        self.step_ns.store(c.step_ns, Ordering::Relaxed);
        let at = if c.step_ns == 0 { i64::MAX } else { now.saturating_add((c.step_after_s * 1e9) as i64) };
        self.step_at_local_ns.store(at, Ordering::Relaxed);
        self.since_local_ns.store(now, Ordering::Relaxed);
    }

    /// Error to add to media time at local time `local`, ns.
    pub fn at(&self, local: i64) -> i64 {
        let mut e = self.offset_ns.load(Ordering::Relaxed);
        let ppt = self.frequency_ppt.load(Ordering::Relaxed);
        if ppt != 0 {
            let elapsed = i128::from(local - self.since_local_ns.load(Ordering::Relaxed)).max(0);
            e += i64::try_from(elapsed * i128::from(ppt) / 1_000_000_000_000).unwrap_or(0);
        }
        if local >= self.step_at_local_ns.load(Ordering::Relaxed) {
            e += self.step_ns.load(Ordering::Relaxed);
        }
        e
    }

    /// What is injected, or `None`.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        let offset = self.offset_ns.load(Ordering::Relaxed);
        if offset != 0 {
            parts.push(format!("offset {offset} ns"));
        }
        let ppt = self.frequency_ppt.load(Ordering::Relaxed);
        if ppt != 0 {
            parts.push(format!("frequency {} ppm", ppt as f64 * 1e-6));
        }
        let step = self.step_ns.load(Ordering::Relaxed);
        if step != 0 {
            let at = self.step_at_local_ns.load(Ordering::Relaxed);
            let since = self.since_local_ns.load(Ordering::Relaxed);
            parts.push(format!("step {step} ns at +{:.1} s", (at - since) as f64 * 1e-9));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_frequency_and_step_add_up() {
        let f = Fault::from_config(&ClockFaultConfig {
            offset_ns: 1_000,
            frequency_ppm: 10.0,
            step_ns: -5_000_000,
            step_after_s: 2.0,
        });
        let t0 = f.since_local_ns.load(Ordering::Relaxed);
        assert_eq!(f.at(t0), 1_000);
        // 1 s at 10 ppm = 10 µs.
        assert_eq!(f.at(t0 + 1_000_000_000), 11_000);
        assert_eq!(f.at(t0 + 2_000_000_000), 1_000 + 20_000 - 5_000_000, "the step applies from its time on");
        let d = f.describe().expect("described");
        assert!(
            d.contains("offset 1000 ns") && d.contains("10 ppm") && d.contains("step -5000000 ns at +2.0 s"),
            "{d}"
        );
        f.set(&ClockFaultConfig::default());
        assert_eq!(f.at(t0 + 10_000_000_000), 0);
        assert_eq!(f.describe(), None);
    }
}
