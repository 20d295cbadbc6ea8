//! Generates Rust declarations of NVIDIA's NVENC API from `nvEncodeAPI.h`
//! (Debian's `libffmpeg-nvenc-dev`, the MIT-licensed header set FFmpeg
//! uses). Only types and constants are taken: every function is reached
//! through the table `NvEncodeAPICreateInstance` fills in at run time, so
//! nothing is linked.

use std::path::PathBuf;

fn main() {
    let dirs: Vec<PathBuf> = std::env::var_os("LOCKSTEP_NVENC_INCLUDE")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_else(|| vec!["/usr/include/ffnvcodec".into(), "/usr/local/include/ffnvcodec".into()]);
    println!("cargo:rerun-if-env-changed=LOCKSTEP_NVENC_INCLUDE");
    let Some(header) = dirs.iter().map(|d| d.join("nvEncodeAPI.h")).find(|h| h.is_file()) else {
        panic!(
            "nvEncodeAPI.h not found in {}: install Debian's libffmpeg-nvenc-dev (`./run deps` does) \
             or point LOCKSTEP_NVENC_INCLUDE at a directory holding it",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    println!("cargo:rerun-if-changed={}", header.display());
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .allowlist_type("NV_ENC.*|_NV_ENC.*|NV_ENCODE_API_FUNCTION_LIST|NVENCSTATUS|GUID")
        .allowlist_var("NVENCAPI_MAJOR_VERSION|NVENCAPI_MINOR_VERSION")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over {}: {e}", header.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("nvenc_sys.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
