//! The operator's inventory: which gateways a site has and each one's device key
//! (`gate fleet enroll`). Site-wide operations target it, not whoever answers on the
//! broker, and every gateway message is checked against the key enrolled here.
//!
//! File (JSON, written with mode 0600):
//! `{"format":"gate-inventory/1","gateways":[{"site":"maple-court","gateway":"gw-north-1","public":"<base64 32 bytes>"}]}`

use crate::topics::{check_level, TopicError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// Format tag of the inventory file.
pub const INVENTORY_FORMAT: &str = "gate-inventory/1";

/// Problems with the inventory file or an entry.
#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("inventory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("inventory {path}: {why}")]
    Format { path: String, why: String },
    #[error("gateway {gateway}: public key: {why}")]
    BadKey { gateway: String, why: String },
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// One enrolled gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    pub site: String,
    pub gateway: String,
    /// Base64 of the gateway's 32-byte Ed25519 device key (`gate fleet device-key`).
    pub public: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    gateways: Vec<Enrolled>,
}

/// The enrolled gateways, with parsed keys.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    entries: Vec<(Enrolled, VerifyingKey)>,
}

fn parse_key(gateway: &str, public: &str) -> Result<VerifyingKey, InventoryError> {
    let bad = |why: String| InventoryError::BadKey { gateway: gateway.into(), why };
    let raw: [u8; 32] = B64.decode(public.trim()).map_err(|e| bad(format!("not base64: {e}")))?.try_into().map_err(|v: Vec<u8>| bad(format!("{} bytes, expected 32", v.len())))?;
    VerifyingKey::from_bytes(&raw).map_err(|e| bad(format!("not an Ed25519 key: {e}")))
}

impl Inventory {
    /// Reads the inventory; a missing file is an empty inventory.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let p = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inventory::default()),
            Err(source) => return Err(InventoryError::Io { path: p, source }),
        };
        let f: File = serde_json::from_str(&text).map_err(|e| InventoryError::Format { path: p.clone(), why: e.to_string() })?;
        if f.format != INVENTORY_FORMAT {
            return Err(InventoryError::Format { path: p, why: format!("format is {:?}, expected {INVENTORY_FORMAT:?}", f.format) });
        }
        let mut inv = Inventory::default();
        for e in f.gateways {
            inv.enroll(&e.site, &e.gateway, &e.public).map_err(|err| InventoryError::Format { path: p.clone(), why: err.to_string() })?;
        }
        Ok(inv)
    }

    /// Writes the inventory (mode 0600), replacing the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), InventoryError> {
        let io = |source| InventoryError::Io { path: path.display().to_string(), source };
        let f = File { format: INVENTORY_FORMAT.into(), gateways: self.entries.iter().map(|(e, _)| e.clone()).collect() };
        let body = serde_json::to_string_pretty(&f).unwrap_or_default();
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write;
        let mut out = opts.open(&tmp).map_err(io)?;
        out.write_all(body.as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a gateway or replaces its key (a re-installed gateway has a new one).
    /// Returns the key it had before, if any.
    pub fn enroll(&mut self, site: &str, gateway: &str, public: &str) -> Result<Option<String>, InventoryError> {
        check_level("site", site)?;
        check_level("gateway", gateway)?;
        let key = parse_key(&format!("{site}/{gateway}"), public)?;
        let entry = Enrolled { site: site.into(), gateway: gateway.into(), public: public.trim().into() };
        let before = self.entries.iter().position(|(e, _)| e.site == site && e.gateway == gateway).map(|i| self.entries.remove(i).0.public);
        self.entries.push((entry, key));
        self.entries.sort_by(|a, b| (&a.0.site, &a.0.gateway).cmp(&(&b.0.site, &b.0.gateway)));
        Ok(before)
    }

    /// The enrolled key of a gateway.
    pub fn key(&self, site: &str, gateway: &str) -> Option<&VerifyingKey> {
        self.entries.iter().find(|(e, _)| e.site == site && e.gateway == gateway).map(|(_, k)| k)
    }

    /// The enrolled gateways of `site` (every site's when None), in order.
    pub fn gateways(&self, site: Option<&str>) -> Vec<(String, String)> {
        self.entries.iter().filter(|(e, _)| site.is_none_or(|s| s == e.site)).map(|(e, _)| (e.site.clone(), e.gateway.clone())).collect()
    }

    /// Checks a message received on `topic` against the key enrolled for the gateway the
    /// topic names.
    pub fn open(&self, topic: &str, payload: &[u8]) -> (crate::signed::Trust, Option<String>) {
        let key = crate::signed::classify(topic).and_then(|(s, g, _)| self.key(s, g));
        crate::signed::open(key, topic, payload)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signed::{DeviceKey, Kind, Trust};

    #[test]
    fn enrolled_keys_survive_a_save_and_decide_what_is_genuine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.json");
        let (a, b) = (DeviceKey::generate(), DeviceKey::generate());
        let mut inv = Inventory::load(&path).unwrap();
        assert!(inv.is_empty());
        inv.enroll("s", "a", &a.public_b64()).unwrap();
        inv.enroll("s", "b", &b.public_b64()).unwrap();
        inv.enroll("t", "c", &b.public_b64()).unwrap();
        inv.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let inv = Inventory::load(&path).unwrap();
        assert_eq!(inv.gateways(Some("s")), vec![("s".into(), "a".into()), ("s".into(), "b".into())]);
        let t = "gate/v1/s/a/status";
        assert_eq!(inv.open(t, &a.seal(Kind::Status, t, "{}")).0, Trust::Genuine);
        assert!(matches!(inv.open(t, &b.seal(Kind::Status, t, "{}")).0, Trust::Forged(_)), "b cannot speak for a");
        assert!(matches!(inv.open("gate/v1/s/zz/status", &b.seal(Kind::Status, "gate/v1/s/zz/status", "{}")).0, Trust::Unverified(_)));
    }

    #[test]
    fn a_bad_key_or_file_is_named() {
        let mut inv = Inventory::default();
        let e = inv.enroll("s", "a", "bm9wZQ==").unwrap_err().to_string();
        assert!(e.contains("s/a") && e.contains("expected 32"), "{e}");
        assert!(inv.enroll("s", "../x", &DeviceKey::generate().public_b64()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.json");
        std::fs::write(&p, r#"{"format":"other","gateways":[]}"#).unwrap();
        assert!(Inventory::load(&p).unwrap_err().to_string().contains("inv.json"));
    }
}
