//! garbage-decision: a policy plugin that only returns decisions the host must refuse,
//! cycling by a call counter kept in kv (`garbage-decision/calls`): call 1 `grant(u32::MAX)`
//! (beyond any door's cap), call 2 `need-factor([])` (asks for nothing), call 3
//! `need-factor([face])` (face as the only way in), then again from the start.

use gate_plugin_sdk::types::{AccessEvent, CredentialKind, Decision};
use gate_plugin_sdk::{HostKv, Policy, TypedKv};

struct GarbageDecision;

/// The garbage answer for the n-th call (1-based).
pub fn garbage(call: u64) -> Decision {
    match call % 3 {
        1 => Decision::Grant(u32::MAX),
        2 => Decision::NeedFactor(vec![]),
        _ => Decision::NeedFactor(vec![CredentialKind::Face]),
    }
}

impl Policy for GarbageDecision {
    fn decide(_event: AccessEvent) -> Decision {
        let mut kv = TypedKv::new(HostKv, "garbage-decision/");
        // A failed write (quota) still yields garbage: the first kind.
        let call = kv.increment("calls").unwrap_or(1);
        garbage(call)
    }
}

gate_plugin_sdk::export_policy!(GarbageDecision);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_three_kinds_of_garbage() {
        assert_eq!(garbage(1), Decision::Grant(u32::MAX));
        assert_eq!(garbage(2), Decision::NeedFactor(vec![]));
        assert_eq!(garbage(3), Decision::NeedFactor(vec![CredentialKind::Face]));
        assert_eq!(garbage(4), Decision::Grant(u32::MAX));
    }
}
