//! The face engine: verified models loaded into ONNX Runtime, and the pipeline
//! frame -> detect -> choose -> align -> quality -> embed -> 1:N search -> match result.

use crate::align::{self, AlignedFace, SIDE};
use crate::detect::{self, Detection, Rejection, StrideOutput};
use crate::error::{FaceError, ModelError};
use crate::frame::Frame;
use crate::gallery::{Embedding, Gallery, DIM};
use crate::liveness;
use crate::manifest;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// Side of YuNet's square input.
const DETECT_SIDE: usize = 640;

/// Thresholds of the pipeline; the defaults are the measured ones documented in the README.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchConfig {
    /// Cosine at or above which a match is `strong`.
    pub strong: f32,
    /// Cosine at or above which a match is `weak`; below it nobody matched.
    pub weak: f32,
    /// YuNet score a face needs to count as detected.
    pub detect_score: f32,
    /// IoU above which overlapping detections are merged.
    pub nms_iou: f32,
    /// Smallest face side, in frame pixels, that is recognised.
    pub min_face_px: f32,
    /// Smallest variance of the Laplacian of the aligned face.
    pub min_sharpness: f32,
    /// Largest yaw proxy (nose offset from the eye midline, in inter-eye distances).
    pub max_yaw: f32,
    /// Largest roll, in degrees.
    pub max_roll_deg: f32,
    /// ONNX Runtime intra-op threads per model.
    pub threads: usize,
    /// Liveness probability (0.0..=1.0) at or above which a face is `Live`. Default 0.50,
    /// chosen on the project's real photos (host/face/README.md, "Liveness").
    pub live_threshold: f32,
    /// Liveness probability (0.0..=1.0, at most `live_threshold`) below which a face is
    /// `Spoof`; between the two the verdict is `Unknown`. Default 0.10 (README).
    pub spoof_threshold: f32,
    /// Smallest growth of the face box (1.0..=2.7) the frame must hold around the face for
    /// the liveness model, which was trained on 2.7x crops; a face filling the frame has no
    /// context and gets `Unknown`. Default 2.0.
    pub live_min_context: f32,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            strong: 0.60,
            weak: 0.50,
            detect_score: 0.8,
            nms_iou: 0.3,
            min_face_px: 60.0,
            min_sharpness: 15.0,
            max_yaw: 0.35,
            max_roll_deg: 30.0,
            threads: 2,
            live_threshold: 0.50,
            spoof_threshold: 0.10,
            live_min_context: 2.0,
        }
    }
}

impl MatchConfig {
    /// Checks every threshold against its stated range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("strong", self.strong), ("weak", self.weak), ("live_threshold", self.live_threshold), ("spoof_threshold", self.spoof_threshold)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name}: {v} is out of range 0.0..=1.0"));
            }
        }
        if self.spoof_threshold > self.live_threshold {
            return Err(format!("spoof_threshold ({}) must not be above live_threshold ({})", self.spoof_threshold, self.live_threshold));
        }
        if !(1.0..=liveness::CONTEXT).contains(&self.live_min_context) {
            return Err(format!("live_min_context: {} is out of range 1.0..={}", self.live_min_context, liveness::CONTEXT));
        }
        Ok(())
    }

    /// The verdict for a live probability by these thresholds.
    pub(crate) fn verdict(&self, live: f32) -> Liveness {
        if live >= self.live_threshold {
            Liveness::Live
        } else if live < self.spoof_threshold {
            Liveness::Spoof
        } else {
            Liveness::Unknown
        }
    }
}

/// How strong a match is, by the site's thresholds (mirrors the contract's `match-band`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchBand {
    /// At or above `MatchConfig::strong`.
    Strong,
    /// Between `MatchConfig::weak` and `MatchConfig::strong`.
    Weak,
}

/// Presentation-attack verdict (mirrors the contract's `liveness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// A live person: the liveness model's probability is at or above `live_threshold`.
    Live,
    /// A photo, screen or mask: the probability is below `spoof_threshold`.
    Spoof,
    /// Not decided: no liveness model on this gateway (absent, or not the pinned file), a
    /// face the model cannot judge (too small, cut by the frame edge, filling the frame),
    /// or a probability between the two thresholds.
    Unknown,
}

/// A face match: the only thing that leaves the matcher. No image, crop, template or
/// score: the exact similarity stays here (scores are what a hill-climbing attacker needs).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceMatch {
    /// Pseudonymous subject id of the best gallery match.
    pub subject: String,
    /// Band of the similarity by the configured thresholds.
    pub band: MatchBand,
    /// Presentation-attack verdict of the matched face (its probability stays here).
    pub liveness: Liveness,
}

/// What one frame gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// No face detected.
    NoFace,
    /// A face was seen but not used, and why.
    Unusable(Rejection),
    /// A usable face that matches nobody above the weak threshold. How close it came is
    /// not said: a non-match's score never leaves the matcher.
    NoMatch,
    /// A match at the strong or weak band.
    Match(FaceMatch),
}

/// Wall time of each stage of one identification.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Letterbox, YuNet, decoding and NMS.
    pub detect: Duration,
    /// Face choice, pose check, alignment and sharpness.
    pub align: Duration,
    /// SFace and normalisation.
    pub embed: Duration,
    /// 1:N gallery search.
    pub search: Duration,
    /// Liveness crop and model, for a matched face only (zero otherwise).
    pub liveness: Duration,
    /// Frame to decision.
    pub total: Duration,
}

/// A usable face of a frame, its embedding and its quality; private to the crate.
pub(crate) struct Sample {
    pub embedding: Embedding,
    /// The detection the embedding came from.
    pub face: Detection,
    pub sharpness: f32,
    /// Smaller side, in pixels, of every face detected in the frame (the used one included).
    pub face_sides: Vec<f32>,
}

/// The on-device face matcher. Sessions are behind mutexes because ONNX Runtime runs need
/// exclusive access; one engine serves one camera at a time.
pub struct FaceEngine {
    detector: Mutex<Session>,
    recogniser: Mutex<Session>,
    /// The presentation-attack model, when it is present, pinned and loads.
    liveness: Option<Mutex<Session>>,
    config: MatchConfig,
    _env: ort::environment::Environment,
}

impl std::fmt::Debug for FaceEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceEngine").field("config", &self.config).finish_non_exhaustive()
    }
}

impl FaceEngine {
    /// Verifies `models_dir/manifest.toml` and every file it names by sha256, loads ONNX
    /// Runtime from the verified library and both models. Any failure is a [`ModelError`]
    /// naming the file; the caller then runs the gate without face.
    pub fn open(models_dir: &Path, config: MatchConfig) -> Result<FaceEngine, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        let files = manifest::verify(models_dir)?;
        let runtime = std::fs::canonicalize(&files.runtime).map_err(|source| ModelError::Read { path: files.runtime.clone(), source })?;
        let env = environment(&runtime)?;
        let load = |path: &Path, role: &'static str| -> Result<Session, ModelError> {
            let err = |e: String| ModelError::Model { path: path.to_path_buf(), role, message: e };
            Session::builder(&env)
                .map_err(|e| err(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| err(e.to_string()))?
                .with_intra_threads(config.threads.max(1))
                .map_err(|e| err(e.to_string()))?
                // Spinning worker threads would take CPU from the door and the plugins.
                .with_intra_op_spinning(false)
                .map_err(|e| err(e.to_string()))?
                .commit_from_file(path)
                .map_err(|e| err(e.to_string()))
        };
        let detector = load(&files.detector, "detector")?;
        let recogniser = load(&files.recogniser, "recogniser")?;
        // Liveness is optional: a model that does not load gives `unknown`, not a gate without face.
        let liveness = match &files.liveness {
            None => None,
            Some(path) => match load(path, "liveness") {
                Ok(s) => Some(Mutex::new(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "liveness model does not load; every liveness verdict is `unknown`");
                    None
                }
            },
        };
        tracing::info!(detector = %files.detector.display(), recogniser = %files.recogniser.display(), liveness = liveness.is_some(), "face engine ready");
        Ok(FaceEngine { detector: Mutex::new(detector), recogniser: Mutex::new(recogniser), liveness, config, _env: env })
    }

    /// The thresholds in force.
    pub fn config(&self) -> &MatchConfig {
        &self.config
    }

    /// Whether a liveness model is loaded (without one every verdict is `Unknown`).
    pub fn has_liveness(&self) -> bool {
        self.liveness.is_some()
    }

    /// Runs the whole pipeline on a frame against the gallery.
    pub fn identify(&self, frame: &Frame, gallery: &Gallery) -> Result<Outcome, FaceError> {
        self.identify_timed(frame, gallery).map(|(o, _)| o)
    }

    /// [`FaceEngine::identify`], also reporting the time of each stage (for the benchmark).
    pub fn identify_timed(&self, frame: &Frame, gallery: &Gallery) -> Result<(Outcome, StageTimings), FaceError> {
        let start = Instant::now();
        let mut t = StageTimings::default();
        let sample = match self.sample(frame, self.config.min_face_px, &mut t)? {
            Ok(s) => s,
            Err(outcome) => {
                t.total = start.elapsed();
                return Ok((outcome, t));
            }
        };
        let s0 = Instant::now();
        let best = gallery.best(&sample.embedding).map(|(who, score)| (who.to_string(), score));
        t.search = s0.elapsed();
        let outcome = match best {
            Some((subject, score)) if score >= self.config.weak => {
                let band = if score >= self.config.strong { MatchBand::Strong } else { MatchBand::Weak };
                // Liveness is judged only for a face that decides something: a match.
                let l0 = Instant::now();
                // The model is optional: a failure of it leaves the verdict `unknown`.
                let liveness = self.liveness_of(frame, &sample.face).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "liveness model failed on a matched face; verdict `unknown`");
                    Liveness::Unknown
                });
                t.liveness = l0.elapsed();
                Outcome::Match(FaceMatch { subject, band, liveness })
            }
            Some(_) | None => Outcome::NoMatch,
        };
        t.total = start.elapsed();
        Ok((outcome, t))
    }

    /// Detects, chooses, aligns, checks quality and embeds the face of a frame.
    /// The inner `Err` is the outcome to report when no usable face was found.
    pub(crate) fn sample(&self, frame: &Frame, min_face_px: f32, t: &mut StageTimings) -> Result<Result<Sample, Outcome>, FaceError> {
        let t0 = Instant::now();
        let dets = self.detect(frame)?;
        t.detect = t0.elapsed();
        if dets.is_empty() {
            return Ok(Err(Outcome::NoFace));
        }
        let face = match detect::choose(&dets, frame.width() as f32, frame.height() as f32, min_face_px) {
            Ok(d) => d,
            Err(Some(r)) => return Ok(Err(Outcome::Unusable(r))),
            Err(None) => return Ok(Err(Outcome::NoFace)),
        };
        let t1 = Instant::now();
        let (yaw, roll) = align::pose(&face.landmarks);
        if yaw > self.config.max_yaw || roll > self.config.max_roll_deg {
            return Ok(Err(Outcome::Unusable(Rejection::Pose)));
        }
        let Some(aligned) = align::align(frame, &face.landmarks) else {
            return Ok(Err(Outcome::Unusable(Rejection::Pose)));
        };
        let sharpness = aligned.sharpness();
        t.align = t1.elapsed();
        if sharpness < self.config.min_sharpness {
            return Ok(Err(Outcome::Unusable(Rejection::Blurred)));
        }
        let t2 = Instant::now();
        let embedding = self.embed(aligned)?;
        t.embed = t2.elapsed();
        let face_sides = dets.iter().map(|d| d.bbox[2].min(d.bbox[3])).collect();
        Ok(Ok(Sample { embedding, face, sharpness, face_sides }))
    }

    /// The liveness verdict of one detected face of `frame`.
    pub(crate) fn liveness_of(&self, frame: &Frame, face: &Detection) -> Result<Liveness, FaceError> {
        Ok(self.live_probability(frame, face)?.map_or(Liveness::Unknown, |p| self.config.verdict(p)))
    }

    /// The liveness model's probability that `face` is live; None when there is no model or
    /// the face is not one it can judge (too small, cut by the frame edge, too little frame
    /// around it). Never leaves the crate.
    pub(crate) fn live_probability(&self, frame: &Frame, face: &Detection) -> Result<Option<f32>, FaceError> {
        let Some(session) = &self.liveness else { return Ok(None) };
        if detect::unusable(face, frame.width() as f32, frame.height() as f32, self.config.min_face_px).is_some() {
            return Ok(None);
        }
        let Some(crop) = liveness::crop(frame, face.bbox) else { return Ok(None) };
        if crop.context < self.config.live_min_context {
            return Ok(None);
        }
        let inference = |e: ort::Error| FaceError::Inference { stage: "liveness", message: e.to_string() };
        let tensor = TensorRef::from_array_view(([1usize, 3, liveness::SIDE, liveness::SIDE], &crop.planar[..])).map_err(inference)?;
        let mut session = session.lock().map_err(|_| FaceError::Inference { stage: "liveness", message: "liveness lock poisoned".into() })?;
        let outputs = session.run(ort::inputs![tensor]).map_err(inference)?;
        let (_, logits) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
        liveness::live_probability(logits)
            .map(Some)
            .ok_or_else(|| FaceError::Inference { stage: "liveness", message: format!("liveness model gave {} values, expected 3 finite logits", logits.len()) })
    }

    /// Every face of `frame` that the pipeline could use (size, edge, pose, sharpness), with
    /// its liveness probability (None when the model cannot judge it). For measurements.
    pub(crate) fn usable_faces(&self, frame: &Frame) -> Result<Vec<(Detection, Option<f32>)>, FaceError> {
        let mut out = Vec::new();
        for d in self.detect(frame)? {
            if detect::unusable(&d, frame.width() as f32, frame.height() as f32, self.config.min_face_px).is_some() {
                continue;
            }
            let (yaw, roll) = align::pose(&d.landmarks);
            if yaw > self.config.max_yaw || roll > self.config.max_roll_deg {
                continue;
            }
            match align::align(frame, &d.landmarks) {
                Some(a) if a.sharpness() >= self.config.min_sharpness => {}
                _ => continue,
            }
            let p = self.live_probability(frame, &d)?;
            out.push((d, p));
        }
        Ok(out)
    }

    /// Embeds every face of at least `min_side` pixels in a frame (accuracy measurements).
    #[cfg(test)]
    pub(crate) fn embed_all(&self, frame: &Frame, min_side: f32) -> Result<Vec<Embedding>, FaceError> {
        let mut out = Vec::new();
        for d in self.detect(frame)? {
            if d.bbox[2].min(d.bbox[3]) < min_side {
                continue;
            }
            if let Some(face) = align::align(frame, &d.landmarks) {
                out.push(self.embed(face)?);
            }
        }
        Ok(out)
    }

    pub(crate) fn detect(&self, frame: &Frame) -> Result<Vec<Detection>, FaceError> {
        let inference = |e: ort::Error| FaceError::Inference { stage: "detect", message: e.to_string() };
        // The 2023mar YuNet graph has a fixed 640x640 input: letterbox the frame into it.
        let scale = DETECT_SIDE as f32 / frame.width().max(frame.height()) as f32;
        let (tw, th) = (DETECT_SIDE, DETECT_SIDE);
        // The scaled frame stays in our buffer (ORT only borrows it) so it can be wiped.
        let mut input = zeroize::Zeroizing::new(Vec::new());
        frame.to_planar(scale, tw, th, &mut input);
        let tensor = TensorRef::from_array_view(([1usize, 3, th, tw], &input[..])).map_err(inference)?;
        let mut session = self.detector.lock().map_err(|_| FaceError::Inference { stage: "detect", message: "detector lock poisoned".into() })?;
        let outputs = session.run(ort::inputs![tensor]).map_err(inference)?;
        let get = |name: &str| -> Result<&[f32], FaceError> {
            let v = outputs.get(name).ok_or_else(|| FaceError::Inference { stage: "detect", message: format!("model has no output {name}") })?;
            v.try_extract_tensor::<f32>().map(|(_, d)| d).map_err(inference)
        };
        let mut strides = Vec::with_capacity(3);
        for stride in [8usize, 16, 32] {
            strides.push(StrideOutput { stride, cls: get(&format!("cls_{stride}"))?, obj: get(&format!("obj_{stride}"))?, bbox: get(&format!("bbox_{stride}"))?, kps: get(&format!("kps_{stride}"))? });
        }
        let dets = detect::decode(&strides, tw, th, scale, self.config.detect_score);
        Ok(detect::nms(dets, self.config.nms_iou))
    }

    fn embed(&self, face: AlignedFace) -> Result<Embedding, FaceError> {
        let inference = |e: ort::Error| FaceError::Inference { stage: "embed", message: e.to_string() };
        // ORT borrows the crop (wiped when `face` drops); its output buffer is wiped after copying.
        let tensor = TensorRef::from_array_view(([1usize, 3, SIDE, SIDE], &face.planar[..])).map_err(inference)?;
        let mut session = self.recogniser.lock().map_err(|_| FaceError::Inference { stage: "embed", message: "recogniser lock poisoned".into() })?;
        let mut outputs = session.run(ort::inputs![tensor]).map_err(inference)?;
        let (_, raw) = outputs[0].try_extract_tensor_mut::<f32>().map_err(inference)?;
        let embedding = if raw.len() == DIM { Embedding::normalised(raw) } else { None };
        let len = raw.len();
        raw.zeroize();
        embedding.ok_or(FaceError::Inference { stage: "embed", message: format!("recogniser gave no usable embedding ({len} values, expected {DIM})") })
    }
}

/// ONNX Runtime allows one environment per process: it is created on the first successful
/// open and shared by every engine after it (a failed load leaves nothing behind, so a later
/// open after `cargo xtask models` can still succeed).
fn environment(runtime: &Path) -> Result<ort::environment::Environment, ModelError> {
    static ENV: Mutex<Option<(std::path::PathBuf, ort::environment::Environment)>> = Mutex::new(None);
    let mut slot = ENV.lock().map_err(|_| ModelError::Runtime { path: runtime.to_path_buf(), message: "runtime lock poisoned".into() })?;
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded != runtime {
            return Err(ModelError::Runtime { path: runtime.to_path_buf(), message: format!("ONNX Runtime is already loaded from {} in this process", loaded.display()) });
        }
        return Ok(env.clone());
    }
    let err = |e: String| ModelError::Runtime { path: runtime.to_path_buf(), message: e };
    let env = ort::init_from(runtime).map_err(|e| err(e.to_string()))?.with_name("gate-face").with_telemetry(false).build().map_err(|e| err(e.to_string()))?;
    *slot = Some((runtime.to_path_buf(), env.clone()));
    Ok(env)
}

/// A short human reason for an outcome without a usable face.
pub(crate) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NoFace => "no face detected".into(),
        Outcome::Unusable(r) => r.to_string(),
        Outcome::NoMatch | Outcome::Match(_) => "face used".into(),
    }
}
