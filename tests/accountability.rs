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

/// Enrols `subject` on `site`'s gateway from `photos` (models/testdata), turning its camera
/// on with the fetched models and a face key of its own (each gateway keeps its own).
fn enrol(site: &support::Site, subject: &str, photos: &[&str]) {
    let models = root().join("models");
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    if !cfg.contains("face.key") {
        assert!(cfg.contains("[face]\n"), "the demo site's [face] section changed");
        std::fs::write(&site.config, cfg.replacen("[face]\n", &format!("[face]\nmodels_dir = {models:?}\ndb = \"faces.sqlite\"\nkey = \"face.key\"\n"), 1)).unwrap();
        let o = gate(&["face", "key", "new", site.dir.path().join("face.key").to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let photos: Vec<String> = photos.iter().map(|p| models.join("testdata").join(p).to_string_lossy().into_owned()).collect();
    let mut args = vec!["enroll", "--config", site.config.to_str().unwrap(), "--subject", subject, "--purpose", "entry at the community gates", "--notice-version", "2026-11"];
    args.extend(["--capture", "signed at the property office"]);
    args.extend(photos.iter().map(String::as_str));
    let o = gate(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Issue 15 item 3 (monthly publication and the site report) and item 1 (the checkpoint read
/// off the broker): two gateways of one site serve across midnight at the end of November;
/// each publishes its signed November report when the month ends, `gate fleet report` counts
/// a resident enrolled on both once, a forged report is refused by name, and an audit trail
/// cut after its published checkpoint is caught with that checkpoint.
#[test]
fn gateways_publish_their_month_and_the_site_report_counts_each_person_once() {
    use std::time::Duration;
    use support::{card_reads, publish_raw, retained, wait_until, Site, SITE};
    let broker = support::broker();
    let north = Site::new(&broker, "resident-policy", 5);
    let south = Site::new(&broker, "resident-policy", 5);
    // The south gateway: its own id, the site's reference key, enrolled by the operator.
    let cfg = std::fs::read_to_string(&south.config).unwrap();
    assert!(cfg.contains("gateway = \"gw-north-1\""));
    std::fs::write(&south.config, cfg.replace("gateway = \"gw-north-1\"", "gateway = \"gw-south-1\"")).unwrap();
    std::fs::copy(north.ref_key(), south.ref_key()).unwrap();
    let o = gate(&["fleet", "device-key", "--config", south.config.to_str().unwrap()]);
    let public = String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap().to_string();
    let o = gate(&["fleet", "enroll", "--gateway", &format!("{SITE}/gw-south-1"), "--public", &public, "--inventory", north.inventory_path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // r-0003 holds a template on both gateways (the test photos hold only one person
    // photographed more than once, and enrolment needs two agreeing photos).
    enrol(&north, "r-0003", &["obama.jpg", "obama3.jpg"]);
    enrol(&south, "r-0003", &["obama2.jpg", "obama3.jpg"]);

    // Card reads from 23:59:58 to 00:00:03 on the last night of November, site time.
    let start = "2026-11-30T23:59:57+08:00";
    let gws: Vec<support::Running> = [&north, &south].iter().map(|s| s.run(&s.trace_from(start, "midnight", 6, 1000, &card_reads()))).collect();
    let nov_end = gate::report::month_bounds("2026-12", 480).unwrap().0;
    let site_report = |extra: &[&str]| {
        let mut args = vec!["fleet", "report", "--site", SITE, "--period", "2026-11"];
        args.extend(extra);
        north.gate_with_broker(&args)
    };
    let mut last = (0, String::new());
    wait_until("both gateways' November reports", Duration::from_secs(60), || {
        last = site_report(&["--json"]);
        last.0 == 0
    });
    let (_, out) = last;
    let json: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["gateways"], serde_json::json!(["gw-north-1", "gw-south-1"]), "{out}");
    assert_eq!((json["face_subjects"].as_u64(), json["templates_held"].as_u64(), json["face_subjects_distinct"].as_bool()), (Some(1), Some(2), Some(true)), "{out}");
    // Entries by card equal the two event logs' November card grants, counted directly.
    let direct: i64 = [&north, &south]
        .iter()
        .map(|s| {
            let c = rusqlite::Connection::open(&s.db).unwrap();
            c.query_row("SELECT COUNT(*) FROM events WHERE kind='decision' AND json_extract(body,'$.outcome')='grant' AND json_extract(body,'$.credential')='card' AND json_extract(body,'$.direction')='entry' AND at_ms < ?1", [nov_end], |r| r.get::<_, i64>(0)).unwrap()
        })
        .sum();
    assert!(direct >= 2, "reads before midnight were granted");
    assert_eq!(json["entries_by_credential"]["card"].as_i64(), Some(direct), "{out}");
    // Each gateway audited the publication.
    for s in [&north, &south] {
        let n: i64 = sql(&s.dir.path().join("state/audit.sqlite"), "SELECT COUNT(*) FROM audit WHERE action='report-generated' AND target='period:2026-11' AND detail LIKE '%\"published\":\"mqtt\"%'");
        assert_eq!(n, 1);
    }
    // The table an operator reads.
    let (code, table) = site_report(&[]);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("people with face data: 1 (2 templates on 2 gateway(s))"), "{table}");

    // A broker client without the south gateway's key replaces its retained report: refused by name.
    let topic = format!("gate/v1/{SITE}/gw-south-1/report/2026-11");
    let fake = gate_fleet::signed::DeviceKey::generate().seal(gate_fleet::signed::Kind::Report, &topic, &out[out.find('{').unwrap()..]);
    publish_raw(north.port, &[(topic.as_str(), true, fake)]);
    let (code, table) = site_report(&[]);
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("gw-south-1: NO REPORT COMBINED (forged"), "{table}");
    assert!(table.contains("people with face data: 1 (1 templates on 1 gateway(s))"), "{table}");

    // The north gateway stops (a checkpoint is signed and published at every stop); the
    // checkpoint read off the broker holds its audit trail: cutting the tail is caught.
    let mut gws = gws;
    let mut n = gws.remove(0);
    assert!(std::process::Command::new("kill").args(["-TERM", &n.child.id().to_string()]).status().unwrap().success());
    wait_until("the north gateway to stop", Duration::from_secs(30), || n.child.try_wait().unwrap().is_some());
    let audit = north.dir.path().join("state/audit.sqlite");
    let head: i64 = sql(&audit, "SELECT MAX(seq) FROM audit");
    let cp_topic = format!("gate/v1/{SITE}/gw-north-1/audit/checkpoint");
    let mut cp = None;
    wait_until("the stop's checkpoint on the broker", Duration::from_secs(20), || {
        cp = retained(north.port, &cp_topic, Duration::from_secs(2)).filter(|p| serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| v["seq"].as_i64() == Some(head)));
        cp.is_some()
    });
    let cp_file = north.dir.path().join("checkpoint-from-broker.json");
    std::fs::write(&cp_file, cp.unwrap()).unwrap();
    let verify = || gate(&["audit", "verify", "--db", audit.to_str().unwrap(), "--checkpoint", cp_file.to_str().unwrap()]);
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let c = rusqlite::Connection::open(&audit).unwrap();
    c.execute("DELETE FROM audit WHERE seq = ?1", [head]).unwrap();
    c.execute("DELETE FROM audit_checkpoints WHERE seq >= ?1", [head]).unwrap();
    drop(c);
    let o = verify();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("the log ends at entry {} but a checkpoint signed by the gateway covers {head} entries", head - 1)), "{}", text(&o));
}
