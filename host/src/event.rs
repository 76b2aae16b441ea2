//! The vocabulary that flows through the gateway: hardware inputs in, records out.
//!
//! Inputs are what the hardware (or a trace) reports; records are what the
//! gateway did about them. Both are serialised in traces, so field names here
//! are part of the trace format (see `trace.rs` and `tests/traces/README.md`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which way someone moves through a door.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    #[default]
    Entry,
    Exit,
}

/// The credential kinds a door can accept (mirrors the WIT `credential-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    Face,
    Card,
    Pin,
    Nfc,
    Qr,
    Plate,
    GuardRelease,
    Intercom,
}

impl CredentialKind {
    /// Everything but face: what the law requires every door to offer.
    pub fn is_biometric(self) -> bool {
        matches!(self, CredentialKind::Face)
    }

    /// The name used in configs, traces and logs.
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
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Liveness verdict of a face match (mirrors the WIT `liveness`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Liveness {
    Live,
    Spoof,
    #[default]
    Unknown,
}

/// How strong a face match is by the site's `[face]` thresholds (mirrors the WIT `match-band`).
/// The band, never the exact score, is what leaves the matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaceBand {
    Strong,
    Weak,
}

/// Roles a subject can have at a site (mirrors the WIT `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Resident,
    Staff,
    Visitor,
    Guard,
    Contractor,
}

/// One thing the hardware reported. Credential inputs are one-shot: the
/// gateway acts on each at most once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Input {
    /// A card (or fob) number read at a door's reader.
    Card {
        door: String,
        #[serde(default)]
        direction: Direction,
        number: String,
        /// When the reader captured it (ms since trace start), if it says.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A PIN entered on a door's keypad.
    Pin {
        door: String,
        #[serde(default)]
        direction: Direction,
        pin: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A phone or watch NFC token.
    Nfc {
        door: String,
        #[serde(default)]
        direction: Direction,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A face-match *result* from the on-device matcher: never an image.
    Face {
        door: String,
        #[serde(default)]
        direction: Direction,
        /// Pseudonymous subject id of the best match; None when nobody matched.
        subject: Option<String>,
        /// Band of the match (what the matcher reports and recordings carry); None when
        /// nobody matched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        band: Option<FaceBand>,
        /// A similarity score, accepted in hand-written traces only and turned into a band
        /// by the site's thresholds at once. Never written: recordings carry the band.
        #[serde(default, skip_serializing)]
        score: Option<f32>,
        #[serde(default)]
        liveness: Liveness,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A camera frame for the on-device matcher, by reference to an image file (JPEG/PNG;
    /// a trace resolves it relative to the trace file). The gateway decodes it in memory,
    /// runs the models and acts on the match *result* only; the pixels go nowhere.
    CameraFrame {
        door: String,
        #[serde(default)]
        direction: Direction,
        file: std::path::PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A licence plate read at a vehicle lane.
    Plate {
        door: String,
        #[serde(default)]
        direction: Direction,
        plate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A visitor QR code scanned at a door: a signed pass with its dynamic code (`visitor.rs`).
    Qr {
        door: String,
        #[serde(default)]
        direction: Direction,
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        captured_at: Option<u64>,
    },
    /// A guard opened the door by hand from the guard console.
    GuardRelease {
        door: String,
        #[serde(default)]
        direction: Direction,
        guard: String,
    },
    /// A resident approved a visitor over the intercom.
    Intercom {
        door: String,
        #[serde(default)]
        direction: Direction,
        resident: String,
    },
    /// A visitor pressed the door panel's call button for a resident's unit (the panel
    /// resolves the unit to the resident's pseudonymous id): the host calls the resident.
    CallButton { door: String, resident: String },
    /// An answer to the live call at `door` (a trace's stand-in for the authorised answer
    /// an indoor station, the property platform or the guard sends over MQTT): `via` is
    /// indoor, phone or guard; `open` opens the door once, else the call is declined.
    CallAnswer { door: String, via: String, open: bool },
    /// The door contact changed.
    DoorContact { door: String, open: bool },
    /// The request-to-exit button was pressed.
    ExitButton { door: String },
    /// The fire-alarm input changed (site-wide).
    FireAlarm { active: bool },
    /// Pin level: one GPIO line changed level (a pin-level trace). Replay feeds these
    /// through the simulated pins and the real drivers (see `hardware.rs`); the gateway
    /// itself never acts on them.
    Line {
        /// Line name from `[hardware]`: "<reader>.d0", "<reader>.d1", an input's name.
        line: String,
        /// Electrical level after the change (true = high).
        level: bool,
        /// Exact time of the change in µs since trace start (`at` is this in ms).
        at_us: u64,
    },
}

impl Input {
    /// The credential kind, for inputs that present a credential.
    pub fn credential_kind(&self) -> Option<CredentialKind> {
        Some(match self {
            Input::Card { .. } => CredentialKind::Card,
            Input::Pin { .. } => CredentialKind::Pin,
            Input::Nfc { .. } => CredentialKind::Nfc,
            Input::Face { .. } | Input::CameraFrame { .. } => CredentialKind::Face,
            Input::Plate { .. } => CredentialKind::Plate,
            Input::Qr { .. } => CredentialKind::Qr,
            Input::GuardRelease { .. } => CredentialKind::GuardRelease,
            Input::Intercom { .. } => CredentialKind::Intercom,
            Input::DoorContact { .. } | Input::ExitButton { .. } | Input::FireAlarm { .. } | Input::Line { .. } | Input::CallButton { .. } | Input::CallAnswer { .. } => return None,
        })
    }

    /// Which way a credential input moves someone (entry for everything else).
    pub fn direction(&self) -> Direction {
        match self {
            Input::Card { direction, .. }
            | Input::Pin { direction, .. }
            | Input::Nfc { direction, .. }
            | Input::Face { direction, .. }
            | Input::CameraFrame { direction, .. }
            | Input::Plate { direction, .. }
            | Input::Qr { direction, .. }
            | Input::GuardRelease { direction, .. }
            | Input::Intercom { direction, .. } => *direction,
            Input::DoorContact { .. } | Input::ExitButton { .. } | Input::FireAlarm { .. } | Input::Line { .. } | Input::CallButton { .. } | Input::CallAnswer { .. } => Direction::Entry,
        }
    }

    /// When the device captured the input (ms since trace start), if it says.
    pub fn captured_at(&self) -> Option<u64> {
        match self {
            Input::Card { captured_at, .. }
            | Input::Pin { captured_at, .. }
            | Input::Nfc { captured_at, .. }
            | Input::Face { captured_at, .. }
            | Input::CameraFrame { captured_at, .. }
            | Input::Plate { captured_at, .. }
            | Input::Qr { captured_at, .. } => *captured_at,
            _ => None,
        }
    }

    /// The door the input concerns, if any (the fire alarm is site-wide).
    pub fn door(&self) -> Option<&str> {
        match self {
            Input::Card { door, .. }
            | Input::Pin { door, .. }
            | Input::Nfc { door, .. }
            | Input::Face { door, .. }
            | Input::CameraFrame { door, .. }
            | Input::Plate { door, .. }
            | Input::Qr { door, .. }
            | Input::GuardRelease { door, .. }
            | Input::Intercom { door, .. }
            | Input::DoorContact { door, .. }
            | Input::CallButton { door, .. }
            | Input::CallAnswer { door, .. }
            | Input::ExitButton { door } => Some(door),
            Input::FireAlarm { .. } | Input::Line { .. } => None,
        }
    }
}

/// What the gate decided about an access attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Grant,
    Deny,
    NeedFactor,
    Escalate,
}

/// Door alarms the host raises by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlarmKind {
    HeldOpen,
    ForcedOpen,
    Fire,
}

/// How a door behaves, set by an authorised operator for a limited time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DoorMode {
    /// Credentials decide, as configured.
    #[default]
    Normal,
    /// Entry credentials are refused by the host (a guard's release still works); exit,
    /// the exit button, fire release and a remote open still do.
    Locked,
    /// The relay stays released and the held-open alarm is off until the mode ends.
    HeldOpen,
}

impl DoorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DoorMode::Normal => "normal",
            DoorMode::Locked => "locked",
            DoorMode::HeldOpen => "held-open",
        }
    }
}

/// Why an input was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IgnoreReason {
    /// The same credential at the same door again within the repeat window.
    Duplicate,
    /// The reader captured it too long ago (a replayed or buffered read).
    Stale,
    /// The input names a door this site does not have.
    UnknownDoor,
    /// A camera frame arrived but face recognition is off (not configured, or models missing).
    FaceUnavailable,
    /// A camera frame showed no face.
    NoFace,
    /// A face was seen but not usable (too small, cut by the edge, blurred, turned away).
    FaceUnusable,
    /// A camera frame could not be read or decoded.
    BadFrame,
    /// A call answer arrived at a door where no call is ringing.
    NoLiveCall,
    /// A call was asked for someone the directory does not hold as a resident.
    UnknownResident,
}

/// Something the gateway did. Replay prints these and compares them with a
/// trace's expected outputs, so they carry no wall-clock times or random ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Record {
    /// An access attempt was decided.
    Decision {
        door: String,
        direction: Direction,
        credential: CredentialKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subject: Option<String>,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open_ms: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        factors: Vec<CredentialKind>,
        /// "plugin:<name>", "fallback:<why>" or "host:<why>".
        by: String,
    },
    /// The exit button released the door.
    Exit { door: String, open_ms: u32 },
    /// The door relay changed state (on = unlocked).
    Relay { door: String, on: bool },
    /// An alarm was raised or cleared.
    Alarm { door: String, alarm: AlarmKind, active: bool },
    /// An integration plugin published a message (topic includes its prefix).
    Publish { plugin: String, topic: String, payload: Payload },
    /// An input was not acted on.
    Ignored { door: String, credential: Option<CredentialKind>, reason: IgnoreReason },
    /// A plugin failed, was quarantined, or came back.
    Plugin { plugin: String, status: PluginStatus, reason: String },
    /// A door's mode changed (operator command, its expiry, or restored after a restart).
    DoorMode {
        door: String,
        mode: DoorMode,
        /// Gateway time the mode ends (absent for normal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<i64>,
        /// "remote:<operator key>" or "host:<why>".
        by: String,
    },
    /// A credential (or every credential of a holder) was revoked by an operator.
    Revoked {
        /// The pseudonymous credential reference (`card:…`, `pin:…`, `subject:<id>`), never the raw value.
        credential: String,
        /// The holder it belonged to, if the directory knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        reason: String,
        by: String,
    },
    /// A revocation was undone by an operator.
    Reinstated {
        credential: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        reason: String,
        by: String,
    },
    /// A unit door's shared PIN was replaced (the PIN itself is never logged).
    UnitPin { door: String, by: String },
    /// A face template was erased by the gateway's retention rules (the subject left the
    /// directory, or the template went unused); consent withdrawals are the resident's own.
    FaceErased { subject: String, reason: String },
    /// The property platform changed the subject directory (counts only; the audit trail
    /// names the pseudonymous ids).
    DirectorySynced { version: u64, added: u32, changed: u32, removed: u32, by: String },
    /// A step of a visitor's call to a resident (see `call.rs`): `step` is ringing-indoor,
    /// ringing-phone, ringing-guard, answered, declined, unanswered, refused (an answer that
    /// was not taken) or ended-by-restart. No media, no names: the pseudonymous resident.
    Call {
        call: String,
        door: String,
        subject: String,
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

/// An integration plugin's message as it published it: compact JSON text, checked once
/// and kept as text (never parsed into a tree and written out again), so its key order is
/// the plugin's. A payload that is not JSON is kept as a JSON string of its (lossy UTF-8) text.
#[derive(Clone)]
pub struct Payload(Box<serde_json::value::RawValue>);

impl Payload {
    /// Takes the bytes a plugin published: valid JSON stays as it is (whitespace outside
    /// strings removed), anything else becomes a JSON string.
    pub fn from_plugin(bytes: Vec<u8>) -> Payload {
        let Ok(text) = std::str::from_utf8(&bytes) else { return Payload::text(&String::from_utf8_lossy(&bytes)) };
        // Only what is JSON as sent is compacted: text that is not stays exactly as it was.
        let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text) else { return Payload::text(text) };
        if !bytes.iter().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            return Payload(raw.to_owned());
        }
        let compact = minify(&bytes);
        match std::str::from_utf8(&compact).ok().and_then(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).ok()) {
            Some(raw) => Payload(raw.to_owned()),
            None => Payload::text(text),
        }
    }

    /// A payload that is a JSON string.
    fn text(s: &str) -> Payload {
        // Serialising a str to JSON cannot fail.
        Payload(serde_json::value::to_raw_value(s).unwrap_or_default())
    }

    /// The payload as compact JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The bytes to publish: a JSON string's own text (what the plugin sent when it was
    /// not JSON), otherwise the JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self.0.get().starts_with('"') {
            true => serde_json::from_str::<String>(self.0.get()).map(String::into_bytes).unwrap_or_else(|_| self.0.get().as_bytes().to_vec()),
            false => self.0.get().as_bytes().to_vec(),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    /// Reads any JSON value (a trace's expected publish) and keeps it as compact text in
    /// the order it was written: a record is an internally tagged enum, which hands its
    /// fields over as buffered values, so the text is written back from them in order.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = String::new();
        d.deserialize_any(Compact(&mut out))?;
        serde_json::value::RawValue::from_string(out).map(Payload).map_err(serde::de::Error::custom)
    }
}

/// Writes the JSON value it visits as compact text, keeping the order of object keys.
struct Compact<'a>(&'a mut String);

impl Compact<'_> {
    fn put<T: Serialize + ?Sized>(&mut self, v: &T) {
        // Strings, numbers and booleans always serialise.
        if let Ok(s) = serde_json::to_string(v) {
            self.0.push_str(&s);
        }
    }
}

impl<'de> serde::de::Visitor<'de> for Compact<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(mut self, v: bool) -> Result<(), E> {
        self.put(&v);
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(mut self, v: i64) -> Result<(), E> {
        self.put(&v);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(mut self, v: u64) -> Result<(), E> {
        self.put(&v);
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            return Err(E::custom("a JSON number must be finite"));
        }
        self.put(&v);
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.put(v);
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.push_str("null");
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.push('[');
        let mut first = true;
        loop {
            let mark = self.0.len();
            if !first {
                self.0.push(',');
            }
            if seq.next_element_seed(Compact(self.0))?.is_none() {
                self.0.truncate(mark);
                break;
            }
            first = false;
        }
        self.0.push(']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.push('{');
        let mut first = true;
        while let Some(key) = map.next_key::<String>()? {
            if !first {
                self.0.push(',');
            }
            first = false;
            Compact(self.0).put(&key);
            self.0.push(':');
            map.next_value_seed(Compact(self.0))?;
        }
        self.0.push('}');
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Compact<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Drops the whitespace outside JSON strings (inside them it is escaped, never raw).
fn minify(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let (mut in_str, mut escaped) = (false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
        } else if b == b'"' {
            in_str = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(b);
    }
    out
}

/// Plugin health changes the gateway reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginStatus {
    Failed,
    Quarantined,
    Restored,
    /// Events or publishes an integration plugin never got to handle (its queue was full,
    /// they waited too long, or the publish rate limit refused them), counted.
    Dropped,
}

impl Record {
    /// The record's kind as stored in the event log.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Decision { .. } => "decision",
            Record::Exit { .. } => "exit",
            Record::Relay { .. } => "relay",
            Record::Alarm { .. } => "alarm",
            Record::Publish { .. } => "publish",
            Record::Ignored { .. } => "ignored",
            Record::Plugin { .. } => "plugin",
            Record::DoorMode { .. } => "door-mode",
            Record::Revoked { .. } => "revoked",
            Record::Reinstated { .. } => "reinstated",
            Record::UnitPin { .. } => "unit-pin",
            Record::FaceErased { .. } => "face-erased",
            Record::DirectorySynced { .. } => "directory",
            Record::Call { .. } => "call",
        }
    }

    /// The door the record concerns, if any.
    pub fn door(&self) -> Option<&str> {
        match self {
            Record::Decision { door, .. }
            | Record::Exit { door, .. }
            | Record::Relay { door, .. }
            | Record::Alarm { door, .. }
            | Record::Ignored { door, .. }
            | Record::DoorMode { door, .. }
            | Record::UnitPin { door, .. }
            | Record::Call { door, .. } => Some(door),
            Record::Publish { .. } | Record::Plugin { .. } | Record::Revoked { .. } | Record::Reinstated { .. } | Record::FaceErased { .. } | Record::DirectorySynced { .. } => None,
        }
    }
}

impl fmt::Display for Record {
    /// One human-readable line per record, as the demo and replay print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Decision { door, direction, credential, subject, outcome, open_ms, reason, factors, by } => {
                let who = subject.as_deref().unwrap_or("unknown");
                let dir = match direction {
                    Direction::Entry => "in ",
                    Direction::Exit => "out",
                };
                write!(f, "{door:<14} {dir} {credential:<13} {who:<10} ")?;
                match outcome {
                    Outcome::Grant => write!(f, "GRANT {}ms", open_ms.unwrap_or(0))?,
                    Outcome::Deny => write!(f, "DENY  {}", reason.as_deref().unwrap_or(""))?,
                    Outcome::NeedFactor => {
                        let kinds: Vec<&str> = factors.iter().map(|k| k.as_str()).collect();
                        write!(f, "NEED  {}", kinds.join("|"))?
                    }
                    Outcome::Escalate => write!(f, "ESCALATE {}", reason.as_deref().unwrap_or(""))?,
                }
                write!(f, "  [{by}]")
            }
            Record::Exit { door, open_ms } => write!(f, "{door:<14} exit button -> open {open_ms}ms"),
            Record::Relay { door, on } => {
                write!(f, "{door:<14} relay {}", if *on { "ON  (unlocked)" } else { "off (locked)" })
            }
            Record::Alarm { door, alarm, active } => {
                let kind = match alarm {
                    AlarmKind::HeldOpen => "held-open",
                    AlarmKind::ForcedOpen => "forced-open",
                    AlarmKind::Fire => "fire",
                };
                write!(f, "{door:<14} ALARM {kind} {}", if *active { "RAISED" } else { "cleared" })
            }
            Record::Publish { plugin, topic, payload } => {
                // JSON escapes newlines but not U+2028/2029 or bidi controls: shown, the payload is escaped too.
                write!(f, "publish [{plugin}] {topic} {}", crate::plugin::text::sanitize(payload.json(), 4096))
            }
            Record::Ignored { door, credential, reason } => {
                let c = credential.map(|c| c.as_str()).unwrap_or("-");
                let why = match reason {
                    IgnoreReason::Duplicate => "duplicate read",
                    IgnoreReason::Stale => "stale read",
                    IgnoreReason::UnknownDoor => "unknown door",
                    IgnoreReason::FaceUnavailable => "face recognition unavailable",
                    IgnoreReason::NoFace => "no face in the frame",
                    IgnoreReason::FaceUnusable => "face not usable",
                    IgnoreReason::BadFrame => "frame unreadable",
                    IgnoreReason::NoLiveCall => "no call ringing here",
                    IgnoreReason::UnknownResident => "no such resident to call",
                };
                write!(f, "{door:<14} ignored {c}: {why}")
            }
            Record::Plugin { plugin, status, reason } => {
                let s = match status {
                    PluginStatus::Failed => "FAILED",
                    PluginStatus::Quarantined => "QUARANTINED",
                    PluginStatus::Restored => "restored",
                    PluginStatus::Dropped => "DROPPED",
                };
                write!(f, "plugin {plugin} {s}: {reason}")
            }
            Record::DoorMode { door, mode, until_ms, by } => {
                write!(f, "{door:<14} MODE {}", mode.as_str())?;
                if let Some(u) = until_ms {
                    write!(f, " until {u}")?;
                }
                write!(f, "  [{by}]")
            }
            Record::Revoked { credential, holder, reason, by } => {
                write!(f, "credential {credential} ({}) REVOKED: {reason}  [{by}]", holder.as_deref().unwrap_or("no holder"))
            }
            Record::Reinstated { credential, holder, reason, by } => {
                write!(f, "credential {credential} ({}) reinstated: {reason}  [{by}]", holder.as_deref().unwrap_or("no holder"))
            }
            Record::UnitPin { door, by } => write!(f, "{door:<14} unit PIN replaced  [{by}]"),
            Record::Call { call, door, subject, step, via, reason, by, .. } => {
                write!(f, "{door:<14} call {call} to {subject}: {}", step.to_uppercase())?;
                if let Some(v) = via {
                    write!(f, " by {v}")?;
                }
                if let Some(r) = reason {
                    write!(f, " ({r})")?;
                }
                match by {
                    Some(b) => write!(f, "  [{b}]"),
                    None => write!(f, "  [host:call]"),
                }
            }
            Record::DirectorySynced { version, added, changed, removed, by } => write!(f, "subject directory now version {version}: {added} added, {changed} changed, {removed} removed  [{by}]"),
            Record::FaceErased { subject, reason } => write!(f, "face template of {subject} ERASED: {reason}  [host:retention]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Payload, Record};

    #[test]
    fn a_plugins_json_is_kept_as_it_wrote_it_in_its_key_order() {
        let p = Payload::from_plugin(br#"{"type":"access","eventId":"gw-1","n":[1, 2.5, null, true], "s":"a \"b\" { }"}"#.to_vec());
        assert_eq!(p.json(), r#"{"type":"access","eventId":"gw-1","n":[1,2.5,null,true],"s":"a \"b\" { }"}"#, "whitespace outside strings goes, order and strings stay");
        assert_eq!(p.to_bytes(), p.json().as_bytes());
        let r = Record::Publish { plugin: "p".into(), topic: "t".into(), payload: p.clone() };
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.ends_with(r#""payload":{"type":"access","eventId":"gw-1","n":[1,2.5,null,true],"s":"a \"b\" { }"}}"#), "{line}");
        // Read back (a trace's expected output), the payload keeps its order and compares equal.
        let back: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
        let spaced: Record = serde_json::from_str(r#"{"kind":"publish","plugin":"p","topic":"t","payload":{ "z" : 1, "a" : {"y":[ ],"b":{}} }}"#).unwrap();
        let Record::Publish { payload, .. } = spaced else { panic!("not a publish") };
        assert_eq!(payload.json(), r#"{"z":1,"a":{"y":[],"b":{}}}"#);
    }

    #[test]
    fn a_payload_that_is_not_json_becomes_a_json_string_and_is_published_as_sent() {
        for raw in [&b"plain text"[..], b"{\"open\":", b"\xff\xfe bytes", b""] {
            let p = Payload::from_plugin(raw.to_vec());
            assert!(p.json().starts_with('"'), "{:?} -> {}", raw, p.json());
            assert_eq!(p.to_bytes(), String::from_utf8_lossy(raw).as_bytes());
        }
        // A JSON string stays a string; control characters stay escaped.
        let p = Payload::from_plugin(br#""line\nbreak""#.to_vec());
        assert_eq!(p.json(), r#""line\nbreak""#);
    }
}
