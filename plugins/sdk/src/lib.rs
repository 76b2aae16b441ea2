//! SDK for gate plugins: the generated bindings of `gate:plugin@0.2.0` (both worlds) plus
//! small pure helpers (schedules, typed settings, a typed kv wrapper, logging shorthands).
//!
//! A policy plugin implements [`Policy`] and calls [`export_policy!`]; an integration plugin
//! implements [`Handler`] and calls [`export_integration!`]. See `plugins/README.md`.
//!
//! ```no_run
//! use gate_plugin_sdk::types::{AccessEvent, Decision, Role};
//! use gate_plugin_sdk::{logging, Policy, Settings};
//!
//! /// The rule as a pure function: testable natively.
//! pub fn rule(event: &AccessEvent, open_ms: u32) -> Decision {
//!     match &event.subject {
//!         Some(s) if s.role == Role::Resident => Decision::Grant(open_ms),
//!         Some(_) => Decision::deny("not a resident"),
//!         None => Decision::deny("unknown credential"),
//!     }
//! }
//!
//! struct MyPolicy;
//!
//! impl Policy for MyPolicy {
//!     fn decide(event: AccessEvent) -> Decision {
//!         // A malformed setting must not be guessed at: log it and trap (the host falls back).
//!         let open_ms = match Settings::host().u32_or("open-ms", 5000) {
//!             Ok(ms) => ms,
//!             Err(e) => {
//!                 logging::error(&e.to_string());
//!                 panic!("{e}");
//!             }
//!         };
//!         rule(&event, open_ms)
//!     }
//! }
//!
//! gate_plugin_sdk::export_policy!(MyPolicy);
//! ```

// Lets the generated code name this crate the same way from inside and from plugin crates.
extern crate self as gate_plugin_sdk;

#[doc(hidden)]
pub use wit_bindgen::rt as __rt;

/// Bindings of the `policy-plugin` world: shared types, log/clock/kv/config imports, `policy` export.
pub mod policy {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gate:plugin/policy-plugin@0.2.0",
        runtime_path: "gate_plugin_sdk::__rt",
        pub_export_macro: true,
        export_macro_name: "export_policy",
        default_bindings_module: "gate_plugin_sdk::policy",
        additional_derives: [PartialEq],
    });
}

/// Bindings of the `integration-plugin` world; it reuses the shared interfaces of [`policy`]
/// so both worlds speak the same Rust types.
pub mod integration {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "gate:plugin/integration-plugin@0.2.0",
        runtime_path: "gate_plugin_sdk::__rt",
        pub_export_macro: true,
        export_macro_name: "export_integration",
        default_bindings_module: "gate_plugin_sdk::integration",
        additional_derives: [PartialEq],
        with: {
            "gate:plugin/types@0.2.0": crate::policy::gate::plugin::types,
            "gate:plugin/log@0.2.0": crate::policy::gate::plugin::log,
            "gate:plugin/clock@0.2.0": crate::policy::gate::plugin::clock,
            "gate:plugin/kv@0.2.0": crate::policy::gate::plugin::kv,
            "gate:plugin/config@0.2.0": crate::policy::gate::plugin::config,
        },
    });
}

/// `export_policy!(MyPolicy)` / `export_integration!(MyHandler)` make a type the plugin's export.
pub use integration::export_integration;
pub use integration::exports::gate::plugin::handler::Guest as Handler;
pub use integration::gate::plugin::publish;
pub use policy::export_policy;
pub use policy::exports::gate::plugin::policy::Guest as Policy;
pub use policy::gate::plugin::{clock, config, kv, log, types};

pub mod logging;
pub mod names;
pub mod schedule;
pub mod settings;
pub mod store;

pub use schedule::{Schedule, ScheduleError};
pub use settings::{Settings, SettingsError};
pub use store::{HostKv, KvStore, MemoryKv, TypedKv};
