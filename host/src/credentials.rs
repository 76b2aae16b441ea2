//! Resolving what a reader saw into a pseudonymous subject.
//!
//! The host verifies every credential (card number, PIN hash, QR signature)
//! itself; plugins get only the subject it resolved to. Raw card numbers and
//! PINs never leave this module.

use crate::config::{SiteConfig, SubjectEntry};
use crate::event::Role;
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use thiserror::Error;

/// A subject as plugins see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub id: String,
    pub role: Role,
    pub groups: Vec<String>,
}

/// A visitor pass whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPass {
    pub visitor: Subject,
    pub host_subject: String,
    pub valid_until_ms: i64,
}

/// Why a QR code was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QrError {
    #[error("not a gate visitor pass (expected GATEQR1.<payload>.<signature>)")]
    Format,
    #[error("visitor pass payload is not valid: {0}")]
    Payload(String),
    #[error("visitor pass signature does not verify against any trusted issuer key")]
    Signature,
}

/// The payload signed into a visitor QR pass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PassPayload {
    /// Pseudonymous visitor id, e.g. "v-20261123-07".
    pub visitor: String,
    /// Pseudonymous id of the inviting resident.
    pub host: String,
    pub valid_until_ms: i64,
}

const QR_PREFIX: &str = "GATEQR1";

/// Who holds which credential, indexed for O(1) lookups.
#[derive(Debug, Default)]
pub struct Directory {
    site_id: String,
    by_id: HashMap<String, Subject>,
    cards: HashMap<String, String>,
    pins: HashMap<String, String>,
    nfc: HashMap<String, String>,
    plates: HashMap<String, String>,
    qr_keys: Vec<VerifyingKey>,
}

/// The stored form of a PIN: sha256 hex of "<site id>:<pin>".
pub fn pin_hash(site_id: &str, pin: &str) -> String {
    hex::encode(Sha256::digest(format!("{site_id}:{pin}").as_bytes()))
}

impl Directory {
    /// Builds the directory from a validated site configuration.
    pub fn from_config(cfg: &SiteConfig) -> Result<Directory, String> {
        let mut d = Directory { site_id: cfg.site.id.clone(), ..Default::default() };
        for s in &cfg.subjects {
            d.add(s);
        }
        for k in &cfg.qr.issuer_keys {
            let bytes: [u8; 32] = hex::decode(k)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("key `qr.issuer_keys`: `{k}` is not 32 bytes of hex"))?;
            let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("key `qr.issuer_keys`: `{k}`: {e}"))?;
            d.qr_keys.push(key);
        }
        Ok(d)
    }

    fn add(&mut self, s: &SubjectEntry) {
        let subject = Subject { id: s.id.clone(), role: s.role, groups: s.groups.clone() };
        for c in &s.cards {
            self.cards.insert(c.clone(), s.id.clone());
        }
        for p in &s.pin_sha256 {
            self.pins.insert(p.to_ascii_lowercase(), s.id.clone());
        }
        for n in &s.nfc {
            self.nfc.insert(n.clone(), s.id.clone());
        }
        for p in &s.plates {
            self.plates.insert(normalise_plate(p), s.id.clone());
        }
        self.by_id.insert(s.id.clone(), subject);
    }

    /// The subject with this pseudonymous id.
    pub fn subject(&self, id: &str) -> Option<&Subject> {
        self.by_id.get(id)
    }

    pub fn by_card(&self, number: &str) -> Option<&Subject> {
        self.cards.get(number).and_then(|id| self.subject(id))
    }

    pub fn by_pin(&self, pin: &str) -> Option<&Subject> {
        self.pins.get(&pin_hash(&self.site_id, pin)).and_then(|id| self.subject(id))
    }

    pub fn by_nfc(&self, token: &str) -> Option<&Subject> {
        self.nfc.get(token).and_then(|id| self.subject(id))
    }

    pub fn by_plate(&self, plate: &str) -> Option<&Subject> {
        self.plates.get(&normalise_plate(plate)).and_then(|id| self.subject(id))
    }

    /// Verifies a visitor QR pass against the trusted issuer keys.
    pub fn verify_qr(&self, code: &str) -> Result<VerifiedPass, QrError> {
        let mut parts = code.trim().split('.');
        let (Some(QR_PREFIX), Some(payload_b64), Some(sig_b64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(QrError::Format);
        };
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = b64.decode(payload_b64).map_err(|_| QrError::Format)?;
        let sig_bytes: [u8; 64] = b64.decode(sig_b64).ok().and_then(|b| b.try_into().ok()).ok_or(QrError::Format)?;
        let sig = Signature::from_bytes(&sig_bytes);
        if !self.qr_keys.iter().any(|k| k.verify(&payload, &sig).is_ok()) {
            return Err(QrError::Signature);
        }
        let p: PassPayload = serde_json::from_slice(&payload).map_err(|e| QrError::Payload(e.to_string()))?;
        if p.visitor.is_empty() || p.host.is_empty() {
            return Err(QrError::Payload("empty visitor or host id".into()));
        }
        Ok(VerifiedPass {
            visitor: Subject { id: p.visitor, role: Role::Visitor, groups: Vec::new() },
            host_subject: p.host,
            valid_until_ms: p.valid_until_ms,
        })
    }
}

/// Signs a visitor pass (what the property's platform does when a resident invites someone).
pub fn sign_pass(key: &ed25519_dalek::SigningKey, payload: &PassPayload) -> String {
    use ed25519_dalek::Signer;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let sig = key.sign(&json);
    format!("{QR_PREFIX}.{}.{}", b64.encode(&json), b64.encode(sig.to_bytes()))
}

fn normalise_plate(p: &str) -> String {
    p.chars().filter(|c| !c.is_whitespace() && *c != '-' && *c != '·').flat_map(char::to_uppercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn dir_with_key(key: &SigningKey) -> Directory {
        let mut d = Directory { site_id: "s".into(), ..Default::default() };
        d.qr_keys.push(key.verifying_key());
        d.add(&SubjectEntry {
            id: "r-1".into(),
            role: Role::Resident,
            groups: vec![],
            cards: vec!["1001".into()],
            pin_sha256: vec![pin_hash("s", "246810")],
            nfc: vec![],
            plates: vec!["浙A 12345".into()],
        });
        d
    }

    #[test]
    fn resolves_card_pin_and_plate() {
        let d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        assert_eq!(d.by_card("1001").map(|s| s.id.as_str()), Some("r-1"));
        assert!(d.by_card("1002").is_none());
        assert_eq!(d.by_pin("246810").map(|s| s.id.as_str()), Some("r-1"));
        assert!(d.by_pin("246811").is_none());
        assert_eq!(d.by_plate("浙a12345").map(|s| s.id.as_str()), Some("r-1"));
    }

    #[test]
    fn qr_pass_verifies_only_with_trusted_key_and_intact_payload() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let d = dir_with_key(&key);
        let p = PassPayload { visitor: "v-1".into(), host: "r-1".into(), valid_until_ms: 1000 };
        let code = sign_pass(&key, &p);
        let ok = d.verify_qr(&code).expect("valid pass");
        assert_eq!(ok.host_subject, "r-1");
        assert_eq!(ok.visitor.role, Role::Visitor);

        let foreign = sign_pass(&SigningKey::from_bytes(&[9; 32]), &p);
        assert_eq!(d.verify_qr(&foreign), Err(QrError::Signature));

        let mut parts: Vec<String> = code.split('.').map(String::from).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = PassPayload { valid_until_ms: i64::MAX, ..p };
        parts[1] = b64.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(d.verify_qr(&parts.join(".")), Err(QrError::Signature));
        assert_eq!(d.verify_qr("hello"), Err(QrError::Format));
    }
}
