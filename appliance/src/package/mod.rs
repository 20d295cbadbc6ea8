//! Packager: turns encoded segments into CMAF files, per-track manifests
//! and HLS playlists in the segment store.
//!
//! Output layout under `output.dir/<channel>/`:
//! `master.m3u8`, and per track (`<rendition>/` or `audio/`): `init.mp4`,
//! `seg-<index>.m4s`, `playlist.m3u8`, `manifest.jsonl`.

pub mod avc;
pub mod fmp4;
pub mod hls;
pub mod sink;
pub mod store;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::metrics::{Exposition, Kind};
use crate::package::store::{Store, StoreError};

/// Identifies a track of the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackId {
    /// Rendition by ladder position.
    Video(usize),
    /// The audio track.
    Audio,
}

/// One encoded segment, ready to package.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    /// Track.
    pub track: TrackId,
    /// Segment index on the channel timeline.
    pub index: i64,
    /// First frame (video) or audio packet index.
    pub first_unit: i64,
    /// Decode time of the first sample in track ticks.
    pub base_time: u64,
    /// Samples.
    pub samples: Vec<fmp4::Sample>,
    /// Sample bytes, in order.
    pub payload: Vec<u8>,
    /// SHA-256 over the input the segment was encoded from.
    pub input_sha256: [u8; 32],
    /// Video: the 64-bit fingerprint of each picture it was encoded from,
    /// in frame order (what the swarm compares before it is published;
    /// `crate::pipeline::rework::PeerPrints`). Empty for audio.
    pub prints: Vec<u64>,
    /// Video parameter sets (video tracks).
    pub params: Option<avc::ParameterSets>,
    /// TAI ns of the first sample (for EXT-X-PROGRAM-DATE-TIME).
    pub start_tai_ns: i128,
    /// Target bitrate the segment was encoded at (0: the track's own);
    /// a live change rewrites the multivariant playlist's BANDWIDTH.
    pub bitrate_bps: u64,
}

impl EncodedSegment {
    /// Duration in track ticks.
    pub fn duration_ticks(&self) -> u64 {
        self.samples.iter().map(|s| u64::from(s.duration)).sum()
    }
}

/// Static description of a track for the packager.
#[derive(Debug, Clone)]
pub struct TrackSpec {
    /// Which track.
    pub id: TrackId,
    /// Directory name.
    pub name: String,
    /// Timescale.
    pub timescale: u32,
    /// Video size (video tracks).
    pub size: Option<(u32, u32)>,
    /// Target bitrate (for the multivariant playlist).
    pub bitrate_bps: u64,
    /// Audio channel count (audio track).
    pub channels: u16,
    /// Audio pre-skip.
    pub pre_skip: u16,
}

/// One line of `manifest.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Segment index.
    pub index: i64,
    /// File name.
    pub file: String,
    /// First frame / audio packet.
    pub first_unit: i64,
    /// Samples in the segment.
    pub samples: u32,
    /// Decode time of the first sample (ticks).
    pub base_time: u64,
    /// Ticks per second.
    pub timescale: u32,
    /// Seconds.
    pub duration: f64,
    /// File size.
    pub bytes: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// SHA-256 of the input frames / samples.
    pub input_sha256: String,
    /// EXT-X-PROGRAM-DATE-TIME.
    pub program_date_time: String,
    /// Appliance that produced it.
    pub producer: String,
    /// Content analysis of the input (video): complexity, cuts, content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<serde_json::Value>,
}

/// Packaging settings.
#[derive(Debug, Clone)]
pub struct PackagerConfig {
    /// `output.dir/<channel>`.
    pub root: PathBuf,
    /// Archive mode.
    pub archive: bool,
    /// Segments in the sliding window.
    pub window: usize,
    /// Nominal segment seconds.
    pub segment_seconds: f64,
    /// Frame rate for the multivariant playlist.
    pub frame_rate: f64,
    /// TAI − UTC.
    pub utc_tai_offset_s: i64,
    /// Appliance id written into manifests.
    pub producer: String,
}

struct TrackState {
    spec: TrackSpec,
    dir: PathBuf,
    track: Option<fmp4::Track>,
    codec: String,
    entries: VecDeque<hls::Entry>,
    retired: VecDeque<String>,
    discontinuity_sequence: u64,
    manifest_lines: usize,
    manifest_kept: VecDeque<String>,
    /// A video entry waiting for its segment's content analysis.
    pending: Option<ManifestEntry>,
    written: u64,
}

/// What the packager did, for the run summary and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagerStats {
    /// Segments written per track name.
    pub written: Vec<(String, u64)>,
    /// Writes that failed.
    pub write_errors: u64,
    /// The last write error, if any.
    pub last_error: Option<String>,
    /// Video manifest entries written without content analysis because it
    /// came too late.
    pub late_analyses: u64,
}

impl PackagerStats {
    /// Adds the packager's counters to an exposition, labelled with the
    /// channel.
    pub fn export(&self, channel: &str, out: &mut Exposition) {
        out.declare("lockstep_segments_written_total", Kind::Counter, "Segments written per track.");
        for (track, n) in &self.written {
            out.counter(
                "lockstep_segments_written_total",
                "Segments written per track.",
                &[("channel", channel), ("track", track)],
                *n as f64,
            );
        }
        let at = [("channel", channel)];
        out.counter(
            "lockstep_segment_write_errors_total",
            "Segment store writes that failed.",
            &at,
            self.write_errors as f64,
        );
        out.counter(
            "lockstep_analysis_late_total",
            "Manifest entries written without content analysis (it came too late).",
            &at,
            self.late_analyses as f64,
        );
    }
}

/// The manifest entry of a segment written as `file` with these bytes
/// (its analysis added when it arrives).
fn manifest_entry(
    cfg: &PackagerConfig,
    spec: &TrackSpec,
    seg: &EncodedSegment,
    file: String,
    bytes: &[u8],
) -> ManifestEntry {
    ManifestEntry {
        index: seg.index,
        file,
        first_unit: seg.first_unit,
        samples: u32::try_from(seg.samples.len()).unwrap_or(u32::MAX),
        base_time: seg.base_time,
        timescale: spec.timescale,
        duration: seg.duration_ticks() as f64 / f64::from(spec.timescale),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        input_sha256: hex::encode(seg.input_sha256),
        program_date_time: hls::utc_iso8601(seg.start_tai_ns, cfg.utc_tai_offset_s),
        producer: cfg.producer.clone(),
        analysis: None,
    }
}

/// Writes segments, manifests and playlists.
pub struct Packager {
    config: PackagerConfig,
    tracks: Vec<TrackState>,
    store: Store,
    master_written: bool,
    errors: u64,
    last_error: Option<String>,
    /// Content analysis of recent segments, by index.
    analyses: std::collections::BTreeMap<i64, serde_json::Value>,
    late_analyses: u64,
    /// Manifest entries written since the last [`Packager::take_published`].
    published: Vec<(String, ManifestEntry)>,
}

/// Segments of content analysis kept for segments still to come.
const ANALYSES_KEPT: usize = 8;

impl std::fmt::Debug for Packager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packager({})", self.config.root.display())
    }
}

impl Packager {
    /// Creates the track directories.
    pub fn new(config: PackagerConfig, specs: Vec<TrackSpec>) -> Result<Self, StoreError> {
        let mut tracks = Vec::new();
        for spec in specs {
            let dir = config.root.join(&spec.name);
            store::check_writable(&dir)?;
            tracks.push(TrackState {
                spec,
                dir,
                track: None,
                codec: String::new(),
                entries: VecDeque::new(),
                retired: VecDeque::new(),
                discontinuity_sequence: 0,
                manifest_lines: 0,
                manifest_kept: VecDeque::new(),
                pending: None,
                written: 0,
            });
        }
        Ok(Self {
            config,
            tracks,
            store: Store::new(),
            master_written: false,
            errors: 0,
            last_error: None,
            analyses: std::collections::BTreeMap::new(),
            late_analyses: 0,
            published: Vec::new(),
        })
    }

    /// The channel's output root.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// Writes a file through the store (atomically).
    pub fn write_file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        self.store.write_atomic(path, bytes)
    }

    /// The store's I/O path.
    pub fn io_path(&self) -> store::IoPath {
        self.store.io_path()
    }

    /// Statistics so far.
    pub fn stats(&self) -> PackagerStats {
        PackagerStats {
            written: self.tracks.iter().map(|t| (t.spec.name.clone(), t.written)).collect(),
            write_errors: self.errors,
            last_error: self.last_error.clone(),
            late_analyses: self.late_analyses,
        }
    }

    /// Takes a segment's content analysis. Video manifest entries carry it;
    /// an entry whose analysis has not arrived waits for it, at most until
    /// the track's next segment (then it is written without).
    pub fn add_analysis(&mut self, index: i64, analysis: &crate::analysis::segment::SegmentAnalysis) {
        let Ok(value) = serde_json::to_value(analysis) else { return };
        self.analyses.insert(index, value);
        while self.analyses.len() > ANALYSES_KEPT {
            self.analyses.pop_first();
        }
        for ti in 0..self.tracks.len() {
            if self.tracks[ti].pending.as_ref().is_some_and(|e| e.index == index) {
                let result = self.flush_pending(ti);
                if let Err(e) = self.count(result) {
                    tracing::error!("{e}; continuing, files already written are intact");
                }
            }
        }
    }

    /// Packages one segment. A failed write is counted and reported; the
    /// segment is left out of the playlist and earlier files stay intact.
    pub fn add(&mut self, seg: EncodedSegment) -> Result<(), StoreError> {
        let result = self.write_segment(seg);
        self.count(result)
    }

    fn count(&mut self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Err(e) = &result {
            self.errors += 1;
            self.last_error = Some(e.to_string());
        }
        result
    }

    /// Writes the track's waiting manifest entry (with its analysis if it
    /// has arrived).
    fn flush_pending(&mut self, ti: usize) -> Result<(), StoreError> {
        let Some(mut entry) = self.tracks[ti].pending.take() else { return Ok(()) };
        entry.analysis = self.analyses.get(&entry.index).cloned();
        if entry.analysis.is_none() {
            self.late_analyses += 1;
            tracing::warn!(segment = entry.index, track = %self.tracks[ti].spec.name, "content analysis late; manifest entry written without it");
        }
        self.append_manifest(ti, &entry)
    }

    /// Segments published (manifest entry written) since the last call,
    /// with their track names.
    pub fn take_published(&mut self) -> Vec<(String, ManifestEntry)> {
        std::mem::take(&mut self.published)
    }

    fn append_manifest(&mut self, ti: usize, entry: &ManifestEntry) -> Result<(), StoreError> {
        let cfg = &self.config;
        let t = &mut self.tracks[ti];
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        let manifest = t.dir.join("manifest.jsonl");
        self.store.append(&manifest, line.as_bytes())?;
        t.manifest_lines += 1;
        self.published.push((t.spec.name.clone(), entry.clone()));
        if cfg.archive {
            return Ok(());
        }
        t.manifest_kept.push_back(line);
        let keep = 2 * cfg.window;
        while t.manifest_kept.len() > keep {
            t.manifest_kept.pop_front();
        }
        if t.manifest_lines > 4 * cfg.window {
            let text: String = t.manifest_kept.iter().map(String::as_str).collect();
            self.store.write_atomic(&manifest, text.as_bytes())?;
            t.manifest_lines = t.manifest_kept.len();
        }
        Ok(())
    }

    fn track_index(&self, id: TrackId) -> Option<usize> {
        self.tracks.iter().position(|t| t.spec.id == id)
    }

    fn write_segment(&mut self, seg: EncodedSegment) -> Result<(), StoreError> {
        let Some(ti) = self.track_index(seg.track) else {
            return Ok(());
        };
        // Parameter sets unlike the init segment's (a run taken over with a
        // new frame rate or encoder): a new init segment opens a new run of
        // the playlist, as for a new picture size. The level alone (it
        // follows the bitrate) changes nothing a decoder needs.
        let t = &mut self.tracks[ti];
        if let (Some(fmp4::Track { kind: fmp4::TrackKind::Video { sps, pps, .. }, .. }), Some(ps)) =
            (&t.track, &seg.params)
            && (!avc::same_but_level(sps, &ps.sps) || *pps != ps.pps)
        {
            tracing::info!(track = %t.spec.name, segment = seg.index, "new parameter sets: new init segment and discontinuity");
            t.track = None;
            t.discontinuity_sequence += 1;
            let old: Vec<String> = t.entries.drain(..).map(|e| e.uri).collect();
            t.retired.extend(old);
        }
        if self.tracks[ti].track.is_none() {
            self.write_init(ti, &seg)?;
        }
        let cfg = &self.config;
        let t = &mut self.tracks[ti];
        let Some(track) = t.track.as_ref() else { return Ok(()) };
        let sequence = u32::try_from(seg.index.rem_euclid(1 << 32)).unwrap_or(0);
        let bytes = fmp4::media_segment(track, sequence, seg.base_time, &seg.samples, &seg.payload);
        let file = format!("seg-{}.m4s", seg.index);
        let path = t.dir.join(&file);
        self.store.write_atomic(&path, &bytes)?;
        let entry = manifest_entry(cfg, &t.spec, &seg, file.clone(), &bytes);
        let (duration, program_date_time) = (entry.duration, entry.program_date_time.clone());
        let t = &mut self.tracks[ti];
        t.written += 1;
        if t.entries.back().is_some_and(|e| e.index >= seg.index) {
            // Out-of-order index (clock stepped back): start a new run.
            t.entries.clear();
            t.discontinuity_sequence += 1;
        }
        t.entries.push_back(hls::Entry { index: seg.index, uri: file, duration, program_date_time });
        if !cfg.archive {
            while t.entries.len() > cfg.window {
                if let Some(old) = t.entries.pop_front() {
                    if t.entries.front().is_some_and(|e| e.index != old.index + 1) {
                        t.discontinuity_sequence += 1;
                    }
                    t.retired.push_back(old.uri);
                }
            }
            // Keep retired segments one more window for late readers.
            while t.retired.len() > cfg.window {
                if let Some(name) = t.retired.pop_front() {
                    let _ = std::fs::remove_file(t.dir.join(name));
                }
            }
        }
        let video = matches!(t.spec.id, TrackId::Video(_));
        let retarget = video && seg.bitrate_bps > 0 && seg.bitrate_bps != t.spec.bitrate_bps;
        if retarget {
            self.tracks[ti].spec.bitrate_bps = seg.bitrate_bps;
        }
        // The previous entry waited long enough.
        self.flush_pending(ti)?;
        if video {
            self.tracks[ti].pending = Some(entry);
            if self.analyses.contains_key(&seg.index) {
                self.flush_pending(ti)?;
            }
        } else {
            self.append_manifest(ti, &entry)?;
        }
        self.write_playlist(ti, false)?;
        // Written once every track has its init segment, and again when a
        // rendition's bitrate changes live (players pick variants by it).
        if (!self.master_written || retarget) && self.tracks.iter().all(|t| t.track.is_some()) {
            self.write_master()?;
        }
        Ok(())
    }

    /// Replaces a published segment with a re-encode of it
    /// (`crate::pipeline::rework`) when its bytes hash to `expect`: the
    /// file is rewritten atomically and its manifest entry written again
    /// (the last entry of an index is the one that counts). False, and
    /// nothing changed, when the bytes differ, the segment has left the
    /// playlist or its parameter sets are not the init segment's.
    pub fn replace(&mut self, seg: EncodedSegment, expect: [u8; 32]) -> Result<bool, StoreError> {
        let Some(ti) = self.track_index(seg.track) else { return Ok(false) };
        let t = &self.tracks[ti];
        let Some(track) = t.track.as_ref() else { return Ok(false) };
        if !t.entries.iter().any(|e| e.index == seg.index) {
            return Ok(false);
        }
        if let (fmp4::TrackKind::Video { sps, pps, .. }, Some(ps)) = (&track.kind, &seg.params)
            && (!avc::same_but_level(sps, &ps.sps) || *pps != ps.pps)
        {
            return Ok(false);
        }
        let sequence = u32::try_from(seg.index.rem_euclid(1 << 32)).unwrap_or(0);
        let bytes = fmp4::media_segment(track, sequence, seg.base_time, &seg.samples, &seg.payload);
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != expect {
            return Ok(false);
        }
        let file = format!("seg-{}.m4s", seg.index);
        let mut entry = manifest_entry(&self.config, &t.spec, &seg, file.clone(), &bytes);
        let path = t.dir.join(&file);
        let result = self.store.write_atomic(&path, &bytes);
        self.count(result)?;
        match self.tracks[ti].pending.as_mut() {
            Some(waiting) if waiting.index == seg.index => *waiting = entry,
            _ => {
                entry.analysis = self.analyses.get(&seg.index).cloned();
                let result = self.append_manifest(ti, &entry);
                self.count(result)?;
            }
        }
        Ok(true)
    }

    fn write_init(&mut self, ti: usize, seg: &EncodedSegment) -> Result<(), StoreError> {
        let t = &mut self.tracks[ti];
        let (kind, codec) = match (t.spec.id, &seg.params, t.spec.size) {
            (TrackId::Video(_), Some(ps), Some((width, height))) => {
                (fmp4::TrackKind::Video { width, height, sps: ps.sps.clone(), pps: ps.pps.clone() }, ps.codec_string())
            }
            (TrackId::Audio, _, _) => {
                (fmp4::TrackKind::Opus { channels: t.spec.channels, pre_skip: t.spec.pre_skip }, "opus".to_string())
            }
            _ => {
                return Err(StoreError {
                    path: t.dir.join("init.mp4"),
                    source: std::io::Error::other("first video segment carried no SPS/PPS"),
                });
            }
        };
        let track = fmp4::Track { id: 1, timescale: t.spec.timescale, kind };
        self.store.write_atomic(&t.dir.join("init.mp4"), &fmp4::init_segment(&track))?;
        t.track = Some(track);
        t.codec = codec;
        Ok(())
    }

    fn write_playlist(&mut self, ti: usize, ended: bool) -> Result<(), StoreError> {
        let t = &self.tracks[ti];
        let entries: Vec<hls::Entry> = t.entries.iter().cloned().collect();
        let text = hls::media_playlist(
            &hls::MediaPlaylist {
                target_duration: self.config.segment_seconds.ceil() as u32,
                archive: self.config.archive,
                ended,
                discontinuity_sequence: t.discontinuity_sequence,
                map_uri: "init.mp4",
            },
            &entries,
        );
        let path = t.dir.join("playlist.m3u8");
        self.store.write_atomic(&path, text.as_bytes())
    }

    fn write_master(&mut self) -> Result<(), StoreError> {
        let audio = self.tracks.iter().find(|t| t.spec.id == TrackId::Audio);
        let audio_bps = audio.map_or(0, |a| a.spec.bitrate_bps);
        let audio_codec = audio.map(|a| a.codec.clone());
        let variants: Vec<hls::Variant> = self
            .tracks
            .iter()
            .filter(|t| matches!(t.spec.id, TrackId::Video(_)))
            .map(|t| {
                let codecs = match &audio_codec {
                    Some(a) => format!("{},{a}", t.codec),
                    None => t.codec.clone(),
                };
                hls::Variant {
                    uri: format!("{}/playlist.m3u8", t.spec.name),
                    // Rate control keeps within ~1.5x the target over a segment.
                    bandwidth: t.spec.bitrate_bps * 3 / 2 + audio_bps,
                    average_bandwidth: t.spec.bitrate_bps + audio_bps,
                    codecs,
                    resolution: t.spec.size.unwrap_or((0, 0)),
                    frame_rate: self.config.frame_rate,
                }
            })
            .collect();
        let rendition = audio
            .map(|a| hls::AudioRendition { uri: format!("{}/playlist.m3u8", a.spec.name), channels: a.spec.channels });
        let text = hls::multivariant_playlist(&variants, rendition.as_ref());
        self.store.write_atomic(&self.config.root.join("master.m3u8"), text.as_bytes())?;
        self.master_written = true;
        Ok(())
    }

    /// Takes over the tracks of the run before this one (a handover, see
    /// `crate::handover`). A track of the same name and picture keeps its
    /// playlist, window and manifest, so viewers see no seam; a track whose
    /// picture size changed keeps its manifest but starts a new run of its
    /// playlist (discontinuity, new init segment; the old segments retire);
    /// a track the new ladder leaves out has its playlist ended.
    pub fn adopt(&mut self, mut old: Packager) {
        for t in &mut self.tracks {
            let Some(pos) = old.tracks.iter().position(|o| o.spec.name == t.spec.name) else { continue };
            let o = old.tracks.remove(pos);
            let same_picture = o.spec.size == t.spec.size
                && o.spec.timescale == t.spec.timescale
                && o.spec.channels == t.spec.channels;
            t.pending = o.pending;
            t.manifest_lines = o.manifest_lines;
            t.manifest_kept = o.manifest_kept;
            t.written = o.written;
            t.retired = o.retired;
            if same_picture {
                t.track = o.track;
                t.codec = o.codec;
                t.entries = o.entries;
                t.discontinuity_sequence = o.discontinuity_sequence;
            } else {
                t.discontinuity_sequence = o.discontinuity_sequence + 1;
                t.retired.extend(o.entries.into_iter().map(|e| e.uri));
            }
        }
        if let Err(e) = old.finish() {
            tracing::error!("{e}");
        }
        self.analyses.append(&mut old.analyses);
        self.errors += old.errors;
        self.late_analyses += old.late_analyses;
        self.last_error = self.last_error.take().or(old.last_error);
        // The ladder may differ: the multivariant playlist is written anew.
        self.master_written = false;
    }

    /// Writes waiting manifest entries and marks every playlist ended
    /// (EXT-X-ENDLIST).
    pub fn finish(&mut self) -> Result<(), StoreError> {
        for ti in 0..self.tracks.len() {
            self.flush_pending(ti)?;
            if !self.tracks[ti].entries.is_empty() {
                self.write_playlist(ti, true)?;
            }
        }
        Ok(())
    }
}

/// Reads a manifest, skipping an unterminated last line.
pub fn read_manifest(path: &Path) -> std::io::Result<Vec<ManifestEntry>> {
    Ok(parse_manifest(&std::fs::read_to_string(path)?))
}

/// The entries of a manifest's text, one per index in the order the
/// indices first appear: a segment replaced by its re-encode
/// (`crate::pipeline::rework`) has a later line, and the last line of an
/// index is the one that counts. Lines that do not parse are left out.
pub fn parse_manifest(text: &str) -> Vec<ManifestEntry> {
    let mut entries: Vec<ManifestEntry> = Vec::new();
    let mut at = std::collections::HashMap::new();
    for entry in text.lines().filter_map(|l| serde_json::from_str::<ManifestEntry>(l).ok()) {
        match at.get(&entry.index) {
            Some(&i) => entries[i] = entry,
            None => {
                at.insert(entry.index, entries.len());
                entries.push(entry);
            }
        }
    }
    entries
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) fn packager(root: &Path) -> Packager {
        let config = PackagerConfig {
            root: root.to_path_buf(),
            archive: false,
            window: 3,
            segment_seconds: 0.02,
            frame_rate: 50.0,
            utc_tai_offset_s: 37,
            producer: "n".into(),
        };
        let spec = TrackSpec {
            id: TrackId::Audio,
            name: "audio".into(),
            timescale: 48_000,
            size: None,
            bitrate_bps: 64_000,
            channels: 2,
            pre_skip: 0,
        };
        Packager::new(config, vec![spec]).unwrap()
    }

    pub(super) fn segment(index: i64, fill: u8) -> EncodedSegment {
        EncodedSegment {
            track: TrackId::Audio,
            index,
            first_unit: index,
            base_time: u64::try_from(index).unwrap() * 960,
            samples: vec![fmp4::Sample { size: 4, duration: 960, sync: true }],
            payload: vec![fill; 4],
            input_sha256: [fill; 32],
            prints: Vec::new(),
            params: None,
            start_tai_ns: 0,
            bitrate_bps: 0,
        }
    }

    fn sha(root: &Path, index: i64) -> String {
        let entries = read_manifest(&root.join("audio/manifest.jsonl")).unwrap();
        entries.into_iter().find(|e| e.index == index).unwrap().sha256
    }

    #[test]
    fn a_reencode_replaces_a_segment_only_with_the_bytes_expected() {
        let (mine, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut p = packager(mine.path());
        for i in 10..14 {
            p.add(segment(i, 1)).unwrap();
        }
        // The majority's segment 12, as another appliance wrote it.
        let mut other = packager(theirs.path());
        other.add(segment(12, 2)).unwrap();
        let want: [u8; 32] = hex::decode(sha(theirs.path(), 12)).unwrap().try_into().unwrap();
        let file = mine.path().join("audio/seg-12.m4s");
        let before = std::fs::read(&file).unwrap();
        // Other bytes than expected: nothing changes.
        assert!(!p.replace(segment(12, 3), want).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), before);
        // Out of the playlist (window 3): nothing changes, even with the
        // expected bytes.
        other.add(segment(10, 2)).unwrap();
        let want_10: [u8; 32] = hex::decode(sha(theirs.path(), 10)).unwrap().try_into().unwrap();
        assert!(!p.replace(segment(10, 2), want_10).unwrap());
        // The expected bytes: the file is theirs, the manifest's last line says so.
        assert!(p.replace(segment(12, 2), want).unwrap());
        assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(theirs.path().join("audio/seg-12.m4s")).unwrap());
        assert_eq!(sha(mine.path(), 12), hex::encode(want));
        let text = std::fs::read_to_string(mine.path().join("audio/manifest.jsonl")).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("\"index\":12,")).count(), 2, "{text}");
        assert_eq!(parse_manifest(&text).len(), 4, "one entry per index");
    }
}
