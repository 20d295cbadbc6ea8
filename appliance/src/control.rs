//! Live changes to a running channel, agreed across the swarm.
//!
//! A bitrate change takes effect at a segment index in the future, never in
//! the segment being encoded: every appliance of the swarm must encode that
//! index with the same settings for the segments to stay interchangeable.
//! Changes travel in the Encoding State Packets; each node keeps the set of
//! changes it has seen, and the bitrate of segment `s` is that of the
//! greatest change (by `from_segment`, then `revision`, then `origin`) with
//! `from_segment <= s`. Every node holding the same set gives the same
//! answer, whatever order the changes arrived in.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Least time between a change and the start of the first segment it
/// applies to: time for it to reach every node (state packets go out
/// twice a second).
pub const LEAD_SECONDS: f64 = 3.0;

/// Segments after the one being captured that a change made now applies
/// from: the next one that starts at least [`LEAD_SECONDS`] later.
pub fn lead_segments(segment_seconds: f64) -> i64 {
    1 + (LEAD_SECONDS / segment_seconds.max(0.1)).ceil() as i64
}

/// Changes kept per rendition (the newest; older ones apply only to
/// segments long published).
const KEPT_PER_RENDITION: usize = 4;

/// One change of a rendition's bitrate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LadderChange {
    /// First segment index encoded with the new bitrate.
    pub from_segment: i64,
    /// When it was made (Unix ms), orders changes for the same segment.
    pub revision: u64,
    /// Appliance the change was made on.
    pub origin: String,
    /// Rendition name.
    pub rendition: String,
    /// New target bitrate.
    pub bitrate_kbps: u32,
}

/// The live settings of a channel, shared by the encoders, the swarm and
/// the admin API.
#[derive(Debug, Default)]
pub struct LiveControl {
    changes: Mutex<BTreeSet<LadderChange>>,
}

impl LiveControl {
    fn changes(&self) -> std::sync::MutexGuard<'_, BTreeSet<LadderChange>> {
        crate::sync::lock(&self.changes)
    }

    /// The bitrate a change sets for `rendition` at `segment`, if any.
    pub fn bitrate_kbps(&self, rendition: &str, segment: i64) -> Option<u32> {
        self.changes()
            .iter()
            .rev()
            .find(|c| c.rendition == rendition && c.from_segment <= segment)
            .map(|c| c.bitrate_kbps)
    }

    /// Adds a change; false if it was known.
    pub fn add(&self, change: LadderChange) -> bool {
        let mut changes = self.changes();
        let rendition = change.rendition.clone();
        let added = changes.insert(change);
        let of_rendition: Vec<LadderChange> = changes.iter().filter(|c| c.rendition == rendition).cloned().collect();
        for old in of_rendition.iter().take(of_rendition.len().saturating_sub(KEPT_PER_RENDITION)) {
            changes.remove(old);
        }
        added
    }

    /// The changes to advertise: the newest of every rendition.
    pub fn advertised(&self) -> Vec<LadderChange> {
        self.changes().iter().cloned().collect()
    }

    /// Changes not yet in effect at `segment` (the admin API shows them).
    pub fn pending(&self, segment: i64) -> Vec<LadderChange> {
        self.changes().iter().filter(|c| c.from_segment > segment).cloned().collect()
    }
}

/// Unix time in ms (for revisions and event times).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: i64, rev: u64, origin: &str, kbps: u32) -> LadderChange {
        LadderChange {
            from_segment: from,
            revision: rev,
            origin: origin.into(),
            rendition: "720p".into(),
            bitrate_kbps: kbps,
        }
    }

    #[test]
    fn the_same_changes_in_any_order_give_the_same_ladder() {
        let all = [change(10, 5, "a", 1000), change(10, 6, "b", 2000), change(12, 1, "a", 500), change(8, 9, "c", 700)];
        let forward = LiveControl::default();
        let backward = LiveControl::default();
        for c in &all {
            forward.add(c.clone());
        }
        for c in all.iter().rev() {
            backward.add(c.clone());
        }
        for s in 0..20 {
            assert_eq!(forward.bitrate_kbps("720p", s), backward.bitrate_kbps("720p", s), "segment {s}");
        }
        assert_eq!(forward.bitrate_kbps("720p", 7), None);
        assert_eq!(forward.bitrate_kbps("720p", 9), Some(700));
        assert_eq!(forward.bitrate_kbps("720p", 10), Some(2000), "the later revision wins at the same segment");
        assert_eq!(forward.bitrate_kbps("720p", 13), Some(500));
        assert_eq!(forward.bitrate_kbps("480p", 13), None);
        assert!(!forward.add(all[0].clone()), "a known change is not new");
    }

    #[test]
    fn changes_start_at_least_the_lead_time_ahead() {
        for seconds in [0.5, 1.0, 2.0, 6.0, 30.0] {
            let lead = lead_segments(seconds);
            // The captured segment may be about to end: the next `lead - 1`
            // whole segments lie between now and the change.
            assert!((lead - 1) as f64 * seconds >= LEAD_SECONDS, "{seconds} s segments: lead {lead}");
        }
        assert_eq!(lead_segments(2.0), 3);
    }

    #[test]
    fn old_changes_are_dropped_but_the_newest_kept() {
        let c = LiveControl::default();
        for s in 0..20 {
            c.add(change(s, 1, "a", 100 + s as u32));
        }
        assert_eq!(c.advertised().len(), KEPT_PER_RENDITION);
        assert_eq!(c.bitrate_kbps("720p", 100), Some(119));
        assert_eq!(c.pending(17).len(), 2);
    }
}
