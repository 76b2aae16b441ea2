//! A visitor's call to a resident, run by the host as an explicit state machine (named
//! states and transition functions, in the manner of libosdp's CP state machine):
//!
//! ```text
//! start ──> RingingIndoor ──timeout──> RingingPhone ──timeout──> RingingGuard ──timeout──> Unanswered
//!               │ answer                   │ answer                  │ answer
//!               └──────────────> Answered (the door opens once) / Declined
//! ```
//!
//! The phone and guard stages are skipped when the site turns them off (`[calls]`). An
//! answer is bound to one call by its id, accepted only from a stage the call has reached
//! and only while the call is live: a late, repeated or foreign answer is refused. Calls
//! live in memory: a restart ends every live call (nothing is left half-open). This module
//! is sans-IO: the gateway logs each [`Step`] and opens the door on an `Answered`.

use std::collections::BTreeMap;

/// The body of a call event as the gateway logs it and publishes it on
/// `gate/v1/{site}/{gateway}/events` (signed like every event): what an indoor station, the
/// property platform's phone bridge or a guard app reads to ring, and to show the call
/// history. Schema: `host/schema/call-event.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallEventDoc {
    /// Always `call`.
    pub kind: String,
    /// The call's id: what an answer names.
    pub call: String,
    pub door: String,
    /// The pseudonymous resident called (the platform maps it to the unit's station).
    pub subject: String,
    /// ringing-indoor, ringing-phone, ringing-guard, answered, declined, unanswered,
    /// refused (an answer that was not taken) or ended-by-restart.
    pub step: String,
    /// Who answered: indoor, phone or guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// For a ringing step: when this stage gives up (Unix ms, gateway time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who sent the answer (`remote:<key id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The JSON Schema of a call event's body, as published in `host/schema/call-event.json`.
pub fn schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(CallEventDoc)).unwrap_or_default() + "\n"
}

/// Where a live call is ringing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    RingingIndoor,
    RingingPhone,
    RingingGuard,
}

impl Stage {
    /// Who a stage rings, as answers name it: `indoor`, `phone`, `guard`.
    pub fn via(self) -> &'static str {
        match self {
            Stage::RingingIndoor => "indoor",
            Stage::RingingPhone => "phone",
            Stage::RingingGuard => "guard",
        }
    }

    fn of_via(via: &str) -> Option<Stage> {
        Some(match via {
            "indoor" => Stage::RingingIndoor,
            "phone" => Stage::RingingPhone,
            "guard" => Stage::RingingGuard,
            _ => return None,
        })
    }
}

/// The site's call timing (`[calls]`); a stage of 0 ms is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallTiming {
    pub indoor_ms: u64,
    pub phone_ms: u64,
    pub guard_ms: u64,
}

/// One live call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: String,
    pub door: String,
    /// The pseudonymous resident called.
    pub resident: String,
    pub stage: Stage,
    /// When the current stage gives up.
    pub deadline: i64,
}

/// What happened to a call, to log and publish: the stage names are stable (`ringing-indoor`,
/// `ringing-phone`, `ringing-guard`, `answered`, `declined`, `unanswered`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub call: String,
    pub door: String,
    pub resident: String,
    pub step: &'static str,
    /// Who answered (`indoor`, `phone`, `guard`), for answered and declined.
    pub via: Option<&'static str>,
    /// When the stage now ringing gives up (for ringing steps).
    pub until_ms: Option<i64>,
}

/// The live calls of a gateway.
#[derive(Debug)]
pub struct Calls {
    timing: CallTiming,
    live: BTreeMap<String, Call>,
}

impl Calls {
    pub fn new(timing: CallTiming) -> Calls {
        Calls { timing, live: BTreeMap::new() }
    }

    fn stage_ms(&self, s: Stage) -> u64 {
        match s {
            Stage::RingingIndoor => self.timing.indoor_ms,
            Stage::RingingPhone => self.timing.phone_ms,
            Stage::RingingGuard => self.timing.guard_ms,
        }
    }

    /// The first stage at or after `from` the site rings, if any.
    fn first_stage_from(&self, from: Stage) -> Option<Stage> {
        [Stage::RingingIndoor, Stage::RingingPhone, Stage::RingingGuard].into_iter().find(|s| *s >= from && self.stage_ms(*s) > 0)
    }

    fn ringing(&self, c: &Call) -> Step {
        let step = match c.stage {
            Stage::RingingIndoor => "ringing-indoor",
            Stage::RingingPhone => "ringing-phone",
            Stage::RingingGuard => "ringing-guard",
        };
        Step { call: c.id.clone(), door: c.door.clone(), resident: c.resident.clone(), step, via: None, until_ms: Some(c.deadline) }
    }

    fn ended(c: &Call, step: &'static str, via: Option<&'static str>) -> Step {
        Step { call: c.id.clone(), door: c.door.clone(), resident: c.resident.clone(), step, via, until_ms: None }
    }

    /// Transition `start`: a new call rings its first stage. A second call to the same
    /// resident at the same door while one is live is not started (the visitor pressed twice).
    pub fn start(&mut self, id: &str, door: &str, resident: &str, now: i64) -> Vec<Step> {
        if self.live.values().any(|c| c.door == door && c.resident == resident) {
            return Vec::new();
        }
        let Some(stage) = self.first_stage_from(Stage::RingingIndoor) else {
            let c = Call { id: id.into(), door: door.into(), resident: resident.into(), stage: Stage::RingingIndoor, deadline: now };
            return vec![Self::ended(&c, "unanswered", None)];
        };
        let c = Call { id: id.into(), door: door.into(), resident: resident.into(), stage, deadline: now.saturating_add(self.stage_ms(stage) as i64) };
        let step = self.ringing(&c);
        self.live.insert(c.id.clone(), c);
        vec![step]
    }

    /// Transition `timeout`: every call whose stage gave up by `now` rings the next stage,
    /// or ends unanswered.
    pub fn tick(&mut self, now: i64) -> Vec<Step> {
        let due: Vec<String> = self.live.values().filter(|c| c.deadline <= now).map(|c| c.id.clone()).collect();
        let mut out = Vec::new();
        for id in due {
            let Some(mut c) = self.live.remove(&id) else { continue };
            // Several stages may have passed while the gateway was busy: walk them in order.
            loop {
                let next = match c.stage {
                    Stage::RingingIndoor => self.first_stage_from(Stage::RingingPhone),
                    Stage::RingingPhone => self.first_stage_from(Stage::RingingGuard),
                    Stage::RingingGuard => None,
                };
                match next {
                    Some(s) => {
                        c.stage = s;
                        c.deadline = c.deadline.saturating_add(self.stage_ms(s) as i64);
                        out.push(self.ringing(&c));
                        if c.deadline > now {
                            self.live.insert(c.id.clone(), c);
                            break;
                        }
                    }
                    None => {
                        out.push(Self::ended(&c, "unanswered", None));
                        break;
                    }
                }
            }
        }
        out
    }

    /// Transition `answer`: `via` answered call `id` (open or decline). Refused, with the
    /// reason, for a call that is not live here, or a stage the call has not reached.
    /// Returns the step and, when the door is to open once, the live call it ended.
    pub fn answer(&mut self, id: &str, via: &str, open: bool, now: i64) -> Result<(Step, Option<Call>), String> {
        let Some(stage) = Stage::of_via(via) else {
            return Err(format!("answer by `{via}`: expected indoor, phone or guard"));
        };
        // A stage past its deadline has already moved on (or ended) at `now`.
        let _ = now;
        let Some(c) = self.live.get(id) else {
            return Err(format!("call {id} is not live at this gateway (it ended, or never rang here)"));
        };
        if stage > c.stage {
            return Err(format!("call {id} has not rung the {via} yet (it is ringing the {})", c.stage.via()));
        }
        let c = self.live.remove(id).expect("checked above");
        let via = stage.via();
        if open {
            Ok((Self::ended(&c, "answered", Some(via)), Some(c)))
        } else {
            Ok((Self::ended(&c, "declined", Some(via)), None))
        }
    }

    /// The live call at `door`, the newest first (trace answers name the door, not the id).
    pub fn live_at(&self, door: &str) -> Option<&Call> {
        self.live.values().filter(|c| c.door == door).max_by(|a, b| a.id.cmp(&b.id))
    }

    /// The live calls that fell through to the guard, oldest first.
    pub fn ringing_guard(&self) -> impl Iterator<Item = &Call> {
        self.live.values().filter(|c| c.stage == Stage::RingingGuard)
    }

    /// The live call with this id.
    pub fn live_at_id(&self, id: &str) -> Option<&Call> {
        self.live.get(id)
    }

    /// When the next stage gives up.
    pub fn next_deadline(&self) -> Option<i64> {
        self.live.values().map(|c| c.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: CallTiming = CallTiming { indoor_ms: 30_000, phone_ms: 45_000, guard_ms: 60_000 };

    fn steps(v: &[Step]) -> Vec<&str> {
        v.iter().map(|s| s.step).collect()
    }

    #[test]
    fn the_published_schema_is_current_and_describes_the_logged_record() {
        let want = schema();
        crate::assert_schema_checked_in("call-event.json", &want);
        let r = crate::event::Record::Call {
            call: "call-1".into(),
            door: "gate".into(),
            subject: "r-1".into(),
            step: "answered".into(),
            via: Some("phone".into()),
            until_ms: Some(1),
            reason: Some("x".into()),
            by: Some("remote:k".into()),
        };
        let doc: CallEventDoc = serde_json::from_value(serde_json::to_value(&r).unwrap()).expect("the record is what the schema says");
        assert_eq!((doc.kind.as_str(), doc.step.as_str()), ("call", "answered"));
    }

    #[test]
    fn an_unanswered_call_falls_through_indoor_phone_guard_then_ends() {
        let mut c = Calls::new(T);
        assert_eq!(steps(&c.start("c1", "gate", "r-1", 0)), ["ringing-indoor"]);
        assert!(c.tick(29_999).is_empty());
        assert_eq!(steps(&c.tick(30_000)), ["ringing-phone"]);
        assert_eq!(c.next_deadline(), Some(75_000));
        assert_eq!(steps(&c.tick(75_000)), ["ringing-guard"]);
        assert_eq!(steps(&c.tick(135_000)), ["unanswered"]);
        assert!(c.next_deadline().is_none());
        // Late: the call is over.
        assert!(c.answer("c1", "guard", true, 136_000).unwrap_err().contains("not live"));
    }

    #[test]
    fn answers_are_bound_to_the_call_and_the_stages_it_reached() {
        let mut c = Calls::new(T);
        c.start("c1", "gate", "r-1", 0);
        assert!(c.answer("c1", "phone", true, 1_000).unwrap_err().contains("has not rung the phone"));
        assert!(c.answer("c2", "indoor", true, 1_000).unwrap_err().contains("not live"));
        c.tick(30_000);
        // The indoor station may still answer once the phone rings too.
        let (s, opened) = c.answer("c1", "indoor", true, 31_000).unwrap();
        assert_eq!((s.step, s.via, opened.map(|o| o.door)), ("answered", Some("indoor"), Some("gate".to_string())));
        assert!(c.answer("c1", "indoor", true, 31_001).is_err(), "one answer per call");
        c.start("c3", "gate", "r-1", 40_000);
        let (s, opened) = c.answer("c3", "indoor", false, 41_000).unwrap();
        assert_eq!((s.step, opened), ("declined", None));
    }

    #[test]
    fn stages_the_site_turns_off_are_skipped_and_a_busy_gateway_walks_every_stage_in_order() {
        let mut c = Calls::new(CallTiming { indoor_ms: 10_000, phone_ms: 0, guard_ms: 5_000 });
        c.start("c1", "gate", "r-1", 0);
        assert_eq!(steps(&c.tick(10_000)), ["ringing-guard"]);
        let mut c = Calls::new(T);
        c.start("c1", "gate", "r-1", 0);
        assert_eq!(steps(&c.tick(500_000)), ["ringing-phone", "ringing-guard", "unanswered"]);
        // Pressing twice while a call is live starts no second call.
        c.start("c2", "gate", "r-1", 600_000);
        assert!(c.start("c3", "gate", "r-1", 600_001).is_empty());
    }
}
