//! The gate gateway runtime.
//!
//! Data flows one way: hardware inputs → events → policy (sandboxed plugins,
//! with the host's fallback) → door controller / outputs → event log and
//! integrations. Each module below is one step of that flow.

pub mod audit;
pub mod bench;
pub mod bench_directory;
pub mod bench_service;
pub mod bounds;
pub mod call;
pub mod camera;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod door;
pub mod event;
pub mod face;
pub mod files;
pub mod fleet;
pub mod gateway;
pub mod hardware;
pub mod plugin;
pub mod policy;
pub mod record;
pub mod replay;
pub mod report;
pub mod report_publish;
pub mod serve;
pub mod service;
pub mod store;
pub mod trace;
pub mod visitor;
pub mod worker;
