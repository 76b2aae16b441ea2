//! The hardware runtime: opens every configured signal through a pin backend (simulated or
//! Linux), samples and decodes them at `poll(now)`, drives the relays, and hands the host one
//! ordered stream of [`HwEvent`]s. The same code runs live and in virtual time.

use embedded_hal::digital::{InputPin, OutputPin};

use crate::config::{Direction, HardwareConfig, InputConfig};
use crate::edge::PinEdge;
use crate::error::HwError;
use crate::event::{CardNumber, HwEvent, PinAbort};
use crate::input::DebouncedInput;
use crate::keypad::{PinEntry, PinOutcome};
use crate::relay::{Relay, RelayChange};
use crate::sim::{SimLines, SimPin};
use crate::wiegand::{FrameOutcome, WiegandDecoder, WiegandFrame, WiegandLine, WiegandReader, WiegandStats};

/// The two data lines of a Wiegand reader, when the backend hands them out to be sampled.
pub type WiegandPins<I> = Option<(I, I)>;

/// Where pins come from: simulated wires or GPIO lines of the board.
pub trait PinBackend {
    /// Input pin type.
    type Input: InputPin;
    /// Output pin type.
    type Output: OutputPin;
    /// Opens an input line; `name` is its trace name, `idle_high` its resting level.
    fn input(&mut self, what: &str, chip: &str, line: u32, name: &str, idle_high: bool) -> Result<Self::Input, HwError>;
    /// Opens an output line driven to `idle_high` from the first instant.
    fn output(&mut self, what: &str, chip: &str, line: u32, name: &str, idle_high: bool) -> Result<Self::Output, HwError>;
    /// Opens a Wiegand reader's lines: `Some` pins to sample, or `None` when the backend
    /// delivers their edges itself (through [`HwRuntime::feed_edges`]).
    fn wiegand(&mut self, reader: &str, chip: &str, d0: (u32, &str), d1: (u32, &str)) -> Result<WiegandPins<Self::Input>, HwError>;
}

/// Simulated pins: every configured line becomes a named [`SimPin`] in `lines`.
#[derive(Debug, Clone, Default)]
pub struct SimBackend {
    /// The wires a pin-level trace drives (shared with the drivers).
    pub lines: SimLines,
}

impl PinBackend for SimBackend {
    type Input = SimPin;
    type Output = SimPin;
    fn input(&mut self, _what: &str, _chip: &str, _line: u32, name: &str, idle_high: bool) -> Result<SimPin, HwError> {
        Ok(self.lines.line(name, idle_high))
    }
    fn output(&mut self, _what: &str, _chip: &str, _line: u32, name: &str, idle_high: bool) -> Result<SimPin, HwError> {
        Ok(self.lines.line(name, idle_high))
    }
    fn wiegand(&mut self, _reader: &str, _chip: &str, d0: (u32, &str), d1: (u32, &str)) -> Result<Option<(SimPin, SimPin)>, HwError> {
        Ok(Some((self.lines.line(d0.1, true), self.lines.line(d1.1, true))))
    }
}

enum Source<I> {
    Sampled(WiegandReader<I, I>),
    Edges { decoder: WiegandDecoder, d0: String, d1: String },
}

struct ReaderSlot<I> {
    name: String,
    door: String,
    direction: Direction,
    source: Source<I>,
    pin: PinEntry,
}

struct InputSlot<I> {
    config: InputConfig,
    input: DebouncedInput<I>,
}

/// Every configured relay, input and reader, opened and ready to poll.
pub struct HwRuntime<B: PinBackend> {
    relays: Vec<Relay<B::Output>>,
    inputs: Vec<InputSlot<B::Input>>,
    readers: Vec<ReaderSlot<B::Input>>,
}

impl<B: PinBackend> HwRuntime<B> {
    /// Validates the configuration and opens every line through `backend`; the first line
    /// that cannot be opened is reported by name (e.g. "door north relay: /dev/gpiochip0 line 17: ...").
    pub fn open(config: &HardwareConfig, backend: &mut B) -> Result<Self, HwError> {
        config.validate()?;
        let mut relays = Vec::new();
        for r in &config.relays {
            let name = HardwareConfig::relay_line_name(&r.door);
            let pin = backend.output(&format!("door {} relay", r.door), config.chip_of(&r.chip), r.line, &name, !r.active_high)?;
            relays.push(Relay::new(r.door.clone(), pin, r.active_high)?);
        }
        let mut inputs = Vec::new();
        for i in &config.inputs {
            let what = format!("input {}", i.name);
            let pin = backend.input(&what, config.chip_of(&i.chip), i.line, &i.name, !i.active_high)?;
            let input = DebouncedInput::new(i.name.clone(), pin, i.active_high, u64::from(i.debounce_ms) * 1_000);
            inputs.push(InputSlot { config: i.clone(), input });
        }
        let mut readers = Vec::new();
        for r in &config.readers {
            let (d0, d1) = (r.d0_name(), r.d1_name());
            let source = match backend.wiegand(&r.name, config.chip_of(&r.chip), (r.d0, &d0), (r.d1, &d1))? {
                Some((p0, p1)) => Source::Sampled(WiegandReader::new(r.name.clone(), p0, p1, r.wiegand)),
                None => Source::Edges { decoder: WiegandDecoder::new(r.name.clone(), r.wiegand), d0, d1 },
            };
            readers.push(ReaderSlot { name: r.name.clone(), door: r.door.clone(), direction: r.direction, source, pin: PinEntry::new(r.pin) });
        }
        tracing::info!(relays = relays.len(), inputs = inputs.len(), readers = readers.len(), "hardware opened");
        Ok(HwRuntime { relays, inputs, readers })
    }

    /// Samples every input and reader at `now_us`, ends due pulses, frames, PIN timeouts and
    /// held-open deadlines; returns what happened, ordered by time.
    pub fn poll(&mut self, now_us: u64) -> Result<Vec<HwEvent>, HwError> {
        let mut out = Vec::new();
        for i in 0..self.relays.len() {
            if let Some(change) = self.relays[i].poll(now_us)? {
                self.relay_changed(change, &mut out);
            }
        }
        for slot in &mut self.inputs {
            if let Some(edge) = slot.input.sample(now_us)? {
                let door = slot.config.door.clone();
                out.push(HwEvent::Input { input: edge.input, kind: slot.config.kind, door, active: edge.active, at_us: edge.at_us });
            }
        }
        for slot in &mut self.readers {
            let frames = match &mut slot.source {
                Source::Sampled(reader) => reader.sample(now_us)?,
                Source::Edges { decoder, .. } => decoder.poll(now_us).into_iter().collect(),
            };
            for f in frames {
                reader_frame(slot, f, &mut out);
            }
            pin_timeout(slot, now_us, &mut out);
        }
        out.sort_by_key(HwEvent::at_us);
        Ok(out)
    }

    /// Feeds kernel-timestamped edges of edge-delivered Wiegand lines (Linux backend); edges
    /// of other lines are an error naming the line.
    pub fn feed_edges(&mut self, edges: &[PinEdge]) -> Result<Vec<HwEvent>, HwError> {
        let mut out = Vec::new();
        for e in edges {
            let slot = self.readers.iter_mut().find_map(|s| match &s.source {
                Source::Edges { d0, .. } if *d0 == e.line => Some((s, WiegandLine::D0)),
                Source::Edges { d1, .. } if *d1 == e.line => Some((s, WiegandLine::D1)),
                _ => None,
            });
            let Some((slot, line)) = slot else {
                return Err(HwError::Unknown { kind: "line", name: e.line.clone() });
            };
            pin_timeout(slot, e.at_us, &mut out);
            let frame = match &mut slot.source {
                Source::Edges { decoder, .. } => decoder.edge(line, e.level, e.at_us),
                Source::Sampled(_) => None,
            };
            if let Some(f) = frame {
                reader_frame(slot, f, &mut out);
            }
        }
        out.sort_by_key(HwEvent::at_us);
        Ok(out)
    }

    /// When `poll` must next run for debounce, frame ends, pulses, PIN and held-open timeouts.
    pub fn next_deadline(&self) -> Option<u64> {
        let relays = self.relays.iter().filter_map(Relay::next_deadline);
        let inputs = self.inputs.iter().filter_map(|s| s.input.next_deadline());
        let readers = self.readers.iter().flat_map(|s| {
            let frame = match &s.source {
                Source::Sampled(r) => r.next_deadline(),
                Source::Edges { decoder, .. } => decoder.next_deadline(),
            };
            [frame, s.pin.next_deadline()]
        });
        relays.chain(inputs).chain(readers.flatten()).min()
    }

    fn relay(&mut self, door: &str) -> Result<&mut Relay<B::Output>, HwError> {
        self.relays.iter_mut().find(|r| r.name() == door).ok_or_else(|| HwError::Unknown { kind: "relay", name: door.to_owned() })
    }

    fn relay_changed(&mut self, change: RelayChange, out: &mut Vec<HwEvent>) {
        out.push(HwEvent::Relay { door: change.relay, energised: change.energised, at_us: change.at_us });
    }

    /// Energises the door's relay for `duration_us` (a grant).
    pub fn pulse(&mut self, door: &str, now_us: u64, duration_us: u64) -> Result<Vec<HwEvent>, HwError> {
        let change = self.relay(door)?.pulse(now_us, duration_us)?;
        let mut out = Vec::new();
        if let Some(c) = change {
            self.relay_changed(c, &mut out);
        }
        Ok(out)
    }

    /// Energises the door's relay until released (fire release, guard hold-open).
    pub fn energise(&mut self, door: &str, now_us: u64) -> Result<Vec<HwEvent>, HwError> {
        let change = self.relay(door)?.energise(now_us)?;
        let mut out = Vec::new();
        if let Some(c) = change {
            self.relay_changed(c, &mut out);
        }
        Ok(out)
    }

    /// Releases the door's relay now.
    pub fn release(&mut self, door: &str, now_us: u64) -> Result<Vec<HwEvent>, HwError> {
        let change = self.relay(door)?.release(now_us)?;
        let mut out = Vec::new();
        if let Some(c) = change {
            self.relay_changed(c, &mut out);
        }
        Ok(out)
    }

    /// Decode counters of a reader (for diagnostics and the status report).
    pub fn reader_stats(&self, reader: &str) -> Option<WiegandStats> {
        self.readers.iter().find(|s| s.name == reader).map(|s| match &s.source {
            Source::Sampled(r) => r.stats(),
            Source::Edges { decoder, .. } => decoder.stats(),
        })
    }
}

fn pin_timeout<I>(slot: &mut ReaderSlot<I>, now_us: u64, out: &mut Vec<HwEvent>) {
    let deadline = slot.pin.next_deadline();
    if let (Some(PinOutcome::TimedOut), Some(at_us)) = (slot.pin.poll(now_us), deadline) {
        out.push(HwEvent::PinAborted { reader: slot.name.clone(), door: slot.door.clone(), reason: PinAbort::TimedOut, at_us });
    }
}

fn reader_frame<I>(slot: &mut ReaderSlot<I>, frame: FrameOutcome, out: &mut Vec<HwEvent>) {
    let (reader, door, direction, at_us) = (slot.name.clone(), slot.door.clone(), slot.direction, frame.at_us);
    match frame.result {
        Ok(WiegandFrame::Card { bits, facility, number }) => {
            out.push(HwEvent::Card { reader, door, direction, bits, facility: Some(facility), number: CardNumber(number), at_us });
        }
        Ok(WiegandFrame::Key(key)) => {
            pin_timeout(slot, at_us, out);
            for outcome in slot.pin.press(key, at_us) {
                let (reader, door) = (reader.clone(), door.clone());
                out.push(match outcome {
                    PinOutcome::Submitted(digits) => HwEvent::Pin { reader, door, direction, digits, at_us },
                    PinOutcome::Cleared => HwEvent::PinAborted { reader, door, reason: PinAbort::Cleared, at_us },
                    PinOutcome::TimedOut => HwEvent::PinAborted { reader, door, reason: PinAbort::TimedOut, at_us },
                    PinOutcome::TooShort => HwEvent::PinAborted { reader, door, reason: PinAbort::TooShort, at_us },
                    PinOutcome::TooLong => HwEvent::PinAborted { reader, door, reason: PinAbort::TooLong, at_us },
                });
            }
        }
        Err(reason) => out.push(HwEvent::Rejected { reader, door, reason, at_us }),
    }
}
