//! Corrections the swarm voted for (docs/swarm.md, Drift): each adds to
//! media time, from the local time it takes effect, an offset plus a
//! rate times the time since it was measured. They add up and last for
//! the channel's life (a new run of the channel keeps them), so a clock
//! that drifts is brought back onto its neighbours' time and kept there.

use std::sync::Mutex;

use crate::sync::lock;

/// One correction: from local time `from_ns` on, media time gains
/// `offset_ns + rate_ppb · (t − measured_ns) / 10⁹`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    /// Local time it takes effect, ns; with `at_frame`, the latest it may.
    pub from_ns: i64,
    /// The frame it takes effect at: the capture loop reaching it, before
    /// it waits for that frame, starts the correction then
    /// ([`Trim::reach`]), so that frame is the first numbered on the
    /// corrected clock, whatever the estimate of its local time was.
    pub at_frame: Option<i64>,
    /// Local time its offset was measured at, ns.
    pub measured_ns: i64,
    /// Offset at `measured_ns`, ns.
    pub offset_ns: i64,
    /// Rate, parts per 10⁹ (1000 ppb = 1 ppm).
    pub rate_ppb: i64,
}

impl Correction {
    fn at(&self, local: i64) -> i128 {
        if local < self.from_ns {
            return 0;
        }
        i128::from(self.offset_ns) + i128::from(local - self.measured_ns) * i128::from(self.rate_ppb) / 1_000_000_000
    }
}

/// The corrections of one channel's media clock.
#[derive(Debug, Default)]
pub struct Trim {
    corrections: Mutex<Vec<Correction>>,
}

impl Trim {
    /// What the corrections add to media time at local time `local`, ns.
    pub fn at(&self, local: i64) -> i128 {
        lock(&self.corrections).iter().map(|c| c.at(local)).sum()
    }

    /// Adds a correction on top of those in effect.
    pub fn add(&self, correction: Correction) {
        lock(&self.corrections).push(correction);
    }

    /// The capture is about to take frame `frame` at local time `local`:
    /// corrections due at that frame or before start now (or at their
    /// latest time, if that came first).
    pub fn reach(&self, frame: i64, local: i64) {
        for c in lock(&self.corrections).iter_mut() {
            if c.at_frame.is_some_and(|at| frame >= at) {
                c.from_ns = c.from_ns.min(local);
                c.at_frame = None;
            }
        }
    }

    /// The rate in effect at `local`, ppm, and how many corrections made it.
    pub fn describe(&self, local: i64) -> Option<String> {
        let c = lock(&self.corrections);
        if c.is_empty() {
            return None;
        }
        let ppb: i64 = c.iter().filter(|c| local >= c.from_ns).map(|c| c.rate_ppb).sum();
        Some(format!(
            "{} swarm correction{}, {:+.1} ppm",
            c.len(),
            if c.len() == 1 { "" } else { "s" },
            ppb as f64 / 1e3
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn corrections_take_effect_at_their_time_and_add_up() {
        let trim = Trim::default();
        assert_eq!((trim.at(5 * S), trim.describe(5 * S)), (0, None));
        // Measured 12 ms ahead and gaining 1000 ppm at 10 s; applied at 12 s:
        // by then 2 ms more, so 14 ms back, and 1 ms back per second after.
        trim.add(Correction {
            from_ns: 12 * S,
            at_frame: None,
            measured_ns: 10 * S,
            offset_ns: -12_000_000,
            rate_ppb: -1_000_000,
        });
        assert_eq!(trim.at(12 * S - 1), 0);
        assert_eq!(trim.at(12 * S), -14_000_000);
        assert_eq!(trim.at(13 * S), -15_000_000);
        // A second, small one on top.
        trim.add(Correction {
            from_ns: 20 * S,
            at_frame: None,
            measured_ns: 20 * S,
            offset_ns: 500_000,
            rate_ppb: 50_000,
        });
        assert_eq!(trim.at(22 * S), -24_000_000 + 500_000 + 100_000);
        assert_eq!(trim.describe(22 * S).as_deref(), Some("2 swarm corrections, -950.0 ppm"));
    }

    #[test]
    fn a_correction_due_at_a_frame_starts_when_the_capture_reaches_it() {
        let trim = Trim::default();
        // Due at frame 500, estimated at 10 s, at the latest 11 s.
        trim.add(Correction {
            from_ns: 11 * S,
            at_frame: Some(500),
            measured_ns: 9 * S,
            offset_ns: -30_000_000,
            rate_ppb: 0,
        });
        trim.reach(499, 10 * S);
        assert_eq!(trim.at(10 * S + S / 2), 0, "frame 499 is still on the old clock");
        trim.reach(500, 10 * S + S / 2);
        assert_eq!(trim.at(10 * S + S / 2 - 1), 0);
        assert_eq!(trim.at(10 * S + S / 2), -30_000_000, "from the moment frame 500 is reached");
        // A capture that never reaches it: the latest time applies.
        let idle = Trim::default();
        idle.add(Correction { from_ns: 11 * S, at_frame: Some(500), measured_ns: 9 * S, offset_ns: -1, rate_ppb: 0 });
        assert_eq!((idle.at(11 * S - 1), idle.at(11 * S)), (0, -1));
        idle.reach(600, 12 * S);
        assert_eq!(idle.at(11 * S), -1, "reached late: the latest time stands");
    }
}
