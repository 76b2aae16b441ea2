//! Visitor passes the host enforces: a pass names its doors, a validity window and a
//! number of uses, and the phone shows it with a dynamic code that changes every
//! [`STEP_MS`], so a photo or screenshot stops working within 30 s.
//!
//! - The **signed pass** (`GATEQR2.<payload>.<signature>`) is what the property platform
//!   issues with its Ed25519 issuer key ([`issue`]); the payload ([`Pass`]) holds only
//!   pseudonymous ids, doors, the window and the uses: never a name, ID number or unit.
//! - The **code on the phone** (`GATEQR2.<payload>.<signature>.<code>`, [`displayed`]) adds a
//!   time-based code (RFC 6238 TOTP, HMAC-SHA256, 8 digits, 15 s steps). Its secret is
//!   derived per pass from the site's code key ([`CodeKey`], shared by the gateway and the
//!   platform, never shown) with HMAC-SHA256 over the pass id, so it cannot be read from a
//!   photographed code and one pass's secret unlocks no other pass.
//! - **Skew**: the gateway accepts the code of its current step and of one step either side
//!   (±15 s of clock difference between the phone and the gateway). With the phone's clock
//!   right, a code shown at `t` therefore works until the end of the next step: 15 to 30 s
//!   after it was shown, never at `t + 31 s`; a phone clock `d` s ahead adds up to `d`.
//! - The host refuses a pass outside its window, at another door, used up, revoked, or a
//!   code already used for a grant (one grant per step, and no older step afterwards),
//!   whatever any plugin says (`gateway.rs`); uses are counted in the event log, in the
//!   transaction of the granting decision (`store.rs`).

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

/// First field of a pass and of a displayed code.
pub const PREFIX: &str = "GATEQR2";
/// The prefix of passes before this format (no doors, window, uses or dynamic code): refused.
pub const OLD_PREFIX: &str = "GATEQR1";
/// How long one dynamic code is current (15 s: it changes at least every 30 s).
pub const STEP_MS: i64 = 15_000;
/// Steps of clock difference tolerated either side of the gateway's current step.
pub const SKEW_STEPS: i64 = 1;
/// Digits of a dynamic code.
pub const DIGITS: u32 = 8;
/// Uses a pass may grant: 1..=1000.
pub const MAX_USES: u32 = 1_000;
/// Doors a pass may name: 1..=16.
pub const MAX_DOORS: usize = 16;
/// Longest validity window: 366 days.
pub const MAX_WINDOW_MS: i64 = 366 * 86_400_000;
/// Latest time a pass may name (9999-12-31T23:59:59.999Z); times start at 0 (1970).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Longest pseudonymous id (pass, visitor, host).
pub const MAX_ID_LEN: usize = 48;
/// Longest run of digits an id may hold: a phone number (11) or an ID number (15, 18) is longer.
pub const MAX_DIGIT_RUN: usize = 8;
/// Longest accepted scanned code, in bytes (a real one is about 400).
pub const MAX_CODE_BYTES: usize = 4_096;

/// The signed payload of a visitor pass, carried as base64url JSON in
/// `GATEQR2.<payload>.<Ed25519 signature>[.<8-digit code>]`. Unknown fields are refused, so
/// a pass cannot carry a name, an ID number or a unit number beside its pseudonymous ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pass {
    /// The pass's own id (pseudonymous, e.g. `p-20261205-0042`): uses are counted and
    /// revocations made by it (`pass:<id>`).
    #[schemars(regex(pattern = r"^[a-z]{1,8}-[a-z0-9-]+$"), length(max = 48))]
    pub pass: String,
    /// Pseudonymous visitor id (e.g. `v-20261205-07`); the subject the plugins see.
    #[schemars(regex(pattern = r"^[a-z]{1,8}-[a-z0-9-]+$"), length(max = 48))]
    pub visitor: String,
    /// Pseudonymous id of the resident who invited the visitor (a resident of the site).
    #[schemars(regex(pattern = r"^[a-z]{1,8}-[a-z0-9-]+$"), length(max = 48))]
    pub host: String,
    /// Door ids the pass opens (1..=16).
    #[schemars(length(min = 1, max = 16))]
    pub doors: Vec<String>,
    /// Valid from this Unix time (ms), inclusive.
    #[schemars(range(min = 0, max = 253_402_300_799_999i64))]
    pub not_before_ms: i64,
    /// Valid until this Unix time (ms), exclusive; at most 366 days after `not_before_ms`.
    #[schemars(range(min = 0, max = 253_402_300_799_999i64))]
    pub not_after_ms: i64,
    /// How many entries it grants (1..=1000).
    #[schemars(range(min = 1, max = 1000))]
    pub uses: u32,
}

/// Why a pass could not be issued, shown or accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PassError {
    #[error("not a gate visitor pass (expected GATEQR2.<payload>.<signature>.<code>)")]
    Format,
    #[error("an old visitor pass (GATEQR1: no doors, window, uses or dynamic code); the issuer must issue a new one")]
    OldFormat,
    #[error("visitor pass payload is not valid: {0}")]
    Payload(String),
    #[error("visitor pass key `{field}`: {why}")]
    Field { field: &'static str, why: String },
    #[error("visitor pass signature does not verify against any trusted issuer key")]
    Signature,
    #[error("visitor pass: this gateway has no code key (`qr.code_key`), so it cannot check dynamic codes")]
    NoCodeKey,
    #[error("visitor pass: the code is expired or wrong (codes change every {} s)", STEP_MS / 1000)]
    Code,
    #[error("visitor pass code key {path}: {why}")]
    Key { path: String, why: String },
}

fn field(field: &'static str, why: impl Into<String>) -> PassError {
    PassError::Field { field, why: why.into() }
}

/// Whether `id` is a pseudonymous id: a lowercase prefix of 1..=8 letters, a dash, then
/// lowercase letters, digits and dashes; at most 48 bytes and no run of more than 8
/// digits (so no phone or ID number), no name (no upper case, spaces or other scripts).
pub fn check_pseudonym(id: &str) -> Result<(), String> {
    let rule = "expected a pseudonymous id such as `v-20261205-07` (a lowercase prefix, `-`, lowercase letters, digits and dashes; never a name, ID, phone or unit number)";
    let Some((prefix, rest)) = id.split_once('-') else { return Err(format!("`{id}`: {rule}")) };
    let ok_prefix = (1..=8).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase());
    let ok_rest = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_prefix || !ok_rest || id.len() > MAX_ID_LEN {
        return Err(format!("`{}`: {rule}", crate::plugin::text::sanitize(id, 64)));
    }
    let longest_run = id.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
    if longest_run > MAX_DIGIT_RUN {
        return Err(format!("`{id}` holds a run of {longest_run} digits (at most {MAX_DIGIT_RUN}): it looks like a phone or ID number, which a pass must never carry"));
    }
    Ok(())
}

fn check_door_id(d: &str) -> bool {
    (1..=64).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Pass {
    /// Checks every field against its stated range; the error names the field.
    pub fn check(&self) -> Result<(), PassError> {
        check_pseudonym(&self.pass).map_err(|w| field("pass", w))?;
        check_pseudonym(&self.visitor).map_err(|w| field("visitor", w))?;
        check_pseudonym(&self.host).map_err(|w| field("host", w))?;
        if self.doors.is_empty() || self.doors.len() > MAX_DOORS {
            return Err(field("doors", format!("{} doors; a pass names 1..={MAX_DOORS}", self.doors.len())));
        }
        for (i, d) in self.doors.iter().enumerate() {
            if !check_door_id(d) {
                return Err(field("doors", format!("`{}` is not a door id (1..=64 letters, digits, `-`, `_`, `.`)", crate::plugin::text::sanitize(d, 64))));
            }
            if self.doors[..i].contains(d) {
                return Err(field("doors", format!("`{d}` is named twice")));
            }
        }
        for (name, t) in [("not_before_ms", self.not_before_ms), ("not_after_ms", self.not_after_ms)] {
            if !(0..=MAX_TIME_MS).contains(&t) {
                return Err(field(name, format!("{t} is outside 0..={MAX_TIME_MS} (1970 to 9999)")));
            }
        }
        if self.not_after_ms <= self.not_before_ms {
            return Err(field("not_after_ms", "must be after not_before_ms"));
        }
        if self.not_after_ms - self.not_before_ms > MAX_WINDOW_MS {
            return Err(field("not_after_ms", format!("the window is {} days long; at most 366", (self.not_after_ms - self.not_before_ms) / 86_400_000)));
        }
        if !(1..=MAX_USES).contains(&self.uses) {
            return Err(field("uses", format!("{} is outside 1..={MAX_USES}", self.uses)));
        }
        Ok(())
    }
}

/// Issues a pass: checks it and signs it with the issuer's key (the property platform, or a
/// guard station registering a walk-in visitor). Returns `GATEQR2.<payload>.<signature>`,
/// which the platform keeps; the phone shows [`displayed`] of it.
pub fn issue(key: &SigningKey, pass: &Pass) -> Result<String, PassError> {
    pass.check()?;
    let json = serde_json::to_vec(pass).map_err(|e| PassError::Payload(e.to_string()))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(format!("{PREFIX}.{}.{}", b64.encode(&json), b64.encode(key.sign(&json).to_bytes())))
}

/// Splits and parses a signed pass (3 parts) or a displayed one (4 parts, the code last);
/// checks the signature against `keys` and every field. Returns the pass and the code.
pub fn open<'a>(keys: &[VerifyingKey], text: &'a str) -> Result<(Pass, Option<&'a str>), PassError> {
    let text = text.trim();
    if text.len() > MAX_CODE_BYTES {
        return Err(PassError::Format);
    }
    let mut parts = text.split('.');
    let prefix = parts.next();
    if prefix == Some(OLD_PREFIX) {
        return Err(PassError::OldFormat);
    }
    let (Some(PREFIX), Some(payload_b64), Some(sig_b64)) = (prefix, parts.next(), parts.next()) else {
        return Err(PassError::Format);
    };
    let code = parts.next();
    if parts.next().is_some() {
        return Err(PassError::Format);
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = b64.decode(payload_b64).map_err(|_| PassError::Format)?;
    let sig: [u8; 64] = b64.decode(sig_b64).ok().and_then(|b| b.try_into().ok()).ok_or(PassError::Format)?;
    let sig = Signature::from_bytes(&sig);
    if !keys.iter().any(|k| k.verify(&payload, &sig).is_ok()) {
        return Err(PassError::Signature);
    }
    let pass: Pass = serde_json::from_slice(&payload).map_err(|e| PassError::Payload(e.to_string()))?;
    pass.check()?;
    Ok((pass, code))
}

/// The site's secret for dynamic codes (32 bytes), held by the gateways (`[qr] code_key`)
/// and the property platform; never shown on a phone or sent over MQTT.
#[derive(Clone)]
pub struct CodeKey([u8; 32]);

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(…)")
    }
}

/// Format tag of a code key file (JSON `{"format": …, "secret": base64}`, mode 0600).
pub const CODE_KEY_FORMAT: &str = "gate-visitor-code-key/1";

impl CodeKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<CodeKey, String> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| format!("no random source: {e}"))?;
        Ok(CodeKey(k))
    }

    /// Reads a key file written by [`CodeKey::save`]; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<CodeKey, PassError> {
        crate::credentials::load_secret(path, CODE_KEY_FORMAT).map(CodeKey).map_err(|why| PassError::Key { path: path.display().to_string(), why })
    }

    /// Writes the key file (mode 0600); never overwrites one.
    pub fn save(&self, path: &std::path::Path) -> Result<(), String> {
        crate::credentials::save_secret(path, CODE_KEY_FORMAT, &self.0)
    }

    /// The pass's own TOTP secret: HMAC-SHA256(code key, "gate-visitor-code/1" 0 pass id).
    fn pass_secret(&self, pass_id: &str) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(format!("gate-visitor-code/1\0{pass_id}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The code of `pass_id` for time step `step` (Unix time / 15 s).
    pub fn code_for_step(&self, pass_id: &str, step: i64) -> String {
        let secs = u64::try_from(step.max(0)).unwrap_or(0).saturating_mul((STEP_MS / 1000) as u64);
        totp_lite::totp_custom::<Sha256>((STEP_MS / 1000) as u64, DIGITS, &self.pass_secret(pass_id), secs)
    }
}

/// The time step a Unix time (ms) falls in.
pub fn step_of(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(STEP_MS)
}

/// What the visitor's phone shows at `unix_ms`: the signed pass and its current code.
/// `signed` is a pass from [`issue`] (a displayed one is accepted too; its code is replaced).
/// The signature is not checked here (the issuer shows its own passes; the gateway checks).
pub fn displayed(key: &CodeKey, signed: &str, unix_ms: i64) -> Result<String, PassError> {
    let mut parts = signed.trim().split('.');
    let (Some(p), Some(payload), Some(sig)) = (parts.next(), parts.next(), parts.next()) else { return Err(PassError::Format) };
    if p == OLD_PREFIX {
        return Err(PassError::OldFormat);
    }
    if p != PREFIX || parts.nth(1).is_some() {
        return Err(PassError::Format);
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).map_err(|_| PassError::Format)?;
    let pass: Pass = serde_json::from_slice(&json).map_err(|e| PassError::Payload(e.to_string()))?;
    pass.check()?;
    Ok(format!("{p}.{payload}.{sig}.{}", key.code_for_step(&pass.pass, step_of(unix_ms))))
}

/// A scanned pass whose signature, fields and code checked out at `now`, with the step
/// its code belongs to (what one-shot-per-step counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub pass: Pass,
    pub step: i64,
}

/// Verifies a scanned code at gateway time `now_ms`: signature, fields, and a code of the
/// current step or one step either side.
pub fn scan(keys: &[VerifyingKey], code_key: Option<&CodeKey>, text: &str, now_ms: i64) -> Result<Scanned, PassError> {
    let (pass, code) = open(keys, text)?;
    let code = code.ok_or(PassError::Code)?;
    let key = code_key.ok_or(PassError::NoCodeKey)?;
    let now = step_of(now_ms);
    for step in (now - SKEW_STEPS)..=(now + SKEW_STEPS) {
        if constant_time_eq(key.code_for_step(&pass.pass, step).as_bytes(), code.as_bytes()) {
            return Ok(Scanned { pass, step });
        }
    }
    Err(PassError::Code)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The durable count of a pass: uses granted so far and the step of the last granting code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassUse {
    pub used: u32,
    pub last_step: Option<i64>,
}

/// Why the host refuses a verified pass at a door now, if it does (the reason, the `host:` tag).
/// `state` is the pass's durable count; `revoked` whether `pass:<id>` is revoked.
pub fn refusal(s: &Scanned, door: &str, now_ms: i64, state: PassUse, revoked: bool) -> Option<(String, &'static str)> {
    let p = &s.pass;
    if revoked {
        return Some(("visitor pass: revoked".into(), "pass-revoked"));
    }
    if now_ms < p.not_before_ms {
        return Some((format!("visitor pass: not valid until {}", iso(p.not_before_ms)), "pass-window"));
    }
    if now_ms >= p.not_after_ms {
        return Some((format!("visitor pass: expired at {}", iso(p.not_after_ms)), "pass-window"));
    }
    if !p.doors.iter().any(|d| d == door) {
        return Some(("visitor pass: not for this door".into(), "pass-door"));
    }
    if state.used >= p.uses {
        return Some((format!("visitor pass: used up ({} of {})", state.used, p.uses), "pass-used-up"));
    }
    if state.last_step.is_some_and(|last| s.step <= last) {
        return Some(("visitor pass: this code was already used; show the next one".into(), "pass-code-used"));
    }
    None
}

/// A Unix time as RFC 3339 UTC, to the second.
pub fn iso(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// The JSON Schema of the signed pass payload, as published in `host/schema/visitor-pass.json`.
pub fn schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(Pass)).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_388_400_000; // 2026-11-22T23:00:00Z, a multiple of 15 s

    fn pass() -> Pass {
        Pass { pass: "p-1123-01".into(), visitor: "v-1123-01".into(), host: "r-0002".into(), doors: vec!["north-gate".into()], not_before_ms: T0, not_after_ms: T0 + 3_600_000, uses: 2 }
    }

    fn keys() -> (SigningKey, Vec<VerifyingKey>, CodeKey) {
        let k = SigningKey::from_bytes(&[7; 32]);
        let v = vec![k.verifying_key()];
        (k, v, CodeKey([3; 32]))
    }

    #[test]
    fn a_code_works_for_at_most_thirty_seconds_after_it_was_shown() {
        let (k, v, ck) = keys();
        let signed = issue(&k, &pass()).unwrap();
        for shown_at in [T0, T0 + 1, T0 + 14_999] {
            let qr = displayed(&ck, &signed, shown_at).unwrap();
            assert_eq!(scan(&v, Some(&ck), &qr, shown_at).unwrap().step, step_of(shown_at));
            assert!(scan(&v, Some(&ck), &qr, shown_at + 15_000).is_ok(), "one step of skew");
            assert_eq!(scan(&v, Some(&ck), &qr, shown_at + 31_000), Err(PassError::Code));
            assert!(scan(&v, Some(&ck), &qr, shown_at - 15_000).is_ok(), "a gateway clock behind the phone's");
            assert_eq!(scan(&v, Some(&ck), &qr, shown_at - 30_001), Err(PassError::Code));
        }
        // The latest moment a code shown at step start still works is the end of the next step.
        let qr = displayed(&ck, &signed, T0).unwrap();
        assert!(scan(&v, Some(&ck), &qr, T0 + 29_999).is_ok());
        assert_eq!(scan(&v, Some(&ck), &qr, T0 + 30_000), Err(PassError::Code));
    }

    #[test]
    fn the_code_depends_on_the_site_key_and_the_pass_and_is_8_digits() {
        let (k, v, ck) = keys();
        let qr = displayed(&ck, &issue(&k, &pass()).unwrap(), T0).unwrap();
        let code = qr.rsplit('.').next().unwrap();
        assert!(code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        assert_eq!(scan(&v, Some(&CodeKey([4; 32])), &qr, T0), Err(PassError::Code), "another site's key");
        assert_eq!(scan(&v, None, &qr, T0), Err(PassError::NoCodeKey));
        let other = Pass { pass: "p-1123-02".into(), ..pass() };
        assert_ne!(ck.code_for_step(&other.pass, step_of(T0)), code);
        // The signed pass alone (no code) is not a displayed code.
        assert_eq!(scan(&v, Some(&ck), &issue(&k, &pass()).unwrap(), T0), Err(PassError::Code));
    }

    #[test]
    fn forged_old_and_malformed_passes_are_refused() {
        let (k, v, ck) = keys();
        let foreign = issue(&SigningKey::from_bytes(&[9; 32]), &pass()).unwrap();
        assert_eq!(scan(&v, Some(&ck), &format!("{foreign}.12345678"), T0), Err(PassError::Signature));
        assert_eq!(scan(&v, Some(&ck), "GATEQR1.e30.AAAA", T0), Err(PassError::OldFormat));
        assert_eq!(scan(&v, Some(&ck), "hello", T0), Err(PassError::Format));
        let qr = displayed(&ck, &issue(&k, &pass()).unwrap(), T0).unwrap();
        assert_eq!(scan(&v, Some(&ck), &format!("{qr}.1"), T0), Err(PassError::Format));
    }

    #[test]
    fn passes_carry_pseudonymous_ids_only_and_every_number_has_a_range() {
        let (k, ..) = keys();
        let bad = |p: Pass| issue(&k, &p).unwrap_err().to_string();
        assert!(bad(Pass { visitor: "Zhang Wei".into(), ..pass() }).starts_with("visitor pass key `visitor`"));
        assert!(bad(Pass { visitor: "v-110101199003071234".into(), ..pass() }).contains("ID number"));
        assert!(bad(Pass { host: "v-13812345678".into(), ..pass() }).contains("key `host`"));
        assert!(bad(Pass { host: "张伟".into(), ..pass() }).contains("key `host`"));
        assert!(bad(Pass { doors: vec![], ..pass() }).contains("key `doors`"));
        assert!(bad(Pass { doors: vec!["a".into(), "a".into()], ..pass() }).contains("twice"));
        assert!(bad(Pass { uses: 0, ..pass() }).contains("key `uses`"));
        assert!(bad(Pass { uses: MAX_USES + 1, ..pass() }).contains("1..=1000"));
        assert!(bad(Pass { not_after_ms: T0, ..pass() }).contains("key `not_after_ms`"));
        assert!(bad(Pass { not_after_ms: T0 + MAX_WINDOW_MS + 1, ..pass() }).contains("366"));
        assert!(bad(Pass { not_before_ms: -1, ..pass() }).contains("key `not_before_ms`"));
        assert!(check_pseudonym("v-20261123-07").is_ok() && check_pseudonym("p-1").is_ok());
        // A payload with an extra field (a name) is refused even when correctly signed.
        let json = br#"{"pass":"p-1","visitor":"v-1","host":"r-1","doors":["d"],"not_before_ms":0,"not_after_ms":1,"uses":1,"name":"Li"}"#;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let text = format!("{PREFIX}.{}.{}.00000000", b64.encode(json), b64.encode(k.sign(json).to_bytes()));
        assert!(matches!(open(&[k.verifying_key()], &text), Err(PassError::Payload(m)) if m.contains("unknown field `name`")));
    }

    #[test]
    fn the_host_refuses_outside_the_window_at_other_doors_used_up_revoked_and_replayed() {
        let s = Scanned { pass: pass(), step: step_of(T0 + 60_000) };
        let at = T0 + 60_000;
        assert_eq!(refusal(&s, "north-gate", at, PassUse::default(), false), None);
        assert_eq!(refusal(&s, "north-gate", at, PassUse::default(), true).unwrap().1, "pass-revoked");
        assert_eq!(refusal(&s, "north-gate", T0 - 1, PassUse::default(), false).unwrap().0, "visitor pass: not valid until 2026-11-22T23:00:00Z");
        assert_eq!(refusal(&s, "north-gate", T0 + 3_600_000, PassUse::default(), false).unwrap().0, "visitor pass: expired at 2026-11-23T00:00:00Z");
        assert_eq!(refusal(&s, "garage", at, PassUse::default(), false).unwrap().1, "pass-door");
        assert_eq!(refusal(&s, "north-gate", at, PassUse { used: 2, last_step: Some(0) }, false).unwrap().0, "visitor pass: used up (2 of 2)");
        assert_eq!(refusal(&s, "north-gate", at, PassUse { used: 1, last_step: Some(s.step) }, false).unwrap().1, "pass-code-used");
        assert_eq!(refusal(&s, "north-gate", at, PassUse { used: 1, last_step: Some(s.step - 1) }, false), None);
    }

    #[test]
    fn the_checked_in_schema_is_current() {
        let want = schema();
        crate::assert_schema_checked_in("visitor-pass.json", &want);
    }
}
