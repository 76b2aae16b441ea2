//! Visitor passes enforced by the host (issue 14, item 1), end to end: the real `gate`
//! binary issues and shows passes (`gate qr sign`, `gate qr show`), the real `grant-all`
//! plugin grants everything it is asked, and the host still refuses a pass outside its
//! window, at another door, used up, revoked, or shown with an old code. Replay runs on
//! the trace's virtual clock; the restart and revocation tests serve with `gate run`, real
//! SQLite and a real mosquitto.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{broker, gate, plugin, root, text, wait_until, Site};

/// The demo platform's issuer secret (its public key is the demo site's `qr.issuer_keys`).
fn issuer_hex() -> String {
    std::fs::read_to_string(root().join("tests/keys/demo-qr-issuer.hex")).unwrap().trim().to_string()
}

/// 2026-11-23T07:00:00+08:00, the start of every replayed trace here (a 15 s step boundary).
const START: &str = "2026-11-23T07:00:00+08:00";
const START_MS: i64 = 1_795_388_400_000;

fn iso(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// `gate qr sign` of a pass; panics with the output if it is refused.
fn sign(id: &str, doors: &[&str], not_before: i64, not_after: i64, uses: u32) -> String {
    let (nb, na, uses, key) = (iso(not_before), iso(not_after), uses.to_string(), issuer_hex());
    let mut args = vec!["qr", "sign", "--key-hex", &key, "--pass", id, "--visitor", "v-1123-07", "--host", "r-0002", "--not-before", &nb, "--not-after", &na, "--uses", &uses];
    for d in doors {
        args.extend(["--door", d]);
    }
    let o = gate(&args);
    assert!(o.status.success(), "qr sign failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `gate qr show`: what the visitor's phone shows at `at_ms`.
fn show(signed: &str, at_ms: i64) -> String {
    let o = gate(&["qr", "show", "--code-key", root().join("configs/demo-qr-code.key").to_str().unwrap(), "--at", &iso(at_ms), signed]);
    assert!(o.status.success(), "qr show failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The demo site with `grant-all` deciding every door, and QR accepted at building-3 too.
fn grant_all_site(dir: &Path) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    let cfg = demo
        .replace("../target/plugins/resident-policy.wasm", plugin("grant-all").to_str().unwrap())
        .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")))
        .replace("credentials = [\"face\", \"card\", \"pin\", \"nfc\"]\npolicy", "credentials = [\"face\", \"card\", \"pin\", \"nfc\", \"qr\"]\npolicy");
    let cfg = named_grant_all(&cfg);
    assert!(cfg.contains("\"nfc\", \"qr\"]\npolicy = \"grant-all\"\nheld_open_ms"), "building-3 accepts qr in this test");
    let path = dir.join("site.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// The config with its policy plugin named `grant-all` (the component is grant-all already),
/// so decisions say `plugin:grant-all`.
fn named_grant_all(cfg: &str) -> String {
    cfg.replace("[plugins.resident-policy]", "[plugins.grant-all]").replace("policy = \"resident-policy\"", "policy = \"grant-all\"")
}

/// A [`Site`] (real mosquitto, `[fleet]`, an operator key) served by `grant-all`.
fn grant_all_fleet_site(broker: &gate_fleet::testing::Broker) -> Site {
    let site = Site::new(broker, "grant-all", 5);
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    assert!(cfg.contains("grant-all.wasm"), "served by grant-all");
    std::fs::write(&site.config, named_grant_all(&cfg)).unwrap();
    site
}

/// A trace starting at `start` with a QR scan per (at ms, door, displayed code).
fn qr_trace(dir: &Path, name: &str, start: &str, scans: &[(i64, &str, String)]) -> PathBuf {
    let mut t = format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{start}\",\"description\":\"visitor passes\"}}\n");
    for (at, door, code) in scans {
        t.push_str(&format!("{{\"at\":{at},\"input\":{{\"kind\":\"qr\",\"door\":\"{door}\",\"code\":\"{code}\"}}}}\n"));
    }
    let p = dir.join(format!("{name}.jsonl"));
    std::fs::write(&p, t).unwrap();
    p
}

/// The QR decisions of a replay: (at, door, outcome, by, reason).
fn replay_qr(config: &Path, trace: &Path) -> Vec<(i64, String, String, String, String)> {
    let o = gate(&["replay", "--config", config.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"]);
    assert!(o.status.success(), "replay failed: {}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["expect"]["kind"] == "decision" && l["expect"]["credential"] == "qr")
        .map(|l| {
            let e = &l["expect"];
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (l["at"].as_i64().unwrap(), s("door"), s("outcome"), s("by"), s("reason"))
        })
        .collect()
}

const HOUR: i64 = 3_600_000;

#[test]
fn a_dynamic_code_is_accepted_now_refused_31_s_later_and_never_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = grant_all_site(dir.path());
    let pass = sign("p-1123-07", &["north-gate"], START_MS - HOUR, START_MS + HOUR, 10);
    let shown = show(&pass, START_MS + 1_000);
    assert!(!shown.contains(&issuer_hex()), "the issuer secret is not in the code");
    let scans = [
        (1_000, "north-gate", shown.clone()),
        // The same photo again, past the repeat window but within its step: one grant per code.
        (5_000, "north-gate", shown.clone()),
        // The photo 31 s after it was shown: refused, though the pass is valid and the plugin grants all.
        (32_000, "north-gate", shown.clone()),
        // What the phone shows then works.
        (32_000 + 2_500, "north-gate", show(&pass, START_MS + 34_500)),
    ];
    let got = replay_qr(&config, &qr_trace(dir.path(), "dynamic", START, &scans));
    let summary: Vec<(i64, &str, &str)> = got.iter().map(|(at, _, o, by, _)| (*at, o.as_str(), by.as_str())).collect();
    assert_eq!(summary, vec![(1_000, "grant", "plugin:grant-all"), (5_000, "deny", "host:pass-code-used"), (32_000, "deny", "host:pass-code"), (34_500, "grant", "plugin:grant-all")], "{got:?}");
    assert_eq!(got[2].4, "visitor pass: the code is expired or wrong (codes change every 15 s)");
    assert_eq!(got[1].4, "visitor pass: this code was already used; show the next one");
}

#[test]
fn the_host_refuses_a_pass_at_another_door_outside_its_window_used_up_or_old_whatever_the_plugin_says() {
    let dir = tempfile::tempdir().unwrap();
    let config = grant_all_site(dir.path());
    let north_only = sign("p-1123-01", &["north-gate"], START_MS - HOUR, START_MS + HOUR, 5);
    let later = sign("p-1123-02", &["north-gate"], START_MS + 2 * HOUR, START_MS + 3 * HOUR, 5);
    let past = sign("p-1123-03", &["north-gate"], START_MS - 3 * HOUR, START_MS - HOUR, 5);
    let once = sign("p-1123-04", &["north-gate", "building-3"], START_MS - HOUR, START_MS + HOUR, 1);
    let old =
        "GATEQR1.eyJ2aXNpdG9yIjoidi0xMTIzLTAxIiwiaG9zdCI6InItMDAwMiIsInZhbGlkX3VudGlsX21zIjoxNzk1NDA2NDAwMDAwfQ.XMPdBlph02PPffksIv7C6qRvGLS92xbIKyRa60JhX5yJhpgy3N-m208xymLIGAmpyfY62cr4SaWz9o9Mi-9KDA"
            .to_string();
    let at = |ms: i64| START_MS + ms;
    let scans = [
        (1_000, "building-3", show(&north_only, at(1_000))),
        (4_000, "north-gate", show(&later, at(4_000))),
        (8_000, "north-gate", show(&past, at(8_000))),
        (12_000, "north-gate", show(&once, at(12_000))),
        (20_000, "building-3", show(&once, at(20_000))),
        (24_000, "north-gate", old),
    ];
    let got = replay_qr(&config, &qr_trace(dir.path(), "refusals", START, &scans));
    let want = [
        ("building-3", "deny", "host:pass-door", "visitor pass: not for this door"),
        ("north-gate", "deny", "host:pass-window", "visitor pass: not valid until 2026-11-23T01:00:00Z"),
        ("north-gate", "deny", "host:pass-window", "visitor pass: expired at 2026-11-22T22:00:00Z"),
        ("north-gate", "grant", "plugin:grant-all", ""),
        ("building-3", "deny", "host:pass-used-up", "visitor pass: used up (1 of 1)"),
        ("north-gate", "deny", "host:qr-invalid", "an old visitor pass (GATEQR1: no doors, window, uses or dynamic code); the issuer must issue a new one"),
    ];
    let got_short: Vec<(&str, &str, &str, &str)> = got.iter().map(|(_, d, o, by, r)| (d.as_str(), o.as_str(), by.as_str(), r.as_str())).collect();
    assert_eq!(got_short, want);
}

#[test]
fn bad_pass_fields_exit_2_naming_the_field_and_names_or_id_numbers_are_refused() {
    let key = issuer_hex();
    let base = ["qr", "sign", "--key-hex", &key, "--pass", "p-1", "--host", "r-0002", "--door", "north-gate", "--not-before", "2026-11-23T07:00:00+08:00"];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra);
        let o = gate(&a);
        (o.status.code(), text(&o))
    };
    let cases: &[(&[&str], &str)] = &[
        (&["--visitor", "Zhang Wei", "--not-after", "2026-11-23T20:00:00+08:00"], "visitor pass key `visitor`"),
        (&["--visitor", "v-110101199003071234", "--not-after", "2026-11-23T20:00:00+08:00"], "ID number"),
        (&["--visitor", "v-1", "--not-after", "2026-11-23T06:00:00+08:00"], "key `not_after_ms`: must be after not_before_ms"),
        (&["--visitor", "v-1", "--not-after", "2028-11-23T06:00:00+08:00"], "at most 366"),
        (&["--visitor", "v-1", "--not-after", "2026-11-23T20:00:00+08:00", "--uses", "0"], "key `uses`: 0 is outside 1..=1000"),
        (&["--visitor", "v-1", "--not-after", "tomorrow"], "--not-after"),
    ];
    for (extra, want) in cases {
        let (code, out) = run(extra);
        assert_eq!(code, Some(2), "{extra:?}: {out}");
        assert!(out.contains(want), "{extra:?}: wanted {want:?} in {out}");
    }
    let o = gate(&["qr", "show", "--code-key", "/nonexistent/code.key", "GATEQR2.e30.AA"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("--code-key"), "{}", text(&o));
    // A site whose code key is missing is refused by `gate config check` and at start, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let config = grant_all_site(dir.path());
    let body = std::fs::read_to_string(&config).unwrap().replace(root().join("configs/demo-qr-code.key").to_str().unwrap(), "missing-code.key");
    std::fs::write(&config, body).unwrap();
    let o = gate(&["config", "check", config.to_str().unwrap()]);
    assert!(o.status.code() == Some(2) && text(&o).contains("key `qr.code_key`") && text(&o).contains("missing-code.key"), "{}", text(&o));
    let o = gate(&["replay", "--config", config.to_str().unwrap(), "--trace", "tests/traces/stranger.jsonl"]);
    let line = text(&o).split("site.toml:").nth(1).map(|rest| rest.split(':').next().unwrap_or("").to_string()).unwrap_or_default();
    assert!(o.status.code() == Some(2) && text(&o).contains(": key `qr.code_key`") && text(&o).contains("missing-code.key"), "{}", text(&o));
    assert!(line.parse::<u32>().is_ok(), "the error names the line: {}", text(&o));
}

#[test]
fn replaying_a_visitor_trace_twice_gives_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let config = grant_all_site(dir.path());
    let pass = sign("p-1123-09", &["north-gate"], START_MS - HOUR, START_MS + HOUR, 2);
    let scans: Vec<(i64, &str, String)> = (0..5).map(|i| (1_000 + i * 16_000, "north-gate", show(&pass, START_MS + 1_000 + i * 16_000))).collect();
    let trace = qr_trace(dir.path(), "twice", START, &scans);
    let run = || gate(&["replay", "--config", config.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"]).stdout;
    let first = run();
    assert!(String::from_utf8_lossy(&first).contains("used up (2 of 2)"), "{}", String::from_utf8_lossy(&first));
    assert_eq!(first, run());
}

/// Now, to the millisecond, and a trace start there (the trace-driven gateway's clock).
fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The QR decisions a served gateway logged: (outcome, by, reason).
fn logged_qr(site: &Site) -> Vec<(String, String, String)> {
    site.records("decision")
        .into_iter()
        .filter(|(_, d)| d["credential"] == "qr")
        .map(|(_, d)| (d["outcome"].as_str().unwrap_or("").into(), d["by"].as_str().unwrap_or("").into(), d["reason"].as_str().unwrap_or("").into()))
        .collect()
}

#[test]
fn uses_are_counted_durably_and_survive_a_kill_and_restart() {
    let broker = broker();
    let site = grant_all_fleet_site(&broker);
    let start = now_ms();
    let pass = sign("p-restart-1", &["north-gate"], start - HOUR, start + HOUR, 2);
    // First serve: one grant, then kill -9 while the trace still runs.
    let first = qr_trace(site.dir.path(), "first", &iso(start), &[(500, "north-gate", show(&pass, start + 500)), (600_000, "north-gate", show(&pass, start + 600_000))]);
    let gw = site.run(&first);
    wait_until("the first grant", Duration::from_secs(60), || logged_qr(&site).len() == 1);
    drop(gw); // SIGKILL
    assert_eq!(logged_qr(&site), vec![("grant".to_string(), "plugin:grant-all".to_string(), String::new())]);
    // Serve again: the second use is granted, the third refused by the host; the count came from the log.
    let start2 = now_ms().max(start + 20_000);
    let second = qr_trace(site.dir.path(), "second", &iso(start2), &[(500, "north-gate", show(&pass, start2 + 500)), (16_500, "north-gate", show(&pass, start2 + 16_500))]);
    let gw = site.run(&second);
    wait_until("two more decisions", Duration::from_secs(90), || logged_qr(&site).len() == 3);
    let got = logged_qr(&site);
    assert_eq!(got[1], ("grant".to_string(), "plugin:grant-all".to_string(), String::new()), "{got:?}\n{}", gw.output());
    assert_eq!(got[2], ("deny".to_string(), "host:pass-used-up".to_string(), "visitor pass: used up (2 of 2)".to_string()), "{got:?}");
}

#[test]
fn a_pass_revoked_by_a_signed_command_is_refused_by_the_host() {
    let broker = broker();
    let site = grant_all_fleet_site(&broker);
    let start = now_ms();
    let pass = sign("p-revoke-1", &["north-gate"], start - HOUR, start + HOUR, 1000);
    // A scan every 5 s for ten minutes, each with the code the phone shows then.
    let scans: Vec<(i64, &str, String)> = (0..120).map(|i| (1_000 + i * 5_000, "north-gate", show(&pass, start + 1_000 + i * 5_000))).collect();
    let gw = site.run(&qr_trace(site.dir.path(), "revoke", &iso(start), &scans));
    wait_until("a grant of the pass", Duration::from_secs(60), || logged_qr(&site).iter().any(|d| d.0 == "grant"));
    let key = site.key.to_str().unwrap().to_string();
    let target = format!("{}/{}", support::SITE, support::GW);
    let (code, out) = site.gate_with_broker(&["remote", "revoke", "--key", &key, "--gateway", &target, "--reference", "pass:p-revoke-1", "--reason", "visit cancelled"]);
    assert_eq!(code, 0, "{out}\n{}", gw.output());
    assert!(out.contains("visitor pass:p-revoke-1 revoked"), "{out}");
    let revoked_from = logged_qr(&site).len();
    wait_until("the revoked pass refused", Duration::from_secs(30), || logged_qr(&site)[revoked_from..].iter().any(|d| d.1 == "host:pass-revoked"));
    let after: Vec<_> = logged_qr(&site)[revoked_from..].to_vec();
    assert!(after.iter().all(|d| d.0 == "deny"), "nothing is granted after the revocation: {after:?}");
    assert!(after.iter().any(|d| d.2 == "visitor pass: revoked"), "{after:?}");
    // A pass id that is not pseudonymous is refused before anything is sent.
    let (code, out) = site.gate_with_broker(&["remote", "revoke", "--key", &key, "--gateway", &target, "--reference", "pass:Zhang Wei", "--reason", "x"]);
    assert_eq!(code, 2, "{out}");
}

/// In service, on the wall clock: a photo of a pass's code taken at 1 s is refused when shown
/// at 32 s, while the phone's fresh code then is accepted, and another pass's code shown
/// at once is accepted.
#[test]
fn in_service_a_photographed_code_stops_working_within_31_s_on_the_wall_clock() {
    let broker = broker();
    let site = grant_all_fleet_site(&broker);
    let start = now_ms();
    let now_pass = sign("p-wall-1", &["north-gate"], start - HOUR, start + HOUR, 10);
    let photographed = sign("p-wall-2", &["north-gate"], start - HOUR, start + HOUR, 10);
    let scans = [(1_000, "north-gate", show(&now_pass, start + 1_000)), (32_000, "north-gate", show(&photographed, start + 1_000)), (33_000, "north-gate", show(&photographed, start + 33_000))];
    let gw = site.run(&qr_trace(site.dir.path(), "wall", &iso(start), &scans));
    wait_until("three scans decided", Duration::from_secs(90), || logged_qr(&site).len() == 3);
    let got = logged_qr(&site);
    assert_eq!(got[0].0, "grant", "{got:?}\n{}", gw.output());
    assert_eq!((got[1].0.as_str(), got[1].1.as_str()), ("deny", "host:pass-code"), "{got:?}");
    assert_eq!(got[2].0, "grant", "the phone's code of the moment still works: {got:?}");
}
