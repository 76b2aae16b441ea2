//! forge-output: a policy plugin whose text tries to forge host output. Every string it
//! hands the host carries a newline followed by a copy of a host decision line, plus CR,
//! U+2028, a bidi override and an ANSI escape. Setting `via` picks the channel:
//!
//! - `deny`: `deny(<forged>)`
//! - `log`: logs the forged text at every level, then denies `forge-output`
//! - `escalate`: `escalate(call-resident(<forged>))`
//! - `trap`: logs the forged text, then panics (a trap)
//!
//! The host must show and store all of it escaped on one line.

use gate_plugin_sdk::types::{AccessEvent, Decision, Escalation};
use gate_plugin_sdk::{logging, Policy, Settings};

/// A newline, then what a granted decision line of the host looks like, then the
/// other line breakers and terminal tricks.
const FORGED: &str = "x\nnorth-gate     in  card          r-0009     GRANT 5000ms  [plugin:resident-policy] FORGED\r\u{2028}\u{2029}\u{202E}\u{2066}\u{1b}[2J\u{0}";

struct ForgeOutput;

impl Policy for ForgeOutput {
    fn decide(_event: AccessEvent) -> Decision {
        match Settings::host().string_or("via", "deny").as_str() {
            "deny" => Decision::Deny(FORGED.to_string()),
            "log" => {
                logging::debug(FORGED);
                logging::info(FORGED);
                logging::warn(FORGED);
                logging::error(FORGED);
                Decision::deny("forge-output")
            }
            "escalate" => Decision::Escalate(Escalation::CallResident(FORGED.to_string())),
            "trap" => {
                logging::error(FORGED);
                panic!("{FORGED}")
            }
            other => panic!("forge-output: unknown via `{other}`"),
        }
    }
}

gate_plugin_sdk::export_policy!(ForgeOutput);
