//! resident-policy: a site policy to start from. Residents pass with face, card, PIN, NFC or
//! (at vehicle doors) plate; staff and contractors within schedules; guards always; visitors
//! with a valid pass or an intercom approval. Face adds card, PIN or NFC except at the doors
//! where the site lets a strong, live face open alone; a spoof verdict is denied. Optional
//! anti-passback. Settings and rules: plugins/README.md.

pub mod config;
pub mod rules;

use config::PolicyConfig;
use gate_plugin_sdk::types::{AccessEvent, Decision, Direction};
use gate_plugin_sdk::{logging, HostKv, Policy, Settings, TypedKv};
use std::sync::OnceLock;

/// Key prefix of the last passage per subject (anti-passback).
const PASSAGE_PREFIX: &str = "apb/";

struct ResidentPolicy;

impl Policy for ResidentPolicy {
    fn decide(event: AccessEvent) -> Decision {
        // Settings cannot change during an instance's life (the host starts a new
        // instance for new settings), so they are read and parsed once.
        static CONFIG: OnceLock<Result<PolicyConfig, String>> = OnceLock::new();
        let cfg = match CONFIG.get_or_init(|| PolicyConfig::from_settings(&Settings::host()).map_err(|e| e.to_string())) {
            Ok(cfg) => cfg,
            Err(e) => {
                // A misconfigured policy must not guess: trap, so the host answers with its
                // fallback (card/PIN keep working) and reports this plugin's error.
                logging::error(&format!("resident-policy: {e}"));
                panic!("resident-policy: {e}");
            }
        };
        let mut passages = TypedKv::new(HostKv, PASSAGE_PREFIX);
        let last = match (&event.subject, cfg.anti_passback) {
            (Some(s), true) => last_direction(&passages, &s.id),
            _ => None,
        };
        let verdict = rules::decide(&event, cfg, last);
        if let Some((subject, direction)) = &verdict.passage {
            if let Err(e) = passages.set_str(subject, direction.as_str()) {
                logging::warn(&format!("resident-policy: cannot record passage for anti-passback: {e}"));
            }
        }
        verdict.decision
    }
}

/// The subject's last recorded passage; an unreadable record counts as none.
fn last_direction(passages: &TypedKv<HostKv>, subject: &str) -> Option<Direction> {
    match passages.get_str(subject).ok().flatten().as_deref() {
        Some("entry") => Some(Direction::Entry),
        Some("exit") => Some(Direction::Exit),
        _ => None,
    }
}

gate_plugin_sdk::export_policy!(ResidentPolicy);
