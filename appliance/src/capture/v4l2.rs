//! V4L2 capture cards and cameras as a [`CaptureDevice`].
//!
//! The device paces the pipeline: [`CaptureDevice::deliver`] waits for the
//! next buffer. When the device delivers I420 without row padding, its
//! memory-mapped buffers are the frame pool's slots and a frame travels
//! from the driver to every encoder without a copy (the buffer goes back
//! to the driver when the last stage releases it). Any other format is
//! converted once, into one of the pool's own slots, and the buffer goes
//! back at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_v4l2::convert::{self, I420};
use lockstep_v4l2::{Capture, PixelFormat, Request, Ring, V4l2Error};

use super::pool::{FrameLayout, FramePool, LentMemory};
use super::{CaptureDevice, CaptureError, Captured, Delivery, FramePath, SourceFormat};
use crate::capture::pool::FrameBuffers;
use crate::config::Config;
use crate::timeline::Rate;

/// How often the input's signal status is read while frames flow.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

fn device_err(e: V4l2Error) -> CaptureError {
    match e {
        V4l2Error::Gone { path, source } => CaptureError::Gone { path, error: source },
        other => CaptureError::Device(other.to_string()),
    }
}

/// An open V4L2 capture device.
pub struct V4l2Capture {
    capture: Capture,
    format: SourceFormat,
    buffers: u32,
    timeout_ms: u32,
    ring: Option<Arc<Ring>>,
    in_place: bool,
    last_check: Option<Instant>,
}

impl std::fmt::Debug for V4l2Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "V4l2Capture({})", self.capture.path().display())
    }
}

impl V4l2Capture {
    /// Opens and negotiates the configured device.
    pub fn open(config: &Config) -> Result<Self, CaptureError> {
        let s = &config.source;
        let rate = config.source_rate().map_err(|e| CaptureError::Device(e.to_string()))?;
        let format = match s.pixel_format.as_str() {
            "auto" => None,
            name => Some(PixelFormat::parse(name).ok_or_else(|| {
                CaptureError::Device(format!("source.pixel_format `{name}`: use auto, yu12, nv12, yuyv or uyvy"))
            })?),
        };
        let request = Request {
            path: s.device.clone(),
            input: s.input,
            width: s.width,
            height: s.height,
            fps: (rate.num, rate.den),
            format,
            buffers: s.buffers,
        };
        let capture = Capture::open(&request).map_err(device_err)?;
        let n = capture.negotiated();
        Ok(Self {
            format: SourceFormat {
                width: n.width,
                height: n.height,
                rate: Rate { num: n.fps.0, den: n.fps.1 },
                audio_channels: 0,
                live: true,
                device_paced: true,
            },
            in_place: n.is_i420_in_place(),
            capture,
            buffers: s.buffers,
            timeout_ms: s.timeout_ms,
            ring: None,
            last_check: None,
        })
    }

    fn ring(&self) -> Result<&Arc<Ring>, CaptureError> {
        self.ring.as_ref().ok_or_else(|| CaptureError::Device("capture before the buffer ring was mapped".into()))
    }

    /// Gives back every buffer the driver filled meanwhile (while the
    /// signal is bad, so stale pictures never reach the timeline).
    fn drain(&mut self) -> Result<(), CaptureError> {
        loop {
            match self.capture.dequeue(0) {
                Ok(d) => self.ring()?.queue(d.index).map_err(device_err)?,
                Err(e) if e.is_input_fault() => return Ok(()),
                Err(e) => return Err(device_err(e)),
            }
        }
    }
}

impl CaptureDevice for V4l2Capture {
    fn describe(&self) -> String {
        let n = self.capture.negotiated();
        format!(
            "V4L2 {} ({}) input {} {}x{} {} @ {}/{} fps ({})",
            self.capture.path().display(),
            n.buffers.name(),
            n.input,
            n.width,
            n.height,
            n.format.name(),
            n.fps.0,
            n.fps.1,
            if self.in_place { "buffers lent in place" } else { "one conversion to I420" }
        )
    }

    fn format(&self) -> SourceFormat {
        self.format
    }

    fn frame_pool(&mut self, layout: FrameLayout, slots: u32) -> Result<Arc<FramePool>, CaptureError> {
        let ring = self.capture.map(self.buffers).map_err(device_err)?;
        tracing::info!(
            device = %self.capture.path().display(),
            buffers = ring.len(),
            dmabuf = ring.exports_dmabuf(),
            in_place = self.in_place,
            "V4L2 buffer ring mapped"
        );
        self.ring = Some(Arc::clone(&ring));
        if !self.in_place {
            return Ok(FramePool::new(layout, slots));
        }
        let lent = (0..ring.len())
            .filter_map(|i| ring.memory(u32::try_from(i).ok()?))
            .map(|(ptr, len)| LentMemory { ptr, len })
            .collect();
        let give_back = Arc::clone(&ring);
        let path = self.capture.path().to_path_buf();
        // SAFETY: the buffers are the ring's mappings, kept alive by the
        // Arc the closure owns for as long as the pool lives; the driver
        // touches a buffer only while it is queued, and a lent slot is
        // queued only once the pool gives it back.
        unsafe {
            FramePool::with_lent(
                layout,
                slots,
                lent,
                Box::new(move |i| {
                    if let Err(e) = give_back.queue(i) {
                        tracing::warn!(device = %path.display(), "buffer {i} not given back: {e}");
                    }
                }),
            )
        }
        .map_err(CaptureError::Device)
    }

    fn start(&mut self) -> Result<(), CaptureError> {
        self.capture.start().map_err(device_err)
    }

    fn read(&mut self, _: i64, _: i64, _: usize, _: &mut FrameBuffers<'_>) -> Result<Captured, CaptureError> {
        Err(CaptureError::Device("a V4L2 device delivers frames itself (deliver), it is not read".into()))
    }

    fn deliver(&mut self, pool: &Arc<FramePool>) -> Result<Delivery, CaptureError> {
        if self.last_check.is_none_or(|t| t.elapsed() >= SIGNAL_CHECK) {
            self.last_check = Some(Instant::now());
            match self.capture.check_signal() {
                Ok(()) => {}
                Err(e) if e.is_input_fault() => {
                    self.drain()?;
                    // Do not spin: the loop stands in for frames meanwhile.
                    std::thread::sleep(Duration::from_millis(20));
                    self.last_check = None;
                    return Ok(Delivery::Fault(e.to_string()));
                }
                Err(e) => return Err(device_err(e)),
            }
        }
        let d = match self.capture.dequeue(self.timeout_ms) {
            Ok(d) => d,
            Err(e) if e.is_input_fault() => return Ok(Delivery::Fault(e.to_string())),
            Err(e) => return Err(device_err(e)),
        };
        let ring = Arc::clone(self.ring()?);
        if self.in_place {
            let writer = pool
                .lent_writer(d.index)
                .ok_or_else(|| CaptureError::Device(format!("driver returned buffer {} outside the ring", d.index)))?;
            return Ok(Delivery::Frame { writer, captured_mono_ns: d.timestamp_ns, path: FramePath::InPlace });
        }
        let n = self.capture.negotiated();
        let (ptr, len) = ring.memory(d.index).ok_or_else(|| CaptureError::Device(format!("no buffer {}", d.index)))?;
        let mut writer = pool.acquire();
        let result = {
            let b = writer.buffers();
            let mut dst = I420 { width: n.width as usize, height: n.height as usize, y: b.y, u: b.u, v: b.v };
            // SAFETY: the buffer was just dequeued, so the application owns
            // it until the queue below; `len` is its mapped length.
            let src = unsafe { std::slice::from_raw_parts(ptr.cast_const(), len) };
            // Drivers that leave bytesused at 0 fill the whole picture.
            let used = if d.bytes_used == 0 { len } else { (d.bytes_used as usize).min(len) };
            convert::to_i420(n.format, &src[..used], n.stride as usize, &mut dst)
        };
        ring.queue(d.index).map_err(device_err)?;
        match result {
            Ok(()) => Ok(Delivery::Frame { writer, captured_mono_ns: d.timestamp_ns, path: FramePath::Converted }),
            // A short buffer is a corrupt frame: an input fault, not the end.
            Err(e) => Ok(Delivery::Fault(format!("{}: frame {}: {e}", self.capture.path().display(), d.sequence))),
        }
    }

    fn stop(&mut self) {
        self.capture.stop();
    }
}

/// CLOCK_MONOTONIC now, ns (the clock V4L2 stamps buffers with).
pub fn monotonic_ns() -> i128 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_or(0, |ts| i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
}
