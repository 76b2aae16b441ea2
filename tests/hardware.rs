//! The hardware layer wired into the gateway, end to end with the real `gate` binary and the
//! real compiled plugins: a pin-level session decides like its event-level twin, `gate record`
//! on simulated pins replays to what it recorded, and without a GPIO chip it names the device.
//!
//! `tests/traces/hw-session-pins.jsonl` is generated from `hw-session.jsonl` by
//! `pin_level_twin` below; regenerate it with `GATE_BLESS=1 cargo test -p gate --test hardware`.
//! Their expected outputs are those of the demo site without its platform bridge (`doors_site`).

use gate::config::SiteConfig;
use gate::event::Input;
use gate::trace::{input_line, Trace};
use gate_hw::runtime::{HwRuntime, SimBackend};
use gate_hw::sim::PinPlayer;
use gate_hw::wiegand_gen::{card26, pulse_train, PulseTiming};
use gate_hw::PinEdge;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SESSION: &str = "tests/traces/hw-session.jsonl";
const PINS: &str = "tests/traces/hw-session-pins.jsonl";
const DEMO: &str = "configs/demo-site.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn gate(args: &[&str]) -> Output {
    let p = root().join("target/plugins/resident-policy.wasm");
    assert!(p.exists(), "{} is missing: run `cargo xtask plugins`", p.display());
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(root()).args(args).output().expect("run gate")
}

/// The demo site without its platform bridge, state in `dir`: the outputs are then the door's
/// own (decisions, relays, alarms), free of the event-log ids that published messages carry.
fn doors_site(dir: &Path) -> String {
    let demo = std::fs::read_to_string(root().join(DEMO)).expect("demo site");
    let start = demo.find("[plugins.platform-bridge]").expect("bridge section");
    let end = start + demo[start..].find("prefix = \"platform\"\n").expect("bridge prefix") + "prefix = \"platform\"\n".len();
    let cfg = format!("{}{}", &demo[..start], &demo[end..])
        .replace("\"../target/plugins/", &format!("\"{}/", root().join("target/plugins").display()))
        .replace("\"demo-subjects.toml\"", &format!("{:?}", root().join("configs/demo-subjects.toml")))
        .replace("\"demo-qr-code.key\"", &format!("{:?}", root().join("configs/demo-qr-code.key")))
        .replace("\"../target/demo-state\"", &format!("{:?}", dir.join("state")));
    let path = dir.join("site.toml");
    std::fs::write(&path, cfg).expect("write site");
    path.to_string_lossy().into_owned()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn replay(args: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let mut all = vec!["replay", "--format", "jsonl"];
    all.extend_from_slice(args);
    let out = gate(&all);
    let records = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("jsonl output")["expect"].clone()).collect();
    (out, records)
}

fn decisions(records: &[serde_json::Value]) -> Vec<serde_json::Value> {
    records.iter().filter(|r| r["kind"] == "decision").cloned().collect()
}

fn line(at_us: u64, name: &str, level: bool) -> (u64, Input) {
    (at_us / 1_000, Input::Line { line: name.into(), level, at_us })
}

/// The pin-level twin of the event-level session, with the noise of a real gate: contact
/// bounce before every contact change, a 3 µs glitch inside the first card frame, and a
/// card read with a flipped bit (bad parity) that must decide nothing.
fn pin_level_twin() -> String {
    let cfg = SiteConfig::load(&root().join(DEMO)).expect("demo site loads");
    let hw = cfg.hardware.expect("demo site is wired");
    let session = Trace::load(&root().join(SESSION)).expect("session trace loads");
    let twin = gate::hardware::twin(&hw, &session.inputs).expect("twin");

    let mut noisy: Vec<(u64, Input)> = Vec::new();
    let mut first_card_start = None;
    for (at, input) in twin {
        if let Input::Line { line: name, level, at_us } = &input {
            if name.ends_with("-contact") {
                for (before_ms, flip) in [(10, false), (7, true), (4, false), (2, true)] {
                    noisy.push(line(at_us - before_ms * 1_000, name, *level != flip));
                }
            }
            if name == "north-in.d0" || name == "north-in.d1" {
                first_card_start.get_or_insert(*at_us);
            }
        }
        noisy.push((at, input));
    }
    let glitch = first_card_start.expect("a card frame") + 5_000;
    noisy.push(line(glitch, "north-in.d0", false));
    noisy.push(line(glitch + 3, "north-in.d0", true));
    let mut bad = card26(100, 12345);
    bad[5] = !bad[5];
    for e in pulse_train(&bad, 130_000_000, PulseTiming::default(), "north-in.d0", "north-in.d1") {
        noisy.push(line(e.at_us, &e.line, e.level));
    }
    noisy.sort_by_key(|(at, i)| match i {
        Input::Line { at_us, .. } => *at_us,
        _ => at * 1_000,
    });

    let source = std::fs::read_to_string(root().join(SESSION)).expect("session text");
    let mut out = String::new();
    out.push_str(r#"{"gate_trace":1,"site":"maple-court","start":"2026-11-23T07:00:00+08:00","description":"Pin-level twin of hw-session.jsonl: Wiegand pulses, contact bounce, a glitch and a bad-parity read"}"#);
    out.push('\n');
    out.push_str("# Generated by tests/hardware.rs (pin_level_twin) from hw-session.jsonl; GATE_BLESS=1 regenerates it.\n");
    out.push_str("# Cards and PINs are Wiegand D0/D1 pulses of the readers north-in and b3-in; the face result stays event-level.\n");
    for (at, i) in &noisy {
        out.push_str(&input_line(*at, i));
        out.push('\n');
    }
    out.push_str("# Expected outputs: exactly those of the event-level session.\n");
    for l in source.lines().filter(|l| l.contains("\"expect\"")) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[test]
fn the_committed_pin_trace_is_the_twin_of_the_event_session() {
    let generated = pin_level_twin();
    let path = root().join(PINS);
    if std::env::var_os("GATE_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write pin trace");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "{} is not the twin of {SESSION}: regenerate it with GATE_BLESS=1", path.display());
}

#[test]
fn the_pin_trace_really_carries_a_glitch_and_a_bad_parity_read() {
    let cfg = SiteConfig::load(&root().join(DEMO)).expect("demo site loads");
    let hw = cfg.hardware.expect("wired");
    let trace = Trace::load(&root().join(PINS)).expect("pin trace loads");
    let edges: Vec<PinEdge> = trace
        .inputs
        .iter()
        .filter_map(|(_, i)| match i {
            Input::Line { line, level, at_us } => Some(PinEdge::new(*at_us, line.clone(), *level)),
            _ => None,
        })
        .collect();
    assert!(edges.len() > 400, "{} edges", edges.len());
    let mut backend = SimBackend::default();
    let mut rt = HwRuntime::open(&hw, &mut backend).expect("simulated pins open");
    PinPlayer::new(edges).run_to_end(&mut rt, &backend.lines).expect("plays");
    let north = rt.reader_stats("north-in").expect("reader");
    assert_eq!((north.cards, north.glitches, north.bad_parity), (5, 1, 1), "{north:?}");
}

/// Done-when of issue 4: the pin-level session through simulated pins, the real drivers and
/// the real plugins decides exactly as the same session at event level.
#[test]
fn a_pin_level_session_decides_like_its_event_level_twin() {
    let dir = tempfile::tempdir().expect("tmp");
    let site = doors_site(dir.path());
    let (ev_out, ev) = replay(&["--config", &site, "--trace", SESSION]);
    assert_eq!(ev_out.status.code(), Some(0), "{}", text(&ev_out));
    let (pin_out, pin) = replay(&["--config", &site, "--trace", PINS]);
    assert_eq!(pin_out.status.code(), Some(0), "{}", text(&pin_out));
    assert!(text(&pin_out).contains("replay matches the 29 expected outputs"), "{}", text(&pin_out));

    let d = decisions(&pin);
    assert_eq!(d, decisions(&ev));
    let outcomes: Vec<&str> = d.iter().map(|x| x["outcome"].as_str().unwrap_or("")).collect();
    assert_eq!(outcomes, ["grant", "need-factor", "grant", "deny", "grant", "deny", "deny", "grant"]);
    // Relays, alarms and published events too: the wires made no difference at all.
    assert_eq!(pin, ev);
}

#[test]
fn a_pin_trace_naming_an_unwired_line_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("stray.jsonl");
    std::fs::write(
        &path,
        "{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n\
         {\"at\":5,\"input\":{\"kind\":\"line\",\"line\":\"south-in.d0\",\"level\":false,\"at_us\":5000}}\n",
    )
    .expect("write");
    let out = gate(&["replay", "--config", DEMO, "--trace", path.to_str().unwrap_or_default()]);
    assert_ne!(out.status.code(), Some(0));
    let t = text(&out);
    assert!(t.contains("`south-in.d0`") && t.contains("not wired in [hardware]") && t.contains("north-in.d0"), "{t}");
}

fn record(dir: &Path, site: &str, extra: &[&str]) -> (Output, PathBuf, PathBuf, String) {
    let rec = dir.join("rec.jsonl");
    let mut args = vec!["record", "--config", site, "--out", rec.to_str().unwrap_or_default(), "--simulate", PINS];
    args.extend_from_slice(extra);
    let out = gate(&args);
    let subjects = dir.join("rec.subjects.toml");
    let body = std::fs::read_to_string(&rec).unwrap_or_default();
    (out, rec, subjects, body)
}

/// Done-when of issue 4: `gate record` (simulated pins standing in for the gate) writes a
/// trace that replays to the decisions it recorded, with no card number or PIN in it.
#[test]
fn a_recording_replays_to_the_decisions_it_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let site = doors_site(dir.path());
    let (out, rec, subjects, body) = record(dir.path(), &site, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("(8 decisions)"), "{}", text(&out));
    for secret in ["10012345", "10012347", "10065001", "30010001", "20010001", "246810", "111111"] {
        assert!(!body.contains(secret), "{secret} is in the recording");
    }
    assert!(body.contains("\"number\":\"card-") && body.contains("\"pin\":\"pin-"), "{body}");
    assert!(!body.contains("\"kind\":\"line\""), "a recording is event-level");

    let (rep, records) = replay(&["--config", &site, "--subjects", subjects.to_str().unwrap_or_default(), "--trace", rec.to_str().unwrap_or_default()]);
    assert_eq!(rep.status.code(), Some(0), "{}", text(&rep));
    assert!(text(&rep).contains("replay matches the 29 expected outputs"), "{}", text(&rep));
    // And those are the session's decisions, subject for subject.
    let (_, ev) = replay(&["--config", &site, "--trace", SESSION]);
    assert_eq!(decisions(&records), decisions(&ev));

    // The pseudonyms are what make it replay: against the raw directory every card is a stranger.
    let (raw, _) = replay(&["--config", &site, "--trace", rec.to_str().unwrap_or_default()]);
    assert_eq!(raw.status.code(), Some(1), "{}", text(&raw));

    // A second recording uses other pseudonyms: they cannot be linked across recordings.
    let dir2 = tempfile::tempdir().expect("tmp");
    let (_, _, _, body2) = record(dir2.path(), &site, &[]);
    let first_card = |b: &str| b.split("\"number\":\"").nth(1).map(|s| s[..17].to_string());
    assert_ne!(first_card(&body), first_card(&body2));
}

#[test]
fn raw_card_numbers_only_when_asked_and_pins_never() {
    let dir = tempfile::tempdir().expect("tmp");
    let site = doors_site(dir.path());
    let (out, rec, subjects, body) = record(dir.path(), &site, &["--keep-raw-cards"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(body.contains("\"number\":\"10012345\""), "{body}");
    assert!(!body.contains("246810") && !body.contains("111111"), "a PIN is in the recording");
    let (rep, _) = replay(&["--config", &site, "--subjects", subjects.to_str().unwrap_or_default(), "--trace", rec.to_str().unwrap_or_default()]);
    assert_eq!(rep.status.code(), Some(0), "{}", text(&rep));
}

/// Done-when of issue 4: the Linux backend without the device fails with a clear message.
#[test]
fn recording_without_the_gpio_chip_names_the_device() {
    if Path::new("/dev/gpiochip0").exists() {
        eprintln!("skipped: this machine has /dev/gpiochip0");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let rec = dir.path().join("live.jsonl");
    let out = gate(&["record", "--config", DEMO, "--out", rec.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("door north-gate relay: /dev/gpiochip0 line 17: No such file or directory"), "{t}");
    assert!(!rec.exists(), "no half-written recording");
}
