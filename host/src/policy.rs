//! Deciding access: the door's policy plugin when it is healthy, the host's
//! fallback when it is not. Also hands decided events to integration plugins.
//!
//! Every plugin decision is checked before it is trusted: a grant longer than
//! the door allows, or a request for "another factor" that offers only face,
//! counts as a failure like a trap does. Repeated failures quarantine the plugin.

use crate::clock::Clock;
use crate::config::{Door, Fallback, Limits, SiteConfig, World};
use crate::credentials::Subject;
use crate::event::{CredentialKind, PluginStatus, Record, Role};
use crate::plugin::bindings::policy::gate::plugin::types::{self as wit, AccessEvent, Decision, Escalation, GateEvent};
use crate::plugin::{Effects, PluginFault, Runtime, Slot};
use crate::store::EventLog;
use std::collections::BTreeMap;

/// A decision the host has accepted, whoever made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Grant { open_ms: u32 },
    Deny { reason: String },
    NeedFactor { kinds: Vec<CredentialKind> },
    Escalate { target: String },
}

/// The outcome of asking for a decision.
pub struct Decided {
    pub verdict: Verdict,
    /// "plugin:<name>", "fallback:<why>".
    pub by: String,
    /// Plugin health records to log (failures, quarantine, recovery).
    pub health: Vec<Record>,
    /// kv writes of the deciding plugin to persist.
    pub kv: Option<(String, KvChanges)>,
}

/// kv writes of one call, by key (None = delete).
pub type KvChanges = BTreeMap<String, Option<Vec<u8>>>;

/// One configured plugin, its health (failures, quarantine) and its drop counts. In
/// replay the engine holds them all; in service each runs on a thread of its own.
pub struct PluginUnit {
    name: String,
    /// The world the site configured (known even when the component failed to load).
    world: World,
    slot: Option<Slot>,
    load_error: Option<String>,
    /// Being compiled off the door's path; the fallback serves until it is swapped in.
    compiling: bool,
    failures: u32,
    quarantined_until: Option<i64>,
}

impl PluginUnit {
    /// The plugin's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's configured world.
    pub fn world(&self) -> World {
        self.world
    }

    /// Asks this (policy) plugin to decide; the fallback decides when it is quarantined,
    /// not loaded, or its call fails. Failures count across instances and quarantine it.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(&mut self, rt: &Runtime, door: &Door, event: &AccessEvent, kind: CredentialKind, subject: Option<&Subject>, now: i64, fb: &Fallback, limits: &Limits) -> Decided {
        let name = self.name.clone();
        let mut health = Vec::new();
        if let Some(until) = self.quarantined_until {
            if now < until {
                return fallback_decision(fb, door, kind, subject, "quarantined", health);
            }
            self.quarantined_until = None;
        }
        let Some(slot) = self.slot.as_mut() else {
            let why = if self.compiling { "plugin-compiling" } else { "plugin-unavailable" };
            return fallback_decision(fb, door, kind, subject, why, health);
        };
        let result = slot.decide(rt, event).and_then(|(d, fx)| validate(door, d).map(|v| (v, fx)));
        match result {
            Ok((verdict, fx)) => {
                if self.failures >= limits.failures_before_quarantine {
                    health.push(Record::Plugin { plugin: name.clone(), status: PluginStatus::Restored, reason: "decided normally after quarantine".into() });
                }
                self.failures = 0;
                note_dropped_logs(&name, &fx);
                Decided { verdict, by: format!("plugin:{name}"), health, kv: Some((name, fx.kv_changes)) }
            }
            Err(fault) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(plugin = %name, door = %door.id, fault = %fault, failures = self.failures, "plugin call failed; fallback decides");
                health.push(Record::Plugin { plugin: name.clone(), status: PluginStatus::Failed, reason: fault.to_string() });
                if self.failures >= limits.failures_before_quarantine {
                    self.quarantined_until = Some(now.saturating_add(limits.quarantine_ms as i64));
                    slot.reset();
                    health.push(Record::Plugin {
                        plugin: name.clone(),
                        status: PluginStatus::Quarantined,
                        reason: format!("{} consecutive failures; retry in {} ms", self.failures, limits.quarantine_ms),
                    });
                }
                fallback_decision(fb, door, kind, subject, "plugin-failed", health)
            }
        }
    }

    /// Hands an event to this (integration) plugin: its publishes, or None when it did not
    /// run or failed, and health records. Alarms reach it even while it is quarantined (they
    /// are never skipped); a success on an alarm does not lift the quarantine.
    pub fn notify(&mut self, rt: &Runtime, event: &GateEvent, now: i64, limits: &Limits) -> (Option<Effects>, Vec<Record>) {
        let mut health = Vec::new();
        let alarm = matches!(event, GateEvent::Alarm(_));
        let Some(slot) = self.slot.as_mut() else { return (None, health) };
        if slot.world() != World::Integration {
            return (None, health);
        }
        let quarantined = self.quarantined_until.is_some_and(|u| now < u);
        if quarantined && !alarm {
            return (None, health);
        }
        if !quarantined {
            self.quarantined_until = None;
        }
        match slot.on_event(rt, event) {
            Ok(fx) => {
                if !quarantined {
                    self.failures = 0;
                }
                note_dropped_logs(&self.name, &fx);
                (Some(fx), health)
            }
            Err(fault) => {
                self.failures = self.failures.saturating_add(1);
                health.push(Record::Plugin { plugin: self.name.clone(), status: PluginStatus::Failed, reason: fault.to_string() });
                if self.failures >= limits.failures_before_quarantine && !quarantined {
                    self.quarantined_until = Some(now.saturating_add(limits.quarantine_ms as i64));
                    slot.reset();
                    health.push(Record::Plugin { plugin: self.name.clone(), status: PluginStatus::Quarantined, reason: format!("{} consecutive failures", self.failures) });
                }
                (None, health)
            }
        }
    }

    /// Puts `slot` in place of this plugin's and returns the one it replaces. Failure
    /// counts and quarantine start afresh. Refuses a slot of another world.
    pub fn swap(&mut self, slot: Slot) -> Result<Option<Slot>, String> {
        if slot.world() != self.world {
            return Err(format!("plugin `{}` is a {:?} plugin; the new one is {:?}", self.name, self.world, slot.world()));
        }
        self.failures = 0;
        self.quarantined_until = None;
        self.load_error = None;
        self.compiling = false;
        tracing::info!(plugin = %self.name, sha256 = %slot.sha256, "plugin swapped in");
        Ok(self.slot.replace(slot))
    }

    /// Readies an instance for the next call, off the decision path (not while quarantined:
    /// its instance was dropped on purpose). A failure shows at the next call.
    pub fn prepare(&mut self, rt: &Runtime, now: i64) {
        if self.quarantined_until.is_some_and(|u| now < u) {
            return;
        }
        if let Some(slot) = self.slot.as_mut() {
            if let Err(fault) = slot.prepare(rt) {
                tracing::debug!(plugin = %self.name, fault = %fault, "could not ready an instance ahead of the next call");
            }
        }
    }

    /// This plugin, deferred at start, will not come (its compile failed): the fallback keeps its doors.
    pub fn compile_failed(&mut self, error: &str) {
        self.compiling = false;
        self.load_error = Some(error.to_string());
    }

    /// Direct access to the slot (benchmarks).
    pub fn slot_mut(&mut self) -> Option<&mut Slot> {
        self.slot.as_mut()
    }
}

/// Counts what an integration plugin never handled and reports it as a health record at
/// most once per second of gateway time (so a flood cannot flood the event log too).
#[derive(Debug, Default)]
pub struct DropCount {
    /// Events dropped because the plugin's queue was full.
    pub queue_full: u64,
    /// Events dropped because they waited longer than `limits.max_event_wait_ms`.
    pub too_old: u64,
    /// Publishes the rate limit refused.
    pub rate_limited: u64,
    last_report_ms: Option<i64>,
}

impl DropCount {
    /// The record reporting the drops counted since the last report, if any and due at `now`.
    pub fn report(&mut self, plugin: &str, now: i64) -> Option<Record> {
        if self.queue_full + self.too_old + self.rate_limited == 0 || self.last_report_ms.is_some_and(|t| now.saturating_sub(t) < 1000) {
            return None;
        }
        self.last_report_ms = Some(now);
        let (full, old, rate) = (std::mem::take(&mut self.queue_full), std::mem::take(&mut self.too_old), std::mem::take(&mut self.rate_limited));
        tracing::warn!(plugin, queue_full = full, too_old = old, rate_limited = rate, "integration plugin: events or publishes dropped (alarms never are)");
        let reason = format!("{full} events dropped (queue full), {old} dropped (waited past limits.max_event_wait_ms), {rate} publishes refused by limits.publish_per_sec; alarms are never dropped");
        Some(Record::Plugin { plugin: plugin.to_string(), status: PluginStatus::Dropped, reason })
    }
}

/// The site's plugins and the rules for trusting them.
pub struct PolicyEngine {
    rt: Runtime,
    plugins: BTreeMap<String, PluginUnit>,
    drops: BTreeMap<String, DropCount>,
    fallback: Fallback,
    limits: Limits,
}

/// What the policy threads of the service are built from (see [`PolicyEngine::into_parts`]).
pub struct EngineParts {
    pub rt: Runtime,
    pub plugins: Vec<PluginUnit>,
    pub fallback: Fallback,
    pub limits: Limits,
}

impl PolicyEngine {
    /// Loads every configured plugin. One that fails to load is reported and its
    /// doors are served by the fallback: a broken plugin never keeps the gate shut.
    pub fn new(rt: Runtime, cfg: &SiteConfig, clock: &Clock, log: &EventLog) -> (PolicyEngine, Vec<String>) {
        Self::new_deferring(rt, cfg, clock, log, &Default::default())
    }

    /// Like [`PolicyEngine::new`], but the plugins named in `deferred` are not loaded: they
    /// are being compiled elsewhere and swapped in when ready ([`PolicyEngine::swap`]);
    /// until then the fallback serves their doors (`fallback:plugin-compiling`).
    pub fn new_deferring(rt: Runtime, cfg: &SiteConfig, clock: &Clock, log: &EventLog, deferred: &std::collections::BTreeSet<String>) -> (PolicyEngine, Vec<String>) {
        let mut plugins = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, pc) in &cfg.plugins {
            if deferred.contains(name) {
                plugins.insert(name.clone(), PluginUnit { name: name.clone(), world: pc.world, slot: None, load_error: None, compiling: true, failures: 0, quarantined_until: None });
                continue;
            }
            let kv = log.kv_load(name).unwrap_or_default();
            let slot = rt.load(&pc.path, &cfg.limits).and_then(|loaded| Slot::new(&rt, pc, &loaded, &cfg.limits, clock.clone(), kv));
            let (slot, load_error) = match slot {
                Ok(s) => (Some(s), None),
                Err(e) => {
                    tracing::error!(plugin = %name, error = %e, "plugin not loaded; its doors use the fallback policy");
                    problems.push(format!("plugin `{name}`: {e}"));
                    (None, Some(e.to_string()))
                }
            };
            plugins.insert(name.clone(), PluginUnit { name: name.clone(), world: pc.world, slot, load_error, compiling: false, failures: 0, quarantined_until: None });
        }
        (PolicyEngine { rt, plugins, drops: BTreeMap::new(), fallback: cfg.fallback.clone(), limits: cfg.limits.clone() }, problems)
    }

    /// The runtime the plugins run in.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Splits the engine into its plugins, for one thread each (service).
    pub fn into_parts(self) -> EngineParts {
        EngineParts { rt: self.rt, plugins: self.plugins.into_values().collect(), fallback: self.fallback, limits: self.limits }
    }

    /// Decides an access event for `door`.
    pub fn decide(&mut self, door: &Door, event: &AccessEvent, kind: CredentialKind, subject: Option<&Subject>, now: i64) -> Decided {
        let Some(name) = door.policy.as_deref() else {
            return self.fallback(door, kind, subject, "no-policy", Vec::new());
        };
        match self.plugins.get_mut(name) {
            Some(unit) => unit.decide(&self.rt, door, event, kind, subject, now, &self.fallback, &self.limits),
            None => fallback_decision(&self.fallback, door, kind, subject, "plugin-unavailable", Vec::new()),
        }
    }

    /// The host's own policy: known subjects of the configured roles pass with
    /// the configured non-biometric credentials; guards may always release.
    fn fallback(&self, door: &Door, kind: CredentialKind, subject: Option<&Subject>, why: &str, health: Vec<Record>) -> Decided {
        fallback_decision(&self.fallback, door, kind, subject, why, health)
    }

    /// Hands an event to every integration plugin; returns their publishes and health records.
    pub fn notify(&mut self, event: &GateEvent, now: i64) -> (Vec<(String, Effects)>, Vec<Record>) {
        let mut out = Vec::new();
        let mut health = Vec::new();
        for (name, unit) in self.plugins.iter_mut() {
            if unit.world() != World::Integration {
                continue;
            }
            let (fx, h) = unit.notify(&self.rt, event, now, &self.limits);
            health.extend(h);
            if let Some(fx) = fx {
                let drops = self.drops.entry(name.clone()).or_default();
                drops.rate_limited = drops.rate_limited.saturating_add(fx.publishes_refused);
                out.push((name.clone(), fx));
            }
            if let Some(r) = self.drops.get_mut(name).and_then(|d| d.report(name, now)) {
                health.push(r);
            }
        }
        (out, health)
    }

    /// Puts `slot` in place of the plugin `name` (between two events: the caller owns
    /// the engine) and returns the one it replaces. Failure counts and quarantine start
    /// afresh. Refuses a slot of another world than the configured plugin's.
    pub fn swap(&mut self, name: &str, slot: Slot) -> Result<Option<Slot>, String> {
        let Some(unit) = self.plugins.get_mut(name) else {
            return Err(format!("plugin `{name}` is not configured at this site"));
        };
        unit.swap(slot)
    }

    /// Marks a deferred plugin as not coming (its compile failed): the fallback keeps its doors.
    pub fn compile_failed(&mut self, name: &str, error: &str) {
        if let Some(unit) = self.plugins.get_mut(name) {
            unit.compile_failed(error);
        }
    }

    /// Plugins that failed to load, with why (for `gate run`'s start-up report).
    pub fn load_errors(&self) -> Vec<(String, String)> {
        self.plugins.iter().filter_map(|(n, m)| m.load_error.clone().map(|e| (n.clone(), e))).collect()
    }

    /// Direct access to a slot (benchmarks).
    pub fn slot_mut(&mut self, name: &str) -> Option<&mut Slot> {
        self.plugins.get_mut(name).and_then(|m| m.slot.as_mut())
    }
}

fn note_dropped_logs(plugin: &str, fx: &Effects) {
    if fx.logs_dropped > 0 {
        tracing::warn!(plugin, dropped = fx.logs_dropped, "plugin log lines dropped by the rate limit");
    }
}

/// The host's own policy, used whenever a door's plugin cannot decide.
pub fn fallback_decision(fb: &Fallback, door: &Door, kind: CredentialKind, subject: Option<&Subject>, why: &str, health: Vec<Record>) -> Decided {
    let verdict = match subject {
        Some(s) if kind == CredentialKind::GuardRelease && s.role == Role::Guard => Verdict::Grant { open_ms: fb.open_ms.min(door.max_open_ms) },
        Some(s) if fb.credentials.contains(&kind) && fb.roles.contains(&s.role) => Verdict::Grant { open_ms: fb.open_ms.min(door.max_open_ms) },
        Some(_) => Verdict::Deny { reason: format!("{kind} not honoured while the site policy is unavailable") },
        None => Verdict::Deny { reason: "unknown credential".into() },
    };
    Decided { verdict, by: format!("fallback:{why}"), health, kv: None }
}

/// Longest need-factor list a plugin may return: one entry per credential kind.
pub const MAX_NEED_FACTOR_KINDS: usize = 8;

/// Checks a plugin's decision against what the host allows at this door.
pub fn validate(door: &Door, d: Decision) -> Result<Verdict, PluginFault> {
    match d {
        Decision::Grant(ms) => {
            if ms == 0 || ms > door.max_open_ms {
                return Err(PluginFault::Invalid(format!("grant of {ms} ms at door `{}` (allowed 1..={})", door.id, door.max_open_ms)));
            }
            Ok(Verdict::Grant { open_ms: ms })
        }
        Decision::Deny(reason) => {
            let clean = crate::plugin::text::sanitize(&reason, 120);
            Ok(Verdict::Deny { reason: if clean.is_empty() { "denied".into() } else { clean } })
        }
        Decision::NeedFactor(kinds) => {
            // There are eight kinds; a longer list is nonsense, not a request.
            if kinds.len() > MAX_NEED_FACTOR_KINDS {
                return Err(PluginFault::Invalid(format!("need-factor lists {} kinds (at most {MAX_NEED_FACTOR_KINDS})", kinds.len())));
            }
            let mut unique: Vec<CredentialKind> = Vec::with_capacity(kinds.len());
            for k in kinds.into_iter().map(from_wit_kind) {
                if !unique.contains(&k) {
                    unique.push(k);
                }
            }
            let kinds = unique;
            // Asking for "face, and only face" would make face the only way in.
            if !kinds.iter().any(|k| !k.is_biometric() && door.accepts(*k)) {
                return Err(PluginFault::Invalid(format!("need-factor {:?} offers no non-biometric credential that door `{}` accepts", kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(), door.id)));
            }
            Ok(Verdict::NeedFactor { kinds })
        }
        Decision::Escalate(Escalation::CallGuard) => Ok(Verdict::Escalate { target: "call-guard".into() }),
        Decision::Escalate(Escalation::CallResident(id)) => {
            if id.is_empty() || id.len() > 64 || id.chars().any(crate::plugin::text::is_unsafe_char) {
                return Err(PluginFault::Invalid("call-resident with an invalid subject id".into()));
            }
            Ok(Verdict::Escalate { target: format!("call-resident:{id}") })
        }
    }
}

/// Host credential kind → contract kind.
pub fn to_wit_kind(k: CredentialKind) -> wit::CredentialKind {
    match k {
        CredentialKind::Face => wit::CredentialKind::Face,
        CredentialKind::Card => wit::CredentialKind::Card,
        CredentialKind::Pin => wit::CredentialKind::Pin,
        CredentialKind::Nfc => wit::CredentialKind::Nfc,
        CredentialKind::Qr => wit::CredentialKind::Qr,
        CredentialKind::Plate => wit::CredentialKind::Plate,
        CredentialKind::GuardRelease => wit::CredentialKind::GuardRelease,
        CredentialKind::Intercom => wit::CredentialKind::Intercom,
    }
}

/// Contract credential kind → host kind.
pub fn from_wit_kind(k: wit::CredentialKind) -> CredentialKind {
    match k {
        wit::CredentialKind::Face => CredentialKind::Face,
        wit::CredentialKind::Card => CredentialKind::Card,
        wit::CredentialKind::Pin => CredentialKind::Pin,
        wit::CredentialKind::Nfc => CredentialKind::Nfc,
        wit::CredentialKind::Qr => CredentialKind::Qr,
        wit::CredentialKind::Plate => CredentialKind::Plate,
        wit::CredentialKind::GuardRelease => CredentialKind::GuardRelease,
        wit::CredentialKind::Intercom => CredentialKind::Intercom,
    }
}

/// Host role → contract role.
pub fn to_wit_role(r: Role) -> wit::Role {
    match r {
        Role::Resident => wit::Role::Resident,
        Role::Staff => wit::Role::Staff,
        Role::Visitor => wit::Role::Visitor,
        Role::Guard => wit::Role::Guard,
        Role::Contractor => wit::Role::Contractor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door() -> Door {
        Door {
            id: "d".into(),
            credentials: vec![CredentialKind::Face, CredentialKind::Card],
            policy: None,
            open_ms: 5000,
            max_open_ms: 20_000,
            held_open_ms: 30_000,
            exit_open_ms: 5000,
            fire_release: true,
            unit_pin: false,
        }
    }

    #[test]
    fn grants_beyond_the_door_maximum_are_invalid() {
        assert!(matches!(validate(&door(), Decision::Grant(u32::MAX)), Err(PluginFault::Invalid(_))));
        assert!(matches!(validate(&door(), Decision::Grant(0)), Err(PluginFault::Invalid(_))));
        assert_eq!(validate(&door(), Decision::Grant(8000)), Ok(Verdict::Grant { open_ms: 8000 }));
    }

    #[test]
    fn asking_for_face_only_is_refused() {
        let face_only = Decision::NeedFactor(vec![wit::CredentialKind::Face]);
        assert!(matches!(validate(&door(), face_only), Err(PluginFault::Invalid(_))));
        assert!(matches!(validate(&door(), Decision::NeedFactor(vec![])), Err(PluginFault::Invalid(_))));
        // A factor the door does not accept does not count either.
        assert!(matches!(validate(&door(), Decision::NeedFactor(vec![wit::CredentialKind::Pin])), Err(PluginFault::Invalid(_))));
        let ok = validate(&door(), Decision::NeedFactor(vec![wit::CredentialKind::Face, wit::CredentialKind::Card]));
        assert_eq!(ok, Ok(Verdict::NeedFactor { kinds: vec![CredentialKind::Face, CredentialKind::Card] }));
    }

    #[test]
    fn need_factor_lists_are_bounded_and_deduplicated() {
        let many = vec![wit::CredentialKind::Card; MAX_NEED_FACTOR_KINDS + 1];
        assert!(matches!(validate(&door(), Decision::NeedFactor(many)), Err(PluginFault::Invalid(_))));
        let twice = vec![wit::CredentialKind::Card, wit::CredentialKind::Pin, wit::CredentialKind::Card];
        let Ok(Verdict::NeedFactor { kinds }) = validate(&door(), Decision::NeedFactor(twice)) else { panic!("refused") };
        assert_eq!(kinds, vec![CredentialKind::Card, CredentialKind::Pin]);
    }

    #[test]
    fn deny_reasons_are_cleaned_and_bounded() {
        let v = validate(&door(), Decision::Deny(format!("bad\n{}", "x".repeat(500)))).unwrap();
        let Verdict::Deny { reason } = v else { panic!("not a deny") };
        assert!(!reason.contains('\n'));
        assert_eq!(reason.chars().count(), 120);
    }
}
