//! Pseudonyms for `gate record`: card numbers and PINs in a recorded trace become stable keyed
//! hashes (HMAC-SHA256), so a trace can be shared without the credentials in it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::InputKind;
use crate::error::HwError;
use crate::event::{HwEvent, PinAbort};
use crate::wiegand::RejectReason;

/// Hex digits of a pseudonym: 48 bits keep collisions negligible for a site's card population.
const PSEUDONYM_HEX: usize = 12;

/// Turns card numbers and PINs into stable pseudonyms under one key.
pub struct Pseudonymiser {
    key: Zeroizing<Vec<u8>>,
    keep_raw_cards: bool,
}

impl Pseudonymiser {
    /// Pseudonyms under a configured key: the same card gets the same pseudonym in every recording.
    pub fn with_key(key: &[u8]) -> Result<Self, HwError> {
        if key.len() < 16 {
            return Err(HwError::Config("pseudonym key must be at least 16 bytes".into()));
        }
        Ok(Pseudonymiser { key: Zeroizing::new(key.to_vec()), keep_raw_cards: false })
    }

    /// Pseudonyms under a fresh random key: stable within this recording only.
    pub fn random() -> Result<Self, HwError> {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        getrandom::getrandom(&mut key).map_err(|e| HwError::Config(format!("no randomness for the pseudonym key: {e}")))?;
        Ok(Pseudonymiser { key, keep_raw_cards: false })
    }

    /// Keeps raw card numbers (the tester asked for them); PINs stay pseudonymous regardless.
    pub fn keep_raw_cards(mut self, keep: bool) -> Self {
        self.keep_raw_cards = keep;
        self
    }

    fn hash(&self, domain: &str, value: &str) -> String {
        // HMAC accepts keys of any length, so this cannot fail; fall back to an empty MAC input if it did.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return format!("{domain}-invalid"),
        };
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hexed = hex::encode(digest);
        hexed.truncate(PSEUDONYM_HEX);
        format!("{domain}-{hexed}")
    }

    /// The label of a card in a recording: "card-<12 hex>" or, if raw was asked, "<bits>:<facility>:<number>".
    pub fn card(&self, bits: u8, facility: Option<u32>, number: u64) -> String {
        let raw = format!("{bits}:{}:{number}", facility.map_or(String::from("-"), |f| f.to_string()));
        if self.keep_raw_cards {
            raw
        } else {
            self.hash("card", &raw)
        }
    }

    /// The label of a PIN in a recording: always "pin-<12 hex>".
    pub fn pin(&self, digits: &str) -> String {
        self.hash("pin", digits)
    }

    /// A hardware event as it goes into a recorded trace.
    pub fn record(&self, event: &HwEvent) -> RecordedHwEvent {
        match event {
            HwEvent::Card { reader, door, bits, facility, number, at_us, .. } => {
                RecordedHwEvent::Card { reader: reader.clone(), door: door.clone(), bits: *bits, card: self.card(*bits, *facility, number.0), at_us: *at_us }
            }
            HwEvent::Pin { reader, door, digits, at_us, .. } => RecordedHwEvent::Pin { reader: reader.clone(), door: door.clone(), pin: self.pin(digits.expose()), at_us: *at_us },
            HwEvent::PinAborted { reader, door, reason, at_us } => RecordedHwEvent::PinAborted { reader: reader.clone(), door: door.clone(), reason: *reason, at_us: *at_us },
            HwEvent::Input { input, kind, door, active, at_us } => RecordedHwEvent::Input { input: input.clone(), input_kind: *kind, door: door.clone(), active: *active, at_us: *at_us },
            HwEvent::Relay { door, energised, at_us } => RecordedHwEvent::Relay { door: door.clone(), energised: *energised, at_us: *at_us },
            HwEvent::Rejected { reader, door, reason, at_us } => RecordedHwEvent::Rejected { reader: reader.clone(), door: door.clone(), reason: reason.clone(), at_us: *at_us },
        }
    }
}

/// A hardware event as written to a recorded trace: credentials are labels, never raw PINs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RecordedHwEvent {
    /// A card read.
    Card {
        /// Reader.
        reader: String,
        /// Door.
        door: String,
        /// Frame length.
        bits: u8,
        /// Pseudonym (or raw "bits:facility:number" when asked).
        card: String,
        /// When.
        at_us: u64,
    },
    /// A PIN submission.
    Pin {
        /// Reader.
        reader: String,
        /// Door.
        door: String,
        /// Pseudonym of the PIN.
        pin: String,
        /// When.
        at_us: u64,
    },
    /// A PIN entry that ended without a PIN.
    PinAborted {
        /// Reader.
        reader: String,
        /// Door.
        door: String,
        /// Why.
        reason: PinAbort,
        /// When.
        at_us: u64,
    },
    /// A debounced input change.
    Input {
        /// Input name.
        input: String,
        /// What it is wired to.
        input_kind: InputKind,
        /// Door, if any.
        door: Option<String>,
        /// Active or not.
        active: bool,
        /// When.
        at_us: u64,
    },
    /// A relay change.
    Relay {
        /// Door.
        door: String,
        /// Energised or not.
        energised: bool,
        /// When.
        at_us: u64,
    },
    /// A rejected Wiegand frame.
    Rejected {
        /// Reader.
        reader: String,
        /// Door.
        door: String,
        /// Why.
        reason: RejectReason,
        /// When.
        at_us: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Direction;
    use crate::event::CardNumber;
    use crate::keypad::PinDigits;

    const KEY: &[u8] = b"site-north-recording-key";

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys() {
        let a = Pseudonymiser::with_key(KEY).expect("key");
        let b = Pseudonymiser::with_key(b"another-key-of-16+bytes").expect("key");
        let p = a.card(26, Some(12), 3456);
        assert_eq!(p, a.card(26, Some(12), 3456));
        assert_ne!(p, a.card(26, Some(12), 3457));
        assert_ne!(p, b.card(26, Some(12), 3456));
        assert!(p.starts_with("card-") && p.len() == 5 + PSEUDONYM_HEX, "{p}");
        assert!(!p.contains("3456"));
    }

    #[test]
    fn raw_cards_only_when_asked_and_pins_never_raw() {
        let raw = Pseudonymiser::with_key(KEY).expect("key").keep_raw_cards(true);
        assert_eq!(raw.card(34, Some(300), 4000), "34:300:4000");
        let pin = HwEvent::Pin { reader: "r".into(), door: "d".into(), direction: Direction::Entry, digits: PinDigits::new("482913"), at_us: 7 };
        let json = serde_json::to_string(&raw.record(&pin)).expect("serialises");
        assert!(!json.contains("482913") && json.contains("\"pin\":\"pin-"), "{json}");
    }

    #[test]
    fn recorded_events_round_trip_through_json() {
        let p = Pseudonymiser::with_key(KEY).expect("key");
        let card = HwEvent::Card { reader: "north-in".into(), door: "north".into(), direction: Direction::Entry, bits: 26, facility: Some(1), number: CardNumber(99), at_us: 5 };
        let rec = p.record(&card);
        let json = serde_json::to_string(&rec).expect("serialises");
        assert_eq!(serde_json::from_str::<RecordedHwEvent>(&json).expect("parses"), rec);
        assert!(json.starts_with("{\"kind\":\"card\""), "{json}");
    }

    #[test]
    fn short_keys_are_refused_and_random_keys_work() {
        assert!(Pseudonymiser::with_key(b"short").is_err());
        let a = Pseudonymiser::random().expect("os randomness");
        let b = Pseudonymiser::random().expect("os randomness");
        assert_ne!(a.card(26, Some(1), 1), b.card(26, Some(1), 1));
    }
}
