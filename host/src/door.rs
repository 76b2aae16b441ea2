//! The door controller: the host's, never a plugin's.
//!
//! It owns relay timing, the door contact (held-open and forced-open alarms),
//! the exit button and fire release. It is a state machine over the gateway
//! clock, so the same code runs in service and in virtual-time replay.

use crate::config::Door;
use crate::event::{AlarmKind, DoorMode, Record};

/// After the relay relocks, the door may still be swinging shut for this long
/// before an opening counts as forced.
const RELOCK_GRACE_MS: i64 = 1_500;

/// The door id used for site-wide alarms (fire).
pub const SITE: &str = "site";

#[derive(Debug, Clone)]
struct DoorState {
    cfg: Door,
    relay_on: bool,
    unlock_until: Option<i64>,
    relocked_at: i64,
    open: bool,
    opened_at: i64,
    /// The door opened during the current unlock (so closing relocks early).
    used: bool,
    held_alarm: bool,
    forced_alarm: bool,
    /// Operator mode and when it ends (never indefinite).
    mode: DoorMode,
    mode_until: Option<i64>,
}

impl DoorState {
    /// Whether something other than a timed grant keeps the relay released.
    fn held_released(&self, fire: bool) -> bool {
        (fire && self.cfg.fire_release) || self.mode == DoorMode::HeldOpen
    }

    /// When an open door raises its held-open alarm, if it can: never while an operator
    /// holds it open or fire release holds it (nobody is to blame for an open door then).
    fn held_deadline(&self, fire: bool) -> Option<i64> {
        (self.open && !self.held_alarm && !self.held_released(fire)).then(|| self.opened_at.saturating_add(i64::try_from(self.cfg.held_open_ms).unwrap_or(i64::MAX)))
    }

    fn relock(&mut self, now: i64, out: &mut Timed) {
        self.relay_on = false;
        self.unlock_until = None;
        self.relocked_at = now;
        self.used = false;
        out.push((now, Record::Relay { door: self.cfg.id.clone(), on: false }));
    }
}

/// All doors of the gateway and the fire state.
#[derive(Debug, Clone)]
pub struct DoorController {
    doors: Vec<DoorState>,
    fire: bool,
}

type Timed = Vec<(i64, Record)>;

impl DoorController {
    pub fn new(doors: &[Door]) -> Self {
        DoorController {
            doors: doors
                .iter()
                .map(|d| DoorState {
                    cfg: d.clone(),
                    relay_on: false,
                    unlock_until: None,
                    relocked_at: i64::MIN / 2,
                    open: false,
                    opened_at: 0,
                    used: false,
                    held_alarm: false,
                    forced_alarm: false,
                    mode: DoorMode::Normal,
                    mode_until: None,
                })
                .collect(),
            fire: false,
        }
    }

    fn door(&mut self, id: &str) -> Option<&mut DoorState> {
        self.doors.iter_mut().find(|d| d.cfg.id == id)
    }

    /// Whether the fire alarm currently holds fire-release doors open.
    pub fn fire_active(&self) -> bool {
        self.fire
    }

    /// Whether the door's relay is energised (unlocked).
    pub fn relay_on(&self, id: &str) -> bool {
        self.doors.iter().any(|d| d.cfg.id == id && d.relay_on)
    }

    /// The door's operator mode (normal unless set and not yet expired).
    pub fn mode(&self, id: &str) -> DoorMode {
        self.doors.iter().find(|d| d.cfg.id == id).map_or(DoorMode::Normal, |d| d.mode)
    }

    /// Puts a door in `mode` until `until` (ignored for normal). Held open releases the
    /// relay and silences the held-open alarm; locked relocks a released door at once
    /// unless fire holds it; back to normal relocks unless a grant or fire still holds it.
    /// Returns the relay and alarm changes; the caller logs who asked.
    pub fn set_mode(&mut self, id: &str, now: i64, mode: DoorMode, until: i64) -> Timed {
        let mut out = Vec::new();
        let fire = self.fire;
        let Some(d) = self.door(id) else { return out };
        let was = d.mode;
        d.mode = mode;
        d.mode_until = (mode != DoorMode::Normal).then_some(until);
        match mode {
            DoorMode::HeldOpen => {
                if !d.relay_on {
                    d.relay_on = true;
                    out.push((now, Record::Relay { door: id.to_string(), on: true }));
                }
                if d.held_alarm {
                    d.held_alarm = false;
                    out.push((now, Record::Alarm { door: id.to_string(), alarm: AlarmKind::HeldOpen, active: false }));
                }
            }
            DoorMode::Locked => {
                if d.relay_on && !(fire && d.cfg.fire_release) {
                    d.relock(now, &mut out);
                }
            }
            DoorMode::Normal => {
                if was == DoorMode::HeldOpen {
                    Self::end_hold(d, now, fire, &mut out);
                }
            }
        }
        out
    }

    /// A held-open mode ended: relock unless a grant or fire still holds the door, and
    /// count a door still standing open from now.
    fn end_hold(d: &mut DoorState, now: i64, fire: bool, out: &mut Timed) {
        if d.relay_on && !(fire && d.cfg.fire_release) && d.unlock_until.is_none_or(|u| u <= now) {
            d.relock(now, out);
        }
        if d.open {
            d.opened_at = now;
        }
    }

    /// Unlocks a door for `open_ms` (capped at the door's maximum).
    pub fn grant(&mut self, id: &str, now: i64, open_ms: u32) -> Timed {
        let mut out = Vec::new();
        if let Some(d) = self.door(id) {
            let ms = open_ms.min(d.cfg.max_open_ms);
            let until = now.saturating_add(i64::from(ms));
            d.unlock_until = Some(d.unlock_until.map_or(until, |u| u.max(until)));
            d.used = false;
            if !d.relay_on {
                d.relay_on = true;
                out.push((now, Record::Relay { door: id.to_string(), on: true }));
            }
        }
        out
    }

    /// The request-to-exit button: a host decision, no plugin involved.
    pub fn exit_button(&mut self, id: &str, now: i64) -> Timed {
        let Some(ms) = self.doors.iter().find(|d| d.cfg.id == id).map(|d| d.cfg.exit_open_ms) else {
            return Vec::new();
        };
        let mut out = vec![(now, Record::Exit { door: id.to_string(), open_ms: ms })];
        out.extend(self.grant(id, now, ms));
        out
    }

    /// The door contact changed.
    pub fn contact(&mut self, id: &str, now: i64, open: bool) -> Timed {
        let mut out = Vec::new();
        let fire = self.fire;
        let Some(d) = self.door(id) else { return out };
        if d.open == open {
            return out;
        }
        d.open = open;
        if open {
            d.opened_at = now;
            let authorised = d.relay_on || (fire && d.cfg.fire_release) || now.saturating_sub(d.relocked_at) < RELOCK_GRACE_MS;
            if authorised {
                d.used = true;
            } else if !d.forced_alarm {
                d.forced_alarm = true;
                out.push((now, Record::Alarm { door: id.to_string(), alarm: AlarmKind::ForcedOpen, active: true }));
            }
        } else {
            if d.held_alarm {
                d.held_alarm = false;
                out.push((now, Record::Alarm { door: id.to_string(), alarm: AlarmKind::HeldOpen, active: false }));
            }
            if d.forced_alarm {
                d.forced_alarm = false;
                out.push((now, Record::Alarm { door: id.to_string(), alarm: AlarmKind::ForcedOpen, active: false }));
            }
            // Relock as soon as the person is through, so nobody tailgates on the rest of the pulse.
            if d.used && d.relay_on && !d.held_released(fire) {
                d.relock(now, &mut out);
            }
        }
        out
    }

    /// The fire-alarm input changed: release (or restore) every fire-release door.
    pub fn fire(&mut self, now: i64, active: bool) -> Timed {
        let mut out = Vec::new();
        if self.fire == active {
            return out;
        }
        self.fire = active;
        out.push((now, Record::Alarm { door: SITE.to_string(), alarm: AlarmKind::Fire, active }));
        for d in self.doors.iter_mut().filter(|d| d.cfg.fire_release) {
            if !active && d.open {
                // Held-open time counts from the end of the fire release, not from before it.
                d.opened_at = now;
            }
            if active && !d.relay_on {
                d.relay_on = true;
                out.push((now, Record::Relay { door: d.cfg.id.clone(), on: true }));
            } else if !active && d.relay_on && d.mode != DoorMode::HeldOpen && d.unlock_until.is_none_or(|u| u <= now) {
                d.relock(now, &mut out);
            }
        }
        out
    }

    /// The gateway is stopping: every relay goes to its safe state, which is locked, except
    /// that a fire-release door stays released while the fire alarm is on. Pending grants
    /// and holds end here (operator modes still in force come back at the next start).
    pub fn stop(&mut self, now: i64) -> Timed {
        let mut out = Vec::new();
        let fire = self.fire;
        for d in self.doors.iter_mut() {
            if d.relay_on && !(fire && d.cfg.fire_release) {
                d.relock(now, &mut out);
            }
        }
        out
    }

    /// The next time a timer fires, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        self.doors
            .iter()
            .flat_map(|d| {
                let relock = d.unlock_until.filter(|_| d.relay_on && !d.held_released(self.fire));
                let held = d.held_deadline(self.fire);
                relock.into_iter().chain(held).chain(d.mode_until)
            })
            .min()
    }

    /// Fires every timer due at or before `now`, each at its own time, in order.
    pub fn advance(&mut self, now: i64) -> Timed {
        let mut out = Vec::new();
        while let Some(t) = self.next_deadline().filter(|t| *t <= now) {
            let fire = self.fire;
            for d in self.doors.iter_mut() {
                if d.mode_until == Some(t) {
                    let was = std::mem::take(&mut d.mode);
                    d.mode_until = None;
                    out.push((t, Record::DoorMode { door: d.cfg.id.clone(), mode: DoorMode::Normal, until_ms: None, by: "host:expired".into() }));
                    if was == DoorMode::HeldOpen {
                        Self::end_hold(d, t, fire, &mut out);
                    }
                }
                if d.relay_on && d.unlock_until == Some(t) && !d.held_released(fire) {
                    d.relock(t, &mut out);
                }
                if d.held_deadline(fire) == Some(t) {
                    d.held_alarm = true;
                    out.push((t, Record::Alarm { door: d.cfg.id.clone(), alarm: AlarmKind::HeldOpen, active: true }));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CredentialKind;

    fn door(id: &str) -> Door {
        Door { id: id.into(), credentials: vec![CredentialKind::Card], policy: None, open_ms: 5000, max_open_ms: 10_000, held_open_ms: 30_000, exit_open_ms: 4000, fire_release: true, unit_pin: false }
    }

    fn relay(id: &str, on: bool) -> Record {
        Record::Relay { door: id.into(), on }
    }

    #[test]
    fn grant_pulses_relay_and_caps_open_time() {
        let mut c = DoorController::new(&[door("a")]);
        assert_eq!(c.grant("a", 1000, 60_000), vec![(1000, relay("a", true))]);
        assert!(c.advance(10_999).is_empty());
        assert_eq!(c.advance(20_000), vec![(11_000, relay("a", false))]);
    }

    #[test]
    fn closing_after_passage_relocks_early() {
        let mut c = DoorController::new(&[door("a")]);
        c.grant("a", 0, 5000);
        assert!(c.contact("a", 1000, true).is_empty());
        assert_eq!(c.contact("a", 2000, false), vec![(2000, relay("a", false))]);
        assert!(c.advance(10_000).is_empty());
    }

    #[test]
    fn opening_a_locked_door_is_forced_and_clears_on_close() {
        let mut c = DoorController::new(&[door("a")]);
        let raised = c.contact("a", 100_000, true);
        assert_eq!(raised, vec![(100_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::ForcedOpen, active: true })]);
        let cleared = c.contact("a", 101_000, false);
        assert_eq!(cleared, vec![(101_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::ForcedOpen, active: false })]);
    }

    #[test]
    fn door_left_open_raises_held_open_at_the_limit() {
        let mut c = DoorController::new(&[door("a")]);
        c.grant("a", 0, 5000);
        c.contact("a", 1000, true);
        let out = c.advance(40_000);
        assert_eq!(out, vec![(5000, relay("a", false)), (31_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::HeldOpen, active: true })]);
        let out = c.contact("a", 45_000, false);
        assert_eq!(out, vec![(45_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::HeldOpen, active: false })]);
    }

    #[test]
    fn fire_releases_doors_until_cleared_and_suppresses_forced_alarm() {
        let mut d2 = door("b");
        d2.fire_release = false;
        let mut c = DoorController::new(&[door("a"), d2]);
        let out = c.fire(0, true);
        assert_eq!(out[1], (0, relay("a", true)));
        assert_eq!(out.len(), 2, "door b is not a fire-release door");
        // Timers do not relock a released door, and opening it is not forced.
        assert!(c.advance(100_000).iter().all(|(_, r)| !matches!(r, Record::Relay { .. })));
        assert!(c.contact("a", 1000, true).is_empty());
        c.contact("a", 2000, false);
        assert!(c.relay_on("a"));
        let out = c.fire(200_000, false);
        assert!(out.contains(&(200_000, relay("a", false))));
    }

    #[test]
    fn exit_button_opens_for_exit_time() {
        let mut c = DoorController::new(&[door("a")]);
        let out = c.exit_button("a", 0);
        assert_eq!(out[0], (0, Record::Exit { door: "a".into(), open_ms: 4000 }));
        assert_eq!(c.advance(4000), vec![(4000, relay("a", false))]);
    }

    fn mode_rec(id: &str) -> Record {
        Record::DoorMode { door: id.into(), mode: DoorMode::Normal, until_ms: None, by: "host:expired".into() }
    }

    #[test]
    fn held_open_mode_keeps_the_relay_released_without_alarms_until_it_expires() {
        let mut c = DoorController::new(&[door("a")]);
        assert_eq!(c.set_mode("a", 0, DoorMode::HeldOpen, 100_000), vec![(0, relay("a", true))]);
        assert_eq!(c.mode("a"), DoorMode::HeldOpen);
        // People come and go; closing does not relock, and standing open is no alarm.
        assert!(c.contact("a", 1000, true).is_empty());
        assert!(c.contact("a", 2000, false).is_empty());
        assert!(c.contact("a", 3000, true).is_empty());
        assert!(c.advance(99_999).is_empty());
        // At expiry: back to normal, relocked; the open door counts as held open from then.
        assert_eq!(c.advance(100_000), vec![(100_000, mode_rec("a")), (100_000, relay("a", false))]);
        assert_eq!(c.mode("a"), DoorMode::Normal);
        let out = c.advance(200_000);
        assert_eq!(out, vec![(130_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::HeldOpen, active: true })]);
    }

    #[test]
    fn ending_a_hold_early_keeps_a_running_grant_and_fire_release() {
        let mut c = DoorController::new(&[door("a")]);
        c.set_mode("a", 0, DoorMode::HeldOpen, 100_000);
        c.grant("a", 10_000, 5000);
        // Back to normal at 12 s: the grant still has 3 s to run.
        assert!(c.set_mode("a", 12_000, DoorMode::Normal, 0).is_empty());
        assert_eq!(c.advance(20_000), vec![(15_000, relay("a", false))]);
        // Fire during a hold, hold ends: fire keeps the door released.
        c.set_mode("a", 30_000, DoorMode::HeldOpen, 40_000);
        c.fire(31_000, true);
        assert_eq!(c.advance(50_000), vec![(40_000, mode_rec("a"))]);
        assert!(c.relay_on("a"));
        // Fire clears while held open: the hold keeps it released.
        c.set_mode("a", 60_000, DoorMode::HeldOpen, 70_000);
        assert!(c.fire(61_000, false).iter().all(|(_, r)| !matches!(r, Record::Relay { .. })));
        assert!(c.relay_on("a"));
    }

    #[test]
    fn locking_relocks_a_released_door_but_never_against_fire_and_exit_still_opens() {
        let mut c = DoorController::new(&[door("a")]);
        c.grant("a", 0, 5000);
        assert_eq!(c.set_mode("a", 1000, DoorMode::Locked, 60_000), vec![(1000, relay("a", false))]);
        assert_eq!(c.mode("a"), DoorMode::Locked);
        // Egress is life safety: the exit button still releases a locked door.
        assert_eq!(c.exit_button("a", 2000)[1], (2000, relay("a", true)));
        c.advance(10_000);
        c.fire(20_000, true);
        assert!(c.set_mode("a", 21_000, DoorMode::Locked, 60_000).is_empty(), "fire release is never overridden");
        assert!(c.relay_on("a"));
        assert_eq!(c.advance(60_000), vec![(60_000, mode_rec("a"))]);
    }

    #[test]
    fn no_held_open_alarm_while_fire_release_holds_the_door_and_the_count_restarts_after() {
        let mut c = DoorController::new(&[door("a")]);
        c.fire(0, true);
        assert!(c.contact("a", 1000, true).is_empty());
        assert!(c.advance(600_000).iter().all(|(_, r)| !matches!(r, Record::Alarm { alarm: AlarmKind::HeldOpen, .. })), "the fire holds the door open");
        let out = c.fire(700_000, false);
        assert!(out.contains(&(700_000, relay("a", false))));
        // Still open after the fire: held-open counts from the end of the release.
        assert!(c.advance(729_999).is_empty());
        assert_eq!(c.advance(800_000), vec![(730_000, Record::Alarm { door: "a".into(), alarm: AlarmKind::HeldOpen, active: true })]);
    }

    #[test]
    fn timers_at_the_end_of_time_saturate_instead_of_wrapping() {
        let mut d = door("a");
        d.held_open_ms = u64::MAX;
        let mut c = DoorController::new(&[d]);
        let late = i64::MAX - 10;
        assert_eq!(c.grant("a", late, 5000), vec![(late, relay("a", true))]);
        assert!(c.contact("a", late, true).is_empty(), "an authorised opening, not forced");
        // Neither the relock nor the held-open alarm fires before its time (no wrap to the past).
        assert!(c.advance(late).is_empty());
        assert_eq!(c.next_deadline(), Some(i64::MAX));
    }
}
