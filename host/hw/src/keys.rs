//! Keys a Wiegand keypad sends, shared by the decoder, the PIN assembler and the generator.

use serde::{Deserialize, Serialize};

/// One keypad key as sent in a 4- or 8-bit Wiegand burst (HID convention: 0-9, 10 = `*`, 11 = `#`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Key {
    /// A digit key 0..=9.
    Digit(u8),
    /// `*` / ESC: clears the entry in progress.
    Clear,
    /// `#` / ENT: submits the entry.
    Enter,
    /// A function key (12..=15) this gateway gives no meaning to.
    Other(u8),
}

impl Key {
    /// The 4-bit code of the key.
    pub fn code(self) -> u8 {
        match self {
            Key::Digit(d) => d & 0x0f,
            Key::Clear => 10,
            Key::Enter => 11,
            Key::Other(v) => v & 0x0f,
        }
    }

    /// The key for a 4-bit code.
    pub fn from_code(code: u8) -> Key {
        match code & 0x0f {
            d @ 0..=9 => Key::Digit(d),
            10 => Key::Clear,
            11 => Key::Enter,
            v => Key::Other(v),
        }
    }
}
