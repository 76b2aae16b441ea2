//! The fleet layer's own SQLite database (jobs, per-plugin deployment sequences, seen
//! command ids, command log, outbox cursor), so a restart loses no job state and replays
//! stay refused. It is a file of its own (`fleet/fleet.sqlite` beside the event log), so
//! fleet traffic never takes the event log's write lock: the gateway loop is the only
//! writer of the event log. Nothing is written for a message whose signature did not
//! verify, and rejected jobs are kept to the newest [`MAX_REJECTED_JOBS`].

use crate::commands::SeenCommands;
use crate::messages::{JobState, JobStatus};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use thiserror::Error;

/// A database problem, naming the file and what was being done.
#[derive(Debug, Error)]
#[error("fleet store {path}: {what}: {source}")]
pub struct StoreError {
    pub path: String,
    pub what: &'static str,
    #[source]
    pub source: rusqlite::Error,
}

/// Jobs, sequences, seen commands and the command log.
pub struct FleetStore {
    conn: Connection,
    path: String,
}

/// Rejected jobs kept (newest first); older rejections are forgotten.
pub const MAX_REJECTED_JOBS: i64 = 1000;

/// The tables a store of an older version kept in the event log, copied once on open.
const LEGACY_TABLES: [&str; 4] = ["fleet_jobs", "fleet_sequences", "fleet_seen_commands", "fleet_command_log"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_jobs (
    job_id TEXT PRIMARY KEY, plugin TEXT, state TEXT NOT NULL, status TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_sequences (plugin TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_seen_commands (id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_command_log (
    id TEXT NOT NULL, sender TEXT, action TEXT NOT NULL, ok INTEGER NOT NULL, code TEXT NOT NULL,
    detail TEXT NOT NULL, at_ms INTEGER NOT NULL);
";

impl FleetStore {
    /// Opens (creating the file, private to the gateway's user, and its tables if needed)
    /// the database at `path`, in WAL mode so readers never wait for the writer.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let e = |what| {
            let p = p.clone();
            move |source| StoreError { path: p, what, source }
        };
        let conn = Connection::open(path).map_err(e("opening"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e("switching to WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(e("setting synchronous"))?;
        Self::init(conn, p)
    }

    /// Copies, once, the fleet tables an older version kept in the event log at `events`
    /// (jobs, sequences — so old bundles stay refused —, seen commands and the command log).
    /// The event log is only read. Returns how many rows were copied.
    pub fn migrate_from(&self, events: &Path) -> Result<usize, StoreError> {
        let done: Option<String> = self.conn.query_row("SELECT value FROM fleet_meta WHERE key = 'migrated'", [], |r| r.get(0)).optional().map_err(self.err("reading the migration mark"))?;
        if done.is_some() || !events.exists() {
            return Ok(0);
        }
        let uri = format!("file:{}?mode=ro", events.display());
        self.conn.execute("ATTACH DATABASE ?1 AS legacy", [&uri]).map_err(self.err("opening the event log to migrate fleet tables"))?;
        let copied = (|| {
            let mut n = 0;
            for t in LEGACY_TABLES {
                let present: i64 = self.conn.query_row("SELECT COUNT(*) FROM legacy.sqlite_master WHERE type = 'table' AND name = ?1", [t], |r| r.get(0))?;
                if present > 0 {
                    n += self.conn.execute(&format!("INSERT OR IGNORE INTO main.{t} SELECT * FROM legacy.{t}"), [])?;
                }
            }
            self.conn.execute("INSERT INTO fleet_meta (key, value) VALUES ('migrated', ?1)", [events.display().to_string()])?;
            Ok(n)
        })();
        let _ = self.conn.execute("DETACH DATABASE legacy", []);
        copied.map_err(self.err("copying fleet tables from the event log"))
    }

    /// An in-memory store (tests, tools).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError { path: ":memory:".into(), what: "opening", source })?;
        Self::init(conn, ":memory:".into())
    }

    fn init(conn: Connection, path: String) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|source| StoreError { path: path.clone(), what: "setting busy timeout", source })?;
        conn.execute_batch(SCHEMA).map_err(|source| StoreError { path: path.clone(), what: "creating fleet tables", source })?;
        Ok(Self { conn, path })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError { path: self.path.clone(), what, source }
    }

    /// Saves the latest status of a job.
    pub fn put_job(&self, s: &JobStatus) -> Result<(), StoreError> {
        let body = serde_json::to_string(s).unwrap_or_default();
        self.conn
            .execute(
                "INSERT INTO fleet_jobs (job_id, plugin, state, status, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(job_id) DO UPDATE SET plugin = excluded.plugin, state = excluded.state, status = excluded.status, updated_ms = excluded.updated_ms",
                params![s.job_id, s.plugin, s.state.as_str(), body, s.at_ms],
            )
            .map_err(self.err("saving a job"))?;
        if s.state == JobState::Rejected {
            self.conn
                .execute(
                    "DELETE FROM fleet_jobs WHERE state = ?1 AND rowid NOT IN (SELECT rowid FROM fleet_jobs WHERE state = ?1 ORDER BY updated_ms DESC, rowid DESC LIMIT ?2)",
                    params![JobState::Rejected.as_str(), MAX_REJECTED_JOBS],
                )
                .map_err(self.err("forgetting old rejected jobs"))?;
        }
        Ok(())
    }

    /// The stored status of a job.
    pub fn job(&self, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
        let body: Option<String> = self.conn.query_row("SELECT status FROM fleet_jobs WHERE job_id = ?1", [job_id], |r| r.get(0)).optional().map_err(self.err("reading a job"))?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// The most recently updated job.
    pub fn last_job(&self) -> Result<Option<JobStatus>, StoreError> {
        let body: Option<String> =
            self.conn.query_row("SELECT status FROM fleet_jobs ORDER BY updated_ms DESC, rowid DESC LIMIT 1", [], |r| r.get(0)).optional().map_err(self.err("reading the last job"))?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Jobs left queued / in progress by a crash or power loss.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobStatus>, StoreError> {
        let mut st = self.conn.prepare("SELECT status FROM fleet_jobs WHERE state IN (?1, ?2)").map_err(self.err("listing jobs"))?;
        let rows = st.query_map([JobState::Queued.as_str(), JobState::InProgress.as_str()], |r| r.get::<_, String>(0)).map_err(self.err("listing jobs"))?;
        Ok(rows.filter_map(|r| r.ok()).filter_map(|b| serde_json::from_str(&b).ok()).collect())
    }

    /// Last deployment sequence accepted for `plugin`.
    pub fn last_sequence(&self, plugin: &str) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = self.conn.query_row("SELECT last_sequence FROM fleet_sequences WHERE plugin = ?1", [plugin], |r| r.get(0)).optional().map_err(self.err("reading a sequence"))?;
        Ok(v.map(|v| v as u64))
    }

    /// Records `sequence` as accepted for `plugin` (never lowers it).
    pub fn accept_sequence(&self, plugin: &str, sequence: u64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO fleet_sequences (plugin, last_sequence) VALUES (?1, ?2)
                 ON CONFLICT(plugin) DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)",
                params![plugin, sequence as i64],
            )
            .map_err(self.err("saving a sequence"))?;
        Ok(())
    }

    /// Appends a command and its outcome to the command log (who sent what, and what happened).
    pub fn log_command(&self, e: &CommandLogEntry) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO fleet_command_log (id, sender, action, ok, code, detail, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![e.id, e.sender, e.action, e.ok, e.code, e.detail, e.at_ms],
            )
            .map_err(self.err("logging a command"))?;
        Ok(())
    }

    /// The command log, oldest first.
    pub fn command_log(&self) -> Result<Vec<CommandLogEntry>, StoreError> {
        let mut st = self.conn.prepare("SELECT id, sender, action, ok, code, detail, at_ms FROM fleet_command_log ORDER BY rowid").map_err(self.err("reading the command log"))?;
        let rows = st
            .query_map([], |r| Ok(CommandLogEntry { id: r.get(0)?, sender: r.get(1)?, action: r.get(2)?, ok: r.get(3)?, code: r.get(4)?, detail: r.get(5)?, at_ms: r.get(6)? }))
            .map_err(self.err("reading the command log"))?;
        Ok(rows.filter_map(|r| r.ok()).collect())
    }
}

/// One remote command as logged: who sent it (verified key id; None when refused before
/// the signature verified), what it asked (action JSON), and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLogEntry {
    pub id: String,
    pub sender: Option<String>,
    pub action: String,
    pub ok: bool,
    pub code: String,
    pub detail: String,
    pub at_ms: i64,
}

impl SeenCommands for FleetStore {
    fn record_once(&mut self, id: &str, expires_at_ms: i64, now_ms: i64) -> bool {
        // A database error counts as "seen": refusing a command is the safe side.
        if self.conn.execute("DELETE FROM fleet_seen_commands WHERE expires_ms < ?1", [now_ms]).is_err() {
            return false;
        }
        matches!(self.conn.execute("INSERT OR IGNORE INTO fleet_seen_commands (id, expires_ms) VALUES (?1, ?2)", params![id, expires_at_ms]), Ok(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_sequences_and_seen_commands_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.sqlite");
        {
            let mut s = FleetStore::open(&path).unwrap();
            let st = JobStatus {
                job_id: "j1".into(),
                gateway: "g".into(),
                state: JobState::InProgress,
                step: None,
                plugin: Some("p".into()),
                version: None,
                code: None,
                reason: None,
                signer: None,
                at_ms: 5,
            };
            s.put_job(&st).unwrap();
            s.accept_sequence("p", 7).unwrap();
            s.accept_sequence("p", 3).unwrap();
            assert!(s.record_once("c1", 100, 10));
        }
        let mut s = FleetStore::open(&path).unwrap();
        assert_eq!(s.unfinished_jobs().unwrap().len(), 1);
        assert_eq!(s.job("j1").unwrap().unwrap().state, JobState::InProgress);
        assert_eq!(s.last_sequence("p").unwrap(), Some(7));
        assert!(!s.record_once("c1", 100, 20), "command id accepted twice across a restart");
        assert!(s.record_once("c1", 300, 200), "expired ids are forgotten");
    }

    fn job(id: &str, state: JobState, at_ms: i64) -> JobStatus {
        JobStatus { job_id: id.into(), gateway: "g".into(), state, step: None, plugin: Some("p".into()), version: None, code: None, reason: None, signer: None, at_ms }
    }

    #[test]
    fn tables_an_older_version_kept_in_the_event_log_are_copied_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.sqlite");
        {
            // An older gateway kept its fleet tables in the event log.
            let old = FleetStore::open(&events).unwrap();
            old.put_job(&job("j1", JobState::Succeeded, 5)).unwrap();
            old.accept_sequence("p", 41).unwrap();
            old.log_command(&CommandLogEntry { id: "c1".into(), sender: Some("ops".into()), action: "{}".into(), ok: true, code: "ok".into(), detail: String::new(), at_ms: 6 }).unwrap();
        }
        let store = FleetStore::open(&dir.path().join("fleet.sqlite")).unwrap();
        assert_eq!(store.migrate_from(&events).unwrap(), 3);
        assert_eq!(store.last_sequence("p").unwrap(), Some(41), "an old bundle's sequence must stay refused");
        assert_eq!(store.job("j1").unwrap().unwrap().state, JobState::Succeeded);
        assert_eq!(store.command_log().unwrap().len(), 1);
        assert_eq!(store.migrate_from(&events).unwrap(), 0, "copied twice");
        assert_eq!(store.command_log().unwrap().len(), 1);
    }

    #[test]
    fn only_the_newest_rejected_jobs_are_kept() {
        let s = FleetStore::in_memory().unwrap();
        s.put_job(&job("good", JobState::Succeeded, 0)).unwrap();
        for i in 0..MAX_REJECTED_JOBS + 50 {
            s.put_job(&job(&format!("r{i}"), JobState::Rejected, i + 1)).unwrap();
        }
        let n: i64 = s.conn.query_row("SELECT COUNT(*) FROM fleet_jobs WHERE state = 'rejected'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, MAX_REJECTED_JOBS);
        assert!(s.job("r0").unwrap().is_none() && s.job(&format!("r{}", MAX_REJECTED_JOBS + 49)).unwrap().is_some());
        assert!(s.job("good").unwrap().is_some(), "a finished job was forgotten");
    }
}
