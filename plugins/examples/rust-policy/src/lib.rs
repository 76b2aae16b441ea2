//! example-policy: a site policy for gate (gate:plugin@0.2.0, policy-plugin world).
//!
//! Rules, in order (change them; `cargo test` checks each one natively):
//! 1. A guard's release or a resident's intercom approval opens: a person decided.
//! 2. A face the liveness check calls a spoof is denied `liveness check failed`.
//! 3. A visitor pass (its signature already verified by the host) opens until it expires;
//!    an expired pass is denied `visitor pass expired` on entry (a visitor may always leave).
//! 4. A credential that matched nobody is denied `unknown credential`.
//! 5. Face is one factor of two, never the only way in: a face alone asks for card, PIN or
//!    NFC; the second factor of another person is denied `factor mismatch`.
//! 6. Exits always open: nobody is trapped inside.
//! 7. Residents and guards enter at any time; staff and contractors within `staff-hours`
//!    (default `07:00-19:00`, any day), else `outside hours`; a visitor without a pass
//!    escalates to the guard.
//!
//! Settings (the site configuration's `[plugins.example-policy] config`, here the sidecar's
//! `[settings]`): `open-ms` (default 5000), `staff-hours` (a schedule, see the SDK's `Schedule`).

use gate_plugin_sdk::types::{AccessEvent, Credential, CredentialKind, Decision, Direction, Escalation, Liveness, Role};
use gate_plugin_sdk::{logging, Policy, Schedule, Settings, SettingsError};
use std::sync::OnceLock;

/// The policy's settings, read once per instance.
#[derive(Debug, Clone)]
pub struct Rules {
    /// How long a grant opens the door.
    pub open_ms: u32,
    /// When staff and contractors may enter.
    pub staff_hours: Schedule,
}

impl Rules {
    /// Reads the settings; a malformed one is an error naming key and value (never guessed).
    pub fn from_settings<F: Fn(&str) -> Option<String>>(s: &Settings<F>) -> Result<Rules, SettingsError> {
        Ok(Rules { open_ms: s.u32_or("open-ms", 5000)?, staff_hours: s.schedule_or("staff-hours", "07:00-19:00")? })
    }
}

/// The factors asked for after a face: any non-biometric one.
pub const SECOND_FACTORS: [CredentialKind; 3] = [CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc];

/// Decides one access event. Pure: no host calls, so every rule is tested natively.
pub fn decide(event: &AccessEvent, rules: &Rules) -> Decision {
    let entry = event.direction == Direction::Entry;
    match &event.credential {
        Credential::GuardRelease | Credential::Intercom(_) => return Decision::Grant(rules.open_ms),
        Credential::Face(m) if m.liveness == Liveness::Spoof => return Decision::deny("liveness check failed"),
        Credential::Qr(pass) => {
            if entry && event.time.unix_ms > pass.valid_until_ms {
                return Decision::deny("visitor pass expired");
            }
            return Decision::Grant(rules.open_ms);
        }
        _ => {}
    }
    let Some(subject) = &event.subject else {
        return Decision::deny("unknown credential");
    };
    if event.prior.iter().any(|p| p.subject_id.as_deref().is_some_and(|id| id != subject.id)) {
        return Decision::deny("factor mismatch");
    }
    if matches!(event.credential, Credential::Face(_)) && event.prior.is_empty() {
        return Decision::NeedFactor(SECOND_FACTORS.to_vec());
    }
    if !entry {
        return Decision::Grant(rules.open_ms);
    }
    match subject.role {
        Role::Resident | Role::Guard => Decision::Grant(rules.open_ms),
        Role::Staff | Role::Contractor if rules.staff_hours.contains_time(&event.time) => Decision::Grant(rules.open_ms),
        Role::Staff | Role::Contractor => Decision::deny("outside hours"),
        Role::Visitor => Decision::Escalate(Escalation::CallGuard),
    }
}

struct SitePolicy;

impl Policy for SitePolicy {
    fn decide(event: AccessEvent) -> Decision {
        // Settings do not change during an instance's life: parse them once.
        static RULES: OnceLock<Result<Rules, String>> = OnceLock::new();
        match RULES.get_or_init(|| Rules::from_settings(&Settings::host()).map_err(|e| e.to_string())) {
            Ok(rules) => decide(&event, rules),
            Err(e) => {
                // A misconfigured policy must not guess: trap, and the host's fallback decides.
                logging::error(&format!("example-policy: {e}"));
                panic!("example-policy: {e}");
            }
        }
    }
}

gate_plugin_sdk::export_policy!(SitePolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use gate_plugin_sdk::types::{FaceMatch, MatchBand, PriorFactor, Subject, Timestamp, VisitorPass};

    /// Monday 2026-11-23 12:00 at the site.
    const NOON: Timestamp = Timestamp { unix_ms: 1_795_406_400_000, weekday: 0, minute_of_day: 12 * 60 };

    fn rules() -> Rules {
        Rules::from_settings(&Settings::new(|_| None)).expect("defaults")
    }

    fn event(credential: Credential, role: Option<Role>) -> AccessEvent {
        AccessEvent {
            id: "e-1".into(),
            door: "front-gate".into(),
            direction: Direction::Entry,
            time: NOON,
            credential,
            subject: role.map(|role| Subject { id: "r-0001".into(), role, groups: vec![] }),
            prior: vec![],
        }
    }

    fn face(liveness: Liveness) -> Credential {
        Credential::Face(FaceMatch { band: MatchBand::Strong, liveness })
    }

    #[test]
    fn residents_enter_with_a_card_and_strangers_do_not() {
        assert_eq!(decide(&event(Credential::Card, Some(Role::Resident)), &rules()), Decision::Grant(5000));
        assert_eq!(decide(&event(Credential::Card, None), &rules()), Decision::deny("unknown credential"));
    }

    #[test]
    fn face_is_never_enough_alone_and_a_spoof_is_denied() {
        assert_eq!(decide(&event(face(Liveness::Live), Some(Role::Resident)), &rules()), Decision::NeedFactor(SECOND_FACTORS.to_vec()));
        assert_eq!(decide(&event(face(Liveness::Spoof), Some(Role::Resident)), &rules()), Decision::deny("liveness check failed"));
        let mut card_after_face = event(Credential::Card, Some(Role::Resident));
        card_after_face.prior = vec![PriorFactor { kind: CredentialKind::Face, subject_id: Some("r-0001".into()), unix_ms: NOON.unix_ms - 2000 }];
        assert_eq!(decide(&card_after_face, &rules()), Decision::Grant(5000));
        card_after_face.prior[0].subject_id = Some("r-0002".into());
        assert_eq!(decide(&card_after_face, &rules()), Decision::deny("factor mismatch"));
    }

    #[test]
    fn staff_enter_within_their_hours_and_always_leave() {
        let mut e = event(Credential::Card, Some(Role::Staff));
        assert_eq!(decide(&e, &rules()), Decision::Grant(5000));
        e.time.minute_of_day = 6 * 60;
        assert_eq!(decide(&e, &rules()), Decision::deny("outside hours"));
        e.direction = Direction::Exit;
        assert_eq!(decide(&e, &rules()), Decision::Grant(5000));
    }

    #[test]
    fn visitor_passes_open_until_they_expire_and_visitors_without_one_call_the_guard() {
        let pass = |until| Credential::Qr(VisitorPass { host_subject: "r-0001".into(), valid_until_ms: until });
        assert_eq!(decide(&event(pass(NOON.unix_ms + 1), Some(Role::Visitor)), &rules()), Decision::Grant(5000));
        assert_eq!(decide(&event(pass(NOON.unix_ms - 1), Some(Role::Visitor)), &rules()), Decision::deny("visitor pass expired"));
        assert_eq!(decide(&event(Credential::Nfc, Some(Role::Visitor)), &rules()), Decision::Escalate(Escalation::CallGuard));
    }

    #[test]
    fn settings_are_read_and_a_bad_one_names_its_key() {
        let r = Rules::from_settings(&Settings::new(|k| (k == "open-ms").then(|| "8000".to_string()))).expect("valid");
        assert_eq!(decide(&event(Credential::GuardRelease, None), &r), Decision::Grant(8000));
        let e = Rules::from_settings(&Settings::new(|k| (k == "staff-hours").then(|| "sometimes".to_string()))).unwrap_err();
        assert!(e.to_string().contains("staff-hours"), "{e}");
    }
}
