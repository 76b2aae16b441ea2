//! The gateway's face matcher: the optional engine, gallery and template store of
//! `[face]`, opened at start-up. It turns a camera frame into a face-match *result*
//! (`Input::Face`: subject, band, liveness; never a score); frames and templates never leave it.
//!
//! When face is not configured, or the models, ONNX Runtime, store or key are missing
//! or bad, the matcher is off: one warning is logged, camera frames are ignored with a
//! visible reason, and card, PIN and NFC keep working.

use crate::config::FaceBands;
use crate::event::{Direction, FaceBand, IgnoreReason, Input, Liveness};
use gate_face::{FaceEngine, Frame, Gallery, MatchConfig, ModelError, Outcome, StoreError, TemplateStore};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A camera frame handed to the face thread, with when and how the gateway got it.
#[derive(Debug, Clone)]
pub struct FrameJob {
    pub door: String,
    pub direction: Direction,
    pub file: PathBuf,
    /// `captured_at` of the frame input (ms since trace start), passed to the match result.
    pub captured: Option<u64>,
    /// Gateway time the frame arrived.
    pub at: i64,
    /// Absolute capture time, for the gateway's stale-read check.
    pub captured_at: Option<i64>,
}

/// In service the matcher (≈ 35 ms a frame, ≈ 7 ms more for the liveness model on a match) runs on its own thread, so door timers,
/// the exit button and fire release never wait for it; only results come back.
pub struct FaceThread {
    jobs: std::sync::mpsc::Sender<FrameJob>,
    done: std::sync::mpsc::Receiver<(FrameJob, FrameResult)>,
    in_flight: usize,
}

impl FaceThread {
    /// Moves `matcher` onto a thread of its own.
    pub fn spawn(mut matcher: FaceMatcher, bell: crate::service::Bell) -> std::io::Result<FaceThread> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<FrameJob>();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("gate-face".into()).spawn(move || {
            for job in job_rx {
                let r = matcher.frame_file(&job.door, job.direction, &job.file, job.captured);
                if done_tx.send((job, r)).is_err() {
                    break;
                }
                bell.ring();
            }
        })?;
        Ok(FaceThread { jobs, done, in_flight: 0 })
    }

    /// Queues a frame; false if the thread is gone.
    pub fn send(&mut self, job: FrameJob) -> bool {
        let ok = self.jobs.send(job).is_ok();
        self.in_flight += usize::from(ok);
        ok
    }

    /// A finished frame, without waiting.
    pub fn take(&mut self) -> Option<(FrameJob, FrameResult)> {
        let d = self.done.try_recv().ok()?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(d)
    }

    /// Frames queued or being matched.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// Why the matcher could not be started.
#[derive(Debug, Error)]
pub enum FaceSetupError {
    /// `[face]` has no `models_dir` / `db` / `key`.
    #[error("face recognition is not configured ([face] has no models_dir, db and key)")]
    NotConfigured,
    #[error(transparent)]
    Models(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a camera frame gave the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameResult {
    /// A match result (subject and band, or a no-match) for the access pipeline.
    Credential(Input),
    /// Nothing to decide on; the reason goes into an `ignored` record.
    Ignored(IgnoreReason),
}

/// The matcher in service: verified models, the decrypted gallery and the store it came from.
struct Ready {
    engine: FaceEngine,
    gallery: Gallery,
    store: TemplateStore,
    /// A second connection that only watches the store for commits by other processes
    /// (`gate enroll`, `gate consent withdraw`), so the gallery follows them at once.
    watch: Option<rusqlite::Connection>,
    version: i64,
}

/// The optional face matcher of one gateway.
pub struct FaceMatcher {
    state: Result<Ready, String>,
}

impl std::fmt::Debug for FaceMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            Ok(r) => write!(f, "FaceMatcher(ready, {} templates)", r.gallery.len()),
            Err(why) => write!(f, "FaceMatcher(off: {why})"),
        }
    }
}

/// The engine thresholds for a site's bands.
pub fn match_config(bands: &FaceBands) -> MatchConfig {
    MatchConfig { strong: bands.strong, weak: bands.weak, live_threshold: bands.live, spoof_threshold: bands.spoof, ..MatchConfig::default() }
}

/// The three paths of a configured matcher, or `NotConfigured`.
pub fn paths(bands: &FaceBands) -> Result<(&Path, &Path, &Path), FaceSetupError> {
    match (&bands.models_dir, &bands.db, &bands.key) {
        (Some(m), Some(d), Some(k)) => Ok((m, d, k)),
        _ => Err(FaceSetupError::NotConfigured),
    }
}

fn data_version(conn: &rusqlite::Connection) -> Option<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0)).ok()
}

impl FaceMatcher {
    /// A matcher that is off, with the reason shown to the operator.
    pub fn off(reason: impl Into<String>) -> FaceMatcher {
        FaceMatcher { state: Err(reason.into()) }
    }

    /// Opens the matcher of `[face]`. Never fails: a problem turns face off, with one warning.
    pub fn open(bands: &FaceBands) -> FaceMatcher {
        match Self::try_open(bands) {
            Ok(ready) => {
                tracing::info!(templates = ready.gallery.len(), "face recognition on");
                FaceMatcher { state: Ok(ready) }
            }
            Err(FaceSetupError::NotConfigured) => Self::off(FaceSetupError::NotConfigured.to_string()),
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(error = %reason, "face recognition is OFF; card, PIN and NFC keep working");
                Self::off(reason)
            }
        }
    }

    fn try_open(bands: &FaceBands) -> Result<Ready, FaceSetupError> {
        let (models, db, key) = paths(bands)?;
        let engine = FaceEngine::open(models, match_config(bands))?;
        let store = TemplateStore::open(db, key)?;
        let gallery = store.load_gallery()?;
        let watch = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok();
        if let Some(w) = &watch {
            // An erasure in another process holds the write lock for a moment; wait it out.
            let _ = w.busy_timeout(gate_face::BUSY_TIMEOUT);
        }
        let version = watch.as_ref().and_then(data_version).unwrap_or(0);
        Ok(Ready { engine, gallery, store, watch, version })
    }

    /// Whether frames are matched.
    pub fn is_on(&self) -> bool {
        self.state.is_ok()
    }

    /// Why face is off, if it is.
    pub fn off_reason(&self) -> Option<&str> {
        self.state.as_ref().err().map(String::as_str)
    }

    /// Templates in the gallery (0 when off).
    pub fn enrolled(&self) -> usize {
        self.state.as_ref().map_or(0, |r| r.gallery.len())
    }

    /// Makes the templates follow the subject directory, at start: a template whose subject
    /// is not in `known` (an orphan) is erased when `[face] erase_orphans` is on (the
    /// default), and with `[face] unused_days` a template not matched for that long is
    /// erased too. Says so in the log; returns (subject, reason) of each erasure for the
    /// event log. With `erase_orphans` off an orphan is kept on disk but never matched.
    pub fn follow_directory(&mut self, known: &dyn Fn(&str) -> bool, bands: &FaceBands, now_ms: i64) -> Vec<(String, String)> {
        let Ok(ready) = &mut self.state else { return Vec::new() };
        let enrolled = match ready.store.enrolled() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list face templates to check them against the directory");
                return Vec::new();
            }
        };
        let orphans: Vec<String> = enrolled.iter().filter(|s| !known(s.as_str())).cloned().collect();
        let mut todo: Vec<(String, String)> = Vec::new();
        if !orphans.is_empty() {
            tracing::warn!(orphans = orphans.len(), subjects = %orphans.join(","), erase = bands.erase_orphans, "face templates of subjects not in the subject directory");
            if bands.erase_orphans {
                todo.extend(orphans.iter().map(|s| (s.clone(), "subject not in the subject directory".to_string())));
            }
        }
        if bands.unused_days > 0 {
            let before = now_ms.saturating_sub(i64::from(bands.unused_days).saturating_mul(86_400_000));
            match ready.store.unused_since(before) {
                Ok(unused) => {
                    for s in unused {
                        if !todo.iter().any(|(t, _)| *t == s) {
                            todo.push((s, format!("not matched for {} days ([face] unused_days)", bands.unused_days)));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot find unused face templates"),
            }
        }
        let mut erased = Vec::new();
        for (subject, reason) in todo {
            match ready.store.purge(&subject, now_ms, &reason) {
                Ok(true) => {
                    tracing::warn!(subject = %subject, reason = %reason, audit = "face-erased", "face template erased");
                    erased.push((subject, reason));
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(subject = %subject, error = %e, "face template could not be erased yet; the next start tries again"),
            }
        }
        // Orphans kept on disk (erase_orphans off) are still never matched.
        match ready.store.load_gallery() {
            Ok(mut g) => {
                for o in &orphans {
                    g.remove(o);
                }
                ready.gallery = g;
            }
            Err(e) => {
                tracing::warn!(error = %e, "face template store no longer loads; face recognition is OFF");
                self.state = Err(e.to_string());
            }
        }
        erased
    }

    /// Erases one subject's template now (the subject left the directory): never matched
    /// again, bytes verifiably gone. True if a template was held and erased.
    pub fn erase(&mut self, subject: &str, reason: &str, now_ms: i64) -> bool {
        let Ok(ready) = &mut self.state else { return false };
        ready.gallery.remove(subject);
        match ready.store.purge(subject, now_ms, reason) {
            Ok(erased) => erased,
            Err(e) => {
                tracing::warn!(subject = %subject, error = %e, "face template could not be erased yet; the next start erases it as an orphan");
                false
            }
        }
    }

    /// Reloads the gallery when another process changed the store (enrolment, withdrawal).
    /// A store that no longer opens turns face off rather than matching stale templates.
    fn refresh(&mut self) {
        let Ok(ready) = &mut self.state else { return };
        let Some(now) = ready.watch.as_ref().and_then(data_version) else { return };
        if now == ready.version {
            return;
        }
        match ready.store.load_gallery() {
            Ok(g) => {
                tracing::info!(templates = g.len(), "face template store changed; gallery reloaded");
                ready.gallery = g;
                ready.version = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "face template store no longer loads; face recognition is OFF");
                self.state = Err(e.to_string());
            }
        }
    }

    /// Times each stage of the matcher on `frame` against the current gallery, the liveness
    /// model's included when the frame's face matches (for `gate bench`). None when face is
    /// off; the error of a failed run otherwise. Only durations come out.
    pub fn stage_timings(&self, frame: &Frame) -> Option<Result<gate_face::StageTimings, String>> {
        let ready = self.state.as_ref().ok()?;
        Some(ready.engine.identify_timed(frame, &ready.gallery).map(|(_, t)| t).map_err(|e| e.to_string()))
    }

    /// Whether the liveness model is loaded (without it every verdict is `unknown`).
    pub fn has_liveness(&self) -> bool {
        self.state.as_ref().is_ok_and(|r| r.engine.has_liveness())
    }

    /// Runs an image file through the models: a match result, or why nothing was decided.
    pub fn frame_file(&mut self, door: &str, direction: Direction, file: &Path, captured_at: Option<u64>) -> FrameResult {
        if !self.is_on() {
            return FrameResult::Ignored(IgnoreReason::FaceUnavailable);
        }
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(door, file = %file.display(), error = %e, "camera frame cannot be read");
                return FrameResult::Ignored(IgnoreReason::BadFrame);
            }
        };
        match Frame::decode(&bytes) {
            Ok(frame) => self.frame(door, direction, &frame, captured_at),
            Err(e) => {
                tracing::warn!(door, file = %file.display(), error = %e, "camera frame cannot be decoded");
                FrameResult::Ignored(IgnoreReason::BadFrame)
            }
        }
    }

    /// Runs a decoded frame through the models against the current gallery.
    pub fn frame(&mut self, door: &str, direction: Direction, frame: &Frame, captured_at: Option<u64>) -> FrameResult {
        self.refresh();
        let Ok(ready) = &self.state else { return FrameResult::Ignored(IgnoreReason::FaceUnavailable) };
        let outcome = match ready.engine.identify(frame, &ready.gallery) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(door, error = %e, "face matcher failed on a frame");
                return FrameResult::Ignored(IgnoreReason::BadFrame);
            }
        };
        let face = |subject: Option<String>, band: Option<FaceBand>, liveness: Liveness| {
            FrameResult::Credential(Input::Face { door: door.to_string(), direction, subject, band, score: None, liveness, captured_at })
        };
        match outcome {
            Outcome::Match(m) => {
                // For `[face] unused_days`: the wall time of the match (not replay time).
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
                if let Err(e) = ready.store.mark_matched(&m.subject, now) {
                    tracing::debug!(error = %e, "could not note the time of a face match");
                }
                let (band, liveness) = (band(m.band), liveness(m.liveness));
                // The match result as the policy gets it (the verdict, never the probability).
                tracing::info!(door, subject = %m.subject, band = ?band, liveness = ?liveness, "face matched");
                face(Some(m.subject), Some(band), liveness)
            }
            Outcome::NoMatch => face(None, None, Liveness::Unknown),
            Outcome::NoFace => FrameResult::Ignored(IgnoreReason::NoFace),
            Outcome::Unusable(why) => {
                tracing::info!(door, why = %why, "face seen but not usable");
                FrameResult::Ignored(IgnoreReason::FaceUnusable)
            }
        }
    }
}

fn band(b: gate_face::MatchBand) -> FaceBand {
    match b {
        gate_face::MatchBand::Strong => FaceBand::Strong,
        gate_face::MatchBand::Weak => FaceBand::Weak,
    }
}

fn liveness(l: gate_face::Liveness) -> Liveness {
    match l {
        gate_face::Liveness::Live => Liveness::Live,
        gate_face::Liveness::Spoof => Liveness::Spoof,
        gate_face::Liveness::Unknown => Liveness::Unknown,
    }
}

/// Resolves a camera frame's file against the folder of the trace that names it.
pub fn resolve_frame_path(trace_dir: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        file.to_path_buf()
    } else {
        trace_dir.join(file)
    }
}
