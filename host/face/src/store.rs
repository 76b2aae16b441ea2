//! Consent records and encrypted face templates in SQLite.
//!
//! Guarantees, by construction:
//! - a template row cannot exist without an active consent row (SQL trigger, checked again
//!   in code before any frame is processed);
//! - templates are XChaCha20-Poly1305 ciphertexts under the device key, bound to their
//!   subject id as associated data, so a template moved to another subject fails to open;
//! - withdrawal deletes the template with `secure_delete` on and truncates the WAL, so its
//!   bytes are in neither file afterwards.

use crate::engine::{FaceEngine, StageTimings};
use crate::error::StoreError;
use crate::frame::Frame;
use crate::gallery::{Embedding, Gallery};
use crate::key::DeviceKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consent (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    purpose TEXT NOT NULL,
    notice_version TEXT NOT NULL,
    capture TEXT NOT NULL,
    given_at_ms INTEGER NOT NULL,
    withdrawn_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS consent_subject ON consent(subject);
CREATE TABLE IF NOT EXISTS template (
    subject TEXT PRIMARY KEY,
    consent_id INTEGER NOT NULL REFERENCES consent(id),
    created_at_ms INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS template_needs_consent BEFORE INSERT ON template
BEGIN
    SELECT RAISE(ABORT, 'no active consent for this template')
    WHERE NOT EXISTS (SELECT 1 FROM consent
        WHERE id = NEW.consent_id AND subject = NEW.subject AND withdrawn_at_ms IS NULL);
END;
";

/// A consent to face recognition, recorded before any template exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// Pseudonymous subject id (no name, ID number or unit).
    pub subject: String,
    /// What the face is used for, e.g. "entry at the community gates".
    pub purpose: String,
    /// Version of the notice the person was shown.
    pub notice_version: String,
    /// How the consent was captured, e.g. "signed at the property office", "kiosk".
    pub capture: String,
    /// When it was given, Unix milliseconds.
    pub given_at_ms: i64,
}

/// A stored consent with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// Row id of the consent.
    pub id: i64,
    /// What was consented to.
    pub consent: Consent,
    /// When it was withdrawn, Unix milliseconds; None while active.
    pub withdrawn_at_ms: Option<i64>,
}

/// What an enrolment needs of its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollPolicy {
    /// Usable samples needed.
    pub min_samples: usize,
    /// Smallest face side in pixels.
    pub min_face_px: f32,
    /// Smallest sharpness (variance of the Laplacian of the aligned face).
    pub min_sharpness: f32,
    /// Lowest cosine between any two samples, so all samples show one person.
    pub min_agreement: f32,
}

impl Default for EnrollPolicy {
    fn default() -> Self {
        EnrollPolicy { min_samples: 3, min_face_px: 80.0, min_sharpness: 30.0, min_agreement: 0.5 }
    }
}

/// The result of an enrolment. Carries no biometric data.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollReport {
    /// The enrolled subject.
    pub subject: String,
    /// Samples that went into the template.
    pub samples_used: usize,
    /// (index of the frame, why it was not used).
    pub rejected: Vec<(usize, String)>,
}

/// The result of a withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawReport {
    /// The subject whose consent was withdrawn.
    pub subject: String,
    /// True if a template existed and was erased.
    pub template_erased: bool,
    /// Consent records marked withdrawn.
    pub consents_withdrawn: usize,
}

/// Consent records and encrypted templates of one gateway.
pub struct TemplateStore {
    conn: Connection,
    path: PathBuf,
    key: DeviceKey,
}

impl std::fmt::Debug for TemplateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TemplateStore({}, key {})", self.path.display(), self.key.id())
    }
}

/// Checks that a subject id is pseudonymous-looking and safe to log.
pub fn validate_subject(subject: &str) -> Result<(), StoreError> {
    let ok = !subject.is_empty() && subject.len() <= 64 && subject.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidSubject(subject.to_string()))
    }
}

fn aad(subject: &str) -> Vec<u8> {
    let mut v = b"gate-face template v1\0".to_vec();
    v.extend_from_slice(subject.as_bytes());
    v
}

impl TemplateStore {
    /// Opens (or creates) the store at `db_path` under the device key at `key_path`.
    /// Refuses a key other than the one the store's templates were written under.
    pub fn open(db_path: &Path, key_path: &Path) -> Result<TemplateStore, StoreError> {
        let key = DeviceKey::load(key_path)?;
        let db = |source| StoreError::Database { path: db_path.to_path_buf(), source };
        let conn = Connection::open(db_path).map_err(db)?;
        #[cfg(unix)]
        {
            // Only the gate's own user may read the consent records and ciphertexts.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(db_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::File { path: db_path.to_path_buf(), message: format!("cannot restrict permissions to 0600: {e}") })?;
        }
        conn.pragma_update(None, "secure_delete", "ON").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        let store = TemplateStore { conn, path: db_path.to_path_buf(), key };
        let stored: Option<String> = store.conn.query_row("SELECT value FROM meta WHERE name = 'key_id'", [], |r| r.get(0)).optional().map_err(db)?;
        let given = store.key.id();
        match stored {
            Some(s) if s != given => {
                return Err(StoreError::ForeignKey { path: db_path.to_path_buf(), stored: s, given });
            }
            Some(_) => {}
            None => {
                store.conn.execute("INSERT INTO meta (name, value) VALUES ('key_id', ?1)", [&given]).map_err(db)?;
            }
        }
        Ok(store)
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Database { path: self.path.clone(), source }
    }

    /// Records a consent; returns its id. Must precede enrolment.
    pub fn record_consent(&self, consent: &Consent) -> Result<i64, StoreError> {
        validate_subject(&consent.subject)?;
        for (name, v) in [("purpose", &consent.purpose), ("notice_version", &consent.notice_version), ("capture", &consent.capture)] {
            if v.trim().is_empty() {
                return Err(StoreError::InvalidConsent(format!("{name} is empty")));
            }
        }
        self.conn
            .execute(
                "INSERT INTO consent (subject, purpose, notice_version, capture, given_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![consent.subject, consent.purpose, consent.notice_version, consent.capture, consent.given_at_ms],
            )
            .map_err(self.db())?;
        let id = self.conn.last_insert_rowid();
        tracing::info!(subject = %consent.subject, consent_id = id, notice = %consent.notice_version, "face consent recorded");
        Ok(id)
    }

    /// Every consent record of a subject, oldest first (for audits and the resident).
    pub fn consents(&self, subject: &str) -> Result<Vec<ConsentRecord>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, subject, purpose, notice_version, capture, given_at_ms, withdrawn_at_ms FROM consent WHERE subject = ?1 ORDER BY id").map_err(self.db())?;
        let rows = stmt
            .query_map([subject], |r| {
                Ok(ConsentRecord {
                    id: r.get(0)?,
                    consent: Consent { subject: r.get(1)?, purpose: r.get(2)?, notice_version: r.get(3)?, capture: r.get(4)?, given_at_ms: r.get(5)? },
                    withdrawn_at_ms: r.get(6)?,
                })
            })
            .map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    fn active_consent(&self, subject: &str) -> Result<Option<i64>, StoreError> {
        self.conn.query_row("SELECT id FROM consent WHERE subject = ?1 AND withdrawn_at_ms IS NULL ORDER BY id DESC LIMIT 1", [subject], |r| r.get(0)).optional().map_err(self.db())
    }

    /// Enrols a subject from several frames: checks consent first, then each sample's size,
    /// sharpness and pose, and stores the encrypted mean template (replacing an older one).
    pub fn enroll(&self, engine: &FaceEngine, subject: &str, frames: &[Frame], policy: &EnrollPolicy, now_ms: i64) -> Result<EnrollReport, StoreError> {
        validate_subject(subject)?;
        let consent_id = self.active_consent(subject)?.ok_or_else(|| StoreError::NoConsent(subject.to_string()))?;
        let mut samples = Vec::new();
        let mut rejected = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            // The same picture given twice would pass the agreement check with itself.
            if let Some(j) = frames[..i].iter().position(|f| f.same_pixels(frame)) {
                rejected.push((i, format!("same photo as frame {j}")));
                continue;
            }
            match engine.sample(frame, policy.min_face_px, &mut StageTimings::default())? {
                Err(outcome) => rejected.push((i, crate::engine::describe(&outcome))),
                Ok(s) if s.sharpness < policy.min_sharpness => rejected.push((i, "face blurred".into())),
                Ok(s) => samples.push(s.embedding),
            }
        }
        if samples.len() < policy.min_samples.max(1) {
            let reasons = rejected.iter().map(|(i, r)| format!("frame {i}: {r}")).collect::<Vec<_>>().join("; ");
            return Err(StoreError::NotEnoughSamples { subject: subject.into(), accepted: samples.len(), needed: policy.min_samples.max(1), reasons });
        }
        let template = Embedding::mean(&samples).ok_or_else(|| StoreError::InconsistentSamples { subject: subject.into(), score: 0.0 })?;
        let mut agreement = f32::INFINITY;
        for (i, a) in samples.iter().enumerate() {
            for b in &samples[i + 1..] {
                agreement = agreement.min(a.cosine(b));
            }
        }
        if agreement < policy.min_agreement {
            return Err(StoreError::InconsistentSamples { subject: subject.into(), score: agreement });
        }
        self.put_template(subject, consent_id, &template, now_ms)?;
        tracing::info!(subject, samples = samples.len(), rejected = rejected.len(), "face template enrolled");
        Ok(EnrollReport { subject: subject.into(), samples_used: samples.len(), rejected })
    }

    fn seal(&self, subject: &str, template: &Embedding) -> Result<([u8; 24], Vec<u8>), StoreError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Key { path: self.key.path().to_path_buf(), message: format!("no randomness: {e}") })?;
        let cipher = XChaCha20Poly1305::new(self.key.bytes().into());
        let plain = template.to_bytes();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(subject) })
            .map_err(|_| StoreError::Key { path: self.key.path().to_path_buf(), message: "encryption failed".into() })?;
        Ok((nonce, ct))
    }

    fn open_sealed(key: &DeviceKey, subject: &str, nonce: &[u8], ct: &[u8]) -> Result<Embedding, StoreError> {
        let tampered = || StoreError::Tampered { subject: subject.to_string() };
        if nonce.len() != 24 {
            return Err(tampered());
        }
        let cipher = XChaCha20Poly1305::new(key.bytes().into());
        let plain = zeroize::Zeroizing::new(cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad(subject) }).map_err(|_| tampered())?);
        Embedding::from_bytes(&plain).ok_or_else(tampered)
    }

    pub(crate) fn put_template(&self, subject: &str, consent_id: i64, template: &Embedding, now_ms: i64) -> Result<(), StoreError> {
        let (nonce, ct) = self.seal(subject, template)?;
        self.conn
            .execute("INSERT OR REPLACE INTO template (subject, consent_id, created_at_ms, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5)", params![subject, consent_id, now_ms, &nonce[..], ct])
            .map_err(self.db())?;
        self.checkpoint()
    }

    /// Withdraws every consent of the subject and erases its template at once: deleted with
    /// `secure_delete`, then the WAL is checkpointed and truncated.
    pub fn withdraw(&mut self, subject: &str, now_ms: i64) -> Result<WithdrawReport, StoreError> {
        validate_subject(subject)?;
        let path = self.path.clone();
        let db = |source| StoreError::Database { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(db)?;
        let erased = tx.execute("DELETE FROM template WHERE subject = ?1", [subject]).map_err(db)?;
        let withdrawn = tx.execute("UPDATE consent SET withdrawn_at_ms = ?2 WHERE subject = ?1 AND withdrawn_at_ms IS NULL", params![subject, now_ms]).map_err(db)?;
        tx.commit().map_err(db)?;
        self.checkpoint()?;
        tracing::info!(subject, template_erased = erased > 0, consents_withdrawn = withdrawn, "face consent withdrawn");
        Ok(WithdrawReport { subject: subject.into(), template_erased: erased > 0, consents_withdrawn: withdrawn })
    }

    /// Moves every WAL frame into the database and truncates the WAL to zero bytes.
    fn checkpoint(&self) -> Result<(), StoreError> {
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(self.db())?;
        if busy != 0 {
            return Err(StoreError::Database {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("WAL checkpoint blocked by another reader; template bytes may remain in the WAL".into()),
                ),
            });
        }
        Ok(())
    }

    /// Decrypts every template into an in-memory gallery. A template that fails
    /// authentication (tampered, moved, foreign) is an error naming the subject.
    pub fn load_gallery(&self) -> Result<Gallery, StoreError> {
        let count: i64 = self.conn.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).map_err(self.db())?;
        let mut gallery = Gallery::with_capacity(count.max(0) as usize);
        let mut stmt = self.conn.prepare("SELECT subject, nonce, ciphertext FROM template ORDER BY subject").map_err(self.db())?;
        let mut rows = stmt.query([]).map_err(self.db())?;
        while let Some(row) = rows.next().map_err(self.db())? {
            let subject: String = row.get(0).map_err(self.db())?;
            let nonce: Vec<u8> = row.get(1).map_err(self.db())?;
            let ct: Vec<u8> = row.get(2).map_err(self.db())?;
            let e = Self::open_sealed(&self.key, &subject, &nonce, &ct)?;
            gallery.push(subject, &e);
        }
        Ok(gallery)
    }

    /// Subjects that have a template.
    pub fn enrolled(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT subject FROM template ORDER BY subject").map_err(self.db())?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(self.db())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(self.db())
    }

    /// Re-encrypts every template under the key at `new_key_path`, in one transaction,
    /// without re-enrolment. Returns how many templates were re-encrypted.
    pub fn rekey(&mut self, new_key_path: &Path) -> Result<usize, StoreError> {
        let new_key = DeviceKey::load(new_key_path)?;
        let path = self.path.clone();
        let db = |source| StoreError::Database { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(db)?;
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = {
            let mut stmt = tx.prepare("SELECT subject, nonce, ciphertext FROM template").map_err(db)?;
            let it = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db)?;
            it.collect::<Result<_, _>>().map_err(db)?
        };
        let cipher = XChaCha20Poly1305::new(new_key.bytes().into());
        for (subject, nonce, ct) in &rows {
            let e = Self::open_sealed(&self.key, subject, nonce, ct)?;
            let mut fresh = [0u8; 24];
            getrandom::fill(&mut fresh).map_err(|e| StoreError::Key { path: new_key.path().to_path_buf(), message: format!("no randomness: {e}") })?;
            let plain = e.to_bytes();
            let sealed = cipher
                .encrypt(XNonce::from_slice(&fresh), Payload { msg: &plain, aad: &aad(subject) })
                .map_err(|_| StoreError::Key { path: new_key.path().to_path_buf(), message: "encryption failed".into() })?;
            tx.execute("UPDATE template SET nonce = ?2, ciphertext = ?3 WHERE subject = ?1", params![subject, &fresh[..], sealed]).map_err(db)?;
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'key_id'", [new_key.id()]).map_err(db)?;
        tx.commit().map_err(db)?;
        self.key = new_key;
        self.checkpoint()?;
        tracing::info!(templates = rows.len(), key_id = %self.key.id(), "face templates re-keyed");
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::DIM;

    struct Site {
        dir: tempfile::TempDir,
    }

    impl Site {
        fn new() -> Site {
            let dir = tempfile::tempdir().unwrap();
            DeviceKey::create(&dir.path().join("face.key")).unwrap();
            Site { dir }
        }
        fn db(&self) -> PathBuf {
            self.dir.path().join("face.sqlite")
        }
        fn key(&self) -> PathBuf {
            self.dir.path().join("face.key")
        }
        fn open(&self) -> TemplateStore {
            TemplateStore::open(&self.db(), &self.key()).unwrap()
        }
        /// Both files a template's bytes could live in.
        fn files(&self) -> Vec<u8> {
            let mut all = std::fs::read(self.db()).unwrap();
            let wal = self.dir.path().join("face.sqlite-wal");
            if let Ok(w) = std::fs::read(wal) {
                all.extend(w);
            }
            all
        }
    }

    fn consent(subject: &str) -> Consent {
        Consent {
            subject: subject.into(),
            purpose: "entry at the community gates".into(),
            notice_version: "2025-06".into(),
            capture: "signed at the property office".into(),
            given_at_ms: 1_750_000_000_000,
        }
    }

    fn vector(seed: usize) -> Embedding {
        let raw: Vec<f32> = (0..DIM).map(|i| ((i * 31 + seed * 17) % 23) as f32 - 11.0).collect();
        Embedding::normalised(&raw).unwrap()
    }

    fn stored(store: &TemplateStore, subject: &str) -> (Vec<u8>, Vec<u8>) {
        store.conn.query_row("SELECT nonce, ciphertext FROM template WHERE subject = ?1", [subject], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn no_template_can_be_stored_without_an_active_consent() {
        let site = Site::new();
        let store = site.open();
        // The SQL trigger refuses it even when code is bypassed.
        let err = store.put_template("r-17", 1, &vector(1), 0).unwrap_err();
        assert!(err.to_string().contains("no active consent"), "{err}");
        let id = store.record_consent(&consent("r-17")).unwrap();
        store.put_template("r-17", id, &vector(1), 0).unwrap();
        assert_eq!(store.enrolled().unwrap(), vec!["r-17".to_string()]);
        // A consent of another subject does not cover this one.
        assert!(store.put_template("r-18", id, &vector(2), 0).is_err());
    }

    #[test]
    fn withdrawal_leaves_no_template_bytes_in_the_database_or_wal() {
        let site = Site::new();
        let mut store = site.open();
        for (i, s) in ["r-1", "r-2", "r-3"].iter().enumerate() {
            let id = store.record_consent(&consent(s)).unwrap();
            store.put_template(s, id, &vector(i), 10).unwrap();
        }
        let (nonce, ct) = stored(&store, "r-2");
        let before = site.files();
        assert!(contains(&before, &ct) && contains(&before, &nonce), "the scan must see a stored template");

        let report = store.withdraw("r-2", 20).unwrap();
        assert!(report.template_erased);
        assert_eq!(report.consents_withdrawn, 1);

        let after = site.files();
        for chunk in ct.chunks(16).filter(|c| c.len() == 16) {
            assert!(!contains(&after, chunk), "ciphertext bytes survived withdrawal");
        }
        assert!(!contains(&after, &nonce), "nonce survived withdrawal");
        let wal = std::fs::metadata(site.dir.path().join("face.sqlite-wal")).map(|m| m.len()).unwrap_or(0);
        assert_eq!(wal, 0, "WAL must be truncated");
        // The others are intact; the withdrawn one is gone and its consent is marked.
        assert_eq!(store.load_gallery().unwrap().len(), 2);
        assert_eq!(store.enrolled().unwrap(), vec!["r-1".to_string(), "r-3".to_string()]);
        assert_eq!(store.consents("r-2").unwrap()[0].withdrawn_at_ms, Some(20));
        // And a new template needs a new consent.
        assert!(store.put_template("r-2", 2, &vector(9), 30).is_err());
    }

    #[test]
    fn a_tampered_ciphertext_is_rejected_naming_the_subject() {
        let site = Site::new();
        let store = site.open();
        let id = store.record_consent(&consent("r-5")).unwrap();
        store.put_template("r-5", id, &vector(5), 0).unwrap();
        let (_, mut ct) = stored(&store, "r-5");
        ct[100] ^= 0x01; // one flipped bit
        store.conn.execute("UPDATE template SET ciphertext = ?1", [ct]).unwrap();
        let err = store.load_gallery().unwrap_err();
        assert!(matches!(&err, StoreError::Tampered { subject } if subject == "r-5"), "{err}");
    }

    #[test]
    fn a_template_moved_to_another_subject_does_not_open() {
        let site = Site::new();
        let store = site.open();
        let a = store.record_consent(&consent("r-a")).unwrap();
        let b = store.record_consent(&consent("r-b")).unwrap();
        store.put_template("r-a", a, &vector(1), 0).unwrap();
        store.put_template("r-b", b, &vector(2), 0).unwrap();
        store
            .conn
            .execute("UPDATE template SET ciphertext = (SELECT ciphertext FROM template WHERE subject = 'r-a'), nonce = (SELECT nonce FROM template WHERE subject = 'r-a') WHERE subject = 'r-b'", [])
            .unwrap();
        assert!(matches!(store.load_gallery().unwrap_err(), StoreError::Tampered { subject } if subject == "r-b"));
    }

    #[test]
    fn a_foreign_key_file_is_refused_and_a_foreign_ciphertext_does_not_open() {
        let site = Site::new();
        let store = site.open();
        let id = store.record_consent(&consent("r-1")).unwrap();
        store.put_template("r-1", id, &vector(1), 0).unwrap();
        let (nonce, ct) = stored(&store, "r-1");
        drop(store);
        let other = Site::new();
        let err = TemplateStore::open(&site.db(), &other.key()).unwrap_err();
        assert!(matches!(err, StoreError::ForeignKey { .. }), "{err}");
        // A ciphertext copied from another gateway's store fails authentication here.
        let foreign = other.open();
        let fid = foreign.record_consent(&consent("r-1")).unwrap();
        foreign.put_template("r-1", fid, &vector(3), 0).unwrap();
        foreign.conn.execute("UPDATE template SET nonce = ?1, ciphertext = ?2", params![nonce, ct]).unwrap();
        assert!(matches!(foreign.load_gallery().unwrap_err(), StoreError::Tampered { .. }));
    }

    #[test]
    fn rekeying_keeps_every_template_and_retires_the_old_key() {
        let site = Site::new();
        let mut store = site.open();
        for (i, s) in ["r-1", "r-2"].iter().enumerate() {
            let id = store.record_consent(&consent(s)).unwrap();
            store.put_template(s, id, &vector(i), 0).unwrap();
        }
        let (_, old_ct) = stored(&store, "r-1");
        let new_key = site.dir.path().join("face-2.key");
        DeviceKey::create(&new_key).unwrap();
        assert_eq!(store.rekey(&new_key).unwrap(), 2);
        let (_, new_ct) = stored(&store, "r-1");
        assert_ne!(old_ct, new_ct);
        let g = store.load_gallery().unwrap();
        assert_eq!(g.best(&vector(0)).unwrap().0, "r-1");
        drop(store);
        assert!(matches!(TemplateStore::open(&site.db(), &site.key()).unwrap_err(), StoreError::ForeignKey { .. }));
        let reopened = TemplateStore::open(&site.db(), &new_key).unwrap();
        assert_eq!(reopened.load_gallery().unwrap().len(), 2);
    }

    #[test]
    fn consent_needs_a_pseudonymous_id_and_every_field() {
        let site = Site::new();
        let store = site.open();
        let mut c = consent("Zhang San, Bldg 3 #402");
        assert!(matches!(store.record_consent(&c).unwrap_err(), StoreError::InvalidSubject(_)));
        c.subject = "r-9".into();
        c.notice_version = " ".into();
        assert!(store.record_consent(&c).unwrap_err().to_string().contains("notice_version"));
    }
}
