//! The plugin runtime: wasmtime components under a deadline, a memory cap and
//! (in replay) a fuel budget, with the contract's capabilities and nothing else.

pub mod bindings;
pub mod caps;
pub mod check;
pub mod meter;
pub mod runtime;
pub mod slot;
pub mod text;

use crate::config::World;
use std::path::PathBuf;
use thiserror::Error;

pub use runtime::{ExecMode, Loaded, Runtime};

/// The version of the plugin contract this host serves (`package gate:plugin@…` in
/// `wit/gate-plugin.wit`); components built against another version are refused by name.
pub const CONTRACT_VERSION: &str = "0.2.0";
pub use slot::{Effects, Slot};

/// Loading or linking a plugin failed; the gateway reports it and serves the
/// plugin's doors with the fallback.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("cannot read plugin {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid component: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("component {} is {size} bytes, above `limits.max_component_bytes` = {max}", path.display())]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("compiling component {} took longer than `limits.compile_ms` = {ms} ms", path.display())]
    CompileBudget { path: PathBuf, ms: u64 },
    #[error("plugin `{plugin}` does not fit the {world:?} world of gate:plugin@{CONTRACT_VERSION}: {reason}")]
    Contract { plugin: String, world: World, reason: String },
    /// `gate plugin check` could not start an instance within the limits (e.g. its
    /// memories together exceed the memory cap).
    #[error("{} does not start within the limits: {fault}", path.display())]
    DoesNotStart { path: PathBuf, fault: PluginFault },
}

/// One call that went wrong. The event is then decided by the host's fallback.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PluginFault {
    #[error("deadline exceeded")]
    Timeout,
    #[error("instruction budget exhausted")]
    OutOfFuel,
    /// The instance's memories and tables together needed more than `limits.memory_mb`.
    #[error("memory cap reached (`limits.memory_mb` = {mb} MiB for all memories and tables of one instance)")]
    OutOfMemory { mb: usize },
    #[error("stack overflow")]
    StackOverflow,
    #[error("trap: {0}")]
    Trap(String),
    #[error("could not instantiate: {0}")]
    Instantiate(String),
    #[error("invalid decision: {0}")]
    Invalid(String),
    #[error("plugin reported an error: {0}")]
    Refused(String),
    #[error("quarantined")]
    Quarantined,
}
