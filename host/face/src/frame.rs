//! Camera frames. Pixels stay inside the crate and are wiped when the frame is dropped.

use crate::error::FaceError;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Largest accepted frame side, so a hostile JPEG cannot exhaust memory.
const MAX_SIDE: u32 = 8192;

/// One camera frame, held as 8-bit BGR. There is deliberately no accessor for the pixels.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Frame {
    #[zeroize(skip)]
    width: u32,
    #[zeroize(skip)]
    height: u32,
    bgr: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{})", self.width, self.height)
    }
}

impl Frame {
    /// A frame from packed 8-bit RGB, as most cameras deliver it.
    pub fn from_rgb(width: u32, height: u32, mut rgb: Vec<u8>) -> Result<Frame, FaceError> {
        check_dims(width, height, rgb.len())?;
        for px in rgb.chunks_exact_mut(3) {
            px.swap(0, 2);
        }
        Ok(Frame { width, height, bgr: rgb })
    }

    /// A frame from packed 8-bit BGR (OpenCV order).
    pub fn from_bgr(width: u32, height: u32, bgr: Vec<u8>) -> Result<Frame, FaceError> {
        check_dims(width, height, bgr.len())?;
        Ok(Frame { width, height, bgr })
    }

    /// Decodes a JPEG or PNG still (what IP cameras' snapshot endpoints return).
    pub fn decode(bytes: &[u8]) -> Result<Frame, FaceError> {
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| FaceError::Frame(format!("cannot read image: {e}")))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| FaceError::Frame(format!("cannot decode image: {e}")))?;
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        Frame::from_rgb(w, h, rgb.into_raw())
    }

    /// Whether two frames hold the same picture, pixel for pixel (content, not file name).
    pub fn same_pixels(&self, other: &Frame) -> bool {
        self.width == other.width && self.height == other.height && self.bgr == other.bgr
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// BGR value at (x, y), sampled bilinearly; outside the frame reads as black.
    pub(crate) fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        let (w, h) = (self.width as i64, self.height as i64);
        let x0 = x.floor();
        let y0 = y.floor();
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let px = |xi: i64, yi: i64| -> [f32; 3] {
            if xi < 0 || yi < 0 || xi >= w || yi >= h {
                return [0.0; 3];
            }
            let i = ((yi * w + xi) * 3) as usize;
            [self.bgr[i] as f32, self.bgr[i + 1] as f32, self.bgr[i + 2] as f32]
        };
        let (a, b, c, d) = (px(x0, y0), px(x0 + 1, y0), px(x0, y0 + 1), px(x0 + 1, y0 + 1));
        let mut out = [0.0; 3];
        for k in 0..3 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bottom = c[k] + (d[k] - c[k]) * fx;
            out[k] = top + (bottom - top) * fy;
        }
        out
    }

    /// Writes the frame, resized by `scale` (bilinear), into the top-left corner of a
    /// zero-padded planar BGR tensor of `tw`x`th`.
    pub(crate) fn to_planar(&self, scale: f32, tw: usize, th: usize, out: &mut Vec<f32>) {
        out.clear();
        out.resize(3 * tw * th, 0.0);
        let (w, h) = (self.width as usize, self.height as usize);
        let sw = ((w as f32 * scale).round() as usize).min(tw);
        let sh = ((h as f32 * scale).round() as usize).min(th);
        let inv = 1.0 / scale;
        // Source column pairs and weights, computed once per column.
        let cols: Vec<(usize, usize, f32)> = (0..sw)
            .map(|x| {
                let sx = ((x as f32 + 0.5) * inv - 0.5).clamp(0.0, (w - 1) as f32);
                let x0 = sx as usize;
                (x0, (x0 + 1).min(w - 1), sx - x0 as f32)
            })
            .collect();
        let plane = tw * th;
        for y in 0..sh {
            let sy = ((y as f32 + 0.5) * inv - 0.5).clamp(0.0, (h - 1) as f32);
            let y0 = sy as usize;
            let y1 = (y0 + 1).min(h - 1);
            let fy = sy - y0 as f32;
            let r0 = &self.bgr[y0 * w * 3..(y0 + 1) * w * 3];
            let r1 = &self.bgr[y1 * w * 3..(y1 + 1) * w * 3];
            for (x, &(x0, x1, fx)) in cols.iter().enumerate() {
                let o = y * tw + x;
                for k in 0..3 {
                    let a = r0[x0 * 3 + k] as f32;
                    let b = r0[x1 * 3 + k] as f32;
                    let c = r1[x0 * 3 + k] as f32;
                    let d = r1[x1 * 3 + k] as f32;
                    let top = a + (b - a) * fx;
                    let bottom = c + (d - c) * fx;
                    out[k * plane + o] = top + (bottom - top) * fy;
                }
            }
        }
    }
}

fn check_dims(width: u32, height: u32, len: usize) -> Result<(), FaceError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(FaceError::Frame(format!("{width}x{height} is not a usable frame size (1..={MAX_SIDE} per side)")));
    }
    let want = width as usize * height as usize * 3;
    if len != want {
        return Err(FaceError::Frame(format!("{width}x{height} 8-bit colour needs {want} bytes, got {len}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb_input_is_held_as_bgr_and_sampled_bilinearly() {
        let f = Frame::from_rgb(2, 1, vec![10, 20, 30, 50, 60, 70]).unwrap();
        assert_eq!(f.sample(0.0, 0.0), [30.0, 20.0, 10.0]);
        assert_eq!(f.sample(0.5, 0.0), [50.0, 40.0, 30.0]);
        assert_eq!(f.sample(-5.0, 0.0), [0.0; 3]);
    }

    #[test]
    fn planar_resize_halves_a_frame_into_the_padded_corner() {
        // 4x2 frame, blue channel = 10 * x; halved into a 4x4 tensor.
        let mut bgr = Vec::new();
        for _y in 0..2 {
            for x in 0..4u8 {
                bgr.extend_from_slice(&[10 * x, 0, 0]);
            }
        }
        let f = Frame::from_bgr(4, 2, bgr).unwrap();
        let mut out = Vec::new();
        f.to_planar(0.5, 4, 4, &mut out);
        assert_eq!(out.len(), 48);
        assert_eq!(&out[0..4], &[5.0, 25.0, 0.0, 0.0]);
        assert_eq!(out[4], 0.0, "rows below the image are padding");
    }

    #[test]
    fn a_buffer_of_the_wrong_size_is_refused_with_the_numbers() {
        let err = Frame::from_bgr(4, 4, vec![0; 47]).unwrap_err();
        assert!(err.to_string().contains("48"), "{err}");
        assert!(Frame::from_bgr(0, 4, vec![]).is_err());
    }

    #[test]
    fn garbage_bytes_do_not_decode() {
        let err = Frame::decode(b"\xff\xd8\xff\xe0 not really a jpeg").unwrap_err();
        assert!(err.to_string().contains("image"), "{err}");
    }

    #[test]
    fn debug_output_shows_no_pixels() {
        let f = Frame::from_bgr(1, 1, vec![1, 2, 3]).unwrap();
        assert_eq!(format!("{f:?}"), "Frame(1x1)");
    }
}
