//! Pin-level trace records: one level change of one named line at a time in microseconds.

use serde::{Deserialize, Serialize};

/// One level change of a named GPIO line, as recorded in a pin-level trace.
///
/// `at_us` counts microseconds since the trace (or the gateway) started; `level` is the
/// electrical level after the change (`true` = high), before any active-low inversion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinEdge {
    /// Microseconds since the start of the trace.
    pub at_us: u64,
    /// Line name from the `[hardware]` configuration, e.g. "north-in.d0" or "north-contact".
    pub line: String,
    /// Electrical level after the change (`true` = high).
    pub level: bool,
}

impl PinEdge {
    /// Builds an edge record.
    pub fn new(at_us: u64, line: impl Into<String>, level: bool) -> Self {
        PinEdge { at_us, line: line.into(), level }
    }
}
