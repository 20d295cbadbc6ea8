//! x264 video encoder driver (optional; libx264 is GPL, so the appliance
//! image does not ship it by default).
//!
//! Settings mirror the OpenH264 backend's determinism rules: one thread,
//! no B-frames or lookahead (`zerolatency`), closed GOPs, ABR rate control
//! with a VBV, and a fresh encoder per segment.

use std::ffi::CStr;
use std::ptr;

use lockstep_encoder_api::{
    CodedPicture, EncodeError, PictureKind, PictureRef, VideoEncoder, VideoEncoderFactory, VideoSettings,
};
use x264_sys as sys;

/// Backend name used in config and metrics.
pub const NAME: &str = "x264";

/// Opens x264 encoders.
#[derive(Debug, Default, Clone, Copy)]
pub struct X264Factory;

impl VideoEncoderFactory for X264Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        Ok(Box::new(X264Encoder::open(settings)?))
    }
}

/// One x264 encoding session.
pub struct X264Encoder {
    handle: *mut sys::x264_t,
    settings: VideoSettings,
}

// SAFETY: the x264 handle is used by one thread at a time (all methods take
// `&mut self`); libx264 has no thread affinity.
unsafe impl Send for X264Encoder {}

impl std::fmt::Debug for X264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "X264Encoder({:?})", self.settings)
    }
}

const PRESET: &CStr = c"veryfast";
const TUNE: &CStr = c"zerolatency";
const PROFILE: &CStr = c"main";

impl X264Encoder {
    /// Opens a fresh encoder; the first picture it codes is an IDR.
    pub fn open(settings: &VideoSettings) -> Result<Self, EncodeError> {
        if settings.width % 2 == 1 || settings.height % 2 == 1 || settings.width == 0 || settings.height == 0 {
            return Err(EncodeError::Settings(format!(
                "x264 here needs even, non-zero dimensions, got {}x{}",
                settings.width, settings.height
            )));
        }
        let mut param = std::mem::MaybeUninit::<sys::x264_param_t>::uninit();
        // SAFETY: x264_param_default_preset fully initialises `param` and
        // reads the two NUL-terminated strings.
        let rc = unsafe { sys::x264_param_default_preset(param.as_mut_ptr(), PRESET.as_ptr(), TUNE.as_ptr()) };
        if rc < 0 {
            return Err(EncodeError::Backend("x264: unknown preset".into()));
        }
        // SAFETY: initialised by the successful call above.
        let mut param = unsafe { param.assume_init() };
        let kbps = i32::try_from(settings.bitrate_bps / 1000).unwrap_or(i32::MAX);
        param.i_threads = 1;
        param.b_sliced_threads = 0;
        param.i_width = i32::try_from(settings.width).unwrap_or(0);
        param.i_height = i32::try_from(settings.height).unwrap_or(0);
        param.i_csp = sys::X264_CSP_I420 as i32;
        param.i_fps_num = settings.fps_num;
        param.i_fps_den = settings.fps_den;
        param.i_timebase_num = settings.fps_den;
        param.i_timebase_den = settings.fps_num;
        param.b_vfr_input = 0;
        param.b_repeat_headers = 1;
        param.b_annexb = 1;
        param.i_keyint_max = i32::try_from(settings.gop_frames).unwrap_or(i32::MAX);
        param.b_open_gop = 0;
        param.i_bframe = 0;
        param.i_log_level = sys::X264_LOG_ERROR as i32;
        param.rc.i_rc_method = sys::X264_RC_ABR as i32;
        param.rc.i_bitrate = kbps;
        param.rc.i_vbv_max_bitrate = kbps.saturating_mul(3) / 2;
        param.rc.i_vbv_buffer_size = kbps.saturating_mul(2);
        // SAFETY: `param` is initialised; the profile name is NUL-terminated.
        if unsafe { sys::x264_param_apply_profile(&raw mut param, PROFILE.as_ptr()) } < 0 {
            return Err(EncodeError::Settings("x264 rejected profile main".into()));
        }
        // SAFETY: `param` is a valid, initialised parameter set; x264 copies it.
        let handle = unsafe { sys::x264_encoder_open(&raw mut param) };
        if handle.is_null() {
            return Err(EncodeError::Backend(format!(
                "x264_encoder_open failed for {}x{}",
                settings.width, settings.height
            )));
        }
        Ok(Self { handle, settings: *settings })
    }
}

impl VideoEncoder for X264Encoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
        let h = picture.height as usize;
        if picture.width != self.settings.width
            || picture.height != self.settings.height
            || picture.y.len() < picture.y_stride * h
            || picture.u.len() < picture.c_stride * h / 2
            || picture.v.len() < picture.c_stride * h / 2
        {
            return Err(EncodeError::Backend("picture does not match the session's size".into()));
        }
        let mut pic = std::mem::MaybeUninit::<sys::x264_picture_t>::uninit();
        // SAFETY: x264_picture_init initialises every field.
        unsafe { sys::x264_picture_init(pic.as_mut_ptr()) };
        // SAFETY: initialised just above.
        let mut pic = unsafe { pic.assume_init() };
        pic.img.i_csp = sys::X264_CSP_I420 as i32;
        pic.img.i_plane = 3;
        pic.img.i_stride = [
            i32::try_from(picture.y_stride).unwrap_or(0),
            i32::try_from(picture.c_stride).unwrap_or(0),
            i32::try_from(picture.c_stride).unwrap_or(0),
            0,
        ];
        // x264 only reads the input planes.
        pic.img.plane = [
            picture.y.as_ptr().cast_mut(),
            picture.u.as_ptr().cast_mut(),
            picture.v.as_ptr().cast_mut(),
            ptr::null_mut(),
        ];
        pic.i_pts = i64::try_from(index).unwrap_or(i64::MAX);
        pic.i_type = sys::X264_TYPE_AUTO as i32;
        let mut nals: *mut sys::x264_nal_t = ptr::null_mut();
        let mut n_nals: i32 = 0;
        let mut pic_out = std::mem::MaybeUninit::<sys::x264_picture_t>::uninit();
        // SAFETY: `handle` is open; `pic` points at planes that outlive the
        // call; x264 writes `nals`, `n_nals` and `pic_out`.
        let size = unsafe {
            sys::x264_encoder_encode(self.handle, &raw mut nals, &raw mut n_nals, &raw mut pic, pic_out.as_mut_ptr())
        };
        if size < 0 {
            return Err(EncodeError::Backend(format!("x264_encoder_encode failed ({size})")));
        }
        if size == 0 || nals.is_null() || n_nals <= 0 {
            return Err(EncodeError::Backend("x264 delayed a picture; zerolatency must be in effect".into()));
        }
        // SAFETY: on success x264 filled pic_out.
        let pic_out = unsafe { pic_out.assume_init() };
        // SAFETY: x264 documents that the payloads of all NALs of one
        // picture are contiguous, starting at the first NAL's payload and
        // `size` bytes long; valid until the next encoder call.
        let bytes = unsafe { std::slice::from_raw_parts((*nals).p_payload, size as usize) };
        out.extend_from_slice(bytes);
        let kind = if pic_out.b_keyframe != 0 { PictureKind::Idr } else { PictureKind::Other };
        Ok(CodedPicture { len: size as usize, kind })
    }
}

impl Drop for X264Encoder {
    fn drop(&mut self) {
        // SAFETY: `handle` came from x264_encoder_open and is closed once.
        unsafe { sys::x264_encoder_close(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(frames: u32) -> Vec<u8> {
        let settings =
            VideoSettings { width: 160, height: 96, fps_num: 25, fps_den: 1, bitrate_bps: 300_000, gop_frames: 50 };
        let mut enc = X264Encoder::open(&settings).expect("open");
        let mut out = Vec::new();
        let mut buf = vec![0u8; 160 * 96 * 3 / 2];
        for i in 0..frames {
            for (k, p) in buf.iter_mut().enumerate() {
                *p = (k as u32).wrapping_mul(7).wrapping_add(i * 3) as u8;
            }
            let (y, c) = buf.split_at(160 * 96);
            let (u, v) = c.split_at(80 * 48);
            let p = PictureRef { width: 160, height: 96, y, u, v, y_stride: 160, c_stride: 80 };
            let coded = enc.encode(&p, u64::from(i), &mut out).expect("encode");
            assert_eq!(coded.kind == PictureKind::Idr, i == 0, "frame {i}");
        }
        out
    }

    #[test]
    fn fresh_sessions_are_byte_identical() {
        let a = session(8);
        assert!(a.starts_with(&[0, 0, 0, 1]));
        assert_eq!(a, session(8));
    }
}
