//! End-to-end tests: the real `gate` binary, the real compiled plugins
//! (built by `cargo xtask plugins`), real SQLite, over recorded traces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn plugin(name: &str) -> PathBuf {
    let p = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` (or `cargo xtask test`) to build the plugins", p.display());
    p
}

fn gate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The demo site with the resident policy swapped for `policy_plugin`, its
/// state in a temp dir. Returns the config path (the temp dir must outlive it).
fn site_with(policy_plugin: &str, dir: &Path) -> PathBuf {
    let demo = std::fs::read_to_string(root().join("configs/demo-site.toml")).unwrap();
    let cfg = demo
        .replace("../target/plugins/resident-policy.wasm", plugin(policy_plugin).to_str().unwrap())
        .replace("../target/plugins/platform-bridge.wasm", plugin("platform-bridge").to_str().unwrap())
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")))
        // A small memory cap so the memory hog reaches it before its fuel runs out.
        .replace("memory_mb = 32 ", "memory_mb = 4  ");
    let path = dir.join("site.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

fn replay_jsonl(config: &Path, trace: &str) -> Vec<serde_json::Value> {
    let out = gate(&["replay", "--config", config.to_str().unwrap(), "--trace", trace, "--format", "jsonl"]);
    assert!(out.status.success(), "replay failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect()
}

fn decisions(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    records.iter().filter(|r| r["kind"] == "decision").collect()
}

#[test]
fn recorded_traces_replay_to_their_expected_outputs() {
    plugin("resident-policy");
    for trace in ["morning", "held-open", "fire", "stranger"] {
        let path = format!("tests/traces/{trace}.jsonl");
        let out = gate(&["replay", "--config", "configs/demo-site.toml", "--trace", &path]);
        assert_eq!(out.status.code(), Some(0), "{trace}: {}", text(&out));
        assert!(text(&out).contains("replay matches"), "{trace} has no expected outputs: {}", text(&out));
    }
}

#[test]
fn replay_is_byte_identical_across_runs() {
    plugin("resident-policy");
    let run = || gate(&["replay", "--config", "configs/demo-site.toml", "--trace", "tests/traces/morning.jsonl", "--format", "jsonl"]).stdout;
    let first = run();
    assert!(first.len() > 1000, "suspiciously little output");
    assert_eq!(first, run());
}

#[test]
fn a_changed_expectation_fails_with_a_readable_diff() {
    plugin("resident-policy");
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(root().join("tests/traces/stranger.jsonl")).unwrap();
    assert!(original.contains("\"reason\":\"unknown credential\""));
    let tampered = original.replacen("\"reason\":\"unknown credential\"", "\"reason\":\"welcome home\"", 1);
    let path = dir.path().join("tampered.jsonl");
    std::fs::write(&path, tampered).unwrap();
    let out = gate(&["replay", "--config", "configs/demo-site.toml", "--trace", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("-{\"at\":0,\"expect\":{\"kind\":\"decision\"") && t.contains("welcome home"), "{t}");
    assert!(t.contains("+{\"at\":0,\"expect\":{\"kind\":\"decision\"") && t.contains("unknown credential"), "{t}");
}

/// Every misbehaving plugin: the host survives, residents' cards and PINs
/// still open the door, strangers are still refused, fire still releases.
#[test]
fn misbehaving_plugins_never_lock_residents_out() {
    for bad in ["spin-forever", "memory-hog", "deep-recursion", "always-trap", "garbage-decision", "log-flood"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site_with(bad, dir.path());
        let recs = replay_jsonl(&cfg, "tests/traces/bad-plugin.jsonl");
        let d = decisions(&recs);
        assert_eq!(d.len(), 6, "{bad}: {recs:#?}");
        let by = |i: usize| d[i]["by"].as_str().unwrap().to_string();
        // r-0001's card, r-0001's PIN, r-0002's card, r-0003's card: all open.
        for i in [0, 2, 3, 5] {
            assert_eq!(d[i]["outcome"], "grant", "{bad}: decision {i} {:?}", d[i]);
        }
        // The stranger stays out.
        assert_eq!(d[1]["outcome"], "deny", "{bad}");
        if bad == "log-flood" {
            // Flooding the log is not a failure: it is rate-limited and the plugin still decides.
            assert!(d.iter().all(|x| x["by"] == "plugin:resident-policy"), "{bad}: {d:?}");
            assert!(!recs.iter().any(|r| r["kind"] == "plugin"), "{bad}");
            continue;
        }
        assert!(by(0).starts_with("fallback:"), "{bad}: {}", by(0));
        // Face alone is not honoured by the fallback.
        assert_eq!(d[4]["outcome"], "deny", "{bad}");
        let failures: Vec<_> = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "failed").collect();
        let quarantined = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "quarantined").count();
        assert_eq!(failures.len(), 4, "{bad}: 3 failures, quarantine, then one retry after it expires: {recs:#?}");
        assert_eq!(quarantined, 2, "{bad}");
        assert_eq!(by(3), "fallback:quarantined", "{bad}");
        let expected_reason = match bad {
            "spin-forever" => "instruction budget exhausted",
            "memory-hog" => "memory cap reached",
            "garbage-decision" => "invalid decision",
            _ => "trap",
        };
        assert!(failures[0]["reason"].as_str().unwrap().contains(expected_reason), "{bad}: {:?}", failures[0]);
        // Fire release is the host's: every fire-release door unlocks.
        let fire_relays = recs.iter().filter(|r| r["kind"] == "relay" && r["on"] == true).count();
        assert!(fire_relays >= 3, "{bad}");
    }
}

/// In service (epoch deadline, no fuel) a hanging plugin's call ends at its
/// wall-clock deadline and the resident still gets in.
#[test]
fn hanging_plugin_in_service_ends_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("spin-forever", dir.path());
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/bad-plugin.jsonl", "--speed", "2000"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("deadline exceeded"), "the live engine should stop the call by its wall-clock deadline: {t}");
    let first = t.lines().find(|l| l.contains("north-gate") && l.contains("card")).unwrap_or_default();
    assert!(first.contains("GRANT") && first.contains("fallback"), "{t}");
}

#[test]
fn the_demo_gateway_logs_every_decision_without_raw_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("resident-policy", dir.path());
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/morning.jsonl", "--speed", "5000"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("GRANT") && t.contains("DENY  unknown credential"), "{t}");
    let db = dir.path().join("state/events.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE kind = 'decision'", [], |r| r.get(0)).unwrap();
    let distinct: i64 = conn.query_row("SELECT COUNT(DISTINCT id) FROM events", [], |r| r.get(0)).unwrap();
    let all: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 12, "{t}");
    assert_eq!(distinct, all);
    drop(conn);
    // No card number, PIN or NFC token from the trace is anywhere in the database files.
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(dir.path().join("state/events.sqlite-wal")).unwrap_or_default());
    for secret in ["10012345", "10012347", "99999999", "246810", "nfc-7f3a91", "20010001"] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked into the event log");
    }
}

#[test]
fn plugin_check_reports_world_and_rejects_non_components() {
    let out = gate(&["plugin", "check", plugin("resident-policy").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("gate:plugin/policy-plugin@0.2.0") && t.contains("gate:plugin/policy@0.2.0"), "{t}");
    let out = gate(&["plugin", "check", plugin("platform-bridge").to_str().unwrap()]);
    assert!(text(&out).contains("integration-plugin"), "{}", text(&out));

    let out = gate(&["plugin", "check", "configs/demo-site.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("configs/demo-site.toml is not a valid component"), "{}", text(&out));
}

#[test]
fn face_only_site_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("resident-policy", dir.path());
    let body = std::fs::read_to_string(&cfg).unwrap();
    let face_only = body.replace("credentials = [\"face\", \"card\", \"pin\", \"nfc\"]", "credentials = [\"face\"]");
    assert_ne!(body, face_only);
    std::fs::write(&cfg, face_only).unwrap();
    let out = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/morning.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(t.contains("site.toml:") && t.contains("door `building-3`") && t.contains("only way in"), "{t}");
}

#[test]
fn malformed_trace_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jsonl");
    std::fs::write(&path, "{\"gate_trace\":1,\"site\":\"s\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n{\"at\":1,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\"}}\n").unwrap();
    let out = gate(&["replay", "--config", "configs/demo-site.toml", "--trace", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("broken.jsonl:2:") && text(&out).contains("number"), "{}", text(&out));
}

/// In service, a plugin that hangs does not hold up fire release, the exit
/// button or the door contact: they are handled while the call is still running.
#[test]
fn fire_release_is_not_held_up_by_a_hanging_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("spin-forever", dir.path());
    // A long deadline makes the hang obvious: 400 ms of wall time per call.
    let body = std::fs::read_to_string(&cfg).unwrap().replace("deadline_ms = 20 ", "deadline_ms = 400");
    std::fs::write(&cfg, body).unwrap();
    let trace = dir.path().join("fire-during-hang.jsonl");
    std::fs::write(
        &trace,
        concat!(
            "{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n",
            "{\"at\":0,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\",\"number\":\"10012345\"}}\n",
            "{\"at\":5,\"input\":{\"kind\":\"fire-alarm\",\"active\":true}}\n",
            "{\"at\":10,\"input\":{\"kind\":\"exit-button\",\"door\":\"building-3\"}}\n",
        ),
    )
    .unwrap();
    let out = gate(&["run", "--config", cfg.to_str().unwrap(), "--trace", trace.to_str().unwrap(), "--speed", "1"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let pos = |needle: &str| t.find(needle).unwrap_or_else(|| panic!("`{needle}` missing from:\n{t}"));
    let fire = pos("ALARM fire RAISED");
    let exit = pos("exit button");
    let hung = pos("deadline exceeded");
    let decision = pos("card r-0001");
    assert!(fire < hung && exit < hung, "fire release and exit waited for the plugin:\n{t}");
    assert!(hung < decision && t[decision..].lines().next().unwrap().contains("GRANT"), "{t}");
}

/// Runs `gate` and kills it if it has not exited after `secs`: a host that hangs
/// fails the test instead of hanging the suite.
fn gate_or_hang(args: &[&str], secs: u64) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run gate");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait for gate").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect gate's output");
            panic!("gate {args:?} hung; its output so far:\n{}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("collect gate's output")
}

/// The demo site with `block-on-host` (calling `call` without end) serving only
/// north-gate; building-3 and the garage keep the resident policy.
fn site_with_blocking_north_gate(call: &str, dir: &Path) -> PathBuf {
    let cfg = site_with("resident-policy", dir);
    let body = std::fs::read_to_string(&cfg).unwrap();
    let section = format!("[plugins.block-on-host]\npath = {:?}\nworld = \"policy\"\nconfig = {{ call = \"{call}\" }}\n\n[[door]]", plugin("block-on-host"));
    let body = body.replacen("[[door]]", &section, 1).replacen("policy = \"resident-policy\"", "policy = \"block-on-host\"", 1);
    std::fs::write(&cfg, body).unwrap();
    cfg
}

/// No host import can hold a plugin call past its deadline: for every import that
/// could block inside the host (sleep, poll and block on clock subscriptions, stdin
/// read, stdout write-and-flush) the replay ends, north-gate's resident gets in by the
/// fallback, building-3 is still decided by its own plugin, and the blocking plugin is
/// quarantined.
#[test]
fn blocking_host_calls_are_cut_at_the_deadline_in_replay() {
    for (call, reason) in [
        ("sleep", "deadline exceeded"),
        ("short-sleeps", "deadline exceeded"),
        ("poll-instant", "deadline exceeded"),
        ("block-duration", "deadline exceeded"),
        ("stdin-read", "instruction budget exhausted"),
        ("stdout-flush", "instruction budget exhausted"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site_with_blocking_north_gate(call, dir.path());
        let args = ["replay", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/bad-plugin.jsonl", "--format", "jsonl"];
        let out = gate_or_hang(&args, 120);
        assert!(out.status.success(), "{call}: {}", text(&out));
        let recs: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["expect"].clone()).collect();
        let d = decisions(&recs);
        assert_eq!(d.len(), 6, "{call}: {recs:#?}");
        // r-0001's card at north-gate: the fallback opens.
        assert_eq!((d[0]["outcome"].as_str(), d[0]["door"].as_str()), (Some("grant"), Some("north-gate")), "{call}: {:?}", d[0]);
        assert!(d[0]["by"].as_str().unwrap().starts_with("fallback:"), "{call}: {:?}", d[0]);
        // The stranger stays out.
        assert_eq!(d[1]["outcome"], "deny", "{call}");
        // r-0001's PIN at building-3 is decided by building-3's own plugin.
        assert_eq!((d[2]["outcome"].as_str(), d[2]["by"].as_str()), (Some("grant"), Some("plugin:resident-policy")), "{call}: {:?}", d[2]);
        // The third failure quarantines the plugin; face alone is not honoured by the fallback.
        assert_eq!(d[3]["outcome"], "grant", "{call}: {:?}", d[3]);
        assert_eq!((d[4]["outcome"].as_str(), d[4]["by"].as_str()), (Some("deny"), Some("fallback:quarantined")), "{call}: {:?}", d[4]);
        assert_eq!(d[5]["outcome"], "grant", "{call}: {:?}", d[5]);
        let failures: Vec<_> = recs.iter().filter(|r| r["kind"] == "plugin" && r["status"] == "failed").collect();
        assert!(!failures.is_empty(), "{call}: {recs:#?}");
        for f in &failures {
            assert_eq!(f["plugin"], "block-on-host", "{call}: {f:?}");
            assert!(f["reason"].as_str().unwrap().contains(reason), "{call}: {f:?}");
        }
        assert!(recs.iter().any(|r| r["kind"] == "plugin" && r["status"] == "quarantined"), "{call}: {recs:#?}");
    }
}

/// In service (epoch deadline, no fuel) a plugin sleeping an hour inside a host
/// call does not stall the policy thread: its call ends at the deadline, the other
/// door is decided by its own plugin and the run ends.
#[test]
fn a_sleeping_plugin_in_service_is_cut_at_the_deadline() {
    for call in ["sleep", "block-duration", "stdin-read"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site_with_blocking_north_gate(call, dir.path());
        let args = ["run", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/bad-plugin.jsonl", "--speed", "2000"];
        let out = gate_or_hang(&args, 120);
        let t = text(&out);
        assert!(out.status.success(), "{call}: {t}");
        assert!(t.contains("deadline exceeded"), "{call}: {t}");
        let first = t.lines().find(|l| l.contains("north-gate") && l.contains("card")).unwrap_or_default();
        assert!(first.contains("GRANT") && first.contains("fallback"), "{call}: {t}");
        let pin = t.lines().find(|l| l.contains("building-3") && l.contains("pin")).unwrap_or_default();
        assert!(pin.contains("GRANT") && pin.contains("resident-policy"), "{call}: {t}");
        assert!(t.contains("quarantined"), "{call}: {t}");
    }
}

/// Nothing a plugin writes can forge output: its deny reasons, log lines and trap
/// messages carry a newline followed by a copy of a host decision line, CR, U+2028/2029,
/// bidi controls, ESC and NUL. On screen and in the event log all of it stays escaped
/// on the line the host wrote.
#[test]
fn plugin_text_cannot_forge_host_lines() {
    for via in ["deny", "log", "escalate", "trap"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = site_with("forge-output", dir.path());
        let body = std::fs::read_to_string(&cfg).unwrap();
        let body = body.replace("config = { default-open-ms = 5000,", &format!("config = {{ via = \"{via}\", default-open-ms = 5000,"));
        std::fs::write(&cfg, body).unwrap();
        let out = gate_or_hang(&["run", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/bad-plugin.jsonl", "--speed", "2000"], 120);
        let t = text(&out);
        assert!(out.status.success(), "{via}: {t}");
        // The plugin was really heard: its text is there, escaped, on a host line.
        if via != "escalate" && via != "trap" {
            assert!(t.contains("x\\nnorth-gate     in  card          r-0009"), "{via}: {t}");
        }
        assert!(!t.lines().any(|l| l.trim_start().starts_with("north-gate     in  card          r-0009")), "{via}: forged line:\n{t}");
        for c in ['\r', '\u{2028}', '\u{2029}', '\u{202E}', '\u{2066}', '\u{1b}', '\0'] {
            assert!(!t.contains(c), "{via}: {c:?} reached the output:\n{t}");
        }
        let conn = rusqlite::Connection::open(dir.path().join("state/events.sqlite")).unwrap();
        let mut stmt = conn.prepare("SELECT CAST(body AS TEXT) FROM events").unwrap();
        let rows: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap().map(|r| r.unwrap()).collect();
        assert!(!rows.is_empty(), "{via}");
        for row in &rows {
            assert!(!row.contains("\\nnorth-gate") || row.contains("\\\\nnorth-gate"), "{via}: stored unescaped: {row}");
            for c in ['\u{2028}', '\u{2029}', '\u{202E}', '\u{2066}'] {
                assert!(!row.contains(c), "{via}: {c:?} stored: {row}");
            }
        }
    }
}

/// A component with the contract's names but not its types (`decide(u32) -> u32`) is
/// refused by `gate plugin check`, naming the file and the export, and never called
/// in service: its doors are decided by the fallback.
#[test]
fn plugin_check_refuses_the_right_names_with_the_wrong_types() {
    let wrong = plugin("wrong-types");
    let out = gate(&["plugin", "check", wrong.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("wrong-types.wasm") && t.contains("gate:plugin/policy@0.2.0#decide") && t.contains("contract's type"), "{t}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("wrong-types", dir.path());
    let recs = replay_jsonl(&cfg, "tests/traces/bad-plugin.jsonl");
    let d = decisions(&recs);
    assert_eq!(d.len(), 6, "{recs:#?}");
    assert!(d.iter().all(|x| x["by"] == "fallback:plugin-unavailable"), "{d:#?}");
    assert_eq!(d[0]["outcome"], "grant");
    assert_eq!(d[1]["outcome"], "deny");
}

/// A component larger than `limits.max_component_bytes` is refused with exit code 2
/// naming the file and the key, by `gate plugin check --config` and at start; a
/// limit outside its range is a configuration error naming the key.
#[test]
fn oversized_components_and_out_of_range_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_with("resident-policy", dir.path());
    let body = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, body.replace("[limits]\n", "[limits]\nmax_component_bytes = 1024\n")).unwrap();
    let component = plugin("resident-policy");

    let out = gate(&["plugin", "check", component.to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("resident-policy.wasm") && t.contains("limits.max_component_bytes") && t.contains("1024"), "{t}");

    let out = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/morning.jsonl"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("site.toml") && t.contains(".wasm is ") && t.contains("limits.max_component_bytes"), "{t}");

    // Without the site's limits the same component is fine.
    let out = gate(&["plugin", "check", component.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    for (key, bad) in [("max_component_bytes", "1023"), ("compile_ms", "5")] {
        std::fs::write(&cfg, body.replace("[limits]\n", &format!("[limits]\n{key} = {bad}\n"))).unwrap();
        let out = gate(&["replay", "--config", cfg.to_str().unwrap(), "--trace", "tests/traces/morning.jsonl"]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{key}: {t}");
        assert!(t.contains("site.toml") && t.contains(&format!("limits.{key}")) && t.contains("outside"), "{key}: {t}");
    }
}
