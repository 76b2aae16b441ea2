//! The audit trail: every action that touches face data or access rights, appended to a
//! hash chain in its own SQLite database, with checkpoints of the chain head signed by the
//! gateway's device key so that rewriting history or cutting the tail can be detected.
//!
//! An entry says who (a pseudonymous subject, a key id, or `local:<user>`), what (an
//! [`Action`]), to what (a pseudonymous subject, a door, a plugin, a reference) and when.
//! It never holds biometric data, PINs or card numbers: `detail` is a short JSON object
//! built by the host from ids, counts and reasons.
//!
//! Several processes append (the running gateway, `gate enroll`, `gate consent withdraw`):
//! each append reads the head and writes the next entry inside one `BEGIN IMMEDIATE`
//! transaction, so the chain stays linear whoever writes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Domain of an entry's hash; a hash made for anything else cannot stand in for one.
const ENTRY_DOMAIN: &[u8] = b"gate-audit-entry/1\0";
/// Domain of a checkpoint's signature.
const CHECKPOINT_DOMAIN: &[u8] = b"gate-audit-checkpoint/1\0";
/// The chain's first `prev`: 32 zero bytes.
const GENESIS: [u8; 32] = [0; 32];

/// A failure to read or write the audit trail.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("audit log write failed: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("audit checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("audit detail could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What was done. The names are stable: they are stored and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    ConsentGiven,
    ConsentWithdrawn,
    Enrolled,
    TemplateErased,
    TemplatesRekeyed,
    DeviceKeyCreated,
    FaceConfigChanged,
    PluginDeployed,
    PluginRolledBack,
    RemoteCommand,
    GuardCommand,
    CredentialRevoked,
    CredentialReinstated,
    DoorMode,
    UnitPinRotated,
    RetentionPurge,
    ReportGenerated,
    EventLogRecovered,
    DirectoryChanged,
}

impl Action {
    /// The stored name, e.g. `consent-withdrawn`.
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }

    fn parse(s: &str) -> Option<Action> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One link of the chain, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    /// Hex sha256 of the previous entry (64 zeros for the first).
    pub prev: String,
    /// Hex sha256 of this entry, over `prev` and every field above.
    pub hash: String,
}

fn entry_hash(prev: &[u8; 32], seq: i64, at_ms: i64, actor: &str, action: &str, target: &str, detail: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    for field in [actor, action, target, detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().into()
}

/// A signed statement by the gateway: "my audit chain had `seq` entries, the last hashing to `head`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub site: String,
    pub gateway: String,
    pub seq: i64,
    pub head: String,
    pub at_ms: i64,
    /// The device key's public half, base64.
    pub public: String,
    /// Ed25519 over the domain and the fields above, base64.
    pub signature: String,
}

impl Checkpoint {
    const FORMAT: &'static str = "gate-audit-checkpoint/1";

    fn message(site: &str, gateway: &str, seq: i64, head: &str, at_ms: i64, public: &str) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend_from_slice(format!("{site}\n{gateway}\n{seq}\n{head}\n{at_ms}\n{public}").as_bytes());
        m
    }

    /// Signs the head of a chain with the device key.
    pub fn sign(key: &SigningKey, site: &str, gateway: &str, seq: i64, head: &str, at_ms: i64) -> Checkpoint {
        let public = B64.encode(key.verifying_key().as_bytes());
        let sig = key.sign(&Self::message(site, gateway, seq, head, at_ms, &public));
        Checkpoint { format: Self::FORMAT.into(), site: site.into(), gateway: gateway.into(), seq, head: head.into(), at_ms, public, signature: B64.encode(sig.to_bytes()) }
    }

    /// Checks the signature; with `trusted`, also that it was made by that public key.
    pub fn verify(&self, trusted: Option<&VerifyingKey>) -> Result<(), String> {
        if self.format != Self::FORMAT {
            return Err(format!("format `{}` is not {}", self.format, Self::FORMAT));
        }
        let pk: [u8; 32] = B64.decode(&self.public).ok().and_then(|b| b.try_into().ok()).ok_or("public key is not 32 bytes of base64")?;
        let pk = VerifyingKey::from_bytes(&pk).map_err(|e| format!("public key: {e}"))?;
        if let Some(t) = trusted {
            if t != &pk {
                return Err("signed by another key than the gateway's device key".into());
            }
        }
        let sig: [u8; 64] = B64.decode(&self.signature).ok().and_then(|b| b.try_into().ok()).ok_or("signature is not 64 bytes of base64")?;
        pk.verify(&Self::message(&self.site, &self.gateway, self.seq, &self.head, self.at_ms, &self.public), &Signature::from_bytes(&sig)).map_err(|_| "the signature does not verify".to_string())
    }

    /// Reads a checkpoint file (as written by the gateway or saved from MQTT).
    pub fn read(path: &Path) -> Result<Checkpoint, AuditError> {
        let err = |message: String| AuditError::Checkpoint { path: path.display().to_string(), message };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() || meta.len() > 64 * 1024 {
            return Err(err("not a regular file of at most 64 KiB".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(format!("line {}: {e}", e.line())))
    }
}

/// What `verify` found wrong first.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Tamper {
    #[error("entry {seq}: its contents do not match its hash (edited)")]
    Edited { seq: i64 },
    #[error("entry {seq}: it does not follow entry {prev_seq} (an entry was deleted, inserted or moved before it)")]
    Broken { seq: i64, prev_seq: i64 },
    #[error("entry {expected} is missing (found entry {found} in its place): entries were deleted or reordered")]
    Gap { expected: i64, found: i64 },
    #[error("entry {seq}: unknown action `{action}`")]
    UnknownAction { seq: i64, action: String },
    #[error("the log ends at entry {last} but a checkpoint signed by the gateway covers {checkpoint} entries: the tail was cut")]
    Truncated { last: i64, checkpoint: i64 },
    #[error("entry {seq} hashes to {found}, but the checkpoint signed by the gateway says {signed}: history was rewritten")]
    Rewritten { seq: i64, found: String, signed: String },
    #[error("checkpoint at entry {seq}: {why}")]
    BadCheckpoint { seq: i64, why: String },
}

/// The result of a clean verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: i64,
    pub head: String,
    /// Checkpoints whose signature and head were checked (stored ones and the one given).
    pub checkpoints: usize,
    pub last_checkpoint: Option<Checkpoint>,
}

/// The audit trail of one gateway.
pub struct AuditLog {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq    INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev   TEXT NOT NULL,
    hash   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
";

impl AuditLog {
    /// The audit database beside an event log (or in a state directory).
    pub fn path_beside(event_log: &Path) -> PathBuf {
        event_log.parent().map(|d| d.join("audit.sqlite")).unwrap_or_else(|| PathBuf::from("audit.sqlite"))
    }

    /// Opens (or creates, mode 0600) the audit log at `path`.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        // Private like every state file (the process umask makes it so; this tightens an old one).
        let _ = crate::files::restrict(path);
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(AuditLog { conn, path: path.to_path_buf() })
    }

    /// Where this log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry after the current head and returns it.
    pub fn append(&mut self, at_ms: i64, actor: &str, action: Action, target: &str, detail: serde_json::Value) -> Result<Entry, AuditError> {
        let detail = serde_json::to_string(&detail)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<(i64, String)> = tx.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let (seq, prev) = match last {
            Some((s, h)) => (s + 1, unhex32(&h).unwrap_or(GENESIS)),
            None => (1, GENESIS),
        };
        let action = action.name();
        let hash = entry_hash(&prev, seq, at_ms, actor, &action, target, &detail);
        let e = Entry { seq, at_ms, actor: actor.into(), action, target: target.into(), detail, prev: hex::encode(prev), hash: hex::encode(hash) };
        tx.execute(
            "INSERT INTO audit (seq, at_ms, actor, action, target, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![e.seq, e.at_ms, e.actor, e.action, e.target, e.detail, e.prev, e.hash],
        )?;
        tx.commit()?;
        tracing::info!(seq = e.seq, action = %e.action, actor = %e.actor, target = %e.target, "audit");
        Ok(e)
    }

    /// The number of entries and the head hash (64 zeros when empty).
    pub fn head(&self) -> Result<(i64, String), AuditError> {
        let last: Option<(i64, String)> = self.conn.query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(last.unwrap_or((0, hex::encode(GENESIS))))
    }

    /// Signs the current head with the device key, stores the checkpoint and returns it.
    /// An unchanged head since the last checkpoint gives that checkpoint again.
    pub fn checkpoint(&mut self, key: &SigningKey, site: &str, gateway: &str, at_ms: i64) -> Result<Checkpoint, AuditError> {
        let (seq, head) = self.head()?;
        if let Some(last) = self.last_checkpoint()? {
            if last.seq == seq && last.head == head {
                return Ok(last);
            }
        }
        let cp = Checkpoint::sign(key, site, gateway, seq, &head, at_ms);
        self.conn.execute("INSERT OR REPLACE INTO audit_checkpoints (seq, body) VALUES (?1, ?2)", params![seq, serde_json::to_string(&cp)?])?;
        Ok(cp)
    }

    /// The newest stored checkpoint.
    pub fn last_checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        let body: Option<String> = self.conn.query_row("SELECT body FROM audit_checkpoints ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).optional()?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Entries in order, from `from_seq` on.
    pub fn entries(&self, from_seq: i64) -> Result<Vec<Entry>, AuditError> {
        let mut st = self.conn.prepare("SELECT seq, at_ms, actor, action, target, detail, prev, hash FROM audit WHERE seq >= ?1 ORDER BY seq")?;
        let rows =
            st.query_map([from_seq], |r| Ok(Entry { seq: r.get(0)?, at_ms: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, target: r.get(4)?, detail: r.get(5)?, prev: r.get(6)?, hash: r.get(7)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Retention: removes the entries older than `before_ms`, but only up to the newest stored
    /// checkpoint that covers them, which stays as the anchor the remaining chain is verified
    /// from. Returns how many entries went (0 when no checkpoint covers old entries yet).
    pub fn purge_before(&mut self, before_ms: i64) -> Result<u64, AuditError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let old: Option<i64> = tx.query_row("SELECT MAX(seq) FROM audit WHERE at_ms < ?1", [before_ms], |r| r.get(0))?;
        let Some(old) = old else { return Ok(0) };
        let anchor: Option<i64> = tx.query_row("SELECT MAX(seq) FROM audit_checkpoints WHERE seq <= ?1", [old], |r| r.get(0))?;
        let Some(anchor) = anchor.filter(|a| *a > 0) else { return Ok(0) };
        let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", [anchor])?;
        tx.execute("DELETE FROM audit_checkpoints WHERE seq < ?1", [anchor])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// Counts entries per action within `[from_ms, to_ms)`.
    pub fn count_by_action(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(String, i64)>, AuditError> {
        let mut st = self.conn.prepare("SELECT action, COUNT(*) FROM audit WHERE at_ms >= ?1 AND at_ms < ?2 GROUP BY action ORDER BY action")?;
        let rows = st.query_map([from_ms, to_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Walks the whole chain; checks every stored checkpoint and `extra` (a checkpoint file or
    /// the last one published) against it. With `device`, checkpoints must be signed by that key.
    /// Returns the first thing wrong.
    pub fn verify(&self, extra: Option<&Checkpoint>, device: Option<&VerifyingKey>) -> Result<Result<Verified, Tamper>, AuditError> {
        let entries = self.entries(i64::MIN)?;
        let mut stored: Vec<Checkpoint> = {
            let mut st = self.conn.prepare("SELECT body FROM audit_checkpoints ORDER BY seq")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.filter_map(|b| b.ok().and_then(|b| serde_json::from_str(&b).ok())).collect()
        };
        // The trusted key: the one given, else the one that signed the first checkpoint seen.
        let first_key = extra.or(stored.first()).and_then(|c| B64.decode(&c.public).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok()).and_then(|b| VerifyingKey::from_bytes(&b).ok());
        let device = device.copied().or(first_key);
        stored.extend(extra.cloned());
        Ok(verify_chain(&entries, &stored, device.as_ref()))
    }
}

/// The pure check behind [`AuditLog::verify`]: entries in stored order, checkpoints to hold them to.
/// A log whose oldest entries were purged by retention starts after a signed checkpoint (the
/// anchor): its first entry must follow that checkpoint's head.
fn verify_chain(entries: &[Entry], checkpoints: &[Checkpoint], device: Option<&VerifyingKey>) -> Result<Verified, Tamper> {
    for cp in checkpoints {
        cp.verify(device).map_err(|why| Tamper::BadCheckpoint { seq: cp.seq, why })?;
    }
    let base = entries.first().map(|e| e.seq - 1).unwrap_or_else(|| checkpoints.iter().map(|c| c.seq).max().unwrap_or(0)).max(0);
    let mut prev = if base == 0 {
        GENESIS
    } else {
        match checkpoints.iter().find(|c| c.seq == base).and_then(|c| unhex32(&c.head)) {
            Some(h) => h,
            // Entries before the first one left are gone with no anchor for them: name the
            // first missing one (after the newest checkpoint below, if any).
            None => {
                let expected = checkpoints.iter().map(|c| c.seq).filter(|s| *s < base).max().unwrap_or(0) + 1;
                return Err(Tamper::Gap { expected, found: base + 1 });
            }
        }
    };
    let mut heads = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let expected = base + i as i64 + 1;
        if e.seq != expected {
            return Err(Tamper::Gap { expected, found: e.seq });
        }
        if Action::parse(&e.action).is_none() {
            return Err(Tamper::UnknownAction { seq: e.seq, action: crate::plugin::text::sanitize(&e.action, 64) });
        }
        if unhex32(&e.prev) != Some(prev) {
            return Err(Tamper::Broken { seq: e.seq, prev_seq: e.seq - 1 });
        }
        let h = entry_hash(&prev, e.seq, e.at_ms, &e.actor, &e.action, &e.target, &e.detail);
        if unhex32(&e.hash) != Some(h) {
            return Err(Tamper::Edited { seq: e.seq });
        }
        heads.push(hex::encode(h));
        prev = h;
    }
    let last = base + entries.len() as i64;
    let mut newest: Option<&Checkpoint> = None;
    for cp in checkpoints {
        if cp.seq > last {
            return Err(Tamper::Truncated { last, checkpoint: cp.seq });
        }
        // Checkpoints older than the anchor speak of purged entries: nothing left to hold them to.
        if cp.seq > base {
            let found = heads[(cp.seq - base - 1) as usize].clone();
            if found != cp.head {
                return Err(Tamper::Rewritten { seq: cp.seq, found, signed: cp.head.clone() });
            }
        }
        if newest.is_none_or(|n| cp.seq >= n.seq) {
            newest = Some(cp);
        }
    }
    Ok(Verified { entries: entries.len() as i64, head: heads.last().cloned().unwrap_or_else(|| hex::encode(prev)), checkpoints: checkpoints.len(), last_checkpoint: newest.cloned() })
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Appends `face-config-changed` when the `[face]` configuration differs from the one the
/// last such entry recorded (or none was recorded yet): how the matcher is set up is part of
/// what an inspector reviews.
pub fn note_face_config(log: &mut AuditLog, at_ms: i64, described: &str) -> Result<Option<Entry>, AuditError> {
    let digest = hex::encode(Sha256::digest(described.as_bytes()));
    let last: Option<String> = log.conn.query_row("SELECT detail FROM audit WHERE action = ?1 ORDER BY seq DESC LIMIT 1", [Action::FaceConfigChanged.name()], |r| r.get(0)).optional()?;
    let seen = last.and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok()).and_then(|v| v.get("sha256").and_then(|h| h.as_str()).map(str::to_string));
    if seen.as_deref() == Some(digest.as_str()) {
        return Ok(None);
    }
    let detail = serde_json::json!({"sha256": digest, "config": described, "first": seen.is_none()});
    log.append(at_ms, "host", Action::FaceConfigChanged, "face", detail).map(Some)
}

/// Who did it, for actions taken at the gateway's own console: `local:<user>`.
pub fn local_actor() -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    format!("local:{}", crate::plugin::text::sanitize(&user, 32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn log_with(n: i64) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(&dir.path().join("audit.sqlite")).unwrap();
        for i in 0..n {
            log.append(1_000 + i, "key:ops", Action::CredentialRevoked, &format!("subject:r-{i:04}"), json!({"reason": "moved out"})).unwrap();
        }
        (dir, log)
    }

    fn verdict(log: &AuditLog, extra: Option<&Checkpoint>) -> Result<Verified, Tamper> {
        log.verify(extra, Some(&key().verifying_key())).unwrap()
    }

    #[test]
    fn a_clean_chain_verifies_with_its_checkpoints() {
        let (_d, mut log) = log_with(3);
        let cp = log.checkpoint(&key(), "s", "gw", 5_000).unwrap();
        assert_eq!((cp.seq, cp.head.clone()), log.head().unwrap());
        log.append(6_000, "local:root", Action::ConsentWithdrawn, "r-0003", json!({})).unwrap();
        let v = verdict(&log, None).unwrap();
        assert_eq!((v.entries, v.checkpoints), (4, 1));
        assert_eq!(v.last_checkpoint, Some(cp));
    }

    #[test]
    fn an_edited_row_is_named() {
        let (_d, log) = log_with(5);
        log.conn.execute("UPDATE audit SET target = 'subject:r-9999' WHERE seq = 3", []).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Edited { seq: 3 }));
    }

    #[test]
    fn an_edited_row_with_a_recomputed_hash_breaks_the_next_link() {
        let (_d, log) = log_with(5);
        let e = &log.entries(3).unwrap()[0];
        let prev = unhex32(&e.prev).unwrap();
        let h = hex::encode(entry_hash(&prev, 3, e.at_ms, &e.actor, &e.action, "subject:r-9999", &e.detail));
        log.conn.execute("UPDATE audit SET target = 'subject:r-9999', hash = ?1 WHERE seq = 3", [h]).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Broken { seq: 4, prev_seq: 3 }));
    }

    #[test]
    fn a_deleted_row_is_named() {
        let (_d, log) = log_with(5);
        log.conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Gap { expected: 2, found: 3 }));
    }

    #[test]
    fn an_inserted_row_is_named() {
        let (_d, log) = log_with(3);
        // Shift the tail up by one and slip a forged entry in at 2, hashed correctly after entry 1.
        log.conn.execute("UPDATE audit SET seq = seq + 10 WHERE seq >= 2", []).unwrap();
        log.conn.execute("UPDATE audit SET seq = seq - 9 WHERE seq >= 12", []).unwrap();
        let first = &log.entries(1).unwrap()[0];
        let prev = unhex32(&first.hash).unwrap();
        let h = hex::encode(entry_hash(&prev, 2, 1_500, "key:ops", "credential-reinstated", "subject:r-0001", "{}"));
        log.conn
            .execute(
                "INSERT INTO audit (seq, at_ms, actor, action, target, detail, prev, hash) VALUES (2, 1500, 'key:ops', 'credential-reinstated', 'subject:r-0001', '{}', ?1, ?2)",
                [hex::encode(prev), h],
            )
            .unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Broken { seq: 3, prev_seq: 2 }));
    }

    #[test]
    fn reordered_rows_are_named() {
        let (_d, log) = log_with(4);
        log.conn.execute("UPDATE audit SET seq = 100 WHERE seq = 2", []).unwrap();
        log.conn.execute("UPDATE audit SET seq = 2 WHERE seq = 3", []).unwrap();
        log.conn.execute("UPDATE audit SET seq = 3 WHERE seq = 100", []).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Broken { seq: 2, prev_seq: 1 }));
    }

    #[test]
    fn a_tail_cut_after_a_checkpoint_is_caught_by_the_stored_and_the_published_checkpoint() {
        let (_d, mut log) = log_with(5);
        let published = log.checkpoint(&key(), "s", "gw", 9_000).unwrap();
        log.conn.execute("DELETE FROM audit WHERE seq >= 4", []).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Truncated { last: 3, checkpoint: 5 }));
        // Deleting the stored checkpoints too does not help: the published one still says 5.
        log.conn.execute("DELETE FROM audit_checkpoints", []).unwrap();
        assert_eq!(verdict(&log, None).map(|v| v.entries), Ok(3), "without a checkpoint a cut tail is undetectable");
        assert_eq!(verdict(&log, Some(&published)), Err(Tamper::Truncated { last: 3, checkpoint: 5 }));
    }

    #[test]
    fn a_rewritten_history_is_caught_by_a_checkpoint() {
        let (_d, mut log) = log_with(3);
        let published = log.checkpoint(&key(), "s", "gw", 9_000).unwrap();
        // Rebuild the whole chain with entry 2 changed: every link is consistent again.
        let mut prev = GENESIS;
        for e in log.entries(1).unwrap() {
            let target = if e.seq == 2 { "subject:r-9999".to_string() } else { e.target.clone() };
            let h = entry_hash(&prev, e.seq, e.at_ms, &e.actor, &e.action, &target, &e.detail);
            log.conn.execute("UPDATE audit SET target = ?1, prev = ?2, hash = ?3 WHERE seq = ?4", params![target, hex::encode(prev), hex::encode(h), e.seq]).unwrap();
            prev = h;
        }
        log.conn.execute("DELETE FROM audit_checkpoints", []).unwrap();
        assert!(matches!(verdict(&log, Some(&published)), Err(Tamper::Rewritten { seq: 3, .. })));
    }

    #[test]
    fn a_checkpoint_signed_by_another_key_or_altered_is_refused() {
        let (_d, mut log) = log_with(2);
        let mut cp = log.checkpoint(&SigningKey::from_bytes(&[9; 32]), "s", "gw", 1).unwrap();
        assert!(matches!(verdict(&log, None), Err(Tamper::BadCheckpoint { seq: 2, .. })));
        cp.seq = 1;
        assert!(cp.verify(None).is_err(), "a changed field breaks the signature");
    }

    #[test]
    fn appends_from_two_connections_stay_one_chain() {
        let (d, mut a) = log_with(1);
        let mut b = AuditLog::open(&d.path().join("audit.sqlite")).unwrap();
        for i in 0..10 {
            let log = if i % 2 == 0 { &mut a } else { &mut b };
            log.append(2_000 + i, "local:root", Action::Enrolled, "r-0001", json!({"photos": 2})).unwrap();
        }
        assert_eq!(verdict(&a, None).map(|v| v.entries), Ok(11));
    }

    #[test]
    fn a_face_configuration_is_audited_once_and_again_when_it_changes() {
        let (_d, mut log) = log_with(0);
        assert!(note_face_config(&mut log, 1, "strong 0.6").unwrap().is_some(), "the first one seen");
        assert!(note_face_config(&mut log, 2, "strong 0.6").unwrap().is_none(), "unchanged");
        assert!(note_face_config(&mut log, 3, "strong 0.5").unwrap().is_some(), "changed");
        assert_eq!(log.head().unwrap().0, 2);
    }

    #[test]
    fn a_purge_keeps_a_verifiable_chain_from_its_anchor_and_cutting_more_is_caught() {
        let (_d, mut log) = log_with(6);
        assert_eq!(log.purge_before(1_004).unwrap(), 0, "no checkpoint covers the old entries yet");
        log.checkpoint(&key(), "s", "gw", 1_002).unwrap(); // covers 6 entries
        assert_eq!(log.purge_before(1_004).unwrap(), 0, "the checkpoint is newer than the old entries");
        let mut log2 = log_with(0).1;
        for i in 0..6 {
            log2.append(1_000 + i, "key:ops", Action::DoorMode, "door:north", json!({})).unwrap();
            if i == 2 {
                log2.checkpoint(&key(), "s", "gw", 1_002).unwrap(); // covers 3 entries
            }
        }
        assert_eq!(log2.purge_before(1_004).unwrap(), 3, "up to the checkpoint, not up to the bound");
        let v = verdict(&log2, None).unwrap();
        assert_eq!(v.entries, 3);
        log2.append(2_000, "host", Action::RetentionPurge, "audit", json!({"removed": 3})).unwrap();
        assert!(verdict(&log2, None).is_ok());
        // Removing the anchor, or an entry after it, is caught.
        log2.conn.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
        assert_eq!(verdict(&log2, None), Err(Tamper::Gap { expected: 4, found: 5 }));
        log.conn.execute("DELETE FROM audit WHERE seq <= 2", []).unwrap();
        assert_eq!(verdict(&log, None), Err(Tamper::Gap { expected: 1, found: 3 }));
    }

    #[test]
    fn action_names_round_trip() {
        for a in [Action::ConsentGiven, Action::TemplateErased, Action::RetentionPurge, Action::EventLogRecovered] {
            assert_eq!(Action::parse(&a.name()), Some(a));
        }
        assert_eq!(Action::ConsentWithdrawn.name(), "consent-withdrawn");
    }
}
