"""example-policy: a site policy for gate (gate:plugin@0.2.0, policy-plugin world), in Python.

Rules, in order (change them; `python -m unittest test_app` checks each one natively):
1. A guard's release or a resident's intercom approval opens: a person decided.
2. A face the liveness check calls a spoof is denied `liveness check failed`.
3. A visitor pass (its signature already verified by the host) opens until it expires;
   an expired pass is denied `visitor pass expired` on entry (a visitor may always leave).
4. A credential that matched nobody is denied `unknown credential`.
5. Face is one factor of two, never the only way in: a face alone asks for card, PIN or
   NFC; the second factor of another person is denied `factor mismatch`.
6. Exits always open: nobody is trapped inside.
7. Residents and guards enter at any time; staff and contractors within `staff-hours`
   (default `07:00-19:00`, every day; an end before the start runs past midnight), else
   `outside hours`; a visitor without a pass escalates to the guard.

Settings (the site configuration's `[plugins.example-policy] config`, here the sidecar's
`[settings]`): `open-ms` (default 5000, 0..4294967295), `staff-hours` (`HH:MM-HH:MM`).
"""

from dataclasses import dataclass
from typing import Callable, Optional

from wit_world import exports
from wit_world.imports import config, log, types
from wit_world.imports.types import (
    Credential_Face,
    Credential_GuardRelease,
    Credential_Intercom,
    Credential_Qr,
    Decision_Deny,
    Decision_Escalate,
    Decision_Grant,
    Decision_NeedFactor,
    Direction,
    Escalation_CallGuard,
    Liveness,
    Role,
)

# The factors asked for after a face: any non-biometric one.
SECOND_FACTORS = [types.CredentialKind.CARD, types.CredentialKind.PIN, types.CredentialKind.NFC]


class SettingsError(ValueError):
    """A malformed setting, naming its key and value (the policy never guesses)."""


def _minutes(text: str, key: str, value: str) -> int:
    hh, sep, mm = text.partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2):
        raise SettingsError(f"setting `{key}` = `{value}`: expected HH:MM-HH:MM")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) > 59 or minutes > 24 * 60:
        raise SettingsError(f"setting `{key}` = `{value}`: a time is past 24:00")
    return minutes


@dataclass(frozen=True)
class Hours:
    """A daily window `HH:MM-HH:MM`, end exclusive; an end before the start runs past midnight."""

    start: int
    end: int

    @staticmethod
    def parse(key: str, value: str) -> "Hours":
        start, sep, end = value.strip().partition("-")
        if not sep:
            raise SettingsError(f"setting `{key}` = `{value}`: expected HH:MM-HH:MM")
        hours = Hours(_minutes(start.strip(), key, value), _minutes(end.strip(), key, value))
        if hours.start == hours.end:
            raise SettingsError(f"setting `{key}` = `{value}`: the window is empty")
        return hours

    def contains(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end


@dataclass(frozen=True)
class Rules:
    """The policy's settings, read once per instance."""

    open_ms: int
    staff_hours: Hours

    @staticmethod
    def from_settings(get: Callable[[str], Optional[str]]) -> "Rules":
        raw = get("open-ms")
        if raw is None:
            open_ms = 5000
        elif raw.strip().isdigit() and int(raw) <= 0xFFFF_FFFF:
            open_ms = int(raw)
        else:
            raise SettingsError(f"setting `open-ms` = `{raw}`: expected a whole number between 0 and 4294967295")
        return Rules(open_ms, Hours.parse("staff-hours", get("staff-hours") or "07:00-19:00"))


def decide(event: types.AccessEvent, rules: Rules) -> types.Decision:
    """Decides one access event. Pure: no host calls, so every rule is tested natively."""
    entry = event.direction == Direction.ENTRY
    credential = event.credential
    if isinstance(credential, (Credential_GuardRelease, Credential_Intercom)):
        return Decision_Grant(rules.open_ms)
    if isinstance(credential, Credential_Face) and credential.value.liveness == Liveness.SPOOF:
        return Decision_Deny("liveness check failed")
    if isinstance(credential, Credential_Qr):
        if entry and event.time.unix_ms > credential.value.valid_until_ms:
            return Decision_Deny("visitor pass expired")
        return Decision_Grant(rules.open_ms)
    subject = event.subject
    if subject is None:
        return Decision_Deny("unknown credential")
    if any(p.subject_id is not None and p.subject_id != subject.id for p in event.prior):
        return Decision_Deny("factor mismatch")
    if isinstance(credential, Credential_Face) and not event.prior:
        return Decision_NeedFactor(list(SECOND_FACTORS))
    if not entry:
        return Decision_Grant(rules.open_ms)
    if subject.role in (Role.RESIDENT, Role.GUARD):
        return Decision_Grant(rules.open_ms)
    if subject.role in (Role.STAFF, Role.CONTRACTOR):
        if rules.staff_hours.contains(event.time.minute_of_day):
            return Decision_Grant(rules.open_ms)
        return Decision_Deny("outside hours")
    return Decision_Escalate(Escalation_CallGuard())


# Modules are imported when the component is built, never at run time: the component has no
# files to import from (the host gives plugins no filesystem).
_rules: Optional[Rules] = None


class Policy(exports.Policy):
    """The component's export: settings parsed once, then `decide`."""

    def decide(self, event: types.AccessEvent) -> types.Decision:
        global _rules
        if _rules is None:
            try:
                _rules = Rules.from_settings(config.get)
            except SettingsError as e:
                # A misconfigured policy must not guess: trap, and the host's fallback decides.
                log.log(log.Level.ERROR, f"example-policy: {e}")
                raise
        return decide(event, _rules)
