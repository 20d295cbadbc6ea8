//! Datagrams from the network reach the swarm's opener (header checks,
//! authentication, replay window) and, once opened, the state decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::swarm::{state, timing};
use lockstep::swarm::wire::{FleetKey, Opener};

fuzz_target!(|data: &[u8]| {
    let mut opener = Opener::new(&FleetKey::from_bytes([7; 32]));
    // Random bytes do not authenticate; what is checked here is that no
    // header, length or counter makes the opener panic.
    let _ = opener.open(data, 1_790_000_000_000);
    // The state decoder sees only authenticated payloads, but must not
    // panic on any bytes (a peer with a bug).
    if let Some(s) = state::decode(data) {
        // What decodes encodes again (floats may be NaN: no equality check).
        assert!(state::decode(&state::encode(&s)).is_some());
    }
    // Older members' single-channel packets, read as one channel.
    if let Some(s) = state::decode_single_channel(data) {
        assert_eq!(s.channels.len(), 1);
        assert!(state::decode(&state::encode(&s)).is_some());
    }
    // Timing packets: each channel's media time and readings.
    if let Some(t) = timing::decode(data) {
        assert_eq!(timing::decode(&timing::encode(&t)), Some(t));
    }
});
