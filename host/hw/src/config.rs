//! The `[hardware]` section of the site configuration: backend, GPIO lines per signal,
//! active levels, debounce, Wiegand readers, relays and camera; validated with named errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::HwError;
use crate::keypad::PinEntryConfig;
use crate::wiegand::WiegandTiming;

/// Where the pins come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Simulated pins driven by a trace (replay, demo, tests).
    #[default]
    Simulated,
    /// GPIO character devices through linux-embedded-hal, V4L2 camera.
    Linux,
}

/// Which way a reader or camera lets people through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into the site (the default).
    #[default]
    Entry,
    /// Out of the site.
    Exit,
}

/// What an input is wired to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// Door position contact (active = open).
    DoorContact,
    /// Request-to-exit button (active = pressed).
    ExitButton,
    /// Fire alarm panel output (active = alarm).
    FireAlarm,
    /// Anything else the site wires up.
    Other,
}

fn default_chip() -> String {
    "/dev/gpiochip0".into()
}
fn default_true() -> bool {
    true
}
fn default_debounce_ms() -> u32 {
    20
}

/// The `[hardware]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareConfig {
    /// "simulated" (default) or "linux".
    #[serde(default)]
    pub backend: Backend,
    /// GPIO character device used by lines that name no chip of their own.
    #[serde(default = "default_chip")]
    pub gpio_chip: String,
    /// Door relays, one per door.
    #[serde(default)]
    pub relays: Vec<RelayConfig>,
    /// Digital inputs.
    #[serde(default)]
    pub inputs: Vec<InputConfig>,
    /// Wiegand readers (card and keypad).
    #[serde(default)]
    pub readers: Vec<ReaderConfig>,
    /// The camera feeding the face matcher, if any.
    #[serde(default)]
    pub camera: Option<CameraConfig>,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig { backend: Backend::Simulated, gpio_chip: default_chip(), relays: Vec::new(), inputs: Vec::new(), readers: Vec::new(), camera: None }
    }
}

/// One door relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Door the relay opens; also the relay's name.
    pub door: String,
    /// GPIO line offset.
    pub line: u32,
    /// GPIO chip, if not `gpio_chip`.
    #[serde(default)]
    pub chip: Option<String>,
    /// Whether driving the line high energises the relay (default true).
    #[serde(default = "default_true")]
    pub active_high: bool,
}

/// One debounced input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Unique name; also the line name in pin-level traces.
    pub name: String,
    /// What it is wired to.
    pub kind: InputKind,
    /// Door it belongs to (contacts and exit buttons).
    #[serde(default)]
    pub door: Option<String>,
    /// GPIO line offset.
    pub line: u32,
    /// GPIO chip, if not `gpio_chip`.
    #[serde(default)]
    pub chip: Option<String>,
    /// Whether a high level means active (default true; contacts to ground with a pull-up are active-low).
    #[serde(default = "default_true")]
    pub active_high: bool,
    /// Debounce time (default 20 ms).
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u32,
}

/// One Wiegand reader (card reader with or without keypad).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// Unique name; its lines are "<name>.d0" and "<name>.d1" in pin-level traces.
    pub name: String,
    /// Door the reader serves.
    pub door: String,
    /// "entry" (default) or "exit": the direction of its card and PIN inputs.
    #[serde(default)]
    pub direction: Direction,
    /// GPIO line offset of D0.
    pub d0: u32,
    /// GPIO line offset of D1.
    pub d1: u32,
    /// GPIO chip, if not `gpio_chip`.
    #[serde(default)]
    pub chip: Option<String>,
    /// Pulse and frame timing.
    #[serde(default)]
    pub wiegand: WiegandTiming,
    /// PIN entry limits for its keypad.
    #[serde(default)]
    pub pin: PinEntryConfig,
}

impl ReaderConfig {
    /// Line name of D0 in pin-level traces.
    pub fn d0_name(&self) -> String {
        format!("{}.d0", self.name)
    }
    /// Line name of D1 in pin-level traces.
    pub fn d1_name(&self) -> String {
        format!("{}.d1", self.name)
    }
}

/// Pixel format asked of the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// Motion JPEG (most USB cameras at 640x480 and above).
    Mjpeg,
    /// Packed YUV 4:2:2.
    Yuyv,
}

/// The camera.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// V4L2 device, e.g. "/dev/video0".
    pub device: String,
    /// Door whose face matches the camera's frames are.
    pub door: String,
    /// "entry" (default) or "exit": the direction of its face matches.
    #[serde(default)]
    pub direction: Direction,
    /// Requested width in pixels.
    pub width: u32,
    /// Requested height in pixels.
    pub height: u32,
    /// Requested frames per second.
    pub fps: u32,
    /// Requested pixel format.
    pub format: CameraFormat,
}

impl HardwareConfig {
    /// The chip a line with this override lives on.
    pub fn chip_of<'a>(&'a self, chip: &'a Option<String>) -> &'a str {
        chip.as_deref().unwrap_or(&self.gpio_chip)
    }

    /// Relay line name in pin-level traces.
    pub fn relay_line_name(door: &str) -> String {
        format!("{door}.relay")
    }

    /// Checks names, lines and limits; the error names the offending entry.
    pub fn validate(&self) -> Result<(), HwError> {
        let mut names: BTreeMap<String, String> = BTreeMap::new();
        let mut lines: BTreeMap<(String, u32), String> = BTreeMap::new();
        let mut claim_name = |name: String, what: String| -> Result<(), HwError> {
            match names.insert(name.clone(), what.clone()) {
                Some(prev) => Err(HwError::Config(format!("{what}: line name {name:?} already used by {prev}"))),
                None => Ok(()),
            }
        };
        let mut claim_line = |chip: &str, line: u32, what: String| -> Result<(), HwError> {
            match lines.insert((chip.to_owned(), line), what.clone()) {
                Some(prev) => Err(HwError::Config(format!("{what}: {chip} line {line} already used by {prev}"))),
                None => Ok(()),
            }
        };
        for r in &self.relays {
            let what = format!("relay of door {:?}", r.door);
            claim_name(Self::relay_line_name(&r.door), what.clone())?;
            claim_line(self.chip_of(&r.chip), r.line, what)?;
        }
        for i in &self.inputs {
            let what = format!("input {:?}", i.name);
            if i.name.is_empty() {
                return Err(HwError::Config("an input has an empty name".into()));
            }
            claim_name(i.name.clone(), what.clone())?;
            claim_line(self.chip_of(&i.chip), i.line, what)?;
        }
        for r in &self.readers {
            let what = format!("reader {:?}", r.name);
            if r.name.is_empty() {
                return Err(HwError::Config("a reader has an empty name".into()));
            }
            claim_name(r.d0_name(), format!("{what} D0"))?;
            claim_name(r.d1_name(), format!("{what} D1"))?;
            let chip = self.chip_of(&r.chip);
            claim_line(chip, r.d0, format!("{what} D0"))?;
            claim_line(chip, r.d1, format!("{what} D1"))?;
            let t = r.wiegand;
            if !(t.min_pulse_us < t.max_pulse_us && u64::from(t.max_pulse_us) < u64::from(t.frame_gap_us)) {
                return Err(HwError::Config(format!("{what}: wiegand timing needs min_pulse_us < max_pulse_us < frame_gap_us")));
            }
            if r.pin.min_len == 0 || r.pin.min_len > r.pin.max_len {
                return Err(HwError::Config(format!("{what}: pin needs 1 <= min_len <= max_len")));
            }
        }
        if let Some(c) = &self.camera {
            if c.width == 0 || c.height == 0 || c.fps == 0 {
                return Err(HwError::Config(format!("camera {}: width, height and fps must be above 0", c.device)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = r#"
backend = "linux"
gpio_chip = "/dev/gpiochip0"

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
name = "fire"
kind = "fire-alarm"
line = 6
chip = "/dev/gpiochip1"

[[readers]]
name = "north-in"
door = "north"
d0 = 22
d1 = 23
pin = { timeout_ms = 4000, min_len = 6, max_len = 6 }

[[readers]]
name = "north-out"
door = "north"
direction = "exit"
d0 = 24
d1 = 25

[camera]
device = "/dev/video0"
door = "north"
width = 640
height = 480
fps = 15
format = "mjpeg"
"#;

    #[test]
    fn a_full_site_section_parses_with_defaults_filled_in() {
        let cfg: HardwareConfig = toml::from_str(SITE).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.backend, Backend::Linux);
        assert!(cfg.relays[0].active_high);
        assert_eq!(cfg.inputs[1].debounce_ms, 20);
        assert_eq!(cfg.chip_of(&cfg.inputs[1].chip), "/dev/gpiochip1");
        assert_eq!(cfg.readers[0].wiegand, WiegandTiming::default());
        assert_eq!(cfg.readers[0].pin.min_len, 6);
        assert_eq!((cfg.readers[0].direction, cfg.readers[1].direction), (Direction::Entry, Direction::Exit));
        assert_eq!(cfg.camera.as_ref().map(|c| (c.door.as_str(), c.direction)), Some(("north", Direction::Entry)));
        assert_eq!(cfg.camera.as_ref().map(|c| c.format), Some(CameraFormat::Mjpeg));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<HardwareConfig>("[[relays]]\ndoor = \"n\"\nline = 1\nactive_hi = true\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("active_hi"), "{err}");
    }

    #[test]
    fn a_line_used_twice_is_refused_naming_both_users() {
        let bad = SITE.replace("d1 = 23", "d1 = 17");
        let cfg: HardwareConfig = toml::from_str(&bad).expect("parses");
        let msg = cfg.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(msg, "hardware config: reader \"north-in\" D1: /dev/gpiochip0 line 17 already used by relay of door \"north\"");
    }

    #[test]
    fn impossible_pin_limits_are_refused() {
        let bad = SITE.replace("min_len = 6, max_len = 6", "min_len = 8, max_len = 6");
        let cfg: HardwareConfig = toml::from_str(&bad).expect("parses");
        let msg = cfg.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("reader \"north-in\": pin needs"), "{msg}");
    }
}
