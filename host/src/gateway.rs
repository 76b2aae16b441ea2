//! The gateway: one input at a time through resolve → decide → log → door →
//! integrations. The same code serves the live gate, the demo and replay; only
//! the clock and where inputs come from differ.

use crate::clock::Clock;
use crate::config::SiteConfig;
use crate::credentials::{Directory, Subject};
use crate::door::DoorController;
use crate::event::{CredentialKind, Direction, DoorMode, FaceBand, IgnoreReason, Input, Liveness, Outcome, Record};
use crate::face::{FaceMatcher, FaceThread, FrameJob, FrameResult};
use crate::plugin::bindings::policy::gate::plugin::types as wit;
use crate::plugin::caps::clock::timestamp;
use crate::plugin::Runtime;
use crate::policy::{fallback_decision, to_wit_kind, to_wit_role, Decided, PolicyEngine, Verdict};
use crate::store::{EventLog, StoreError};
use crate::worker::{AccessRequest, Done, PolicyWorker};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// A failure that stops the gateway from acting on an input.
#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A record and the gateway time it happened at.
pub type Timed = (i64, Record);

/// What an operator command did: its records and a result, or why it was refused
/// (a refusal goes back in the reply; it is not a gateway failure).
pub type Remote<T> = Result<(Vec<Timed>, T), String>;

#[derive(Clone, Debug)]
struct Pending {
    prior: Vec<wit::PriorFactor>,
    expires_at: i64,
}

/// Where decisions are made: inline (replay, deterministic) or on the policy thread (service).
enum Policy {
    Inline(PolicyEngine),
    Worker(PolicyWorker),
    /// Between the two, for an instant.
    Moving,
}

/// The whole gateway state.
pub struct Gateway {
    cfg: SiteConfig,
    clock: Clock,
    dir: Directory,
    policy: Policy,
    doors: DoorController,
    log: EventLog,
    pending: HashMap<String, Pending>,
    recent: HashMap<(String, [u8; 16]), i64>,
    /// The on-device face matcher (off when not configured or its models are missing).
    face: FaceMatcher,
    /// The synced directory's version (0 when the directory is a subjects file), shared
    /// with the fleet agent for the status it publishes.
    directory_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Visitors' calls to residents that are ringing now.
    calls: crate::call::Calls,
    /// In service, the matcher's own thread (then `face` is off here).
    face_thread: Option<FaceThread>,
    /// The audit trail of access-rights changes (service only; replay keeps none), and the
    /// device key that signs its checkpoints.
    audit: Option<crate::audit::AuditLog>,
    audit_key: Option<ed25519_dalek::SigningKey>,
    /// A checkpoint signed since the service loop last asked (it publishes it).
    new_checkpoint: Option<crate::audit::Checkpoint>,
    /// Templates erased at start (event id, subject, why), audited once the trail is set.
    erased_at_start: Vec<(String, String, String)>,
    /// Retention: when the next purge is due and what the one under way removed so far.
    purge: Purge,
    /// A turn of the service loop is open: its records share one transaction.
    in_turn: bool,
    /// Events for integration plugins held until the turn's records are durable, so no
    /// plugin publishes what a power cut could still take back.
    held: Vec<(wit::GateEvent, i64)>,
}

/// The state of the retention purge, which runs in small batches between inputs.
#[derive(Default)]
struct Purge {
    next_at: Option<i64>,
    removed: u64,
}

/// How often retention is enforced (gateway time), and how many rows one batch removes.
const PURGE_EVERY_MS: i64 = 3_600_000;
const PURGE_BATCH: u32 = 2_000;
const DAY_MS: i64 = 86_400_000;

impl Gateway {
    /// Builds a gateway; returns it with any plugin load problems (served by the fallback).
    pub fn new(cfg: SiteConfig, clock: Clock, rt: Runtime, log: EventLog) -> Result<(Gateway, Vec<String>), String> {
        Self::new_deferring(cfg, clock, rt, log, &Default::default())
    }

    /// Like [`Gateway::new`], with the plugins in `deferred` left to be compiled off the
    /// door's path and swapped in later (see `serve.rs`); the fallback serves until then.
    pub fn new_deferring(cfg: SiteConfig, clock: Clock, rt: Runtime, mut log: EventLog, deferred: &std::collections::BTreeSet<String>) -> Result<(Gateway, Vec<String>), String> {
        let mut dir = crate::directory::load_for(&cfg).map_err(|e| format!("{}: {e}", cfg.path.display()))?;
        let cfg_calls = cfg.calls;
        let synced_version = dir.stored_version();
        // Revocations and unit PINs set by operator commands outlive restarts.
        for r in log.revoked().map_err(|e| e.to_string())? {
            dir.revoke(&r);
        }
        // Revocations made with old unkeyed references move to the keyed form once a
        // site reference key is configured (the directory can compute both).
        let legacy = dir.legacy_revocations();
        for (old, new) in &legacy {
            log.rename_revoked(old, new).map_err(|e| e.to_string())?;
            dir.reinstate(old);
            dir.revoke(new);
        }
        if !legacy.is_empty() {
            tracing::info!(count = legacy.len(), "revocations moved to keyed credential references");
        }
        if !dir.has_ref_key() && cfg.fleet.is_some() {
            tracing::warn!("[fleet] has no `ref_key`: credential references are unkeyed, and a PIN or card number can be found from one by trying every value");
        }
        for (door, hash) in log.unit_pins().map_err(|e| e.to_string())? {
            if cfg.door(&door).is_some_and(|d| d.unit_pin) {
                dir.set_unit_pin(&door, &hash);
            }
        }
        // Only a live gateway erases templates: a replay or simulation (perhaps against another
        // subject directory) never touches the store; orphans are just not matched there.
        let erase = rt.mode() == crate::plugin::ExecMode::Live;
        let (policy, problems) = PolicyEngine::new_deferring(rt, &cfg, &clock, &log, deferred);
        let doors = DoorController::new(&cfg.doors);
        let policy = Policy::Inline(policy);
        let mut face = FaceMatcher::open(&cfg.face);
        // Templates follow the directory (the one loaded, from the subjects file or the
        // imported database): orphans (and unused ones) are erased and audited.
        let known = |id: &str| dir.subject(id).is_some();
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let rules = if erase { cfg.face.clone() } else { crate::config::FaceBands { erase_orphans: false, unused_days: 0, ..cfg.face.clone() } };
        let mut erased_at_start = Vec::new();
        for (subject, reason) in face.follow_directory(&known, &rules, wall) {
            let id = log.append(clock.now_ms(), &Record::FaceErased { subject: subject.clone(), reason: reason.clone() }).map_err(|e| e.to_string())?;
            erased_at_start.push((id, subject, reason));
        }
        Ok((
            Gateway {
                cfg,
                clock,
                dir,
                policy,
                doors,
                log,
                pending: HashMap::new(),
                recent: HashMap::new(),
                face,
                directory_version: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(synced_version)),
                calls: crate::call::Calls::new(crate::call::CallTiming { indoor_ms: cfg_calls.indoor_ms, phone_ms: cfg_calls.phone_ms, guard_ms: cfg_calls.guard_ms }),
                face_thread: None,
                audit: None,
                audit_key: None,
                new_checkpoint: None,
                purge: Purge::default(),
                in_turn: false,
                held: Vec::new(),
                erased_at_start,
            },
            problems,
        ))
    }

    /// From now on, every change of access rights the gateway logs (operator door modes,
    /// revocations, unit PINs, remote openings) is also appended to this audit trail.
    /// `key` (the device key) signs a checkpoint of the chain head every hour and at
    /// [`Gateway::audit_checkpoint`].
    /// Templates the start erased (orphans, unused) are audited here, once the trail is open.
    pub fn set_audit(&mut self, audit: crate::audit::AuditLog, key: Option<ed25519_dalek::SigningKey>) {
        self.audit = Some(audit);
        // The device key also signs the passes of walk-in visitors the guard registers.
        if let Some(k) = &key {
            self.dir.trust_issuer(k.verifying_key());
        }
        self.audit_key = key;
        let now = self.clock.now_ms();
        for (id, subject, reason) in std::mem::take(&mut self.erased_at_start) {
            let detail = serde_json::json!({"why": reason, "event": id});
            if let Some(Err(e)) = self.audit.as_mut().map(|a| a.append(now, "host", crate::audit::Action::TemplateErased, &subject, detail)) {
                tracing::error!(error = %e, "the audit trail could not record a template erased at start");
            }
        }
    }

    /// The checkpoint signed since the last call, for the fleet link to publish.
    pub fn take_new_checkpoint(&mut self) -> Option<crate::audit::Checkpoint> {
        self.new_checkpoint.take()
    }

    /// Signs the audit chain's head with the device key now (at stop, and hourly from
    /// housekeeping); None without an audit trail or a key, or if it could not be stored.
    pub fn audit_checkpoint(&mut self, now: i64) -> Option<crate::audit::Checkpoint> {
        let (audit, key) = (self.audit.as_mut()?, self.audit_key.as_ref()?);
        match audit.checkpoint(key, &self.cfg.site.id, &self.cfg.site.gateway, now) {
            Ok(cp) => {
                self.new_checkpoint = Some(cp.clone());
                Some(cp)
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit checkpoint could not be stored");
                None
            }
        }
    }

    /// The audit trail, when the gateway keeps one.
    pub fn audit_mut(&mut self) -> Option<&mut crate::audit::AuditLog> {
        self.audit.as_mut()
    }

    /// The face matcher: whether it is on, and why not.
    pub fn face(&self) -> &FaceMatcher {
        &self.face
    }

    pub fn config(&self) -> &SiteConfig {
        &self.cfg
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Starts one turn of the service loop: every record until [`Gateway::end_turn`] is
    /// committed at once (one fsync), before any relay follows them or any integration
    /// plugin hears of them. Inside replay's own batch it changes nothing.
    pub fn begin_turn(&mut self) -> Result<(), GatewayError> {
        self.in_turn = self.log.begin_turn()?;
        Ok(())
    }

    /// Ends the turn: commits its records, then hands the held events to the integration
    /// plugins. The caller moves relays and publishes only after this returns.
    pub fn end_turn(&mut self) -> Result<(), GatewayError> {
        if std::mem::take(&mut self.in_turn) {
            self.log.commit_batch()?;
        }
        let held = std::mem::take(&mut self.held);
        if let Policy::Worker(w) = &mut self.policy {
            for (ev, at) in held {
                w.notify(ev, at);
            }
        }
        Ok(())
    }

    /// Drops a turn that failed half-way: its records were never acted on (no relay followed
    /// them, nobody heard of them), so after a failure the stop logs into a clean log.
    pub fn abort_turn(&mut self) {
        if std::mem::take(&mut self.in_turn) {
            if let Err(e) = self.log.rollback_turn() {
                tracing::error!(error = %e, "the failed turn's records could not be dropped");
            }
        }
        self.held.clear();
    }

    pub fn log_mut(&mut self) -> &mut EventLog {
        &mut self.log
    }

    /// Moves each plugin onto a thread of its own, so the door never waits for a plugin
    /// and no plugin waits for another; the threads ring `bell` whenever they finish something.
    pub fn spawn_policy_worker(&mut self, bell: crate::service::Bell) -> std::io::Result<()> {
        if let Policy::Inline(engine) = std::mem::replace(&mut self.policy, Policy::Moving) {
            self.policy = Policy::Worker(PolicyWorker::spawn(engine, bell, self.clock.clone())?);
        }
        Ok(())
    }

    /// Moves the face matcher onto its own thread (service mode), so a frame never
    /// delays the door; results come back through [`Gateway::poll_faces`]. Read
    /// [`Gateway::face`] before: afterwards it describes the gateway thread's (off) matcher.
    pub fn spawn_face_thread(&mut self, bell: crate::service::Bell) -> std::io::Result<()> {
        if self.face.is_on() && self.face_thread.is_none() {
            let m = std::mem::replace(&mut self.face, FaceMatcher::off("running on the face thread"));
            self.face_thread = Some(FaceThread::spawn(m, bell)?);
        }
        Ok(())
    }

    /// Camera frames still being matched on the face thread.
    pub fn faces_in_flight(&self) -> usize {
        self.face_thread.as_ref().map_or(0, FaceThread::in_flight)
    }

    /// Acts on the match results the face thread finished, like any credential.
    pub fn poll_faces(&mut self) -> Result<Vec<Timed>, GatewayError> {
        let mut out = Vec::new();
        while let Some((job, result)) = self.face_thread.as_mut().and_then(FaceThread::take) {
            let now = self.clock.now_ms().max(job.at);
            match result {
                FrameResult::Credential(face) => self.access(now, &face, job.captured_at, &mut out)?,
                FrameResult::Ignored(reason) => {
                    self.emit(now, Record::Ignored { door: job.door, credential: Some(CredentialKind::Face), reason }, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// Swaps plugins on the policy thread (service mode only; None before `spawn_policy_worker`).
    pub fn plugin_control(&self) -> Option<crate::worker::PluginControl> {
        match &self.policy {
            Policy::Worker(w) => Some(w.control()),
            _ => None,
        }
    }

    /// Releases `door` once on an authorised remote command: logged (with who sent it)
    /// before the relay moves, like any grant. Fire release and alarms stay the door
    /// controller's; the command is one-shot (the fleet layer refuses replays).
    pub fn remote_open(&mut self, now: i64, door: &str, command: &str, sender: &str) -> Result<Remote<()>, GatewayError> {
        self.release_once(now, door, format!("remote command {command} from {sender}"), format!("remote:{sender}"))
    }

    /// Releases `door` once for a person who decided it (an operator, a guard): a granted
    /// guard-release decision with `reason` and `by`, logged before the relay moves.
    fn release_once(&mut self, now: i64, door: &str, reason: String, by: String) -> Result<Remote<()>, GatewayError> {
        let Some(d) = self.cfg.door(door).cloned() else {
            return Ok(Err(format!("this gateway has no door `{door}`")));
        };
        let mut out = self.advance(now)?;
        let record = Record::Decision {
            door: d.id.clone(),
            direction: Direction::Entry,
            credential: CredentialKind::GuardRelease,
            subject: None,
            outcome: Outcome::Grant,
            open_ms: Some(d.open_ms),
            reason: Some(reason),
            factors: Vec::new(),
            by,
        };
        self.emit(now, record, &mut out)?;
        for (t, r) in self.doors.grant(&d.id, now, d.open_ms) {
            self.emit(t, r, &mut out)?;
        }
        Ok(Ok((out, ())))
    }

    /// Puts `door` in `mode` for `for_ms` on an authorised command (normal ends a mode
    /// early). Logged with the sender before the relay moves; fire release stays on top.
    pub fn remote_set_mode(&mut self, now: i64, door: &str, mode: DoorMode, for_ms: u64, sender: &str) -> Result<Remote<Option<i64>>, GatewayError> {
        if self.cfg.door(door).is_none() {
            return Ok(Err(format!("this gateway has no door `{door}`")));
        }
        if mode != DoorMode::Normal && !(1..=MAX_MODE_MS).contains(&for_ms) {
            return Ok(Err(format!("a {} mode needs a duration between 1 ms and {} h", mode.as_str(), MAX_MODE_MS / 3_600_000)));
        }
        let mut out = self.advance(now)?;
        let until = (mode != DoorMode::Normal).then(|| now.saturating_add(i64::try_from(for_ms).unwrap_or(i64::MAX)));
        self.emit(now, Record::DoorMode { door: door.to_string(), mode, until_ms: until, by: format!("remote:{sender}") }, &mut out)?;
        for (t, r) in self.doors.set_mode(door, now, mode, until.unwrap_or(now)) {
            self.emit(t, r, &mut out)?;
        }
        Ok(Ok((out, until)))
    }

    /// Restores operator door modes still in force after a restart (service start).
    pub fn restore_door_modes(&mut self, now: i64) -> Result<Vec<Timed>, GatewayError> {
        let mut out = Vec::new();
        for (door, mode, until) in self.log.door_modes()? {
            if self.cfg.door(&door).is_none() {
                continue;
            }
            if until <= now {
                self.emit(now, Record::DoorMode { door, mode: DoorMode::Normal, until_ms: None, by: "host:expired".into() }, &mut out)?;
                continue;
            }
            self.emit(now, Record::DoorMode { door: door.clone(), mode, until_ms: Some(until), by: "host:restored".into() }, &mut out)?;
            for (t, r) in self.doors.set_mode(&door, now, mode, until) {
                self.emit(t, r, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Revokes a credential reference (`card:…`, `pin:…`, `nfc:…`, `plate:…`, `subject:<id>`)
    /// on an authorised command; durable before it is answered. Returns the holder, if known.
    pub fn remote_revoke(&mut self, now: i64, reference: &str, reason: &str, sender: &str) -> Result<Remote<Option<String>>, GatewayError> {
        if !crate::credentials::is_reference(reference) {
            return Ok(Err(format!("`{reference}` is not a credential reference (card:, pin:, nfc: or plate: and 24 hex digits from `gate credential-ref`, subject:<id>, or pass:<visitor pass id>)")));
        }
        let holder = self.dir.holder_of(reference).map(String::from);
        let mut out = self.advance(now)?;
        let record = Record::Revoked { credential: reference.to_string(), holder: holder.clone(), reason: reason.to_string(), by: format!("remote:{sender}") };
        self.emit(now, record, &mut out)?;
        self.dir.revoke(reference);
        Ok(Ok((out, holder)))
    }

    /// Undoes a revocation on an authorised command; an error if the reference is not revoked.
    pub fn remote_reinstate(&mut self, now: i64, reference: &str, reason: &str, sender: &str) -> Result<Remote<Option<String>>, GatewayError> {
        if !self.dir.is_revoked(reference) {
            return Ok(Err(format!("`{reference}` is not revoked at this gateway")));
        }
        let holder = self.dir.holder_of(reference).map(String::from);
        let mut out = self.advance(now)?;
        let record = Record::Reinstated { credential: reference.to_string(), holder: holder.clone(), reason: reason.to_string(), by: format!("remote:{sender}") };
        self.emit(now, record, &mut out)?;
        self.dir.reinstate(reference);
        Ok(Ok((out, holder)))
    }

    /// Replaces a unit door's shared PIN with a fresh random one on an authorised command.
    /// Only its hash is stored; the PIN is returned once, for the caller to seal to the operator.
    pub fn remote_rotate_unit_pin(&mut self, now: i64, door: &str, sender: &str) -> Result<Remote<String>, GatewayError> {
        match self.cfg.door(door) {
            None => return Ok(Err(format!("this gateway has no door `{door}`"))),
            Some(d) if !d.unit_pin => return Ok(Err(format!("door `{door}` is not a unit door (`unit_pin = true` in its [[door]])"))),
            Some(_) => {}
        }
        let site = self.cfg.site.id.clone();
        let pin = loop {
            let pin = match random_pin(UNIT_PIN_DIGITS) {
                Ok(p) => p,
                Err(e) => return Ok(Err(format!("no random source for a new PIN: {e}"))),
            };
            if !self.dir.pin_hash_in_use(&crate::credentials::pin_hash(&site, &pin)) {
                break pin;
            }
        };
        let hash = crate::credentials::pin_hash(&site, &pin);
        let mut out = self.advance(now)?;
        let record = Record::UnitPin { door: door.to_string(), by: format!("remote:{sender}") };
        self.log.replace_unit_pin(now, door, &hash, &record)?;
        out.push((now, record));
        self.dir.set_unit_pin(door, &hash);
        Ok(Ok((out, pin)))
    }

    /// Applies a directory change from the property platform (an authorised command): to
    /// the directory database and the directory served, all or nothing, durable before it is
    /// answered; a removed subject's face template is erased. Only a gateway whose directory
    /// lives in its state dir (no `site.subjects` file) can be synced.
    pub fn remote_directory(&mut self, now: i64, step: crate::directory::SyncStep, ops: &[crate::directory::SyncOp], sender: &str) -> Result<Remote<crate::directory::SyncSummary>, GatewayError> {
        let state = match (&self.cfg.site.subjects, &self.cfg.site.state_dir) {
            (None, Some(state)) => state.clone(),
            (Some(f), _) => return Ok(Err(format!("this gateway's directory is its subjects file {}: remove `site.subjects` to let the platform sync it", f.display()))),
            (None, None) => return Ok(Err("this gateway has no `site.state_dir` to keep a directory in".into())),
        };
        let mut db = match crate::directory::DirectoryDb::open(&crate::directory::db_path(&state)) {
            Ok(db) => db,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let summary = match db.sync(&mut self.dir, step, ops) {
            Ok(s) => s,
            Err(why) => return Ok(Err(why)),
        };
        let mut out = self.advance(now)?;
        let count = |v: &Vec<String>| u32::try_from(v.len()).unwrap_or(u32::MAX);
        let record =
            Record::DirectorySynced { version: summary.version, added: count(&summary.added), changed: count(&summary.changed), removed: count(&summary.removed), by: format!("remote:{sender}") };
        self.emit(now, record, &mut out)?;
        if let Some(a) = self.audit.as_mut() {
            let detail = serde_json::json!({"version": summary.version, "added": summary.added, "changed": summary.changed, "removed": summary.removed});
            if let Err(e) = a.append(now, &format!("key:{sender}"), crate::audit::Action::DirectoryChanged, "directory", detail) {
                tracing::error!(error = %e, "the audit trail could not record a directory change; the event log holds it");
            }
        }
        for id in &summary.removed {
            let reason = "subject removed from the directory by the property platform".to_string();
            if self.face.erase(id, &reason, now) {
                self.emit(now, Record::FaceErased { subject: id.clone(), reason }, &mut out)?;
            }
        }
        self.directory_version.store(summary.version, std::sync::atomic::Ordering::Release);
        tracing::info!(version = summary.version, added = summary.added.len(), changed = summary.changed.len(), removed = summary.removed.len(), sender, "subject directory synced");
        Ok(Ok((out, summary)))
    }

    /// A guard releases a door once on a guard-station command, as themselves: the guard must
    /// be a subject with role guard; the decision names them and carries the reason.
    pub fn guard_open(&mut self, now: i64, door: &str, guard: &str, reason: &str, station: &str) -> Result<Remote<()>, GatewayError> {
        if let Err(why) = self.check_guard(guard) {
            return Ok(Err(why));
        }
        let reason = crate::plugin::text::sanitize(reason, 200);
        if reason.trim().is_empty() {
            return Ok(Err("a guard release needs a reason (it is kept in the event log)".into()));
        }
        let released = self.release_once(now, door, format!("{reason} (guard station {station})"), format!("guard:{guard}"))?;
        if let (Ok(_), Some(a)) = (&released, self.audit.as_mut()) {
            let detail = serde_json::json!({"command": "open-door", "reason": reason, "station": station});
            if let Err(e) = a.append(now, &format!("guard:{guard}"), crate::audit::Action::GuardCommand, &format!("door:{door}"), detail) {
                tracing::error!(error = %e, "the audit trail could not record a guard release; the event log holds it");
            }
        }
        Ok(released)
    }

    /// The guard registers a walk-in visitor of resident `host`: a pass signed by this
    /// gateway's device key (which it trusts as an issuer), for `doors`, from now for
    /// `for_ms` (1 min..=24 h) and `uses` entries (1..=10), enforced at the door like any
    /// pass. No name or ID number: a pseudonymous visitor id. Audited with the guard.
    #[allow(clippy::too_many_arguments)]
    pub fn guard_visitor(&mut self, now: i64, guard: &str, visitor: &str, host: &str, doors: &[String], for_ms: u64, uses: u32, station: &str) -> Result<Remote<String>, GatewayError> {
        if let Err(why) = self.check_guard(guard) {
            return Ok(Err(why));
        }
        if !self.dir.subject(host).is_some_and(|s| s.role == crate::event::Role::Resident) {
            return Ok(Err(format!("host `{}` is not a resident here", crate::plugin::text::sanitize(host, 64))));
        }
        if let Some(d) = doors.iter().find(|d| self.cfg.door(d).is_none()) {
            return Ok(Err(format!("this gateway has no door `{}`", crate::plugin::text::sanitize(d, 64))));
        }
        if !(60_000..=86_400_000).contains(&for_ms) || !(1..=10).contains(&uses) {
            return Ok(Err("a walk-in pass lasts 1 min to 24 h and grants 1 to 10 entries".into()));
        }
        let Some(key) = self.audit_key.clone() else {
            return Ok(Err("this gateway has no device key to sign a pass with".into()));
        };
        let pass = crate::visitor::Pass {
            pass: format!("p-{}", self.log.reserve_id().to_ascii_lowercase()),
            visitor: visitor.to_string(),
            host: host.to_string(),
            doors: doors.to_vec(),
            not_before_ms: now,
            not_after_ms: now.saturating_add(for_ms as i64),
            uses,
        };
        let text = match crate::visitor::issue(&key, &pass) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Some(a) = self.audit.as_mut() {
            let detail = serde_json::json!({"command": "register-visitor", "pass": pass.pass, "visitor": visitor, "host": host, "doors": doors, "not_after_ms": pass.not_after_ms, "uses": uses, "station": station});
            if let Err(e) = a.append(now, &format!("guard:{guard}"), crate::audit::Action::GuardCommand, &format!("pass:{}", pass.pass), detail) {
                tracing::error!(error = %e, "the audit trail could not record a registered visitor");
            }
        }
        tracing::info!(guard, pass = %pass.pass, visitor, host, "walk-in visitor registered");
        Ok(Ok((Vec::new(), text)))
    }

    /// What needs the guard now: alarms whose last word is "active", and denied attempts of
    /// the last `minutes` (newest first, at most 50). No subject ids or credential values.
    pub fn guard_attention(&mut self, now: i64, guard: &str, minutes: u32) -> Result<Remote<serde_json::Value>, GatewayError> {
        if let Err(why) = self.check_guard(guard) {
            return Ok(Err(why));
        }
        if !(1..=120).contains(&minutes) {
            return Ok(Err(format!("minutes {minutes}: must be between 1 and 120")));
        }
        let mut latest: BTreeMap<(String, String), (i64, bool)> = BTreeMap::new();
        for (at, body) in self.log.recent("alarm", now.saturating_sub(7 * 86_400_000), 2_000)? {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
            let key = (v["door"].as_str().unwrap_or("").to_string(), v["alarm"].as_str().unwrap_or("").to_string());
            latest.entry(key).or_insert((at, v["active"].as_bool().unwrap_or(false)));
        }
        let clock = self.clock.clone();
        let alarms: Vec<serde_json::Value> = latest
            .into_iter()
            .filter(|(_, (_, active))| *active)
            .map(|((door, alarm), (at, _))| serde_json::json!({"door": door, "alarm": alarm, "since": crate::replay::local_hms(&clock, at)}))
            .collect();
        let denied: Vec<serde_json::Value> = self
            .log
            .recent("decision", now.saturating_sub(i64::from(minutes) * 60_000), 200)?
            .into_iter()
            .filter_map(|(at, body)| serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| (at, v)))
            .filter(|(_, v)| v["outcome"] == "deny")
            .take(50)
            .map(|(at, v)| serde_json::json!({"at": crate::replay::local_hms(&clock, at), "door": v["door"], "credential": v["credential"], "reason": v["reason"]}))
            .collect();
        let calls: Vec<serde_json::Value> =
            self.calls.ringing_guard().map(|c| serde_json::json!({"call": c.id, "door": c.door, "resident": c.resident, "until": crate::replay::local_hms(&clock, c.deadline)})).collect();
        Ok(Ok((Vec::new(), serde_json::json!({"alarms": alarms, "denied": denied, "calls_waiting": calls, "minutes": minutes}))))
    }

    fn check_guard(&self, guard: &str) -> Result<(), String> {
        match self.dir.subject(guard) {
            Some(s) if s.role == crate::event::Role::Guard => Ok(()),
            Some(_) => Err(format!("`{}` is not a guard in this gateway's directory", crate::plugin::text::sanitize(guard, 64))),
            None => Err(format!("no guard `{}` in this gateway's directory", crate::plugin::text::sanitize(guard, 64))),
        }
    }

    /// The synced directory's version, shared (0: the directory is a subjects file).
    pub fn directory_version(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.directory_version.clone()
    }

    /// How long until a read waiting for its plugin reaches `limits.max_decision_wait_ms`
    /// and must be decided by the fallback (service mode; the loop wakes then).
    pub fn policy_wake(&self) -> Option<std::time::Duration> {
        match &self.policy {
            Policy::Worker(w) => w.next_expiry(),
            _ => None,
        }
    }

    /// Decisions and publishes still being worked on by the policy thread.
    pub fn policy_in_flight(&self) -> usize {
        match &self.policy {
            Policy::Worker(w) => w.in_flight(),
            _ => 0,
        }
    }

    /// Applies what the policy thread finished: logs decisions, opens doors, logs publishes.
    pub fn poll_policy(&mut self) -> Result<Vec<Timed>, GatewayError> {
        let mut out = Vec::new();
        loop {
            let done = match &mut self.policy {
                Policy::Worker(w) => w.take(),
                _ => None,
            };
            match done {
                None => return Ok(out),
                Some(Done::Decided(req, decided)) => {
                    let now = self.clock.now_ms().max(req.at);
                    self.apply_decision(now, req, decided, &mut out)?;
                }
                Some(Done::Notified { published, health, at }) => self.apply_notified(at, published, health, &mut out)?,
            }
        }
    }

    /// A clean stop: every relay to its safe state (see [`DoorController::stop`]), logged.
    pub fn stop_doors(&mut self, now: i64) -> Result<Vec<Timed>, GatewayError> {
        let mut out = Vec::new();
        for (t, r) in self.doors.stop(now) {
            self.emit(t, r, &mut out)?;
        }
        Ok(out)
    }

    /// The earliest time a door timer needs attention.
    pub fn next_deadline(&self) -> Option<i64> {
        [self.doors.next_deadline(), self.calls.next_deadline()].into_iter().flatten().min()
    }

    /// Runs door timers up to `now` (relocks, held-open alarms).
    pub fn advance(&mut self, now: i64) -> Result<Vec<Timed>, GatewayError> {
        let due = self.doors.advance(now);
        let mut out = Vec::new();
        for (t, r) in due {
            self.clock.set_ms(t);
            self.emit(t, r, &mut out)?;
        }
        self.clock.set_ms(now);
        for step in self.calls.tick(now) {
            self.emit(now, call_record(step, None, None), &mut out)?;
        }
        Ok(out)
    }

    /// Acts on one input at `now`. `captured_at` is when the device captured it, if known.
    pub fn handle(&mut self, now: i64, input: &Input, captured_at: Option<i64>) -> Result<Vec<Timed>, GatewayError> {
        let mut out = self.advance(now)?;
        match input {
            Input::DoorContact { door, open } => {
                if self.unknown_door(now, door, None, &mut out)? {
                    return Ok(out);
                }
                for (t, r) in self.doors.contact(door, now, *open) {
                    self.emit(t, r, &mut out)?;
                }
            }
            Input::ExitButton { door } => {
                if self.unknown_door(now, door, None, &mut out)? {
                    return Ok(out);
                }
                for (t, r) in self.doors.exit_button(door, now) {
                    self.emit(t, r, &mut out)?;
                }
            }
            Input::FireAlarm { active } => {
                for (t, r) in self.doors.fire(now, *active) {
                    self.emit(t, r, &mut out)?;
                }
            }
            Input::CameraFrame { door, direction, file, captured_at: cap } => {
                if self.unknown_door(now, door, Some(CredentialKind::Face), &mut out)? {
                    return Ok(out);
                }
                if let Some(t) = &mut self.face_thread {
                    let job = FrameJob { door: door.clone(), direction: *direction, file: file.clone(), captured: *cap, at: now, captured_at };
                    if t.send(job) {
                        return Ok(out);
                    }
                }
                // Only the match result goes on; the frame is dropped (and wiped) here.
                match self.face.frame_file(door, *direction, file, *cap) {
                    FrameResult::Credential(face) => self.access(now, &face, captured_at, &mut out)?,
                    FrameResult::Ignored(reason) => {
                        let r = Record::Ignored { door: door.clone(), credential: Some(CredentialKind::Face), reason };
                        self.emit(now, r, &mut out)?
                    }
                }
            }
            Input::CallButton { door, resident } => {
                if self.unknown_door(now, door, None, &mut out)? {
                    return Ok(out);
                }
                self.start_call(now, door, resident, "call-button", &mut out)?;
            }
            Input::CallAnswer { door, via, open } => {
                let Some(id) = self.calls.live_at(door).map(|c| c.id.clone()) else {
                    let r = Record::Ignored { door: door.clone(), credential: Some(CredentialKind::Intercom), reason: IgnoreReason::NoLiveCall };
                    self.emit(now, r, &mut out)?;
                    return Ok(out);
                };
                // A refused answer is logged as such; nothing else to do here.
                let _ = self.answer(now, &id, via, *open, "trace", &mut out)?;
            }
            _ => self.access(now, input, captured_at, &mut out)?,
        }
        Ok(out)
    }

    /// Starts a visitor's call to `resident` at `door` (a panel's call button, or a policy's
    /// escalation): the indoor station rings first. A resident the directory does not hold
    /// as a resident is not called.
    fn start_call(&mut self, now: i64, door: &str, resident: &str, why: &str, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        if !self.dir.subject(resident).is_some_and(|s| s.role == crate::event::Role::Resident) {
            let r = Record::Ignored { door: door.to_string(), credential: Some(CredentialKind::Intercom), reason: IgnoreReason::UnknownResident };
            return self.emit(now, r, out);
        }
        let id = format!("call-{}", self.log.reserve_id());
        for step in self.calls.start(&id, door, resident, now) {
            self.emit(now, call_record(step, Some(why.to_string()), None), out)?;
        }
        Ok(())
    }

    /// An answer to call `id` by `via` (indoor, phone, guard), from `by` (a trace, or the key
    /// of an authorised answer): logged; an open answer presents the resident's approval to
    /// the door's policy once. A late, repeated or foreign answer is refused and logged.
    fn answer(&mut self, now: i64, id: &str, via: &str, open: bool, by: &str, out: &mut Vec<Timed>) -> Result<Result<String, String>, GatewayError> {
        match self.calls.answer(id, via, open, now) {
            Ok((step, opened)) => {
                let door = step.door.clone();
                self.emit(now, call_record(step, None, Some(by.to_string())), out)?;
                if let Some(c) = opened {
                    let approval = Input::Intercom { door: c.door.clone(), direction: Direction::Entry, resident: c.resident.clone() };
                    self.access(now, &approval, None, out)?;
                    return Ok(Ok(format!("call {id} answered by the {via}: door `{door}` asked to open once")));
                }
                Ok(Ok(format!("call {id} declined by the {via}")))
            }
            Err(why) => {
                let (door, subject) = self.calls.live_at_id(id).map(|c| (c.door.clone(), c.resident.clone())).unwrap_or_default();
                let r = Record::Call { call: id.to_string(), door, subject, step: "refused".into(), via: Some(via.to_string()), until_ms: None, reason: Some(why.clone()), by: Some(by.to_string()) };
                self.emit(now, r, out)?;
                Ok(Err(why))
            }
        }
    }

    /// An authorised answer from an indoor station, the property platform or a guard station.
    pub fn remote_answer(&mut self, now: i64, call: &str, via: &str, open: bool, sender: &str) -> Result<Remote<String>, GatewayError> {
        let mut out = self.advance(now)?;
        let r = self.answer(now, call, via, open, &format!("remote:{sender}"), &mut out)?;
        Ok(r.map(|detail| (out, detail)))
    }

    /// A door panel's call for a resident, sent over MQTT by the panel's key.
    pub fn remote_call(&mut self, now: i64, door: &str, resident: &str, sender: &str) -> Result<Remote<String>, GatewayError> {
        if self.cfg.door(door).is_none() {
            return Ok(Err(format!("this gateway has no door `{door}`")));
        }
        let mut out = self.advance(now)?;
        self.start_call(now, door, resident, &format!("panel {sender}"), &mut out)?;
        let started = out.iter().find_map(|(_, r)| match r {
            Record::Call { call, step, .. } if step.starts_with("ringing") => Some(call.clone()),
            _ => None,
        });
        Ok(match started {
            Some(id) => Ok((out, format!("call {id} ringing"))),
            None => Err(format!("no call started (`{resident}` is not a resident here, or a call to them is already ringing at `{door}`)")),
        })
    }

    /// Calls the last run left ringing end now: a restart leaves nothing half-open, and an
    /// answer to such a call is refused as not live.
    pub fn end_calls_cut_by_restart(&mut self, now: i64) -> Result<Vec<Timed>, GatewayError> {
        let mut last: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (_, body) in self.log.recent("call", now.saturating_sub(86_400_000), 10_000)? {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if let Some(id) = v["call"].as_str() {
                    last.entry(id.to_string()).or_insert(v);
                }
            }
        }
        let mut out = Vec::new();
        for (id, v) in last {
            if v["step"].as_str().is_some_and(|s| s.starts_with("ringing")) {
                let r = Record::Call {
                    call: id,
                    door: v["door"].as_str().unwrap_or("").to_string(),
                    subject: v["subject"].as_str().unwrap_or("").to_string(),
                    step: "ended-by-restart".into(),
                    via: None,
                    until_ms: None,
                    reason: Some("the gateway restarted while it rang".into()),
                    by: None,
                };
                self.emit(now, r, &mut out)?;
            }
        }
        Ok(out)
    }

    fn unknown_door(&mut self, now: i64, door: &str, kind: Option<CredentialKind>, out: &mut Vec<Timed>) -> Result<bool, GatewayError> {
        if self.cfg.door(door).is_some() {
            return Ok(false);
        }
        tracing::warn!(door, "input for a door this site does not have");
        self.emit(now, Record::Ignored { door: door.to_string(), credential: kind, reason: IgnoreReason::UnknownDoor }, out)?;
        Ok(true)
    }

    fn access(&mut self, now: i64, input: &Input, captured_at: Option<i64>, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        let (Some(kind), Some(door_id)) = (input.credential_kind(), input.door()) else { return Ok(()) };
        let door_id = door_id.to_string();
        if self.unknown_door(now, &door_id, Some(kind), out)? {
            return Ok(());
        }
        // One-shot: stale reads and repeats never reach the policy, so never open twice.
        if captured_at.is_some_and(|c| now.saturating_sub(c) > i64::try_from(self.cfg.timing.max_input_age_ms).unwrap_or(i64::MAX)) {
            let r = Record::Ignored { door: door_id, credential: Some(kind), reason: IgnoreReason::Stale };
            return self.emit(now, r, out);
        }
        let fp = (door_id.clone(), fingerprint(input));
        if self.recent.get(&fp).is_some_and(|t| now.saturating_sub(*t) < i64::try_from(self.cfg.timing.repeat_window_ms).unwrap_or(i64::MAX)) {
            let r = Record::Ignored { door: door_id, credential: Some(kind), reason: IgnoreReason::Duplicate };
            return self.emit(now, r, out);
        }
        self.recent.retain(|_, t| now.saturating_sub(*t) < i64::try_from(self.cfg.timing.repeat_window_ms).unwrap_or(i64::MAX));
        self.recent.insert(fp, now);

        let Some(door) = self.cfg.door(&door_id).cloned() else { return Ok(()) };
        let direction = input.direction();
        let host_deny = |reason: String, by: &str, subject: Option<String>| Record::Decision {
            door: door.id.clone(),
            direction,
            credential: kind,
            subject,
            outcome: Outcome::Deny,
            open_ms: None,
            reason: Some(reason),
            factors: Vec::new(),
            by: format!("host:{by}"),
        };
        if !door.accepts(kind) {
            return self.emit(now, host_deny(format!("{kind} is not accepted at this door"), "not-accepted", None), out);
        }
        let resolved = match input {
            Input::Qr { code, .. } => self.resolve_pass(code, now).map(|(c, s, p)| (c, s, Some(p))),
            _ => self.resolve(input).map(|(c, s)| (c, s, None)),
        };
        let (credential, subject, scanned) = match resolved {
            Ok(x) => x,
            Err((reason, by)) => return self.emit(now, host_deny(reason, by, None), out),
        };
        // The reason names no reference: decisions reach plugins and the platform.
        if let Some(r) = self.dir.revoked_by(input, subject.as_ref()) {
            let what = if r.starts_with("subject:") { "the holder's credentials are revoked" } else { "credential revoked" };
            return self.emit(now, host_deny(what.into(), "revoked", subject.map(|s| s.id)), out);
        }
        if self.locks_out(&door.id, direction, kind) {
            return self.emit(now, host_deny("door locked by an operator".into(), "locked", subject.map(|s| s.id)), out);
        }
        // Visitor passes: the host's window, doors, uses, one grant per code step and
        // revocation, before any plugin is asked (exits: revocation only, never counted).
        let pass = match scanned {
            Some(s) => match self.pass_refusal(&s, &door.id, direction, now)? {
                Some((reason, by)) => return self.emit(now, host_deny(reason, by, subject.map(|s| s.id)), out),
                None => (direction == Direction::Entry).then_some(s),
            },
            None => None,
        };

        self.pending.retain(|_, p| p.expires_at > now);
        let prior = self.pending.get(&door.id).map(|p| p.prior.clone()).unwrap_or_default();
        let event = wit::AccessEvent {
            id: self.log.reserve_id(),
            door: door.id.clone(),
            direction: match direction {
                Direction::Entry => wit::Direction::Entry,
                Direction::Exit => wit::Direction::Exit,
            },
            time: timestamp(&self.clock, now),
            credential,
            subject: subject.as_ref().map(|s| wit::Subject { id: s.id.clone(), role: to_wit_role(s.role), groups: s.groups.clone() }),
            prior,
        };
        let req = AccessRequest { door, event, kind, subject, direction, at: now, pass };
        let (req, decided) = match &mut self.policy {
            Policy::Inline(engine) => {
                let d = engine.decide(&req.door, &req.event, req.kind, req.subject.as_ref(), now);
                (req, d)
            }
            // Decided on the plugin's thread; `poll_policy` applies it. A read the door's
            // plugin cannot take (no plugin, its queue full) is decided by the fallback now.
            Policy::Worker(w) => match w.decide(req) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    let (req, why) = *back;
                    let d = fallback_decision(&self.cfg.fallback, &req.door, kind, req.subject.as_ref(), why, Vec::new());
                    (req, d)
                }
            },
            Policy::Moving => {
                let d = fallback_decision(&self.cfg.fallback, &req.door, kind, req.subject.as_ref(), "policy-thread-gone", Vec::new());
                (req, d)
            }
        };
        self.apply_decision(now, req, decided, out)
    }

    /// Logs a decision, remembers a pending multi-factor attempt, and opens the door on a grant.
    fn apply_decision(&mut self, now: i64, req: AccessRequest, decided: Decided, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        let AccessRequest { door, event, kind, subject, direction, pass, .. } = req;
        let mut decided = decided;
        // The door may have been locked while the plugin decided.
        if matches!(decided.verdict, Verdict::Grant { .. }) && self.locks_out(&door.id, direction, kind) {
            decided.verdict = Verdict::Deny { reason: "door locked by an operator".into() };
            decided.by = "host:locked".into();
        }
        // A pass may have been used up, revoked or had its code used by another read while
        // the plugin decided: checked again against the log before the grant is counted.
        let mut counted = None;
        if let (Verdict::Grant { .. }, Some(s)) = (&decided.verdict, &pass) {
            match self.pass_refusal(s, &door.id, direction, now)? {
                Some((reason, by)) => {
                    decided.verdict = Verdict::Deny { reason };
                    decided.by = format!("host:{by}");
                }
                None => counted = Some(crate::store::PassGrant { pass: &s.pass.pass, step: s.step, not_after_ms: s.pass.not_after_ms }),
            }
        }
        for r in decided.health {
            self.emit(now, r, out)?;
        }
        if let Some((plugin, changes)) = &decided.kv {
            self.log.kv_apply(plugin, changes)?;
        }
        let subject_id = subject.as_ref().map(|s| s.id.clone());
        let (outcome, open_ms, reason, factors) = match &decided.verdict {
            Verdict::Grant { open_ms } => (Outcome::Grant, Some(*open_ms), None, Vec::new()),
            Verdict::Deny { reason } => (Outcome::Deny, None, Some(reason.clone()), Vec::new()),
            Verdict::NeedFactor { kinds } => (Outcome::NeedFactor, None, None, kinds.clone()),
            Verdict::Escalate { target } => (Outcome::Escalate, None, Some(target.clone()), Vec::new()),
        };
        if let Verdict::NeedFactor { .. } = decided.verdict {
            let mut prior = event.prior.clone();
            prior.push(wit::PriorFactor { kind: to_wit_kind(kind), subject_id: subject_id.clone(), unix_ms: now });
            self.pending.insert(door.id.clone(), Pending { prior, expires_at: now.saturating_add(i64::try_from(self.cfg.timing.factor_timeout_ms).unwrap_or(i64::MAX)) });
        } else {
            self.pending.remove(&door.id);
        }
        let record = Record::Decision { door: door.id.clone(), direction, credential: kind, subject: subject_id, outcome, open_ms, reason, factors, by: decided.by };
        // The decision is in the log, under the id its plugin saw, before the relay moves; a
        // granted pass's use is counted in the same transaction.
        self.emit_counting(now, record, Some(event.id.clone()), counted, out)?;
        if let Verdict::Escalate { target } = &decided.verdict {
            if let Some(resident) = target.strip_prefix("call-resident:") {
                self.start_call(now, &door.id, resident, "escalated by the policy", out)?;
            }
        }
        if let Verdict::Grant { open_ms } = decided.verdict {
            for (t, r) in self.doors.grant(&door.id, now, open_ms) {
                self.emit(t, r, out)?;
            }
        }
        Ok(())
    }

    /// Whether an operator's lock refuses this attempt: entries only (nobody is ever kept
    /// in), and never a guard's release at the door.
    fn locks_out(&self, door: &str, direction: Direction, kind: CredentialKind) -> bool {
        self.doors.mode(door) == DoorMode::Locked && direction == Direction::Entry && kind != CredentialKind::GuardRelease
    }

    /// Verifies a scanned visitor pass (signature, fields, dynamic code) at `now`, and that
    /// its host is a resident here. Errors are host denials (reason, tag).
    fn resolve_pass(&self, code: &str, now: i64) -> Result<(wit::Credential, Option<Subject>, crate::visitor::Scanned), (String, &'static str)> {
        use crate::visitor::PassError;
        let s = self.dir.scan_qr(code, now).map_err(|e| {
            let by = if matches!(e, PassError::Code | PassError::NoCodeKey) { "pass-code" } else { "qr-invalid" };
            (e.to_string(), by)
        })?;
        if !self.dir.subject(&s.pass.host).is_some_and(|h| h.role == crate::event::Role::Resident) {
            return Err((format!("visitor pass: its host `{}` is not a resident of this site", s.pass.host), "pass-host"));
        }
        let cred = wit::Credential::Qr(wit::VisitorPass { host_subject: s.pass.host.clone(), valid_until_ms: s.pass.not_after_ms });
        let visitor = Subject { id: s.pass.visitor.clone(), role: crate::event::Role::Visitor, groups: Vec::new() };
        Ok((cred, Some(visitor), s))
    }

    /// Why the host refuses this verified pass at `door` now, from its durable count and
    /// revocation (`pass:<id>`); exits are refused only when the pass is revoked.
    fn pass_refusal(&self, s: &crate::visitor::Scanned, door: &str, direction: Direction, now: i64) -> Result<Option<(String, &'static str)>, GatewayError> {
        let revoked = self.dir.is_revoked(&format!("pass:{}", s.pass.pass));
        if direction == Direction::Exit {
            return Ok(revoked.then(|| ("visitor pass: revoked".to_string(), "pass-revoked")));
        }
        let state = self.log.pass_use(&s.pass.pass)?;
        Ok(crate::visitor::refusal(s, door, now, state, revoked))
    }

    /// Verifies the credential and finds its subject. Errors are host denials (reason, tag).
    fn resolve(&self, input: &Input) -> Result<(wit::Credential, Option<Subject>), (String, &'static str)> {
        let owned = |s: Option<&Subject>| s.cloned();
        Ok(match input {
            Input::Card { number, .. } => (wit::Credential::Card, owned(self.dir.by_card(number))),
            Input::Pin { pin, door, .. } => (wit::Credential::Pin, owned(self.dir.by_pin(pin).or_else(|| self.dir.by_unit_pin(door, pin)))),
            Input::Nfc { token, .. } => (wit::Credential::Nfc, owned(self.dir.by_nfc(token))),
            Input::Plate { plate, .. } => (wit::Credential::Plate, owned(self.dir.by_plate(plate))),
            Input::Face { subject, band, score, liveness, .. } => {
                // The matcher reports a band; a hand-written trace may give a score instead,
                // banded here by the site's thresholds. Plugins get the band only.
                let band = band.or_else(|| score.and_then(|s| self.cfg.face.band(s)));
                let who = subject.as_deref().filter(|_| band.is_some()).and_then(|id| self.dir.subject(id)).cloned();
                let band = if band == Some(FaceBand::Strong) { wit::MatchBand::Strong } else { wit::MatchBand::Weak };
                let liveness = match liveness {
                    Liveness::Live => wit::Liveness::Live,
                    Liveness::Spoof => wit::Liveness::Spoof,
                    Liveness::Unknown => wit::Liveness::Unknown,
                };
                (wit::Credential::Face(wit::FaceMatch { band, liveness }), who)
            }
            Input::Qr { .. } => return Err(("not resolved here".into(), "internal")),
            Input::GuardRelease { guard, .. } => match self.dir.subject(guard) {
                Some(s) if s.role == crate::event::Role::Guard => (wit::Credential::GuardRelease, Some(s.clone())),
                _ => return Err((format!("`{guard}` is not a guard of this site"), "not-a-guard")),
            },
            Input::Intercom { resident, .. } => match self.dir.subject(resident) {
                Some(s) if s.role == crate::event::Role::Resident => (wit::Credential::Intercom(s.id.clone()), None),
                _ => return Err((format!("`{resident}` is not a resident of this site"), "unknown-resident")),
            },
            Input::DoorContact { .. } | Input::ExitButton { .. } | Input::FireAlarm { .. } | Input::Line { .. } | Input::CameraFrame { .. } | Input::CallButton { .. } | Input::CallAnswer { .. } => {
                return Err(("not a credential".into(), "internal"))
            }
        })
    }

    /// Logs a record, hands decisions and alarms to integrations, and collects the output.
    fn emit(&mut self, at: i64, record: Record, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        self.emit_as(at, record, None, out)
    }

    fn emit_as(&mut self, at: i64, record: Record, id: Option<String>, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        self.emit_counting(at, record, id, None, out)
    }

    fn emit_counting(&mut self, at: i64, record: Record, id: Option<String>, pass: Option<crate::store::PassGrant<'_>>, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        let id = match id {
            Some(id) => self.log.append_counting(at, &record, id, pass)?,
            None => self.log.append(at, &record)?,
        };
        self.audit_record(at, &id, &record);
        let gate_event = self.gate_event(&id, at, &record);
        out.push((at, record));
        if let Some(ev) = gate_event {
            let (published, health) = match &mut self.policy {
                Policy::Inline(engine) => engine.notify(&ev, at),
                Policy::Worker(_) if self.in_turn => {
                    self.held.push((ev, at));
                    return Ok(());
                }
                Policy::Worker(w) => {
                    w.notify(ev, at);
                    return Ok(());
                }
                Policy::Moving => return Ok(()),
            };
            self.apply_notified(at, published, health, out)?;
        }
        Ok(())
    }

    /// Retention, enforced by the product: every hour of gateway time (and at the first call)
    /// removes events and alarms older than `[retention]` in batches of a few thousand rows,
    /// one batch per call so inputs are never held up for long; when a purge is finished, the
    /// WAL is checkpointed and truncated (no page image of a purged row stays behind), audit
    /// entries past their bound go (up to a signed checkpoint), and the purge is audited.
    /// A purge that fails (a busy or failing disk) is logged and tried again a minute later:
    /// retention never stops the door.
    pub fn housekeeping(&mut self, now: i64) {
        if self.purge.next_at.is_some_and(|t| now < t) {
            return;
        }
        if let Err(e) = self.purge_step(now) {
            tracing::error!(error = %e, "retention purge failed; trying again in a minute");
            self.purge.next_at = Some(now.saturating_add(60_000));
        }
    }

    fn purge_step(&mut self, now: i64) -> Result<(), GatewayError> {
        let r = &self.cfg.retention;
        let bound = |days: u64| now.saturating_sub(i64::try_from(days).unwrap_or(i64::MAX).saturating_mul(DAY_MS));
        let (events_before, alarms_before, audit_before) = (bound(r.events_days), bound(r.alarms_days), bound(r.audit_days));
        let n = self.log.purge_batch(events_before, alarms_before, PURGE_BATCH)?;
        self.purge.removed = self.purge.removed.saturating_add(n);
        if n == u64::from(PURGE_BATCH) {
            return Ok(()); // more to do at the next turn
        }
        self.purge.next_at = Some(now.saturating_add(PURGE_EVERY_MS));
        self.audit_checkpoint(now);
        let removed = std::mem::take(&mut self.purge.removed);
        let audit_removed = match self.audit.as_mut() {
            Some(a) => a.purge_before(audit_before).unwrap_or_else(|e| {
                tracing::error!(error = %e, "the audit trail's retention purge failed");
                0
            }),
            None => 0,
        };
        if removed == 0 && audit_removed == 0 {
            return Ok(());
        }
        let wal_clean = self.log.checkpoint_truncate()?;

        tracing::info!(events = removed, audit_entries = audit_removed, wal_clean, "retention purge");
        if let Some(a) = self.audit.as_mut() {
            let detail = serde_json::json!({"events": removed, "audit_entries": audit_removed, "events_before_ms": events_before, "alarms_before_ms": alarms_before, "audit_before_ms": audit_before, "wal_truncated": wal_clean});
            if let Err(e) = a.append(now, "host", crate::audit::Action::RetentionPurge, "event-log", detail) {
                tracing::error!(error = %e, "the audit trail could not record the retention purge");
            }
        }
        if !wal_clean {
            // A reader held the WAL: try again soon rather than in an hour.
            self.purge.next_at = Some(now.saturating_add(60_000));
        }
        Ok(())
    }

    /// Appends a logged change of access rights to the audit trail. The event log already
    /// holds it durably, so an audit write that fails is reported and the door goes on.
    fn audit_record(&mut self, at: i64, id: &str, record: &Record) {
        use crate::audit::Action;
        let Some(audit) = self.audit.as_mut() else { return };
        let actor = |by: &str| by.strip_prefix("remote:").map(|k| format!("key:{k}")).unwrap_or_else(|| by.to_string());
        let (actor, action, target, detail) = match record {
            Record::DoorMode { door, mode, until_ms, by } => (actor(by), Action::DoorMode, format!("door:{door}"), serde_json::json!({"mode": mode, "until_ms": until_ms, "event": id})),
            Record::Revoked { credential, holder, reason, by } => (actor(by), Action::CredentialRevoked, credential.clone(), serde_json::json!({"holder": holder, "reason": reason, "event": id})),
            Record::Reinstated { credential, holder, reason, by } => {
                (actor(by), Action::CredentialReinstated, credential.clone(), serde_json::json!({"holder": holder, "reason": reason, "event": id}))
            }
            Record::UnitPin { door, by } => (actor(by), Action::UnitPinRotated, format!("door:{door}"), serde_json::json!({"event": id})),
            Record::FaceErased { subject, reason } => ("host".to_string(), Action::TemplateErased, subject.clone(), serde_json::json!({"why": reason, "event": id})),
            Record::Decision { door, by, outcome, .. } if by.starts_with("remote:") => {
                (actor(by), Action::RemoteCommand, format!("door:{door}"), serde_json::json!({"command": "open-door", "outcome": outcome, "event": id}))
            }
            _ => return,
        };
        if let Err(e) = audit.append(at, &actor, action, &target, detail) {
            tracing::error!(error = %e, event = id, "the audit trail could not be written; the event log holds the change");
        }
    }

    /// Logs the health records and publishes of integration plugins.
    fn apply_notified(&mut self, at: i64, published: Vec<(String, crate::plugin::Effects)>, health: Vec<Record>, out: &mut Vec<Timed>) -> Result<(), GatewayError> {
        {
            for r in health {
                self.log.append(at, &r)?;
                out.push((at, r));
            }
            for (plugin, fx) in published {
                self.log.kv_apply(&plugin, &fx.kv_changes)?;
                for (topic, payload) in fx.published {
                    let payload = crate::event::Payload::from_plugin(payload);
                    let r = Record::Publish { plugin: plugin.clone(), topic, payload };
                    self.log.append(at, &r)?;
                    out.push((at, r));
                }
            }
        }
        Ok(())
    }

    fn gate_event(&self, id: &str, at: i64, record: &Record) -> Option<wit::GateEvent> {
        let time = timestamp(&self.clock, at);
        match record {
            Record::Decision { door, direction, credential, subject, outcome: _, open_ms, reason, factors, by } => {
                let role = subject.as_deref().and_then(|s| self.dir.subject(s)).map(|s| to_wit_role(s.role));
                let decision = match record {
                    Record::Decision { outcome: Outcome::Grant, .. } => wit::Decision::Grant(open_ms.unwrap_or(0)),
                    Record::Decision { outcome: Outcome::NeedFactor, .. } => wit::Decision::NeedFactor(factors.iter().map(|k| to_wit_kind(*k)).collect()),
                    Record::Decision { outcome: Outcome::Escalate, .. } => match reason.as_deref().and_then(|r| r.strip_prefix("call-resident:")) {
                        Some(id) => wit::Decision::Escalate(wit::Escalation::CallResident(id.to_string())),
                        None => wit::Decision::Escalate(wit::Escalation::CallGuard),
                    },
                    _ => wit::Decision::Deny(reason.clone().unwrap_or_default()),
                };
                Some(wit::GateEvent::Access(wit::DecidedAccess {
                    event_id: id.to_string(),
                    door: door.clone(),
                    direction: match direction {
                        Direction::Entry => wit::Direction::Entry,
                        Direction::Exit => wit::Direction::Exit,
                    },
                    time,
                    credential: to_wit_kind(*credential),
                    subject_id: subject.clone(),
                    role,
                    decision,
                    decided_by: by.clone(),
                }))
            }
            Record::Alarm { door, alarm, active } => Some(wit::GateEvent::Alarm(wit::Alarm {
                event_id: id.to_string(),
                door: door.clone(),
                time,
                kind: match alarm {
                    crate::event::AlarmKind::HeldOpen => wit::AlarmKind::HeldOpen,
                    crate::event::AlarmKind::ForcedOpen => wit::AlarmKind::ForcedOpen,
                    crate::event::AlarmKind::Fire => wit::AlarmKind::Fire,
                },
                active: *active,
            })),
            _ => None,
        }
    }
}

/// Longest operator door mode (7 days): modes always end by themselves.
pub const MAX_MODE_MS: u64 = 7 * 24 * 3_600_000;

/// Digits of a generated unit-door PIN.
const UNIT_PIN_DIGITS: usize = 6;

/// A uniformly random PIN of `digits` digits that is not a trivial pattern.
/// A call step as the record it is logged and published as.
fn call_record(s: crate::call::Step, reason: Option<String>, by: Option<String>) -> Record {
    Record::Call { call: s.call, door: s.door, subject: s.resident, step: s.step.to_string(), via: s.via.map(str::to_string), until_ms: s.until_ms, reason, by }
}

fn random_pin(digits: usize) -> Result<String, getrandom::Error> {
    loop {
        let mut pin = String::with_capacity(digits);
        while pin.len() < digits {
            let mut b = [0u8; 1];
            getrandom::fill(&mut b)?;
            // Rejection sampling keeps every digit uniform.
            if b[0] < 250 {
                pin.push(char::from(b'0' + b[0] % 10));
            }
        }
        let d: Vec<i16> = pin.bytes().map(|c| i16::from(c - b'0')).collect();
        let steps: Vec<i16> = d.windows(2).map(|w| w[1] - w[0]).collect();
        let trivial = steps.iter().all(|s| *s == steps[0] && s.abs() <= 1);
        if !trivial {
            return Ok(pin);
        }
    }
}

/// A short hash of the credential value, so repeats are recognised without
/// keeping raw card numbers or PINs around.
fn fingerprint(input: &Input) -> [u8; 16] {
    let value = match input {
        Input::Card { number, .. } => format!("card:{number}"),
        Input::Pin { pin, .. } => format!("pin:{pin}"),
        Input::Nfc { token, .. } => format!("nfc:{token}"),
        Input::Face { subject, .. } => format!("face:{}", subject.as_deref().unwrap_or("?")),
        Input::Plate { plate, .. } => format!("plate:{plate}"),
        Input::Qr { code, .. } => format!("qr:{code}"),
        Input::GuardRelease { guard, .. } => format!("guard:{guard}"),
        Input::Intercom { resident, .. } => format!("intercom:{resident}"),
        _ => String::new(),
    };
    let d = Sha256::digest(value.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::random_pin;

    #[test]
    fn generated_pins_are_six_digits_varied_and_never_a_trivial_run() {
        let pins: Vec<String> = (0..500).map(|_| random_pin(6).unwrap()).collect();
        assert!(pins.iter().all(|p| p.len() == 6 && p.bytes().all(|b| b.is_ascii_digit())));
        assert!(!pins.iter().any(|p| ["000000", "111111", "123456", "654321", "999999"].contains(&p.as_str())));
        let distinct: std::collections::HashSet<_> = pins.iter().collect();
        assert!(distinct.len() > 490, "{} distinct of 500", distinct.len());
        // Every digit shows up in every position (uniform digits, not a fixed pattern).
        for pos in 0..6 {
            let digits: std::collections::HashSet<u8> = pins.iter().map(|p| p.as_bytes()[pos]).collect();
            assert_eq!(digits.len(), 10, "position {pos}");
        }
    }
}
