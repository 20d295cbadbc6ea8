//! Device-class traits for Lockstep's encoders.
//!
//! Every backend (OpenH264 in software, x264, NVENC, QSV) implements
//! [`VideoEncoder`]; every audio backend implements [`AudioEncoder`]. The
//! daemon drives them through these traits only, so a backend chosen at run
//! time is a boxed trait object and the portable backend is always present.
//!
//! Lifecycle: `open` happens in the backend's constructor with fixed
//! [`VideoSettings`]; `encode` is called once per input frame; `finish`
//! drains what the encoder still holds. The daemon opens a fresh encoder at
//! every segment start (segments are encoded independently, so the same
//! input gives the same bytes on every appliance).

use std::fmt;

pub mod sessions;

/// Errors every encoder backend reports.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The settings cannot be used with this backend.
    #[error("encoder settings rejected: {0}")]
    Settings(String),
    /// The backend's library is not available on this machine.
    #[error("encoder backend unavailable: {0}")]
    Unavailable(String),
    /// The backend failed while encoding a frame.
    #[error("encoder failed: {0}")]
    Backend(String),
}

/// Fixed parameters of one video encoding session (one segment).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoSettings {
    /// Coded width in pixels (even).
    pub width: u32,
    /// Coded height in pixels (even).
    pub height: u32,
    /// Frame rate numerator.
    pub fps_num: u32,
    /// Frame rate denominator.
    pub fps_den: u32,
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
    /// Largest distance between IDR frames inside a segment, in frames.
    pub gop_frames: u32,
}

impl VideoSettings {
    /// Frames per second as a float, for backends that want one.
    pub fn fps(&self) -> f64 {
        f64::from(self.fps_num) / f64::from(self.fps_den.max(1))
    }
}

/// One planar 4:2:0 picture (I420) borrowed from a frame buffer.
#[derive(Clone, Copy)]
pub struct PictureRef<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Luma plane, `y_stride * height` bytes.
    pub y: &'a [u8],
    /// Cb plane, `c_stride * height / 2` bytes.
    pub u: &'a [u8],
    /// Cr plane, `c_stride * height / 2` bytes.
    pub v: &'a [u8],
    /// Bytes per luma row.
    pub y_stride: usize,
    /// Bytes per chroma row.
    pub c_stride: usize,
}

impl fmt::Debug for PictureRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PictureRef({}x{})", self.width, self.height)
    }
}

/// Kind of coded picture, as far as packaging cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureKind {
    /// Instantaneous decoder refresh: a sync sample.
    Idr,
    /// Any other picture.
    Other,
}

/// Where an encoder puts one coded picture: Annex B bytes appended to a
/// caller-owned buffer, so the caller can reuse its allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodedPicture {
    /// Bytes appended to the output buffer for this picture (Annex B).
    pub len: usize,
    /// Whether the picture is an IDR.
    pub kind: PictureKind,
}

/// A video encoder backend.
pub trait VideoEncoder: Send {
    /// Short backend name for logs and metrics ("openh264", "x264", ...).
    fn name(&self) -> &'static str;

    /// Encodes one picture, appending its Annex B bytes (parameter sets
    /// included on IDRs) to `out`. `index` counts frames from the start of
    /// this encoding session. Backends without delay return exactly one
    /// coded picture per input; this is checked by the daemon.
    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError>;
}

/// Opens video encoders with given settings; one per backend.
pub trait VideoEncoderFactory: Send + Sync {
    /// Backend name.
    fn name(&self) -> &'static str;
    /// Opens a fresh encoder (fresh rate-control state).
    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError>;
}

/// Fixed parameters of one audio encoding session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSettings {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Interleaved channel count (1 or 2).
    pub channels: u16,
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
}

/// An audio encoder with a fixed frame size.
pub trait AudioEncoder: Send {
    /// Samples per channel in one coded frame.
    fn frame_samples(&self) -> usize;
    /// Samples per channel the encoder delays its output by.
    fn lookahead(&self) -> usize;
    /// Encodes exactly one frame of interleaved samples, appending the
    /// packet to `out`; returns the packet length.
    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, EncodeError>;
}
