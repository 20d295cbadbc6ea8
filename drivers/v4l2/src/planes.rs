//! The buffer type a device captures with, single- or multi-planar, and
//! the format, rate and buffer ioctls spoken in it.
//!
//! Many capture drivers (most SoC and several PCIe capture cards) offer
//! only the multi-planar API (`V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`). Lockstep
//! takes the single-buffer formats there too (YU12, NV12, YUYV, UYVY with
//! one memory plane): the picture then lies in one buffer exactly as with
//! the single-planar API, so everything after the ring is the same. A
//! format with its planes in separate buffers (`YM12`, `NM12`) is refused
//! in words.

use std::io;

use v4l::FourCC;
use v4l::v4l_sys;
use v4l::v4l2;
use v4l::v4l2::vidioc;

/// How a device exchanges capture buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufType {
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE`.
    Single,
    /// `V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE`, one memory plane per buffer.
    Multi,
}

impl BufType {
    /// The type a device with these capability bits captures with
    /// (single-planar when it offers both), or `None` for no capture.
    pub fn of(capabilities: u32) -> Option<Self> {
        if capabilities & v4l_sys::V4L2_CAP_VIDEO_CAPTURE != 0 {
            Some(Self::Single)
        } else if capabilities & v4l_sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE != 0 {
            Some(Self::Multi)
        } else {
            None
        }
    }

    /// The `v4l2_buf_type` value.
    pub fn raw(self) -> u32 {
        match self {
            Self::Single => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE,
            Self::Multi => v4l_sys::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
        }
    }

    /// In words, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single-planar",
            Self::Multi => "multi-planar",
        }
    }
}

/// The formats a device offers: (fourcc, description).
pub(crate) fn enum_formats(fd: i32, kind: BufType) -> io::Result<Vec<(FourCC, String)>> {
    let mut out = Vec::new();
    for index in 0.. {
        // SAFETY: v4l2_fmtdesc is plain old data; all-zero is a valid value.
        let mut d: v4l_sys::v4l2_fmtdesc = unsafe { std::mem::zeroed() };
        d.index = index;
        d.type_ = kind.raw();
        // SAFETY: the struct VIDIOC_ENUM_FMT expects, alive for the call.
        match unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_ENUM_FMT, (&raw mut d).cast()) } {
            Ok(()) => {}
            // EINVAL past the last index ends the list.
            Err(e) if index > 0 && e.raw_os_error() == Some(libc::EINVAL) => break,
            Err(e) => return Err(e),
        }
        let description = d.description.iter().take_while(|&&c| c != 0).map(|&c| c as char).collect();
        out.push((FourCC::from(d.pixelformat), description));
    }
    Ok(out)
}

/// What `VIDIOC_S_FMT` settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub width: u32,
    pub height: u32,
    pub fourcc: FourCC,
    /// Bytes per line of the first plane.
    pub stride: u32,
    /// Bytes of one picture (all its planes, in the one buffer).
    pub size: u32,
    /// Memory planes per buffer (1 for single-planar).
    pub planes: u8,
}

/// Sets the capture format; the driver may round what was asked for.
pub(crate) fn set_format(fd: i32, kind: BufType, width: u32, height: u32, fourcc: FourCC) -> io::Result<Format> {
    // SAFETY: v4l2_format is plain old data; all-zero is a valid value.
    let mut f: v4l_sys::v4l2_format = unsafe { std::mem::zeroed() };
    f.type_ = kind.raw();
    let field = v4l_sys::v4l2_field_V4L2_FIELD_NONE;
    match kind {
        BufType::Single => {
            // SAFETY: the `pix` member is the one a single-planar type uses.
            let pix = unsafe { &mut f.fmt.pix };
            (pix.width, pix.height, pix.pixelformat, pix.field) = (width, height, u32::from(fourcc), field);
        }
        BufType::Multi => {
            // SAFETY: the `pix_mp` member is the one a multi-planar type uses.
            let mp = unsafe { &mut f.fmt.pix_mp };
            (mp.width, mp.height, mp.pixelformat, mp.field, mp.num_planes) =
                (width, height, u32::from(fourcc), field, 1);
        }
    }
    // SAFETY: the struct VIDIOC_S_FMT expects, alive for the call.
    unsafe { v4l2::ioctl(fd, vidioc::VIDIOC_S_FMT, (&raw mut f).cast()) }?;
    // SAFETY: the driver filled the member of the type set above.
    Ok(unsafe {
        match kind {
            BufType::Single => {
                let p = f.fmt.pix;
                Format {
                    width: p.width,
                    height: p.height,
                    fourcc: FourCC::from(p.pixelformat),
                    stride: p.bytesperline,
                    size: p.sizeimage,
                    planes: 1,
                }
            }
            BufType::Multi => {
                let p = f.fmt.pix_mp;
                Format {
                    width: p.width,
                    height: p.height,
                    fourcc: FourCC::from(p.pixelformat),
                    stride: p.plane_fmt[0].bytesperline,
                    size: p.plane_fmt[0].sizeimage,
                    planes: p.num_planes,
                }
            }
        }
    })
}

/// Sets the frame interval (`num/den` seconds) when `interval` is given,
/// else only reads it; returns the one in force (0/0: not reported).
pub(crate) fn frame_interval(fd: i32, kind: BufType, interval: Option<(u32, u32)>) -> io::Result<(u32, u32)> {
    // SAFETY: v4l2_streamparm is plain old data; all-zero is a valid value.
    let mut p: v4l_sys::v4l2_streamparm = unsafe { std::mem::zeroed() };
    p.type_ = kind.raw();
    let request = match interval {
        Some((num, den)) => {
            // SAFETY: the capture member is the one a capture type uses.
            let t = unsafe { &mut p.parm.capture.timeperframe };
            (t.numerator, t.denominator) = (num, den);
            vidioc::VIDIOC_S_PARM
        }
        None => vidioc::VIDIOC_G_PARM,
    };
    // SAFETY: the struct VIDIOC_S_PARM/G_PARM expect, alive for the call.
    unsafe { v4l2::ioctl(fd, request, (&raw mut p).cast()) }?;
    // SAFETY: the driver filled the capture member.
    let t = unsafe { p.parm.capture.timeperframe };
    Ok((t.numerator, t.denominator))
}

/// A `v4l2_buffer` of one type, with room for the one plane a
/// multi-planar buffer carries.
pub(crate) struct BufArg {
    pub buf: v4l_sys::v4l2_buffer,
    plane: v4l_sys::v4l2_plane,
    kind: BufType,
}

impl BufArg {
    /// A memory-mapped buffer `index` of `kind`.
    pub fn new(index: u32, kind: BufType) -> Self {
        // SAFETY: v4l2_buffer and v4l2_plane are plain old data; all-zero
        // is a valid value of each.
        let (mut buf, plane): (v4l_sys::v4l2_buffer, v4l_sys::v4l2_plane) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        buf.index = index;
        buf.type_ = kind.raw();
        buf.memory = v4l_sys::v4l2_memory_V4L2_MEMORY_MMAP;
        Self { buf, plane, kind }
    }

    /// Issues a buffer ioctl (QUERYBUF, QBUF, DQBUF) with this argument.
    pub fn ioctl(&mut self, fd: i32, request: vidioc::_IOC_TYPE) -> io::Result<()> {
        if self.kind == BufType::Multi {
            // The plane array is this struct's own field: point at it now,
            // where it lies for the call.
            self.buf.m.planes = &raw mut self.plane;
            self.buf.length = 1;
        }
        // SAFETY: a v4l2_buffer (with its plane array for the multi-planar
        // type) as the buffer ioctls expect, alive for the call.
        unsafe { v4l2::ioctl(fd, request, (&raw mut self.buf).cast()) }
    }

    /// Bytes the buffer holds (QUERYBUF).
    pub fn length(&self) -> u32 {
        match self.kind {
            BufType::Single => self.buf.length,
            BufType::Multi => self.plane.length,
        }
    }

    /// Offset to map the buffer at (QUERYBUF).
    pub fn offset(&self) -> u32 {
        // SAFETY: for MMAP buffers the driver fills the offset member.
        unsafe {
            match self.kind {
                BufType::Single => self.buf.m.offset,
                BufType::Multi => self.plane.m.mem_offset,
            }
        }
    }

    /// Bytes of picture in a filled buffer (DQBUF).
    pub fn bytes_used(&self) -> u32 {
        match self.kind {
            BufType::Single => self.buf.bytesused,
            BufType::Multi => self.plane.bytesused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_offering_both_apis_captures_single_planar() {
        let (single, multi) = (v4l_sys::V4L2_CAP_VIDEO_CAPTURE, v4l_sys::V4L2_CAP_VIDEO_CAPTURE_MPLANE);
        assert_eq!(BufType::of(single | multi), Some(BufType::Single));
        assert_eq!(BufType::of(multi | v4l_sys::V4L2_CAP_STREAMING), Some(BufType::Multi));
        assert_eq!(BufType::of(v4l_sys::V4L2_CAP_VIDEO_OUTPUT), None);
        assert_eq!(BufType::Multi.raw(), 9);
    }

    #[test]
    fn a_multi_planar_buffer_argument_carries_its_plane() {
        let mut b = BufArg::new(3, BufType::Multi);
        b.plane.length = 1 << 20;
        b.plane.m.mem_offset = 4096;
        b.plane.bytesused = 1000;
        assert_eq!((b.length(), b.offset(), b.bytes_used()), (1 << 20, 4096, 1000));
        assert_eq!((b.buf.index, b.buf.type_), (3, 9));
        // An ioctl on a descriptor that is no device fails, but the plane
        // pointer is set first.
        assert!(b.ioctl(-1, vidioc::VIDIOC_QUERYBUF).is_err());
        // SAFETY: reading back the pointer just written.
        assert!(std::ptr::eq(unsafe { b.buf.m.planes }, &raw const b.plane));
        assert_eq!(b.buf.length, 1);
    }
}
