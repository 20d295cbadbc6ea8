//! Video4Linux2 capture for Lockstep.
//!
//! [`Capture::open`] negotiates input, pixel format, size and frame rate
//! with the device; [`Capture::map`] requests a fixed ring of
//! memory-mapped buffers (exported as DMABUF file descriptors where the
//! driver can, for hardware encoders); [`Capture::start`] queues them and
//! starts streaming. [`Capture::dequeue`] waits for the next filled buffer:
//! the caller reads it in place and gives it back with [`Ring::queue`] when
//! the last stage is done with it, so a picture is never copied on its
//! way from the device to the encoders.
//!
//! Trouble on the input is reported, not hidden: a dequeue that times out,
//! a buffer the driver marks as corrupt and an input whose status says
//! "no signal" or "no lock" are [`V4l2Error::Timeout`],
//! [`V4l2Error::Corrupt`] and [`V4l2Error::NoSignal`], which the pipeline
//! treats as an input fault; a device that disappears is
//! [`V4l2Error::Gone`].

pub mod convert;
mod planes;
mod ring;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use v4l::Device;
use v4l::FourCC;
use v4l::control::{Type as ControlType, Value as ControlValue};
use v4l::framesize::FrameSizeEnum;
use v4l::v4l_sys;
use v4l::v4l2;
use v4l::v4l2::vidioc;
use v4l::video::Capture as _;

pub use planes::BufType;
pub use ring::{Dequeued, Ring};

/// What went wrong; every message names the device.
#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    /// The device node cannot be opened.
    #[error(
        "{path}: cannot open: {source} (is the capture card installed and its driver loaded? `lockstep devices` lists what is there)"
    )]
    Open {
        /// Device node.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The node is not a streaming video capture device.
    #[error("{path} ({card}) is not a streaming video capture device")]
    NotCapture {
        /// Device node.
        path: PathBuf,
        /// Card name.
        card: String,
    },
    /// The requested input, format, size or rate is not available.
    #[error("{path}: {message}")]
    Unsupported {
        /// Device node.
        path: PathBuf,
        /// What was asked and what the device offers.
        message: String,
    },
    /// An ioctl or mapping failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// Device node.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The device went away (unplugged, driver unloaded).
    #[error("{path}: the device disappeared ({source})")]
    Gone {
        /// Device node.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// No frame arrived in time.
    #[error("{path}: no frame for {ms} ms")]
    Timeout {
        /// Device node.
        path: PathBuf,
        /// How long was waited.
        ms: u32,
    },
    /// The input reports no usable signal.
    #[error("{path} input {input}: {status}")]
    NoSignal {
        /// Device node.
        path: PathBuf,
        /// Input index.
        input: u32,
        /// The status bits in words ("no signal", "no horizontal lock").
        status: String,
    },
    /// The driver marked a buffer as corrupt (V4L2_BUF_FLAG_ERROR).
    #[error("{path}: the driver marked frame {sequence} as corrupt")]
    Corrupt {
        /// Device node.
        path: PathBuf,
        /// The driver's frame sequence number.
        sequence: u32,
    },
}

impl V4l2Error {
    /// Whether the error is an input fault (the device works, the signal
    /// does not): the pipeline keeps its timeline and waits for the signal.
    pub fn is_input_fault(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::NoSignal { .. } | Self::Corrupt { .. })
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO) | Some(libc::EIO))
}

/// Pixel formats the pipeline takes (all 8-bit Y'CbCr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 4:2:2, Y0 Cb Y1 Cr.
    Yuyv,
    /// Packed 4:2:2, Cb Y0 Cr Y1.
    Uyvy,
    /// Planar 4:2:0, Y plane then interleaved CbCr.
    Nv12,
    /// Planar 4:2:0, Y, Cb, Cr planes (I420): what the encoders take.
    Yu12,
}

impl PixelFormat {
    /// All, best first: I420 needs no conversion, NV12 the cheapest one.
    pub const ALL: [PixelFormat; 4] = [Self::Yu12, Self::Nv12, Self::Yuyv, Self::Uyvy];

    /// The V4L2 fourcc.
    pub fn fourcc(self) -> FourCC {
        FourCC::new(match self {
            Self::Yuyv => b"YUYV",
            Self::Uyvy => b"UYVY",
            Self::Nv12 => b"NV12",
            Self::Yu12 => b"YU12",
        })
    }

    /// The format with this fourcc, if the pipeline takes it.
    pub fn from_fourcc(fourcc: FourCC) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// Config name ("yuyv", "uyvy", "nv12", "yu12").
    pub fn name(self) -> &'static str {
        match self {
            Self::Yuyv => "yuyv",
            Self::Uyvy => "uyvy",
            Self::Nv12 => "nv12",
            Self::Yu12 => "yu12",
        }
    }

    /// Parses a config name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Bytes per line of the first plane at `width`, without padding.
    pub fn min_stride(self, width: u32) -> u32 {
        match self {
            Self::Yuyv | Self::Uyvy => width * 2,
            Self::Nv12 | Self::Yu12 => width,
        }
    }
}

fn fourcc_text(f: FourCC) -> String {
    f.str().map(str::to_string).unwrap_or_else(|_| format!("{:?}", f.repr))
}

/// What to ask the device for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Device node.
    pub path: PathBuf,
    /// Input to select (VIDIOC_S_INPUT); `None` keeps the current one.
    pub input: Option<u32>,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Frame rate as `num/den` frames per second.
    pub fps: (u32, u32),
    /// Pixel format; `None` picks the best the device offers.
    pub format: Option<PixelFormat>,
    /// Buffers in the ring.
    pub buffers: u32,
}

/// What the device agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Input in use.
    pub input: u32,
    /// Picture width.
    pub width: u32,
    /// Picture height.
    pub height: u32,
    /// Bytes per line of the first plane.
    pub stride: u32,
    /// Bytes of one buffer's picture.
    pub size_image: u32,
    /// Pixel format.
    pub format: PixelFormat,
    /// Frame rate as `num/den` frames per second.
    pub fps: (u32, u32),
    /// The buffer API in use.
    pub buffers: BufType,
}

impl Negotiated {
    /// Whether a buffer is already the pipeline's I420 layout (no row
    /// padding), so it can be handed on in place.
    pub fn is_i420_in_place(&self) -> bool {
        self.format == PixelFormat::Yu12 && self.stride == self.width
    }
}

/// An input's status bits (VIDIOC_ENUMINPUT) that mean no usable picture.
const FAULT_BITS: [(u32, &str); 7] = [
    (v4l_sys::V4L2_IN_ST_NO_POWER, "no power"),
    (v4l_sys::V4L2_IN_ST_NO_SIGNAL, "no signal"),
    (v4l_sys::V4L2_IN_ST_NO_H_LOCK, "no horizontal lock"),
    (v4l_sys::V4L2_IN_ST_NO_V_LOCK, "no vertical lock"),
    (v4l_sys::V4L2_IN_ST_NO_STD_LOCK, "no standard lock"),
    (v4l_sys::V4L2_IN_ST_NO_SYNC, "no sync"),
    (v4l_sys::V4L2_IN_ST_NO_CARRIER, "no carrier"),
];

/// The fault bits of an input status in words; empty when the signal is good.
pub fn status_words(status: u32) -> Vec<&'static str> {
    FAULT_BITS.iter().filter(|(bit, _)| status & bit != 0).map(|(_, w)| *w).collect()
}

/// One video input of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputInfo {
    /// Index for VIDIOC_S_INPUT.
    pub index: u32,
    /// Name ("HDMI 0", "Camera 0").
    pub name: String,
    /// Fault bits in words (empty: signal present, or not reported).
    pub status: Vec<&'static str>,
}

/// One pixel format with its sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatInfo {
    /// Fourcc.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Whether the pipeline takes it.
    pub supported: bool,
    /// Discrete sizes as `WxH`, or one `min..max` range.
    pub sizes: Vec<String>,
}

/// One control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlInfo {
    /// Control id.
    pub id: u32,
    /// Name as the driver gives it.
    pub name: String,
    /// `integer`, `boolean`, `menu`, `button` or `other`.
    pub kind: &'static str,
    /// Smallest value.
    pub minimum: i64,
    /// Largest value.
    pub maximum: i64,
    /// Default value.
    pub default: i64,
    /// Current value (None for buttons and controls that cannot be read).
    pub value: Option<i64>,
    /// Menu entries as (value, name).
    pub menu: Vec<(i64, String)>,
}

/// A capture device as discovery finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device node.
    pub path: PathBuf,
    /// Driver name.
    pub driver: String,
    /// Card name.
    pub card: String,
    /// Bus.
    pub bus: String,
    /// Inputs.
    pub inputs: Vec<InputInfo>,
    /// Pixel formats.
    pub formats: Vec<FormatInfo>,
    /// Whether the driver streams (memory-mapped buffer rings).
    pub streaming: bool,
    /// The buffer API it captures with.
    pub buffers: BufType,
}

fn open_device(path: &Path) -> Result<Device, V4l2Error> {
    Device::with_path(path).map_err(|source| V4l2Error::Open { path: path.to_path_buf(), source })
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(io::Error) -> V4l2Error + 'a {
    move |source| {
        if is_gone(&source) {
            V4l2Error::Gone { path: path.to_path_buf(), source }
        } else {
            V4l2Error::Io { path: path.to_path_buf(), op, source }
        }
    }
}

/// Every `/dev/video*` node that captures video, sorted by name. Nodes
/// that cannot be opened or are not capture devices are left out.
pub fn discover() -> Vec<DeviceInfo> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("video")))
                .collect()
        })
        .unwrap_or_default();
    paths.sort_by_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.trim_start_matches("video").parse::<u32>().unwrap_or(u32::MAX)
    });
    paths.iter().filter_map(|p| describe(p).ok()).collect()
}

/// Capabilities, inputs and formats of one device.
pub fn describe(path: &Path) -> Result<DeviceInfo, V4l2Error> {
    let device = open_device(path)?;
    let caps = device.query_caps().map_err(io_err(path, "VIDIOC_QUERYCAP"))?;
    let flags = caps.capabilities;
    let Some(kind) = BufType::of(flags.bits()) else {
        return Err(V4l2Error::NotCapture { path: path.to_path_buf(), card: caps.card });
    };
    let fd = device.handle().fd();
    let inputs = (0..64).map_while(|index| enum_input(fd, index)).collect();
    let formats = planes::enum_formats(fd, kind)
        .map_err(io_err(path, "VIDIOC_ENUM_FMT"))?
        .into_iter()
        .map(|(fourcc, description)| {
            let sizes = device
                .enum_framesizes(fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s.size {
                    FrameSizeEnum::Discrete(d) => format!("{}x{}", d.width, d.height),
                    FrameSizeEnum::Stepwise(s) => {
                        format!("{}x{}..{}x{}", s.min_width, s.min_height, s.max_width, s.max_height)
                    }
                })
                .collect();
            FormatInfo {
                fourcc: fourcc_text(fourcc),
                description,
                supported: PixelFormat::from_fourcc(fourcc).is_some(),
                sizes,
            }
        })
        .collect();
    Ok(DeviceInfo {
        path: path.to_path_buf(),
        driver: caps.driver,
        card: caps.card,
        bus: caps.bus,
        inputs,
        formats,
        streaming: flags.contains(v4l::capability::Flags::STREAMING),
        buffers: kind,
    })
}

fn enum_input(fd: i32, index: u32) -> Option<InputInfo> {
    // SAFETY: v4l2_input is plain old data; all-zero is a valid value.
    let mut input: v4l_sys::v4l2_input = unsafe { std::mem::zeroed() };
    input.index = index;
    // SAFETY: the argument is a v4l2_input, as VIDIOC_ENUMINPUT expects,
    // and lives for the call.
    unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_ENUMINPUT, (&raw mut input).cast()) }.ok()?;
    let name = input.name.iter().take_while(|&&c| c != 0).map(|&c| c as char).collect();
    Some(InputInfo { index, name, status: status_words(input.status) })
}

/// An open, negotiated capture device.
pub struct Capture {
    path: PathBuf,
    device: Device,
    kind: BufType,
    negotiated: Negotiated,
    ring: Option<Arc<Ring>>,
    streaming: bool,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("path", &self.path).field("negotiated", &self.negotiated).finish()
    }
}

impl Capture {
    /// Opens the device and negotiates what `request` asks for. The
    /// device may round the size or rate: a different size is an error
    /// (the ladder depends on it), a different rate too (the timeline
    /// depends on it).
    pub fn open(request: &Request) -> Result<Self, V4l2Error> {
        let path = request.path.as_path();
        let device = open_device(path)?;
        let caps = device.query_caps().map_err(io_err(path, "VIDIOC_QUERYCAP"))?;
        let kind = BufType::of(caps.capabilities.bits());
        let Some(kind) = kind.filter(|_| caps.capabilities.contains(v4l::capability::Flags::STREAMING)) else {
            return Err(V4l2Error::NotCapture { path: path.to_path_buf(), card: caps.card });
        };
        let fd = device.handle().fd();
        let unsupported = |message: String| V4l2Error::Unsupported { path: path.to_path_buf(), message };
        let input = match request.input {
            Some(index) => {
                if enum_input(fd, index).is_none() {
                    let names: Vec<String> =
                        (0..64).map_while(|i| enum_input(fd, i)).map(|i| format!("{} = {}", i.index, i.name)).collect();
                    return Err(unsupported(format!("input {index} does not exist (inputs: {})", names.join(", "))));
                }
                let mut value: libc::c_int = i32::try_from(index).unwrap_or(0);
                // SAFETY: VIDIOC_S_INPUT takes a pointer to an int that lives for the call.
                unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_S_INPUT, (&raw mut value).cast()) }
                    .map_err(io_err(path, "VIDIOC_S_INPUT"))?;
                index
            }
            None => {
                let mut value: libc::c_int = 0;
                // SAFETY: VIDIOC_G_INPUT writes an int that lives for the call.
                match unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_G_INPUT, (&raw mut value).cast()) } {
                    Ok(()) => u32::try_from(value).unwrap_or(0),
                    Err(_) => 0, // drivers with one input may not implement it
                }
            }
        };
        // HDMI/SDI inputs: the timing sets size and rate; pick the one asked for.
        let dv_input = input_caps(fd, input) & v4l_sys::V4L2_IN_CAP_DV_TIMINGS != 0;
        if dv_input {
            let current = dv::current(fd);
            let matches = current.is_some_and(|m| {
                (m.width, m.height) == (request.width, request.height) && !m.interlaced && m.runs_at(request.fps)
            });
            if !matches {
                dv::select(fd, path, request.width, request.height, request.fps)?;
            }
        }
        let offered: Vec<FourCC> = planes::enum_formats(fd, kind)
            .map_err(io_err(path, "VIDIOC_ENUM_FMT"))?
            .into_iter()
            .map(|(fourcc, _)| fourcc)
            .collect();
        let format = match request.format {
            Some(f) if offered.contains(&f.fourcc()) => f,
            Some(f) => {
                return Err(unsupported(format!(
                    "pixel format {} is not offered (the device offers {})",
                    f.name(),
                    offered.iter().map(|f| fourcc_text(*f)).collect::<Vec<_>>().join(", ")
                )));
            }
            None => PixelFormat::ALL.into_iter().find(|f| offered.contains(&f.fourcc())).ok_or_else(|| {
                unsupported(format!(
                    "none of the pixel formats Lockstep takes (YU12, NV12, YUYV, UYVY) is offered (the device offers {})",
                    offered.iter().map(|f| fourcc_text(*f)).collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        let got = planes::set_format(fd, kind, request.width, request.height, format.fourcc())
            .map_err(io_err(path, "VIDIOC_S_FMT"))?;
        if got.planes != 1 {
            return Err(unsupported(format!(
                "{} comes in {} separate buffers per picture here; Lockstep takes formats whose picture is in one \
                 buffer (YU12, NV12, YUYV, UYVY)",
                format.name(),
                got.planes
            )));
        }
        if (got.width, got.height) != (request.width, request.height) || got.fourcc != format.fourcc() {
            return Err(unsupported(format!(
                "asked for {}x{} {}, the device gives {}x{} {} (sizes it offers: {})",
                request.width,
                request.height,
                format.name(),
                got.width,
                got.height,
                fourcc_text(got.fourcc),
                describe(path)
                    .ok()
                    .and_then(|d| d
                        .formats
                        .into_iter()
                        .find(|f| f.fourcc == fourcc_text(format.fourcc()))
                        .map(|f| f.sizes.join(", ")))
                    .unwrap_or_default()
            )));
        }
        if got.stride < format.min_stride(got.width) {
            return Err(unsupported(format!("driver reports {} bytes per line for width {}", got.stride, got.width)));
        }
        // A DV input runs at its timing's rate, checked above.
        let fps = if dv_input { request.fps } else { set_rate(fd, kind, path, request.fps)? };
        Ok(Self {
            path: path.to_path_buf(),
            device,
            kind,
            negotiated: Negotiated {
                input,
                width: got.width,
                height: got.height,
                stride: got.stride,
                size_image: got.size,
                format,
                fps,
                buffers: kind,
            },
            ring: None,
            streaming: false,
        })
    }

    /// Device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// Requests and maps the buffer ring (`count` buffers; the driver may
    /// give more or fewer, at least 2). Buffers are exported as DMABUF
    /// where the driver supports it.
    pub fn map(&mut self, count: u32) -> Result<Arc<Ring>, V4l2Error> {
        let ring = Arc::new(Ring::map(&self.path, self.device.handle(), self.kind, count, self.negotiated.size_image)?);
        self.ring = Some(Arc::clone(&ring));
        Ok(ring)
    }

    /// Queues every buffer not lent out and starts streaming.
    pub fn start(&mut self) -> Result<(), V4l2Error> {
        let ring = self
            .ring
            .as_ref()
            .ok_or_else(|| V4l2Error::Unsupported { path: self.path.clone(), message: "start before map".into() })?;
        ring.queue_all()?;
        let mut kind = libc::c_int::try_from(self.kind.raw()).unwrap_or(1);
        // SAFETY: VIDIOC_STREAMON takes a pointer to the buffer type, an int
        // that lives for the call.
        unsafe { v4l2::ioctl(self.device.handle().fd(), vidioc::VIDIOC_STREAMON, (&raw mut kind).cast()) }
            .map_err(io_err(&self.path, "VIDIOC_STREAMON"))?;
        self.streaming = true;
        Ok(())
    }

    /// Waits up to `timeout_ms` for the next filled buffer. The caller
    /// owns the buffer until it gives it back with [`Ring::queue`].
    pub fn dequeue(&mut self, timeout_ms: u32) -> Result<Dequeued, V4l2Error> {
        let ring = self
            .ring
            .as_ref()
            .ok_or_else(|| V4l2Error::Unsupported { path: self.path.clone(), message: "dequeue before map".into() })?;
        ring.dequeue(timeout_ms)
    }

    /// The fault bits of the current input, in words (empty: good).
    pub fn input_status(&self) -> Result<Vec<&'static str>, V4l2Error> {
        let fd = self.device.handle().fd();
        match enum_input(fd, self.negotiated.input) {
            Some(i) => Ok(i.status),
            None => {
                // ENUMINPUT failing on an input that existed: find out why.
                // SAFETY: as in enum_input.
                let mut input: v4l_sys::v4l2_input = unsafe { std::mem::zeroed() };
                input.index = self.negotiated.input;
                // SAFETY: as in enum_input.
                unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_ENUMINPUT, (&raw mut input).cast()) }
                    .map_err(io_err(&self.path, "VIDIOC_ENUMINPUT"))?;
                Ok(status_words(input.status))
            }
        }
    }

    /// Checks the input status and turns bad bits into [`V4l2Error::NoSignal`].
    pub fn check_signal(&self) -> Result<(), V4l2Error> {
        let words = self.input_status()?;
        if words.is_empty() {
            Ok(())
        } else {
            Err(V4l2Error::NoSignal { path: self.path.clone(), input: self.negotiated.input, status: words.join(", ") })
        }
    }

    /// The device's controls with their current values.
    pub fn controls(&self) -> Result<Vec<ControlInfo>, V4l2Error> {
        controls(&self.device, &self.path)
    }

    /// Sets a control by id.
    pub fn set_control(&self, id: u32, value: i64) -> Result<(), V4l2Error> {
        set_control(&self.device, &self.path, id, value)
    }

    /// Stops streaming. Buffers still lent out come back to the driver
    /// harmlessly later (their re-queue is ignored once stopped).
    pub fn stop(&mut self) {
        if !self.streaming {
            return;
        }
        if let Some(ring) = &self.ring {
            ring.stopping();
        }
        let mut kind = libc::c_int::try_from(self.kind.raw()).unwrap_or(1);
        // SAFETY: as in start.
        let _ = unsafe { v4l2::ioctl(self.device.handle().fd(), vidioc::VIDIOC_STREAMOFF, (&raw mut kind).cast()) };
        self.streaming = false;
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_rate(fd: i32, kind: BufType, path: &Path, (num, den): (u32, u32)) -> Result<(u32, u32), V4l2Error> {
    // V4L2 speaks frame intervals (den/num seconds).
    let (inum, iden) = match planes::frame_interval(fd, kind, Some((den, num))) {
        Ok(got) => got,
        // Inputs with a fixed rate (DV timings, TV standards) may refuse
        // S_PARM: the rate they run at is what G_PARM says.
        Err(_) => planes::frame_interval(fd, kind, None).map_err(io_err(path, "VIDIOC_G_PARM"))?,
    };
    if inum == 0 || iden == 0 {
        // The driver does not report a rate: trust the request.
        return Ok((num, den));
    }
    // Compare num/den with iden/inum exactly.
    if u64::from(num) * u64::from(inum) != u64::from(den) * u64::from(iden) {
        return Err(V4l2Error::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "asked for {num}/{den} fps, the device runs at {iden}/{inum} fps; set source.fps to what the input carries"
            ),
        });
    }
    Ok((num, den))
}

/// Controls of a device node (for `lockstep devices` and the admin API).
pub fn device_controls(path: &Path) -> Result<Vec<ControlInfo>, V4l2Error> {
    let device = open_device(path)?;
    controls(&device, path)
}

fn controls(device: &Device, path: &Path) -> Result<Vec<ControlInfo>, V4l2Error> {
    let list = device.query_controls().map_err(io_err(path, "VIDIOC_QUERY_EXT_CTRL"))?;
    Ok(list
        .into_iter()
        .filter(|d| !matches!(d.typ, ControlType::CtrlClass))
        .map(|d| {
            let kind = match d.typ {
                ControlType::Integer | ControlType::Integer64 => "integer",
                ControlType::Boolean => "boolean",
                ControlType::Menu | ControlType::IntegerMenu => "menu",
                ControlType::Button => "button",
                _ => "other",
            };
            let value = match kind {
                "integer" | "boolean" | "menu" => device.control(d.id).ok().and_then(|c| match c.value {
                    ControlValue::Integer(v) => Some(v),
                    ControlValue::Boolean(b) => Some(i64::from(b)),
                    _ => None,
                }),
                _ => None,
            };
            let menu = d
                .items
                .as_ref()
                .map(|items| items.iter().map(|(v, item)| (i64::from(*v), item.to_string())).collect())
                .unwrap_or_default();
            ControlInfo {
                id: d.id,
                name: d.name.clone(),
                kind,
                minimum: d.minimum,
                maximum: d.maximum,
                default: d.default,
                value,
                menu,
            }
        })
        .collect())
}

fn set_control(device: &Device, path: &Path, id: u32, value: i64) -> Result<(), V4l2Error> {
    let list = controls(device, path)?;
    let Some(c) = list.iter().find(|c| c.id == id) else {
        return Err(V4l2Error::Unsupported {
            path: path.to_path_buf(),
            message: format!("no control with id {id:#x}"),
        });
    };
    if c.kind != "button" && !(c.minimum..=c.maximum).contains(&value) {
        return Err(V4l2Error::Unsupported {
            path: path.to_path_buf(),
            message: format!("control `{}`: {value} is outside {}..={}", c.name, c.minimum, c.maximum),
        });
    }
    let v = match c.kind {
        "boolean" => ControlValue::Boolean(value != 0),
        "button" => ControlValue::None,
        _ => ControlValue::Integer(value),
    };
    device.set_control(v4l::Control { id, value: v }).map_err(io_err(path, "VIDIOC_S_EXT_CTRLS"))
}

/// Sets a control on a device node by id (the device may be streaming
/// in another handle: controls are per device, not per file handle).
pub fn set_device_control(path: &Path, id: u32, value: i64) -> Result<(), V4l2Error> {
    let device = open_device(path)?;
    set_control(&device, path, id, value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_names_and_fourccs() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::parse(f.name()), Some(f));
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(PixelFormat::parse("rgb3"), None);
        assert_eq!(PixelFormat::Yuyv.min_stride(1280), 2560);
    }

    #[test]
    fn status_bits_read_as_words() {
        assert!(status_words(0).is_empty());
        let words = status_words(v4l_sys::V4L2_IN_ST_NO_SIGNAL | v4l_sys::V4L2_IN_ST_NO_H_LOCK);
        assert_eq!(words, ["no signal", "no horizontal lock"]);
        // Colour-kill and flip bits are not faults.
        assert!(status_words(v4l_sys::V4L2_IN_ST_HFLIP).is_empty());
    }

    #[test]
    fn a_missing_node_is_a_clear_error() {
        let err = Capture::open(&Request {
            path: "/dev/video-does-not-exist".into(),
            input: None,
            width: 1280,
            height: 720,
            fps: (25, 1),
            format: None,
            buffers: 4,
        })
        .map(|_| ())
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/dev/video-does-not-exist") && text.contains("cannot open"), "{text}");
        assert!(!err.is_input_fault());
    }

    #[test]
    fn only_signal_problems_are_input_faults() {
        let path = PathBuf::from("/dev/video0");
        assert!(V4l2Error::Timeout { path: path.clone(), ms: 200 }.is_input_fault());
        assert!(V4l2Error::NoSignal { path: path.clone(), input: 0, status: "no signal".into() }.is_input_fault());
        assert!(!V4l2Error::Gone { path, source: io::Error::from_raw_os_error(libc::ENODEV) }.is_input_fault());
    }
}

/// Digital-video timings (HDMI, SDI inputs): the input's mode decides
/// size and rate, and S_PARM cannot change it.
mod dv {
    use super::*;

    const fn iowr(nr: u32, size: usize) -> vidioc::_IOC_TYPE {
        ((3u32 << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr) as vidioc::_IOC_TYPE
    }
    const S_DV_TIMINGS: vidioc::_IOC_TYPE = iowr(87, std::mem::size_of::<v4l_sys::v4l2_dv_timings>());
    const G_DV_TIMINGS: vidioc::_IOC_TYPE = iowr(88, std::mem::size_of::<v4l_sys::v4l2_dv_timings>());
    const ENUM_DV_TIMINGS: vidioc::_IOC_TYPE = iowr(98, std::mem::size_of::<v4l_sys::v4l2_enum_dv_timings>());
    const QUERY_DV_TIMINGS: vidioc::_IOC_TYPE =
        ((2u32 << 30) | ((std::mem::size_of::<v4l_sys::v4l2_dv_timings>() as u32) << 16) | ((b'V' as u32) << 8) | 99)
            as vidioc::_IOC_TYPE;

    /// The timing of the signal on the input, as the receiver detects it.
    fn detected(fd: i32) -> Option<v4l_sys::v4l2_dv_timings> {
        // SAFETY: plain old data, zero is valid.
        let mut t: v4l_sys::v4l2_dv_timings = unsafe { std::mem::zeroed() };
        // SAFETY: the struct QUERY_DV_TIMINGS fills, alive for the call.
        unsafe { v4l2::ioctl(fd, QUERY_DV_TIMINGS, (&raw mut t).cast()) }.ok()?;
        Some(t)
    }

    /// Size and rate of a timing, rate as (pixel clock, pixels per frame).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Mode {
        pub width: u32,
        pub height: u32,
        pub clock: u64,
        pub total: u64,
        pub interlaced: bool,
    }

    impl Mode {
        fn of(t: &v4l_sys::v4l2_dv_timings) -> Mode {
            // SAFETY: `bt` is the member for BT.656/1120 timings, the only
            // type the kernel defines; the struct is packed, so fields are
            // copied out, never borrowed.
            let bt = unsafe { t.__bindgen_anon_1.bt };
            let h = u64::from(bt.width) + u64::from(bt.hfrontporch) + u64::from(bt.hsync) + u64::from(bt.hbackporch);
            let mut v =
                u64::from(bt.height) + u64::from(bt.vfrontporch) + u64::from(bt.vsync) + u64::from(bt.vbackporch);
            if bt.interlaced != 0 {
                v += u64::from(bt.il_vfrontporch) + u64::from(bt.il_vsync) + u64::from(bt.il_vbackporch);
            }
            Mode {
                width: bt.width,
                height: bt.height,
                clock: bt.pixelclock,
                total: h * v,
                interlaced: bt.interlaced != 0,
            }
        }

        /// Whether the mode runs at exactly `num/den` frames per second.
        pub fn runs_at(&self, (num, den): (u32, u32)) -> bool {
            self.total > 0 && u128::from(self.clock) * u128::from(den) == u128::from(self.total) * u128::from(num)
        }

        pub fn text(&self) -> String {
            let fps = if self.total > 0 { self.clock as f64 / self.total as f64 } else { 0.0 };
            format!("{}x{}{}{fps:.3}", self.width, self.height, if self.interlaced { "i" } else { "p" })
        }
    }

    pub(super) fn current(fd: i32) -> Option<Mode> {
        // SAFETY: plain old data, zero is valid.
        let mut t: v4l_sys::v4l2_dv_timings = unsafe { std::mem::zeroed() };
        // SAFETY: the struct G_DV_TIMINGS expects, alive for the call.
        unsafe { v4l2::ioctl(fd, G_DV_TIMINGS, (&raw mut t).cast()) }.ok()?;
        Some(Mode::of(&t))
    }

    /// Selects the enumerated timing with this size and rate.
    pub(super) fn select(fd: i32, path: &Path, width: u32, height: u32, fps: (u32, u32)) -> Result<(), V4l2Error> {
        let wanted = |m: &Mode| (m.width, m.height) == (width, height) && !m.interlaced && m.runs_at(fps);
        // What a receiver does first: take the timing the signal carries,
        // when it is the one configured.
        let signal = detected(fd);
        if let Some(mut t) = signal
            && wanted(&Mode::of(&t))
        {
            // SAFETY: the struct S_DV_TIMINGS expects, alive for the call.
            return unsafe { v4l2::ioctl(fd, S_DV_TIMINGS, (&raw mut t).cast()) }
                .map_err(io_err(path, "VIDIOC_S_DV_TIMINGS"));
        }
        if let Some(t) = &signal {
            tracing::warn!(
                device = %path.display(),
                "the signal carries {}, not the configured {width}x{height}p {}/{}; selecting the configured timing",
                Mode::of(t).text(),
                fps.0,
                fps.1
            );
        }
        let mut offered = Vec::new();
        for index in 0..256 {
            // SAFETY: plain old data, zero is valid.
            let mut e: v4l_sys::v4l2_enum_dv_timings = unsafe { std::mem::zeroed() };
            e.index = index;
            // SAFETY: the struct ENUM_DV_TIMINGS expects, alive for the call.
            if unsafe { v4l2::ioctl(fd, ENUM_DV_TIMINGS, (&raw mut e).cast()) }.is_err() {
                break;
            }
            let mode = Mode::of(&e.timings);
            if wanted(&mode) {
                let mut t = e.timings;
                // SAFETY: the struct S_DV_TIMINGS expects, alive for the call.
                return unsafe { v4l2::ioctl(fd, S_DV_TIMINGS, (&raw mut t).cast()) }
                    .map_err(io_err(path, "VIDIOC_S_DV_TIMINGS"));
            }
            offered.push(mode.text());
        }
        Err(V4l2Error::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "the input has no {width}x{height}p timing at {}/{} fps (it offers {}; {})",
                fps.0,
                fps.1,
                if offered.is_empty() { "none".to_string() } else { offered.join(", ") },
                match &signal {
                    Some(t) => format!("the signal carries {}", Mode::of(t).text()),
                    None => "no signal timing detected".to_string(),
                }
            ),
        })
    }
}

fn input_caps(fd: i32, index: u32) -> u32 {
    // SAFETY: as in enum_input.
    let mut input: v4l_sys::v4l2_input = unsafe { std::mem::zeroed() };
    input.index = index;
    // SAFETY: as in enum_input.
    match unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_ENUMINPUT, (&raw mut input).cast()) } {
        Ok(()) => input.capabilities,
        Err(_) => 0,
    }
}
