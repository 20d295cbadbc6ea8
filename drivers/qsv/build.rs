//! Generates Rust declarations of Intel's oneVPL API from `vpl/mfx.h`
//! (Debian's `libvpl-dev`). Only types and constants are taken: the
//! functions are looked up in the dispatcher (`libvpl.so.2`) at run time,
//! so nothing is linked.

use std::path::PathBuf;

fn main() {
    let dirs: Vec<PathBuf> = std::env::var_os("LOCKSTEP_VPL_INCLUDE")
        .map(|d| vec![PathBuf::from(d)])
        .unwrap_or_else(|| vec!["/usr/include".into(), "/usr/local/include".into()]);
    println!("cargo:rerun-if-env-changed=LOCKSTEP_VPL_INCLUDE");
    let Some(dir) = dirs.iter().find(|d| d.join("vpl/mfx.h").is_file()) else {
        panic!(
            "vpl/mfx.h not found in {}: install Debian's libvpl-dev (`./run deps` does) \
             or point LOCKSTEP_VPL_INCLUDE at the directory holding vpl/",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    };
    let header = dir.join("vpl/mfx.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .clang_arg(format!("-I{}", dir.display()))
        .allowlist_type("mfx.*|_mfx.*")
        .allowlist_var("MFX_.*")
        .blocklist_function(".*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over {}: {e}", header.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("vpl_sys.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
