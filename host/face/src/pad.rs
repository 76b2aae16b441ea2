//! Measuring presentation-attack detection the ISO/IEC 30107-3 way, on a folder of samples:
//!
//! ```text
//! DIR/bona-fide/*.jpg|jpeg|png          real people in front of a camera
//! DIR/attack/<species>/*.jpg|jpeg|png   one folder per PAI species, e.g. print-photo,
//!                                       screen-replay, paper-mask
//! ```
//!
//! Every usable face of every image is one presentation (a group photo gives several). The
//! report holds counts and rates only, never a sample's probability:
//! APCER per species (attack presentations judged `Live`), the worst species' APCER,
//! BPCER (bona-fide presentations judged `Spoof`), how many bona-fide presentations are
//! not `Live` (they are asked for a second factor), and both rates over a sweep of
//! thresholds so a site can choose its own.

use crate::engine::{FaceEngine, Liveness};
use crate::error::FaceError;
use crate::frame::Frame;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why the measurement could not run.
#[derive(Debug, thiserror::Error)]
pub enum PadError {
    /// No samples folder (or no `bona-fide` / `attack` inside it): APCER cannot be measured.
    #[error(
        "no presentation-attack samples in {path}: expected {path}/bona-fide/*.jpg|png and {path}/attack/<species>/*.jpg|png (ISO/IEC 30107-3 layout); without attack samples APCER cannot be measured"
    )]
    NoSamples {
        /// The folder given.
        path: PathBuf,
    },
    /// A folder or image could not be read or decoded.
    #[error("{path}: {message}")]
    Sample {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The liveness model is not loaded: every verdict would be `unknown`.
    #[error("no liveness model is loaded (models/fr_liveness.onnx missing or not the pinned file): nothing to measure")]
    NoModel,
    /// Inference failed.
    #[error(transparent)]
    Face(#[from] FaceError),
}

/// Verdicts of the presentations of one class (bona fide, or one attack species).
#[derive(Clone, Default, PartialEq)]
pub struct ClassCounts {
    /// Images read.
    pub images: usize,
    /// Images without a usable face (not a presentation; reported as failures to acquire).
    pub no_face: usize,
    /// Usable faces judged `Live`.
    pub live: usize,
    /// Usable faces judged `Spoof`.
    pub spoof: usize,
    /// Usable faces judged `Unknown` (between the thresholds, or not judgeable).
    pub unknown: usize,
    /// Live probabilities of the presentations (None: not judgeable); private to the crate.
    probabilities: Vec<Option<f32>>,
}

impl fmt::Debug for ClassCounts {
    /// Counts only: the probabilities never leave the crate, not even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassCounts").field("images", &self.images).field("no_face", &self.no_face).field("live", &self.live).field("spoof", &self.spoof).field("unknown", &self.unknown).finish()
    }
}

impl ClassCounts {
    /// Presentations: usable faces.
    pub fn presentations(&self) -> usize {
        self.live + self.spoof + self.unknown
    }

    fn rate(&self, n: usize) -> f64 {
        if self.presentations() == 0 {
            f64::NAN
        } else {
            n as f64 / self.presentations() as f64
        }
    }

    /// Share judged `Live`: APCER for an attack species.
    pub fn live_rate(&self) -> f64 {
        self.rate(self.live)
    }

    /// Share judged `Spoof`: BPCER for bona fide.
    pub fn spoof_rate(&self) -> f64 {
        self.rate(self.spoof)
    }

    /// Share not judged `Live`: bona-fide presentations asked for a second factor.
    pub fn not_live_rate(&self) -> f64 {
        self.rate(self.spoof + self.unknown)
    }

    fn add(&mut self, p: Option<f32>, v: Liveness) {
        self.probabilities.push(p);
        match v {
            Liveness::Live => self.live += 1,
            Liveness::Spoof => self.spoof += 1,
            Liveness::Unknown => self.unknown += 1,
        }
    }

    /// Share of presentations with probability at or above `t` (None counts as below).
    fn at_or_above(&self, t: f32) -> f64 {
        self.rate(self.probabilities.iter().filter(|p| p.is_some_and(|p| p >= t)).count())
    }

    /// Share of judged presentations with probability below `t`.
    fn below(&self, t: f32) -> f64 {
        self.rate(self.probabilities.iter().filter(|p| p.is_some_and(|p| p < t)).count())
    }
}

/// One row of the threshold sweep: a single threshold used as both `live` and `spoof`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    /// The threshold on the live probability.
    pub threshold: f32,
    /// Worst species' share at or above it (attacks accepted).
    pub apcer_max: f64,
    /// Bona-fide share below it (real people rejected).
    pub bpcer: f64,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct PadReport {
    /// The folder measured.
    pub dir: PathBuf,
    /// `(live_threshold, spoof_threshold)` of the engine.
    pub thresholds: (f32, f32),
    /// Bona-fide presentations.
    pub bona_fide: ClassCounts,
    /// Attack presentations by PAI species (folder name), sorted by name.
    pub species: Vec<(String, ClassCounts)>,
    /// Rates at thresholds 0.05, 0.1, 0.2 ... 0.9.
    pub sweep: Vec<SweepRow>,
}

impl PadReport {
    /// BPCER at the engine's thresholds.
    pub fn bpcer(&self) -> f64 {
        self.bona_fide.spoof_rate()
    }

    /// The worst species' APCER at the engine's thresholds (NaN without attack samples).
    pub fn apcer_max(&self) -> f64 {
        self.species.iter().map(|(_, c)| c.live_rate()).fold(f64::NAN, f64::max)
    }
}

fn pct(r: f64) -> String {
    if r.is_nan() {
        "-".into()
    } else {
        format!("{:.1}%", r * 100.0)
    }
}

impl fmt::Display for PadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "presentation-attack detection on {} (live >= {}, spoof < {})", self.dir.display(), self.thresholds.0, self.thresholds.1)?;
        writeln!(f, "{:<30} {:>6} {:>8} {:>6} {:>6} {:>8} {:>8}  rate", "class", "images", "no face", "live", "spoof", "unknown", "faces")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, c: &ClassCounts, rate: String| {
            writeln!(f, "{name:<30} {:>6} {:>8} {:>6} {:>6} {:>8} {:>8}  {rate}", c.images, c.no_face, c.live, c.spoof, c.unknown, c.presentations())
        };
        let b = &self.bona_fide;
        row(f, "bona fide", b, format!("BPCER {} (not live: {})", pct(b.spoof_rate()), pct(b.not_live_rate())))?;
        for (name, c) in &self.species {
            row(f, &format!("attack: {name}"), c, format!("APCER {}", pct(c.live_rate())))?;
        }
        if self.species.is_empty() {
            writeln!(f, "no attack species: APCER cannot be measured")?;
        } else {
            writeln!(f, "APCER (worst species) {}   BPCER {}", pct(self.apcer_max()), pct(self.bpcer()))?;
        }
        writeln!(f, "threshold sweep (one threshold for live and spoof):")?;
        for r in &self.sweep {
            writeln!(f, "  {:>4.2}  APCER(worst) {:>7}  BPCER {:>7}", r.threshold, pct(r.apcer_max), pct(r.bpcer))?;
        }
        Ok(())
    }
}

/// Images of a folder, sorted by name.
fn images(dir: &Path) -> Result<Vec<PathBuf>, PadError> {
    let err = |e: std::io::Error| PadError::Sample { path: dir.to_path_buf(), message: e.to_string() };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let p = entry.map_err(err)?.path();
        let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        if p.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn measure(engine: &FaceEngine, files: &[PathBuf]) -> Result<ClassCounts, PadError> {
    let mut c = ClassCounts::default();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| PadError::Sample { path: path.clone(), message: e.to_string() })?;
        let frame = Frame::decode(&bytes).map_err(|e| PadError::Sample { path: path.clone(), message: e.to_string() })?;
        c.images += 1;
        let faces = engine.usable_faces(&frame)?;
        if faces.is_empty() {
            c.no_face += 1;
        }
        for (_, p) in faces {
            c.add(p, p.map_or(Liveness::Unknown, |p| engine.config().verdict(p)));
        }
    }
    Ok(c)
}

/// Runs the liveness model on every usable face of every sample under `dir` (layout in the
/// module doc) and counts the verdicts by class.
pub fn evaluate(engine: &FaceEngine, dir: &Path) -> Result<PadReport, PadError> {
    let (bona, attack) = (dir.join("bona-fide"), dir.join("attack"));
    if !bona.is_dir() && !attack.is_dir() {
        return Err(PadError::NoSamples { path: dir.to_path_buf() });
    }
    if !engine.has_liveness() {
        return Err(PadError::NoModel);
    }
    let bona_fide = if bona.is_dir() { measure(engine, &images(&bona)?)? } else { ClassCounts::default() };
    let mut species = Vec::new();
    if attack.is_dir() {
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(&attack).map_err(|e| PadError::Sample { path: attack.clone(), message: e.to_string() })?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for d in dirs {
            let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            species.push((name, measure(engine, &images(&d)?)?));
        }
    }
    let sweep = [0.05f32, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
        .iter()
        .map(|&t| SweepRow { threshold: t, apcer_max: species.iter().map(|(_, c)| c.at_or_above(t)).fold(f64::NAN, f64::max), bpcer: bona_fide.below(t) })
        .collect();
    let cfg = engine.config();
    Ok(PadReport { dir: dir.to_path_buf(), thresholds: (cfg.live_threshold, cfg.spoof_threshold), bona_fide, species, sweep })
}
