//! The bridge between the hardware layer (`gate-hw`) and the gateway.
//!
//! Decoded hardware events become gateway [`Input`]s, the door controller's
//! [`Record::Relay`] outputs drive the relays (the door is the host's: relays
//! only ever follow `door.rs`), and pin-level twins of event-level traces are
//! made here. The service loop's sources (`service::source`) use this bridge for
//! simulated pins and for the GPIO lines of a real gate alike.
//!
//! Card numbers reach the gateway in one documented string form, the decimal
//! "FFFNNNNN" that is printed on most Wiegand cards: `facility × 100000 +
//! number` (26-bit facility 100, card 12345 → `"10012345"`; a frame without a
//! facility gives the number alone). Subject directories list cards in this form.

use crate::event::{Direction, Input, Record};
use crate::gateway::{GatewayError, Timed};
use gate_hw::config::{self, HardwareConfig, InputKind};
use gate_hw::runtime::{HwRuntime, PinBackend};
use gate_hw::sim::TwinBuilder;
use gate_hw::{HwError, HwEvent, PinEdge};
use std::collections::BTreeSet;
use thiserror::Error;

/// A failure of the hardware layer or of the gateway it feeds.
#[derive(Debug, Error)]
pub enum HardwareError {
    /// A pin, relay or reader failed (e.g. a missing GPIO chip, named), or a name is not configured.
    #[error(transparent)]
    Hw(#[from] HwError),
    /// The gateway could not act on an input.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The site or trace does not fit the hardware layer (names what and where).
    #[error("{0}")]
    Setup(String),
    /// A pin-level trace names a line `[hardware]` does not wire.
    #[error("trace line `{line}` (at {at_us} µs) is not wired in [hardware]; configured lines: {}", known.join(", "))]
    UnwiredLine { line: String, at_us: u64, known: Vec<String> },
}

impl HardwareError {
    /// The trace line named in an [`HardwareError::UnwiredLine`].
    pub fn unwired_line(&self) -> Option<&str> {
        match self {
            HardwareError::UnwiredLine { line, .. } => Some(line),
            _ => None,
        }
    }
}

/// How long a press of the exit button lasts in a pin-level twin.
const EXIT_PRESS_US: u64 = 200_000;

/// The card-number string of a decoded frame: `facility × 100000 + number`, in decimal.
pub fn card_number(facility: Option<u32>, number: u64) -> String {
    match facility {
        Some(f) => (u64::from(f) * 100_000 + number).to_string(),
        None => number.to_string(),
    }
}

/// Splits a card-number string into (facility, number); None if it is not that form.
pub fn split_card_number(s: &str) -> Option<(u32, u64)> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    Some((u32::try_from(n / 100_000).ok()?, n % 100_000))
}

/// The gateway direction of a configured reader or camera direction.
pub fn direction(d: config::Direction) -> Direction {
    match d {
        config::Direction::Entry => Direction::Entry,
        config::Direction::Exit => Direction::Exit,
    }
}

/// The gateway input a hardware event stands for; None for diagnostics and relay echoes.
pub fn to_input(ev: &HwEvent) -> Option<Input> {
    match ev {
        HwEvent::Card { door, direction: d, facility, number, .. } => Some(Input::Card { door: door.clone(), direction: direction(*d), number: card_number(*facility, number.0), captured_at: None }),
        HwEvent::Pin { door, direction: d, digits, .. } => Some(Input::Pin { door: door.clone(), direction: direction(*d), pin: digits.expose().to_string(), captured_at: None }),
        HwEvent::Input { kind: InputKind::DoorContact, door: Some(door), active, .. } => Some(Input::DoorContact { door: door.clone(), open: *active }),
        HwEvent::Input { kind: InputKind::ExitButton, door: Some(door), active: true, .. } => Some(Input::ExitButton { door: door.clone() }),
        HwEvent::Input { kind: InputKind::FireAlarm, active, .. } => Some(Input::FireAlarm { active: *active }),
        HwEvent::Rejected { reader, door, reason, at_us } => {
            tracing::debug!(reader, door, ?reason, at_us, "rejected reader frame: no input");
            None
        }
        HwEvent::PinAborted { reader, door, reason, at_us } => {
            tracing::debug!(reader, door, ?reason, at_us, "PIN entry abandoned: no input");
            None
        }
        _ => None,
    }
}

/// The opened hardware of one gateway, its µs clock anchored at `start_ms` of gateway time.
pub struct Hardware<B: PinBackend> {
    rt: HwRuntime<B>,
    relays: BTreeSet<String>,
    start_ms: i64,
}

impl<B: PinBackend> Hardware<B> {
    /// Opens every configured line through `backend`; a missing device is an error naming it.
    pub fn open(cfg: &HardwareConfig, backend: &mut B, start_ms: i64) -> Result<Self, HardwareError> {
        let rt = HwRuntime::open(cfg, backend)?;
        let relays = cfg.relays.iter().map(|r| r.door.clone()).collect();
        Ok(Hardware { rt, relays, start_ms })
    }

    /// The drivers.
    pub fn runtime_mut(&mut self) -> &mut HwRuntime<B> {
        &mut self.rt
    }

    /// The drivers, to ask when they next need attention.
    pub fn runtime(&self) -> &HwRuntime<B> {
        &self.rt
    }

    /// Gateway time (Unix ms) of a hardware time (µs since `start_ms`).
    pub fn gateway_ms(&self, at_us: u64) -> i64 {
        self.start_ms + (at_us / 1_000) as i64
    }

    /// Moves the relays as the door controller says; doors without a wired relay are skipped.
    pub fn follow(&mut self, records: &[Timed]) -> Result<(), HardwareError> {
        for (t, r) in records {
            let Record::Relay { door, on } = r else { continue };
            if !self.relays.contains(door) {
                continue;
            }
            let at_us = ((t - self.start_ms).max(0) as u64) * 1_000;
            let changes = if *on { self.rt.energise(door, at_us)? } else { self.rt.release(door, at_us)? };
            for c in changes {
                tracing::debug!(door, on, at_us = c.at_us(), "relay follows the door controller");
            }
        }
        Ok(())
    }
}

/// The pin-level twin of an event-level trace: every input the wiring can produce (cards
/// and PINs at a door with a reader of that direction, door contacts, exit buttons, the
/// fire input) becomes the `line` edges that decode to exactly it at exactly its time; the
/// rest (face results, QR, reads no reader can make, ...) stays event-level.
pub fn twin(hw: &HardwareConfig, inputs: &[(u64, Input)]) -> Result<Vec<(u64, Input)>, HardwareError> {
    let builder = TwinBuilder::new(hw);
    let reader = |door: &str, d: Direction| hw.readers.iter().find(|r| r.door == door && direction(r.direction) == d).map(|r| r.name.clone());
    let input_of = |kind: InputKind, door: Option<&str>| hw.inputs.iter().find(|i| i.kind == kind && (door.is_none() || i.door.as_deref() == door)).map(|i| i.name.clone());
    let mut edges: Vec<PinEdge> = Vec::new();
    let mut kept: Vec<(u64, Input)> = Vec::new();
    for (at, input) in inputs {
        let at_us = at * 1_000;
        let made = match input {
            Input::Card { door, direction: d, number, captured_at: None } => match reader(door, *d) {
                Some(r) => {
                    let (facility, n) = split_card_number(number).ok_or_else(|| HardwareError::Setup(format!("card at {at} ms: `{number}` is not a decimal card number")))?;
                    let bits = if facility <= 0xff { 26 } else { 34 };
                    Some(builder.card(&r, at_us, bits, facility, n)?)
                }
                None => None,
            },
            Input::Pin { door, direction: d, pin, captured_at: None } => reader(door, *d).map(|r| builder.pin(&r, at_us, pin)).transpose()?,
            Input::DoorContact { door, open } => input_of(InputKind::DoorContact, Some(door)).map(|i| builder.input(&i, at_us, *open)).transpose()?,
            Input::ExitButton { door } => match input_of(InputKind::ExitButton, Some(door)) {
                Some(i) => {
                    let mut e = builder.input(&i, at_us, true)?;
                    e.extend(builder.input(&i, at_us + EXIT_PRESS_US, false)?);
                    Some(e)
                }
                None => None,
            },
            Input::FireAlarm { active } => input_of(InputKind::FireAlarm, None).map(|i| builder.input(&i, at_us, *active)).transpose()?,
            _ => None,
        };
        match made {
            Some(e) => edges.extend(e),
            None => kept.push((*at, input.clone())),
        }
    }
    let mut out: Vec<(u64, u64, Input)> = kept.into_iter().map(|(at, i)| (at * 1_000, at, i)).collect();
    out.extend(edges.into_iter().map(|e| (e.at_us, e.at_us / 1_000, Input::Line { line: e.line, level: e.level, at_us: e.at_us })));
    out.sort_by_key(|(us, _, _)| *us);
    Ok(out.into_iter().map(|(_, at, i)| (at, i)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::source::split_lines;
    use gate_hw::event::CardNumber;
    use gate_hw::runtime::SimBackend;
    use gate_hw::sim::PinPlayer;

    const WIRING: &str = r#"
[[relays]]
door = "north"
line = 17
[[inputs]]
name = "north-contact"
kind = "door-contact"
door = "north"
line = 5
active_high = false
[[inputs]]
name = "fire"
kind = "fire-alarm"
line = 7
[[readers]]
name = "north-in"
door = "north"
d0 = 22
d1 = 23
"#;

    /// Plays the `line` inputs of `twin` into the real drivers on simulated pins.
    fn play(cfg: &HardwareConfig, twin: &[(u64, Input)]) -> Vec<HwEvent> {
        let mut backend = SimBackend::default();
        let mut hw = Hardware::open(cfg, &mut backend, 0).expect("opens");
        PinPlayer::new(split_lines(twin).0).run_to_end(hw.runtime_mut(), &backend.lines).expect("plays")
    }

    #[test]
    fn card_numbers_use_the_printed_facility_and_number_form() {
        assert_eq!(card_number(Some(100), 12345), "10012345");
        assert_eq!(card_number(Some(300), 7), "30000007");
        assert_eq!(card_number(None, 4242), "4242");
        assert_eq!(split_card_number("10012345"), Some((100, 12345)));
        assert_eq!(split_card_number("12a"), None);
        let ev = HwEvent::Card { reader: "north-in".into(), door: "north".into(), direction: config::Direction::Entry, bits: 26, facility: Some(100), number: CardNumber(12345), at_us: 9 };
        assert_eq!(to_input(&ev), Some(Input::Card { door: "north".into(), direction: Direction::Entry, number: "10012345".into(), captured_at: None }));
    }

    #[test]
    fn an_exit_readers_card_becomes_an_exit_input_and_twins_back() {
        let cfg: HardwareConfig = toml::from_str(&format!("{WIRING}[[readers]]\nname = \"north-out\"\ndoor = \"north\"\ndirection = \"exit\"\nd0 = 24\nd1 = 25\n")).expect("wiring parses");
        assert_eq!(cfg.readers[0].direction, config::Direction::Entry, "entry by default");
        let card = |d: Direction| Input::Card { door: "north".into(), direction: d, number: "10012345".into(), captured_at: None };
        let inputs = vec![(1_000, card(Direction::Exit)), (3_000, card(Direction::Entry))];
        let twin = twin(&cfg, &inputs).expect("twin");
        assert!(twin.iter().all(|(_, i)| matches!(i, Input::Line { .. })), "both reads come from a reader");
        assert!(twin.iter().any(|(_, i)| matches!(i, Input::Line { line, .. } if line == "north-out.d0")));
        let events = play(&cfg, &twin);
        assert!(events.iter().any(|e| matches!(e, HwEvent::Card { reader, direction: config::Direction::Exit, .. } if reader == "north-out")));
        let decoded: Vec<(u64, Input)> = events.iter().filter_map(|e| to_input(e).map(|i| (e.at_us() / 1_000, i))).collect();
        assert_eq!(decoded, inputs);
    }

    #[test]
    fn simulated_relay_follows_the_door_controller_records() {
        let cfg: HardwareConfig = toml::from_str(WIRING).expect("wiring parses");
        let mut backend = SimBackend::default();
        let start = 1_000_000;
        let mut hw = Hardware::open(&cfg, &mut backend, start).expect("opens");
        let wire = backend.lines.get("north.relay").cloned().expect("relay line");
        assert!(!wire.get());
        hw.follow(&[(start + 5, Record::Relay { door: "north".into(), on: true }), (start + 5, Record::Relay { door: "garage".into(), on: true })]).expect("follows");
        assert!(wire.get(), "granted: relay energised");
        hw.follow(&[(start + 5_005, Record::Relay { door: "north".into(), on: false })]).expect("follows");
        assert!(!wire.get(), "relocked: relay released");
    }

    #[test]
    fn a_twin_decodes_back_to_the_same_inputs_at_the_same_times() {
        let cfg: HardwareConfig = toml::from_str(WIRING).expect("wiring parses");
        let inputs = vec![
            (2_000, Input::Card { door: "north".into(), direction: Direction::Entry, number: "10012345".into(), captured_at: None }),
            (3_000, Input::DoorContact { door: "north".into(), open: true }),
            (4_000, Input::Pin { door: "north".into(), direction: Direction::Entry, pin: "2468".into(), captured_at: None }),
            (4_500, Input::Nfc { door: "north".into(), direction: Direction::Entry, token: "t".into(), captured_at: None }),
            (9_000, Input::FireAlarm { active: true }),
        ];
        let twin = twin(&cfg, &inputs).expect("twin");
        assert_eq!(twin.iter().filter(|(_, i)| matches!(i, Input::Line { .. })).count(), 52 + 5 * 8 + 2, "26-bit card, 4 digits + #, contact, fire");
        let decoded: Vec<(u64, Input)> = play(&cfg, &twin).iter().filter_map(|e| to_input(e).map(|i| (e.at_us() / 1_000, i))).collect();
        let mut want = inputs.clone();
        want.retain(|(_, i)| !matches!(i, Input::Nfc { .. }));
        assert_eq!(decoded, want);
        assert!(twin.iter().any(|(at, i)| *at == 4_500 && matches!(i, Input::Nfc { .. })), "NFC stays event-level");
    }
}
