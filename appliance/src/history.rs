//! The health agents' figures over time, in an embedded store: what the
//! failure prediction learns from and the API's charts show
//! (`GET /api/v1/health/history`).
//!
//! The store is redb: pure Rust (nothing to build or link beside the
//! daemon, which keeps the image build and cross-compiling simple),
//! crash-safe (copy-on-write B-trees, a commit is atomic), and ordered by
//! key — all a time series needs, since every read here is "one series,
//! from then to now". SQLite would add a C library and SQL for nothing
//! this uses.
//!
//! Layout: every sample is keyed by (series, Unix ms). Raw samples (one
//! per series every `history.interval_ms`) are kept `history.raw_hours`;
//! each complete minute is also kept as its mean, smallest and largest
//! value for `history.days`. A recorder thread samples the agents and
//! writes each round in one transaction, synced to disk once a minute;
//! a full or failing disk never costs the output: the rounds it could not
//! write wait in memory (up to 10 minutes of them) and the store is opened
//! again (redb takes nothing after an I/O error until then), so a short
//! episode costs no history either; the error is logged and counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;

use crate::config::HistoryConfig;

/// Raw samples: (series, Unix ms) → value.
const RAW: TableDefinition<(&str, u64), f64> = TableDefinition::new("raw");
/// Minutes: (series, Unix ms of the minute's start) → (mean, min, max, samples).
const MINUTES: TableDefinition<(&str, u64), (f64, f64, f64, u32)> = TableDefinition::new("minutes");
/// Series: name → (newest sample, ms; minutes aggregated up to, ms).
const SERIES: TableDefinition<&str, (u64, u64)> = TableDefinition::new("series");

const MINUTE_MS: u64 = 60_000;

/// One point of a series: a raw sample (mean = min = max) or a minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix ms (a minute's start for minutes).
    pub t_ms: u64,
    /// The value, or the minute's mean.
    pub mean: f64,
    /// Smallest in the minute.
    pub min: f64,
    /// Largest in the minute.
    pub max: f64,
}

/// A series over a span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// `raw` or `minute`.
    pub resolution: &'static str,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// A series and its newest sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeriesInfo {
    /// Its name, `<scope>/<figure>`.
    pub name: String,
    /// Unix ms of its newest sample.
    pub last_ms: u64,
}

/// The store.
#[derive(Debug)]
pub struct History {
    /// `None` between a failed write and a successful reopening: after an
    /// I/O error (a full disk) redb refuses every operation until the
    /// database is opened again.
    db: std::sync::RwLock<Option<redb::Database>>,
    path: std::path::PathBuf,
    raw_ms: u64,
    minutes_ms: u64,
    /// Rounds that could not be written.
    pub write_errors: AtomicU64,
}

impl History {
    /// Opens (or creates) the store at `path`, keeping raw samples
    /// `raw_hours` and minutes `days`.
    pub fn open(path: &Path, raw_hours: u32, days: u32) -> anyhow::Result<Self> {
        let db = Self::open_db(path).map_err(|e| anyhow::anyhow!("history {}: {e}", path.display()))?;
        Ok(Self {
            db: std::sync::RwLock::new(Some(db)),
            path: path.to_path_buf(),
            raw_ms: u64::from(raw_hours) * 3_600_000,
            minutes_ms: u64::from(days) * 86_400_000,
            write_errors: AtomicU64::new(0),
        })
    }

    fn open_db(path: &Path) -> Result<redb::Database, redb::Error> {
        let db = redb::Database::create(path)?;
        let tx = db.begin_write()?;
        {
            // Every table exists from the start, so reads never miss one.
            tx.open_table(RAW)?;
            tx.open_table(MINUTES)?;
            tx.open_table(SERIES)?;
        }
        tx.commit()?;
        Ok(db)
    }

    /// Opens the store again after a failed write (redb refuses every
    /// operation after an I/O error until then); it stays closed, and the
    /// next call tries again, while that fails too (the disk still full).
    pub fn reopen(&self) -> Result<(), redb::Error> {
        let mut db = crate::sync::write(&self.db);
        // The old handle goes first: the file takes one writer.
        drop(db.take());
        *db = Some(Self::open_db(&self.path)?);
        Ok(())
    }

    /// The database, `None` while closed by an I/O error.
    fn db(&self) -> std::sync::RwLockReadGuard<'_, Option<redb::Database>> {
        crate::sync::read(&self.db)
    }

    /// Writes one round of samples taken at `at_ms`, in one transaction.
    /// The round is not synced to disk: the next [`History::downsample`]
    /// (once a minute) makes it and every round before it durable, so the
    /// store costs one sync a minute, not one a second; a crash loses at
    /// most that minute's raw samples.
    pub fn record(&self, at_ms: u64, samples: &[(String, f64)]) -> Result<(), redb::Error> {
        let db = self.db();
        let mut tx = db.as_ref().ok_or(redb::Error::PreviousIo)?.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        {
            let mut raw = tx.open_table(RAW)?;
            let mut series = tx.open_table(SERIES)?;
            for (name, value) in samples.iter().filter(|(_, v)| v.is_finite()) {
                raw.insert((name.as_str(), at_ms), value)?;
                let aggregated = series.get(name.as_str())?.map(|g| g.value().1);
                // A new series is aggregated from the minute it starts in.
                let from = aggregated.unwrap_or(at_ms - at_ms % MINUTE_MS);
                series.insert(name.as_str(), (at_ms, from))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Aggregates every complete minute before `now_ms` not yet
    /// aggregated, and drops raw samples and minutes past their retention;
    /// a durable commit, also of the rounds recorded since the last.
    pub fn downsample(&self, now_ms: u64) -> Result<(), redb::Error> {
        let complete = now_ms - now_ms % MINUTE_MS;
        let db = self.db();
        let tx = db.as_ref().ok_or(redb::Error::PreviousIo)?.begin_write()?;
        {
            let mut raw = tx.open_table(RAW)?;
            let mut minutes = tx.open_table(MINUTES)?;
            let mut series = tx.open_table(SERIES)?;
            let names: Vec<(String, u64, u64)> = series
                .iter()?
                .filter_map(Result::ok)
                .map(|(k, v)| (k.value().to_owned(), v.value().0, v.value().1))
                .collect();
            for (name, last, from) in names {
                let n = name.as_str();
                if from < complete {
                    let mut by_minute: BTreeMap<u64, (f64, f64, f64, u32)> = BTreeMap::new();
                    for entry in raw.range((n, from)..(n, complete))? {
                        let (k, v) = entry?;
                        let (t, value) = (k.value().1, v.value());
                        let m =
                            by_minute.entry(t - t % MINUTE_MS).or_insert((0.0, f64::INFINITY, f64::NEG_INFINITY, 0));
                        *m = (m.0 + value, m.1.min(value), m.2.max(value), m.3 + 1);
                    }
                    for (minute, (sum, min, max, count)) in by_minute {
                        minutes.insert((n, minute), (sum / f64::from(count), min, max, count))?;
                    }
                    series.insert(n, (last, complete))?;
                }
                let raw_cut = now_ms.saturating_sub(self.raw_ms);
                raw.retain_in((n, 0)..(n, raw_cut), |_, _| false)?;
                let minute_cut = now_ms.saturating_sub(self.minutes_ms);
                minutes.retain_in((n, 0)..(n, minute_cut), |_, _| false)?;
                if last < minute_cut {
                    series.remove(n)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every series, by name.
    pub fn series(&self) -> Result<Vec<SeriesInfo>, redb::Error> {
        let db = self.db();
        let tx = db.as_ref().ok_or(redb::Error::PreviousIo)?.begin_read()?;
        let series = tx.open_table(SERIES)?;
        let mut out = Vec::new();
        for entry in series.iter()? {
            let (k, v) = entry?;
            out.push(SeriesInfo { name: k.value().to_owned(), last_ms: v.value().0 });
        }
        Ok(out)
    }

    /// `name` from `from_ms` to `to_ms`: raw samples while the span lies
    /// within their retention, else minutes.
    pub fn span(&self, name: &str, from_ms: u64, to_ms: u64, now_ms: u64) -> Result<Span, redb::Error> {
        let db = self.db();
        let tx = db.as_ref().ok_or(redb::Error::PreviousIo)?.begin_read()?;
        if from_ms >= now_ms.saturating_sub(self.raw_ms) {
            let raw = tx.open_table(RAW)?;
            let mut points = Vec::new();
            for entry in raw.range((name, from_ms)..=(name, to_ms))? {
                let (k, v) = entry?;
                let value = v.value();
                points.push(Point { t_ms: k.value().1, mean: value, min: value, max: value });
            }
            return Ok(Span { resolution: "raw", points });
        }
        let minutes = tx.open_table(MINUTES)?;
        let mut points = Vec::new();
        for entry in minutes.range((name, from_ms - from_ms % MINUTE_MS)..=(name, to_ms))? {
            let (k, v) = entry?;
            let (mean, min, max, _) = v.value();
            points.push(Point { t_ms: k.value().1, mean, min, max });
        }
        Ok(Span { resolution: "minute", points })
    }

    /// Adds its figures to an exposition.
    pub fn export(&self, out: &mut crate::metrics::Exposition) {
        out.counter(
            "lockstep_history_write_errors_total",
            "Rounds of health samples the history store could not write (a full or failing disk).",
            &[],
            self.write_errors.load(Ordering::Relaxed) as f64,
        );
    }
}

/// Unix time, ms.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Rounds kept while the store cannot be written (10 minutes at 1 s).
const PENDING_KEPT: usize = 600;

/// Writes the pending rounds oldest first; those that fail stay.
fn write_pending(
    h: &History,
    pending: &mut std::collections::VecDeque<(u64, Vec<(String, f64)>)>,
) -> Result<(), redb::Error> {
    while let Some((at, samples)) = pending.front() {
        h.record(*at, samples)?;
        pending.pop_front();
    }
    Ok(())
}

/// Opens the store of `config` and starts its recorder: every
/// `interval_ms` it writes what `sample` returns, every minute it
/// downsamples. `None` when history is off; an error when the store
/// cannot be opened.
pub fn start(
    config: &HistoryConfig,
    path: &Path,
    sample: impl Fn() -> Vec<(String, f64)> + Send + 'static,
) -> anyhow::Result<Option<Arc<History>>> {
    if !config.enabled {
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("history {}: {e}", dir.display()))?;
    }
    let history = Arc::new(History::open(path, config.raw_hours, config.days)?);
    let weak = Arc::downgrade(&history);
    let every = Duration::from_millis(u64::from(config.interval_ms));
    std::thread::Builder::new().name("history".into()).spawn(move || {
        let mut last_downsample = 0;
        // Rounds not written yet (a full disk): kept, and written first
        // once the store takes writes again, so a short episode — a disk
        // drill, the very failure these rounds record — loses nothing.
        let mut pending: std::collections::VecDeque<(u64, Vec<(String, f64)>)> = std::collections::VecDeque::new();
        loop {
            std::thread::sleep(every);
            let samples = sample();
            let Some(h) = weak.upgrade() else { return };
            let now = now_ms();
            if pending.len() == PENDING_KEPT {
                pending.pop_front();
            }
            pending.push_back((now, samples));
            // A store closed by an earlier error is opened again first,
            // so the rounds it kept are written as soon as it can take them.
            let written = write_pending(&h, &mut pending)
                .or_else(|_| h.reopen().and_then(|()| write_pending(&h, &mut pending)))
                .and_then(|()| {
                    if now / MINUTE_MS != last_downsample {
                        last_downsample = now / MINUTE_MS;
                        h.downsample(now)?;
                    }
                    Ok(())
                });
            if let Err(e) = written {
                // Once a minute at most: a full disk would say it every round.
                if h.write_errors.fetch_add(1, Ordering::Relaxed) % 60 == 0 {
                    tracing::warn!("history: cannot write the health samples: {e}");
                }
            }
        }
    })?;
    Ok(Some(history))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rounds_that_cannot_be_written_wait_and_are_written_once_the_store_is_open_again() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.redb"), 1, 1).unwrap();
        let t0 = 1_800_000_000_000;
        h.record(t0, &[("a".into(), 1.0)]).unwrap();
        // As after an I/O error: closed.
        drop(crate::sync::write(&h.db).take());
        let mut pending = std::collections::VecDeque::from([(t0 + 1000, vec![("a".into(), 2.0)])]);
        pending.push_back((t0 + 2000, vec![("a".into(), 3.0)]));
        assert!(write_pending(&h, &mut pending).is_err());
        assert_eq!(pending.len(), 2, "kept");
        assert!(h.series().is_err(), "closed: reads say so too");
        h.reopen().unwrap();
        write_pending(&h, &mut pending).unwrap();
        assert!(pending.is_empty());
        let points = h.span("a", t0, t0 + 2000, t0 + 2000).unwrap().points;
        assert_eq!(points.iter().map(|p| p.mean).collect::<Vec<_>>(), [1.0, 2.0, 3.0], "nothing lost");
    }

    #[test]
    fn samples_come_back_raw_then_as_minutes_and_leave_after_their_retention() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.redb"), 1, 1).unwrap();
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;
        // Two minutes of one sample a second: 0..59, then 100..159.
        for s in 0..120u64 {
            let v = if s < 60 { s as f64 } else { 40.0 + s as f64 };
            h.record(t0 + s * 1000, &[("edge:e1/latency_ms".into(), v), ("nan".into(), f64::NAN)]).unwrap();
        }
        let now = t0 + 125_000;
        let raw = h.span("edge:e1/latency_ms", t0 + 10_000, now, now).unwrap();
        assert_eq!(raw.resolution, "raw");
        assert_eq!(raw.points.len(), 110);
        assert_eq!(raw.points[0], Point { t_ms: t0 + 10_000, mean: 10.0, min: 10.0, max: 10.0 });
        h.downsample(now).unwrap();
        let series = h.series().unwrap();
        assert_eq!(
            series,
            [SeriesInfo { name: "edge:e1/latency_ms".into(), last_ms: t0 + 119_000 }],
            "NaN is never stored"
        );
        // Past the raw retention (1 h), the minutes answer.
        let later = now + 2 * 3_600_000;
        h.downsample(later).unwrap();
        let minutes = h.span("edge:e1/latency_ms", t0, later, later).unwrap();
        assert_eq!(minutes.resolution, "minute");
        assert_eq!(
            minutes.points,
            [
                Point { t_ms: t0, mean: 29.5, min: 0.0, max: 59.0 },
                Point { t_ms: t0 + MINUTE_MS, mean: 129.5, min: 100.0, max: 159.0 }
            ]
        );
        let raw = h.span("edge:e1/latency_ms", later - 60_000, later, later).unwrap();
        assert!(raw.points.is_empty(), "raw samples past 1 h are gone");
        // Reopened: the same figures (the store is the file).
        drop(h);
        let h = History::open(&dir.path().join("h.redb"), 1, 1).unwrap();
        assert_eq!(h.span("edge:e1/latency_ms", t0, later, later).unwrap().points.len(), 2);
        // Past a day, the minutes and the series go too.
        h.downsample(later + 86_400_000).unwrap();
        assert!(h.series().unwrap().is_empty());
        assert!(h.span("edge:e1/latency_ms", t0, later, later).unwrap().points.is_empty());
    }
}
