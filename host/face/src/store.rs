//! Consent records and encrypted face templates in SQLite.
//!
//! Guarantees, by construction:
//! - a template row cannot exist without an active consent row (SQL trigger, checked again
//!   in code before any frame is processed);
//! - templates are XChaCha20-Poly1305 ciphertexts under the device key, bound to their
//!   subject id as associated data, so a template moved to another subject fails to open;
//! - erasure (withdrawal, purges) cannot be blocked or half-done: the store runs in rollback-
//!   journal mode with `secure_delete`, so the commit that deletes a template overwrites its
//!   cell in the database file itself and no reader can pin an old copy of the page (there is
//!   no WAL); a reader only delays the commit (busy timeout) and a timed-out erasure changes
//!   nothing. After the commit the files are scanned for the nonce and ciphertext; success
//!   is reported only when they are gone, otherwise the erasure stays pending (a hash of the
//!   nonce, never the nonce) and every later withdrawal, purge or open finishes it.

use crate::engine::{FaceEngine, StageTimings};
use crate::error::StoreError;
use crate::frame::Frame;
use crate::gallery::{Embedding, Gallery};
use crate::key::DeviceKey;
use crate::transform::{self, Rotation};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long an operation waits for another connection (a reader) to let go of the store.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    ciphertext BLOB NOT NULL,
    last_matched_ms INTEGER
);
CREATE TABLE IF NOT EXISTS erasure (
    nonce_sha256 BLOB PRIMARY KEY,
    subject TEXT NOT NULL,
    deleted_at_ms INTEGER NOT NULL
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
    /// Faces at least this big (smaller side, pixels) count when a photo must show exactly
    /// one person: a group photo is refused, a face on a poster far behind is not counted.
    pub min_counted_face_px: f32,
}

impl Default for EnrollPolicy {
    fn default() -> Self {
        EnrollPolicy { min_samples: 3, min_face_px: 80.0, min_sharpness: 30.0, min_agreement: 0.5, min_counted_face_px: 24.0 }
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
    /// Erasures left pending by an earlier failure that this call finished.
    pub pending_finished: usize,
}

/// Consent records and encrypted templates of one gateway.
pub struct TemplateStore {
    conn: Connection,
    path: PathBuf,
    key: DeviceKey,
    /// The site's secret rotation, derived from `key`: templates are stored under it.
    rotation: Arc<Rotation>,
    busy: Duration,
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

/// A stored template as it sits in the database: (subject, nonce, ciphertext).
type Sealed = (String, Vec<u8>, Vec<u8>);

/// Every stored template, read inside the transaction that re-seals them (the transform
/// migration and re-keying).
fn sealed_templates(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<Vec<Sealed>> {
    let mut stmt = tx.prepare("SELECT subject, nonce, ciphertext FROM template")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
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
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        conn.pragma_update(None, "secure_delete", "ON").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        // Rollback journal, not WAL: a WAL reader can pin an old page image (with a deleted
        // template in it) for as long as it likes; with a rollback journal the only copy of
        // a page is the database file's, and the journal is deleted at commit.
        let mode: String = conn.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0)).unwrap_or_else(|_| "wal".into());
        if !mode.eq_ignore_ascii_case("delete") {
            // A store created by an older gate and still open in WAL mode elsewhere: the
            // scan after every erasure still guards it, and the next open switches it.
            tracing::warn!(path = %db_path.display(), mode = %mode, "face template store could not leave WAL mode (another process has it open); erasures are verified by scanning");
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Stores from before retention have no `last_matched_ms`: add it (NULL = never matched).
        let has_last: bool = conn.query_row("SELECT count(*) FROM pragma_table_info('template') WHERE name = 'last_matched_ms'", [], |r| r.get::<_, i64>(0)).map_err(db)? > 0;
        if !has_last {
            conn.execute_batch("ALTER TABLE template ADD COLUMN last_matched_ms INTEGER").map_err(db)?;
        }
        let rotation = Arc::new(Rotation::from_key(key.bytes()));
        let mut store = TemplateStore { conn, path: db_path.to_path_buf(), key, rotation, busy: BUSY_TIMEOUT };
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
        store.migrate_transform()?;
        match store.finish_erasures() {
            Ok(0) => {}
            Ok(n) => tracing::info!(erasures = n, "pending face template erasures finished"),
            // Still pending: said once here; the next withdrawal or open tries again.
            Err(e) => tracing::warn!(error = %e, "a pending face template erasure is not finished yet"),
        }
        Ok(store)
    }

    /// Brings a store written before templates were rotated (no `transform` in `meta`) under
    /// the site's rotation, in one transaction; refuses a transform this build does not know.
    fn migrate_transform(&mut self) -> Result<(), StoreError> {
        let stored: Option<String> = self.conn.query_row("SELECT value FROM meta WHERE name = 'transform'", [], |r| r.get(0)).optional().map_err(self.db())?;
        match stored.as_deref() {
            Some(transform::NAME) => return Ok(()),
            Some(other) => {
                return Err(StoreError::File {
                    path: self.path.clone(),
                    message: format!("templates are stored under transform `{other}`, which this gate does not know (it knows `{}`)", transform::NAME),
                })
            }
            None => {}
        }
        let path = self.path.clone();
        let db = |source| StoreError::Database { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let rows = sealed_templates(&tx).map_err(db)?;
        for (subject, nonce, ct) in &rows {
            let plain = Self::open_sealed(&self.key, subject, nonce, ct)?;
            let (nonce, ct) = Self::seal_with(&self.key, subject, &self.rotation.apply(&plain))?;
            tx.execute("UPDATE template SET nonce = ?2, ciphertext = ?3 WHERE subject = ?1", params![subject, &nonce[..], ct]).map_err(db)?;
        }
        tx.execute("INSERT INTO meta (name, value) VALUES ('transform', ?1)", [transform::NAME]).map_err(db)?;
        tx.commit().map_err(db)?;
        if !rows.is_empty() {
            tracing::info!(templates = rows.len(), transform = transform::NAME, "face templates brought under the site's secret transform");
        }
        Ok(())
    }

    /// How long operations wait for other connections to let go (default [`BUSY_TIMEOUT`]).
    pub fn set_busy_timeout(&mut self, wait: Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(wait).map_err(self.db())?;
        self.busy = wait;
        Ok(())
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

    /// Enrols a subject from several named photos: checks consent first, then that each
    /// photo is new (by pixels, not name), shows exactly one face, and that face's size,
    /// sharpness and pose; stores the encrypted mean template (replacing an older one).
    /// Every refusal names the photo and the reason.
    pub fn enroll(&self, engine: &FaceEngine, subject: &str, photos: &[(String, Frame)], policy: &EnrollPolicy, now_ms: i64) -> Result<EnrollReport, StoreError> {
        validate_subject(subject)?;
        let consent_id = self.active_consent(subject)?.ok_or_else(|| StoreError::NoConsent(subject.to_string()))?;
        let mut samples = Vec::new();
        let mut rejected = Vec::new();
        for (i, (_, frame)) in photos.iter().enumerate() {
            // The same picture given twice would pass the agreement check with itself.
            if let Some((earlier, _)) = photos[..i].iter().find(|(_, f)| f.same_pixels(frame)) {
                rejected.push((i, format!("same photo as {earlier}")));
                continue;
            }
            match engine.sample(frame, policy.min_face_px, &mut StageTimings::default())? {
                Err(outcome) => rejected.push((i, crate::engine::describe(&outcome))),
                Ok(s) if s.face_sides.iter().filter(|&&side| side >= policy.min_counted_face_px).count() > 1 => {
                    let n = s.face_sides.iter().filter(|&&side| side >= policy.min_counted_face_px).count();
                    rejected.push((i, format!("{n} faces in the photo; an enrolment photo must show exactly one person")));
                }
                Ok(s) if s.sharpness < policy.min_sharpness => rejected.push((i, "face blurred".into())),
                Ok(s) => samples.push(s.embedding),
            }
        }
        if samples.len() < policy.min_samples.max(1) {
            let name = |i: usize| photos.get(i).map_or("?", |(n, _)| n.as_str());
            let reasons = rejected.iter().map(|(i, r)| format!("{}: {r}", name(*i))).collect::<Vec<_>>().join("; ");
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

    /// Encrypts a template under the site's rotation and key.
    fn seal(&self, subject: &str, template: &Embedding) -> Result<([u8; 24], Vec<u8>), StoreError> {
        Self::seal_with(&self.key, subject, &self.rotation.apply(template))
    }

    /// Encrypts an (already rotated) template under `key`, bound to the subject.
    fn seal_with(key: &DeviceKey, subject: &str, rotated: &Embedding) -> Result<([u8; 24], Vec<u8>), StoreError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Key { path: key.path().to_path_buf(), message: format!("no randomness: {e}") })?;
        let cipher = XChaCha20Poly1305::new(key.bytes().into());
        let plain = rotated.to_bytes();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(subject) })
            .map_err(|_| StoreError::Key { path: key.path().to_path_buf(), message: "encryption failed".into() })?;
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

    /// Withdraws every consent of the subject and erases its template at once, for real:
    /// see [`TemplateStore::erase`]. Idempotent: a second call finds nothing to delete and
    /// finishes any erasure an earlier call left pending.
    pub fn withdraw(&mut self, subject: &str, now_ms: i64) -> Result<WithdrawReport, StoreError> {
        validate_subject(subject)?;
        let (erased, withdrawn, pending_finished) = self.erase(subject, now_ms, true)?;
        tracing::info!(subject, template_erased = erased, consents_withdrawn = withdrawn, "face consent withdrawn");
        Ok(WithdrawReport { subject: subject.into(), template_erased: erased, consents_withdrawn: withdrawn, pending_finished })
    }

    /// Erases a subject's template by the site's retention rules (the subject left the
    /// directory, or the template went unused), as thoroughly as a withdrawal; the consent
    /// records stay as they are. Returns whether a template existed.
    pub fn purge(&mut self, subject: &str, now_ms: i64, reason: &str) -> Result<bool, StoreError> {
        let (erased, _, _) = self.erase(subject, now_ms, false)?;
        if erased {
            tracing::info!(subject, reason, "face template erased by retention");
        }
        Ok(erased)
    }

    /// Subjects whose template was last matched (or, never matched, enrolled) before `before_ms`.
    pub fn unused_since(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT subject FROM template WHERE coalesce(last_matched_ms, created_at_ms) < ?1 ORDER BY subject").map_err(self.db())?;
        let rows = stmt.query_map([before_ms], |r| r.get(0)).map_err(self.db())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(self.db())
    }

    /// Notes that a subject's template matched at `now_ms` (for `unused_days`); written at
    /// most once an hour per subject, so matching does not keep the store busy.
    pub fn mark_matched(&self, subject: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE template SET last_matched_ms = ?2 WHERE subject = ?1 AND (last_matched_ms IS NULL OR last_matched_ms < ?2 - 3600000)", params![subject, now_ms])
            .map_err(self.db())?;
        Ok(())
    }

    /// Erases a subject's template (and, with `withdraw`, marks its consents withdrawn) in
    /// one transaction that also records the erasure as pending; then proves the bytes are
    /// gone from every file of the store and only then clears the pending record.
    /// Returns (template erased, consents withdrawn, earlier pending erasures finished).
    fn erase(&mut self, subject: &str, now_ms: i64, withdraw: bool) -> Result<(bool, usize, usize), StoreError> {
        let path = self.path.clone();
        let waited_ms = self.busy.as_millis() as u64;
        let db = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => StoreError::Busy { path: path.clone(), waited_ms },
            _ => StoreError::Database { path: path.clone(), source },
        };
        // IMMEDIATE: the write lock is taken (or waited for) before anything is read.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let sealed: Option<(Vec<u8>, Vec<u8>)> = tx.query_row("SELECT nonce, ciphertext FROM template WHERE subject = ?1", [subject], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(db)?;
        if let Some((nonce, _)) = &sealed {
            tx.execute("INSERT OR REPLACE INTO erasure (nonce_sha256, subject, deleted_at_ms) VALUES (?1, ?2, ?3)", params![&Sha256::digest(nonce)[..], subject, now_ms]).map_err(db)?;
        }
        tx.execute("DELETE FROM template WHERE subject = ?1", [subject]).map_err(db)?;
        let withdrawn = if withdraw { tx.execute("UPDATE consent SET withdrawn_at_ms = ?2 WHERE subject = ?1 AND withdrawn_at_ms IS NULL", params![subject, now_ms]).map_err(db)? } else { 0 };
        // A commit that cannot get the lock in time fails and rolls back: nothing half-done.
        tx.commit().map_err(db)?;
        self.checkpoint()?;
        if let Some((nonce, ct)) = &sealed {
            // The exact bytes are known here: every 16-byte piece of the ciphertext too.
            let mut needles: Vec<&[u8]> = vec![nonce];
            needles.extend(ct.chunks(16).filter(|c| c.len() == 16));
            if let Some(file) = self.find_in_files(&needles)? {
                self.compact()?;
                if self.find_in_files(&needles)?.is_some() {
                    return Err(StoreError::NotErased { path: self.path.clone(), subject: subject.into(), file });
                }
            }
            // Proven gone: this erasure is no longer pending.
            self.conn.execute("DELETE FROM erasure WHERE nonce_sha256 = ?1", [&Sha256::digest(nonce)[..]]).map_err(self.db())?;
        }
        let finished = self.finish_erasures()?;
        Ok((sealed.is_some(), withdrawn, finished))
    }

    /// Proves every pending erasure done (no window of any store file hashes to a pending
    /// nonce's hash, after compacting if needed) and clears it. Returns how many were finished.
    fn finish_erasures(&self) -> Result<usize, StoreError> {
        let pending: Vec<(Vec<u8>, String)> = {
            let mut stmt = self.conn.prepare("SELECT nonce_sha256, subject FROM erasure").map_err(self.db())?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.db())?;
            rows.collect::<Result<_, _>>().map_err(self.db())?
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let hashes: Vec<&[u8]> = pending.iter().map(|(h, _)| h.as_slice()).collect();
        if self.find_hashed(&hashes)?.is_some() {
            self.compact()?;
        }
        if let Some((file, i)) = self.find_hashed(&hashes)? {
            return Err(StoreError::NotErased { path: self.path.clone(), subject: pending[i].1.clone(), file });
        }
        self.conn.execute("DELETE FROM erasure", []).map_err(self.db())?;
        self.checkpoint()?;
        Ok(pending.len())
    }

    /// Rewrites the database from its live rows (VACUUM), leaving no deleted bytes behind.
    fn compact(&self) -> Result<(), StoreError> {
        tracing::info!(path = %self.path.display(), "compacting the face template store to erase deleted bytes");
        self.conn.execute_batch("VACUUM").map_err(self.db())?;
        self.checkpoint()
    }

    /// Every file the store's bytes can be in: the database, its rollback journal and WAL.
    fn files(&self) -> Vec<PathBuf> {
        let name = self.path.as_os_str().to_owned();
        let with = |suffix: &str| {
            let mut n = name.clone();
            n.push(suffix);
            PathBuf::from(n)
        };
        vec![self.path.clone(), with("-journal"), with("-wal")]
    }

    fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::File { path: path.to_path_buf(), message: format!("cannot read to verify an erasure: {e}") }),
        }
    }

    /// The first store file containing any of `needles`.
    fn find_in_files(&self, needles: &[&[u8]]) -> Result<Option<PathBuf>, StoreError> {
        for f in self.files() {
            let Some(bytes) = Self::read_file(&f)? else { continue };
            if needles.iter().any(|n| !n.is_empty() && bytes.windows(n.len()).any(|w| w == *n)) {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// The first store file with a 24-byte window whose sha256 is one of `hashes`, and which.
    fn find_hashed(&self, hashes: &[&[u8]]) -> Result<Option<(PathBuf, usize)>, StoreError> {
        for f in self.files() {
            let Some(bytes) = Self::read_file(&f)? else { continue };
            for w in bytes.windows(24) {
                let h = Sha256::digest(w);
                if let Some(i) = hashes.iter().position(|x| *x == &h[..]) {
                    return Ok(Some((f, i)));
                }
            }
        }
        Ok(None)
    }

    /// Moves every WAL frame into the database and truncates the WAL to zero bytes (only
    /// for a store still in WAL mode; in rollback-journal mode there is no WAL).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).map_err(self.db())?;
        if busy != 0 {
            return Err(StoreError::Busy { path: self.path.clone(), waited_ms: self.busy.as_millis() as u64 });
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
        gallery.set_rotation(self.rotation.clone());
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
        let new_rotation = Arc::new(Rotation::from_key(new_key.bytes()));
        let path = self.path.clone();
        let db = |source| StoreError::Database { path: path.clone(), source };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        let rows = sealed_templates(&tx).map_err(db)?;
        for (subject, nonce, ct) in &rows {
            // Undo the old site's rotation, apply the new one: the references are renewed
            // (unlinkable to the old ones) without re-enrolment.
            let plain = self.rotation.invert(&Self::open_sealed(&self.key, subject, nonce, ct)?);
            let (fresh, sealed) = Self::seal_with(&new_key, subject, &new_rotation.apply(&plain))?;
            tx.execute("UPDATE template SET nonce = ?2, ciphertext = ?3 WHERE subject = ?1", params![subject, &fresh[..], sealed]).map_err(db)?;
        }
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'key_id'", [new_key.id()]).map_err(db)?;
        tx.commit().map_err(db)?;
        self.key = new_key;
        self.rotation = new_rotation;
        self.checkpoint()?;
        tracing::info!(templates = rows.len(), key_id = %self.key.id(), "face templates re-keyed under a new key and a new secret transform");
        Ok(rows.len())
    }

    /// The stored (rotated) vector of a subject, decrypted: what someone holding this site's
    /// key file would see. For the unlinkability measurement only.
    #[cfg(test)]
    pub(crate) fn stored_vector(&self, subject: &str) -> Result<Embedding, StoreError> {
        let (nonce, ct): (Vec<u8>, Vec<u8>) = self.conn.query_row("SELECT nonce, ciphertext FROM template WHERE subject = ?1", [subject], |r| Ok((r.get(0)?, r.get(1)?))).map_err(self.db())?;
        Self::open_sealed(&self.key, subject, &nonce, &ct)
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

    fn gone(site: &Site, nonce: &[u8], ct: &[u8]) -> bool {
        let all = site.files();
        let journal = std::fs::read(site.dir.path().join("face.sqlite-journal")).unwrap_or_default();
        let all = [all, journal].concat();
        !contains(&all, nonce) && ct.chunks(16).filter(|c| c.len() == 16).all(|c| !contains(&all, c))
    }

    /// Another connection in a read transaction, as a backup or an inspector's sqlite3 holds it.
    fn reader(site: &Site) -> Connection {
        let r = Connection::open(site.db()).unwrap();
        r.execute_batch("BEGIN").unwrap();
        let n: i64 = r.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap();
        assert!(n > 0);
        r
    }

    #[test]
    fn withdrawal_waits_out_a_concurrent_reader_and_then_leaves_no_bytes() {
        let site = Site::new();
        let mut store = site.open();
        let id = store.record_consent(&consent("r-1")).unwrap();
        store.put_template("r-1", id, &vector(1), 0).unwrap();
        let (nonce, ct) = stored(&store, "r-1");
        let r = reader(&site);
        // The reader finishes its transaction a moment later, while the withdrawal waits.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            r.execute_batch("COMMIT").unwrap();
            r
        });
        let report = store.withdraw("r-1", 5).unwrap();
        let r = t.join().unwrap();
        assert!(report.template_erased);
        assert!(gone(&site, &nonce, &ct), "template bytes survived a withdrawal with a concurrent reader");
        // The reader, still connected, sees nothing either.
        let n: i64 = r.query_row("SELECT count(*) FROM template", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_withdrawal_blocked_too_long_changes_nothing_and_a_retry_finishes_the_job() {
        let site = Site::new();
        let mut store = site.open();
        let id = store.record_consent(&consent("r-1")).unwrap();
        store.put_template("r-1", id, &vector(1), 0).unwrap();
        let (nonce, ct) = stored(&store, "r-1");
        store.set_busy_timeout(Duration::from_millis(100)).unwrap();
        let r = reader(&site);
        let err = store.withdraw("r-1", 5).unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        // Nothing half-done: the template and the consent are as they were.
        assert_eq!(store.enrolled().unwrap(), vec!["r-1".to_string()]);
        assert_eq!(store.consents("r-1").unwrap()[0].withdrawn_at_ms, None);
        r.execute_batch("COMMIT").unwrap();
        let report = store.withdraw("r-1", 6).unwrap();
        assert!(report.template_erased && report.consents_withdrawn == 1);
        assert!(gone(&site, &nonce, &ct));
        // Idempotent: again, nothing to do and no error.
        let again = store.withdraw("r-1", 7).unwrap();
        assert!(!again.template_erased && again.consents_withdrawn == 0);
    }

    #[test]
    fn an_erasure_left_pending_by_a_crash_is_finished_by_the_next_open() {
        let site = Site::new();
        let store = site.open();
        for (i, s) in ["r-1", "r-2"].iter().enumerate() {
            let id = store.record_consent(&consent(s)).unwrap();
            store.put_template(s, id, &vector(i), 0).unwrap();
        }
        let (nonce, ct) = stored(&store, "r-1");
        drop(store);
        // A deletion that was committed but never scrubbed (as if the process died between
        // the commit and the overwrite): the bytes are still in the free space of the file.
        let c = Connection::open(site.db()).unwrap();
        c.pragma_update(None, "secure_delete", "OFF").unwrap();
        c.execute("INSERT INTO erasure (nonce_sha256, subject, deleted_at_ms) VALUES (?1, 'r-1', 1)", [&Sha256::digest(&nonce)[..]]).unwrap();
        c.execute("DELETE FROM template WHERE subject = 'r-1'", []).unwrap();
        drop(c);
        assert!(!gone(&site, &nonce, &ct), "the test needs leftover bytes to start from");
        let store = site.open();
        assert!(gone(&site, &nonce, &ct), "opening the store finishes the pending erasure");
        let pending: i64 = store.conn.query_row("SELECT count(*) FROM erasure", [], |r| r.get(0)).unwrap();
        assert_eq!(pending, 0);
        assert_eq!(store.load_gallery().unwrap().len(), 1, "the other template is intact");
    }

    #[test]
    fn unused_templates_are_found_by_their_last_match_and_purged_for_real() {
        let site = Site::new();
        let mut store = site.open();
        const DAY: i64 = 86_400_000;
        for (i, s) in ["r-1", "r-2", "r-3"].iter().enumerate() {
            let id = store.record_consent(&consent(s)).unwrap();
            store.put_template(s, id, &vector(i), 10 * DAY).unwrap();
        }
        store.mark_matched("r-2", 95 * DAY).unwrap();
        // r-1 and r-3 were enrolled on day 10 and never matched; r-2 matched on day 95.
        assert_eq!(store.unused_since(100 * DAY - 30 * DAY).unwrap(), vec!["r-1".to_string(), "r-3".to_string()]);
        let (nonce, ct) = stored(&store, "r-1");
        assert!(store.purge("r-1", 100 * DAY, "not matched for 30 days").unwrap());
        assert!(gone(&site, &nonce, &ct));
        assert!(!store.purge("r-1", 100 * DAY, "again").unwrap(), "idempotent");
        // Purging is not withdrawing: the consent stays on record, active.
        assert_eq!(store.consents("r-1").unwrap()[0].withdrawn_at_ms, None);
        assert_eq!(store.enrolled().unwrap(), vec!["r-2".to_string(), "r-3".to_string()]);
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
