//! Simulated pins implementing the embedded-hal traits, and the set of named lines a
//! pin-level trace drives, so the real drivers decode simulated hardware unchanged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin, StatefulOutputPin};

use crate::config::{HardwareConfig, ReaderConfig};
use crate::edge::PinEdge;
use crate::error::HwError;
use crate::event::HwEvent;
use crate::keys::Key;
use crate::runtime::{HwRuntime, SimBackend};
use crate::wiegand_gen::{card26, card34, frame_end_us, key4, key8, pulse_train, PulseTiming};

/// A simulated line: clones share one level, so the trace driver and the driver see the same wire.
#[derive(Debug, Clone)]
pub struct SimPin {
    level: Arc<AtomicBool>,
}

impl SimPin {
    /// A line resting at `high`.
    pub fn new(high: bool) -> Self {
        SimPin { level: Arc::new(AtomicBool::new(high)) }
    }

    /// Sets the electrical level (what a trace or a test does to the wire).
    pub fn set(&self, high: bool) {
        self.level.store(high, Ordering::SeqCst);
    }

    /// Current electrical level.
    pub fn get(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
}

impl ErrorType for SimPin {
    type Error = Infallible;
}

impl InputPin for SimPin {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.get())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.get())
    }
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.set(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Infallible> {
        self.set(true);
        Ok(())
    }
}

impl StatefulOutputPin for SimPin {
    fn is_set_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.get())
    }
    fn is_set_low(&mut self) -> Result<bool, Infallible> {
        Ok(!self.get())
    }
}

/// The named simulated lines of a gateway; cheap to clone (clones share the wires).
#[derive(Debug, Clone, Default)]
pub struct SimLines {
    lines: BTreeMap<String, SimPin>,
}

impl SimLines {
    /// No lines yet; the simulated backend adds one per configured signal.
    pub fn new() -> Self {
        SimLines::default()
    }

    /// The line of this name, created resting at `idle_high` if new.
    pub fn line(&mut self, name: &str, idle_high: bool) -> SimPin {
        self.lines.entry(name.to_owned()).or_insert_with(|| SimPin::new(idle_high)).clone()
    }

    /// An existing line.
    pub fn get(&self, name: &str) -> Option<&SimPin> {
        self.lines.get(name)
    }

    /// Applies one trace edge to its wire; an unknown line is an error naming it.
    pub fn apply(&self, edge: &PinEdge) -> Result<(), HwError> {
        let pin = self.lines.get(&edge.line).ok_or_else(|| HwError::Unknown { kind: "line", name: edge.line.clone() })?;
        pin.set(edge.level);
        Ok(())
    }

    /// Names of all lines.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.lines.keys().map(String::as_str)
    }
}

/// Plays a pin-level trace into simulated wires in virtual time: each step jumps to the next
/// edge or driver deadline, sets the wires and polls the runtime, exactly as live sampling would.
#[derive(Debug, Clone)]
pub struct PinPlayer {
    edges: Vec<PinEdge>,
    next: usize,
    now_us: u64,
}

impl PinPlayer {
    /// A player over these edges (sorted by time; equal times keep their order).
    pub fn new(mut edges: Vec<PinEdge>) -> Self {
        edges.sort_by_key(|e| e.at_us);
        PinPlayer { edges, next: 0, now_us: 0 }
    }

    /// Virtual time reached so far.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// When the next step happens: the next edge or the runtime's next deadline, whichever is first.
    pub fn next_time(&self, rt: &HwRuntime<SimBackend>) -> Option<u64> {
        let edge = self.edges.get(self.next).map(|e| e.at_us);
        [edge, rt.next_deadline()].into_iter().flatten().min().map(|t| t.max(self.now_us))
    }

    /// Advances to `next_time`: applies that instant's edges to the wires, then polls.
    /// Returns `None` when the trace is over and no driver is waiting for anything.
    pub fn step(&mut self, rt: &mut HwRuntime<SimBackend>, lines: &SimLines) -> Result<Option<Vec<HwEvent>>, HwError> {
        let Some(t) = self.next_time(rt) else { return Ok(None) };
        self.now_us = t;
        while let Some(e) = self.edges.get(self.next).filter(|e| e.at_us <= t) {
            lines.apply(e)?;
            self.next += 1;
        }
        rt.poll(t).map(Some)
    }

    /// Runs the whole trace and every deadline after it; returns all events in order.
    pub fn run_to_end(mut self, rt: &mut HwRuntime<SimBackend>, lines: &SimLines) -> Result<Vec<HwEvent>, HwError> {
        let mut out = Vec::new();
        while let Some(events) = self.step(rt, lines)? {
            out.extend(events);
        }
        Ok(out)
    }
}

/// Keypad burst format a simulated reader sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// 4 bits per key.
    Bits4,
    /// 8 bits per key (complement check nibble).
    Bits8,
}

/// Makes pin-level twins of event-level inputs: the edges that, through the real drivers,
/// decode to exactly that event at exactly that time.
#[derive(Debug, Clone)]
pub struct TwinBuilder<'a> {
    config: &'a HardwareConfig,
    /// Pulse shape of generated Wiegand frames.
    pub timing: PulseTiming,
    /// Keypad burst format.
    pub keys: KeyFormat,
    /// Time between two key presses of a PIN.
    pub key_interval_us: u64,
}

impl<'a> TwinBuilder<'a> {
    /// Twins for this hardware configuration: 50 µs / 2 ms pulses, 4-bit keys 300 ms apart.
    pub fn new(config: &'a HardwareConfig) -> Self {
        TwinBuilder { config, timing: PulseTiming::default(), keys: KeyFormat::Bits4, key_interval_us: 300_000 }
    }

    fn reader(&self, name: &str) -> Result<&'a ReaderConfig, HwError> {
        self.config.readers.iter().find(|r| r.name == name).ok_or_else(|| HwError::Unknown { kind: "reader", name: name.to_owned() })
    }

    fn frame(&self, reader: &ReaderConfig, bits: &[bool], closes_at_us: u64) -> Result<Vec<PinEdge>, HwError> {
        let lead = frame_end_us(bits.len(), 0, self.timing) + u64::from(reader.wiegand.frame_gap_us);
        let start = closes_at_us.checked_sub(lead).ok_or_else(|| HwError::Config(format!("reader {}: an event at {closes_at_us} µs is too early for its {lead} µs frame", reader.name)))?;
        Ok(pulse_train(bits, start, self.timing, &reader.d0_name(), &reader.d1_name()))
    }

    /// Edges of a card read that the reader decodes at `at_us`.
    pub fn card(&self, reader: &str, at_us: u64, bits: u8, facility: u32, number: u64) -> Result<Vec<PinEdge>, HwError> {
        let r = self.reader(reader)?;
        let frame = match bits {
            26 if facility <= 0xff && number <= 0xffff => card26(facility as u8, number as u16),
            34 if facility <= 0xffff && number <= 0xffff => card34(facility as u16, number as u16),
            _ => return Err(HwError::Config(format!("reader {reader}: no {bits}-bit frame holds facility {facility} / that number"))),
        };
        self.frame(r, &frame, at_us)
    }

    /// Edges of a PIN typed on the reader's keypad and submitted with `#` at `at_us`.
    pub fn pin(&self, reader: &str, at_us: u64, digits: &str) -> Result<Vec<PinEdge>, HwError> {
        let r = self.reader(reader)?;
        let mut keys = Vec::new();
        for c in digits.chars() {
            let d = c.to_digit(10).ok_or_else(|| HwError::Config(format!("reader {reader}: PIN digits must be 0-9")))?;
            keys.push(Key::Digit(d as u8));
        }
        keys.push(Key::Enter);
        self.keys(r, at_us, &keys)
    }

    /// Edges of single keys pressed `key_interval_us` apart, the last decoded at `at_us`.
    pub fn key_presses(&self, reader: &str, at_us: u64, keys: &[Key]) -> Result<Vec<PinEdge>, HwError> {
        let r = self.reader(reader)?;
        self.keys(r, at_us, keys)
    }

    fn keys(&self, r: &ReaderConfig, at_us: u64, keys: &[Key]) -> Result<Vec<PinEdge>, HwError> {
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let before = (keys.len() - 1 - i) as u64 * self.key_interval_us;
            let at = at_us.checked_sub(before).ok_or_else(|| HwError::Config(format!("reader {}: PIN at {at_us} µs starts before 0", r.name)))?;
            let bits = match self.keys {
                KeyFormat::Bits4 => key4(*key),
                KeyFormat::Bits8 => key8(*key),
            };
            out.extend(self.frame(r, &bits, at)?);
        }
        Ok(out)
    }

    /// The edge of an input that the driver reports as `active` at `at_us` (after its debounce).
    pub fn input(&self, input: &str, at_us: u64, active: bool) -> Result<Vec<PinEdge>, HwError> {
        let i = self.config.inputs.iter().find(|i| i.name == input).ok_or_else(|| HwError::Unknown { kind: "input", name: input.to_owned() })?;
        let debounce = u64::from(i.debounce_ms) * 1_000;
        let at = at_us.checked_sub(debounce).ok_or_else(|| HwError::Config(format!("input {input}: event at {at_us} µs is before its debounce")))?;
        Ok(vec![PinEdge::new(at, input, active == i.active_high)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_wire_and_unknown_lines_are_named() {
        let mut lines = SimLines::new();
        let mut reader_side = lines.line("n.d0", true);
        lines.apply(&PinEdge::new(5, "n.d0", false)).expect("known line");
        assert_eq!(reader_side.is_low(), Ok(true));
        let msg = lines.apply(&PinEdge::new(5, "n.d9", false)).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "unknown line \"n.d9\"");
    }
}
