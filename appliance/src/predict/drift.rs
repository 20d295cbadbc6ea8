//! Media-clock drift against a neighbour, and when it will matter.
//!
//! Each round a node measures, per neighbour and channel, how far its own
//! media clock is ahead of the neighbour's (`swarm::node`, from the media
//! times both put in their packets, the one-way delay cancelled by taking
//! both directions). A [`DriftTracker`] filters those measurements with
//! the two-state Kalman filter the PTP servo uses (state: offset and its
//! rate) and says when the offset will reach a limit — half a frame, where
//! a capture device would number a picture differently. Single outlying
//! measurements (a delayed packet) are left out; a jump that persists (a
//! clock step, or a correction applied) starts the filter afresh so its
//! rate is learnt again rather than carried over.

use lockstep_ptp::servo::{Discipline, OUTLIER_SIGMA, STEP_AFTER, ServoConfig};

/// Measurements before an estimate is trusted (6 s at two a second).
pub const MIN_SAMPLES: u32 = 12;

/// Measurements before the offset alone is (1.5 s at two a second).
pub const OFFSET_SAMPLES: u32 = 3;

/// A reading further than this (or [`OUTLIER_SIGMA`] standard errors)
/// from the prediction is off: alone, a delayed packet, left out;
/// [`STEP_AFTER`] in a row, a step: the filter starts afresh.
pub const STEP_NS: f64 = 3_000_000.0;

/// Filter tuning for media clocks compared over a network: measurements
/// good to about half a millisecond (scheduling and network jitter). The
/// rate wanders little (3e-12/s: about 8 ppm standard error when steady,
/// so a 50 ppm drift stands out beyond three); a rate that changes at
/// once (a clock losing its reference, a drill) soon puts the readings
/// off the prediction, and the filter starts afresh ([`STEP_NS`]).
fn config() -> ServoConfig {
    ServoConfig {
        measurement_noise_ns: 500_000.0,
        phase_noise: 1_000.0,
        frequency_noise: 3e-12,
        lock_threshold_ns: 2_000_000.0,
        min_samples: MIN_SAMPLES,
        holdover_after_ns: 10_000_000_000,
        max_slew: 1e-3,
        // A clock that lost its reference may be far off from the start:
        // ±1000 ppm, learnt from the first readings.
        initial_frequency_var: 1e-6,
    }
}

/// The filtered offset of this node's media clock against one other.
#[derive(Debug, Clone)]
pub struct DriftTracker {
    filter: Discipline,
    samples: u32,
    /// Readings in a row far off the prediction.
    off_in_row: u32,
}

impl Default for DriftTracker {
    fn default() -> Self {
        Self { filter: Discipline::new(config()), samples: 0, off_in_row: 0 }
    }
}

/// What a tracker knows now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftEstimate {
    /// This node's media clock minus the other's, ns.
    pub offset_ns: f64,
    /// How fast that grows, ppm (1 ppm = 1 µs per second).
    pub drift_ppm: f64,
    /// Standard error of the drift, ppm.
    pub drift_error_ppm: f64,
    /// Standard error of the offset, ns.
    pub error_ns: f64,
    /// Measurements taken since the filter (re)started.
    pub samples: u32,
}

impl DriftTracker {
    /// Feeds one measurement taken at `t_ns` (this node's clock, ns):
    /// this node's media clock minus the other's.
    pub fn measure(&mut self, t_ns: i64, offset_ns: f64) {
        if let Some(e) = self.estimate(t_ns) {
            let off = (offset_ns - e.offset_ns).abs() > (OUTLIER_SIGMA * e.error_ns).max(STEP_NS);
            if off {
                self.off_in_row += 1;
                if self.off_in_row < STEP_AFTER {
                    return; // a delayed packet: left out
                }
                // The offset jumped and stayed: a new filter learns the
                // rate from here (the servo would keep its frequency across
                // a step, which suits an oscillator, not a clock that was
                // just stepped or corrected).
                *self = Self::default();
            }
        }
        self.off_in_row = 0;
        self.filter.measure(t_ns, offset_ns, [0; 8]);
        self.samples = self.samples.saturating_add(1);
    }

    /// The offset alone and its standard error, ns, once
    /// [`OFFSET_SAMPLES`] readings are in and none is being held back as
    /// off the prediction (a step may be under way while one is): known
    /// well before the rate is.
    pub fn offset(&self, t_ns: i64) -> Option<(f64, f64)> {
        (self.samples >= OFFSET_SAMPLES && self.off_in_row == 0).then(|| {
            let q = self.filter.quality(t_ns);
            (q.offset_ns, q.error_ns)
        })
    }

    /// The estimate at `t_ns`; `None` before [`MIN_SAMPLES`] measurements.
    pub fn estimate(&self, t_ns: i64) -> Option<DriftEstimate> {
        if self.samples < MIN_SAMPLES {
            return None;
        }
        let q = self.filter.quality(t_ns);
        Some(DriftEstimate {
            offset_ns: q.offset_ns,
            drift_ppm: q.frequency * 1e6,
            drift_error_ppm: q.frequency_error * 1e6,
            error_ns: q.error_ns,
            samples: self.samples,
        })
    }
}

impl DriftEstimate {
    /// Seconds until the offset's magnitude reaches `limit_ns` at the
    /// estimated rate: 0 when it already has, `None` when it is not
    /// heading there (steady, or coming back) or the estimate is too
    /// uncertain to say.
    pub fn time_to(&self, limit_ns: f64) -> Option<f64> {
        // An offset known no better than a quarter of the limit (readings
        // disturbed by load or an asymmetric path) predicts nothing.
        if self.error_ns > limit_ns / 4.0 {
            return None;
        }
        if self.offset_ns.abs() >= limit_ns {
            return Some(0.0);
        }
        let rate_ns_per_s = self.drift_ppm * 1_000.0;
        // Drift within 1 ppm is no drift worth acting on (PTP keeps
        // clocks far closer; an unlocked crystal is a few ppm), nor is one
        // within three standard errors of none (early, or noisy readings).
        if self.drift_ppm.abs() < 1.0_f64.max(3.0 * self.drift_error_ppm) {
            return None;
        }
        let target = limit_ns.copysign(rate_ns_per_s);
        let t = (target - self.offset_ns) / rate_ns_per_s;
        (t >= 0.0).then_some(t)
    }
}

/// Half a frame of `fps`, ns: the offset at which a capture device
/// numbers a picture differently from its neighbours.
pub fn half_frame_ns(fps: f64) -> f64 {
    0.5e9 / fps.max(1.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::predict::Noise;

    const S: i64 = 1_000_000_000;

    /// Feeds measurements twice a second from `from` to `to` (s) of a true
    /// offset `truth(t)` with ±1 ms of noise; returns the first time a
    /// prediction within `horizon_s` of reaching `limit` was made.
    fn run(
        tracker: &mut DriftTracker,
        noise: &mut Noise,
        (from, to): (i64, i64),
        truth: &dyn Fn(f64) -> f64,
        (limit, horizon_s): (f64, f64),
    ) -> Option<f64> {
        let mut t = from * S;
        while t < to * S {
            tracker.measure(t, truth(t as f64 / 1e9) + noise.next(1_000_000.0));
            if let Some(e) = tracker.estimate(t)
                && e.time_to(limit).is_some_and(|left| left < horizon_s)
            {
                return Some(t as f64 / 1e9);
            }
            t += S / 2;
        }
        None
    }

    #[test]
    fn drift_starting_mid_run_is_predicted_well_before_half_a_frame() {
        // 500 ppm from t = 20 s: half a frame at 25 fps (20 ms) is reached
        // at t = 60 s.
        let truth = |t: f64| 300_000.0 + if t > 20.0 { (t - 20.0) * 500_000.0 } else { 0.0 };
        let mut tracker = DriftTracker::default();
        let mut noise = Noise(3);
        let limit = half_frame_ns(25.0);
        assert_eq!(run(&mut tracker, &mut noise, (0, 20), &truth, (limit, 10.0)), None, "no drift, nothing predicted");
        let fired = run(&mut tracker, &mut noise, (20, 60), &truth, (limit, 10.0)).expect("predicted");
        let lead = 60.0 - fired;
        eprintln!("predicted at {fired:.1} s, {lead:.1} s ahead");
        assert!(lead >= 8.0, "predicted at {fired:.1} s, {lead:.1} s before half a frame");
        let e = tracker.estimate(fired as i64 * S).unwrap();
        assert!((e.drift_ppm - 500.0).abs() < 100.0, "{e:?}");
    }

    #[test]
    fn a_slow_drift_starting_mid_run_is_known_heading_off_a_quarter_frame_out() {
        // 50 ppm from t = 60 s: a quarter frame (10 ms) at 260 s, half a
        // frame (20 ms) at 460 s; ±1 ms reading noise.
        let truth = |t: f64| if t > 60.0 { (t - 60.0) * 50_000.0 } else { 0.0 };
        let mut tracker = DriftTracker::default();
        let mut noise = Noise(7);
        let limit = half_frame_ns(25.0);
        let mut t = 0;
        let heading = loop {
            assert!(t < 460 * S, "never seen heading half a frame away");
            tracker.measure(t, truth(t as f64 / 1e9) + noise.next(1_000_000.0));
            if let Some(e) = tracker.estimate(t)
                && e.time_to(limit).is_some()
                && e.offset_ns.abs() >= limit / 2.0
            {
                break (t as f64 / 1e9, e);
            }
            t += S / 2;
        };
        let (at, e) = heading;
        eprintln!("a quarter frame out and heading there at {at:.0} s: {e:?}");
        assert!(at < 300.0, "known at {at:.0} s, the truth {:.1} ms", truth(at) / 1e6);
        assert!((e.drift_ppm - 50.0).abs() < 25.0, "{e:?}");
    }

    #[test]
    fn a_steady_offset_with_noise_predicts_nothing_for_minutes() {
        let mut tracker = DriftTracker::default();
        let mut noise = Noise(11);
        let fired = run(&mut tracker, &mut noise, (0, 600), &|_| -2_000_000.0, (half_frame_ns(25.0), 10.0));
        assert_eq!(fired, None);
        let e = tracker.estimate(600 * S).unwrap();
        assert!((e.offset_ns + 2_000_000.0).abs() < 1_000_000.0 && e.drift_ppm.abs() < 50.0, "{e:?}");
    }

    #[test]
    fn a_clock_step_restarts_the_filter_and_a_single_late_packet_is_ignored() {
        let mut tracker = DriftTracker::default();
        let mut noise = Noise(5);
        let truth = |t: f64| if t < 30.0 { 0.0 } else { 8_000_000.0 };
        let mut t = 0;
        while t < 30 * S {
            tracker.measure(t, truth(t as f64 / 1e9) + noise.next(1_000_000.0));
            t += S / 2;
        }
        // One packet 15 ms late: left out.
        tracker.measure(t, 15_000_000.0);
        assert!(tracker.estimate(t).unwrap().offset_ns.abs() < 1_000_000.0);
        // The step: after a few measurements, a fresh filter on 8 ms.
        while t < 40 * S {
            t += S / 2;
            tracker.measure(t, truth(t as f64 / 1e9) + noise.next(1_000_000.0));
        }
        let e = tracker.estimate(t).expect("settled again");
        assert!((e.offset_ns - 8_000_000.0).abs() < 1_000_000.0 && e.drift_ppm.abs() < 100.0, "{e:?}");
        assert!(e.samples < 20, "restarted at the step: {e:?}");
        // Fixed at 8 ms: half a frame is not near, but 5 ms has been reached.
        assert!(e.time_to(half_frame_ns(25.0)).is_none_or(|left| left > 60.0), "{e:?}");
        assert_eq!(e.time_to(5_000_000.0), Some(0.0));
    }

    #[test]
    fn time_to_a_limit_follows_the_sign_of_the_drift() {
        let e = |offset_ns, drift_ppm| DriftEstimate {
            offset_ns,
            drift_ppm,
            drift_error_ppm: 0.1,
            error_ns: 0.0,
            samples: 10,
        };
        assert_eq!(e(0.0, 100.0).time_to(20_000_000.0), Some(200.0));
        assert_eq!(e(0.0, -100.0).time_to(20_000_000.0), Some(200.0));
        assert_eq!(e(10_000_000.0, 100.0).time_to(20_000_000.0), Some(100.0));
        // Coming back from -10 ms at +100 ppm: crosses to +20 ms after 300 s.
        assert_eq!(e(-10_000_000.0, 100.0).time_to(20_000_000.0), Some(300.0));
        assert_eq!(e(5_000_000.0, 0.5).time_to(20_000_000.0), None);
        // A drift within three standard errors of none predicts nothing.
        let unsure = DriftEstimate { drift_error_ppm: 40.0, ..e(0.0, 100.0) };
        assert_eq!(unsure.time_to(20_000_000.0), None);
        // Nor does an offset known no better than a quarter of the limit.
        let vague = DriftEstimate { error_ns: 5_500_000.0, ..e(0.0, 1000.0) };
        assert_eq!(vague.time_to(20_000_000.0), None);
        assert_eq!(e(-25_000_000.0, 0.0).time_to(20_000_000.0), Some(0.0));
        assert!((half_frame_ns(25.0) - 20_000_000.0).abs() < 1e-6);
    }
}
