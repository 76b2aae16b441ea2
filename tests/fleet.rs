//! Fleet operations end to end: the real `gate` binary serving a site with `[fleet]`,
//! the real compiled plugins, a real mosquitto (started by `gate_fleet::testing`), and
//! the operator's side through the `gate plugin …` / `gate fleet …` commands.

use gate_fleet::commands::CommandAction;
use gate_fleet::keys::OperatorKey;
use gate_fleet::operator::Operator;
use gate_fleet::testing::Broker;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SITE: &str = "maple-court";
const GW: &str = "gw-north-1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn plugin(name: &str) -> PathBuf {
    let p = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` (or `cargo xtask plugins`) to build the plugins", p.display());
    p
}

fn broker() -> Broker {
    Broker::start().unwrap_or_else(|e| panic!("cannot start mosquitto for the fleet tests: {e}"))
}

fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A gateway's site (the demo site, `resident-policy` served by `initial`, `[fleet]`
/// pointing at the broker and trusting the operator key `test-ops`) in a temp dir.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    key: PathBuf,
    db: PathBuf,
    port: u16,
}

impl Site {
    fn new(broker: &Broker, initial: &str, keep_alive: u64) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("test-ops.key");
        let key = OperatorKey::generate("test-ops").unwrap();
        key.save(&key_path).unwrap();
        let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
        let cfg = demo
            .replace("../target/plugins/resident-policy.wasm", plugin(initial).to_str().unwrap())
            .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
            .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
            .replace("\"../target/demo-state\"", &format!("{:?}", dir.path().join("state")));
        let fleet = format!(
            "\n[fleet]\nrollback_failures = 3\n\n[fleet.broker]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_secs = {keep_alive}\n\n\
             [[fleet.trusted_keys]]\nid = \"test-ops\"\npublic = \"{}\"\nmay = [\"deploy\", \"door\", \"credentials\", \"pin\"]\n",
            broker.port,
            key.public_b64()
        );
        let config = dir.path().join("site.toml");
        std::fs::write(&config, format!("{cfg}{fleet}")).unwrap();
        let db = dir.path().join("state/events.sqlite");
        Site { config, key: key_path, db, port: broker.port, dir }
    }

    /// A trace of `n` card reads by residents, one every `every_ms`, alternating doors.
    fn card_trace(&self, n: usize, every_ms: u64) -> PathBuf {
        self.trace(&format!("cards-{n}"), n, every_ms, &card_reads())
    }

    /// A trace of `n` inputs cycling through `inputs` (JSON), one every `every_ms`, starting
    /// now: a trace-driven gateway lives on the trace's clock, and the operator signs
    /// commands with today's, so the two must agree (no test depends on today's date).
    fn trace(&self, name: &str, n: usize, every_ms: u64, inputs: &[String]) -> PathBuf {
        self.trace_from(&rfc3339(time::OffsetDateTime::now_utc()), name, n, every_ms, inputs)
    }

    /// The same, starting at `start` (RFC 3339).
    fn trace_from(&self, start: &str, name: &str, n: usize, every_ms: u64, inputs: &[String]) -> PathBuf {
        let mut t = format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{start}\",\"description\":\"residents coming and going\"}}\n");
        for i in 0..n {
            t.push_str(&format!("{{\"at\":{},\"input\":{}}}\n", 1000 + i as u64 * every_ms, inputs[i % inputs.len()]));
        }
        let p = self.dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&p, t).unwrap();
        p
    }

    /// Starts `gate run` (speed 1, held open after the trace); killed on drop.
    fn run(&self, trace: &Path) -> Running {
        let log = std::fs::File::create(self.dir.path().join("gate-run.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gate"))
            .current_dir(root())
            .args(["run", "--config", self.config.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "1", "--hold"])
            .env("GATE_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start gate run");
        Running { child, log: self.dir.path().join("gate-run.log") }
    }

    fn broker_args(&self) -> Vec<String> {
        vec!["--broker-port".into(), self.port.to_string(), "--timeout".into(), "120".into()]
    }

    /// `gate plugin sign` of `component` as resident-policy `version` with `extra` flags.
    fn sign(&self, component: &str, version: &str, sequence: u64, extra: &[&str]) -> PathBuf {
        let out = self.dir.path().join(format!("{component}-{version}-{sequence}.bundle.json"));
        let comp = plugin(component);
        let seq = sequence.to_string();
        let mut args = vec!["plugin", "sign", "--key", self.key.to_str().unwrap(), "--component", comp.to_str().unwrap(), "--name", "resident-policy"];
        args.extend(["--version", version, "--sequence", &seq, "--config-from", self.config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let o = gate(&args);
        assert!(o.status.success(), "sign failed: {}", text(&o));
        out
    }

    /// `gate plugin deploy` to this gateway; returns (exit code, everything printed).
    fn deploy(&self, bundle: &Path) -> (i32, String) {
        let mut args: Vec<String> = vec!["plugin".into(), "deploy".into(), "--bundle".into(), bundle.to_str().unwrap().into(), "--gateway".into(), format!("{SITE}/{GW}")];
        args.extend(self.broker_args());
        let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (o.status.code().unwrap_or(-1), text(&o))
    }

    fn status(&self) -> String {
        let mut args: Vec<String> = vec!["fleet".into(), "status".into(), "--site".into(), SITE.into()];
        args.extend(self.broker_args());
        let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "fleet status failed: {}", text(&o));
        text(&o)
    }

    /// Decisions in the gateway's event log, oldest first, as (seq, by).
    fn decisions(&self) -> Vec<(i64, String)> {
        let Ok(c) = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return vec![];
        };
        let Ok(mut st) = c.prepare("SELECT seq, body FROM events WHERE kind = 'decision' ORDER BY seq") else {
            return vec![];
        };
        st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map(|rows| rows.filter_map(Result::ok).map(|(s, b)| (s, serde_json::from_str::<serde_json::Value>(&b).unwrap()["by"].as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default()
    }

    /// Records of `kind` in the gateway's event log, oldest first, as (seq, body).
    fn records(&self, kind: &str) -> Vec<(i64, serde_json::Value)> {
        let Ok(c) = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return vec![];
        };
        let Ok(mut st) = c.prepare("SELECT seq, body FROM events WHERE kind = ?1 ORDER BY seq") else {
            return vec![];
        };
        st.query_map([kind], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map(|rows| rows.filter_map(Result::ok).map(|(s, b)| (s, serde_json::from_str(&b).unwrap())).collect())
            .unwrap_or_default()
    }

    /// `gate <args…>` with this site's broker arguments; (exit code, everything printed).
    fn gate_with_broker(&self, args: &[&str]) -> (i32, String) {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(self.broker_args());
        let o = gate(&all.iter().map(String::as_str).collect::<Vec<_>>());
        (o.status.code().unwrap_or(-1), text(&o))
    }

    /// Reads decided or ignored so far (0 until the gateway has created its event log).
    fn handled(&self) -> i64 {
        let Ok(c) = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return 0;
        };
        c.query_row("SELECT COUNT(*) FROM events WHERE kind IN ('decision', 'ignored')", [], |r| r.get::<_, i64>(0)).unwrap_or(0)
    }

    fn event_ids(&self) -> Vec<(i64, String)> {
        let c = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut st = c.prepare("SELECT seq, id FROM events ORDER BY seq").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }
}

struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident card reads, alternating doors.
fn card_reads() -> Vec<String> {
    let reads = [("north-gate", "10012345"), ("building-3", "10012347"), ("north-gate", "10012346"), ("building-3", "10012345")];
    reads.iter().map(|(door, card)| format!("{{\"kind\":\"card\",\"door\":\"{door}\",\"number\":\"{card}\"}}")).collect()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn line_for<'a>(out: &'a str, gw: &str) -> &'a str {
    out.lines().rev().find(|l| l.starts_with(&format!("{gw}: "))).unwrap_or_else(|| panic!("no result line for {gw} in:\n{out}"))
}

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
    // Meanwhile the host's fallback let the PIN users in; afterwards the old version decides again.
    let during: Vec<_> = site.decisions().into_iter().filter(|(s, _)| *s > swapped_at).collect();
    assert!(during.iter().any(|(_, by)| by == "fallback:plugin-failed"), "{during:?}");
    let rolled_at = site.decisions().last().map_or(0, |d| d.0);
    wait_until("decisions by the restored version", Duration::from_secs(20), || site.decisions().iter().any(|(s, by)| *s > rolled_at && by == "plugin:resident-policy"));
    drop(gw);
}

/// A consumer of the site's events and alarms that re-subscribes whenever it reconnects:
/// what it received as (seq, id), and how many times it subscribed.
type Received = Arc<Mutex<Vec<(i64, String)>>>;
fn consumer(client_id: &str, port: u16) -> (Received, Arc<Mutex<u32>>) {
    let got: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let subscribed = Arc::new(Mutex::new(0u32));
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 1000);
    let (g, s) = (got.clone(), subscribed.clone());
    std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(format!("gate/v1/{SITE}/{GW}/+"), rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => *s.lock().unwrap() += 1,
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic.ends_with("/events") || p.topic.ends_with("/alarms") => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    g.lock().unwrap().push((v["seq"].as_i64().unwrap(), v["id"].as_str().unwrap().to_string()));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (got, subscribed)
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
    let o = gate(&["credential-ref", "--site", SITE, "--card", "10012347"]);
    let reference = text(&o).trim().to_string();
    assert!(o.status.success() && reference.starts_with("card:") && !reference.contains("10012347"), "{reference}");
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
    let mut opts = rumqttc::MqttOptions::new(format!("attacker-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(1000);
    let (client, mut conn) = rumqttc::Client::new(opts, 1000);
    let acks = Arc::new(Mutex::new(0usize));
    let a = acks.clone();
    let driver = std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => *a.lock().unwrap() += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    for t in topics {
        for i in 0..n {
            client.publish(format!("gate/v1/{SITE}/{GW}/{}", t.replace("{i}", &i.to_string())), rumqttc::QoS::AtLeastOnce, false, payload(i)).unwrap();
        }
    }
    wait_until("the broker to take the whole flood", Duration::from_secs(60), || *acks.lock().unwrap() >= topics.len() * n);
    let _ = client.disconnect();
    let _ = driver.join();
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
