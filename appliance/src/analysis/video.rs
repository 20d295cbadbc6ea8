//! Per-frame picture features, computed on a box-downscaled luma plane.
//!
//! The full-resolution luma plane is read once (the downscale pass, through
//! an `ndarray` view over the pool buffer, no copy) plus a sparse sample of
//! rows for the noise estimate. Everything else works on the small picture
//! (320 to 800 pixels wide), so the cost per frame is a few hundred
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
    /// Mean motion-compensated residual above the dead zone (2 levels per
    /// pixel), per pixel: the part of the residual an encoder has to code.
    pub residual: f32,
    /// Share of blocks whose motion-compensated residual exceeds the dead zone.
    pub active_blocks: f32,
    /// Mean over blocks of log2(1 + residual above the dead zone per
    /// pixel): grows like the bits an encoder spends on the residual.
    pub coded: f32,
    /// Share of small-picture pixels with no gradient at all (clean
    /// synthetic pictures have many, camera pictures with noise few), 0–1.
    pub flat: f32,
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

/// Residual per pixel an encoder's quantiser drops anyway (levels).
const DEAD_ZONE: u32 = 2;

/// Result of the motion search.
#[derive(Debug, Clone, Copy)]
struct Motion {
    mc_sad: f32,
    residual: f32,
    active_blocks: f32,
    coded: f32,
    mv_mean: f32,
    mv_var: f32,
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
    /// Motion vectors of the last search, one per block (row-major).
    mvs: Vec<(isize, isize)>,
    /// Mean vector of the previous picture (a search predictor).
    global: (isize, isize),
}

impl VideoAnalyzer {
    /// An analyser for `width`×`height` luma planes.
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        // Powers of two (the 4× reduction has a SIMD path): 720p and 1080p
        // both analyse at a quarter of their width.
        let factor = match w {
            0..800 => 1,
            800..1200 => 2,
            _ => 4,
        };
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
            mvs: vec![(0, 0); (sw / BLOCK) * (sh / BLOCK)],
            global: (0, 0),
        }
    }

    /// Size of the small analysis picture.
    pub fn small_size(&self) -> (usize, usize) {
        (self.sw, self.sh)
    }

    /// Analyses one luma plane (`height` rows of `stride` bytes).
    pub fn analyse(&mut self, luma: ArrayView2<'_, u8>) -> VideoFeatures {
        self.analyse_after(luma, 1)
    }

    /// Analyses a luma plane that follows the previous one by `gap` frames
    /// (frames in between were skipped): motion vectors are divided by the
    /// gap; differences stay as measured (an upper bound).
    pub fn analyse_after(&mut self, luma: ArrayView2<'_, u8>, gap: u32) -> VideoFeatures {
        let g = gap.max(1) as f32;
        std::mem::swap(&mut self.cur, &mut self.prev);
        self.downscale(&luma);
        let mut f = VideoFeatures::default();
        let (hist, mean_luma) = self.histogram();
        let n = (self.sw * self.sh) as f32;
        f.mean_luma = mean_luma;
        let (spatial, edges, flat) = self.gradient();
        f.spatial = spatial;
        f.edge_density = edges;
        f.flat = flat;
        f.noise = luma.as_slice().map_or(0.0, |data| noise_estimate(data, luma.ncols(), self.width, self.height));
        let dark_share = hist[..BINS / 4].iter().sum::<u32>() as f32 / n; // luma < 64
        f.low_light = f.mean_luma < 60.0 && dark_share > 0.6;
        if self.has_prev {
            f.sad = mean_abs_diff(&self.cur, &self.prev);
            let m = self.motion();
            let (mc, mv_mean, mv_var) = (m.mc_sad, m.mv_mean, m.mv_var);
            f.mc_sad = mc;
            f.residual = m.residual;
            f.active_blocks = m.active_blocks;
            f.coded = m.coded;
            f.mv_mean = mv_mean * self.factor as f32 / g;
            f.mv_var = mv_var * (self.factor * self.factor) as f32 / (g * g);
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
            let out = &mut self.cur[sy * self.sw..(sy + 1) * self.sw];
            // sy * k + k - 1 < height because sh = height / k.
            let row = |r: usize| luma.row(sy * k + r).to_slice().map(|s| &s[..span.min(s.len())]);
            #[cfg(target_arch = "x86_64")]
            if k == 4
                && let (Some(a), Some(b), Some(c), Some(d)) = (row(0), row(1), row(2), row(3))
                && a.len() == span
            {
                // SAFETY: SSE2 is part of the x86_64 baseline.
                unsafe { downscale4_row_sse2([a, b, c, d], out) };
                continue;
            }
            // Vertical sum of k rows over the whole width (vectorises), then
            // sums of k adjacent columns.
            let acc = &mut self.acc[..span];
            acc.fill(0);
            for r in 0..k {
                let Some(src) = row(r) else { continue };
                for (a, &p) in acc.iter_mut().zip(src) {
                    *a += u16::from(p);
                }
            }
            match k {
                1 => average_cols::<1>(acc, out),
                2 => average_cols::<2>(acc, out),
                _ => average_cols::<4>(acc, out),
            }
        }
    }

    /// Coarse luma histogram and mean luma, from one pass over the small
    /// picture (four interleaved sub-histograms avoid store-to-load stalls
    /// on runs of equal pixels).
    fn histogram(&self) -> ([u32; BINS], f32) {
        let mut sub = [[0u32; 256]; 4];
        let quads = self.cur.chunks_exact(4);
        for &p in quads.remainder() {
            sub[0][usize::from(p)] += 1;
        }
        for q in quads {
            for (h, &p) in sub.iter_mut().zip(q) {
                h[usize::from(p)] += 1;
            }
        }
        let mut bins = [0u32; BINS];
        let mut sum = 0u64;
        for v in 0..256 {
            let count = sub[0][v] + sub[1][v] + sub[2][v] + sub[3][v];
            bins[v * BINS / 256] += count;
            sum += v as u64 * u64::from(count);
        }
        (bins, sum as f32 / self.cur.len().max(1) as f32)
    }

    /// Mean |dx| + |dy|, the share of pixels above the edge threshold and
    /// the share of pixels with no gradient.
    fn gradient(&self) -> (f32, f32, f32) {
        let (w, h) = (self.sw, self.sh);
        if w < 2 || h < 2 {
            return (0.0, 0.0, 1.0);
        }
        let mut total = 0u64;
        let mut edges = 0u32;
        let mut flat = 0u32;
        for y in 0..h - 1 {
            let row = &self.cur[y * w..(y + 1) * w];
            let below = &self.cur[(y + 1) * w..(y + 2) * w];
            let (mut t, mut e, mut z) = (0u32, 0u32, 0u32);
            for ((&p, &right), &down) in row[..w - 1].iter().zip(&row[1..]).zip(&below[..w - 1]) {
                let g = u16::from(p.abs_diff(right)) + u16::from(p.abs_diff(down));
                t += u32::from(g);
                e += u32::from(g > 24);
                z += u32::from(g == 0);
            }
            total += u64::from(t);
            edges += e;
            flat += z;
        }
        let n = ((w - 1) * (h - 1)) as f32;
        (total as f32 / n, edges as f32 / n, flat as f32 / n)
    }

    /// Block motion search on the small picture: motion-compensated
    /// difference and residual, mean and variance of vectors.
    fn motion(&mut self) -> Motion {
        let (w, h) = (self.sw, self.sh);
        let (bx, by) = (w / BLOCK, h / BLOCK);
        if bx == 0 || by == 0 {
            let d = mean_abs_diff(&self.cur, &self.prev);
            return Motion {
                mc_sad: d,
                residual: (d - DEAD_ZONE as f32).max(0.0),
                active_blocks: f32::from(u8::from(d > DEAD_ZONE as f32)),
                coded: (1.0 + (d - DEAD_ZONE as f32).max(0.0)).log2(),
                mv_mean: 0.0,
                mv_var: 0.0,
            };
        }
        let mut total = 0u64;
        let (mut excess, mut active, mut coded) = (0u64, 0u32, 0f32);
        let dead = DEAD_ZONE * (BLOCK * BLOCK) as u32;
        let (mut sx, mut sy, mut sxx, mut syy, mut slen) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for j in 0..by {
            for i in 0..bx {
                let (x0, y0) = ((i * BLOCK) as isize, (j * BLOCK) as isize);
                let mut best = (0isize, 0isize);
                let mut best_cost = self.block_sad(x0, y0, 0, 0);
                // A block that already matches within one level per pixel
                // (noise on the small picture) is taken as still.
                if best_cost > (BLOCK * BLOCK) as u32 {
                    // Leaving the zero vector needs a clear gain (noise
                    // alone gives small random ones). Start from the best
                    // predictor (left and upper neighbours' vectors, the
                    // previous picture's mean vector: how encoders follow
                    // pans faster than their search range), then a diamond
                    // of shrinking steps and a last look at ±1 around zero.
                    let zero_cost = best_cost;
                    let bar = zero_cost - zero_cost / 8;
                    let left = if i > 0 { self.mvs[j * bx + i - 1] } else { (0, 0) };
                    let up = if j > 0 { self.mvs[(j - 1) * bx + i] } else { (0, 0) };
                    for p in [left, up, self.global] {
                        if p != (0, 0) && p != best {
                            let cost = self.block_sad(x0, y0, p.0, p.1);
                            if cost < best_cost.min(bar) {
                                best_cost = cost;
                                best = p;
                            }
                        }
                    }
                    for step in [8isize, 4, 2, 1] {
                        let centre = best;
                        for (dx, dy) in [(step, 0), (-step, 0), (0, step), (0, -step)] {
                            let (mx, my) = (centre.0 + dx, centre.1 + dy);
                            let cost = self.block_sad(x0, y0, mx, my);
                            if cost < best_cost.min(if best == (0, 0) { bar } else { u32::MAX }) {
                                best_cost = cost;
                                best = (mx, my);
                            }
                        }
                    }
                    for (dx, dy) in [(1isize, 0isize), (-1, 0), (0, 1), (0, -1)] {
                        let cost = self.block_sad(x0, y0, dx, dy);
                        if cost < best_cost.min(bar) {
                            best_cost = cost;
                            best = (dx, dy);
                        }
                    }
                }
                self.mvs[j * bx + i] = best;
                total += u64::from(best_cost);
                excess += u64::from(best_cost.saturating_sub(dead));
                coded += (1.0 + best_cost.saturating_sub(dead) as f32 / (BLOCK * BLOCK) as f32).log2();
                active += u32::from(best_cost > dead);
                let (fx, fy) = (best.0 as f64, best.1 as f64);
                sx += fx;
                sy += fy;
                sxx += fx * fx;
                syy += fy * fy;
                slen += (fx * fx + fy * fy).sqrt();
            }
        }
        let blocks = (bx * by) as f64;
        self.global = ((sx / blocks).round() as isize, (sy / blocks).round() as isize);
        let var = (sxx / blocks - (sx / blocks).powi(2)) + (syy / blocks - (sy / blocks).powi(2));
        let pixels = blocks as f32 * (BLOCK * BLOCK) as f32;
        Motion {
            mc_sad: total as f32 / pixels,
            residual: excess as f32 / pixels,
            active_blocks: active as f32 / blocks as f32,
            coded: coded / blocks as f32,
            mv_mean: (slen / blocks) as f32,
            mv_var: var.max(0.0) as f32,
        }
    }

    /// SAD of the block at (x0, y0) in the current picture against the
    /// previous picture displaced by (dx, dy); out-of-picture = worst.
    fn block_sad(&self, x0: isize, y0: isize, dx: isize, dy: isize) -> u32 {
        let (w, h) = (self.sw as isize, self.sh as isize);
        let (px, py) = (x0 + dx, y0 + dy);
        if px < 0 || py < 0 || px + BLOCK as isize > w || py + BLOCK as isize > h {
            return u32::MAX;
        }
        let a = (y0 * w + x0) as usize;
        let b = (py * w + px) as usize;
        match (self.cur.get(a..), self.prev.get(b..)) {
            (Some(cur), Some(prev)) => sad_8x8(cur, prev, self.sw),
            _ => u32::MAX,
        }
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

/// One output row of the 4×4 box downscale: 16 input columns of four rows
/// give four outputs. Rows are widened to 16 bits and added, adjacent
/// columns are summed twice with `pmaddwd` against ones; the result equals
/// the scalar path's `(sum + 8) / 16` exactly. `rows` must be `4 ×
/// out.len()` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn downscale4_row_sse2(rows: [&[u8]; 4], out: &mut [u8]) {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi16, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_madd_epi16, _mm_packs_epi32,
        _mm_packus_epi16, _mm_set1_epi16, _mm_set1_epi32, _mm_setzero_si128, _mm_srli_epi32, _mm_unpackhi_epi8,
        _mm_unpacklo_epi8,
    };
    let (zero, ones, round) = (_mm_setzero_si128(), _mm_set1_epi16(1), _mm_set1_epi32(8));
    let groups = out.len() / 4;
    for g in 0..groups {
        let load = |r: &[u8]| -> __m128i {
            let c = &r[g * 16..g * 16 + 16];
            // SAFETY: `c` is exactly 16 readable bytes; the load is unaligned.
            unsafe { _mm_loadu_si128(c.as_ptr().cast()) }
        };
        let [a, b, c, d] = rows.map(load);
        let lo = _mm_add_epi16(
            _mm_add_epi16(_mm_unpacklo_epi8(a, zero), _mm_unpacklo_epi8(b, zero)),
            _mm_add_epi16(_mm_unpacklo_epi8(c, zero), _mm_unpacklo_epi8(d, zero)),
        );
        let hi = _mm_add_epi16(
            _mm_add_epi16(_mm_unpackhi_epi8(a, zero), _mm_unpackhi_epi8(b, zero)),
            _mm_add_epi16(_mm_unpackhi_epi8(c, zero), _mm_unpackhi_epi8(d, zero)),
        );
        // Column pairs (≤ 2040, fit i16), then pairs of pairs.
        let pairs = _mm_packs_epi32(_mm_madd_epi16(lo, ones), _mm_madd_epi16(hi, ones));
        let quads = _mm_srli_epi32(_mm_add_epi32(_mm_madd_epi16(pairs, ones), round), 4);
        let words = _mm_packs_epi32(quads, quads);
        let bytes = _mm_cvtsi128_si32(_mm_packus_epi16(words, words));
        out[g * 4..g * 4 + 4].copy_from_slice(&bytes.to_le_bytes());
    }
    for (i, o) in out.iter_mut().enumerate().skip(groups * 4) {
        let sum: u32 = rows.iter().flat_map(|r| &r[i * 4..i * 4 + 4]).map(|&p| u32::from(p)).sum();
        *o = ((sum + 8) / 16) as u8;
    }
}

/// Averages groups of `K` sums of `K` rows into `out` (rounded). The sum of
/// 16 samples fits `u16`, which keeps the loop in 16-bit SIMD lanes.
fn average_cols<const K: usize>(acc: &[u16], out: &mut [u8]) {
    let area = (K * K) as u16;
    for (o, c) in out.iter_mut().zip(acc.chunks_exact(K)) {
        let c: &[u16; K] = c.try_into().unwrap_or(&[0; K]);
        let sum = c.iter().fold(0u16, |s, &v| s.wrapping_add(v));
        *o = (sum.wrapping_add(area / 2) / area) as u8;
    }
}

/// Mean absolute difference of two equally long pictures. Sums run in
/// 16-byte blocks that LLVM turns into `psadbw` (x86) or `uabal` (ARM).
fn mean_abs_diff(a: &[u8], b: &[u8]) -> f32 {
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: u64 = ca.remainder().iter().zip(cb.remainder()).map(|(&p, &q)| u64::from(p.abs_diff(q))).sum();
    let body: u64 = ca
        .zip(cb)
        .map(|(p, q)| {
            let (p, q): (&[u8; 16], &[u8; 16]) = (p.try_into().unwrap_or(&[0; 16]), q.try_into().unwrap_or(&[0; 16]));
            u64::from(p.iter().zip(q).map(|(&x, &y)| u32::from(x.abs_diff(y))).sum::<u32>())
        })
        .sum();
    (body + tail) as f32 / a.len().max(1) as f32
}

/// Sum of absolute differences of two 8×8 blocks (`a` and `b` start at the
/// blocks' top-left pixels, rows `stride` apart); `u32::MAX` if a block
/// does not fit.
fn sad_8x8(a: &[u8], b: &[u8], stride: usize) -> u32 {
    let span = (BLOCK - 1) * stride + BLOCK;
    if a.len() < span || b.len() < span {
        return u32::MAX;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline, so the feature the
    // function is compiled for is present on every x86_64 CPU.
    return unsafe { sad_8x8_sse2(a, b, stride) };
    #[cfg(not(target_arch = "x86_64"))]
    return sad_8x8_scalar(a, b, stride);
}

/// Two rows per `psadbw`: four instructions per block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sad_8x8_sse2(a: &[u8], b: &[u8], stride: usize) -> u32 {
    use std::arch::x86_64::{
        _mm_add_epi64, _mm_cvtsi128_si64, _mm_sad_epu8, _mm_set_epi64x, _mm_setzero_si128, _mm_unpackhi_epi64,
    };
    let row = |s: &[u8], r: usize| -> i64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&s[r * stride..r * stride + BLOCK]);
        i64::from_le_bytes(bytes)
    };
    let mut acc = _mm_setzero_si128();
    for r in (0..BLOCK).step_by(2) {
        let p = _mm_set_epi64x(row(a, r + 1), row(a, r));
        let q = _mm_set_epi64x(row(b, r + 1), row(b, r));
        acc = _mm_add_epi64(acc, _mm_sad_epu8(p, q));
    }
    let total = _mm_add_epi64(acc, _mm_unpackhi_epi64(acc, acc));
    _mm_cvtsi128_si64(total) as u32
}

#[cfg(any(test, not(target_arch = "x86_64")))]
fn sad_8x8_scalar(a: &[u8], b: &[u8], stride: usize) -> u32 {
    (0..BLOCK)
        .map(|r| {
            let (p, q) = (&a[r * stride..r * stride + BLOCK], &b[r * stride..r * stride + BLOCK]);
            p.iter().zip(q).map(|(&x, &y)| u32::from(x.abs_diff(y))).sum::<u32>()
        })
        .sum()
}

/// Immerkær's fast noise estimate on every 16th row triple of the
/// full-resolution luma: σ = √(π/2) / (6 (W−2) R) · Σ |I ∗ N|, with
/// N = [1 −2 1; −2 4 −2; 1 −2 1]. The kernel runs in 16-bit lanes
/// (|I ∗ N| ≤ 16 · 255).
fn noise_estimate(luma: &[u8], stride: usize, width: usize, height: usize) -> f32 {
    if width < 3 || height < 3 {
        return 0.0;
    }
    let n = width - 2;
    let mut total = 0u64;
    let mut rows = 0u64;
    let mut y = 1;
    while y + 1 < height {
        let row = |r: usize| luma.get(r * stride..r * stride + width);
        let (Some(a), Some(b), Some(c)) = (row(y - 1), row(y), row(y + 1)) else {
            break;
        };
        // Corners and centre have positive weights, edges negative:
        // |(a0+a2+c0+c2) + 4·b1 − 2·(a1+c1+b0+b2)|.
        let (a0, a1, a2) = (&a[..n], &a[1..=n], &a[2..]);
        let (b0, b1, b2) = (&b[..n], &b[1..=n], &b[2..]);
        let (c0, c1, c2) = (&c[..n], &c[1..=n], &c[2..]);
        let mut sum = 0u32;
        for x in 0..n {
            let pos = i16::from(a0[x]) + i16::from(a2[x]) + i16::from(c0[x]) + i16::from(c2[x]) + 4 * i16::from(b1[x]);
            let neg = 2 * (i16::from(a1[x]) + i16::from(c1[x]) + i16::from(b0[x]) + i16::from(b2[x]));
            sum += u32::from((pos - neg).unsigned_abs());
        }
        total += u64::from(sum);
        rows += 1;
        y += 16;
    }
    if rows == 0 {
        return 0.0;
    }
    ((std::f64::consts::PI / 2.0).sqrt() * total as f64 / (6.0 * n as f64 * rows as f64)) as f32
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
    fn simd_downscale_matches_scalar() {
        let (w, h) = (1928, 1080); // not a multiple of 16 after the 4x reduction: exercises the tail
        let data: Vec<u8> = (0..w * h).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        let mut a = VideoAnalyzer::new(w as u32, h as u32);
        a.downscale(&view(&data, w, h));
        let (sw, sh) = a.small_size();
        for sy in 0..sh {
            for sx in 0..sw {
                let sum: u32 = (0..4)
                    .flat_map(|r| (0..4).map(move |c| (sy * 4 + r) * w + sx * 4 + c))
                    .map(|i| u32::from(data[i]))
                    .sum();
                assert_eq!(a.cur[sy * sw + sx], ((sum + 8) / 16) as u8, "at {sx},{sy}");
            }
        }
    }

    #[test]
    fn simd_block_sad_matches_scalar() {
        let a: Vec<u8> = (0..64 * 20).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        let b: Vec<u8> = (0..64 * 20).map(|i: usize| (i.wrapping_mul(40_503) >> 5) as u8).collect();
        for (off_a, off_b, stride) in [(0, 0, 64), (3, 17, 64), (100, 5, 40), (0, 0, 8)] {
            assert_eq!(sad_8x8(&a[off_a..], &b[off_b..], stride), sad_8x8_scalar(&a[off_a..], &b[off_b..], stride));
        }
        assert_eq!(sad_8x8(&a[..10], &b, 8), u32::MAX, "a block past the end is never a match");
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

#[cfg(test)]
mod cost {
    use super::*;
    use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};
    use crate::capture::testsrc::TestSource;
    use crate::timeline::Rate;
    use std::time::Instant;

    /// Per-part cost at 1080p on the test source (hot cache):
    /// `cargo test --release -p lockstep --lib per_part_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing printout for docs/analysis.md, not a check"]
    fn per_part_cost() {
        let (w, h) = (1920u32, 1080u32);
        let rate = Rate::new(25, 1).expect("rate");
        let pool = FramePool::new(FrameLayout { width: w, height: h, audio_channels: 0, max_audio_samples: 0 }, 1);
        let src = TestSource::new(w, h, rate, 0);
        let frames: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let mut wr = pool.acquire();
                src.render(25 * 3600 * 10 + 25 * 20 + i, &mut wr.buffers());
                wr.publish(FrameMeta::default()).planes().0.to_vec()
            })
            .collect();
        let mut a = VideoAnalyzer::new(w, h);
        let rounds = 50;
        let mut t = [0f64; 7];
        let mut floor = 0f64;
        for r in 0..rounds {
            for f in &frames {
                let luma = ArrayView2::from_shape((h as usize, w as usize), &f[..]).expect("shape");
                let c0 = Instant::now();
                std::hint::black_box(
                    f.chunks_exact(64).map(|c| c.iter().fold(0u8, |a, &b| a ^ b)).fold(0u8, |a, b| a ^ b),
                );
                floor += c0.elapsed().as_secs_f64();
                let c = Instant::now();
                std::mem::swap(&mut a.cur, &mut a.prev);
                a.downscale(&luma);
                let c1 = Instant::now();
                std::hint::black_box(a.histogram());
                let c2 = Instant::now();
                std::hint::black_box(a.gradient());
                let c3 = Instant::now();
                std::hint::black_box(noise_estimate(f, w as usize, w as usize, h as usize));
                let c4 = Instant::now();
                std::hint::black_box(mean_abs_diff(&a.cur, &a.prev));
                let c5 = Instant::now();
                std::hint::black_box(a.motion());
                let c6 = Instant::now();
                std::hint::black_box(a.analyse(luma));
                let c7 = Instant::now();
                if r > 0 {
                    for (i, (x, y)) in
                        [(c, c1), (c1, c2), (c2, c3), (c3, c4), (c4, c5), (c5, c6), (c6, c7)].iter().enumerate()
                    {
                        t[i] += (*y - *x).as_secs_f64();
                    }
                }
            }
        }
        let n = ((rounds - 1) * frames.len()) as f64;
        println!("{:>14}: {:.3} ms", "read luma once", floor * 1000.0 / (rounds * frames.len()) as f64);
        for (name, v) in ["downscale", "histogram", "gradient", "noise", "sad", "motion", "whole analyse"].iter().zip(t)
        {
            println!("{name:>14}: {:.3} ms", v * 1000.0 / n);
        }
    }
}
