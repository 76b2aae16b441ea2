//! Accountability, end to end with the real binary, plugins and SQLite: the audit trail and
//! `gate audit verify`, retention that removes old events by itself (bytes included), the
//! transparency report rendered in a real headless Chromium, and a subject's own record.

mod support;

use std::path::{Path, PathBuf};
use support::{gate, plugin, root, text};

/// The demo site in a temp dir (no fleet), with its state there, and `extra` appended.
struct Local {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Local {
    fn new(extra: &str) -> Local {
        let dir = tempfile::tempdir().unwrap();
        let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
        let cfg = demo
            .replace("../target/plugins/resident-policy.wasm", plugin("resident-policy").to_str().unwrap())
            .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
            .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
            .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
            .replace("\"../target/demo-state\"", &format!("{:?}", dir.path().join("state")));
        let config = dir.path().join("site.toml");
        std::fs::write(&config, format!("{cfg}\n{extra}")).unwrap();
        Local { dir, config }
    }

    fn state(&self, file: &str) -> PathBuf {
        self.dir.path().join("state").join(file)
    }

    /// Serves `trace` (the morning, re-dated to `start`) to its end, fast.
    fn serve(&self, start: &str) -> String {
        let morning = std::fs::read_to_string(root().join("tests/traces/morning.jsonl")).unwrap();
        let trace = self.dir.path().join(format!("trace-{}.jsonl", &start[..10]));
        let body: Vec<&str> = morning.lines().skip(1).filter(|l| !l.contains("\"expect\"")).collect();
        std::fs::write(&trace, format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{start}\"}}\n{}\n", body.join("\n"))).unwrap();
        let out = gate(&["run", "--config", self.config.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "1000"]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    }

    fn gate(&self, args: &[&str]) -> (i32, String) {
        let mut all = args.to_vec();
        all.extend(["--config", self.config.to_str().unwrap()]);
        let o = gate(&all);
        (o.status.code().unwrap_or(-1), text(&o))
    }
}

fn sql<T: rusqlite::types::FromSql>(db: &Path, q: &str) -> T {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(q, [], |r| r.get(0)).unwrap()
}

fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false)
}

#[test]
fn the_audit_trail_is_kept_verified_and_every_kind_of_tampering_is_named() {
    let site = Local::new("");
    site.serve("2026-11-23T07:00:00+08:00");
    let audit = site.state("audit.sqlite");
    assert!(audit.is_file(), "the service keeps an audit trail beside its event log");
    assert_eq!(sql::<i64>(&audit, "SELECT COUNT(*) FROM audit WHERE action = 'face-config-changed'"), 1, "the [face] configuration seen at the first start");
    assert_eq!(sql::<i64>(&audit, "SELECT COUNT(*) FROM audit WHERE action = 'device-key-created'"), 1, "the device key made at the first start");
    site.serve("2026-11-24T07:00:00+08:00");
    assert_eq!(sql::<i64>(&audit, "SELECT COUNT(*) FROM audit WHERE action = 'face-config-changed'"), 1, "an unchanged configuration is not audited again");
    let (code, out) = site.gate(&["report", "--period", "2026-11", "--format", "json", "--out", site.dir.path().join("r.json").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = site.gate(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    // The [face] configuration, the device key made at the first start, and the report.
    assert!(out.contains("whole: 3 entries"), "{out}");
    assert!(out.contains("checkpoints checked: 1; the newest covers 2 entries"), "the running gateway signed its chain's head: {out}");
    let (code, out) = site.gate(&["audit", "show"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("face-config-changed") && out.contains("report-generated"), "{out}");

    // Each kind of tampering, on a copy of the trail, is caught and named.
    let tamper = |name: &str, sql: &str, expect: &str| {
        let copy = site.dir.path().join(format!("audit-{name}.sqlite"));
        std::fs::copy(&audit, &copy).unwrap();
        rusqlite::Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
        let o = gate(&["audit", "verify", "--db", copy.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o));
        assert!(text(&o).contains(expect), "{name}: expected `{expect}` in {}", text(&o));
    };
    tamper("edit", "UPDATE audit SET actor = 'local:nobody' WHERE seq = 1", "entry 1: its contents do not match");
    tamper("delete", "DELETE FROM audit WHERE seq = 1", "entry 1 is missing");
    tamper("insert", "INSERT INTO audit VALUES (4, 0, 'x', 'enrolled', 'r-0001', '{}', '00', '00')", "entry 4: it does not follow entry 3");
    tamper("cut", "DELETE FROM audit WHERE seq >= 2", "the log ends at entry 1 but a checkpoint signed by the gateway covers 2 entries");
    tamper("reorder", "UPDATE audit SET seq = 9 WHERE seq = 1; UPDATE audit SET seq = 1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 9;", "entry 1: it does not follow entry 0");
}

#[test]
fn events_past_their_retention_vanish_by_themselves_bytes_and_all() {
    let site = Local::new("[retention]\nevents_days = 30\nalarms_days = 30\n");
    site.serve("2026-09-01T07:00:00+08:00");
    let db = site.state("events.sqlite");
    // The September morning's publishes carry their times (2026-09-01T07:00+08:00 is
    // 1788217200000 ms; the first 16 minutes all start like this, and no November time does).
    let old_time = "\"time\":1788217";
    assert!(file_contains(&db, old_time) || file_contains(&site.state("events.sqlite-wal"), old_time), "the old event is logged first");
    let before: i64 = sql(&db, "SELECT COUNT(*) FROM events");

    // Two months later the gateway serves again: the September events are past 30 days.
    site.serve("2026-11-23T07:00:00+08:00");
    let old: i64 = sql(&db, "SELECT COUNT(*) FROM events WHERE at_ms < 1790784000000"); // 2026-10-01
    assert_eq!(old, 0, "September's events were purged by the running gateway");
    let now: i64 = sql(&db, "SELECT COUNT(*) FROM events");
    assert!(now > 0 && now < before * 2, "November's events stay ({now} of {before} + new)");
    for f in ["events.sqlite", "events.sqlite-wal"] {
        assert!(!file_contains(&site.state(f), old_time), "{f} still holds a purged event's bytes");
    }
    let audit = site.state("audit.sqlite");
    let detail: String = sql(&audit, "SELECT detail FROM audit WHERE action = 'retention-purge' ORDER BY seq DESC LIMIT 1");
    let d: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(d["events"].as_u64(), Some(before as u64), "the purge is audited with what it removed: {detail}");
    // Ids go on from where they were: a purge never lets an event id be used twice.
    let first_new: i64 = sql(&db, "SELECT MIN(seq) FROM events");
    assert!(first_new > before, "new events continue after the purged ones ({first_new} > {before})");
}

#[test]
fn the_report_counts_what_the_database_holds_and_renders_in_a_real_browser() {
    let site = Local::new("");
    site.serve("2026-11-23T07:00:00+08:00");
    let db = site.state("events.sqlite");
    let json_out = site.dir.path().join("report.json");
    let (code, out) = site.gate(&["report", "--period", "2026-11", "--format", "json", "--out", json_out.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let r: gate::report::Report = serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).expect("the JSON matches the report's type (deny_unknown_fields)");

    // Numbers equal counts taken from the database directly.
    let c = rusqlite::Connection::open(&db).unwrap();
    let mut st = c
        .prepare(
            "SELECT json_extract(body,'$.credential'), COUNT(*) FROM events WHERE kind='decision' AND json_extract(body,'$.outcome')='grant' AND json_extract(body,'$.direction')='entry' GROUP BY 1",
        )
        .unwrap();
    let direct: std::collections::BTreeMap<String, u64> = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).unwrap().map(Result::unwrap).collect();
    assert!(!direct.is_empty(), "the morning has granted entries");
    assert_eq!(r.entries_by_credential, direct);
    let fallback: i64 = c.query_row("SELECT COUNT(*) FROM events WHERE kind='decision' AND json_extract(body,'$.by') LIKE 'fallback%'", [], |r| r.get(0)).unwrap();
    assert_eq!(r.plugins.fallback_decisions, fallback as u64);
    let residents = std::fs::read_to_string(root().join("configs/demo-subjects.toml")).unwrap().matches("role = \"resident\"").count() as u64;
    assert_eq!(r.residents.total, residents);
    assert!(r.audit.whole);

    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.exists(), "Chromium is missing: `cargo xtask setup` installs it");
    for (lang, title, card) in [("zh", "门禁数据管理情况公示", "门卡"), ("en", "How the gate's access data is managed", "card")] {
        let page = site.dir.path().join(format!("report-{lang}.html"));
        let (code, out) = site.gate(&["report", "--period", "2026-11", "--lang", lang, "--out", page.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        let profile = tempfile::tempdir().unwrap();
        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
        let url = format!("file://{}", page.display());
        let dom = std::process::Command::new(chromium).args(flags).arg(format!("--user-data-dir={}", profile.path().display())).args(["--dump-dom", &url]).output().unwrap();
        let dom = String::from_utf8_lossy(&dom.stdout).to_string();
        assert!(dom.contains(title), "{lang}: the page's title is rendered: {dom}");
        let cards = r.entries_by_credential.get("card").copied().unwrap_or(0);
        assert!(dom.contains(&format!(">{card}</text>")) && dom.contains(&format!(">{cards}</text>")), "{lang}: the chart shows {cards} card entries");
        assert!(dom.contains(&format!("<td>{}</td>", r.residents.total)), "{lang}: the resident count");
        let shot = site.dir.path().join(format!("report-{lang}.png"));
        let o = std::process::Command::new(chromium)
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--hide-scrollbars", "--window-size=900,1400", &format!("--screenshot={}", shot.display()), &url])
            .output()
            .unwrap();
        assert!(shot.is_file(), "{lang}: no screenshot: {}", String::from_utf8_lossy(&o.stderr));
        let img = image::open(&shot).unwrap().to_rgb8();
        let dark = img.pixels().filter(|p| p.0.iter().all(|c| *c < 128)).count();
        let blue = img.pixels().filter(|p| p.0[2] > 120 && p.0[0] < 90).count();
        assert!(dark > 2_000, "{lang}: the screenshot has text ({dark} dark pixels)");
        assert!(blue > 500, "{lang}: the screenshot has the chart's bars ({blue} blue pixels)");
    }
}

#[test]
fn a_subject_report_tells_what_is_held_and_never_a_credential_value() {
    let site = Local::new("");
    site.serve("2026-11-23T07:00:00+08:00");
    let (code, out) = site.gate(&["subject", "report", "r-0001"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Subject r-0001") && out.contains("card") && out.contains("Recent access events"), "{out}");
    assert!(out.contains("north-gate"), "r-0001's morning exit is listed: {out}");
    // Canary values: the card number, the PIN, its stored hash and the plate never appear.
    for canary in ["10012345", "246810", "60fd77c20bba1d54f2b6d3ca2fe0eebcfe1f02052c647a9431d244831dfd27f1", "浙A12345"] {
        assert!(!out.contains(canary), "the subject report shows `{canary}`:\n{out}");
    }
    let (code, out) = site.gate(&["subject", "report", "nobody-9"]);
    assert_eq!(code, 2, "{out}");
}
