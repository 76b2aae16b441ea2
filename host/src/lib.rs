//! The gate gateway runtime.
//!
//! Data flows one way: hardware inputs → events → policy (sandboxed plugins,
//! with the host's fallback) → door controller / outputs → event log and
//! integrations. Each module below is one step of that flow.

pub mod clock;
pub mod config;
pub mod credentials;
pub mod event;
pub mod face;
pub mod camera;
pub mod plugin;
pub mod store;
pub mod door;
pub mod gateway;
pub mod policy;
pub mod replay;
pub mod trace;
pub mod bench;
pub mod live;
pub mod hardware;
pub mod record;
pub mod worker;
pub mod fleet;
