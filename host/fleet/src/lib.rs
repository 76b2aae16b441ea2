//! gate-fleet: fleet operations over MQTT for the gate gateway — the versioned topic
//! scheme, JSON message types with published schemas, signed plugin bundles, the
//! deployment job state machine with automatic rollback, store-and-forward of the
//! event log, authorised remote commands, the MQTT link and the operator side.
//!
//! It does not depend on the host crate: the host implements [`deploy::PluginSlot`]
//! and executes authorised commands; everything else is here.

pub mod bundle;
pub mod commands;
pub mod deploy;
pub mod keys;
pub mod link;
pub mod messages;
pub mod outbox;
pub mod store;
pub mod topics;
