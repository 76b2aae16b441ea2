//! The deployment job state machine (queued → in-progress → succeeded | failed |
//! rejected, and rolled-back), driven against the host's [`PluginSlot`], with job state
//! persisted in [`FleetStore`] and the automatic rollback rule ([`RollbackRule`]).

use crate::bundle::{self, BundleError, Manifest, VerifyContext, World};
use crate::keys::{self, OperatorKey, Permission, SigError, TrustedKeys};
use crate::messages::{JobAction, JobRequest, JobState, JobStatus, PluginInfo, RollbackOrder, SignedRollback};
use crate::store::{FleetStore, StoreError};
use semver::Version;
use std::collections::HashMap;

/// Signature domain of rollback orders.
pub const ROLLBACK_DOMAIN: &str = "gate-rollback/1";

/// A plugin as the host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePlugin {
    pub name: String,
    pub world: World,
    pub version: Version,
    pub sha256: String,
    /// The version kept for rollback.
    pub previous: Option<Version>,
}

impl From<&ActivePlugin> for PluginInfo {
    fn from(a: &ActivePlugin) -> Self {
        PluginInfo { name: a.name.clone(), world: a.world, version: a.version.clone(), sha256: a.sha256.clone(), previous: a.previous.clone() }
    }
}

/// What the host implements so the fleet layer can deploy into it. Errors are
/// human-readable reasons that end up in the job status.
pub trait PluginSlot {
    /// The active plugin named `name`.
    fn active(&self, name: &str) -> Option<ActivePlugin>;
    /// Every active plugin (for the status message).
    fn plugins(&self) -> Vec<ActivePlugin>;
    /// Compiles / precompiles the component, checks it implements `manifest.world` of the
    /// contract version this host serves, and keeps it staged (not live).
    fn stage(&mut self, manifest: &Manifest, component: &[u8]) -> Result<(), String>;
    /// Replays `manifest.self_tests` against the staged plugin and runs the host's own
    /// checks (every door still honours a non-biometric credential).
    fn self_test(&mut self, manifest: &Manifest) -> Result<(), String>;
    /// Swaps the staged plugin in between two events, keeping the old one as previous.
    fn activate(&mut self, name: &str) -> Result<(), String>;
    /// Throws a staged plugin away (after a failed self-test); nothing half-installed remains.
    fn discard(&mut self, name: &str);
    /// Swaps the kept previous version back in; returns the version now active.
    fn rollback(&mut self, name: &str) -> Result<Version, String>;
}

/// "If the new version fails `max_failures` times within `within_ms` after the swap,
/// go back": a pure rule over failure timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackRule {
    pub max_failures: u32,
    pub within_ms: i64,
}

impl Default for RollbackRule {
    fn default() -> Self {
        Self { max_failures: 3, within_ms: 5 * 60 * 1000 }
    }
}

/// Failures of one freshly swapped-in plugin, judged by a [`RollbackRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureWatch {
    rule: RollbackRule,
    activated_at_ms: i64,
    failures: u32,
}

/// What a recorded failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchVerdict {
    /// Keep the new version for now.
    Keep,
    /// Too many failures too soon: roll back.
    RollBack,
    /// The watch window has passed; the version is trusted and no longer watched.
    Expired,
}

impl FailureWatch {
    pub fn new(rule: RollbackRule, activated_at_ms: i64) -> Self {
        Self { rule, activated_at_ms, failures: 0 }
    }
    /// Records a failure (trap, timeout, garbage decision) at `now_ms`.
    pub fn record_failure(&mut self, now_ms: i64) -> WatchVerdict {
        if now_ms - self.activated_at_ms > self.rule.within_ms {
            return WatchVerdict::Expired;
        }
        self.failures += 1;
        if self.failures >= self.rule.max_failures {
            WatchVerdict::RollBack
        } else {
            WatchVerdict::Keep
        }
    }
    /// Whether the window has passed at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms - self.activated_at_ms > self.rule.within_ms
    }
}

/// Deployer settings.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    pub gateway: String,
    pub host_version: Version,
    pub max_bundle_bytes: usize,
    pub rule: RollbackRule,
}

/// Runs jobs against a [`PluginSlot`], persisting every state change.
pub struct Deployer {
    cfg: DeployConfig,
    trusted: TrustedKeys,
    store: FleetStore,
    watches: HashMap<String, (String, FailureWatch)>,
}

impl Deployer {
    /// Creates the deployer; jobs a crash left queued or in progress are marked failed
    /// (their status says so) and returned, so the caller can publish them.
    pub fn new(cfg: DeployConfig, trusted: TrustedKeys, store: FleetStore, now_ms: i64) -> Result<(Self, Vec<JobStatus>), StoreError> {
        let mut interrupted = store.unfinished_jobs()?;
        for s in &mut interrupted {
            s.state = JobState::Failed;
            s.code = Some("interrupted".into());
            s.reason = Some("the gateway restarted during the job; the active plugin is unchanged unless the status said activating — redeploy with a new sequence".into());
            s.step = None;
            s.at_ms = now_ms;
            store.put_job(s)?;
        }
        Ok((Self { cfg, trusted, store, watches: HashMap::new() }, interrupted))
    }

    /// The fleet store (command log, seen commands).
    pub fn store(&mut self) -> &mut FleetStore {
        &mut self.store
    }

    /// Trusted keys (for command authorisation).
    pub fn trusted(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// The stored status of a job.
    pub fn job(&self, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
        self.store.job(job_id)
    }

    /// The most recent job.
    pub fn last_job(&self) -> Result<Option<JobStatus>, StoreError> {
        self.store.last_job()
    }

    fn status(&self, job_id: &str, state: JobState) -> JobStatus {
        JobStatus { job_id: job_id.into(), gateway: self.cfg.gateway.clone(), state, step: None, plugin: None, version: None, code: None, reason: None, signer: None, at_ms: 0 }
    }

    fn emit(&self, s: &mut JobStatus, now_ms: i64, progress: &mut dyn FnMut(&JobStatus)) -> Result<(), StoreError> {
        s.at_ms = now_ms;
        self.store.put_job(s)?;
        progress(s);
        Ok(())
    }

    /// Runs one job to its end, calling `progress` with every state (already persisted).
    /// A job id seen before is not run again: its stored status is returned (and re-emitted).
    /// `now_ms` is called for every timestamp.
    pub fn run_job(&mut self, slot: &mut dyn PluginSlot, raw_request: &[u8], topic_job_id: &str, now_ms: &dyn Fn() -> i64, progress: &mut dyn FnMut(&JobStatus)) -> Result<JobStatus, StoreError> {
        if let Some(done) = self.store.job(topic_job_id)? {
            progress(&done);
            return Ok(done);
        }
        // Until a signature verifies, nothing is stored: anyone with a broker account can
        // send jobs, and their refusals must not fill the disk.
        let mut s = self.status(topic_job_id, JobState::Queued);
        s.at_ms = now_ms();
        progress(&s);
        s.state = JobState::InProgress;
        s.step = Some("verifying".into());
        s.at_ms = now_ms();
        progress(&s);

        let req: JobRequest = match serde_json::from_slice(raw_request) {
            Ok(r) if raw_request.len() <= self.cfg.max_bundle_bytes.saturating_mul(2) => r,
            Ok(_) => return Ok(self.refuse(s, "too-large", "job request is larger than the bundle limit".into(), now_ms(), progress)),
            Err(e) => return Ok(self.refuse(s, "malformed", format!("job request is not valid JSON for gate/v1: {e}"), now_ms(), progress)),
        };
        if req.job_id != topic_job_id {
            let why = format!("job id {:?} in the body does not match {topic_job_id:?} in the topic", req.job_id);
            return Ok(self.refuse(s, "malformed", why, now_ms(), progress));
        }
        match req.action {
            JobAction::Deploy { bundle } => self.deploy(slot, s, &bundle.to_bytes(), now_ms, progress),
            JobAction::Rollback { order } => self.ordered_rollback(slot, s, &order, now_ms, progress),
        }
    }

    /// Ends a job whose request no trusted signature covers: published, never stored.
    fn refuse(&self, mut s: JobStatus, code: &str, reason: String, now: i64, progress: &mut dyn FnMut(&JobStatus)) -> JobStatus {
        tracing::info!(job = %s.job_id, code, reason = %reason, "unsigned or unverifiable job refused");
        s.state = JobState::Rejected;
        s.step = None;
        s.code = Some(code.into());
        s.reason = Some(reason);
        s.at_ms = now;
        progress(&s);
        s
    }

    fn finish(&self, mut s: JobStatus, state: JobState, code: &str, reason: String, now: i64, progress: &mut dyn FnMut(&JobStatus)) -> Result<JobStatus, StoreError> {
        tracing::info!(job = %s.job_id, state = state.as_str(), code, reason = %reason, "deployment job ended");
        s.state = state;
        s.step = None;
        s.code = Some(code.into());
        s.reason = Some(reason);
        self.emit(&mut s, now, progress)?;
        Ok(s)
    }

    fn deploy(&mut self, slot: &mut dyn PluginSlot, mut s: JobStatus, raw: &[u8], now_ms: &dyn Fn() -> i64, progress: &mut dyn FnMut(&JobStatus)) -> Result<JobStatus, StoreError> {
        let name = match bundle::peek_name(raw, self.cfg.max_bundle_bytes) {
            Ok(n) => n,
            Err(e) => return Ok(self.refuse(s, e.code(), e.to_string(), now_ms(), progress)),
        };
        s.plugin = Some(name.clone());
        let active = slot.active(&name);
        let last = self.store.last_sequence(&name)?;
        let cx = VerifyContext {
            trusted: &self.trusted,
            host_version: &self.cfg.host_version,
            max_bundle_bytes: self.cfg.max_bundle_bytes,
            last_sequence: last,
            active: active.as_ref().map(|a| (&a.version, a.world)),
        };
        let verified = match bundle::verify(raw, &cx) {
            Ok(v) => v,
            Err(e) if !e.signature_verified() => return Ok(self.refuse(s, e.code(), e.to_string(), now_ms(), progress)),
            Err(e) => {
                let e: BundleError = e;
                return self.finish(s, JobState::Rejected, e.code(), e.to_string(), now_ms(), progress);
            }
        };
        // Accepted: this sequence can never be used again, whatever happens next.
        self.store.accept_sequence(&name, verified.manifest.sequence)?;
        s.version = Some(verified.manifest.version.clone());
        s.signer = Some(verified.signer.clone());

        s.step = Some("staging".into());
        self.emit(&mut s, now_ms(), progress)?;
        if let Err(why) = slot.stage(&verified.manifest, &verified.component) {
            slot.discard(&name);
            return self.finish(s, JobState::Failed, "stage-failed", why, now_ms(), progress);
        }
        s.step = Some("self-test".into());
        self.emit(&mut s, now_ms(), progress)?;
        if let Err(why) = slot.self_test(&verified.manifest) {
            slot.discard(&name);
            return self.finish(s, JobState::Failed, "self-test-failed", why, now_ms(), progress);
        }
        s.step = Some("activating".into());
        self.emit(&mut s, now_ms(), progress)?;
        if let Err(why) = slot.activate(&name) {
            slot.discard(&name);
            return self.finish(s, JobState::Failed, "activate-failed", why, now_ms(), progress);
        }
        let now = now_ms();
        self.watches.insert(name.clone(), (s.job_id.clone(), FailureWatch::new(self.cfg.rule, now)));
        s.state = JobState::Succeeded;
        s.step = None;
        s.reason = Some(match active {
            Some(a) => format!("{} {} active (was {})", name, verified.manifest.version, a.version),
            None => format!("{} {} active", name, verified.manifest.version),
        });
        tracing::info!(job = %s.job_id, plugin = %name, version = %verified.manifest.version, signer = %verified.signer, "plugin deployed");
        self.emit(&mut s, now, progress)?;
        Ok(s)
    }

    fn ordered_rollback(
        &mut self,
        slot: &mut dyn PluginSlot,
        mut s: JobStatus,
        order: &SignedRollback,
        now_ms: &dyn Fn() -> i64,
        progress: &mut dyn FnMut(&JobStatus),
    ) -> Result<JobStatus, StoreError> {
        let signer = match rollback_signer(&self.trusted, order) {
            Ok(k) => k,
            Err(e) => {
                let e = BundleError::from(e);
                return Ok(self.refuse(s, e.code(), e.to_string().replace("bundle", "rollback order"), now_ms(), progress));
            }
        };
        s.signer = Some(signer);
        let o: RollbackOrder = match serde_json::from_str(&order.order) {
            Ok(o) => o,
            Err(e) => return self.finish(s, JobState::Rejected, "malformed", format!("rollback order: {e}"), now_ms(), progress),
        };
        s.plugin = Some(o.plugin.clone());
        if let Some(last) = self.store.last_sequence(&o.plugin)? {
            if o.sequence <= last {
                let e = BundleError::Replayed { sequence: o.sequence, last };
                return self.finish(s, JobState::Rejected, e.code(), e.to_string(), now_ms(), progress);
            }
        }
        self.store.accept_sequence(&o.plugin, o.sequence)?;
        s.step = Some("rolling-back".into());
        self.emit(&mut s, now_ms(), progress)?;
        match slot.rollback(&o.plugin) {
            Ok(v) => {
                self.watches.remove(&o.plugin);
                s.version = Some(v.clone());
                self.finish(s, JobState::Succeeded, "rolled-back", format!("{} rolled back to {v} on operator order", o.plugin), now_ms(), progress)
            }
            Err(why) => self.finish(s, JobState::Failed, "rollback-failed", why, now_ms(), progress),
        }
    }

    /// The host reports that `plugin` failed (trap, timeout, invalid decision). When the
    /// plugin was swapped in recently and this trips the [`RollbackRule`], the gateway
    /// rolls back by itself; the returned status (state rolled-back) is to be published.
    pub fn report_failure(&mut self, slot: &mut dyn PluginSlot, plugin: &str, now_ms: i64) -> Result<Option<JobStatus>, StoreError> {
        let Some((job_id, watch)) = self.watches.get_mut(plugin) else { return Ok(None) };
        match watch.record_failure(now_ms) {
            WatchVerdict::Keep => Ok(None),
            WatchVerdict::Expired => {
                self.watches.remove(plugin);
                Ok(None)
            }
            WatchVerdict::RollBack => {
                let job_id = job_id.clone();
                let rule = self.cfg.rule;
                self.watches.remove(plugin);
                let mut s = self.store.job(&job_id)?.unwrap_or_else(|| self.status(&job_id, JobState::Succeeded));
                let failed = s.version.clone();
                match slot.rollback(plugin) {
                    Ok(v) => {
                        s.state = JobState::RolledBack;
                        s.code = Some("auto-rollback".into());
                        s.reason = Some(format!(
                            "{plugin} {} failed {} times within {} ms of the swap; rolled back to {v} automatically",
                            failed.map(|v| v.to_string()).unwrap_or_default(),
                            rule.max_failures,
                            rule.within_ms
                        ));
                    }
                    Err(why) => {
                        s.state = JobState::Failed;
                        s.code = Some("auto-rollback-failed".into());
                        s.reason = Some(format!("{plugin} kept failing after the swap and rolling back failed: {why}"));
                    }
                }
                s.at_ms = now_ms;
                tracing::warn!(job = %s.job_id, plugin, reason = s.reason.as_deref().unwrap_or(""), "automatic rollback");
                self.store.put_job(&s)?;
                Ok(Some(s))
            }
        }
    }
}

/// Builds a signed rollback order (operator side).
pub fn sign_rollback(key: &OperatorKey, order: &RollbackOrder) -> SignedRollback {
    let text = serde_json::to_string(order).unwrap_or_default();
    SignedRollback { signature: key.sign(ROLLBACK_DOMAIN, text.as_bytes()), order: text }
}

/// The signer of a rollback order: a trusted key that may deploy (one Ed25519 verification).
fn rollback_signer(trusted: &TrustedKeys, order: &SignedRollback) -> Result<String, SigError> {
    keys::verify(trusted, ROLLBACK_DOMAIN, order.order.as_bytes(), &order.signature, Permission::Deploy)
}

/// A job request that parsed and names its topic's job id, its signature not yet checked
/// (what the link may look at cheaply for anything anyone with a broker account can send).
#[derive(Debug, Clone)]
pub struct UnverifiedJob(JobRequest);

/// The cheap checks of a raw job request on `jobs/{topic_job_id}`: size (at most twice
/// `max_bundle_bytes`, as [`Deployer::run_job`]), JSON, id. No cryptography.
pub fn precheck_job(raw: &[u8], topic_job_id: &str, max_bundle_bytes: usize) -> Result<UnverifiedJob, BundleError> {
    if raw.len() > max_bundle_bytes.saturating_mul(2) {
        return Err(BundleError::TooLarge { size: raw.len(), max: max_bundle_bytes.saturating_mul(2) });
    }
    let req: JobRequest = serde_json::from_slice(raw).map_err(|e| BundleError::Malformed(format!("job request: {e}")))?;
    if req.job_id != topic_job_id {
        return Err(BundleError::Malformed(format!("job id {:?} in the body does not match {topic_job_id:?} in the topic", req.job_id)));
    }
    Ok(UnverifiedJob(req))
}

impl UnverifiedJob {
    /// The signature check of the job (one Ed25519 verification, the same code
    /// [`Deployer::run_job`] runs): the bundle's ([`bundle::authenticate`]) or the
    /// rollback order's. Returns the signer's key id.
    pub fn verify(&self, trusted: &TrustedKeys) -> Result<String, BundleError> {
        match &self.0.action {
            JobAction::Deploy { bundle } => bundle::authenticate(bundle, trusted),
            JobAction::Rollback { order } => Ok(rollback_signer(trusted, order)?),
        }
    }
}

/// A [`PluginSlot`] that keeps components in memory and checks only what needs no
/// WebAssembly engine: the component header, and self-tests whose expected output is
/// literally `fail`. The host has the real slot (wasmtime); this one lets the fleet
/// layer, its integration tests and its benchmark run without the host.
#[derive(Debug, Default)]
pub struct MemorySlot {
    active: HashMap<String, (ActivePlugin, Vec<u8>)>,
    previous: HashMap<String, (ActivePlugin, Vec<u8>)>,
    staged: HashMap<String, (ActivePlugin, Vec<u8>)>,
}

/// The 8-byte header of a WebAssembly component (magic, version 0x0d, layer 1).
pub const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

impl PluginSlot for MemorySlot {
    fn active(&self, name: &str) -> Option<ActivePlugin> {
        self.active.get(name).map(|(a, _)| a.clone())
    }
    fn plugins(&self) -> Vec<ActivePlugin> {
        let mut v: Vec<_> = self.active.values().map(|(a, _)| a.clone()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
    fn stage(&mut self, m: &Manifest, component: &[u8]) -> Result<(), String> {
        if !component.starts_with(COMPONENT_HEADER) {
            return Err("not a WebAssembly component (bad header)".into());
        }
        let info = ActivePlugin { name: m.name.clone(), world: m.world, version: m.version.clone(), sha256: m.sha256.clone(), previous: None };
        self.staged.insert(m.name.clone(), (info, component.to_vec()));
        Ok(())
    }
    fn self_test(&mut self, m: &Manifest) -> Result<(), String> {
        match m.self_tests.iter().find(|t| t.expected.trim() == "fail") {
            Some(t) => Err(format!("self-test {:?} did not produce the expected output", t.name)),
            None => Ok(()),
        }
    }
    fn activate(&mut self, name: &str) -> Result<(), String> {
        let (mut info, bytes) = self.staged.remove(name).ok_or("nothing staged")?;
        if let Some(old) = self.active.remove(name) {
            info.previous = Some(old.0.version.clone());
            self.previous.insert(name.into(), old);
        }
        self.active.insert(name.into(), (info, bytes));
        Ok(())
    }
    fn discard(&mut self, name: &str) {
        self.staged.remove(name);
    }
    fn rollback(&mut self, name: &str) -> Result<Version, String> {
        let prev = self.previous.remove(name).ok_or_else(|| format!("no previous version of {name} is kept"))?;
        let v = prev.0.version.clone();
        self.active.insert(name.into(), prev);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{sign_bundle, SelfTest};
    use crate::messages::JobAction;

    const NOW: i64 = 1_700_000_000_000;

    struct Fx {
        key: OperatorKey,
        dep: Deployer,
        slot: MemorySlot,
    }

    fn fx() -> Fx {
        let key = OperatorKey::generate("ops").unwrap();
        let trusted = TrustedKeys::from_config(&[key.trusted_entry(&[Permission::Deploy])]).unwrap();
        let cfg = DeployConfig { gateway: "g1".into(), host_version: "0.1.0".parse().unwrap(), max_bundle_bytes: 1 << 20, rule: RollbackRule { max_failures: 3, within_ms: 60_000 } };
        let (dep, _) = Deployer::new(cfg, trusted, FleetStore::in_memory().unwrap(), NOW).unwrap();
        Fx { key, dep, slot: MemorySlot::default() }
    }

    fn component(tag: &str) -> Vec<u8> {
        [COMPONENT_HEADER, tag.as_bytes()].concat()
    }

    fn request(job: &str, f: &Fx, m: Manifest, comp: &[u8]) -> Vec<u8> {
        let bundle = sign_bundle(&f.key, m, comp).unwrap();
        serde_json::to_vec(&JobRequest { job_id: job.into(), action: JobAction::Deploy { bundle }, at_ms: NOW }).unwrap()
    }

    fn run(f: &mut Fx, job: &str, raw: &[u8]) -> (JobStatus, Vec<JobState>) {
        let mut seen = vec![];
        let s = f.dep.run_job(&mut f.slot, raw, job, &|| NOW, &mut |s| seen.push(s.state)).unwrap();
        (s, seen)
    }

    #[test]
    fn a_good_bundle_goes_queued_in_progress_succeeded_and_is_active() {
        let mut f = fx();
        let raw = request("j1", &f, crate::bundle::tests::manifest("policy", "1.0.0", 1), &component("v1"));
        let (s, states) = run(&mut f, "j1", &raw);
        assert_eq!(s.state, JobState::Succeeded, "{s:?}");
        assert_eq!(states.first(), Some(&JobState::Queued));
        assert!(states.contains(&JobState::InProgress));
        assert_eq!(f.slot.active("policy").unwrap().version.to_string(), "1.0.0");
        assert_eq!(s.signer.as_deref(), Some("ops"));
        // Delivered again (retained message on reconnect): not run twice.
        let (again, states) = run(&mut f, "j1", &raw);
        assert_eq!(again, s);
        assert_eq!(states, vec![JobState::Succeeded]);
    }

    #[test]
    fn a_failing_self_test_leaves_the_old_version_and_nothing_staged() {
        let mut f = fx();
        let raw = request("j1", &f, crate::bundle::tests::manifest("policy", "1.0.0", 1), &component("v1"));
        run(&mut f, "j1", &raw);
        let mut m = crate::bundle::tests::manifest("policy", "1.1.0", 2);
        m.self_tests.push(SelfTest { name: "night-visitor".into(), trace: "{}".into(), expected: "fail".into() });
        let raw = request("j2", &f, m, &component("v2"));
        let (s, _) = run(&mut f, "j2", &raw);
        assert_eq!(s.state, JobState::Failed);
        assert!(s.reason.unwrap().contains("night-visitor"));
        assert_eq!(f.slot.active("policy").unwrap().version.to_string(), "1.0.0");
        assert!(f.slot.staged.is_empty());
    }

    #[test]
    fn rejections_are_recorded_with_their_code() {
        let mut f = fx();
        let raw = request("j1", &f, crate::bundle::tests::manifest("policy", "1.0.0", 5), &component("v1"));
        run(&mut f, "j1", &raw);
        // Replay of an old sequence, downgrade without rollback, garbage.
        let raw = request("j2", &f, crate::bundle::tests::manifest("policy", "1.1.0", 5), &component("v2"));
        let (s, _) = run(&mut f, "j2", &raw);
        assert_eq!((s.state, s.code.as_deref()), (JobState::Rejected, Some("replayed")));
        let raw = request("j3", &f, crate::bundle::tests::manifest("policy", "0.9.0", 6), &component("v0"));
        let (s, _) = run(&mut f, "j3", &raw);
        assert_eq!((s.state, s.code.as_deref()), (JobState::Rejected, Some("downgrade")));
        let (s, _) = run(&mut f, "j4", b"{\"job_id\":");
        assert_eq!((s.state, s.code.as_deref()), (JobState::Rejected, Some("malformed")));
        assert_eq!(f.dep.job("j3").unwrap().unwrap().code.as_deref(), Some("downgrade"));
        assert_eq!(f.slot.active("policy").unwrap().version.to_string(), "1.0.0");
    }

    #[test]
    fn repeated_failures_soon_after_the_swap_roll_back_by_themselves() {
        let mut f = fx();
        let raw = request("j1", &f, crate::bundle::tests::manifest("policy", "1.0.0", 1), &component("v1"));
        run(&mut f, "j1", &raw);
        f.dep.watches.clear(); // v1 has been running for a long time
        let raw = request("j2", &f, crate::bundle::tests::manifest("policy", "2.0.0", 2), &component("v2"));
        run(&mut f, "j2", &raw);
        assert_eq!(f.dep.report_failure(&mut f.slot, "policy", NOW + 10).unwrap(), None);
        assert_eq!(f.dep.report_failure(&mut f.slot, "policy", NOW + 20).unwrap(), None);
        let s = f.dep.report_failure(&mut f.slot, "policy", NOW + 30).unwrap().unwrap();
        assert_eq!(s.state, JobState::RolledBack);
        assert!(s.reason.as_deref().unwrap().contains("rolled back to 1.0.0"), "{s:?}");
        assert_eq!(f.slot.active("policy").unwrap().version.to_string(), "1.0.0");
        assert_eq!(f.dep.job("j2").unwrap().unwrap().state, JobState::RolledBack);
    }

    #[test]
    fn the_rollback_rule_only_counts_failures_inside_its_window() {
        let rule = RollbackRule { max_failures: 2, within_ms: 100 };
        let mut w = FailureWatch::new(rule, 1000);
        assert_eq!(w.record_failure(1050), WatchVerdict::Keep);
        assert_eq!(w.record_failure(1100), WatchVerdict::RollBack);
        let mut w = FailureWatch::new(rule, 1000);
        assert_eq!(w.record_failure(1050), WatchVerdict::Keep);
        assert_eq!(w.record_failure(1101), WatchVerdict::Expired);
        assert!(w.expired(1101) && !w.expired(1100));
    }

    #[test]
    fn an_operator_rollback_needs_a_fresh_signed_order() {
        let mut f = fx();
        let raw = request("j1", &f, crate::bundle::tests::manifest("policy", "1.0.0", 1), &component("v1"));
        run(&mut f, "j1", &raw);
        let raw = request("j2", &f, crate::bundle::tests::manifest("policy", "1.1.0", 2), &component("v2"));
        run(&mut f, "j2", &raw);
        let order = sign_rollback(&f.key, &RollbackOrder { plugin: "policy".into(), sequence: 3, created_at_ms: NOW });
        let raw = serde_json::to_vec(&JobRequest { job_id: "r1".into(), action: JobAction::Rollback { order: order.clone() }, at_ms: NOW }).unwrap();
        let (s, _) = run(&mut f, "r1", &raw);
        assert_eq!((s.state, s.version.as_ref().map(|v| v.to_string())), (JobState::Succeeded, Some("1.0.0".into())));
        let raw = serde_json::to_vec(&JobRequest { job_id: "r2".into(), action: JobAction::Rollback { order }, at_ms: NOW }).unwrap();
        let (s, _) = run(&mut f, "r2", &raw);
        assert_eq!(s.code.as_deref(), Some("replayed"));
    }

    #[test]
    fn a_restart_marks_unfinished_jobs_failed() {
        let store = FleetStore::in_memory().unwrap();
        let mut st = JobStatus {
            job_id: "j9".into(),
            gateway: "g1".into(),
            state: JobState::InProgress,
            step: Some("staging".into()),
            plugin: None,
            version: None,
            code: None,
            reason: None,
            signer: None,
            at_ms: 1,
        };
        store.put_job(&st).unwrap();
        st.state = JobState::Failed;
        let cfg = DeployConfig { gateway: "g1".into(), host_version: "0.1.0".parse().unwrap(), max_bundle_bytes: 1 << 20, rule: RollbackRule::default() };
        let (dep, interrupted) = Deployer::new(cfg, TrustedKeys::default(), store, NOW).unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(dep.job("j9").unwrap().unwrap().code.as_deref(), Some("interrupted"));
    }
}
