//! Weekly schedules such as `"mon-fri 07:00-19:00, sat 09:00-13:00"`, checked against the
//! event's site-local `timestamp` (weekday 0 = Monday, minute of day), never a wall clock.
//!
//! Grammar: `always` | `never` | window (`,` window)*, where a window is
//! `[days] HH:MM-HH:MM`; days are `mon`..`sun`, a range `mon-fri` (may wrap: `fri-mon`),
//! `daily` or `weekends`/`weekdays`; no days means every day. The end is exclusive and may be
//! `24:00`; an end before the start (`22:00-06:00`) runs past midnight into the next day.

use crate::types::Timestamp;
use std::fmt;
use std::str::FromStr;

/// Why a schedule text was refused; each variant names the offending piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The text (or one comma-separated window) was empty.
    #[error("empty schedule window")]
    Empty,
    /// A day name that is not mon, tue, wed, thu, fri, sat or sun.
    #[error("unknown day `{0}` (expected mon, tue, wed, thu, fri, sat, sun, daily, weekdays or weekends)")]
    UnknownDay(String),
    /// A time that is not HH:MM between 00:00 and 24:00.
    #[error("bad time `{0}` (expected HH:MM between 00:00 and 24:00)")]
    BadTime(String),
    /// A window that is not `[days] HH:MM-HH:MM`.
    #[error("bad window `{0}` (expected e.g. `mon-fri 07:00-19:00`)")]
    BadWindow(String),
    /// A window whose start equals its end.
    #[error("window `{0}` is empty (start equals end)")]
    EmptyRange(String),
}

/// One `[days] start-end` window; `days` is a bit set, bit 0 = Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    days: u8,
    start: u16,
    end: u16,
}

const ALL_DAYS: u8 = 0b111_1111;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    fn has_day(&self, weekday: u8) -> bool {
        weekday < 7 && self.days & (1 << weekday) != 0
    }

    fn contains(&self, weekday: u8, minute: u16) -> bool {
        if self.start < self.end {
            self.has_day(weekday) && minute >= self.start && minute < self.end
        } else {
            // Overnight: the evening part on a listed day, the morning part on the day after.
            let yesterday = (weekday + 6) % 7;
            (self.has_day(weekday) && minute >= self.start) || (self.has_day(yesterday) && minute < self.end)
        }
    }
}

/// A parsed weekly schedule; `contains` answers "is this moment inside it?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    windows: Vec<Window>,
    text: String,
}

impl Schedule {
    /// Parses a schedule text (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let trimmed = text.trim();
        let windows = match trimmed.to_ascii_lowercase().as_str() {
            "always" => vec![Window { days: ALL_DAYS, start: 0, end: 24 * 60 }],
            "never" => Vec::new(),
            lower => lower.split(',').map(parse_window).collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Schedule { windows, text: trimmed.to_string() })
    }

    /// True when the weekday (0 = Monday) and minute of day fall inside a window.
    pub fn contains(&self, weekday: u8, minute_of_day: u16) -> bool {
        self.windows.iter().any(|w| w.contains(weekday, minute_of_day))
    }

    /// True when the event time falls inside the schedule (site-local time from the host).
    pub fn contains_time(&self, time: &Timestamp) -> bool {
        self.contains(time.weekday, time.minute_of_day)
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_window(raw: &str) -> Result<Window, ScheduleError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(ScheduleError::Empty);
    }
    let mut parts = raw.split_whitespace();
    let (days_part, times_part) = match (parts.next(), parts.next(), parts.next()) {
        (Some(times), None, None) => (None, times),
        (Some(days), Some(times), None) => (Some(days), times),
        _ => return Err(ScheduleError::BadWindow(raw.to_string())),
    };
    let days = match days_part {
        None => ALL_DAYS,
        Some(d) => parse_days(d)?,
    };
    let (start, end) = times_part.split_once('-').ok_or_else(|| ScheduleError::BadWindow(raw.to_string()))?;
    let start = parse_time(start)?;
    let end = parse_time(end)?;
    if start == end {
        return Err(ScheduleError::EmptyRange(raw.to_string()));
    }
    if start == 24 * 60 {
        return Err(ScheduleError::BadTime("24:00".to_string()));
    }
    // `22:00-24:00` is an ordinary same-day window; only an end before the start wraps.
    Ok(Window { days, start, end })
}

fn parse_days(text: &str) -> Result<u8, ScheduleError> {
    match text {
        "daily" => return Ok(ALL_DAYS),
        "weekdays" => return Ok(0b001_1111),
        "weekends" => return Ok(0b110_0000),
        _ => {}
    }
    let day = |name: &str| DAY_NAMES.iter().position(|d| *d == name).map(|i| i as u8).ok_or_else(|| ScheduleError::UnknownDay(name.to_string()));
    match text.split_once('-') {
        None => Ok(1 << day(text)?),
        Some((from, to)) => {
            let (from, to) = (day(from)?, day(to)?);
            let mut mask = 0u8;
            let mut d = from;
            loop {
                mask |= 1 << d;
                if d == to {
                    break;
                }
                d = (d + 1) % 7;
            }
            Ok(mask)
        }
    }
}

fn parse_time(text: &str) -> Result<u16, ScheduleError> {
    let bad = || ScheduleError::BadTime(text.to_string());
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MON: u8 = 0;
    const FRI: u8 = 4;
    const SAT: u8 = 5;
    const SUN: u8 = 6;

    fn at(h: u16, m: u16) -> u16 {
        h * 60 + m
    }

    #[test]
    fn weekday_office_hours() {
        let s = Schedule::parse("mon-fri 07:00-19:00").unwrap();
        assert!(s.contains(MON, at(7, 0)), "start is inclusive");
        assert!(s.contains(FRI, at(18, 59)));
        assert!(!s.contains(FRI, at(19, 0)), "end is exclusive");
        assert!(!s.contains(MON, at(6, 59)));
        assert!(!s.contains(SAT, at(12, 0)));
        assert!(!s.contains(SUN, at(12, 0)));
    }

    #[test]
    fn several_windows_and_single_days() {
        let s = Schedule::parse("mon-fri 07:00-19:00, sat 09:00-13:00").unwrap();
        assert!(s.contains(SAT, at(10, 0)));
        assert!(!s.contains(SAT, at(14, 0)));
        assert!(!s.contains(SUN, at(10, 0)));
        assert_eq!(s.to_string(), "mon-fri 07:00-19:00, sat 09:00-13:00");
    }

    #[test]
    fn overnight_window_continues_into_the_next_day() {
        let s = Schedule::parse("fri 22:00-06:00").unwrap();
        assert!(s.contains(FRI, at(23, 30)));
        assert!(s.contains(SAT, at(5, 59)));
        assert!(!s.contains(SAT, at(6, 0)));
        assert!(!s.contains(FRI, at(5, 0)), "friday morning belongs to thursday's night");
        let sunday_night = Schedule::parse("sun 22:00-02:00").unwrap();
        assert!(sunday_night.contains(MON, at(1, 0)), "sunday wraps to monday");
    }

    #[test]
    fn wrapping_day_range_and_keywords() {
        let s = Schedule::parse("fri-mon 10:00-11:00").unwrap();
        for d in [FRI, SAT, SUN, MON] {
            assert!(s.contains(d, at(10, 30)), "day {d}");
        }
        assert!(!s.contains(2, at(10, 30)));
        assert!(Schedule::parse("weekends 00:00-24:00").unwrap().contains(SUN, at(23, 59)));
        assert!(!Schedule::parse("weekdays 00:00-24:00").unwrap().contains(SAT, 0));
        assert!(Schedule::parse("08:00-09:00").unwrap().contains(SUN, at(8, 0)), "no days = daily");
        assert!(Schedule::parse("always").unwrap().contains(SUN, at(23, 59)));
        assert!(!Schedule::parse("never").unwrap().contains(MON, at(12, 0)));
        assert!(Schedule::parse("MON-SAT 06:00-22:00").unwrap().contains(SAT, at(21, 0)));
    }

    #[test]
    fn event_timestamps_are_used_not_a_clock() {
        let s = Schedule::parse("mon-sat 06:00-22:00").unwrap();
        let t = Timestamp { unix_ms: 0, weekday: SUN, minute_of_day: at(12, 0) };
        assert!(!s.contains_time(&t));
        let t = Timestamp { unix_ms: 0, weekday: SAT, minute_of_day: at(12, 0) };
        assert!(s.contains_time(&t));
        let bogus = Timestamp { unix_ms: 0, weekday: 9, minute_of_day: at(12, 0) };
        assert!(!s.contains_time(&bogus), "an out-of-range weekday matches nothing");
    }

    #[test]
    fn bad_text_names_the_bad_piece() {
        assert_eq!(Schedule::parse("mon-fry 07:00-19:00"), Err(ScheduleError::UnknownDay("fry".into())));
        assert_eq!(Schedule::parse("mon 7-19"), Err(ScheduleError::BadTime("7".into())));
        assert_eq!(Schedule::parse("mon 07:00-25:00"), Err(ScheduleError::BadTime("25:00".into())));
        assert_eq!(Schedule::parse("mon 07:60-08:00"), Err(ScheduleError::BadTime("07:60".into())));
        assert_eq!(Schedule::parse("mon 07:00"), Err(ScheduleError::BadWindow("mon 07:00".into())));
        assert_eq!(Schedule::parse("mon 07:00-07:00"), Err(ScheduleError::EmptyRange("mon 07:00-07:00".into())));
        assert_eq!(Schedule::parse(""), Err(ScheduleError::Empty));
        assert_eq!(Schedule::parse("mon 07:00-08:00,"), Err(ScheduleError::Empty));
        let msg = Schedule::parse("mon-fry 07:00-19:00").unwrap_err().to_string();
        assert!(msg.contains("`fry`"), "{msg}");
    }
}
