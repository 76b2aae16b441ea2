//! Typed reads of a plugin's settings (the `config` import) with defaults: a missing key
//! gives the default, a present but malformed value gives an error naming key and value.

use crate::schedule::{Schedule, ScheduleError};
use std::str::FromStr;

/// A setting that is present but cannot be read as the type the plugin needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The value does not parse as the expected kind of value.
    #[error("setting `{key}` = {value:?} is invalid: expected {expected}")]
    Invalid {
        /// The setting's key.
        key: String,
        /// The value as configured.
        value: String,
        /// What would have been accepted, e.g. "a whole number of milliseconds".
        expected: String,
    },
    /// The value is not a valid schedule.
    #[error("setting `{key}` = {value:?} is not a schedule: {source}")]
    Schedule {
        /// The setting's key.
        key: String,
        /// The value as configured.
        value: String,
        /// What is wrong with it.
        source: ScheduleError,
    },
}

/// Typed, defaulting reads over any key lookup; [`Settings::host`] reads the `config` import,
/// tests pass a closure over a map.
pub struct Settings<F: Fn(&str) -> Option<String>> {
    lookup: F,
}

impl Settings<fn(&str) -> Option<String>> {
    /// Settings read from the host's site configuration for this plugin.
    pub fn host() -> Self {
        Settings { lookup: crate::config::get as fn(&str) -> Option<String> }
    }
}

impl<F: Fn(&str) -> Option<String>> Settings<F> {
    /// Settings read through `lookup` (e.g. a map in native tests).
    pub fn new(lookup: F) -> Self {
        Settings { lookup }
    }

    /// The raw value, trimmed; `None` when missing or blank.
    pub fn raw(&self, key: &str) -> Option<String> {
        (self.lookup)(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
    }

    /// A string value, or `default` when missing.
    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_string())
    }

    /// A comma-separated list (items trimmed, blanks dropped), or `default` when missing.
    pub fn list_or(&self, key: &str, default: &[&str]) -> Vec<String> {
        match self.raw(key) {
            Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A value parsed with `FromStr` (numbers and the like), or `default` when missing.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T, expected: &str) -> Result<T, SettingsError> {
        self.parse_with(key, default, expected, |s| s.parse().ok())
    }

    /// A value parsed by `parse` (returning `None` when malformed), or `default` when missing.
    pub fn parse_with<T>(&self, key: &str, default: T, expected: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, SettingsError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse(&v).ok_or_else(|| SettingsError::Invalid { key: key.to_string(), value: v, expected: expected.to_string() }),
        }
    }

    /// A whole number (e.g. milliseconds), or `default` when missing.
    pub fn u32_or(&self, key: &str, default: u32) -> Result<u32, SettingsError> {
        self.parse_or(key, default, "a whole number between 0 and 4294967295")
    }

    /// A switch: true/false, on/off, yes/no or 1/0 (any case), or `default` when missing.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, SettingsError> {
        self.parse_with(key, default, "one of true, false, on, off, yes, no, 1, 0", parse_bool)
    }

    /// A weekly schedule (see [`Schedule`]), or `default` (which must parse) when missing.
    pub fn schedule_or(&self, key: &str, default: &str) -> Result<Schedule, SettingsError> {
        let value = self.raw(key).unwrap_or_else(|| default.to_string());
        Schedule::parse(&value).map_err(|source| SettingsError::Schedule { key: key.to_string(), value, source })
    }
}

/// Reads the usual spellings of a switch; `None` for anything else.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(pairs: &[(&str, &str)]) -> Settings<impl Fn(&str) -> Option<String>> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::new(move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn missing_keys_give_defaults() {
        let s = settings(&[]);
        assert_eq!(s.u32_or("open-ms", 5000), Ok(5000));
        assert_eq!(s.bool_or("flag", true), Ok(true));
        assert_eq!(s.string_or("group", "g"), "g");
        assert_eq!(s.list_or("doors", &["a", "b"]), vec!["a", "b"]);
        assert!(s.schedule_or("sched", "mon 08:00-09:00").unwrap().contains(0, 8 * 60));
    }

    #[test]
    fn present_values_are_typed() {
        let s = settings(&[("open-ms", " 12000 "), ("flag", "Off"), ("doors", "gate-1, ,vehicle-2 "), ("sched", "sun 10:00-11:00"), ("blank", "   ")]);
        assert_eq!(s.u32_or("open-ms", 5000), Ok(12000));
        assert_eq!(s.bool_or("flag", true), Ok(false));
        assert_eq!(s.list_or("doors", &[]), vec!["gate-1", "vehicle-2"]);
        assert!(s.schedule_or("sched", "never").unwrap().contains(6, 10 * 60));
        assert_eq!(s.string_or("blank", "fallback"), "fallback", "blank counts as missing");
    }

    #[test]
    fn malformed_values_name_key_and_value() {
        let s = settings(&[("open-ms", "5s"), ("flag", "maybe"), ("sched", "mon-fry 07:00-19:00")]);
        let err = s.u32_or("open-ms", 5000).unwrap_err();
        assert_eq!(err.to_string(), "setting `open-ms` = \"5s\" is invalid: expected a whole number between 0 and 4294967295");
        assert!(s.bool_or("flag", false).unwrap_err().to_string().contains("`flag` = \"maybe\""));
        let err = s.schedule_or("sched", "never").unwrap_err().to_string();
        assert!(err.contains("`sched`") && err.contains("unknown day `fry`"), "{err}");
    }

    #[test]
    fn bool_spellings() {
        for t in ["true", "ON", "yes", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "off", "No", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("enabled"), None);
    }
}
