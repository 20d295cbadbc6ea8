//! Which encoder backend a rendition gets.
//!
//! Hardware backends are found at run time (their libraries are loaded
//! with the dynamic loader, never linked), so one binary runs on every
//! appliance. `auto` takes hardware when it is present and usable and
//! the portable OpenH264 encoder otherwise; asking for a backend that is
//! not there falls back the same way, with a log line saying why.

use std::sync::{Arc, OnceLock};

use lockstep_encoder_api::VideoEncoderFactory;

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

/// Why a present hardware encoder is still not used: Lockstep's encoding
/// sessions for it are not written yet (discovery is).
pub const SESSION_MISSING: &str = "Lockstep's encoding session for it is not implemented yet";

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

/// Why a hardware backend cannot encode here, in words.
fn hardware_reason(backend: Backend, hw: &Hardware) -> String {
    match backend {
        Backend::Nvenc => match &hw.nvenc {
            Err(why) => format!("NVENC unavailable: {why}"),
            Ok(info) => format!("NVENC found ({}), but {SESSION_MISSING}", info.gpus.join(", ")),
        },
        _ => match &hw.qsv {
            Err(why) => format!("QSV unavailable: {why}"),
            Ok(info) => format!("QSV found ({}), but {SESSION_MISSING}", info.render_nodes.join(", ")),
        },
    }
}

/// Chooses the backend for `asked`, given what the machine has.
pub fn choose(asked: Backend, force_software: bool, hw: &Hardware) -> Choice {
    if force_software {
        return Choice { factory: software(), fallback: None };
    }
    match asked {
        Backend::Openh264 | Backend::Software => Choice { factory: software(), fallback: None },
        #[cfg(feature = "x264")]
        Backend::X264 => Choice { factory: Arc::new(lockstep_x264::X264Factory), fallback: None },
        #[cfg(not(feature = "x264"))]
        Backend::X264 => {
            Choice { factory: software(), fallback: Some("x264 unavailable: this binary was built without it".into()) }
        }
        Backend::Nvenc | Backend::Qsv => Choice { factory: software(), fallback: Some(hardware_reason(asked, hw)) },
        Backend::Auto => {
            // Hardware first, when a session can be opened on it.
            let reasons = [hardware_reason(Backend::Nvenc, hw), hardware_reason(Backend::Qsv, hw)];
            Choice { factory: software(), fallback: Some(reasons.join("; ")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Hardware {
        Hardware {
            nvenc: Err("libcuda.so.1: cannot open shared object file: No such file or directory".into()),
            qsv: Err("libvpl.so.2: cannot open shared object file: No such file or directory".into()),
        }
    }

    #[test]
    fn without_hardware_every_choice_is_the_software_encoder() {
        for asked in [Backend::Auto, Backend::Nvenc, Backend::Qsv, Backend::Software, Backend::Openh264] {
            assert_eq!(choose(asked, false, &none()).factory.name(), "openh264", "{asked:?}");
        }
        let nvenc = choose(Backend::Nvenc, false, &none());
        assert_eq!(
            nvenc.fallback.as_deref(),
            Some("NVENC unavailable: libcuda.so.1: cannot open shared object file: No such file or directory")
        );
        let auto = choose(Backend::Auto, false, &none()).fallback.unwrap_or_default();
        assert!(auto.contains("NVENC unavailable") && auto.contains("QSV unavailable"), "{auto}");
    }

    #[test]
    fn software_asked_for_is_no_fallback() {
        assert!(choose(Backend::Software, false, &none()).fallback.is_none());
        assert!(choose(Backend::Nvenc, true, &none()).fallback.is_none(), "the override is not a fallback");
    }

    #[test]
    fn present_hardware_without_a_session_says_so() {
        let hw = Hardware {
            nvenc: Ok(lockstep_nvenc::NvencInfo { gpus: vec!["NVIDIA L4".into()], api_version: (12, 2) }),
            ..none()
        };
        let c = choose(Backend::Nvenc, false, &hw);
        assert_eq!(c.factory.name(), "openh264");
        assert!(c.fallback.unwrap_or_default().contains("NVIDIA L4"));
    }
}
