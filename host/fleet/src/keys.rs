//! Operator keys (Ed25519): generation, the key file format, the trusted-key set a
//! gateway reads from its site configuration, and domain-separated sign / verify.
//!
//! Secret key file (JSON, written with mode 0600):
//! `{"format":"gate-operator-key/1","key_id":"alice-2026","secret":"<base64 32 bytes>"}`
//! Public key line for the site configuration (TOML):
//! `[[fleet.trusted_keys]] id = "alice-2026"  public = "<base64 32 bytes>"  may = ["deploy", "door"]`

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// Format tag of an operator's secret key file.
pub const KEY_FILE_FORMAT: &str = "gate-operator-key/1";

/// Problems reading or using keys.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("key file {path} is not a {KEY_FILE_FORMAT} file: {why}")]
    Format { path: String, why: String },
    #[error("trusted key {id:?}: {why}")]
    BadTrusted { id: String, why: String },
    #[error("key id {0:?}: use 1-64 characters of [A-Za-z0-9._-]")]
    BadId(String),
}

/// What a trusted operator key may do on this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Deploy and roll back plugins.
    Deploy,
    /// Open a door once, set a door's mode.
    Door,
    /// Revoke credentials.
    Credentials,
    /// Rotate unit-door PINs.
    Pin,
    /// Change the subject directory (the property platform's key).
    Directory,
    /// The guard station: open a door as a named guard, see what needs a guard.
    Guard,
    /// Door panels, indoor stations and the platform's phone bridge: start a visitor's
    /// call to a resident and answer one.
    Intercom,
}

/// One entry of `[[fleet.trusted_keys]]` in the site configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyConfig {
    /// The operator's key id; also names the sender in logs and replies.
    pub id: String,
    /// Base64 of the 32-byte Ed25519 public key.
    pub public: String,
    /// What this key may do; empty means nothing.
    #[serde(default)]
    pub may: Vec<Permission>,
}

/// The parsed set of operator keys a gateway trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey, Vec<Permission>)>,
}

impl TrustedKeys {
    /// Parses the configuration entries; a malformed key names its id.
    pub fn from_config(entries: &[TrustedKeyConfig]) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(entries.len());
        for e in entries {
            check_key_id(&e.id)?;
            let bytes = B64.decode(e.public.trim()).map_err(|err| KeyError::BadTrusted { id: e.id.clone(), why: format!("public is not base64: {err}") })?;
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::BadTrusted { id: e.id.clone(), why: format!("public key is {} bytes, expected 32", bytes.len()) })?;
            let vk = VerifyingKey::from_bytes(&arr).map_err(|err| KeyError::BadTrusted { id: e.id.clone(), why: format!("not an Ed25519 point: {err}") })?;
            if keys.iter().any(|(id, _, _)| id == &e.id) {
                return Err(KeyError::BadTrusted { id: e.id.clone(), why: "listed twice".into() });
            }
            keys.push((e.id.clone(), vk, e.may.clone()));
        }
        Ok(Self { keys })
    }

    /// Adds a key (used by tests and by tools that hold keys in memory).
    pub fn insert(&mut self, id: &str, key: VerifyingKey, may: &[Permission]) {
        self.keys.retain(|(k, _, _)| k != id);
        self.keys.push((id.into(), key, may.to_vec()));
    }

    /// The key with this id and its permissions.
    pub fn get(&self, id: &str) -> Option<(&VerifyingKey, &[Permission])> {
        self.keys.iter().find(|(k, _, _)| k == id).map(|(_, vk, may)| (vk, may.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// An Ed25519 signature and the id of the key that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    /// Id of the operator key (as in the gateway's trusted keys).
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature over `domain || 0x00 || payload`.
    pub ed25519: String,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigError {
    #[error("signed by key {0:?}, which this gateway does not trust")]
    UnknownKey(String),
    #[error("signature by key {0:?} does not verify")]
    BadSignature(String),
    #[error("key {key:?} is not allowed to {need:?}")]
    NotAllowed { key: String, need: Permission },
}

/// An operator's secret key with its id.
pub struct OperatorKey {
    pub id: String,
    key: SigningKey,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKey").field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    key_id: String,
    secret: String,
}

fn check_key_id(id: &str) -> Result<(), KeyError> {
    crate::topics::check_level("key id", id).map_err(|_| KeyError::BadId(id.into()))
}

impl OperatorKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate(id: &str) -> Result<Self, KeyError> {
        check_key_id(id)?;
        Ok(Self { id: id.into(), key: SigningKey::generate(&mut rand_core::OsRng) })
    }

    /// Base64 of the public key, for `[[fleet.trusted_keys]]`.
    pub fn public_b64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The configuration entry that trusts this key for `may`.
    pub fn trusted_entry(&self, may: &[Permission]) -> TrustedKeyConfig {
        TrustedKeyConfig { id: self.id.clone(), public: self.public_b64(), may: may.to_vec() }
    }

    /// Writes the secret key file (mode 0600 on Unix); refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let body = serde_json::to_string_pretty(&KeyFile { format: KEY_FILE_FORMAT.into(), key_id: self.id.clone(), secret: B64.encode(self.key.to_bytes()) })
            .map_err(|e| KeyError::Format { path: path.display().to_string(), why: e.to_string() })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        let mut f = opts.open(path).map_err(io)?;
        f.write_all(body.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)
    }

    /// Reads a secret key file written by [`OperatorKey::save`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: p.clone(), source })?;
        let kf: KeyFile = serde_json::from_str(&text).map_err(|e| KeyError::Format { path: p.clone(), why: e.to_string() })?;
        if kf.format != KEY_FILE_FORMAT {
            return Err(KeyError::Format { path: p, why: format!("format is {:?}", kf.format) });
        }
        check_key_id(&kf.key_id)?;
        let bytes = B64.decode(kf.secret.trim()).map_err(|e| KeyError::Format { path: p.clone(), why: format!("secret is not base64: {e}") })?;
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::Format { path: p, why: "secret is not 32 bytes".into() })?;
        Ok(Self { id: kf.key_id, key: SigningKey::from_bytes(&arr) })
    }

    /// Signs `payload` for `domain` (e.g. "gate-bundle/1"), so a signature for one kind of
    /// document can never be replayed as another.
    pub fn sign(&self, domain: &str, payload: &[u8]) -> SignatureBlock {
        let sig = self.key.sign(&signed_bytes(domain, payload));
        SignatureBlock { key_id: self.id.clone(), ed25519: B64.encode(sig.to_bytes()) }
    }
}

fn signed_bytes(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + payload.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(payload);
    v
}

/// Verifies `sig` over `payload` for `domain` against the trusted keys and checks the key
/// holds `need`. Returns the key id (the sender's identity).
pub fn verify(trusted: &TrustedKeys, domain: &str, payload: &[u8], sig: &SignatureBlock, need: Permission) -> Result<String, SigError> {
    let (vk, may) = trusted.get(&sig.key_id).ok_or_else(|| SigError::UnknownKey(sig.key_id.clone()))?;
    let bytes = B64.decode(sig.ed25519.trim()).map_err(|_| SigError::BadSignature(sig.key_id.clone()))?;
    let arr: [u8; 64] = bytes.as_slice().try_into().map_err(|_| SigError::BadSignature(sig.key_id.clone()))?;
    vk.verify(&signed_bytes(domain, payload), &ed25519_dalek::Signature::from_bytes(&arr)).map_err(|_| SigError::BadSignature(sig.key_id.clone()))?;
    if !may.contains(&need) {
        return Err(SigError::NotAllowed { key: sig.key_id.clone(), need });
    }
    Ok(sig.key_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let k = OperatorKey::generate("alice").unwrap();
        k.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(k.save(&path).is_err(), "overwrote an existing key");
        let back = OperatorKey::load(&path).unwrap();
        assert_eq!(back.public_b64(), k.public_b64());
        assert_eq!(back.id, "alice");
    }

    #[test]
    fn signatures_verify_only_for_the_right_key_domain_and_permission() {
        let alice = OperatorKey::generate("alice").unwrap();
        let mallory = OperatorKey::generate("alice").unwrap(); // same id, different key
        let trusted = TrustedKeys::from_config(&[alice.trusted_entry(&[Permission::Deploy])]).unwrap();
        let sig = alice.sign("d1", b"hello");
        assert_eq!(verify(&trusted, "d1", b"hello", &sig, Permission::Deploy).unwrap(), "alice");
        assert_eq!(verify(&trusted, "d1", b"hellO", &sig, Permission::Deploy), Err(SigError::BadSignature("alice".into())));
        assert_eq!(verify(&trusted, "d2", b"hello", &sig, Permission::Deploy), Err(SigError::BadSignature("alice".into())));
        assert!(matches!(verify(&trusted, "d1", b"hello", &sig, Permission::Door), Err(SigError::NotAllowed { .. })));
        let forged = mallory.sign("d1", b"hello");
        assert_eq!(verify(&trusted, "d1", b"hello", &forged, Permission::Deploy), Err(SigError::BadSignature("alice".into())));
        let bob = OperatorKey::generate("bob").unwrap();
        assert_eq!(verify(&trusted, "d1", b"hello", &bob.sign("d1", b"hello"), Permission::Deploy), Err(SigError::UnknownKey("bob".into())));
    }

    #[test]
    fn malformed_trusted_keys_name_the_key() {
        let bad = TrustedKeyConfig { id: "ops".into(), public: "bm90IGEga2V5".into(), may: vec![] };
        let err = TrustedKeys::from_config(&[bad]).unwrap_err().to_string();
        assert!(err.contains("\"ops\"") && err.contains("expected 32"), "{err}");
    }
}
