//! The monthly publication of the transparency report over MQTT: once the gateway's clock
//! enters a new month (in the site's local time), and once at start, the report of the last
//! complete month is gathered on its own thread (it reads a month of the event log; the door
//! never waits for it), published retained and signed on `…/report/{YYYY-MM}`, and audited.

use crate::audit::{Action, AuditLog};
use crate::config::SiteConfig;
use crate::report::{gather, month_bounds, Sources};
use gate_fleet::link::LinkHandle;
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::Mutex;

/// Decides when a month is complete and hands its period to the publishing thread.
pub struct MonthlyReports {
    tx: Sender<(String, i64)>,
    offset_minutes: i32,
    /// The gateway time (ms) from which the next month is complete; `i64::MIN` at start.
    next_at: Mutex<i64>,
}

/// The last complete month before `now_ms` (`YYYY-MM`, site time) and when the month after
/// it ends, i.e. when the next report falls due.
pub fn last_complete_month(now_ms: i64, offset_minutes: i32) -> Option<(String, i64)> {
    let local = now_ms.div_euclid(1_000).saturating_add(i64::from(offset_minutes) * 60);
    let d = time::OffsetDateTime::from_unix_timestamp(local).ok()?.date();
    let (y, m) = match d.month() {
        time::Month::January => (d.year() - 1, 12u8),
        m => (d.year(), u8::from(m) - 1),
    };
    let period = format!("{y:04}-{m:02}");
    let current = format!("{:04}-{:02}", d.year(), u8::from(d.month()));
    let (_, due) = month_bounds(&current, offset_minutes).ok()?;
    month_bounds(&period, offset_minutes).ok()?;
    Some((period, due))
}

impl MonthlyReports {
    /// Starts the publishing thread for the gateway of `cfg`, whose event log is `db`.
    pub fn start(cfg: SiteConfig, db: &Path, handle: LinkHandle) -> std::io::Result<MonthlyReports> {
        let (tx, rx) = mpsc::channel::<(String, i64)>();
        let offset_minutes = crate::clock::parse_offset(&cfg.site.utc_offset).unwrap_or(0);
        let (events, audit) = (db.to_path_buf(), AuditLog::path_beside(db));
        std::thread::Builder::new().name("gate-report".into()).spawn(move || {
            for (period, now) in rx {
                publish(&cfg, &events, &audit, &handle, &period, now);
            }
        })?;
        Ok(MonthlyReports { tx, offset_minutes, next_at: Mutex::new(i64::MIN) })
    }

    /// Called from the service loop with the gateway's time: asks for the last complete
    /// month's report at the first call and whenever a month has ended since. Never blocks.
    pub fn tick(&self, now_ms: i64) {
        let mut next = self.next_at.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms < *next {
            return;
        }
        let Some((period, due)) = last_complete_month(now_ms, self.offset_minutes) else {
            *next = i64::MAX;
            return;
        };
        *next = due;
        let _ = self.tx.send((period, now_ms));
    }
}

/// Gathers, publishes and audits one month; `now` is the gateway time it fell due.
fn publish(cfg: &SiteConfig, events: &Path, audit: &Path, handle: &LinkHandle, period: &str, now: i64) {
    let ref_key = match crate::credentials::RefKey::for_site(cfg) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, period, "the monthly report was not published");
            return;
        }
    };
    let report = match gather(&Sources { cfg, event_log: events, audit, ref_key: ref_key.as_ref() }, period, now) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, period, "the monthly report could not be gathered");
            return;
        }
    };
    let json = match serde_json::to_string(&report) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, period, "the monthly report could not be encoded");
            return;
        }
    };
    handle.publish_report(period, json);
    tracing::info!(period, face_subjects = report.face.subjects_held, "monthly report published");
    let detail = serde_json::json!({"format": "json", "published": "mqtt", "face_subjects": report.face.subjects_held, "audit_whole": report.audit.whole});
    if let Err(e) = AuditLog::open(audit).and_then(|mut a| a.append(now, "host", Action::ReportGenerated, &format!("period:{period}"), detail)) {
        tracing::error!(error = %e, period, "the audit trail could not record the published report");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_month_and_when_the_next_falls_due_in_site_time() {
        // 2026-12-01T00:30+08:00 is still November in UTC, but December at the site.
        let t = time::OffsetDateTime::parse("2026-12-01T00:30:00+08:00", &time::format_description::well_known::Rfc3339).unwrap();
        let now = t.unix_timestamp() * 1000;
        let (p, due) = last_complete_month(now, 480).unwrap();
        assert_eq!(p, "2026-11");
        assert_eq!(due, month_bounds("2027-01", 480).unwrap().0);
        assert_eq!(last_complete_month(now, 0).unwrap().0, "2026-10");
        let jan = time::OffsetDateTime::parse("2027-01-15T12:00:00Z", &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(last_complete_month(jan.unix_timestamp() * 1000, 0).unwrap().0, "2026-12");
    }
}
