//! Configuration files are operator input: any bytes give a config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_toml(text, "fuzz") {
            // A config that validated must validate again.
            assert!(config.validate().is_ok());
            let _ = config.source_rate();
        }
    }
});
