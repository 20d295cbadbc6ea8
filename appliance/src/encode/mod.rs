//! Encode stage: one worker per rendition plus one for audio.
//!
//! Segments are encoded independently: each worker opens a fresh encoder at
//! every segment boundary, so a segment's bytes depend only on its input
//! frames and the rendition settings. A segment whose frames did not all
//! arrive (start mid-segment, dropped frames) is discarded, never published.

pub mod backend;
pub mod scale;

use crossbeam_channel::{Receiver, Sender};
use lockstep_encoder_api::{
    AudioEncoder, AudioSettings, EncodeError, PictureKind, PictureRef, VideoEncoderFactory, VideoSettings,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::capture::pool::{FrameLayout, FrameRef};
use crate::package::sink::SegmentSink;
use crate::package::{EncodedSegment, TrackId, avc, fmp4};
use crate::timeline::Grid;

/// Work for an encoder: a fingerprinted frame, or the end.
#[derive(Debug)]
pub enum Work {
    /// One frame.
    Frame {
        /// The frame in the pool.
        frame: FrameRef,
        /// SHA-256 of the picture (input fingerprint).
        hash: [u8; 32],
    },
    /// No more frames.
    End,
}

/// An encoder failure that stops the channel.
#[derive(Debug, thiserror::Error)]
#[error("rendition {rendition}: {source}")]
pub struct WorkerError {
    /// Rendition name.
    pub rendition: String,
    /// Cause.
    pub source: EncodeError,
}

/// Video timescale and ticks per frame for a rate: 90 kHz when it divides
/// evenly, else the rate's numerator.
pub fn video_timescale(grid: &Grid) -> (u32, u32) {
    let (num, den) = (u64::from(grid.rate.num), u64::from(grid.rate.den));
    if (90_000 * den) % num == 0 {
        (90_000, u32::try_from(90_000 * den / num).unwrap_or(1))
    } else {
        (grid.rate.num, grid.rate.den)
    }
}

/// An encode-latency spike drill: while it lasts, every rendition holds
/// each segment it finishes this long before handing it to the packager,
/// as an encoder that fell behind would (its neighbours see its encode
/// latency rise; a hold longer than the frame pool stalls capture).
#[derive(Debug, Default)]
pub struct LatencyDrill {
    hold_ms: AtomicU64,
    until_ms: AtomicU64,
}

impl LatencyDrill {
    /// Holds every segment `hold` from now for `lasting`.
    pub fn set(&self, hold: Duration, lasting: Duration) {
        self.hold_ms.store(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let until = crate::control::unix_ms().saturating_add(u64::try_from(lasting.as_millis()).unwrap_or(u64::MAX));
        self.until_ms.store(until, Ordering::Relaxed);
    }

    /// How long to hold a segment now (None: no drill).
    pub fn hold(&self) -> Option<Duration> {
        (crate::control::unix_ms() < self.until_ms.load(Ordering::Relaxed))
            .then(|| Duration::from_millis(self.hold_ms.load(Ordering::Relaxed)))
    }
}

/// Per-rendition settings for a video worker.
#[derive(Debug, Clone)]
pub struct VideoJob {
    /// Ladder position.
    pub position: usize,
    /// Rendition name.
    pub name: String,
    /// Encoder settings (size, bitrate, rate).
    pub settings: VideoSettings,
    /// Segment grid.
    pub grid: Grid,
    /// First segment to publish.
    pub first_segment: i64,
    /// Publish an incomplete last segment at the end of input (files).
    /// Live sources never do: another appliance has the complete segment
    /// under the same index, and the two must stay interchangeable.
    pub partial_at_end: bool,
    /// Live changes (bitrate), applied at the segment they name.
    pub control: std::sync::Arc<crate::control::LiveControl>,
    /// The encode-latency drill of the channel.
    pub latency: std::sync::Arc<LatencyDrill>,
}

/// One input picture of a segment, as the encoder takes it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Its size (strides follow from it).
    pub layout: FrameLayout,
    /// Luma plane.
    pub y: &'a [u8],
    /// Cb plane.
    pub u: &'a [u8],
    /// Cr plane.
    pub v: &'a [u8],
    /// SHA-256 of the picture (input fingerprint).
    pub hash: [u8; 32],
}

/// A segment being encoded: a fresh encoder, the samples so far and the
/// hash of the input they came from.
struct OpenSegment {
    index: i64,
    next_frame: i64,
    frames: u32,
    encoder: Box<dyn lockstep_encoder_api::VideoEncoder>,
    samples: Vec<fmp4::Sample>,
    payload: Vec<u8>,
    params: avc::ParameterSets,
    hasher: Sha256,
    prints: Vec<u64>,
    bitrate_bps: u32,
}

impl OpenSegment {
    /// A fresh encoder for segment `index`, at the bitrate live changes
    /// give that segment.
    fn open(job: &VideoJob, factory: &dyn VideoEncoderFactory, index: i64) -> Result<Self, EncodeError> {
        let mut settings = job.settings;
        if let Some(kbps) = job.control.bitrate_kbps(&job.name, index) {
            settings.bitrate_bps = kbps.saturating_mul(1000);
        }
        Ok(Self {
            index,
            next_frame: job.grid.first_frame(index),
            frames: 0,
            encoder: factory.open(&settings)?,
            samples: Vec::with_capacity(job.grid.frames_per_segment as usize),
            payload: Vec::with_capacity(1 << 20),
            params: avc::ParameterSets::default(),
            hasher: Sha256::new(),
            prints: Vec::with_capacity(job.grid.frames_per_segment as usize),
            bitrate_bps: settings.bitrate_bps,
        })
    }

    /// Encodes the segment's next picture (scaled to the rendition when
    /// its size differs).
    fn push(
        &mut self,
        job: &VideoJob,
        scaler: &mut Option<scale::Scaler>,
        annexb: &mut Vec<u8>,
        input: Input<'_>,
    ) -> Result<(), EncodeError> {
        let (_, ticks) = video_timescale(&job.grid);
        let layout = input.layout;
        let (w, h) = (job.settings.width, job.settings.height);
        let picture = if (w, h) == (layout.width, layout.height) {
            // Same size as the source: the encoder reads the buffer in place.
            PictureRef {
                width: w,
                height: h,
                y: input.y,
                u: input.u,
                v: input.v,
                y_stride: layout.y_stride(),
                c_stride: layout.c_stride(),
            }
        } else {
            let sc = scaler.get_or_insert_with(|| scale::Scaler::new(layout.width, layout.height, w, h));
            let (sy, su, sv) = sc.scale(input.y, input.u, input.v, layout.y_stride(), layout.c_stride());
            PictureRef { width: w, height: h, y: sy, u: su, v: sv, y_stride: w as usize, c_stride: w as usize / 2 }
        };
        annexb.clear();
        let coded = self.encoder.encode(&picture, u64::from(self.frames), annexb)?;
        if self.frames == 0 && coded.kind != PictureKind::Idr {
            return Err(EncodeError::Backend("segment does not start with an IDR".into()));
        }
        let size = avc::annexb_to_sample(annexb, &mut self.payload, &mut self.params);
        self.samples.push(fmp4::Sample {
            size: u32::try_from(size).unwrap_or(u32::MAX),
            duration: ticks,
            sync: coded.kind == PictureKind::Idr,
        });
        self.hasher.update(input.hash);
        self.prints.push(crate::analysis::short_fingerprint(&input.hash));
        self.frames += 1;
        self.next_frame += 1;
        Ok(())
    }

    /// The segment for the packager.
    fn finish(self, job: &VideoJob) -> EncodedSegment {
        let (_, ticks) = video_timescale(&job.grid);
        let first = job.grid.first_frame(self.index);
        EncodedSegment {
            track: TrackId::Video(job.position),
            index: self.index,
            first_unit: first,
            base_time: u64::try_from(first).unwrap_or(0) * u64::from(ticks),
            samples: self.samples,
            payload: self.payload,
            input_sha256: self.hasher.finalize().into(),
            prints: self.prints,
            params: Some(self.params),
            start_tai_ns: job.grid.rate.frame_time_ns(first),
            bitrate_bps: u64::from(self.bitrate_bps),
        }
    }
}

/// Encodes segment `index` of a rendition from its pictures in order,
/// exactly as [`run_video`] does (a fresh encoder, the same settings): the
/// re-encode of a segment published from the wrong pictures
/// (`crate::pipeline::rework`).
pub fn encode_segment(
    job: &VideoJob,
    factory: &dyn VideoEncoderFactory,
    index: i64,
    inputs: &[Input<'_>],
) -> Result<EncodedSegment, EncodeError> {
    let mut seg = OpenSegment::open(job, factory, index)?;
    let (mut scaler, mut annexb) = (None, Vec::with_capacity(1 << 20));
    for input in inputs {
        seg.push(job, &mut scaler, &mut annexb, *input)?;
    }
    Ok(seg.finish(job))
}

/// Runs a rendition: scale (when the size differs), encode, emit segments.
pub fn run_video(
    job: VideoJob,
    factory: &dyn VideoEncoderFactory,
    input: Receiver<Work>,
    output: SegmentSink,
) -> Result<u64, WorkerError> {
    let err = |source| WorkerError { rendition: job.name.clone(), source };
    let f = i64::from(job.grid.frames_per_segment);
    let mut scaler: Option<scale::Scaler> = None;
    let mut open: Option<OpenSegment> = None;
    let mut annexb = Vec::with_capacity(1 << 20);
    let mut emitted = 0u64;
    for work in input {
        let (frame, hash) = match work {
            Work::Frame { frame, hash } => (frame, hash),
            Work::End => break,
        };
        let n = frame.meta().number;
        let s = job.grid.segment_of(n);
        if s < job.first_segment {
            continue;
        }
        if let Some(seg) = open.take_if(|seg| seg.index != s || seg.next_frame != n) {
            // A gap or a jump: the open segment can never complete.
            tracing::warn!(rendition = %job.name, segment = seg.index, frame = n, "frames missing; segment discarded");
        }
        if open.is_none() {
            if n != job.grid.first_frame(s) {
                continue; // joined mid-segment: wait for the next boundary
            }
            open = Some(OpenSegment::open(&job, factory, s).map_err(err)?);
        }
        let Some(seg) = open.as_mut() else { continue };
        let (y, u, v) = frame.planes();
        seg.push(&job, &mut scaler, &mut annexb, Input { layout: frame.layout(), y, u, v, hash }).map_err(err)?;
        drop(frame);
        if i64::from(seg.frames) == f
            && let Some(done) = open.take()
        {
            if let Some(hold) = job.latency.hold() {
                std::thread::sleep(hold);
            }
            if !output.send(done.finish(&job)) {
                return Ok(emitted);
            }
            emitted += 1;
        }
    }
    // End of input: a final partial segment (file end, stop) is published.
    if let Some(seg) = open.take()
        && seg.frames > 0
    {
        if !job.partial_at_end {
            tracing::info!(rendition = %job.name, segment = seg.index, frames = seg.frames, "stopped mid-segment; incomplete segment not published");
        } else if output.send(seg.finish(&job)) {
            emitted += 1;
        }
    }
    Ok(emitted)
}

/// Opens a fresh audio encoder.
pub type OpenAudio = dyn Fn(&AudioSettings) -> Result<Box<dyn AudioEncoder>, EncodeError> + Sync;

/// Settings for the audio worker.
#[derive(Debug, Clone)]
pub struct AudioJob {
    /// Segment grid (audio packet size included).
    pub grid: Grid,
    /// Encoder settings.
    pub settings: AudioSettings,
    /// Packets encoded and dropped before each segment.
    pub warmup_packets: u32,
    /// Encoder lookahead in samples (input is advanced by it, so pre-skip is 0).
    pub lookahead: usize,
    /// First segment to publish.
    pub first_segment: i64,
    /// Samples before the source's first sample count as silence (files).
    pub silence_before_start: bool,
    /// Publish an incomplete last segment at the end of input (see
    /// [`VideoJob::partial_at_end`]).
    pub partial_at_end: bool,
}

impl AudioJob {
    /// First input sample (per channel) segment `s` needs.
    pub fn first_input_sample(&self, s: i64) -> i64 {
        let p = self.grid.audio_packet_of_segment(s) - i64::from(self.warmup_packets);
        p * i64::from(self.grid.audio_frame) + self.lookahead as i64
    }
}

/// The input of one audio segment, cut out of the PCM window.
struct AudioWindow {
    index: i64,
    first_packet: i64,
    last_packet: i64,
    /// Sample index (per channel) of `pcm[0]`.
    start: i64,
    pcm: Vec<i16>,
}

/// Encodes one segment's window with a fresh encoder: warm-up packets
/// first (dropped), then the segment's packets.
fn encode_audio_segment(job: &AudioJob, open: &OpenAudio, w: &AudioWindow) -> Result<EncodedSegment, EncodeError> {
    let ch = usize::from(job.settings.channels);
    let pf = job.grid.audio_frame as usize;
    let mut encoder = open(&job.settings)?;
    let mut hasher = Sha256::new();
    let mut samples = Vec::with_capacity((w.last_packet - w.first_packet).max(0) as usize);
    let mut packets = Vec::with_capacity(64 * 1024);
    let mut frame = vec![0i16; pf * ch];
    for p in w.first_packet - i64::from(job.warmup_packets)..w.last_packet {
        let from = p * pf as i64 + job.lookahead as i64;
        for (k, slot) in frame.chunks_exact_mut(ch).enumerate() {
            let idx = from + k as i64 - w.start;
            match usize::try_from(idx).ok().map(|i| i * ch).filter(|&at| at + ch <= w.pcm.len()) {
                Some(at) => slot.copy_from_slice(&w.pcm[at..at + ch]),
                None => slot.fill(0), // past the end of the input: silence
            }
        }
        for v in &frame {
            hasher.update(v.to_le_bytes());
        }
        let before = packets.len();
        let n = encoder.encode(&frame, &mut packets)?;
        if p < w.first_packet {
            packets.truncate(before); // warm-up packet: dropped
        } else {
            samples.push(fmp4::Sample { size: u32::try_from(n).unwrap_or(0), duration: pf as u32, sync: true });
        }
    }
    Ok(EncodedSegment {
        track: TrackId::Audio,
        index: w.index,
        first_unit: w.first_packet,
        base_time: u64::try_from(w.first_packet).unwrap_or(0) * pf as u64,
        samples,
        payload: packets,
        input_sha256: hasher.finalize().into(),
        prints: Vec::new(),
        params: None,
        start_tai_ns: i128::from(w.first_packet) * pf as i128 * 1_000_000_000 / i128::from(job.grid.sample_rate),
        bitrate_bps: 0,
    })
}

/// Runs the audio track: keeps a window of PCM and hands each complete
/// segment's input to an encoder thread, which encodes it with a fresh
/// encoder starting `warmup_packets` before the boundary. Encoding a whole
/// segment is bursty; doing it off this thread keeps frames (and their pool
/// slots) moving.
pub fn run_audio(
    job: AudioJob,
    open: &OpenAudio,
    input: Receiver<Work>,
    output: SegmentSink,
) -> Result<u64, WorkerError> {
    let err = |source| WorkerError { rendition: "audio".into(), source };
    let (win_tx, win_rx) = crossbeam_channel::bounded::<AudioWindow>(4);
    std::thread::scope(|scope| {
        let encoder = scope.spawn(|| {
            let mut emitted = 0u64;
            for w in win_rx {
                let seg = encode_audio_segment(&job, open, &w).map_err(err)?;
                if !output.send(seg) {
                    break;
                }
                emitted += 1;
            }
            Ok(emitted)
        });
        gather_audio(&job, input, &win_tx);
        drop(win_tx);
        encoder.join().unwrap_or_else(|_| Err(err(EncodeError::Backend("audio encoder thread panicked".into()))))
    })
}

fn gather_audio(job: &AudioJob, input: Receiver<Work>, windows: &Sender<AudioWindow>) {
    let ch = usize::from(job.settings.channels);
    let pf = job.grid.audio_frame as usize;
    let mut pcm: Vec<i16> = Vec::with_capacity(48_000 * ch * 8);
    let mut pcm_start: Option<i64> = None; // sample index of pcm[0]
    let mut next_seg = job.first_segment;
    let mut ended = false;
    let mut inputs = input.into_iter();
    loop {
        // Hand over every segment whose input is complete.
        while let Some(start) = pcm_start {
            let need_from = job.first_input_sample(next_seg);
            let end_packet = job.grid.audio_packet_of_segment(next_seg + 1);
            let need_to = end_packet * pf as i64 + job.lookahead as i64;
            let have_to = start + (pcm.len() / ch) as i64;
            if need_from < start {
                // Not enough history for this segment (joined late): skip it.
                next_seg += 1;
                continue;
            }
            let complete = have_to >= need_to;
            if !complete && (!ended || !job.partial_at_end) {
                if ended {
                    tracing::info!(segment = next_seg, "stopped mid-segment; incomplete audio segment not published");
                }
                break;
            }
            let first_packet = job.grid.audio_packet_of_segment(next_seg);
            let last_packet = if complete {
                end_packet
            } else {
                // final partial segment: whole packets up to the input's end
                let avail = (have_to - job.lookahead as i64).div_euclid(pf as i64);
                avail.min(end_packet)
            };
            if last_packet <= first_packet {
                break;
            }
            let from = ((need_from - start) as usize) * ch;
            let to = (((need_to.min(have_to)) - start) as usize) * ch;
            let window = AudioWindow {
                index: next_seg,
                first_packet,
                last_packet,
                start: need_from,
                pcm: pcm[from..to].to_vec(),
            };
            if windows.send(window).is_err() {
                return;
            }
            next_seg += 1;
            // Drop PCM no later segment needs.
            let keep_from = job.first_input_sample(next_seg);
            let drop_n = (keep_from - start).clamp(0, (pcm.len() / ch) as i64) as usize;
            pcm.drain(..drop_n * ch);
            pcm_start = Some(start + drop_n as i64);
            if !complete {
                break;
            }
        }
        if ended {
            break;
        }
        match inputs.next() {
            Some(Work::Frame { frame, .. }) => {
                let audio = frame.audio();
                let first = frame.meta().number;
                let first_sample = job.grid.rate.audio_sample_at(first, job.grid.sample_rate);
                if pcm_start.is_none() {
                    let begin = if job.silence_before_start {
                        job.first_input_sample(job.grid.segment_of(first)).min(first_sample)
                    } else {
                        first_sample
                    };
                    pcm_start = Some(begin);
                    pcm.resize(((first_sample - begin) as usize) * ch, 0);
                }
                let expected = pcm_start.unwrap_or(first_sample) + (pcm.len() / ch) as i64;
                if expected != first_sample {
                    // A gap in the input: restart the window at this frame.
                    tracing::warn!(frame = first, "audio input gap; window restarted");
                    pcm.clear();
                    pcm_start = Some(first_sample);
                    next_seg = next_seg.max(job.grid.next_boundary_segment(first));
                }
                pcm.extend_from_slice(audio);
            }
            Some(Work::End) | None => ended = true,
        }
    }
}
