//! gate-fleet: fleet operations over MQTT for the gate gateway — the versioned topic
//! scheme, JSON message types with published schemas, signed plugin bundles, the
//! deployment job state machine with automatic rollback, store-and-forward of the
//! event log, authorised remote commands, the MQTT link and the operator side.
//!
//! It does not depend on the host crate: the host implements [`deploy::PluginSlot`]
//! and [`agent::CommandExecutor`]; everything else is here.

pub mod agent;
#[cfg(feature = "testing")]
pub mod bench;
pub mod bundle;
pub mod commands;
pub mod deploy;
pub mod inventory;
pub mod keys;
pub mod limit;
pub mod link;
pub mod messages;
pub mod operator;
pub mod outbox;
pub mod schema;
pub mod signed;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topics;
