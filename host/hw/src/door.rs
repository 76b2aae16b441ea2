//! Door sensor logic: turns the debounced door contact and the relay state into opened /
//! closed / forced-open / held-open signals. Pure and time-injected, so the host's door
//! controller can use it (or mirror it) in live and in virtual time.

use serde::{Deserialize, Serialize};

/// Limits of one door's monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DoorMonitorConfig {
    /// An authorised opening longer than this raises held-open.
    pub held_open_ms: u32,
    /// After the relay releases (or an exit request), opening within this still counts as authorised.
    pub unlock_grace_ms: u32,
}

impl Default for DoorMonitorConfig {
    fn default() -> Self {
        DoorMonitorConfig { held_open_ms: 30_000, unlock_grace_ms: 1_000 }
    }
}

/// What happened at a door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DoorSignalKind {
    /// Opened while unlocked (or within the grace after).
    Opened,
    /// Opened while locked: forced open alarm.
    ForcedOpen,
    /// An authorised opening lasted longer than `held_open_ms`: held-open alarm.
    HeldOpen,
    /// Closed again; clears a forced-open or held-open alarm.
    Closed,
}

/// A door signal with the time it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorSignal {
    /// Door name.
    pub door: String,
    /// What happened.
    pub kind: DoorSignalKind,
    /// When (the contact change, or the held-open deadline).
    pub at_us: u64,
}

/// Per-door state: is the lock released, is the door open, since when, which alarm is up.
#[derive(Debug, Clone)]
pub struct DoorMonitor {
    door: String,
    config: DoorMonitorConfig,
    unlocked: bool,
    authorised_until: Option<u64>,
    open_since: Option<u64>,
    held_reported: bool,
    forced: bool,
}

impl DoorMonitor {
    /// A closed, locked door.
    pub fn new(door: impl Into<String>, config: DoorMonitorConfig) -> Self {
        DoorMonitor {
            door: door.into(),
            config,
            unlocked: false,
            authorised_until: None,
            open_since: None,
            held_reported: false,
            forced: false,
        }
    }

    fn signal(&self, kind: DoorSignalKind, at_us: u64) -> DoorSignal {
        match kind {
            DoorSignalKind::ForcedOpen | DoorSignalKind::HeldOpen => {
                tracing::warn!(door = %self.door, kind = ?kind, at_us, "door alarm")
            }
            _ => tracing::debug!(door = %self.door, kind = ?kind, at_us, "door"),
        }
        DoorSignal { door: self.door.clone(), kind, at_us }
    }

    /// The relay of this door changed (energised = lock released).
    pub fn relay(&mut self, energised: bool, at_us: u64) {
        self.unlocked = energised;
        if !energised {
            self.authorised_until = Some(at_us + u64::from(self.config.unlock_grace_ms) * 1_000);
        }
    }

    /// A request-to-exit that opens mechanically (no relay): authorises an opening for the grace time.
    pub fn exit_request(&mut self, at_us: u64) {
        self.authorised_until = Some(at_us + u64::from(self.config.unlock_grace_ms) * 1_000);
    }

    /// The debounced door contact changed (`open` = door not closed).
    pub fn contact(&mut self, open: bool, at_us: u64) -> Vec<DoorSignal> {
        let mut out: Vec<DoorSignal> = self.poll(at_us).into_iter().collect();
        match (open, self.open_since) {
            (true, None) => {
                self.open_since = Some(at_us);
                self.held_reported = false;
                let authorised = self.unlocked || self.authorised_until.is_some_and(|u| at_us <= u);
                self.forced = !authorised;
                let kind = if authorised { DoorSignalKind::Opened } else { DoorSignalKind::ForcedOpen };
                out.push(self.signal(kind, at_us));
            }
            (false, Some(_)) => {
                self.open_since = None;
                self.forced = false;
                self.held_reported = false;
                out.push(self.signal(DoorSignalKind::Closed, at_us));
            }
            _ => {}
        }
        out
    }

    /// Raises held-open once the door has stood open past the limit (a forced door is already in alarm).
    pub fn poll(&mut self, now_us: u64) -> Option<DoorSignal> {
        let deadline = self.next_deadline()?;
        if now_us >= deadline {
            self.held_reported = true;
            return Some(self.signal(DoorSignalKind::HeldOpen, deadline));
        }
        None
    }

    /// When `poll` must next be called for held-open to be raised on time.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.open_since {
            Some(since) if !self.held_reported && !self.forced => Some(since + u64::from(self.config.held_open_ms) * 1_000),
            _ => None,
        }
    }

    /// Whether a forced-open or held-open alarm is up.
    pub fn in_alarm(&self) -> bool {
        self.forced || self.held_reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::DebouncedInput;
    use crate::relay::Relay;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    const MS: u64 = 1_000;

    /// Drives a mock contact (active-low: low = open) and a mock relay through the real drivers.
    struct Rig {
        contact: DebouncedInput<Mock>,
        relay: Relay<Mock>,
        door: DoorMonitor,
        out: Vec<DoorSignal>,
    }

    impl Rig {
        fn new(contact_levels: &[(u64, State)], relay_writes: &[State]) -> Rig {
            let contact = Mock::new(&contact_levels.iter().map(|(_, s)| Transaction::get(*s)).collect::<Vec<_>>());
            let relay = Mock::new(&relay_writes.iter().map(|s| Transaction::set(*s)).collect::<Vec<_>>());
            Rig {
                contact: DebouncedInput::new("north-contact", contact, false, 20 * MS),
                relay: Relay::new("north", relay, true).expect("mock relay"),
                door: DoorMonitor::new("north", DoorMonitorConfig { held_open_ms: 30_000, unlock_grace_ms: 1_000 }),
                out: Vec::new(),
            }
        }

        fn sample(&mut self, at: u64) {
            if let Some(change) = self.relay.poll(at).expect("relay") {
                self.door.relay(change.energised, change.at_us);
            }
            if let Some(edge) = self.contact.sample(at).expect("contact") {
                self.out.extend(self.door.contact(edge.active, edge.changed_at_us));
            }
            self.out.extend(self.door.poll(at));
        }

        fn kinds(&self) -> Vec<(DoorSignalKind, u64)> {
            self.out.iter().map(|s| (s.kind, s.at_us)).collect()
        }

        fn done(self) {
            self.contact.into_pin().done();
            self.relay.into_pin().done();
        }
    }

    #[test]
    fn opening_without_unlock_is_forced_open() {
        use State::{High as H, Low as L};
        let levels = [(0, H), (10_000, L), (10_030, L), (15_000, H), (15_030, H)];
        let mut rig = Rig::new(&levels, &[L]);
        for (t, _) in levels {
            rig.sample(t * MS);
        }
        assert_eq!(rig.kinds(), vec![(DoorSignalKind::ForcedOpen, 10_000 * MS), (DoorSignalKind::Closed, 15_000 * MS)]);
        assert!(!rig.door.in_alarm());
        rig.done();
    }

    #[test]
    fn authorised_opening_left_open_raises_held_open_once() {
        use State::{High as H, Low as L};
        let levels = [(1_000, L), (1_030, L), (20_000, L), (31_000, L), (32_000, L), (40_000, H), (40_030, H)];
        let mut rig = Rig::new(&levels, &[L, H, L]);
        let change = rig.relay.pulse(0, 5_000 * MS).expect("pulse").expect("energised");
        rig.door.relay(change.energised, change.at_us);
        for (t, _) in levels {
            rig.sample(t * MS);
        }
        assert_eq!(
            rig.kinds(),
            vec![
                (DoorSignalKind::Opened, 1_000 * MS),
                (DoorSignalKind::HeldOpen, 31_000 * MS),
                (DoorSignalKind::Closed, 40_000 * MS),
            ]
        );
        rig.done();
    }

    #[test]
    fn opening_just_after_relock_is_within_grace_but_later_is_forced() {
        let mut door = DoorMonitor::new("n", DoorMonitorConfig { held_open_ms: 30_000, unlock_grace_ms: 1_000 });
        door.relay(true, 0);
        door.relay(false, 3_000 * MS);
        let first = door.contact(true, 3_800 * MS);
        door.contact(false, 5_000 * MS);
        let second = door.contact(true, 9_000 * MS);
        assert_eq!(first[0].kind, DoorSignalKind::Opened);
        assert_eq!(second[0].kind, DoorSignalKind::ForcedOpen);
        assert_eq!(door.next_deadline(), None, "a forced door does not also raise held-open");
    }

    #[test]
    fn exit_request_authorises_a_mechanical_exit() {
        let mut door = DoorMonitor::new("n", DoorMonitorConfig::default());
        door.exit_request(100 * MS);
        assert_eq!(door.contact(true, 600 * MS)[0].kind, DoorSignalKind::Opened);
    }
}
