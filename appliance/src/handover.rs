//! Seamless handover of a running channel to a new run at a segment
//! boundary, so a configuration change applies live.
//!
//! The supervisor schedules the handover at segment `S` on the running
//! pipeline and starts the successor at once, told to begin at `S`: the
//! successor opens its source and encoders while the current run still
//! publishes, and waits for the media clock to reach `S` (minus the audio
//! encoder's warm-up). The current run captures up to the last frame of
//! `S - 1`, publishes that segment, and passes its packager (playlists,
//! manifests, the window of segments) to the successor instead of ending
//! the playlists. Viewers see one continuous playlist; only the segments
//! from `S` on carry the new settings.
//!
//! If the successor fails before `S`, the handover is cancelled and the
//! current run goes on as if nothing happened.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::package::Packager;

#[derive(Debug, Default)]
struct State {
    /// First frame the successor owns (the first of segment `S`).
    end_frame: Option<i64>,
    /// Segment `S`.
    segment: Option<i64>,
    /// The run's capture reached `end_frame` and stopped.
    ended: bool,
    /// The packager, once the ending run gives it up.
    packager: Option<Packager>,
    /// The ending run finished without a packager to give (it failed).
    gone: bool,
}

/// One run's end, seen by the run itself and by its successor.
#[derive(Debug, Default)]
pub struct Handover {
    state: Mutex<State>,
    changed: Condvar,
}

impl Handover {
    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// Schedules the end of the run at segment `segment`, whose first frame
    /// is `first_frame`. False if the run already ended.
    pub fn schedule(&self, segment: i64, first_frame: i64) -> bool {
        let mut s = self.state();
        if s.ended || s.gone {
            return false;
        }
        s.end_frame = Some(first_frame);
        s.segment = Some(segment);
        true
    }

    /// Takes back a scheduled end the run has not reached yet (the
    /// successor failed). False if it is too late.
    pub fn cancel(&self) -> bool {
        let mut s = self.state();
        if s.ended {
            return false;
        }
        s.end_frame = None;
        s.segment = None;
        true
    }

    /// The segment the run hands over at, if scheduled.
    pub fn segment(&self) -> Option<i64> {
        self.state().segment
    }

    /// Capture asks before frame `n`: true when the run ends here, which
    /// makes the end final (it can no longer be cancelled).
    pub fn ends_at(&self, n: i64) -> bool {
        let mut s = self.state();
        if s.end_frame.is_some_and(|end| n >= end) {
            s.ended = true;
        }
        s.ended
    }

    /// Whether the run ended for a handover (its playlists continue).
    pub fn ended(&self) -> bool {
        self.state().ended
    }

    /// The ending run gives its packager to the successor.
    pub fn give(&self, packager: Packager) {
        self.state().packager = Some(packager);
        self.changed.notify_all();
    }

    /// The ending run finished without giving a packager.
    pub fn abandon(&self) {
        self.state().gone = true;
        self.changed.notify_all();
    }

    /// The successor waits for the packager, at most `limit`.
    pub fn take(&self, limit: Duration) -> Option<Packager> {
        let deadline = Instant::now() + limit;
        let mut s = self.state();
        loop {
            if let Some(p) = s.packager.take() {
                return Some(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.gone || left.is_zero() {
                return None;
            }
            s = self.changed.wait_timeout(s, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_is_final_once_capture_reaches_it() {
        let h = Handover::default();
        assert!(!h.ends_at(100), "nothing scheduled");
        assert!(h.schedule(3, 150));
        assert!(!h.ends_at(149));
        assert!(h.cancel(), "not reached yet");
        assert!(!h.ends_at(150), "cancelled");
        assert!(h.schedule(4, 200));
        assert!(h.ends_at(200));
        assert!(!h.cancel(), "too late");
        assert!(h.ended());
        assert!(!h.schedule(5, 250), "the run is over");
    }

    #[test]
    fn the_successor_stops_waiting_when_the_run_is_gone() {
        let h = std::sync::Arc::new(Handover::default());
        let waiter = {
            let h = std::sync::Arc::clone(&h);
            std::thread::spawn(move || h.take(Duration::from_secs(30)).is_none())
        };
        std::thread::sleep(Duration::from_millis(20));
        h.abandon();
        assert!(waiter.join().unwrap_or(false), "gave up at once");
        assert!(h.take(Duration::from_millis(1)).is_none());
    }
}
