//! PIN entry from keypad keys: digits accumulate, `#` submits, `*` clears, a pause longer than
//! the inter-key timeout discards, and a submitted PIN is emitted exactly once.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::Key;

/// PIN digits: zeroed on drop, redacted in `Debug`, serialised only through [`PinDigits::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct PinDigits(Zeroizing<String>);

impl PinDigits {
    /// Wraps digits (for tests and for the host's PIN store).
    pub fn new(digits: impl Into<String>) -> Self {
        PinDigits(Zeroizing::new(digits.into()))
    }

    /// The digits themselves, for the credential check only; never log them.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no digits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for PinDigits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinDigits(<{} digits redacted>)", self.0.len())
    }
}

/// Limits of PIN entry at one reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PinEntryConfig {
    /// A pause longer than this between two keys discards the digits entered so far.
    pub timeout_ms: u32,
    /// Fewest digits a submitted PIN may have.
    pub min_len: u8,
    /// Most digits; one more discards the entry.
    pub max_len: u8,
}

impl Default for PinEntryConfig {
    fn default() -> Self {
        PinEntryConfig { timeout_ms: 5_000, min_len: 4, max_len: 8 }
    }
}

/// What a key press (or the passing of time) did to the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinOutcome {
    /// `#` submitted this PIN; it is handed out once and forgotten here.
    Submitted(PinDigits),
    /// `*` cleared an entry in progress.
    Cleared,
    /// The inter-key timeout passed; the digits were discarded.
    TimedOut,
    /// `#` with fewer than `min_len` digits; the digits were discarded.
    TooShort,
    /// More than `max_len` digits; the digits were discarded.
    TooLong,
}

impl PinOutcome {
    /// Short stable name, for logs (never includes digits).
    pub fn name(&self) -> &'static str {
        match self {
            PinOutcome::Submitted(_) => "submitted",
            PinOutcome::Cleared => "cleared",
            PinOutcome::TimedOut => "timed-out",
            PinOutcome::TooShort => "too-short",
            PinOutcome::TooLong => "too-long",
        }
    }
}

/// Assembles keypad keys into a PIN; digits are held in memory that is zeroed on drop.
#[derive(Debug)]
pub struct PinEntry {
    config: PinEntryConfig,
    digits: Zeroizing<String>,
    last_key_us: Option<u64>,
}

impl PinEntry {
    /// An empty entry with these limits.
    pub fn new(config: PinEntryConfig) -> Self {
        PinEntry { config, digits: Zeroizing::new(String::new()), last_key_us: None }
    }

    /// Number of digits entered so far (never the digits themselves).
    pub fn len(&self) -> usize {
        self.digits.len()
    }

    /// Whether no digit is pending.
    pub fn is_empty(&self) -> bool {
        self.digits.is_empty()
    }

    fn discard(&mut self) {
        self.digits = Zeroizing::new(String::new());
        self.last_key_us = None;
    }

    /// Handles one key pressed at `at_us`.
    pub fn press(&mut self, key: Key, at_us: u64) -> Vec<PinOutcome> {
        let mut out: Vec<PinOutcome> = self.poll(at_us).into_iter().collect();
        match key {
            Key::Digit(d) => {
                self.digits.push(char::from(b'0' + d % 10));
                self.last_key_us = Some(at_us);
                if self.digits.len() > usize::from(self.config.max_len) {
                    self.discard();
                    out.push(PinOutcome::TooLong);
                }
            }
            Key::Clear => {
                if !self.is_empty() {
                    self.discard();
                    out.push(PinOutcome::Cleared);
                }
            }
            Key::Enter => {
                if self.is_empty() {
                    // Nothing pending: a repeated or stray ENT never re-sends an old PIN.
                } else if self.digits.len() < usize::from(self.config.min_len) {
                    self.discard();
                    out.push(PinOutcome::TooShort);
                } else {
                    let pin = std::mem::replace(&mut self.digits, Zeroizing::new(String::new()));
                    self.last_key_us = None;
                    out.push(PinOutcome::Submitted(PinDigits(pin)));
                }
            }
            Key::Other(_) => {}
        }
        for o in &out {
            tracing::debug!(outcome = o.name(), "pin entry");
        }
        out
    }

    /// Discards the pending digits if the inter-key timeout has passed by `now_us`.
    pub fn poll(&mut self, now_us: u64) -> Option<PinOutcome> {
        let last = self.last_key_us?;
        if now_us.saturating_sub(last) > u64::from(self.config.timeout_ms) * 1_000 {
            self.discard();
            return Some(PinOutcome::TimedOut);
        }
        None
    }

    /// When `poll` must next be called for a timeout to be seen on time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.last_key_us.map(|l| l + u64::from(self.config.timeout_ms) * 1_000 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> PinEntry {
        PinEntry::new(PinEntryConfig { timeout_ms: 3_000, min_len: 4, max_len: 6 })
    }

    fn type_keys(p: &mut PinEntry, keys: &[Key], start_us: u64, step_us: u64) -> Vec<PinOutcome> {
        keys.iter().enumerate().flat_map(|(i, k)| p.press(*k, start_us + i as u64 * step_us)).collect()
    }

    fn digits(s: &str) -> Vec<Key> {
        s.bytes().map(|b| Key::Digit(b - b'0')).collect()
    }

    #[test]
    fn enter_submits_the_pin_exactly_once() {
        let mut p = entry();
        let mut keys = digits("482913");
        keys.push(Key::Enter);
        keys.push(Key::Enter);
        let out = type_keys(&mut p, &keys, 0, 500_000);
        assert_eq!(out, vec![PinOutcome::Submitted(PinDigits::new("482913"))]);
        assert!(p.is_empty());
    }

    #[test]
    fn clear_discards_and_a_fresh_entry_follows() {
        let mut p = entry();
        let mut keys = digits("99");
        keys.push(Key::Clear);
        keys.extend(digits("1234"));
        keys.push(Key::Enter);
        let out = type_keys(&mut p, &keys, 0, 100_000);
        assert_eq!(out, vec![PinOutcome::Cleared, PinOutcome::Submitted(PinDigits::new("1234"))]);
    }

    #[test]
    fn inter_key_timeout_discards_pending_digits() {
        let mut p = entry();
        type_keys(&mut p, &digits("12"), 0, 1_000_000);
        assert_eq!(p.next_deadline(), Some(1_000_000 + 3_000_000 + 1));
        assert_eq!(p.poll(4_000_000), None, "exactly at the timeout the entry is still alive");
        assert_eq!(p.poll(4_000_001), Some(PinOutcome::TimedOut));
        assert!(p.is_empty());
        // A late key starts over: "34" + ENT is too short, the old "12" does not come back.
        let mut keys = digits("34");
        keys.push(Key::Enter);
        assert_eq!(type_keys(&mut p, &keys, 9_000_000, 100_000), vec![PinOutcome::TooShort]);
    }

    #[test]
    fn a_timeout_seen_only_at_the_next_key_still_discards() {
        let mut p = entry();
        type_keys(&mut p, &digits("5555"), 0, 100_000);
        let out = p.press(Key::Enter, 10_000_000);
        assert_eq!(out, vec![PinOutcome::TimedOut]);
    }

    #[test]
    fn too_long_entries_are_discarded() {
        let mut p = entry();
        let mut keys = digits("1234567");
        keys.push(Key::Enter);
        assert_eq!(type_keys(&mut p, &keys, 0, 100_000), vec![PinOutcome::TooLong]);
        assert!(p.is_empty());
    }

    #[test]
    fn debug_output_never_shows_digits() {
        let mut p = entry();
        type_keys(&mut p, &digits("8642"), 0, 1);
        let shown = format!("{:?}", p.press(Key::Enter, 10));
        assert!(!shown.contains("8642") && shown.contains("4 digits redacted"), "{shown}");
    }
}
