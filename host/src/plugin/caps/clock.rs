//! `gate:plugin/clock`: the only clock a plugin has (virtual in replay).

use crate::clock::Clock;
use crate::plugin::bindings::policy::gate::plugin::clock::Host;
use crate::plugin::bindings::policy::gate::plugin::types::Timestamp;

/// The clock capability.
pub struct ClockCap {
    pub clock: Clock,
}

/// Converts a host time to the contract's timestamp.
pub fn timestamp(clock: &Clock, unix_ms: i64) -> Timestamp {
    let l = clock.local(unix_ms);
    Timestamp { unix_ms, weekday: l.weekday, minute_of_day: l.minute_of_day }
}

impl Host for ClockCap {
    fn now(&mut self) -> Timestamp {
        timestamp(&self.clock, self.clock.now_ms())
    }
}

/// WASI's wall clock, pointed at the gateway clock so `std::time` in a guest
/// agrees with the contract's clock and stays deterministic in replay.
pub struct WasiWall(pub Clock);

impl wasmtime_wasi::HostWallClock for WasiWall {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.now_ms().max(0) as u64)
    }
}

/// WASI's monotonic clock, likewise the gateway clock (in nanoseconds).
pub struct WasiMono(pub Clock);

impl wasmtime_wasi::HostMonotonicClock for WasiMono {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        (self.0.now_ms().max(0) as u64).saturating_mul(1_000_000)
    }
}
