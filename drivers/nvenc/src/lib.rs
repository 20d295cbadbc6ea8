//! NVENC through NVIDIA's driver libraries, loaded at run time.
//!
//! Nothing here links against CUDA or the video codec SDK. The API's
//! types come from `nvEncodeAPI.h` at build time ([`sys`]); its functions
//! from the table the driver fills in ([`session`]). `probe` opens
//! `libcuda.so.1` and `libnvidia-encode.so.1` with the dynamic loader,
//! asks the driver for its GPUs and for the highest NVENC API version it
//! supports, and closes them again. On a machine without the driver the
//! answer is an error in words ("libnvidia-encode.so.1: cannot open shared
//! object file …"), which the daemon logs as "NVENC unavailable: …" before
//! it uses the software encoder.

use std::ffi::{c_char, c_int, c_uint};

pub mod session;
pub mod sys;

pub use session::NvencFactory;

/// What the driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvencInfo {
    /// GPU names, in CUDA device order.
    pub gpus: Vec<String>,
    /// Highest NVENC API version the driver supports (major, minor).
    pub api_version: (u32, u32),
}

/// The library names tried, in order.
pub const CUDA_LIBRARY: &str = "libcuda.so.1";
/// The NVENC entry points live here.
pub const ENCODE_LIBRARY: &str = "libnvidia-encode.so.1";

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
type NvEncGetMaxSupportedVersion = unsafe extern "C" fn(*mut u32) -> c_int;

fn open(name: &str) -> Result<libloading::Library, String> {
    // SAFETY: loading NVIDIA's driver library runs its initialisers, which
    // have no preconditions on the caller.
    unsafe { libloading::Library::new(name) }.map_err(|e| e.to_string())
}

/// Looks for NVIDIA GPUs with NVENC. `Err` says why there are none.
pub fn probe() -> Result<NvencInfo, String> {
    let cuda = open(CUDA_LIBRARY)?;
    let encode = open(ENCODE_LIBRARY)?;
    // SAFETY: the symbols have the C signatures of NVIDIA's published
    // headers (cuda.h, nvEncodeAPI.h), declared in the types above; the
    // libraries stay loaded while they are called.
    unsafe {
        let init: libloading::Symbol<CuInit> = cuda.get(b"cuInit\0").map_err(|e| e.to_string())?;
        let count: libloading::Symbol<CuDeviceGetCount> = cuda.get(b"cuDeviceGetCount\0").map_err(|e| e.to_string())?;
        let get: libloading::Symbol<CuDeviceGet> = cuda.get(b"cuDeviceGet\0").map_err(|e| e.to_string())?;
        let name: libloading::Symbol<CuDeviceGetName> = cuda.get(b"cuDeviceGetName\0").map_err(|e| e.to_string())?;
        let version: libloading::Symbol<NvEncGetMaxSupportedVersion> =
            encode.get(b"NvEncodeAPIGetMaxSupportedVersion\0").map_err(|e| e.to_string())?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit failed with CUDA error {rc} (driver loaded, no usable GPU)"));
        }
        let mut n: c_int = 0;
        let rc = count(&raw mut n);
        if rc != 0 || n <= 0 {
            return Err(format!("no CUDA device (cuDeviceGetCount: error {rc}, {n} devices)"));
        }
        let mut gpus = Vec::new();
        for ordinal in 0..n {
            let mut dev: c_int = 0;
            let mut buf = [0 as c_char; 128];
            if get(&raw mut dev, ordinal) == 0 && name(buf.as_mut_ptr(), 128, dev) == 0 {
                let text = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
                gpus.push(text);
            } else {
                gpus.push(format!("CUDA device {ordinal}"));
            }
        }
        let mut v: u32 = 0;
        let rc = version(&raw mut v);
        if rc != 0 {
            return Err(format!("NvEncodeAPIGetMaxSupportedVersion failed with NVENC status {rc}"));
        }
        Ok(NvencInfo { gpus, api_version: split_version(v) })
    }
}

/// NVENC packs its version as `major << 4 | minor`.
pub fn split_version(v: u32) -> (u32, u32) {
    (v >> 4, v & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_unpack() {
        assert_eq!(split_version(0xc2), (12, 2));
        assert_eq!(split_version(0xb0), (11, 0));
    }

    #[test]
    fn without_the_driver_the_reason_names_the_library() {
        // This machine class has no NVIDIA driver; a machine with one
        // reports its GPUs instead, which is also checked.
        match probe() {
            Ok(info) => assert!(!info.gpus.is_empty() && info.api_version.0 >= 8, "{info:?}"),
            Err(why) => assert!(
                why.contains("libcuda.so.1") || why.contains("libnvidia-encode.so.1") || why.contains("CUDA"),
                "{why}"
            ),
        }
    }
}
