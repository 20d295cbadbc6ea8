//! Clock discipline: a two-state Kalman filter (offset, frequency) fed with
//! offset measurements (ptp4l's master offset, or PHC − system readings),
//! the lock state machine around it, and a monotonic mapping from the local
//! clock to disciplined time.
//!
//! Times are nanoseconds of the local clock; offsets are local − reference
//! (what ptp4l reports as `master_offset`), frequencies dimensionless
//! (1e-6 = 1 ppm).

/// Measurements this many standard deviations off the prediction are outliers.
pub const OUTLIER_SIGMA: f64 = 6.0;
/// Outliers in a row that mean the reference stepped.
pub const STEP_AFTER: u32 = 3;

/// Lock state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// No measurement yet: disciplined time is the local clock.
    Freerun,
    /// Measurements arrive; the estimate is not yet within the lock threshold.
    Locking,
    /// Estimated error within the lock threshold.
    Locked,
    /// Measurements stopped: running on the last frequency estimate.
    Holdover,
}

impl ClockState {
    /// Lower-case name, for logs, metrics and the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Freerun => "freerun",
            Self::Locking => "locking",
            Self::Locked => "locked",
            Self::Holdover => "holdover",
        }
    }

    /// Every state, in the order of their metric values.
    pub const ALL: [Self; 4] = [Self::Freerun, Self::Locking, Self::Locked, Self::Holdover];
}

/// Tuning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServoConfig {
    /// Standard deviation of one measurement, ns.
    pub measurement_noise_ns: f64,
    /// Random-walk of the offset, ns²/s (oscillator phase noise).
    pub phase_noise: f64,
    /// Random-walk of the frequency, 1/s (oscillator wander), as a variance rate.
    pub frequency_noise: f64,
    /// Locked when the estimated error (1 σ) is below this, ns.
    pub lock_threshold_ns: f64,
    /// Measurements needed before Locked.
    pub min_samples: u32,
    /// No measurement for this long: holdover, ns.
    pub holdover_after_ns: i64,
    /// Largest rate at which disciplined time may deviate from the local
    /// clock's rate when it corrects (slew), e.g. 500e-6.
    pub max_slew: f64,
    /// Variance of the frequency before the first measurement (1e-8: an
    /// oscillator within about ±100 ppm).
    pub initial_frequency_var: f64,
}

impl Default for ServoConfig {
    fn default() -> Self {
        Self {
            measurement_noise_ns: 1_000.0,
            phase_noise: 100.0,
            frequency_noise: 1e-18,
            lock_threshold_ns: 10_000.0,
            min_samples: 8,
            holdover_after_ns: 2_000_000_000,
            max_slew: 500e-6,
            initial_frequency_var: 1e-8,
        }
    }
}

/// What the discipline reports about itself (exported; feeds the
/// appliance's confidence score).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockQualityReport {
    /// State.
    pub state: ClockState,
    /// Estimated offset local − reference now, ns.
    pub offset_ns: f64,
    /// Estimated frequency error of the local clock.
    pub frequency: f64,
    /// Standard error of that estimate (dimensionless; infinite before
    /// the first measurement).
    pub frequency_error: f64,
    /// Estimated error (1 σ) of disciplined time now, ns.
    pub error_ns: f64,
    /// Time since the last measurement, ns (0 when none yet).
    pub since_last_ns: i64,
    /// Grandmaster changes seen.
    pub grandmaster_changes: u32,
    /// Steps of the reference taken over (see [`Discipline::measure`]).
    pub steps: u32,
    /// Single outlying measurements left out.
    pub outliers: u64,
}

/// Kalman filter state.
#[derive(Debug, Clone, Copy)]
struct Filter {
    t: i64,
    x: [f64; 2],
    p: [[f64; 2]; 2],
}

impl Filter {
    /// Predicted state and covariance at `t`.
    fn predict(&self, t: i64, cfg: &ServoConfig) -> ([f64; 2], [[f64; 2]; 2]) {
        let dt = (t - self.t) as f64 * 1e-9;
        let [o, f] = self.x;
        let x = [o + f * 1e9 * dt, f];
        let p = self.p;
        // F P Fᵀ with F = [[1, 1e9·dt], [0, 1]], plus Q.
        let k = 1e9 * dt;
        let p00 = p[0][0] + k * (p[1][0] + p[0][1]) + k * k * p[1][1] + cfg.phase_noise * dt.abs();
        let p01 = p[0][1] + k * p[1][1];
        let p11 = p[1][1] + cfg.frequency_noise * dt.abs();
        (x, [[p00, p01], [p01, p11]])
    }
}

/// The discipline: filter, state machine, monotonic output.
#[derive(Debug, Clone)]
pub struct Discipline {
    cfg: ServoConfig,
    filter: Option<Filter>,
    samples: u32,
    last_measurement: Option<i64>,
    grandmaster: Option<[u8; 8]>,
    grandmaster_changes: u32,
    /// Running mean of squared innovations (clipped at the outlier bound):
    /// the measurement noise actually seen, when it exceeds the configured one.
    innovation_var: f64,
    innovations_seen: u32,
    /// Outliers in a row, and totals.
    outliers_in_row: u32,
    outliers: u64,
    steps: u32,
    /// Last output (local, disciplined) pair, for monotonic slewing.
    last_out: Option<(i64, i64)>,
}

impl Discipline {
    /// A free-running discipline.
    pub fn new(cfg: ServoConfig) -> Self {
        Self {
            cfg,
            filter: None,
            samples: 0,
            last_measurement: None,
            grandmaster: None,
            grandmaster_changes: 0,
            innovation_var: cfg.measurement_noise_ns.powi(2),
            innovations_seen: 0,
            outliers_in_row: 0,
            outliers: 0,
            steps: 0,
            last_out: None,
        }
    }

    /// Feeds a measurement taken at local time `t`: offset local −
    /// reference, from grandmaster `gm`. A different grandmaster restarts
    /// locking (its time may differ); the frequency estimate is kept, as it
    /// describes the local oscillator.
    ///
    /// The measurement noise is the configured one or, when larger, the
    /// one the innovations show (a running mean of their squares).
    /// A measurement further than [`OUTLIER_SIGMA`] standard deviations
    /// from the prediction is left out (a delayed packet); [`STEP_AFTER`]
    /// of them in a row mean the reference stepped: the offset is taken
    /// over, locking restarts from the frequency estimate with its
    /// uncertainty reset to the prior, so a wrong estimate is learnt again
    /// in seconds.
    pub fn measure(&mut self, t: i64, offset_ns: f64, gm: [u8; 8]) {
        if self.grandmaster.is_some_and(|g| g != gm) {
            self.grandmaster_changes += 1;
            self.samples = 0;
            if let Some(f) = &mut self.filter {
                f.p[0][0] = f.p[0][0].max(offset_ns * offset_ns + self.cfg.lock_threshold_ns.powi(2) * 100.0);
            }
        }
        self.grandmaster = Some(gm);
        self.last_measurement = Some(t);
        let r = self.cfg.measurement_noise_ns.powi(2);
        let Some(f) = &mut self.filter else {
            // First sample: offset known to the measurement noise, frequency
            // to the configured prior (±100 ppm by default).
            self.filter = Some(Filter { t, x: [offset_ns, 0.0], p: [[r, 0.0], [0.0, self.cfg.initial_frequency_var]] });
            self.samples = 1;
            return;
        };
        let (x, p) = f.predict(t, &self.cfg);
        let r = r.max(self.innovation_var - p[0][0]);
        let s = p[0][0] + r;
        let innovation = offset_ns - x[0];
        let bound = OUTLIER_SIGMA * s.sqrt();
        // A plain mean over the first 32 innovations, then a running one.
        self.innovations_seen = self.innovations_seen.saturating_add(1);
        let weight = 1.0 / f64::from(self.innovations_seen.min(32));
        self.innovation_var += (innovation.powi(2).min(bound * bound) - self.innovation_var) * weight;
        if innovation.abs() > bound {
            self.outliers_in_row += 1;
            if self.outliers_in_row < STEP_AFTER {
                self.outliers += 1;
                return;
            }
            // The model was wrong: start again from this offset, from the
            // frequency estimate but as unsure of it as before the first
            // measurement (what it was learnt from may have been wrong too:
            // ptp4l reports an offset of 0 until it has a path delay), and
            // from the configured noise (the innovations seen held the step).
            self.steps += 1;
            self.outliers_in_row = 0;
            self.samples = 1;
            self.innovation_var = self.cfg.measurement_noise_ns.powi(2);
            self.innovations_seen = 0;
            let frequency_var = p[1][1].max(self.cfg.initial_frequency_var);
            *f = Filter { t, x: [offset_ns, x[1]], p: [[r, 0.0], [0.0, frequency_var]] };
            return;
        }
        self.outliers_in_row = 0;
        let k = [p[0][0] / s, p[1][0] / s];
        f.x = [x[0] + k[0] * innovation, x[1] + k[1] * innovation];
        f.p = [[(1.0 - k[0]) * p[0][0], (1.0 - k[0]) * p[0][1]], [p[1][0] - k[1] * p[0][0], p[1][1] - k[1] * p[0][1]]];
        f.t = t;
        self.samples = self.samples.saturating_add(1);
    }

    /// State, estimates and error at local time `t`.
    pub fn quality(&self, t: i64) -> ClockQualityReport {
        let since_last_ns = self.last_measurement.map_or(0, |l| (t - l).max(0));
        let Some(f) = &self.filter else {
            return ClockQualityReport {
                state: ClockState::Freerun,
                offset_ns: 0.0,
                frequency: 0.0,
                frequency_error: f64::INFINITY,
                error_ns: f64::INFINITY,
                since_last_ns,
                grandmaster_changes: self.grandmaster_changes,
                steps: self.steps,
                outliers: self.outliers,
            };
        };
        let (x, p) = f.predict(t, &self.cfg);
        let error_ns = p[0][0].max(0.0).sqrt();
        let state = if since_last_ns > self.cfg.holdover_after_ns {
            ClockState::Holdover
        } else if self.samples >= self.cfg.min_samples && error_ns <= self.cfg.lock_threshold_ns {
            ClockState::Locked
        } else {
            ClockState::Locking
        };
        ClockQualityReport {
            state,
            offset_ns: x[0],
            frequency: x[1],
            frequency_error: p[1][1].max(0.0).sqrt(),
            error_ns,
            since_last_ns,
            grandmaster_changes: self.grandmaster_changes,
            steps: self.steps,
            outliers: self.outliers,
        }
    }

    /// Disciplined time for local time `t` (reference = local − offset),
    /// never going backwards and never running faster or slower than the
    /// local clock by more than `max_slew`: a correction (relock after
    /// holdover, a new grandmaster) is slewed in, not stepped. Call with
    /// non-decreasing `t`. Integer nanoseconds: an `f64` of nanoseconds
    /// since 1970 would only resolve 256 ns.
    pub fn now(&mut self, t: i64) -> i64 {
        let target = t - self.quality(t).offset_ns.round() as i64;
        let out = match self.last_out {
            Some((lt, lo)) if t >= lt => {
                let dl = t - lt;
                let give = (dl as f64 * self.cfg.max_slew) as i64;
                target.clamp(lo + dl - give, lo + dl + give)
            }
            Some((_, lo)) => lo, // local clock went back: hold
            None => target,
        };
        self.last_out = Some((t, out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproducible noise, roughly uniform in ±a.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self, a: f64) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * a
        }
    }

    const S: i64 = 1_000_000_000;
    const GM: [u8; 8] = [1; 8];

    /// True offset of a local clock 50 µs ahead and 20 ppm fast.
    fn truth(t: i64) -> f64 {
        50_000.0 + 20e-6 * t as f64
    }

    fn locked(d: &mut Discipline, n: &mut Noise, until: i64) {
        let mut t = 0;
        while t < until {
            d.measure(t, truth(t) + n.next(1_500.0), GM);
            t += S / 8;
        }
    }

    #[test]
    fn it_locks_onto_offset_and_frequency() {
        let mut d = Discipline::new(ServoConfig::default());
        assert_eq!(d.quality(0).state, ClockState::Freerun);
        let mut n = Noise(7);
        d.measure(0, truth(0), GM);
        assert_eq!(d.quality(0).state, ClockState::Locking);
        locked(&mut d, &mut n, 30 * S);
        let q = d.quality(30 * S);
        assert_eq!(q.state, ClockState::Locked, "{q:?}");
        assert!((q.offset_ns - truth(30 * S)).abs() < 1_000.0, "{q:?} vs {}", truth(30 * S));
        assert!((q.frequency - 20e-6).abs() < 0.2e-6, "{q:?}");
        assert!(q.error_ns < 1_000.0);
    }

    #[test]
    fn holdover_runs_on_the_frequency_and_its_error_grows() {
        let mut d = Discipline::new(ServoConfig::default());
        let mut n = Noise(11);
        locked(&mut d, &mut n, 30 * S);
        let last = d.quality(30 * S);
        let q1 = d.quality(31 * S);
        assert_eq!(q1.state, ClockState::Locked, "one second without samples is not holdover yet");
        let q = d.quality(33 * S);
        assert_eq!(q.state, ClockState::Holdover);
        let mut prev = last.error_ns;
        for secs in [33, 40, 60, 120] {
            let q = d.quality(secs * S);
            assert!(q.error_ns > prev, "the error estimate grows with holdover age: {q:?}");
            prev = q.error_ns;
            let actual = (q.offset_ns - truth(secs * S)).abs();
            assert!(actual < 3.0 * q.error_ns + 2_000.0, "{secs} s: off by {actual} ns, estimate {q:?}");
        }
    }

    #[test]
    fn relock_after_a_jump_never_goes_backwards() {
        let mut d = Discipline::new(ServoConfig::default());
        let mut n = Noise(3);
        locked(&mut d, &mut n, 20 * S);
        // Holdover for 10 s, then the reference comes back 5 ms away (a
        // new grandmaster), which pulls disciplined time back.
        let mut t = 20 * S;
        let mut last = d.now(t);
        let gm2 = [2; 8];
        while t < 60 * S {
            t += S / 8;
            if t > 30 * S {
                d.measure(t, truth(t) + 5_000_000.0 + n.next(1_500.0), gm2);
            }
            let now = d.now(t);
            assert!(now > last, "time went backwards at {t}: {now} after {last}");
            let rate = (now - last) as f64 / (S / 8) as f64;
            assert!((rate - 1.0).abs() <= 500e-6 + 1e-9, "slew limited: rate {rate}");
            last = now;
        }
        let q = d.quality(t);
        assert_eq!(q.grandmaster_changes, 1);
        assert_eq!(q.state, ClockState::Locked, "{q:?}");
        // 5 ms at 500 ppm takes 10 s: after 30 s the output has caught up.
        let target = t as f64 - q.offset_ns;
        assert!((last as f64 - target).abs() < 5_000.0, "{last} vs {target}");
    }

    #[test]
    fn a_frequency_learnt_from_wrong_samples_is_learnt_again_after_the_step() {
        // ptp4l answers 0 for a second before it has a path delay; then the
        // real offset: 1 ms and a master 20 ppm fast. Keeping the frequency
        // as sure as those zeros made it, the filter crawled at 3-8 ppm.
        let mut d = Discipline::new(ServoConfig::default());
        let mut n = Noise(5);
        let mut t = 0;
        while t < S {
            t += S / 8;
            d.measure(t, 0.0, GM);
        }
        let real = |t: i64| -1_000_000.0 - 20e-6 * t as f64;
        while t < 11 * S {
            t += S / 8;
            d.measure(t, real(t) + n.next(1_500.0), GM);
        }
        let q = d.quality(t);
        assert_eq!(q.steps, 1, "{q:?}");
        assert_eq!(q.state, ClockState::Locked, "{q:?}");
        assert!((q.frequency + 20e-6).abs() < 0.5e-6, "frequency {} after 10 s, want -20 ppm", q.frequency);
        assert!((q.offset_ns - real(t)).abs() < 5_000.0, "offset {} vs {}", q.offset_ns, real(t));
    }

    #[test]
    fn freerun_time_is_the_local_clock() {
        let mut d = Discipline::new(ServoConfig::default());
        assert_eq!(d.now(5 * S), 5 * S);
        assert_eq!(d.now(6 * S), 6 * S);
        assert_eq!(d.now(5 * S), 6 * S, "a local clock going back holds the output");
    }

    /// Convergence on synthetic offset series: noise, frequency errors in
    /// ppm, a step. Prints time to lock and the residual error of
    /// disciplined time once locked (docs/time.md quotes these).
    #[test]
    fn convergence_on_synthetic_series() {
        struct Case {
            name: &'static str,
            offset_ns: f64,
            ppm: f64,
            noise_ns: f64,
            step_ns: f64,
            /// Every 25th measurement 200 µs late (a queued packet).
            spikes: bool,
        }
        let cases = [
            Case { name: "quiet, 1 ppm", offset_ns: 10_000.0, ppm: 1.0, noise_ns: 100.0, step_ns: 0.0, spikes: false },
            Case {
                name: "sw timestamps, 20 ppm",
                offset_ns: 50_000.0,
                ppm: 20.0,
                noise_ns: 1_500.0,
                step_ns: 0.0,
                spikes: false,
            },
            Case {
                name: "noisy, -80 ppm",
                offset_ns: -200_000.0,
                ppm: -80.0,
                noise_ns: 5_000.0,
                step_ns: 0.0,
                spikes: false,
            },
            Case {
                name: "step of 1 ms at 60 s",
                offset_ns: 0.0,
                ppm: 5.0,
                noise_ns: 1_500.0,
                step_ns: 1_000_000.0,
                spikes: false,
            },
            Case {
                name: "4% late packets",
                offset_ns: 20_000.0,
                ppm: 10.0,
                noise_ns: 1_000.0,
                step_ns: 0.0,
                spikes: true,
            },
        ];
        eprintln!(
            "{:<24} {:>10} {:>14} {:>14} {:>12} {:>6} {:>8}",
            "series", "lock s", "rms error ns", "max error ns", "freq err ppb", "steps", "outliers"
        );
        for (k, c) in cases.iter().enumerate() {
            let mut d = Discipline::new(ServoConfig::default());
            let mut n = Noise(100 + k as u64);
            let truth = |t: i64| {
                let step = if t >= 60 * S { c.step_ns } else { 0.0 };
                c.offset_ns + c.ppm * 1e-6 * t as f64 + step
            };
            let (mut lock_at, mut sq, mut count, mut max) = (None, 0.0, 0u32, 0.0f64);
            let mut t = 0;
            let mut i = 0;
            while t <= 120 * S {
                i += 1;
                let late = if c.spikes && i % 25 == 0 { 200_000.0 } else { 0.0 };
                d.measure(t, truth(t) + n.next(c.noise_ns * 3f64.sqrt()) + late, GM);
                let q = d.quality(t);
                if q.state == ClockState::Locked && lock_at.is_none() {
                    lock_at = Some(t);
                }
                // Residual of the estimate once locked, outside the 10 s after a step.
                if lock_at.is_some() && !(c.step_ns != 0.0 && (60 * S..70 * S).contains(&t)) {
                    let e = q.offset_ns - truth(t);
                    sq += e * e;
                    count += 1;
                    max = max.max(e.abs());
                }
                t += S / 8;
            }
            let lock_s = lock_at.map_or(f64::NAN, |t| t as f64 * 1e-9);
            let rms = (sq / f64::from(count.max(1))).sqrt();
            let freq_err = (d.quality(t).frequency - c.ppm * 1e-6) * 1e9;
            let t = t - S / 8;
            let q = d.quality(t);
            eprintln!(
                "{:<24} {lock_s:>10.2} {rms:>14.0} {max:>14.0} {freq_err:>12.1} {:>6} {:>8}",
                c.name, q.steps, q.outliers
            );
            assert_eq!(q.steps, u32::from(c.step_ns != 0.0), "{}: steps taken over", c.name);
            assert!(lock_s < 10.0, "{}: locked after {lock_s} s", c.name);
            assert!(rms < c.noise_ns, "{}: residual {rms} ns not below the measurement noise", c.name);
            assert!(freq_err.abs() < 200.0, "{}: frequency off by {freq_err} ppb", c.name);
        }
    }
}
