//! Door relay driver on an embedded-hal output pin: configurable active level, hold or timed
//! pulse; the pulse deadline is checked by `poll(now)` so it runs in virtual time too.

use embedded_hal::digital::OutputPin;
use serde::{Deserialize, Serialize};

use crate::error::HwError;

/// A change of relay state, with the time it took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayChange {
    /// Relay name (usually the door).
    pub relay: String,
    /// `true` = energised (lock released / strike open).
    pub energised: bool,
    /// When the pin was driven.
    pub at_us: u64,
}

/// A relay on one output pin. It starts released; the pin is driven at construction.
pub struct Relay<P> {
    name: String,
    pin: P,
    active_high: bool,
    energised: bool,
    release_at: Option<u64>,
}

impl<P: OutputPin> Relay<P> {
    /// Takes the pin and drives it to the released level at once.
    pub fn new(name: impl Into<String>, pin: P, active_high: bool) -> Result<Self, HwError> {
        let mut relay = Relay { name: name.into(), pin, active_high, energised: true, release_at: None };
        relay.drive(false)?;
        Ok(relay)
    }

    fn drive(&mut self, energise: bool) -> Result<(), HwError> {
        let high = energise == self.active_high;
        let res = if high { self.pin.set_high() } else { self.pin.set_low() };
        res.map_err(|e| HwError::pin(&format!("relay {}", self.name), "write", e))?;
        self.energised = energise;
        Ok(())
    }

    fn change(&mut self, energise: bool, at_us: u64) -> Result<Option<RelayChange>, HwError> {
        if self.energised == energise {
            return Ok(None);
        }
        self.drive(energise)?;
        tracing::debug!(relay = %self.name, energised = energise, at_us, "relay");
        Ok(Some(RelayChange { relay: self.name.clone(), energised: energise, at_us }))
    }

    /// Energises and holds until `release` (e.g. fire release, guard hold-open).
    pub fn energise(&mut self, now_us: u64) -> Result<Option<RelayChange>, HwError> {
        self.release_at = None;
        self.change(true, now_us)
    }

    /// Energises for `duration_us`; a pulse during a pulse extends it, never shortens it;
    /// a pulse during a hold leaves the hold in place.
    pub fn pulse(&mut self, now_us: u64, duration_us: u64) -> Result<Option<RelayChange>, HwError> {
        if self.energised && self.release_at.is_none() {
            return Ok(None);
        }
        let until = now_us.saturating_add(duration_us);
        self.release_at = Some(self.release_at.map_or(until, |r| r.max(until)));
        self.change(true, now_us)
    }

    /// Releases now, ending a hold or a pulse.
    pub fn release(&mut self, now_us: u64) -> Result<Option<RelayChange>, HwError> {
        self.release_at = None;
        self.change(false, now_us)
    }

    /// Releases at the pulse deadline; the change carries the deadline as its time.
    pub fn poll(&mut self, now_us: u64) -> Result<Option<RelayChange>, HwError> {
        match self.release_at {
            Some(at) if now_us >= at => {
                self.release_at = None;
                self.change(false, at)
            }
            _ => Ok(None),
        }
    }

    /// When `poll` must next be called for the pulse to end on time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.release_at
    }

    /// Whether the relay is energised now.
    pub fn is_energised(&self) -> bool {
        self.energised
    }

    /// The relay's name.
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

    #[test]
    fn pulse_energises_then_releases_exactly_at_the_deadline() {
        let pin = Mock::new(&[Transaction::set(State::Low), Transaction::set(State::High), Transaction::set(State::Low)]);
        let mut relay = Relay::new("north", pin, true).expect("mock pin");
        let on = relay.pulse(1_000, 3_000_000).expect("pulse");
        assert_eq!(on, Some(RelayChange { relay: "north".into(), energised: true, at_us: 1_000 }));
        assert_eq!(relay.next_deadline(), Some(3_001_000));
        assert_eq!(relay.poll(3_000_999).expect("poll"), None);
        assert!(relay.is_energised());
        // Polled late (the loop was busy): the change is stamped with the deadline itself.
        let off = relay.poll(3_050_000).expect("poll");
        assert_eq!(off, Some(RelayChange { relay: "north".into(), energised: false, at_us: 3_001_000 }));
        assert_eq!(relay.poll(9_000_000).expect("poll"), None);
        relay.into_pin().done();
    }

    #[test]
    fn active_low_relay_drives_low_to_energise() {
        let pin = Mock::new(&[Transaction::set(State::High), Transaction::set(State::Low), Transaction::set(State::High)]);
        let mut relay = Relay::new("south", pin, false).expect("mock pin");
        relay.energise(0).expect("energise");
        relay.release(10).expect("release");
        relay.into_pin().done();
    }

    #[test]
    fn a_second_pulse_extends_and_a_hold_is_not_cut_short() {
        let pin = Mock::new(&[Transaction::set(State::Low), Transaction::set(State::High), Transaction::set(State::Low)]);
        let mut relay = Relay::new("n", pin, true).expect("mock pin");
        relay.pulse(0, 1_000).expect("pulse");
        assert_eq!(relay.pulse(500, 2_000).expect("pulse"), None, "already energised: no new pin write");
        assert_eq!(relay.next_deadline(), Some(2_500));
        relay.pulse(600, 100).expect("pulse");
        assert_eq!(relay.next_deadline(), Some(2_500), "a shorter pulse never shortens");
        relay.energise(700).expect("hold");
        relay.pulse(800, 100).expect("pulse");
        assert_eq!(relay.poll(10_000).expect("poll"), None, "held: pulse deadline ignored");
        relay.release(20_000).expect("release");
        relay.into_pin().done();
    }

    #[test]
    fn pin_write_failure_is_a_typed_error_naming_the_relay() {
        let err = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::BrokenPipe);
        let pin = Mock::new(&[Transaction::set(State::Low), Transaction::set(State::High).with_error(err)]);
        let mut relay = Relay::new("east", pin, true).expect("mock pin");
        let msg = relay.pulse(0, 10).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("relay east: pin write failed"), "{msg}");
        assert!(!relay.is_energised());
        relay.into_pin().done();
    }
}
