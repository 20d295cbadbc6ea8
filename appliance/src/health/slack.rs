//! An encoder's deadline slack: a live segment must be published before
//! the next one ends, or the encoder falls behind real time. The slack of
//! a segment is that deadline minus its publication: one segment length
//! minus the time from the capture of its last frame to the publication
//! of its last video rendition. Slack shrinking segment after segment is
//! the leading indicator of an encoder about to miss its deadlines (CPU
//! starved, content grown more complex): [`SlackHistory::summary`] gives
//! the trend and when, at that trend, the slack runs out.

use serde::Serialize;

/// Segments kept (at 2 s: about a minute).
pub const KEPT: usize = 32;
/// Newest segments the trend is fitted over.
pub const TREND_SEGMENTS: usize = 16;

/// The slack of recent segments, oldest first; fixed capacity (written on
/// the packager's path).
#[derive(Debug, Default)]
pub struct SlackHistory {
    recent: heapless::Deque<(i64, f32), KEPT>,
}

/// What the history says.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Slack {
    /// The newest segment's index.
    pub segment: i64,
    /// Its slack, ms (negative: published after its deadline).
    pub last_ms: f32,
    /// The smallest slack of the segments kept, ms.
    pub min_ms: f32,
    /// Slack change per segment over the newest [`TREND_SEGMENTS`] (least
    /// squares), ms; negative: shrinking. `None` with fewer than 4.
    pub trend_ms_per_segment: Option<f32>,
    /// Segments until the slack reaches 0 at that trend; `None` when it is
    /// not shrinking (or no trend yet); 0 when it already has.
    pub segments_to_deadline: Option<f32>,
    /// Segments kept.
    pub segments: usize,
}

impl SlackHistory {
    /// Records segment `index` published with `slack_ms`; a segment
    /// already recorded (another rendition of it) keeps the smaller slack
    /// (it is complete once its last rendition is).
    pub fn record(&mut self, index: i64, slack_ms: f32) {
        if let Some(last) = self.recent.back_mut()
            && last.0 == index
        {
            last.1 = last.1.min(slack_ms);
            return;
        }
        if self.recent.is_full() {
            self.recent.pop_front();
        }
        let _ = self.recent.push_back((index, slack_ms));
    }

    /// The summary; `None` before any segment.
    pub fn summary(&self) -> Option<Slack> {
        let &(segment, last_ms) = self.recent.back()?;
        let min_ms = self.recent.iter().map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
        let newest: Vec<(f64, f64)> = self
            .recent
            .iter()
            .skip(self.recent.len().saturating_sub(TREND_SEGMENTS))
            .map(|&(i, s)| ((i - segment) as f64, f64::from(s)))
            .collect();
        let trend = slope(&newest).map(|t| t as f32);
        let segments_to_deadline =
            if last_ms <= 0.0 { Some(0.0) } else { trend.filter(|t| *t < 0.0).map(|t| last_ms / -t) };
        Some(Slack {
            segment,
            last_ms,
            min_ms,
            trend_ms_per_segment: trend,
            segments_to_deadline,
            segments: self.recent.len(),
        })
    }
}

/// Least-squares slope of `points`; `None` with fewer than 4 or no spread.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 4 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), p| (a + (p.0 - mx) * (p.1 - my), b + (p.0 - mx).powi(2)));
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_encoder_has_no_deadline_in_sight() {
        let mut h = SlackHistory::default();
        assert_eq!(h.summary(), None);
        for i in 0..10 {
            h.record(i, 1500.0 + if i % 2 == 0 { 20.0 } else { -20.0 });
        }
        let s = h.summary().unwrap();
        assert_eq!((s.segment, s.segments, s.min_ms), (9, 10, 1480.0));
        assert!(s.trend_ms_per_segment.unwrap().abs() < 10.0, "{s:?}");
        // Noise may tilt the fit a little either way: a deadline, if any,
        // far beyond sight.
        assert!(s.segments_to_deadline.is_none_or(|n| n > 100.0), "{s:?}");
    }

    #[test]
    fn shrinking_slack_says_when_it_runs_out() {
        let mut h = SlackHistory::default();
        // 100 ms less every segment, from 1500 ms: 1000 ms at segment 5,
        // out at segment 15.
        for i in 0..6 {
            h.record(i, 1500.0 - 100.0 * i as f32);
        }
        let s = h.summary().unwrap();
        assert!((s.trend_ms_per_segment.unwrap() + 100.0).abs() < 1e-3, "{s:?}");
        assert!((s.segments_to_deadline.unwrap() - 10.0).abs() < 1e-3, "{s:?}");
        // Past the deadline: 0.
        h.record(6, -50.0);
        assert_eq!(h.summary().unwrap().segments_to_deadline, Some(0.0));
    }

    #[test]
    fn renditions_of_one_segment_count_once_with_the_least_slack_and_old_segments_go() {
        let mut h = SlackHistory::default();
        h.record(1, 900.0);
        h.record(1, 700.0);
        h.record(1, 800.0);
        assert_eq!(h.summary().unwrap().last_ms, 700.0);
        for i in 2..100 {
            h.record(i, 1000.0);
        }
        let s = h.summary().unwrap();
        assert_eq!((s.segments, s.min_ms), (KEPT, 1000.0), "the oldest forgotten");
        // Too few segments for a trend.
        let mut few = SlackHistory::default();
        for i in 0..3 {
            few.record(i, 1000.0 - i as f32);
        }
        assert_eq!(few.summary().unwrap().trend_ms_per_segment, None);
    }
}
