//! The event log: every decision, alarm and door action, in SQLite (WAL),
//! written before the relay acts. Also the plugins' key-value stores.
//!
//! Events carry pseudonymous subject ids only. The schema is shared with the
//! fleet outbox, which publishes rows in `seq` order.

use crate::event::{DoorMode, Record};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// A failure of the event log; the gateway refuses to open a door it cannot log.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("event log {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("event log write failed: {0}")]
    Write(#[from] rusqlite::Error),
    #[error("event log record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("event log {path}: {what}")]
    Io { path: String, what: String },
}

/// The host's own tables beside `events` (whose definition is gate-fleet's
/// [`gate_fleet::outbox::EVENTS_SCHEMA`], as the outbox reads it).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS plugin_kv (
    plugin TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (plugin, key)
);
-- Access state that outlives a restart: operator door modes, revoked credentials and
-- unit-door PIN hashes. Written with the event that changed them, in one transaction.
CREATE TABLE IF NOT EXISTS door_modes (
    door     TEXT PRIMARY KEY,
    mode     TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revoked_credentials (
    reference TEXT PRIMARY KEY,
    event_id  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unit_pins (
    door       TEXT PRIMARY KEY,
    pin_sha256 TEXT NOT NULL,
    event_id   TEXT NOT NULL
);
-- Visitor passes: entries granted so far and the time step of the last granting code,
-- written in the transaction of the granting decision (a restart does not reset them).
-- A row goes with retention once its pass has expired (it can grant nothing then).
CREATE TABLE IF NOT EXISTS visitor_passes (
    pass         TEXT PRIMARY KEY,
    used         INTEGER NOT NULL,
    last_step    INTEGER NOT NULL,
    not_after_ms INTEGER NOT NULL,
    event_id     TEXT NOT NULL
);
-- Counters of the log: `boot`, one more at every open before any id is handed out; and
-- `max_seq`, the highest seq ever used, kept when retention purges the rows that held it.
CREATE TABLE IF NOT EXISTS log_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// A granting decision's visitor pass, counted with it: the pass id, the step of the code
/// that was granted, and the end of the pass's window (when its count may be purged).
#[derive(Clone, Copy, Debug)]
pub struct PassGrant<'a> {
    pub pass: &'a str,
    pub step: i64,
    pub not_after_ms: i64,
}

/// The gateway's event log.
pub struct EventLog {
    conn: Connection,
    /// `<gateway>-<boot>` for a file-backed log (ids can never repeat across restarts,
    /// even when a crash lost rows); `<gateway>` for an in-memory (replay) log.
    prefix: String,
    next_seq: i64,
    /// The JSON of the record being appended, reused from one append to the next.
    body: Vec<u8>,
    /// Where a damaged log was moved aside when this one was started in its place.
    recovered: Option<std::path::PathBuf>,
}

/// The boot counter kept beside the database (`<db>.boot`), written and synced before
/// the database is used, so rows lost with a damaged WAL cannot bring an old boot back.
fn next_boot(path: &Path, in_db: i64) -> Result<i64, StoreError> {
    use std::io::Write as _;
    let side = path.with_extension("sqlite.boot");
    let io = |what: String| StoreError::Io { path: side.display().to_string(), what };
    let on_disk: i64 = match std::fs::read_to_string(&side) {
        Ok(t) => t.trim().parse().map_err(|_| io("the boot counter is not a number; move it aside only together with the event log".into()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(format!("reading the boot counter: {e}"))),
    };
    let boot = on_disk.max(in_db).checked_add(1).ok_or_else(|| io("the boot counter is exhausted".into()))?;
    let tmp = side.with_extension("boot.tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{boot}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &side)?;
        if let Some(dir) = side.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io(format!("writing the boot counter: {e}")))?;
    Ok(boot)
}

/// Whether the database at `path` passes SQLite's `quick_check`; the first problem if not.
fn damage(path: &Path) -> Option<String> {
    let check = || -> Result<Option<String>, rusqlite::Error> {
        let conn = Connection::open(path)?;
        let first: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        Ok((first != "ok").then_some(first))
    };
    match check() {
        Ok(d) => d,
        Err(e) => Some(e.to_string()),
    }
}

/// Moves a damaged log (and its WAL and shared-memory files) aside as
/// `<name>.damaged-<unix seconds>`; returns the new name of the database.
fn move_aside(path: &Path) -> Result<std::path::PathBuf, StoreError> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut n = 0u32;
    let aside = loop {
        let suffix = if n == 0 { format!("damaged-{secs}") } else { format!("damaged-{secs}-{n}") };
        let name = format!("{}.{suffix}", path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
        let candidate = path.with_file_name(name);
        if !candidate.exists() {
            break candidate;
        }
        n = n.saturating_add(1);
    };
    for ext in ["", "-wal", "-shm"] {
        let from = std::path::PathBuf::from(format!("{}{ext}", path.display()));
        let to = std::path::PathBuf::from(format!("{}{ext}", aside.display()));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|e| StoreError::Io { path: from.display().to_string(), what: format!("moving the damaged log aside to {}: {e}", to.display()) })?;
        }
    }
    Ok(aside)
}

impl EventLog {
    /// Opens (or creates) the log at `path` in WAL mode with full sync. A log that fails
    /// SQLite's `quick_check` is never appended to: it is moved aside as
    /// `<file>.damaged-<unix seconds>` (with its WAL) and a new log is started in its
    /// place ([`EventLog::recovered_from`] says where the old one went).
    pub fn open(path: &Path, gateway: &str) -> Result<EventLog, StoreError> {
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        let mut recovered = None;
        if path.exists() {
            if let Some(problem) = damage(path) {
                let aside = move_aside(path)?;
                tracing::error!(log = %path.display(), moved_to = %aside.display(), %problem, "the event log failed its integrity check; it was moved aside and a new log started");
                recovered = Some(aside);
            }
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        // A log an older gate created world-readable is made owner-only (new ones are, by umask).
        for f in [path.to_path_buf(), crate::files::sibling(path, "-wal"), crate::files::sibling(path, "-shm")] {
            if let Err(e) = crate::files::restrict(&f) {
                tracing::warn!(file = %f.display(), error = %e, "cannot make the event log owner-only");
            }
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        // Purged rows are overwritten, not just unlinked: retention means the bytes are gone.
        conn.pragma_update(None, "secure_delete", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        gate_fleet::outbox::create_event_log(&conn).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let in_db: i64 = conn.query_row("SELECT COALESCE(MAX(value), 0) FROM log_meta WHERE key = 'boot'", [], |r| r.get(0)).map_err(open_err)?;
        let boot = next_boot(path, in_db)?;
        conn.execute("INSERT INTO log_meta (key, value) VALUES ('boot', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [boot]).map_err(open_err)?;
        let mut log = Self::init(conn, &format!("{gateway}-{boot}")).map_err(open_err)?;
        log.recovered = recovered;
        Ok(log)
    }

    /// Where a damaged log was moved aside when this one was opened, if it was.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.recovered.as_deref()
    }

    /// An in-memory log, for replay and tests.
    pub fn in_memory(gateway: &str) -> Result<EventLog, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open { path: ":memory:".into(), source })?;
        Self::init(conn, gateway).map_err(|source| StoreError::Open { path: ":memory:".into(), source })
    }

    fn init(conn: Connection, prefix: &str) -> Result<EventLog, rusqlite::Error> {
        gate_fleet::outbox::create_event_log(&conn)?;
        conn.execute_batch(SCHEMA)?;
        let max: Option<i64> = conn.query_row("SELECT MAX(COALESCE(MAX(seq), 0), COALESCE((SELECT value FROM log_meta WHERE key = 'max_seq'), 0)) FROM events", [], |r| r.get(0))?;
        Ok(EventLog { conn, prefix: prefix.to_string(), next_seq: max.unwrap_or(0).saturating_add(1), body: Vec::with_capacity(512), recovered: None })
    }

    /// The id the next appended record will get; handed to plugins before the decision.
    pub fn next_id(&self) -> String {
        format!("{}-{}", self.prefix, self.next_seq)
    }

    /// Reserves a unique id for a record appended later (an access event is
    /// handed to its plugin under the id its decision will be logged with).
    /// The skipped `seq` keeps the id unique; rows stay in append order.
    pub fn reserve_id(&mut self) -> String {
        let id = self.next_id();
        self.next_seq += 1;
        id
    }

    /// Appends a record durably and returns its unique id.
    pub fn append(&mut self, at_ms: i64, record: &Record) -> Result<String, StoreError> {
        let id = self.next_id();
        self.append_with_id(at_ms, record, id)
    }

    /// Appends a record under an id from `reserve_id`.
    /// Records that change lasting access state (door modes, revocations) update their
    /// state table in the same transaction, so a restart finds what the log says.
    pub fn append_with_id(&mut self, at_ms: i64, record: &Record, id: String) -> Result<String, StoreError> {
        self.append_counting(at_ms, record, id, None)
    }

    /// Like [`EventLog::append_with_id`]; with `pass` (a granting decision for a visitor
    /// pass) the pass's use is counted in the same transaction.
    pub fn append_counting(&mut self, at_ms: i64, record: &Record, id: String, pass: Option<PassGrant<'_>>) -> Result<String, StoreError> {
        let mut buf = std::mem::take(&mut self.body);
        buf.clear();
        let written = serde_json::to_writer(&mut buf, record);
        let result = written.map_err(StoreError::from).and_then(|()| {
            // serde_json writes UTF-8 only.
            let body = std::str::from_utf8(&buf).map_err(|e| StoreError::Encode(serde::ser::Error::custom(e)))?;
            self.insert_with_state(at_ms, record, &id, body, pass)
        });
        self.body = buf;
        result?;
        self.next_seq += 1;
        Ok(id)
    }

    /// Writes the row, and the lasting access state the record changes, in one transaction.
    fn insert_with_state(&mut self, at_ms: i64, record: &Record, id: &str, body: &str, pass: Option<PassGrant<'_>>) -> Result<(), StoreError> {
        let seq = self.next_seq;
        if let Some(g) = pass {
            let tx = self.conn.savepoint()?;
            insert_event(&tx, seq, id, at_ms, record, body)?;
            tx.execute(
                "INSERT INTO visitor_passes (pass, used, last_step, not_after_ms, event_id) VALUES (?1, 1, ?2, ?3, ?4) \
                 ON CONFLICT(pass) DO UPDATE SET used = used + 1, last_step = MAX(last_step, excluded.last_step), event_id = excluded.event_id",
                params![g.pass, g.step, g.not_after_ms, id],
            )?;
            tx.commit()?;
            return Ok(());
        }
        match record {
            Record::DoorMode { door, mode, until_ms, .. } => {
                let tx = self.conn.savepoint()?;
                insert_event(&tx, seq, id, at_ms, record, body)?;
                match (mode, until_ms) {
                    (DoorMode::Normal, _) | (_, None) => tx.execute("DELETE FROM door_modes WHERE door = ?1", [door])?,
                    (m, Some(u)) => tx.execute(
                        "INSERT INTO door_modes (door, mode, until_ms) VALUES (?1, ?2, ?3) ON CONFLICT(door) DO UPDATE SET mode = excluded.mode, until_ms = excluded.until_ms",
                        params![door, m.as_str(), u],
                    )?,
                };
                tx.commit()?;
            }
            Record::Revoked { credential, .. } => {
                let tx = self.conn.savepoint()?;
                insert_event(&tx, seq, id, at_ms, record, body)?;
                tx.execute("INSERT OR REPLACE INTO revoked_credentials (reference, event_id) VALUES (?1, ?2)", params![credential, id])?;
                tx.commit()?;
            }
            Record::Reinstated { credential, .. } => {
                let tx = self.conn.savepoint()?;
                insert_event(&tx, seq, id, at_ms, record, body)?;
                tx.execute("DELETE FROM revoked_credentials WHERE reference = ?1", [credential])?;
                tx.commit()?;
            }
            _ => insert_event(&self.conn, seq, id, at_ms, record, body)?,
        }
        Ok(())
    }

    /// Stores a unit door's new PIN hash together with its (PIN-free) record.
    pub fn replace_unit_pin(&mut self, at_ms: i64, door: &str, pin_sha256: &str, record: &Record) -> Result<String, StoreError> {
        let body = serde_json::to_string(record)?;
        let id = self.next_id();
        let tx = self.conn.savepoint()?;
        tx.execute("INSERT OR REPLACE INTO unit_pins (door, pin_sha256, event_id) VALUES (?1, ?2, ?3)", params![door, pin_sha256, id])?;
        insert_event(&tx, self.next_seq, &id, at_ms, record, &body)?;
        tx.commit()?;
        self.next_seq += 1;
        Ok(id)
    }

    /// Operator door modes in force: (door, mode, until).
    pub fn door_modes(&self) -> Result<Vec<(String, DoorMode, i64)>, StoreError> {
        let mut st = self.conn.prepare("SELECT door, mode, until_ms FROM door_modes")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (door, mode, until) = row?;
            let mode = match mode.as_str() {
                "locked" => DoorMode::Locked,
                "held-open" => DoorMode::HeldOpen,
                _ => continue,
            };
            out.push((door, mode, until));
        }
        Ok(out)
    }

    /// Renames a revoked reference (an old unkeyed one re-derived with the site's
    /// reference key); the revocation's event id is kept.
    pub fn rename_revoked(&mut self, old: &str, new: &str) -> Result<(), StoreError> {
        self.conn.execute("UPDATE OR REPLACE revoked_credentials SET reference = ?2 WHERE reference = ?1", params![old, new])?;
        Ok(())
    }

    /// Every revoked credential reference.
    pub fn revoked(&self) -> Result<Vec<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT reference FROM revoked_credentials")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A visitor pass's uses so far and the step of its last granting code (zero uses if never used).
    pub fn pass_use(&self, pass: &str) -> Result<crate::visitor::PassUse, StoreError> {
        let row: Option<(i64, i64)> = self.conn.query_row("SELECT used, last_step FROM visitor_passes WHERE pass = ?1", [pass], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        Ok(row.map_or_else(Default::default, |(used, last)| crate::visitor::PassUse { used: u32::try_from(used).unwrap_or(u32::MAX), last_step: Some(last) }))
    }

    /// Unit doors' current PIN hashes: (door, sha256 hex).
    pub fn unit_pins(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare("SELECT door, pin_sha256 FROM unit_pins")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Starts one transaction for many records. Replay uses it: its in-memory
    /// log needs no per-record durability, and the gateway in service never does.
    pub fn begin_batch(&mut self) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch("BEGIN")?)
    }

    /// Commits a batch started by `begin_batch`.
    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    /// Drops the records of a turn that failed half-way (nothing of it was acted on).
    pub fn rollback_turn(&mut self) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    /// Opens one transaction for the records of one turn of the service loop (group
    /// commit: one fsync for every record of the turn instead of one each), unless a
    /// transaction is already open (replay's batch). Returns whether it opened one.
    pub fn begin_turn(&mut self) -> Result<bool, StoreError> {
        if !self.conn.is_autocommit() {
            return Ok(false);
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(true)
    }

    /// Deletes at most `limit` records older than their bound (alarms by `alarms_before_ms`,
    /// everything else by `others_before_ms`), oldest first; returns how many went. Called in
    /// small batches so a large purge never holds the log for long.
    pub fn purge_batch(&mut self, others_before_ms: i64, alarms_before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let tx = self.conn.savepoint()?;
        // The highest seq handed out (reserved ids included) outlives the rows.
        tx.execute("INSERT INTO log_meta (key, value) VALUES ('max_seq', ?1) ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)", [self.next_seq.saturating_sub(1)])?;
        // Oldest first by time, through `events_at`: only rows older than the later bound
        // are read, never the whole log.
        let n = tx.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at_ms < MAX(?1, ?2) AND ((kind = 'alarm' AND at_ms < ?2) OR (kind <> 'alarm' AND at_ms < ?1)) ORDER BY at_ms LIMIT ?3)",
            params![others_before_ms, alarms_before_ms, limit],
        )?;
        // Use counts of visitor passes that expired before the events' bound: they grant nothing.
        tx.execute("DELETE FROM visitor_passes WHERE not_after_ms < ?1", [others_before_ms])?;
        tx.commit()?;
        Ok(n as u64)
    }

    /// After a purge: copies the WAL into the database and truncates it, so no old page image
    /// of a purged row stays in the WAL. False if a reader kept it from finishing (try later).
    /// Never waits for a reader: the door loop calls it.
    pub fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let busy = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0));
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(busy? == 0)
    }

    /// How many records the log holds.
    pub fn count(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?)
    }

    /// The most recent records, newest last, as (id, body JSON).
    pub fn tail(&self, n: usize) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare("SELECT id, body FROM (SELECT seq, id, body FROM events ORDER BY seq DESC LIMIT ?1) ORDER BY seq")?;
        let rows = st.query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Loads a plugin's persisted key-value store.
    pub fn kv_load(&self, plugin: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT key, value FROM plugin_kv WHERE plugin = ?1")?;
        let rows = st.query_map([plugin], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Persists the changes a successful plugin call made (None = delete).
    pub fn kv_apply(&mut self, plugin: &str, changes: &BTreeMap<String, Option<Vec<u8>>>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // A savepoint nests inside a replay batch as well as standing alone.
        let tx = self.conn.savepoint()?;
        for (k, v) in changes {
            match v {
                Some(v) => {
                    tx.prepare_cached("INSERT INTO plugin_kv (plugin, key, value) VALUES (?1, ?2, ?3) ON CONFLICT(plugin, key) DO UPDATE SET value = excluded.value")?.execute(params![plugin, k, v])?
                }
                None => tx.prepare_cached("DELETE FROM plugin_kv WHERE plugin = ?1 AND key = ?2")?.execute(params![plugin, k])?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// Records of `kind` at or after `since_ms`, newest first, at most `limit`, as
    /// (at_ms, body JSON): what a guard station asks for.
    pub fn recent(&self, kind: &str, since_ms: i64, limit: u32) -> Result<Vec<(i64, String)>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT at_ms, body FROM events WHERE kind = ?1 AND at_ms >= ?2 ORDER BY seq DESC LIMIT ?3")?;
        let rows = st.query_map(params![kind, since_ms, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Reads one stored record by id (for tests and tools).
    pub fn get(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT body FROM events WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }
}

/// Writes one row of the event log.
fn insert_event(conn: &Connection, seq: i64, id: &str, at_ms: i64, record: &Record, body: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO events (seq, id, at_ms, kind, door, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![seq, id, at_ms, record.kind(), record.door(), body])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AlarmKind, Record};

    #[test]
    fn a_turn_is_committed_at_once_or_dropped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let rec = Record::Alarm { door: "d".into(), alarm: AlarmKind::Fire, active: true };
        let mut log = EventLog::open(&path, "gw").unwrap();
        assert!(log.begin_turn().unwrap());
        assert!(!log.begin_turn().unwrap(), "a turn inside a turn (or replay's batch) opens nothing");
        log.append(1, &rec).unwrap();
        log.append(2, &rec).unwrap();
        log.commit_batch().unwrap();
        assert!(log.begin_turn().unwrap());
        log.append(3, &rec).unwrap();
        log.rollback_turn().unwrap();
        drop(log);
        let log = EventLog::open(&path, "gw").unwrap();
        assert_eq!(log.count().unwrap(), 2, "the committed turn stays, the dropped one is gone");
    }

    #[test]
    fn ids_are_unique_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let rec = Record::Alarm { door: "d".into(), alarm: AlarmKind::Fire, active: true };
        let mut log = EventLog::open(&path, "gw").unwrap();
        assert_eq!(log.append(1, &rec).unwrap(), "gw-1-1");
        assert_eq!(log.append(2, &rec).unwrap(), "gw-1-2");
        drop(log);
        let mut log = EventLog::open(&path, "gw").unwrap();
        assert_eq!(log.next_id(), "gw-2-3", "each open is a new boot");
        assert_eq!(log.append(3, &rec).unwrap(), "gw-2-3");
        assert_eq!(log.count().unwrap(), 3);
        // A reserved id is never reused, even by rows appended before it is written.
        let reserved = log.reserve_id();
        assert_eq!(reserved, "gw-2-4");
        assert_eq!(log.append(4, &rec).unwrap(), "gw-2-5");
        assert_eq!(log.append_with_id(5, &rec, reserved).unwrap(), "gw-2-4");
        assert!(log.get("gw-1-2").unwrap().unwrap().contains("fire"));
        assert!(log.recovered_from().is_none());
    }

    #[test]
    fn kv_changes_persist_and_delete() {
        let mut log = EventLog::in_memory("gw").unwrap();
        let mut ch = BTreeMap::new();
        ch.insert("a".to_string(), Some(b"1".to_vec()));
        ch.insert("b".to_string(), Some(b"2".to_vec()));
        log.kv_apply("p", &ch).unwrap();
        let mut del = BTreeMap::new();
        del.insert("a".to_string(), None);
        log.kv_apply("p", &del).unwrap();
        let kv = log.kv_load("p").unwrap();
        assert_eq!(kv.len(), 1);
        assert_eq!(kv["b"], b"2");
        assert!(log.kv_load("other").unwrap().is_empty());
    }

    #[test]
    fn access_state_is_written_with_its_event_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let mut log = EventLog::open(&path, "gw").unwrap();
        let mode = |door: &str, mode, until_ms| Record::DoorMode { door: door.into(), mode, until_ms, by: "remote:ops".into() };
        log.append(1, &mode("a", DoorMode::Locked, Some(100))).unwrap();
        log.append(2, &mode("b", DoorMode::HeldOpen, Some(200))).unwrap();
        log.append(3, &mode("b", DoorMode::Normal, None)).unwrap();
        log.append(4, &Record::Revoked { credential: "card:0123456789abcdef01234567".into(), holder: None, reason: "lost".into(), by: "remote:ops".into() }).unwrap();
        log.append(5, &Record::Revoked { credential: "subject:r-1".into(), holder: None, reason: "moved out".into(), by: "remote:ops".into() }).unwrap();
        log.append(6, &Record::Reinstated { credential: "subject:r-1".into(), holder: None, reason: "by mistake".into(), by: "remote:ops".into() }).unwrap();
        let id = log.replace_unit_pin(7, "a", "ab12", &Record::UnitPin { door: "a".into(), by: "remote:ops".into() }).unwrap();
        let grant = Record::Alarm { door: "a".into(), alarm: AlarmKind::Fire, active: false };
        for step in [10, 12] {
            let id = log.next_id();
            log.append_counting(8, &grant, id, Some(PassGrant { pass: "p-1", step, not_after_ms: 1_000 })).unwrap();
        }
        drop(log);
        let log = EventLog::open(&path, "gw").unwrap();
        assert_eq!(log.door_modes().unwrap(), vec![("a".to_string(), DoorMode::Locked, 100)]);
        assert_eq!(log.revoked().unwrap(), vec!["card:0123456789abcdef01234567".to_string()]);
        assert_eq!(log.unit_pins().unwrap(), vec![("a".to_string(), "ab12".to_string())]);
        let body = log.get(&id).unwrap().unwrap();
        assert!(body.contains("unit-pin") && !body.contains("ab12"), "the PIN hash stays out of the event: {body}");
        assert_eq!(log.pass_use("p-1").unwrap(), crate::visitor::PassUse { used: 2, last_step: Some(12) });
        assert_eq!(log.pass_use("p-2").unwrap(), crate::visitor::PassUse::default());
        assert_eq!(log.count().unwrap(), 9);
        // Retention: the count stays while the pass may still grant, and goes once it expired.
        let mut log = log;
        log.purge_batch(1_000, 0, 10).unwrap();
        assert_eq!(log.pass_use("p-1").unwrap().used, 2);
        log.purge_batch(1_001, 0, 10).unwrap();
        assert_eq!(log.pass_use("p-1").unwrap(), crate::visitor::PassUse::default());
    }

    /// Every id in a log file.
    fn ids(path: &Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut st = conn.prepare("SELECT id FROM events").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn a_crash_that_loses_wal_rows_never_brings_an_id_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let rec = Record::Alarm { door: "d".into(), alarm: AlarmKind::Fire, active: true };
        let mut log = EventLog::open(&path, "gw").unwrap();
        log.append(1, &rec).unwrap();
        log.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        // The state a kill -9 leaves: the database and a WAL with the later rows...
        let handed_out: Vec<String> = (2..=6).map(|t| log.append(t, &rec).unwrap()).collect();
        let crash = dir.path().join("crash");
        std::fs::create_dir(&crash).unwrap();
        let copy = crash.join("events.sqlite");
        for ext in ["", "-wal"] {
            std::fs::copy(format!("{}{ext}", path.display()), format!("{}{ext}", copy.display())).unwrap();
        }
        std::fs::copy(path.with_extension("sqlite.boot"), copy.with_extension("sqlite.boot")).unwrap();
        drop(log);
        // ...whose WAL was damaged (a torn write): SQLite drops the frames past it.
        let wal = format!("{}-wal", copy.display());
        let mut bytes = std::fs::read(&wal).unwrap();
        let n = bytes.len();
        for b in &mut bytes[40..n.min(200)] {
            *b ^= 0xa5;
        }
        std::fs::write(&wal, bytes).unwrap();
        let mut log = EventLog::open(&copy, "gw").unwrap();
        let after: Vec<String> = (0..10).map(|t| log.append(100 + t, &rec).unwrap()).collect();
        drop(log);
        for id in &after {
            assert!(!handed_out.contains(id), "{id} was already given to an event before the crash");
        }
        assert!(ids(&copy).len() < 6 + 10, "the damaged WAL lost rows (else this test shows nothing)");
    }

    #[test]
    fn a_damaged_log_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let rec = Record::Alarm { door: "d".into(), alarm: AlarmKind::Fire, active: true };
        let mut log = EventLog::open(&path, "gw").unwrap();
        let before: Vec<String> = (0..200).map(|t| log.append(t, &rec).unwrap()).collect();
        log.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        for b in &mut bytes[4096..n.min(4096 * 3)] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let mut log = EventLog::open(&path, "gw").unwrap();
        let aside = log.recovered_from().expect("recovered").to_path_buf();
        assert!(aside.file_name().unwrap().to_string_lossy().starts_with("events.sqlite.damaged-"), "{}", aside.display());
        assert!(aside.exists(), "the damaged log is kept for inspection");
        assert_eq!(log.count().unwrap(), 0, "a new log");
        let id = log.append(1, &rec).unwrap();
        assert!(!before.contains(&id), "{id} repeats an id of the damaged log");
        assert_eq!(id, "gw-2-1");
    }
}
