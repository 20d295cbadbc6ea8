//! Request bodies of the admin API come from any client that reaches it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::admin::api::{LoginBody, RenditionPatch, parse_json};
use lockstep::admin::settings::{ChannelEdit, merged};
use lockstep::config::{ChannelSpec, Config};

fuzz_target!(|data: &[u8]| {
    // A configuration edit is parsed, then merged into the running
    // configuration and validated: both steps answer 400 or 422.
    let running = Config::embedded_demo();
    let edit = parse_json::<ChannelEdit>(data).and_then(|edit| merged(&running, edit)).map(|_| ());
    // A new channel (`POST /api/v1/channels`) is parsed, then checked as
    // the configuration it would run with: an error names its key.
    let create = parse_json::<ChannelSpec>(data).map(|spec| {
        if let Err(lockstep::config::ConfigError::Invalid { key, message }) = running.with_channel(&spec).validate() {
            assert!(!key.is_empty() && !message.is_empty());
        }
    });
    for result in
        [parse_json::<LoginBody>(data).map(|_| ()), parse_json::<RenditionPatch>(data).map(|_| ()), edit, create]
    {
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
