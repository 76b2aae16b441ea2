// The rules of example-policy, pure: no host calls and no imports from the contract, so
// `node --test` checks every one natively. Values have the shapes componentize-js gives the
// contract's types (gate:plugin@0.2.0): enums are kebab-case strings, records are objects with
// camelCase fields, variants are `{ tag, val }`, an absent option is `undefined`, and s64
// numbers (`unixMs`, `validUntilMs`) are BigInts.
//
// Rules, in order:
// 1. A guard's release or a resident's intercom approval opens: a person decided.
// 2. A face the liveness check calls a spoof is denied `liveness check failed`.
// 3. A visitor pass (its signature already verified by the host) opens until it expires;
//    an expired pass is denied `visitor pass expired` on entry (a visitor may always leave).
// 4. A credential that matched nobody is denied `unknown credential`.
// 5. Face is one factor of two, never the only way in: a face alone asks for card, PIN or
//    NFC; the second factor of another person is denied `factor mismatch`.
// 6. Exits always open: nobody is trapped inside.
// 7. Residents and guards enter at any time; staff and contractors within `staff-hours`
//    (default `07:00-19:00`, every day; an end before the start runs past midnight), else
//    `outside hours`; a visitor without a pass escalates to the guard.
//
// Settings (the site configuration's `[plugins.example-policy] config`, in a test the sidecar's
// `[settings]`): `open-ms` (default 5000, 0..4294967295), `staff-hours` (`HH:MM-HH:MM`).

/** The factors asked for after a face: any non-biometric one. */
export const SECOND_FACTORS = Object.freeze(['card', 'pin', 'nfc']);

/** A malformed setting, naming its key and value (the policy never guesses). */
export class SettingsError extends Error {
  name = 'SettingsError';
}

const grant = (openMs) => ({ tag: 'grant', val: openMs });
const deny = (reason) => ({ tag: 'deny', val: reason });

/** `HH:MM` → minutes since midnight, 0..1440. */
function minutes(text, key, value) {
  const m = /^(\d+):(\d{2})$/.exec(text);
  if (m === null) {
    throw new SettingsError(`setting \`${key}\` = \`${value}\`: expected HH:MM-HH:MM`);
  }
  const [hh, mm] = [Number(m[1]), Number(m[2])];
  if (mm > 59 || hh * 60 + mm > 24 * 60) {
    throw new SettingsError(`setting \`${key}\` = \`${value}\`: a time is past 24:00`);
  }
  return hh * 60 + mm;
}

/** A daily window `HH:MM-HH:MM`, end exclusive; an end before the start runs past midnight. */
export class Hours {
  constructor(start, end) {
    this.start = start;
    this.end = end;
    Object.freeze(this);
  }

  static parse(key, value) {
    const trimmed = value.trim();
    const dash = trimmed.indexOf('-');
    if (dash < 0) {
      throw new SettingsError(`setting \`${key}\` = \`${value}\`: expected HH:MM-HH:MM`);
    }
    const hours = new Hours(minutes(trimmed.slice(0, dash).trim(), key, value), minutes(trimmed.slice(dash + 1).trim(), key, value));
    if (hours.start === hours.end) {
      throw new SettingsError(`setting \`${key}\` = \`${value}\`: the window is empty`);
    }
    return hours;
  }

  contains(minuteOfDay) {
    if (this.start < this.end) {
      return this.start <= minuteOfDay && minuteOfDay < this.end;
    }
    return minuteOfDay >= this.start || minuteOfDay < this.end;
  }
}

/** The policy's settings, read once per instance from `get(key) → string | undefined`. */
export function readSettings(get) {
  const raw = get('open-ms');
  let openMs = 5000;
  if (raw !== undefined) {
    if (!/^\d+$/.test(raw.trim()) || Number(raw.trim()) > 0xffff_ffff) {
      throw new SettingsError(`setting \`open-ms\` = \`${raw}\`: expected a whole number between 0 and 4294967295`);
    }
    openMs = Number(raw.trim());
  }
  return Object.freeze({ openMs, staffHours: Hours.parse('staff-hours', get('staff-hours') || '07:00-19:00') });
}

/** Decides one access event (an `access-event`) into a `decision`. Pure. */
export function decide(event, rules) {
  const entry = event.direction === 'entry';
  const credential = event.credential;
  switch (credential.tag) {
    case 'guard-release':
    case 'intercom':
      return grant(rules.openMs);
    case 'face':
      if (credential.val.liveness === 'spoof') {
        return deny('liveness check failed');
      }
      break;
    case 'qr':
      if (entry && event.time.unixMs > credential.val.validUntilMs) {
        return deny('visitor pass expired');
      }
      return grant(rules.openMs);
  }
  const subject = event.subject;
  if (subject == null) {
    return deny('unknown credential');
  }
  if (event.prior.some((p) => p.subjectId != null && p.subjectId !== subject.id)) {
    return deny('factor mismatch');
  }
  if (credential.tag === 'face' && event.prior.length === 0) {
    return { tag: 'need-factor', val: [...SECOND_FACTORS] };
  }
  if (!entry) {
    return grant(rules.openMs);
  }
  switch (subject.role) {
    case 'resident':
    case 'guard':
      return grant(rules.openMs);
    case 'staff':
    case 'contractor':
      return rules.staffHours.contains(event.time.minuteOfDay) ? grant(rules.openMs) : deny('outside hours');
    default:
      return { tag: 'escalate', val: { tag: 'call-guard' } };
  }
}
