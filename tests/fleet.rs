//! Fleet operations end to end: the real `gate` binary serving a site with `[fleet]`,
//! the real compiled plugins, a real mosquitto (started by `gate_fleet::testing`), and
//! the operator's side through the `gate plugin …` / `gate fleet …` commands.

mod support;

use gate_fleet::commands::CommandAction;
use gate_fleet::keys::OperatorKey;
use gate_fleet::operator::Operator;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

#[test]
fn signed_deployment_goes_live_and_bad_bundles_are_refused_with_their_reason() {
    let broker = broker();
    // The site starts with a policy that traps on every call: the host's fallback serves the doors.
    let site = Site::new(&broker, "always-trap", 5);
    let gw = site.run(&site.card_trace(400, 700));
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    wait_until("a first decision", Duration::from_secs(20), || !site.decisions().is_empty());
    assert!(site.decisions().iter().all(|(_, by)| by.starts_with("fallback:")), "{:?}", site.decisions());

    // A signed resident-policy with the demo's morning trace as its self-test.
    let good = site.sign("resident-policy", "1.0.0", 10, &["--self-test", "tests/traces/morning.jsonl"]);
    // What travels over MQTT names credentials by holder: no card number or PIN from the trace.
    let manifest = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&good).unwrap()).unwrap()["manifest"].as_str().unwrap().to_string();
    assert!(manifest.contains("@r-0001") && !manifest.contains("10012345") && !manifest.contains("246810"), "{manifest}");
    let started = Instant::now();
    let (code, out) = site.deploy(&good);
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}\ngateway output:\n{}", gw.output());
    assert!(out.contains("[self-test]") && out.contains("[activating]"), "no progress shown: {out}");
    assert!(line_for(&out, GW).contains("succeeded: resident-policy 1.0.0 active (was 0.0.0)"), "{out}");
    eprintln!("deployment publish -> active with precompile + self-test + host check: {took:?}");
    let swapped_at = site.decisions().last().map_or(0, |d| d.0);
    wait_until("a decision by the deployed plugin", Duration::from_secs(20), || site.decisions().iter().any(|(s, by)| *s > swapped_at && by == "plugin:resident-policy"));
    assert!(site.status().contains("resident-policy@1.0.0"), "{}", site.status());
    // The deployment is in the audit trail, by the key that signed it (issue 15).
    wait_until("the deployment in the audit trail", Duration::from_secs(10), || audited(&site, "plugin-deployed") == [("key:test-ops".to_string(), "plugin:resident-policy".to_string())]);

    // Tampered component, tampered manifest, unsigned, unknown key, replayed, downgrade.
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    let variant = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = raw.clone();
        f(&mut v);
        let p = site.dir.path().join(name);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    };
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode(std::fs::read(plugin("garbage-decision")).unwrap());
    let tampered = variant("tampered.json", &|v| v["component"] = other.clone().into());
    let forged = variant("forged.json", &|v| v["manifest"] = v["manifest"].as_str().unwrap().replace("\"sequence\":10", "\"sequence\":99").into());
    let unsigned = variant("unsigned.json", &|v| {
        v.as_object_mut().unwrap().remove("signature");
    });
    let intruder_key = site.dir.path().join("intruder.key");
    let o = gate(&["fleet", "keygen", "--id", "intruder", "--out", intruder_key.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("[[fleet.trusted_keys]]"), "{}", text(&o));
    let foreign = site.dir.path().join("foreign.json");
    let o = gate(&[
        "plugin",
        "sign",
        "--key",
        intruder_key.to_str().unwrap(),
        "--component",
        plugin("resident-policy").to_str().unwrap(),
        "--name",
        "resident-policy",
        "--version",
        "1.1.0",
        "--sequence",
        "11",
        "--out",
        foreign.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let downgrade = site.sign("resident-policy", "0.9.0", 12, &[]);
    for (bundle, code) in [(&tampered, "hash-mismatch"), (&forged, "bad-signature"), (&unsigned, "unsigned"), (&foreign, "unknown-key"), (&good, "replayed"), (&downgrade, "downgrade")] {
        let (exit, out) = site.deploy(bundle);
        let line = line_for(&out, GW);
        assert_eq!(exit, 1, "{out}");
        assert!(line.starts_with(&format!("{GW}: rejected ({code})")), "{} should be rejected as {code}: {out}", bundle.display());
    }

    // A validly signed plugin that traps fails the gateway's own checks and never goes live.
    let trap = site.sign("always-trap", "2.0.0", 20, &[]);
    let (exit, out) = site.deploy(&trap);
    let line = line_for(&out, GW);
    assert_eq!(exit, 1, "{out}");
    assert!(line.contains("failed (self-test-failed)") && line.contains("host check"), "{out}");
    let garbage = site.sign("garbage-decision", "2.0.1", 21, &["--self-test", "tests/traces/morning.jsonl"]);
    let (_, out) = site.deploy(&garbage);
    assert!(line_for(&out, GW).contains("failed (self-test-failed)") && out.contains("did not produce its expected outputs"), "{out}");
    let status = site.status();
    assert!(status.contains("resident-policy@1.0.0") && status.contains("failed"), "{status}");
    let before = site.decisions().last().map_or(0, |d| d.0);
    wait_until("decisions still made by the deployed version", Duration::from_secs(20), || site.decisions().iter().any(|(s, by)| *s > before && by == "plugin:resident-policy"));

    // A remote command: a door released once, logged with who sent it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = OperatorKey::load(&site.key).unwrap();
    rt.block_on(async {
        let mut op = Operator::connect(&broker.plain(), "test-operator", Duration::from_secs(10)).await.unwrap();
        op.set_inventory(site.inventory());
        let r = op.command(&key, SITE, GW, CommandAction::OpenDoorOnce { door: "building-3".into() }, Duration::from_secs(20)).await.unwrap();
        assert!(r.ok && r.sender.as_deref() == Some("test-ops"), "{r:?}");
        op.disconnect().await;
    });
    wait_until("the remote release in the event log", Duration::from_secs(10), || site.decisions().iter().any(|(_, by)| by == "remote:test-ops"));

    // An operator rollback restores the version the gateway kept.
    let mut args: Vec<String> = ["plugin", "rollback", "--key", site.key.to_str().unwrap(), "--plugin", "resident-policy", "--gateway", &format!("{SITE}/{GW}")].map(String::from).to_vec();
    args.extend(site.broker_args());
    let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success() && line_for(&text(&o), GW).contains("succeeded"), "{}", text(&o));
    assert!(site.status().contains("resident-policy@0.0.0"), "{}", site.status());
    drop(gw);
}

#[test]
fn a_new_version_that_keeps_failing_in_service_is_rolled_back_by_the_gateway() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let inputs = [
        r#"{"kind":"card","door":"north-gate","number":"10012345"}"#,
        r#"{"kind":"pin","door":"building-3","pin":"246810"}"#,
        r#"{"kind":"card","door":"building-3","number":"10012347"}"#,
        r#"{"kind":"pin","door":"north-gate","pin":"135790"}"#,
    ]
    .map(String::from);
    let gw = site.run(&site.trace("cards-and-pins", 600, 500, &inputs));
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    // Cards work with it (the deployment's checks pass), PINs trap.
    let bad = site.sign("trap-on-pin", "1.1.0", 30, &[]);
    let (code, out) = site.deploy(&bad);
    assert_eq!(code, 0, "{out}");
    assert!(line_for(&out, GW).contains("succeeded: resident-policy 1.1.0 active (was 0.0.0)"), "{out}");
    let swapped_at = site.decisions().last().map_or(0, |d| d.0);
    wait_until("the gateway to roll back by itself", Duration::from_secs(60), || site.status().contains("rolled-back"));
    let status = site.status();
    assert!(status.contains("resident-policy@0.0.0") && status.contains("rolled back to 0.0.0"), "{status}");
    // Deployed by the operator's key, rolled back by the gateway itself: both audited.
    wait_until("the deployment in the audit trail", Duration::from_secs(10), || audited(&site, "plugin-deployed") == [("key:test-ops".to_string(), "plugin:resident-policy".to_string())]);
    wait_until("the rollback in the audit trail", Duration::from_secs(10), || audited(&site, "plugin-rolled-back") == [("host".to_string(), "plugin:resident-policy".to_string())]);
    // Meanwhile the host's fallback let the PIN users in; afterwards the old version decides again.
    let during: Vec<_> = site.decisions().into_iter().filter(|(s, _)| *s > swapped_at).collect();
    assert!(during.iter().any(|(_, by)| by == "fallback:plugin-failed"), "{during:?}");
    let rolled_at = site.decisions().last().map_or(0, |d| d.0);
    wait_until("decisions by the restored version", Duration::from_secs(20), || site.decisions().iter().any(|(s, by)| *s > rolled_at && by == "plugin:resident-policy"));
    drop(gw);
}

#[test]
fn events_logged_while_the_broker_is_down_arrive_in_order_once_it_returns() {
    let mut broker = broker();
    let site = Site::new(&broker, "resident-policy", 2);
    let (got, subscribed) = consumer("test-consumer", broker.port);
    wait_until("the consumer to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 1);

    let gw = site.run(&site.card_trace(60, 150));
    wait_until("events flowing", Duration::from_secs(30), || got.lock().unwrap().len() >= 5);
    broker.kill();
    let down_at = site.event_ids().len();
    std::thread::sleep(Duration::from_secs(3));
    let during = site.event_ids().len() - down_at;
    broker.restart().unwrap();
    wait_until("the consumer to re-subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 2);
    // Every card read ends as a decision or (a repeat within the window) an ignored read.
    wait_until("the gateway to log the whole trace", Duration::from_secs(60), || site.handled() >= 60);
    let logged = site.event_ids();
    wait_until("every logged event at the consumer", Duration::from_secs(30), || {
        let g = got.lock().unwrap();
        logged.iter().all(|e| g.contains(e))
    });
    assert!(during >= 10, "only {during} events were logged while the broker was down");
    // At-least-once: duplicates are possible, but after de-duplication the order is the log's.
    let mut seen = std::collections::HashSet::new();
    let order: Vec<i64> = got.lock().unwrap().iter().filter(|(_, id)| seen.insert(id.clone())).map(|(s, _)| *s).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "events arrived out of order: {order:?}");
    drop(gw);
}

/// Issue 9: the outbox's age bound is measured on the gateway's clock, so a gateway serving
/// a trace dated a year back keeps every event queued while the broker is away.
#[test]
fn a_trace_dated_a_year_back_queued_while_the_broker_is_away_arrives_whole() {
    let mut broker = broker();
    let site = Site::new(&broker, "resident-policy", 2);
    broker.kill();
    let year_ago = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::days(365));
    let gw = site.run(&site.trace_from(&year_ago, "year-back", 30, 100, &card_reads()));
    wait_until("the gateway to log the whole trace with the broker away", Duration::from_secs(60), || site.handled() >= 30);
    broker.restart().unwrap();
    let (got, subscribed) = consumer("test-consumer-year", broker.port);
    wait_until("the consumer to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 1);
    let logged = site.event_ids();
    assert!(logged.len() >= 30, "{logged:?}");
    wait_until("every event logged during the outage at the consumer", Duration::from_secs(30), || {
        let g = got.lock().unwrap();
        logged.iter().all(|e| g.contains(e))
    });
    let c = rusqlite::Connection::open_with_flags(site.db.with_file_name("fleet/fleet.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let dropped: i64 = c.query_row("SELECT dropped FROM outbox_state", [], |r| r.get(0)).unwrap();
    assert_eq!(dropped, 0, "the outbox dropped events of a year-old trace");
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(!log.contains("retention exceeded"), "{log}");
    drop(gw);
}

#[test]
fn the_last_will_marks_a_killed_gateway_offline_and_a_restart_serves_the_deployed_version() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 1);
    let trace = site.card_trace(400, 700);
    let mut gw = site.run(&trace);
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let (code, out) = site.deploy(&site.sign("resident-policy", "1.2.0", 5, &[]));
    assert_eq!(code, 0, "{out}");
    wait_until("the new status", Duration::from_secs(10), || site.status().contains("resident-policy@1.2.0"));
    // (The gateway reconnects cleanly to renew its will; give it a moment before the crash.)
    std::thread::sleep(Duration::from_secs(1));
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    wait_until("the last will", Duration::from_secs(15), || site.status().contains(&format!("{SITE}\t{GW}\tNO")));
    // The death message names what ran when it died, not what ran when it connected.
    assert!(site.status().contains("resident-policy@1.2.0"), "{}", site.status());
    drop(gw);
    // Back up: it serves (and reports) what was deployed, not the configured component.
    let _gw = site.run(&trace);
    wait_until("the restarted gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    assert!(site.status().contains("resident-policy@1.2.0"), "{}", site.status());
    // The version 1.2.0 replaced is still kept after the restart: a signed rollback restores it.
    let mut args: Vec<String> = ["plugin", "rollback", "--key", site.key.to_str().unwrap(), "--plugin", "resident-policy", "--gateway", &format!("{SITE}/{GW}")].map(String::from).to_vec();
    args.extend(site.broker_args());
    let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success() && line_for(&text(&o), GW).contains("succeeded"), "{}", text(&o));
    wait_until("the restored version in the status", Duration::from_secs(10), || site.status().contains("resident-policy@0.0.0"));
}

/// Whether `hay` contains `number` standing alone (not inside a longer run of digits).
fn contains_number(hay: &str, number: &str) -> bool {
    hay.match_indices(number).any(|(i, _)| {
        let before = hay[..i].chars().next_back().is_some_and(|c| c.is_ascii_digit());
        let after = hay[i + number.len()..].chars().next().is_some_and(|c| c.is_ascii_digit());
        !before && !after
    })
}

#[test]
fn remote_commands_lock_hold_revoke_and_rotate_and_what_they_set_survives_a_restart() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    // Everything on the broker, to show the new unit PIN never crosses it.
    let wire: Arc<Mutex<String>> = Arc::default();
    let mut opts = rumqttc::MqttOptions::new("test-sniffer", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 1000);
    let w = wire.clone();
    let sniffing = Arc::new(Mutex::new(false));
    let s = sniffing.clone();
    std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe("gate/#", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => *s.lock().unwrap() = true,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let mut w = w.lock().unwrap();
                    w.push_str(&p.topic);
                    w.push(' ');
                    w.push_str(&String::from_utf8_lossy(&p.payload));
                    w.push('\n');
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    wait_until("the sniffer to subscribe", Duration::from_secs(10), || *sniffing.lock().unwrap());

    let gw = site.run(&site.card_trace(400, 500));
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let target = format!("{SITE}/{GW}");
    let key = site.key.to_str().unwrap().to_string();
    let remote = |args: &[&str]| {
        let mut all = vec!["remote", args[0], "--key", &key, "--gateway", &target];
        all.extend(&args[1..]);
        site.gate_with_broker(&all)
    };
    let decided_at = |door: &str, after: i64| -> Vec<serde_json::Value> { site.records("decision").into_iter().filter(|(s, d)| *s > after && d["door"] == door).map(|(_, d)| d).collect() };
    let last_seq = || site.event_ids().last().map_or(0, |e| e.0);

    // Locked: residents' cards are refused by the host, with the reason, until it is lifted.
    let locked_at = last_seq();
    let (code, out) = remote(&["door-mode", "--door", "building-3", "--mode", "locked", "--for", "10m"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done: door `building-3` locked for 600 s") && out.contains("(as test-ops)"), "{out}");
    wait_until("a card refused at the locked door", Duration::from_secs(20), || decided_at("building-3", locked_at).iter().any(|d| d["by"] == "host:locked"));
    assert!(decided_at("building-3", locked_at).iter().all(|d| d["outcome"] == "deny"), "{:?}", decided_at("building-3", locked_at));
    assert!(decided_at("north-gate", locked_at).iter().any(|d| d["outcome"] == "grant"), "other doors are not affected");

    // Held open for 2 s: the relay releases at once, then the mode ends by itself and cards decide again.
    let held_at = last_seq();
    let (code, out) = remote(&["door-mode", "--door", "building-3", "--mode", "held-open", "--for", "2s"]);
    assert_eq!(code, 0, "{out}");
    wait_until("the hold to expire", Duration::from_secs(20), || site.records("door-mode").iter().any(|(s, m)| *s > held_at && m["by"] == "host:expired" && m["door"] == "building-3"));
    let modes: Vec<serde_json::Value> = site.records("door-mode").into_iter().map(|(_, m)| m).collect();
    assert_eq!(modes.iter().filter(|m| m["by"] == "remote:test-ops").count(), 2, "{modes:?}");
    let relays: Vec<serde_json::Value> = site.records("relay").into_iter().filter(|(s, r)| *s > held_at && r["door"] == "building-3").map(|(_, r)| r).collect();
    assert_eq!(relays.first().map(|r| r["on"].clone()), Some(serde_json::Value::Bool(true)), "{relays:?}");
    let expired_at = last_seq();
    wait_until("a card granted at building-3 again", Duration::from_secs(20), || decided_at("building-3", expired_at).iter().any(|d| d["outcome"] == "grant" && d["by"] == "plugin:resident-policy"));

    // Revoked: r-0003's card (named by its reference, never its number) stops opening doors.
    let o = gate(&["credential-ref", "--ref-key", site.ref_key().to_str().unwrap(), "--card", "10012347"]);
    let reference = text(&o).trim().to_string();
    assert!(o.status.success() && reference.starts_with("card:") && !reference.contains("10012347"), "{reference}");
    // Keyed with the site's secret: not the unkeyed hash any broker subscriber can recompute.
    assert_ne!(reference, gate::credentials::credential_ref(SITE, gate::event::CredentialKind::Card, "10012347"));
    let revoked_at = last_seq();
    let (code, out) = remote(&["revoke", "--reference", &reference, "--reason", "reported lost"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{reference} of r-0003 revoked")), "{out}");
    wait_until("the revoked card refused", Duration::from_secs(20), || decided_at("building-3", revoked_at).iter().any(|d| d["subject"] == "r-0003" && d["by"] == "host:revoked"));
    // The decision (which plugins and the platform see) names no reference.
    let refused = decided_at("building-3", revoked_at).into_iter().find(|d| d["by"] == "host:revoked").unwrap();
    assert_eq!(refused["reason"], "credential revoked");
    let (code, out) = remote(&["revoke", "--reference", "card:10012347", "--reason", "x"]);
    assert_eq!(code, 2, "a raw card number is refused before anything is sent: {out}");

    // A unit PIN: made on the gateway, shown only to the operator who asked; not a unit door: refused.
    let (code, out) = remote(&["rotate-unit-pin", "--door", "north-gate"]);
    assert!(code == 1 && out.contains("refused (failed): door `north-gate` is not a unit door"), "{out}");
    let (code, out) = remote(&["rotate-unit-pin", "--door", "building-3"]);
    assert_eq!(code, 0, "{out}");
    let pin = out.lines().find_map(|l| l.split("new unit PIN: ").nth(1)).map(str::trim).unwrap_or_else(|| panic!("no PIN in {out}")).to_string();
    assert!(pin.len() == 6 && pin.bytes().all(|b| b.is_ascii_digit()), "{pin}");
    // Every command is in the event log with its sender; the PIN is nowhere but the operator's screen.
    wait_until("the rotation in the log", Duration::from_secs(10), || !site.records("unit-pin").is_empty());
    assert_eq!(site.records("unit-pin")[0].1["by"], "remote:test-ops");
    assert_eq!(site.records("revoked")[0].1["holder"], "r-0003");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!contains_number(&wire.lock().unwrap(), &pin), "the PIN crossed the broker");
    assert!(wire.lock().unwrap().contains("/reply"), "the sniffer saw no command replies");
    let db_text: String = site.records("unit-pin").iter().chain(site.records("door-mode").iter()).map(|(_, v)| v.to_string()).collect();
    assert!(!contains_number(&db_text, &pin) && !contains_number(&gw.output(), &pin), "the PIN was logged");

    // Lock the north gate too, then restart: the lock, the revocation and the unit PIN are still in force.
    let (code, out) = remote(&["door-mode", "--door", "north-gate", "--mode", "locked", "--for", "1h"]);
    assert_eq!(code, 0, "{out}");
    drop(gw);
    let restarted_at = last_seq();
    let inputs = [
        r#"{"kind":"card","door":"north-gate","number":"10012345"}"#.to_string(),
        format!(r#"{{"kind":"pin","door":"building-3","pin":"{pin}"}}"#),
        r#"{"kind":"card","door":"building-3","number":"10012347"}"#.to_string(),
        r#"{"kind":"card","door":"building-3","number":"10012345"}"#.to_string(),
    ];
    let _gw = site.run(&site.trace("after-restart", 4, 500, &inputs));
    wait_until("the four reads decided after the restart", Duration::from_secs(30), || site.records("decision").iter().filter(|(s, _)| *s > restarted_at).count() >= 4);
    let after: Vec<serde_json::Value> = site.records("decision").into_iter().filter(|(s, _)| *s > restarted_at).map(|(_, d)| d).collect();
    let summary: Vec<(String, String, String, String)> =
        after.iter().map(|d| (d["door"].as_str().unwrap().into(), d["subject"].as_str().unwrap_or("-").into(), d["outcome"].as_str().unwrap().into(), d["by"].as_str().unwrap().into())).collect();
    let want = [
        ("north-gate", "r-0001", "deny", "host:locked"),
        ("building-3", "unit:building-3", "grant", "plugin:resident-policy"),
        ("building-3", "r-0003", "deny", "host:revoked"),
        ("building-3", "r-0001", "grant", "plugin:resident-policy"),
    ]
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()));
    assert_eq!(summary, want);
    assert!(site.records("door-mode").iter().any(|(s, m)| *s > restarted_at && m["by"] == "host:restored" && m["door"] == "north-gate"));

    // A revocation can be undone, once.
    wait_until("the restarted gateway online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let (code, out) = remote(&["reinstate", "--reference", &reference, "--reason", "card found"]);
    assert!(code == 0 && out.contains(&format!("{reference} of r-0003 reinstated")), "{out}");
    let (code, out) = remote(&["reinstate", "--reference", &reference, "--reason", "again"]);
    assert!(code == 1 && out.contains("is not revoked"), "{out}");
    assert_eq!(site.records("reinstated")[0].1["by"], "remote:test-ops");
}

/// Publishes `n` messages on each of `topics` (`{i}` replaced by the message number) as a
/// broker client with no key, as fast as the broker takes them.
fn flood(port: u16, topics: &[&str], n: usize, payload: impl Fn(usize) -> Vec<u8>) {
    let msgs: Vec<(String, bool, Vec<u8>)> = topics.iter().flat_map(|t| (0..n).map(|i| (format!("gate/v1/{SITE}/{GW}/{}", t.replace("{i}", &i.to_string())), false, payload(i)))).collect();
    keyless_publish(port, &format!("attacker-{}", std::process::id()), 1000, msgs.into_iter(), "the whole flood", Duration::from_secs(60));
}

/// Issue 12: a keyless broker client floods every inbound topic with junk and with
/// well-formed unsigned commands and jobs; every read is still decided, nothing of the
/// flood is stored, the event log never sees a lock error, and the link keeps publishing.
#[test]
fn a_junk_flood_on_every_inbound_topic_stops_neither_the_doors_nor_the_link() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 2);
    let (got, subscribed) = consumer("test-consumer-flood", broker.port);
    wait_until("the consumer to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 1);
    let reads = 300;
    let mut gw = site.run(&site.trace("flooded", reads, 50, &card_reads()));
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    let t0 = Instant::now();
    flood(broker.port, &["cmd/junk", "jobs/junk"], 10_000, |_| b"junk {".to_vec());
    flood(broker.port, &["cmd/c-{i}", "jobs/j-{i}"], 5_000, |i| {
        format!(r#"{{"command":"{{\"id\":\"c-{i}\",\"site\":\"{SITE}\",\"gateway\":\"{GW}\"}}","signature":"AAAA","job_id":"j-{i}"}}"#).into_bytes()
    });
    eprintln!("30,000 messages flooded in {:?}", t0.elapsed());
    wait_until("every read decided", Duration::from_secs(60), || site.handled() >= reads as i64);
    assert!(gw.child.try_wait().unwrap().is_none(), "the gateway died under the flood:\n{}", gw.output());
    // The link still publishes: every event the gateway logged reaches the consumer.
    let logged = site.event_ids();
    wait_until("every logged event at the consumer", Duration::from_secs(30), || {
        let g = got.lock().unwrap();
        logged.iter().all(|e| g.contains(e))
    });
    // Nothing of the flood was stored.
    let fleet = rusqlite::Connection::open_with_flags(site.db.with_file_name("fleet/fleet.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let rows = |t: &str| fleet.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!((rows("fleet_jobs"), rows("fleet_command_log"), rows("fleet_seen_commands")), (0, 0, 0), "unauthenticated messages were stored");
    // The shedding is reported at once, then the tail of the flood within 10 s, each report
    // with its count: never one line per message.
    wait_until("the tail of the flood reported", Duration::from_secs(30), || gw.output().contains("since the last report"));
    let log = gw.output();
    assert!(!log.contains("database is locked") && !log.contains("link failed") && !log.contains("link stopped"), "{log}");
    eprintln!("{}", log.lines().filter(|l| l.contains("shed")).collect::<Vec<_>>().join("\n"));
    assert!(log.matches("inbound messages shed").count() < 20, "{log}");
    // And an operator's signed command still gets through once the flood is over.
    let (code, out) = site.gate_with_broker(&["remote", "open-door", "--key", site.key.to_str().unwrap(), "--gateway", &format!("{SITE}/{GW}"), "--door", "north-gate"]);
    assert_eq!(code, 0, "{out}");
    drop(gw);
}

/// The audit trail's entries of `action` as (actor, target), oldest first.
fn audited(site: &Site, action: &str) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open_with_flags(site.db.with_file_name("audit.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT actor, target FROM audit WHERE action = ?1 ORDER BY seq").unwrap();
    st.query_map([action], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
}

/// Records every message on `filter` as a `mosquitto_sub -v` line: `topic payload`.
fn capture(port: u16, filter: &str) -> (Arc<Mutex<Vec<String>>>, Arc<Mutex<bool>>) {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let subscribed = Arc::new(Mutex::new(false));
    let mut opts = rumqttc::MqttOptions::new(format!("capture-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 1000);
    let (l, s, f) = (lines.clone(), subscribed.clone(), filter.to_string());
    std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(f.clone(), rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => *s.lock().unwrap() = true,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => l.lock().unwrap().push(format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload))),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (lines, subscribed)
}

/// Issue 12, items 2 and 3, through the real binary: a keyless broker client forges the
/// gateway's status, a status for a gateway that does not exist, and events with future
/// ids. `gate fleet status` shows the real gateway as unknown (forged) and the other as
/// unverified; with its status erased it is still listed, and a site-wide revoke still
/// reaches it and reports it done; `gate fleet verify-events` tells forged events from
/// the gateway's.
#[test]
fn forgeries_are_flagged_and_a_site_revoke_reaches_a_gateway_whose_status_was_erased() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let (lines, subscribed) = capture(broker.port, &format!("gate/v1/{SITE}/+/events"));
    wait_until("the capture to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap());
    let events = format!("gate/v1/{SITE}/{GW}/events");
    let forged_event = |seq: i64| format!(r#"{{"id":"{GW}-{seq:08}","seq":{seq},"at_ms":0,"kind":"decision","body":{{"outcome":"grant"}}}}"#).into_bytes();
    publish_raw(broker.port, &[(events.as_str(), false, forged_event(900)), (events.as_str(), false, forged_event(901))]);
    let gw = site.run(&site.card_trace(200, 300));
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes\t")));
    let table = site.status();
    assert!(table.lines().any(|l| l.starts_with(&format!("{SITE}\t{GW}\tyes\t")) && l.ends_with("\tgenuine")), "{table}");
    wait_until("some events captured", Duration::from_secs(30), || lines.lock().unwrap().len() >= 6);

    // verify-events on the capture: the gateway's events genuine, the forged ones flagged.
    let cap = site.dir.path().join("events.capture");
    std::fs::write(&cap, lines.lock().unwrap().join("\n")).unwrap();
    let (code, out) = site.gate_with_broker(&["fleet", "verify-events", "--capture", cap.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{GW}-00000900: FORGED")) && out.contains(&format!("{GW}-00000901: FORGED")), "{out}");
    let genuine = out.lines().filter(|l| l.ends_with(": genuine")).count();
    assert!(genuine >= 4 && out.contains(&format!("{genuine} genuine, 2 not genuine")), "{out}");

    // Forged statuses: the real gateway's (retained over its own) and a ghost's.
    let status = |g: &str| format!(r#"{{"site":"{SITE}","gateway":"{g}","online":true,"host_version":"9.9.9","plugins":[],"at_ms":0}}"#).into_bytes();
    let (real, ghost) = (format!("gate/v1/{SITE}/{GW}/status"), format!("gate/v1/{SITE}/gw-ghost/status"));
    publish_raw(broker.port, &[(real.as_str(), true, status(GW)), (ghost.as_str(), true, status("gw-ghost"))]);
    let table = site.status();
    assert!(table.lines().any(|l| l.starts_with(&format!("{SITE}\t{GW}\tunknown\t")) && l.contains("forged")), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&format!("{SITE}\tgw-ghost\tyes")) && l.contains("unverified")), "{table}");

    // Erased: the gateway is still in the site (unknown), and a site-wide revoke reaches it.
    publish_raw(broker.port, &[(real.as_str(), true, vec![])]);
    let table = site.status();
    assert!(table.lines().any(|l| l.starts_with(&format!("{SITE}\t{GW}\tunknown")) && l.contains("missing")), "{table}");
    let o = gate(&["credential-ref", "--ref-key", site.ref_key().to_str().unwrap(), "--card", "10012347"]);
    let reference = text(&o).trim().to_string();
    let (code, out) = site.gate_with_broker(&["remote", "revoke", "--key", site.key.to_str().unwrap(), "--site", SITE, "--reference", &reference, "--reason", "reported lost"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{SITE}/{GW}: done: {reference} of r-0003 revoked")), "{out}");
    assert!(!out.contains("gw-ghost"), "a gateway that is not enrolled was commanded: {out}");
    drop(gw);
}

/// Issue 13 item 2: the property platform (simulated here with the operator library and a
/// key holding the `directory` permission) syncs the directory of a gateway that has no
/// subjects file, over the real broker: a snapshot in two pages, then a change that adds
/// a resident, issues a card, changes a PIN and removes someone. The gateway decides by
/// each at once and across a restart; an old or out-of-order version is refused; a raw
/// card number is refused (only keyed references cross the broker); status, event log and
/// audit trail say what changed.
#[test]
fn the_platform_syncs_the_directory_and_the_gateway_decides_by_it_at_once_and_after_a_restart() {
    use gate::credentials::{keyed_credential_ref, pin_hash, RefKey};
    use gate::event::CredentialKind;
    use gate_fleet::commands::{DirectoryChange, DirectorySubject};
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    // No subjects file: the directory lives in the state dir and comes from the platform.
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    let subjects_line = cfg.lines().find(|l| l.starts_with("subjects = ")).expect("the demo names its subjects file").to_string();
    let cfg = cfg.replace(&format!("{subjects_line}\n"), "").replace(r#"may = ["deploy", "door", "credentials", "pin"]"#, r#"may = ["deploy", "door", "credentials", "pin", "directory"]"#);
    std::fs::write(&site.config, cfg).unwrap();
    let key = OperatorKey::load(&site.key).unwrap();
    let refkey = RefKey::load(&site.ref_key()).unwrap();
    let card = |n: &str| keyed_credential_ref(&refkey, CredentialKind::Card, n);
    let pin = |p: &str| keyed_credential_ref(&refkey, CredentialKind::Pin, &pin_hash(SITE, p));
    let resident = |id: &str, creds: Vec<String>| DirectorySubject { id: id.into(), role: "resident".into(), groups: vec!["building-3".into()], credentials: creds };
    // Reads at building-3 every 250 ms: cards A, B, C, then PINs 1111 and 2222, over and over.
    let reads: Vec<String> =
        [r#"{"kind":"card","door":"building-3","number":"30000001"}"#, r#"{"kind":"card","door":"building-3","number":"30000002"}"#, r#"{"kind":"card","door":"building-3","number":"30000003"}"#]
            .iter()
            .map(|s| s.to_string())
            .chain(["111111", "222222"].iter().map(|p| format!(r#"{{"kind":"pin","door":"building-3","pin":"{p}"}}"#)))
            .collect();
    let trace = site.trace("dir-sync", 2_000, 250, &reads);
    let gw = site.run(&trace);
    wait_until("the gateway to report online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));
    // (seq, credential, subject, outcome) of every decision.
    let decided = || -> Vec<(i64, String, Option<String>, String)> {
        site.records("decision")
            .into_iter()
            .map(|(s, d)| (s, d["credential"].as_str().unwrap_or("").to_string(), d["subject"].as_str().map(String::from), d["outcome"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    let granted_after = |seq: i64, subject: &str, credential: &str| decided().iter().any(|(s, c, who, o)| *s > seq && c == credential && who.as_deref() == Some(subject) && o == "grant");
    let last_seq = || site.records("decision").last().map_or(0, |(s, _)| *s);
    wait_until("reads decided with nobody in the directory", Duration::from_secs(20), || decided().len() >= 5);
    assert!(decided().iter().all(|(_, _, _, o)| o == "deny"), "{:?}", decided());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let send = |action: CommandAction| {
        rt.block_on(async {
            let mut op = Operator::connect(&broker.plain(), &format!("platform-{}", std::process::id()), Duration::from_secs(10)).await.unwrap();
            op.set_inventory(site.inventory());
            let r = op.command(&key, SITE, GW, action, Duration::from_secs(20)).await.unwrap();
            op.disconnect().await;
            r
        })
    };
    // A raw card number never travels: refused.
    let r = send(CommandAction::DirectorySnapshot { version: 1, page: 1, pages: 1, subjects: vec![resident("r-9001", vec!["30000001".into()])] });
    assert!(!r.ok && r.detail.contains("is not a keyed reference"), "{r:?}");
    // A snapshot in two pages: r-9001 (card A, PIN 111111) and r-9003 (card C).
    let before = last_seq();
    let r = send(CommandAction::DirectorySnapshot { version: 1, page: 1, pages: 2, subjects: vec![resident("r-9001", vec![card("30000001"), pin("111111")])] });
    assert!(r.ok, "{r:?}");
    let r = send(CommandAction::DirectorySnapshot { version: 1, page: 2, pages: 2, subjects: vec![resident("r-9003", vec![card("30000003")])] });
    assert!(r.ok && r.detail.contains("directory at version 1: 1 added"), "{r:?}");
    wait_until("r-9001's card and PIN and r-9003's card granted", Duration::from_secs(20), || {
        granted_after(before, "r-9001", "card") && granted_after(before, "r-9001", "pin") && granted_after(before, "r-9003", "card")
    });

    // Version 2: r-9002 moves in with card B, r-9001's PIN changes, r-9003 moves out.
    let changes = vec![
        DirectoryChange::Upsert { subject: resident("r-9002", vec![card("30000002")]) },
        DirectoryChange::Upsert { subject: resident("r-9001", vec![card("30000001"), pin("222222")]) },
        DirectoryChange::Remove { id: "r-9003".into() },
    ];
    let r = send(CommandAction::DirectoryChanges { version: 2, changes: changes.clone() });
    assert!(r.ok && r.detail.contains("version 2: 1 added, 1 changed, 1 removed"), "{r:?}");
    let after = last_seq();
    wait_until("card B and the new PIN granted", Duration::from_secs(20), || granted_after(after, "r-9002", "card") && granted_after(after, "r-9001", "pin"));
    let settle = last_seq();
    wait_until("a full round of reads", Duration::from_secs(20), || decided().iter().filter(|(s, ..)| *s > settle).count() >= 10);
    let round: Vec<_> = decided().into_iter().filter(|(s, ..)| *s > settle).collect();
    for (_, c, who, o) in &round {
        match (c.as_str(), who.as_deref()) {
            ("card", Some("r-9001" | "r-9002")) | ("pin", Some("r-9001")) => assert_eq!(o, "grant", "{round:?}"),
            _ => assert_eq!((o.as_str(), who.as_deref()), ("deny", None), "card C and the old PIN open nothing any more: {round:?}"),
        }
    }
    // The same version again, or a gap, is refused and changes nothing.
    let r = send(CommandAction::DirectoryChanges { version: 2, changes });
    assert!(!r.ok && r.detail.contains("stale"), "{r:?}");
    let r = send(CommandAction::DirectoryChanges { version: 4, changes: vec![DirectoryChange::Remove { id: "r-9001".into() }] });
    assert!(!r.ok && r.detail.contains("gap"), "{r:?}");
    // The status carries the version; the event log and the audit trail say what changed.
    let status = rt.block_on(async {
        let mut op = Operator::connect(&broker.plain(), "status-reader", Duration::from_secs(10)).await.unwrap();
        op.set_inventory(site.inventory());
        let rows = op.fleet_status(Some(SITE), Duration::from_millis(700)).await.unwrap();
        op.disconnect().await;
        rows
    });
    assert_eq!(status.iter().find(|v| v.gateway == GW).and_then(|v| v.status.as_ref()).and_then(|s| s.directory_version), Some(2));
    let synced: Vec<u64> = site.records("directory").iter().map(|(_, r)| r["version"].as_u64().unwrap()).collect();
    assert_eq!(synced, vec![0, 1, 2], "two snapshot pages (the version moves at the last) and one change");
    let c = rusqlite::Connection::open_with_flags(site.db.with_file_name("audit.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let last: String = c.query_row("SELECT detail FROM audit WHERE action = 'directory-changed' ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(last.contains("\"removed\":[\"r-9003\"]") && last.contains("\"added\":[\"r-9002\"]"), "{last}");
    drop(c);

    // Across a restart the gateway serves the synced directory.
    drop(gw);
    let trace = site.trace("dir-sync-after", 400, 250, &reads);
    let restarted = last_seq();
    let _gw = site.run(&trace);
    wait_until("card B granted after the restart", Duration::from_secs(30), || granted_after(restarted, "r-9002", "card"));
    wait_until("a round after the restart", Duration::from_secs(20), || decided().iter().filter(|(s, ..)| *s > restarted).count() >= 10);
    let round: Vec<_> = decided().into_iter().filter(|(s, ..)| *s > restarted && *s > 0).collect();
    assert!(round.iter().all(|(_, c, who, o)| (o == "grant") == matches!((c.as_str(), who.as_deref()), ("card", Some("r-9001" | "r-9002")) | ("pin", Some("r-9001")))), "{round:?}");
}

/// Issue 14 item 3: the guard station. A guard opens the gate as themselves (a key with the
/// `guard` permission, the guard a subject with role guard), logged and audited with who and
/// why; `gate guard attention` shows a forced door and the denied attempts at the gate; a
/// guard id that is not a guard, or a key without the permission, is refused.
#[test]
fn a_guard_opens_as_themselves_and_sees_what_needs_them() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let cfg = std::fs::read_to_string(&site.config).unwrap().replace(r#"may = ["deploy", "door", "credentials", "pin"]"#, r#"may = ["deploy", "door", "credentials", "pin", "guard"]"#);
    std::fs::write(&site.config, cfg).unwrap();
    // A stranger's card at the gate every 700 ms, and the building-3 door forced open.
    let reads = vec![r#"{"kind":"card","door":"north-gate","number":"55555555"}"#.to_string(), r#"{"kind":"door-contact","door":"building-3","open":true}"#.to_string()];
    let gw = site.run(&site.trace("guard", 200, 700, &reads));
    wait_until("the gateway online and a forced door", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")) && !site.records("alarm").is_empty());
    let key = site.key.to_str().unwrap().to_string();
    let target = format!("{SITE}/{GW}");
    let guard = |args: &[&str]| {
        let mut all = vec!["guard", args[0], "--key", &key, "--gateway", &target];
        all.extend(&args[1..]);
        site.gate_with_broker(&all)
    };
    let (code, out) = guard(&["open", "--door", "north-gate", "--guard", "g-0001", "--reason", "elderly resident waiting at the gate"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("done: door `north-gate` released once by guard g-0001 (as test-ops)"), "{out}");
    wait_until("the guard release logged", Duration::from_secs(10), || site.decisions().iter().any(|(_, by)| by == "guard:g-0001"));
    let d = site.records("decision").into_iter().map(|(_, d)| d).find(|d| d["by"] == "guard:g-0001").unwrap();
    assert_eq!((d["credential"].as_str(), d["outcome"].as_str()), (Some("guard-release"), Some("grant")), "{d}");
    assert!(d["reason"].as_str().unwrap().contains("elderly resident waiting at the gate (guard station test-ops)"), "{d}");
    wait_until("the guard release audited", Duration::from_secs(10), || audited(&site, "guard-command") == [("guard:g-0001".to_string(), "door:north-gate".to_string())]);
    // A resident is not a guard; a missing reason is refused.
    let (code, out) = guard(&["open", "--door", "north-gate", "--guard", "r-0001", "--reason", "x"]);
    assert!(code == 1 && out.contains("`r-0001` is not a guard"), "{out}");
    let (code, out) = guard(&["open", "--door", "north-gate", "--guard", "g-0001", "--reason", " "]);
    assert!(code == 1 && out.contains("needs a reason"), "{out}");
    // What needs the guard.
    let (code, out) = guard(&["attention", "--guard", "g-0001", "--minutes", "5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ALARM forced-open at building-3"), "{out}");
    let denied = out.lines().find(|l| l.contains("denied attempt(s) in the last 5 min")).unwrap_or_else(|| panic!("{out}"));
    let n: usize = denied.split_whitespace().next().unwrap().parse().unwrap();
    assert!(n >= 1 && out.contains("north-gate card denied"), "{out}");
    assert!(!out.contains("55555555"), "no card number reaches the guard station: {out}");
    // A walk-in visitor registered by the guard gets a pass the gateway signed; it opens the
    // gate once, at that gateway, after a restart too.
    let code_key = root().join("configs/demo-qr-code.key");
    let (code, out) = guard(&["visitor", "--guard", "g-0001", "--visitor", "v-walkin-01", "--host", "r-0002", "--door", "north-gate", "--for", "1h", "--code-key", code_key.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let pass = out.lines().find_map(|l| l.split("done: pass ").nth(1)).unwrap_or_else(|| panic!("{out}")).split(" (as").next().unwrap().to_string();
    assert!(out.contains("show the visitor now: GATEQR2."), "{out}");
    wait_until("the registration audited", Duration::from_secs(10), || audited(&site, "guard-command").len() == 2);
    let (code, out) = guard(&["visitor", "--guard", "g-0001", "--visitor", "Zhang San", "--host", "r-0002", "--door", "north-gate"]);
    assert_eq!(code, 1, "a name is not a pseudonymous id: {out}");
    drop(gw);
    let start = time::OffsetDateTime::now_utc();
    let at = |ms: i64| (start.unix_timestamp_nanos() / 1_000_000) as i64 + ms;
    let key = gate::visitor::CodeKey::load(&code_key).unwrap();
    let scan = |ms: i64| format!(r#"{{"kind":"qr","door":"north-gate","code":"{}"}}"#, gate::visitor::displayed(&key, &pass, at(ms)).unwrap());
    let trace = site.dir.path().join("walk-in.jsonl");
    std::fs::write(
        &trace,
        format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{}\"}}\n{{\"at\":2000,\"input\":{}}}\n{{\"at\":20000,\"input\":{}}}\n", rfc3339(start), scan(2_000), scan(20_000)),
    )
    .unwrap();
    let gw = site.run(&trace);
    wait_until("the walk-in visitor's two scans decided", Duration::from_secs(60), || site.records("decision").iter().filter(|(_, d)| d["credential"] == "qr").count() >= 2);
    let qr: Vec<serde_json::Value> = site.records("decision").into_iter().map(|(_, d)| d).filter(|d| d["credential"] == "qr").collect();
    assert_eq!((qr[0]["outcome"].as_str(), qr[0]["subject"].as_str()), (Some("grant"), Some("v-walkin-01")), "{qr:?}");
    assert_eq!(qr[1]["outcome"], "deny", "one use only: {qr:?}");
    drop(gw);
}
