//! The hardware events the host consumes: decoded cards and PINs, debounced inputs, relay
//! changes and rejected-frame diagnostics, each stamped in µs of (live or virtual) time.

use serde::{Deserialize, Serialize};

use crate::config::{Direction, InputKind};
use crate::keypad::PinDigits;
use crate::wiegand::RejectReason;

/// A card number; `Debug` redacts it so a stray `?event` in a log never shows it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardNumber(pub u64);

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardNumber(<redacted>)")
    }
}

/// Why a PIN entry ended without a PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PinAbort {
    /// `*` pressed.
    Cleared,
    /// Pause between keys longer than the timeout.
    TimedOut,
    /// `#` with too few digits.
    TooShort,
    /// More digits than allowed.
    TooLong,
}

/// One thing the hardware layer saw or did.
#[derive(Debug, Clone, PartialEq)]
pub enum HwEvent {
    /// A card frame passed its checks.
    Card {
        /// Reader name.
        reader: String,
        /// Door of the reader.
        door: String,
        /// Direction of the reader.
        direction: Direction,
        /// Frame length (26 or 34).
        bits: u8,
        /// Facility code, where the format has one.
        facility: Option<u32>,
        /// Card number.
        number: CardNumber,
        /// When the frame closed.
        at_us: u64,
    },
    /// A PIN was submitted with `#` (one-shot: never repeated).
    Pin {
        /// Reader name.
        reader: String,
        /// Door of the reader.
        door: String,
        /// Direction of the reader.
        direction: Direction,
        /// The digits (redacted in `Debug`, zeroed on drop).
        digits: PinDigits,
        /// When `#` was decoded.
        at_us: u64,
    },
    /// A PIN entry ended without a PIN.
    PinAborted {
        /// Reader name.
        reader: String,
        /// Door of the reader.
        door: String,
        /// Why.
        reason: PinAbort,
        /// When.
        at_us: u64,
    },
    /// A debounced input changed.
    Input {
        /// Input name.
        input: String,
        /// What the input is wired to.
        kind: InputKind,
        /// Door it belongs to, if any.
        door: Option<String>,
        /// `true` = active (door open, button pressed, alarm on).
        active: bool,
        /// When the new level became stable.
        at_us: u64,
    },
    /// A door relay changed.
    Relay {
        /// Door.
        door: String,
        /// `true` = energised.
        energised: bool,
        /// When.
        at_us: u64,
    },
    /// A Wiegand frame was rejected (diagnostic; also counted per reader).
    Rejected {
        /// Reader name.
        reader: String,
        /// Door of the reader.
        door: String,
        /// Why.
        reason: RejectReason,
        /// When the frame closed.
        at_us: u64,
    },
}

impl HwEvent {
    /// When the event happened (µs).
    pub fn at_us(&self) -> u64 {
        match self {
            HwEvent::Card { at_us, .. }
            | HwEvent::Pin { at_us, .. }
            | HwEvent::PinAborted { at_us, .. }
            | HwEvent::Input { at_us, .. }
            | HwEvent::Relay { at_us, .. }
            | HwEvent::Rejected { at_us, .. } => *at_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_card_numbers_and_pins() {
        let card = HwEvent::Card { reader: "r".into(), door: "d".into(), direction: Direction::Entry, bits: 26, facility: Some(12), number: CardNumber(4_455_667), at_us: 1 };
        let pin = HwEvent::Pin { reader: "r".into(), door: "d".into(), direction: Direction::Entry, digits: PinDigits::new("918273"), at_us: 2 };
        let shown = format!("{card:?} {pin:?}");
        assert!(!shown.contains("4455667") && !shown.contains("918273"), "{shown}");
    }
}
