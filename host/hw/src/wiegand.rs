//! Wiegand reader: decodes D0/D1 pulse edges into 26/34-bit card frames and 4/8-bit keypad
//! bursts, rejecting glitches, short or unknown-length frames and bad parity with a counted,
//! logged reason. Time is always passed in (µs), so the decoder runs in virtual time too.

use embedded_hal::digital::InputPin;
use serde::{Deserialize, Serialize};

use crate::error::HwError;
use crate::keys::Key;

/// Which data line of a Wiegand reader an edge belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WiegandLine {
    /// Data-0: a low pulse on it sends a 0 bit.
    D0,
    /// Data-1: a low pulse on it sends a 1 bit.
    D1,
}

impl WiegandLine {
    fn index(self) -> usize {
        match self {
            WiegandLine::D0 => 0,
            WiegandLine::D1 => 1,
        }
    }
}

/// Timing limits of the decoder; defaults suit common readers (≈50 µs pulses every 1-2 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WiegandTiming {
    /// Pulses shorter than this are glitches (dropped and counted).
    pub min_pulse_us: u32,
    /// Pulses longer than this spoil the frame (a line held low is not data).
    pub max_pulse_us: u32,
    /// Silence after the last pulse that ends a frame.
    pub frame_gap_us: u32,
}

impl Default for WiegandTiming {
    fn default() -> Self {
        WiegandTiming { min_pulse_us: 10, max_pulse_us: 500, frame_gap_us: 25_000 }
    }
}

/// A frame the decoder accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WiegandFrame {
    /// A card read (26 or 34 bits, parity checked).
    Card {
        /// Frame length in bits.
        bits: u8,
        /// Facility (site) code.
        facility: u32,
        /// Card number within the facility.
        number: u64,
    },
    /// One keypad key (4-bit or 8-bit burst).
    Key(Key),
}

/// A closed frame and when it closed (end of the last pulse plus the frame gap, whenever
/// it was polled), so decoding gives the same times live and in virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameOutcome {
    /// When the frame closed.
    pub at_us: u64,
    /// The frame, or why it was rejected.
    pub result: Result<WiegandFrame, RejectReason>,
}

/// Which parity bit of a card frame failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParityHalf {
    /// The leading, even parity bit over the first half.
    Leading,
    /// The trailing, odd parity bit over the second half.
    Trailing,
}

/// Why a frame (or part of one) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Fewer bits than the shortest known frame (4).
    ShortFrame {
        /// Bits received.
        bits: u16,
    },
    /// A length that is neither 4, 8, 26 nor 34 bits.
    UnsupportedLength {
        /// Bits received.
        bits: u16,
    },
    /// A card frame whose parity does not check.
    BadParity {
        /// Frame length.
        bits: u8,
        /// Which parity bit failed.
        half: ParityHalf,
    },
    /// An 8-bit keypad burst whose high nibble is not the complement of the low one.
    BadKeypadCheck,
    /// D0 and D1 were low at the same time.
    BothLinesActive,
    /// A pulse longer than the allowed maximum (a line held or stuck low).
    LongPulse {
        /// The line.
        line: WiegandLine,
        /// The pulse width.
        width_us: u64,
    },
}

impl RejectReason {
    /// Short stable name of the reason, for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            RejectReason::ShortFrame { .. } => "short-frame",
            RejectReason::UnsupportedLength { .. } => "unsupported-length",
            RejectReason::BadParity { .. } => "bad-parity",
            RejectReason::BadKeypadCheck => "bad-keypad-check",
            RejectReason::BothLinesActive => "both-lines-active",
            RejectReason::LongPulse { .. } => "long-pulse",
        }
    }
}

/// Counters of what a reader decoded and rejected since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WiegandStats {
    /// Card frames accepted.
    pub cards: u64,
    /// Keypad keys accepted.
    pub keys: u64,
    /// Pulses dropped as glitches (shorter than `min_pulse_us`).
    pub glitches: u64,
    /// Frames rejected as too short.
    pub short_frames: u64,
    /// Frames rejected for an unsupported length.
    pub unsupported_length: u64,
    /// Card frames rejected for bad parity.
    pub bad_parity: u64,
    /// 8-bit keypad bursts rejected for a bad check nibble.
    pub bad_keypad_check: u64,
    /// Frames spoilt by both lines being low at once.
    pub both_lines_active: u64,
    /// Frames spoilt by an over-long pulse.
    pub long_pulses: u64,
}

/// Longest frame kept bit by bit; longer ones are only counted.
const MAX_BITS: u16 = 64;

/// Edge-driven Wiegand decoder for one reader; feed it edges and poll it for frame ends.
#[derive(Debug, Clone)]
pub struct WiegandDecoder {
    reader: String,
    timing: WiegandTiming,
    value: u64,
    nbits: u16,
    spoilt: Option<RejectReason>,
    low_since: [Option<u64>; 2],
    last_activity_us: Option<u64>,
    stats: WiegandStats,
}

impl WiegandDecoder {
    /// A decoder for the named reader (the name appears in logs only).
    pub fn new(reader: impl Into<String>, timing: WiegandTiming) -> Self {
        WiegandDecoder { reader: reader.into(), timing, value: 0, nbits: 0, spoilt: None, low_since: [None, None], last_activity_us: None, stats: WiegandStats::default() }
    }

    /// Counters since start.
    pub fn stats(&self) -> WiegandStats {
        self.stats
    }

    /// Name of the reader.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    /// Feeds one level change of D0 or D1 (`level` false = pulled low = pulse start).
    ///
    /// Returns the previous frame if this edge comes after a frame gap that was not polled.
    pub fn edge(&mut self, line: WiegandLine, level: bool, at_us: u64) -> Option<FrameOutcome> {
        let finished = self.poll(at_us);
        let i = line.index();
        if !level {
            if self.low_since[i].is_some() {
                return finished; // repeated level, no change
            }
            if self.low_since[1 - i].is_some() && self.spoilt.is_none() {
                self.spoilt = Some(RejectReason::BothLinesActive);
            }
            self.low_since[i] = Some(at_us);
            self.last_activity_us = Some(at_us);
        } else if let Some(start) = self.low_since[i].take() {
            let width = at_us.saturating_sub(start);
            self.last_activity_us = Some(at_us);
            if width < u64::from(self.timing.min_pulse_us) {
                self.stats.glitches += 1;
                tracing::debug!(reader = %self.reader, ?line, width_us = width, "wiegand glitch dropped");
            } else if width > u64::from(self.timing.max_pulse_us) {
                if self.spoilt.is_none() {
                    self.spoilt = Some(RejectReason::LongPulse { line, width_us: width });
                }
            } else {
                self.push_bit(line == WiegandLine::D1);
            }
        }
        finished
    }

    fn push_bit(&mut self, bit: bool) {
        if self.nbits < MAX_BITS {
            self.value = (self.value << 1) | u64::from(bit);
        }
        self.nbits = self.nbits.saturating_add(1);
    }

    /// Ends the frame in progress if the line has been quiet for the frame gap.
    pub fn poll(&mut self, now_us: u64) -> Option<FrameOutcome> {
        let gap = u64::from(self.timing.frame_gap_us);
        // A line held low for a whole frame gap is not a pulse: spoil and close the frame.
        for (i, line) in [WiegandLine::D0, WiegandLine::D1].into_iter().enumerate() {
            if let Some(start) = self.low_since[i] {
                let width = now_us.saturating_sub(start);
                if width >= gap {
                    self.low_since[i] = None;
                    if self.spoilt.is_none() {
                        self.spoilt = Some(RejectReason::LongPulse { line, width_us: width });
                    }
                    return Some(self.finish(start + gap));
                }
            }
        }
        if self.low_since.iter().any(Option::is_some) {
            return None;
        }
        let last = self.last_activity_us?;
        if (self.nbits > 0 || self.spoilt.is_some()) && now_us.saturating_sub(last) >= gap {
            return Some(self.finish(last + gap));
        }
        None
    }

    /// When `poll` must next be called for a frame end to be seen on time.
    pub fn next_deadline(&self) -> Option<u64> {
        let gap = u64::from(self.timing.frame_gap_us);
        let held = self.low_since.iter().flatten().min().map(|s| s + gap);
        if held.is_some() {
            return held;
        }
        if self.nbits > 0 || self.spoilt.is_some() {
            return self.last_activity_us.map(|l| l + gap);
        }
        None
    }

    fn finish(&mut self, at_us: u64) -> FrameOutcome {
        let result = match self.spoilt.take() {
            Some(reason) => Err(reason),
            None => decode_bits(self.value, self.nbits),
        };
        self.value = 0;
        self.nbits = 0;
        self.last_activity_us = None;
        match &result {
            Ok(WiegandFrame::Card { bits, .. }) => {
                self.stats.cards += 1;
                tracing::debug!(reader = %self.reader, bits, "wiegand card frame");
            }
            Ok(WiegandFrame::Key(_)) => {
                self.stats.keys += 1;
                tracing::debug!(reader = %self.reader, "wiegand keypad key");
            }
            Err(reason) => {
                let counter = match reason {
                    RejectReason::ShortFrame { .. } => &mut self.stats.short_frames,
                    RejectReason::UnsupportedLength { .. } => &mut self.stats.unsupported_length,
                    RejectReason::BadParity { .. } => &mut self.stats.bad_parity,
                    RejectReason::BadKeypadCheck => &mut self.stats.bad_keypad_check,
                    RejectReason::BothLinesActive => &mut self.stats.both_lines_active,
                    RejectReason::LongPulse { .. } => &mut self.stats.long_pulses,
                };
                *counter += 1;
                tracing::warn!(reader = %self.reader, reason = reason.name(), detail = ?reason, "wiegand frame rejected");
            }
        }
        FrameOutcome { at_us, result }
    }
}

/// Decodes a complete frame of `nbits` bits (MSB first in `value`).
pub fn decode_bits(value: u64, nbits: u16) -> Result<WiegandFrame, RejectReason> {
    match nbits {
        0..=3 => Err(RejectReason::ShortFrame { bits: nbits }),
        4 => Ok(WiegandFrame::Key(Key::from_code(value as u8))),
        8 => {
            let low = (value & 0x0f) as u8;
            let high = ((value >> 4) & 0x0f) as u8;
            if high != (!low & 0x0f) {
                return Err(RejectReason::BadKeypadCheck);
            }
            Ok(WiegandFrame::Key(Key::from_code(low)))
        }
        26 => decode_card(value, 26, 8),
        34 => decode_card(value, 34, 16),
        _ => Err(RejectReason::UnsupportedLength { bits: nbits }),
    }
}

/// Card frame: even parity bit, facility, number, odd parity bit; each parity covers half.
fn decode_card(value: u64, bits: u8, facility_bits: u32) -> Result<WiegandFrame, RejectReason> {
    let half = u32::from(bits - 2) / 2;
    let payload = (value >> 1) & ((1u64 << (bits - 2)) - 1);
    let first = payload >> half;
    let second = payload & ((1u64 << half) - 1);
    let leading = (value >> (bits - 1)) & 1;
    let trailing = value & 1;
    if !(first.count_ones() + leading as u32).is_multiple_of(2) {
        return Err(RejectReason::BadParity { bits, half: ParityHalf::Leading });
    }
    if (second.count_ones() + trailing as u32).is_multiple_of(2) {
        return Err(RejectReason::BadParity { bits, half: ParityHalf::Trailing });
    }
    let number_bits = u32::from(bits - 2) - facility_bits;
    Ok(WiegandFrame::Card { bits, facility: (payload >> number_bits) as u32, number: payload & ((1u64 << number_bits) - 1) })
}

/// A Wiegand reader on two embedded-hal input pins, sampled at each `sample(now)`.
///
/// Used with simulated pins (replay, demo, tests) and on boards where the pins can be read
/// fast enough; on Linux the kernel-timestamped edge stream feeds [`WiegandDecoder::edge`].
pub struct WiegandReader<D0, D1> {
    d0: D0,
    d1: D1,
    last: [bool; 2],
    decoder: WiegandDecoder,
}

impl<D0: InputPin, D1: InputPin> WiegandReader<D0, D1> {
    /// Wraps the two data lines (idle high) of the named reader.
    pub fn new(reader: impl Into<String>, d0: D0, d1: D1, timing: WiegandTiming) -> Self {
        WiegandReader { d0, d1, last: [true, true], decoder: WiegandDecoder::new(reader, timing) }
    }

    /// Reads both lines, decodes any change, and returns frames that ended by `now_us`.
    pub fn sample(&mut self, now_us: u64) -> Result<Vec<FrameOutcome>, HwError> {
        let name = self.decoder.reader().to_owned();
        let d0 = self.d0.is_high().map_err(|e| HwError::pin(&format!("reader {name} D0"), "read", e))?;
        let d1 = self.d1.is_high().map_err(|e| HwError::pin(&format!("reader {name} D1"), "read", e))?;
        let mut out = Vec::new();
        for (i, (line, level)) in [(WiegandLine::D0, d0), (WiegandLine::D1, d1)].into_iter().enumerate() {
            if level != self.last[i] {
                self.last[i] = level;
                out.extend(self.decoder.edge(line, level, now_us));
            }
        }
        out.extend(self.decoder.poll(now_us));
        Ok(out)
    }

    /// When `sample` must next be called for a frame end to be seen on time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.decoder.next_deadline()
    }

    /// Counters since start.
    pub fn stats(&self) -> WiegandStats {
        self.decoder.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wiegand_gen::{card26, card34, key4, key8, pulse_train, PulseTiming};
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn run(bits: &[bool]) -> (Vec<Result<WiegandFrame, RejectReason>>, WiegandStats) {
        let gap = u64::from(WiegandTiming::default().frame_gap_us);
        let mut dec = WiegandDecoder::new("t", WiegandTiming::default());
        let edges = pulse_train(bits, 1_000, PulseTiming::default(), "d0", "d1");
        let mut out = Vec::new();
        for e in &edges {
            let line = if e.line == "d0" { WiegandLine::D0 } else { WiegandLine::D1 };
            out.extend(dec.edge(line, e.level, e.at_us));
        }
        assert!(dec.poll(edges.last().map_or(0, |e| e.at_us) + 1_000).is_none(), "frame ended too early");
        let last = edges.last().map_or(0, |e| e.at_us);
        let closed = dec.poll(10_000_000);
        assert_eq!(closed.as_ref().map(|c| c.at_us), Some(last + gap), "frame time is pulse end + gap, not poll time");
        out.extend(closed);
        (out.into_iter().map(|o| o.result).collect(), dec.stats())
    }

    #[test]
    fn decodes_26_bit_card_with_facility() {
        let (out, stats) = run(&card26(123, 45_678));
        assert_eq!(out, vec![Ok(WiegandFrame::Card { bits: 26, facility: 123, number: 45_678 })]);
        assert_eq!(stats.cards, 1);
    }

    #[test]
    fn decodes_34_bit_card() {
        let (out, _) = run(&card34(0xBEEF, 0x1234));
        assert_eq!(out, vec![Ok(WiegandFrame::Card { bits: 34, facility: 0xBEEF, number: 0x1234 })]);
    }

    #[test]
    fn decodes_4_and_8_bit_keypad_bursts() {
        for (bits, key) in [(key4(Key::Digit(7)), Key::Digit(7)), (key8(Key::Enter), Key::Enter), (key8(Key::Clear), Key::Clear)] {
            let (out, stats) = run(&bits);
            assert_eq!(out, vec![Ok(WiegandFrame::Key(key))]);
            assert_eq!(stats.keys, 1);
        }
    }

    #[test]
    fn every_parity_error_of_every_card_length_is_rejected() {
        for (frame, bits) in [(card26(1, 2), 26u8), (card34(300, 4000), 34)] {
            for (flip, half) in [(0usize, ParityHalf::Leading), (bits as usize - 1, ParityHalf::Trailing), (3, ParityHalf::Leading), (bits as usize - 3, ParityHalf::Trailing)] {
                let mut bad = frame.clone();
                bad[flip] = !bad[flip];
                let (out, stats) = run(&bad);
                assert_eq!(out, vec![Err(RejectReason::BadParity { bits, half })], "flip {flip} of {bits}");
                assert_eq!(stats.bad_parity, 1);
                assert_eq!(stats.cards, 0);
            }
        }
    }

    #[test]
    fn bad_8_bit_keypad_check_is_rejected() {
        let mut bad = key8(Key::Digit(5));
        bad[0] = !bad[0];
        let (out, stats) = run(&bad);
        assert_eq!(out, vec![Err(RejectReason::BadKeypadCheck)]);
        assert_eq!(stats.bad_keypad_check, 1);
    }

    #[test]
    fn short_and_unknown_lengths_are_rejected_and_counted() {
        let (out, stats) = run(&[true, false, true]);
        assert_eq!(out, vec![Err(RejectReason::ShortFrame { bits: 3 })]);
        assert_eq!(stats.short_frames, 1);
        let mut truncated = card26(1, 2);
        truncated.pop();
        let (out, stats) = run(&truncated);
        assert_eq!(out, vec![Err(RejectReason::UnsupportedLength { bits: 25 })]);
        assert_eq!(stats.unsupported_length, 1);
        let (out, _) = run(&[false; 70]);
        assert_eq!(out, vec![Err(RejectReason::UnsupportedLength { bits: 70 })]);
    }

    #[test]
    fn glitches_are_dropped_and_counted_without_spoiling_the_frame() {
        let mut dec = WiegandDecoder::new("t", WiegandTiming::default());
        let mut edges = pulse_train(&card26(10, 20), 0, PulseTiming::default(), "d0", "d1");
        // A 3 µs spike on D1 between bits 4 and 5, and one on D0 right after.
        edges.push(PinEdge::new(9_000, "d1", false));
        edges.push(PinEdge::new(9_003, "d1", true));
        edges.push(PinEdge::new(9_500, "d0", false));
        edges.push(PinEdge::new(9_502, "d0", true));
        edges.sort_by_key(|e| e.at_us);
        let mut out = Vec::new();
        for e in &edges {
            let line = if e.line == "d0" { WiegandLine::D0 } else { WiegandLine::D1 };
            out.extend(dec.edge(line, e.level, e.at_us));
        }
        out.extend(dec.poll(1_000_000));
        let out: Vec<_> = out.into_iter().map(|o| o.result).collect();
        assert_eq!(out, vec![Ok(WiegandFrame::Card { bits: 26, facility: 10, number: 20 })]);
        assert_eq!(dec.stats().glitches, 2);
    }

    #[test]
    fn both_lines_low_and_stuck_lines_spoil_the_frame() {
        let mut dec = WiegandDecoder::new("t", WiegandTiming::default());
        dec.edge(WiegandLine::D0, false, 0);
        dec.edge(WiegandLine::D1, false, 10);
        dec.edge(WiegandLine::D0, true, 50);
        dec.edge(WiegandLine::D1, true, 60);
        assert_eq!(dec.poll(100_000), Some(FrameOutcome { at_us: 25_060, result: Err(RejectReason::BothLinesActive) }));
        // D1 held low: the frame is closed after one frame gap, not left hanging.
        dec.edge(WiegandLine::D1, false, 200_000);
        assert_eq!(dec.next_deadline(), Some(225_000));
        assert_eq!(dec.poll(224_999), None);
        assert!(matches!(dec.poll(225_000), Some(FrameOutcome { at_us: 225_000, result: Err(RejectReason::LongPulse { line: WiegandLine::D1, .. }) })));
        assert_eq!(dec.stats().both_lines_active, 1);
        assert_eq!(dec.stats().long_pulses, 1);
    }

    #[test]
    fn a_new_frame_after_an_unpolled_gap_closes_the_previous_one() {
        let mut dec = WiegandDecoder::new("t", WiegandTiming::default());
        let mut out = Vec::new();
        for (start, key) in [(0u64, Key::Digit(1)), (100_000, Key::Digit(2))] {
            for e in pulse_train(&key4(key), start, PulseTiming::default(), "d0", "d1") {
                let line = if e.line == "d0" { WiegandLine::D0 } else { WiegandLine::D1 };
                out.extend(dec.edge(line, e.level, e.at_us));
            }
        }
        out.extend(dec.poll(1_000_000));
        let times: Vec<u64> = out.iter().map(|o| o.at_us).collect();
        assert_eq!(times, vec![6_050 + 25_000, 106_050 + 25_000]);
        let out: Vec<_> = out.into_iter().map(|o| o.result).collect();
        assert_eq!(out, vec![Ok(WiegandFrame::Key(Key::Digit(1))), Ok(WiegandFrame::Key(Key::Digit(2)))]);
    }

    #[test]
    fn reader_samples_mock_pins_and_reports_read_errors() {
        // Key 1 as 4 bits 0001: three D0 pulses then one D1 pulse, sampled at each edge.
        let h = State::High;
        let l = State::Low;
        let d0_levels = [l, h, l, h, l, h, h, h, h];
        let d1_levels = [h, h, h, h, h, h, l, h, h];
        let d0 = Mock::new(&d0_levels.iter().map(|s| Transaction::get(*s)).collect::<Vec<_>>());
        let d1 = Mock::new(&d1_levels.iter().map(|s| Transaction::get(*s)).collect::<Vec<_>>());
        let mut reader = WiegandReader::new("mock", d0, d1, WiegandTiming::default());
        let mut out = Vec::new();
        for (i, t) in [0u64, 50, 2_000, 2_050, 4_000, 4_050, 6_000, 6_050, 40_000].into_iter().enumerate() {
            out.extend(reader.sample(t).expect("mock pins read"));
            let _ = i;
        }
        assert_eq!(out, vec![FrameOutcome { at_us: 31_050, result: Ok(WiegandFrame::Key(Key::Digit(1))) }]);
        reader.d0.done();
        reader.d1.done();

        let err = embedded_hal_mock::eh1::MockError::Io(std::io::ErrorKind::NotConnected);
        let d0 = Mock::new(&[Transaction::get(h).with_error(err)]);
        let d1 = Mock::new(&[]);
        let mut reader = WiegandReader::new("north-in", d0, d1, WiegandTiming::default());
        let msg = reader.sample(0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("reader north-in D0") && msg.contains("read"), "{msg}");
        reader.d0.done();
        reader.d1.done();
    }

    use crate::edge::PinEdge;
}
