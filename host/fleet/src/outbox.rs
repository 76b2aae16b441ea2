//! Store-and-forward over the host's SQLite event log: events are read in `seq` order,
//! handed to the link in a bounded window, and the persisted cursor advances only over
//! events the broker acknowledged (PUBACK) — at-least-once, in order. While the broker is
//! unreachable nothing is read; when the backlog passes the configured retention the
//! oldest unpublished events are skipped and counted (the event log itself is the host's
//! and is not touched).
//!
//! The host's table: `CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
//! at_ms INTEGER NOT NULL, kind TEXT NOT NULL, door TEXT, body TEXT NOT NULL);`
//! The event log is only read here; the cursor and dropped count (`outbox_state`) live in
//! the fleet's own database, so publishing never takes the event log's write lock.

use crate::messages::{EventMessage, OutboxStats};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::VecDeque;
use std::path::Path;
use thiserror::Error;

/// A database problem, naming the file and the step.
#[derive(Debug, Error)]
#[error("outbox {path}: {what}: {source}")]
pub struct OutboxError {
    pub path: String,
    pub what: &'static str,
    #[source]
    pub source: rusqlite::Error,
}

/// How much unpublished backlog the gateway keeps for the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most unpublished events kept; older ones are skipped (and counted) past it.
    pub max_pending: u64,
    /// Unpublished events older than this are skipped (and counted); None = no age bound.
    pub max_age_ms: Option<i64>,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_pending: 1_000_000, max_age_ms: Some(7 * 24 * 3600 * 1000) }
    }
}

/// One row of the event log, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub seq: i64,
    pub id: String,
    pub at_ms: i64,
    pub kind: String,
    pub door: Option<String>,
    pub body: String,
}

impl OutboxEvent {
    /// True for alarm events (published on the `alarms` topic).
    pub fn is_alarm(&self) -> bool {
        self.kind == "alarm"
    }
    /// The JSON payload. A body that is not JSON is carried as a JSON string, never lost.
    pub fn to_message(&self) -> EventMessage {
        let body = serde_json::from_str(&self.body).unwrap_or_else(|_| serde_json::Value::String(self.body.clone()));
        EventMessage { id: self.id.clone(), seq: self.seq, at_ms: self.at_ms, kind: self.kind.clone(), door: self.door.clone(), body }
    }
}

/// The cursor over the event log and the in-flight window.
pub struct Outbox {
    /// The event log, read only.
    conn: Connection,
    path: String,
    /// Where the cursor is kept (the fleet database).
    state: Connection,
    state_path: String,
    retention: Retention,
    /// Highest seq acknowledged (persisted).
    cursor: i64,
    /// Highest seq handed out for publishing.
    sent: i64,
    dropped: u64,
    inflight: VecDeque<(i64, bool)>,
    unsaved_acks: u32,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS outbox_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), cursor INTEGER NOT NULL, dropped INTEGER NOT NULL);
INSERT OR IGNORE INTO outbox_state (id, cursor, dropped) VALUES (1, 0, 0);";

/// Acks between cursor writes while draining (the cursor is also written when the window empties).
const SAVE_EVERY: u32 = 256;

impl Outbox {
    /// Reads the host's event log at `events` (read only, WAL friendly) and keeps its cursor
    /// in the database at `state`. A cursor an older version kept in the event log itself
    /// is taken over the first time.
    pub fn open(events: &Path, state: &Path, retention: Retention) -> Result<Self, OutboxError> {
        let p = events.display().to_string();
        let sp = state.display().to_string();
        let e = |path: &String, what| {
            let path = path.clone();
            move |source| OutboxError { path, what, source }
        };
        let conn = Connection::open_with_flags(events, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(e(&p, "opening the event log"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(e(&p, "setting busy timeout"))?;
        let st = Connection::open(state).map_err(e(&sp, "opening"))?;
        st.busy_timeout(std::time::Duration::from_secs(5)).map_err(e(&sp, "setting busy timeout"))?;
        st.pragma_update(None, "journal_mode", "WAL").map_err(e(&sp, "switching to WAL"))?;
        let fresh: i64 = st.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox_state'", [], |r| r.get(0)).map_err(e(&sp, "reading the schema"))?;
        st.execute_batch(SCHEMA).map_err(e(&sp, "creating outbox_state"))?;
        if fresh == 0 {
            let legacy: Option<(i64, i64)> = conn.query_row("SELECT cursor, dropped FROM outbox_state WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?))).ok();
            if let Some((cursor, dropped)) = legacy {
                st.execute("UPDATE outbox_state SET cursor = ?1, dropped = ?2 WHERE id = 1", params![cursor, dropped]).map_err(e(&sp, "taking over the cursor"))?;
                tracing::info!(cursor, dropped, "outbox cursor moved from the event log to the fleet database");
            }
        }
        let (cursor, dropped): (i64, i64) = st.query_row("SELECT cursor, dropped FROM outbox_state WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?))).map_err(e(&sp, "reading the cursor"))?;
        Ok(Self { conn, path: p, state: st, state_path: sp, retention, cursor, sent: cursor, dropped: dropped.max(0) as u64, inflight: VecDeque::new(), unsaved_acks: 0 })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> OutboxError + '_ {
        move |source| OutboxError { path: self.path.clone(), what, source }
    }

    /// Highest acknowledged seq.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    /// Events handed out and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Pending (stored, unacknowledged) and dropped counts.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let pending: i64 = self.conn.query_row("SELECT COUNT(*) FROM events WHERE seq > ?1", [self.cursor], |r| r.get(0)).map_err(self.err("counting pending events"))?;
        Ok(OutboxStats { pending: pending as u64, dropped: self.dropped })
    }

    /// Skips unpublished events beyond the retention bound (count, then age), counting
    /// them. Only runs with nothing in flight; returns how many were dropped now.
    pub fn enforce_retention(&mut self, now_ms: i64) -> Result<u64, OutboxError> {
        if !self.inflight.is_empty() {
            return Ok(0);
        }
        let mut new_cursor = self.cursor;
        let pending = self.stats()?.pending;
        if pending > self.retention.max_pending {
            let skip = (pending - self.retention.max_pending) as i64;
            new_cursor =
                self.conn.query_row("SELECT seq FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1 OFFSET ?2", params![self.cursor, skip - 1], |r| r.get(0)).map_err(self.err("applying retention"))?;
        }
        if let Some(age) = self.retention.max_age_ms {
            let old: Option<i64> = self
                .conn
                .query_row("SELECT MAX(seq) FROM events WHERE seq > ?1 AND at_ms < ?2", params![new_cursor, now_ms - age], |r| r.get(0))
                .optional()
                .map_err(self.err("applying retention"))?
                .flatten();
            if let Some(s) = old {
                new_cursor = new_cursor.max(s);
            }
        }
        if new_cursor == self.cursor {
            return Ok(0);
        }
        let n: i64 = self.conn.query_row("SELECT COUNT(*) FROM events WHERE seq > ?1 AND seq <= ?2", params![self.cursor, new_cursor], |r| r.get(0)).map_err(self.err("applying retention"))?;
        self.dropped += n as u64;
        self.cursor = new_cursor;
        self.sent = new_cursor;
        self.save()?;
        tracing::warn!(dropped = n, total_dropped = self.dropped, "outbox retention exceeded: oldest unpublished events dropped");
        Ok(n as u64)
    }

    /// The next up to `max` events after those already handed out; they join the window.
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<OutboxEvent>, OutboxError> {
        if max == 0 {
            return Ok(vec![]);
        }
        let mut st = self.conn.prepare_cached("SELECT seq, id, at_ms, kind, door, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2").map_err(self.err("reading events"))?;
        let rows = st
            .query_map(params![self.sent, max as i64], |r| Ok(OutboxEvent { seq: r.get(0)?, id: r.get(1)?, at_ms: r.get(2)?, kind: r.get(3)?, door: r.get(4)?, body: r.get(5)? }))
            .map_err(|source| OutboxError { path: self.path.clone(), what: "reading events", source })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|source| OutboxError { path: self.path.clone(), what: "reading an event", source })?);
        }
        drop(st);
        for ev in &out {
            self.inflight.push_back((ev.seq, false));
            self.sent = ev.seq;
        }
        Ok(out)
    }

    /// The broker acknowledged `seq`; the cursor advances over the acknowledged prefix.
    pub fn acked(&mut self, seq: i64) -> Result<(), OutboxError> {
        if let Ok(i) = self.inflight.binary_search_by_key(&seq, |(s, _)| *s) {
            self.inflight[i].1 = true;
        }
        let mut advanced = false;
        while let Some(&(s, true)) = self.inflight.front() {
            self.cursor = s;
            self.inflight.pop_front();
            self.unsaved_acks += 1;
            advanced = true;
        }
        if advanced && (self.unsaved_acks >= SAVE_EVERY || self.inflight.is_empty()) {
            self.save()?;
        }
        Ok(())
    }

    /// The connection dropped: everything unacknowledged will be handed out again.
    pub fn rewind(&mut self) -> Result<(), OutboxError> {
        self.forget_in_flight();
        self.save()
    }

    /// Forgets the window without touching storage (after a storage error): everything
    /// unacknowledged will be handed out again.
    pub fn forget_in_flight(&mut self) {
        self.inflight.clear();
        self.sent = self.cursor;
    }

    /// Writes the cursor and dropped count.
    pub fn save(&mut self) -> Result<(), OutboxError> {
        self.unsaved_acks = 0;
        self.state.execute("UPDATE outbox_state SET cursor = ?1, dropped = ?2 WHERE id = 1", params![self.cursor, self.dropped as i64]).map_err(|source| OutboxError {
            path: self.state_path.clone(),
            what: "saving the cursor",
            source,
        })?;
        Ok(())
    }
}

/// The gateway's `events` table: the one definition the host's event log and this outbox
/// share. `seq` orders rows for the outbox; `events_at` lets retention and reports find old
/// rows by time without reading the whole log.
pub const EVENTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,
    id    TEXT NOT NULL UNIQUE,
    at_ms INTEGER NOT NULL,
    kind  TEXT NOT NULL,
    door  TEXT,
    body  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);
";

/// Creates the `events` table (tests, benchmarks, tools; the host's event log does the same).
pub fn create_event_log(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(EVENTS_SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(n: i64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sqlite");
        let c = Connection::open(&path).unwrap();
        create_event_log(&c).unwrap();
        for i in 1..=n {
            c.execute("INSERT INTO events (id, at_ms, kind, door, body) VALUES (?1, ?2, 'decision', 'lobby', '{\"granted\":true}')", params![format!("e{i}"), 1000 + i]).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn the_cursor_moves_only_over_acknowledged_prefixes_and_survives_restart() {
        let (_d, path) = db(5);
        let mut o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention::default()).unwrap();
        let b = o.next_batch(3).unwrap();
        assert_eq!(b.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        o.acked(2).unwrap();
        assert_eq!(o.cursor(), 0, "seq 1 not acked yet");
        o.acked(1).unwrap();
        assert_eq!(o.cursor(), 2);
        // Lost connection before 3 was acked: it is sent again.
        o.rewind().unwrap();
        assert_eq!(o.next_batch(10).unwrap().first().map(|e| e.seq), Some(3));
        drop(o);
        let o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention::default()).unwrap();
        assert_eq!(o.cursor(), 2);
        assert_eq!(o.stats().unwrap(), OutboxStats { pending: 3, dropped: 0 });
    }

    #[test]
    fn retention_drops_only_the_oldest_past_the_bound_and_counts_them() {
        let (_d, path) = db(10);
        let mut o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention { max_pending: 4, max_age_ms: None }).unwrap();
        assert_eq!(o.enforce_retention(0).unwrap(), 6);
        assert_eq!(o.stats().unwrap(), OutboxStats { pending: 4, dropped: 6 });
        assert_eq!(o.next_batch(10).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        let mut o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention { max_pending: 100, max_age_ms: Some(5) }).unwrap();
        assert_eq!(o.stats().unwrap().dropped, 6, "dropped count persisted");
        // at_ms of seq i is 1000+i; now = 1013, cutoff 1008: seq 7 (1007) dropped, 8.. kept.
        assert_eq!(o.enforce_retention(1013).unwrap(), 1);
        assert_eq!(o.next_batch(10).unwrap().first().map(|e| e.seq), Some(8));
    }

    #[test]
    fn a_cursor_kept_in_the_event_log_by_an_older_version_is_taken_over() {
        let (_d, path) = db(5);
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute("UPDATE outbox_state SET cursor = 3, dropped = 1", []).unwrap();
        let o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention::default()).unwrap();
        assert_eq!((o.cursor(), o.stats().unwrap().dropped), (3, 1), "events published before the upgrade would be sent again");
        // The event log is not written by the outbox.
        c.execute("UPDATE outbox_state SET cursor = 0", []).unwrap();
        drop(o);
        let o = Outbox::open(&path, &path.with_file_name("fleet.sqlite"), Retention::default()).unwrap();
        assert_eq!(o.cursor(), 3);
    }

    #[test]
    fn bodies_become_json_and_non_json_bodies_are_not_lost() {
        let ev = OutboxEvent { seq: 1, id: "e1".into(), at_ms: 1, kind: "alarm".into(), door: None, body: "{\"kind\":\"fire\"}".into() };
        assert_eq!(ev.to_message().body["kind"], "fire");
        assert!(ev.is_alarm());
        let bad = OutboxEvent { body: "not json".into(), ..ev };
        assert_eq!(bad.to_message().body, serde_json::Value::String("not json".into()));
    }
}
