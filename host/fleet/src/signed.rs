//! What a gateway says, signed by the gateway: its device key (Ed25519, made on the
//! gateway at first start, never leaving it) and the envelope every status, last will,
//! job progress, command reply and event travels in.
//!
//! Envelope (`gate-signed/1`), the MQTT payload:
//! `{"format":"gate-signed/1","body":"<the message's exact JSON text>","ed25519":"<base64 64 bytes>"}`.
//! The signature covers `domain 0x00 topic 0x00 body`, with a domain per kind of
//! message ([`Kind::domain`]), so a signature made for one kind, one gateway or one
//! topic (one job, one command id) cannot be passed off as another. A consumer reads
//! the body only after the signature verifies against the key enrolled for the
//! gateway the topic names (see [`crate::inventory`]).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// Format tag of a signed gateway message.
pub const ENVELOPE_FORMAT: &str = "gate-signed/1";
/// Format tag of the device key file.
pub const DEVICE_KEY_FORMAT: &str = "gate-device-key/1";

/// The kinds of message a gateway signs; each has its own signature domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `status` (birth, the last will, and updates).
    Status,
    /// `jobs/{job}/progress`.
    JobProgress,
    /// `cmd/{id}/reply`.
    Reply,
    /// `events` and `alarms`.
    Event,
    /// `report/{YYYY-MM}`: the month's transparency report.
    Report,
}

impl Kind {
    /// The signature domain of this kind.
    pub fn domain(self) -> &'static str {
        match self {
            Kind::Status => "gate-status/1",
            Kind::JobProgress => "gate-job-progress/1",
            Kind::Reply => "gate-reply/1",
            Kind::Event => "gate-event/1",
            Kind::Report => "gate-report/1",
        }
    }
}

/// Site, gateway and kind of a topic a gateway publishes on (`gate/v1/{site}/{gw}/…`).
pub fn classify(topic: &str) -> Option<(&str, &str, Kind)> {
    let rest = topic.strip_prefix(crate::topics::ROOT)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let kind = match parts.get(2..)? {
        ["status"] => Kind::Status,
        ["events"] | ["alarms"] => Kind::Event,
        ["jobs", _, "progress"] => Kind::JobProgress,
        ["cmd", _, "reply"] => Kind::Reply,
        ["report", _] => Kind::Report,
        _ => return None,
    };
    Some((parts[0], parts[1], kind))
}

/// A signed gateway message on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `gate-signed/1`.
    pub format: String,
    /// The message's exact JSON text, signed as is.
    pub body: String,
    /// Base64 of the 64-byte Ed25519 signature over `domain 0x00 topic 0x00 body`.
    pub ed25519: String,
}

/// Problems with the device key file.
#[derive(Debug, Error)]
pub enum DeviceKeyError {
    #[error("device key {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("device key {path} is not a {DEVICE_KEY_FORMAT} file: {why}")]
    Format { path: String, why: String },
}

/// The gateway's own signing key.
pub struct DeviceKey(SigningKey);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", self.public_b64())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceKeyFile {
    format: String,
    secret: String,
}

impl DeviceKey {
    /// A fresh key from the operating system's generator (tests, and first start).
    pub fn generate() -> DeviceKey {
        DeviceKey(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Reads the key at `path`, or makes one there (mode 0600, never overwritten) if
    /// there is none yet. Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(DeviceKey, bool), DeviceKeyError> {
        let p = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bad = |why: String| DeviceKeyError::Format { path: p.clone(), why };
                let f: DeviceKeyFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                if f.format != DEVICE_KEY_FORMAT {
                    return Err(bad(format!("format is {:?}", f.format)));
                }
                let raw: [u8; 32] = B64.decode(f.secret.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("secret is not 32 bytes of base64".into()))?;
                Ok((DeviceKey(SigningKey::from_bytes(&raw)), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = DeviceKey::generate();
                let body = serde_json::to_string(&DeviceKeyFile { format: DEVICE_KEY_FORMAT.into(), secret: B64.encode(key.0.to_bytes()) }).unwrap_or_default();
                let io = |source| DeviceKeyError::Io { path: p.clone(), source };
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                use std::io::Write;
                let mut f = opts.open(path).map_err(io)?;
                f.write_all(body.as_bytes()).and_then(|_| f.sync_all()).map_err(io)?;
                Ok((key, true))
            }
            Err(source) => Err(DeviceKeyError::Io { path: p, source }),
        }
    }

    /// Base64 of the public half, for `gate fleet enroll`.
    pub fn public_b64(&self) -> String {
        B64.encode(self.0.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// The key itself, for the gateway's other signed statements (audit checkpoints, which
    /// carry their own domain); it never leaves the process.
    pub fn signing_key(&self) -> &SigningKey {
        &self.0
    }

    /// Wraps `body` (a message's JSON text) for `topic` in a signed envelope: the MQTT payload.
    pub fn seal(&self, kind: Kind, topic: &str, body: &str) -> Vec<u8> {
        let sig = self.0.sign(&signed_bytes(kind, topic, body.as_bytes()));
        let env = Envelope { format: ENVELOPE_FORMAT.into(), body: body.into(), ed25519: B64.encode(sig.to_bytes()) };
        serde_json::to_vec(&env).unwrap_or_default()
    }

    /// Serialises `msg` and seals it.
    pub fn seal_json<T: Serialize>(&self, kind: Kind, topic: &str, msg: &T) -> Vec<u8> {
        self.seal(kind, topic, &serde_json::to_string(msg).unwrap_or_default())
    }
}

fn signed_bytes(kind: Kind, topic: &str, body: &[u8]) -> Vec<u8> {
    let d = kind.domain().as_bytes();
    let mut v = Vec::with_capacity(d.len() + topic.len() + body.len() + 2);
    v.extend_from_slice(d);
    v.push(0);
    v.extend_from_slice(topic.as_bytes());
    v.push(0);
    v.extend_from_slice(body);
    v
}

/// How far a message from a gateway can be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Signed by the key enrolled for the gateway its topic names.
    Genuine,
    /// The gateway is not in the operator's inventory: nothing to check it against.
    Unverified(String),
    /// The gateway is enrolled and this message is not signed by its key.
    Forged(String),
    /// Nothing was heard (a status missing or erased on the broker).
    Missing(String),
}

impl Trust {
    pub fn is_genuine(&self) -> bool {
        matches!(self, Trust::Genuine)
    }
    /// `genuine`, `unverified` or `forged`.
    pub fn label(&self) -> &'static str {
        match self {
            Trust::Genuine => "genuine",
            Trust::Unverified(_) => "unverified",
            Trust::Forged(_) => "forged",
            Trust::Missing(_) => "missing",
        }
    }
    /// Why, for anything but genuine.
    pub fn why(&self) -> &str {
        match self {
            Trust::Genuine => "",
            Trust::Unverified(w) | Trust::Forged(w) | Trust::Missing(w) => w,
        }
    }
}

/// Verifies `payload` received on `topic` against `key` (the enrolled key of the
/// gateway the topic names; None when it is not enrolled). Returns how far it can be
/// trusted and the body text (for a forged message, what it claims, to show as such).
pub fn open(key: Option<&VerifyingKey>, topic: &str, payload: &[u8]) -> (Trust, Option<String>) {
    let Some((_, _, kind)) = classify(topic) else {
        return (Trust::Unverified(format!("{topic} is not a topic a gateway signs")), None);
    };
    let env: Envelope = match serde_json::from_slice(payload) {
        Ok(e) if e_ok(&e) => e,
        _ => {
            let body = std::str::from_utf8(payload).ok().map(String::from);
            return match key {
                Some(_) => (Trust::Forged("not signed (no gate-signed/1 envelope)".into()), body),
                None => (Trust::Unverified("gateway not enrolled, and the message is not signed".into()), body),
            };
        }
    };
    let Some(key) = key else {
        return (Trust::Unverified("gateway not enrolled (gate fleet enroll)".into()), Some(env.body));
    };
    let sig = B64.decode(env.ed25519.trim()).ok().and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok());
    match sig {
        Some(s) if key.verify(&signed_bytes(kind, topic, env.body.as_bytes()), &ed25519_dalek::Signature::from_bytes(&s)).is_ok() => (Trust::Genuine, Some(env.body)),
        _ => (Trust::Forged("signature does not verify with the gateway's enrolled key".into()), Some(env.body)),
    }
}

fn e_ok(e: &Envelope) -> bool {
    e.format == ENVELOPE_FORMAT
}

/// The body of a signed message without checking it: for tools that only count or
/// display, never for acting on it.
pub fn body_unverified(payload: &[u8]) -> Option<String> {
    serde_json::from_slice::<Envelope>(payload).ok().map(|e| e.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "gate/v1/s/g/status";

    #[test]
    fn a_message_verifies_only_with_its_gateways_key_topic_and_kind() {
        let k = DeviceKey::generate();
        let vk = k.verifying_key();
        let wire = k.seal(Kind::Status, T, r#"{"online":true}"#);
        assert_eq!(open(Some(&vk), T, &wire), (Trust::Genuine, Some(r#"{"online":true}"#.into())));
        // Another gateway's topic, another kind's topic, another key: forged.
        assert!(matches!(open(Some(&vk), "gate/v1/s/h/status", &wire).0, Trust::Forged(_)));
        assert!(matches!(open(Some(&vk), "gate/v1/s/g/cmd/x/reply", &wire).0, Trust::Forged(_)));
        assert!(matches!(open(Some(&DeviceKey::generate().verifying_key()), T, &wire).0, Trust::Forged(_)));
        // A tampered body, an unsigned message.
        let tampered = String::from_utf8(wire.clone()).unwrap().replace("true", "false");
        assert!(matches!(open(Some(&vk), T, tampered.as_bytes()).0, Trust::Forged(_)));
        assert!(matches!(open(Some(&vk), T, br#"{"online":true}"#).0, Trust::Forged(_)));
        // Not enrolled: unverified, never genuine.
        assert!(matches!(open(None, T, &wire).0, Trust::Unverified(_)));
    }

    #[test]
    fn the_device_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("device.key");
        let (a, created) = DeviceKey::load_or_create(&p).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (b, created) = DeviceKey::load_or_create(&p).unwrap();
        assert!(!created && a.public_b64() == b.public_b64());
        std::fs::write(&p, "{}").unwrap();
        assert!(DeviceKey::load_or_create(&p).unwrap_err().to_string().contains("device.key"));
    }

    #[test]
    fn topics_are_classified_by_what_the_gateway_publishes() {
        assert_eq!(classify("gate/v1/s/g/events"), Some(("s", "g", Kind::Event)));
        assert_eq!(classify("gate/v1/s/g/jobs/j1/progress"), Some(("s", "g", Kind::JobProgress)));
        assert_eq!(classify("gate/v1/s/g/cmd/c1/reply"), Some(("s", "g", Kind::Reply)));
        assert_eq!(classify("gate/v1/s/g/cmd/c1"), None);
        assert_eq!(classify("gate/v1/s/g/jobs/j1"), None);
    }
}
