//! The policy's settings, read once per event from the site configuration with defaults.

use gate_plugin_sdk::types::MatchBand;
use gate_plugin_sdk::{Schedule, Settings, SettingsError};

/// Everything the rules need from the site configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// `default-open-ms` (5000): opening time for a normal grant.
    pub default_open_ms: u32,
    /// `long-open-ms` (12000): opening time for members of the long-open group.
    pub long_open_ms: u32,
    /// `long-open-group` ("needs-longer-opening"): who gets the long opening.
    pub long_open_group: String,
    /// `staff-schedule` ("mon-sat 06:00-22:00"): when staff may enter.
    pub staff_schedule: Schedule,
    /// `contractor-schedule` ("mon-fri 08:00-18:00"): when contractors may enter.
    pub contractor_schedule: Schedule,
    /// `visitor-hours` ("daily 06:00-23:00"): outside them a visitor's valid pass does not
    /// open by itself: the resident who invited them is called to confirm (the host rings
    /// their indoor station, then their phone, then the guard).
    pub visitor_hours: Schedule,
    /// `face-min-band` ("strong"): weaker face matches must add card, PIN or NFC.
    pub face_min_band: MatchBand,
    /// `face-needs-second-factor-when-liveness-unknown` (true): face + card/PIN/NFC when the
    /// gateway cannot check liveness, even at a face-alone door.
    pub second_factor_when_liveness_unknown: bool,
    /// `face-alone-doors` (none): doors where a strong, live face match opens alone (`*`:
    /// every door). Elsewhere face always adds card, PIN or NFC. Card, PIN and NFC are
    /// accepted alone everywhere: face is never the only way in.
    pub face_alone_doors: Vec<String>,
    /// `anti-passback` ("off"): refuse a second entry without an exit in between.
    pub anti_passback: bool,
    /// `plate-doors` (none): doors besides those whose id contains "vehicle" that accept plates.
    pub plate_doors: Vec<String>,
}

impl PolicyConfig {
    /// Reads every setting, defaulting missing ones; a malformed one is an error naming it.
    pub fn from_settings<F: Fn(&str) -> Option<String>>(s: &Settings<F>) -> Result<Self, SettingsError> {
        Ok(PolicyConfig {
            default_open_ms: s.u32_or("default-open-ms", 5000)?,
            long_open_ms: s.u32_or("long-open-ms", 12000)?,
            long_open_group: s.string_or("long-open-group", "needs-longer-opening"),
            staff_schedule: s.schedule_or("staff-schedule", "mon-sat 06:00-22:00")?,
            contractor_schedule: s.schedule_or("contractor-schedule", "mon-fri 08:00-18:00")?,
            visitor_hours: s.schedule_or("visitor-hours", "daily 06:00-23:00")?,
            face_min_band: s.parse_with("face-min-band", MatchBand::Strong, "strong or weak", MatchBand::parse)?,
            second_factor_when_liveness_unknown: s.bool_or("face-needs-second-factor-when-liveness-unknown", true)?,
            face_alone_doors: s.list_or("face-alone-doors", &[]),
            anti_passback: s.bool_or("anti-passback", false)?,
            plate_doors: s.list_or("plate-doors", &[]),
        })
    }

    /// Whether a strong, live face match may open `door` alone.
    pub fn face_alone_at(&self, door: &str) -> bool {
        self.face_alone_doors.iter().any(|d| d == "*" || d == door)
    }

    /// Whether licence plates are accepted at `door`.
    pub fn accepts_plate_at(&self, door: &str) -> bool {
        door.contains("vehicle") || self.plate_doors.iter().any(|d| d == door)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        // The defaults are constants above and always parse.
        match PolicyConfig::from_settings(&Settings::new(|_: &str| None)) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in defaults must parse: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn from(pairs: &[(&str, &str)]) -> Result<PolicyConfig, SettingsError> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PolicyConfig::from_settings(&Settings::new(move |k: &str| map.get(k).cloned()))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = PolicyConfig::default();
        assert_eq!((c.default_open_ms, c.long_open_ms), (5000, 12000));
        assert_eq!(c.long_open_group, "needs-longer-opening");
        assert_eq!(c.staff_schedule.to_string(), "mon-sat 06:00-22:00");
        assert_eq!(c.contractor_schedule.to_string(), "mon-fri 08:00-18:00");
        assert_eq!(c.face_min_band, MatchBand::Strong);
        assert!(c.second_factor_when_liveness_unknown);
        assert!(!c.anti_passback);
        assert!(c.accepts_plate_at("vehicle-east") && !c.accepts_plate_at("pedestrian-1"));
        assert!(!c.face_alone_at("north-gate"), "face never opens alone unless the site says where");
    }

    #[test]
    fn site_values_override_defaults() {
        let c = from(&[
            ("default-open-ms", "3000"),
            ("anti-passback", "on"),
            ("face-min-band", "weak"),
            ("face-needs-second-factor-when-liveness-unknown", "false"),
            ("plate-doors", "garage-1, garage-2"),
            ("face-alone-doors", "north-gate"),
        ])
        .unwrap();
        assert!(c.face_alone_at("north-gate") && !c.face_alone_at("building-3"));
        assert_eq!(c.default_open_ms, 3000);
        assert!(c.anti_passback);
        assert_eq!(c.face_min_band, MatchBand::Weak);
        assert!(!c.second_factor_when_liveness_unknown);
        assert!(c.accepts_plate_at("garage-2"));
    }

    #[test]
    fn a_bad_value_is_named() {
        let err = from(&[("face-min-band", "medium")]).unwrap_err().to_string();
        assert!(err.contains("`face-min-band` = \"medium\""), "{err}");
        let err = from(&[("anti-passback", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("`anti-passback`"), "{err}");
    }
}
