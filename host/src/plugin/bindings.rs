//! Host-side bindings of the WIT contract (`wit/gate-plugin.wit`).

/// Bindings of the `policy-plugin` world.
pub mod policy {
    wasmtime::component::bindgen!({
        world: "policy-plugin",
        path: "../wit",
    });
}

/// Bindings of the `integration-plugin` world; shares the imported interfaces with `policy`.
pub mod integration {
    wasmtime::component::bindgen!({
        world: "integration-plugin",
        path: "../wit",
        with: {
            "gate:plugin/types": super::policy::gate::plugin::types,
            "gate:plugin/log": super::policy::gate::plugin::log,
            "gate:plugin/clock": super::policy::gate::plugin::clock,
            "gate:plugin/kv": super::policy::gate::plugin::kv,
            "gate:plugin/config": super::policy::gate::plugin::config,
        },
    });
}
