//! Where the service loop's inputs come from. Every source answers the same two questions:
//! when does it next have something (if it knows), and what is due now. The loop does the
//! rest, the same way for every source: a recorded trace, a pin-level trace on simulated
//! pins, or the GPIO lines and camera of a real gate.

use crate::event::Input;
use crate::gateway::Timed;
use crate::hardware::{to_input, Hardware, HardwareError};
use crate::trace::Trace;
use gate_hw::config::HardwareConfig;
use gate_hw::runtime::SimBackend;
use gate_hw::sim::{PinPlayer, SimLines};
use gate_hw::PinEdge;
use std::collections::VecDeque;

/// An input and the gateway time (Unix ms) it is taken at.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: i64,
    pub input: Input,
    /// When the device captured it, if it says (stale reads are refused).
    pub captured: Option<i64>,
}

/// A source of gateway inputs. Times are gateway µs (Unix µs), so pin edges keep their
/// resolution; the gateway itself works in ms.
pub trait Source {
    /// When the source next has something to do, if it knows: the next recorded input, or a
    /// driver deadline (debounce, frame end, PIN timeout). A live source with inputs already
    /// waiting answers `now_us`.
    fn next_us(&mut self, now_us: i64) -> Option<i64>;
    /// Takes one batch of what is due at or before `now_us`, in time order.
    fn take(&mut self, now_us: i64, out: &mut Vec<Arrival>) -> Result<(), HardwareError>;
    /// Whether nothing will ever come again (a trace played to its end).
    fn exhausted(&self) -> bool;
    /// Moves the relays as the door controller's records say (no-op without relays).
    fn follow(&mut self, _records: &[Timed]) -> Result<(), HardwareError> {
        Ok(())
    }
    /// Stops taking inputs (a clean stop): later calls to `take` return nothing.
    fn close(&mut self) {}
}

/// An event-level trace: each input at its recorded time.
pub struct TraceSource {
    start_ms: i64,
    inputs: VecDeque<(u64, Input)>,
}

impl TraceSource {
    /// Plays `trace` from its start.
    pub fn new(trace: &Trace) -> TraceSource {
        TraceSource { start_ms: trace.start_ms, inputs: trace.inputs.iter().cloned().collect() }
    }

    fn at_ms(&self, at: u64) -> i64 {
        self.start_ms.saturating_add(i64::try_from(at).unwrap_or(i64::MAX))
    }
}

impl Source for TraceSource {
    fn next_us(&mut self, _now_us: i64) -> Option<i64> {
        self.inputs.front().map(|(at, _)| self.at_ms(*at).saturating_mul(1_000))
    }

    fn take(&mut self, now_us: i64, out: &mut Vec<Arrival>) -> Result<(), HardwareError> {
        if let Some((at, input)) = self.inputs.front().filter(|(at, _)| self.at_ms(*at).saturating_mul(1_000) <= now_us).cloned() {
            self.inputs.pop_front();
            let captured = input.captured_at().map(|c| self.at_ms(c));
            out.push(Arrival { at: self.at_ms(at), input, captured });
        }
        Ok(())
    }

    fn exhausted(&self) -> bool {
        self.inputs.is_empty()
    }

    fn close(&mut self) {
        self.inputs.clear();
    }
}

/// A pin-level trace through the site's `[hardware]` wiring on simulated pins and the real
/// drivers: `line` inputs drive the wires, every other input (face results, camera frames,
/// QR, ...) goes straight to the gateway, and decoded events arrive at their decoded time.
pub struct PinTrace {
    hw: Hardware<SimBackend>,
    lines: SimLines,
    player: PinPlayer,
    start_ms: i64,
    events: VecDeque<(u64, Input)>,
    done: bool,
}

impl PinTrace {
    /// Wires `trace` into the drivers of `hw_cfg` (an unwired line is an error naming it).
    pub fn open(hw_cfg: &HardwareConfig, trace: &Trace) -> Result<PinTrace, HardwareError> {
        Self::from_inputs(hw_cfg, trace.start_ms, &trace.inputs)
    }

    /// As [`PinTrace::open`], for inputs that start at `start_ms`.
    pub fn from_inputs(hw_cfg: &HardwareConfig, start_ms: i64, inputs: &[(u64, Input)]) -> Result<PinTrace, HardwareError> {
        let (edges, events) = split_lines(inputs);
        let mut backend = SimBackend::default();
        let hw = Hardware::open(hw_cfg, &mut backend, start_ms)?;
        if let Some(e) = edges.iter().find(|e| backend.lines.get(&e.line).is_none()) {
            let known = backend.lines.names().map(str::to_string).collect();
            return Err(HardwareError::UnwiredLine { line: e.line.clone(), at_us: e.at_us, known });
        }
        Ok(PinTrace { hw, lines: backend.lines, player: PinPlayer::new(edges), start_ms, events: events.into(), done: false })
    }

    fn hw_next(&mut self) -> Option<i64> {
        let us = self.player.next_time(self.hw.runtime_mut())?;
        Some(self.start_ms.saturating_mul(1_000).saturating_add(i64::try_from(us).unwrap_or(i64::MAX)))
    }

    fn event_next(&self) -> Option<i64> {
        self.events.front().map(|(at, _)| self.start_ms.saturating_add(i64::try_from(*at).unwrap_or(i64::MAX)).saturating_mul(1_000))
    }
}

impl Source for PinTrace {
    fn next_us(&mut self, _now_us: i64) -> Option<i64> {
        if self.done {
            return None;
        }
        [self.hw_next(), self.event_next()].into_iter().flatten().min()
    }

    fn take(&mut self, now_us: i64, out: &mut Vec<Arrival>) -> Result<(), HardwareError> {
        if self.done {
            return Ok(());
        }
        let (t_hw, t_ev) = (self.hw_next(), self.event_next());
        let Some(t_in) = [t_hw, t_ev].into_iter().flatten().min().filter(|t| *t <= now_us) else { return Ok(()) };
        // An event-level input goes before the drivers' step at the same instant.
        if t_ev == Some(t_in) {
            if let Some((at, input)) = self.events.pop_front() {
                let at_ms = self.start_ms.saturating_add(i64::try_from(at).unwrap_or(i64::MAX));
                let captured = input.captured_at().map(|c| self.start_ms.saturating_add(i64::try_from(c).unwrap_or(i64::MAX)));
                out.push(Arrival { at: at_ms, input, captured });
            }
            return Ok(());
        }
        let Some(batch) = self.player.step(self.hw.runtime_mut(), &self.lines)? else {
            self.done = self.events.is_empty();
            return Ok(());
        };
        for ev in batch {
            if let Some(input) = to_input(&ev) {
                out.push(Arrival { at: self.hw.gateway_ms(ev.at_us()), input, captured: None });
            }
        }
        Ok(())
    }

    fn exhausted(&self) -> bool {
        // Decoding is over when neither an edge nor a driver deadline is left.
        self.done || (self.events.is_empty() && self.player.next_time(self.hw.runtime()).is_none())
    }

    fn follow(&mut self, records: &[Timed]) -> Result<(), HardwareError> {
        self.hw.follow(records)
    }

    fn close(&mut self) {
        self.done = true;
        self.events.clear();
    }
}

/// Splits a trace's inputs into the pin edges of its `line` inputs and everything else.
pub fn split_lines(inputs: &[(u64, Input)]) -> (Vec<PinEdge>, Vec<(u64, Input)>) {
    let mut edges = Vec::new();
    let mut events = Vec::new();
    for (at, input) in inputs {
        match input {
            Input::Line { line, level, at_us } => edges.push(PinEdge::new(*at_us, line.clone(), *level)),
            other => events.push((*at, other.clone())),
        }
    }
    (edges, events)
}

/// The GPIO lines (and the camera) of a real gate. Edges and camera results arrive from
/// their own threads, which ring the loop's bell; debounce and frame deadlines come from
/// the drivers, so nothing is polled on a timer.
#[cfg(target_os = "linux")]
pub struct LiveHardware {
    hw: Hardware<gate_hw::linux::LinuxBackend>,
    backend: gate_hw::linux::LinuxBackend,
    edges: Option<std::sync::mpsc::Receiver<PinEdge>>,
    camera: Option<std::sync::mpsc::Receiver<Input>>,
    waiting: VecDeque<PinEdge>,
    faces: VecDeque<Input>,
    /// Set by the edge threads: a level changed, so the inputs must be sampled now.
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
    camera_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    start_ms: i64,
    closed: bool,
}

#[cfg(target_os = "linux")]
impl LiveHardware {
    /// Opens every configured line (a missing device is an error naming it) and, with face
    /// recognition on, the camera of `[hardware.camera]`; every edge and every camera
    /// result rings `bell`. Hardware time 0 is gateway time `start_ms`.
    pub fn open(hw_cfg: &HardwareConfig, face: Option<&crate::config::FaceBands>, start_ms: i64, bell: &super::Bell) -> Result<LiveHardware, HardwareError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dirty = Arc::new(AtomicBool::new(true));
        let (flag, wake) = (Arc::clone(&dirty), bell.waker());
        let waker: gate_hw::linux::Waker = Arc::new(move || {
            flag.store(true, Ordering::SeqCst);
            wake();
        });
        let mut backend = gate_hw::linux::LinuxBackend::with_waker(waker);
        let hw = Hardware::open(hw_cfg, &mut backend, start_ms)?;
        let edges = backend.take_edges();
        let camera_stop = Arc::new(AtomicBool::new(false));
        let camera = match (&hw_cfg.camera, face) {
            (Some(cam), Some(bands)) => Some(crate::camera::start_camera(cam, bands, Arc::clone(&camera_stop), bell.waker())?),
            (Some(cam), None) => {
                tracing::warn!(device = %cam.device, "camera not started: face recognition is off (card, PIN and NFC keep working)");
                None
            }
            (None, _) => None,
        };
        Ok(LiveHardware { hw, backend, edges, camera, camera_stop, waiting: VecDeque::new(), faces: VecDeque::new(), dirty, start_ms, closed: false })
    }

    fn drain(&mut self) {
        if let Some(rx) = &self.edges {
            self.waiting.extend(rx.try_iter());
        }
        if let Some(rx) = &self.camera {
            self.faces.extend(rx.try_iter());
        }
    }

    fn to_gateway_us(&self, hw_us: u64) -> i64 {
        self.start_ms.saturating_mul(1_000).saturating_add(i64::try_from(hw_us).unwrap_or(i64::MAX))
    }
}

#[cfg(target_os = "linux")]
impl Source for LiveHardware {
    fn next_us(&mut self, now_us: i64) -> Option<i64> {
        if self.closed {
            return None;
        }
        self.drain();
        // An edge arrived, or an input line's level changed under the debouncer: look now.
        if !self.waiting.is_empty() || !self.faces.is_empty() || self.dirty.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(now_us);
        }
        self.hw.runtime().next_deadline().map(|us| self.to_gateway_us(us))
    }

    fn take(&mut self, now_us: i64, out: &mut Vec<Arrival>) -> Result<(), HardwareError> {
        if self.closed {
            return Ok(());
        }
        self.dirty.store(false, std::sync::atomic::Ordering::SeqCst);
        self.drain();
        // Never sample before the instant the loop asked about (its clock and the backend's
        // are both monotonic, started a moment apart).
        let hw_now = self.backend.now_us().max(u64::try_from(now_us.saturating_sub(self.start_ms.saturating_mul(1_000))).unwrap_or(0));
        let batch: Vec<PinEdge> = self.waiting.drain(..).collect();
        let mut events = self.hw.runtime_mut().feed_edges(&batch)?;
        events.extend(self.hw.runtime_mut().poll(hw_now)?);
        events.sort_by_key(gate_hw::HwEvent::at_us);
        for ev in events {
            if let Some(input) = to_input(&ev) {
                out.push(Arrival { at: self.hw.gateway_ms(ev.at_us()), input, captured: None });
            }
        }
        let now_ms = now_us / 1_000;
        for input in self.faces.drain(..) {
            out.push(Arrival { at: now_ms, input, captured: None });
        }
        Ok(())
    }

    fn exhausted(&self) -> bool {
        self.closed
    }

    fn follow(&mut self, records: &[Timed]) -> Result<(), HardwareError> {
        self.hw.follow(records)
    }

    fn close(&mut self) {
        self.closed = true;
        self.edges = None;
        self.camera = None;
        self.camera_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
