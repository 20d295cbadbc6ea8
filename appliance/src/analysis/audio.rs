//! Audio features on 100 ms windows: loudness, spectral flux, mix
//! complexity, silence. Formulas and costs: docs/analysis.md.
//!
//! Input is the frame's interleaved 16-bit PCM at 48 kHz, mixed to mono.
//! Each full window gives one [`AudioWindow`]; its spectrum is a 2048-point
//! FFT (Hann) over the window's last 2048 samples.

use std::sync::Arc;

use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};
use serde::Serialize;

/// Samples per window (100 ms at 48 kHz).
pub const WINDOW: usize = 4_800;
/// FFT length.
const FFT: usize = 2_048;
/// Log-spaced bands for mix complexity, 50 Hz to 16 kHz.
const BANDS: usize = 24;
/// Below this RMS level a window is silent.
pub const SILENCE_DBFS: f32 = -60.0;
/// Floor for levels (digital silence).
const FLOOR_DBFS: f32 = -120.0;

/// Features of one 100 ms window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AudioWindow {
    /// RMS level of the mono mix in dB relative to full scale.
    pub loudness_dbfs: f32,
    /// Positive spectral change against the previous window, normalised by
    /// this window's magnitude sum, 0–1.
    pub flux: f32,
    /// Share of bands (24, log-spaced) within 40 dB of the loudest band, 0–1.
    pub mix_complexity: f32,
    /// RMS below −60 dBFS.
    pub silent: bool,
}

/// Per-segment audio summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioSegment {
    /// Windows analysed.
    pub windows: u32,
    /// Level of the whole segment (energy mean of windows), dBFS.
    pub loudness_dbfs: f32,
    /// Loudest window, dBFS.
    pub peak_window_dbfs: f32,
    /// Share of silent windows.
    pub silence: f32,
    /// Mean spectral flux of non-silent windows.
    pub flux: f32,
    /// Mean mix complexity of non-silent windows.
    pub mix_complexity: f32,
    /// Audio complexity, 0–1: `0.5 · mix + 0.5 · min(1, 2 · flux)` over
    /// non-silent windows, scaled by their share.
    pub complexity: f32,
}

/// Streaming analyser: feed samples frame by frame, collect windows.
pub struct AudioAnalyzer {
    channels: usize,
    mono: Vec<f32>,
    fft: Arc<dyn Fft<f32>>,
    hann: Vec<f32>,
    buf: Vec<Complex32>,
    scratch: Vec<Complex32>,
    prev_mag: Vec<f32>,
    mag: Vec<f32>,
    band_edges: Vec<usize>,
    has_prev: bool,
}

impl std::fmt::Debug for AudioAnalyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AudioAnalyzer({} channels, {} samples pending)", self.channels, self.mono.len())
    }
}

impl AudioAnalyzer {
    /// An analyser for `channels` interleaved channels at 48 kHz.
    pub fn new(channels: u16) -> Self {
        let fft = FftPlanner::new().plan_fft_forward(FFT);
        let hann =
            (0..FFT).map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / (FFT - 1) as f32).cos()).collect();
        // Band b spans [50·320^(b/24), 50·320^((b+1)/24)) Hz; bin = f · FFT / 48 kHz.
        let band_edges = (0..=BANDS)
            .map(|b| {
                let hz = 50.0 * 320f64.powf(b as f64 / BANDS as f64);
                ((hz * FFT as f64 / 48_000.0).round() as usize).clamp(1, FFT / 2)
            })
            .collect();
        Self {
            channels: usize::from(channels.max(1)),
            mono: Vec::with_capacity(2 * WINDOW),
            scratch: vec![Complex32::default(); fft.get_inplace_scratch_len()],
            fft,
            hann,
            buf: vec![Complex32::default(); FFT],
            prev_mag: vec![0.0; FFT / 2],
            mag: vec![0.0; FFT / 2],
            band_edges,
            has_prev: false,
        }
    }

    /// Adds interleaved samples; returns the windows they completed.
    pub fn push(&mut self, interleaved: &[i16], out: &mut Vec<AudioWindow>) {
        let scale = 1.0 / (32_768.0 * self.channels as f32);
        for frame in interleaved.chunks_exact(self.channels) {
            self.mono.push(frame.iter().map(|&s| f32::from(s)).sum::<f32>() * scale);
            if self.mono.len() == WINDOW {
                out.push(self.window());
                self.mono.clear();
            }
        }
    }

    fn window(&mut self) -> AudioWindow {
        let energy = self.mono.iter().map(|s| s * s).sum::<f32>() / WINDOW as f32;
        let loudness_dbfs = db(energy);
        let tail = &self.mono[WINDOW - FFT..];
        for ((b, &s), &w) in self.buf.iter_mut().zip(tail).zip(&self.hann) {
            *b = Complex32::new(s * w, 0.0);
        }
        self.fft.process_with_scratch(&mut self.buf, &mut self.scratch);
        for (m, c) in self.mag.iter_mut().zip(&self.buf) {
            *m = c.norm();
        }
        let total: f32 = self.mag.iter().sum();
        let flux = if self.has_prev && total > 1e-9 {
            let rise: f32 = self.mag.iter().zip(&self.prev_mag).map(|(&m, &p)| (m - p).max(0.0)).sum();
            (rise / total).min(1.0)
        } else {
            0.0
        };
        let band_power: Vec<f32> = self
            .band_edges
            .windows(2)
            .map(|e| self.mag[e[0]..e[1].max(e[0] + 1)].iter().map(|m| m * m).sum::<f32>())
            .collect();
        let loudest = band_power.iter().copied().fold(0.0f32, f32::max);
        let mix_complexity = if loudest > 1e-12 {
            band_power.iter().filter(|&&p| p >= loudest * 1e-4).count() as f32 / BANDS as f32
        } else {
            0.0
        };
        std::mem::swap(&mut self.mag, &mut self.prev_mag);
        self.has_prev = true;
        AudioWindow { loudness_dbfs, flux, mix_complexity, silent: loudness_dbfs < SILENCE_DBFS }
    }
}

/// Mean-square level in dBFS, floored at −120.
fn db(energy: f32) -> f32 {
    if energy <= 0.0 { FLOOR_DBFS } else { (10.0 * energy.log10()).max(FLOOR_DBFS) }
}

/// Summarises a segment's windows (`None` if there are none).
pub fn summarise(windows: &[AudioWindow]) -> Option<AudioSegment> {
    if windows.is_empty() {
        return None;
    }
    let n = windows.len() as f32;
    let energy = windows.iter().map(|w| 10f32.powf(w.loudness_dbfs / 10.0)).sum::<f32>() / n;
    let active: Vec<&AudioWindow> = windows.iter().filter(|w| !w.silent).collect();
    let active_share = active.len() as f32 / n;
    let mean = |f: fn(&AudioWindow) -> f32| {
        if active.is_empty() { 0.0 } else { active.iter().map(|w| f(w)).sum::<f32>() / active.len() as f32 }
    };
    let (flux, mix) = (mean(|w| w.flux), mean(|w| w.mix_complexity));
    Some(AudioSegment {
        windows: windows.len() as u32,
        loudness_dbfs: db(energy),
        peak_window_dbfs: windows.iter().map(|w| w.loudness_dbfs).fold(FLOOR_DBFS, f32::max),
        silence: 1.0 - active_share,
        flux,
        mix_complexity: mix,
        complexity: active_share * (0.5 * mix + 0.5 * (2.0 * flux).min(1.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(samples: &[i16], channels: u16) -> Vec<AudioWindow> {
        let mut a = AudioAnalyzer::new(channels);
        let mut out = Vec::new();
        // frame-sized pushes, as the pipeline gives them
        for chunk in samples.chunks(1920 * usize::from(channels)) {
            a.push(chunk, &mut out);
        }
        out
    }

    fn sine(freq: f32, amp: f32, len: usize) -> Vec<i16> {
        (0..len)
            .map(|i| (amp * 32_767.0 * (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin()) as i16)
            .collect()
    }

    fn noise(amp: f32, len: usize) -> Vec<i16> {
        let mut x = 0x1234_5678u32;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x as i32 >> 16) as f32 * amp) as i16
            })
            .collect()
    }

    #[test]
    fn silence_is_silent() {
        let w = run(&vec![0i16; 48_000], 1);
        assert_eq!(w.len(), 10);
        assert!(w.iter().all(|w| w.silent && w.loudness_dbfs == FLOOR_DBFS && w.mix_complexity == 0.0));
        let s = summarise(&w).expect("windows");
        assert_eq!((s.silence, s.complexity), (1.0, 0.0));
    }

    #[test]
    fn a_sine_has_its_level_and_a_simple_mix() {
        // −6 dBFS peak sine: RMS −9.03 dBFS; stereo with equal channels mixes to the same.
        let mono = sine(1_000.0, 0.5, 48_000);
        let stereo: Vec<i16> = mono.iter().flat_map(|&s| [s, s]).collect();
        let w = run(&stereo, 2);
        assert_eq!(w.len(), 10);
        for win in &w {
            assert!((win.loudness_dbfs + 9.03).abs() < 0.1, "{win:?}");
            assert!(!win.silent);
            assert!(win.mix_complexity <= 0.25, "a pure tone fills few bands: {win:?}");
        }
        assert!(w[1..].iter().all(|w| w.flux < 0.05), "a steady tone has no flux: {w:?}");
    }

    #[test]
    fn noise_is_complex_and_bursts_have_flux() {
        let w = run(&noise(0.5, 48_000), 1);
        assert!(w.iter().all(|w| w.mix_complexity > 0.9), "{w:?}");
        // 100 ms on, 100 ms off: every onset is a flux peak.
        let mut bursts = Vec::new();
        for k in 0..10 {
            bursts.extend(if k % 2 == 0 { sine(440.0, 0.5, WINDOW) } else { vec![0; WINDOW] });
        }
        let b = run(&bursts, 1);
        let steady = run(&sine(440.0, 0.5, 48_000), 1);
        let mean_flux = |w: &[AudioWindow]| summarise(w).map_or(0.0, |s| s.flux);
        assert!(mean_flux(&b) > 3.0 * mean_flux(&steady) + 0.1, "{b:?}");
        assert!(summarise(&b).is_some_and(|s| (s.silence - 0.5).abs() < 0.01));
    }

    #[test]
    fn no_windows_no_summary() {
        assert!(summarise(&[]).is_none());
        assert!(run(&[1, 2, 3], 2).is_empty(), "an odd sample count is ignored, not a panic");
    }
}

#[cfg(test)]
mod cost {
    use super::*;

    /// Cost of one 100 ms window (stereo):
    /// `cargo test --release -p lockstep --lib audio_window_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing printout for docs/analysis.md, not a check"]
    fn audio_window_cost() {
        let samples: Vec<i16> = (0..48_000 * 2 * 10).map(|i: usize| ((i * 7919) % 20_000) as i16 - 10_000).collect();
        let mut a = AudioAnalyzer::new(2);
        let mut out = Vec::new();
        let t = std::time::Instant::now();
        for chunk in samples.chunks(1920 * 2) {
            a.push(chunk, &mut out);
        }
        let per = t.elapsed().as_secs_f64() / out.len() as f64;
        println!("{} windows, {:.1} µs per 100 ms window ({:.3} % of a core)", out.len(), per * 1e6, per * 1e3);
    }
}
