//! In replay, time a plugin spends inside host calls is charged to its fuel budget, so
//! the outcome of a call depends on what it did, never on how busy the machine was:
//! each call into the `kv` and `log` capabilities costs [`HOST_CALL_FUEL`] plus
//! [`FUEL_PER_BYTE`] for every byte it moves across the boundary (keys, values, key
//! lists, messages). A plugin that hammers the host runs out of fuel, deterministically,
//! long before the wall-clock backstop could fire.

use super::bindings::policy::gate::plugin::kv::{Host as _, KvError};
use super::bindings::policy::gate::plugin::log::{Host as _, Level};
use super::runtime::State;
use wasmtime::component::Linker;
use wasmtime::{StoreContextMut, Trap};

/// Fuel one host call costs, whatever it moves (about what a few hundred ns of host work
/// are worth in wasm instructions).
pub const HOST_CALL_FUEL: u64 = 1_000;

/// Fuel per byte a host call moves across the boundary (in either direction).
pub const FUEL_PER_BYTE: u64 = 4;

/// What a host call moving `bytes` costs.
pub fn cost(bytes: usize) -> u64 {
    HOST_CALL_FUEL.saturating_add((bytes as u64).saturating_mul(FUEL_PER_BYTE))
}

/// Takes `cost(bytes)` from the store's fuel; out of fuel traps the call as `OutOfFuel`.
fn charge(store: &mut StoreContextMut<'_, State>, bytes: usize) -> wasmtime::Result<()> {
    let cost = cost(bytes);
    let left = store.get_fuel()?;
    if left < cost {
        store.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)
}

/// The interfaces it shadows, at the contract version this host serves (a stale version
/// here would shadow nothing and leave host calls unmetered).
fn interface(name: &str) -> String {
    format!("gate:plugin/{name}@{}", super::CONTRACT_VERSION)
}

/// Replaces the `kv` and `log` imports with fuel-charging versions (deterministic engines
/// only: live engines have no fuel, and their calls are bounded by the wall-clock deadline).
pub fn link_metered(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut kv = linker.instance(&interface("kv"))?;
    kv.func_wrap("get", |mut store: StoreContextMut<'_, State>, (key,): (String,)| {
        let n = key.len();
        let v = store.data_mut().kv.get(key);
        charge(&mut store, n + v.as_ref().map_or(0, Vec::len))?;
        Ok((v,))
    })?;
    kv.func_wrap("set", |mut store: StoreContextMut<'_, State>, (key, value): (String, Vec<u8>)| {
        charge(&mut store, key.len() + value.len())?;
        let r: Result<(), KvError> = store.data_mut().kv.set(key, value);
        Ok((r,))
    })?;
    kv.func_wrap("delete", |mut store: StoreContextMut<'_, State>, (key,): (String,)| {
        charge(&mut store, key.len())?;
        store.data_mut().kv.delete(key);
        Ok(())
    })?;
    kv.func_wrap("keys", |mut store: StoreContextMut<'_, State>, (prefix,): (String,)| {
        let n = prefix.len();
        let keys = store.data_mut().kv.keys(prefix);
        charge(&mut store, n + keys.iter().map(String::len).sum::<usize>())?;
        Ok((keys,))
    })?;
    let mut log = linker.instance(&interface("log"))?;
    log.func_wrap("log", |mut store: StoreContextMut<'_, State>, (level, message): (Level, String)| {
        charge(&mut store, message.len())?;
        store.data_mut().log.log(level, message);
        Ok(())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_host_call_costs_fuel_and_bytes_cost_more() {
        assert_eq!(super::cost(0), super::HOST_CALL_FUEL);
        assert!(super::cost(1 << 20) > 4_000_000);
        assert_eq!(super::cost(usize::MAX), u64::MAX);
    }
}
