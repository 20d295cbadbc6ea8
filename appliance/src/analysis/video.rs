//! Per-frame picture features, computed on a box-downscaled luma plane.
//!
//! The full-resolution luma plane is read once (the downscale pass, through
//! an `ndarray` view over the pool buffer, no copy) plus a sparse sample of
//! rows for the noise estimate. Everything else works on the small picture
//! (about 400 pixels wide), so the cost per frame is a few hundred
//! microseconds at 1080p. Formulas: docs/analysis.md.

use ndarray::ArrayView2;

/// Histogram bins for the scene-cut test.
const BINS: usize = 32;
/// Motion search block size on the small picture.
const BLOCK: usize = 8;
/// Recent frames kept for the adaptive scene-cut threshold.
const HISTORY: usize = 8;

/// Features of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct VideoFeatures {
    /// Mean luma, 0–255.
    pub mean_luma: f32,
    /// Mean absolute gradient (|dx| + |dy|) of the small picture, 0–510.
    pub spatial: f32,
    /// Share of small-picture pixels whose gradient exceeds an edge threshold, 0–1.
    pub edge_density: f32,
    /// Mean absolute difference to the previous frame (no motion compensation), 0–255.
    pub sad: f32,
    /// Mean absolute difference after block motion compensation, 0–255.
    pub mc_sad: f32,
    /// Mean motion-vector length, in full-resolution pixels.
    pub mv_mean: f32,
    /// Motion-vector variance (x and y summed), in full-resolution pixels².
    pub mv_var: f32,
    /// L1 distance of luma histograms to the previous frame, 0–1.
    pub hist_delta: f32,
    /// Scene-cut score, 0–1 (higher = more likely a cut).
    pub cut_score: f32,
    /// Scene-cut decision for this frame (first frame of a new scene).
    pub scene_cut: bool,
    /// Low-light flag (dark picture).
    pub low_light: bool,
    /// Noise estimate (standard deviation of luma noise, Immerkær).
    pub noise: f32,
}

/// Stateful analyser for one picture size (keeps the previous frame).
#[derive(Debug, Clone)]
pub struct VideoAnalyzer {
    factor: usize,
    width: usize,
    height: usize,
    sw: usize,
    sh: usize,
    cur: Vec<u8>,
    prev: Vec<u8>,
    acc: Vec<u16>,
    prev_hist: [u32; BINS],
    has_prev: bool,
    recent: [f32; HISTORY],
    recent_len: usize,
    frames_since_cut: u32,
}

impl VideoAnalyzer {
    /// An analyser for `width`×`height` luma planes.
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let factor = (w / 400).clamp(1, 4);
        let (sw, sh) = ((w / factor).max(1), (h / factor).max(1));
        Self {
            factor,
            width: w,
            height: h,
            sw,
            sh,
            cur: vec![0; sw * sh],
            prev: vec![0; sw * sh],
            acc: vec![0; sw * factor],
            prev_hist: [0; BINS],
            has_prev: false,
            recent: [0.0; HISTORY],
            recent_len: 0,
            frames_since_cut: 0,
        }
    }

    /// Size of the small analysis picture.
    pub fn small_size(&self) -> (usize, usize) {
        (self.sw, self.sh)
    }

    /// Analyses one luma plane (`height` rows of `stride` bytes).
    pub fn analyse(&mut self, luma: ArrayView2<'_, u8>) -> VideoFeatures {
        std::mem::swap(&mut self.cur, &mut self.prev);
        self.downscale(&luma);
        let mut f = VideoFeatures::default();
        let hist = self.histogram();
        let n = (self.sw * self.sh) as f32;
        f.mean_luma = self.cur.iter().map(|&p| u32::from(p)).sum::<u32>() as f32 / n;
        let (spatial, edges) = self.gradient();
        f.spatial = spatial;
        f.edge_density = edges;
        f.noise = luma.as_slice().map_or(0.0, |data| noise_estimate(data, luma.ncols(), self.width, self.height));
        let dark_share = hist[..BINS / 4].iter().sum::<u32>() as f32 / n; // luma < 64
        f.low_light = f.mean_luma < 60.0 && dark_share > 0.6;
        if self.has_prev {
            f.sad = mean_abs_diff(&self.cur, &self.prev);
            let (mc, mv_mean, mv_var) = self.motion();
            f.mc_sad = mc;
            f.mv_mean = mv_mean * self.factor as f32;
            f.mv_var = mv_var * (self.factor * self.factor) as f32;
            f.hist_delta =
                hist.iter().zip(&self.prev_hist).map(|(&a, &b)| a.abs_diff(b)).sum::<u32>() as f32 / (2.0 * n);
            self.scene_cut(&mut f);
        }
        self.prev_hist = hist;
        self.has_prev = true;
        f
    }

    fn downscale(&mut self, luma: &ArrayView2<'_, u8>) {
        let k = self.factor;
        let span = self.sw * k;
        for sy in 0..self.sh {
            // Vertical sum of k rows over the whole width (vectorises), then
            // sums of k adjacent columns.
            let acc = &mut self.acc[..span];
            // sy * k + k - 1 < height because sh = height / k.
            let row = |r: usize| luma.row(sy * k + r).to_slice().map(|s| &s[..span.min(s.len())]);
            let four = if k == 4 { [row(0), row(1), row(2), row(3)] } else { [None, None, None, None] };
            match four {
                [Some(a), Some(b), Some(c), Some(d)] => {
                    for ((((o, &p0), &p1), &p2), &p3) in acc.iter_mut().zip(a).zip(b).zip(c).zip(d) {
                        *o = u16::from(p0) + u16::from(p1) + u16::from(p2) + u16::from(p3);
                    }
                }
                _ => {
                    acc.fill(0);
                    for r in 0..k {
                        let Some(src) = row(r) else { continue };
                        for (a, &p) in acc.iter_mut().zip(src) {
                            *a += u16::from(p);
                        }
                    }
                }
            }
            let out = &mut self.cur[sy * self.sw..(sy + 1) * self.sw];
            match k {
                1 => average_cols::<1>(acc, out),
                2 => average_cols::<2>(acc, out),
                3 => average_cols::<3>(acc, out),
                _ => average_cols::<4>(acc, out),
            }
        }
    }

    fn histogram(&self) -> [u32; BINS] {
        let mut h = [0u32; BINS];
        for &p in &self.cur {
            h[usize::from(p) * BINS / 256] += 1;
        }
        h
    }

    /// Mean |dx| + |dy| and the share of pixels above the edge threshold.
    fn gradient(&self) -> (f32, f32) {
        let (w, h) = (self.sw, self.sh);
        if w < 2 || h < 2 {
            return (0.0, 0.0);
        }
        let mut total = 0u64;
        let mut edges = 0u32;
        for y in 0..h - 1 {
            let row = &self.cur[y * w..(y + 1) * w];
            let below = &self.cur[(y + 1) * w..(y + 2) * w];
            for x in 0..w - 1 {
                let g = u32::from(row[x].abs_diff(row[x + 1])) + u32::from(row[x].abs_diff(below[x]));
                total += u64::from(g);
                edges += u32::from(g > 24);
            }
        }
        let n = ((w - 1) * (h - 1)) as f32;
        (total as f32 / n, edges as f32 / n)
    }

    /// Block motion search (small diamond, two steps) on the small picture:
    /// motion-compensated mean abs difference, mean and variance of vectors.
    fn motion(&self) -> (f32, f32, f32) {
        let (w, h) = (self.sw, self.sh);
        let (bx, by) = (w / BLOCK, h / BLOCK);
        if bx == 0 || by == 0 {
            return (mean_abs_diff(&self.cur, &self.prev), 0.0, 0.0);
        }
        let mut total = 0u64;
        let (mut sx, mut sy, mut sxx, mut syy, mut slen) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for j in 0..by {
            for i in 0..bx {
                let (x0, y0) = ((i * BLOCK) as isize, (j * BLOCK) as isize);
                let mut best = (0isize, 0isize);
                let mut best_cost = self.block_sad(x0, y0, 0, 0);
                for step in [4isize, 2, 1] {
                    let centre = best;
                    for (dx, dy) in [(step, 0), (-step, 0), (0, step), (0, -step)] {
                        let (mx, my) = (centre.0 + dx, centre.1 + dy);
                        let cost = self.block_sad(x0, y0, mx, my);
                        if cost < best_cost {
                            best_cost = cost;
                            best = (mx, my);
                        }
                    }
                }
                total += u64::from(best_cost);
                let (fx, fy) = (best.0 as f64, best.1 as f64);
                sx += fx;
                sy += fy;
                sxx += fx * fx;
                syy += fy * fy;
                slen += (fx * fx + fy * fy).sqrt();
            }
        }
        let blocks = (bx * by) as f64;
        let var = (sxx / blocks - (sx / blocks).powi(2)) + (syy / blocks - (sy / blocks).powi(2));
        (total as f32 / (blocks as f32 * (BLOCK * BLOCK) as f32), (slen / blocks) as f32, var.max(0.0) as f32)
    }

    /// SAD of the block at (x0, y0) in the current picture against the
    /// previous picture displaced by (dx, dy); out-of-picture = worst.
    fn block_sad(&self, x0: isize, y0: isize, dx: isize, dy: isize) -> u32 {
        let (w, h) = (self.sw as isize, self.sh as isize);
        let (px, py) = (x0 + dx, y0 + dy);
        if px < 0 || py < 0 || px + BLOCK as isize > w || py + BLOCK as isize > h {
            return u32::MAX;
        }
        let mut s = 0u32;
        for r in 0..BLOCK as isize {
            let a = ((y0 + r) * w + x0) as usize;
            let b = ((py + r) * w + px) as usize;
            s += self.cur[a..a + BLOCK]
                .iter()
                .zip(&self.prev[b..b + BLOCK])
                .map(|(&p, &q)| u32::from(p.abs_diff(q)))
                .sum::<u32>();
        }
        s
    }

    /// A cut is a frame whose histogram moved a lot and whose difference to
    /// the previous frame stands far above the recent level.
    fn scene_cut(&mut self, f: &mut VideoFeatures) {
        let recent = if self.recent_len == 0 {
            f.mc_sad
        } else {
            self.recent[..self.recent_len.min(HISTORY)].iter().sum::<f32>() / self.recent_len.min(HISTORY) as f32
        };
        let jump = (f.mc_sad - recent).max(0.0) / (recent + 4.0);
        let hist = (f.hist_delta / 0.5).min(1.0);
        f.cut_score = (0.5 * (jump / 3.0).min(1.0) + 0.5 * hist).min(1.0);
        f.scene_cut = self.frames_since_cut >= 2 && ((hist >= 0.4 && jump >= 1.0) || (hist >= 0.8 && jump >= 0.3));
        if f.scene_cut {
            self.recent_len = 0;
            self.frames_since_cut = 0;
        } else {
            self.frames_since_cut = self.frames_since_cut.saturating_add(1);
        }
        self.recent[self.recent_len % HISTORY] = f.mc_sad;
        self.recent_len += 1;
    }
}

/// Averages groups of `K` sums of `K` rows into `out` (rounded).
fn average_cols<const K: usize>(acc: &[u16], out: &mut [u8]) {
    let area = (K * K) as u32;
    for (o, c) in out.iter_mut().zip(acc.chunks_exact(K)) {
        let sum: u32 = c.iter().map(|&v| u32::from(v)).sum();
        *o = ((sum + area / 2) / area) as u8;
    }
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f32 {
    let s: u64 = a.iter().zip(b).map(|(&p, &q)| u64::from(p.abs_diff(q))).sum();
    s as f32 / a.len().max(1) as f32
}

/// Immerkær's fast noise estimate on every 16th row triple of the
/// full-resolution luma: σ = √(π/2) / (6 (W−2) R) · Σ |I ∗ N|.
fn noise_estimate(luma: &[u8], stride: usize, width: usize, height: usize) -> f32 {
    if width < 3 || height < 3 {
        return 0.0;
    }
    let mut total = 0u64;
    let mut rows = 0u64;
    let mut y = 1;
    while y + 1 < height {
        let row = |r: usize| luma.get(r * stride..r * stride + width);
        let (Some(a), Some(b), Some(c)) = (row(y - 1), row(y), row(y + 1)) else {
            break;
        };
        for x in 1..width - 1 {
            let v = i32::from(a[x - 1]) - 2 * i32::from(a[x]) + i32::from(a[x + 1]) - 2 * i32::from(b[x - 1])
                + 4 * i32::from(b[x])
                - 2 * i32::from(b[x + 1])
                + i32::from(c[x - 1])
                - 2 * i32::from(c[x])
                + i32::from(c[x + 1]);
            total += u64::from(v.unsigned_abs());
        }
        rows += 1;
        y += 16;
    }
    if rows == 0 {
        return 0.0;
    }
    ((std::f64::consts::PI / 2.0).sqrt() * total as f64 / (6.0 * (width - 2) as f64 * rows as f64)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(data: &[u8], w: usize, h: usize) -> ArrayView2<'_, u8> {
        ArrayView2::from_shape((h, w), data).expect("shape")
    }

    #[test]
    fn flat_frames_have_no_detail_motion_or_noise() {
        let (w, h) = (640, 360);
        let data = vec![128u8; w * h];
        let mut a = VideoAnalyzer::new(w as u32, h as u32);
        a.analyse(view(&data, w, h));
        let f = a.analyse(view(&data, w, h));
        assert_eq!((f.spatial, f.sad, f.mc_sad, f.noise), (0.0, 0.0, 0.0, 0.0));
        assert!(!f.scene_cut && !f.low_light);
        assert!((f.mean_luma - 128.0).abs() < 0.01);
    }

    #[test]
    fn a_moving_pattern_is_found_by_motion_search() {
        let (w, h) = (640, 360);
        let pattern = |shift: usize| -> Vec<u8> {
            (0..w * h).map(|i| (((i % w + shift) / 7 * 37 + (i / w) / 5 * 11) % 200) as u8).collect()
        };
        let mut a = VideoAnalyzer::new(w as u32, h as u32);
        a.analyse(view(&pattern(0), w, h));
        let f = a.analyse(view(&pattern(3), w, h));
        assert!(f.sad > 5.0, "{f:?}");
        assert!(f.mc_sad < f.sad / 2.0, "motion compensation must explain a pan: {f:?}");
        assert!(f.mv_mean > 1.0, "{f:?}");
        assert!(!f.scene_cut);
    }

    #[test]
    fn a_different_picture_is_a_cut_and_dark_is_low_light() {
        let (w, h) = (320, 180);
        let dark: Vec<u8> = (0..w * h).map(|i| 20 + (i % 7) as u8).collect();
        let bright: Vec<u8> = (0..w * h).map(|i| 180 + (i % 50) as u8).collect();
        let mut a = VideoAnalyzer::new(w as u32, h as u32);
        for _ in 0..4 {
            let f = a.analyse(view(&dark, w, h));
            assert!(f.low_light);
        }
        let f = a.analyse(view(&bright, w, h));
        assert!(f.scene_cut, "{f:?}");
        assert!(f.cut_score > 0.8);
    }

    #[test]
    fn noise_is_measured() {
        let (w, h) = (320, 180);
        let noisy: Vec<u8> = (0..w * h).map(|i| (128 + ((i * 2_654_435_761usize) >> 7) % 21) as u8 - 10).collect();
        let mut a = VideoAnalyzer::new(w as u32, h as u32);
        let f = a.analyse(view(&noisy, w, h));
        assert!(f.noise > 3.0, "{f:?}");
    }
}
