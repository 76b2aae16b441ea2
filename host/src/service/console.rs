//! What `gate run` prints as it serves: one line per record at the site's local time (or
//! one JSON object per record for log collectors), and the counts for the closing summary.
//! Records carry no card numbers, PINs or biometric data, so neither does this output.

use crate::clock::Clock;
use crate::event::{Outcome, Record};
use crate::replay::local_hms;
use std::io::Write;

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `07:00:01.200  north-gate  in  card r-0001  GRANT 5000ms  [plugin:resident-policy]`
    #[default]
    Text,
    /// `{"at_ms":…,"record":{…}}` per line.
    Json,
}

/// What the run did, for the closing summary.
#[derive(Default, Debug, Clone)]
pub struct Summary {
    pub granted: usize,
    pub denied: usize,
    pub other_decisions: usize,
    pub alarms: usize,
    pub plugin_failures: usize,
    pub published: usize,
    pub logged: i64,
    /// SIGHUP with a valid configuration: the caller starts the service again on it.
    pub restart: bool,
}

/// Prints records and counts them.
pub struct Console<'a> {
    out: &'a mut dyn Write,
    clock: Clock,
    format: Format,
    pub summary: Summary,
}

impl<'a> Console<'a> {
    /// Prints to `out`, with times in the site's local time of `clock`.
    pub fn new(out: &'a mut dyn Write, clock: Clock, format: Format) -> Console<'a> {
        Console { out, clock, format, summary: Summary::default() }
    }

    /// Prints and counts `records`.
    pub fn records(&mut self, records: &[(i64, Record)]) -> std::io::Result<()> {
        for (t, r) in records {
            match r {
                Record::Decision { outcome: Outcome::Grant, .. } => self.summary.granted += 1,
                Record::Decision { outcome: Outcome::Deny, .. } => self.summary.denied += 1,
                Record::Decision { .. } => self.summary.other_decisions += 1,
                Record::Alarm { active: true, .. } => self.summary.alarms += 1,
                Record::Plugin { .. } => self.summary.plugin_failures += 1,
                Record::Publish { .. } => self.summary.published += 1,
                _ => {}
            }
            match self.format {
                Format::Text => writeln!(self.out, "{}  {r}", local_hms(&self.clock, *t))?,
                Format::Json => {
                    let line = serde_json::json!({ "at_ms": t, "record": r });
                    writeln!(self.out, "{line}")?
                }
            }
        }
        self.out.flush()
    }

    /// A line of the run's own (start-up, warnings, end), in the chosen format.
    pub fn note(&mut self, text: &str) -> std::io::Result<()> {
        match self.format {
            Format::Text => writeln!(self.out, "gate: {text}")?,
            Format::Json => writeln!(self.out, "{}", serde_json::json!({ "gate": text }))?,
        }
        self.out.flush()
    }
}
