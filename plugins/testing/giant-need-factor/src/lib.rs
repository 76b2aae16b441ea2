//! giant-need-factor: a policy plugin that answers every read with a need-factor list of
//! `count` entries (default 1,000,000 times `card`). The host must refuse the list as an
//! invalid decision (at most one entry per credential kind), decide with its fallback,
//! and never print or store the list.

use gate_plugin_sdk::types::{AccessEvent, CredentialKind, Decision};
use gate_plugin_sdk::{Policy, Settings};

struct GiantNeedFactor;

impl Policy for GiantNeedFactor {
    fn decide(_event: AccessEvent) -> Decision {
        let n = Settings::host().u32_or("count", 1_000_000).unwrap_or(1_000_000);
        Decision::NeedFactor(vec![CredentialKind::Card; n as usize])
    }
}

gate_plugin_sdk::export_policy!(GiantNeedFactor);
