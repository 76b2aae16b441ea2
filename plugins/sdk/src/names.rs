//! Stable lower-case names for the contract's enums, and small conveniences on its types,
//! so plugins and platforms agree on one spelling ("card", "entry", "held-open").

use crate::types::{AlarmKind, Credential, CredentialKind, Decision, Direction, Liveness, MatchBand, Role};

impl Direction {
    /// The WIT spelling: "entry" or "exit".
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
        }
    }
}

impl CredentialKind {
    /// The WIT spelling, e.g. "guard-release".
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Face => "face",
            CredentialKind::Card => "card",
            CredentialKind::Pin => "pin",
            CredentialKind::Nfc => "nfc",
            CredentialKind::Qr => "qr",
            CredentialKind::Plate => "plate",
            CredentialKind::GuardRelease => "guard-release",
            CredentialKind::Intercom => "intercom",
        }
    }

    /// True for the credentials that do not rely on a face: the ones every door must honour.
    pub fn is_non_biometric(self) -> bool {
        !matches!(self, CredentialKind::Face)
    }
}

impl Credential {
    /// Which kind of credential this is, without its payload.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Face(_) => CredentialKind::Face,
            Credential::Card => CredentialKind::Card,
            Credential::Pin => CredentialKind::Pin,
            Credential::Nfc => CredentialKind::Nfc,
            Credential::Qr(_) => CredentialKind::Qr,
            Credential::Plate => CredentialKind::Plate,
            Credential::GuardRelease => CredentialKind::GuardRelease,
            Credential::Intercom(_) => CredentialKind::Intercom,
        }
    }
}

impl Role {
    /// The WIT spelling, e.g. "contractor".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Resident => "resident",
            Role::Staff => "staff",
            Role::Visitor => "visitor",
            Role::Guard => "guard",
            Role::Contractor => "contractor",
        }
    }
}

impl AlarmKind {
    /// The WIT spelling: "held-open", "forced-open" or "fire".
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::HeldOpen => "held-open",
            AlarmKind::ForcedOpen => "forced-open",
            AlarmKind::Fire => "fire",
        }
    }
}

impl Liveness {
    /// The WIT spelling: "live", "spoof" or "unknown".
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Live => "live",
            Liveness::Spoof => "spoof",
            Liveness::Unknown => "unknown",
        }
    }
}

impl MatchBand {
    /// The WIT spelling: "strong" or "weak".
    pub fn as_str(self) -> &'static str {
        match self {
            MatchBand::Strong => "strong",
            MatchBand::Weak => "weak",
        }
    }

    /// Parses "strong" / "weak" (as written in site configuration).
    pub fn parse(s: &str) -> Option<MatchBand> {
        match s.trim() {
            "strong" => Some(MatchBand::Strong),
            "weak" => Some(MatchBand::Weak),
            _ => None,
        }
    }

    /// Whether a match in this band is at least as strong as `min`.
    pub fn meets(self, min: MatchBand) -> bool {
        matches!((self, min), (MatchBand::Strong, _) | (MatchBand::Weak, MatchBand::Weak))
    }
}

impl Decision {
    /// A refusal with a short, stable, lower-case reason.
    pub fn deny(reason: impl Into<String>) -> Decision {
        Decision::Deny(reason.into())
    }

    /// The outcome's one-word name as platforms see it:
    /// "granted", "denied", "need-factor" or "escalated".
    pub fn result_name(&self) -> &'static str {
        match self {
            Decision::Grant(_) => "granted",
            Decision::Deny(_) => "denied",
            Decision::NeedFactor(_) => "need-factor",
            Decision::Escalate(_) => "escalated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FaceMatch, VisitorPass};

    #[test]
    fn credential_kinds_match_the_wit_spelling() {
        let face = Credential::Face(FaceMatch { band: MatchBand::Strong, liveness: Liveness::Live });
        assert_eq!(face.kind().as_str(), "face");
        let qr = Credential::Qr(VisitorPass { host_subject: "r1".into(), valid_until_ms: 0 });
        assert_eq!(qr.kind(), CredentialKind::Qr);
        assert_eq!(Credential::GuardRelease.kind().as_str(), "guard-release");
        assert_eq!(Credential::Intercom("r1".into()).kind().as_str(), "intercom");
        assert!(!CredentialKind::Face.is_non_biometric());
        assert!(CredentialKind::Pin.is_non_biometric());
    }

    #[test]
    fn bands_compare_by_strength() {
        assert!(MatchBand::Strong.meets(MatchBand::Strong));
        assert!(MatchBand::Strong.meets(MatchBand::Weak));
        assert!(MatchBand::Weak.meets(MatchBand::Weak));
        assert!(!MatchBand::Weak.meets(MatchBand::Strong));
        assert_eq!(MatchBand::parse(" weak "), Some(MatchBand::Weak));
        assert_eq!(MatchBand::parse("medium"), None);
    }

    #[test]
    fn decision_names_are_what_platforms_see() {
        assert_eq!(Decision::Grant(1).result_name(), "granted");
        assert_eq!(Decision::deny("x").result_name(), "denied");
        assert_eq!(Decision::NeedFactor(vec![]).result_name(), "need-factor");
        assert_eq!(AlarmKind::HeldOpen.as_str(), "held-open");
        assert_eq!(Direction::Exit.as_str(), "exit");
        assert_eq!(Role::Contractor.as_str(), "contractor");
    }
}
