//! Intel Quick Sync Video discovery through oneVPL, loaded at run time.
//!
//! `probe` opens the oneVPL dispatcher (`libvpl.so.2`) with the dynamic
//! loader, asks it for a hardware implementation and opens (then closes)
//! a session on it. Without the dispatcher, a runtime (libmfx-gen) or an
//! Intel GPU the answer is an error in words, which the daemon logs as
//! "QSV unavailable: …" before it uses the software encoder.

use std::ffi::{c_char, c_int, c_void};

/// The dispatcher library.
pub const VPL_LIBRARY: &str = "libvpl.so.2";

/// What oneVPL reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QsvInfo {
    /// Render nodes present (`/dev/dri/renderD*`).
    pub render_nodes: Vec<String>,
}

/// `mfxVariant` (mfxdefs.h): version, type, 8-byte value.
#[repr(C)]
#[derive(Clone, Copy)]
struct Variant {
    version: u16,
    kind: u32,
    value: u64,
}

const MFX_VARIANT_VERSION: u16 = 0x0100; // major 1, minor 0
const MFX_VARIANT_TYPE_U32: u32 = 5;
const MFX_IMPL_TYPE_HARDWARE: u64 = 0x0002;

type MfxLoad = unsafe extern "C" fn() -> *mut c_void;
type MfxUnload = unsafe extern "C" fn(*mut c_void);
type MfxCreateConfig = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type MfxSetConfigFilterProperty = unsafe extern "C" fn(*mut c_void, *const c_char, Variant) -> c_int;
type MfxCreateSession = unsafe extern "C" fn(*mut c_void, u32, *mut *mut c_void) -> c_int;
type MfxClose = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The render nodes of the machine's GPUs.
pub fn render_nodes() -> Vec<String> {
    let mut nodes: Vec<String> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path().display().to_string()).filter(|p| p.contains("renderD")).collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// Looks for a Quick Sync hardware implementation. `Err` says why there is none.
pub fn probe() -> Result<QsvInfo, String> {
    let nodes = render_nodes();
    // SAFETY: loading the dispatcher runs its initialisers, which have no
    // preconditions on the caller.
    let lib = unsafe { libloading::Library::new(VPL_LIBRARY) }.map_err(|e| e.to_string())?;
    // SAFETY: the symbols have the C signatures of oneVPL's published
    // headers (mfxdispatcher.h, mfxsession.h), declared above; the library
    // stays loaded while they are called, and every object made is freed.
    unsafe {
        let load: libloading::Symbol<MfxLoad> = lib.get(b"MFXLoad\0").map_err(|e| e.to_string())?;
        let unload: libloading::Symbol<MfxUnload> = lib.get(b"MFXUnload\0").map_err(|e| e.to_string())?;
        let create_config: libloading::Symbol<MfxCreateConfig> =
            lib.get(b"MFXCreateConfig\0").map_err(|e| e.to_string())?;
        let filter: libloading::Symbol<MfxSetConfigFilterProperty> =
            lib.get(b"MFXSetConfigFilterProperty\0").map_err(|e| e.to_string())?;
        let create_session: libloading::Symbol<MfxCreateSession> =
            lib.get(b"MFXCreateSession\0").map_err(|e| e.to_string())?;
        let close: libloading::Symbol<MfxClose> = lib.get(b"MFXClose\0").map_err(|e| e.to_string())?;
        let loader = load();
        if loader.is_null() {
            return Err("MFXLoad returned no loader".into());
        }
        let config = create_config(loader);
        let hardware =
            Variant { version: MFX_VARIANT_VERSION, kind: MFX_VARIANT_TYPE_U32, value: MFX_IMPL_TYPE_HARDWARE };
        if config.is_null() || filter(config, c"mfxImplDescription.Impl".as_ptr(), hardware) != 0 {
            unload(loader);
            return Err("oneVPL refused the hardware filter".into());
        }
        let mut session: *mut c_void = std::ptr::null_mut();
        let rc = create_session(loader, 0, &raw mut session);
        if rc != 0 || session.is_null() {
            unload(loader);
            return Err(format!(
                "no Quick Sync hardware implementation (MFXCreateSession status {rc}; render nodes: {})",
                if nodes.is_empty() { "none".to_string() } else { nodes.join(", ") }
            ));
        }
        close(session);
        unload(loader);
    }
    Ok(QsvInfo { render_nodes: nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_has_the_c_layout() {
        assert_eq!(std::mem::size_of::<Variant>(), 16);
        assert_eq!(std::mem::offset_of!(Variant, kind), 4);
        assert_eq!(std::mem::offset_of!(Variant, value), 8);
    }

    #[test]
    fn without_onevpl_the_reason_names_the_library() {
        match probe() {
            Ok(info) => assert!(!info.render_nodes.is_empty(), "{info:?}"),
            Err(why) => {
                assert!(why.contains("libvpl.so.2") || why.contains("Quick Sync") || why.contains("oneVPL"), "{why}")
            }
        }
    }
}
