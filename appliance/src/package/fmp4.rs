//! CMAF fragmented MP4 writer: init segments (`ftyp` + `moov`) and media
//! segments (`styp` + `moof` + `mdat`), one track per file.
//!
//! Every field is a function of the track settings and the samples, never of
//! the wall clock, so two appliances write the same bytes for the same
//! samples. Decode times count from the 1970 TAI epoch (`tfdt` version 1).

/// Track kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackKind {
    /// H.264 video.
    Video {
        /// Coded width.
        width: u32,
        /// Coded height.
        height: u32,
        /// Sequence parameter set.
        sps: Vec<u8>,
        /// Picture parameter set.
        pps: Vec<u8>,
    },
    /// Opus audio at 48 kHz.
    Opus {
        /// Channel count.
        channels: u16,
        /// Decoder pre-skip in samples.
        pre_skip: u16,
    },
}

/// One track of a CMAF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Track id (1).
    pub id: u32,
    /// Media timescale (ticks per second).
    pub timescale: u32,
    /// Codec and its configuration.
    pub kind: TrackKind,
}

/// One sample in a media segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Bytes in the `mdat`.
    pub size: u32,
    /// Duration in track ticks.
    pub duration: u32,
    /// A sync sample (IDR / every audio packet).
    pub sync: bool,
}

/// Writes a box: size, type, body; patches the size afterwards.
fn bx(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Writes a full box (with version and flags).
fn full(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    bx(out, kind, |o| {
        o.push(version);
        o.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(o);
    });
}

fn u16be(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u32be(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u64be(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn zeros(o: &mut Vec<u8>, n: usize) {
    o.resize(o.len() + n, 0);
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// Sample flags: a sync sample (depends on nothing).
const FLAGS_SYNC: u32 = 0x0200_0000;
/// Sample flags: depends on others, not a sync sample.
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// Writes an init segment for `track`.
pub fn init_segment(track: &Track) -> Vec<u8> {
    let mut o = Vec::with_capacity(1024);
    bx(&mut o, b"ftyp", |o| {
        o.extend_from_slice(b"iso6");
        u32be(o, 0);
        for brand in [b"iso6", b"cmfc", b"mp41"] {
            o.extend_from_slice(brand);
        }
    });
    bx(&mut o, b"moov", |o| {
        full(o, b"mvhd", 0, 0, |o| {
            zeros(o, 8); // creation, modification
            u32be(o, 1000);
            u32be(o, 0); // duration: fragmented
            u32be(o, 0x0001_0000);
            u16be(o, 0x0100);
            zeros(o, 10);
            MATRIX.iter().for_each(|&m| u32be(o, m));
            zeros(o, 24);
            u32be(o, track.id + 1);
        });
        bx(o, b"trak", |o| {
            write_tkhd(o, track);
            bx(o, b"mdia", |o| {
                full(o, b"mdhd", 0, 0, |o| {
                    zeros(o, 8);
                    u32be(o, track.timescale);
                    u32be(o, 0);
                    u16be(o, 0x55c4); // "und"
                    u16be(o, 0);
                });
                let (handler, name): (&[u8; 4], &[u8]) = match track.kind {
                    TrackKind::Video { .. } => (b"vide", b"Lockstep video\0"),
                    TrackKind::Opus { .. } => (b"soun", b"Lockstep audio\0"),
                };
                full(o, b"hdlr", 0, 0, |o| {
                    u32be(o, 0);
                    o.extend_from_slice(handler);
                    zeros(o, 12);
                    o.extend_from_slice(name);
                });
                bx(o, b"minf", |o| {
                    match track.kind {
                        TrackKind::Video { .. } => full(o, b"vmhd", 0, 1, |o| zeros(o, 8)),
                        TrackKind::Opus { .. } => full(o, b"smhd", 0, 0, |o| zeros(o, 4)),
                    }
                    bx(o, b"dinf", |o| {
                        full(o, b"dref", 0, 0, |o| {
                            u32be(o, 1);
                            full(o, b"url ", 0, 1, |_| {});
                        });
                    });
                    bx(o, b"stbl", |o| {
                        full(o, b"stsd", 0, 0, |o| {
                            u32be(o, 1);
                            write_sample_entry(o, &track.kind);
                        });
                        full(o, b"stts", 0, 0, |o| u32be(o, 0));
                        full(o, b"stsc", 0, 0, |o| u32be(o, 0));
                        full(o, b"stsz", 0, 0, |o| zeros(o, 8));
                        full(o, b"stco", 0, 0, |o| u32be(o, 0));
                    });
                });
            });
        });
        bx(o, b"mvex", |o| {
            full(o, b"trex", 0, 0, |o| {
                u32be(o, track.id);
                u32be(o, 1);
                zeros(o, 12);
            });
        });
    });
    o
}

fn write_tkhd(o: &mut Vec<u8>, track: &Track) {
    full(o, b"tkhd", 0, 3, |o| {
        zeros(o, 8);
        u32be(o, track.id);
        zeros(o, 4);
        u32be(o, 0);
        zeros(o, 8);
        u16be(o, 0); // layer
        u16be(o, 0); // alternate group
        u16be(o, if matches!(track.kind, TrackKind::Opus { .. }) { 0x0100 } else { 0 });
        u16be(o, 0);
        MATRIX.iter().for_each(|&m| u32be(o, m));
        let (w, h) = match track.kind {
            TrackKind::Video { width, height, .. } => (width, height),
            TrackKind::Opus { .. } => (0, 0),
        };
        u32be(o, w << 16);
        u32be(o, h << 16);
    });
}

fn write_sample_entry(o: &mut Vec<u8>, kind: &TrackKind) {
    match kind {
        TrackKind::Video { width, height, sps, pps } => bx(o, b"avc1", |o| {
            zeros(o, 6);
            u16be(o, 1); // data reference index
            zeros(o, 16);
            u16be(o, u16::try_from(*width).unwrap_or(u16::MAX));
            u16be(o, u16::try_from(*height).unwrap_or(u16::MAX));
            u32be(o, 0x0048_0000);
            u32be(o, 0x0048_0000);
            u32be(o, 0);
            u16be(o, 1); // frame count
            let mut name = [0u8; 32];
            let label = b"Lockstep H.264";
            name[0] = label.len() as u8;
            name[1..=label.len()].copy_from_slice(label);
            o.extend_from_slice(&name);
            u16be(o, 0x0018);
            u16be(o, 0xffff);
            bx(o, b"avcC", |o| {
                o.push(1);
                o.extend_from_slice(sps.get(1..4).unwrap_or(&[66, 0, 30]));
                o.push(0xff); // 4-byte lengths
                o.push(0xe1); // one SPS
                u16be(o, u16::try_from(sps.len()).unwrap_or(0));
                o.extend_from_slice(sps);
                o.push(1);
                u16be(o, u16::try_from(pps.len()).unwrap_or(0));
                o.extend_from_slice(pps);
            });
        }),
        TrackKind::Opus { channels, pre_skip } => bx(o, b"Opus", |o| {
            zeros(o, 6);
            u16be(o, 1);
            zeros(o, 8);
            u16be(o, *channels);
            u16be(o, 16);
            zeros(o, 4);
            u32be(o, 48_000 << 16);
            bx(o, b"dOps", |o| {
                o.push(0);
                o.push(u8::try_from(*channels).unwrap_or(2));
                u16be(o, *pre_skip);
                u32be(o, 48_000);
                u16be(o, 0);
                o.push(0);
            });
        }),
    }
}

/// Writes a media segment holding `samples` whose bytes are `payload`,
/// starting at decode time `base_time`; `sequence` numbers the fragment.
pub fn media_segment(track: &Track, sequence: u32, base_time: u64, samples: &[Sample], payload: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(payload.len() + 64 + samples.len() * 8);
    bx(&mut o, b"styp", |o| {
        o.extend_from_slice(b"msdh");
        u32be(o, 0);
        o.extend_from_slice(b"msdh");
        o.extend_from_slice(b"msix");
    });
    let moof_start = o.len();
    let is_video = matches!(track.kind, TrackKind::Video { .. });
    let default_duration = samples.first().map_or(0, |s| s.duration);
    let uniform = samples.iter().all(|s| s.duration == default_duration);
    let mut data_offset_at = 0;
    bx(&mut o, b"moof", |o| {
        full(o, b"mfhd", 0, 0, |o| u32be(o, sequence));
        bx(o, b"traf", |o| {
            // default-base-is-moof | default duration | default flags
            full(o, b"tfhd", 0, 0x02_0000 | 0x08 | 0x20, |o| {
                u32be(o, track.id);
                u32be(o, default_duration);
                u32be(o, if is_video { FLAGS_NON_SYNC } else { FLAGS_SYNC });
            });
            full(o, b"tfdt", 1, 0, |o| u64be(o, base_time));
            let mut flags = 0x01 | 0x200; // data offset, sample sizes
            if is_video {
                flags |= 0x400; // per-sample flags (extra IDRs at scene cuts)
            }
            if !uniform {
                flags |= 0x100;
            }
            full(o, b"trun", 0, flags, |o| {
                u32be(o, u32::try_from(samples.len()).unwrap_or(u32::MAX));
                data_offset_at = o.len();
                u32be(o, 0);
                for s in samples {
                    if !uniform {
                        u32be(o, s.duration);
                    }
                    u32be(o, s.size);
                    if is_video {
                        u32be(o, if s.sync { FLAGS_SYNC } else { FLAGS_NON_SYNC });
                    }
                }
            });
        });
    });
    let mdat_header = 8;
    let data_offset = u32::try_from(o.len() - moof_start + mdat_header).unwrap_or(u32::MAX);
    o[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    bx(&mut o, b"mdat", |o| o.extend_from_slice(payload));
    o
}

/// Top-level boxes of a buffer as (type, offset, size); stops at the first
/// malformed header. Used by tests and by the segment verifier.
pub fn top_level_boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut boxes = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let size = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        if size < 8 || pos + size > data.len() {
            break;
        }
        let mut kind = [0u8; 4];
        kind.copy_from_slice(&data[pos + 4..pos + 8]);
        boxes.push((kind, pos, size));
        pos += size;
    }
    boxes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> Track {
        Track {
            id: 1,
            timescale: 90_000,
            kind: TrackKind::Video {
                width: 640,
                height: 360,
                sps: vec![0x67, 0x4d, 0x40, 0x1e, 1],
                pps: vec![0x68, 2],
            },
        }
    }

    #[test]
    fn init_has_ftyp_and_moov_only() {
        let init = init_segment(&video());
        let kinds: Vec<[u8; 4]> = top_level_boxes(&init).iter().map(|b| b.0).collect();
        assert_eq!(kinds, vec![*b"ftyp", *b"moov"]);
        assert_eq!(top_level_boxes(&init).iter().map(|b| b.2).sum::<usize>(), init.len());
    }

    #[test]
    fn data_offset_points_at_the_payload() {
        let samples = [Sample { size: 3, duration: 3600, sync: true }, Sample { size: 2, duration: 3600, sync: false }];
        let seg = media_segment(&video(), 7, 90_000 * 1000, &samples, &[9, 9, 9, 8, 8]);
        let boxes = top_level_boxes(&seg);
        let kinds: Vec<[u8; 4]> = boxes.iter().map(|b| b.0).collect();
        assert_eq!(kinds, vec![*b"styp", *b"moof", *b"mdat"]);
        let moof = boxes[1].1;
        let trun = seg.windows(4).position(|w| w == b"trun").expect("trun") - 4;
        let off_pos = trun + 16;
        let off = u32::from_be_bytes(seg[off_pos..off_pos + 4].try_into().expect("4 bytes")) as usize;
        assert_eq!(&seg[moof + off..moof + off + 5], &[9, 9, 9, 8, 8]);
    }
}
