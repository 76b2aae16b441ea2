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
    /// Keep serving (door timers, fleet jobs and commands) after the trace ends, until stopped.
    pub hold: bool,
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
    // With [fleet]: serve the plugin versions deployed before this start.
    let cfg = if cfg.fleet.is_some() { crate::fleet::with_deployed(cfg, &crate::fleet::fleet_dir(&opts.db)) } else { cfg };
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

    // Operator door modes still in force come back before the first input.
    let mut summary = Summary::default();
    let restored = gw.restore_door_modes(start)?;
    print(restored, out, &mut summary, &clock)?;
    // Plugins run on their own thread from here on: the door never waits for them.
    gw.spawn_policy_worker()?;
    // So does the face matcher (≈ 35 ms a frame).
    gw.spawn_face_thread()?;
    // With [fleet]: the MQTT link and the deployment agent run beside this loop, which
    // only ever hands them work (never waits on the network).
    let fleet = match gw.config().fleet.as_ref().map(|f| f.broker.clone()) {
        None => None,
        Some(b) => {
            let f = crate::fleet::Fleet::start(&gw, &opts.db, opts.cache_dir.clone())?;
            writeln!(out, "gate: fleet link to {}:{} as {}/{}", b.host, b.port, site, gateway)?;
            Some(f)
        }
    };
    let wall0 = Instant::now();
    let speed = opts.speed.max(0.001);
    let inputs = &opts.trace.inputs;
    let last_input = inputs.last().map_or(start, |(a, _)| start + *a as i64);
    let drain_until = if opts.hold { i64::MAX } else { last_input + DRAIN_MS };
    let mut next = 0usize;
    let mut vnow = start;
    loop {
        let next_input = inputs.get(next).map(|(a, _)| start + *a as i64);
        // Virtual time follows the wall clock, but never passes the next input:
        // the trace says when the hardware saw it.
        let wall_v = start + (wall0.elapsed().as_secs_f64() * 1000.0 * speed) as i64;
        vnow = vnow.max(wall_v.min(next_input.unwrap_or(i64::MAX)).min(drain_until));
        gw.clock().set_ms(vnow);
        let mut recs = gw.advance(vnow)?;
        recs.extend(gw.poll_faces()?);
        recs.extend(gw.poll_policy()?);
        if let Some(f) = &fleet {
            f.after(&recs);
            recs.extend(f.poll_commands(&mut gw)?);
        }
        print(recs, out, &mut summary, &clock)?;
        if let Some(due) = next_input.filter(|d| *d <= vnow) {
            let recs = gw.handle(due, &inputs[next].1, None)?;
            if let Some(f) = &fleet {
                f.after(&recs);
            }
            print(recs, out, &mut summary, &clock)?;
            next += 1;
            continue;
        }
        let timer = gw.next_deadline().filter(|t| *t <= drain_until);
        if next_input.is_none() && timer.is_none() && gw.policy_in_flight() == 0 && gw.faces_in_flight() == 0 && !opts.hold {
            break;
        }
        // Sleep until the next input or timer is due, waking early when a plugin finishes.
        let wake = [next_input, timer].into_iter().flatten().min().unwrap_or(vnow + 50);
        let wall_at = Duration::from_secs_f64(((wake - start).max(0) as f64) / 1000.0 / speed);
        let cap = if gw.faces_in_flight() > 0 { Duration::from_millis(2) } else { Duration::from_millis(50) };
        let wait = wall_at.saturating_sub(wall0.elapsed()).max(Duration::from_micros(200)).min(cap);
        gw.wait_policy(wait);
    }
    if let Some(f) = fleet {
        // Give the broker a moment to take what is left; the rest waits in the outbox.
        f.shutdown(Duration::from_secs(3));
    }
    summary.logged = gw.log().count()?;
    Ok(summary)
}

/// How long after the last input the run keeps serving door timers.
const DRAIN_MS: i64 = 120_000;

/// Prints records as the demo shows them and counts them for the summary.
fn print(recs: Vec<(i64, Record)>, out: &mut dyn Write, summary: &mut Summary, clock: &Clock) -> std::io::Result<()> {
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
        writeln!(out, "{}  {r}", local_hms(clock, t))?;
    }
    out.flush()
}
