//! Input of the presentation-attack (liveness) model `fr_liveness.onnx`: the crop around a
//! detected face, prepared as the model's own package (`faceplugin-face-recognition-js`
//! 0.0.1, `lib/fr_liveness.js`) prepares it, and the verdict from its output.
//!
//! As the package does: grow the face box 2.7 times about its centre (less when the frame is
//! too small to hold that), shift the square inside the frame, cut it out, resize it to
//! 128x128 (OpenCV bilinear), feed raw 0..255 values (no mean, no scale; scaled inputs give
//! the same output for every image), and read `softmax(output)[0]` as the probability of
//! "live" (its demo applications call a face "Fake" below 0.3).
//!
//! One deliberate difference: the planes are **BGR**, not the RGB the package's canvas gives
//! the model. The model is of the MiniFASNet kind (2.7x crop, raw pixels), trained on OpenCV
//! (BGR) images, and the package itself swaps its detector's input to BGR. Measured on the
//! project's real photos: with BGR every usable face scores 0.81-1.00; with RGB four of the
//! five faces of the group photo score 0.06-0.22 (README, "Liveness").
//!
//! The raw probability stays in this crate: only the verdict leaves it.

use crate::frame::Frame;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Side of the model's square input.
pub(crate) const SIDE: usize = 128;

/// How much the package grows the face box around its centre.
pub(crate) const CONTEXT: f32 = 2.7;

/// A prepared liveness input: planar BGR, 3 x 128 x 128, raw 0..255; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct LiveCrop {
    pub planar: Vec<f32>,
    /// The growth of the face box that fitted in the frame (`CONTEXT` unless the frame is
    /// too small around the face).
    #[zeroize(skip)]
    pub context: f32,
}

/// Cuts the liveness crop for the face box `[x, y, w, h]` (frame pixels), as `fr_liveness.js`
/// does. None for a degenerate box or frame.
pub(crate) fn crop(frame: &Frame, bbox: [f32; 4]) -> Option<LiveCrop> {
    let (src_w, src_h) = (frame.width() as f32, frame.height() as f32);
    // The package takes integer corners (parseInt) of the detector's x1, y1, x2, y2.
    let (x1, y1) = (bbox[0].trunc(), bbox[1].trunc());
    let (x2, y2) = ((bbox[0] + bbox[2]).trunc(), (bbox[1] + bbox[3]).trunc());
    let (box_w, box_h) = ((x2 - x1).abs(), (y2 - y1).abs());
    if !(box_w >= 1.0 && box_h >= 1.0 && src_w >= 2.0 && src_h >= 2.0) {
        return None;
    }
    let scale = ((src_h - 1.0) / box_h).min((src_w - 1.0) / box_w).min(CONTEXT);
    let (new_w, new_h) = (box_w * scale, box_h * scale);
    let (cx, cy) = (box_w / 2.0 + x1, box_h / 2.0 + y1);
    let (mut lx, mut ly) = (cx - new_w / 2.0, cy - new_h / 2.0);
    let (mut rx, mut ry) = (cx + new_w / 2.0, cy + new_h / 2.0);
    // Shift the square inside the frame rather than shrinking it.
    if lx < 0.0 {
        rx -= lx;
        lx = 0.0;
    }
    if ly < 0.0 {
        ry -= ly;
        ly = 0.0;
    }
    if rx > src_w - 1.0 {
        lx -= rx - src_w + 1.0;
        rx = src_w - 1.0;
    }
    if ry > src_h - 1.0 {
        ly -= ry - src_h + 1.0;
        ry = src_h - 1.0;
    }
    let rect_x = lx.trunc().max(0.0);
    let rect_y = ly.trunc().max(0.0);
    let rect_w = (rx - lx).trunc().min(src_w - 1.0);
    let rect_h = (ry - ly).trunc().min(src_h - 1.0);
    if rect_w < 1.0 || rect_h < 1.0 {
        return None;
    }
    // cv.resize with INTER_LINEAR: half-pixel centres, edge pixels replicated.
    let plane = SIDE * SIDE;
    let mut planar = vec![0.0f32; 3 * plane];
    let (fx, fy) = (rect_w / SIDE as f32, rect_h / SIDE as f32);
    for v in 0..SIDE {
        let sy = ((v as f32 + 0.5) * fy - 0.5).clamp(0.0, rect_h - 1.0) + rect_y;
        for u in 0..SIDE {
            let sx = ((u as f32 + 0.5) * fx - 0.5).clamp(0.0, rect_w - 1.0) + rect_x;
            let [b, g, r] = frame.sample(sx, sy);
            let o = v * SIDE + u;
            planar[o] = b;
            planar[plane + o] = g;
            planar[2 * plane + o] = r;
        }
    }
    Some(LiveCrop { planar, context: scale })
}

/// The probability of "live" from the model's three logits: `softmax(logits)[0]`.
/// None when the output is not three finite numbers.
pub(crate) fn live_probability(logits: &[f32]) -> Option<f32> {
    if logits.len() != 3 || logits.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let exps: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    Some(exps[0] / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Frame {
        // Red = x, green = y, blue = 7: easy to check where a pixel came from.
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 7]);
            }
        }
        Frame::from_rgb(w, h, rgb).unwrap()
    }

    #[test]
    fn the_crop_is_the_box_grown_2_7_times_about_its_centre_in_planar_bgr() {
        let f = gradient(256, 256);
        // A 40x40 box centred at (128, 128): the crop is 108x108 from (74, 74).
        let c = crop(&f, [108.0, 108.0, 40.0, 40.0]).unwrap();
        assert_eq!(c.planar.len(), 3 * SIDE * SIDE);
        assert!((c.context - CONTEXT).abs() < 1e-6);
        let plane = SIDE * SIDE;
        // First output pixel: source x = 0.5 * 108/128 - 0.5 < 0 -> clamped to the crop edge.
        assert_eq!(c.planar[0], 7.0, "blue first (BGR order)");
        assert!((c.planar[plane] - 74.0).abs() < 1e-3, "green is the source y");
        assert!((c.planar[2 * plane] - 74.0).abs() < 1e-3, "red is the source x: {}", c.planar[2 * plane]);
        // Last output pixel sits at the far edge of the 108-pixel crop.
        let last = 3 * plane - 1;
        assert!((c.planar[last] - (74.0 + 107.0)).abs() < 0.6, "{}", c.planar[last]);
    }

    #[test]
    fn a_crop_past_the_frame_edge_is_shifted_inside_and_a_small_frame_shrinks_the_context() {
        let f = gradient(200, 200);
        // Near the top-left corner: the 2.7x square would start at negative coordinates.
        let c = crop(&f, [5.0, 5.0, 40.0, 40.0]).unwrap();
        assert!((c.planar[2 * SIDE * SIDE] - 0.0).abs() < 1e-3, "shifted to start at x = 0");
        // A box almost as large as the frame: the context is what the frame can hold.
        let c = crop(&f, [10.0, 10.0, 150.0, 150.0]).unwrap();
        assert!(c.context < 1.4 && c.context > 1.3, "{}", c.context);
        assert!(crop(&f, [10.0, 10.0, 0.4, 30.0]).is_none(), "a degenerate box has no crop");
    }

    #[test]
    fn the_live_probability_is_the_softmax_of_the_first_logit() {
        let p = live_probability(&[2.0, 0.0, 0.0]).unwrap();
        assert!((p - 2f32.exp() / (2f32.exp() + 2.0)).abs() < 1e-6);
        assert!((live_probability(&[0.0, 0.0, 0.0]).unwrap() - 1.0 / 3.0).abs() < 1e-6);
        // Large logits do not overflow.
        assert!((live_probability(&[1000.0, 0.0, 0.0]).unwrap() - 1.0).abs() < 1e-6);
        assert!(live_probability(&[1.0, 2.0]).is_none());
        assert!(live_probability(&[f32::NAN, 0.0, 0.0]).is_none());
    }
}
