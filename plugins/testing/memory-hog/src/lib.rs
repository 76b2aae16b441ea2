//! memory-hog: a policy plugin that allocates 1 MiB chunks without bound and keeps every one
//! alive. Simulates a leaking plugin: the host's memory cap must stop it (the allocation
//! fails and the guest traps) without harming the gateway.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::Policy;

struct MemoryHog;

const CHUNK: usize = 1 << 20;

impl Policy for MemoryHog {
    fn decide(_event: AccessEvent) -> Decision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            // Touch the chunk so it is real memory, and hide it from the optimiser.
            chunk[CHUNK - 1] = hoard.len() as u8;
            hoard.push(core::hint::black_box(chunk));
            core::hint::black_box(&hoard);
        }
    }
}

gate_plugin_sdk::export_policy!(MemoryHog);
