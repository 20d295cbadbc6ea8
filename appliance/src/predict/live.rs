//! The failure prediction at work: every history round the predictor
//! keeps the last window of samples, scores each component of the chain
//! with the saved models (`failure::Models`), and says when a component's
//! alarm rises or falls. Training reads the history store and replaces
//! the models (`POST /api/v1/predict/train`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use serde::Serialize;

use super::failure::{Component, HORIZON_MS, Kind, Model, Models, Series, WINDOW_MS, examples};
use crate::sync::{lock, read, write};

/// A component's prediction now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Risk {
    /// The component, as the chain names it.
    pub component: String,
    /// Its kind.
    pub kind: Kind,
    /// Probability of its failure within the horizon.
    pub probability: f64,
    /// Whether its alarm is up: raised when the probability reaches its
    /// model's threshold, cleared once it has stayed below for
    /// [`CLEAR_AFTER_MS`] (a probability hovering at the threshold is one
    /// alarm, not one per round).
    pub alarm: bool,
}

/// How long a probability stays below the threshold before its alarm
/// clears, ms.
pub const CLEAR_AFTER_MS: u64 = 10_000;

/// A change of a component's alarm, for the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmChange {
    /// The component's prediction.
    pub risk: Risk,
    /// Raised (true) or cleared.
    pub raised: bool,
}

/// What training did, per kind.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    /// The models fitted, by kind.
    pub models: BTreeMap<Kind, Model>,
    /// Why the other kinds have none.
    pub skipped: BTreeMap<Kind, String>,
}

/// The predictor of one appliance.
#[derive(Debug)]
pub struct Predictor {
    models: RwLock<Models>,
    path: PathBuf,
    recent: Mutex<Series>,
    risks: Mutex<BTreeMap<String, Risk>>,
    /// Since when each raised alarm's probability has been below its
    /// threshold, ms.
    below_since: Mutex<BTreeMap<String, u64>>,
    /// Alarm changes not yet taken (by the admin's event log).
    changes: Mutex<Vec<AlarmChange>>,
}

/// Alarm changes kept for the event log at most (a log that is not read
/// must not grow).
const CHANGES_KEPT: usize = 256;

impl Predictor {
    /// A predictor with the models saved at `path` (none yet: it predicts
    /// nothing until trained).
    pub fn open(path: PathBuf) -> anyhow::Result<Self> {
        let models = Models::load(&path)?.unwrap_or_default();
        Ok(Self {
            models: RwLock::new(models),
            path,
            recent: Mutex::default(),
            risks: Mutex::default(),
            below_since: Mutex::default(),
            changes: Mutex::default(),
        })
    }

    /// Where its models are saved.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The models in use.
    pub fn models(&self) -> Models {
        read(&self.models).clone()
    }

    /// Takes one round of samples at `at_ms`: scores every component in it
    /// and answers the alarms that rose or fell, and the probabilities to
    /// record (`predict/<component>/p`).
    pub fn observe(&self, at_ms: u64, samples: &[(String, f64)]) -> (Vec<AlarmChange>, Vec<(String, f64)>) {
        let mut recent = lock(&self.recent);
        for (name, v) in samples {
            let points = recent.entry(name.clone()).or_default();
            points.push((at_ms, *v));
            let keep = points.partition_point(|(t, _)| *t + WINDOW_MS < at_ms);
            points.drain(..keep);
        }
        recent.retain(|_, p| !p.is_empty());
        let models = read(&self.models);
        let components = Component::all_in(samples.iter().map(|(n, _)| n.as_str()));
        let mut risks = lock(&self.risks);
        // A component gone from the round (a channel deleted, an edge no
        // longer listed) keeps no risk: it would drain the node's weight.
        risks.retain(|id, _| components.iter().any(|c| &c.id == id));
        let mut below = lock(&self.below_since);
        below.retain(|id, _| risks.contains_key(id));
        let (mut changes, mut record) = (Vec::new(), Vec::new());
        for c in components {
            // As in training: not before half a window of the component's
            // history (a start moves everything at once).
            let states = recent.get(&c.state).map_or(&[][..], Vec::as_slice);
            let since = states.first().map_or(at_ms, |(t, _)| *t);
            if at_ms.saturating_sub(since) < WINDOW_MS / 2 {
                continue;
            }
            // Nor while its window holds a failure: its prediction (an
            // alarm raised before the failure included) stands until the
            // window is past the recovery.
            if !c.settled(states) {
                continue;
            }
            let Some(p) = models.probability(&c, &recent, at_ms) else { continue };
            let threshold = models.models.get(&c.kind).map_or(1.0, |m| m.threshold);
            let was = risks.get(&c.id).is_some_and(|r| r.alarm);
            let (alarm, since) = held_alarm(p >= threshold, was, below.get(&c.id).copied(), at_ms);
            match since {
                Some(t) => below.insert(c.id.clone(), t),
                None => below.remove(&c.id),
            };
            let risk = Risk { component: c.id.clone(), kind: c.kind, probability: p, alarm };
            if was != risk.alarm {
                changes.push(AlarmChange { risk: risk.clone(), raised: risk.alarm });
            }
            record.push((format!("predict/{}/p", c.id.replace(':', "/")), p));
            risks.insert(c.id.clone(), risk);
        }
        let mut pending = lock(&self.changes);
        pending.extend(changes.iter().cloned());
        let over = pending.len().saturating_sub(CHANGES_KEPT);
        pending.drain(..over);
        (changes, record)
    }

    /// The alarm changes since the last call.
    pub fn take_changes(&self) -> Vec<AlarmChange> {
        std::mem::take(&mut *lock(&self.changes))
    }

    /// Every component's prediction now.
    pub fn risks(&self) -> Vec<Risk> {
        lock(&self.risks).values().cloned().collect()
    }

    /// One component's, if it has one.
    pub fn risk(&self, component: &str) -> Option<Risk> {
        lock(&self.risks).get(component).cloned()
    }

    /// Fits a model per kind on `data` (the history), keeps and saves
    /// them; a kind without a failure to learn from keeps its old model.
    pub fn train(&self, data: &Series, now_ms: u64) -> anyhow::Result<Trained> {
        let components = Component::all_in(data.keys().map(String::as_str));
        let mut trained = Trained { models: BTreeMap::new(), skipped: BTreeMap::new() };
        for kind in Kind::ALL {
            let mut all = Vec::new();
            for c in components.iter().filter(|c| c.kind == kind) {
                all.extend(examples(c, data));
            }
            match Model::fit(kind, &all, now_ms) {
                Ok(m) => {
                    trained.models.insert(kind, m);
                }
                Err(e) => {
                    trained.skipped.insert(kind, e.to_string());
                }
            }
        }
        let mut models = self.models();
        models.models.extend(trained.models.clone());
        models.save(&self.path)?;
        *write(&self.models) = models;
        Ok(trained)
    }
}

/// Whether an alarm is up this round, with since when its probability
/// has been below the threshold while it stayed up: raised at once,
/// cleared after [`CLEAR_AFTER_MS`] below.
fn held_alarm(above: bool, was: bool, below_since: Option<u64>, at_ms: u64) -> (bool, Option<u64>) {
    match (above, was) {
        (true, _) => (true, None),
        (false, false) => (false, None),
        (false, true) => {
            let since = below_since.unwrap_or(at_ms);
            if at_ms.saturating_sub(since) < CLEAR_AFTER_MS { (true, Some(since)) } else { (false, None) }
        }
    }
}

/// The horizon, s (for the API).
pub const HORIZON_S: u64 = HORIZON_MS / 1000;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round(slack: f64, state: f64) -> Vec<(String, f64)> {
        vec![
            ("channel/ch/slack_ms".into(), slack),
            ("channel/ch/encode_latency_ms".into(), 5.0),
            ("node/pressure_cpu".into(), if slack < 500.0 { 60.0 } else { 5.0 }),
            ("node/memory_used".into(), 0.3),
            ("channel/ch/encoder_state".into(), state),
        ]
    }

    #[test]
    fn an_alarm_rises_at_once_and_clears_after_ten_seconds_below() {
        assert_eq!(held_alarm(true, false, None, 0), (true, None));
        // Below for a round, above again: still the same alarm.
        assert_eq!(held_alarm(false, true, None, 1_000), (true, Some(1_000)));
        assert_eq!(held_alarm(true, true, Some(1_000), 2_000), (true, None));
        // Below from 3 s on: up until 13 s.
        let mut since = None;
        for t in (3..13).map(|s| s * 1_000) {
            let (up, s) = held_alarm(false, true, since, t);
            assert!(up, "at {t} ms");
            since = s;
        }
        assert_eq!(held_alarm(false, true, since, 13_000), (false, None));
        assert_eq!(held_alarm(false, false, None, 14_000), (false, None));
    }

    #[test]
    fn a_trained_predictor_raises_an_alarm_before_the_failure_and_clears_it_after() {
        let dir = tempfile::tempdir().unwrap();
        let p = Predictor::open(dir.path().join("models.json")).unwrap();
        let t0 = 1_800_000_000_000;
        // Before training: nothing predicted.
        assert_eq!(p.observe(t0, &round(800.0, 0.0)), (vec![], vec![]));
        // A history: calm, a slack ramp to a failure, recovery; twice.
        let mut data = Series::new();
        let slack = |s: u64| match s % 200 {
            0..100 => 800.0 + (s % 7) as f64 * 10.0,
            100..140 => 800.0 - 20.0 * (s % 200 - 100) as f64 - 10.0,
            140..160 => -200.0,
            _ => 800.0,
        };
        for s in 0..400u64 {
            let v = slack(s);
            let state = if v <= 0.0 { 2.0 } else { 0.0 };
            for (n, x) in round(v, state) {
                data.entry(n).or_default().push((t0 + s * 1000, x));
            }
        }
        let trained = p.train(&data, t0).unwrap();
        assert!(trained.models.contains_key(&Kind::Encoder));
        assert!(trained.skipped[&Kind::Edge].contains("no edge failure"), "{:?}", trained.skipped);
        assert!(p.path().exists(), "saved");
        // Live: the same shape again; the alarm rises before the failure.
        let (mut raised, mut cleared, mut failed_at) = (None, None, None);
        let later = t0 + 1_000_000;
        for s in 0..200u64 {
            let v = slack(s);
            let state = if v <= 0.0 { 2.0 } else { 0.0 };
            if state >= 2.0 && failed_at.is_none() {
                failed_at = Some(s);
            }
            let (changes, record) = p.observe(later + s * 1000, &round(v, state));
            // Scored from half a window of the component's history on, but
            // not while its window holds the failure (140–159 s).
            let settled = !(140..160 + WINDOW_MS / 1000).contains(&s);
            assert_eq!(record.len(), usize::from(s >= WINDOW_MS / 2000 && settled), "at {s} s");
            if let Some((name, _)) = record.first() {
                assert_eq!(name, "predict/encoder/ch/p");
            }
            for c in changes {
                if c.raised && raised.is_none() {
                    raised = Some(s);
                } else if !c.raised && raised.is_some() {
                    cleared = Some(s);
                }
            }
        }
        let (raised, failed_at) = (raised.unwrap(), failed_at.unwrap());

        assert!(raised + 10 <= failed_at, "raised at {raised} s, failed at {failed_at} s");
        // Up through the failure and its window, cleared 10 s after.
        assert!(cleared.is_some_and(|c| c >= 160 + (WINDOW_MS + CLEAR_AFTER_MS) / 1000), "cleared: {cleared:?}");
        assert_eq!(p.risks().len(), 1);
        // A round without the channel (deleted): its risk goes with it.
        p.observe(later + 200_000, &[("node/pressure_cpu".into(), 5.0)]);
        assert!(p.risks().is_empty());
        // Reopened: the saved models predict the same.
        let again = Predictor::open(dir.path().join("models.json")).unwrap();
        assert!(again.models().models.contains_key(&Kind::Encoder));
    }
}
