//! The one loop that drives the gateway, in every mode.
//!
//! [`Gateway`] is the core: it takes an input (or a timer tick, a plugin result, a face
//! result, an operator command) and returns what it logged and what the door does. This
//! loop is the only place where gateway time advances and where inputs reach the core.
//! Replay, `gate record`, the demo and the service on a real gate all run it; they differ
//! only in the [`Source`] of inputs and the [`Pace`] of time:
//!
//! - [`Pace::Virtual`]: time jumps to the next thing due and nothing waits (replay,
//!   recordings of simulated pins): the same trace always gives the same output.
//! - [`Pace::Wall`]: time follows the wall clock; the loop sleeps on one [`Bell`] that the
//!   policy thread, the face thread, the fleet link, GPIO edges, the camera and signals
//!   ring, with a timeout at the next door timer or driver deadline. Nothing is polled.

pub mod bell;
pub mod console;
pub mod source;
pub mod systemd;

pub use bell::Bell;
pub use source::{Arrival, PinTrace, Source, TraceSource};

use crate::event::Input;
use crate::fleet::Fleet;
use crate::gateway::{Gateway, GatewayError, Timed};
use crate::hardware::HardwareError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the loop watches for a plugin's answer before it sleeps (a plugin decides in
/// about a microsecond; a sleep and a wake-up of the loop's thread cost tens under load).
const POLICY_SPIN: Duration = Duration::from_micros(200);

/// How gateway time moves.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Time jumps to whatever is due next; nothing waits (deterministic replay).
    Virtual,
    /// Gateway time follows the wall clock from `start_ms` (Unix ms), `speed` times as fast.
    Wall { start_ms: i64, speed: f64, wall0: Instant },
}

impl Pace {
    /// Real time from `start_ms`, starting now.
    pub fn wall(start_ms: i64, speed: f64) -> Pace {
        Pace::Wall { start_ms, speed, wall0: Instant::now() }
    }
}

/// One thing that happened: the input the gateway took (None for a timer tick, a plugin or
/// face result, a command, the stop), when (Unix ms), and the records it produced.
#[derive(Debug)]
pub struct Step {
    pub at_ms: i64,
    pub input: Option<Input>,
    pub records: Vec<Timed>,
}

/// How a run ends.
#[derive(Debug, Clone)]
pub struct Options {
    /// After a finite source's last input, door timers keep running this long.
    pub drain_ms: i64,
    /// Keep serving after a finite source ends (door timers, fleet jobs and commands).
    pub hold: bool,
    /// Stop after this much wall time.
    pub max_wall: Option<Duration>,
    /// Longest wait for decisions in flight at a stop.
    pub finish_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { drain_ms: 0, hold: false, max_wall: None, finish_ms: 500 }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The source is over and every door timer within the drain has run.
    SourceDone,
    /// SIGTERM / SIGINT, or a caller's stop.
    Stopped,
    /// `max_wall` passed.
    TimeUp,
}

/// A failure that stops the loop: the gateway could not log, or a driver failed.
pub type ServiceError = HardwareError;

/// What reaches the loop from outside it: stop and reload requests, and the watchdog.
#[derive(Clone, Default)]
pub struct Control {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    bell: Bell,
}

impl Control {
    /// A control whose requests ring `bell`.
    pub fn new(bell: Bell) -> Control {
        Control { stop: Arc::default(), reload: Arc::default(), bell }
    }

    /// Asks the loop to stop cleanly (finish decisions in flight, relays safe, log flushed).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.bell.ring();
    }

    /// Asks the loop to check its configuration file again (SIGHUP).
    pub fn request_reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
        self.bell.ring();
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Takes a pending reload request.
    pub fn take_reload(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }

    /// The bell this control rings.
    pub fn bell(&self) -> &Bell {
        &self.bell
    }
}

/// Hooks the loop calls on every turn (the systemd watchdog lives here, so only a
/// turning door loop keeps the service alive) and on a reload request.
pub trait Hooks {
    /// Called on every turn of the loop, from the loop's own thread.
    fn tick(&mut self) {}
    /// Longest the loop may sleep (e.g. half the watchdog interval).
    fn max_sleep(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// A reload was asked for.
    fn reload(&mut self) {}
}

/// No hooks (replay, tests).
pub struct NoHooks;
impl Hooks for NoHooks {}

/// What one turn of the loop produced, held until its records are durable: relays, the
/// fleet link and the sink see a turn only after its one commit (group commit).
struct Turn {
    steps: Vec<Step>,
    /// When the last input reached the gateway (the drain counts from it).
    last_input: i64,
    /// The latest time an input was handled at (the clock never goes back).
    last_handled: i64,
}

impl Turn {
    fn push(&mut self, at_ms: i64, input: Option<Input>, records: Vec<Timed>) {
        if !records.is_empty() || input.is_some() {
            self.steps.push(Step { at_ms, input, records });
        }
    }

    /// Commits the turn's records, then lets relays follow them, tells the link, and
    /// hands each step to the sink, in the order they happened.
    fn finish(&mut self, gw: &mut Gateway, source: &mut dyn Source, fleet: Option<&Fleet>, sink: &mut dyn FnMut(Step) -> Result<(), ServiceError>) -> Result<(), ServiceError> {
        gw.end_turn()?;
        for step in self.steps.drain(..) {
            deliver(step.at_ms, step.input, step.records, source, fleet, sink)?;
        }
        Ok(())
    }
}

/// Hands every input due by `now_us` to the gateway, in order.
fn take_arrivals(gw: &mut Gateway, source: &mut dyn Source, now_us: i64, now_ms: i64, wall: bool, turn: &mut Turn) -> Result<(), ServiceError> {
    let mut arrivals = Vec::new();
    source.take(now_us, &mut arrivals)?;
    for a in arrivals {
        // In service an edge may be stamped a little before the last thing handled:
        // the gateway's clock never goes back. Replay keeps every recorded time.
        let at = if wall { a.at.max(turn.last_handled).max(now_ms) } else { a.at };
        gw.clock().set_ms(at);
        let recs = gw.handle(at, &a.input, a.captured)?;
        turn.last_input = at;
        turn.last_handled = at;
        turn.push(at, Some(a.input), recs);
    }
    Ok(())
}

/// Drives `gw` from `source` until the source is over (and the drain has run), `max_wall`
/// passes, or a stop is requested; hands every step to `sink` as it happens.
#[allow(clippy::too_many_arguments)]
pub fn run(
    gw: &mut Gateway,
    source: &mut dyn Source,
    pace: Pace,
    opts: &Options,
    ctl: &Control,
    fleet: Option<&Fleet>,
    hooks: &mut dyn Hooks,
    sink: &mut dyn FnMut(Step) -> Result<(), ServiceError>,
) -> Result<Ended, ServiceError> {
    let start_ms = gw.clock().now_ms();
    let mut now_us = start_ms.saturating_mul(1_000);
    let wall0 = Instant::now();
    let mut turn = Turn { steps: Vec::new(), last_input: start_ms, last_handled: i64::MIN };
    loop {
        hooks.tick();
        if ctl.stopping() {
            return Ok(Ended::Stopped);
        }
        if ctl.take_reload() {
            hooks.reload();
        }
        if opts.max_wall.is_some_and(|d| wall0.elapsed() >= d) {
            return Ok(Ended::TimeUp);
        }
        let horizon = (source.exhausted() && !opts.hold).then(|| turn.last_input.saturating_add(opts.drain_ms));
        let timer_ms = gw.next_deadline().filter(|t| horizon.is_none_or(|h| *t <= h));
        let timer_us = timer_ms.map(|t| t.saturating_mul(1_000));
        let (t_src, wall) = match pace {
            Pace::Virtual => (source.next_us(now_us), false),
            Pace::Wall { start_ms: s, speed, wall0 } => {
                let wall_us = s.saturating_mul(1_000).saturating_add((wall0.elapsed().as_secs_f64() * 1e6 * speed) as i64);
                let t_src = source.next_us(wall_us.max(now_us));
                // Gateway time follows the wall clock, but never passes the next input a
                // trace holds (the trace says when the hardware saw it) or the drain's end.
                let cap = [t_src, horizon.map(|h| h.saturating_mul(1_000))].into_iter().flatten().min().unwrap_or(i64::MAX);
                now_us = now_us.max(wall_us.min(cap));
                (t_src, true)
            }
        };
        if !wall {
            match [t_src, timer_us].into_iter().flatten().min() {
                Some(due) => now_us = now_us.max(due),
                None if gw.policy_in_flight() == 0 && gw.faces_in_flight() == 0 => return Ok(Ended::SourceDone),
                None => {}
            }
        }
        let now_ms = now_us.div_euclid(1_000);
        gw.clock().set_ms(now_ms);

        // Door timers first. In service, the inputs that arrived come next, before the work
        // other threads finished: an exit button or a fire alarm is acted on before a plugin's
        // answer even when the loop ran late. Replay keeps its order: timers, work, inputs.
        // All of it is one transaction, committed before any relay follows it.
        gw.begin_turn()?;
        turn.push(now_ms, None, gw.advance(now_ms)?);
        let due = t_src.is_some_and(|t| t <= now_us);
        if due && wall {
            take_arrivals(gw, source, now_us, now_ms, wall, &mut turn)?;
        }
        let mut recs = gw.poll_faces()?;
        recs.extend(gw.poll_policy()?);
        turn.push(now_ms, None, recs);
        turn.finish(gw, source, fleet, sink)?;
        // Operator commands are answered "done" only once their records are durable, so
        // they commit one by one, outside the turn.
        if let Some(f) = fleet {
            let recs = f.poll_commands(gw)?;
            deliver(now_ms, None, recs, source, None, sink)?;
        }
        gw.housekeeping(now_ms);
        if let Some(cp) = gw.take_new_checkpoint() {
            if let (Some(f), Ok(json)) = (fleet, serde_json::to_string(&cp)) {
                f.handle().publish_audit_checkpoint(json);
            }
        }
        if let Some(f) = fleet {
            f.monthly_report(now_ms);
        }
        if due && !wall {
            gw.begin_turn()?;
            take_arrivals(gw, source, now_us, now_ms, wall, &mut turn)?;
            turn.finish(gw, source, fleet, sink)?;
            continue;
        }
        let idle = gw.policy_in_flight() == 0 && gw.faces_in_flight() == 0;
        if source.exhausted() && timer_ms.is_none() && idle && !opts.hold {
            return Ok(Ended::SourceDone);
        }
        if !wall {
            continue;
        }
        let Pace::Wall { start_ms: s, speed, wall0 } = pace else { continue };
        // Sleep until the next input, timer or drain end is due, or the bell rings.
        let wake_us = [t_src, timer_us, horizon.map(|h| h.saturating_mul(1_000))].into_iter().flatten().min();
        let mut wait = hooks.max_sleep();
        if let Some(w) = wake_us {
            let at = Duration::try_from_secs_f64((w.saturating_sub(s.saturating_mul(1_000)).max(0) as f64) / 1e6 / speed).unwrap_or(Duration::MAX);
            wait = wait.min(at.saturating_sub(wall0.elapsed()));
        }
        if let Some(d) = opts.max_wall {
            wait = wait.min(d.saturating_sub(wall0.elapsed()));
        }
        // A read waiting for a slow plugin is decided by the fallback once its wait runs out.
        if let Some(d) = gw.policy_wake() {
            wait = wait.min(d);
        }
        if !wait.is_zero() {
            if gw.policy_in_flight() > 0 {
                // A decision is on a plugin's thread: it usually answers within microseconds.
                ctl.bell().wait_spinning(wait, POLICY_SPIN);
            } else {
                ctl.bell().wait(wait);
            }
        }
    }
}

/// A clean stop: no more inputs, decisions in flight finished (for at most
/// `opts.finish_ms`), every relay in its safe state. Everything is logged before it returns.
pub fn stop(gw: &mut Gateway, source: &mut dyn Source, opts: &Options, ctl: &Control, fleet: Option<&Fleet>, sink: &mut dyn FnMut(Step) -> Result<(), ServiceError>) -> Result<(), ServiceError> {
    // After a failure inside a turn, that turn was never acted on: drop it, then log the stop.
    gw.abort_turn();
    source.close();
    let until = Instant::now() + Duration::from_millis(opts.finish_ms);
    loop {
        let now = gw.clock().now_ms();
        let mut recs = gw.poll_faces()?;
        recs.extend(gw.poll_policy()?);
        deliver(now, None, recs, source, fleet, sink)?;
        if (gw.policy_in_flight() == 0 && gw.faces_in_flight() == 0) || Instant::now() >= until {
            break;
        }
        ctl.bell().wait(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(20)));
    }
    let now = gw.clock().now_ms();
    let recs = gw.stop_doors(now)?;
    deliver(now, None, recs, source, fleet, sink)
}

/// Relays follow the records, the fleet link learns of new rows, the sink gets the step.
fn deliver(at_ms: i64, input: Option<Input>, records: Vec<Timed>, source: &mut dyn Source, fleet: Option<&Fleet>, sink: &mut dyn FnMut(Step) -> Result<(), ServiceError>) -> Result<(), ServiceError> {
    if records.is_empty() && input.is_none() {
        return Ok(());
    }
    source.follow(&records)?;
    if let Some(f) = fleet {
        f.after(&records);
    }
    sink(Step { at_ms, input, records })
}

impl From<crate::store::StoreError> for HardwareError {
    fn from(e: crate::store::StoreError) -> Self {
        HardwareError::Gateway(GatewayError::Store(e))
    }
}
