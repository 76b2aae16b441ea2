//! kv-keyspace: a policy plugin that hammers the kv capability. Setting `mode`:
//!
//! - `keyspace` (default): fills its kv with small keys up to the quota, then lists and
//!   reads the whole keyspace again and again without end. Nearly all its time is spent
//!   inside host calls, where wasm fuel does not tick: in replay the host must charge those
//!   calls to the fuel budget, so the same trace always ends the same way however loaded
//!   the machine is.
//! - `delete-huge`: deletes `deletes` (default 1000) keys of 1 MiB each in one call, then
//!   grants residents. The host must neither keep nor store any of them.
//! - `busy`: `rounds` (default 50) rounds of set / get / keys on a few keys, then grants
//!   residents: a plugin that decides, after many host calls.

use gate_plugin_sdk::types::{AccessEvent, Decision, Role};
use gate_plugin_sdk::{kv, Policy, Settings};

struct KvKeyspace;

fn verdict(event: &AccessEvent) -> Decision {
    match &event.subject {
        Some(s) if matches!(s.role, Role::Resident | Role::Staff) => Decision::Grant(5000),
        Some(_) => Decision::deny("not a resident"),
        None => Decision::deny("unknown credential"),
    }
}

impl Policy for KvKeyspace {
    fn decide(event: AccessEvent) -> Decision {
        let settings = Settings::host();
        match settings.string_or("mode", "keyspace").as_str() {
            "keyspace" => {
                let mut i: u32 = 0;
                while kv::set(&format!("k{i:06}"), b"v").is_ok() {
                    i += 1;
                }
                let mut seen: u64 = 0;
                loop {
                    for k in kv::keys("") {
                        seen = core::hint::black_box(seen.wrapping_add(kv::get(&k).map_or(0, |v| v.len() as u64)));
                    }
                }
            }
            "delete-huge" => {
                let n = settings.u32_or("deletes", 1000).unwrap_or(1000);
                let mut key = "k".repeat(1 << 20);
                for i in 0..n {
                    key.replace_range(0..1, if i % 2 == 0 { "a" } else { "b" });
                    kv::delete(&key);
                }
                verdict(&event)
            }
            "busy" => {
                let rounds = settings.u32_or("rounds", 50).unwrap_or(50);
                let mut total: u64 = 0;
                for r in 0..rounds {
                    let key = format!("busy/{}", r % 4);
                    let _ = kv::set(&key, &r.to_le_bytes());
                    total = total.wrapping_add(kv::get(&key).map_or(0, |v| v.len() as u64));
                    total = total.wrapping_add(kv::keys("busy/").len() as u64);
                }
                core::hint::black_box(total);
                verdict(&event)
            }
            other => panic!("kv-keyspace: unknown mode `{other}`"),
        }
    }
}

gate_plugin_sdk::export_policy!(KvKeyspace);
