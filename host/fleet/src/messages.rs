//! JSON payloads of the gateway ↔ broker messages (status, events, jobs). Their JSON
//! schemas are checked in under `host/fleet/schema/`. None of them has a field for
//! biometric data, a PIN or a raw card number (a test walks the schemas to prove it).

use crate::bundle::{Bundle, World};
use crate::keys::SignatureBlock;
use schemars::JsonSchema;
use semver::Version;
use serde::{Deserialize, Serialize};

/// A plugin the gateway runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PluginInfo {
    pub name: String,
    pub world: World,
    pub version: Version,
    /// sha256 of the active component.
    pub sha256: String,
    /// Version kept for rollback, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Version>,
}

/// Store-and-forward counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct OutboxStats {
    /// Events stored but not yet acknowledged by the broker.
    pub pending: u64,
    /// Events never published because they fell past the retention bound.
    pub dropped: u64,
}

/// The retained `status` message: birth (online = true) and, as the MQTT last will,
/// death (online = false). The death message carries the plugins as of the connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    pub site: String,
    pub gateway: String,
    pub online: bool,
    /// Host software version.
    pub host_version: Version,
    #[serde(default)]
    pub plugins: Vec<PluginInfo>,
    /// The most recent deployment job and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxStats>,
    /// The version of the subject directory the property platform synced (absent when the
    /// gateway's directory is a subjects file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_version: Option<u64>,
    /// Set when the event log failed its integrity check at start: the file name the damaged
    /// log was moved aside to (a new log was started; see `gate fleet status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_recovered: Option<String>,
    /// When this status was made, Unix ms (for a death message: when the session began).
    pub at_ms: i64,
}

/// An event (decision or alarm) as published; `id` is unique per gateway so consumers
/// de-duplicate at-least-once delivery, `seq` orders them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventMessage {
    pub id: String,
    pub seq: i64,
    pub at_ms: i64,
    /// "decision", "alarm", …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door: Option<String>,
    /// The host's record of the event (the event log's `body`).
    pub body: serde_json::Value,
}

/// What an operator asks a gateway to do with its plugins (topic `jobs/{job_id}`, retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobRequest {
    pub job_id: String,
    pub action: JobAction,
    /// Unix ms when the operator queued it.
    pub at_ms: i64,
}

/// The deployment actions; both are signed by an operator key with `deploy` permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum JobAction {
    /// Install a signed bundle.
    Deploy { bundle: Bundle },
    /// Go back to the version the gateway kept.
    Rollback { order: SignedRollback },
}

/// A rollback order: `order` is the JSON of a [`RollbackOrder`], signed as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SignedRollback {
    pub order: String,
    pub signature: SignatureBlock,
}

/// Restore the previous version of `plugin`; `sequence` shares the plugin's replay counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackOrder {
    pub plugin: String,
    pub sequence: u64,
    pub created_at_ms: i64,
}

/// Job life cycle (AWS IoT Jobs style), plus `rolled-back` for a version the gateway
/// removed again by itself or on order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    RolledBack,
}

impl JobState {
    /// True when the job will not change again (except a later automatic rollback of a success).
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::InProgress)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::InProgress => "in-progress",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Rejected => "rejected",
            JobState::RolledBack => "rolled-back",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::InProgress, Self::Succeeded, Self::Failed, Self::Rejected, Self::RolledBack].into_iter().find(|x| x.as_str() == s)
    }
}

/// Progress / outcome of a job (topic `jobs/{job_id}/progress`, retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobStatus {
    pub job_id: String,
    pub gateway: String,
    pub state: JobState,
    /// Current step while in progress: verifying, staging, self-test, activating, watching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Machine-readable reason code when rejected / failed / rolled back (e.g. "replayed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Human-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Operator key that signed the job, once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    pub at_ms: i64,
}

/// Current wall-clock time in Unix ms: the operator's side (signing, waiting for answers).
/// The gateway's side reads its own [`GatewayClock`] instead.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The gateway's clock as the fleet side reads it: the same clock that stamps events and
/// runs door timers (wall in service on hardware, virtual in a trace-driven run), so the
/// outbox's age bound, status times, command windows and the rollback window compare
/// times of one clock and never a trace's time with today's date.
#[derive(Clone)]
pub struct GatewayClock(std::sync::Arc<dyn Fn() -> i64 + Send + Sync>);

impl GatewayClock {
    /// The system clock (for a gateway whose clock is the wall clock, and for tests).
    pub fn wall() -> Self {
        Self(std::sync::Arc::new(now_ms))
    }
    /// A clock read through `f` (the host passes its gateway clock).
    pub fn new(f: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for GatewayClock {
    fn default() -> Self {
        Self::wall()
    }
}

impl std::fmt::Debug for GatewayClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayClock({})", self.now_ms())
    }
}
