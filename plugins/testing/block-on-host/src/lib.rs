//! block-on-host: a policy plugin whose `decide` calls, without end, a host import that
//! could block inside the host where neither epoch interruption nor fuel reaches. Setting
//! `call` picks the import:
//!
//! - `sleep`: `std::thread::sleep` of an hour (monotonic-clock `subscribe-duration` + block)
//! - `short-sleeps`: `std::thread::sleep(1 ms)` in a loop
//! - `poll-instant`: `poll` on `subscribe-instant(u64::MAX)`, the far future
//! - `block-duration`: `pollable.block` on `subscribe-duration(u64::MAX)`
//! - `stdin-read`: `read` from stdin (WASI `blocking-read`) in a loop
//! - `stdout-flush`: write + flush to stdout (WASI `blocking-write-and-flush`) in a loop
//!
//! The host must cut every one at the call's deadline, decide the event with its fallback
//! and quarantine the plugin after repeated failures. An unknown `call` traps.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::{Policy, Settings};
use std::io::{Read, Write};
use std::time::Duration;

mod wasi_waits {
    wit_bindgen::generate!({ path: "wit", world: "waits", generate_all });
}
use wasi_waits::wasi::clocks::monotonic_clock;
use wasi_waits::wasi::io::poll;

struct BlockOnHost;

impl Policy for BlockOnHost {
    fn decide(_event: AccessEvent) -> Decision {
        let call = Settings::host().string_or("call", "sleep");
        match call.as_str() {
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "short-sleeps" => loop {
                std::thread::sleep(Duration::from_millis(1));
            },
            "poll-instant" => loop {
                let p = monotonic_clock::subscribe_instant(u64::MAX);
                core::hint::black_box(poll::poll(&[&p]));
            },
            "block-duration" => loop {
                monotonic_clock::subscribe_duration(u64::MAX).block();
            },
            "stdin-read" => {
                let mut buf = [0u8; 64];
                loop {
                    core::hint::black_box(std::io::stdin().read(&mut buf).ok());
                }
            }
            "stdout-flush" => loop {
                let mut out = std::io::stdout();
                core::hint::black_box(out.write_all(b"GRANT north-gate by plugin\n").and_then(|_| out.flush()).ok());
            },
            other => panic!("block-on-host: unknown call `{other}`"),
        }
    }
}

gate_plugin_sdk::export_policy!(BlockOnHost);
