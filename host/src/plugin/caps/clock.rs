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

/// A plugin's waits (`std::thread::sleep`, `poll` on a monotonic-clock
/// subscription) run on virtual time: they never block the host. Each call may
/// wait in total as long as its deadline; a wait that would reach past it traps
/// the call as a deadline miss. Shorter waits are ready at once.
#[derive(Debug, Default)]
pub struct WaitBudget {
    limit_ns: u64,
    used_ns: u64,
}

impl WaitBudget {
    /// A budget of `deadline_ms` per call.
    pub fn new(deadline_ms: u64) -> Self {
        WaitBudget { limit_ns: deadline_ms.saturating_mul(1_000_000), used_ns: 0 }
    }

    /// Starts a new call with the full budget.
    pub fn reset(&mut self) {
        self.used_ns = 0;
    }

    /// Charges a wait of `ns`; an error when the call's deadline would pass.
    pub fn charge(&mut self, ns: u64) -> Result<(), WaitPastDeadline> {
        let used = self.used_ns.saturating_add(ns);
        if used >= self.limit_ns && ns > 0 {
            return Err(WaitPastDeadline { requested_ns: ns });
        }
        self.used_ns = used;
        Ok(())
    }
}

/// A plugin asked to wait past its call's deadline; the call is a timeout.
#[derive(Debug, thiserror::Error)]
#[error("plugin waited past its deadline ({requested_ns} ns requested)")]
pub struct WaitPastDeadline {
    /// How long the refused wait was.
    pub requested_ns: u64,
}

/// The pollable handed back for a wait that fits the budget: ready at once.
struct VirtualWait;

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for VirtualWait {
    async fn ready(&mut self) {}
}

/// The WASI monotonic-clock interface the host's WASI links (same package version).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces WASI's `subscribe-duration` and `subscribe-instant` (which sleep on the
/// host's real clock, where neither epoch interruption nor fuel can reach) with
/// waits on virtual time charged to the call's [`WaitBudget`]. Every other WASI
/// pollable is ready at once in the host's empty WASI (closed stdin, discarding
/// stdout/stderr, no sockets, no files), so no WASI call can block a plugin call.
pub fn link_virtual_waits(linker: &mut wasmtime::component::Linker<crate::plugin::runtime::State>) -> wasmtime::Result<()> {
    use crate::plugin::runtime::State;
    use wasmtime::component::Resource;
    use wasmtime::StoreContextMut;
    use wasmtime_wasi::p2::DynPollable;

    fn wait(state: &mut State, ns: u64) -> wasmtime::Result<(Resource<DynPollable>,)> {
        state.waits.charge(ns)?;
        let res = state.table.push(VirtualWait)?;
        Ok((wasmtime_wasi::p2::subscribe(&mut state.table, res)?,))
    }

    linker.allow_shadowing(true);
    let mut inst = linker.instance(MONOTONIC_CLOCK)?;
    inst.func_wrap("subscribe-duration", |mut store: StoreContextMut<'_, State>, (ns,): (u64,)| wait(store.data_mut(), ns))?;
    inst.func_wrap("subscribe-instant", |mut store: StoreContextMut<'_, State>, (when,): (u64,)| {
        let state = store.data_mut();
        let now = (state.clock.clock.now_ms().max(0) as u64).saturating_mul(1_000_000);
        wait(state, when.saturating_sub(now))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::WaitBudget;

    #[test]
    fn waits_add_up_to_the_deadline_then_trap() {
        let mut b = WaitBudget::new(20);
        assert!(b.charge(0).is_ok());
        for _ in 0..19 {
            assert!(b.charge(1_000_000).is_ok());
        }
        assert!(b.charge(1_000_000).is_err(), "the 20th millisecond reaches the deadline");
        assert!(b.charge(u64::MAX).is_err());
        b.reset();
        assert!(b.charge(19_000_000).is_ok());
    }
}
