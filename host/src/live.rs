//! `gate run`: the gateway in service. Without hardware it serves a recorded
//! trace in real time (optionally sped up), so the demo runs on any machine.

use crate::clock::{parse_offset, Clock};
use crate::config::SiteConfig;
use crate::event::{Outcome, Record};
use crate::gateway::Gateway;
use crate::plugin::{ExecMode, Runtime};
use crate::replay::local_hms;
use crate::store::EventLog;
use crate::trace::Trace;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `gate run`.
pub struct RunOptions {
    pub trace: Trace,
    /// Playback speed: 1.0 is real time.
    pub speed: f64,
    pub db: PathBuf,
    pub cache_dir: Option<PathBuf>,
}

/// What the run did, for the closing summary.
#[derive(Default, Debug)]
pub struct Summary {
    pub granted: usize,
    pub denied: usize,
    pub other_decisions: usize,
    pub alarms: usize,
    pub plugin_failures: usize,
    pub published: usize,
    pub logged: i64,
}

/// Serves the trace's inputs at their (scaled) times, printing what happens.
pub fn run(cfg: SiteConfig, opts: RunOptions, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let offset = parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let start = opts.trace.start_ms;
    let clock = Clock::new(start, offset);
    let rt = Runtime::new(ExecMode::Live, opts.cache_dir.clone())?;
    let log = EventLog::open(&opts.db, &cfg.site.gateway)?;
    let site = cfg.site.id.clone();
    let gateway = cfg.site.gateway.clone();
    let doors = cfg.doors.len();
    let (mut gw, problems) = Gateway::new(cfg, clock.clone(), rt, log).map_err(anyhow::Error::msg)?;
    writeln!(out, "gate: site {site}, gateway {gateway}, {doors} doors, event log {}", opts.db.display())?;
    for p in &problems {
        writeln!(out, "gate: WARNING {p} (its doors are served by the fallback policy)")?;
    }
    match gw.face().off_reason() {
        None => writeln!(out, "gate: face recognition on, {} enrolled template(s)", gw.face().enrolled())?,
        Some(why) if gw.config().face.configured() => writeln!(out, "gate: WARNING face recognition OFF: {why} (card, PIN and NFC keep working)")?,
        Some(_) => {}
    }
    writeln!(out, "gate: serving trace \"{}\" at {}x\n", opts.trace.header.description.as_deref().unwrap_or(&opts.trace.header.site), opts.speed)?;

    let wall0 = Instant::now();
    let speed = opts.speed.max(0.001);
    let wait_until = |t: i64| {
        let target = Duration::from_secs_f64(((t - start).max(0) as f64) / 1000.0 / speed);
        let el = wall0.elapsed();
        if target > el {
            std::thread::sleep(target - el);
        }
    };

    let mut summary = Summary::default();
    let print = |recs: Vec<(i64, Record)>, out: &mut dyn Write, summary: &mut Summary| -> std::io::Result<()> {
        for (t, r) in recs {
            match &r {
                Record::Decision { outcome: Outcome::Grant, .. } => summary.granted += 1,
                Record::Decision { outcome: Outcome::Deny, .. } => summary.denied += 1,
                Record::Decision { .. } => summary.other_decisions += 1,
                Record::Alarm { active: true, .. } => summary.alarms += 1,
                Record::Plugin { .. } => summary.plugin_failures += 1,
                Record::Publish { .. } => summary.published += 1,
                _ => {}
            }
            writeln!(out, "{}  {r}", local_hms(&clock, t))?;
        }
        out.flush()
    };

    for (at, input) in &opts.trace.inputs {
        let due = start + *at as i64;
        // Door timers that fall before the next input fire on time.
        while let Some(t) = gw.next_deadline().filter(|t| *t < due) {
            wait_until(t);
            let recs = gw.advance(t)?;
            print(recs, out, &mut summary)?;
        }
        wait_until(due);
        // The trace says when the hardware saw it; being late on the wall clock
        // (a slow plugin, a busy machine) must not change what happened.
        gw.clock().set_ms(due);
        let recs = gw.handle(due, input, None)?;
        print(recs, out, &mut summary)?;
    }
    while let Some(t) = gw.next_deadline() {
        if t - start > opts.trace.inputs.last().map_or(0, |(a, _)| *a as i64) + 120_000 {
            break;
        }
        wait_until(t);
        let recs = gw.advance(t)?;
        print(recs, out, &mut summary)?;
    }
    summary.logged = gw.log().count()?;
    Ok(summary)
}
