//! `gate run`: the gateway in service. It serves the GPIO lines and camera of the site's
//! `[hardware]` (the product on a gate), or a recorded trace (`--trace`, the demo) or a
//! pin-level trace on simulated pins (`--simulate`) in real time. Every mode is the same
//! service: durable event log, policy thread, face thread, the fleet link when `[fleet]`
//! is set, systemd readiness and watchdog, a clean stop on SIGTERM, and optionally a
//! recording of what happened (`--record`).

use crate::clock::{parse_offset, Clock};
use crate::config::SiteConfig;
use crate::gateway::Gateway;
use crate::plugin::{ExecMode, Runtime, Slot};
use crate::record::{RecordTo, Recorder};
use crate::service::console::{Console, Format, Summary};
use crate::service::systemd::{handle_signals, Notifier, Watchdog};
use crate::service::{self, Bell, Control, Ended, Options, Pace, PinTrace, Source, TraceSource};
use crate::store::EventLog;
use crate::trace::Trace;
use anyhow::Context;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where `gate run` takes its inputs from.
pub enum Inputs {
    /// The GPIO lines and camera of `[hardware]` (`backend = "linux"`), at wall time.
    Hardware,
    /// A trace's inputs at their recorded times (scaled by the speed); a trace with
    /// pin-level `line` inputs runs through the `[hardware]` wiring on simulated pins.
    Trace(Trace),
}

/// Options of `gate run`.
pub struct RunOptions {
    pub inputs: Inputs,
    /// Playback speed of a trace: 1.0 is real time (hardware is always real time).
    pub speed: f64,
    pub db: PathBuf,
    pub cache_dir: Option<PathBuf>,
    /// Keep serving (door timers, fleet jobs and commands) after a trace ends, until stopped.
    pub hold: bool,
    /// Stop after this long (otherwise at the end of a trace, or at SIGTERM / SIGINT).
    pub duration: Option<Duration>,
    /// Also write what happened as a replayable trace.
    pub record: Option<RecordTo>,
    /// Text lines, or JSON objects for log collectors.
    pub format: Format,
}

/// How long after a trace's last input the run keeps serving door timers.
const DRAIN_MS: i64 = 120_000;

/// Longest a clean stop waits for the broker to take the last events (the rest stay in
/// the outbox for the next start): the whole stop stays within systemd's 2 s budget.
const STOP_PUBLISH: Duration = Duration::from_millis(900);

/// Serves until the trace ends, `duration` passes, or SIGTERM / SIGINT; then stops cleanly.
pub fn run(cfg: SiteConfig, opts: RunOptions, out: &mut dyn Write) -> anyhow::Result<Summary> {
    // With [fleet]: serve the plugin versions deployed before this start.
    let cfg = if cfg.fleet.is_some() { crate::fleet::with_deployed(cfg, &crate::fleet::fleet_dir(&opts.db)) } else { cfg };
    let offset = parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let (start, speed) = match &opts.inputs {
        Inputs::Trace(t) => (t.start_ms, opts.speed),
        Inputs::Hardware => (wall_now_ms(), 1.0),
    };
    let clock = Clock::new(start, offset);
    let rt = Runtime::new(ExecMode::Live, opts.cache_dir.clone())?;
    // Serving a door (the hardware, or simulated pins), a plugin with no precompiled entry in
    // the cache (first start, new engine, cache lost) is compiled on a helper thread once the
    // doors are served: card and PIN never wait for a compile; the fallback serves its doors
    // until it is swapped in. An event-level trace (the demo) is a recording played against
    // the clock from its first instant: its plugins are compiled first, so what it shows does
    // not depend on how fast this machine compiles.
    let serves_doors = match &opts.inputs {
        Inputs::Hardware => true,
        Inputs::Trace(t) => t.has_pins(),
    };
    let deferred: BTreeSet<String> = if serves_doors { cfg.plugins.iter().filter(|(_, pc)| !rt.is_cached(&pc.path)).map(|(n, _)| n.clone()).collect() } else { BTreeSet::new() };
    let log = EventLog::open(&opts.db, &cfg.site.gateway)?;
    let (site, gateway, doors) = (cfg.site.id.clone(), cfg.site.gateway.clone(), cfg.doors.len());
    let (mut gw, problems) = Gateway::new_deferring(cfg, clock.clone(), rt, log, &deferred).map_err(anyhow::Error::msg)?;
    // The audit trail beside the event log: every change of access rights from now on, and
    // the [face] configuration when it differs from the last start's.
    let mut audit = crate::audit::AuditLog::open(&crate::audit::AuditLog::path_beside(&opts.db))?;
    crate::audit::note_face_config(&mut audit, start, &format!("{:?}", gw.config().face))?;
    // The device key (made on the first start, never leaving the gateway) signs the audit
    // chain's checkpoints as it signs what the fleet link publishes.
    let (device, created) = crate::fleet::device_key(&opts.db).map_err(|e| anyhow::anyhow!("{e}"))?;
    if created {
        audit.append(start, "host", crate::audit::Action::DeviceKeyCreated, "device-key", serde_json::json!({"public": device.public_b64()}))?;
    }
    gw.set_audit(audit, Some(device.signing_key().clone()));
    let mut console = Console::new(out, clock.clone(), opts.format);
    console.note(&format!("site {site}, gateway {gateway}, {doors} doors, event log {}", opts.db.display()))?;
    if let Some(aside) = gw.log().recovered_from().map(Path::to_path_buf) {
        console.note(&format!("WARNING the event log failed its integrity check: it was moved aside to {} and a new log started", aside.display()))?;
        if let Some(a) = gw.audit_mut() {
            a.append(start, "host", crate::audit::Action::EventLogRecovered, "event-log", serde_json::json!({"moved_to": aside.display().to_string()}))?;
        }
    }
    for p in &problems {
        console.note(&format!("WARNING {p} (its doors are served by the fallback policy)"))?;
    }
    let face_on = gw.face().is_on();
    match gw.face().off_reason() {
        None => console.note(&format!("face recognition on, {} enrolled template(s)", gw.face().enrolled()))?,
        Some(why) if gw.config().face.configured() => console.note(&format!("WARNING face recognition OFF: {why} (card, PIN and NFC keep working)"))?,
        Some(_) => {}
    }

    let bell = Bell::new();
    let ctl = Control::new(bell.clone());
    handle_signals(ctl.clone()).context("installing the SIGTERM / SIGINT / SIGHUP handlers")?;
    // Operator door modes still in force come back before the first input.
    let restored = gw.restore_door_modes(start)?;
    console.records(&restored)?;
    // Calls the last run left ringing end: a restart leaves nothing half-open.
    let ended = gw.end_calls_cut_by_restart(start)?;
    console.records(&ended)?;
    // Plugins and the face matcher run on their own threads: the door never waits for them.
    gw.spawn_policy_worker(bell.clone())?;
    gw.spawn_face_thread(bell.clone())?;
    if !deferred.is_empty() {
        let names = deferred.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        console.note(&format!("compiling {names} in the background (no precompiled copy in the plugin cache); the fallback policy serves their doors until then"))?;
        compile_in_background(&gw, &deferred, &clock)?;
    }

    let hw_cfg = gw.config().hardware.clone();
    let mut source: Box<dyn Source> = match &opts.inputs {
        Inputs::Trace(t) if t.has_pins() => {
            let Some(hw) = &hw_cfg else {
                anyhow::bail!("the trace has pin-level `line` inputs but {} has no [hardware] section to wire them to", gw.config().path.display());
            };
            console.note(&format!("serving pin-level trace \"{}\" on simulated pins at {speed}x", describe(t)))?;
            Box::new(PinTrace::open(hw, t)?)
        }
        Inputs::Trace(t) => {
            console.note(&format!("serving trace \"{}\" at {speed}x", describe(t)))?;
            Box::new(TraceSource::new(t))
        }
        Inputs::Hardware => {
            let Some(hw) = &hw_cfg else {
                anyhow::bail!("{}: no [hardware] section: pass --trace to serve a recorded trace instead", gw.config().path.display());
            };
            console.note("serving the gate's hardware")?;
            live_hardware(hw, gw.config(), face_on, start, &bell)?
        }
    };
    // With [fleet]: the MQTT link and the deployment agent run beside this loop, which
    // only ever hands them work (never waits on the network).
    let fleet = match gw.config().fleet.as_ref().map(|f| f.broker.clone()) {
        None => None,
        Some(b) => {
            let f = crate::fleet::Fleet::start(&gw, &opts.db, opts.cache_dir.clone(), bell.clone())?;
            console.note(&format!("fleet link to {}:{} as {site}/{gateway}", b.host, b.port))?;
            Some(f)
        }
    };
    let mut recorder = match &opts.record {
        Some(to) => {
            let (header_start, start_ms, what) = match &opts.inputs {
                Inputs::Trace(t) => (t.header.start.clone(), t.start_ms, format!("recorded by gate run from: {}", describe(t))),
                Inputs::Hardware => (crate::record::rfc3339_of(start, offset)?, start, "recorded by gate run on live hardware".to_string()),
            };
            Some(Recorder::create(to, gw.config(), &header_start, start_ms, what)?)
        }
        None => None,
    };

    let notifier = Notifier;
    let status = format!("serving {doors} doors of {site}/{gateway}");
    notifier.ready(&status);
    console.note(&format!("{status}\n"))?;
    // SIGHUP: a configuration that does not load (or names plugins that cannot be used) is
    // refused with its problems and the running one stays in force; a valid one is applied
    // by a clean stop and a restart of the same process on the same state.
    let restart = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (config_path, flag, stopper) = (gw.config().path.clone(), restart.clone(), ctl.clone());
    let mut watchdog = Watchdog::from_env(Box::new(move || match SiteConfig::load(&config_path).and_then(|c| c.check_component_sizes(&config_path).map(|_| c)) {
        Ok(_) => {
            tracing::warn!(config = %config_path.display(), "SIGHUP: the configuration is valid; restarting on it");
            Notifier.reloading();
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            stopper.request_stop();
        }
        Err(e) => tracing::error!(config = %config_path.display(), error = %e, "SIGHUP: the new configuration is invalid; keeping the running one"),
    }));

    let run_opts = Options { drain_ms: DRAIN_MS, hold: opts.hold, max_wall: opts.duration, ..Options::default() };
    let mut failed = None;
    let ended = {
        let mut sink = |step: service::Step| -> Result<(), service::ServiceError> {
            console.records(&step.records).map_err(|e| service::ServiceError::Setup(format!("writing the output: {e}")))?;
            if let Some(r) = recorder.as_mut() {
                r.step(&step).map_err(|e| service::ServiceError::Setup(e.to_string()))?;
            }
            Ok(())
        };
        let ended = service::run(&mut gw, source.as_mut(), Pace::wall(start, speed), &run_opts, &ctl, fleet.as_ref(), &mut watchdog, &mut sink);
        let ended = match ended {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e);
                Ended::Stopped
            }
        };
        notifier.stopping("stopping: finishing decisions in flight, relays to their safe state");
        // Even after a failure the relays go to their safe state if the log still takes it.
        if let Err(e) = service::stop(&mut gw, source.as_mut(), &run_opts, &ctl, fleet.as_ref(), &mut sink) {
            tracing::error!(error = %e, "the clean stop could not log every relay change");
        }
        ended
    };
    // A checkpoint at every stop, published so truncating the chain later is detectable.
    if let Some(cp) = gw.audit_checkpoint(gw.clock().now_ms()) {
        if let (Some(f), Ok(json)) = (fleet.as_ref(), serde_json::to_string(&cp)) {
            f.handle().publish_audit_checkpoint(json);
        }
    }
    if let Some(f) = fleet {
        let budget = if ended == Ended::SourceDone { Duration::from_secs(3) } else { STOP_PUBLISH };
        f.shutdown(budget);
    }
    if let Some(r) = recorder {
        let s = r.finish(gw.config())?;
        console.note(&format!("recorded {} inputs and {} outputs ({} decisions) to {}", s.inputs, s.outputs, s.decisions, s.path.display()))?;
        console.note(&format!("replay with: gate replay --config {} --subjects {} --trace {}", gw.config().path.display(), s.subjects.display(), s.path.display()))?;
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    let mut summary = console.summary.clone();
    summary.logged = gw.log().count()?;
    summary.restart = restart.load(std::sync::atomic::Ordering::SeqCst);
    Ok(summary)
}

/// Compiles and links the `deferred` plugins on a helper thread, then swaps each into the
/// policy thread (the path fleet deployments take), or tells it the plugin will not come.
fn compile_in_background(gw: &Gateway, deferred: &BTreeSet<String>, clock: &Clock) -> anyhow::Result<()> {
    let control = gw.plugin_control().context("the policy thread is not running")?;
    let mut work = Vec::new();
    for name in deferred {
        if let Some(pc) = gw.config().plugins.get(name) {
            work.push((pc.clone(), gw.log().kv_load(name)?));
        }
    }
    // Policy plugins first: they decide doors; integrations only hear about them.
    work.sort_by_key(|(pc, _)| pc.world != crate::config::World::Policy);
    let (limits, clock) = (gw.config().limits.clone(), clock.clone());
    std::thread::Builder::new()
        .name("gate-plugin-load".into())
        .spawn(move || {
            for (pc, kv) in work {
                let t = std::time::Instant::now();
                let rt = control.runtime();
                let slot = rt.load(&pc.path, &limits).and_then(|loaded| Slot::new(rt, &pc, &loaded, &limits, clock.clone(), kv)).map_err(|e| e.to_string());
                let swapped = slot.and_then(|s| control.swap(&pc.name, s, SWAP_WAIT).map(|_| ()));
                match swapped {
                    Ok(()) => tracing::info!(plugin = %pc.name, ms = t.elapsed().as_millis() as u64, "plugin compiled in the background and in service"),
                    Err(e) => {
                        tracing::error!(plugin = %pc.name, error = %e, "plugin not loaded; its doors stay with the fallback policy");
                        control.compile_failed(&pc.name, &e);
                    }
                }
            }
        })
        .context("starting the plugin compile thread")?;
    Ok(())
}

/// Longest a background-compiled plugin waits for the policy thread to take it.
const SWAP_WAIT: Duration = Duration::from_secs(30);

fn describe(t: &Trace) -> String {
    t.header.description.clone().unwrap_or_else(|| t.header.site.clone())
}

/// The current wall time in Unix ms.
fn wall_now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(target_os = "linux")]
fn live_hardware(hw: &gate_hw::HardwareConfig, cfg: &SiteConfig, face_on: bool, start: i64, bell: &Bell) -> anyhow::Result<Box<dyn Source>> {
    if hw.backend != gate_hw::config::Backend::Linux {
        anyhow::bail!("{}: [hardware] backend is \"simulated\": pass --trace PIN_TRACE to serve simulated pins, or set backend = \"linux\" to serve the GPIO lines", cfg.path.display());
    }
    let face = face_on.then_some(&cfg.face);
    Ok(Box::new(service::source::LiveHardware::open(hw, face, start, bell)?))
}

#[cfg(not(target_os = "linux"))]
fn live_hardware(_hw: &gate_hw::HardwareConfig, _cfg: &SiteConfig, _face_on: bool, _start: i64, _bell: &Bell) -> anyhow::Result<Box<dyn Source>> {
    anyhow::bail!("serving GPIO lines needs Linux; pass --trace to serve a recorded trace")
}
