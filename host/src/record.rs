//! Recordings: what the service loop did, written as an event-level trace (header, inputs
//! with their times, the gateway's outputs as `expect` lines), so a tester can replay a real
//! gate later. The recorder is a consumer of the loop's steps (`gate run --record`, and
//! `gate record --simulate` for simulated pins in virtual time), never a second gateway.
//!
//! Credentials never reach the recording in clear: PINs always, and card numbers unless
//! the tester asks to keep them, become HMAC-SHA256 pseudonyms under a random key that
//! lives only as long as the recording run (`gate_hw::pseudonym`), so they cannot be
//! reversed by trying all numbers. The recorder also writes the subject directory the
//! recording replays against: each subject with the pseudonyms of the credentials it was
//! seen using (the live directory resolved them). Face events are match results only:
//! with `[hardware.camera]` and face on, a camera thread (`crate::camera`) matches frames
//! and sends the loop `Input::Face` results; frames never leave that thread's memory.

use crate::clock::{parse_offset, Clock};
use crate::config::SiteConfig;
use crate::credentials::{pin_hash, Directory};
use crate::event::{Input, Record, Role};
use crate::gateway::Gateway;
use crate::hardware::{split_card_number, HardwareError};
use crate::plugin::{ExecMode, Runtime};
use crate::replay::DRAIN_MS;
use crate::service::{self, Control, NoHooks, Options, Pace, PinTrace, Step};
use crate::store::EventLog;
use crate::trace::{expect_line, input_line, Header, Trace, VERSION};
use gate_hw::pseudonym::Pseudonymiser;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use thiserror::Error;

/// Where and how to write a recording.
#[derive(Debug, Clone)]
pub struct RecordTo {
    /// The trace to write.
    pub out: PathBuf,
    /// The pseudonymised subject directory to write next to it.
    pub subjects_out: PathBuf,
    /// Keep raw card numbers (PINs stay pseudonymous regardless).
    pub keep_raw_cards: bool,
}

/// What was recorded.
#[derive(Debug, Default)]
pub struct Summary {
    pub inputs: usize,
    pub outputs: usize,
    pub decisions: usize,
    /// The trace written.
    pub path: PathBuf,
    /// The subject directory written beside it.
    pub subjects: PathBuf,
}

/// Why a recording could not be made.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The configuration or the options do not allow a recording (bad input).
    #[error("{0}")]
    Setup(String),
    /// The hardware (e.g. a missing GPIO chip, named) or the gateway failed.
    #[error(transparent)]
    Hardware(#[from] HardwareError),
    /// Writing the recording failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// `gate record --simulate PINS`: the gateway serves a pin-level trace on simulated pins in
/// virtual time (the same service loop as `gate run`, paced like replay, so it is instant
/// and deterministic) and the recording is written from its output. Live recordings are
/// `gate run --record`.
pub fn record_simulated(cfg: SiteConfig, to: &RecordTo, pins: &Trace, cache_dir: Option<PathBuf>) -> Result<Summary, RecordError> {
    let Some(hw_cfg) = cfg.hardware.clone() else {
        return Err(RecordError::Setup(format!("{}: no [hardware] section, so there is nothing to record from", cfg.path.display())));
    };
    let offset = parse_offset(&cfg.site.utc_offset).map_err(RecordError::Setup)?;
    let rt = Runtime::new(ExecMode::Deterministic, cache_dir).map_err(|e| RecordError::Setup(e.to_string()))?;
    let log = EventLog::in_memory(&cfg.site.gateway).map_err(|e| RecordError::Setup(e.to_string()))?;
    let (mut gw, problems) = Gateway::new(cfg.clone(), Clock::new(pins.start_ms, offset), rt, log).map_err(RecordError::Setup)?;
    for p in problems {
        tracing::warn!(problem = %p, "plugin not loaded; its doors are served by the fallback policy");
    }
    // The hardware opens (and may fail) before the recording file exists.
    let mut source = PinTrace::open(&hw_cfg, pins)?;
    let what = pins.header.description.as_deref().unwrap_or("a pin-level trace");
    let mut rec = Recorder::create(to, &cfg, &pins.header.start, pins.start_ms, format!("recorded by gate record on simulated pins from: {what}"))?;
    let opts = Options { drain_ms: DRAIN_MS, ..Options::default() };
    let mut failed = None;
    let mut sink = |step: Step| -> Result<(), HardwareError> {
        if let Err(e) = rec.step(&step) {
            failed = Some(e);
            return Err(HardwareError::Setup("writing the recording failed".into()));
        }
        Ok(())
    };
    let res = service::run(&mut gw, &mut source, Pace::Virtual, &opts, &Control::default(), None, &mut NoHooks, &mut sink);
    if let Some(e) = failed {
        return Err(e);
    }
    res?;
    rec.finish(&cfg)
}

/// A Unix time as RFC 3339 at the site's offset (whole seconds), for a recording's header.
pub fn rfc3339_of(unix_ms: i64, offset_minutes: i32) -> Result<String, RecordError> {
    let bad = |e: String| RecordError::Setup(format!("cannot write the recording's start time: {e}"));
    let off = time::UtcOffset::from_whole_seconds(offset_minutes * 60).map_err(|e| bad(e.to_string()))?;
    let t = time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1_000)).map_err(|e| bad(e.to_string()))?.to_offset(off);
    t.format(&time::format_description::well_known::Rfc3339).map_err(|e| bad(e.to_string()))
}

/// Pseudonyms each subject was seen using.
#[derive(Default)]
struct Seen {
    cards: BTreeSet<String>,
    pins: BTreeSet<String>,
}

/// Writes a recording as it happens: a consumer of the service loop's steps.
pub struct Recorder {
    path: PathBuf,
    subjects_out: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    start_ms: i64,
    pseudo: Pseudonymiser,
    keep_raw_cards: bool,
    dir: Directory,
    /// The site's face bands: a face input that came with a score is recorded as its band.
    bands: crate::config::FaceBands,
    seen: BTreeMap<String, Seen>,
    summary: Summary,
}

impl Recorder {
    /// Starts the recording file with its header; pseudonyms are keyed afresh for this recording.
    pub fn create(to: &RecordTo, cfg: &SiteConfig, start: &str, start_ms: i64, description: String) -> Result<Self, RecordError> {
        let path = &to.out;
        let dir = crate::directory::load_for(cfg).map_err(RecordError::Setup)?;
        let pseudo = Pseudonymiser::random().map_err(|e| RecordError::Setup(e.to_string()))?;
        let header = Header { gate_trace: VERSION, site: cfg.site.id.clone(), start: start.to_string(), description: Some(description) };
        let io = |source| RecordError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        let head = serde_json::to_string(&header).map_err(|e| io(e.into()))?;
        writeln!(w, "{head}").map_err(io)?;
        Ok(Recorder {
            path: path.to_path_buf(),
            subjects_out: to.subjects_out.clone(),
            w,
            start_ms,
            pseudo,
            keep_raw_cards: to.keep_raw_cards,
            dir,
            bands: cfg.face.clone(),
            seen: BTreeMap::new(),
            summary: Summary::default(),
        })
    }

    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Io { path: self.path.clone(), source }
    }

    fn at(&self, t: i64) -> u64 {
        (t - self.start_ms).max(0) as u64
    }

    /// The input as it goes into the recording: card numbers and PINs pseudonymised.
    fn pseudonymise(&mut self, at: u64, input: &Input) -> Result<Input, RecordError> {
        Ok(match input {
            Input::Card { door, direction, number, captured_at } => {
                let label = if self.keep_raw_cards {
                    number.clone()
                } else {
                    let (facility, n) = split_card_number(number)
                        .ok_or_else(|| RecordError::Setup(format!("card input at {at} ms is not a decimal card number; cannot pseudonymise it (or pass --keep-raw-cards)")))?;
                    self.pseudo.card(if facility <= 0xff { 26 } else { 34 }, Some(facility), n)
                };
                if let Some(s) = self.dir.by_card(number) {
                    self.seen.entry(s.id.clone()).or_default().cards.insert(label.clone());
                }
                Input::Card { door: door.clone(), direction: *direction, number: label, captured_at: *captured_at }
            }
            Input::Pin { door, direction, pin, captured_at } => {
                let label = self.pseudo.pin(pin);
                if let Some(s) = self.dir.by_pin(pin) {
                    self.seen.entry(s.id.clone()).or_default().pins.insert(label.clone());
                }
                Input::Pin { door: door.clone(), direction: *direction, pin: label, captured_at: *captured_at }
            }
            // A hand-written trace may give a score: the recording carries the band the
            // gateway turned it into (the same thresholds), never the score.
            Input::Face { door, direction, subject, band, score, liveness, captured_at } => {
                let band = band.or_else(|| score.and_then(|s| self.bands.band(s)));
                Input::Face { door: door.clone(), direction: *direction, subject: subject.clone().filter(|_| band.is_some()), band, score: None, liveness: *liveness, captured_at: *captured_at }
            }
            other => other.clone(),
        })
    }

    /// Writes one step: the input (if any), then every record it produced.
    pub fn step(&mut self, step: &Step) -> Result<(), RecordError> {
        if let Some(input) = &step.input {
            let at = self.at(step.at_ms);
            let recorded = self.pseudonymise(at, input)?;
            let line = input_line(at, &recorded);
            writeln!(self.w, "{line}").map_err(|e| self.io(e))?;
            self.summary.inputs += 1;
            tracing::debug!(at, kind = input_kind(&recorded), "recorded input");
        }
        for (t, r) in &step.records {
            self.output(*t, r)?;
        }
        self.w.flush().map_err(|e| self.io(e))
    }

    fn output(&mut self, t: i64, r: &Record) -> Result<(), RecordError> {
        let line = expect_line(self.at(t), r);
        writeln!(self.w, "{line}").map_err(|e| self.io(e))?;
        self.summary.outputs += 1;
        if matches!(r, Record::Decision { .. }) {
            self.summary.decisions += 1;
        }
        Ok(())
    }

    /// Closes the trace and writes the pseudonymised subject directory.
    pub fn finish(mut self, cfg: &SiteConfig) -> Result<Summary, RecordError> {
        self.w.flush().map_err(|e| self.io(e))?;
        let subjects_out = self.subjects_out.clone();
        let subjects_out = subjects_out.as_path();
        let subjects = cfg
            .subjects
            .iter()
            .map(|s| {
                let seen = self.seen.remove(&s.id).unwrap_or_default();
                OutSubject {
                    id: s.id.clone(),
                    role: s.role,
                    groups: s.groups.clone(),
                    cards: seen.cards.into_iter().collect(),
                    pin_sha256: seen.pins.iter().map(|p| pin_hash(&cfg.site.id, p)).collect(),
                    nfc: s.nfc.clone(),
                    plates: s.plates.clone(),
                }
            })
            .collect();
        let body = toml::to_string(&OutSubjects { subject: subjects }).map_err(|e| RecordError::Io { path: subjects_out.to_path_buf(), source: std::io::Error::other(e) })?;
        let text = format!(
            "# Subject directory for the recording {}: cards and PINs are the recording's pseudonyms.\n\
             # Replay: gate replay --config {} --subjects {} --trace {}\n\n{body}",
            self.path.display(),
            cfg.path.display(),
            subjects_out.display(),
            self.path.display()
        );
        std::fs::write(subjects_out, text).map_err(|source| RecordError::Io { path: subjects_out.to_path_buf(), source })?;
        self.summary.path = self.path.clone();
        self.summary.subjects = subjects_out.to_path_buf();
        Ok(self.summary)
    }
}

fn input_kind(input: &Input) -> &'static str {
    match input {
        Input::Card { .. } => "card",
        Input::Pin { .. } => "pin",
        Input::DoorContact { .. } => "door-contact",
        Input::ExitButton { .. } => "exit-button",
        Input::FireAlarm { .. } => "fire-alarm",
        Input::Face { .. } => "face",
        _ => "other",
    }
}

#[derive(Serialize)]
struct OutSubjects {
    subject: Vec<OutSubject>,
}

#[derive(Serialize)]
struct OutSubject {
    id: String,
    role: Role,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cards: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pin_sha256: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nfc: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plates: Vec<String>,
}

#[cfg(test)]
mod tests {
    use crate::event::{Direction, FaceBand, Input, Liveness};
    use crate::trace::input_line;

    #[test]
    fn a_face_result_is_recorded_with_its_band_and_never_a_score() {
        // Even a face input that came in with a score (a hand-written trace) leaves as a band.
        let face = Input::Face {
            door: "north-gate".into(),
            direction: Direction::Entry,
            subject: Some("r-0003".into()),
            band: Some(FaceBand::Weak),
            score: Some(0.5371),
            liveness: Liveness::Unknown,
            captured_at: None,
        };
        let line = input_line(1000, &face);
        assert!(line.contains(r#""band":"weak""#), "{line}");
        assert!(!line.contains("score") && !line.contains("0.537"), "{line}");
        // A no-match carries neither a subject nor a band, and still no score.
        let none = Input::Face { door: "north-gate".into(), direction: Direction::Entry, subject: None, band: None, score: Some(0.31), liveness: Liveness::Unknown, captured_at: None };
        let line = input_line(2000, &none);
        assert!(!line.contains("score") && !line.contains("0.31") && !line.contains("band"), "{line}");
    }
}
