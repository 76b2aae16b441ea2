//! Wiegand generator: card numbers and keys to bit frames and D0/D1 pulse trains with
//! realistic timing, for pin-level traces (tests, demo, pin-level twins of event traces).

use serde::{Deserialize, Serialize};

use crate::edge::PinEdge;
use crate::keys::Key;

/// Pulse shape of generated frames; the default (50 µs every 2 ms) is what common readers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulseTiming {
    /// Low time of one data pulse.
    pub pulse_us: u64,
    /// Start-to-start distance of two pulses.
    pub interval_us: u64,
}

impl Default for PulseTiming {
    fn default() -> Self {
        PulseTiming { pulse_us: 50, interval_us: 2_000 }
    }
}

fn push_bits(out: &mut Vec<bool>, value: u64, n: u32) {
    for i in (0..n).rev() {
        out.push((value >> i) & 1 == 1);
    }
}

fn card(payload: u64, payload_bits: u32) -> Vec<bool> {
    let half = payload_bits / 2;
    let first = payload >> half;
    let second = payload & ((1u64 << half) - 1);
    let mut out = Vec::with_capacity(payload_bits as usize + 2);
    out.push(!first.count_ones().is_multiple_of(2)); // even parity over the first half
    push_bits(&mut out, payload, payload_bits);
    out.push(second.count_ones().is_multiple_of(2)); // odd parity over the second half
    out
}

/// The 26-bit (H10301) frame of a card: parity, 8-bit facility, 16-bit number, parity.
pub fn card26(facility: u8, number: u16) -> Vec<bool> {
    card((u64::from(facility) << 16) | u64::from(number), 24)
}

/// The 34-bit frame of a card: parity, 16-bit facility, 16-bit number, parity.
pub fn card34(facility: u16, number: u16) -> Vec<bool> {
    card((u64::from(facility) << 16) | u64::from(number), 32)
}

/// The 4-bit keypad burst of a key.
pub fn key4(key: Key) -> Vec<bool> {
    let mut out = Vec::with_capacity(4);
    push_bits(&mut out, u64::from(key.code()), 4);
    out
}

/// The 8-bit keypad burst of a key (complemented code in the high nibble).
pub fn key8(key: Key) -> Vec<bool> {
    let code = u64::from(key.code());
    let mut out = Vec::with_capacity(8);
    push_bits(&mut out, ((!code & 0x0f) << 4) | code, 8);
    out
}

/// Edges of a frame sent from `start_us`: per bit, a low pulse on D1 (1) or D0 (0).
pub fn pulse_train(bits: &[bool], start_us: u64, timing: PulseTiming, d0: &str, d1: &str) -> Vec<PinEdge> {
    let mut out = Vec::with_capacity(bits.len() * 2);
    for (i, bit) in bits.iter().enumerate() {
        let line = if *bit { d1 } else { d0 };
        let t = start_us + i as u64 * timing.interval_us;
        out.push(PinEdge::new(t, line, false));
        out.push(PinEdge::new(t + timing.pulse_us, line, true));
    }
    out
}

/// When the last pulse of an `nbits` frame sent from `start_us` ends.
pub fn frame_end_us(nbits: usize, start_us: u64, timing: PulseTiming) -> u64 {
    start_us + (nbits.saturating_sub(1) as u64) * timing.interval_us + timing.pulse_us
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card26_matches_a_known_h10301_frame() {
        // Facility 1, card 1: payload 0x010001 -> even parity 1, odd parity 0.
        let bits: String = card26(1, 1).iter().map(|b| if *b { '1' } else { '0' }).collect();
        assert_eq!(bits, "10000000100000000000000010");
    }

    #[test]
    fn pulse_train_uses_d1_for_ones_and_realistic_timing() {
        let edges = pulse_train(&[true, false], 100, PulseTiming::default(), "a.d0", "a.d1");
        assert_eq!(edges, vec![PinEdge::new(100, "a.d1", false), PinEdge::new(150, "a.d1", true), PinEdge::new(2_100, "a.d0", false), PinEdge::new(2_150, "a.d0", true),]);
        assert_eq!(frame_end_us(2, 100, PulseTiming::default()), 2_150);
    }
}
