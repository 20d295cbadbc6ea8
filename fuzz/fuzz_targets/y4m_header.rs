//! Y4M headers and frames come from files an operator points us at.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::capture::y4m;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    if let Ok(header) = y4m::read_header(&mut cursor) {
        assert!(header.width >= 2 && header.height >= 2);
        // Read at most a few small frames; a huge header size must not make us allocate.
        let len = header.frame_len();
        if len <= 1 << 16 {
            let mut buf = vec![0u8; len];
            let mut line = Vec::new();
            for i in 0..4 {
                if !matches!(y4m::read_frame(&mut cursor, i, &mut buf, &mut line), Ok(true)) {
                    break;
                }
            }
        }
    }
    let _ = y4m::parse_header(data);
});
