//! Builds hls.js (from npm, `./run deps` installs it under appliance/web)
//! into the admin page when it is there; without it the page's preview
//! falls back to the browser's native HLS and says so.

use std::path::Path;

fn main() {
    let source = Path::new("web/node_modules/hls.js/dist/hls.min.js");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed=web/package-lock.json");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("hls.min.js");
    let bytes = std::fs::read(source).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=hls.js not found at appliance/{}: the admin preview needs the browser's native HLS (run `./run deps`)",
            source.display()
        );
    }
    std::fs::write(&out, bytes).expect("write OUT_DIR/hls.min.js");
}
