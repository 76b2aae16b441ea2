//! spin-forever: a policy plugin whose `decide` never returns (a busy loop the optimiser
//! cannot remove). Simulates a hung plugin: the host's deadline (epoch or fuel) must cut it
//! off and the door must still open for card/PIN through the host's fallback.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::Policy;

struct SpinForever;

impl Policy for SpinForever {
    fn decide(event: AccessEvent) -> Decision {
        let mut counter: u64 = event.id.len() as u64;
        loop {
            // black_box makes every iteration observable, so the loop stays a real loop.
            counter = core::hint::black_box(counter.wrapping_add(1));
        }
    }
}

gate_plugin_sdk::export_policy!(SpinForever);
