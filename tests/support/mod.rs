//! What the end-to-end tests share: a site in a temp dir (the demo site with `[fleet]` and
//! an operator key), the real `gate` binary, a real mosquitto, and the event log read back.
#![allow(dead_code)]

use gate_fleet::keys::OperatorKey;
use gate_fleet::testing::Broker;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SITE: &str = "maple-court";
pub const GW: &str = "gw-north-1";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn plugin(name: &str) -> PathBuf {
    let p = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` (or `cargo xtask plugins`) to build the plugins", p.display());
    p
}

pub fn broker() -> Broker {
    Broker::start().unwrap_or_else(|e| panic!("cannot start mosquitto for the fleet tests: {e}"))
}

pub fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A gateway's site (the demo site, `resident-policy` served by `initial`, `[fleet]`
/// pointing at the broker and trusting the operator key `test-ops`) in a temp dir.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub key: PathBuf,
    pub db: PathBuf,
    pub port: u16,
}

impl Site {
    pub fn new(broker: &Broker, initial: &str, keep_alive: u64) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("test-ops.key");
        let key = OperatorKey::generate("test-ops").unwrap();
        key.save(&key_path).unwrap();
        let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
        let cfg = demo
            .replace("../target/plugins/resident-policy.wasm", plugin(initial).to_str().unwrap())
            .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
            .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
            .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
            .replace("\"../target/demo-state\"", &format!("{:?}", dir.path().join("state")));
        let ref_key = dir.path().join("site.refkey");
        let o = gate(&["fleet", "ref-keygen", "--out", ref_key.to_str().unwrap()]);
        assert!(o.status.success(), "fleet ref-keygen failed: {}", text(&o));
        let fleet = format!(
            "\n[fleet]\nrollback_failures = 3\nref_key = \"site.refkey\"\n\n[fleet.broker]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive_secs = {keep_alive}\n\n\
             [[fleet.trusted_keys]]\nid = \"test-ops\"\npublic = \"{}\"\nmay = [\"deploy\", \"door\", \"credentials\", \"pin\"]\n",
            broker.port,
            key.public_b64()
        );
        let config = dir.path().join("site.toml");
        std::fs::write(&config, format!("{cfg}{fleet}")).unwrap();
        let db = dir.path().join("state/events.sqlite");
        let site = Site { config, key: key_path, db, port: broker.port, dir };
        // The operator enrols the gateway's device key, as an installer would.
        let o = gate(&["fleet", "device-key", "--config", site.config.to_str().unwrap()]);
        assert!(o.status.success(), "fleet device-key failed: {}", text(&o));
        let public = String::from_utf8_lossy(&o.stdout).split_whitespace().last().unwrap().to_string();
        let inv = site.inventory_path();
        let o = gate(&["fleet", "enroll", "--gateway", &format!("{SITE}/{GW}"), "--public", &public, "--inventory", inv.to_str().unwrap()]);
        assert!(o.status.success(), "fleet enroll failed: {}", text(&o));
        site
    }

    /// The site's credential reference key file.
    pub fn ref_key(&self) -> PathBuf {
        self.dir.path().join("site.refkey")
    }

    /// The operator's inventory file (the gateway enrolled).
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.path().join("inventory.json")
    }

    /// The operator's inventory, for tests that drive `gate_fleet::operator` directly.
    pub fn inventory(&self) -> gate_fleet::inventory::Inventory {
        gate_fleet::inventory::Inventory::load(&self.inventory_path()).unwrap()
    }

    /// A trace of `n` card reads by residents, one every `every_ms`, alternating doors.
    pub fn card_trace(&self, n: usize, every_ms: u64) -> PathBuf {
        self.trace(&format!("cards-{n}"), n, every_ms, &card_reads())
    }

    /// A trace of `n` inputs cycling through `inputs` (JSON), one every `every_ms`, starting
    /// now: a trace-driven gateway lives on the trace's clock, and the operator signs
    /// commands with today's, so the two must agree (no test depends on today's date).
    pub fn trace(&self, name: &str, n: usize, every_ms: u64, inputs: &[String]) -> PathBuf {
        self.trace_from(&rfc3339(time::OffsetDateTime::now_utc()), name, n, every_ms, inputs)
    }

    /// The same, starting at `start` (RFC 3339).
    pub fn trace_from(&self, start: &str, name: &str, n: usize, every_ms: u64, inputs: &[String]) -> PathBuf {
        let mut t = format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{start}\",\"description\":\"residents coming and going\"}}\n");
        for i in 0..n {
            t.push_str(&format!("{{\"at\":{},\"input\":{}}}\n", 1000 + i as u64 * every_ms, inputs[i % inputs.len()]));
        }
        let p = self.dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&p, t).unwrap();
        p
    }

    /// Starts `gate run` (speed 1, held open after the trace); killed on drop.
    pub fn run(&self, trace: &Path) -> Running {
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

    pub fn broker_args(&self) -> Vec<String> {
        vec!["--broker-port".into(), self.port.to_string(), "--timeout".into(), "120".into(), "--inventory".into(), self.inventory_path().to_str().unwrap().into()]
    }

    /// `gate plugin sign` of `component` as resident-policy `version` with `extra` flags.
    pub fn sign(&self, component: &str, version: &str, sequence: u64, extra: &[&str]) -> PathBuf {
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
    pub fn deploy(&self, bundle: &Path) -> (i32, String) {
        let mut args: Vec<String> = vec!["plugin".into(), "deploy".into(), "--bundle".into(), bundle.to_str().unwrap().into(), "--gateway".into(), format!("{SITE}/{GW}")];
        args.extend(self.broker_args());
        let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (o.status.code().unwrap_or(-1), text(&o))
    }

    pub fn status(&self) -> String {
        let mut args: Vec<String> = vec!["fleet".into(), "status".into(), "--site".into(), SITE.into()];
        args.extend(self.broker_args());
        let o = gate(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "fleet status failed: {}", text(&o));
        text(&o)
    }

    /// Decisions in the gateway's event log, oldest first, as (seq, by).
    pub fn decisions(&self) -> Vec<(i64, String)> {
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
    pub fn records(&self, kind: &str) -> Vec<(i64, serde_json::Value)> {
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
    pub fn gate_with_broker(&self, args: &[&str]) -> (i32, String) {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(self.broker_args());
        let o = gate(&all.iter().map(String::as_str).collect::<Vec<_>>());
        (o.status.code().unwrap_or(-1), text(&o))
    }

    /// Reads decided or ignored so far (0 until the gateway has created its event log).
    pub fn handled(&self) -> i64 {
        let Ok(c) = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return 0;
        };
        c.query_row("SELECT COUNT(*) FROM events WHERE kind IN ('decision', 'ignored')", [], |r| r.get::<_, i64>(0)).unwrap_or(0)
    }

    pub fn event_ids(&self) -> Vec<(i64, String)> {
        let c = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut st = c.prepare("SELECT seq, id FROM events ORDER BY seq").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }
}

pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn output(&self) -> String {
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
pub fn card_reads() -> Vec<String> {
    let reads = [("north-gate", "10012345"), ("building-3", "10012347"), ("north-gate", "10012346"), ("building-3", "10012345")];
    reads.iter().map(|(door, card)| format!("{{\"kind\":\"card\",\"door\":\"{door}\",\"number\":\"{card}\"}}")).collect()
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Waits until every id in `logged` has reached the consumer `got`; on timeout, says which
/// ids are missing, where the outbox cursor stands and what the gateway printed.
pub fn wait_all_published(site: &Site, got: &Received, logged: &[String], timeout: Duration, gateway_output: impl Fn() -> String) {
    let missing = || {
        let seen: std::collections::BTreeSet<String> = got.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
        logged.iter().filter(|id| !seen.contains(*id)).cloned().collect::<Vec<_>>()
    };
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if missing().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fleet = site.db.with_file_name("fleet/fleet.sqlite");
    let cursor: Option<i64> =
        rusqlite::Connection::open_with_flags(&fleet, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok().and_then(|c| c.query_row("SELECT cursor FROM outbox_state", [], |r| r.get(0)).ok());
    let missing = missing();
    let seqs: Vec<i64> = site.event_ids().into_iter().filter(|(_, id)| missing.contains(id)).map(|(s, _)| s).collect();
    panic!(
        "timed out after {timeout:?}: {} of {} logged events never reached the consumer (seqs {seqs:?}, ids {missing:?}); the consumer got {} messages; outbox cursor {cursor:?}\ngateway output:\n{}",
        missing.len(),
        logged.len(),
        got.lock().unwrap().len(),
        gateway_output()
    );
}

pub fn line_for<'a>(out: &'a str, gw: &str) -> &'a str {
    out.lines().rev().find(|l| l.starts_with(&format!("{gw}: "))).unwrap_or_else(|| panic!("no result line for {gw} in:\n{out}"))
}

/// A consumer of the site's events and alarms that re-subscribes whenever it reconnects:
/// what it received as (seq, id), and how many times it subscribed.
pub type Received = Arc<Mutex<Vec<(i64, String)>>>;
pub fn consumer(client_id: &str, port: u16) -> (Received, Arc<Mutex<u32>>) {
    let got: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let subscribed = Arc::new(Mutex::new(0u32));
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    // A persistent session: if this client's link drops under load, the broker keeps the
    // QoS 1 messages for it, as it would for a real operator's consumer.
    opts.set_clean_session(false);
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
                    let body = gate_fleet::signed::body_unverified(&p.payload).expect("events travel signed");
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    g.lock().unwrap().push((v["seq"].as_i64().unwrap(), v["id"].as_str().unwrap().to_string()));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    (got, subscribed)
}

/// Publishes `(topic, retained, payload)` as a broker client with no key, in order, and
/// waits until the broker has taken them all.
pub fn publish_raw(port: u16, msgs: &[(&str, bool, Vec<u8>)]) {
    let msgs = msgs.iter().map(|(t, r, p)| (t.to_string(), *r, p.clone()));
    keyless_publish(port, &format!("forger-{}-{}", std::process::id(), msgs.len()), 100, msgs, "the forged messages", Duration::from_secs(20));
}

/// Publishes every `(topic, retained, payload)` at QoS 1 as broker client `id` with no key,
/// up to `inflight` unacknowledged at once, and waits (at most `guard`) until the broker
/// has taken them all.
pub fn keyless_publish(port: u16, id: &str, inflight: u16, msgs: impl ExactSizeIterator<Item = (String, bool, Vec<u8>)>, what: &str, guard: Duration) {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(inflight);
    let (client, mut conn) = rumqttc::Client::new(opts, usize::from(inflight));
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
    let total = msgs.len();
    for (t, retain, p) in msgs {
        client.publish(t, rumqttc::QoS::AtLeastOnce, retain, p).unwrap();
    }
    wait_until(&format!("the broker to take {what}"), guard, || *acks.lock().unwrap() >= total);
    let _ = client.disconnect();
    let _ = driver.join();
}

/// The retained message on `topic` (waits up to `timeout` for the broker to hand it over).
pub fn retained(port: u16, topic: &str, timeout: Duration) -> Option<Vec<u8>> {
    let mut opts = rumqttc::MqttOptions::new(format!("retained-{}-{}", std::process::id(), topic.len()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = rumqttc::Client::new(opts, 100);
    client.subscribe(topic, rumqttc::QoS::AtLeastOnce).unwrap();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) if p.topic == topic => {
                let _ = client.disconnect();
                return Some(p.payload.to_vec());
            }
            _ => {}
        }
    }
    let _ = client.disconnect();
    None
}
