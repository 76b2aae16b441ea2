//! deep-recursion: a policy plugin that recurses without bound, each frame keeping a buffer
//! alive across the (non-tail) call. Simulates a runaway recursive rule: the guest stack or
//! the engine's wasm stack limit must stop it with a trap, not crash the host.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::Policy;

struct DeepRecursion;

#[inline(never)]
fn dive(depth: u64) -> u64 {
    // The frame's buffer escapes through black_box, and its contents are used after the
    // recursive call returns: neither tail-call elimination nor a loop rewrite applies.
    // A base case no stack can reach keeps the compiler from flagging the recursion.
    if core::hint::black_box(depth) == u64::MAX {
        return depth;
    }
    let frame = core::hint::black_box([depth; 32]);
    let below = dive(core::hint::black_box(depth + 1));
    below.wrapping_add(frame.iter().sum::<u64>())
}

impl Policy for DeepRecursion {
    fn decide(event: AccessEvent) -> Decision {
        let n = dive(event.id.len() as u64);
        Decision::Grant(n as u32)
    }
}

gate_plugin_sdk::export_policy!(DeepRecursion);
