//! Every number the gateway reads from outside, with its range, in one place.
//!
//! A value past its bound must never turn into the opposite behaviour (a timeout so
//! long it wraps, a memory cap so large every call fails), so the site configuration
//! is checked against [`CONFIG`] key by key before it is interpreted, and traces against
//! the `TRACE_*` bounds line by line. Errors name the key and its line.

use crate::config::LineIndex;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The stated range of one numeric configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Dotted key path; array tables drop their index (`door.open_ms` is every door's).
    pub key: &'static str,
    pub min: f64,
    pub max: f64,
    /// Whether the key takes an integer (else a float).
    pub integer: bool,
    /// What the number counts, for the error message.
    pub unit: &'static str,
}

const fn int(key: &'static str, min: i64, max: i64, unit: &'static str) -> Bound {
    Bound { key, min: min as f64, max: max as f64, integer: true, unit }
}

const DAY_MS: i64 = 86_400_000;

/// Every numeric key of the site configuration with its range.
/// (`limits.max_component_bytes` and `limits.compile_ms` repeat `config::*_RANGE`.)
pub const CONFIG: &[Bound] = &[
    int("limits.deadline_ms", 1, 10_000, "ms"),
    int("limits.memory_mb", 1, 4_096, "MiB"),
    int("limits.fuel", 1, 1_000_000_000_000, "instructions"),
    int("limits.failures_before_quarantine", 1, 1_000, "failures"),
    int("limits.quarantine_ms", 1, 7 * DAY_MS, "ms"),
    int("limits.log_lines_per_sec", 0, 100_000, "lines/s"),
    int("limits.kv_quota_bytes", 0, 64 << 20, "bytes"),
    int("limits.publish_per_sec", 0, 100_000, "messages/s"),
    int("limits.max_payload_bytes", 1, 1 << 20, "bytes"),
    int("limits.max_component_bytes", 1024, 256 << 20, "bytes"),
    int("limits.compile_ms", 100, 600_000, "ms"),
    int("timing.repeat_window_ms", 0, 3_600_000, "ms"),
    int("timing.max_input_age_ms", 1, 3_600_000, "ms"),
    int("timing.factor_timeout_ms", 1, 600_000, "ms"),
    Bound { key: "face.strong", min: 0.0, max: 1.0, integer: false, unit: "cosine score" },
    Bound { key: "face.weak", min: 0.0, max: 1.0, integer: false, unit: "cosine score" },
    int("fallback.open_ms", 1, 3_600_000, "ms"),
    int("door.open_ms", 1, 3_600_000, "ms"),
    int("door.max_open_ms", 1, 3_600_000, "ms"),
    int("door.held_open_ms", 1, DAY_MS, "ms"),
    int("door.exit_open_ms", 1, 3_600_000, "ms"),
    int("calls.indoor_ms", 0, 600_000, "ms"),
    int("calls.phone_ms", 0, 600_000, "ms"),
    int("calls.guard_ms", 0, 600_000, "ms"),
    int("fleet.max_bundle_bytes", 1024, 1 << 30, "bytes"),
    int("fleet.rollback_failures", 1, 1_000, "failures"),
    int("fleet.rollback_window_ms", 1, 7 * DAY_MS, "ms"),
    int("fleet.outbox.max_pending", 1, 100_000_000, "events"),
    int("fleet.outbox.max_age_hours", 0, 24 * 366, "hours"),
    int("fleet.broker.port", 1, 65_535, "port"),
];

/// Subtrees whose numbers are not the host's: plugin settings are the plugin's own
/// text, and `[hardware]` is checked by gate-hw against its wiring.
const FREE_FORM: &[&str] = &["plugins", "hardware"];

/// Latest `at` a trace line may carry: 366 days after its start, in ms.
pub const TRACE_AT_MAX_MS: u64 = 366 * DAY_MS as u64;
/// Latest pin-level `at_us`: the same bound in µs.
pub const TRACE_AT_US_MAX: u64 = TRACE_AT_MAX_MS * 1000;
/// A face match score is a cosine similarity.
pub const FACE_SCORE: std::ops::RangeInclusive<f32> = 0.0..=1.0;

/// The bound of a dotted key path, if it is numeric.
pub fn config_bound(key: &str) -> Option<&'static Bound> {
    CONFIG.iter().find(|b| b.key == key)
}

/// A bound violation: the 1-based line and the message naming the key.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfBounds {
    pub line: usize,
    pub message: String,
}

/// Checks every numeric key of a parsed configuration document against [`CONFIG`]:
/// a value of the wrong type or outside its range is refused with its key and line.
pub fn check_config(doc: &DeTable<'_>, lines: &LineIndex) -> Result<(), OutOfBounds> {
    walk(doc, "", lines)
}

fn walk(table: &DeTable<'_>, prefix: &str, lines: &LineIndex) -> Result<(), OutOfBounds> {
    for (k, v) in table {
        let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        if prefix.is_empty() && FREE_FORM.contains(&path.as_str()) {
            continue;
        }
        check_value(&path, v, lines)?;
    }
    Ok(())
}

fn check_value(path: &str, v: &Spanned<DeValue<'_>>, lines: &LineIndex) -> Result<(), OutOfBounds> {
    let line = lines.line(v.span().start);
    match v.get_ref() {
        DeValue::Table(t) => walk(t, path, lines),
        DeValue::Array(items) => {
            for item in items.iter() {
                if let DeValue::Table(t) = item.get_ref() {
                    walk(t, path, lines)?;
                }
            }
            Ok(())
        }
        other => {
            let Some(b) = config_bound(path) else { return Ok(()) };
            let fail = |found: String| OutOfBounds {
                line,
                message: format!("key `{path}`: {found}; expected {} from {} to {} ({})", if b.integer { "an integer" } else { "a number" }, fmt(b.min), fmt(b.max), b.unit),
            };
            let (n, shown) = match other {
                DeValue::Integer(i) => {
                    let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
                    match i128::from_str_radix(digits.trim_start_matches('+'), i.radix()) {
                        Ok(n) => (n as f64, n.to_string()),
                        Err(_) => return Err(fail(format!("{} is not a number it can hold", i.as_str()))),
                    }
                }
                DeValue::Float(f) if !b.integer => {
                    let n = f.as_str().replace('_', "").parse::<f64>().unwrap_or(f64::NAN);
                    (n, if n.is_nan() { "nan".to_string() } else { f.as_str().to_string() })
                }
                DeValue::Float(f) => return Err(fail(format!("{} is not an integer", f.as_str()))),
                DeValue::String(s) => return Err(fail(format!("found the string {:?}", s.as_ref()))),
                DeValue::Boolean(x) => return Err(fail(format!("found the boolean {x}"))),
                _ => return Err(fail("found a value that is not a number".into())),
            };
            if !(n >= b.min && n <= b.max) {
                return Err(fail(format!("{shown} is outside its range")));
            }
            Ok(())
        }
    }
}

fn fmt(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e18 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// Checks a trace line's time against [`TRACE_AT_MAX_MS`].
pub fn check_trace_at(at: u64) -> Result<(), String> {
    if at > TRACE_AT_MAX_MS {
        return Err(format!("key `at`: {at} ms is outside its range; expected 0 to {TRACE_AT_MAX_MS} (366 days after `start`)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), OutOfBounds> {
        let doc = DeTable::parse(text).expect("toml");
        check_config(doc.get_ref(), &LineIndex::new(text))
    }

    #[test]
    fn every_bound_is_a_real_range() {
        for b in CONFIG {
            assert!(b.min <= b.max, "{}", b.key);
        }
        assert_eq!(
            config_bound("limits.max_component_bytes").map(|b| (b.min as u64, b.max as u64)),
            Some((*crate::config::MAX_COMPONENT_BYTES_RANGE.start(), *crate::config::MAX_COMPONENT_BYTES_RANGE.end()))
        );
        assert_eq!(config_bound("limits.compile_ms").map(|b| (b.min as u64, b.max as u64)), Some((*crate::config::COMPILE_MS_RANGE.start(), *crate::config::COMPILE_MS_RANGE.end())));
    }

    #[test]
    fn values_past_their_bounds_name_key_and_line() {
        let e = check("[site]\nid = \"s\"\n[timing]\nfactor_timeout_ms = 9223372036854775807\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.starts_with("key `timing.factor_timeout_ms`: 9223372036854775807 is outside its range; expected an integer from 1 to 600000"), "{}", e.message);
        let e = check("[[door]]\nid = \"a\"\n[[door]]\nid = \"b\"\nheld_open_ms = 0\n").unwrap_err();
        assert_eq!((e.line, e.message.starts_with("key `door.held_open_ms`: 0 is outside its range")), (5, true), "{}", e.message);
        let e = check("[limits]\nmemory_mb = -1\n").unwrap_err();
        assert!(e.message.contains("`limits.memory_mb`: -1 is outside its range"), "{}", e.message);
        let e = check("[limits]\nmemory_mb = \"32\"\n").unwrap_err();
        assert!(e.message.contains("`limits.memory_mb`: found the string \"32\""), "{}", e.message);
        let e = check("[face]\nstrong = nan\n").unwrap_err();
        assert!(e.message.contains("`face.strong`: nan is outside its range"), "{}", e.message);
        // Plugin settings are the plugin's own.
        check("[plugins.p]\npath = \"x\"\nworld = \"policy\"\n[plugins.p.config]\nopen_ms = 0\n").expect("free-form");
        check("[limits]\nmemory_mb = 32\nkv_quota_bytes = 0x10000\n[timing]\nrepeat_window_ms = 2_000\n").expect("in range");
    }
}
