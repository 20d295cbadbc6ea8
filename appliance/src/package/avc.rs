//! H.264 bitstream helpers: Annex B → length-prefixed samples, parameter
//! sets for the `avcC` box, and the RFC 6381 codec string.

/// NAL unit types we treat specially.
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// Iterates the NAL units of an Annex B byte stream (start codes removed).
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        // find the next start code
        let start = find_start(data, pos)?;
        let payload = start.1;
        let end = find_start(data, payload).map_or(data.len(), |(s, _)| s);
        pos = end;
        let mut nal = &data[payload..end];
        while let [rest @ .., 0] = nal {
            nal = rest; // trailing zero bytes belong to the next start code
        }
        Some(nal)
    })
    .filter(|n| !n.is_empty())
}

/// Returns (start code position, payload position) of the next start code.
fn find_start(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 {
            if data[i + 2] == 1 {
                return Some((i, i + 3));
            }
            if data[i + 2] == 0 && i + 3 < data.len() && data[i + 3] == 1 {
                return Some((i, i + 4));
            }
        }
        i += 1;
    }
    None
}

/// Parameter sets found in a coded picture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    /// Sequence parameter set (first seen).
    pub sps: Vec<u8>,
    /// Picture parameter set (first seen).
    pub pps: Vec<u8>,
}

impl ParameterSets {
    /// RFC 6381 codec string, e.g. `avc1.4d401f`.
    pub fn codec_string(&self) -> String {
        match self.sps.get(1..4) {
            Some(p) => format!("avc1.{:02x}{:02x}{:02x}", p[0], p[1], p[2]),
            None => "avc1".into(),
        }
    }
}

/// Whether two SPS NAL units differ at most in `level_idc` (the byte after
/// the NAL header, profile and constraint flags).
pub fn same_but_level(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).enumerate().all(|(i, (x, y))| i == 3 || x == y)
}

/// Appends one Annex B picture to `out` as 4-byte length-prefixed NAL units,
/// moving SPS/PPS into `params` (they travel in the init segment) and
/// dropping access unit delimiters. Returns the bytes appended.
pub fn annexb_to_sample(annexb: &[u8], out: &mut Vec<u8>, params: &mut ParameterSets) -> usize {
    let before = out.len();
    for nal in nal_units(annexb) {
        match nal[0] & 0x1f {
            NAL_SPS => {
                if params.sps.is_empty() {
                    params.sps = nal.to_vec();
                }
            }
            NAL_PPS => {
                if params.pps.is_empty() {
                    params.pps = nal.to_vec();
                }
            }
            NAL_AUD => {}
            _ => {
                let len = u32::try_from(nal.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(nal);
            }
        }
    }
    out.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_level_may_differ() {
        let sps = [0x67, 0x4d, 0x4c, 0x0d, 0x8c, 0x68];
        assert!(same_but_level(&sps, &[0x67, 0x4d, 0x4c, 0x0c, 0x8c, 0x68]));
        assert!(!same_but_level(&sps, &[0x67, 0x4d, 0x4c, 0x0d, 0x8c, 0x69]));
        assert!(!same_but_level(&sps, &sps[..5]));
    }

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [0, 0, 0, 1, 0x67, 0x4d, 0x40, 0x1f, 0, 0, 1, 0x68, 0xee, 0, 0, 0, 1, 0x65, 0x88, 0x84];
        let nals: Vec<&[u8]> = nal_units(&data).collect();
        assert_eq!(nals, vec![&[0x67, 0x4d, 0x40, 0x1f][..], &[0x68, 0xee][..], &[0x65, 0x88, 0x84][..]]);
        let mut out = Vec::new();
        let mut ps = ParameterSets::default();
        let n = annexb_to_sample(&data, &mut out, &mut ps);
        assert_eq!(n, 7);
        assert_eq!(out, vec![0, 0, 0, 3, 0x65, 0x88, 0x84]);
        assert_eq!(ps.codec_string(), "avc1.4d401f");
        assert_eq!(ps.pps, vec![0x68, 0xee]);
    }

    #[test]
    fn garbage_yields_nothing_and_never_panics() {
        assert_eq!(nal_units(&[1, 2, 3, 0, 0]).count(), 0);
        assert_eq!(nal_units(&[0, 0, 1]).count(), 0);
    }
}
