//! Camera frames for the face matcher: an in-memory RGB8 frame type, MJPEG and YUYV
//! conversion, and a frame-source trait the V4L2 and simulated cameras implement.
//! Frames are never written anywhere; their pixels are zeroed when dropped.

use zeroize::Zeroize;

use crate::error::HwError;

/// One camera frame as packed RGB8, row-major, no padding. Lives in memory only.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, R G B per pixel.
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({}x{} rgb8, pixels not shown)", self.width, self.height)
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.rgb.zeroize();
    }
}

/// Anything that yields frames: the V4L2 camera live, an in-memory source in tests and demo.
pub trait FrameSource {
    /// Blocks until the next frame and returns it.
    fn next_frame(&mut self) -> Result<Frame, HwError>;
}

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Converts packed YUYV 4:2:2 (BT.601, limited range) with `stride` bytes per row to RGB8.
pub fn yuyv_to_rgb(data: &[u8], width: u32, height: u32, stride: usize) -> Result<Frame, HwError> {
    let bad = |reason: String| HwError::Frame { format: "yuyv", width, height, reason };
    let (w, h) = (width as usize, height as usize);
    if w % 2 != 0 {
        return Err(bad("width must be even".into()));
    }
    if stride < w * 2 {
        return Err(bad(format!("stride {stride} is less than 2 bytes per pixel")));
    }
    let needed = stride * h.saturating_sub(1) + w * 2;
    if h > 0 && data.len() < needed {
        return Err(bad(format!("{} bytes, need {needed}", data.len())));
    }
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        let row = &data[y * stride..y * stride + w * 2];
        let out = &mut rgb[y * w * 3..(y + 1) * w * 3];
        for (i, px) in row.chunks_exact(4).enumerate() {
            let (u, v) = (i32::from(px[1]) - 128, i32::from(px[3]) - 128);
            for (j, luma) in [px[0], px[2]].into_iter().enumerate() {
                let c = 298 * (i32::from(luma) - 16);
                let o = (i * 2 + j) * 3;
                out[o] = clamp((c + 409 * v + 128) >> 8);
                out[o + 1] = clamp((c - 100 * u - 208 * v + 128) >> 8);
                out[o + 2] = clamp((c + 516 * u + 128) >> 8);
            }
        }
    }
    Ok(Frame { width, height, rgb })
}

/// Decodes one MJPEG frame (a JPEG, possibly without Huffman tables) to RGB8.
pub fn mjpeg_to_rgb(data: &[u8]) -> Result<Frame, HwError> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(data, options);
    let rgb = decoder.decode().map_err(|e| HwError::Frame { format: "mjpeg", width: 0, height: 0, reason: format!("{e:?}") })?;
    let info = decoder.info().ok_or_else(|| HwError::Frame { format: "mjpeg", width: 0, height: 0, reason: "no image header".into() })?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if rgb.len() != width as usize * height as usize * 3 {
        return Err(HwError::Frame { format: "mjpeg", width, height, reason: format!("decoded {} bytes, not RGB8", rgb.len()) });
    }
    Ok(Frame { width, height, rgb })
}

/// Frames from memory, in order, then an error: the camera of the demo and of tests.
pub struct MemoryCamera {
    frames: std::collections::VecDeque<Frame>,
}

impl MemoryCamera {
    /// A camera that will yield these frames.
    pub fn new(frames: Vec<Frame>) -> Self {
        MemoryCamera { frames: frames.into() }
    }
}

impl FrameSource for MemoryCamera {
    fn next_frame(&mut self) -> Result<Frame, HwError> {
        self.frames.pop_front().ok_or_else(|| HwError::Camera { device: "memory".into(), reason: "no more frames".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_grey_white_and_red_convert_to_the_expected_rgb() {
        // Row of 4 pixels: black/white pair (neutral chroma), then a pure red pair (BT.601).
        let data = [16, 128, 235, 128, 81, 90, 81, 240, 0xAA, 0xBB];
        let f = yuyv_to_rgb(&data, 4, 1, 10).expect("valid frame");
        assert_eq!(&f.rgb[0..6], &[0, 0, 0, 255, 255, 255]);
        let red = &f.rgb[6..9];
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
    }

    #[test]
    fn short_yuyv_buffers_are_rejected_with_the_sizes() {
        let msg = yuyv_to_rgb(&[0; 10], 4, 2, 8).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "camera frame (yuyv, 4x2): 10 bytes, need 16");
    }

    #[test]
    fn mjpeg_frames_decode_to_rgb_of_the_right_size_and_colour() {
        let (w, h) = (32u16, 16u16);
        let pixels: Vec<u8> = (0..usize::from(w) * usize::from(h)).flat_map(|_| [200u8, 30, 30]).collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95).encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb).expect("encodes");
        let f = mjpeg_to_rgb(&jpeg).expect("decodes");
        assert_eq!((f.width, f.height, f.rgb.len()), (32, 16, 32 * 16 * 3));
        let (r, g, b) = (f.rgb[0], f.rgb[1], f.rgb[2]);
        assert!(r.abs_diff(200) < 8 && g.abs_diff(30) < 8 && b.abs_diff(30) < 8, "{r} {g} {b}");
        assert!(mjpeg_to_rgb(&jpeg[..jpeg.len() / 2]).is_err() || mjpeg_to_rgb(b"not a jpeg").is_err());
        assert!(mjpeg_to_rgb(b"not a jpeg").is_err());
    }

    #[test]
    fn frames_never_print_pixels() {
        let f = Frame { width: 2, height: 1, rgb: vec![1, 2, 3, 4, 5, 6] };
        assert_eq!(format!("{f:?}"), "Frame(2x1 rgb8, pixels not shown)");
        let mut cam = MemoryCamera::new(vec![f.clone()]);
        assert_eq!(cam.next_frame().expect("one frame"), f);
        assert!(cam.next_frame().is_err());
    }
}
