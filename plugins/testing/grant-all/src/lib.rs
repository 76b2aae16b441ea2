//! grant-all: a policy plugin that grants every attempt, whoever it is. It stands for a
//! site whose plugin (or its bug) admits anyone: the host's own checks (visitor-pass
//! window, doors, uses, dynamic code, revocations, locks) must still refuse what they refuse.

use gate_plugin_sdk::types::{AccessEvent, Decision};
use gate_plugin_sdk::Policy;

struct GrantAll;

impl Policy for GrantAll {
    fn decide(_event: AccessEvent) -> Decision {
        Decision::Grant(5000)
    }
}

gate_plugin_sdk::export_policy!(GrantAll);
