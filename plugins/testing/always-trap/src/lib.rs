//! always-trap: a policy plugin that traps on every call (a panic, which aborts to a wasm
//! trap). Simulates a plugin with a bug on every path: the host must answer each event with
//! its fallback, keep card/PIN entry working and quarantine the plugin after repeated failures.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::Policy;

struct AlwaysTrap;

impl Policy for AlwaysTrap {
    fn decide(event: AccessEvent) -> Decision {
        panic!("always-trap: trapping on purpose for event {}", event.id)
    }
}

gate_plugin_sdk::export_policy!(AlwaysTrap);
