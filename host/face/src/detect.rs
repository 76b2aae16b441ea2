//! YuNet output decoding, non-maximum suppression and the choice of the face to use.

/// A detected face in frame coordinates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Detection {
    /// x, y, width, height of the face box.
    pub bbox: [f32; 4],
    /// Right eye, left eye, nose tip, right and left mouth corner (image left first).
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

impl Detection {
    fn area(&self) -> f32 {
        self.bbox[2].max(0.0) * self.bbox[3].max(0.0)
    }

    fn iou(&self, other: &Detection) -> f32 {
        let [ax, ay, aw, ah] = self.bbox;
        let [bx, by, bw, bh] = other.bbox;
        let iw = ((ax + aw).min(bx + bw) - ax.max(bx)).max(0.0);
        let ih = ((ay + ah).min(by + bh) - ay.max(by)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            0.0
        } else {
            inter / union
        }
    }
}

/// Raw YuNet outputs for one stride (8, 16 or 32): per-anchor class and objectness
/// scores, box deltas (4 per anchor) and landmark offsets (10 per anchor).
pub(crate) struct StrideOutput<'a> {
    pub stride: usize,
    pub cls: &'a [f32],
    pub obj: &'a [f32],
    pub bbox: &'a [f32],
    pub kps: &'a [f32],
}

/// Decodes YuNet's anchor-free outputs on a `input_w` x `input_h` input into detections at
/// or above `threshold`, mapped back to the frame by dividing by `scale`.
pub(crate) fn decode(outputs: &[StrideOutput<'_>], input_w: usize, input_h: usize, scale: f32, threshold: f32) -> Vec<Detection> {
    let mut found = Vec::new();
    for o in outputs {
        let cols = input_w / o.stride;
        let rows = input_h / o.stride;
        let n = (cols * rows).min(o.cls.len()).min(o.obj.len()).min(o.bbox.len() / 4).min(o.kps.len() / 10);
        let s = o.stride as f32;
        for idx in 0..n {
            let score = (o.cls[idx].clamp(0.0, 1.0) * o.obj[idx].clamp(0.0, 1.0)).sqrt();
            if score < threshold {
                continue;
            }
            let (r, c) = ((idx / cols) as f32, (idx % cols) as f32);
            let cx = (c + o.bbox[idx * 4]) * s;
            let cy = (r + o.bbox[idx * 4 + 1]) * s;
            let w = o.bbox[idx * 4 + 2].exp() * s;
            let h = o.bbox[idx * 4 + 3].exp() * s;
            let mut landmarks = [[0.0; 2]; 5];
            for (k, lm) in landmarks.iter_mut().enumerate() {
                lm[0] = (o.kps[idx * 10 + 2 * k] + c) * s / scale;
                lm[1] = (o.kps[idx * 10 + 2 * k + 1] + r) * s / scale;
            }
            found.push(Detection { bbox: [(cx - w / 2.0) / scale, (cy - h / 2.0) / scale, w / scale, h / scale], landmarks, score });
        }
    }
    found
}

/// Greedy non-maximum suppression: keeps the best-scoring box of each overlapping group.
pub(crate) fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.iter().all(|k| k.iou(&d) <= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

/// Why no face of a frame was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The face is smaller than the configured minimum.
    TooSmall,
    /// The face is cut by the frame edge.
    AtEdge,
    /// The face is too blurred to recognise.
    Blurred,
    /// The head is turned or tilted too far.
    Pose,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejection::TooSmall => "face too small",
            Rejection::AtEdge => "face cut by the frame edge",
            Rejection::Blurred => "face blurred",
            Rejection::Pose => "head turned or tilted too far",
        })
    }
}

/// Share of the face width a box must keep clear of the frame border.
const EDGE_MARGIN: f32 = 0.02;

/// Why a detected face cannot be used, if it cannot: smaller than `min_side` pixels, or
/// cut by the frame edge.
pub(crate) fn unusable(d: &Detection, frame_w: f32, frame_h: f32, min_side: f32) -> Option<Rejection> {
    let [x, y, w, h] = d.bbox;
    // A box touching the border (within 2% of its width) belongs to a face the frame cuts.
    let m = EDGE_MARGIN * w;
    let cut = x < m || y < m || x + w > frame_w - m || y + h > frame_h - m;
    if w.min(h) < min_side {
        Some(Rejection::TooSmall)
    } else if cut {
        Some(Rejection::AtEdge)
    } else {
        None
    }
}

/// Picks the face to use: the largest (nearest) face that is big enough and not cut by
/// the frame edge. Returns the reason of the largest face when none qualifies.
pub(crate) fn choose(dets: &[Detection], frame_w: f32, frame_h: f32, min_side: f32) -> Result<Detection, Option<Rejection>> {
    let mut by_size: Vec<&Detection> = dets.iter().collect();
    by_size.sort_by(|a, b| b.area().total_cmp(&a.area()));
    let mut first_reason = None;
    for d in by_size {
        match unusable(d, frame_w, frame_h, min_side) {
            None => return Ok(d.clone()),
            Some(r) => {
                first_reason.get_or_insert(r);
            }
        }
    }
    Err(first_reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, w: f32, h: f32, score: f32) -> Detection {
        Detection { bbox: [x, y, w, h], landmarks: [[0.0; 2]; 5], score }
    }

    #[test]
    fn decode_places_an_anchor_box_in_frame_coordinates() {
        // One 2x2 grid of stride 16 on a 32x32 input; only anchor (row 1, col 0) fires.
        let cls = [0.0, 0.0, 0.81, 0.0];
        let obj = [1.0, 1.0, 1.0, 1.0];
        let mut bbox = [0.0f32; 16];
        bbox[8..12].copy_from_slice(&[0.5, 0.5, 0.0, (2.0f32).ln()]);
        let mut kps = [0.0f32; 40];
        kps[20] = 0.25;
        let out = StrideOutput { stride: 16, cls: &cls, obj: &obj, bbox: &bbox, kps: &kps };
        let dets = decode(&[out], 32, 32, 0.5, 0.5);
        assert_eq!(dets.len(), 1);
        let d = &dets[0];
        assert!((d.score - 0.9).abs() < 1e-6);
        // centre (8, 24) on the input, 16 x 32 -> halved scale doubles everything.
        assert_eq!(d.bbox, [0.0, 16.0, 32.0, 64.0]);
        assert_eq!(d.landmarks[0], [8.0, 32.0]);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_and_separate_faces() {
        let dets = vec![det(0.0, 0.0, 10.0, 10.0, 0.8), det(1.0, 1.0, 10.0, 10.0, 0.95), det(50.0, 50.0, 10.0, 10.0, 0.7)];
        let kept = nms(dets, 0.3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.95);
        assert_eq!(kept[1].score, 0.7);
    }

    #[test]
    fn the_largest_whole_face_is_chosen_and_cut_faces_are_skipped() {
        let dets = vec![det(-5.0, 10.0, 200.0, 200.0, 0.9), det(300.0, 10.0, 100.0, 120.0, 0.9), det(500.0, 10.0, 80.0, 80.0, 0.99)];
        let chosen = choose(&dets, 640.0, 480.0, 60.0).unwrap();
        assert_eq!(chosen.bbox[0], 300.0);
    }

    #[test]
    fn a_frame_with_only_small_or_cut_faces_says_why() {
        assert_eq!(choose(&[det(10.0, 10.0, 30.0, 30.0, 0.9)], 640.0, 480.0, 60.0), Err(Some(Rejection::TooSmall)));
        assert_eq!(choose(&[det(600.0, 10.0, 80.0, 80.0, 0.9)], 640.0, 480.0, 60.0), Err(Some(Rejection::AtEdge)));
        // Touching the border counts as cut (the model places the box of a half face inside the frame).
        assert_eq!(choose(&[det(0.2, 85.0, 190.0, 330.0, 0.9)], 491.0, 1137.0, 60.0), Err(Some(Rejection::AtEdge)));
        assert_eq!(choose(&[], 640.0, 480.0, 60.0), Err(None));
    }
}
