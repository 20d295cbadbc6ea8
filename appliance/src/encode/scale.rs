//! Separable picture scaler for I420 (one per rendition, tables built once).
//!
//! A triangle filter whose support widens with the downscale factor, so a
//! 1080p→180p step averages the whole footprint instead of aliasing;
//! upscaling degenerates to bilinear. Weights are 14-bit fixed point and
//! sum exactly to 1, so the output is deterministic on every machine.
//! This is the one copy of picture data a scaled rendition makes.

const SHIFT: u32 = 14;
const ONE: i32 = 1 << SHIFT;

/// Filter taps for one axis: for output i, `count[i]` taps starting at
/// source index `start[i]` with weights `weights[offset[i]..]`.
#[derive(Debug, Clone)]
struct Axis {
    start: Vec<usize>,
    offset: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let scale = src as f64 / dst as f64;
        let support = scale.max(1.0);
        let (mut start, mut offset, mut count, mut weights) = (vec![], vec![], vec![], vec![]);
        for i in 0..dst {
            let centre = (i as f64 + 0.5) * scale - 0.5;
            let lo = ((centre - support).floor() as isize + 1).max(0) as usize;
            let hi = ((centre + support).ceil() as isize - 1).min(src as isize - 1).max(lo as isize) as usize;
            let raw: Vec<f64> = (lo..=hi).map(|j| (1.0 - ((j as f64 - centre) / support).abs()).max(0.0)).collect();
            let sum: f64 = raw.iter().sum::<f64>().max(f64::MIN_POSITIVE);
            let mut fixed: Vec<i32> = raw.iter().map(|w| (w / sum * f64::from(ONE)).round() as i32).collect();
            // Put the rounding remainder on the largest tap so weights sum to ONE.
            let rem = ONE - fixed.iter().sum::<i32>();
            if let Some(max) = (0..fixed.len()).max_by_key(|&k| fixed[k]) {
                fixed[max] += rem;
            }
            start.push(lo);
            offset.push(weights.len());
            count.push(fixed.len());
            weights.extend(fixed);
        }
        Self { start, offset, count, weights }
    }
}

/// One plane's scaler: horizontal pass into a scratch buffer, then vertical.
#[derive(Debug, Clone)]
struct PlaneScaler {
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
    x: Axis,
    y: Axis,
    scratch: Vec<u16>,
}

impl PlaneScaler {
    fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Self {
        Self {
            src_w,
            src_h,
            dst_w,
            dst_h,
            x: Axis::new(src_w, dst_w),
            y: Axis::new(src_h, dst_h),
            scratch: vec![0; dst_w * src_h],
        }
    }

    fn run(&mut self, src: &[u8], src_stride: usize, dst: &mut [u8]) {
        for row in 0..self.src_h {
            let s = &src[row * src_stride..row * src_stride + self.src_w];
            let out = &mut self.scratch[row * self.dst_w..(row + 1) * self.dst_w];
            for (i, o) in out.iter_mut().enumerate() {
                let (st, off, n) = (self.x.start[i], self.x.offset[i], self.x.count[i]);
                let acc: i32 =
                    s[st..st + n].iter().zip(&self.x.weights[off..off + n]).map(|(&p, &w)| i32::from(p) * w).sum();
                // keep 4 extra bits of precision between passes
                *o = ((acc + (1 << (SHIFT - 5))) >> (SHIFT - 4)).clamp(0, 255 << 4) as u16;
            }
        }
        for i in 0..self.dst_h {
            let (st, off, n) = (self.y.start[i], self.y.offset[i], self.y.count[i]);
            let out = &mut dst[i * self.dst_w..(i + 1) * self.dst_w];
            let taps = &self.y.weights[off..off + n];
            for (x, o) in out.iter_mut().enumerate() {
                let mut acc: i32 = 0;
                for (k, &w) in taps.iter().enumerate() {
                    acc += i32::from(self.scratch[(st + k) * self.dst_w + x]) * w;
                }
                *o = ((acc + (1 << (SHIFT + 3))) >> (SHIFT + 4)).clamp(0, 255) as u8;
            }
        }
    }
}

/// Scales I420 pictures of one size to another into an owned buffer.
#[derive(Debug, Clone)]
pub struct Scaler {
    luma: PlaneScaler,
    chroma: PlaneScaler,
    out: Vec<u8>,
    dst_w: usize,
    dst_h: usize,
}

impl Scaler {
    /// Builds the tables for `src`→`dst` (all even sizes).
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Self {
        let (sw, sh, dw, dh) = (src_w as usize, src_h as usize, dst_w as usize, dst_h as usize);
        Self {
            luma: PlaneScaler::new(sw, sh, dw, dh),
            chroma: PlaneScaler::new(sw / 2, sh / 2, dw / 2, dh / 2),
            out: vec![0; dw * dh * 3 / 2],
            dst_w: dw,
            dst_h: dh,
        }
    }

    /// Scales one picture; returns the Y, U, V planes of the result.
    pub fn scale(&mut self, y: &[u8], u: &[u8], v: &[u8], y_stride: usize, c_stride: usize) -> (&[u8], &[u8], &[u8]) {
        let y_len = self.dst_w * self.dst_h;
        let c_len = y_len / 4;
        let (oy, oc) = self.out.split_at_mut(y_len);
        let (ou, ov) = oc.split_at_mut(c_len);
        self.luma.run(y, y_stride, oy);
        self.chroma.run(u, c_stride, ou);
        self.chroma.run(v, c_stride, ov);
        let (oy, oc) = self.out.split_at(y_len);
        let (ou, ov) = oc.split_at(c_len);
        (oy, ou, ov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // one-pixel checkerboard averages to mid grey at 1/4 size
        let mut s = Scaler::new(64, 64, 16, 16);
        let y: Vec<u8> = (0..64 * 64).map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 254 }).collect();
        let c = vec![128u8; 32 * 32];
        let (oy, _, _) = s.scale(&y, &c, &c, 64, 32);
        assert!(oy.iter().all(|&p| (120..=134).contains(&p)), "{oy:?}");
    }

    #[test]
    fn weights_sum_to_one() {
        for (src, dst) in [(1920, 640), (1080, 180), (720, 1080), (7, 3)] {
            let a = Axis::new(src, dst);
            for i in 0..dst {
                let sum: i32 = a.weights[a.offset[i]..a.offset[i] + a.count[i]].iter().sum();
                assert_eq!(sum, ONE);
            }
        }
    }
}
