//! The access rules as one pure function over plain inputs, so every rule has a native test.

use crate::config::PolicyConfig;
use gate_plugin_sdk::types::{AccessEvent, Credential, CredentialKind, Decision, Direction, Escalation, Liveness, Role, Subject};

/// Deny reasons: short, stable, lower-case (recorded traces compare them verbatim).
pub mod reasons {
    /// The credential matched nobody.
    pub const UNKNOWN_CREDENTIAL: &str = "unknown credential";
    /// The face was judged a presentation attack.
    pub const LIVENESS_FAILED: &str = "liveness check failed";
    /// Staff or contractor entering outside their schedule.
    pub const OUTSIDE_SCHEDULE: &str = "outside schedule";
    /// A visitor pass past its validity.
    pub const PASS_EXPIRED: &str = "visitor pass expired";
    /// A second entry without an exit in between.
    pub const ANTI_PASSBACK: &str = "anti-passback";
    /// A licence plate at a door that does not take plates.
    pub const PLATE_NOT_ACCEPTED: &str = "plate not accepted here";
    /// Factors of one attempt that belong to different subjects.
    pub const FACTOR_MISMATCH: &str = "factor mismatch";
}

/// The factors the policy asks for after a face it will not accept alone.
pub const SECOND_FACTORS: [CredentialKind; 3] = [CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc];

/// The decision and, when anti-passback is on and a known subject was granted, the passage to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What the host should do.
    pub decision: Decision,
    /// `(subject id, direction)` to store as the subject's last passage.
    pub passage: Option<(String, Direction)>,
}

impl Verdict {
    fn no_record(decision: Decision) -> Self {
        Verdict { decision, passage: None }
    }
}

/// Decides one event. `last_direction` is the subject's last recorded passage (only consulted
/// when anti-passback is on). Exits are never refused for time reasons: nobody is trapped inside.
pub fn decide(event: &AccessEvent, cfg: &PolicyConfig, last_direction: Option<Direction>) -> Verdict {
    let entry = event.direction == Direction::Entry;
    let open_ms = |subject: Option<&Subject>| match subject {
        Some(s) if s.groups.contains(&cfg.long_open_group) => cfg.long_open_ms,
        _ => cfg.default_open_ms,
    };

    // A guard or a resident took the decision as a person; the host verified who.
    match &event.credential {
        Credential::GuardRelease | Credential::Intercom(_) => {
            return Verdict::no_record(Decision::Grant(open_ms(event.subject.as_ref())));
        }
        Credential::Face(m) if m.liveness == Liveness::Spoof => {
            return Verdict::no_record(Decision::deny(reasons::LIVENESS_FAILED));
        }
        _ => {}
    }

    // A visitor pass is itself the credential: its signature was verified by the host.
    if let Credential::Qr(pass) = &event.credential {
        if entry && event.time.unix_ms > pass.valid_until_ms {
            return Verdict::no_record(Decision::deny(reasons::PASS_EXPIRED));
        }
        // Late at night the resident who invited the visitor confirms by answering a call.
        if entry && !cfg.visitor_hours.contains_time(&event.time) {
            return Verdict::no_record(Decision::Escalate(Escalation::CallResident(pass.host_subject.clone())));
        }
        return grant(event, cfg, last_direction, open_ms(event.subject.as_ref()));
    }

    let Some(subject) = &event.subject else {
        return Verdict::no_record(Decision::deny(reasons::UNKNOWN_CREDENTIAL));
    };

    if matches!(event.credential, Credential::Plate) && !cfg.accepts_plate_at(&event.door) {
        return Verdict::no_record(Decision::deny(reasons::PLATE_NOT_ACCEPTED));
    }

    if entry {
        let allowed_now = match subject.role {
            Role::Resident | Role::Guard => true,
            Role::Staff => cfg.staff_schedule.contains_time(&event.time),
            Role::Contractor => cfg.contractor_schedule.contains_time(&event.time),
            // A visitor without a pass: let the guard on duty decide.
            Role::Visitor => return Verdict::no_record(Decision::Escalate(Escalation::CallGuard)),
        };
        if !allowed_now {
            return Verdict::no_record(Decision::deny(reasons::OUTSIDE_SCHEDULE));
        }
    }

    if let Credential::Face(m) = &event.credential {
        let too_weak = !m.band.meets(cfg.face_min_band);
        let unverified = m.liveness == Liveness::Unknown && cfg.second_factor_when_liveness_unknown;
        // Face opens alone only where the site allows it; elsewhere it is one factor of two.
        let not_alone_here = !cfg.face_alone_at(&event.door);
        if too_weak || unverified || not_alone_here {
            return Verdict::no_record(Decision::NeedFactor(SECOND_FACTORS.to_vec()));
        }
    }

    // The second factor of a multi-factor attempt must belong to the same person as the first.
    let mismatch = event.prior.iter().any(|p| p.subject_id.as_deref().is_some_and(|id| id != subject.id));
    if mismatch {
        return Verdict::no_record(Decision::deny(reasons::FACTOR_MISMATCH));
    }

    grant(event, cfg, last_direction, open_ms(Some(subject)))
}

/// Grants, applying anti-passback to entries of non-guards and noting the passage.
fn grant(event: &AccessEvent, cfg: &PolicyConfig, last: Option<Direction>, open_ms: u32) -> Verdict {
    let Some(subject) = &event.subject else {
        return Verdict::no_record(Decision::Grant(open_ms));
    };
    let exempt = subject.role == Role::Guard;
    if cfg.anti_passback && !exempt && event.direction == Direction::Entry && last == Some(Direction::Entry) {
        return Verdict::no_record(Decision::deny(reasons::ANTI_PASSBACK));
    }
    let passage = cfg.anti_passback.then(|| (subject.id.clone(), event.direction));
    Verdict { decision: Decision::Grant(open_ms), passage }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate_plugin_sdk::types::{FaceMatch, MatchBand, PriorFactor, Timestamp, VisitorPass};

    const SAT: u8 = 5;
    const SUN: u8 = 6;
    const T0: i64 = 1_760_000_000_000;

    fn ev(credential: Credential, subject: Option<Subject>) -> AccessEvent {
        AccessEvent {
            id: "ev-1".into(),
            door: "pedestrian-north".into(),
            direction: Direction::Entry,
            // Wednesday 12:00.
            time: Timestamp { unix_ms: T0, weekday: 2, minute_of_day: 12 * 60 },
            credential,
            subject,
            prior: vec![],
        }
    }

    fn who(id: &str, role: Role) -> Option<Subject> {
        Some(Subject { id: id.into(), role, groups: vec![] })
    }

    fn face(band: MatchBand, liveness: Liveness) -> Credential {
        Credential::Face(FaceMatch { band, liveness })
    }

    fn run(e: &AccessEvent) -> Decision {
        decide(e, &PolicyConfig::default(), None).decision
    }

    fn need_factor() -> Decision {
        Decision::NeedFactor(vec![CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc])
    }

    fn face_alone_here() -> PolicyConfig {
        PolicyConfig { face_alone_doors: vec!["pedestrian-north".into()], ..PolicyConfig::default() }
    }

    #[test]
    fn residents_pass_with_any_single_credential_and_a_live_strong_face_where_the_site_allows_it() {
        for c in [Credential::Card, Credential::Pin, Credential::Nfc] {
            assert_eq!(run(&ev(c.clone(), who("r1", Role::Resident))), Decision::Grant(5000), "{c:?}");
        }
        let e = ev(face(MatchBand::Strong, Liveness::Live), who("r1", Role::Resident));
        // By default face never opens alone: it asks for a non-biometric factor.
        assert_eq!(run(&e), need_factor());
        assert_eq!(decide(&e, &face_alone_here(), None).decision, Decision::Grant(5000));
        let everywhere = PolicyConfig { face_alone_doors: vec!["*".into()], ..PolicyConfig::default() };
        assert_eq!(decide(&e, &everywhere, None).decision, Decision::Grant(5000));
        let elsewhere = PolicyConfig { face_alone_doors: vec!["building-3".into()], ..PolicyConfig::default() };
        assert_eq!(decide(&e, &elsewhere, None).decision, need_factor());
        // A spoof verdict is refused with its reason, wherever face may open alone.
        let spoof = ev(face(MatchBand::Strong, Liveness::Spoof), who("r1", Role::Resident));
        assert_eq!(decide(&spoof, &face_alone_here(), None).decision, Decision::deny("liveness check failed"));
    }

    #[test]
    fn plates_only_at_vehicle_doors_or_configured_ones() {
        let mut e = ev(Credential::Plate, who("r1", Role::Resident));
        assert_eq!(run(&e), Decision::deny("plate not accepted here"));
        e.door = "vehicle-gate-east".into();
        assert_eq!(run(&e), Decision::Grant(5000));
        e.door = "garage".into();
        let cfg = PolicyConfig { plate_doors: vec!["garage".into()], ..PolicyConfig::default() };
        assert_eq!(decide(&e, &cfg, None).decision, Decision::Grant(5000));
    }

    #[test]
    fn weak_face_asks_for_a_non_biometric_factor() {
        let e = ev(face(MatchBand::Weak, Liveness::Live), who("r1", Role::Resident));
        assert_eq!(run(&e), need_factor());
        assert_eq!(decide(&e, &face_alone_here(), None).decision, need_factor(), "a weak face never opens alone");
        let lenient = PolicyConfig { face_min_band: MatchBand::Weak, ..face_alone_here() };
        assert_eq!(decide(&e, &lenient, None).decision, Decision::Grant(5000));
    }

    #[test]
    fn spoofed_face_is_refused_even_for_a_known_subject() {
        let e = ev(face(MatchBand::Strong, Liveness::Spoof), who("r1", Role::Resident));
        assert_eq!(run(&e), Decision::deny("liveness check failed"));
    }

    #[test]
    fn unknown_liveness_needs_face_plus_card_of_the_same_person() {
        let e = ev(face(MatchBand::Strong, Liveness::Unknown), who("r1", Role::Resident));
        assert_eq!(run(&e), need_factor());
        assert_eq!(decide(&e, &face_alone_here(), None).decision, need_factor(), "unknown liveness never opens alone by default");
        let off = PolicyConfig { second_factor_when_liveness_unknown: false, ..face_alone_here() };
        assert_eq!(decide(&e, &off, None).decision, Decision::Grant(5000));

        // Then the card arrives with the face as prior factor of the same subject.
        let mut card = ev(Credential::Card, who("r1", Role::Resident));
        card.prior = vec![PriorFactor { kind: CredentialKind::Face, subject_id: Some("r1".into()), unix_ms: T0 - 2000 }];
        assert_eq!(run(&card), Decision::Grant(5000));
        // Somebody else's card after r1's face is refused.
        card.subject = who("r2", Role::Resident);
        assert_eq!(run(&card), Decision::deny("factor mismatch"));
    }

    #[test]
    fn staff_and_contractors_only_within_their_schedule() {
        let mut e = ev(Credential::Card, who("s1", Role::Staff));
        assert_eq!(run(&e), Decision::Grant(5000), "wednesday noon");
        e.time.weekday = SUN;
        assert_eq!(run(&e), Decision::deny("outside schedule"));
        e.time = Timestamp { unix_ms: T0, weekday: SAT, minute_of_day: 22 * 60 };
        assert_eq!(run(&e), Decision::deny("outside schedule"), "22:00 is past the end");

        let mut c = ev(Credential::Card, who("c1", Role::Contractor));
        assert_eq!(run(&c), Decision::Grant(5000));
        c.time.weekday = SAT;
        assert_eq!(run(&c), Decision::deny("outside schedule"));
        c.direction = Direction::Exit;
        assert_eq!(run(&c), Decision::Grant(5000), "nobody is trapped inside");
    }

    #[test]
    fn guards_pass_at_any_time_and_guard_release_opens() {
        let mut e = ev(Credential::Card, who("g1", Role::Guard));
        e.time = Timestamp { unix_ms: T0, weekday: SUN, minute_of_day: 3 * 60 };
        assert_eq!(run(&e), Decision::Grant(5000));
        let release = ev(Credential::GuardRelease, who("g1", Role::Guard));
        assert_eq!(run(&release), Decision::Grant(5000));
    }

    #[test]
    fn visitor_passes_are_checked_against_event_time() {
        let pass = |until| Credential::Qr(VisitorPass { host_subject: "r1".into(), valid_until_ms: until });
        let valid = ev(pass(T0 + 60_000), who("v1", Role::Visitor));
        assert_eq!(run(&valid), Decision::Grant(5000));
        let last_ms = ev(pass(T0), who("v1", Role::Visitor));
        assert_eq!(run(&last_ms), Decision::Grant(5000), "valid-until is inclusive");
        let mut expired = ev(pass(T0 - 1), who("v1", Role::Visitor));
        assert_eq!(run(&expired), Decision::deny("visitor pass expired"));
        expired.direction = Direction::Exit;
        assert_eq!(run(&expired), Decision::Grant(5000), "an expired pass still lets the visitor out");
        // After visitor hours the host resident is called to confirm.
        let mut late = ev(pass(T0 + 60_000), who("v1", Role::Visitor));
        late.time = Timestamp { unix_ms: T0, weekday: 2, minute_of_day: 23 * 60 + 30 };
        assert_eq!(run(&late), Decision::Escalate(Escalation::CallResident("r1".into())));
        late.direction = Direction::Exit;
        assert_eq!(run(&late), Decision::Grant(5000), "leaving late needs nobody's confirmation");
    }

    #[test]
    fn visitor_without_pass_goes_to_the_guard_and_intercom_opens() {
        let e = ev(Credential::Card, who("v1", Role::Visitor));
        assert_eq!(run(&e), Decision::Escalate(Escalation::CallGuard));
        let approved = ev(Credential::Intercom("r1".into()), None);
        assert_eq!(run(&approved), Decision::Grant(5000));
    }

    #[test]
    fn long_open_group_gets_the_long_opening() {
        let mut s = who("r9", Role::Resident);
        if let Some(s) = s.as_mut() {
            s.groups = vec!["building-3".into(), "needs-longer-opening".into()];
        }
        assert_eq!(run(&ev(Credential::Card, s.clone())), Decision::Grant(12000));
        let cfg = PolicyConfig { long_open_ms: 20000, long_open_group: "wheelchair".into(), ..PolicyConfig::default() };
        assert_eq!(decide(&ev(Credential::Card, s), &cfg, None).decision, Decision::Grant(5000));
    }

    #[test]
    fn unknown_subjects_are_refused() {
        assert_eq!(run(&ev(Credential::Card, None)), Decision::deny("unknown credential"));
        assert_eq!(run(&ev(face(MatchBand::Strong, Liveness::Live), None)), Decision::deny("unknown credential"));
    }

    #[test]
    fn anti_passback_refuses_a_second_entry_until_an_exit() {
        let on = PolicyConfig { anti_passback: true, ..PolicyConfig::default() };
        let mut e = ev(Credential::Card, who("r1", Role::Resident));
        let first = decide(&e, &on, None);
        assert_eq!(first.decision, Decision::Grant(5000));
        assert_eq!(first.passage, Some(("r1".into(), Direction::Entry)));
        let second = decide(&e, &on, Some(Direction::Entry));
        assert_eq!(second.decision, Decision::deny("anti-passback"));
        assert_eq!(second.passage, None);
        e.direction = Direction::Exit;
        assert_eq!(decide(&e, &on, Some(Direction::Entry)).passage, Some(("r1".into(), Direction::Exit)));
        e.direction = Direction::Entry;
        assert_eq!(decide(&e, &on, Some(Direction::Exit)).decision, Decision::Grant(5000));
        // Off: nothing recorded, nothing refused.
        let off = decide(&e, &PolicyConfig::default(), Some(Direction::Entry));
        assert_eq!((off.decision, off.passage), (Decision::Grant(5000), None));
        // Guards are exempt.
        let g = ev(Credential::Card, who("g1", Role::Guard));
        assert_eq!(decide(&g, &on, Some(Direction::Entry)).decision, Decision::Grant(5000));
    }
}
