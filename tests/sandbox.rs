//! The sandbox holds against hostile plugins (issue 10): each attack is a plugin in
//! `plugins/testing/`, driven through the real `gate` binary in service (`gate run`) and
//! in replay (`gate replay`). Whatever the plugin does, the host survives, every other
//! door is decided by its own plugin, the resident's card opens the bad plugin's door by
//! the fallback, exit and fire act at once, the bad plugin is quarantined, and fire
//! alarms are published.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn plugin(name: &str) -> PathBuf {
    let p = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask plugins`", p.display());
    p
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `gate` and kills it if it has not exited after `secs`: a host that hangs fails
/// the test instead of hanging the suite.
fn gate(args: &[&str], env: &[(&str, &str)], secs: u64) -> Output {
    gate_measured(args, env, secs).0
}

/// Like [`gate`], and also the peak resident memory of the `gate` process in KiB (its
/// `ru_maxrss`, from `wait4` on that child alone, so other tests' children do not count).
fn gate_measured(args: &[&str], env: &[(&str, &str)], secs: u64) -> (Output, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gate"));
    cmd.current_dir(root()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    #[allow(clippy::zombie_processes, reason = "reaped below by libc::wait4, which also gives its rusage")]
    let mut child = cmd.spawn().expect("run gate");
    let pid = child.id();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let done = Arc::new(AtomicBool::new(false));
    let guard = {
        let done = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if started.elapsed() > Duration::from_secs(secs) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, whose pid std has not reaped (we never call `wait` on `child`).
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid as libc::pid_t, "wait4 on gate failed: {}", std::io::Error::last_os_error());
    done.store(true, Ordering::SeqCst);
    let killed = guard.join().unwrap_or(false);
    let out = Output { status: std::process::ExitStatus::from_raw(status), stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() };
    assert!(!killed, "gate {args:?} hung and was killed after {secs} s; its output:\n{}", text(&out));
    (out, u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

/// Residents beyond the demo's three, one card each (`30000000 + i`), so a test can send
/// many reads that are never repeats.
const EXTRA: usize = 400;

fn extra_card(i: usize) -> String {
    format!("{}", 30_000_000 + i)
}

fn extra_id(i: usize) -> String {
    format!("r-{}", 5000 + i)
}

/// The demo site in `dir`: north-gate served by `north` (with `settings`, a TOML inline
/// table body), the other doors by `resident-policy`, `platform-bridge` publishing, the
/// `[limits]` lines of `limits` added, `extra` sections appended, and [`EXTRA`] residents.
fn site(dir: &Path, north: &str, settings: &str, limits: &str, extra: &str) -> PathBuf {
    let mut subjects = std::fs::read_to_string(root().join("configs/demo-subjects.toml")).unwrap();
    for i in 0..EXTRA {
        subjects.push_str(&format!("\n[[subject]]\nid = \"{}\"\nrole = \"resident\"\ngroups = []\ncards = [\"{}\"]\n", extra_id(i), extra_card(i)));
    }
    let subjects_path = dir.join("subjects.toml");
    std::fs::write(&subjects_path, subjects).unwrap();
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    // Keys given in `limits` replace the demo's own lines for them.
    let keys: Vec<&str> = limits.lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k.trim()).collect();
    let demo: String = demo.lines().filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} ")) || l.starts_with(&format!("{k}=")))).map(|l| format!("{l}\n")).collect();
    let mut body = demo
        .replace("../target/plugins/resident-policy.wasm", plugin("resident-policy").to_str().unwrap())
        .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
        .replace("\"demo-subjects.toml\"", &format!("{:?}", subjects_path))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")))
        .replace("[limits]\n", &format!("[limits]\n{limits}\n"));
    if north != "resident-policy" {
        let section = format!("[plugins.{north}]\npath = {:?}\nworld = \"policy\"\nconfig = {{ {settings} }}\n\n[[door]]", plugin(north));
        body = body.replacen("[[door]]", &section, 1).replacen("policy = \"resident-policy\"", &format!("policy = \"{north}\""), 1);
    }
    body.push_str(extra);
    let cfg = dir.join("site.toml");
    std::fs::write(&cfg, body).unwrap();
    cfg
}

/// An integration plugin section for `bad-integration` in `mode`.
fn bad_integration(mode: &str) -> String {
    format!("\n[plugins.bad-integration]\npath = {:?}\nworld = \"integration\"\nprefix = \"bad\"\nconfig = {{ mode = \"{mode}\" }}\n", plugin("bad-integration"))
}

/// A trace in `dir` of `inputs` (at ms, input JSON).
fn trace(dir: &Path, name: &str, inputs: &[(u64, String)]) -> PathBuf {
    let mut t = String::from("{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n");
    for (at, input) in inputs {
        t.push_str(&format!("{{\"at\":{at},\"input\":{input}}}\n"));
    }
    let p = dir.join(format!("{name}.jsonl"));
    std::fs::write(&p, t).unwrap();
    p
}

fn card(door: &str, number: &str) -> String {
    format!("{{\"kind\":\"card\",\"door\":\"{door}\",\"number\":\"{number}\"}}")
}

fn pin(door: &str, pin: &str) -> String {
    format!("{{\"kind\":\"pin\",\"door\":\"{door}\",\"pin\":\"{pin}\"}}")
}

fn fire(active: bool) -> String {
    format!("{{\"kind\":\"fire-alarm\",\"active\":{active}}}")
}

fn exit(door: &str) -> String {
    format!("{{\"kind\":\"exit-button\",\"door\":\"{door}\"}}")
}

/// Start of the test traces, Unix ms.
const START_MS: i64 = 1_795_388_400_000;

/// Records in the event log of the site in `dir`, oldest first: (at_ms, body).
fn records(dir: &Path) -> Vec<(i64, serde_json::Value)> {
    let c = rusqlite::Connection::open_with_flags(dir.join("state/events.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT at_ms, kind, body FROM events ORDER BY seq").unwrap();
    st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(|r| {
            let (at, kind, body) = r.unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["kind"] = serde_json::Value::String(kind);
            (at, v)
        })
        .collect()
}

fn replay_jsonl(cfg: &Path, trace: &Path, env: &[(&str, &str)]) -> (Vec<serde_json::Value>, Output) {
    let (recs, out, _) = replay_jsonl_measured(cfg, trace, env);
    (recs, out)
}

/// [`replay_jsonl`], and the peak resident memory of the replaying process in KiB.
fn replay_jsonl_measured(cfg: &Path, trace: &Path, env: &[(&str, &str)]) -> (Vec<serde_json::Value>, Output, u64) {
    let (out, peak_kib) = gate_measured(&["replay", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--format", "jsonl"], env, 300);
    assert!(out.status.success(), "{}", text(&out));
    let recs = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect();
    (recs, out, peak_kib)
}

/// `gate run` of `trace` in real time; its stdout (the records in the order the gateway
/// logged them) and everything it printed.
fn run(cfg: &Path, trace: &Path) -> (String, Output) {
    let (t, out, _) = run_measured(cfg, trace);
    (t, out)
}

/// [`run`], and the peak resident memory of the serving process in KiB.
fn run_measured(cfg: &Path, trace: &Path) -> (String, Output, u64) {
    let (out, peak_kib) = gate_measured(&["run", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "1"], &[("GATE_LOG", "warn")], 300);
    assert!(out.status.success(), "{}", text(&out));
    (String::from_utf8_lossy(&out.stdout).into_owned(), out, peak_kib)
}

fn pos(t: &str, needle: &str) -> usize {
    t.find(needle).unwrap_or_else(|| panic!("`{needle}` missing from:\n{t}"))
}

/// The printed decision line for `door` and `subject`, the `nth` one.
fn decision_line<'a>(t: &'a str, door: &str, subject: &str, nth: usize) -> &'a str {
    t.lines()
        .filter(|l| l.contains(door) && l.contains(&format!(" {subject} ")) && (l.contains("GRANT") || l.contains("DENY")))
        .nth(nth)
        .unwrap_or_else(|| panic!("no decision {nth} for {subject} at {door}:\n{t}"))
}

fn alarm_published(recs: &[serde_json::Value], plugin: &str, active: bool) -> bool {
    recs.iter().any(|r| r["kind"] == "publish" && r["plugin"] == plugin && r["topic"].as_str().is_some_and(|t| t.contains("/alarm/")) && r["payload"]["active"] == active)
}

/// In service a policy plugin that hangs to its deadline (600 ms here) delays only its own
/// door: building-3 and the garage are decided by their own plugin, fire release and the
/// exit button act, all before the hung call ends; the reads queued behind the hang are
/// decided by the fallback once they waited `limits.max_decision_wait_ms`, not when the
/// hang ends; the plugin is quarantined and the fire alarm is published.
#[test]
fn a_hanging_policy_plugin_delays_only_its_own_doors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), "spin-forever", "", "deadline_ms = 600\nmax_decision_wait_ms = 250", "");
    let t = trace(
        dir.path(),
        "hang",
        &[
            (0, card("north-gate", "10012345")),
            (5, card("north-gate", "10012346")),
            (10, card("north-gate", "10012347")),
            (15, pin("building-3", "246810")),
            (20, card("garage-vehicle", "10012346")),
            (25, fire(true)),
            (30, exit("building-3")),
            (2600, card("north-gate", "10012345")),
            (3300, card("north-gate", "10012346")),
            (4000, card("north-gate", "10012347")),
            (4700, pin("north-gate", "246810")),
            (5000, fire(false)),
        ],
    );
    let (t, _) = run(&cfg, &t);
    let hung = pos(&t, "deadline exceeded");
    for other in [decision_line(&t, "building-3", "r-0001", 0), decision_line(&t, "garage-vehicle", "r-0002", 0)] {
        assert!(other.contains("GRANT") && other.contains("[plugin:resident-policy]"), "{other}\n{t}");
        assert!(pos(&t, other) < hung, "another door waited for the hung plugin:\n{t}");
    }
    assert!(pos(&t, "ALARM fire RAISED") < hung && pos(&t, "exit button") < hung, "fire or exit waited for the plugin:\n{t}");
    assert!(decision_line(&t, "north-gate", "r-0001", 0).contains("GRANT") && decision_line(&t, "north-gate", "r-0001", 0).contains("[fallback:plugin-failed]"), "{t}");
    for queued in ["r-0002", "r-0003"] {
        let l = decision_line(&t, "north-gate", queued, 0);
        assert!(l.contains("GRANT") && l.contains("[fallback:waited-too-long]"), "{l}\n{t}");
        // Decided when its wait ran out, before the hung call ended.
        assert!(pos(&t, l) < hung, "{queued} waited for the hang to end:\n{t}");
    }
    assert!(t.contains("plugin spin-forever QUARANTINED"), "{t}");
    assert!(decision_line(&t, "north-gate", "r-0001", 2).contains("[fallback:quarantined]"), "{t}");
    let recs: Vec<serde_json::Value> = records(dir.path()).into_iter().map(|(_, r)| r).collect();
    assert!(alarm_published(&recs, "platform-bridge", true) && alarm_published(&recs, "platform-bridge", false), "fire alarm not published:\n{t}");
}

/// In service an integration plugin that hangs (to its deadline) or sleeps delays no
/// door: every door is decided by its own plugin before the hung call ends, the other
/// integration plugin still publishes the fire alarm, and the bad one is quarantined.
#[test]
fn an_integration_plugin_that_hangs_or_sleeps_delays_no_door() {
    for mode in ["spin", "sleep"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site(dir.path(), "resident-policy", "", "deadline_ms = 600", &bad_integration(mode));
        let t = trace(
            dir.path(),
            "integration-hang",
            &[
                (0, card("north-gate", "10012345")),
                (10, pin("building-3", "246810")),
                (20, card("garage-vehicle", "10012346")),
                (30, fire(true)),
                (40, card("north-gate", "10012347")),
                (1500, fire(false)),
            ],
        );
        let (t, _) = run(&cfg, &t);
        let failed = pos(&t, "plugin bad-integration FAILED");
        for (door, who) in [("north-gate", "r-0001"), ("building-3", "r-0001"), ("garage-vehicle", "r-0002"), ("north-gate", "r-0003")] {
            let l = decision_line(&t, door, who, 0);
            assert!(l.contains("GRANT") && l.contains("[plugin:resident-policy]"), "{mode}: {l}\n{t}");
            if mode == "spin" {
                assert!(pos(&t, l) < failed, "{mode}: a door waited for the integration plugin:\n{t}");
            }
        }
        assert!(pos(&t, "ALARM fire RAISED") < failed || mode == "sleep", "{mode}: {t}");
        assert!(t.contains("plugin bad-integration QUARANTINED"), "{mode}: {t}");
        let recs: Vec<serde_json::Value> = records(dir.path()).into_iter().map(|(_, r)| r).collect();
        assert!(alarm_published(&recs, "platform-bridge", true) && alarm_published(&recs, "platform-bridge", false), "{mode}: fire alarm not published:\n{t}");
        assert!(!recs.iter().any(|r| r["kind"] == "plugin" && r["plugin"] == "platform-bridge" && r["status"] == "failed"), "{mode}: {t}");
    }
}

/// A slow policy plugin (calls far slower than reads arrive at 100 reads/s) never makes
/// a decision late: a read waits at most `limits.max_decision_wait_ms` (100 ms here) for
/// its call to start, then the fallback decides it at once; every resident gets in; the
/// other door keeps its own plugin. (Before, the queue grew without bound and cards
/// opened the door seconds after they were read.)
#[test]
fn a_slow_policy_plugin_never_decides_late() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), "slow-policy", "spin = 30000000", "deadline_ms = 500\nmax_decision_wait_ms = 100", "");
    let mut inputs = Vec::new();
    let mut read_at = std::collections::HashMap::new();
    for i in 0..300usize {
        let at = 1000 + i as u64 * 10;
        inputs.push((at, card("north-gate", &extra_card(i))));
        read_at.insert(extra_id(i), at as i64);
        if i % 10 == 5 {
            let j = 300 + i / 10;
            inputs.push((at, card("building-3", &extra_card(j))));
            read_at.insert(extra_id(j), at as i64);
        }
    }
    let t = trace(dir.path(), "slow", &inputs);
    let (t, _) = run(&cfg, &t);
    let recs = records(dir.path());
    let decisions: Vec<&(i64, serde_json::Value)> = recs.iter().filter(|(_, r)| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 330, "every read decided once:\n{t}");
    let (mut by_plugin, mut by_wait) = (0, 0);
    let mut latest = 0i64;
    for (at, d) in &decisions {
        assert_eq!(d["outcome"], "grant", "{d}");
        let subject = d["subject"].as_str().unwrap();
        let late = at - START_MS - read_at[subject];
        latest = latest.max(late);
        match (d["door"].as_str().unwrap(), d["by"].as_str().unwrap()) {
            ("building-3", by) => assert_eq!(by, "plugin:resident-policy", "{d}"),
            (_, "plugin:slow-policy") => by_plugin += 1,
            // A burst (the machine stalled the gateway) may also find the door's queue full.
            (_, "fallback:waited-too-long" | "fallback:queue-full") => by_wait += 1,
            (_, by) => panic!("north-gate decided by {by}: {d}"),
        }
    }
    assert!(by_plugin > 0 && by_wait > 0, "plugin {by_plugin}, waited too long {by_wait}:\n{t}");
    // The bound the site sets (100 ms wait + a 500 ms call), with room for a loaded machine;
    // an unbounded queue was late by seconds here.
    assert!(latest <= 100 + 500 + 1000, "a decision was logged {latest} ms after its read");
    eprintln!("slow plugin: {by_plugin} decided by the plugin, {by_wait} by the fallback, latest {latest} ms after its read");
}

/// An integration plugin that floods publishes, and a site whose publish limit the
/// platform bridge's own traffic exceeds: alarms (raise and clear) are still published
/// by both, the bridge is not failed or quarantined for the host's limit, and what was
/// refused is counted and reported as a `dropped` record. Replay and service alike.
#[test]
fn publish_floods_never_drop_alarms() {
    let mut inputs = Vec::new();
    for i in 0..40usize {
        let door = if i % 2 == 0 { "north-gate" } else { "building-3" };
        inputs.push((1000 + i as u64 * 50, card(door, &extra_card(i))));
    }
    inputs.push((1510, fire(true)));
    inputs.push((2520, fire(false)));
    inputs.sort_by_key(|(at, _)| *at);
    for service in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site(dir.path(), "resident-policy", "", "publish_per_sec = 5", &bad_integration("flood"));
        let t = trace(dir.path(), "flood", &inputs);
        let recs: Vec<serde_json::Value> = if service {
            run(&cfg, &t);
            records(dir.path()).into_iter().map(|(_, r)| r).collect()
        } else {
            replay_jsonl(&cfg, &t, &[]).0
        };
        for p in ["platform-bridge", "bad-integration"] {
            assert!(alarm_published(&recs, p, true) && alarm_published(&recs, p, false), "service {service}: {p} lost a fire alarm: {recs:#?}");
            assert!(!recs.iter().any(|r| r["kind"] == "plugin" && r["plugin"] == p && (r["status"] == "failed" || r["status"] == "quarantined")), "service {service}: {p}: {recs:#?}");
            let dropped = recs.iter().find(|r| r["kind"] == "plugin" && r["plugin"] == p && r["status"] == "dropped");
            assert!(dropped.is_some_and(|r| r["reason"].as_str().unwrap().contains("publishes refused")), "service {service}: {p}: {recs:#?}");
        }
        let decisions = recs.iter().filter(|r| r["kind"] == "decision" && r["by"] == "plugin:resident-policy" && r["outcome"] == "grant").count();
        assert_eq!(decisions, 40, "service {service}");
    }
}

/// Policy attacks in replay: a giant need-factor list, 1,000 deletes of 1 MiB keys, a
/// trap whose text forges a host line, a flood of logs then a trap, memory exhaustion, a
/// sleep. North-gate's resident gets in by the fallback, building-3 is decided by its own
/// plugin, the stranger stays out, the plugin is quarantined, fire releases every door.
#[test]
fn policy_attacks_in_replay_are_contained() {
    for (bad, settings, reason) in [
        ("giant-need-factor", "", "need-factor lists 1000000 kinds"),
        ("kv-keyspace", "mode = \"delete-huge\"", "instruction budget exhausted"),
        ("forge-output", "via = \"trap\"", "trap"),
        ("log-flood", "then-trap = \"true\"", "trap"),
        // With the demo's fuel the hog's allocation loop may run out of fuel before memory.
        ("memory-hog", "", "memory cap reached|instruction budget exhausted"),
        ("block-on-host", "call = \"sleep\"", "deadline exceeded"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site(dir.path(), bad, settings, "", "");
        let (recs, out) = replay_jsonl(&cfg, &root().join("tests/traces/bad-plugin.jsonl"), &[]);
        let d: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "decision").collect();
        assert_eq!(d.len(), 6, "{bad}: {recs:#?}");
        assert_eq!((d[0]["outcome"].as_str(), d[0]["by"].as_str()), (Some("grant"), Some("fallback:plugin-failed")), "{bad}: {:?}", d[0]);
        assert_eq!(d[1]["outcome"], "deny", "{bad}");
        assert_eq!((d[2]["outcome"].as_str(), d[2]["by"].as_str()), (Some("grant"), Some("plugin:resident-policy")), "{bad}: {:?}", d[2]);
        assert_eq!((d[4]["outcome"].as_str(), d[4]["by"].as_str()), (Some("deny"), Some("fallback:quarantined")), "{bad}: {:?}", d[4]);
        let failures: Vec<_> = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "failed").collect();
        assert!(failures.iter().all(|f| f["plugin"] == bad && reason.split('|').any(|r| f["reason"].as_str().unwrap().contains(r))), "{bad}: {failures:#?}");
        assert!(recs.iter().any(|r| r["kind"] == "plugin" && r["status"] == "quarantined"), "{bad}");
        assert!(recs.iter().filter(|r| r["kind"] == "relay" && r["on"] == true).count() >= 3, "{bad}: fire release");
        assert!(alarm_published(&recs, "platform-bridge", true), "{bad}");
        // Nothing a plugin returns is printed or stored in bulk.
        assert!(out.stdout.len() < 64 * 1024, "{bad}: {} bytes of output", out.stdout.len());
    }
}

/// The log rate is the plugin's, not its instance's: a plugin that floods its log and
/// traps (so every call runs in a fresh instance) gets `limits.log_lines_per_sec` lines
/// for all its calls in a second together.
#[test]
fn the_log_rate_holds_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), "log-flood", "then-trap = \"true\"", "failures_before_quarantine = 100", "");
    let inputs: Vec<(u64, String)> = (0..10usize).map(|i| (1000 + i as u64 * 50, card("north-gate", &extra_card(i)))).collect();
    let t = trace(dir.path(), "logs", &inputs);
    let (recs, out) = replay_jsonl(&cfg, &t, &[("GATE_LOG", "info")]);
    let failed = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "failed").count();
    assert_eq!(failed, 10, "every call trapped: {recs:#?}");
    let lines = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("log-flood line")).count();
    assert!(lines > 0 && lines <= 20, "{lines} log lines from 10 instances within half a second (limit 20/s)");
}

/// Replay stays byte-identical under any load: a plugin that spends nearly all its time
/// in kv host calls is cut by fuel (host calls are charged to it), never by the wall
/// clock, even while other threads keep both cores busy.
#[test]
fn kv_heavy_replay_is_byte_identical_while_the_machine_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), "kv-keyspace", "mode = \"keyspace\"", "", "");
    let args = ["replay", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/bad-plugin.jsonl", "--format", "jsonl"];
    let quiet = gate(&args, &[], 300);
    assert!(quiet.status.success(), "{}", text(&quiet));
    let q = String::from_utf8_lossy(&quiet.stdout).to_string();
    assert!(q.contains("instruction budget exhausted") && !q.contains("deadline exceeded"), "{q}");
    // Load both cores (and more) for the length of two replays, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            })
        })
        .collect();
    let loaded: Vec<Output> = (0..2).map(|_| gate(&args, &[], 300)).collect();
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    for l in loaded {
        assert!(l.status.success(), "{}", text(&l));
        assert_eq!(String::from_utf8_lossy(&l.stdout), q, "replay differed under load");
    }
}

/// What `many-memories` is refused with: the cap, its key and its value (the demo's 32 MiB).
const MEMORY_CAP_REFUSAL: &str = "memory cap reached (`limits.memory_mb` = 32 MiB for all memories and tables of one instance)";

/// Resident memory the cap may add to a gateway's peak, in KiB: one instance's 32 MiB,
/// twice over for the instance a failed call leaves and the fresh one, and slack. The
/// attack without a per-instance cap adds 1.5 GiB.
const CAPPED_GROWTH_KIB: u64 = 96 * 1024;

/// The "48 memories" attack of issue 10 in replay: `many-memories` is a hand-made
/// component (`plugins/testing/many-memories/many-memories.wat`) whose core module has 48
/// extra linear memories of 32 MiB each, all written by its first call, granting everyone.
/// The memory cap holds for the instance across all its memories, so the instance is
/// refused and the failure names the cap: the resident gets in by the fallback, the
/// stranger stays out, building-3 is decided by its own plugin, the plugin is quarantined,
/// fire releases the doors and is published, and the process's peak memory stays within
/// [`CAPPED_GROWTH_KIB`] of the same replay without the attack. With the cap raised above what it asks
/// for, the same component runs and the process peaks more than 1 GiB higher (about
/// 1.5 GiB): the plugin is the attack, and the measurement sees it.
#[test]
fn many_memories_are_held_to_one_cap_in_replay() {
    let trace = root().join("tests/traces/bad-plugin.jsonl");
    let base_dir = tempfile::tempdir().unwrap();
    let (_, _, base_kib) = replay_jsonl_measured(&site(base_dir.path(), "resident-policy", "", "", ""), &trace, &[]);

    let dir = tempfile::tempdir().unwrap();
    let (recs, out, peak_kib) = replay_jsonl_measured(&site(dir.path(), "many-memories", "", "", ""), &trace, &[]);
    let d: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(d.len(), 6, "{recs:#?}");
    assert_eq!((d[0]["outcome"].as_str(), d[0]["by"].as_str()), (Some("grant"), Some("fallback:plugin-failed")), "{:?}", d[0]);
    assert_eq!(d[1]["outcome"], "deny", "the stranger: {:?}", d[1]);
    assert_eq!((d[2]["outcome"].as_str(), d[2]["by"].as_str()), (Some("grant"), Some("plugin:resident-policy")), "{:?}", d[2]);
    assert_eq!((d[4]["outcome"].as_str(), d[4]["by"].as_str()), (Some("deny"), Some("fallback:quarantined")), "{:?}", d[4]);
    let failures: Vec<_> = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "failed").collect();
    assert!(!failures.is_empty() && failures.iter().all(|f| f["plugin"] == "many-memories" && f["reason"].as_str().unwrap().contains(MEMORY_CAP_REFUSAL)), "{failures:#?}");
    assert!(recs.iter().any(|r| r["kind"] == "plugin" && r["plugin"] == "many-memories" && r["status"] == "quarantined"), "{recs:#?}");
    assert!(recs.iter().filter(|r| r["kind"] == "relay" && r["on"] == true).count() >= 3, "fire release: {recs:#?}");
    assert!(alarm_published(&recs, "platform-bridge", true) && alarm_published(&recs, "platform-bridge", false), "{recs:#?}");
    eprintln!("many-memories replay: peak RSS {} KiB, without the attack {} KiB", peak_kib, base_kib);
    assert!(peak_kib <= base_kib + CAPPED_GROWTH_KIB, "peak RSS {peak_kib} KiB against {base_kib} KiB without the attack:\n{}", text(&out));

    // Control: a cap above 49 x 32 MiB (and fuel for filling 1.5 GiB, which runs out of
    // the demo's 20 M and of 1 G) lets the same component run its attack.
    let open_dir = tempfile::tempdir().unwrap();
    let (recs, _, open_kib) = replay_jsonl_measured(&site(open_dir.path(), "many-memories", "", "memory_mb = 4096\nfuel = 10_000_000_000", ""), &trace, &[]);
    let d: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!((d[0]["outcome"].as_str(), d[0]["by"].as_str()), (Some("grant"), Some("plugin:many-memories")), "{recs:#?}");
    eprintln!("many-memories replay with memory_mb = 4096: peak RSS {open_kib} KiB");
    assert!(open_kib > base_kib + 1024 * 1024, "the attack did not show: peak RSS {open_kib} KiB against {base_kib} KiB");
}

/// The "48 memories" attack in service (`gate run`): the resident's card at its door is
/// decided by the fallback at once (within the deadline, with room for a loaded machine),
/// the failure names the memory cap, the other doors are decided by their own plugin,
/// fire release and the exit button act, the plugin is quarantined, the fire alarm is
/// published, and the gateway's peak memory stays within [`CAPPED_GROWTH_KIB`] of the
/// same run without the attack.
#[test]
fn many_memories_are_held_to_one_cap_in_service() {
    let inputs = [
        (0, card("north-gate", "10012345")),
        (5, pin("building-3", "246810")),
        (10, card("garage-vehicle", "10012346")),
        (15, fire(true)),
        (20, exit("building-3")),
        (500, card("north-gate", "10012346")),
        (1000, card("north-gate", "10012347")),
        (2100, card("north-gate", "10012345")),
        (2500, fire(false)),
    ];
    let base_dir = tempfile::tempdir().unwrap();
    let base_trace = trace(base_dir.path(), "base", &inputs);
    let (_, _, base_kib) = run_measured(&site(base_dir.path(), "resident-policy", "", "", ""), &base_trace);

    let dir = tempfile::tempdir().unwrap();
    let t = trace(dir.path(), "many-memories", &inputs);
    let (t, out, peak_kib) = run_measured(&site(dir.path(), "many-memories", "", "", ""), &t);
    let first = decision_line(&t, "north-gate", "r-0001", 0);
    assert!(first.contains("GRANT") && first.contains("[fallback:plugin-failed]"), "{first}\n{t}");
    assert!(t.contains(MEMORY_CAP_REFUSAL), "the failure does not name the cap:\n{t}");
    for other in [decision_line(&t, "building-3", "r-0001", 0), decision_line(&t, "garage-vehicle", "r-0002", 0)] {
        assert!(other.contains("GRANT") && other.contains("[plugin:resident-policy]"), "{other}\n{t}");
    }
    assert!(t.contains("ALARM fire RAISED") && t.contains("exit button"), "{t}");
    assert!(t.contains("plugin many-memories QUARANTINED"), "{t}");
    let later = decision_line(&t, "north-gate", "r-0001", 1);
    assert!(later.contains("GRANT") && later.contains("[fallback:quarantined]"), "{later}\n{t}");
    let recs = records(dir.path());
    let (at, _) = recs.iter().find(|(_, r)| r["kind"] == "decision" && r["door"] == "north-gate" && r["subject"] == "r-0001").expect("r-0001's decision");
    // The demo's deadline is 20 ms; a second of room for a loaded machine. A call that
    // had run the attack would take far longer.
    assert!(at - START_MS <= 20 + 1000, "r-0001 decided {} ms after the read", at - START_MS);
    let recs: Vec<serde_json::Value> = recs.into_iter().map(|(_, r)| r).collect();
    assert!(alarm_published(&recs, "platform-bridge", true) && alarm_published(&recs, "platform-bridge", false), "fire alarm not published:\n{t}");
    eprintln!("many-memories service: peak RSS {peak_kib} KiB, without the attack {base_kib} KiB");
    assert!(peak_kib <= base_kib + CAPPED_GROWTH_KIB, "peak RSS {peak_kib} KiB against {base_kib} KiB without the attack:\n{}", text(&out));
}

/// `gate plugin check` starts the component under the limits: `many-memories` is refused
/// (exit 2) naming the file, the memory cap and its key; with a site whose cap is above
/// what it asks for, it is a valid policy plugin.
#[test]
fn plugin_check_refuses_many_memories_naming_the_memory_cap() {
    let component = plugin("many-memories");
    let out = gate(&["plugin", "check", component.to_str().unwrap()], &[], 60);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("many-memories.wasm") && t.contains("does not start within the limits") && t.contains(MEMORY_CAP_REFUSAL), "{t}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = site(dir.path(), "resident-policy", "", "memory_mb = 4096", "");
    let out = gate(&["plugin", "check", component.to_str().unwrap(), "--config", cfg.to_str().unwrap()], &[], 60);
    assert!(out.status.success() && text(&out).contains("gate:plugin/policy-plugin@0.2.0"), "{}", text(&out));
}
