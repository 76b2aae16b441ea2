//! log-flood: a policy plugin that calls `log` thousands of times per decision and then
//! decides correctly: grant for residents, deny for unknown or other subjects. Tests that
//! the host rate-limits a flooding plugin's log and still honours its decision. With
//! setting `then-trap = "true"` it traps after flooding instead: the next call runs in a
//! fresh instance, which must not get a fresh log budget.

use gate_plugin_sdk::log::Level;
use gate_plugin_sdk::types::{AccessEvent, Decision, Role};
use gate_plugin_sdk::{Policy, Settings};

/// Log calls per decision.
pub const LINES_PER_DECISION: u32 = 5_000;
/// Opening time granted to residents, milliseconds.
pub const OPEN_MS: u32 = 5_000;

struct LogFlood;

/// The decision this plugin makes once it has finished flooding.
pub fn verdict(event: &AccessEvent) -> Decision {
    match &event.subject {
        None => Decision::deny("unknown credential"),
        Some(s) if s.role == Role::Resident => Decision::Grant(OPEN_MS),
        Some(_) => Decision::deny("not a resident"),
    }
}

impl Policy for LogFlood {
    fn decide(event: AccessEvent) -> Decision {
        for i in 0..LINES_PER_DECISION {
            gate_plugin_sdk::log::log(Level::Info, &format!("log-flood line {i} for event {}", event.id));
        }
        if Settings::host().bool_or("then-trap", false).unwrap_or(false) {
            panic!("log-flood: trapping after the flood for event {}", event.id);
        }
        verdict(&event)
    }
}

gate_plugin_sdk::export_policy!(LogFlood);

#[cfg(test)]
mod tests {
    use super::*;
    use gate_plugin_sdk::types::{Credential, Direction, Subject, Timestamp};

    fn event(subject: Option<Subject>) -> AccessEvent {
        AccessEvent {
            id: "e1".into(),
            door: "gate-1".into(),
            direction: Direction::Entry,
            time: Timestamp { unix_ms: 0, weekday: 0, minute_of_day: 0 },
            credential: Credential::Card,
            subject,
            prior: vec![],
        }
    }

    #[test]
    fn residents_pass_others_do_not() {
        let who = |role| Some(Subject { id: "s".into(), role, groups: vec![] });
        assert_eq!(verdict(&event(who(Role::Resident))), Decision::Grant(OPEN_MS));
        assert_eq!(verdict(&event(who(Role::Visitor))), Decision::deny("not a resident"));
        assert_eq!(verdict(&event(None)), Decision::deny("unknown credential"));
    }
}
