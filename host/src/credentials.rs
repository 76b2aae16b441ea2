//! Resolving what a reader saw into a pseudonymous subject.
//!
//! The host verifies every credential (card number, PIN hash, QR signature)
//! itself; plugins get only the subject it resolved to. Raw card numbers and
//! PINs never leave this module.

use crate::config::{SiteConfig, SubjectEntry};
use crate::event::{CredentialKind, Input, Role};
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher as _;
use thiserror::Error;

/// A subject as plugins see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub id: String,
    pub role: Role,
    pub groups: Vec<String>,
}

/// Who holds which credential, indexed for O(1) lookups. Compact so a fleet-sized
/// directory (1,000,000 subjects) fits in a gateway's memory: each subject is stored
/// once and every credential index maps to its position; PIN hashes are kept as bytes.
#[derive(Debug, Default)]
pub struct Directory {
    site_id: String,
    subjects: Vec<Subject>,
    /// Positions in `subjects`, found by the id's hash (the id itself is stored once).
    by_id: hashbrown::HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    cards: HashMap<Box<str>, u32>,
    pins: HashMap<[u8; 32], u32>,
    nfc: HashMap<Box<str>, u32>,
    plates: HashMap<Box<str>, u32>,
    /// Credentials held only by their keyed reference (`<kind>:<24 hex>`), as the property
    /// platform syncs them: it never sends a card number or PIN. Looked up by computing the
    /// presented credential's reference with the site's key.
    refs: HashMap<Box<str>, u32>,
    qr_keys: Vec<VerifyingKey>,
    /// The site's key for visitor passes' dynamic codes (`[qr] code_key`).
    code_key: Option<crate::visitor::CodeKey>,
    /// Revoked credential references (`<kind>:<hash>` or `subject:<id>`).
    revoked: HashSet<String>,
    /// Unit doors' shared PIN hashes, by door.
    unit_pins: HashMap<String, String>,
    /// The site's reference key (`[fleet] ref_key`): references are keyed when set.
    ref_key: Option<RefKey>,
    /// The version of the directory database it was loaded from (0: a subjects file).
    stored_version: u64,
}

/// Why a subject could not join the directory.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("subject id `{0}` is empty or defined twice")]
    Id(String),
    #[error("subject `{subject}`: the same {kind} is already held by subject `{other}`")]
    Duplicate { subject: String, kind: &'static str, other: String },
    #[error("subject `{0}` key `pin_sha256`: expected 64 hex digits (see `gate pin-hash`)")]
    PinHash(String),
    #[error("subject `{subject}` key `{key}`: {why}")]
    Value { subject: String, key: &'static str, why: &'static str },
    #[error("the directory is full (at most {} subjects)", u32::MAX)]
    Full,
}

/// A PIN hash's bytes from its 64-hex-digit stored form.
pub fn pin_hash_bytes(hex_hash: &str) -> Option<[u8; 32]> {
    if hex_hash.len() != 64 {
        return None;
    }
    hex::decode(hex_hash).ok().and_then(|b| b.try_into().ok())
}

/// A site's secret for credential references (HMAC-SHA256, 32 bytes). Operators who
/// name credentials hold it; broker subscribers, who see every reference, do not, so no
/// card number or PIN can be found from a reference by trying every value.
#[derive(Clone)]
pub struct RefKey([u8; 32]);

impl std::fmt::Debug for RefKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefKey(…)")
    }
}

/// Format tag of a reference key file.
pub const REF_KEY_FORMAT: &str = "gate-ref-key/1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefKeyFile {
    format: String,
    secret: String,
}

impl RefKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<RefKey, String> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| format!("no random source: {e}"))?;
        Ok(RefKey(k))
    }

    /// The site's key (`[fleet] ref_key`), if it names one; errors name the key and file.
    pub fn for_site(cfg: &SiteConfig) -> Result<Option<RefKey>, String> {
        match cfg.fleet.as_ref().and_then(|f| f.ref_key.as_ref()) {
            Some(path) => RefKey::load(path).map(Some).map_err(|e| format!("[fleet] key `ref_key`: {e}")),
            None => Ok(None),
        }
    }

    /// Reads a key file written by [`RefKey::save`]; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<RefKey, String> {
        load_secret(path, REF_KEY_FORMAT).map(RefKey).map_err(|e| format!("reference key {}: {e}", path.display()))
    }

    /// Writes the key file (mode 0600); never overwrites one.
    pub fn save(&self, path: &std::path::Path) -> Result<(), String> {
        save_secret(path, REF_KEY_FORMAT, &self.0)
    }
}

/// Reads a 32-byte secret key file (`{"format": FORMAT, "secret": base64}`); the error says why.
pub fn load_secret(path: &std::path::Path, format: &str) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let f: RefKeyFile = serde_json::from_str(&text).map_err(|e| format!("not a {format} file: {e}"))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(f.secret.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok());
    match raw {
        Some(k) if f.format == format => Ok(k),
        _ => Err(format!("not a {format} file with a 32-byte base64 secret")),
    }
}

/// Writes a 32-byte secret key file (mode 0600); never overwrites one.
pub fn save_secret(path: &std::path::Path, format: &str, secret: &[u8; 32]) -> Result<(), String> {
    let body = serde_json::to_string(&RefKeyFile { format: format.into(), secret: base64::engine::general_purpose::STANDARD.encode(secret) }).map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(body.as_bytes()).and_then(|_| f.write_all(b"\n")).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The reference of a credential keyed with the site's reference key: `<kind>:` and 24
/// hex digits of HMAC-SHA256(key, "gate-credential-ref/2" 0 kind 0 value). For a PIN the
/// value is its stored sha256, so the property's platform can name any credential
/// without sending it, and nobody without the key can test guesses against it.
pub fn keyed_credential_ref(key: &RefKey, kind: CredentialKind, value: &str) -> String {
    use hmac::Mac;
    let value = normalised(kind, value);
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
    mac.update(format!("gate-credential-ref/2\0{}\0{value}", kind.as_str()).as_bytes());
    format!("{}:{}", kind.as_str(), &hex::encode(mac.finalize().into_bytes())[..24])
}

/// A subject's reference keyed with the site's reference key: `subject:` and 24 hex digits
/// of HMAC-SHA256(key, "gate-subject-ref/1" 0 id). Every gateway of a site derives the same
/// one, so reports can count distinct people across gateways without naming them.
pub fn keyed_subject_ref(key: &RefKey, subject_id: &str) -> String {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes a key of any length");
    mac.update(format!("gate-subject-ref/1\0{subject_id}").as_bytes());
    format!("subject:{}", &hex::encode(mac.finalize().into_bytes())[..24])
}

fn normalised(kind: CredentialKind, value: &str) -> String {
    match kind {
        CredentialKind::Plate => normalise_plate(value),
        CredentialKind::Pin => value.to_ascii_lowercase(),
        _ => value.to_string(),
    }
}

/// The old, unkeyed reference (`gate-credential-ref/1`): a site-bound hash anyone can
/// recompute, so a PIN or card number is found from it by trying every value. Kept only
/// for a site with no reference key and to migrate revocations made with it.
pub fn credential_ref(site_id: &str, kind: CredentialKind, value: &str) -> String {
    let value = normalised(kind, value);
    let d = Sha256::digest(format!("gate-credential-ref/1\0{site_id}\0{}\0{value}", kind.as_str()).as_bytes());
    format!("{}:{}", kind.as_str(), &hex::encode(d)[..24])
}

/// Whether `r` is a well-formed credential or subject reference.
pub fn is_reference(r: &str) -> bool {
    match r.split_once(':') {
        Some(("subject", id)) => !id.is_empty(),
        Some(("pass", id)) => crate::visitor::check_pseudonym(id).is_ok(),
        Some(("card" | "pin" | "nfc" | "plate", h)) => h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        _ => false,
    }
}

/// Whether `value` is a keyed reference of a credential of `kind` (`card:` + 24 hex…).
pub fn is_keyed_ref_of(kind: CredentialKind, value: &str) -> bool {
    value.strip_prefix(kind.as_str()).and_then(|r| r.strip_prefix(':')).is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// The subject id a unit door's shared PIN resolves to.
pub fn unit_subject_id(door: &str) -> String {
    format!("unit:{door}")
}

/// The stored form of a PIN: sha256 hex of "<site id>:<pin>".
pub fn pin_hash(site_id: &str, pin: &str) -> String {
    hex::encode(Sha256::digest(format!("{site_id}:{pin}").as_bytes()))
}

impl Directory {
    /// An empty directory for a site (its PIN hashes and references are bound to the site id).
    pub fn new(site_id: &str) -> Directory {
        Directory { site_id: site_id.to_string(), ..Default::default() }
    }

    /// An empty directory for this site, with its reference key (`[fleet] ref_key`) if any.
    pub fn empty_for(cfg: &SiteConfig) -> Result<Directory, String> {
        let mut d = Directory::new(&cfg.site.id);
        d.ref_key = RefKey::for_site(cfg)?;
        if let Some(path) = &cfg.qr.code_key {
            d.code_key = Some(crate::visitor::CodeKey::load(path).map_err(|e| format!("[qr] key `code_key`: {e}"))?);
        }
        Ok(d)
    }

    /// Builds the directory from a validated site configuration.
    pub fn from_config(cfg: &SiteConfig) -> Result<Directory, String> {
        let mut d = Directory::empty_for(cfg)?;
        d.reserve(cfg.subjects.len());
        for s in &cfg.subjects {
            d.add(s).map_err(|e| e.to_string())?;
        }
        d.set_qr_keys(&cfg.qr.issuer_keys)?;
        Ok(d)
    }

    /// Trusts these hex Ed25519 issuer keys for visitor passes.
    /// Trusts passes signed with `key` too (the gateway's own device key, for the visitors
    /// its guard station registers).
    pub fn trust_issuer(&mut self, key: VerifyingKey) {
        if !self.qr_keys.contains(&key) {
            self.qr_keys.push(key);
        }
    }

    pub fn set_qr_keys(&mut self, keys: &[String]) -> Result<(), String> {
        for k in keys {
            let key = parse_issuer_key(k)?;
            self.qr_keys.push(key);
        }
        Ok(())
    }

    /// Room for `n` more subjects (each with about one card and one PIN).
    pub fn reserve(&mut self, n: usize) {
        self.subjects.reserve(n);
        let (subjects, hasher) = (&self.subjects, &self.hasher);
        self.by_id.reserve(n, |i| hasher.hash_one(subjects[*i as usize].id.as_str()));
        self.cards.reserve(n);
        self.pins.reserve(n);
    }

    /// Number of subjects (unit-door subjects included).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no subject is known.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// Adds a subject and its credentials; refuses a duplicate id or a credential value
    /// (card, PIN hash, NFC token, plate) another subject already holds.
    pub fn add(&mut self, s: &SubjectEntry) -> Result<(), DirectoryError> {
        let idx = self.add_subject(&s.id, s.role, s.groups.clone())?;
        let creds = s.cards.iter().map(|c| (CredentialKind::Card, c)).chain(s.pin_sha256.iter().map(|c| (CredentialKind::Pin, c)));
        for (kind, value) in creds.chain(s.nfc.iter().map(|c| (CredentialKind::Nfc, c))).chain(s.plates.iter().map(|c| (CredentialKind::Plate, c))) {
            self.add_credential(idx, kind, value)?;
        }
        Ok(())
    }

    /// Adds a subject without credentials; returns its position for [`Directory::add_credential`].
    pub fn add_subject(&mut self, id: &str, role: Role, groups: Vec<String>) -> Result<u32, DirectoryError> {
        if id.is_empty() || self.position(id).is_some() {
            return Err(DirectoryError::Id(id.to_string()));
        }
        let idx = u32::try_from(self.subjects.len()).map_err(|_| DirectoryError::Full)?;
        self.subjects.push(Subject { id: id.to_string(), role, groups });
        let (subjects, hasher) = (&self.subjects, &self.hasher);
        self.by_id.insert_unique(hasher.hash_one(id), idx, |i| hasher.hash_one(subjects[*i as usize].id.as_str()));
        Ok(idx)
    }

    /// Gives the subject at `idx` a credential (`value` as stored: a PIN by its hash);
    /// refuses a value another subject holds.
    pub fn add_credential(&mut self, idx: u32, kind: CredentialKind, value: &str) -> Result<(), DirectoryError> {
        let subject = || self.subjects.get(idx as usize).map(|s| s.id.clone()).unwrap_or_default();
        let previous = match kind {
            _ if is_keyed_ref_of(kind, value) => match self.refs.entry(value.into()) {
                std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(idx);
                    None
                }
            },
            CredentialKind::Pin => {
                let key = pin_hash_bytes(value).ok_or_else(|| DirectoryError::PinHash(subject()))?;
                match self.pins.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(idx);
                        None
                    }
                }
            }
            CredentialKind::Card | CredentialKind::Nfc | CredentialKind::Plate => {
                let (key, map): (Box<str>, _) = match kind {
                    CredentialKind::Card => (value.into(), &mut self.cards),
                    CredentialKind::Nfc => (value.into(), &mut self.nfc),
                    _ => (normalise_plate(value).into(), &mut self.plates),
                };
                if key.is_empty() {
                    return Err(DirectoryError::Value { subject: subject(), key: kind_key(kind), why: "must not be empty" });
                }
                match map.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(idx);
                        None
                    }
                }
            }
            _ => return Err(DirectoryError::Value { subject: subject(), key: "credentials", why: "only cards, PIN hashes, NFC tokens and plates are held by subjects" }),
        };
        match previous {
            Some(other) if other != idx => {
                let other = self.subjects.get(other as usize).map(|s| s.id.clone()).unwrap_or_default();
                Err(DirectoryError::Duplicate { subject: subject(), kind: kind.as_str(), other })
            }
            Some(_) => Err(DirectoryError::Duplicate { subject: subject(), kind: kind.as_str(), other: subject() }),
            None => Ok(()),
        }
    }

    /// Takes a credential (as stored, or as its keyed reference) from the subject at `idx`;
    /// a value another subject holds is left alone.
    pub fn remove_credential(&mut self, idx: u32, kind: CredentialKind, value: &str) {
        let mine = |m: &u32| *m == idx;
        if is_keyed_ref_of(kind, value) {
            if self.refs.get(value).is_some_and(mine) {
                self.refs.remove(value);
            }
            return;
        }
        match kind {
            CredentialKind::Pin => {
                if let Some(k) = pin_hash_bytes(value).filter(|k| self.pins.get(k).is_some_and(mine)) {
                    self.pins.remove(&k);
                }
            }
            CredentialKind::Card | CredentialKind::Nfc | CredentialKind::Plate => {
                let (key, map) = match kind {
                    CredentialKind::Card => (value.to_string(), &mut self.cards),
                    CredentialKind::Nfc => (value.to_string(), &mut self.nfc),
                    _ => (normalise_plate(value), &mut self.plates),
                };
                if map.get(key.as_str()).is_some_and(mine) {
                    map.remove(key.as_str());
                }
            }
            _ => {}
        }
    }

    /// Removes a subject and the credentials it held (`held`, as stored): nothing of it is
    /// found afterwards. Its slot stays empty (positions of others do not move).
    pub fn remove_subject(&mut self, id: &str, held: &[(CredentialKind, String)]) -> bool {
        let Some(idx) = self.position(id) else { return false };
        for (kind, value) in held {
            self.remove_credential(idx, *kind, value);
        }
        let (subjects, hasher) = (&self.subjects, &self.hasher);
        if let Ok(e) = self.by_id.find_entry(hasher.hash_one(id), |i| subjects[*i as usize].id == id) {
            e.remove();
        }
        if let Some(s) = self.subjects.get_mut(idx as usize) {
            s.id.clear();
            s.groups.clear();
        }
        true
    }

    /// Changes a present subject's role and groups.
    pub fn update_subject(&mut self, idx: u32, role: Role, groups: Vec<String>) {
        if let Some(s) = self.subjects.get_mut(idx as usize) {
            s.role = role;
            s.groups = groups;
        }
    }

    /// The position of a subject, for [`Directory::add_credential`].
    pub fn position(&self, id: &str) -> Option<u32> {
        self.by_id.find(self.hasher.hash_one(id), |i| self.subjects[*i as usize].id == id).copied()
    }

    fn at(&self, idx: u32) -> Option<&Subject> {
        self.subjects.get(idx as usize)
    }

    /// The holder of a credential reference (or the subject a `subject:` reference names).
    /// Searched on demand: only operator commands ask, so nothing is kept for it.
    pub fn holder_of(&self, reference: &str) -> Option<&str> {
        let found = match reference.split_once(':')?.0 {
            "subject" => return self.subject(&reference["subject:".len()..]).map(|s| s.id.as_str()),
            "card" => self.cards.iter().find(|(v, _)| self.reference(CredentialKind::Card, v) == reference).map(|(_, i)| *i),
            "pin" => self.pins.iter().find(|(h, _)| self.reference(CredentialKind::Pin, &hex::encode(h)) == reference).map(|(_, i)| *i),
            "nfc" => self.nfc.iter().find(|(v, _)| self.reference(CredentialKind::Nfc, v) == reference).map(|(_, i)| *i),
            "plate" => self.plates.iter().find(|(v, _)| self.reference(CredentialKind::Plate, v) == reference).map(|(_, i)| *i),
            _ => return None,
        };
        self.at(found?).map(|s| s.id.as_str())
    }

    /// The reference of a credential at this site: keyed when the site has a reference
    /// key, else the old unkeyed form.
    pub fn reference(&self, kind: CredentialKind, value: &str) -> String {
        match &self.ref_key {
            Some(k) => keyed_credential_ref(k, kind, value),
            None => credential_ref(&self.site_id, kind, value),
        }
    }

    /// The version of the directory database this was loaded from (0: not from one).
    pub fn stored_version(&self) -> u64 {
        self.stored_version
    }

    /// Records the version of the directory database this was loaded from.
    pub fn set_stored_version(&mut self, v: u64) {
        self.stored_version = v;
    }

    /// Keys this directory's references with `key` (the site's reference key).
    pub fn set_ref_key(&mut self, key: RefKey) {
        self.ref_key = Some(key);
    }

    /// Whether references here are keyed (`[fleet] ref_key` is set).
    pub fn has_ref_key(&self) -> bool {
        self.ref_key.is_some()
    }

    /// Revoked references in the old unkeyed form that name a credential of this
    /// directory, with their keyed form: (old, new). The gateway can compute both forms
    /// for its own credentials, so their revocations carry over to the key. Empty
    /// without a reference key.
    pub fn legacy_revocations(&self) -> Vec<(String, String)> {
        if self.ref_key.is_none() || self.revoked.is_empty() {
            return Vec::new();
        }
        let values = self
            .cards
            .keys()
            .map(|v| (CredentialKind::Card, v.to_string()))
            .chain(self.pins.keys().map(|h| (CredentialKind::Pin, hex::encode(h))))
            .chain(self.nfc.keys().map(|v| (CredentialKind::Nfc, v.to_string())))
            .chain(self.plates.keys().map(|v| (CredentialKind::Plate, v.to_string())));
        let mut out = Vec::new();
        for (kind, value) in values {
            let old = credential_ref(&self.site_id, kind, &value);
            if self.revoked.contains(&old) {
                out.push((old, self.reference(kind, &value)));
            }
        }
        out
    }

    /// Revokes a reference from now on (also one the directory does not know yet).
    pub fn revoke(&mut self, reference: &str) {
        self.revoked.insert(reference.to_string());
    }

    /// Undoes a revocation; false if the reference was not revoked.
    pub fn reinstate(&mut self, reference: &str) -> bool {
        self.revoked.remove(reference)
    }

    /// Whether a reference is revoked.
    pub fn is_revoked(&self, reference: &str) -> bool {
        self.revoked.contains(reference)
    }

    /// The revoked reference that forbids this credential, if any: its own, or its holder's.
    pub fn revoked_by(&self, input: &Input, holder: Option<&Subject>) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        if let Some(r) = holder.map(|h| format!("subject:{}", h.id)).filter(|r| self.revoked.contains(r)) {
            return Some(r);
        }
        let r = match input {
            Input::Card { number, .. } => self.reference(CredentialKind::Card, number),
            Input::Pin { pin, .. } => self.reference(CredentialKind::Pin, &pin_hash(&self.site_id, pin)),
            Input::Nfc { token, .. } => self.reference(CredentialKind::Nfc, token),
            Input::Plate { plate, .. } => self.reference(CredentialKind::Plate, plate),
            _ => return None,
        };
        self.revoked.contains(&r).then_some(r)
    }

    /// Sets a unit door's shared PIN (by its hash); it resolves, at that door only, to
    /// the unit's subject (a resident in group `unit-pin`).
    pub fn set_unit_pin(&mut self, door: &str, pin_sha256: &str) {
        self.unit_pins.insert(door.to_string(), pin_sha256.to_ascii_lowercase());
        let id = unit_subject_id(door);
        if self.position(&id).is_none() {
            // A unit subject is not a directory entry; a full directory leaves the unit PIN unresolved.
            let _ = self.add_subject(&id, Role::Resident, vec!["unit-pin".into()]);
        }
    }

    /// The unit subject if `pin` is the shared PIN of unit door `door`.
    pub fn by_unit_pin(&self, door: &str, pin: &str) -> Option<&Subject> {
        let want = self.unit_pins.get(door)?;
        (*want == pin_hash(&self.site_id, pin)).then(|| self.subject(&unit_subject_id(door))).flatten()
    }

    /// Whether a PIN hash is already someone's PIN or a unit door's (a new unit PIN must not be).
    pub fn pin_hash_in_use(&self, pin_sha256: &str) -> bool {
        let lower = pin_sha256.to_ascii_lowercase();
        pin_hash_bytes(&lower).is_some_and(|k| self.pins.contains_key(&k)) || self.unit_pins.values().any(|h| *h == lower)
    }

    /// The subject with this pseudonymous id.
    pub fn subject(&self, id: &str) -> Option<&Subject> {
        self.position(id).and_then(|i| self.at(i))
    }

    /// The holder of a card number.
    pub fn by_card(&self, number: &str) -> Option<&Subject> {
        self.cards.get(number).or_else(|| self.by_ref(CredentialKind::Card, number)).and_then(|i| self.at(*i))
    }

    /// A credential held only by its keyed reference (synced from the platform).
    fn by_ref(&self, kind: CredentialKind, value: &str) -> Option<&u32> {
        if self.refs.is_empty() {
            return None;
        }
        self.refs.get(keyed_credential_ref(self.ref_key.as_ref()?, kind, value).as_str())
    }

    /// The holder of a PIN (looked up by its site-bound hash).
    pub fn by_pin(&self, pin: &str) -> Option<&Subject> {
        let key: [u8; 32] = Sha256::digest(format!("{}:{pin}", self.site_id).as_bytes()).into();
        self.pins.get(&key).or_else(|| self.by_ref(CredentialKind::Pin, &hex::encode(key))).and_then(|i| self.at(*i))
    }

    /// The holder of an NFC token.
    pub fn by_nfc(&self, token: &str) -> Option<&Subject> {
        self.nfc.get(token).or_else(|| self.by_ref(CredentialKind::Nfc, token)).and_then(|i| self.at(*i))
    }

    /// The holder of a plate (spaces, dashes and case ignored).
    pub fn by_plate(&self, plate: &str) -> Option<&Subject> {
        self.plates.get(normalise_plate(plate).as_str()).or_else(|| self.by_ref(CredentialKind::Plate, plate)).and_then(|i| self.at(*i))
    }

    /// Verifies a scanned visitor pass at gateway time `now_ms`: the issuer's signature,
    /// its fields, and its dynamic code (see `visitor.rs`).
    pub fn scan_qr(&self, code: &str, now_ms: i64) -> Result<crate::visitor::Scanned, crate::visitor::PassError> {
        crate::visitor::scan(&self.qr_keys, self.code_key.as_ref(), code, now_ms)
    }

    /// Trusted visitor-pass issuer keys.
    pub fn qr_keys(&self) -> &[VerifyingKey] {
        &self.qr_keys
    }
}

/// The directory key of a credential kind, for error messages.
fn kind_key(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Card => "cards",
        CredentialKind::Pin => "pin_sha256",
        CredentialKind::Nfc => "nfc",
        _ => "plates",
    }
}

/// A trusted visitor-pass issuer key from its hex form; refuses malformed and weak keys
/// (all-zero or small-order points, which verify signatures made with no secret at all).
pub fn parse_issuer_key(k: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(k).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| format!("key `qr.issuer_keys`: `{k}` is not 32 bytes of hex"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| format!("key `qr.issuer_keys`: `{k}`: {e}"))?;
    if key.is_weak() {
        return Err(format!("key `qr.issuer_keys`: `{k}` is a weak key (a small-order point: signatures made with no secret would verify)"));
    }
    Ok(key)
}

/// A plate as the directory indexes it: no spaces, dashes or middle dots; upper case.
pub fn normalise_plate(p: &str) -> String {
    p.chars().filter(|c| !c.is_whitespace() && *c != '-' && *c != '·').flat_map(char::to_uppercase).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn dir_with_key(key: &SigningKey) -> Directory {
        let mut d = Directory::new("s");
        d.qr_keys.push(key.verifying_key());
        d.add(&SubjectEntry {
            id: "r-1".into(),
            role: Role::Resident,
            groups: vec![],
            cards: vec!["1001".into()],
            pin_sha256: vec![pin_hash("s", "246810")],
            nfc: vec![],
            plates: vec!["浙A 12345".into()],
        })
        .expect("a valid subject");
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
    fn revoking_a_reference_stops_that_credential_and_a_subject_reference_stops_all() {
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        let card = Input::Card { door: "g".into(), number: "1001".into(), direction: Default::default(), captured_at: None };
        let pin = Input::Pin { door: "g".into(), pin: "246810".into(), direction: Default::default(), captured_at: None };
        let holder = d.by_card("1001").cloned();
        assert_eq!(d.revoked_by(&card, holder.as_ref()), None);
        let card_ref = credential_ref("s", CredentialKind::Card, "1001");
        assert!(is_reference(&card_ref) && !card_ref.contains("1001"), "{card_ref}");
        assert_eq!(d.holder_of(&card_ref), Some("r-1"));
        // A PIN is named through its stored hash: the platform never needs the PIN itself.
        let pin_ref = credential_ref("s", CredentialKind::Pin, &pin_hash("s", "246810"));
        assert_eq!(d.holder_of(&pin_ref), Some("r-1"));
        d.revoke(&card_ref);
        assert_eq!(d.revoked_by(&card, holder.as_ref()), Some(card_ref.clone()));
        assert_eq!(d.revoked_by(&pin, holder.as_ref()), None, "the PIN is another credential");
        d.revoke("subject:r-1");
        assert_eq!(d.revoked_by(&pin, holder.as_ref()).as_deref(), Some("subject:r-1"));
        assert!(d.reinstate("subject:r-1") && !d.reinstate("subject:r-1"));
        assert_eq!(d.revoked_by(&pin, holder.as_ref()), None, "reinstated");
        assert_eq!(d.revoked_by(&card, holder.as_ref()), Some(card_ref.clone()), "the card's own revocation stands");
        // Another site's reference for the same card is a different name.
        assert_ne!(credential_ref("other", CredentialKind::Card, "1001"), card_ref);
        assert!(!is_reference("card:1001") && !is_reference("face:0123456789abcdef01234567") && is_reference("subject:r-1"));
    }

    #[test]
    fn a_unit_pin_opens_only_its_own_door_and_is_never_a_personal_pin() {
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        assert!(d.by_unit_pin("b3", "424242").is_none());
        d.set_unit_pin("b3", &pin_hash("s", "424242"));
        let s = d.by_unit_pin("b3", "424242").expect("unit subject");
        assert_eq!((s.id.as_str(), s.role), ("unit:b3", Role::Resident));
        assert!(d.by_unit_pin("north", "424242").is_none());
        assert!(d.by_pin("424242").is_none());
        assert!(d.pin_hash_in_use(&pin_hash("s", "424242")) && d.pin_hash_in_use(&pin_hash("s", "246810")));
        d.set_unit_pin("b3", &pin_hash("s", "515151"));
        assert!(d.by_unit_pin("b3", "424242").is_none(), "the old unit PIN stops at once");
    }

    #[test]
    fn a_credential_value_held_twice_is_refused_naming_both_holders() {
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        let other = |pin: &str, plate: &str| SubjectEntry {
            id: "r-2".into(),
            role: Role::Resident,
            groups: vec![],
            cards: vec!["2002".into()],
            pin_sha256: vec![pin_hash("s", pin)],
            nfc: vec![],
            plates: vec![plate.into()],
        };
        let e = d.add(&other("246810", "沪B 1")).unwrap_err();
        assert_eq!(e, DirectoryError::Duplicate { subject: "r-2".into(), kind: "pin", other: "r-1".into() });
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        let e = d.add(&other("135790", "浙a-12345")).unwrap_err();
        assert_eq!(e, DirectoryError::Duplicate { subject: "r-2".into(), kind: "plate", other: "r-1".into() });
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        d.add(&other("135790", "沪B 1")).expect("distinct credentials");
        assert_eq!(d.by_pin("135790").map(|s| s.id.as_str()), Some("r-2"));
        assert_eq!(d.by_pin("246810").map(|s| s.id.as_str()), Some("r-1"), "r-1's PIN still names r-1");
    }

    #[test]
    fn weak_and_malformed_issuer_keys_are_refused() {
        assert!(parse_issuer_key(&"00".repeat(32)).unwrap_err().contains("weak"));
        // The identity point (small order) verifies a forged signature with no secret at all.
        let identity = format!("01{}", "00".repeat(31));
        assert!(parse_issuer_key(&identity).unwrap_err().contains("weak"));
        assert!(parse_issuer_key("abcd").unwrap_err().contains("not 32 bytes"));
        assert!(parse_issuer_key(&hex::encode(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes())).is_ok());
    }

    #[test]
    fn a_keyed_pin_reference_cannot_be_matched_by_trying_every_pin_without_the_key() {
        let mut d = dir_with_key(&SigningKey::from_bytes(&[7; 32]));
        let key = RefKey::generate().unwrap();
        d.ref_key = Some(key.clone());
        let pin_ref = keyed_credential_ref(&key, CredentialKind::Pin, &pin_hash("s", "246810"));
        assert!(is_reference(&pin_ref));
        assert_eq!(d.holder_of(&pin_ref), Some("r-1"));
        // What a broker subscriber can compute without the key never meets the reference:
        // every 6-digit PIN through the old unkeyed hash, and through a guessed key.
        let guessed = RefKey([0; 32]);
        let found = (0..1_000_000u32)
            .map(|n| pin_hash("s", &format!("{n:06}")))
            .find(|h| credential_ref("s", CredentialKind::Pin, h) == pin_ref || keyed_credential_ref(&guessed, CredentialKind::Pin, h) == pin_ref);
        assert_eq!(found, None, "the PIN was found from its reference without the key");
        // The holder of the key finds it (as the gateway does): the check above can fail.
        assert_eq!((0..1_000_000u32).map(|n| format!("{n:06}")).find(|p| keyed_credential_ref(&key, CredentialKind::Pin, &pin_hash("s", p)) == pin_ref).as_deref(), Some("246810"));
        // A card revoked under the old form is found and re-derived.
        let old = credential_ref("s", CredentialKind::Card, "1001");
        d.revoke(&old);
        assert_eq!(d.legacy_revocations(), vec![(old, keyed_credential_ref(&key, CredentialKind::Card, "1001"))]);
    }

    #[test]
    fn a_reference_key_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("site.refkey");
        let k = RefKey::generate().unwrap();
        k.save(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(k.save(&p).is_err(), "overwrote a key");
        let back = RefKey::load(&p).unwrap();
        assert_eq!(keyed_credential_ref(&back, CredentialKind::Card, "1"), keyed_credential_ref(&k, CredentialKind::Card, "1"));
        std::fs::write(&p, "{}").unwrap();
        assert!(RefKey::load(&p).unwrap_err().contains("site.refkey"));
    }
}
