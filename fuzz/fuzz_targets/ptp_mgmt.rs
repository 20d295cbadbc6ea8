//! Datagrams from ptp4l's management socket are decoded into data sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_ptp::mgmt;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = mgmt::decode(data) {
        // A decoded message fits in what was read.
        assert!(data.len() >= mgmt::HEADER_LEN + 14 + 6);
        let _ = format!("{m:?} {}", m.source);
    }
});
