//! Media clock: the time base that stamps every frame.
//!
//! Media time is TAI in nanoseconds since 1970-01-01 TAI. The system clock
//! backend reads CLOCK_REALTIME (UTC, disciplined by NTP/chrony) and adds
//! the configured TAI − UTC offset. The PTP-disciplined clock implements
//! the same trait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lock state of a media clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockState {
    /// Following a time source.
    Locked,
    /// Running on its own.
    Freerun,
}

/// A source of media time.
pub trait MediaClock: Send + Sync {
    /// Current TAI time in nanoseconds since the epoch.
    fn now_tai_ns(&self) -> i128;
    /// TAI − UTC in seconds.
    fn utc_tai_offset_s(&self) -> i64;
    /// Lock state, for status and confidence.
    fn state(&self) -> ClockState;
    /// Short description for logs.
    fn describe(&self) -> String;

    /// Sleeps until the clock reads at least `tai_ns` (returns at once if past).
    fn sleep_until(&self, tai_ns: i128) {
        loop {
            let now = self.now_tai_ns();
            if now >= tai_ns {
                return;
            }
            let wait = u64::try_from(tai_ns - now).unwrap_or(u64::MAX).min(50_000_000);
            std::thread::sleep(Duration::from_nanos(wait));
        }
    }
}

/// The system clock plus a TAI offset.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    offset_s: i64,
}

impl SystemClock {
    /// A system clock with TAI − UTC = `offset_s`.
    pub fn new(offset_s: i64) -> Self {
        Self { offset_s }
    }
}

impl MediaClock for SystemClock {
    fn now_tai_ns(&self) -> i128 {
        let utc = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        utc + i128::from(self.offset_s) * 1_000_000_000
    }
    fn utc_tai_offset_s(&self) -> i64 {
        self.offset_s
    }
    fn state(&self) -> ClockState {
        ClockState::Freerun
    }
    fn describe(&self) -> String {
        format!("system clock, TAI = UTC + {} s", self.offset_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_adds_the_tai_offset() {
        let c = SystemClock::new(37);
        let utc = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i128;
        let tai = c.now_tai_ns();
        let diff = tai - utc - 37_000_000_000;
        assert!((0..1_000_000_000).contains(&diff), "offset not applied: {diff}");
    }

    #[test]
    fn sleep_until_the_past_returns() {
        let c = SystemClock::new(0);
        c.sleep_until(0);
        let target = c.now_tai_ns() + 5_000_000;
        c.sleep_until(target);
        assert!(c.now_tai_ns() >= target);
    }
}
