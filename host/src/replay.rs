//! Replaying a trace in virtual time: no sleeping, fuel-bounded plugins, an
//! in-memory event log. The same trace and plugins always give the same output.
//! A trace with pin-level `line` inputs runs through the site's `[hardware]`
//! wiring on simulated pins and the real drivers (see `hardware.rs`).

use crate::clock::{parse_offset, Clock};
use crate::config::SiteConfig;
use crate::event::Record;
use crate::gateway::{Gateway, Timed};
use crate::hardware::HardwareError;
use crate::plugin::{ExecMode, Runtime};
use crate::service::{self, Control, NoHooks, Options, Pace, PinTrace, Source, Step, TraceSource};
use crate::store::EventLog;
use crate::trace::{expect_line, Trace};
use std::path::PathBuf;

/// How long after the last input replay keeps running door timers.
pub const DRAIN_MS: i64 = 3_600_000;

/// Everything a replay produced.
pub struct Replay {
    /// Records with their time in ms since the trace start.
    pub records: Vec<(u64, Record)>,
    /// Plugin load problems (their doors ran on the fallback).
    pub problems: Vec<String>,
}

/// Runs a trace through a fresh gateway built from `cfg`.
pub fn run(cfg: SiteConfig, trace: &Trace, cache_dir: Option<PathBuf>) -> Result<Replay, String> {
    let offset = parse_offset(&cfg.site.utc_offset)?;
    let clock = Clock::new(trace.start_ms, offset);
    let rt = Runtime::new(ExecMode::Deterministic, cache_dir).map_err(|e| e.to_string())?;
    let log = EventLog::in_memory(&cfg.site.gateway).map_err(|e| e.to_string())?;
    let (mut gw, problems) = Gateway::new(cfg, clock, rt, log)?;
    let records = drive(&mut gw, trace).map_err(|e| e.to_string())?;
    Ok(Replay { records, problems })
}

/// Feeds every input at its virtual time, then lets door timers run out: the service loop
/// at virtual pace, over the trace (or its pin-level `line` inputs on simulated pins).
pub fn drive(gw: &mut Gateway, trace: &Trace) -> Result<Vec<(u64, Record)>, HardwareError> {
    let start = trace.start_ms;
    let mut source: Box<dyn Source> = if trace.has_pins() {
        let Some(hw) = gw.config().hardware.clone() else {
            return Err(HardwareError::Setup(format!("the trace has pin-level `line` inputs but {} has no [hardware] section to wire them to", gw.config().path.display())));
        };
        Box::new(PinTrace::open(&hw, trace)?)
    } else {
        Box::new(TraceSource::new(trace))
    };
    let mut out: Vec<Timed> = Vec::new();
    gw.log_mut().begin_batch().map_err(crate::gateway::GatewayError::from)?;
    let opts = Options { drain_ms: DRAIN_MS, ..Options::default() };
    let mut sink = |step: Step| -> Result<(), HardwareError> {
        out.extend(step.records);
        Ok(())
    };
    service::run(gw, source.as_mut(), Pace::Virtual, &opts, &Control::default(), None, &mut NoHooks, &mut sink)?;
    gw.log_mut().commit_batch().map_err(crate::gateway::GatewayError::from)?;
    Ok(out.into_iter().map(|(t, r)| ((t - start).max(0) as u64, r)).collect())
}

/// Renders records as trace `expect` lines (the canonical, byte-stable form).
pub fn to_expect_lines(records: &[(u64, Record)]) -> String {
    let mut s = String::new();
    for (at, r) in records {
        s.push_str(&expect_line(*at, r));
        s.push('\n');
    }
    s
}

/// A readable diff of expected against actual, or None when they agree.
pub fn diff(expected: &[(u64, Record)], actual: &[(u64, Record)]) -> Option<String> {
    let want = to_expect_lines(expected);
    let got = to_expect_lines(actual);
    if want == got {
        return None;
    }
    let d = similar::TextDiff::from_lines(&want, &got);
    Some(d.unified_diff().context_radius(2).header("expected (trace)", "actual (replay)").to_string())
}

/// Formats a virtual time as the site's local time of day, "07:00:01.200".
pub fn local_hms(clock: &Clock, unix_ms: i64) -> String {
    let l = clock.local(unix_ms);
    let ms = unix_ms.rem_euclid(1000);
    let secs = (unix_ms.div_euclid(1000)).rem_euclid(60);
    format!("{:02}:{:02}:{:02}.{:03}", l.minute_of_day / 60, l.minute_of_day % 60, secs, ms)
}
