//! YUV4MPEG2 (Y4M) reader: 8-bit 4:2:0 progressive streams, read directly.
//!
//! The header decoder takes outside bytes, so it never panics and names
//! what it rejects (fuzzed by `fuzz/fuzz_targets/y4m_header.rs`).

use std::io::{BufRead, Read};

use crate::timeline::Rate;

/// Longest header line accepted.
const MAX_HEADER: usize = 1024;

/// A Y4M problem.
#[derive(Debug, thiserror::Error)]
pub enum Y4mError {
    /// Not a Y4M stream or a bad parameter.
    #[error("Y4M header: {0}")]
    Header(String),
    /// A valid stream in a format this reader does not take (10-bit,
    /// 4:2:2, interlaced): ffmpeg decodes it instead.
    #[error("Y4M header: {0}")]
    Unsupported(String),
    /// The stream ends inside frame `0` (a file cut short).
    #[error("Y4M frame {0} is truncated")]
    Truncated(u64),
    /// A frame did not start with "FRAME".
    #[error("Y4M frame {0}: missing FRAME marker (stream is corrupt or truncated)")]
    FrameMarker(u64),
    /// Reading failed.
    #[error("Y4M read: {0}")]
    Io(#[from] std::io::Error),
}

/// Stream parameters from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Y4mHeader {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frame rate.
    pub rate: Rate,
}

impl Y4mHeader {
    /// Bytes of one picture.
    pub fn frame_len(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        w * h + 2 * (w.div_ceil(2) * h.div_ceil(2))
    }
}

/// Parses a header line (without the trailing newline).
pub fn parse_header(line: &[u8]) -> Result<Y4mHeader, Y4mError> {
    let text = std::str::from_utf8(line).map_err(|_| Y4mError::Header("not ASCII".into()))?;
    let mut words = text.split(' ');
    if words.next() != Some("YUV4MPEG2") {
        return Err(Y4mError::Header("does not start with YUV4MPEG2".into()));
    }
    let (mut width, mut height, mut rate) = (None, None, None);
    for word in words.filter(|w| !w.is_empty()) {
        // Tags are one ASCII letter; a word starting with anything else
        // (including a multi-byte character) is an unknown tag, ignored.
        let Some((tag, value)) = word.split_at_checked(1) else { continue };
        match tag {
            "W" => width = value.parse::<u32>().ok().filter(|&w| (2..=8192).contains(&w)),
            "H" => height = value.parse::<u32>().ok().filter(|&h| (2..=8192).contains(&h)),
            "F" => {
                let (n, d) = value.split_once(':').ok_or_else(|| Y4mError::Header(format!("frame rate `{value}`")))?;
                rate = Rate::new(n.parse().unwrap_or(0), d.parse().unwrap_or(0));
                if rate.is_none() {
                    return Err(Y4mError::Header(format!("frame rate `{value}` is not N:D with N, D > 0")));
                }
            }
            "I" if !matches!(value, "p" | "?") => {
                return Err(Y4mError::Unsupported(format!("interlacing `I{value}` not read directly")));
            }
            "C" if !matches!(value, "420" | "420jpeg" | "420paldv" | "420mpeg2") => {
                return Err(Y4mError::Unsupported(format!(
                    "colour space `C{value}` not read directly (8-bit 4:2:0 only)"
                )));
            }
            _ => {}
        }
    }
    Ok(Y4mHeader {
        width: width.ok_or_else(|| Y4mError::Header("missing or bad W (width 2..=8192)".into()))?,
        height: height.ok_or_else(|| Y4mError::Header("missing or bad H (height 2..=8192)".into()))?,
        rate: rate.ok_or_else(|| Y4mError::Header("missing F (frame rate)".into()))?,
    })
}

/// Reads one line up to `\n`, at most `MAX_HEADER` bytes.
fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> Result<usize, Y4mError> {
    line.clear();
    let n = r.take(MAX_HEADER as u64).read_until(b'\n', line)?;
    if n > 0 && line.last() != Some(&b'\n') {
        return Err(Y4mError::Header(format!("line longer than {MAX_HEADER} bytes or truncated")));
    }
    line.pop();
    Ok(n)
}

/// Reads the stream header.
pub fn read_header<R: BufRead>(r: &mut R) -> Result<Y4mHeader, Y4mError> {
    let mut line = Vec::new();
    if read_line(r, &mut line)? == 0 {
        return Err(Y4mError::Header("empty file".into()));
    }
    parse_header(&line)
}

/// Reads the next frame into `out` (`frame_len` bytes). `Ok(false)` at a
/// clean end of stream.
pub fn read_frame<R: BufRead>(r: &mut R, index: u64, out: &mut [u8], line: &mut Vec<u8>) -> Result<bool, Y4mError> {
    if read_line(r, line)? == 0 {
        return Ok(false);
    }
    if !line.starts_with(b"FRAME") {
        return Err(Y4mError::FrameMarker(index));
    }
    r.read_exact(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Y4mError::Truncated(index),
        _ => Y4mError::Io(e),
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_typical_header() {
        let h = parse_header(b"YUV4MPEG2 W1280 H720 F30000:1001 Ip A1:1 C420jpeg XYSCSS=420JPEG").expect("header");
        assert_eq!((h.width, h.height), (1280, 720));
        assert_eq!(h.rate, Rate { num: 30_000, den: 1001 });
        assert_eq!(h.frame_len(), 1280 * 720 * 3 / 2);
    }

    #[test]
    fn rejects_what_it_cannot_read_by_name() {
        for (bad, word) in [
            (&b"YUV4MPEG2 W10 H10 F25:1 C444"[..], "C444"),
            (b"YUV4MPEG2 W10 H10 F25:0", "frame rate"),
            (b"YUV4MPEG2 H10 F25:1", "W"),
            (b"RIFF", "YUV4MPEG2"),
            (b"YUV4MPEG2 W10 H10 F25:1 It", "It"),
        ] {
            let e = parse_header(bad).expect_err("must fail");
            assert!(e.to_string().contains(word), "{e}");
        }
    }

    #[test]
    fn non_ascii_words_do_not_panic() {
        // Found by fuzz/fuzz_targets/y4m_header.rs.
        let header = "YUV4MPEG2 W4 H2 F25:1 \u{26f}EG3".as_bytes();
        assert!(parse_header(header).is_ok());
    }

    #[test]
    fn reads_frames_and_detects_corruption() {
        let mut data = b"YUV4MPEG2 W4 H2 F25:1\nFRAME\n".to_vec();
        data.extend([1u8; 12]);
        data.extend(b"FRAMX\n");
        let mut r = std::io::Cursor::new(data);
        let h = read_header(&mut r).expect("header");
        let mut buf = vec![0; h.frame_len()];
        let mut line = Vec::new();
        assert!(read_frame(&mut r, 0, &mut buf, &mut line).expect("frame 0"));
        assert!(matches!(read_frame(&mut r, 1, &mut buf, &mut line), Err(Y4mError::FrameMarker(1))));
    }
}
