//! Debounced digital inputs (door contact, exit button, fire alarm) on embedded-hal input pins.

use embedded_hal::digital::InputPin;
use serde::{Deserialize, Serialize};

use crate::error::HwError;

/// A debounced change of an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEdge {
    /// Input name from the configuration.
    pub input: String,
    /// `true` = the input became active (door open, button pressed, alarm on).
    pub active: bool,
    /// When the level became stable: first seen plus the debounce time (the moment it is known).
    pub at_us: u64,
    /// When the new level was first seen (the physical change, give or take sampling).
    pub changed_at_us: u64,
}

/// A digital input that reports a change only after the level held for `debounce_us`.
///
/// It starts inactive: an input that is active at boot is reported once the debounce passed.
pub struct DebouncedInput<P> {
    name: String,
    pin: P,
    active_high: bool,
    debounce_us: u64,
    active: bool,
    candidate: Option<(bool, u64)>,
}

impl<P: InputPin> DebouncedInput<P> {
    /// Wraps a pin; `active_high` says which electrical level means active.
    pub fn new(name: impl Into<String>, pin: P, active_high: bool, debounce_us: u64) -> Self {
        DebouncedInput { name: name.into(), pin, active_high, debounce_us, active: false, candidate: None }
    }

    /// Reads the pin at `now_us` and returns a change once it has been stable long enough.
    pub fn sample(&mut self, now_us: u64) -> Result<Option<InputEdge>, HwError> {
        let high = self.pin.is_high().map_err(|e| HwError::pin(&format!("input {}", self.name), "read", e))?;
        let active = high == self.active_high;
        if active == self.active {
            self.candidate = None;
            return Ok(None);
        }
        let since = match self.candidate {
            Some((level, since)) if level == active => since,
            _ => {
                self.candidate = Some((active, now_us));
                now_us
            }
        };
        if now_us.saturating_sub(since) >= self.debounce_us {
            self.active = active;
            self.candidate = None;
            let at_us = since + self.debounce_us;
            tracing::debug!(input = %self.name, active, at_us, "input changed");
            return Ok(Some(InputEdge { input: self.name.clone(), active, at_us, changed_at_us: since }));
        }
        Ok(None)
    }

    /// When `sample` must next be called for a pending change to be confirmed on time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.candidate.map(|(_, since)| since + self.debounce_us)
    }

    /// The debounced state.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The input's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the pin back (tests check mock expectations with it).
    pub fn into_pin(self) -> P {
        self.pin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn mock(levels: &[State]) -> Mock {
        Mock::new(&levels.iter().map(|s| Transaction::get(*s)).collect::<Vec<_>>())
    }

    #[test]
    fn bounces_shorter_than_the_debounce_are_ignored() {
        use State::{High as H, Low as L};
        // Active-low contact: bounces at 0/5/8 ms, then low from 10 ms on; debounce 20 ms.
        let times = [0u64, 5, 8, 10, 25, 29, 30, 31];
        let levels = [L, H, L, L, L, L, L, L];
        let mut input = DebouncedInput::new("north-contact", mock(&levels), false, 20_000);
        let mut edges = Vec::new();
        for t in times {
            edges.extend(input.sample(t * 1_000).expect("mock pin"));
        }
        assert_eq!(edges, vec![InputEdge { input: "north-contact".into(), active: true, at_us: 28_000, changed_at_us: 8_000 }]);
        assert!(input.is_active());
        input.into_pin().done();
    }

    #[test]
    fn active_high_changes_are_stamped_when_they_became_stable() {
        use State::{High as H, Low as L};
        let mut input = DebouncedInput::new("fire", mock(&[H, H, L, H, L, L]), true, 1_000);
        let mut edges = Vec::new();
        for t in [0u64, 1_000, 5_000, 5_500, 6_000, 7_000] {
            edges.extend(input.sample(t).expect("mock pin"));
        }
        assert_eq!(
            edges,
            vec![InputEdge { input: "fire".into(), active: true, at_us: 1_000, changed_at_us: 0 }, InputEdge { input: "fire".into(), active: false, at_us: 7_000, changed_at_us: 6_000 },]
        );
        input.into_pin().done();
    }

    #[test]
    fn next_deadline_points_at_the_end_of_the_debounce() {
        let mut input = DebouncedInput::new("exit", mock(&[State::High]), true, 30_000);
        assert_eq!(input.next_deadline(), None);
        assert_eq!(input.sample(100).expect("mock pin"), None);
        assert_eq!(input.next_deadline(), Some(30_100));
        input.into_pin().done();
    }

    #[test]
    fn read_error_names_the_input() {
        let err = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::Other);
        let mut input = DebouncedInput::new("exit-north", Mock::new(&[Transaction::get(State::Low).with_error(err)]), true, 0);
        let msg = input.sample(0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("input exit-north: pin read failed"), "{msg}");
        input.into_pin().done();
    }
}
