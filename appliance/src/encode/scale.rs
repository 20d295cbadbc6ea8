//! Picture scaler for I420 (one per rendition, built once).
//!
//! Each plane is resized by `fast_image_resize` (fixed-point separable
//! convolution with SIMD paths chosen at run time) with a bilinear
//! (triangle) kernel whose support widens with the downscale factor, so a
//! 1080p→360p step averages its whole footprint instead of aliasing.
//! Integer arithmetic makes the result the same on every appliance; a test
//! checks that every SIMD path the CPU offers gives identical bytes.
//! This is the one copy of picture data a scaled rendition makes.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// Scales I420 pictures of one size to another into an owned buffer.
pub struct Scaler {
    resizer: Resizer,
    options: ResizeOptions,
    src: (u32, u32),
    dst: (u32, u32),
    out: Vec<u8>,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scaler({:?} -> {:?})", self.src, self.dst)
    }
}

impl Scaler {
    /// A scaler for `src`→`dst` (all sizes even).
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        Self {
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            src: (src_w, src_h),
            dst: (dst_w, dst_h),
            out: vec![0; dst_w as usize * dst_h as usize * 3 / 2],
        }
    }

    /// Scales one picture (planes with the given strides); returns the Y, U,
    /// V planes of the result (strides `dst_w` and `dst_w / 2`).
    pub fn scale(&mut self, y: &[u8], u: &[u8], v: &[u8], y_stride: usize, c_stride: usize) -> (&[u8], &[u8], &[u8]) {
        let (sw, sh) = self.src;
        let (dw, dh) = self.dst;
        let y_len = dw as usize * dh as usize;
        let c_len = y_len / 4;
        {
            let (oy, oc) = self.out.split_at_mut(y_len);
            let (ou, ov) = oc.split_at_mut(c_len);
            let (r, o) = (&mut self.resizer, &self.options);
            resize_plane(r, o, y, y_stride, (sw, sh), oy, (dw, dh));
            resize_plane(r, o, u, c_stride, (sw / 2, sh / 2), ou, (dw / 2, dh / 2));
            resize_plane(r, o, v, c_stride, (sw / 2, sh / 2), ov, (dw / 2, dh / 2));
        }
        let (oy, oc) = self.out.split_at(y_len);
        let (ou, ov) = oc.split_at(c_len);
        (oy, ou, ov)
    }
}

fn resize_plane(
    resizer: &mut Resizer,
    options: &ResizeOptions,
    src: &[u8],
    stride: usize,
    (sw, sh): (u32, u32),
    dst: &mut [u8],
    (dw, dh): (u32, u32),
) {
    // Pool planes are tightly packed (stride == width); a padded plane
    // would need a cropped view, which the pool never produces.
    debug_assert_eq!(stride, sw as usize);
    let Ok(src_img) = ImageRef::new(sw, sh, src, PixelType::U8) else {
        tracing::error!(sw, sh, "scaler: source plane smaller than its size");
        return;
    };
    let Ok(mut dst_img) = Image::from_slice_u8(dw, dh, dst, PixelType::U8) else {
        tracing::error!(dw, dh, "scaler: destination plane smaller than its size");
        return;
    };
    if let Err(e) = resizer.resize(&src_img, &mut dst_img, options) {
        tracing::error!("scaler: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fast_image_resize::CpuExtensions;

    fn picture(w: usize, h: usize) -> Vec<u8> {
        (0..w * h * 3 / 2).map(|i| ((i * 2_654_435_761) >> 13) as u8).collect()
    }

    fn run(s: &mut Scaler, pic: &[u8], w: usize, h: usize) -> Vec<u8> {
        let (y, c) = pic.split_at(w * h);
        let (u, v) = c.split_at(w * h / 4);
        let (a, b, c) = s.scale(y, u, v, w, w / 2);
        [a, b, c].concat()
    }

    #[test]
    fn flat_pictures_stay_flat() {
        let mut s = Scaler::new(64, 36, 32, 18);
        let y = vec![200u8; 64 * 36];
        let c = vec![90u8; 32 * 18];
        let (oy, ou, ov) = s.scale(&y, &c, &c, 64, 32);
        assert!(oy.iter().all(|&p| p == 200));
        assert!(ou.iter().chain(ov).all(|&p| p == 90));
        assert_eq!(oy.len(), 32 * 18);
    }

    #[test]
    fn downscale_averages_fine_detail() {
        let mut s = Scaler::new(64, 64, 16, 16);
        let y: Vec<u8> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 254 }).collect();
        let c = vec![128u8; 32 * 32];
        let (oy, _, _) = s.scale(&y, &c, &c, 64, 32);
        assert!(oy.iter().all(|&p| (118..=136).contains(&p)), "{oy:?}");
    }

    /// Swarm bit-identity needs the same bytes whatever SIMD the CPU has.
    #[test]
    fn every_simd_path_gives_identical_bytes() {
        let (w, h) = (1920, 1080);
        let pic = picture(w, h);
        for (dw, dh) in [(1280, 720), (854, 480), (640, 360), (320, 180)] {
            let mut reference = Scaler::new(w as u32, h as u32, dw, dh);
            // SAFETY: `None` (plain Rust) is supported on every CPU.
            unsafe { reference.resizer.set_cpu_extensions(CpuExtensions::None) };
            let expected = run(&mut reference, &pic, w, h);
            let mut paths = vec![];
            #[cfg(target_arch = "x86_64")]
            paths.extend([CpuExtensions::Sse4_1, CpuExtensions::Avx2]);
            for ext in paths.into_iter().filter(|e| e.is_supported()) {
                let mut s = Scaler::new(w as u32, h as u32, dw, dh);
                // SAFETY: only extensions the CPU reports as supported are set.
                unsafe { s.resizer.set_cpu_extensions(ext) };
                assert!(run(&mut s, &pic, w, h) == expected, "{ext:?} differs from plain Rust at {dw}x{dh}");
            }
        }
    }
}
