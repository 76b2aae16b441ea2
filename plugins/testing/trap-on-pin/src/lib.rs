//! trap-on-pin: a policy plugin with a bug on one path only. Residents and staff get in
//! with a card or phone NFC (so it passes a deployment's checks, which probe cards), but
//! every PIN entry traps. Deployed over the fleet, it must be rolled back by the gateway
//! itself once PIN users start failing, while the host's fallback keeps the doors working.

use gate_plugin_sdk::types::{AccessEvent, Credential, Decision, Role};
use gate_plugin_sdk::Policy;

struct TrapOnPin;

impl Policy for TrapOnPin {
    fn decide(event: AccessEvent) -> Decision {
        if matches!(event.credential, Credential::Pin) {
            panic!("trap-on-pin: trapping on purpose for PIN event {}", event.id)
        }
        match event.subject {
            Some(s) if matches!(s.role, Role::Resident | Role::Staff) => Decision::Grant(5000),
            _ => Decision::Deny("not a resident".into()),
        }
    }
}

gate_plugin_sdk::export_policy!(TrapOnPin);
