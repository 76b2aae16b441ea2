//! Time as the gateway sees it: one clock, real in service and virtual in replay.
//!
//! Plugins never read an ambient clock; they get this one through their
//! `clock` import and in every event, so replays are deterministic.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// A shared clock in Unix milliseconds. In replay it only moves when the
/// replay engine sets it; in service the runner sets it from the system clock.
#[derive(Clone, Debug)]
pub struct Clock {
    now_ms: Arc<AtomicI64>,
    offset_minutes: i32,
}

/// Local calendar facts plugins schedule by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    pub unix_ms: i64,
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    pub minute_of_day: u16,
}

impl Clock {
    /// A clock starting at `start_ms`, for a site `offset_minutes` east of UTC.
    pub fn new(start_ms: i64, offset_minutes: i32) -> Clock {
        Clock { now_ms: Arc::new(AtomicI64::new(start_ms)), offset_minutes }
    }

    /// Current time in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// Moves the clock (replay steps it; service sets it from the system clock).
    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::Relaxed);
    }

    /// Local weekday and minute of day for a Unix time at this site.
    pub fn local(&self, unix_ms: i64) -> LocalTime {
        let local_ms = unix_ms + i64::from(self.offset_minutes) * 60_000;
        let days = local_ms.div_euclid(86_400_000);
        let ms_of_day = local_ms.rem_euclid(86_400_000);
        // 1970-01-01 was a Thursday (weekday 3 when Monday is 0).
        let weekday = (days + 3).rem_euclid(7) as u8;
        LocalTime { unix_ms, weekday, minute_of_day: (ms_of_day / 60_000) as u16 }
    }

    /// The current local time.
    pub fn now_local(&self) -> LocalTime {
        self.local(self.now_ms())
    }
}

/// Parses a UTC offset like "+08:00" or "-05:30" into minutes.
pub fn parse_offset(s: &str) -> Result<i32, String> {
    let bad = || format!("`{s}` is not a UTC offset like \"+08:00\"");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// Parses an RFC 3339 time ("2026-11-23T07:00:00+08:00") into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_follows_site_offset() {
        // 2026-11-23T07:30:00+08:00 is a Monday.
        let ms = parse_rfc3339("2026-11-23T07:30:00+08:00").unwrap();
        let c = Clock::new(ms, parse_offset("+08:00").unwrap());
        let l = c.now_local();
        assert_eq!(l.weekday, 0);
        assert_eq!(l.minute_of_day, 7 * 60 + 30);
        // The same instant in UTC is still Sunday 23:30.
        let utc = Clock::new(ms, 0).now_local();
        assert_eq!((utc.weekday, utc.minute_of_day), (6, 23 * 60 + 30));
    }

    #[test]
    fn bad_offsets_are_refused() {
        assert!(parse_offset("8").is_err());
        assert!(parse_offset("+25:00").is_err());
        assert_eq!(parse_offset("-05:30"), Ok(-330));
    }
}
