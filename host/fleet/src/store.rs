//! The fleet layer's own SQLite tables (jobs, per-plugin deployment sequences, seen
//! command ids, command log), so a restart loses no job state and replays stay refused.
//! It lives in the host's database file next to the event log, in tables prefixed `fleet_`.

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

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_jobs (
    job_id TEXT PRIMARY KEY, plugin TEXT, state TEXT NOT NULL, status TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_sequences (plugin TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_seen_commands (id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_command_log (
    id TEXT NOT NULL, sender TEXT, action TEXT NOT NULL, ok INTEGER NOT NULL, code TEXT NOT NULL,
    detail TEXT NOT NULL, at_ms INTEGER NOT NULL);
";

impl FleetStore {
    /// Opens (creating the tables if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| StoreError { path: p.clone(), what: "opening", source })?;
        Self::init(conn, p)
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
        Ok(())
    }

    /// The stored status of a job.
    pub fn job(&self, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
        let body: Option<String> = self.conn.query_row("SELECT status FROM fleet_jobs WHERE job_id = ?1", [job_id], |r| r.get(0)).optional().map_err(self.err("reading a job"))?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// The most recently updated job.
    pub fn last_job(&self) -> Result<Option<JobStatus>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT status FROM fleet_jobs ORDER BY updated_ms DESC, rowid DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(self.err("reading the last job"))?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Jobs left queued / in progress by a crash or power loss.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobStatus>, StoreError> {
        let mut st = self.conn.prepare("SELECT status FROM fleet_jobs WHERE state IN (?1, ?2)").map_err(self.err("listing jobs"))?;
        let rows = st
            .query_map([JobState::Queued.as_str(), JobState::InProgress.as_str()], |r| r.get::<_, String>(0))
            .map_err(self.err("listing jobs"))?;
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
            let st = JobStatus { job_id: "j1".into(), gateway: "g".into(), state: JobState::InProgress, step: None, plugin: Some("p".into()), version: None, code: None, reason: None, signer: None, at_ms: 5 };
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
}
