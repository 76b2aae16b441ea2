//! One loaded plugin and its live instance: calls it under a deadline, a fuel
//! budget and a memory cap, and turns every way a call can go wrong into a
//! typed fault. A faulted instance is thrown away; the next call starts fresh.

use super::bindings::policy::gate::plugin::types::{AccessEvent, Decision, GateEvent};
use super::bindings::{integration::IntegrationPlugin, integration::IntegrationPluginPre, policy::PolicyPlugin, policy::PolicyPluginPre};
use super::caps::clock::WaitPastDeadline;
use super::caps::kv::KvCap;
use super::caps::SharedWindow;
use super::runtime::{ExecMode, Loaded, Runtime, State, StateSpec};
use super::text::sanitize;
use super::{PluginError, PluginFault};
use crate::clock::Clock;
use crate::config::{Limits, PluginConfig, World};
use std::collections::BTreeMap;
use std::time::Instant;
use wasmtime::{Store, Trap};

enum Pre {
    Policy(PolicyPluginPre<State>),
    Integration(IntegrationPluginPre<State>),
}

enum Bound {
    Policy(PolicyPlugin),
    Integration(IntegrationPlugin),
}

/// Side effects of a successful call, for the gateway to persist and forward.
#[derive(Debug, Default)]
pub struct Effects {
    /// kv writes to persist (None = delete).
    pub kv_changes: BTreeMap<String, Option<Vec<u8>>>,
    /// Messages published (full topic, payload).
    pub published: Vec<(String, Vec<u8>)>,
    /// Log lines the rate limit dropped during the call.
    pub logs_dropped: u64,
    /// Publishes the rate limit refused during the call (counted and reported, not a failure).
    pub publishes_refused: u64,
}

/// Publishes one call handling an alarm may make past the publish rate limit.
pub const ALARM_PUBLISH_ALLOWANCE: u32 = 8;

/// A plugin ready to be called.
pub struct Slot {
    name: String,
    world: World,
    pre: Pre,
    live: Option<(Store<State>, Bound)>,
    /// kv contents that survive instance restarts.
    kv: BTreeMap<String, Vec<u8>>,
    settings: BTreeMap<String, String>,
    prefix: String,
    limits: Limits,
    clock: Clock,
    mode: ExecMode,
    /// Log and publish budgets of the plugin, kept across instances.
    log_window: SharedWindow,
    publish_window: SharedWindow,
    /// sha256 of the component, for status reports.
    pub sha256: String,
}

/// How long a deterministic (replay) call may take in wall time before the backstop
/// deadline fires. Fuel ends every call long before (wasm instructions, and host calls
/// through `plugin::meter`; no host call blocks), so the backstop is far out of reach even
/// on a loaded machine and never decides an outcome fuel would decide differently: it
/// only guards against a host bug.
pub const REPLAY_BACKSTOP_MS: u64 = 60_000;

impl Slot {
    /// Prepares a plugin for calls: type-checks it against its world and links it.
    pub fn new(rt: &Runtime, cfg: &PluginConfig, loaded: &Loaded, limits: &Limits, clock: Clock, kv: BTreeMap<String, Vec<u8>>) -> Result<Slot, PluginError> {
        let wrong = |e: wasmtime::Error| PluginError::Contract { plugin: cfg.name.clone(), world: cfg.world, reason: format!("{e:#}") };
        super::check::check_version(&loaded.component).map_err(wrong)?;
        let pre = match cfg.world {
            World::Policy => {
                let ip = rt.policy_linker.instantiate_pre(&loaded.component).map_err(wrong)?;
                super::check::typecheck_exports(&ip, World::Policy).map_err(wrong)?;
                Pre::Policy(PolicyPluginPre::new(ip).map_err(wrong)?)
            }
            World::Integration => {
                let ip = rt.integration_linker.instantiate_pre(&loaded.component).map_err(wrong)?;
                super::check::typecheck_exports(&ip, World::Integration).map_err(wrong)?;
                Pre::Integration(IntegrationPluginPre::new(ip).map_err(wrong)?)
            }
        };
        Ok(Slot {
            name: cfg.name.clone(),
            world: cfg.world,
            pre,
            live: None,
            kv,
            settings: cfg.settings.clone(),
            prefix: cfg.prefix.clone().unwrap_or_default(),
            limits: limits.clone(),
            clock,
            mode: rt.mode(),
            log_window: SharedWindow::new(limits.log_lines_per_sec),
            publish_window: SharedWindow::new(limits.publish_per_sec),
            sha256: loaded.sha256.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn world(&self) -> World {
        self.world
    }

    /// Asks a policy plugin to decide an access event.
    pub fn decide(&mut self, rt: &Runtime, event: &AccessEvent) -> Result<(Decision, Effects), PluginFault> {
        self.call(rt, |store, bound| match bound {
            Bound::Policy(p) => p.gate_plugin_policy().call_decide(store, event),
            Bound::Integration(_) => Err(wasmtime::Error::msg("not a policy plugin")),
        })
    }

    /// Hands a decided event or alarm to an integration plugin.
    /// An alarm may publish past the rate limit (within [`ALARM_PUBLISH_ALLOWANCE`]); a call
    /// whose error follows a publish the rate limit refused is counted as dropped
    /// publishes, not as the plugin's failure (the limit is the host's, not a fault).
    pub fn on_event(&mut self, rt: &Runtime, event: &GateEvent) -> Result<Effects, PluginFault> {
        let allowance = if matches!(event, GateEvent::Alarm(_)) { ALARM_PUBLISH_ALLOWANCE } else { 0 };
        let (res, effects) = self.call(rt, |store, bound| {
            store.data_mut().publish.alarm_allowance = allowance;
            match bound {
                Bound::Integration(p) => p.gate_plugin_handler().call_on_event(store, event),
                Bound::Policy(_) => Err(wasmtime::Error::msg("not an integration plugin")),
            }
        })?;
        match res {
            Ok(()) => Ok(effects),
            Err(_) if effects.publishes_refused > 0 => Ok(effects),
            Err(msg) => Err(PluginFault::Refused(sanitize(&msg, 200))),
        }
    }

    /// Drops the live instance; the next call instantiates afresh.
    pub fn reset(&mut self) {
        if let Some((store, _)) = self.live.take() {
            self.kv = store.into_data().kv.into_committed();
        }
    }

    /// Makes sure a live instance is ready, so that the next call does not pay for creating
    /// one: called off the decision path (before a swap, and by the plugin's thread after each
    /// call). A failure here is reported by the next call, which tries again.
    pub fn prepare(&mut self, rt: &Runtime) -> Result<(), PluginFault> {
        self.ensure_instance(rt)
    }

    /// Bytes of linear memory and tables the live instance holds (0 without one), for `gate bench`.
    pub fn instance_bytes(&self) -> usize {
        self.live.as_ref().map_or(0, |(store, _)| store.data().limiter.total_bytes())
    }

    /// Time to build a fresh instance, for `gate bench`.
    pub fn instantiate_fresh(&mut self, rt: &Runtime) -> Result<std::time::Duration, PluginFault> {
        self.reset();
        let t = Instant::now();
        self.ensure_instance(rt)?;
        Ok(t.elapsed())
    }

    fn ensure_instance(&mut self, rt: &Runtime) -> Result<(), PluginFault> {
        if self.live.is_some() {
            return Ok(());
        }
        let kv = KvCap::new(std::mem::take(&mut self.kv), self.limits.kv_quota_bytes);
        let mut store = rt.new_store(StateSpec {
            plugin: &self.name,
            clock: self.clock.clone(),
            memory_bytes: (self.limits.memory_mb as usize) << 20,
            wait_budget_ms: self.limits.deadline_ms,
            log_window: self.log_window.clone(),
            kv,
            settings: self.settings.clone(),
            prefix: &self.prefix,
            publish_window: self.publish_window.clone(),
            max_payload: self.limits.max_payload_bytes,
        });
        self.arm(&mut store);
        let bound = match &self.pre {
            Pre::Policy(p) => p.instantiate(&mut store).map(Bound::Policy),
            Pre::Integration(p) => p.instantiate(&mut store).map(Bound::Integration),
        };
        match bound {
            Ok(b) => {
                self.live = Some((store, b));
                Ok(())
            }
            Err(e) => {
                let fault = classify(&e, &store);
                self.kv = store.into_data().kv.into_committed();
                Err(match fault {
                    PluginFault::Trap(m) => PluginFault::Instantiate(m),
                    other => other,
                })
            }
        }
    }

    /// Sets the per-call budget: wall-clock deadline, and fuel in replay.
    fn arm(&self, store: &mut Store<State>) {
        let deadline_ms = match self.mode {
            ExecMode::Live => self.limits.deadline_ms,
            ExecMode::Deterministic => self.limits.deadline_ms.max(REPLAY_BACKSTOP_MS),
        };
        store.set_epoch_deadline(deadline_ms.max(1));
        store.data_mut().waits.reset();
        if self.mode == ExecMode::Deterministic {
            // Cannot fail: fuel is enabled on deterministic engines.
            let _ = store.set_fuel(self.limits.fuel);
        }
    }

    fn call<R>(&mut self, rt: &Runtime, f: impl FnOnce(&mut Store<State>, &Bound) -> wasmtime::Result<R>) -> Result<(R, Effects), PluginFault> {
        self.ensure_instance(rt)?;
        let Some((mut store, bound)) = self.live.take() else {
            return Err(PluginFault::Instantiate("instance vanished".into()));
        };
        self.arm(&mut store);
        store.data_mut().limiter.hit = false;
        store.data_mut().publish.refused = 0;
        match f(&mut store, &bound) {
            Ok(r) => {
                let data = store.data_mut();
                let effects = Effects {
                    kv_changes: data.kv.commit(),
                    published: std::mem::take(&mut data.publish.outbox),
                    logs_dropped: std::mem::take(&mut data.log.dropped),
                    publishes_refused: std::mem::take(&mut data.publish.refused),
                };
                self.live = Some((store, bound));
                Ok((r, effects))
            }
            Err(e) => {
                let fault = classify(&e, &store);
                // A trapped instance is poisoned: keep only the committed kv.
                self.kv = store.into_data().kv.into_committed();
                Err(fault)
            }
        }
    }
}

fn classify(e: &wasmtime::Error, store: &Store<State>) -> PluginFault {
    if store.data().limiter.hit {
        return PluginFault::OutOfMemory { mb: store.data().limiter.max_mb() };
    }
    if e.downcast_ref::<WaitPastDeadline>().is_some() {
        return PluginFault::Timeout;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginFault::Timeout,
        Some(Trap::OutOfFuel) => PluginFault::OutOfFuel,
        Some(Trap::StackOverflow) => PluginFault::StackOverflow,
        Some(t) => PluginFault::Trap(t.to_string()),
        // The message carries the plugin's own text and function names (its backtrace).
        None => PluginFault::Trap(sanitize(&format!("{e:#}"), 300)),
    }
}
