//! Capture buffers come from device drivers: any length, stride and size
//! must convert or be refused, never read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_v4l2::PixelFormat;
use lockstep_v4l2::convert::{I420, to_i420};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let format = PixelFormat::ALL[usize::from(data[0]) % 4];
    let width = (usize::from(data[1] % 64) + 1) * 2;
    let height = (usize::from(data[2] % 32) + 1) * 2;
    let stride = format.min_stride(width as u32) as usize + usize::from(data[3] % 16);
    let (mut y, mut u, mut v) = (vec![0; width * height], vec![0; width * height / 4], vec![0; width * height / 4]);
    let mut dst = I420 { width, height, y: &mut y, u: &mut u, v: &mut v };
    let _ = to_i420(format, &data[4..], stride, &mut dst);
});
