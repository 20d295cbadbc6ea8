//! The memory-mapped buffer ring.
//!
//! Ownership of a buffer alternates between the driver (queued) and the
//! application (dequeued). A dequeued buffer is the application's until it
//! is queued again, whichever thread does that: the pipeline's last stage
//! to release a frame gives its buffer back, so capture never copies.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use v4l::device::Handle;
use v4l::v4l_sys;
use v4l::v4l2;
use v4l::v4l2::vidioc;

use crate::planes::{BufArg, BufType};
use crate::{V4l2Error, io_err};

const MMAP: u32 = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;

struct Mapped {
    ptr: *mut u8,
    len: usize,
    dmabuf: Option<OwnedFd>,
    queued: AtomicBool,
}

/// A filled buffer the application now owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequeued {
    /// Buffer index in the ring.
    pub index: u32,
    /// Bytes of picture data.
    pub bytes_used: u32,
    /// The driver's frame counter (a gap means frames the driver dropped).
    pub sequence: u32,
    /// When the frame was captured, CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: i128,
}

/// The ring of driver buffers mapped into the process.
pub struct Ring {
    path: PathBuf,
    handle: Arc<Handle>,
    kind: BufType,
    buffers: Vec<Mapped>,
    stopped: AtomicBool,
    requeued: AtomicU64,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("path", &self.path).field("buffers", &self.buffers.len()).finish()
    }
}

// SAFETY: the raw pointers are mappings owned by the ring for its whole
// life; who may touch a buffer's bytes is decided by the queue/dequeue
// protocol (module docs), not by the thread.
unsafe impl Send for Ring {}
// SAFETY: as above; shared methods only issue ioctls and atomics.
unsafe impl Sync for Ring {}

impl Ring {
    pub(crate) fn map(
        path: &Path,
        handle: Arc<Handle>,
        kind: BufType,
        count: u32,
        size_image: u32,
    ) -> Result<Self, V4l2Error> {
        let fd = handle.fd();
        // SAFETY: plain old data, zero is valid.
        let mut req: v4l_sys::v4l2_requestbuffers = unsafe { std::mem::zeroed() };
        req.count = count;
        req.type_ = kind.raw();
        req.memory = MMAP;
        // SAFETY: the argument is the struct VIDIOC_REQBUFS expects and lives for the call.
        unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_REQBUFS, (&raw mut req).cast()) }
            .map_err(io_err(path, "VIDIOC_REQBUFS"))?;
        if req.count < 2 {
            return Err(V4l2Error::Unsupported {
                path: path.to_path_buf(),
                message: format!("the driver gave {} buffers, at least 2 are needed", req.count),
            });
        }
        let mut ring = Ring {
            path: path.to_path_buf(),
            handle,
            kind,
            buffers: Vec::with_capacity(req.count as usize),
            stopped: AtomicBool::new(false),
            requeued: AtomicU64::new(0),
        };
        for index in 0..req.count {
            let mut b = BufArg::new(index, kind);
            b.ioctl(fd, vidioc::VIDIOC_QUERYBUF).map_err(io_err(path, "VIDIOC_QUERYBUF"))?;
            let len = b.length() as usize;
            if len < size_image as usize {
                return Err(V4l2Error::Unsupported {
                    path: path.to_path_buf(),
                    message: format!("buffer {index} holds {len} bytes, a picture needs {size_image}"),
                });
            }
            let offset = b.offset();
            // SAFETY: maps `len` bytes of the device at the driver's offset;
            // the mapping is checked and owned by the ring until drop.
            let ptr = unsafe {
                v4l2::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    libc::off_t::from(offset),
                )
            }
            .map_err(io_err(path, "mmap"))?;
            ring.buffers.push(Mapped {
                ptr: ptr.cast(),
                len,
                dmabuf: export(fd, kind, index),
                queued: AtomicBool::new(false),
            });
        }
        Ok(ring)
    }

    /// Buffers in the ring.
    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    /// Whether the ring is empty (never: at least 2 buffers).
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Whether every buffer could be exported as DMABUF.
    pub fn exports_dmabuf(&self) -> bool {
        self.buffers.iter().all(|b| b.dmabuf.is_some())
    }

    /// The DMABUF descriptor of a buffer, for importing into a hardware
    /// encoder.
    pub fn dmabuf(&self, index: u32) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.buffers.get(index as usize)?.dmabuf.as_ref().map(|fd| fd.as_fd())
    }

    /// Start address and length of a buffer's mapping. Reading or writing
    /// through it is sound only while the application owns the buffer
    /// (between [`Ring::dequeue`] and [`Ring::queue`]).
    pub fn memory(&self, index: u32) -> Option<(*mut u8, usize)> {
        self.buffers.get(index as usize).map(|b| (b.ptr, b.len))
    }

    /// Buffers given back since the ring was mapped.
    pub fn requeued(&self) -> u64 {
        self.requeued.load(Ordering::Relaxed)
    }

    /// Gives a buffer back to the driver. After stop, buffers are only
    /// marked free (they are queued again at the next start).
    pub fn queue(&self, index: u32) -> Result<(), V4l2Error> {
        let Some(b) = self.buffers.get(index as usize) else {
            return Err(V4l2Error::Unsupported { path: self.path.clone(), message: format!("no buffer {index}") });
        };
        if self.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        if b.queued.swap(true, Ordering::AcqRel) {
            return Ok(()); // already with the driver
        }
        if let Err(e) = BufArg::new(index, self.kind).ioctl(self.handle.fd(), vidioc::VIDIOC_QBUF) {
            b.queued.store(false, Ordering::Release);
            return Err(io_err(&self.path, "VIDIOC_QBUF")(e));
        }
        self.requeued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn queue_all(&self) -> Result<(), V4l2Error> {
        self.stopped.store(false, Ordering::Release);
        for index in 0..self.buffers.len() {
            self.queue(u32::try_from(index).unwrap_or(u32::MAX))?;
        }
        Ok(())
    }

    pub(crate) fn stopping(&self) {
        self.stopped.store(true, Ordering::Release);
        for b in &self.buffers {
            b.queued.store(false, Ordering::Release);
        }
    }

    pub(crate) fn dequeue(&self, timeout_ms: u32) -> Result<Dequeued, V4l2Error> {
        let fd = self.handle.fd();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, alive for the call.
            let n = unsafe { libc::poll(&raw mut pfd, 1, i32::try_from(left.as_millis()).unwrap_or(i32::MAX)) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err(&self.path, "poll")(e));
            }
            if n == 0 {
                return Err(V4l2Error::Timeout { path: self.path.clone(), ms: timeout_ms });
            }
            let mut arg = BufArg::new(0, self.kind);
            match arg.ioctl(fd, vidioc::VIDIOC_DQBUF) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    if left.is_zero() {
                        return Err(V4l2Error::Timeout { path: self.path.clone(), ms: timeout_ms });
                    }
                    continue;
                }
                Err(e)
                    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 && e.raw_os_error() == Some(libc::EINVAL) =>
                {
                    return Err(V4l2Error::Gone { path: self.path.clone(), source: e });
                }
                Err(e) => return Err(io_err(&self.path, "VIDIOC_DQBUF")(e)),
            }
            let buf = arg.buf;
            if let Some(b) = self.buffers.get(buf.index as usize) {
                b.queued.store(false, Ordering::Release);
            }
            if buf.flags & v4l_sys::V4L2_BUF_FLAG_ERROR != 0 {
                self.queue(buf.index)?;
                return Err(V4l2Error::Corrupt { path: self.path.clone(), sequence: buf.sequence });
            }
            let ts = i128::from(buf.timestamp.tv_sec) * 1_000_000_000 + i128::from(buf.timestamp.tv_usec) * 1_000;
            return Ok(Dequeued {
                index: buf.index,
                bytes_used: arg.bytes_used(),
                sequence: buf.sequence,
                timestamp_ns: ts,
            });
        }
    }
}

fn export(fd: i32, kind: BufType, index: u32) -> Option<OwnedFd> {
    // SAFETY: plain old data, zero is valid.
    let mut exp: v4l_sys::v4l2_exportbuffer = unsafe { std::mem::zeroed() };
    exp.type_ = kind.raw();
    exp.index = index;
    exp.plane = 0;
    exp.flags = (libc::O_CLOEXEC | libc::O_RDONLY) as u32;
    // SAFETY: the struct VIDIOC_EXPBUF expects, alive for the call.
    unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_EXPBUF, (&raw mut exp).cast()) }.ok()?;
    // SAFETY: on success the driver returned a new descriptor we now own.
    (exp.fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(exp.fd) })
}

impl Drop for Ring {
    fn drop(&mut self) {
        for b in &self.buffers {
            // SAFETY: unmaps exactly the mapping made in `map`; nothing
            // refers to it any more (the ring is being dropped).
            let _ = unsafe { v4l2::munmap(b.ptr.cast(), b.len) };
        }
    }
}
