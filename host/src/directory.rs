//! The subject directory in the gateway's SQLite: `<state_dir>/directory.sqlite`.
//!
//! A community of 100,000 residents (or a fleet's 1,000,000 subjects) is too large to
//! re-parse from TOML at every start. The directory is imported once (`gate directory
//! import`, or from `site.subjects` whenever that file changes) into two tables whose
//! UNIQUE constraints refuse a credential value held twice, and loaded at start in one
//! linear pass straight into the compact in-memory [`Directory`].

use crate::config::SubjectEntry;
use crate::credentials::{normalise_plate, Directory, DirectoryError};
use crate::event::{CredentialKind, Role};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A failure of the directory database.
#[derive(Debug, Error)]
pub enum DirectoryDbError {
    #[error("subject directory {path}: {source}")]
    Sql { path: String, source: rusqlite::Error },
    #[error("subject directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("subject directory {path}: {source}")]
    Entry { path: String, source: DirectoryError },
    #[error("subject directory {path}: row {what} is not valid: {why}")]
    Row { path: String, what: String, why: String },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subjects (
    id     TEXT PRIMARY KEY,
    role   TEXT NOT NULL,
    groups TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
-- One holder per credential value: cards and NFC tokens as read, plates normalised,
-- PINs only as their site-bound sha256 (lower-case hex).
CREATE TABLE IF NOT EXISTS credentials (
    kind    TEXT NOT NULL CHECK (kind IN ('card', 'pin', 'nfc', 'plate')),
    value   TEXT NOT NULL CHECK (length(value) > 0),
    subject TEXT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS credentials_by_subject ON credentials(subject);
CREATE TABLE IF NOT EXISTS directory_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub subjects: usize,
    pub credentials: usize,
    /// The directory's version after the import (each import adds one).
    pub version: u64,
}

/// The gateway's directory database.
pub struct DirectoryDb {
    conn: Connection,
    path: PathBuf,
}

/// Where a site keeps its directory database.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("directory.sqlite")
}

/// The directory a gateway serves: the TOML file of `site.subjects` when the config
/// names one (small sites, tests), otherwise `<state_dir>/directory.sqlite` when it exists
/// (filled by `gate directory import`), otherwise an empty one. Visitor-pass keys come
/// from the config either way.
pub fn load_for(cfg: &crate::config::SiteConfig) -> Result<Directory, String> {
    let db = match (&cfg.site.subjects, &cfg.site.state_dir) {
        (None, Some(state)) => DirectoryDb::open_existing(&db_path(state)).map_err(|e| e.to_string())?,
        _ => None,
    };
    let Some(db) = db else { return Directory::from_config(cfg) };
    let mut d = Directory::empty_for(cfg)?;
    let n = db.load_into(&mut d).map_err(|e| e.to_string())?;
    let version = db.version().map_err(|e| e.to_string())?;
    d.set_stored_version(version);
    tracing::info!(subjects = n, version, "subject directory loaded from the state dir");
    d.set_qr_keys(&cfg.qr.issuer_keys)?;
    Ok(d)
}

/// The sha256 (hex) of a directory source file's bytes, recorded with each import.
pub fn source_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Resident => "resident",
        Role::Staff => "staff",
        Role::Visitor => "visitor",
        Role::Guard => "guard",
        Role::Contractor => "contractor",
    }
}

fn role_of(s: &str) -> Option<Role> {
    Some(match s {
        "resident" => Role::Resident,
        "staff" => Role::Staff,
        "visitor" => Role::Visitor,
        "guard" => Role::Guard,
        "contractor" => Role::Contractor,
        _ => return None,
    })
}

/// Creates `path`'s folder (0700) and the file itself (0600) if they do not exist.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    Ok(())
}

impl DirectoryDb {
    /// Opens (or creates, 0600 in a 0700 folder) the directory database at `path`.
    pub fn open(path: &Path) -> Result<DirectoryDb, DirectoryDbError> {
        create_private(path).map_err(|source| DirectoryDbError::Io { path: path.display().to_string(), source })?;
        let sql = |source| DirectoryDbError::Sql { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(DirectoryDb { conn, path: path.to_path_buf() })
    }

    /// Opens the database only if it exists (a site that never imported one has none).
    pub fn open_existing(path: &Path) -> Result<Option<DirectoryDb>, DirectoryDbError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> DirectoryDbError + '_ {
        move |source| DirectoryDbError::Sql { path: self.path.display().to_string(), source }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, DirectoryDbError> {
        self.conn.query_row("SELECT value FROM directory_meta WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(self.sql())
    }

    /// The directory's version: 0 before the first import, one more after each.
    pub fn version(&self) -> Result<u64, DirectoryDbError> {
        Ok(self.meta("version")?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The sha256 of the source file last imported, if any.
    pub fn source_digest(&self) -> Result<Option<String>, DirectoryDbError> {
        self.meta("source_sha256")
    }

    /// How many subjects are stored.
    pub fn count(&self) -> Result<u64, DirectoryDbError> {
        self.conn.query_row("SELECT COUNT(*) FROM subjects", [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64).map_err(self.sql())
    }

    /// Replaces the whole directory by `entries` in one transaction (all or nothing), and
    /// records `digest` as the source it came from. A credential value held by two
    /// subjects is refused (UNIQUE) and nothing changes.
    pub fn import<I: IntoIterator<Item = SubjectEntry>>(&mut self, entries: I, digest: &str) -> Result<ImportSummary, DirectoryDbError> {
        let path = self.path.display().to_string();
        let sql = |source| DirectoryDbError::Sql { path: path.clone(), source };
        // A large import touches every page of both tables: keep them in memory (64 MiB).
        self.conn.pragma_update(None, "cache_size", -65_536).map_err(sql)?;
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute("DELETE FROM credentials", []).map_err(sql)?;
        tx.execute("DELETE FROM subjects", []).map_err(sql)?;
        let (mut subjects, mut credentials) = (0usize, 0usize);
        {
            let mut add_subject = tx.prepare("INSERT INTO subjects (id, role, groups) VALUES (?1, ?2, ?3)").map_err(sql)?;
            let mut add_cred = tx.prepare("INSERT INTO credentials (kind, value, subject) VALUES (?1, ?2, ?3)").map_err(sql)?;
            let mut holder = tx.prepare("SELECT subject FROM credentials WHERE kind = ?1 AND value = ?2").map_err(sql)?;
            for s in entries {
                let groups = serde_json::to_string(&s.groups).unwrap_or_else(|_| "[]".into());
                if s.id.is_empty() {
                    return Err(DirectoryDbError::Entry { path: path.clone(), source: DirectoryError::Id(s.id) });
                }
                add_subject.execute(params![s.id, role_str(s.role), groups]).map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                        DirectoryDbError::Entry { path: path.clone(), source: DirectoryError::Id(s.id.clone()) }
                    }
                    e => sql(e),
                })?;
                subjects += 1;
                let creds = s
                    .cards
                    .iter()
                    .map(|c| (CredentialKind::Card, c.clone()))
                    .chain(s.pin_sha256.iter().map(|p| (CredentialKind::Pin, p.to_ascii_lowercase())))
                    .chain(s.nfc.iter().map(|n| (CredentialKind::Nfc, n.clone())))
                    .chain(s.plates.iter().map(|p| (CredentialKind::Plate, normalise_plate(p))));
                for (kind, value) in creds {
                    if kind == CredentialKind::Pin && crate::credentials::pin_hash_bytes(&value).is_none() {
                        return Err(DirectoryDbError::Entry { path: path.clone(), source: DirectoryError::PinHash(s.id.clone()) });
                    }
                    if let Err(e) = add_cred.execute(params![kind.as_str(), value, s.id]) {
                        return Err(match e {
                            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                                let other: Option<String> = holder.query_row(params![kind.as_str(), value], |r| r.get(0)).optional().map_err(sql)?;
                                match other {
                                    Some(other) => DirectoryDbError::Entry { path: path.clone(), source: DirectoryError::Duplicate { subject: s.id.clone(), kind: kind.as_str(), other } },
                                    None => DirectoryDbError::Entry { path: path.clone(), source: DirectoryError::Value { subject: s.id.clone(), key: "credentials", why: "an empty value" } },
                                }
                            }
                            e => sql(e),
                        });
                    }
                    credentials += 1;
                }
            }
        }
        let version: u64 = tx
            .query_row("SELECT value FROM directory_meta WHERE key = 'version'", [], |r| r.get::<_, String>(0))
            .optional()
            .map_err(sql)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64)
            .saturating_add(1);
        tx.execute("INSERT OR REPLACE INTO directory_meta (key, value) VALUES ('version', ?1), ('source_sha256', ?2)", params![version.to_string(), digest]).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(ImportSummary { subjects, credentials, version })
    }

    /// Loads every subject and credential into `dir` in one linear pass.
    pub fn load_into(&self, dir: &mut Directory) -> Result<usize, DirectoryDbError> {
        let path = self.path.display().to_string();
        let sql = |source| DirectoryDbError::Sql { path: path.clone(), source };
        let n = usize::try_from(self.count()?).unwrap_or(usize::MAX);
        dir.reserve(n);
        // Subjects first, then each credential finds its holder by one hash lookup.
        let mut st = self.conn.prepare("SELECT id, role, groups FROM subjects").map_err(sql)?;
        let mut rows = st.query([]).map_err(sql)?;
        let mut loaded = 0usize;
        while let Some(r) = rows.next().map_err(sql)? {
            let id: String = r.get(0).map_err(sql)?;
            let role: String = r.get(1).map_err(sql)?;
            let groups: String = r.get(2).map_err(sql)?;
            let role = role_of(&role).ok_or_else(|| DirectoryDbError::Row { path: path.clone(), what: format!("subject `{id}`"), why: format!("unknown role `{role}`") })?;
            let groups: Vec<String> = if groups == "[]" {
                Vec::new()
            } else {
                serde_json::from_str(&groups).map_err(|e| DirectoryDbError::Row { path: path.clone(), what: format!("subject `{id}`"), why: format!("groups: {e}") })?
            };
            dir.add_subject(&id, role, groups).map_err(|source| DirectoryDbError::Entry { path: path.clone(), source })?;
            loaded += 1;
        }
        drop(rows);
        let mut st = self.conn.prepare("SELECT kind, value, subject FROM credentials").map_err(sql)?;
        let mut rows = st.query([]).map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            let kind = r.get_ref(0).map_err(sql)?.as_str().map_err(|e| sql(e.into()))?;
            let kind = match kind {
                "card" => CredentialKind::Card,
                "pin" => CredentialKind::Pin,
                "nfc" => CredentialKind::Nfc,
                "plate" => CredentialKind::Plate,
                other => return Err(DirectoryDbError::Row { path: path.clone(), what: "credential".into(), why: format!("unknown kind `{other}`") }),
            };
            let value = r.get_ref(1).map_err(sql)?.as_str().map_err(|e| sql(e.into()))?;
            let subject = r.get_ref(2).map_err(sql)?.as_str().map_err(|e| sql(e.into()))?;
            let idx = dir.position(subject).ok_or_else(|| DirectoryDbError::Row { path: path.clone(), what: format!("{} credential", kind.as_str()), why: format!("no subject `{subject}`") })?;
            dir.add_credential(idx, kind, value).map_err(|source| DirectoryDbError::Entry { path: path.clone(), source })?;
        }
        Ok(loaded)
    }
}

/// The credentials a subject held before a change (as stored), to take out of memory.
type Held = Vec<(CredentialKind, String)>;

/// Most credentials one synced subject may hold, and most groups.
pub const MAX_SYNC_CREDENTIALS: usize = 32;
pub const MAX_SYNC_GROUPS: usize = 64;

/// One validated change from the property platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOp {
    /// Add the subject or replace what it holds; credentials are keyed references.
    Upsert {
        id: String,
        role: Role,
        groups: Vec<String>,
        credentials: Vec<(CredentialKind, String)>,
    },
    Remove {
        id: String,
    },
}

/// How a sync message is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// Incremental changes that bring the directory to `version` (current + 1 exactly).
    Changes { version: u64 },
    /// Page `page` of `pages` of a snapshot at `version`.
    SnapshotPage { version: u64, page: u32, pages: u32 },
}

/// What one sync message did: subjects added, changed and removed, and the version after.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// The directory's version after it (unchanged until a snapshot's last page).
    pub version: u64,
}

/// Checks a platform subject and turns it into a [`SyncOp::Upsert`]; errors name the
/// subject and field. Credentials must be keyed references (`gate credential-ref`): a raw
/// card number or PIN hash is refused, so none ever has to cross the broker.
pub fn sync_upsert(id: &str, role: &str, groups: &[String], credentials: &[String]) -> Result<SyncOp, String> {
    let shown = crate::plugin::text::sanitize(id, 64);
    gate_face::validate_subject(id).map_err(|_| format!("subject {shown:?}: not a pseudonymous id (1-64 of A-Z a-z 0-9 . _ -)"))?;
    let role = role_of(role).ok_or_else(|| format!("subject `{id}`: role `{}` is not resident, staff, visitor, guard or contractor", crate::plugin::text::sanitize(role, 32)))?;
    if groups.len() > MAX_SYNC_GROUPS || groups.iter().any(|g| g.is_empty() || g.len() > 64 || g.chars().any(char::is_control)) {
        return Err(format!("subject `{id}`: groups: at most {MAX_SYNC_GROUPS}, each 1-64 characters without control characters"));
    }
    if credentials.len() > MAX_SYNC_CREDENTIALS {
        return Err(format!("subject `{id}`: credentials: at most {MAX_SYNC_CREDENTIALS}"));
    }
    let mut creds = Vec::with_capacity(credentials.len());
    for c in credentials {
        let kind = [CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc, CredentialKind::Plate].into_iter().find(|k| crate::credentials::is_keyed_ref_of(*k, c));
        match kind {
            Some(k) => creds.push((k, c.clone())),
            None => {
                return Err(format!(
                    "subject `{id}`: credential {:?} is not a keyed reference (card:, pin:, nfc: or plate: and 24 hex digits, from `gate credential-ref`)",
                    crate::plugin::text::sanitize(c, 40)
                ))
            }
        }
    }
    Ok(SyncOp::Upsert { id: id.to_string(), role, groups: groups.to_vec(), credentials: creds })
}

fn kind_of(s: &str) -> Option<CredentialKind> {
    Some(match s {
        "card" => CredentialKind::Card,
        "pin" => CredentialKind::Pin,
        "nfc" => CredentialKind::Nfc,
        "plate" => CredentialKind::Plate,
        _ => return None,
    })
}

impl DirectoryDb {
    /// Applies one sync message to the database in one transaction and then to `dir`,
    /// the directory the gateway serves: all or nothing. A version that is not the next
    /// one, a page out of order, or a credential another subject holds is refused with
    /// the reason and changes nothing.
    pub fn sync(&mut self, dir: &mut Directory, step: SyncStep, ops: &[SyncOp]) -> Result<SyncSummary, String> {
        let path = self.path.display().to_string();
        let sql = |e: rusqlite::Error| format!("subject directory {path}: {e}");
        let tx = self.conn.transaction().map_err(sql)?;
        let meta = |k: &str| -> Result<Option<String>, String> { tx.query_row("SELECT value FROM directory_meta WHERE key = ?1", [k], |r| r.get(0)).optional().map_err(sql) };
        let current: u64 = meta("version")?.and_then(|v| v.parse().ok()).unwrap_or(0);
        let snapshot: Option<(u64, u32)> = meta("snapshot")?.and_then(|v| v.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))));
        match step {
            SyncStep::Changes { version } => {
                if let Some((v, p)) = snapshot {
                    return Err(format!("a snapshot at version {v} is half sent ({p} pages so far): finish it first"));
                }
                if version <= current {
                    return Err(format!("stale: the directory is at version {current}, this change is version {version}"));
                }
                if version != current.saturating_add(1) {
                    return Err(format!("gap: the directory is at version {current}, this change is version {version}; send version {} first, or a snapshot", current.saturating_add(1)));
                }
            }
            SyncStep::SnapshotPage { version, page, pages } => {
                if pages == 0 || page == 0 || page > pages {
                    return Err(format!("page {page} of {pages}: pages are numbered 1..=pages"));
                }
                if version <= current {
                    return Err(format!("stale: the directory is at version {current}, this snapshot is version {version}"));
                }
                let expected = match snapshot {
                    Some((v, p)) if v == version => p.saturating_add(1),
                    _ => 1,
                };
                if page != expected {
                    return Err(format!("snapshot {version}: page {page} arrived, page {expected} was expected (send the snapshot again from page 1)"));
                }
                if page == 1 {
                    tx.execute_batch("CREATE TABLE IF NOT EXISTS snapshot_seen (id TEXT PRIMARY KEY) WITHOUT ROWID; DELETE FROM snapshot_seen;").map_err(sql)?;
                }
            }
        }
        let mut summary = SyncSummary { version: current, ..Default::default() };
        // (id, credentials held before: None when the subject is new, op) for the memory update.
        let mut applied: Vec<(Option<Held>, SyncOp)> = Vec::with_capacity(ops.len());
        let mut all_ops: Vec<SyncOp> = ops.to_vec();
        if let SyncStep::SnapshotPage { page, pages, .. } = step {
            let mut seen = tx.prepare_cached("INSERT OR IGNORE INTO snapshot_seen (id) VALUES (?1)").map_err(sql)?;
            for op in ops {
                if let SyncOp::Upsert { id, .. } = op {
                    seen.execute([id]).map_err(sql)?;
                }
            }
            drop(seen);
            if page == pages {
                let mut st = tx.prepare("SELECT id FROM subjects WHERE id NOT IN (SELECT id FROM snapshot_seen)").map_err(sql)?;
                let gone = st.query_map([], |r| r.get::<_, String>(0)).map_err(sql)?.collect::<Result<Vec<_>, _>>().map_err(sql)?;
                all_ops.extend(gone.into_iter().map(|id| SyncOp::Remove { id }));
            }
        }
        {
            let mut held_st = tx.prepare_cached("SELECT kind, value FROM credentials WHERE subject = ?1").map_err(sql)?;
            let mut exists = tx.prepare_cached("SELECT 1 FROM subjects WHERE id = ?1").map_err(sql)?;
            let mut holder = tx.prepare_cached("SELECT subject FROM credentials WHERE kind = ?1 AND value = ?2").map_err(sql)?;
            for op in all_ops {
                let id = match &op {
                    SyncOp::Upsert { id, .. } | SyncOp::Remove { id } => id.clone(),
                };
                let present = exists.exists([&id]).map_err(sql)?;
                let held: Vec<(CredentialKind, String)> =
                    held_st.query_map([&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(sql)?.filter_map(|r| r.ok().and_then(|(k, v)| Some((kind_of(&k)?, v)))).collect();
                match &op {
                    SyncOp::Remove { .. } => {
                        if !present {
                            continue; // already gone: removing is idempotent
                        }
                        tx.execute("DELETE FROM credentials WHERE subject = ?1", [&id]).map_err(sql)?;
                        tx.execute("DELETE FROM subjects WHERE id = ?1", [&id]).map_err(sql)?;
                        summary.removed.push(id.clone());
                    }
                    SyncOp::Upsert { role, groups, credentials, .. } => {
                        let groups_json = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
                        tx.execute(
                            "INSERT INTO subjects (id, role, groups) VALUES (?1, ?2, ?3) ON CONFLICT(id) DO UPDATE SET role = excluded.role, groups = excluded.groups",
                            params![id, role_str(*role), groups_json],
                        )
                        .map_err(sql)?;
                        tx.execute("DELETE FROM credentials WHERE subject = ?1", [&id]).map_err(sql)?;
                        for (kind, value) in credentials {
                            if let Some(other) = holder.query_row(params![kind.as_str(), value], |r| r.get::<_, String>(0)).optional().map_err(sql)? {
                                return Err(format!("subject `{id}`: the same {} is already held by subject `{other}`", kind.as_str()));
                            }
                            tx.execute("INSERT INTO credentials (kind, value, subject) VALUES (?1, ?2, ?3)", params![kind.as_str(), value, id]).map_err(sql)?;
                        }
                        if present {
                            summary.changed.push(id.clone());
                        } else {
                            summary.added.push(id.clone());
                        }
                    }
                }
                applied.push((present.then_some(held), op));
            }
        }
        let (version, snap) = match step {
            SyncStep::Changes { version } => (Some(version), None),
            SyncStep::SnapshotPage { version, page, pages } if page == pages => (Some(version), None),
            SyncStep::SnapshotPage { version, page, .. } => (None, Some(format!("{version}:{page}"))),
        };
        if let Some(v) = version {
            tx.execute("INSERT OR REPLACE INTO directory_meta (key, value) VALUES ('version', ?1)", [v.to_string()]).map_err(sql)?;
            tx.execute("DELETE FROM directory_meta WHERE key = 'snapshot'", []).map_err(sql)?;
            summary.version = v;
        }
        if let Some(s) = snap {
            tx.execute("INSERT OR REPLACE INTO directory_meta (key, value) VALUES ('snapshot', ?1)", [s]).map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        // The database took it: the served directory follows, subject by subject.
        for (held, op) in applied {
            match op {
                SyncOp::Remove { id } => {
                    dir.remove_subject(&id, held.as_deref().unwrap_or_default());
                }
                SyncOp::Upsert { id, role, groups, credentials } => {
                    let idx = match dir.position(&id) {
                        Some(idx) => {
                            for (kind, value) in held.as_deref().unwrap_or_default() {
                                dir.remove_credential(idx, *kind, value);
                            }
                            dir.update_subject(idx, role, groups);
                            idx
                        }
                        None => dir.add_subject(&id, role, groups).map_err(|e| e.to_string())?,
                    };
                    for (kind, value) in credentials {
                        dir.add_credential(idx, kind, &value).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::pin_hash;

    fn entry(id: &str, card: &str, pin: &str) -> SubjectEntry {
        SubjectEntry {
            id: id.into(),
            role: Role::Resident,
            groups: vec!["b-3".into()],
            cards: vec![card.into()],
            pin_sha256: vec![pin_hash("s", pin)],
            nfc: vec![],
            plates: vec!["浙A 1234".replace("1234", id)],
        }
    }

    #[test]
    fn sync_applies_in_order_all_or_nothing_and_the_served_directory_follows() {
        let tmp = tempfile::tempdir().unwrap();
        let mut db = DirectoryDb::open(&db_path(tmp.path())).unwrap();
        let key = crate::credentials::RefKey::generate().unwrap();
        let mut dir = Directory::new("s");
        dir.set_ref_key(key.clone());
        let card = |n: &str| crate::credentials::keyed_credential_ref(&key, CredentialKind::Card, n);
        let up = |id: &str, c: Vec<String>| sync_upsert(id, "resident", &["b-3".into()], &c).unwrap();
        // Pages in order only; the last one sets the version.
        assert!(db.sync(&mut dir, SyncStep::SnapshotPage { version: 1, page: 2, pages: 2 }, &[]).unwrap_err().contains("page 1 was expected"));
        let s = db.sync(&mut dir, SyncStep::SnapshotPage { version: 1, page: 1, pages: 2 }, &[up("r-1", vec![card("111")])]).unwrap();
        assert_eq!(s.version, 0);
        assert!(db.sync(&mut dir, SyncStep::Changes { version: 1 }, &[]).unwrap_err().contains("half sent"));
        db.sync(&mut dir, SyncStep::SnapshotPage { version: 1, page: 2, pages: 2 }, &[up("r-2", vec![card("222")])]).unwrap();
        assert_eq!((db.version().unwrap(), dir.by_card("111").map(|s| s.id.as_str()), dir.by_card("222").map(|s| s.id.as_str())), (1, Some("r-1"), Some("r-2")));
        // A credential another subject holds: refused, nothing changes (database or memory).
        let err = db.sync(&mut dir, SyncStep::Changes { version: 2 }, &[up("r-3", vec![]), up("r-4", vec![card("111")])]).unwrap_err();
        assert!(err.contains("already held by subject `r-1`"), "{err}");
        assert!(dir.subject("r-3").is_none() && db.version().unwrap() == 1);
        // Stale and gap.
        assert!(db.sync(&mut dir, SyncStep::Changes { version: 1 }, &[]).unwrap_err().contains("stale"));
        assert!(db.sync(&mut dir, SyncStep::Changes { version: 3 }, &[]).unwrap_err().contains("gap"));
        // A card moves from r-1 to r-2, r-1 leaves; a second snapshot drops who it does not name.
        let s = db.sync(&mut dir, SyncStep::Changes { version: 2 }, &[up("r-2", vec![card("111")]), SyncOp::Remove { id: "r-1".into() }]).unwrap_err();
        assert!(s.contains("already held by subject `r-1`"), "order matters: remove first: {s}");
        let s = db.sync(&mut dir, SyncStep::Changes { version: 2 }, &[SyncOp::Remove { id: "r-1".into() }, up("r-2", vec![card("111")])]).unwrap();
        assert_eq!((s.removed, s.changed), (vec!["r-1".to_string()], vec!["r-2".to_string()]));
        assert_eq!((dir.by_card("111").map(|s| s.id.as_str()), dir.by_card("222").map(|s| s.id.as_str()), dir.subject("r-1").is_none(), dir.len()), (Some("r-2"), None, true, 1));
        db.sync(&mut dir, SyncStep::SnapshotPage { version: 5, page: 1, pages: 1 }, &[up("r-7", vec![card("777")])]).unwrap();
        assert_eq!((dir.len(), dir.subject("r-2").is_none(), db.count().unwrap(), db.version().unwrap()), (1, true, 1, 5));
        // What the database holds loads back into the same directory.
        let mut again = Directory::new("s");
        again.set_ref_key(key.clone());
        db.load_into(&mut again).unwrap();
        assert_eq!(again.by_card("777").map(|s| s.id.as_str()), Some("r-7"));
        // Only keyed references and pseudonymous ids are taken.
        assert!(sync_upsert("r-1", "resident", &[], &["12345678".into()]).unwrap_err().contains("not a keyed reference"));
        assert!(sync_upsert("Zhang San 3-402", "resident", &[], &[]).is_err());
        assert!(sync_upsert("r-1", "landlord", &[], &[]).is_err());
    }

    #[test]
    fn an_imported_directory_loads_back_and_resolves_every_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let path = db_path(&tmp.path().join("state"));
        let mut db = DirectoryDb::open(&path).unwrap();
        let s = db.import(vec![entry("r-1", "1001", "111111"), entry("r-2", "1002", "222222")], "abc").unwrap();
        assert_eq!((s.subjects, s.credentials, s.version), (2, 6, 1));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        drop(db);
        let db = DirectoryDb::open_existing(&path).unwrap().expect("exists");
        assert_eq!((db.version().unwrap(), db.source_digest().unwrap().as_deref()), (1, Some("abc")));
        let mut d = Directory::new("s");
        assert_eq!(db.load_into(&mut d).unwrap(), 2);
        assert_eq!(d.by_card("1002").map(|s| s.id.as_str()), Some("r-2"));
        assert_eq!(d.by_pin("111111").map(|s| s.id.as_str()), Some("r-1"));
        assert_eq!(d.by_plate("浙a r-2").map(|s| s.id.as_str()), Some("r-2"));
        assert_eq!(d.subject("r-1").map(|s| s.groups.clone()), Some(vec!["b-3".to_string()]));
    }

    #[test]
    fn a_pin_hash_held_twice_is_refused_and_nothing_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut db = DirectoryDb::open(&db_path(tmp.path())).unwrap();
        db.import(vec![entry("r-1", "1001", "111111")], "one").unwrap();
        let e = db.import(vec![entry("r-1", "1001", "111111"), entry("r-2", "1002", "111111")], "two").unwrap_err();
        assert!(e.to_string().contains("subject `r-2`: the same pin is already held by subject `r-1`"), "{e}");
        let e = db.import(vec![entry("r-1", "1001", "111111"), entry("r-2", "1001", "222222")], "three").unwrap_err();
        assert!(e.to_string().contains("the same card is already held by subject `r-1`"), "{e}");
        assert_eq!((db.count().unwrap(), db.version().unwrap(), db.source_digest().unwrap().as_deref()), (1, 1, Some("one")), "a refused import changes nothing");
        assert!(db.import(vec![entry("r-1", "1001", "111111"), entry("r-1", "1002", "222222")], "four").unwrap_err().to_string().contains("defined twice"));
    }
}
