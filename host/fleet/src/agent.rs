//! The gateway's fleet agent: turns [`Inbound`] messages from the link into deployment
//! jobs and authorised commands, publishes progress, replies and status, and logs every
//! command with its sender. The host calls [`Agent::handle`] for each inbound message
//! (from the thread or task that owns its plugin runtime) and
//! [`Agent::report_plugin_failure`] when a plugin traps, times out or decides garbage.

use crate::commands::{self, AuthorisedCommand, Executed};
use crate::deploy::{Deployer, PluginSlot};
use crate::limit::{Rate, ShedLog, TokenBucket};
use crate::link::{Inbound, LinkHandle};
use crate::messages::{GatewayClock, JobStatus, PluginInfo, Status};
use crate::store::{CommandLogEntry, StoreError};
use semver::Version;

/// What the host does with an authorised command; the `Ok` detail (and any secret, which
/// is sealed to the sender) or the `Err` reason goes into the reply. Door commands must
/// stay one-shot and must not bypass fire release.
pub trait CommandExecutor {
    fn execute(&mut self, cmd: &AuthorisedCommand) -> Result<Executed, String>;
}

/// Deployment and command handling for one gateway.
pub struct Agent {
    site: String,
    gateway: String,
    host_version: Version,
    deployer: Deployer,
    link: LinkHandle,
    clock: GatewayClock,
    /// Commands refused so far (none of them stored).
    refused: u64,
    refusals: TokenBucket,
    unanswered: ShedLog,
    /// The subject directory's version as the host last set it (0: not a synced directory).
    directory_version: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Where a damaged event log was moved aside at start, for the status.
    event_log_recovered: Option<String>,
}

/// Refusal replies sent at most (per second, burst): enough for an operator's mistakes,
/// too few for a flood to cost the broker or the gateway anything.
pub const REFUSAL_REPLIES: Rate = Rate { per_second: 5, burst: 20 };

impl Agent {
    /// `interrupted` are the jobs [`Deployer::new`] found unfinished; they are published.
    /// `clock` is the gateway's: command windows, job times and the rollback window use it.
    pub fn new(site: &str, gateway: &str, host_version: Version, deployer: Deployer, link: LinkHandle, interrupted: &[JobStatus], clock: GatewayClock) -> Self {
        for j in interrupted {
            link.publish_job_status(j);
        }
        Self {
            site: site.into(),
            gateway: gateway.into(),
            host_version,
            deployer,
            link,
            clock,
            refused: 0,
            refusals: TokenBucket::new(REFUSAL_REPLIES),
            unanswered: ShedLog::new("command refusals", std::time::Duration::from_secs(10)),
            directory_version: Default::default(),
            event_log_recovered: None,
        }
    }

    /// The file a damaged event log was moved aside to at start, said in every status.
    pub fn set_event_log_recovered(&mut self, aside: Option<String>) {
        self.event_log_recovered = aside;
    }

    /// Where the host keeps the directory's version, for the status (0: none).
    pub fn set_directory_version(&mut self, v: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        self.directory_version = v;
    }

    /// The birth status for the current plugins and last job.
    pub fn status(&self, slot: &dyn PluginSlot) -> Status {
        Status {
            site: self.site.clone(),
            gateway: self.gateway.clone(),
            online: true,
            host_version: self.host_version.clone(),
            plugins: slot.plugins().iter().map(PluginInfo::from).collect(),
            last_job: self.deployer.last_job().ok().flatten(),
            outbox: None,
            directory_version: Some(self.directory_version.load(std::sync::atomic::Ordering::Acquire)).filter(|v| *v > 0),
            event_log_recovered: self.event_log_recovered.clone(),
            at_ms: self.clock.now_ms(),
        }
    }

    /// The deployer (job lookups, store).
    pub fn deployer(&mut self) -> &mut Deployer {
        &mut self.deployer
    }

    /// Handles one inbound message. Returns the end status of a job run now for the first
    /// time (not of a repeated job id or a command), so the host can audit what changed.
    pub fn handle(&mut self, msg: Inbound, slot: &mut dyn PluginSlot, exec: &mut dyn CommandExecutor) -> Result<Option<JobStatus>, StoreError> {
        match msg {
            Inbound::Job { job_id, payload, .. } => {
                let link = self.link.clone();
                let clock = self.clock.clone();
                let before = self.deployer.job(&job_id)?;
                let end = self.deployer.run_job(slot, &payload, &job_id, &|| clock.now_ms(), &mut |s| link.publish_job_status(s))?;
                tracing::debug!(job = %end.job_id, state = end.state.as_str(), "job handled");
                if before.is_none() {
                    self.link.update_status(self.status(slot));
                    return Ok(Some(end));
                }
                Ok(None)
            }
            Inbound::Command { id, checked } => {
                // A directory change moves the version the status reports.
                let before = self.directory_version.load(std::sync::atomic::Ordering::Acquire);
                self.command(&id, checked, exec)?;
                if self.directory_version.load(std::sync::atomic::Ordering::Acquire) != before {
                    self.link.update_status(self.status(slot));
                }
                Ok(None)
            }
        }
    }

    /// Carries out a command the link checked (its signature verified once, there) if it
    /// is still within its window and its id is new; refuses anything else.
    fn command(&mut self, id: &str, checked: Result<commands::AuthenticCommand, commands::CommandError>, exec: &mut dyn CommandExecutor) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let auth = checked.and_then(|c| commands::admit(c, self.deployer.store(), now));
        let reply = match auth {
            Ok(cmd) => {
                let action = serde_json::to_string(&cmd.command.action).unwrap_or_default();
                let outcome = exec.execute(&cmd);
                let reply = cmd.reply(outcome, self.clock.now_ms());
                tracing::info!(command = %id, sender = %cmd.sender, action = %action, ok = reply.ok, "remote command");
                self.deployer.store().log_command(&CommandLogEntry {
                    id: id.into(),
                    sender: Some(cmd.sender.clone()),
                    action,
                    ok: reply.ok,
                    code: reply.code.clone(),
                    detail: reply.detail.clone(),
                    at_ms: now,
                })?;
                reply
            }
            Err(e) => {
                // Anyone with a broker account can send these, or replay a command they
                // saw: a refusal is counted and answered at a bounded rate, never stored.
                self.refused = self.refused.saturating_add(1);
                if !self.refusals.take() {
                    self.unanswered.shed("refusal replies over their rate");
                    return Ok(());
                }
                let reply = commands::refusal(id, &e, now);
                tracing::warn!(command = %id, code = %reply.code, reason = %reply.detail, refused = self.refused, "remote command refused");
                reply
            }
        };
        self.link.publish_reply(&reply);
        Ok(())
    }

    /// Housekeeping now and then (about every second): reports refusals not yet reported.
    pub fn tick(&mut self) {
        self.unanswered.flush();
    }

    /// The host saw `plugin` fail; may roll it back by itself (and says so on the broker).
    pub fn report_plugin_failure(&mut self, slot: &mut dyn PluginSlot, plugin: &str) -> Result<Option<JobStatus>, StoreError> {
        let rolled = self.deployer.report_failure(slot, plugin, self.clock.now_ms())?;
        if let Some(s) = &rolled {
            self.link.publish_job_status(s);
            self.link.update_status(self.status(slot));
        }
        Ok(rolled)
    }
}
