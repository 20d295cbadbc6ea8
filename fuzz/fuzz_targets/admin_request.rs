//! Request bodies of the admin API come from any client that reaches it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::admin::api::{LoginBody, RenditionPatch, parse_json};

fuzz_target!(|data: &[u8]| {
    for result in [parse_json::<LoginBody>(data).map(|_| ()), parse_json::<RenditionPatch>(data).map(|_| ())] {
        if let Err(e) = result {
            assert!(matches!(e.status(), 400 | 422), "status {}", e.status());
            let (message, field) = e.message();
            assert!(!message.is_empty());
            if e.status() == 422 {
                assert!(field.is_some(), "a 422 names the field: {message}");
            }
        }
    }
});
