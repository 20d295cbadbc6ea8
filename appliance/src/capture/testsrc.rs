//! The built-in test source: picture and sound as pure functions of the
//! frame number and sample index, so every appliance running it sees the
//! same frames at the same timecode.
//!
//! A 60-second programme repeats:
//!
//! | seconds | picture                                   | sound                        |
//! |---------|-------------------------------------------|------------------------------|
//! | 0–12    | moving objects over a gradient            | steady tones (440/660 Hz)    |
//! | 12–22   | static "talking head"                     | speech-like bursts           |
//! | 22–32   | high motion: fast pan over fine texture   | broadband noise              |
//! | 32–40   | low light, noisy, dim object              | silence                      |
//! | 40–50   | scene cuts every second                   | a tone per scene             |
//! | 50–60   | slow pan over a playing field             | noise bed with a tone        |
//!
//! Every five seconds one frame shows a white sync flash and a 1 kHz beep
//! starts on the same instant, for A/V sync checks. A burnt-in timecode and
//! frame number sit on every frame.

use crate::capture::pool::FrameBuffers;
use std::io::Write as _;

use crate::timeline::{Rate, Timecode};

const CYCLE_S: i64 = 60;
const TEXTURE: usize = 1024;
/// Sync flash / beep period in seconds.
pub const SYNC_PERIOD_S: i64 = 5;

/// Scene of the programme at a given second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Moving objects.
    Objects,
    /// Talking head.
    TalkingHead,
    /// High motion.
    HighMotion,
    /// Low light.
    LowLight,
    /// Scene cuts every second.
    Cuts,
    /// Field pan.
    Field,
}

/// Section playing at second `s` of the programme.
pub fn section_at(second: i64) -> Section {
    match second.rem_euclid(CYCLE_S) {
        0..12 => Section::Objects,
        12..22 => Section::TalkingHead,
        22..32 => Section::HighMotion,
        32..40 => Section::LowLight,
        40..50 => Section::Cuts,
        _ => Section::Field,
    }
}

fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Generator state: only caches derived from constants (texture), so the
/// output stays a pure function of the frame number.
pub struct TestSource {
    width: usize,
    height: usize,
    rate: Rate,
    texture: Vec<u8>,
    channels: u16,
}

impl std::fmt::Debug for TestSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestSource({}x{}@{})", self.width, self.height, self.rate)
    }
}

/// Colour in Y'CbCr.
#[derive(Clone, Copy)]
struct Yuv(u8, u8, u8);

const WHITE: Yuv = Yuv(235, 128, 128);
const BLACK: Yuv = Yuv(16, 128, 128);

impl TestSource {
    /// A generator for pictures of `width`×`height` (even) at `rate`.
    pub fn new(width: u32, height: u32, rate: Rate, audio_channels: u16) -> Self {
        let texture = (0..TEXTURE * TEXTURE)
            .map(|i| {
                let h = hash32(i as u32 ^ 0x5eed);
                // fine texture with some larger-scale structure
                let coarse = hash32(((i / TEXTURE / 16) * 4096 + (i % TEXTURE) / 16) as u32) & 0x3f;
                (16 + (h & 0x7f) + coarse) as u8
            })
            .collect();
        Self { width: width as usize, height: height as usize, rate, texture, channels: audio_channels }
    }

    /// Renders frame `n` into `buf` (I420, strides = width, width/2).
    pub fn render(&self, n: i64, buf: &mut FrameBuffers<'_>) {
        let ns = self.rate.frame_time_ns(n);
        let second = i64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let t = (ns.rem_euclid(i128::from(CYCLE_S) * 1_000_000_000)) as f64 / 1e9;
        match section_at(second) {
            Section::Objects => self.objects(t, buf),
            Section::TalkingHead => self.talking_head(t, buf),
            Section::HighMotion => self.high_motion(t, buf),
            Section::LowLight => self.low_light(n, t, buf),
            Section::Cuts => self.cuts(second, t, buf),
            Section::Field => self.field(t, buf),
        }
        if self.is_sync_frame(n) {
            let (w, h) = (self.width, self.height);
            self.rect(buf, w / 4, h / 4, w / 2, h / 2, WHITE);
        }
        self.burn_in(n, buf);
    }

    /// Whether frame `n` carries the sync flash (first frame at or after each
    /// five-second mark).
    pub fn is_sync_frame(&self, n: i64) -> bool {
        let period = i128::from(SYNC_PERIOD_S) * 1_000_000_000;
        let t = self.rate.frame_time_ns(n);
        let mark = t.div_euclid(period) * period;
        self.rate.frame_time_ns(n - 1) < mark
    }

    fn fill(&self, buf: &mut FrameBuffers<'_>, c: Yuv) {
        buf.y.fill(c.0);
        buf.u.fill(c.1);
        buf.v.fill(c.2);
    }

    /// Vertical gradient background.
    fn gradient(&self, buf: &mut FrameBuffers<'_>, top: Yuv, bottom: Yuv) {
        let lerp =
            |a: u8, b: u8, y: usize, h: usize| -> u8 { ((usize::from(a) * (h - y) + usize::from(b) * y) / h) as u8 };
        for (y, row) in buf.y.chunks_exact_mut(self.width).enumerate() {
            row.fill(lerp(top.0, bottom.0, y, self.height));
        }
        let (cw, ch) = (self.width / 2, self.height / 2);
        for (y, (ru, rv)) in buf.u.chunks_exact_mut(cw).zip(buf.v.chunks_exact_mut(cw)).enumerate() {
            ru.fill(lerp(top.1, bottom.1, y, ch));
            rv.fill(lerp(top.2, bottom.2, y, ch));
        }
    }

    fn rect(&self, buf: &mut FrameBuffers<'_>, x: usize, y: usize, w: usize, h: usize, c: Yuv) {
        let x1 = (x + w).min(self.width);
        let y1 = (y + h).min(self.height);
        if x >= x1 || y >= y1 {
            return;
        }
        for row in y..y1 {
            buf.y[row * self.width + x..row * self.width + x1].fill(c.0);
        }
        let cw = self.width / 2;
        for row in y / 2..y1.div_ceil(2).min(self.height / 2) {
            buf.u[row * cw + x / 2..row * cw + x1.div_ceil(2).min(cw)].fill(c.1);
            buf.v[row * cw + x / 2..row * cw + x1.div_ceil(2).min(cw)].fill(c.2);
        }
    }

    fn disc(&self, buf: &mut FrameBuffers<'_>, cx: f64, cy: f64, r: f64, c: Yuv) {
        let y0 = (cy - r).max(0.0) as usize;
        let y1 = ((cy + r) as usize).min(self.height.saturating_sub(1));
        for y in y0..=y1 {
            let dy = y as f64 + 0.5 - cy;
            let half = (r * r - dy * dy).max(0.0).sqrt();
            let xa = (cx - half).max(0.0) as usize;
            let xb = ((cx + half).max(0.0) as usize).min(self.width);
            if xa < xb {
                buf.y[y * self.width + xa..y * self.width + xb].fill(c.0);
                if y % 2 == 0 {
                    let cw = self.width / 2;
                    let row = y / 2;
                    buf.u[row * cw + xa / 2..row * cw + xb / 2].fill(c.1);
                    buf.v[row * cw + xa / 2..row * cw + xb / 2].fill(c.2);
                }
            }
        }
    }

    fn objects(&self, t: f64, buf: &mut FrameBuffers<'_>) {
        self.gradient(buf, Yuv(60, 150, 110), Yuv(130, 110, 140));
        let (w, h) = (self.width as f64, self.height as f64);
        let colours = [Yuv(82, 90, 240), Yuv(145, 54, 34), Yuv(41, 240, 110), Yuv(210, 16, 146), Yuv(170, 166, 16)];
        for (i, c) in colours.iter().enumerate() {
            let k = i as f64 + 1.0;
            let x = (0.5 + 0.4 * (t * 0.7 * k).sin()) * w;
            let y = (0.5 + 0.35 * (t * 0.5 * k + k).cos()) * h;
            if i % 2 == 0 {
                self.disc(buf, x, y, h * 0.06 * (1.0 + 0.2 * k), *c);
            } else {
                let s = (h * 0.12) as usize;
                self.rect(buf, x as usize, y as usize, s, s, *c);
            }
        }
    }

    fn talking_head(&self, t: f64, buf: &mut FrameBuffers<'_>) {
        self.gradient(buf, Yuv(90, 140, 120), Yuv(70, 140, 124));
        let (w, h) = (self.width as f64, self.height as f64);
        // shoulders, head, eyes, mouth: small movements only
        self.rect(
            buf,
            (w * 0.3) as usize,
            (h * 0.7) as usize,
            (w * 0.4) as usize,
            (h * 0.3) as usize,
            Yuv(50, 150, 120),
        );
        let sway = (t * 1.3).sin() * w * 0.004;
        self.disc(buf, w * 0.5 + sway, h * 0.42, h * 0.2, Yuv(150, 110, 150));
        self.disc(buf, w * 0.46 + sway, h * 0.38, h * 0.02, BLACK);
        self.disc(buf, w * 0.54 + sway, h * 0.38, h * 0.02, BLACK);
        let open = ((t * 9.0).sin().abs() * h * 0.03) as usize + 2;
        self.rect(buf, (w * 0.47 + sway) as usize, (h * 0.5) as usize, (w * 0.06) as usize, open, Yuv(60, 120, 160));
    }

    fn copy_texture(&self, buf: &mut FrameBuffers<'_>, dx: usize, dy: usize, dim: u8) {
        for (y, row) in buf.y.chunks_exact_mut(self.width).enumerate() {
            let ty = (y + dy) % TEXTURE;
            let src = &self.texture[ty * TEXTURE..(ty + 1) * TEXTURE];
            let mut x = 0;
            while x < self.width {
                let tx = (x + dx) % TEXTURE;
                let n = (TEXTURE - tx).min(self.width - x);
                row[x..x + n].copy_from_slice(&src[tx..tx + n]);
                x += n;
            }
            if let Some(dim) = std::num::NonZeroU8::new(dim) {
                for p in row.iter_mut() {
                    *p = 16 + (*p - 16) / dim.get();
                }
            }
        }
    }

    fn high_motion(&self, t: f64, buf: &mut FrameBuffers<'_>) {
        let speed = self.width as f64 * 0.9; // most of a screen width per second
        self.copy_texture(buf, (t * speed) as usize, (t * speed * 0.3) as usize, 0);
        buf.u.fill(120);
        buf.v.fill(136);
        let (w, h) = (self.width as f64, self.height as f64);
        for i in 0..12 {
            let k = f64::from(i);
            let x = ((t * (300.0 + 90.0 * k) + k * 173.0) % (w + 100.0)) - 50.0;
            let y = (0.5 + 0.45 * (t * 3.0 + k).sin()) * h;
            self.disc(buf, x, y, h * 0.03, Yuv(200 - i * 10, 60 + i * 12, 200 - i * 12));
        }
    }

    fn low_light(&self, n: i64, t: f64, buf: &mut FrameBuffers<'_>) {
        let seed = (n as u32).wrapping_mul(2_654_435_761);
        for (i, p) in buf.y.iter_mut().enumerate() {
            *p = 18 + (hash32(i as u32 ^ seed) & 0x0f) as u8;
        }
        buf.u.fill(128);
        buf.v.fill(128);
        let (w, h) = (self.width as f64, self.height as f64);
        self.disc(buf, (0.5 + 0.3 * (t * 0.4).sin()) * w, h * 0.5, h * 0.15, Yuv(48, 124, 132));
    }

    fn cuts(&self, second: i64, t: f64, buf: &mut FrameBuffers<'_>) {
        let scene = second.rem_euclid(10);
        let (w, h) = (self.width, self.height);
        match scene % 5 {
            0 => self.fill(buf, Yuv(41, 240, 110)),
            1 => {
                self.fill(buf, Yuv(170, 166, 16));
                for i in 0..8 {
                    self.rect(buf, i * w / 8, 0, w / 16, h, Yuv((30 + i * 25) as u8, 128, 128));
                }
            }
            2 => {
                self.copy_texture(buf, (scene as usize) * 97, 0, 2);
                buf.u.fill(128);
                buf.v.fill(128);
            }
            3 => {
                self.gradient(buf, Yuv(200, 100, 100), Yuv(30, 160, 160));
                self.disc(buf, w as f64 * (t % 1.0), h as f64 / 2.0, h as f64 / 5.0, WHITE);
            }
            _ => {
                self.fill(buf, Yuv(82, 90, 240));
                for i in 0..6 {
                    self.rect(buf, 0, i * h / 6, w, h / 24, Yuv(235, 128, 128));
                }
            }
        }
        if scene >= 5 {
            // second half of the cut section inverts luma so scenes differ
            for p in buf.y.iter_mut() {
                *p = 251 - *p;
            }
        }
    }

    fn field(&self, t: f64, buf: &mut FrameBuffers<'_>) {
        let (w, h) = (self.width, self.height);
        let pan = (t * w as f64 * 0.15) as usize;
        let stripe = (w / 12).max(2);
        for (y, row) in buf.y.chunks_exact_mut(w).enumerate() {
            for (x, p) in row.iter_mut().enumerate() {
                let band = ((x + pan) / stripe) % 2;
                *p = if band == 0 { 96 } else { 110 } + ((y * 20 / h) as u8);
            }
        }
        buf.u.fill(100);
        buf.v.fill(90);
        for i in 0..10 {
            let k = i as f64;
            let x = ((k * 0.1 + 0.05 * (t * 0.8 + k).sin()) * w as f64) as usize;
            let y = ((0.2 + 0.06 * k + 0.03 * (t * 1.7 + k).cos()) * h as f64) as usize;
            self.rect(buf, x, y, w / 60, h / 14, if i % 2 == 0 { Yuv(210, 16, 146) } else { WHITE });
        }
        let bx = (0.5 + 0.45 * (t * 1.1).sin()) * w as f64;
        let by = (0.5 + 0.4 * (t * 2.3).cos().abs()) * h as f64;
        self.disc(buf, bx, by, h as f64 * 0.015, WHITE);
    }

    /// The burnt-in text of frame `n` written into `storage` (no
    /// allocation per frame): its TAI time of day, labelled (37 s ahead of
    /// the UTC of the playlists' PROGRAM-DATE-TIME), and its number.
    fn label<'a>(&self, n: i64, storage: &'a mut [u8; 48]) -> &'a [u8] {
        let len = {
            let mut cursor = std::io::Cursor::new(&mut storage[..]);
            let _ = write!(cursor, "{} TAI #{}", Timecode(self.rate, n), n);
            cursor.position() as usize
        };
        &storage[..len]
    }

    fn burn_in(&self, n: i64, buf: &mut FrameBuffers<'_>) {
        let mut storage = [0u8; 48];
        let text = self.label(n, &mut storage);
        let scale = (self.height / 60).max(1);
        let (cw, ch) = (4 * scale, 6 * scale);
        let box_w = (text.len() * cw + 2 * scale).min(self.width);
        let x0 = (self.width.saturating_sub(box_w)) / 2;
        let y0 = scale * 2;
        self.rect(buf, x0, y0, box_w, ch + 2 * scale, BLACK);
        for (i, &ch_) in text.iter().enumerate() {
            let glyph = glyph(ch_);
            for (gy, bits) in glyph.iter().enumerate() {
                for gx in 0..3 {
                    if bits & (0b100 >> gx) != 0 {
                        let px = x0 + scale + i * cw + gx * scale;
                        let py = y0 + scale + gy * scale;
                        self.rect(buf, px, py, scale, scale, WHITE);
                    }
                }
            }
        }
    }

    /// Fills `out` with interleaved samples `first..first + out.len()/channels`.
    pub fn audio(&self, first: i64, out: &mut [i16]) {
        let ch = usize::from(self.channels.max(1));
        for (i, frame) in out.chunks_exact_mut(ch).enumerate() {
            let s = first + i as i64;
            let (l, r) = self.sample(s);
            frame[0] = l;
            if ch > 1 {
                frame[1] = r;
            }
        }
    }

    fn sample(&self, s: i64) -> (i16, i16) {
        const SR: f64 = 48_000.0;
        let second = s.div_euclid(48_000);
        let t = s.rem_euclid(48_000 * CYCLE_S) as f64 / SR;
        let tau = std::f64::consts::TAU;
        let noise = |k: u32| (f64::from(hash32((s as u32).wrapping_add(k)) & 0xffff) / 32768.0) - 1.0;
        let (mut l, mut r) = match section_at(second) {
            Section::Objects => ((tau * 440.0 * t).sin() * 0.25, (tau * 660.0 * t).sin() * 0.25),
            Section::TalkingHead => {
                // syllables at ~4 Hz with a voiced buzz and two formants
                let env = ((tau * 3.7 * t).sin().max(0.0) * (tau * 0.31 * t).sin().abs()).powf(0.7);
                let f0 = 120.0 + 20.0 * (tau * 0.5 * t).sin();
                let v = (tau * f0 * t).sin() * 0.5 + (tau * 700.0 * t).sin() * 0.3 + (tau * 1_200.0 * t).sin() * 0.2;
                (v * env * 0.5, v * env * 0.5)
            }
            Section::HighMotion => (noise(1) * 0.2, noise(7_777) * 0.2),
            Section::LowLight => (0.0, 0.0),
            Section::Cuts => {
                let f = 220.0 * (1.0 + second.rem_euclid(10) as f64 * 0.25);
                let v = (tau * f * t).sin() * 0.2;
                (v, v)
            }
            Section::Field => {
                let v = noise(3) * 0.08 + (tau * 330.0 * t).sin() * 0.1;
                (v, v)
            }
        };
        // 1 kHz sync beep of 100 ms from each five-second mark
        let in_period = s.rem_euclid(48_000 * SYNC_PERIOD_S);
        if in_period < 4_800 {
            let b = (tau * 1_000.0 * in_period as f64 / SR).sin() * 0.9;
            l = b;
            r = b;
        }
        ((l * 32_767.0) as i16, (r * 32_767.0) as i16)
    }
}

/// 3×6 pixel glyphs for the burnt-in text.
fn glyph(c: u8) -> [u8; 6] {
    match c {
        b'0' => [0b111, 0b101, 0b101, 0b101, 0b111, 0],
        b'1' => [0b010, 0b110, 0b010, 0b010, 0b111, 0],
        b'2' => [0b111, 0b001, 0b111, 0b100, 0b111, 0],
        b'3' => [0b111, 0b001, 0b111, 0b001, 0b111, 0],
        b'4' => [0b101, 0b101, 0b111, 0b001, 0b001, 0],
        b'5' => [0b111, 0b100, 0b111, 0b001, 0b111, 0],
        b'6' => [0b111, 0b100, 0b111, 0b101, 0b111, 0],
        b'7' => [0b111, 0b001, 0b010, 0b010, 0b010, 0],
        b'8' => [0b111, 0b101, 0b111, 0b101, 0b111, 0],
        b'9' => [0b111, 0b101, 0b111, 0b001, 0b111, 0],
        b':' => [0, 0b010, 0, 0b010, 0, 0],
        b'#' => [0b101, 0b111, 0b101, 0b111, 0b101, 0],
        b'-' => [0, 0, 0b111, 0, 0, 0],
        b'T' => [0b111, 0b010, 0b010, 0b010, 0b010, 0],
        b'A' => [0b010, 0b101, 0b111, 0b101, 0b101, 0],
        b'I' => [0b111, 0b010, 0b010, 0b010, 0b111, 0],
        _ => [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::pool::{FrameLayout, FrameMeta, FramePool};

    fn render(src: &TestSource, pool: &std::sync::Arc<FramePool>, n: i64) -> Vec<u8> {
        let mut w = pool.acquire();
        src.render(n, &mut w.buffers());
        let r = w.publish(FrameMeta::default());
        let (y, u, v) = r.planes();
        [y, u, v].concat()
    }

    #[test]
    fn frames_do_not_depend_on_what_the_slot_held_before() {
        // Pool slots are reused: every pixel of every frame must be painted.
        let rate = Rate::new(25, 1).expect("rate");
        for (w, h) in [(160_u32, 90_u32), (426, 240)] {
            let layout = FrameLayout { width: w, height: h, audio_channels: 0, max_audio_samples: 0 };
            let pool = FramePool::new(layout, 1);
            let src = TestSource::new(w, h, rate, 0);
            for n in (0..CYCLE_S * 25).chain(898_157_391 * 50..898_157_391 * 50 + 100) {
                let [on_black, on_white] = [0u8, 0xff].map(|garbage| {
                    let mut writer = pool.acquire();
                    let mut b = writer.buffers();
                    for plane in [&mut b.y, &mut b.u, &mut b.v] {
                        plane.fill(garbage);
                    }
                    src.render(n, &mut b);
                    let r = writer.publish(FrameMeta::default());
                    let (y, u, v) = r.planes();
                    [y, u, v].concat()
                });
                assert!(on_black == on_white, "{w}x{h} frame {n} keeps pixels of the slot's previous frame");
            }
        }
    }

    #[test]
    fn frames_are_a_pure_function_of_the_frame_number() {
        let rate = Rate::new(25, 1).expect("rate");
        let layout = FrameLayout { width: 320, height: 180, audio_channels: 2, max_audio_samples: 2000 };
        let pool = FramePool::new(layout, 2);
        let a = TestSource::new(320, 180, rate, 2);
        let b = TestSource::new(320, 180, rate, 2);
        for n in [0_i64, 25 * 13, 25 * 25, 25 * 33, 25 * 45, 25 * 55, 1_234_567] {
            assert_eq!(render(&a, &pool, n), render(&b, &pool, n), "frame {n}");
        }
        assert_ne!(render(&a, &pool, 100), render(&a, &pool, 101));
    }

    #[test]
    fn the_burnt_in_time_of_day_is_labelled_tai() {
        let src = TestSource::new(320, 180, Rate::new(25, 1).expect("rate"), 0);
        let mut storage = [0u8; 48];
        // Frame 0 is 1970-01-01 00:00:00 TAI; a day and 1 s and 2 frames later:
        let n = 25 * (86_400 + 1) + 2;
        assert_eq!(src.label(n, &mut storage), format!("00:00:01:02 TAI #{n}").as_bytes());
        for c in *b"TAI" {
            assert_ne!(glyph(c), [0; 6], "{} is drawn", c as char);
        }
    }

    #[test]
    fn sync_frames_come_every_five_seconds() {
        let src = TestSource::new(64, 64, Rate::new(30_000, 1001).expect("rate"), 2);
        let count = (0..30_000).filter(|&n| src.is_sync_frame(n)).count();
        // 30000 frames at 29.97 = 1001 s → 201 marks (0, 5, ..., 1000)
        assert_eq!(count, 201);
    }

    #[test]
    fn audio_sections_differ() {
        let src = TestSource::new(64, 64, Rate::new(25, 1).expect("rate"), 2);
        let mut buf = vec![0i16; 9_600];
        src.audio(48_000 * 33 + 10_000, &mut buf);
        assert!(buf.iter().all(|&s| s == 0), "low light section is silent");
        src.audio(48_000 * 2 + 10_000, &mut buf);
        assert!(buf.iter().any(|&s| s.abs() > 5_000), "tones are audible");
    }
}
