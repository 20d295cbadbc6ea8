//! One pass from a capture format to the encoders' I420.
//!
//! Each function reads the device buffer once and writes the three
//! destination planes once (luma `width` bytes per row, chroma `width / 2`).
//! 4:2:2 chroma becomes 4:2:0 by averaging each pair of rows (rounded), the
//! usual siting for progressive video.

use crate::PixelFormat;

/// Destination planes of one I420 picture.
#[derive(Debug)]
pub struct I420<'a> {
    /// Width in pixels (even).
    pub width: usize,
    /// Height in pixels (even).
    pub height: usize,
    /// Luma, `width * height` bytes.
    pub y: &'a mut [u8],
    /// Cb, `width / 2 * height / 2` bytes.
    pub u: &'a mut [u8],
    /// Cr, same size.
    pub v: &'a mut [u8],
}

/// Why a buffer cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The buffer is shorter than the format needs.
    #[error("buffer holds {got} bytes, {format:?} {width}x{height} with {stride} bytes per line needs {need}")]
    Short {
        /// Format.
        format: PixelFormat,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// Bytes per line.
        stride: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes there.
        got: usize,
    },
    /// Destination planes do not match the size.
    #[error("destination planes do not hold a {width}x{height} I420 picture")]
    Destination {
        /// Width.
        width: usize,
        /// Height.
        height: usize,
    },
}

/// Bytes a buffer of `format` needs at this size and stride.
pub fn needed_bytes(format: PixelFormat, height: usize, stride: usize) -> usize {
    match format {
        PixelFormat::Yuyv | PixelFormat::Uyvy => stride * height,
        // Chroma planes follow with the luma stride (NV12) or half of it (YU12).
        PixelFormat::Nv12 => stride * height + stride * height / 2,
        PixelFormat::Yu12 => stride * height + 2 * (stride / 2) * (height / 2),
    }
}

/// Converts one picture. `stride` is the device's bytes per line of the
/// first plane.
pub fn to_i420(format: PixelFormat, src: &[u8], stride: usize, dst: &mut I420<'_>) -> Result<(), ConvertError> {
    let (w, h) = (dst.width, dst.height);
    let (cw, ch) = (w / 2, h / 2);
    if w % 2 != 0 || h % 2 != 0 || dst.y.len() < w * h || dst.u.len() < cw * ch || dst.v.len() < cw * ch {
        return Err(ConvertError::Destination { width: w, height: h });
    }
    let need = needed_bytes(format, h, stride);
    if src.len() < need || stride < format.min_stride(u32::try_from(w).unwrap_or(u32::MAX)) as usize {
        return Err(ConvertError::Short { format, width: w, height: h, stride, need, got: src.len() });
    }
    match format {
        PixelFormat::Yuyv => packed_422(src, stride, dst, [0, 1, 2, 3]),
        PixelFormat::Uyvy => packed_422(src, stride, dst, [1, 0, 3, 2]),
        PixelFormat::Nv12 => {
            copy_rows(&src[..stride * h], stride, dst.y, w, h);
            let uv = &src[stride * h..];
            for row in 0..ch {
                let line = &uv[row * stride..row * stride + w];
                let (u, v) = (&mut dst.u[row * cw..(row + 1) * cw], &mut dst.v[row * cw..(row + 1) * cw]);
                for ((pair, u), v) in line.chunks_exact(2).zip(u.iter_mut()).zip(v.iter_mut()) {
                    *u = pair[0];
                    *v = pair[1];
                }
            }
        }
        PixelFormat::Yu12 => {
            let cstride = stride / 2;
            copy_rows(&src[..stride * h], stride, dst.y, w, h);
            let u_start = stride * h;
            let v_start = u_start + cstride * ch;
            copy_rows(&src[u_start..v_start], cstride, dst.u, cw, ch);
            copy_rows(&src[v_start..v_start + cstride * ch], cstride, dst.v, cw, ch);
        }
    }
    Ok(())
}

fn copy_rows(src: &[u8], stride: usize, dst: &mut [u8], w: usize, h: usize) {
    for (row, out) in dst[..w * h].chunks_exact_mut(w).enumerate() {
        out.copy_from_slice(&src[row * stride..row * stride + w]);
    }
}

/// Packed 4:2:2 with byte positions `[y0, cb, y1, cr]` inside each 4-byte group.
fn packed_422(src: &[u8], stride: usize, dst: &mut I420<'_>, [y0, cb, y1, cr]: [usize; 4]) {
    let (w, h) = (dst.width, dst.height);
    let cw = w / 2;
    for pair in 0..h / 2 {
        let top = &src[2 * pair * stride..2 * pair * stride + 2 * w];
        let bottom = &src[(2 * pair + 1) * stride..(2 * pair + 1) * stride + 2 * w];
        let (ya, yb) = dst.y[2 * pair * w..(2 * pair + 2) * w].split_at_mut(w);
        let u = &mut dst.u[pair * cw..(pair + 1) * cw];
        let v = &mut dst.v[pair * cw..(pair + 1) * cw];
        for x in 0..cw {
            let (t, b) = (&top[4 * x..4 * x + 4], &bottom[4 * x..4 * x + 4]);
            ya[2 * x] = t[y0];
            ya[2 * x + 1] = t[y1];
            yb[2 * x] = b[y0];
            yb[2 * x + 1] = b[y1];
            u[x] = (u16::from(t[cb]) + u16::from(b[cb])).div_ceil(2) as u8;
            v[x] = (u16::from(t[cr]) + u16::from(b[cr])).div_ceil(2) as u8;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Planes {
        y: Vec<u8>,
        u: Vec<u8>,
        v: Vec<u8>,
    }

    fn convert(format: PixelFormat, src: &[u8], stride: usize, w: usize, h: usize) -> Planes {
        let mut p = Planes { y: vec![0; w * h], u: vec![0; w * h / 4], v: vec![0; w * h / 4] };
        let mut dst = I420 { width: w, height: h, y: &mut p.y, u: &mut p.u, v: &mut p.v };
        to_i420(format, src, stride, &mut dst).expect("converts");
        p
    }

    /// A 4x2 picture: luma 10..17, Cb 100/102 and Cr 200/204 on the two rows.
    fn yuyv(padding: usize) -> Vec<u8> {
        let mut src = Vec::new();
        for (row, (cb, cr)) in [(100u8, 200u8), (102, 204)].into_iter().enumerate() {
            let y = 10 + 4 * row as u8;
            src.extend_from_slice(&[y, cb, y + 1, cr, y + 2, cb, y + 3, cr]);
            src.extend(std::iter::repeat_n(0xee, padding));
        }
        src
    }

    #[test]
    fn yuyv_averages_chroma_rows() {
        let p = convert(PixelFormat::Yuyv, &yuyv(0), 8, 4, 2);
        assert_eq!(p.y, [10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(p.u, [101, 101]);
        assert_eq!(p.v, [202, 202]);
    }

    #[test]
    fn row_padding_is_skipped() {
        let p = convert(PixelFormat::Yuyv, &yuyv(8), 16, 4, 2);
        assert_eq!(p.y, [10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(p.u, [101, 101]);
    }

    #[test]
    fn uyvy_is_yuyv_with_bytes_swapped() {
        let swapped: Vec<u8> = yuyv(0).chunks_exact(2).flat_map(|p| [p[1], p[0]]).collect();
        let a = convert(PixelFormat::Uyvy, &swapped, 8, 4, 2);
        let b = convert(PixelFormat::Yuyv, &yuyv(0), 8, 4, 2);
        assert_eq!((a.y, a.u, a.v), (b.y, b.u, b.v));
    }

    #[test]
    fn nv12_deinterleaves_chroma() {
        let src = [1, 2, 3, 4, 5, 6, 7, 8, 50, 60, 51, 61];
        let p = convert(PixelFormat::Nv12, &src, 4, 4, 2);
        assert_eq!(p.y, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((p.u, p.v), (vec![50, 51], vec![60, 61]));
    }

    #[test]
    fn yu12_with_padding_drops_it() {
        // Stride 6 for width 4: two bytes of padding per luma row, one per chroma row.
        let src = [1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 0, 50, 51, 0, 60, 61, 0];
        let p = convert(PixelFormat::Yu12, &src, 6, 4, 2);
        assert_eq!(p.y, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((p.u, p.v), (vec![50, 51], vec![60, 61]));
    }

    #[test]
    fn a_short_buffer_is_refused_not_read_past() {
        let (mut y, mut u, mut v) = (vec![0; 8], vec![0; 2], vec![0; 2]);
        let mut dst = I420 { width: 4, height: 2, y: &mut y, u: &mut u, v: &mut v };
        let err = to_i420(PixelFormat::Yuyv, &[0; 15], 8, &mut dst).unwrap_err();
        assert!(err.to_string().contains("needs 16"), "{err}");
        assert!(matches!(to_i420(PixelFormat::Yuyv, &[0; 16], 6, &mut dst), Err(ConvertError::Short { .. })));
    }
}
