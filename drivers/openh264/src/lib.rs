//! OpenH264 video encoder driver: Lockstep's portable software backend.
//!
//! OpenH264 is compiled from its bundled source together with its x86 SIMD
//! assembly (nasm). CI checks that the assembly is linked (see `.ci/`),
//! because the C-only fallback is several times slower.
//!
//! Determinism: one encoder thread, no frame skipping, fixed rate-control
//! settings and a fresh encoder per segment, so the same input frames give
//! the same bytes on every appliance.

use lockstep_encoder_api::{
    CodedPicture, EncodeError, PictureKind, PictureRef, VideoEncoder, VideoEncoderFactory, VideoSettings,
};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile, QpRange,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};

/// Backend name used in config and metrics.
pub const NAME: &str = "openh264";

/// Quantiser range handed to the rate control. OpenH264 replaces a range
/// that starts at 0 by 12..42, and at 42 busy pictures at low bitrates
/// overshoot their target many times over (a 100 kbit/s 180p rendition of
/// the test source's high-motion scene came out at about 1 Mbit/s); with 51
/// it comes out at about 400 kbit/s (still over: see docs/architecture.md).
/// 12 keeps easy pictures from spending bits no viewer sees.
const MIN_QP: u8 = 12;
const MAX_QP: u8 = 51;

/// Opens OpenH264 encoders.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenH264Factory;

impl VideoEncoderFactory for OpenH264Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        Ok(Box::new(OpenH264Encoder::open(settings)?))
    }
}

/// One OpenH264 encoding session.
pub struct OpenH264Encoder {
    inner: Encoder,
    settings: VideoSettings,
}

impl std::fmt::Debug for OpenH264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenH264Encoder({:?})", self.settings)
    }
}

impl OpenH264Encoder {
    /// Opens a fresh encoder; the first picture it codes is an IDR.
    pub fn open(settings: &VideoSettings) -> Result<Self, EncodeError> {
        if settings.width == 0 || settings.height == 0 || settings.width % 2 == 1 || settings.height % 2 == 1 {
            return Err(EncodeError::Settings(format!(
                "openh264 needs even, non-zero dimensions, got {}x{}",
                settings.width, settings.height
            )));
        }
        if settings.width.max(settings.height) > 3840 || settings.width.min(settings.height) > 2160 {
            return Err(EncodeError::Settings(format!(
                "openh264 encodes up to 3840x2160, got {}x{}",
                settings.width, settings.height
            )));
        }
        #[allow(clippy::cast_possible_truncation)]
        let fps = settings.fps() as f32;
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(settings.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(fps))
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .qp(QpRange::new(MIN_QP, MAX_QP))
            .usage_type(UsageType::CameraVideoRealTime)
            .profile(Profile::Main)
            .complexity(Complexity::Medium)
            .intra_frame_period(IntraFramePeriod::from_num_frames(settings.gop_frames))
            .num_threads(1)
            .vui(VuiConfig::bt709());
        let mut inner = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| EncodeError::Backend(format!("openh264 init: {e}")))?;
        // OpenH264 initialises lazily on the first frame and prints warnings
        // to stderr while doing so (e.g. about frame skipping, which we turn
        // off on purpose). Only errors are worth an operator's attention.
        let mut level: u32 = openh264_sys2::WELS_LOG_ERROR as u32;
        // SAFETY: the encoder exists; TRACE_LEVEL is accepted before
        // initialisation and reads one u32 through the pointer during the call.
        let rc =
            unsafe { inner.raw_api().set_option(openh264_sys2::ENCODER_OPTION_TRACE_LEVEL, (&raw mut level).cast()) };
        if rc != 0 {
            return Err(EncodeError::Backend(format!("openh264 trace level: error {rc}")));
        }
        Ok(Self { inner, settings: *settings })
    }
}

/// Adapter so OpenH264 reads our frame buffers in place (no copy).
struct Planes<'a>(&'a PictureRef<'a>);

impl YUVSource for Planes<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width as usize, self.0.height as usize)
    }
    fn strides(&self) -> (usize, usize, usize) {
        (self.0.y_stride, self.0.c_stride, self.0.c_stride)
    }
    fn y(&self) -> &[u8] {
        self.0.y
    }
    fn u(&self) -> &[u8] {
        self.0.u
    }
    fn v(&self) -> &[u8] {
        self.0.v
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
        if picture.width != self.settings.width || picture.height != self.settings.height {
            return Err(EncodeError::Backend(format!(
                "picture {}x{} does not match the session's {}x{}",
                picture.width, picture.height, self.settings.width, self.settings.height
            )));
        }
        let h = picture.height as usize;
        if picture.y.len() < picture.y_stride * h
            || picture.u.len() < picture.c_stride * h / 2
            || picture.v.len() < picture.c_stride * h / 2
        {
            return Err(EncodeError::Backend("picture planes shorter than their strides say".into()));
        }
        // Milliseconds from the session start: deterministic, feeds OpenH264's rate control.
        let ms = index * 1000 * u64::from(self.settings.fps_den) / u64::from(self.settings.fps_num.max(1));
        let stream = self
            .inner
            .encode_at(&Planes(picture), Timestamp::from_millis(ms))
            .map_err(|e| EncodeError::Backend(format!("openh264 encode: {e}")))?;
        let kind = match stream.frame_type() {
            FrameType::IDR => PictureKind::Idr,
            FrameType::I | FrameType::P => PictureKind::Other,
            other => {
                return Err(EncodeError::Backend(format!(
                    "openh264 produced no picture ({other:?}); frame skipping must stay off"
                )));
            }
        };
        let start = out.len();
        stream.write_vec(out);
        Ok(CodedPicture { len: out.len() - start, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: usize, h: usize, seed: u8, buf: &mut Vec<u8>) {
        buf.clear();
        for y in 0..h {
            for x in 0..w {
                buf.push((x as u8).wrapping_mul(3).wrapping_add((y as u8).wrapping_add(seed)));
            }
        }
        buf.resize(w * h * 3 / 2, 128);
    }

    fn encode_session(frames: u32) -> Vec<u8> {
        let settings =
            VideoSettings { width: 160, height: 96, fps_num: 25, fps_den: 1, bitrate_bps: 300_000, gop_frames: 50 };
        let mut enc = OpenH264Encoder::open(&settings).expect("open");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for i in 0..frames {
            picture(160, 96, i as u8, &mut buf);
            let (y, c) = buf.split_at(160 * 96);
            let (u, v) = c.split_at(80 * 48);
            let p = PictureRef { width: 160, height: 96, y, u, v, y_stride: 160, c_stride: 80 };
            let coded = enc.encode(&p, u64::from(i), &mut out).expect("encode");
            assert_eq!(coded.kind == PictureKind::Idr, i == 0, "frame {i} kind {:?}", coded.kind);
        }
        out
    }

    #[test]
    fn fresh_sessions_are_byte_identical() {
        let a = encode_session(10);
        assert!(a.starts_with(&[0, 0, 0, 1]), "annex B start code expected");
        assert_eq!(a, encode_session(10));
    }

    #[test]
    fn odd_sizes_are_refused_by_name() {
        let settings = VideoSettings { width: 161, height: 96, fps_num: 25, fps_den: 1, bitrate_bps: 1, gop_frames: 1 };
        let err = OpenH264Encoder::open(&settings).expect_err("odd width");
        assert!(err.to_string().contains("161x96"));
    }
}
