//! Measures pin-level replay speed: a long synthetic session (cards, PINs, door contact)
//! generated as Wiegand pulse trains and decoded by the real drivers on simulated pins.
//!
//! `cargo run --release -p gate-hw --example replay_bench`

use std::time::Instant;

use gate_hw::config::HardwareConfig;
use gate_hw::runtime::{HwRuntime, SimBackend};
use gate_hw::sim::{PinPlayer, TwinBuilder};
use gate_hw::HwEvent;

const SITE: &str = r#"
[[relays]]
door = "north"
line = 17
[[inputs]]
name = "north-contact"
kind = "door-contact"
door = "north"
line = 5
active_high = false
[[readers]]
name = "north-in"
door = "north"
d0 = 22
d1 = 23
[doors.north]
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cfg: HardwareConfig = toml::from_str(SITE)?;
    let twin = TwinBuilder::new(&cfg);
    let sessions = 2_000u64;
    let mut edges = Vec::new();
    for i in 0..sessions {
        let t = 10_000_000 + i * 20_000_000;
        edges.extend(twin.card("north-in", t, 26, 12, i % 60_000)?);
        edges.extend(twin.pin("north-in", t + 5_000_000, "482913")?);
        edges.extend(twin.input("north-contact", t + 1_000_000, true)?);
        edges.extend(twin.input("north-contact", t + 4_000_000, false)?);
    }
    let n_edges = edges.len();
    let mut backend = SimBackend::default();
    let mut rt = HwRuntime::open(&cfg, &mut backend)?;
    let start = Instant::now();
    let mut player = PinPlayer::new(edges);
    let (mut cards, mut pins, mut steps) = (0u64, 0u64, 0u64);
    while let Some(batch) = player.step(&mut rt, &backend.lines)? {
        steps += 1;
        for ev in batch {
            match ev {
                HwEvent::Card { at_us, .. } => {
                    cards += 1;
                    rt.pulse("north", at_us, 3_000_000)?;
                }
                HwEvent::Pin { .. } => pins += 1,
                _ => {}
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{n_edges} edges, {steps} steps, {cards} cards, {pins} PINs, {:.0} s of gate time replayed in {:.3} s ({:.2} M edges/s)", player.now_us() as f64 / 1e6, secs, n_edges as f64 / secs / 1e6);
    assert_eq!((cards, pins), (sessions, sessions));
    Ok(())
}
