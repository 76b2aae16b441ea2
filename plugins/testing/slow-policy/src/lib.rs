//! slow-policy: a policy plugin that decides correctly (residents and staff in, others
//! out) but slowly: before each decision it spins `spin` iterations (default 12,000,000,
//! about 8–15 ms a call on the project's CI machine), varied by the event id between 80 %
//! and 150 %. At 100 reads/s its calls cannot keep up: the host must bound how long a read
//! waits for it and decide late reads with the fallback at once, never grant seconds late.

use gate_plugin_sdk::types::{AccessEvent, Decision, Role};
use gate_plugin_sdk::{Policy, Settings};

struct SlowPolicy;

impl Policy for SlowPolicy {
    fn decide(event: AccessEvent) -> Decision {
        let base = Settings::host().u32_or("spin", 12_000_000).unwrap_or(12_000_000) as u64;
        let vary = event.id.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 8;
        let iterations = base * (8 + vary) / 10;
        let mut n: u64 = 0;
        for _ in 0..iterations {
            n = core::hint::black_box(n.wrapping_add(1));
        }
        match &event.subject {
            Some(s) if matches!(s.role, Role::Resident | Role::Staff) => Decision::Grant(5000),
            Some(_) => Decision::deny("not a resident"),
            None => Decision::deny("unknown credential"),
        }
    }
}

gate_plugin_sdk::export_policy!(SlowPolicy);
