//! The gate gateway runtime.
//!
//! Data flows one way: hardware inputs → events → policy (sandboxed plugins,
//! with the host's fallback) → door controller / outputs → event log and
//! integrations. Each module below is one step of that flow.

pub mod audit;
pub mod bench;
pub mod bench_directory;
pub mod bench_languages;
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
pub mod harness;
pub mod plugin;
pub mod policy;
pub mod record;
pub mod replay;
pub mod report;
pub mod report_publish;
pub mod scaffold;
pub mod serve;
pub mod service;
pub mod store;
pub mod trace;
pub mod visitor;
pub mod worker;

/// Checks a published schema in `host/schema/` against what the code generates; a stale
/// file is regenerated and the test fails, so the change is reviewed and committed.
#[cfg(test)]
pub(crate) fn assert_schema_checked_in(file: &str, want: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema").join(file);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(want) {
        std::fs::write(&path, want).unwrap();
        panic!("host/schema/{file} was stale and has been regenerated: review and commit it");
    }
}
