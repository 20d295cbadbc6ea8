//! The timeline contract: every appliance maps media time to the same frame
//! numbers, segment indices and audio packet grid.
//!
//! * `frame_number = round((t_tai - epoch) * fps)`, epoch = 1970-01-01 TAI.
//! * `segment_index = floor(frame_number / frames_per_segment)`.
//! * Audio runs at 48 kHz on a grid of fixed-size packets; the audio part of
//!   segment `s` starts at the packet boundary nearest to the video
//!   boundary, so the choice is the same everywhere.
//!
//! All arithmetic is integer (i128) so no appliance rounds differently.

use std::fmt;

const NS_PER_S: i128 = 1_000_000_000;

/// A frame rate as an exact fraction (e.g. 30000/1001).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Frames per `den` seconds.
    pub num: u32,
    /// Seconds per `num` frames.
    pub den: u32,
}

impl Rate {
    /// Builds a rate; both parts must be non-zero.
    pub fn new(num: u32, den: u32) -> Option<Self> {
        (num > 0 && den > 0).then_some(Self { num, den })
    }

    /// Parses "30", "29.97", "30000/1001" or "25/1".
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some((n, d)) = text.split_once('/') {
            return Self::new(n.trim().parse().ok()?, d.trim().parse().ok()?);
        }
        match text {
            "23.976" | "23.98" => return Self::new(24_000, 1001),
            "29.97" => return Self::new(30_000, 1001),
            "59.94" => return Self::new(60_000, 1001),
            _ => {}
        }
        if let Ok(n) = text.parse::<u32>() {
            return Self::new(n, 1);
        }
        let f: f64 = text.parse().ok()?;
        if !(f > 0.0 && f <= 1000.0) {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let num = (f * 1000.0).round() as u32;
        Self::new(num, 1000)
    }

    /// Frames per second as a float (for display only).
    pub fn fps(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }

    /// Frame number of a TAI instant given in nanoseconds since the epoch.
    pub fn frame_at(self, tai_ns: i128) -> i64 {
        let scaled = tai_ns * i128::from(self.num);
        let unit = i128::from(self.den) * NS_PER_S;
        // round half up, valid for negative values too
        let n = (2 * scaled + unit).div_euclid(2 * unit);
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// TAI nanoseconds at which frame `n` starts (floor).
    pub fn frame_time_ns(self, n: i64) -> i128 {
        (i128::from(n) * i128::from(self.den) * NS_PER_S).div_euclid(i128::from(self.num))
    }

    /// First audio sample (at `sample_rate`) that belongs to frame `n`.
    pub fn audio_sample_at(self, n: i64, sample_rate: u32) -> i64 {
        let v = (i128::from(n) * i128::from(sample_rate) * i128::from(self.den)).div_euclid(i128::from(self.num));
        i64::try_from(v).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 { write!(f, "{}", self.num) } else { write!(f, "{}/{}", self.num, self.den) }
    }
}

/// The segment grid of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Video frame rate.
    pub rate: Rate,
    /// Frames in every segment.
    pub frames_per_segment: u32,
    /// Audio sample rate.
    pub sample_rate: u32,
    /// Samples per channel in one audio packet.
    pub audio_frame: u32,
}

impl Grid {
    /// Segment that frame `n` belongs to.
    pub fn segment_of(&self, n: i64) -> i64 {
        n.div_euclid(i64::from(self.frames_per_segment))
    }

    /// First frame of segment `s`.
    pub fn first_frame(&self, s: i64) -> i64 {
        s * i64::from(self.frames_per_segment)
    }

    /// First segment that starts at or after frame `n`.
    pub fn next_boundary_segment(&self, n: i64) -> i64 {
        let f = i64::from(self.frames_per_segment);
        (n + f - 1).div_euclid(f)
    }

    /// Index of the first audio packet of segment `s`: the packet boundary
    /// nearest to the segment's first video frame (ties go up).
    pub fn audio_packet_of_segment(&self, s: i64) -> i64 {
        let frames = i128::from(s) * i128::from(self.frames_per_segment);
        let num = frames * i128::from(self.sample_rate) * i128::from(self.rate.den);
        let den = i128::from(self.rate.num) * i128::from(self.audio_frame);
        let p = (2 * num + den).div_euclid(2 * den);
        i64::try_from(p).unwrap_or(i64::MAX)
    }

    /// Segment duration in seconds (nominal).
    pub fn segment_seconds(&self) -> f64 {
        f64::from(self.frames_per_segment) / self.rate.fps()
    }
}

/// Time of day of frame `n`, displayed as `HH:MM:SS:FF` (TAI, frames
/// counted within each second, no drop-frame).
#[derive(Debug, Clone, Copy)]
pub struct Timecode(pub Rate, pub i64);

impl fmt::Display for Timecode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Timecode(rate, n) = *self;
        let ns = rate.frame_time_ns(n);
        let secs = ns.div_euclid(NS_PER_S);
        let first_of_second = rate.frame_at(secs * NS_PER_S);
        let ff = (i128::from(n) - i128::from(first_of_second)).max(0);
        let tod = secs.rem_euclid(86_400);
        write!(f, "{:02}:{:02}:{:02}:{:02}", tod / 3600, (tod / 60) % 60, tod % 60, ff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_numbers_round_to_the_nearest_frame() {
        let r = Rate::new(25, 1).expect("rate");
        assert_eq!(r.frame_at(0), 0);
        assert_eq!(r.frame_at(19_999_999), 0);
        assert_eq!(r.frame_at(20_000_000), 1);
        assert_eq!(r.frame_at(40_000_000), 1);
        assert_eq!(r.frame_at(1_000_000_000 * 3600), 90_000);
        assert_eq!(r.frame_time_ns(90_000), 1_000_000_000 * 3600);
    }

    #[test]
    fn ntsc_rates_round_trip() {
        let r = Rate::parse("29.97").expect("rate");
        assert_eq!(r, Rate { num: 30_000, den: 1001 });
        for n in [0_i64, 1, 29, 30, 1_000_001, 55_000_000_000] {
            assert_eq!(r.frame_at(r.frame_time_ns(n)), n);
        }
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(Rate::parse("fast").is_none());
        assert!(Rate::parse("0").is_none());
        assert!(Rate::parse("30/0").is_none());
        assert_eq!(Rate::parse("50"), Rate::new(50, 1));
    }

    #[test]
    fn audio_grid_is_exact_for_whole_rates_and_nearest_otherwise() {
        let g = Grid { rate: Rate { num: 25, den: 1 }, frames_per_segment: 50, sample_rate: 48_000, audio_frame: 960 };
        assert_eq!(g.audio_packet_of_segment(1), 100);
        assert_eq!(g.audio_packet_of_segment(7), 700);
        let ntsc = Grid {
            rate: Rate { num: 30_000, den: 1001 },
            frames_per_segment: 60,
            sample_rate: 48_000,
            audio_frame: 960,
        };
        // 60 frames = 2.002 s = 100.1 packets: nearest boundary.
        assert_eq!(ntsc.audio_packet_of_segment(1), 100);
        assert_eq!(ntsc.audio_packet_of_segment(5), 501);
        assert_eq!(ntsc.audio_packet_of_segment(10), 1001);
    }

    #[test]
    fn segments_and_boundaries() {
        let g = Grid { rate: Rate { num: 30, den: 1 }, frames_per_segment: 60, sample_rate: 48_000, audio_frame: 960 };
        assert_eq!(g.segment_of(59), 0);
        assert_eq!(g.segment_of(60), 1);
        assert_eq!(g.segment_of(-1), -1);
        assert_eq!(g.next_boundary_segment(60), 1);
        assert_eq!(g.next_boundary_segment(61), 2);
    }

    #[test]
    fn timecode_counts_frames_in_the_second() {
        let r = Rate::new(25, 1).expect("rate");
        assert_eq!(Timecode(r, 25 * 3661 + 7).to_string(), "01:01:01:07");
    }
}
