//! 5-point similarity alignment to the 112x112 ArcFace template, and the quality
//! measures taken on the aligned face (sharpness and pose).

use crate::frame::Frame;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Side of the aligned face the recogniser expects.
pub(crate) const SIDE: usize = 112;

/// The standard ArcFace landmark positions on a 112x112 crop (eyes, nose, mouth corners).
pub(crate) const TEMPLATE: [[f32; 2]; 5] = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// A similarity transform `dst = s*R*src + t`, stored as `[a, -b, tx; b, a, ty]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Similarity {
    pub a: f32,
    pub b: f32,
    pub tx: f32,
    pub ty: f32,
}

impl Similarity {
    /// Least-squares similarity (Umeyama, no reflection) mapping `src` onto `dst`.
    pub fn estimate(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> Option<Similarity> {
        let mean = |p: &[[f32; 2]; 5]| {
            let (sx, sy) = p.iter().fold((0.0, 0.0), |(x, y), q| (x + q[0], y + q[1]));
            (sx / 5.0, sy / 5.0)
        };
        let (mx, my) = mean(src);
        let (nx, ny) = mean(dst);
        let (mut dot, mut cross, mut norm) = (0.0f32, 0.0f32, 0.0f32);
        for (p, q) in src.iter().zip(dst) {
            let (px, py) = (p[0] - mx, p[1] - my);
            let (qx, qy) = (q[0] - nx, q[1] - ny);
            dot += px * qx + py * qy;
            cross += px * qy - py * qx;
            norm += px * px + py * py;
        }
        if norm < 1e-6 {
            return None;
        }
        let (a, b) = (dot / norm, cross / norm);
        Some(Similarity { a, b, tx: nx - (a * mx - b * my), ty: ny - (b * mx + a * my) })
    }

    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [self.a * p[0] - self.b * p[1] + self.tx, self.b * p[0] + self.a * p[1] + self.ty]
    }

    fn inverse(&self) -> Similarity {
        let det = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / det, -self.b / det);
        Similarity { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) }
    }
}

/// An aligned 112x112 face, planar RGB in 0..255; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct AlignedFace {
    pub planar: Vec<f32>,
}

/// Warps the face with these landmarks onto the template.
pub(crate) fn align(frame: &Frame, landmarks: &[[f32; 2]; 5]) -> Option<AlignedFace> {
    let m = Similarity::estimate(landmarks, &TEMPLATE)?;
    let inv = m.inverse();
    let plane = SIDE * SIDE;
    let mut planar = vec![0.0f32; 3 * plane];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let [sx, sy] = inv.apply([x as f32, y as f32]);
            let v = frame.sample(sx, sy);
            let o = y * SIDE + x;
            // SFace was trained on RGB (OpenCV feeds it with swapRB): measured genuine
            // cosines rise from ~0.67 (BGR) to ~0.77 (RGB) on the test photos.
            planar[o] = v[2];
            planar[plane + o] = v[1];
            planar[2 * plane + o] = v[0];
        }
    }
    Some(AlignedFace { planar })
}

impl AlignedFace {
    /// Variance of the Laplacian of the grey face: low values mean blur.
    pub fn sharpness(&self) -> f32 {
        let plane = SIDE * SIDE;
        let grey: Vec<f32> = (0..plane).map(|i| 0.299 * self.planar[i] + 0.587 * self.planar[plane + i] + 0.114 * self.planar[2 * plane + i]).collect();
        let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
        // Central region only: the corners hold background and black padding.
        for y in 20..SIDE - 12 {
            for x in 20..SIDE - 20 {
                let i = y * SIDE + x;
                let lap = grey[i - 1] + grey[i + 1] + grey[i - SIDE] + grey[i + SIDE] - 4.0 * grey[i];
                sum += lap as f64;
                sq += (lap * lap) as f64;
                n += 1.0;
            }
        }
        let mean = sum / n;
        (sq / n - mean * mean) as f32
    }
}

/// Head pose proxies from the landmarks: yaw as the nose's offset from the eyes' midline
/// (in inter-eye distances), roll in degrees.
pub(crate) fn pose(landmarks: &[[f32; 2]; 5]) -> (f32, f32) {
    let [re, le, nose, _, _] = *landmarks;
    let (dx, dy) = (le[0] - re[0], le[1] - re[1]);
    let eye_dist = (dx * dx + dy * dy).sqrt().max(1e-3);
    let mid = [(re[0] + le[0]) / 2.0, (re[1] + le[1]) / 2.0];
    // Project the nose offset onto the eye axis.
    let yaw = ((nose[0] - mid[0]) * dx + (nose[1] - mid[1]) * dy) / (eye_dist * eye_dist);
    let roll = dy.atan2(dx).to_degrees();
    (yaw.abs(), roll.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_scaled_shifted_template_is_mapped_back_exactly() {
        let (s, th) = (2.5f32, 0.3f32);
        let src: [[f32; 2]; 5] = TEMPLATE.map(|p| [s * (th.cos() * p[0] - th.sin() * p[1]) + 100.0, s * (th.sin() * p[0] + th.cos() * p[1]) + 40.0]);
        let m = Similarity::estimate(&src, &TEMPLATE).unwrap();
        for (p, q) in src.iter().zip(TEMPLATE) {
            let r = m.apply(*p);
            assert!((r[0] - q[0]).abs() < 1e-2 && (r[1] - q[1]).abs() < 1e-2, "{r:?} vs {q:?}");
        }
        let back = m.inverse().apply(TEMPLATE[0]);
        assert!((back[0] - src[0][0]).abs() < 1e-2);
    }

    #[test]
    fn degenerate_landmarks_give_no_transform() {
        assert!(Similarity::estimate(&[[5.0, 5.0]; 5], &TEMPLATE).is_none());
    }

    #[test]
    fn aligning_a_face_at_template_position_copies_pixels() {
        // A 112x112 frame whose pixel value encodes x: identity alignment must preserve it.
        let mut bgr = Vec::new();
        for _y in 0..SIDE {
            for x in 0..SIDE {
                bgr.extend_from_slice(&[0, 0, x as u8]);
            }
        }
        let frame = Frame::from_bgr(SIDE as u32, SIDE as u32, bgr).unwrap();
        let face = align(&frame, &TEMPLATE).unwrap();
        assert!((face.planar[50 * SIDE + 70] - 70.0).abs() < 0.5);
    }

    #[test]
    fn a_flat_face_is_less_sharp_than_a_textured_one() {
        let flat = AlignedFace { planar: vec![128.0; 3 * SIDE * SIDE] };
        let textured = AlignedFace { planar: (0..3 * SIDE * SIDE).map(|i| if (i / 3) % 2 == 0 { 0.0 } else { 255.0 }).collect() };
        assert!(flat.sharpness() < 1.0);
        assert!(textured.sharpness() > 1000.0);
    }

    #[test]
    fn a_frontal_face_has_no_yaw_and_a_turned_one_has() {
        let (yaw, roll) = pose(&TEMPLATE);
        assert!(yaw < 0.05 && roll < 1.0, "{yaw} {roll}");
        let mut turned = TEMPLATE;
        turned[2][0] += 20.0;
        assert!(pose(&turned).0 > 0.5);
    }
}
