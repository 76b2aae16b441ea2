//! The gateway as a service, driven as systemd and an operator would drive it: the real
//! `gate run` serving simulated pins through the real drivers, the real plugins, the real
//! SQLite event log and a real mosquitto, all at once; the sd_notify protocol against a
//! test socket; SIGTERM during traffic; kill -9 at random points, restarting on the same state.

mod support;

use gate::event::{Direction, Input};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// Gives `building-3` a policy plugin whose every call spins until the host cuts it at
/// the deadline: a plugin call "hanging" on a door next to the north gate.
fn hang_building_3(site: &Site) {
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    let at = cfg.find("id = \"building-3\"").expect("building-3");
    let pol = at + cfg[at..].find("policy = \"resident-policy\"").expect("its policy");
    let mut cfg = format!("{}policy = \"hang\"{}", &cfg[..pol], &cfg[pol + "policy = \"resident-policy\"".len()..]);
    cfg.push_str(&format!("\n[plugins.hang]\npath = {:?}\nworld = \"policy\"\n", plugin("spin-forever").to_str().unwrap()));
    std::fs::write(&site.config, cfg).unwrap();
}

/// Turns the site's camera on: `[face]` with the fetched models, a device key, and r-0003
/// enrolled from two photos (real models: `cargo xtask setup` fetches them).
fn enrol_r0003(site: &Site) {
    let models = root().join("models");
    let cfg = std::fs::read_to_string(&site.config).unwrap();
    assert!(cfg.contains("[face]\n"), "the demo site's [face] section changed");
    let face = format!("[face]\nmodels_dir = {:?}\ndb = \"faces.sqlite\"\nkey = \"face.key\"\n", models);
    std::fs::write(&site.config, cfg.replacen("[face]\n", &face, 1)).unwrap();
    let key = site.dir.path().join("face.key");
    let o = gate(&["face", "key", "new", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let photo = |n: &str| models.join("testdata").join(n).to_string_lossy().into_owned();
    let cfg = site.config.to_str().unwrap();
    let (a, b) = (photo("obama.jpg"), photo("obama3.jpg"));
    let o = gate(&["enroll", "--config", cfg, "--subject", "r-0003", "--purpose", "entry at the community gates", "--notice-version", "2026-11", "--capture", "signed at the property office", &a, &b]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

fn card(door: &str, number: &str) -> Input {
    Input::Card { door: door.into(), direction: Direction::Entry, number: number.into(), captured_at: None }
}

/// A pin-level trace starting now: each input becomes the edges on the site's `[hardware]`
/// wires that the real drivers decode back to it (inputs no wire can make stay as they are).
fn pin_trace(site: &Site, name: &str, inputs: &[(u64, Input)]) -> PathBuf {
    let cfg = gate::config::SiteConfig::load(&site.config).expect("site loads");
    let hw = cfg.hardware.expect("[hardware]");
    let twin = gate::hardware::twin(&hw, inputs).expect("twin");
    let mut t = format!("{{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"{}\",\"description\":\"{name}\"}}\n", rfc3339(time::OffsetDateTime::now_utc()));
    for (at, i) in &twin {
        t.push_str(&gate::trace::input_line(*at, i));
        t.push('\n');
    }
    let p = site.dir.path().join(format!("{name}.jsonl"));
    std::fs::write(&p, t).unwrap();
    p
}

/// `gate run --simulate PINS --hold` with `env`, output to `<dir>/<name>.log`.
fn serve(site: &Site, pins: &Path, name: &str, env: &[(&str, &str)]) -> Running {
    let log = site.dir.path().join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gate"));
    cmd.current_dir(root()).args(["run", "--config", site.config.to_str().unwrap(), "--simulate", pins.to_str().unwrap(), "--hold"]);
    cmd.env("GATE_LOG", "warn").envs(env.iter().copied()).stdout(f.try_clone().unwrap()).stderr(f).stdin(Stdio::null());
    Running { child: cmd.spawn().expect("start gate run"), log }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} failed");
}

/// Waits for the process to end by itself (a hang guard, not a timing assertion).
fn wait_exit(child: &mut Child, guard: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + guard;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn seq_of(site: &Site, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Option<i64> {
    site.records(kind).into_iter().find(|(_, r)| pred(r)).map(|(s, _)| s)
}

#[test]
fn the_service_serves_pins_plugins_and_the_fleet_at_once_and_exit_and_fire_never_wait_for_a_plugin() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    hang_building_3(&site);
    enrol_r0003(&site);
    let frame = root().join("models/testdata/obama2.jpg");
    let inputs = vec![
        (3_000, card("building-3", "10012347")),
        (3_001, Input::ExitButton { door: "north-gate".into() }),
        (3_002, Input::FireAlarm { active: true }),
        // The camera at the north gate sees r-0003; the exit button and fire inputs above act
        // 6-7 ms after it (their 30 ms debounce), while the frame is still being matched.
        (3_025, Input::CameraFrame { door: "north-gate".into(), direction: Direction::Entry, file: frame, captured_at: None }),
        (6_000, Input::FireAlarm { active: false }),
        // r-0003 completes the face with a card (a second factor: face opens alone at no door here).
        (8_000, card("north-gate", "10012347")),
        (30_000, card("north-gate", "10012346")),
    ];
    let pins = pin_trace(&site, "at-once", &inputs);
    assert!(std::fs::read_to_string(&pins).unwrap().contains("\"kind\":\"line\""), "the inputs reach the gateway through the wires");
    let gw = serve(&site, &pins, "at-once", &[]);
    wait_until("the gateway online", Duration::from_secs(30), || site.status().contains(&format!("{SITE}\t{GW}\tyes")));

    // The card at building-3 goes to the spinning plugin; the exit button and the fire
    // input a millisecond later are acted on, and logged, before that call comes back.
    wait_until("the building-3 read decided", Duration::from_secs(30), || seq_of(&site, "decision", |d| d["door"] == "building-3").is_some());
    let b3 = site.records("decision").into_iter().find(|(_, d)| d["door"] == "building-3").unwrap();
    assert!(b3.1["by"].as_str().unwrap().starts_with("fallback:"), "the hung plugin is cut and the host decides: {}", b3.1);
    assert_eq!(b3.1["outcome"], "grant", "a resident's card opens by the fallback: {}", b3.1);
    wait_until("the fire alarm", Duration::from_secs(30), || seq_of(&site, "alarm", |a| a["alarm"] == "fire" && a["active"] == true).is_some());
    let exit = seq_of(&site, "exit", |e| e["door"] == "north-gate").expect("the exit button acted");
    let fire = seq_of(&site, "alarm", |a| a["alarm"] == "fire" && a["active"] == true).unwrap();
    let north_relay = seq_of(&site, "relay", |r| r["door"] == "north-gate" && r["on"] == true).expect("the north gate released");
    assert!(exit < b3.0 && north_relay < b3.0 && fire < b3.0, "exit ({exit}), its relay ({north_relay}) and fire ({fire}) waited for the plugin ({})", b3.0);
    // The north gate was already released by its exit button; fire releases the others.
    for door in ["garage-vehicle", "building-3"] {
        assert!(site.records("relay").iter().any(|(s, r)| *s >= fire && r["door"] == door && r["on"] == true), "fire released {door}");
    }

    // The frame was matched on the face thread (tens of ms) while the exit button and the
    // fire input were already acted on.
    wait_until("the camera frame decided", Duration::from_secs(30), || seq_of(&site, "decision", |d| d["credential"] == "face").is_some());
    let face = site.records("decision").into_iter().find(|(_, d)| d["credential"] == "face").unwrap();
    assert_eq!((face.1["subject"].as_str(), face.1["by"].as_str()), (Some("r-0003"), Some("plugin:resident-policy")), "the camera matched r-0003 and its plugin decided: {}", face.1);
    assert!(exit < face.0 && fire < face.0, "exit ({exit}) and fire ({fire}) waited for the face matcher ({})", face.0);

    // A resident's card at the north gate is decided by its own plugin.
    wait_until("the north-gate card", Duration::from_secs(30), || seq_of(&site, "decision", |d| d["door"] == "north-gate" && d["credential"] == "card").is_some());
    let north = site.records("decision").into_iter().find(|(_, d)| d["door"] == "north-gate" && d["credential"] == "card").unwrap().1;
    assert_eq!((north["outcome"].as_str(), north["by"].as_str()), (Some("grant"), Some("plugin:resident-policy")), "{north}");

    // A deployment lands and a remote command acts while the doors are served.
    let bundle = site.sign("resident-policy", "1.1.0", 1, &[]);
    let (code, out) = site.deploy(&bundle);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    let key = site.key.to_str().unwrap().to_string();
    let target = format!("{SITE}/{GW}");
    let (code, out) = site.gate_with_broker(&["remote", "open-door", "--key", &key, "--gateway", &target, "--door", "garage-vehicle"]);
    assert_eq!(code, 0, "{out}");
    wait_until("the remote open logged", Duration::from_secs(30), || seq_of(&site, "decision", |d| d["door"] == "garage-vehicle" && d["by"] == "remote:test-ops").is_some());
    assert!(site.status().contains("1.1.0"), "{}", site.status());

    // The last read, after the deployment, is decided by the deployed version.
    wait_until("the read after the deployment", Duration::from_secs(60), || site.records("decision").iter().filter(|(_, d)| d["door"] == "north-gate" && d["credential"] == "card").count() >= 2);
    let last = site.records("decision").into_iter().rfind(|(_, d)| d["door"] == "north-gate" && d["credential"] == "card").unwrap().1;
    assert_eq!(last["by"], "plugin:resident-policy", "{last}");
    drop(gw);
}

/// What the test socket received, with when.
type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`; collects what arrives.
fn notify_socket(dir: &Path) -> (PathBuf, Notes) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let got: Notes = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            g.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    });
    (path, got)
}

#[test]
fn systemd_hears_ready_once_the_doors_are_served_and_the_watchdog_stops_when_the_door_loop_stalls() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let (sock, got) = notify_socket(site.dir.path());
    // Reads every 300 ms: the loop writes the event log all the time.
    let inputs: Vec<(u64, Input)> = (0..200).map(|i| (2_000 + i * 300, card("north-gate", ["10012345", "10012346"][i as usize % 2]))).collect();
    let pins = pin_trace(&site, "notify", &inputs);
    // WATCHDOG_PID must be the gateway's own pid: exec keeps the shell's.
    let mut cmd = Command::new("sh");
    let log = site.dir.path().join("notify.log");
    let f = std::fs::File::create(&log).unwrap();
    cmd.current_dir(root())
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_gate"), "run", "--config", site.config.to_str().unwrap(), "--simulate", pins.to_str().unwrap(), "--hold"])
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "200000")
        .env("GATE_LOG", "warn")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .stdin(Stdio::null());
    let gw = Running { child: cmd.spawn().expect("start"), log };
    let msgs = |pat: &str| -> Vec<Instant> { got.lock().unwrap().iter().filter(|(_, m)| m.lines().any(|l| l == pat)).map(|(t, _)| *t).collect() };
    wait_until("READY=1", Duration::from_secs(30), || !msgs("READY=1").is_empty());
    let ready = got.lock().unwrap().iter().find(|(_, m)| m.contains("READY=1")).map(|(_, m)| m.clone()).unwrap();
    assert!(ready.contains("STATUS=serving 3 doors of maple-court/gw-north-1"), "{ready}");
    // Ready means served: the event log exists and the first reads are decided.
    wait_until("reads decided after READY", Duration::from_secs(30), || site.records("decision").len() >= 2);
    let before = msgs("WATCHDOG=1").len();
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(msgs("WATCHDOG=1").len() > before, "the door loop pings the watchdog while it turns");

    // Stall the door loop on purpose: another process holds the event log's write lock, so
    // the next decision cannot be logged (and the door must not move before it is).
    let lock = rusqlite::Connection::open(&site.db).expect("open the event log");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("take the write lock");
    std::thread::sleep(Duration::from_millis(600));
    let stalled_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1_200));
    let during = msgs("WATCHDOG=1").into_iter().filter(|t| *t > stalled_at).count();
    lock.execute_batch("ROLLBACK").expect("release the lock");
    assert_eq!(during, 0, "WATCHDOG=1 kept coming while the door loop was stalled: systemd could never restart a wedged gateway");
    let released = Instant::now();
    wait_until("the pings to come back once the loop turns again", Duration::from_secs(10), || msgs("WATCHDOG=1").into_iter().any(|t| t > released));
    drop(gw);
}

#[test]
fn sigterm_during_traffic_stops_within_the_budget_with_relays_safe_nothing_lost_and_offline_published() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let (got, subscribed) = consumer("service-sigterm", broker.port);
    wait_until("the consumer to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 1);
    let status = status_watcher("service-sigterm-status", broker.port);
    let inputs: Vec<(u64, Input)> = (0..400).map(|i| (1_000 + i * 50, card(["north-gate", "building-3"][i as usize % 2], ["10012345", "10012347"][i as usize % 2]))).collect();
    let pins = pin_trace(&site, "sigterm", &inputs);
    let mut gw = serve(&site, &pins, "sigterm", &[]);
    wait_until("traffic", Duration::from_secs(30), || site.records("decision").len() >= 20);
    signal(&gw.child, "-TERM");
    let asked = Instant::now();
    let code = wait_exit(&mut gw.child, Duration::from_secs(20)).expect("the gateway stopped");
    let took = asked.elapsed();
    assert_eq!(code.code(), Some(0), "{}", gw.output());
    eprintln!("SIGTERM to exit: {took:?}");
    // Every relay ends released (no fire), after the last decision.
    let relays = site.records("relay");
    for door in ["north-gate", "building-3"] {
        let last = relays.iter().rfind(|(_, r)| r["door"] == door).map(|(_, r)| r["on"].clone());
        assert_eq!(last, Some(serde_json::json!(false)), "{door} left energised");
    }
    // Every decision printed was logged, and the offline status went out.
    let printed = gw.output().lines().filter(|l| l.contains(" GRANT ") || l.contains(" DENY ")).count();
    assert_eq!(printed, site.records("decision").len(), "{}", gw.output());
    wait_until("the offline status", Duration::from_secs(10), || status.lock().unwrap().last().is_some_and(|s| s["online"] == false));
    // What did not reach the broker before the stop goes out after the next start.
    let logged: Vec<String> = site.event_ids().into_iter().map(|(_, id)| id).collect();
    let again = serve(&site, &pin_trace(&site, "after", &[]), "after", &[]);
    wait_all_published(&site, &got, &logged, Duration::from_secs(60), || again.output());
    drop(again);
}

/// The retained status messages of the gateway, as they arrive.
fn status_watcher(client_id: &str, port: u16) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 100);
    let g = got.clone();
    std::thread::spawn(move || {
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(format!("gate/v1/{SITE}/{GW}/status"), rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if let Some(Ok(v)) = gate_fleet::signed::body_unverified(&p.payload).map(|b| serde_json::from_str::<serde_json::Value>(&b)) {
                        g.lock().unwrap().push(v);
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    got
}

#[test]
fn kill_9_at_random_points_never_loses_repeats_or_corrupts_and_the_gateway_serves_again_each_time() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let (got, subscribed) = consumer("service-kill9", broker.port);
    wait_until("the consumer to subscribe", Duration::from_secs(10), || *subscribed.lock().unwrap() >= 1);
    // Four residents' reads in turn, each repeating after 2.4 s (beyond the repeat window).
    let reads = [("north-gate", "10012345"), ("building-3", "10012347"), ("north-gate", "10012346"), ("building-3", "10012345")];
    let inputs: Vec<(u64, Input)> = (0..2_000).map(|i| (500 + i * 600, card(reads[i as usize % 4].0, reads[i as usize % 4].1))).collect();
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const KILLS: usize = 20;
    let mut decided_per_run = Vec::new();
    for run in 0..KILLS {
        let before = site.records("decision").len();
        let pins = pin_trace(&site, &format!("kill-{run}"), &inputs);
        let mut gw = serve(&site, &pins, &format!("kill-{run}"), &[]);
        // It serves again: a read decided after this start, then a kill at a random point.
        wait_until(&format!("run {run} deciding"), Duration::from_secs(30), || site.records("decision").len() > before);
        std::thread::sleep(Duration::from_millis(next() % 700));
        signal(&gw.child, "-KILL");
        let _ = wait_exit(&mut gw.child, Duration::from_secs(10));
        decided_per_run.push(site.records("decision").len() - before);
        let c = rusqlite::Connection::open(&site.db).expect("open");
        let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
        assert_eq!(check, "ok", "after kill {run}");
    }
    // No id was ever given to two events.
    let ids = site.event_ids();
    let unique: std::collections::BTreeSet<&String> = ids.iter().map(|(_, id)| id).collect();
    assert_eq!(unique.len(), ids.len(), "an event id was reused after a kill -9");
    // One more start: every event logged in any run reaches the consumer, by id, once.
    let logged: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    let last = serve(&site, &pin_trace(&site, "last", &[]), "last", &[]);
    wait_all_published(&site, &got, &logged, Duration::from_secs(120), || last.output());
    eprintln!("decisions per run before its kill: {decided_per_run:?}");
    drop(last);
}

/// Card reads from the first moment the wires allow (a Wiegand frame takes 75 ms): `n` reads
/// cycling through residents' cards at two doors, one every `every_ms` from 100 ms (each card
/// at its door every 4 reads).
fn reads_from_zero(n: usize, every_ms: u64) -> Vec<(u64, Input)> {
    let reads = [("north-gate", "10012345"), ("building-3", "10012347"), ("north-gate", "10012346"), ("building-3", "10012345")];
    (0..n).map(|i| (100 + i as u64 * every_ms, card(reads[i % reads.len()].0, reads[i % reads.len()].1))).collect()
}

#[test]
fn with_no_plugin_cache_the_fallback_serves_the_first_card_and_the_plugin_takes_over_once_compiled() {
    let broker = broker();
    let site = Site::new(&broker, "resident-policy", 5);
    let cache = site.dir.path().join("state/plugin-cache");
    assert!(!cache.exists(), "the site starts with no precompiled plugins");
    // A card at the garage lane (no wired reader: it reaches the gateway at once, at 0 ms),
    // then reads on the wires, each card at its door every 2.4 s (beyond the repeat window).
    let mut reads = vec![(0, card("garage-vehicle", "10012345"))];
    reads.extend(reads_from_zero(200, 600));
    let gw = serve(&site, &pin_trace(&site, "cold", &reads), "cold", &[]);
    wait_until("a decision by the compiled plugin", Duration::from_secs(90), || site.decisions().iter().any(|(_, by)| by == "plugin:resident-policy"));
    let decisions = site.records("decision");
    let first = &decisions[0].1;
    assert_eq!((first["outcome"].as_str(), first["by"].as_str()), (Some("grant"), Some("fallback:plugin-compiling")), "the first card is served while the plugin compiles: {first}");
    // Once the plugin is swapped in, it decides every read after; before, the fallback did.
    let took_over = decisions.iter().position(|(_, d)| d["by"] == "plugin:resident-policy").unwrap();
    assert!(decisions[..took_over].iter().all(|(_, d)| d["by"] == "fallback:plugin-compiling" && d["outcome"] == "grant"), "{decisions:?}");
    assert!(decisions[took_over..].iter().all(|(_, d)| d["by"] == "plugin:resident-policy"), "{decisions:?}");
    assert!(gw.output().contains("compiling platform-bridge, resident-policy in the background"), "{}", gw.output());
    wait_until("both plugins compiled into the cache", Duration::from_secs(90), || std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) >= 2);
    drop(gw);

    // The compile left its precompiled copies: the next start serves the first card by the plugin.
    let before = site.records("decision").last().map_or(0, |(s, _)| *s);
    let gw = serve(&site, &pin_trace(&site, "warm", &reads_from_zero(4, 600)), "warm", &[]);
    wait_until("the first read after the restart", Duration::from_secs(30), || site.records("decision").iter().any(|(s, _)| *s > before));
    let first = site.records("decision").into_iter().find(|(s, _)| *s > before).unwrap().1;
    assert_eq!(first["by"], "plugin:resident-policy", "{first}");
    assert!(!gw.output().contains("in the background"), "{}", gw.output());
}
