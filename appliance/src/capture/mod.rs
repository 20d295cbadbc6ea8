//! Capture: where frames enter the appliance.
//!
//! One trait per device class ([`CaptureDevice`]); the portable backends
//! are always present: the built-in test source and the file source (Y4M
//! read directly, anything else decoded by an ffmpeg child process).

pub mod pacing;
pub mod pool;
pub mod run;
pub mod testsrc;
pub mod v4l2;
pub mod y4m;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use std::sync::Arc;

use crate::capture::pool::{FrameBuffers, FrameLayout, FramePool, FrameWriter};
use crate::timeline::Rate;

/// A capture problem; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The input file does not exist or cannot be opened.
    #[error("input file {path}: {source}")]
    Open {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The input has no frame that could be read.
    #[error("input file {path}: no frame could be read (empty, cut short or corrupt)")]
    NoFrames {
        /// File.
        path: PathBuf,
    },
    /// ffmpeg/ffprobe could not read the input.
    #[error("input file {path}: ffmpeg cannot read it: {message}")]
    Unreadable {
        /// File.
        path: PathBuf,
        /// ffprobe's message.
        message: String,
    },
    /// A required program is missing.
    #[error("{program} not found ({source}); install ffmpeg (apt-get install ffmpeg)")]
    Tool {
        /// Program name.
        program: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A capture device refused or failed (the message names it).
    #[error("{0}")]
    Device(String),
    /// A capture device disappeared.
    #[error("{path}: the device disappeared ({error}); the channel restarts when it is back")]
    Gone {
        /// Device node.
        path: PathBuf,
        /// What the driver answered.
        error: std::io::Error,
    },
    /// The stream broke while reading.
    #[error("input {path}: {message}")]
    Stream {
        /// File.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

/// What a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceFormat {
    /// Picture width (even).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Frame rate.
    pub rate: Rate,
    /// Interleaved audio channels at 48 kHz (0 = none).
    pub audio_channels: u16,
    /// A live source (test pattern, capture card) whose frames depend on
    /// the timecode; a file starts at a segment boundary instead.
    pub live: bool,
    /// The device delivers frames at its own pace (a capture card): the
    /// pipeline waits in [`CaptureDevice::deliver`] instead of reading
    /// when the clock says so.
    pub device_paced: bool,
}

/// How a delivered frame got into its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePath {
    /// The device's own buffer, lent in place: no copy.
    InPlace,
    /// Converted once from the device's format into a pool slot.
    Converted,
}

/// What a device-paced source delivered.
#[derive(Debug)]
pub enum Delivery {
    /// A frame, not yet published.
    Frame {
        /// The slot holding it.
        writer: FrameWriter,
        /// When the device captured it, CLOCK_MONOTONIC ns.
        captured_mono_ns: i128,
        /// Lent or converted.
        path: FramePath,
    },
    /// No usable frame: no signal, no lock, a timeout or a corrupt frame.
    /// The device still works; the pipeline keeps its timeline.
    Fault(String),
}

/// Outcome of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured {
    /// The buffers hold frame `n`.
    Frame,
    /// The source has no more frames.
    End,
}

/// A capture device: open (constructor), `start`, `read` per frame, `stop`.
pub trait CaptureDevice: Send {
    /// Short description for logs.
    fn describe(&self) -> String;
    /// Format of every frame.
    fn format(&self) -> SourceFormat;
    /// Starts delivering frames.
    fn start(&mut self) -> Result<(), CaptureError>;
    /// Fills `buf` with frame `n` and `samples` audio samples per channel
    /// starting at sample index `first_sample`.
    fn read(
        &mut self,
        n: i64,
        first_sample: i64,
        samples: usize,
        buf: &mut FrameBuffers<'_>,
    ) -> Result<Captured, CaptureError>;
    /// Stops and releases the device.
    fn stop(&mut self);
    /// The frame pool, made before `start`; a device with its own
    /// buffers lends them as slots.
    fn frame_pool(&mut self, layout: FrameLayout, slots: u32) -> Result<Arc<FramePool>, CaptureError> {
        Ok(FramePool::new(layout, slots))
    }
    /// Device-paced sources: waits for the next frame.
    fn deliver(&mut self, _pool: &Arc<FramePool>) -> Result<Delivery, CaptureError> {
        Err(CaptureError::Device(format!("{} is read, it does not deliver frames itself", self.describe())))
    }
}

/// The built-in test source as a capture device.
#[derive(Debug)]
pub struct TestCapture {
    source: testsrc::TestSource,
    format: SourceFormat,
}

impl TestCapture {
    /// Opens the generator.
    pub fn open(width: u32, height: u32, rate: Rate, audio_channels: u16) -> Self {
        Self {
            source: testsrc::TestSource::new(width, height, rate, audio_channels),
            format: SourceFormat { width, height, rate, audio_channels, live: true, device_paced: false },
        }
    }
}

impl CaptureDevice for TestCapture {
    fn describe(&self) -> String {
        format!("test source {}x{} @ {} fps", self.format.width, self.format.height, self.format.rate)
    }
    fn format(&self) -> SourceFormat {
        self.format
    }
    fn start(&mut self) -> Result<(), CaptureError> {
        Ok(())
    }
    fn read(
        &mut self,
        n: i64,
        first_sample: i64,
        samples: usize,
        buf: &mut FrameBuffers<'_>,
    ) -> Result<Captured, CaptureError> {
        self.source.render(n, buf);
        let len = samples * usize::from(self.format.audio_channels);
        self.source.audio(first_sample, &mut buf.audio[..len]);
        Ok(Captured::Frame)
    }
    fn stop(&mut self) {}
}

/// Stream facts ffprobe reports.
#[derive(Debug, Clone, Copy)]
struct Probe {
    width: u32,
    height: u32,
    rate: Rate,
    has_audio: bool,
}

fn probe(path: &Path) -> Result<Probe, CaptureError> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json", "-show_streams"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CaptureError::Tool { program: "ffprobe", source })?;
    let unreadable = |message: String| CaptureError::Unreadable { path: path.to_path_buf(), message };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(unreadable(err.lines().last().unwrap_or("unknown error").trim().to_string()));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| unreadable(format!("bad ffprobe output: {e}")))?;
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    let video =
        streams.iter().find(|s| s["codec_type"] == "video").ok_or_else(|| unreadable("no video stream".into()))?;
    let dim = |k: &str| video[k].as_u64().and_then(|v| u32::try_from(v).ok()).filter(|&v| v >= 2);
    let (Some(width), Some(height)) = (dim("width"), dim("height")) else {
        return Err(unreadable("video stream has no size".into()));
    };
    let rate = ["r_frame_rate", "avg_frame_rate"]
        .iter()
        .filter_map(|k| video[*k].as_str().and_then(Rate::parse))
        .find(|r| r.fps() >= 1.0 && r.fps() <= 120.0)
        .ok_or_else(|| unreadable("video stream has no usable frame rate (1-120 fps)".into()))?;
    let has_audio = streams.iter().any(|s| s["codec_type"] == "audio");
    Ok(Probe { width, height, rate, has_audio })
}

enum FileReader {
    Y4m { reader: BufReader<File>, line: Vec<u8>, index: u64 },
    Ffmpeg { video: Child, stdout: ChildStdout, audio: Option<(Child, ChildStdout)> },
}

/// A file source.
pub struct FileCapture {
    path: PathBuf,
    format: SourceFormat,
    looping: bool,
    reader: Option<FileReader>,
    y4m: bool,
    audio_scratch: Vec<u8>,
    frames_read: u64,
}

impl std::fmt::Debug for FileCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileCapture({})", self.path.display())
    }
}

/// How often (in frames) a looping file is looked for again.
const LOOK_AGAIN_FRAMES: u64 = 25;

fn is_y4m(path: &Path) -> Result<Option<y4m::Y4mHeader>, CaptureError> {
    let open_err = |source| CaptureError::Open { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 9];
    let n = file.read(&mut magic).map_err(open_err)?;
    if n < 9 || &magic != b"YUV4MPEG2" {
        return Ok(None);
    }
    let mut reader = BufReader::new(File::open(path).map_err(open_err)?);
    match y4m::read_header(&mut reader) {
        Ok(header) => Ok(Some(header)),
        Err(y4m::Y4mError::Unsupported(why)) => {
            tracing::info!(path = %path.display(), "{why}; decoding through ffmpeg");
            Ok(None)
        }
        Err(e) => Err(CaptureError::Unreadable { path: path.to_path_buf(), message: e.to_string() }),
    }
}

impl FileCapture {
    /// Opens and probes a file. Odd picture sizes are cropped to even by
    /// one pixel (4:2:0 needs even sizes).
    pub fn open(path: &Path, looping: bool, audio_channels: u16) -> Result<Self, CaptureError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(CaptureError::Open { path: path.to_path_buf(), source });
        }
        let y4m_header = is_y4m(path)?;
        let direct = y4m_header.filter(|h| h.width % 2 == 0 && h.height % 2 == 0);
        let (width, height, rate, has_audio) = match direct {
            Some(h) => (h.width, h.height, h.rate, false),
            None => {
                let p = probe(path)?;
                (p.width & !1, p.height & !1, p.rate, p.has_audio)
            }
        };
        if width < 16 || height < 16 {
            return Err(CaptureError::Unreadable {
                path: path.to_path_buf(),
                message: format!("picture {width}x{height} is smaller than 16x16"),
            });
        }
        let audio_channels = if has_audio { audio_channels } else { 0 };
        Ok(Self {
            path: path.to_path_buf(),
            format: SourceFormat { width, height, rate, audio_channels, live: false, device_paced: false },
            looping,
            reader: None,
            y4m: direct.is_some(),
            audio_scratch: Vec::new(),
            frames_read: 0,
        })
    }

    fn spawn(&self, args: &[String]) -> Result<(Child, ChildStdout), CaptureError> {
        let mut cmd = Command::new("ffmpeg");
        cmd.args(["-nostdin", "-v", "error"]);
        if self.looping {
            cmd.args(["-stream_loop", "-1"]);
        }
        let mut child = cmd
            .arg("-i")
            .arg(&self.path)
            .args(args)
            .arg("-")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CaptureError::Tool { program: "ffmpeg", source })?;
        let stdout = child.stdout.take().ok_or_else(|| self.stream_err("ffmpeg has no stdout".into()))?;
        Ok((child, stdout))
    }

    fn stream_err(&self, message: String) -> CaptureError {
        CaptureError::Stream { path: self.path.clone(), message }
    }

    fn open_reader(&mut self) -> Result<FileReader, CaptureError> {
        if self.y4m {
            let file =
                File::open(&self.path).map_err(|source| CaptureError::Open { path: self.path.clone(), source })?;
            let mut reader = BufReader::with_capacity(1 << 20, file);
            y4m::read_header(&mut reader).map_err(|e| self.stream_err(e.to_string()))?;
            return Ok(FileReader::Y4m { reader, line: Vec::with_capacity(64), index: 0 });
        }
        let f = self.format;
        let video_args = [
            "-map",
            "0:v:0",
            "-vf",
            &format!("crop={}:{}:0:0", f.width, f.height),
            "-fps_mode",
            "cfr",
            "-r",
            &f.rate.to_string().replace('/', ":"),
            "-pix_fmt",
            "yuv420p",
            "-f",
            "rawvideo",
        ]
        .map(String::from);
        let (video, stdout) = self.spawn(&video_args)?;
        let audio = if f.audio_channels > 0 {
            let ac = f.audio_channels.to_string();
            let args = ["-map", "0:a:0", "-ac", &ac, "-ar", "48000", "-f", "s16le"].map(String::from);
            Some(self.spawn(&args)?)
        } else {
            None
        };
        Ok(FileReader::Ffmpeg { video, stdout, audio })
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on EOF before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) if done == 0 => return Ok(false),
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated frame")),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn child_error(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err.lines().last().unwrap_or("").trim().to_string()
}

impl FileCapture {
    /// The next frame of the file (a loop restarts it).
    fn read_next(
        &mut self,
        _n: i64,
        _first: i64,
        samples: usize,
        buf: &mut FrameBuffers<'_>,
    ) -> Result<Captured, CaptureError> {
        let path = self.path.clone();
        let err = |message: String| CaptureError::Stream { path: path.clone(), message };
        let Some(reader) = self.reader.as_mut() else {
            return Err(err("read before start".into()));
        };
        match reader {
            FileReader::Y4m { reader: r, line, index } => {
                // The pool slot is contiguous Y, U, V: read straight into it.
                // A file cut short ends at its last whole frame: what came
                // before it is kept.
                let truncated = |i: u64| {
                    tracing::warn!(path = %self.path.display(), frame = i, "Y4M file ends inside a frame; input ends at the last whole frame");
                    Ok(Captured::End)
                };
                let got = match y4m::read_frame(r, *index, buf.y, line) {
                    Ok(got) => got,
                    Err(y4m::Y4mError::Truncated(i)) => return truncated(i),
                    Err(e) => return Err(err(e.to_string())),
                };
                if !got {
                    if self.looping && *index > 0 {
                        self.reader = Some(self.open_reader()?);
                        return self.read_next(_n, _first, samples, buf);
                    }
                    return Ok(Captured::End);
                }
                match r.read_exact(buf.u).and_then(|()| r.read_exact(buf.v)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return truncated(*index),
                    Err(e) => return Err(err(format!("frame {index}: {e}"))),
                }
                *index += 1;
                Ok(Captured::Frame)
            }
            FileReader::Ffmpeg { video, stdout, audio } => {
                let got = read_full(stdout, buf.y)
                    .and_then(|got| {
                        if got {
                            read_full(stdout, buf.u)?;
                            read_full(stdout, buf.v)
                        } else {
                            Ok(false)
                        }
                    })
                    .map_err(|e| err(format!("decoding: {e}")))?;
                if !got {
                    let status = video.wait().map_err(|e| err(e.to_string()))?;
                    if !status.success() {
                        return Err(err(format!("ffmpeg failed: {}", child_error(video))));
                    }
                    return Ok(Captured::End);
                }
                let len = samples * usize::from(self.format.audio_channels);
                let out = &mut buf.audio[..len];
                if let Some((_, a)) = audio {
                    self.audio_scratch.resize(len * 2, 0);
                    let scratch = &mut self.audio_scratch[..len * 2];
                    // Audio shorter than video is padded with silence.
                    let mut done = 0;
                    while done < scratch.len() {
                        match a.read(&mut scratch[done..]) {
                            Ok(0) => break,
                            Ok(n) => done += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(err(format!("audio: {e}"))),
                        }
                    }
                    scratch[done..].fill(0);
                    for (o, b) in out.iter_mut().zip(scratch.chunks_exact(2)) {
                        *o = i16::from_le_bytes([b[0], b[1]]);
                    }
                } else {
                    out.fill(0);
                }
                Ok(Captured::Frame)
            }
        }
    }
}

impl CaptureDevice for FileCapture {
    fn describe(&self) -> String {
        let f = self.format;
        format!(
            "file {} ({}x{} @ {} fps, {}{})",
            self.path.display(),
            f.width,
            f.height,
            f.rate,
            if self.y4m { "Y4M read directly" } else { "decoded by ffmpeg" },
            if f.audio_channels > 0 { ", with audio" } else { ", no audio" }
        )
    }

    fn format(&self) -> SourceFormat {
        self.format
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.reader = Some(self.open_reader()?);
        Ok(())
    }

    fn read(
        &mut self,
        n: i64,
        first: i64,
        samples: usize,
        buf: &mut FrameBuffers<'_>,
    ) -> Result<Captured, CaptureError> {
        // ffmpeg loops the file it opened: one deleted or moved away
        // would play on from that handle for ever. A looping file is
        // looked for again every LOOK_AGAIN_FRAMES frames.
        if self.looping && self.frames_read > 0 && self.frames_read.is_multiple_of(LOOK_AGAIN_FRAMES) {
            std::fs::metadata(&self.path).map_err(|source| CaptureError::Open { path: self.path.clone(), source })?;
        }
        let got = self.read_next(n, first, samples, buf)?;
        match got {
            Captured::Frame => self.frames_read += 1,
            Captured::End if self.frames_read == 0 => {
                return Err(CaptureError::NoFrames { path: self.path.clone() });
            }
            Captured::End => {}
        }
        Ok(got)
    }

    fn stop(&mut self) {
        if let Some(FileReader::Ffmpeg { mut video, audio, .. }) = self.reader.take() {
            let _ = video.kill();
            let _ = video.wait();
            if let Some((mut a, _)) = audio {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
    }
}

impl Drop for FileCapture {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::capture::pool::{FrameLayout, FramePool};

    #[test]
    fn a_looping_file_deleted_while_it_plays_stops_with_an_error_naming_it() {
        // ffmpeg loops the file it opened (`-stream_loop`): the case that
        // played on for ever.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.mp4");
        let made = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=25:duration=0.4"])
            .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-y"])
            .arg(&path)
            .status()
            .expect("this test needs ffmpeg (`./run deps` installs it)");
        assert!(made.success());
        let mut file = FileCapture::open(&path, true, 0).unwrap();
        file.start().unwrap();
        let layout = FrameLayout { width: 32, height: 32, audio_channels: 0, max_audio_samples: 0 };
        let pool = FramePool::new(layout, 2);
        let mut read = |n: i64| {
            let mut w = pool.acquire();
            file.read(n, 0, 0, &mut w.buffers())
        };
        // It loops: more frames than the file has (10).
        for n in 0..30 {
            assert!(matches!(read(n), Ok(Captured::Frame)), "frame {n}");
        }
        std::fs::remove_file(&path).unwrap();
        let gone = (30..30 + 2 * LOOK_AGAIN_FRAMES as i64).find_map(|n| read(n).err()).expect("noticed gone");
        assert!(matches!(&gone, CaptureError::Open { path: p, .. } if *p == path), "{gone}");
        assert!(gone.to_string().contains("two.mp4"), "{gone}");
        file.stop();
    }
}
