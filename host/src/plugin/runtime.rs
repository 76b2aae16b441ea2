//! The wasmtime engine, linkers and compiled-component cache.
//!
//! One `Runtime` per gateway. Plugins get the contract's capabilities and a
//! WASI that is linked but empty: no files, no network, no environment, and
//! clocks that read the gateway clock.

use super::bindings::{integration, policy};
use super::caps::{clock::ClockCap, clock::WaitBudget, config::ConfigCap, kv::KvCap, log::LogCap, publish::PublishCap, SharedWindow};
use super::PluginError;
use crate::clock::Clock;
use crate::config::Limits;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// How calls are bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecMode {
    /// In service: epoch interruption bounds each call's wall time.
    Live,
    /// In replay: fuel bounds each call deterministically; the wall-clock
    /// deadline stays as a generous backstop.
    Deterministic,
}

/// Everything a plugin instance can reach, one field per capability.
pub struct State {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    /// Virtual time the current call may still spend waiting.
    pub(crate) waits: WaitBudget,
    pub(crate) log: LogCap,
    pub(crate) clock: ClockCap,
    pub(crate) kv: KvCap,
    pub(crate) config: ConfigCap,
    pub(crate) publish: PublishCap,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps the memory of one instance: every linear memory and every table of all the
/// instance's core modules add up to one total (a table element is counted as
/// [`TABLE_ELEMENT_BYTES`]). Records when a plugin hit the cap so its failure can say so.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    /// Bytes of memories and tables the instance holds now.
    total: usize,
    pub(crate) hit: bool,
}

/// What one table element is charged against the memory cap (a function reference
/// in wasmtime's tables is at most this large).
pub const TABLE_ELEMENT_BYTES: usize = 16;

/// Most elements one table may have, whatever the memory cap.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryCap { max_bytes, total: 0, hit: false }
    }

    /// Bytes of memories and tables the instance holds now.
    pub(crate) fn total_bytes(&self) -> usize {
        self.total
    }

    /// The cap in MiB, for messages.
    pub(crate) fn max_mb(&self) -> usize {
        self.max_bytes >> 20
    }

    /// Grants a growth of one memory or table from `current` to `desired` bytes if the
    /// instance's total stays within the cap.
    fn grow(&mut self, current: usize, desired: usize, max: Option<usize>) -> bool {
        if max.is_some_and(|m| desired > m) {
            // Fails on the memory's own maximum; nothing to charge.
            return false;
        }
        let after = self.total.saturating_sub(current).saturating_add(desired);
        if after > self.max_bytes {
            self.hit = true;
            return false;
        }
        self.total = after;
        true
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, max))
    }

    fn table_growing(&mut self, current: usize, desired: usize, max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Ok(false);
        }
        let bytes = |n: usize| n.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired), max.map(bytes)))
    }
}

/// What a plugin instance is given when it starts.
pub struct StateSpec<'a> {
    pub plugin: &'a str,
    pub clock: Clock,
    pub memory_bytes: usize,
    /// How long the plugin's waits may add up to per call (its deadline).
    pub wait_budget_ms: u64,
    /// The plugin's log budget, shared by all its instances.
    pub log_window: SharedWindow,
    pub kv: KvCap,
    pub settings: std::collections::BTreeMap<String, String>,
    pub prefix: &'a str,
    /// The plugin's publish budget, shared by all its instances.
    pub publish_window: SharedWindow,
    pub max_payload: usize,
}

/// A compiled component with the facts `gate plugin check` reports.
#[derive(Clone)]
pub struct Loaded {
    pub component: Component,
    pub sha256: String,
    pub size: usize,
}

/// The engine, linkers, cache and epoch ticker of one gateway.
pub struct Runtime {
    engine: Engine,
    mode: ExecMode,
    pub(crate) policy_linker: Linker<State>,
    pub(crate) integration_linker: Linker<State>,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
}

/// One epoch tick; deadlines are counted in these.
pub const TICK: Duration = Duration::from_millis(1);

impl Runtime {
    /// Builds the engine and linkers; `cache_dir` keeps precompiled plugins across restarts.
    pub fn new(mode: ExecMode, cache_dir: Option<PathBuf>) -> Result<Runtime, PluginError> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        cfg.consume_fuel(mode == ExecMode::Deterministic);
        cfg.max_wasm_stack(512 * 1024);
        // Multi-memory stays on (wasmtime's default, stated so a new default cannot change
        // which plugins load): the memory cap holds per instance across all its memories
        // (`MemoryCap`), so a core module with many memories gains nothing from them.
        cfg.wasm_multi_memory(true);
        cfg.cranelift_nan_canonicalization(mode == ExecMode::Deterministic);
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Engine(e.to_string()))?;

        let mut policy_linker = Linker::new(&engine);
        link_common(&mut policy_linker)?;
        let mut integration_linker = Linker::new(&engine);
        link_common(&mut integration_linker)?;
        integration::gate::plugin::publish::add_to_linker::<State, HasSelf<PublishCap>>(&mut integration_linker, |s| &mut s.publish).map_err(|e| PluginError::Engine(e.to_string()))?;
        if mode == ExecMode::Deterministic {
            // Replay: time in host calls is charged to the fuel budget (determinism under load).
            for l in [&mut policy_linker, &mut integration_linker] {
                super::meter::link_metered(l).map_err(|e| PluginError::Engine(e.to_string()))?;
            }
        }

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (eng, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("gate-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    eng.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(Runtime { engine, mode, policy_linker, integration_linker, cache_dir, ticker_stop })
    }

    /// A second handle on the same engine and linkers (no ticker of its own: the
    /// original's keeps the epochs moving). Components it compiles run in the original's
    /// stores, so a plugin can be compiled and linked off the policy thread and swapped in.
    pub fn sibling(&self) -> Runtime {
        Runtime {
            engine: self.engine.clone(),
            mode: self.mode,
            policy_linker: self.policy_linker.clone(),
            integration_linker: self.integration_linker.clone(),
            cache_dir: self.cache_dir.clone(),
            ticker_stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn mode(&self) -> ExecMode {
        self.mode
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads its precompiled form from the cache, within the
    /// site's `limits.max_component_bytes` and `limits.compile_ms`.
    pub fn load(&self, path: &Path, limits: &Limits) -> Result<Loaded, PluginError> {
        let read = |e| PluginError::Read { path: path.to_path_buf(), source: e };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > limits.max_component_bytes {
            return Err(PluginError::TooLarge { path: path.to_path_buf(), size, max: limits.max_component_bytes });
        }
        let bytes = std::fs::read(path).map_err(read)?;
        self.load_bytes(&bytes, path, limits)
    }

    /// Like `load`, from bytes already in memory (`path` only names them in errors).
    pub fn load_bytes(&self, bytes: &[u8], path: &Path, limits: &Limits) -> Result<Loaded, PluginError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > limits.max_component_bytes {
            return Err(PluginError::TooLarge { path: path.to_path_buf(), size, max: limits.max_component_bytes });
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let invalid = |e: wasmtime::Error| PluginError::Invalid { path: path.to_path_buf(), reason: format!("{e:#}") };
        if wasmparser_is_core_module(bytes) {
            return Err(PluginError::Invalid { path: path.to_path_buf(), reason: "this is a core WebAssembly module, not a component; build it for wasm32-wasip2".into() });
        }
        let component = match self.cache_path(&sha256) {
            None => {
                let compiled = self.compile_within(bytes, path, limits.compile_ms)?.map_err(invalid)?;
                // SAFETY: these bytes were produced by this engine just now.
                unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(invalid)?
            }
            Some(cached) => {
                // SAFETY: the cache directory is the gateway's own state; entries are
                // written only by `precompile_component` below, named by the source's
                // sha256 and this engine's compatibility hash, and wasmtime checks the
                // header again on load. A corrupt entry fails to load and is rebuilt.
                let hit = if cached.exists() { unsafe { Component::deserialize_file(&self.engine, &cached) }.ok() } else { None };
                match hit {
                    Some(c) => c,
                    None => {
                        let compiled = self.compile_within(bytes, path, limits.compile_ms)?.map_err(invalid)?;
                        if let Some(dir) = cached.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        let tmp = cached.with_extension("tmp");
                        if std::fs::write(&tmp, &compiled).and_then(|_| std::fs::rename(&tmp, &cached)).is_err() {
                            tracing::warn!(cache = %cached.display(), "could not write the plugin cache; compiling each start");
                        }
                        // SAFETY: these bytes were produced by this engine just now.
                        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(invalid)?
                    }
                }
            }
        };
        Ok(Loaded { component, sha256, size: bytes.len() })
    }

    /// Compiles on a helper thread and waits at most `budget_ms`. Cranelift cannot be
    /// interrupted: past the budget the component is refused and the helper finishes
    /// (and is dropped) in the background.
    fn compile_within(&self, bytes: &[u8], path: &Path, budget_ms: u64) -> Result<wasmtime::Result<Vec<u8>>, PluginError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, owned) = (self.engine.clone(), bytes.to_vec());
        std::thread::Builder::new()
            .name("gate-compile".into())
            .spawn(move || {
                let _ = tx.send(engine.precompile_component(&owned));
            })
            .map_err(|e| PluginError::Engine(format!("cannot start a compile thread: {e}")))?;
        rx.recv_timeout(Duration::from_millis(budget_ms)).map_err(|_| PluginError::CompileBudget { path: path.to_path_buf(), ms: budget_ms })
    }

    /// Whether the component at `path` has a precompiled entry in the cache (a start can
    /// load it at once instead of compiling).
    pub fn is_cached(&self, path: &Path) -> bool {
        let Ok(bytes) = std::fs::read(path) else { return false };
        self.cache_path(&hex::encode(Sha256::digest(&bytes))).is_some_and(|p| p.is_file())
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
    }

    /// A fresh, locked-down store for one plugin instance.
    pub fn new_store(&self, spec: StateSpec<'_>) -> wasmtime::Store<State> {
        let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
        wasi.wall_clock(super::caps::clock::WasiWall(spec.clock.clone()))
            .monotonic_clock(super::caps::clock::WasiMono(spec.clock.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if self.mode == ExecMode::Deterministic {
            wasi.secure_random(wasmtime_wasi::Deterministic::new(b"gate-replay".to_vec())).insecure_random(wasmtime_wasi::Deterministic::new(b"gate-replay-insecure".to_vec())).insecure_random_seed(0);
        }
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap::new(spec.memory_bytes),
            waits: WaitBudget::new(spec.wait_budget_ms),
            log: LogCap::new(spec.plugin, spec.clock.clone(), spec.log_window),
            clock: ClockCap { clock: spec.clock.clone() },
            kv: spec.kv,
            config: ConfigCap { settings: spec.settings },
            publish: PublishCap::new(spec.prefix, spec.clock, spec.publish_window, spec.max_payload),
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn link_common(linker: &mut Linker<State>) -> Result<(), PluginError> {
    let e = |e: wasmtime::Error| PluginError::Engine(e.to_string());
    wasmtime_wasi::p2::add_to_linker_sync(linker).map_err(e)?;
    super::caps::clock::link_virtual_waits(linker).map_err(e)?;
    use policy::gate::plugin as p;
    p::log::add_to_linker::<State, HasSelf<LogCap>>(linker, |s| &mut s.log).map_err(e)?;
    p::clock::add_to_linker::<State, HasSelf<ClockCap>>(linker, |s| &mut s.clock).map_err(e)?;
    p::kv::add_to_linker::<State, HasSelf<KvCap>>(linker, |s| &mut s.kv).map_err(e)?;
    p::config::add_to_linker::<State, HasSelf<ConfigCap>>(linker, |s| &mut s.config).map_err(e)?;
    Ok(())
}

/// A core module starts with the wasm magic and version 1; a component has a different layer.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::MemoryCap;
    use wasmtime::ResourceLimiter;

    const MIB: usize = 1 << 20;

    #[test]
    fn all_memories_and_tables_of_an_instance_share_one_cap() {
        let mut cap = MemoryCap::new(4 * MIB);
        // Two memories created at 2 MiB each fill the cap between them.
        assert!(cap.memory_growing(0, 2 * MIB, None).unwrap());
        assert!(cap.memory_growing(0, 2 * MIB, None).unwrap());
        assert!(!cap.hit);
        // Neither may grow, and a third memory or a table cannot be created.
        assert!(!cap.memory_growing(2 * MIB, 3 * MIB, None).unwrap());
        assert!(cap.hit);
        assert!(!cap.memory_growing(0, 64 * 1024, None).unwrap());
        assert!(!cap.table_growing(0, 10, None).unwrap());
    }

    #[test]
    fn tables_count_against_the_memory_cap() {
        let mut cap = MemoryCap::new(MIB);
        assert!(cap.table_growing(0, 60_000, None).unwrap()); // 960 000 bytes
        assert!(!cap.memory_growing(0, 128 * 1024, None).unwrap());
        assert!(cap.hit);
        let mut cap = MemoryCap::new(1 << 30);
        assert!(!cap.table_growing(0, 100_001, None).unwrap(), "the per-table element bound holds whatever the cap");
    }

    #[test]
    fn a_growth_refused_by_the_memory_maximum_is_not_charged() {
        let mut cap = MemoryCap::new(2 * MIB);
        assert!(!cap.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert!(!cap.hit);
        assert!(cap.memory_growing(0, 2 * MIB, None).unwrap());
    }
}
