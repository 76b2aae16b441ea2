//! Signed plugin bundles: the manifest, the JSON envelope that carries it with the
//! base64 component, Ed25519 signing by an operator key, and the gateway's checks,
//! each refusal a distinct [`BundleError`].
//!
//! Envelope (`gate-bundle/1`):
//! `{"format":"gate-bundle/1","manifest":"<manifest JSON as a string>","signature":{"key_id":..,"ed25519":..},"component":"<base64>"}`.
//! The signature covers the exact manifest bytes (no canonicalisation needed); the
//! manifest carries the component's sha256, so the signature binds the component too.

use crate::keys::{self, OperatorKey, Permission, SigError, SignatureBlock, TrustedKeys};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use schemars::JsonSchema;
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use thiserror::Error;

/// Envelope format tag; also the signature domain of manifests.
pub const BUNDLE_FORMAT: &str = "gate-bundle/1";

/// Default largest bundle (envelope bytes) a gateway accepts.
pub const DEFAULT_MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;

/// The two plugin worlds of `wit/gate-plugin.wit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    PolicyPlugin,
    IntegrationPlugin,
}

impl World {
    /// The world's name in the WIT package.
    pub fn wit_name(self) -> &'static str {
        match self {
            World::PolicyPlugin => "policy-plugin",
            World::IntegrationPlugin => "integration-plugin",
        }
    }
}

/// A trace the gateway replays against the staged plugin before swapping it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Name shown in the job status when this test fails.
    pub name: String,
    /// The trace (JSON lines, the host's trace format).
    pub trace: String,
    /// The expected outputs (JSON lines, the host's expected-output format).
    pub expected: String,
}

/// What the operator signs: identity, version and hash of one plugin build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name, as the site configuration refers to it.
    pub name: String,
    /// Contract world the component implements.
    pub world: World,
    /// Plugin version (semver).
    pub version: Version,
    /// Lower-case hex sha256 of the component bytes.
    pub sha256: String,
    /// Smallest host version that can run it.
    pub min_host_version: Version,
    /// The plugin's configuration (what its `config.get` returns).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Traces with expected outputs, replayed before the swap.
    #[serde(default)]
    pub self_tests: Vec<SelfTest>,
    /// Deployment sequence; must be greater than the last one accepted for this plugin
    /// (stops replays of old, validly signed bundles).
    pub sequence: u64,
    /// Set (and signed) to allow going to a lower version than the active one.
    #[serde(default)]
    pub rollback: bool,
    /// When the operator signed it, Unix ms.
    pub created_at_ms: i64,
}

/// The envelope as it travels over MQTT or sits in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The manifest JSON, exactly as signed.
    pub manifest: String,
    /// Operator signature over `manifest`; absent means unsigned (always rejected).
    #[serde(default)]
    pub signature: Option<SignatureBlock>,
    /// Base64 of the WebAssembly component.
    pub component: String,
}

/// Every reason a gateway refuses a bundle; the `Display` text is the job's reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    #[error("bundle is {size} bytes, larger than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    #[error("bundle is unsigned")]
    Unsigned,
    #[error("bundle is signed by key {0:?}, which this gateway does not trust")]
    UnknownKey(String),
    #[error("bundle signature by key {0:?} does not verify (tampered or forged)")]
    BadSignature(String),
    #[error("key {0:?} may not deploy plugins")]
    NotAllowed(String),
    #[error("component sha256 is {actual}, manifest says {expected} (tampered)")]
    HashMismatch { expected: String, actual: String },
    #[error("plugin {name:?} is a {expected} here, bundle is for {actual}")]
    WrongWorld { name: String, expected: &'static str, actual: &'static str },
    #[error("bundle needs host {needed} or newer, this host is {host}")]
    HostTooOld { needed: Version, host: Version },
    #[error("bundle sequence {sequence} is not newer than the last accepted {last} (replayed)")]
    Replayed { sequence: u64, last: u64 },
    #[error("version {new} is older than the active {active}; a downgrade needs a signed rollback bundle")]
    Downgrade { new: Version, active: Version },
}

impl From<SigError> for BundleError {
    fn from(e: SigError) -> Self {
        match e {
            SigError::UnknownKey(k) => BundleError::UnknownKey(k),
            SigError::BadSignature(k) => BundleError::BadSignature(k),
            SigError::NotAllowed { key, .. } => BundleError::NotAllowed(key),
        }
    }
}

impl BundleError {
    /// True when a trusted key's signature covered what was refused (so the refusal
    /// is the operator's to see later), false for anything anyone could have sent.
    pub fn signature_verified(&self) -> bool {
        !matches!(self, BundleError::TooLarge { .. } | BundleError::Malformed(_) | BundleError::Unsigned | BundleError::UnknownKey(_) | BundleError::BadSignature(_) | BundleError::NotAllowed(_))
    }

    /// Short stable code for dashboards and tests (`"replayed"`, `"bad-signature"`, …).
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::TooLarge { .. } => "too-large",
            BundleError::Malformed(_) => "malformed",
            BundleError::Unsigned => "unsigned",
            BundleError::UnknownKey(_) => "unknown-key",
            BundleError::BadSignature(_) => "bad-signature",
            BundleError::NotAllowed(_) => "not-allowed",
            BundleError::HashMismatch { .. } => "hash-mismatch",
            BundleError::WrongWorld { .. } => "wrong-world",
            BundleError::HostTooOld { .. } => "host-too-old",
            BundleError::Replayed { .. } => "replayed",
            BundleError::Downgrade { .. } => "downgrade",
        }
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Builds and signs a bundle (operator side). `manifest.sha256` is overwritten with
/// the component's real hash.
pub fn sign_bundle(key: &OperatorKey, mut manifest: Manifest, component: &[u8]) -> Result<Bundle, BundleError> {
    manifest.sha256 = sha256_hex(component);
    crate::topics::check_level("plugin name", &manifest.name).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let text = serde_json::to_string(&manifest).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let signature = Some(key.sign(BUNDLE_FORMAT, text.as_bytes()));
    Ok(Bundle { format: BUNDLE_FORMAT.into(), manifest: text, signature, component: B64.encode(component) })
}

impl Bundle {
    /// Serialises the envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the manifest without verifying anything (operator display only).
    pub fn unverified_manifest(&self) -> Result<Manifest, BundleError> {
        serde_json::from_str(&self.manifest).map_err(|e| BundleError::Malformed(format!("manifest: {e}")))
    }
}

/// What the gateway knows when it checks a bundle.
#[derive(Debug, Clone)]
pub struct VerifyContext<'a> {
    pub trusted: &'a TrustedKeys,
    pub host_version: &'a Version,
    pub max_bundle_bytes: usize,
    /// Highest sequence accepted so far for the plugin (by name).
    pub last_sequence: Option<u64>,
    /// Version and world of the plugin of that name now active, if any.
    pub active: Option<(&'a Version, World)>,
}

/// A bundle that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub component: Vec<u8>,
    /// Key id of the operator who signed it.
    pub signer: String,
}

/// Parses just enough of raw envelope bytes to learn the plugin name (to look up its
/// state before the full check). Fails on the same size / format errors as [`verify`].
pub fn peek_name(raw: &[u8], max_bundle_bytes: usize) -> Result<String, BundleError> {
    let env = parse_envelope(raw, max_bundle_bytes)?;
    let m: Manifest = serde_json::from_str(&env.manifest).map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
    Ok(m.name)
}

fn parse_envelope(raw: &[u8], max: usize) -> Result<Bundle, BundleError> {
    if raw.len() > max {
        return Err(BundleError::TooLarge { size: raw.len(), max });
    }
    let env: Bundle = serde_json::from_slice(raw).map_err(|e| BundleError::Malformed(format!("envelope: {e}")))?;
    if env.format != BUNDLE_FORMAT {
        return Err(BundleError::Malformed(format!("format is {:?}, expected {BUNDLE_FORMAT:?}", env.format)));
    }
    Ok(env)
}

/// The signature part of [`verify`]: the envelope's format, a signature present, by a
/// trusted key that may deploy, over the manifest as is (one Ed25519 verification; the
/// component's hash and everything else are [`verify`]'s). Returns the signer's key id.
pub fn authenticate(env: &Bundle, trusted: &TrustedKeys) -> Result<String, BundleError> {
    if env.format != BUNDLE_FORMAT {
        return Err(BundleError::Malformed(format!("format is {:?}, expected {BUNDLE_FORMAT:?}", env.format)));
    }
    let sig = env.signature.as_ref().ok_or(BundleError::Unsigned)?;
    Ok(keys::verify(trusted, BUNDLE_FORMAT, env.manifest.as_bytes(), sig, Permission::Deploy)?)
}

/// Runs every check, in this order: size, envelope, signature present, key trusted,
/// signature valid, key may deploy, manifest well-formed, hash, world, host version,
/// sequence (replay), version (downgrade without signed rollback).
pub fn verify(raw: &[u8], cx: &VerifyContext<'_>) -> Result<VerifiedBundle, BundleError> {
    let env = parse_envelope(raw, cx.max_bundle_bytes)?;
    let signer = authenticate(&env, cx.trusted)?;
    let manifest: Manifest = serde_json::from_str(&env.manifest).map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
    crate::topics::check_level("plugin name", &manifest.name).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let component = B64.decode(env.component.as_bytes()).map_err(|e| BundleError::Malformed(format!("component is not base64: {e}")))?;
    let actual = sha256_hex(&component);
    if !actual.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(BundleError::HashMismatch { expected: manifest.sha256.clone(), actual });
    }
    if let Some((_, world)) = cx.active {
        if world != manifest.world {
            return Err(BundleError::WrongWorld { name: manifest.name.clone(), expected: world.wit_name(), actual: manifest.world.wit_name() });
        }
    }
    if &manifest.min_host_version > cx.host_version {
        return Err(BundleError::HostTooOld { needed: manifest.min_host_version.clone(), host: cx.host_version.clone() });
    }
    if let Some(last) = cx.last_sequence {
        if manifest.sequence <= last {
            return Err(BundleError::Replayed { sequence: manifest.sequence, last });
        }
    }
    if let Some((active, _)) = cx.active {
        if &manifest.version < active && !manifest.rollback {
            return Err(BundleError::Downgrade { new: manifest.version.clone(), active: active.clone() });
        }
    }
    Ok(VerifiedBundle { manifest, component, signer })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A manifest for tests and examples.
    pub(crate) fn manifest(name: &str, version: &str, sequence: u64) -> Manifest {
        Manifest {
            name: name.into(),
            world: World::PolicyPlugin,
            version: version.parse().unwrap(),
            sha256: String::new(),
            min_host_version: "0.1.0".parse().unwrap(),
            config: BTreeMap::from([("quiet-hours".into(), "22:00-06:00".into())]),
            self_tests: vec![],
            sequence,
            rollback: false,
            created_at_ms: 1_700_000_000_000,
        }
    }

    struct Fx {
        key: OperatorKey,
        trusted: TrustedKeys,
        host: Version,
    }

    fn fx() -> Fx {
        let key = OperatorKey::generate("ops").unwrap();
        let trusted = TrustedKeys::from_config(&[key.trusted_entry(&[Permission::Deploy])]).unwrap();
        Fx { key, trusted, host: "0.1.0".parse().unwrap() }
    }

    fn check(f: &Fx, b: &Bundle, last: Option<u64>, active: Option<(&Version, World)>) -> Result<VerifiedBundle, BundleError> {
        verify(&b.to_bytes(), &VerifyContext { trusted: &f.trusted, host_version: &f.host, max_bundle_bytes: 1 << 20, last_sequence: last, active })
    }

    const WASM: &[u8] = b"\0asm\x0d\0\x01\0component-bytes";

    #[test]
    fn a_signed_bundle_verifies_and_yields_component_and_signer() {
        let f = fx();
        let b = sign_bundle(&f.key, manifest("resident-policy", "1.2.0", 5), WASM).unwrap();
        let v = check(&f, &b, Some(4), None).unwrap();
        assert_eq!(v.component, WASM);
        assert_eq!(v.signer, "ops");
        assert_eq!(v.manifest.sha256, sha256_hex(WASM));
        assert_eq!(peek_name(&b.to_bytes(), 1 << 20).unwrap(), "resident-policy");
    }

    #[test]
    fn each_kind_of_bad_bundle_gets_its_own_reason() {
        let f = fx();
        let good = sign_bundle(&f.key, manifest("p", "1.2.0", 5), WASM).unwrap();

        let mut unsigned = good.clone();
        unsigned.signature = None;
        assert_eq!(check(&f, &unsigned, None, None), Err(BundleError::Unsigned));

        let mut tampered_component = good.clone();
        tampered_component.component = B64.encode(b"\0asm evil");
        assert!(matches!(check(&f, &tampered_component, None, None), Err(BundleError::HashMismatch { .. })));

        let mut tampered_manifest = good.clone();
        tampered_manifest.manifest = tampered_manifest.manifest.replace("1.2.0", "9.2.0");
        assert_eq!(check(&f, &tampered_manifest, None, None), Err(BundleError::BadSignature("ops".into())));

        let stranger = OperatorKey::generate("stranger").unwrap();
        let foreign = sign_bundle(&stranger, manifest("p", "1.2.0", 5), WASM).unwrap();
        assert_eq!(check(&f, &foreign, None, None), Err(BundleError::UnknownKey("stranger".into())));

        let impostor = OperatorKey::generate("ops").unwrap();
        let forged = sign_bundle(&impostor, manifest("p", "1.2.0", 5), WASM).unwrap();
        assert_eq!(check(&f, &forged, None, None), Err(BundleError::BadSignature("ops".into())));

        assert_eq!(check(&f, &good, Some(5), None), Err(BundleError::Replayed { sequence: 5, last: 5 }));

        let active: Version = "1.3.0".parse().unwrap();
        assert!(matches!(check(&f, &good, Some(4), Some((&active, World::PolicyPlugin))), Err(BundleError::Downgrade { .. })));
        let mut rb = manifest("p", "1.2.0", 6);
        rb.rollback = true;
        let rollback = sign_bundle(&f.key, rb, WASM).unwrap();
        assert!(check(&f, &rollback, Some(5), Some((&active, World::PolicyPlugin))).is_ok());

        let same: Version = "1.2.0".parse().unwrap();
        assert!(matches!(check(&f, &good, None, Some((&same, World::IntegrationPlugin))), Err(BundleError::WrongWorld { .. })));

        let mut newer_host = manifest("p", "1.2.0", 5);
        newer_host.min_host_version = "0.2.0".parse().unwrap();
        let b = sign_bundle(&f.key, newer_host, WASM).unwrap();
        assert!(matches!(check(&f, &b, None, None), Err(BundleError::HostTooOld { .. })));

        let raw = good.to_bytes();
        let cx = VerifyContext { trusted: &f.trusted, host_version: &f.host, max_bundle_bytes: raw.len() - 1, last_sequence: None, active: None };
        assert!(matches!(verify(&raw, &cx), Err(BundleError::TooLarge { .. })));
        assert!(matches!(verify(b"{not json", &cx), Err(BundleError::Malformed(_))));
    }

    #[test]
    fn a_key_without_deploy_permission_cannot_deploy() {
        let mut f = fx();
        f.trusted = TrustedKeys::from_config(&[f.key.trusted_entry(&[Permission::Door])]).unwrap();
        let b = sign_bundle(&f.key, manifest("p", "1.0.0", 1), WASM).unwrap();
        assert_eq!(check(&f, &b, None, None), Err(BundleError::NotAllowed("ops".into())));
    }
}
