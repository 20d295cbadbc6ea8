//! Encoder output (including hardware encoders') is parsed into samples and parameter sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::package::avc;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let mut params = avc::ParameterSets::default();
    let n = avc::annexb_to_sample(data, &mut out, &mut params);
    assert_eq!(n, out.len());
    assert!(out.len() <= data.len() + 4 * data.len() / 3 + 4);
    let _ = params.codec_string();
});
