//! Opus audio encoder driver (libopus built from bundled source, BSD).
//!
//! Opus is Lockstep's audio codec: royalty-free, BSD-licensed (so the
//! appliance image stays free software), played by browsers in fMP4, and its
//! 20 ms frame divides the common 2 s segment exactly.

use lockstep_encoder_api::{AudioEncoder, AudioSettings, EncodeError};

/// Sample rate Opus always runs at in Lockstep.
pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms frames at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Largest Opus packet (RFC 6716 §3.4: 1275 bytes per frame).
const MAX_PACKET: usize = 1_500;

/// A libopus encoder in restricted-lowdelay-free "audio" mode, CBR-constrained VBR.
pub struct OpusEncoder {
    inner: opus::Encoder,
    channels: usize,
    lookahead: usize,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpusEncoder(channels={})", self.channels)
    }
}

impl OpusEncoder {
    /// Opens an encoder. Only 48 kHz mono or stereo is accepted.
    pub fn open(settings: &AudioSettings) -> Result<Self, EncodeError> {
        if settings.sample_rate != SAMPLE_RATE {
            return Err(EncodeError::Settings(format!(
                "opus runs at {SAMPLE_RATE} Hz, got {} Hz",
                settings.sample_rate
            )));
        }
        let channels = match settings.channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => {
                return Err(EncodeError::Settings(format!("opus takes 1 or 2 channels, got {n}")));
            }
        };
        let backend = |e: opus::Error| EncodeError::Backend(format!("libopus: {e}"));
        let mut inner = opus::Encoder::new(SAMPLE_RATE, channels, opus::Application::Audio).map_err(backend)?;
        let bitrate =
            i32::try_from(settings.bitrate_bps).map_err(|_| EncodeError::Settings("audio bitrate too large".into()))?;
        inner.set_bitrate(opus::Bitrate::Bits(bitrate)).map_err(backend)?;
        inner.set_vbr_constraint(true).map_err(backend)?;
        inner.set_complexity(10).map_err(backend)?;
        let lookahead = usize::try_from(inner.get_lookahead().map_err(backend)?)
            .map_err(|_| EncodeError::Backend("negative lookahead".into()))?;
        Ok(Self { inner, channels: usize::from(settings.channels), lookahead })
    }
}

impl AudioEncoder for OpusEncoder {
    fn frame_samples(&self) -> usize {
        FRAME_SAMPLES
    }

    fn lookahead(&self) -> usize {
        self.lookahead
    }

    fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        if pcm.len() != FRAME_SAMPLES * self.channels {
            return Err(EncodeError::Backend(format!(
                "opus frame needs {} samples, got {}",
                FRAME_SAMPLES * self.channels,
                pcm.len()
            )));
        }
        let start = out.len();
        out.resize(start + MAX_PACKET, 0);
        let n = self.inner.encode(pcm, &mut out[start..]).map_err(|e| EncodeError::Backend(format!("libopus: {e}")))?;
        out.truncate(start + n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_gives_same_packets() {
        let settings = AudioSettings { sample_rate: 48_000, channels: 2, bitrate_bps: 128_000 };
        let pcm: Vec<i16> = (0..FRAME_SAMPLES * 2 * 10).map(|i| ((i as f64 * 0.05).sin() * 8000.0) as i16).collect();
        let run = || {
            let mut enc = OpusEncoder::open(&settings).expect("open");
            let mut out = Vec::new();
            for chunk in pcm.chunks(FRAME_SAMPLES * 2) {
                enc.encode(chunk, &mut out).expect("encode");
            }
            out
        };
        let a = run();
        assert!(!a.is_empty());
        assert_eq!(a, run());
    }

    #[test]
    fn rejects_other_rates_by_name() {
        let settings = AudioSettings { sample_rate: 44_100, channels: 2, bitrate_bps: 96_000 };
        let err = OpusEncoder::open(&settings).expect_err("44.1k must be refused");
        assert!(err.to_string().contains("48000"), "{err}");
    }
}
