//! HLS playlist text: media playlists (sliding window or archive) and the
//! multivariant playlist. Pure functions of their inputs, so every
//! appliance writes the same playlist for the same segments.

use std::fmt::Write as _;

/// One segment line of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Segment index on the channel timeline.
    pub index: i64,
    /// File name relative to the playlist.
    pub uri: String,
    /// Duration in seconds.
    pub duration: f64,
    /// EXT-X-PROGRAM-DATE-TIME value (UTC, ISO 8601).
    pub program_date_time: String,
}

/// A media playlist's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPlaylist<'a> {
    /// EXT-X-TARGETDURATION.
    pub target_duration: u32,
    /// Archive (EVENT) rather than a sliding window.
    pub archive: bool,
    /// The stream has ended (EXT-X-ENDLIST).
    pub ended: bool,
    /// Discontinuities before the first entry (sliding window).
    pub discontinuity_sequence: u64,
    /// Init segment URI.
    pub map_uri: &'a str,
}

/// Renders a media playlist for `entries` (ascending index).
pub fn media_playlist(p: &MediaPlaylist<'_>, entries: &[Entry]) -> String {
    let mut s = String::with_capacity(256 + entries.len() * 96);
    let first = entries.first().map_or(0, |e| e.index);
    let _ = writeln!(s, "#EXTM3U");
    let _ = writeln!(s, "#EXT-X-VERSION:7");
    let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", p.target_duration);
    let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{first}");
    if p.discontinuity_sequence > 0 {
        let _ = writeln!(s, "#EXT-X-DISCONTINUITY-SEQUENCE:{}", p.discontinuity_sequence);
    }
    if p.archive {
        let _ = writeln!(s, "#EXT-X-PLAYLIST-TYPE:EVENT");
    }
    let _ = writeln!(s, "#EXT-X-INDEPENDENT-SEGMENTS");
    let _ = writeln!(s, "#EXT-X-MAP:URI=\"{}\"", p.map_uri);
    let mut prev: Option<i64> = None;
    for e in entries {
        if prev.is_some_and(|p| p + 1 != e.index) {
            let _ = writeln!(s, "#EXT-X-DISCONTINUITY");
        }
        let _ = writeln!(s, "#EXT-X-PROGRAM-DATE-TIME:{}", e.program_date_time);
        let _ = writeln!(s, "#EXTINF:{:.6},", e.duration);
        let _ = writeln!(s, "{}", e.uri);
        prev = Some(e.index);
    }
    if p.ended {
        let _ = writeln!(s, "#EXT-X-ENDLIST");
    }
    s
}

/// One variant of the multivariant playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Playlist URI.
    pub uri: String,
    /// Peak bits per second (video + audio).
    pub bandwidth: u64,
    /// Average bits per second.
    pub average_bandwidth: u64,
    /// RFC 6381 codecs, e.g. `avc1.4d401f,opus`.
    pub codecs: String,
    /// Width × height.
    pub resolution: (u32, u32),
    /// Frames per second.
    pub frame_rate: f64,
}

/// The audio rendition of the multivariant playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioRendition {
    /// Playlist URI.
    pub uri: String,
    /// Channel count.
    pub channels: u16,
}

/// Renders the multivariant playlist.
pub fn multivariant_playlist(variants: &[Variant], audio: Option<&AudioRendition>) -> String {
    let mut s = String::with_capacity(512);
    let _ = writeln!(s, "#EXTM3U");
    let _ = writeln!(s, "#EXT-X-VERSION:7");
    let _ = writeln!(s, "#EXT-X-INDEPENDENT-SEGMENTS");
    if let Some(a) = audio {
        let _ = writeln!(
            s,
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"main\",LANGUAGE=\"und\",DEFAULT=YES,AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{}\"",
            a.channels, a.uri
        );
    }
    for v in variants {
        let _ = write!(
            s,
            "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE={:.3}",
            v.bandwidth, v.average_bandwidth, v.codecs, v.resolution.0, v.resolution.1, v.frame_rate
        );
        if audio.is_some() {
            let _ = write!(s, ",AUDIO=\"audio\"");
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "{}", v.uri);
    }
    s
}

/// Formats TAI nanoseconds as a UTC ISO 8601 timestamp with milliseconds.
pub fn utc_iso8601(tai_ns: i128, utc_tai_offset_s: i64) -> String {
    let utc_ms = (tai_ns - i128::from(utc_tai_offset_s) * 1_000_000_000).div_euclid(1_000_000);
    let secs = utc_ms.div_euclid(1000);
    let ms = utc_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", tod / 3600, (tod / 60) % 60, tod % 60)
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_iso8601(37_000_000_000, 37), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T12:34:56.789Z
        let utc_s: i128 = 1_709_210_096;
        assert_eq!(utc_iso8601((utc_s + 37) * 1_000_000_000 + 789_000_000, 37), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn media_playlist_marks_gaps_and_end() {
        let e = |i: i64| Entry { index: i, uri: format!("seg-{i}.m4s"), duration: 2.0, program_date_time: "x".into() };
        let p = MediaPlaylist {
            target_duration: 2,
            archive: false,
            ended: true,
            discontinuity_sequence: 0,
            map_uri: "init.mp4",
        };
        let text = media_playlist(&p, &[e(10), e(11), e(13)]);
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:10\n"));
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
    }
}
