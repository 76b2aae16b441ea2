//! Simulated pins implementing the embedded-hal traits, and the set of named lines a
//! pin-level trace drives, so the real drivers decode simulated hardware unchanged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embedded_hal::digital::{ErrorType, InputPin, OutputPin, StatefulOutputPin};

use crate::edge::PinEdge;
use crate::error::HwError;

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
