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
