//! Which encoder backend a rendition gets.
//!
//! Hardware backends are found at run time (their libraries are loaded
//! with the dynamic loader, never linked), so one binary runs on every
//! appliance. `auto` takes hardware when it is present and a session
//! opens on it (NVENC first, then QSV) and the portable OpenH264 encoder
//! otherwise; asking for a backend that is not there falls back the same
//! way, with a log line saying why. A hardware backend that stops opening
//! sessions later hands its rendition to OpenH264 ([`HardwareFirst`]).

use std::sync::{Arc, OnceLock};

use lockstep_encoder_api::{EncodeError, VideoEncoder, VideoEncoderFactory, VideoSettings};

use crate::config::Backend;

/// What the machine has, probed once per process.
#[derive(Debug, Clone)]
pub struct Hardware {
    /// NVENC GPUs, or why there are none.
    pub nvenc: Result<lockstep_nvenc::NvencInfo, String>,
    /// Quick Sync, or why there is none.
    pub qsv: Result<lockstep_qsv::QsvInfo, String>,
}

/// Probes NVENC and QSV (once; later calls return the first answer).
pub fn hardware() -> &'static Hardware {
    static PROBE: OnceLock<Hardware> = OnceLock::new();
    PROBE.get_or_init(|| Hardware { nvenc: lockstep_nvenc::probe(), qsv: lockstep_qsv::probe() })
}

/// An encoding session on a hardware backend, loaded once per process
/// (the driver, a device context): the factory, or why there is none.
pub fn session(backend: Backend) -> Result<Arc<dyn VideoEncoderFactory>, String> {
    static NVENC: OnceLock<Result<Arc<dyn VideoEncoderFactory>, String>> = OnceLock::new();
    static QSV: OnceLock<Result<Arc<dyn VideoEncoderFactory>, String>> = OnceLock::new();
    match backend {
        Backend::Nvenc => NVENC
            .get_or_init(|| lockstep_nvenc::NvencFactory::load(0).map(|f| Arc::new(f) as Arc<dyn VideoEncoderFactory>))
            .clone(),
        Backend::Qsv => QSV
            .get_or_init(|| lockstep_qsv::QsvFactory::load().map(|f| Arc::new(f) as Arc<dyn VideoEncoderFactory>))
            .clone(),
        other => Err(format!("{} is not a hardware backend", other.name())),
    }
}

/// The backend chosen for one rendition and, when it is not the one
/// asked for, why.
#[derive(Clone)]
pub struct Choice {
    /// Opens encoders.
    pub factory: Arc<dyn VideoEncoderFactory>,
    /// The fallback reason ("NVENC unavailable: …"), if any.
    pub fallback: Option<String>,
}

impl std::fmt::Debug for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Choice").field("factory", &self.factory.name()).field("fallback", &self.fallback).finish()
    }
}

fn software() -> Arc<dyn VideoEncoderFactory> {
    Arc::new(lockstep_openh264::OpenH264Factory)
}

/// A hardware factory, or why `backend` cannot encode here, in words.
fn hardware_factory(
    backend: Backend,
    hw: &Hardware,
    load: &dyn Fn(Backend) -> Result<Arc<dyn VideoEncoderFactory>, String>,
) -> Result<Arc<dyn VideoEncoderFactory>, String> {
    let (label, found) = match backend {
        Backend::Nvenc => ("NVENC", hw.nvenc.as_ref().map(|i| i.gpus.join(", "))),
        _ => ("QSV", hw.qsv.as_ref().map(|i| i.render_nodes.join(", "))),
    };
    let found = found.map_err(|why| format!("{label} unavailable: {why}"))?;
    let factory = load(backend).map_err(|why| format!("{label} found ({found}), but no session opens: {why}"))?;
    Ok(Arc::new(HardwareFirst::new(factory)))
}

/// Chooses the backend for `asked`, given what the machine has; `load`
/// opens the hardware backends' drivers ([`session`] in the daemon).
pub fn choose(
    asked: Backend,
    force_software: bool,
    hw: &Hardware,
    load: &dyn Fn(Backend) -> Result<Arc<dyn VideoEncoderFactory>, String>,
) -> Choice {
    if force_software {
        return Choice { factory: software(), fallback: None };
    }
    let hardware = |backends: &[Backend]| {
        let mut reasons = Vec::new();
        for &b in backends {
            match hardware_factory(b, hw, load) {
                Ok(factory) => return Choice { factory, fallback: None },
                Err(why) => reasons.push(why),
            }
        }
        Choice { factory: software(), fallback: Some(reasons.join("; ")) }
    };
    match asked {
        Backend::Openh264 | Backend::Software => Choice { factory: software(), fallback: None },
        #[cfg(feature = "x264")]
        Backend::X264 => Choice { factory: Arc::new(lockstep_x264::X264Factory), fallback: None },
        #[cfg(not(feature = "x264"))]
        Backend::X264 => {
            Choice { factory: software(), fallback: Some("x264 unavailable: this binary was built without it".into()) }
        }
        Backend::Nvenc | Backend::Qsv => hardware(&[asked]),
        Backend::Auto => hardware(&[Backend::Nvenc, Backend::Qsv]),
    }
}

/// A hardware factory that hands over to the software encoder for good
/// when a session cannot be opened (a GPU's session limit reached, the
/// device lost), with one log line saying why: the rendition goes on.
pub struct HardwareFirst {
    hardware: Arc<dyn VideoEncoderFactory>,
    software: Arc<dyn VideoEncoderFactory>,
    failed: OnceLock<String>,
}

impl HardwareFirst {
    /// Wraps `hardware`, with OpenH264 behind it.
    pub fn new(hardware: Arc<dyn VideoEncoderFactory>) -> Self {
        Self { hardware, software: software(), failed: OnceLock::new() }
    }

    /// Why the hardware is no longer used, once it failed.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }
}

impl std::fmt::Debug for HardwareFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HardwareFirst({}, failed: {:?})", self.hardware.name(), self.failed())
    }
}

impl VideoEncoderFactory for HardwareFirst {
    fn name(&self) -> &'static str {
        if self.failed.get().is_some() { self.software.name() } else { self.hardware.name() }
    }

    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        if self.failed.get().is_none() {
            match self.hardware.open(settings) {
                Ok(encoder) => return Ok(encoder),
                // Settings no encoder can take are the caller's to hear.
                Err(EncodeError::Settings(why)) => return Err(EncodeError::Settings(why)),
                Err(e) => {
                    let why = format!("{} failed: {e}", self.hardware.name());
                    tracing::warn!("{why}; encoding in {} from now on", self.software.name());
                    let _ = self.failed.set(why);
                }
            }
        }
        self.software.open(settings)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn none() -> Hardware {
        Hardware {
            nvenc: Err("libcuda.so.1: cannot open shared object file: No such file or directory".into()),
            qsv: Err("libvpl.so.2: cannot open shared object file: No such file or directory".into()),
        }
    }

    fn both() -> Hardware {
        Hardware {
            nvenc: Ok(lockstep_nvenc::NvencInfo { gpus: vec!["NVIDIA L4".into()], api_version: (12, 2) }),
            qsv: Ok(lockstep_qsv::QsvInfo { render_nodes: vec!["/dev/dri/renderD128".into()] }),
        }
    }

    /// A stand-in for a hardware backend in choice tests (no GPU here):
    /// it encodes with OpenH264 under the hardware's name, or fails to open.
    struct Stand {
        name: &'static str,
        fail: bool,
        opened: AtomicUsize,
    }

    impl VideoEncoderFactory for Stand {
        fn name(&self) -> &'static str {
            self.name
        }
        fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(EncodeError::Unavailable("opening an NVENC session: NV_ENC_ERR_OUT_OF_MEMORY".into()));
            }
            lockstep_openh264::OpenH264Factory.open(settings)
        }
    }

    fn stand(backend: Backend) -> Result<Arc<dyn VideoEncoderFactory>, String> {
        let name = if backend == Backend::Nvenc { "nvenc" } else { "qsv" };
        Ok(Arc::new(Stand { name, fail: false, opened: AtomicUsize::new(0) }))
    }

    fn settings() -> VideoSettings {
        VideoSettings { width: 320, height: 180, fps_num: 25, fps_den: 1, bitrate_bps: 300_000, gop_frames: 50 }
    }

    #[test]
    fn without_hardware_every_choice_is_the_software_encoder() {
        for asked in [Backend::Auto, Backend::Nvenc, Backend::Qsv, Backend::Software, Backend::Openh264] {
            assert_eq!(choose(asked, false, &none(), &session).factory.name(), "openh264", "{asked:?}");
        }
        let nvenc = choose(Backend::Nvenc, false, &none(), &session);
        assert_eq!(
            nvenc.fallback.as_deref(),
            Some("NVENC unavailable: libcuda.so.1: cannot open shared object file: No such file or directory")
        );
        let auto = choose(Backend::Auto, false, &none(), &session).fallback.unwrap_or_default();
        assert!(auto.contains("NVENC unavailable") && auto.contains("QSV unavailable"), "{auto}");
    }

    #[test]
    fn software_asked_for_is_no_fallback() {
        assert!(choose(Backend::Software, false, &both(), &stand).fallback.is_none());
        let forced = choose(Backend::Nvenc, true, &both(), &stand);
        assert!(forced.fallback.is_none(), "the override is not a fallback");
        assert_eq!(forced.factory.name(), "openh264");
    }

    #[test]
    fn auto_takes_nvenc_then_qsv_when_their_sessions_open() {
        assert_eq!(choose(Backend::Auto, false, &both(), &stand).factory.name(), "nvenc");
        let qsv_only = Hardware { nvenc: none().nvenc, ..both() };
        let c = choose(Backend::Auto, false, &qsv_only, &stand);
        assert_eq!((c.factory.name(), c.fallback), ("qsv", None));
        assert_eq!(choose(Backend::Qsv, false, &both(), &stand).factory.name(), "qsv");
    }

    #[test]
    fn present_hardware_whose_driver_does_not_load_says_so() {
        // This machine has no NVIDIA driver, so the real loader fails.
        let c = choose(Backend::Nvenc, false, &both(), &session);
        assert_eq!(c.factory.name(), "openh264");
        let why = c.fallback.unwrap_or_default();
        assert!(why.contains("NVIDIA L4") && why.contains("no session opens"), "{why}");
    }

    #[test]
    fn a_hardware_backend_that_stops_opening_sessions_hands_over_to_software() {
        let failing = Arc::new(Stand { name: "nvenc", fail: true, opened: AtomicUsize::new(0) });
        let f = HardwareFirst::new(failing.clone());
        assert_eq!(f.name(), "nvenc");
        let mut enc = f.open(&settings()).unwrap();
        assert_eq!(enc.name(), "openh264", "the segment is still encoded");
        let (y, c) = (vec![16u8; 320 * 180], vec![128u8; 160 * 90]);
        let picture = lockstep_encoder_api::PictureRef {
            width: 320,
            height: 180,
            y: &y,
            u: &c,
            v: &c,
            y_stride: 320,
            c_stride: 160,
        };
        let mut out = Vec::new();
        assert_eq!(enc.encode(&picture, 0, &mut out).unwrap().kind, lockstep_encoder_api::PictureKind::Idr);
        assert!(f.failed().unwrap_or_default().contains("NV_ENC_ERR_OUT_OF_MEMORY"));
        assert_eq!(f.name(), "openh264");
        f.open(&settings()).unwrap();
        assert_eq!(failing.opened.load(Ordering::SeqCst), 1, "the hardware is not asked again");
        let mut bad = settings();
        bad.width = 0;
        let healthy = HardwareFirst::new(stand(Backend::Nvenc).unwrap());
        assert!(matches!(healthy.open(&bad), Err(EncodeError::Settings(_))), "bad settings are not a hardware fault");
        assert!(healthy.failed().is_none());
    }
}
