//! A real-looking gate session, replayed at pin level (pulse timings through simulated pins
//! and the real drivers) and at event level (decoded inputs), must lead to the same decisions;
//! and a recording of the pin-level run (pseudonymised) must replay to those decisions too.

use gate_hw::config::HardwareConfig;
use gate_hw::event::HwEvent;
use gate_hw::pseudonym::{Pseudonymiser, RecordedHwEvent};
use gate_hw::runtime::{HwRuntime, SimBackend};
use gate_hw::sim::{KeyFormat, PinPlayer, TwinBuilder};
use gate_hw::wiegand::RejectReason;
use gate_hw::wiegand_gen::{card26, pulse_train, PulseTiming};
use gate_hw::PinEdge;

const SITE: &str = r#"
backend = "simulated"
[[relays]]
door = "north"
line = 17
[[inputs]]
name = "north-contact"
kind = "door-contact"
door = "north"
line = 5
active_high = false
debounce_ms = 30
[[inputs]]
name = "north-exit"
kind = "exit-button"
door = "north"
line = 6
active_high = false
[[inputs]]
name = "fire"
kind = "fire-alarm"
line = 7
[[readers]]
name = "north-in"
door = "north"
d0 = 22
d1 = 23
pin = { timeout_ms = 5000, min_len = 6, max_len = 6 }
"#;

const S: u64 = 1_000_000;
const MS: u64 = 1_000;
const OPEN_US: u64 = 5 * S;

/// What the event-level trace of the session holds: decoded inputs with their times.
#[derive(Debug, Clone)]
enum Input {
    Card { at_us: u64, facility: u32, number: u64 },
    Pin { at_us: u64, digits: &'static str },
    Line { at_us: u64, name: &'static str, active: bool },
}

fn session() -> Vec<Input> {
    use Input::*;
    vec![
        Card { at_us: 2 * S, facility: 12, number: 3456 },          // resident card: granted
        Line { at_us: 3 * S, name: "north-contact", active: true }, // walks through
        Line { at_us: 6 * S, name: "north-contact", active: false },
        Pin { at_us: 20 * S, digits: "482913" }, // resident PIN: granted
        Line { at_us: 21 * S, name: "north-contact", active: true },
        Line { at_us: 23 * S, name: "north-contact", active: false },
        Card { at_us: 40 * S, facility: 12, number: 9999 },          // unknown card: denied
        Line { at_us: 60 * S, name: "north-contact", active: true }, // forced open
        Line { at_us: 62 * S, name: "north-contact", active: false },
        Line { at_us: 80 * S, name: "north-exit", active: true }, // exit button
        Line { at_us: 80 * S + 200 * MS, name: "north-exit", active: false },
        Line { at_us: 81 * S, name: "north-contact", active: true },
        Line { at_us: 83 * S, name: "north-contact", active: false },
        Pin { at_us: 100 * S, digits: "000000" },            // wrong PIN: denied
        Card { at_us: 120 * S, facility: 12, number: 3456 }, // granted, door left open
        Line { at_us: 121 * S, name: "north-contact", active: true },
        Line { at_us: 160 * S, name: "north-contact", active: false },
        Line { at_us: 300 * S, name: "fire", active: true }, // fire release
        Line { at_us: 400 * S, name: "fire", active: false },
    ]
}

/// A minimal stand-in for the host's policy, acting on hardware events like the real one will.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Grant { at_us: u64 },
    Deny { at_us: u64 },
    Hold { at_us: u64 },
    Release { at_us: u64 },
}

/// Credentials the policy knows, as labels: raw live, pseudonyms for a recorded trace.
struct Policy {
    cards: Vec<String>,
    pins: Vec<String>,
}

impl Policy {
    fn decide_card(&self, label: &str, at_us: u64) -> Decision {
        if self.cards.iter().any(|c| c == label) {
            Decision::Grant { at_us }
        } else {
            Decision::Deny { at_us }
        }
    }
    fn decide_pin(&self, label: &str, at_us: u64) -> Decision {
        if self.pins.iter().any(|p| p == label) {
            Decision::Grant { at_us }
        } else {
            Decision::Deny { at_us }
        }
    }
    fn decide_line(&self, name: &str, active: bool, at_us: u64) -> Option<Decision> {
        match (name, active) {
            ("north-exit", true) => Some(Decision::Grant { at_us }),
            ("fire", true) => Some(Decision::Hold { at_us }),
            ("fire", false) => Some(Decision::Release { at_us }),
            _ => None,
        }
    }
}

fn raw_label(facility: Option<u32>, number: u64) -> String {
    format!("26:{}:{number}", facility.unwrap_or(0))
}

fn live_policy() -> Policy {
    Policy { cards: vec![raw_label(Some(12), 3456)], pins: vec!["482913".into()] }
}

fn decide_live(policy: &Policy, ev: &HwEvent) -> Option<Decision> {
    match ev {
        HwEvent::Card { facility, number, at_us, .. } => Some(policy.decide_card(&raw_label(*facility, number.0), *at_us)),
        HwEvent::Pin { digits, at_us, .. } => Some(policy.decide_pin(digits.expose(), *at_us)),
        HwEvent::Input { input, active, at_us, .. } => policy.decide_line(input, *active, *at_us),
        _ => None,
    }
}

fn apply(rt: &mut HwRuntime<SimBackend>, d: &Decision) -> Vec<HwEvent> {
    let r = match d {
        Decision::Grant { at_us } => rt.pulse("north", *at_us, OPEN_US),
        Decision::Hold { at_us } => rt.energise("north", *at_us),
        Decision::Release { at_us } => rt.release("north", *at_us),
        Decision::Deny { .. } => Ok(Vec::new()),
    };
    r.expect("relay of a configured door")
}

/// Pin-level twin of the session, with the noise a real gate has: contact bounce, a glitch
/// spike inside a card frame, 8-bit keypad bursts, and one corrupt (bad parity) card read.
fn pin_trace(cfg: &HardwareConfig) -> Vec<PinEdge> {
    let mut twin = TwinBuilder::new(cfg);
    twin.keys = KeyFormat::Bits8;
    let mut edges = Vec::new();
    for i in session() {
        match i {
            Input::Card { at_us, facility, number } => edges.extend(twin.card("north-in", at_us, 26, facility, number).expect("card twin")),
            Input::Pin { at_us, digits } => edges.extend(twin.pin("north-in", at_us, digits).expect("pin twin")),
            Input::Line { at_us, name, active } => {
                let e = twin.input(name, at_us, active).expect("input twin");
                if name == "north-contact" {
                    // Contact bounce before the final level: 3 flips within 10 ms.
                    let t = e[0].at_us;
                    edges.push(PinEdge::new(t - 10 * MS, name, e[0].level));
                    edges.push(PinEdge::new(t - 7 * MS, name, !e[0].level));
                    edges.push(PinEdge::new(t - 4 * MS, name, e[0].level));
                    edges.push(PinEdge::new(t - 2 * MS, name, !e[0].level));
                }
                edges.extend(e);
            }
        }
    }
    // A 3 µs spike on D0 in the middle of the first card frame.
    let first_card_start = edges.iter().find(|e| e.line == "north-in.d1" || e.line == "north-in.d0").map(|e| e.at_us).unwrap_or(0);
    edges.push(PinEdge::new(first_card_start + 5_000, "north-in.d0", false));
    edges.push(PinEdge::new(first_card_start + 5_003, "north-in.d0", true));
    // A corrupt read at 200 s: a card frame with one bit flipped.
    let mut bad = card26(12, 3456);
    bad[5] = !bad[5];
    edges.extend(pulse_train(&bad, 200 * S, PulseTiming::default(), "north-in.d0", "north-in.d1"));
    edges
}

fn config() -> HardwareConfig {
    toml::from_str(SITE).expect("site config parses")
}

/// Runs the pin-level trace with the policy in the loop; returns all events and decisions.
fn run_pin_level(edges: Vec<PinEdge>) -> (Vec<HwEvent>, Vec<Decision>, gate_hw::wiegand::WiegandStats) {
    let cfg = config();
    let mut backend = SimBackend::default();
    let mut rt = HwRuntime::open(&cfg, &mut backend).expect("simulated hardware opens");
    let policy = live_policy();
    let mut player = PinPlayer::new(edges);
    let (mut events, mut decisions) = (Vec::new(), Vec::new());
    while let Some(batch) = player.step(&mut rt, &backend.lines).expect("step") {
        for ev in batch {
            if let Some(d) = decide_live(&policy, &ev) {
                events.extend(apply(&mut rt, &d));
                decisions.push(d);
            }
            events.push(ev);
        }
    }
    let stats = rt.reader_stats("north-in").expect("reader exists");
    (events, decisions, stats)
}

fn run_event_level() -> Vec<Decision> {
    let policy = live_policy();
    session()
        .into_iter()
        .filter_map(|i| match i {
            Input::Card { at_us, facility, number } => Some(policy.decide_card(&raw_label(Some(facility), number), at_us)),
            Input::Pin { at_us, digits } => Some(policy.decide_pin(digits, at_us)),
            Input::Line { at_us, name, active } => policy.decide_line(name, active, at_us),
        })
        .collect()
}

#[test]
fn pin_level_and_event_level_replays_decide_the_same() {
    let cfg = config();
    let (events, pin_decisions, stats) = run_pin_level(pin_trace(&cfg));
    let event_decisions = run_event_level();
    assert_eq!(pin_decisions, event_decisions);
    assert_eq!(pin_decisions.len(), 8, "{pin_decisions:?}");

    // The drivers decoded exactly the session's inputs, at exactly its times.
    let decoded: Vec<(u64, String)> = events
        .iter()
        .filter_map(|e| match e {
            HwEvent::Card { at_us, facility, number, .. } => Some((*at_us, format!("card {}", raw_label(*facility, number.0)))),
            HwEvent::Pin { at_us, digits, .. } => Some((*at_us, format!("pin {}", digits.expose()))),
            HwEvent::Input { at_us, input, active, .. } => Some((*at_us, format!("{input} {active}"))),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, String)> = session()
        .into_iter()
        .map(|i| match i {
            Input::Card { at_us, facility, number } => (at_us, format!("card {}", raw_label(Some(facility), number))),
            Input::Pin { at_us, digits } => (at_us, format!("pin {digits}")),
            Input::Line { at_us, name, active } => (at_us, format!("{name} {active}")),
        })
        .collect();
    assert_eq!(decoded, expected);

    // The corrupt read was rejected and counted; the glitch was dropped without spoiling the card.
    let rejected: Vec<&RejectReason> = events.iter().filter_map(|e| if let HwEvent::Rejected { reason, .. } = e { Some(reason) } else { None }).collect();
    assert_eq!(rejected.len(), 1);
    assert!(matches!(rejected[0], RejectReason::BadParity { bits: 26, .. }));
    assert_eq!((stats.cards, stats.glitches, stats.bad_parity), (3, 1, 1));

    // Relay: pulses end on time, fire release holds until the alarm clears.
    let relay: Vec<(bool, u64)> = events.iter().filter_map(|e| if let HwEvent::Relay { energised, at_us, .. } = e { Some((*energised, *at_us)) } else { None }).collect();
    assert_eq!(relay[0], (true, 2 * S));
    assert_eq!(relay[1], (false, 2 * S + OPEN_US));
    assert_eq!(relay[relay.len() - 2..], [(true, 300 * S), (false, 400 * S)]);
}

#[test]
fn a_pseudonymised_recording_replays_to_the_recorded_decisions() {
    let cfg = config();
    // "Live" run: the simulated backend stands in for the hardware; record every event.
    let (events, live_decisions, _) = run_pin_level(pin_trace(&cfg));
    let pseudo = Pseudonymiser::with_key(b"north-gate-recording-key").expect("key");
    let trace: Vec<String> = events.iter().map(|e| serde_json::to_string(&pseudo.record(e)).expect("serialises")).collect();
    let text = trace.join("\n");
    assert!(!text.contains("3456") && !text.contains("482913"), "raw credentials leaked into the recording");

    // Replay at event level from the recording, with the credential list pseudonymised alike.
    let policy = Policy { cards: vec![pseudo.card(26, Some(12), 3456)], pins: vec![pseudo.pin("482913")] };
    let recorded: Vec<RecordedHwEvent> = text.lines().map(|l| serde_json::from_str(l).expect("parses")).collect();
    let replayed: Vec<Decision> = recorded
        .iter()
        .filter_map(|r| match r {
            RecordedHwEvent::Card { card, at_us, .. } => Some(policy.decide_card(card, *at_us)),
            RecordedHwEvent::Pin { pin, at_us, .. } => Some(policy.decide_pin(pin, *at_us)),
            RecordedHwEvent::Input { input, active, at_us, .. } => policy.decide_line(input, *active, *at_us),
            _ => None,
        })
        .collect();
    assert_eq!(replayed, live_decisions);
}

#[test]
fn a_pin_is_never_submitted_twice_and_an_abandoned_entry_times_out() {
    let cfg = config();
    let twin = TwinBuilder::new(&cfg);
    let mut edges = twin.pin("north-in", 10 * S, "482913").expect("pin");
    // A second ENT a second later (the "republished last code" failure) and a half-typed PIN.
    edges.extend(twin.key_presses("north-in", 11 * S, &[gate_hw::Key::Enter]).expect("enter"));
    edges.extend(twin.key_presses("north-in", 30 * S, &[gate_hw::Key::Digit(4), gate_hw::Key::Digit(8)]).expect("keys"));
    let (events, decisions, _) = run_pin_level(edges);
    assert_eq!(decisions, vec![Decision::Grant { at_us: 10 * S }]);
    let aborted: Vec<u64> = events.iter().filter_map(|e| if let HwEvent::PinAborted { at_us, .. } = e { Some(*at_us) } else { None }).collect();
    assert_eq!(aborted, vec![30 * S + 5 * S + 1]);
}
