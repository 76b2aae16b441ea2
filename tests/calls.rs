//! A visitor's call to a resident (issue 14 item 2), end to end with the real binary, the
//! real plugins and SQLite: replay on the trace's virtual clock for every way a call can go,
//! and in service over the real broker with a simulated door panel and indoor station.

mod support;

use gate_fleet::commands::CommandAction;
use gate_fleet::keys::OperatorKey;
use gate_fleet::operator::Operator;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

/// The demo site (no fleet) in `dir`, calls ringing 30 s indoors, 45 s on the phone, 60 s
/// at the guard (the defaults).
fn local_site(dir: &Path) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    let cfg = demo
        .replace("../target/plugins/", &format!("{}/", root().join("target/plugins").display()))
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")));
    let path = dir.join("site.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// Replays `lines` (at ms, input JSON) and returns the records as JSON.
fn replay(dir: &Path, name: &str, lines: &[(u64, &str)]) -> Vec<serde_json::Value> {
    let cfg = local_site(dir);
    let trace = dir.join(format!("{name}.jsonl"));
    let mut t = String::from("{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-24T19:00:00+08:00\"}\n");
    for (at, input) in lines {
        t.push_str(&format!("{{\"at\":{at},\"input\":{input}}}\n"));
    }
    std::fs::write(&trace, t).unwrap();
    let o = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect()
}

/// (step, via) of each call record.
fn steps(recs: &[serde_json::Value]) -> Vec<(String, Option<String>)> {
    recs.iter().filter(|r| r["kind"] == "call").map(|r| (r["step"].as_str().unwrap().to_string(), r["via"].as_str().map(String::from))).collect()
}

fn grants(recs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    recs.iter().filter(|r| r["kind"] == "decision" && r["outcome"] == "grant").collect()
}

const CALL: &str = r#"{"kind":"call-button","door":"north-gate","resident":"r-0002"}"#;

fn answer(via: &str, open: bool) -> String {
    format!(r#"{{"kind":"call-answer","door":"north-gate","via":"{via}","open":{open}}}"#)
}

fn s(step: &str, via: Option<&str>) -> (String, Option<String>) {
    (step.to_string(), via.map(String::from))
}

#[test]
fn answered_at_the_indoor_station_the_door_opens_once_for_that_call() {
    let dir = tempfile::tempdir().unwrap();
    let a = answer("indoor", true);
    let recs = replay(dir.path(), "indoor", &[(1_000, CALL), (6_000, &a), (7_000, &a)]);
    assert_eq!(steps(&recs), vec![s("ringing-indoor", None), s("answered", Some("indoor"))]);
    let g = grants(&recs);
    assert_eq!(g.len(), 1, "the door opens once: {recs:#?}");
    assert_eq!((g[0]["credential"].as_str(), g[0]["subject"].as_str(), g[0]["door"].as_str()), (Some("intercom"), None, Some("north-gate")), "{:?}", g[0]);
    // The second answer finds no call ringing: nothing opens.
    assert!(recs.iter().any(|r| r["kind"] == "ignored" && r["reason"] == "no-live-call"), "{recs:#?}");
}

#[test]
fn unanswered_indoors_the_call_goes_to_the_phone_and_the_phone_opens_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = answer("phone", true);
    // The phone cannot answer before it rings (31 s after the call began).
    let recs = replay(dir.path(), "phone", &[(1_000, CALL), (5_000, &a), (40_000, &a)]);
    assert_eq!(steps(&recs), vec![s("ringing-indoor", None), s("refused", Some("phone")), s("ringing-phone", None), s("answered", Some("phone"))]);
    assert_eq!(grants(&recs).len(), 1, "{recs:#?}");
    let ringing_phone = recs.iter().find(|r| r["step"] == "ringing-phone").unwrap();
    assert!(ringing_phone["until_ms"].as_i64().is_some(), "the platform is told how long the phone rings: {ringing_phone}");
}

#[test]
fn a_declined_call_opens_nothing_and_an_unanswered_one_reaches_the_guard_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let recs = replay(dir.path(), "declined", &[(1_000, CALL), (3_000, &answer("indoor", false))]);
    assert_eq!(steps(&recs), vec![s("ringing-indoor", None), s("declined", Some("indoor"))]);
    assert!(grants(&recs).is_empty());

    let late = answer("guard", true);
    let recs = replay(dir.path(), "unanswered", &[(1_000, CALL), (200_000, &late)]);
    assert_eq!(steps(&recs), vec![s("ringing-indoor", None), s("ringing-phone", None), s("ringing-guard", None), s("unanswered", None)]);
    assert!(grants(&recs).is_empty(), "a late answer opens nothing: {recs:#?}");
    // Virtual time: the stages end exactly on the site's timeouts, the same every run.
    let at: Vec<i64> = recs.iter().filter(|r| r["kind"] == "call").filter_map(|r| r["until_ms"].as_i64()).collect();
    assert_eq!(at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>(), vec![45_000, 60_000]);
    assert_eq!(recs, replay(dir.path(), "unanswered", &[(1_000, CALL), (200_000, &late)]), "replay is deterministic");
    // A call for someone who is not a resident rings nobody.
    let recs = replay(dir.path(), "stranger", &[(1_000, r#"{"kind":"call-button","door":"north-gate","resident":"s-0101"}"#)]);
    assert!(steps(&recs).is_empty() && recs.iter().any(|r| r["reason"] == "unknown-resident"), "{recs:#?}");
}

/// In service: a door panel calls over MQTT, a simulated indoor station sees the call on the
/// event stream and answers with its own key; the door opens once; a repeated, foreign or
/// unauthorised answer is refused; a restart in the middle of a call ends it.
#[test]
fn in_service_a_panel_calls_an_indoor_station_answers_and_a_restart_ends_a_ringing_call() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    // The panel and the indoor stations share a key with the intercom permission here.
    let intercom = OperatorKey::generate("intercom-1").unwrap();
    let cfg = format!("{cfg}\n[[fleet.trusted_keys]]\nid = \"intercom-1\"\npublic = \"{}\"\nmay = [\"intercom\"]\n", intercom.public_b64());
    std::fs::write(&site.config, cfg).unwrap();
    let ops = OperatorKey::load(&site.key).unwrap();
    let gw = site.run(&site.trace("idle", 1, 1_000, &[r#"{"kind":"exit-button","door":"north-gate"}"#.to_string()]));
    wait_until("the gateway online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let send = |key: &OperatorKey, action: CommandAction| {
        rt.block_on(async {
            let mut op = Operator::connect(&broker.plain(), &format!("station-{}", rand_id()), Duration::from_secs(10)).await.unwrap();
            op.set_inventory(site.inventory());
            let r = op.command(key, SITE, GW, action, Duration::from_secs(20)).await.unwrap();
            op.disconnect().await;
            r
        })
    };
    let call = |door: &str| CommandAction::CallResident { door: door.into(), resident: "r-0002".into() };
    let r = send(&intercom, call("north-gate"));
    assert!(r.ok && r.detail.contains("ringing"), "{r:?}");
    let id = r.detail.split_whitespace().nth(1).unwrap().to_string();
    wait_until("the ringing call in the event log", Duration::from_secs(10), || site.records("call").iter().any(|(_, c)| c["call"] == id.as_str() && c["step"] == "ringing-indoor"));
    // An operator key without the intercom permission cannot answer; a foreign call id is refused.
    let r = send(&ops, CommandAction::AnswerCall { call: id.clone(), via: "indoor".into(), open: true });
    assert!(!r.ok && r.code == "unauthorised", "{r:?}");
    let r = send(&intercom, CommandAction::AnswerCall { call: "call-elsewhere-1".into(), via: "indoor".into(), open: true });
    assert!(!r.ok && r.detail.contains("not live"), "{r:?}");
    let r = send(&intercom, CommandAction::AnswerCall { call: id.clone(), via: "indoor".into(), open: true });
    assert!(r.ok && r.detail.contains("answered by the indoor"), "{r:?}");
    wait_until("the door opened for the call", Duration::from_secs(10), || site.records("decision").iter().any(|(_, d)| d["credential"] == "intercom" && d["outcome"] == "grant"));
    let r = send(&intercom, CommandAction::AnswerCall { call: id.clone(), via: "indoor".into(), open: true });
    assert!(!r.ok && r.detail.contains("not live"), "a second answer to the same call: {r:?}");
    assert_eq!(site.records("decision").iter().filter(|(_, d)| d["credential"] == "intercom").count(), 1, "the door opened once");

    // A call rings; the gateway is killed and restarted: the call ends, its answer is refused.
    let r = send(&intercom, call("building-3"));
    assert!(r.ok, "{r:?}");
    let id = r.detail.split_whitespace().nth(1).unwrap().to_string();
    drop(gw);
    let _gw = site.run(&site.trace("idle-2", 1, 1_000, &[r#"{"kind":"exit-button","door":"north-gate"}"#.to_string()]));
    wait_until("the call ended by the restart", Duration::from_secs(30), || site.records("call").iter().any(|(_, c)| c["call"] == id.as_str() && c["step"] == "ended-by-restart"));
    wait_until("the gateway online again", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let r = send(&intercom, CommandAction::AnswerCall { call: id, via: "indoor".into(), open: true });
    assert!(!r.ok && r.detail.contains("not live"), "{r:?}");
    assert_eq!(site.records("decision").iter().filter(|(_, d)| d["credential"] == "intercom").count(), 1, "nothing opened after the restart");
}

fn rand_id() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A call nobody answers indoors or on the phone reaches the guard: `gate guard attention`
/// lists it, and the guard's answer opens the door once.
#[test]
fn a_call_that_falls_through_to_the_guard_is_shown_to_the_guard_who_can_open() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let cfg = std::fs::read_to_string(&site.config).unwrap().replace(r#"may = ["deploy", "door", "credentials", "pin"]"#, r#"may = ["deploy", "door", "credentials", "pin", "guard", "intercom"]"#);
    std::fs::write(&site.config, format!("{cfg}\n[calls]\nindoor_ms = 1000\nphone_ms = 1000\nguard_ms = 600000\n")).unwrap();
    let key = OperatorKey::load(&site.key).unwrap();
    let _gw = site.run(&site.trace("idle", 1, 1_000, &[r#"{"kind":"exit-button","door":"north-gate"}"#.to_string()]));
    wait_until("the gateway online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let send = |action: CommandAction| {
        rt.block_on(async {
            let mut op = Operator::connect(&broker.plain(), &format!("guard-{}", rand_id()), Duration::from_secs(10)).await.unwrap();
            op.set_inventory(site.inventory());
            let r = op.command(&key, SITE, GW, action, Duration::from_secs(20)).await.unwrap();
            op.disconnect().await;
            r
        })
    };
    let r = send(CommandAction::CallResident { door: "north-gate".into(), resident: "r-0003".into() });
    assert!(r.ok, "{r:?}");
    let id = r.detail.split_whitespace().nth(1).unwrap().to_string();
    wait_until("the call ringing the guard", Duration::from_secs(20), || site.records("call").iter().any(|(_, c)| c["call"] == id.as_str() && c["step"] == "ringing-guard"));
    let (code, out) = site.gate_with_broker(&["guard", "attention", "--key", site.key.to_str().unwrap(), "--gateway", &format!("{SITE}/{GW}"), "--guard", "g-0001"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("CALL {id} at north-gate for r-0003 rings the guard")), "{out}");
    let r = send(CommandAction::AnswerCall { call: id, via: "guard".into(), open: true });
    assert!(r.ok && r.detail.contains("answered by the guard"), "{r:?}");
    wait_until("the door opened on the guard's answer", Duration::from_secs(10), || site.records("decision").iter().any(|(_, d)| d["credential"] == "intercom" && d["outcome"] == "grant"));
}

/// The example policy after visitor hours: a valid pass at 23:30 is escalated to a call to
/// the resident who invited the visitor; the resident's answer on the indoor station opens.
#[test]
fn a_late_visitor_with_a_pass_is_let_in_when_the_inviting_resident_answers_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let start_ms: i64 = 1_795_361_400_000 + 86_400_000; // 2026-11-23T23:30:00+08:00
    let iso = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap().to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
        t.format(&time::format_description::well_known::Rfc3339).unwrap()
    };
    assert_eq!(iso(start_ms), "2026-11-23T23:30:00+08:00");
    let issuer = std::fs::read_to_string(root().join("tests/keys/demo-qr-issuer.hex")).unwrap().trim().to_string();
    let (nb, na) = (iso(start_ms - 3_600_000), iso(start_ms + 3_600_000));
    let o =
        gate(&["qr", "sign", "--key-hex", &issuer, "--pass", "p-late-1", "--visitor", "v-1123-23", "--host", "r-0002", "--door", "north-gate", "--not-before", &nb, "--not-after", &na, "--uses", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let signed = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let o = gate(&["qr", "show", "--code-key", root().join("configs/demo-qr-code.key").to_str().unwrap(), "--at", &iso(start_ms + 1_000), &signed]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let cfg = local_site(dir.path());
    let trace = dir.path().join("late.jsonl");
    let qr = format!(r#"{{"kind":"qr","door":"north-gate","code":"{shown}"}}"#);
    std::fs::write(
        &trace,
        format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{}\"}}\n{{\"at\":1000,\"input\":{qr}}}\n{{\"at\":9000,\"input\":{}}}\n", iso(start_ms), answer("indoor", true)),
    )
    .unwrap();
    let o = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"]);
    assert!(o.status.success(), "{}", text(&o));
    let recs: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect();
    let d: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!((d[0]["credential"].as_str(), d[0]["outcome"].as_str(), d[0]["reason"].as_str()), (Some("qr"), Some("escalate"), Some("call-resident:r-0002")), "{recs:#?}");
    let calls = steps(&recs);
    assert_eq!(calls, vec![s("ringing-indoor", None), s("answered", Some("indoor"))], "{recs:#?}");
    assert_eq!((d[1]["credential"].as_str(), d[1]["outcome"].as_str()), (Some("intercom"), Some("grant")), "{recs:#?}");
}
