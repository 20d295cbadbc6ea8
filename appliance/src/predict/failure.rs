//! Failure prediction per chain component: the probability that an
//! encoder misses its deadline, a packager's disk fills or an edge fails
//! within [`HORIZON_MS`], from the trends of its figures over the last
//! [`WINDOW_MS`] in the history.
//!
//! The model is a logistic regression per kind of component, fitted by
//! smartcore (a maintained library; the fitting is its L-BFGS, not ours)
//! on standardised features: for each input series, its newest value and
//! its slope per second over the window. Labels come from the history
//! itself: the recorder writes every component's judged state each round
//! (`…/encoder_state`, `…/packager_state`, `edge/<id>/state`), so every
//! failure — a drill's or a real one — labels the samples before it. A
//! sample is positive when its component fails within the horizon after
//! it; samples while the component has failed, and for a window after
//! (their trends are the recovery's), are left out.
//!
//! Limits: a logistic regression sees a linear mix of levels and trends;
//! a failure with no trend before it (a process killed) cannot be
//! predicted, only seen. A kind with no failure in the history has no
//! model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

/// The span of history a prediction reads, ms.
pub const WINDOW_MS: u64 = 20_000;
/// How far ahead a failure is predicted, ms.
pub const HORIZON_MS: u64 = 30_000;
/// The state value from which a component has failed (`bad`).
const FAILED: f64 = 2.0;
/// An encoder's state value for a channel not running (`down`): not a
/// failure of the encoder, and nothing to learn from.
const NOT_RUNNING: f64 = 3.0;
/// L2 penalty of the fit (on standardised features).
const ALPHA: f64 = 0.1;
/// The lead an alarm needs to be of use, s: a standby unit has its first
/// segment out about 2 s after it starts (docs/SPECIFICATION.md), a drained
/// weight moves the combined output within a few rounds.
pub const LEAD_NEEDED_S: f64 = 10.0;
/// The false alarms per hour of history a threshold may cost (each starts
/// a standby unit or drains a weight for nothing).
pub const FALSE_ALARMS_PER_HOUR: f64 = 1.0;

/// What a prediction could not do.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// No example before a failure.
    #[error("no {0} failure in the history (and samples calm before it) to learn from: run a drill first")]
    NoFailures(Kind),
    /// Every example before a failure: nothing calm to learn from.
    #[error(
        "every {0} moment in the history comes within 30 s before a failure (or 20 s after one): nothing calm \
         to learn from; train again once the history has calm moments"
    )]
    NoCalm(Kind),
    /// The library refused.
    #[error("fitting the {0} model: {1}")]
    Fit(Kind, String),
}

/// The kinds of component with a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A channel's encoder on this node: a deadline missed.
    Encoder,
    /// A channel's packager: its output's disk full.
    Packager,
    /// A CDN edge: not answering or failing.
    Edge,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Encoder => "encoder",
            Self::Packager => "packager",
            Self::Edge => "edge",
        })
    }
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::Encoder, Self::Packager, Self::Edge];

    /// Names of its features, in order.
    pub fn features(self) -> Vec<String> {
        self.inputs().iter().flat_map(|i| [(*i).to_string(), format!("{i}_per_s")]).collect()
    }

    /// Its input series, by the last part of their names.
    fn inputs(self) -> &'static [&'static str] {
        match self {
            Self::Encoder => &["slack_ms", "encode_latency_ms", "pressure_cpu", "memory_used", "cpu_headroom"],
            Self::Packager => &["disk_used"],
            Self::Edge => &["latency_ms", "failed_ratio"],
        }
    }

    /// The smallest change of each input that matters (ms, percent of
    /// stall time, share of a limit, CPUs), in the order of
    /// [`Self::inputs`].
    fn resolutions(self) -> &'static [f64] {
        match self {
            Self::Encoder => &[20.0, 20.0, 5.0, 0.02, 0.05],
            Self::Packager => &[0.02],
            Self::Edge => &[20.0, 0.05],
        }
    }

    /// The least spread each feature is standardised by: an input's
    /// resolution for its value, the resolution per [`RESOLUTION_S`] for
    /// its slope. A feature that hardly moved in the training examples
    /// (memory a few thousandths of its limit apart) would otherwise make
    /// a harmless move later (memory growing after a start) look like
    /// many standard deviations and raise the alarm.
    pub fn least_spread(self) -> Vec<f64> {
        self.resolutions().iter().flat_map(|r| [*r, r / RESOLUTION_S]).collect()
    }
}

/// A slope of one resolution per this many seconds is the least that
/// matters.
pub const RESOLUTION_S: f64 = 10.0;

/// A component and the names of its series in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// As the chain names it: `encoder:<channel>`, `packager:<channel>`,
    /// `edge:<id>`.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its input series, in the order of [`Kind::features`].
    pub inputs: Vec<String>,
    /// Its judged state (0 ok, 1 warn, 2 bad, 3 down).
    pub state: String,
}

impl Component {
    /// Channel `channel`'s encoder (the node's CPU and memory count too).
    pub fn encoder(channel: &str) -> Self {
        Self {
            id: format!("encoder:{channel}"),
            kind: Kind::Encoder,
            inputs: vec![
                format!("channel/{channel}/slack_ms"),
                format!("channel/{channel}/encode_latency_ms"),
                "node/pressure_cpu".into(),
                "node/memory_used".into(),
                "node/cpu_headroom".into(),
            ],
            state: format!("channel/{channel}/encoder_state"),
        }
    }

    /// Channel `channel`'s packager.
    pub fn packager(channel: &str) -> Self {
        Self {
            id: format!("packager:{channel}"),
            kind: Kind::Packager,
            inputs: vec![format!("channel/{channel}/disk_used")],
            state: format!("channel/{channel}/packager_state"),
        }
    }

    /// Edge `edge`.
    pub fn edge(edge: &str) -> Self {
        Self {
            id: format!("edge:{edge}"),
            kind: Kind::Edge,
            inputs: vec![format!("edge/{edge}/latency_ms"), format!("edge/{edge}/failed_ratio")],
            state: format!("edge/{edge}/state"),
        }
    }

    /// The components whose state series are among `names`.
    pub fn all_in<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Self> {
        names
            .into_iter()
            .filter_map(|n| {
                let parts: Vec<&str> = n.split('/').collect();
                match parts.as_slice() {
                    ["channel", ch, "encoder_state"] => Some(Self::encoder(ch)),
                    ["channel", ch, "packager_state"] => Some(Self::packager(ch)),
                    ["edge", e, "state"] => Some(Self::edge(e)),
                    _ => None,
                }
            })
            .collect()
    }

    /// Whether a state value is a failure of this component.
    fn failed(&self, state: f64) -> bool {
        state >= FAILED && !(self.kind == Kind::Encoder && state >= NOT_RUNNING)
    }

    /// Whether a sample at that state teaches anything: not while failed,
    /// not while an encoder's channel is stopped.
    fn usable(&self, state: f64) -> bool {
        state < FAILED
    }

    /// Whether a moment whose window holds these states (`window`, its
    /// component's state samples of the last [`WINDOW_MS`]) is scored and
    /// learnt from: only when none is a failure. The trends of a window
    /// that holds one describe the failure and the recovery from it, not a
    /// run-up to the next one. (An encoder's channel stopped is no failure:
    /// its start is a start, and half a window suffices.)
    pub fn settled(&self, window: &[(u64, f64)]) -> bool {
        !window.iter().any(|(_, s)| self.failed(*s))
    }
}

/// Series by name, each (Unix ms, value) oldest first.
pub type Series = BTreeMap<String, Vec<(u64, f64)>>;

/// The features at `at_ms` from `inputs`: for each, its newest value in
/// the window and its least-squares slope per second (0 over less than a
/// quarter of the window; both 0 for a series with none).
pub fn features(inputs: &[&[(u64, f64)]], at_ms: u64) -> Vec<f64> {
    let from = at_ms.saturating_sub(WINDOW_MS);
    let mut out = Vec::with_capacity(inputs.len() * 2);
    for points in inputs {
        let start = points.partition_point(|(t, _)| *t <= from);
        let end = points.partition_point(|(t, _)| *t <= at_ms);
        let window = &points[start..end];
        out.push(window.last().map_or(0.0, |(_, v)| *v));
        out.push(slope_per_s(window));
    }
    out
}

/// The least-squares slope, per second; 0 over less than a quarter
/// window (a few samples' slope is noise).
fn slope_per_s(window: &[(u64, f64)]) -> f64 {
    let span = match (window.first(), window.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0,
    };
    if span < WINDOW_MS / 4 {
        return 0.0;
    }
    let n = window.len() as f64;
    let t0 = window[0].0;
    let ts = || window.iter().map(|(t, _)| (t - t0) as f64 / 1000.0);
    let mean_t = ts().sum::<f64>() / n;
    let mean_v = window.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, (_, v)) in ts().zip(window) {
        num += (t - mean_t) * (v - mean_v);
        den += (t - mean_t) * (t - mean_t);
    }
    if den > 0.0 { num / den } else { 0.0 }
}

/// One moment of a component's history, labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Unix ms.
    pub t_ms: u64,
    /// Its features.
    pub x: Vec<f64>,
    /// Whether the component failed within the horizon after it.
    pub fails: bool,
}

/// The start of each failure of `c` in `data`: a failed state after a
/// sample that was not.
pub fn onsets(c: &Component, data: &Series) -> Vec<u64> {
    let states = data.get(&c.state).map_or(&[][..], Vec::as_slice);
    states.windows(2).filter(|w| !c.failed(w[0].1) && c.failed(w[1].1)).map(|w| w[1].0).collect()
}

/// Every usable moment of `c` in `data` (one per state sample) with at
/// least half a window of history before it and no failure in its
/// window ([`Component::settled`]), labelled.
pub fn examples(c: &Component, data: &Series) -> Vec<Example> {
    let states = data.get(&c.state).map_or(&[][..], Vec::as_slice);
    let first = states.first().map_or(0, |(t, _)| *t);
    let onsets = onsets(c, data);
    let inputs: Vec<&[(u64, f64)]> = c.inputs.iter().map(|n| data.get(n).map_or(&[][..], Vec::as_slice)).collect();
    let mut failed_ms = None;
    states
        .iter()
        .filter(|(t, s)| {
            if c.failed(*s) {
                failed_ms = Some(*t);
            }
            c.usable(*s) && failed_ms.is_none_or(|f| t - f > WINDOW_MS) && t - first >= WINDOW_MS / 2
        })
        .map(|&(t, _)| Example {
            t_ms: t,
            x: features(&inputs, t),
            fails: onsets.iter().any(|&o| o > t && o <= t + HORIZON_MS),
        })
        .collect()
}

/// How a model did on a set of examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Moments it alarmed at that a failure followed within the horizon.
    pub precision: f64,
    /// Failures it alarmed before (within the horizon).
    pub recall: f64,
    /// Failures in the examples.
    pub failures: usize,
    /// Median time from its first alarm to the failure, over the failures
    /// it alarmed before, s.
    pub lead_time_s: Option<f64>,
    /// Alarms (a run of alarming moments) no failure followed, per hour
    /// of examples.
    pub false_alarms_per_hour: f64,
}

/// A fitted model of one kind, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// The kind it predicts.
    pub kind: Kind,
    /// Its features' names.
    pub features: Vec<String>,
    /// Each feature's mean and spread in the training examples.
    pub mean: Vec<f64>,
    /// (1 where a feature did not vary.)
    pub scale: Vec<f64>,
    /// Weight of each standardised feature.
    pub weights: Vec<f64>,
    /// The fit's intercept.
    pub intercept: f64,
    /// Probability from which it alarms.
    pub threshold: f64,
    /// Examples it was fitted on, and how many preceded a failure.
    pub examples: usize,
    /// Of which positive.
    pub positives: usize,
    /// Unix ms of the fit.
    pub trained_ms: u64,
    /// How it did on its training examples.
    pub quality: Quality,
}

impl Model {
    /// Fits a model of `kind` on `examples`.
    pub fn fit(kind: Kind, examples: &[Example], trained_ms: u64) -> Result<Self, PredictError> {
        let positives = examples.iter().filter(|e| e.fails).count();
        if positives == 0 {
            return Err(PredictError::NoFailures(kind));
        }
        if positives == examples.len() {
            return Err(PredictError::NoCalm(kind));
        }
        let width = kind.features().len();
        let n = examples.len() as f64;
        let mean: Vec<f64> = (0..width).map(|j| examples.iter().map(|e| e.x[j]).sum::<f64>() / n).collect();
        let least = kind.least_spread();
        let scale: Vec<f64> = (0..width)
            .map(|j| {
                let var = examples.iter().map(|e| (e.x[j] - mean[j]).powi(2)).sum::<f64>() / n;
                var.sqrt().max(least[j])
            })
            .collect();
        let rows: Vec<Vec<f64>> =
            examples.iter().map(|e| (0..width).map(|j| (e.x[j] - mean[j]) / scale[j]).collect()).collect();
        // Scoped: its `get` would shadow the slices' in this module.
        use smartcore::linalg::basic::arrays::Array;
        let x = DenseMatrix::from_2d_vec(&rows).map_err(|e| PredictError::Fit(kind, e.to_string()))?;
        let y: Vec<u32> = examples.iter().map(|e| u32::from(e.fails)).collect();
        let params = LogisticRegressionParameters::default().with_alpha(ALPHA);
        let fitted = LogisticRegression::fit(&x, &y, params).map_err(|e| PredictError::Fit(kind, e.to_string()))?;
        let weights: Vec<f64> = (0..width).map(|j| *fitted.coefficients().get((0, j))).collect();
        let intercept = *fitted.intercept().get((0, 0));
        let mut model = Self {
            kind,
            features: kind.features(),
            mean,
            scale,
            weights,
            intercept,
            threshold: 0.5,
            examples: examples.len(),
            positives,
            trained_ms,
            quality: Quality::default(),
        };
        model.threshold = model.best_threshold(examples);
        model.quality = model.evaluate(examples);
        Ok(model)
    }

    /// The probability of a failure within the horizon at features `x`.
    pub fn probability(&self, x: &[f64]) -> f64 {
        let z: f64 = self.intercept
            + x.iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .zip(&self.weights)
                .map(|(((v, m), s), w)| (v - m) / s * w)
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    /// The threshold (of 0.10, 0.15 … 0.95) an operator would pick on
    /// `examples`: within the false-alarm budget on them
    /// ([`FALSE_ALARMS_PER_HOUR`]; when none is, those with the fewest),
    /// the ones that alarm before the most failures early enough to act
    /// ([`LEAD_NEEDED_S`]), then before the most at all; of those equally
    /// good, the middle one (a margin both ways: against later alarms and
    /// against more false ones).
    fn best_threshold(&self, examples: &[Example]) -> f64 {
        let judged: Vec<(f64, Quality, Vec<f64>)> = (2..20)
            .map(|k| f64::from(k) / 20.0)
            .map(|t| {
                let (q, leads) = self.judge(examples, t);
                (t, q, leads)
            })
            .collect();
        let fewest = judged.iter().map(|j| j.1.false_alarms_per_hour).fold(f64::INFINITY, f64::min);
        let budget = FALSE_ALARMS_PER_HOUR.max(fewest);
        let admissible: Vec<&(f64, Quality, Vec<f64>)> =
            judged.iter().filter(|j| j.1.false_alarms_per_hour <= budget).collect();
        let caught = |leads: &[f64]| (leads.iter().filter(|l| **l >= LEAD_NEEDED_S).count(), leads.len());
        let best = admissible.iter().map(|j| caught(&j.2)).max().unwrap_or((0, 0));
        let tied: Vec<f64> = admissible.iter().filter(|j| caught(&j.2) == best).map(|j| j.0).collect();
        tied.get(tied.len() / 2).copied().unwrap_or(0.5)
    }

    /// How the model does on `examples` (one component's, in time order):
    /// precision per alarming moment; per failure, recall and lead time;
    /// false alarms per hour.
    pub fn evaluate(&self, examples: &[Example]) -> Quality {
        self.judge(examples, self.threshold).0
    }

    /// [`Self::evaluate`] at `threshold`, with the lead of every failure
    /// alarmed before, s.
    fn judge(&self, examples: &[Example], threshold: f64) -> (Quality, Vec<f64>) {
        let alarms: Vec<bool> = examples.iter().map(|e| self.probability(&e.x) >= threshold).collect();
        let (mut tp, mut fp) = (0usize, 0usize);
        for (a, e) in alarms.iter().zip(examples) {
            match (a, e.fails) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                _ => {}
            }
        }
        // A failure is the end of a run of positive examples (its horizon).
        let mut leads = Vec::new();
        let mut failures = 0;
        let mut false_alarms = 0;
        let mut i = 0;
        while i < examples.len() {
            if examples[i].fails {
                let start = i;
                while i < examples.len() && examples[i].fails {
                    i += 1;
                }
                failures += 1;
                let last = examples[i - 1].t_ms;
                if let Some(first) = (start..i).find(|&k| alarms[k]) {
                    leads.push((last - examples[first].t_ms) as f64 / 1000.0 + 1.0);
                }
            } else {
                if alarms[i] && (i == 0 || !alarms[i - 1]) {
                    false_alarms += 1;
                }
                i += 1;
            }
        }
        leads.sort_by(f64::total_cmp);
        let hours = match (examples.first(), examples.last()) {
            (Some(a), Some(b)) if b.t_ms > a.t_ms => (b.t_ms - a.t_ms) as f64 / 3_600_000.0,
            _ => 0.0,
        };
        let quality = Quality {
            precision: if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 },
            recall: if failures == 0 { 0.0 } else { leads.len() as f64 / failures as f64 },
            failures,
            lead_time_s: leads.get(leads.len() / 2).copied(),
            false_alarms_per_hour: if hours > 0.0 { false_alarms as f64 / hours } else { 0.0 },
        };
        (quality, leads)
    }
}

/// The models of every kind that has one, as saved beside the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Models {
    /// By kind.
    pub models: BTreeMap<Kind, Model>,
}

impl Models {
    /// Reads a saved set; `Ok(None)` when there is none.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut set: Self = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not a saved model set: {e}", path.display()))?;
                // A model fitted on other features (an older release's) would
                // weigh the wrong inputs: it is dropped until trained again.
                set.models.retain(|kind, m| {
                    let fits = m.features == kind.features();
                    if !fits {
                        tracing::warn!(
                            "{}: the {kind} model was fitted on other inputs ({}); train it again",
                            path.display(),
                            m.features.join(", ")
                        );
                    }
                    fits
                });
                Ok(Some(set))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
        }
    }

    /// Writes it (synced, renamed into place).
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        crate::files::write_atomic(path, &text, crate::files::Mode::Default, true)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The probability that `c` fails within the horizon, from `data` at
    /// `at_ms`; `None` without a model of its kind.
    pub fn probability(&self, c: &Component, data: &Series, at_ms: u64) -> Option<f64> {
        let model = self.models.get(&c.kind)?;
        let inputs: Vec<&[(u64, f64)]> = c.inputs.iter().map(|n| data.get(n).map_or(&[][..], Vec::as_slice)).collect();
        Some(model.probability(&features(&inputs, at_ms)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::predict::Noise;

    /// A history of channel `ch`'s encoder: calm, then `drills` CPU
    /// starvations whose slack shrinks `ramp_s` before it runs out (the
    /// state goes warn, then bad), each followed by recovery.
    fn history(drills: &[(u64, u64)], seconds: u64, noise: &mut Noise) -> Series {
        let mut data = Series::new();
        let t0 = 1_800_000_000_000;
        for s in 0..seconds {
            let t = t0 + s * 1000;
            let mut slack = 800.0 + noise.next(60.0);
            let mut pressure = 5.0 + noise.next(3.0);
            for &(at, ramp) in drills {
                if s >= at && s < at + ramp {
                    let share = (s - at) as f64 / ramp as f64;
                    slack = 800.0 * (1.0 - share) - 50.0 + noise.next(40.0);
                    pressure = 5.0 + 60.0 * share;
                } else if s >= at + ramp && s < at + ramp + 20 {
                    slack = -200.0;
                    pressure = 70.0;
                }
            }
            let state = if slack <= 0.0 {
                2.0
            } else if slack < 250.0 {
                1.0
            } else {
                0.0
            };
            for (name, v) in [
                ("channel/ch/slack_ms", slack),
                ("channel/ch/encode_latency_ms", 5.0 + noise.next(1.0)),
                ("node/pressure_cpu", pressure),
                ("node/memory_used", 0.3 + noise.next(0.01)),
                ("channel/ch/encoder_state", state),
            ] {
                data.entry(name.into()).or_default().push((t, v));
            }
        }
        data
    }

    #[test]
    fn features_are_the_newest_value_and_the_slope_in_the_window() {
        let points: Vec<(u64, f64)> = (0..40).map(|s| (s * 1000, 100.0 - 2.0 * s as f64)).collect();
        let x = features(&[&points, &[]], 30_000);
        assert_eq!(x.len(), 4);
        assert_eq!(x[0], 40.0, "the newest at or before the moment");
        assert!((x[1] + 2.0).abs() < 1e-9, "slope {}", x[1]);
        assert_eq!((x[2], x[3]), (0.0, 0.0), "a series with no samples");
        assert_eq!(Kind::Encoder.features().len(), 10);
    }

    #[test]
    fn every_failure_labels_the_horizon_before_it_and_failed_moments_are_left_out() {
        let data = history(&[(100, 30)], 300, &mut Noise(7));
        let c = Component::encoder("ch");
        let onsets = onsets(&c, &data);
        assert_eq!(onsets.len(), 1, "{onsets:?}");
        let ex = examples(&c, &data);
        let positive: Vec<u64> = ex.iter().filter(|e| e.fails).map(|e| e.t_ms).collect();
        assert!(positive.iter().all(|&t| t < onsets[0] && t + HORIZON_MS >= onsets[0]));
        assert!(positive.len() >= 25, "{}", positive.len());
        assert!(ex.len() < 300, "moments while failed are left out");
        // And a window after the failure: its trends are the recovery's.
        let recovered = data["channel/ch/encoder_state"].iter().rfind(|(_, s)| c.failed(*s)).unwrap().0;
        let after: Vec<u64> = ex.iter().map(|e| e.t_ms).filter(|t| *t > recovered).collect();
        assert!(after.first().is_some_and(|t| t - recovered > WINDOW_MS), "{:?}", after.first());
        let later = data["channel/ch/encoder_state"].iter().filter(|(t, _)| *t > recovered + WINDOW_MS).count();
        assert_eq!(after.len(), later, "the rest is kept");
        let names = ["channel/ch/encoder_state", "edge/e1/state", "channel/ch/packager_state", "node/x"];
        let ids: Vec<String> = Component::all_in(names).into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["encoder:ch", "edge:e1", "packager:ch"]);
    }

    #[test]
    fn a_model_fitted_on_some_drills_predicts_others_ahead_and_stays_calm_on_a_calm_run() {
        let train = history(&[(200, 40), (500, 25), (800, 50)], 1100, &mut Noise(11));
        let c = Component::encoder("ch");
        let model = Model::fit(Kind::Encoder, &examples(&c, &train), 1).unwrap();
        assert!(model.positives > 50 && model.examples > 900, "{model:?}");
        // Runs it was not fitted on: other starts, other ramps, other noise.
        let test = history(&[(150, 35), (450, 60)], 700, &mut Noise(99));
        let q = model.evaluate(&examples(&c, &test));
        assert_eq!(q.failures, 2);
        assert_eq!(q.recall, 1.0, "{q:?}");
        assert!(q.lead_time_s.unwrap() >= 10.0, "{q:?}");
        assert!(q.precision >= 0.8, "{q:?}");
        let calm = history(&[], 1800, &mut Noise(5));
        let q = model.evaluate(&examples(&c, &calm));
        assert_eq!((q.failures, q.false_alarms_per_hour), (0, 0.0), "{q:?}");
    }

    #[test]
    fn a_saved_model_set_reloads_to_the_same_probabilities() {
        let data = history(&[(100, 30), (400, 30)], 600, &mut Noise(3));
        let c = Component::encoder("ch");
        let model = Model::fit(Kind::Encoder, &examples(&c, &data), 1).unwrap();
        let models = Models { models: BTreeMap::from([(Kind::Encoder, model)]) };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.json");
        models.save(&path).unwrap();
        let back = Models::load(&path).unwrap().unwrap();
        let (a, b) = (&back.models[&Kind::Encoder], &models.models[&Kind::Encoder]);
        assert_eq!(
            (a.threshold, a.examples, a.positives, &a.quality),
            (b.threshold, b.examples, b.positives, &b.quality)
        );
        for at in (0..600).map(|s| 1_800_000_000_000 + s * 1000) {
            let (p, q) = (back.probability(&c, &data, at).unwrap(), models.probability(&c, &data, at).unwrap());
            assert!((p - q).abs() < 1e-12, "{p} {q}");
        }
        assert!(back.probability(&Component::edge("e1"), &data, 1_800_000_000_000).is_none(), "no edge model");
        assert!(Models::load(&dir.path().join("none.json")).unwrap().is_none());
        // A model fitted on other inputs (an older release's) is dropped.
        let older = std::fs::read_to_string(&path).unwrap().replace("\"cpu_headroom\"", "\"cpu_spare\"");
        std::fs::write(&path, older).unwrap();
        assert!(Models::load(&path).unwrap().unwrap().models.is_empty(), "kept a model of other inputs");
        std::fs::write(&path, b"{").unwrap();
        assert!(Models::load(&path).unwrap_err().to_string().contains("not a saved model set"));
    }

    #[test]
    fn a_feature_that_hardly_moved_in_training_cannot_raise_the_alarm_alone() {
        // The slack runs out before each failure; memory sits within a
        // few thousandths of its limit throughout, by chance a little
        // higher before the failures.
        let mut noise = Noise(7);
        let examples: Vec<Example> = (0..600u32)
            .map(|s| {
                let fails = s % 100 >= 70;
                let slack = if fails { 300.0 - 8.0 * f64::from(s % 100 - 70) } else { 900.0 } + noise.next(20.0);
                let memory = 0.020 + if fails { 0.0005 } else { 0.0 } + noise.next(0.0002);
                let slope = if fails { -8.0 } else { 0.0 };
                Example {
                    t_ms: u64::from(s) * 1000,
                    x: vec![slack, slope, 5.0, 0.0, 5.0, 0.0, memory, 0.0, 1.0, 0.0],
                    fails,
                }
            })
            .collect();
        let model = Model::fit(Kind::Encoder, &examples, 1).unwrap();
        let least = Kind::Encoder.least_spread();
        assert_eq!(least.len(), model.scale.len());
        assert!(model.scale.iter().zip(&least).all(|(s, l)| s >= l), "{:?}", model.scale);
        // Calm slack; memory 2 % higher, growing 0.1 % of the limit a second (a start).
        let p = model.probability(&[900.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.04, 0.001, 1.0, 0.0]);
        assert!(p < model.threshold, "memory alone raised the alarm: {p} ≥ {}", model.threshold);
        assert!(model.probability(&examples[95].x) >= model.threshold, "the slack's run-out still does");
    }

    #[test]
    fn the_threshold_stays_within_the_false_alarm_budget_and_alarms_early_enough_to_act() {
        // A model whose probability is its first feature's logistic.
        let width = Kind::Encoder.features().len();
        let model = Model {
            kind: Kind::Encoder,
            features: Kind::Encoder.features(),
            mean: vec![0.0; width],
            scale: vec![1.0; width],
            weights: (0..width).map(|j| if j == 0 { 1.0 } else { 0.0 }).collect(),
            intercept: 0.0,
            threshold: 0.5,
            examples: 0,
            positives: 0,
            trained_ms: 0,
            quality: Quality::default(),
        };
        // Two hours, a moment a second: calm at 0.05; three run-ups to a
        // failure, 0.1 → 0.9 over their 30 s; with `spikes`, a calm 3 s at
        // 0.3 every 10 minutes (6 an hour).
        let hours = |spikes: bool| -> Vec<Example> {
            (0..7200u64)
                .map(|s| {
                    let run_up = [1000, 3000, 5000].iter().find(|&&f| s + 30 > f && s < f).map(|f| 29 - (f - 1 - s));
                    let p = match run_up {
                        Some(k) => 0.1 + 0.8 * k as f64 / 29.0,
                        None if spikes && s % 600 < 3 => 0.3,
                        None => 0.05,
                    };
                    let mut x = vec![0.0; width];
                    x[0] = (p / (1.0 - p)).ln();
                    Example { t_ms: s * 1000, x, fails: run_up.is_some() }
                })
                .collect()
        };
        // Alarming 10 s ahead takes 0.65 at most: of 0.10 … 0.65, the middle.
        assert_eq!(model.best_threshold(&hours(false)), 0.4);
        // The spikes would cost 6 false alarms an hour up to 0.30: of 0.35 … 0.65.
        assert_eq!(model.best_threshold(&hours(true)), 0.5);
        let q = Model { threshold: 0.5, ..model.clone() }.evaluate(&hours(true));
        assert_eq!((q.recall, q.false_alarms_per_hour), (1.0, 0.0), "{q:?}");
        assert!(q.lead_time_s.is_some_and(|l| l >= LEAD_NEEDED_S), "{q:?}");
    }

    #[test]
    fn without_a_failure_there_is_nothing_to_learn() {
        let calm = history(&[], 300, &mut Noise(1));
        let e = Model::fit(Kind::Encoder, &examples(&Component::encoder("ch"), &calm), 1).unwrap_err();
        assert!(e.to_string().contains("run a drill first"), "{e}");
        // A drill right after the start, trained on at once: every moment
        // left comes before the failure.
        let hurried = history(&[(12, 10)], 45, &mut Noise(1));
        let e = Model::fit(Kind::Encoder, &examples(&Component::encoder("ch"), &hurried), 1).unwrap_err();
        assert!(e.to_string().contains("nothing calm to learn from"), "{e}");
    }
}
