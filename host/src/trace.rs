//! Hardware traces: what a gate saw, with timestamps, and optionally what it
//! should have done. Format `gate-trace` version 1, JSON Lines:
//!
//! ```text
//! {"gate_trace":1,"site":"maple-court","start":"2026-11-23T07:00:00+08:00","description":"..."}
//! {"at":1200,"input":{"kind":"card","door":"north-gate","number":"10012345"}}
//! {"at":1200,"expect":{"kind":"decision","door":"north-gate",...}}
//! ```
//!
//! `at` is milliseconds since `start`. Lines starting with `#` and blank lines
//! are comments. The full reference is `tests/traces/README.md`.

use crate::event::{Input, Record};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Largest trace file read.
pub const MAX_TRACE_BYTES: u64 = 1 << 30;

/// The trace format version this host reads and writes.
pub const VERSION: u32 = 1;

/// A malformed trace, located by file and line.
#[derive(Debug, Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct TraceError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// The first line of a trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Format version; must be 1.
    pub gate_trace: u32,
    pub site: String,
    /// RFC 3339 start time; `at` offsets count from here.
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One line after the header.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Input>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Record>,
}

/// A parsed trace.
#[derive(Clone, Debug)]
pub struct Trace {
    pub header: Header,
    pub start_ms: i64,
    /// Inputs in order, with the line they came from.
    pub inputs: Vec<(u64, Input)>,
    /// Expected records, if the trace carries any.
    pub expected: Vec<(u64, Record)>,
}

impl Trace {
    /// Reads and validates a trace file.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let text = crate::config::read_input(path, MAX_TRACE_BYTES, "trace").map_err(|e| TraceError { file: path.to_path_buf(), line: e.line.unwrap_or(0), message: e.message })?;
        Self::parse(&text, path)
    }

    /// Parses trace text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Trace, TraceError> {
        let err = |line: usize, message: String| TraceError { file: path.to_path_buf(), line, message };
        let mut header: Option<Header> = None;
        let mut inputs = Vec::new();
        let mut expected = Vec::new();
        let mut last_at = 0u64;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if header.is_none() {
                let h: Header = serde_json::from_str(l).map_err(|e| err(n, format!("expected the trace header {{\"gate_trace\":1,\"site\":..,\"start\":..}}: {e}")))?;
                if h.gate_trace != VERSION {
                    return Err(err(n, format!("trace format version {} is not supported (this host reads version {VERSION})", h.gate_trace)));
                }
                header = Some(h);
                continue;
            }
            let line: Line = serde_json::from_str(l).map_err(|e| err(n, format!("not a trace line: {e}")))?;
            crate::bounds::check_trace_at(line.at).map_err(|m| err(n, m))?;
            match (line.input, line.expect) {
                (Some(mut i), None) => {
                    if let Input::CameraFrame { file, .. } = &mut i {
                        // A reference to a test photo, relative to the trace; never pixels.
                        *file = crate::face::resolve_frame_path(path.parent().unwrap_or(Path::new("")), file);
                        if !file.is_file() {
                            return Err(err(n, format!("key `file`: camera frame {} does not exist (test photos come with `cargo xtask setup`)", file.display())));
                        }
                    }
                    if let Input::Face { score: Some(score), .. } = &i {
                        if !crate::bounds::FACE_SCORE.contains(score) {
                            return Err(err(n, format!("key `score`: {score} is outside its range; a face match score is a cosine similarity from 0 to 1")));
                        }
                    }
                    if let Some(c) = i.captured_at().filter(|c| *c > crate::bounds::TRACE_AT_MAX_MS) {
                        return Err(err(n, format!("key `captured_at`: {c} ms is outside its range; expected 0 to {}", crate::bounds::TRACE_AT_MAX_MS)));
                    }
                    if let Input::Line { at_us, .. } = &i {
                        if at_us / 1000 != line.at {
                            return Err(err(n, format!("key `at_us`: {at_us} µs is not within `at` = {} ms (`at` must be `at_us` / 1000)", line.at)));
                        }
                    }
                    if line.at < last_at {
                        return Err(err(n, format!("input at {} ms comes before the previous input at {last_at} ms; inputs must be in time order", line.at)));
                    }
                    last_at = line.at;
                    inputs.push((line.at, i));
                }
                (None, Some(r)) => expected.push((line.at, r)),
                _ => return Err(err(n, "a line carries exactly one of `input` or `expect`".into())),
            }
        }
        let header = header.ok_or_else(|| err(1, "empty trace: no header line".into()))?;
        let start_ms = crate::clock::parse_rfc3339(&header.start).map_err(|m| err(1, format!("key `start`: {m}")))?;
        Ok(Trace { header, start_ms, inputs, expected })
    }
}

impl Trace {
    /// Whether the trace holds pin-level `line` inputs (replayed through the hardware layer).
    pub fn has_pins(&self) -> bool {
        self.inputs.iter().any(|(_, i)| matches!(i, Input::Line { .. }))
    }
}

/// One output line in trace form, ready to paste into a trace as expected output.
pub fn expect_line(at: u64, record: &Record) -> String {
    let line = Line { at, input: None, expect: Some(record.clone()) };
    serde_json::to_string(&line).unwrap_or_default()
}

/// One input line in trace form (used by `gate record`).
pub fn input_line(at: u64, input: &Input) -> String {
    let line = Line { at, input: Some(input.clone()), expect: None };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"{"gate_trace":1,"site":"s","start":"2026-11-23T07:00:00+08:00"}"#;

    #[test]
    fn parses_inputs_and_expectations() {
        let text = format!("{HEAD}\n# a comment\n{}\n{}\n", r#"{"at":5,"input":{"kind":"card","door":"d","number":"1"}}"#, r#"{"at":5,"expect":{"kind":"relay","door":"d","on":true}}"#);
        let t = Trace::parse(&text, Path::new("t.jsonl")).unwrap();
        assert_eq!(t.inputs.len(), 1);
        assert_eq!(t.expected, vec![(5, Record::Relay { door: "d".into(), on: true })]);
        assert_eq!(expect_line(5, &t.expected[0].1), r#"{"at":5,"expect":{"kind":"relay","door":"d","on":true}}"#);
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = format!("{HEAD}\n{}\n", r#"{"at":5,"input":{"kind":"card","door":"d"}}"#);
        let e = Trace::parse(&text, Path::new("t.jsonl")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("t.jsonl:2:"), "{e}");
        assert!(e.to_string().contains("number"), "{e}");

        let text = format!("{HEAD}\n{}\n{}\n", r#"{"at":9,"input":{"kind":"fire-alarm","active":true}}"#, r#"{"at":3,"input":{"kind":"fire-alarm","active":false}}"#);
        assert_eq!(Trace::parse(&text, Path::new("t")).unwrap_err().line, 3);

        let text = format!("{HEAD}\n{}\n", r#"{"at":1201,"input":{"kind":"line","line":"n.d0","level":false,"at_us":1200050}}"#);
        let e = Trace::parse(&text, Path::new("p.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("p.jsonl:2: key `at_us`"), "{e}");
        let text = format!("{HEAD}\n{}\n", r#"{"at":1200,"input":{"kind":"line","line":"n.d0","level":false,"at_us":1200050}}"#);
        assert!(Trace::parse(&text, Path::new("p.jsonl")).unwrap().has_pins());

        let bad_version = HEAD.replace("\"gate_trace\":1", "\"gate_trace\":7");
        assert!(Trace::parse(&bad_version, Path::new("t")).unwrap_err().to_string().contains("version 7"));
    }

    #[test]
    fn numbers_past_their_bounds_are_refused_with_the_line() {
        let e = Trace::parse(&format!("{HEAD}\n{}\n", r#"{"at":18446744073709551615,"input":{"kind":"fire-alarm","active":true}}"#), Path::new("t.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:2: key `at`: 18446744073709551615 ms is outside its range"), "{e}");
        let e =
            Trace::parse(&format!("{HEAD}\n{}\n", r#"{"at":18446744073709551,"input":{"kind":"line","line":"n.d0","level":false,"at_us":18446744073709551615}}"#), Path::new("t.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:2: key `at`"), "{e}");
        let e = Trace::parse(&format!("{HEAD}\n{}\n", r#"{"at":5,"input":{"kind":"face","door":"d","subject":"r-1","score":1.7}}"#), Path::new("t.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:2: key `score`: 1.7 is outside its range"), "{e}");
        let e = Trace::parse(&format!("{HEAD}\n{}\n", r#"{"at":5,"input":{"kind":"card","door":"d","number":"1","captured_at":18446744073709551615}}"#), Path::new("t.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("t.jsonl:2: key `captured_at`"), "{e}");
        Trace::parse(&format!("{HEAD}\n{}\n", r#"{"at":5,"input":{"kind":"face","door":"d","subject":"r-1","score":0.7}}"#), Path::new("t.jsonl")).expect("in range");
    }
}
