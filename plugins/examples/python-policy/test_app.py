"""The rules of example-policy, checked natively: `python -m unittest test_app` (after `componentize-py ... bindings .`)."""

import unittest

from app import SECOND_FACTORS, Rules, SettingsError, decide
from wit_world.imports import types as t

# Monday 2026-11-23 12:00 at the site.
NOON = t.Timestamp(unix_ms=1_795_406_400_000, weekday=0, minute_of_day=12 * 60)


def rules(settings=None):
    settings = settings or {}
    return Rules.from_settings(settings.get)


def event(credential, role=None, direction=t.Direction.ENTRY, minute_of_day=NOON.minute_of_day, prior=None):
    subject = None if role is None else t.Subject(id="r-0001", role=role, groups=[])
    time = t.Timestamp(unix_ms=NOON.unix_ms, weekday=NOON.weekday, minute_of_day=minute_of_day)
    return t.AccessEvent(id="e-1", door="front-gate", direction=direction, time=time, credential=credential, subject=subject, prior=prior or [])


def face(liveness):
    return t.Credential_Face(t.FaceMatch(band=t.MatchBand.STRONG, liveness=liveness))


class Rules_(unittest.TestCase):
    def test_residents_enter_with_a_card_and_strangers_do_not(self):
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.RESIDENT), rules()), t.Decision_Grant(5000))
        self.assertEqual(decide(event(t.Credential_Card()), rules()), t.Decision_Deny("unknown credential"))

    def test_face_is_never_enough_alone_and_a_spoof_is_denied(self):
        self.assertEqual(decide(event(face(t.Liveness.LIVE), t.Role.RESIDENT), rules()), t.Decision_NeedFactor(SECOND_FACTORS))
        self.assertEqual(decide(event(face(t.Liveness.SPOOF), t.Role.RESIDENT), rules()), t.Decision_Deny("liveness check failed"))
        before = t.PriorFactor(kind=t.CredentialKind.FACE, subject_id="r-0001", unix_ms=NOON.unix_ms - 2000)
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.RESIDENT, prior=[before]), rules()), t.Decision_Grant(5000))
        other = t.PriorFactor(kind=t.CredentialKind.FACE, subject_id="r-0002", unix_ms=NOON.unix_ms - 2000)
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.RESIDENT, prior=[other]), rules()), t.Decision_Deny("factor mismatch"))

    def test_staff_enter_within_their_hours_and_always_leave(self):
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.STAFF), rules()), t.Decision_Grant(5000))
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.STAFF, minute_of_day=6 * 60), rules()), t.Decision_Deny("outside hours"))
        self.assertEqual(decide(event(t.Credential_Card(), t.Role.STAFF, t.Direction.EXIT, 6 * 60), rules()), t.Decision_Grant(5000))

    def test_visitor_passes_open_until_they_expire_and_visitors_without_one_call_the_guard(self):
        def visitor_pass(until):
            return t.Credential_Qr(t.VisitorPass(host_subject="r-0001", valid_until_ms=until))

        self.assertEqual(decide(event(visitor_pass(NOON.unix_ms + 1), t.Role.VISITOR), rules()), t.Decision_Grant(5000))
        self.assertEqual(decide(event(visitor_pass(NOON.unix_ms - 1), t.Role.VISITOR), rules()), t.Decision_Deny("visitor pass expired"))
        self.assertEqual(decide(event(t.Credential_Nfc(), t.Role.VISITOR), rules()), t.Decision_Escalate(t.Escalation_CallGuard()))

    def test_settings_are_read_and_a_bad_one_names_its_key(self):
        self.assertEqual(decide(event(t.Credential_GuardRelease()), rules({"open-ms": "8000"})), t.Decision_Grant(8000))
        with self.assertRaisesRegex(SettingsError, "staff-hours"):
            rules({"staff-hours": "sometimes"})
        with self.assertRaisesRegex(SettingsError, "open-ms"):
            rules({"open-ms": "-1"})


if __name__ == "__main__":
    unittest.main()
