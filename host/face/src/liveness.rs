//! Presentation-attack detection (liveness) with `fr_liveness.onnx` from the npm package
//! `faceplugin-face-recognition-js@0.0.1` (MIT): a MiniFASNet-style classifier on a 128x128
//! RGB crop of the face and its surroundings (the box grown 2.7 times, as the package's
//! `fr_liveness.js` feeds it: raw 0..255 values, planar, no normalisation), softmax output.
//!
//! The verdict is `live` when the live probability is at least `live_threshold`, `spoof`
//! below `spoof_threshold`, `unknown` in between, when the model is absent, or when the
//! face is unusable. Thresholds: see the crate README (chosen on the real photos available).

use crate::frame::Frame;
use zeroize::Zeroizing;

/// Side of the model's square input.
pub(crate) const SIDE: usize = 128;
/// How much larger than the face box the crop is (the package's `scale_value`).
const CONTEXT: f32 = 2.7;
/// Index of the live class in the model's softmax output.
pub(crate) const LIVE_CLASS: usize = 0;

/// The crop the model sees: the face box grown `CONTEXT` times about its centre (less if
/// the frame is too small), shifted to lie inside the frame, resized bilinearly to 128x128,
/// planar RGB 0..255. Wiped on drop.
pub(crate) fn crop(frame: &Frame, bbox: [f32; 4]) -> Zeroizing<Vec<f32>> {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    let [x, y, bw, bh] = bbox;
    let (bw, bh) = (bw.max(1.0), bh.max(1.0));
    let scale = CONTEXT.min((h - 1.0) / bh).min((w - 1.0) / bw).max(0.0);
    let (nw, nh) = (bw * scale, bh * scale);
    let (cx, cy) = (x + bw / 2.0, y + bh / 2.0);
    let (mut l, mut t, mut r, mut b) = (cx - nw / 2.0, cy - nh / 2.0, cx + nw / 2.0, cy + nh / 2.0);
    if l < 0.0 {
        r -= l;
        l = 0.0;
    }
    if t < 0.0 {
        b -= t;
        t = 0.0;
    }
    if r > w - 1.0 {
        l -= r - w + 1.0;
        r = w - 1.0;
    }
    if b > h - 1.0 {
        t -= b - h + 1.0;
        b = h - 1.0;
    }
    let (l, t) = (l.max(0.0), t.max(0.0));
    let (cw, ch) = ((r - l).max(1.0), (b - t).max(1.0));
    let plane = SIDE * SIDE;
    let mut out = Zeroizing::new(vec![0.0f32; 3 * plane]);
    for yy in 0..SIDE {
        let sy = t + (yy as f32 + 0.5) * ch / SIDE as f32 - 0.5;
        for xx in 0..SIDE {
            let sx = l + (xx as f32 + 0.5) * cw / SIDE as f32 - 0.5;
            let [bl, g, rd] = frame.sample(sx.max(0.0), sy.max(0.0));
            let o = yy * SIDE + xx;
            out[o] = rd;
            out[plane + o] = g;
            out[2 * plane + o] = bl;
        }
    }
    out
}

/// Softmax probability of class `k` from raw outputs (logits).
pub(crate) fn probability(logits: &[f32], k: usize) -> Option<f32> {
    if k >= logits.len() || logits.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    Some((logits[k] - max).exp() / sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_logits_and_refusals() {
        let p = probability(&[2.0, 0.0], 0).unwrap();
        assert!((p - 0.880_797).abs() < 1e-5);
        assert!(probability(&[1.0], 3).is_none());
        assert!(probability(&[f32::NAN, 1.0], 0).is_none());
    }

    #[test]
    fn the_crop_stays_inside_the_frame_and_has_the_models_size() {
        let frame = Frame::from_rgb(200, 100, vec![90; 200 * 100 * 3]).unwrap();
        // A face at the right edge: the grown box is shifted left, never sampled outside.
        let c = crop(&frame, [170.0, 30.0, 30.0, 40.0]);
        assert_eq!(c.len(), 3 * SIDE * SIDE);
        assert!(c.iter().all(|v| (*v - 90.0).abs() < 1e-3), "a sample fell outside the frame");
    }
}
