//! The subject directory at scale and every input checked at its bounds, through the
//! real `gate` binary, the real plugins and real SQLite.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The demo site, its state in `dir`; `subjects` keeps or drops `site.subjects`.
fn demo_site(dir: &Path, subjects: bool, edit: impl Fn(String) -> String) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    let plugins = root().join("target/plugins");
    let mut cfg = demo
        .replace("../target/plugins/", &format!("{}/", plugins.display()))
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")));
    if !subjects {
        cfg = cfg.lines().filter(|l| !l.trim_start().starts_with("subjects =")).collect::<Vec<_>>().join("\n");
    }
    let path = dir.join("site.toml");
    std::fs::write(&path, edit(cfg)).unwrap();
    path
}

fn trace(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("t.jsonl");
    let head = r#"{"gate_trace":1,"site":"maple-court","start":"2026-11-24T10:00:00+08:00"}"#;
    std::fs::write(&path, format!("{head}\n{}\n", lines.join("\n"))).unwrap();
    path
}

#[test]
fn an_imported_directory_decides_at_the_door_and_a_shared_pin_hash_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = demo_site(tmp.path(), false, |c| c);
    let cfg_s = cfg.to_str().unwrap();
    let t = trace(tmp.path(), &[r#"{"at":1000,"input":{"kind":"card","door":"north-gate","number":"10012345"}}"#]);
    // Before any import the card holder is unknown.
    let before = gate(&["replay", "--config", cfg_s, "--trace", t.to_str().unwrap()]);
    assert!(text(&before).contains("DENY") && !text(&before).contains("r-0001"), "{}", text(&before));

    let subjects = root().join("configs/demo-subjects.toml");
    let o = gate(&["directory", "import", "--config", cfg_s, subjects.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(version 1)"), "{}", text(&o));
    let o = gate(&["directory", "show", "--config", cfg_s]);
    assert!(text(&o).contains("version 1,"), "{}", text(&o));
    let after = gate(&["replay", "--config", cfg_s, "--trace", t.to_str().unwrap()]);
    assert!(text(&after).contains("GRANT") && text(&after).contains("r-0001"), "{}", text(&after));

    // A second subject with r-0001's PIN hash: refused with both subjects and the line; nothing changes.
    let mut dup = std::fs::read_to_string(&subjects).unwrap();
    dup.push_str("\n[[subject]]\nid = \"r-9999\"\nrole = \"resident\"\npin_sha256 = [\"60fd77c20bba1d54f2b6d3ca2fe0eebcfe1f02052c647a9431d244831dfd27f1\"]\n");
    let dup_path = tmp.path().join("dup.toml");
    std::fs::write(&dup_path, &dup).unwrap();
    let o = gate(&["directory", "import", "--config", cfg_s, dup_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let line = dup.lines().position(|l| l == "id = \"r-9999\"").unwrap();
    assert!(text(&o).contains(&format!("dup.toml:{line}: subject `r-9999`: the same PIN hash is already held by subject `r-0001`")), "{}", text(&o));
    let o = gate(&["directory", "show", "--config", cfg_s]);
    assert!(text(&o).contains("version 1,"), "a refused import changes nothing: {}", text(&o));
}

#[test]
fn values_past_their_bounds_exit_2_naming_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = demo_site(tmp.path(), true, |c| c.replace("factor_timeout_ms = 20000", "factor_timeout_ms = 9223372036854775807"));
    let t = trace(tmp.path(), &[r#"{"at":1000,"input":{"kind":"card","door":"north-gate","number":"10012345"}}"#]);
    let o = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let at = std::fs::read_to_string(&cfg).unwrap().lines().position(|l| l.contains("factor_timeout_ms")).unwrap() + 1;
    assert!(text(&o).contains(&format!("site.toml:{at}: key `timing.factor_timeout_ms`: 9223372036854775807 is outside its range")), "{}", text(&o));

    let cfg = demo_site(tmp.path(), true, |c| c);
    for (line, key) in [
        (r#"{"at":18446744073709551615,"input":{"kind":"fire-alarm","active":true}}"#, "key `at`"),
        (r#"{"at":1000,"input":{"kind":"face","door":"north-gate","subject":"r-0001","score":1.7}}"#, "key `score`"),
    ] {
        let t = trace(tmp.path(), &[line]);
        let o = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", t.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(&format!("t.jsonl:2: {key}")), "{}", text(&o));
    }
    // Not a regular file: refused at once instead of reading forever.
    let o = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", "/dev/zero"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a regular file"), "{}", text(&o));
}

/// Issue 13 item 5, end to end: a gateway killed (SIGKILL) in the middle of serving, its
/// event log then damaged on disk. The next start refuses to append to it: the damaged file
/// is moved aside, a new log is started, the start says so and audits it, and no event id
/// of the old log is ever given again.
#[test]
fn a_damaged_event_log_is_moved_aside_said_and_audited_and_no_id_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = demo_site(tmp.path(), true, |c| c);
    let cfg_s = cfg.to_str().unwrap();
    let reads: Vec<String> =
        (0..400).map(|i| format!(r#"{{"at":{},"input":{{"kind":"card","door":"north-gate","number":"{}"}}}}"#, 1000 + i * 50, ["10012345", "10012346", "10012347", "99999999"][i % 4])).collect();
    let t = trace(tmp.path(), &reads.iter().map(String::as_str).collect::<Vec<_>>());
    let db = tmp.path().join("state/events.sqlite");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate"))
        .current_dir(root())
        .args(["run", "--config", cfg_s, "--trace", t.to_str().unwrap(), "--speed", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let logged = |db: &Path| -> Vec<String> {
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.prepare("SELECT id FROM events").and_then(|mut s| s.query_map([], |r| r.get(0))?.collect()))
            .unwrap_or_default()
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while logged(&db).len() < 20 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = logged(&db);
    assert!(before.len() >= 20, "the gateway logged {} events", before.len());
    // What was in the WAL goes into the database file, whose second page on is then
    // damaged (as a failing disk would).
    let c = rusqlite::Connection::open(&db).unwrap();
    let _: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).unwrap();
    drop(c);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 8192, "{}", bytes.len());
    for b in bytes[4096..].iter_mut() {
        *b ^= 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let _ = std::fs::remove_file(tmp.path().join("state/events.sqlite-wal"));

    let o = gate(&["run", "--config", cfg_s, "--trace", t.to_str().unwrap(), "--speed", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("WARNING the event log failed its integrity check: it was moved aside to"), "{}", text(&o));
    let aside: Vec<PathBuf> = std::fs::read_dir(tmp.path().join("state")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().contains("events.sqlite.damaged-")).collect();
    assert!(!aside.is_empty(), "the damaged log is kept aside");
    let after = logged(&db);
    assert!(after.len() >= 400, "the new log holds the second run: {}", after.len());
    let old: std::collections::HashSet<&String> = before.iter().collect();
    assert!(after.iter().all(|id| !old.contains(id)), "an id of the damaged log was given again");
    let audit = rusqlite::Connection::open(tmp.path().join("state/audit.sqlite")).unwrap();
    let n: i64 = audit.query_row("SELECT COUNT(*) FROM audit WHERE action = 'event-log-recovered'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

/// A pin-level trace naming a line the site does not wire is bad input: exit 2, naming the
/// trace file and line and the lines that are wired (before, the run failed with exit 3).
#[test]
fn a_pin_trace_naming_an_unwired_line_exits_2_with_its_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = demo_site(tmp.path(), true, |c| c);
    let t = trace(
        tmp.path(),
        &[r#"{"at":1000,"input":{"kind":"line","line":"north-in.d0","level":false,"at_us":1000000}}"#, r#"{"at":1001,"input":{"kind":"line","line":"garage.d9","level":false,"at_us":1001000}}"#],
    );
    let o = gate(&["run", "--config", cfg.to_str().unwrap(), "--simulate", t.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("{}:3: trace line `garage.d9`", t.display())) && text(&o).contains("configured lines:"), "{}", text(&o));
}
