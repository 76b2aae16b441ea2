//! `gate record`: runs the gateway on the site's hardware and writes what happened as an
//! event-level trace (header, inputs with their times, the gateway's outputs as `expect`
//! lines), so a tester can replay a real gate later.
//!
//! Credentials never reach the recording in clear: PINs always, and card numbers unless
//! the tester asks to keep them, become HMAC-SHA256 pseudonyms under a random key that
//! lives only as long as the recording run (`gate_hw::pseudonym`), so they cannot be
//! reversed by trying all numbers. The recorder also writes the subject directory the
//! recording replays against: each subject with the pseudonyms of the credentials it was
//! seen using (the live directory resolved them). Face events are match results only:
//! with `[hardware.camera]` and face on, a camera thread (`crate::camera`) matches frames
//! and sends the loop `Input::Face` results; frames never leave that thread's memory.

use crate::clock::{parse_offset, parse_rfc3339, Clock};
use crate::config::{FaceBands, SiteConfig};
use crate::credentials::{pin_hash, Directory};
use crate::event::{Input, Record, Role};
use crate::gateway::Gateway;
use crate::hardware::{run_simulated, split_card_number, HardwareError, Step};
use crate::plugin::{ExecMode, Runtime};
use crate::replay::DRAIN_MS;
use crate::store::EventLog;
use crate::trace::{expect_line, input_line, Header, Trace, VERSION};
use gate_hw::pseudonym::Pseudonymiser;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Options of `gate record`.
pub struct RecordOptions {
    /// The trace to write.
    pub out: PathBuf,
    /// The pseudonymised subject directory to write next to it.
    pub subjects_out: PathBuf,
    /// Keep raw card numbers (PINs stay pseudonymous regardless).
    pub keep_raw_cards: bool,
    /// A pin-level trace standing in for live hardware (simulated pins, virtual time).
    pub simulate: Option<Trace>,
    /// Stop a live recording after this long (otherwise at Ctrl-C).
    pub duration: Option<Duration>,
    /// Precompiled plugin cache.
    pub cache_dir: Option<PathBuf>,
}

/// What was recorded.
#[derive(Debug, Default)]
pub struct Summary {
    pub inputs: usize,
    pub outputs: usize,
    pub decisions: usize,
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

/// Records a session into `opts.out` and `opts.subjects_out`.
pub fn record(cfg: SiteConfig, opts: RecordOptions) -> Result<Summary, RecordError> {
    let Some(hw_cfg) = cfg.hardware.clone() else {
        return Err(RecordError::Setup(format!("{}: no [hardware] section, so there is nothing to record from", cfg.path.display())));
    };
    let offset = parse_offset(&cfg.site.utc_offset).map_err(RecordError::Setup)?;
    let mode = if opts.simulate.is_some() { ExecMode::Deterministic } else { ExecMode::Live };
    let rt = Runtime::new(mode, opts.cache_dir.clone()).map_err(|e| RecordError::Setup(e.to_string()))?;
    let log = EventLog::in_memory(&cfg.site.gateway).map_err(|e| RecordError::Setup(e.to_string()))?;
    let dir = Directory::from_config(&cfg).map_err(RecordError::Setup)?;
    let pseudo = Pseudonymiser::random().map_err(|e| RecordError::Setup(e.to_string()))?;
    let (mut gw, problems) = Gateway::new(cfg.clone(), Clock::new(0, offset), rt, log).map_err(RecordError::Setup)?;
    for p in problems {
        tracing::warn!(problem = %p, "plugin not loaded; its doors are served by the fallback policy");
    }
    let writer = |start: String, start_ms: i64, description: String| -> Result<Recorder<'_>, RecordError> {
        let header = Header { gate_trace: VERSION, site: cfg.site.id.clone(), start, description: Some(description) };
        Recorder::create(&opts.out, &header, start_ms, &pseudo, opts.keep_raw_cards, &dir)
    };

    let rec = match &opts.simulate {
        Some(pins) => {
            gw.clock().set_ms(pins.start_ms);
            // The hardware opens (and may fail) before the recording file exists.
            let steps = run_simulated(&mut gw, &hw_cfg, pins.start_ms, &pins.inputs, DRAIN_MS)?;
            let what = pins.header.description.as_deref().unwrap_or("a pin-level trace");
            let mut rec = writer(pins.header.start.clone(), pins.start_ms, format!("recorded by gate record on simulated pins from: {what}"))?;
            for s in &steps {
                rec.step(s)?;
            }
            rec
        }
        None => record_live(&mut gw, &hw_cfg, &cfg.face, offset, opts.duration, writer)?,
    };
    rec.finish(&cfg, &opts.subjects_out)
}

#[cfg(target_os = "linux")]
fn record_live<'a>(
    gw: &mut Gateway,
    hw_cfg: &gate_hw::HardwareConfig,
    face: &FaceBands,
    offset_minutes: i32,
    duration: Option<Duration>,
    writer: impl Fn(String, i64, String) -> Result<Recorder<'a>, RecordError>,
) -> Result<Recorder<'a>, RecordError> {
    use crate::hardware::{to_input, Hardware};
    use gate_hw::config::Backend;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    if hw_cfg.backend != Backend::Linux {
        return Err(RecordError::Setup("[hardware] backend is \"simulated\": pass --simulate PIN_TRACE, or set backend = \"linux\" to record from the GPIO lines".into()));
    }
    let (start, start_ms) = now_rfc3339(offset_minutes)?;
    let mut backend = gate_hw::linux::LinuxBackend::new();
    let mut hw = Hardware::open(hw_cfg, &mut backend, start_ms)?;
    let edges = backend.take_edges();
    let stop = Arc::new(AtomicBool::new(false));
    let camera = match &hw_cfg.camera {
        Some(cam) if gw.face().is_on() => Some(start_camera(cam, face, Arc::clone(&stop))?),
        Some(cam) => {
            tracing::warn!(device = %cam.device, reason = gw.face().off_reason().unwrap_or("off"), "camera not started: face recognition is off");
            None
        }
        None => None,
    };
    let mut rec = writer(start, start_ms, "recorded by gate record on live hardware".into())?;
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    tracing::info!(start_ms, "recording live hardware; Ctrl-C stops");
    let wall = std::time::Instant::now();
    let mut last_input = start_ms;
    while !stop.load(Ordering::SeqCst) && duration.is_none_or(|d| wall.elapsed() < d) {
        let now_us = backend.now_us();
        let mut events = Vec::new();
        if let Some(rx) = &edges {
            let batch: Vec<gate_hw::PinEdge> = rx.try_iter().collect();
            if !batch.is_empty() {
                events.extend(hw.runtime_mut().feed_edges(&batch).map_err(HardwareError::from)?);
            }
        }
        events.extend(hw.runtime_mut().poll(now_us).map_err(HardwareError::from)?);
        let now_ms = start_ms + (now_us / 1_000) as i64;
        while let Some(t) = gw.next_deadline().filter(|t| *t <= now_ms) {
            rec.step(&hw.timer(gw, t)?)?;
        }
        for ev in events {
            if let Some(input) = to_input(&ev) {
                let at = hw.gateway_ms(ev.at_us());
                rec.step(&hw.handle(gw, at, input, None)?)?;
                last_input = at;
            }
        }
        if let Some(faces) = &camera {
            for input in faces.try_iter() {
                rec.step(&hw.handle(gw, now_ms, input, None)?)?;
                last_input = now_ms;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    // Let door timers run out as a replay of the recording will.
    while let Some(t) = gw.next_deadline().filter(|t| *t <= last_input + DRAIN_MS) {
        rec.step(&hw.timer(gw, t)?)?;
    }
    Ok(rec)
}

/// Opens the V4L2 camera on its own thread (a missing device is the driver's error,
/// naming it) and starts matching there; the receiver gets the `Input::Face` results.
#[cfg(target_os = "linux")]
fn start_camera(cam: &gate_hw::config::CameraConfig, face: &FaceBands, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<std::sync::mpsc::Receiver<Input>, RecordError> {
    use crate::camera::{run_camera, CameraDoor};
    use crate::face::FaceMatcher;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (cfg, bands) = (cam.clone(), face.clone());
    let at = CameraDoor { door: cam.door.clone(), direction: crate::hardware::direction(cam.direction), fps: cam.fps };
    std::thread::Builder::new()
        .name("camera".into())
        .spawn(move || {
            let mut source = match gate_hw::linux::LinuxCamera::open(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut matcher = FaceMatcher::open(&bands);
            let _ = ready_tx.send(Ok(()));
            tracing::info!(device = %cfg.device, door = %at.door, fps = at.fps, "camera feeding the face matcher");
            match run_camera(&mut source, &mut matcher, &at, &tx, &stop) {
                Ok(frames) => tracing::info!(device = %cfg.device, frames, "camera stopped"),
                Err(e) => tracing::warn!(device = %cfg.device, error = %e, "camera failed: no more face matches; card and PIN keep working"),
            }
        })
        .map_err(|e| RecordError::Setup(format!("camera {}: cannot start its thread: {e}", cam.device)))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(HardwareError::from(e).into()),
        Err(_) => Err(RecordError::Setup(format!("camera {}: its thread ended before the camera opened", cam.device))),
    }
}

#[cfg(not(target_os = "linux"))]
fn record_live<'a>(
    _gw: &mut Gateway,
    _hw_cfg: &gate_hw::HardwareConfig,
    _face: &FaceBands,
    _offset_minutes: i32,
    _duration: Option<Duration>,
    _writer: impl Fn(String, i64, String) -> Result<Recorder<'a>, RecordError>,
) -> Result<Recorder<'a>, RecordError> {
    Err(RecordError::Setup("live recording needs the Linux GPIO backend; use --simulate PIN_TRACE on this platform".into()))
}

/// The current time at the site as RFC 3339 (whole seconds) and Unix ms.
#[cfg(target_os = "linux")]
fn now_rfc3339(offset_minutes: i32) -> Result<(String, i64), RecordError> {
    let off = time::UtcOffset::from_whole_seconds(offset_minutes * 60).map_err(|e| RecordError::Setup(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc().to_offset(off).replace_nanosecond(0).map_err(|e| RecordError::Setup(e.to_string()))?;
    let s = now.format(&time::format_description::well_known::Rfc3339).map_err(|e| RecordError::Setup(e.to_string()))?;
    let ms = parse_rfc3339(&s).map_err(RecordError::Setup)?;
    Ok((s, ms))
}

/// Pseudonyms each subject was seen using.
#[derive(Default)]
struct Seen {
    cards: BTreeSet<String>,
    pins: BTreeSet<String>,
}

/// Writes a recording as it happens.
struct Recorder<'a> {
    path: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    start_ms: i64,
    pseudo: &'a Pseudonymiser,
    keep_raw_cards: bool,
    dir: &'a Directory,
    seen: BTreeMap<String, Seen>,
    summary: Summary,
}

impl<'a> Recorder<'a> {
    fn create(path: &Path, header: &Header, start_ms: i64, pseudo: &'a Pseudonymiser, keep_raw_cards: bool, dir: &'a Directory) -> Result<Self, RecordError> {
        let io = |source| RecordError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        let head = serde_json::to_string(header).map_err(|e| io(e.into()))?;
        writeln!(w, "{head}").map_err(io)?;
        Ok(Recorder { path: path.to_path_buf(), w, start_ms, pseudo, keep_raw_cards, dir, seen: BTreeMap::new(), summary: Summary::default() })
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
            other => other.clone(),
        })
    }

    /// Writes one step: the input (if any), then every record it produced.
    fn step(&mut self, step: &Step) -> Result<(), RecordError> {
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
    fn finish(mut self, cfg: &SiteConfig, subjects_out: &Path) -> Result<Summary, RecordError> {
        self.w.flush().map_err(|e| self.io(e))?;
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
