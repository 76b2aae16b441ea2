//! bad-integration: an integration plugin (serving no door) that misbehaves on every
//! event. Setting `mode` picks how:
//!
//! - `sleep`: `std::thread::sleep` of an hour (a WASI wait inside the host)
//! - `spin`: a busy loop that never returns (a hang cut only by the deadline)
//! - `flood`: publishes `per-event` messages (default 200) for every event, far past the
//!   publish rate limit, ignoring the refusals; for an alarm it first publishes the alarm
//!   to `alarm/<door>` like a real bridge would (the limit long spent by the flood)
//!
//! The host must keep deciding every door at once, never lose an alarm publish to the
//! rate limit, and count and report what it dropped.

use gate_plugin_sdk::types::GateEvent;
use gate_plugin_sdk::{publish, Handler, Settings};
use std::time::Duration;

struct BadIntegration;

impl Handler for BadIntegration {
    fn on_event(event: GateEvent) -> Result<(), String> {
        let settings = Settings::host();
        match settings.string_or("mode", "flood").as_str() {
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "flood" => {
                if let GateEvent::Alarm(a) = &event {
                    let body = format!("{{\"type\":\"alarm\",\"door\":\"{}\",\"kind\":\"{}\",\"active\":{}}}", a.door, a.kind.as_str(), a.active);
                    publish::publish(&format!("alarm/{}", a.door), body.as_bytes()).map_err(|e| format!("alarm publish refused: {e:?}"))?;
                }
                let per_event = settings.u32_or("per-event", 200).map_err(|e| e.to_string())?;
                for i in 0..per_event {
                    // Refusals (rate-limited) are ignored: this plugin floods regardless.
                    let _ = publish::publish(&format!("flood/{}", i % 10), b"{\"flood\":true}");
                }
                Ok(())
            }
            other => Err(format!("bad-integration: unknown mode `{other}`")),
        }
    }
}

gate_plugin_sdk::export_integration!(BadIntegration);
