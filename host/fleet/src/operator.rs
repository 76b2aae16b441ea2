//! The operator's side, for the `gate` CLI: sign bundles, deploy to a gateway or a whole
//! site with progress, roll back, read fleet status from the retained status messages,
//! and send signed commands — all through the broker.
//!
//! Everything a gateway says is checked against the key the operator's [`Inventory`]
//! holds for it: only genuine progress and replies count as answers; anything else is
//! set aside in [`Operator::take_ignored`] for the CLI to show as forged or unverified.
//! A site means the gateways enrolled in it, never whoever has a status on the broker.

use crate::bundle::{sign_bundle, Bundle, BundleError, Manifest};
use crate::commands::{sign_command, Command, CommandAction, CommandError, CommandReply};
use crate::deploy::sign_rollback;
use crate::inventory::Inventory;
use crate::keys::{KeyError, OperatorKey};
use crate::link::{mqtt_options, BrokerConfig, LinkError};
use crate::messages::{now_ms, JobAction, JobRequest, JobState, JobStatus, RollbackOrder, Status};
use crate::signed::Trust;
use crate::topics::{self, GatewayTopics, TopicError};
use rumqttc::{AsyncClient, Event, Packet, Publish, QoS};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Operator-side failures.
#[derive(Debug, Error)]
pub enum OperatorError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("could not connect to the broker at {0} within the timeout")]
    ConnectTimeout(String),
    #[error("the broker connection failed: {0}")]
    Mqtt(String),
    #[error("site {0:?} has no enrolled gateway (enrol them with `gate fleet enroll`)")]
    EmptySite(String),
    #[error("no reply to command {0:?} within the timeout")]
    NoReply(String),
}

/// Which gateways a deployment goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Gateway {
        site: String,
        gateway: String,
    },
    /// Every gateway enrolled in the site's inventory, whatever the broker says.
    Site(String),
}

/// One row of `gate fleet status`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayView {
    pub site: String,
    pub gateway: String,
    /// The status, when one was heard that is genuine (or unverified, for a gateway not
    /// enrolled). None: unknown — no status, an erased one, or a forged one.
    pub status: Option<Status>,
    /// How far the status can be believed; `Forged` / `Unverified` say why.
    pub trust: Trust,
}

/// One gateway's report of a month, as heard on the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportView {
    pub site: String,
    pub gateway: String,
    /// The report's JSON text when genuine (or unverified, for a gateway not enrolled);
    /// None when missing or forged.
    pub body: Option<String>,
    /// How far it can be believed; `Forged` / `Missing` say why.
    pub trust: Trust,
}

/// A gateway message the operator did not believe, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Ignored {
    pub topic: String,
    pub trust: Trust,
}

/// Reads and signs a component file into a bundle (`gate plugin sign`).
pub fn sign_bundle_file(key_file: &Path, component_file: &Path, manifest: Manifest) -> Result<Bundle, OperatorError> {
    let key = OperatorKey::load(key_file)?;
    let component = std::fs::read(component_file).map_err(|source| OperatorError::Io { path: component_file.display().to_string(), source })?;
    Ok(sign_bundle(&key, manifest, &component)?)
}

/// Reads a bundle file written by the CLI.
pub fn read_bundle_file(path: &Path) -> Result<Bundle, OperatorError> {
    let raw = std::fs::read(path).map_err(|source| OperatorError::Io { path: path.display().to_string(), source })?;
    serde_json::from_slice(&raw).map_err(|e| OperatorError::Bundle(BundleError::Malformed(format!("{}: {e}", path.display()))))
}

/// A fresh job id: `{prefix}-{unix ms}-{random}`.
pub fn new_job_id(prefix: &str) -> String {
    use rand_core::RngCore;
    format!("{prefix}-{}-{:08x}", now_ms(), rand_core::OsRng.next_u32())
}

/// An operator's connection to the broker.
pub struct Operator {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
    inventory: Inventory,
    ignored: Vec<Ignored>,
}

impl Operator {
    /// Connects (waiting for the broker's CONNACK up to `timeout`).
    pub async fn connect(broker: &BrokerConfig, client_id: &str, timeout: Duration) -> Result<Self, OperatorError> {
        let opts = mqtt_options(broker, client_id)?;
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Result<(), String>>();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(Ok(()));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(e) => {
                        let _ = up_tx.send(Err(e.to_string()));
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        let addr = format!("{}:{}", broker.host, broker.port);
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, up_rx.recv()).await {
                Ok(Some(Ok(()))) => return Ok(Self { client, rx, task, inventory: Inventory::default(), ignored: Vec::new() }),
                Ok(Some(Err(e))) => tracing::debug!(error = %e, "operator connect attempt failed"),
                Ok(None) | Err(_) => {
                    task.abort();
                    return Err(OperatorError::ConnectTimeout(addr));
                }
            }
        }
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), OperatorError> {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.map_err(|e| OperatorError::Mqtt(e.to_string()))
    }

    async fn subscribe(&self, filter: String) -> Result<(), OperatorError> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| OperatorError::Mqtt(e.to_string()))
    }

    /// Checks gateway messages against `inventory` from now on (empty: nothing is genuine).
    pub fn set_inventory(&mut self, inventory: Inventory) {
        self.inventory = inventory;
    }

    /// The inventory messages are checked against.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Gateway messages that arrived where an answer was awaited and were not believed
    /// (forged, or from a gateway not enrolled); cleared by this call.
    pub fn take_ignored(&mut self) -> Vec<Ignored> {
        std::mem::take(&mut self.ignored)
    }

    /// Checks a message and returns its body when genuine; anything else is set aside.
    fn genuine(&mut self, p: &Publish) -> Option<String> {
        let (trust, body) = self.inventory.open(&p.topic, &p.payload);
        if trust.is_genuine() {
            return body;
        }
        tracing::warn!(topic = %p.topic, trust = trust.label(), why = trust.why(), "gateway message not believed");
        self.ignored.push(Ignored { topic: p.topic.clone(), trust });
        None
    }

    /// Status of every gateway (of `site`, or of the whole fleet): the retained status
    /// messages collected until no new one arrived for `settle`, checked against the
    /// inventory, plus a row for every enrolled gateway whose status is missing, erased
    /// or forged (status None: unknown, never "not in the site").
    pub async fn fleet_status(&mut self, site: Option<&str>, settle: Duration) -> Result<Vec<GatewayView>, OperatorError> {
        let filter = match site {
            Some(s) => topics::site_status_filter(s)?,
            None => topics::fleet_status_filter(),
        };
        self.subscribe(filter.clone()).await?;
        let mut seen: BTreeMap<(String, String), (Option<Status>, Trust)> = BTreeMap::new();
        while let Ok(Some(p)) = tokio::time::timeout(settle, self.rx.recv()).await {
            let Some((s, g)) = topics::parse_status_topic(&p.topic) else { continue };
            let k = (s.to_string(), g.to_string());
            if p.payload.is_empty() {
                // An erased retained status: what it said is gone, not the gateway.
                seen.entry(k).or_insert((None, Trust::Missing("status erased".into())));
                continue;
            }
            let (trust, body) = self.inventory.open(&p.topic, &p.payload);
            let status = match (&trust, body.as_deref().map(serde_json::from_str::<Status>)) {
                (Trust::Forged(_), _) => None,
                (_, Some(Ok(st))) if st.site == s && st.gateway == g => Some(st),
                (_, Some(Ok(_))) => {
                    seen.insert(k, (None, Trust::Forged("status names another gateway than its topic".into())));
                    continue;
                }
                (_, _) => {
                    tracing::warn!(topic = %p.topic, "unreadable status message");
                    None
                }
            };
            // A genuine status is never replaced by one that is not.
            if seen.get(&k).is_some_and(|(_, t)| t.is_genuine()) && !trust.is_genuine() {
                continue;
            }
            seen.insert(k, (status, trust));
        }
        let _ = self.client.unsubscribe(filter).await;
        for k in self.inventory.gateways(site) {
            seen.entry(k).or_insert((None, Trust::Missing("no status on the broker".into())));
        }
        Ok(seen.into_iter().map(|((site, gateway), (status, trust))| GatewayView { site, gateway, status, trust }).collect())
    }

    /// Every gateway's retained report of `period` at `site`, collected until no new one
    /// arrived for `settle` and checked against the inventory, plus a row for each enrolled
    /// gateway of the site whose report is missing or forged (body None).
    pub async fn site_reports(&mut self, site: &str, period: &str, settle: Duration) -> Result<Vec<ReportView>, OperatorError> {
        let filter = topics::site_report_filter(site, period)?;
        self.subscribe(filter.clone()).await?;
        let mut seen: BTreeMap<(String, String), (Option<String>, Trust)> = BTreeMap::new();
        while let Ok(Some(p)) = tokio::time::timeout(settle, self.rx.recv()).await {
            let Some((s, g, per)) = topics::parse_report_topic(&p.topic) else { continue };
            if s != site || per != period || p.payload.is_empty() {
                continue;
            }
            let k = (s.to_string(), g.to_string());
            let (trust, body) = self.inventory.open(&p.topic, &p.payload);
            if seen.get(&k).is_some_and(|(_, t)| t.is_genuine()) && !trust.is_genuine() {
                continue;
            }
            let body = if matches!(trust, Trust::Forged(_)) { None } else { body };
            seen.insert(k, (body, trust));
        }
        let _ = self.client.unsubscribe(filter).await;
        for k in self.inventory.gateways(Some(site)) {
            seen.entry(k).or_insert((None, Trust::Missing(format!("no report for {period} on the broker"))));
        }
        Ok(seen.into_iter().map(|((site, gateway), (body, trust))| ReportView { site, gateway, body, trust }).collect())
    }

    fn gateways(&mut self, target: &Target) -> Result<Vec<GatewayTopics>, OperatorError> {
        match target {
            Target::Gateway { site, gateway } => Ok(vec![GatewayTopics::new(site, gateway)?]),
            Target::Site(site) => {
                let gws = self.inventory.gateways(Some(site));
                if gws.is_empty() {
                    return Err(OperatorError::EmptySite(site.clone()));
                }
                gws.iter().map(|(s, g)| GatewayTopics::new(s, g).map_err(OperatorError::from)).collect()
            }
        }
    }

    /// Sends a job (retained, so offline gateways get it when they return) to every target
    /// gateway and streams progress to `progress` until each reaches a terminal state or
    /// `timeout` passes. Returns the last status seen per gateway (None: nothing heard —
    /// the job stays queued on the broker). Finished jobs' retained requests are cleared.
    pub async fn run_job(
        &mut self,
        target: &Target,
        job_id: &str,
        action: JobAction,
        timeout: Duration,
        progress: &mut dyn FnMut(&str, &JobStatus),
    ) -> Result<Vec<(String, Option<JobStatus>)>, OperatorError> {
        let gws = self.gateways(target)?;
        let req = JobRequest { job_id: job_id.into(), action, at_ms: now_ms() };
        let payload = serde_json::to_vec(&req).map_err(|e| OperatorError::Mqtt(e.to_string()))?;
        let mut last: BTreeMap<String, Option<JobStatus>> = BTreeMap::new();
        let mut by_topic = BTreeMap::new();
        for g in &gws {
            let t = g.job_progress(job_id)?;
            self.subscribe(t.clone()).await?;
            by_topic.insert(t, g.gateway().to_string());
            last.insert(g.gateway().to_string(), None);
        }
        for g in &gws {
            self.publish(g.job(job_id)?, true, payload.clone()).await?;
        }
        let deadline = Instant::now() + timeout;
        let done = |l: &BTreeMap<String, Option<JobStatus>>| l.values().all(|s| s.as_ref().is_some_and(|s| s.state.is_terminal()));
        while !done(&last) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => {
                    let Some(gw) = by_topic.get(p.topic.as_str()).cloned() else { continue };
                    let Some(body) = self.genuine(&p) else { continue };
                    if let Ok(s) = serde_json::from_str::<JobStatus>(&body) {
                        if s.job_id == job_id {
                            progress(&gw, &s);
                            last.insert(gw, Some(s));
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        for g in &gws {
            if last.get(g.gateway()).and_then(|s| s.as_ref()).is_some_and(|s| s.state.is_terminal()) {
                self.publish(g.job(job_id)?, true, Vec::new()).await?;
            }
        }
        Ok(last.into_iter().collect())
    }

    /// The retained progress of a job on one gateway, waiting up to `wait` for one that
    /// satisfies `pred` (e.g. "rolled back"). Returns the last one seen.
    pub async fn job_status(&mut self, site: &str, gateway: &str, job_id: &str, wait: Duration, pred: impl Fn(&JobStatus) -> bool) -> Result<Option<JobStatus>, OperatorError> {
        let topic = GatewayTopics::new(site, gateway)?.job_progress(job_id)?;
        self.subscribe(topic.clone()).await?;
        let deadline = Instant::now() + wait;
        let mut last = None;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if p.topic != topic {
                continue;
            }
            let Some(body) = self.genuine(&p) else { continue };
            if let Ok(s) = serde_json::from_str::<JobStatus>(&body) {
                let hit = pred(&s);
                last = Some(s);
                if hit {
                    break;
                }
            }
        }
        let _ = self.client.unsubscribe(topic).await;
        Ok(last)
    }

    /// `gate plugin deploy`: a signed bundle to a gateway or a site.
    pub async fn deploy(&mut self, target: &Target, bundle: &Bundle, timeout: Duration, progress: &mut dyn FnMut(&str, &JobStatus)) -> Result<Vec<(String, Option<JobStatus>)>, OperatorError> {
        let name = bundle.unverified_manifest().map(|m| m.name).unwrap_or_else(|_| "bundle".into());
        let job = new_job_id(&format!("deploy-{name}"));
        self.run_job(target, &job, JobAction::Deploy { bundle: bundle.clone() }, timeout, progress).await
    }

    /// `gate plugin rollback`: a signed order to restore the kept previous version.
    /// `sequence` must be newer than any deployment of the plugin (e.g. the current Unix ms).
    pub async fn rollback(
        &mut self,
        key: &OperatorKey,
        target: &Target,
        plugin: &str,
        sequence: u64,
        timeout: Duration,
        progress: &mut dyn FnMut(&str, &JobStatus),
    ) -> Result<Vec<(String, Option<JobStatus>)>, OperatorError> {
        let order = sign_rollback(key, &RollbackOrder { plugin: plugin.into(), sequence, created_at_ms: now_ms() });
        let job = new_job_id(&format!("rollback-{plugin}"));
        self.run_job(target, &job, JobAction::Rollback { order }, timeout, progress).await
    }

    /// Sends a signed command and waits for its genuine reply (correlated by the command id).
    pub async fn command(&mut self, key: &OperatorKey, site: &str, gateway: &str, action: CommandAction, timeout: Duration) -> Result<CommandReply, OperatorError> {
        let mut r = self.command_many(key, &[(site.to_string(), gateway.to_string())], action, timeout).await?;
        r.pop().map(|(_, _, r)| r).unwrap_or_else(|| Err(OperatorError::NoReply(String::new())))
    }

    /// Sends a signed command to each gateway (its own id each) and waits, all at once,
    /// until every one has answered with a genuine reply or `timeout` passes. Returns,
    /// per gateway in order, its reply or [`OperatorError::NoReply`].
    pub async fn command_many(
        &mut self,
        key: &OperatorKey,
        gateways: &[(String, String)],
        action: CommandAction,
        timeout: Duration,
    ) -> Result<Vec<(String, String, Result<CommandReply, OperatorError>)>, OperatorError> {
        let now = now_ms();
        let mut waiting: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut out: Vec<(String, String, Result<CommandReply, OperatorError>)> = Vec::new();
        for (site, gateway) in gateways {
            let t = GatewayTopics::new(site, gateway)?;
            let id = new_job_id("cmd");
            let cmd = Command { id: id.clone(), site: site.clone(), gateway: gateway.clone(), issued_at_ms: now, expires_at_ms: now + timeout.as_millis() as i64, action: action.clone() };
            let signed = sign_command(key, &cmd)?;
            let reply_topic = t.command_reply(&id)?;
            self.subscribe(reply_topic.clone()).await?;
            self.publish(t.command(&id)?, false, serde_json::to_vec(&signed).unwrap_or_default()).await?;
            waiting.insert(reply_topic, (out.len(), id.clone()));
            out.push((site.clone(), gateway.clone(), Err(OperatorError::NoReply(id))));
        }
        let deadline = Instant::now() + timeout;
        let mut answered = 0;
        while answered < waiting.len() {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(p)) => {
                    // Every message on a reply topic is checked (and a forged one noted),
                    // also after the genuine reply has come.
                    let Some((i, id)) = waiting.get(p.topic.as_str()).cloned() else { continue };
                    let Some(body) = self.genuine(&p) else { continue };
                    if let Ok(r) = serde_json::from_str::<CommandReply>(&body) {
                        if r.id == id && out[i].2.is_err() {
                            out[i].2 = Ok(r);
                            answered += 1;
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Every event and alarm message (of `site`, or of the fleet) heard for `listen`, as
    /// received: for `gate fleet verify-events`, which checks each one.
    pub async fn listen_events(&mut self, site: Option<&str>, listen: Duration) -> Result<Vec<(String, Vec<u8>)>, OperatorError> {
        let s = match site {
            Some(s) => {
                topics::check_level("site", s)?;
                s
            }
            None => "+",
        };
        let filters = [format!("{}/{s}/+/events", topics::ROOT), format!("{}/{s}/+/alarms", topics::ROOT)];
        for f in &filters {
            self.subscribe(f.clone()).await?;
        }
        let deadline = Instant::now() + listen;
        let mut out = Vec::new();
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if crate::signed::classify(&p.topic).is_some_and(|(_, _, k)| k == crate::signed::Kind::Event) {
                out.push((p.topic.clone(), p.payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Disconnects cleanly.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

/// `gate fleet status` as a table: site, gateway, online, plugins, last job, and
/// whether the status is genuine. A gateway with no believable status is `unknown`.
pub fn format_status_table(rows: &[GatewayView]) -> String {
    let mut out = String::from("SITE\tGATEWAY\tONLINE\tPLUGINS\tLAST JOB\tSTATUS\n");
    for r in rows {
        let trust = match &r.trust {
            Trust::Genuine => "genuine".to_string(),
            t => format!("{}: {}", t.label(), t.why()),
        };
        let Some(st) = &r.status else {
            out.push_str(&format!("{}\t{}\tunknown\t-\t-\t{trust}\n", r.site, r.gateway));
            continue;
        };
        let plugins: Vec<String> = st.plugins.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        let job = match &st.last_job {
            Some(j) => format!("{} {}{}", j.job_id, j.state.as_str(), j.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default()),
            None => "-".into(),
        };
        let trust = match &st.event_log_recovered {
            Some(f) => format!("{trust}; EVENT LOG DAMAGED at start, moved aside to {f}"),
            None => trust,
        };
        out.push_str(&format!("{}\t{}\t{}\t{}\t{}\t{trust}\n", r.site, r.gateway, if st.online { "yes" } else { "NO" }, if plugins.is_empty() { "-".into() } else { plugins.join(",") }, job));
    }
    out
}

/// One progress line for the CLI: `gateway: state [step] reason`.
pub fn format_progress(gateway: &str, s: &JobStatus) -> String {
    let mut line = format!("{gateway}: {}", s.state.as_str());
    if let Some(step) = &s.step {
        line.push_str(&format!(" [{step}]"));
    }
    if let Some(r) = &s.reason {
        line.push_str(&format!(" {r}"));
    }
    if matches!(s.state, JobState::Rejected | JobState::Failed) {
        if let Some(c) = &s.code {
            line.push_str(&format!(" ({c})"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::PluginInfo;

    #[test]
    fn the_status_table_shows_offline_gateways_and_their_last_job() {
        let st = Status {
            site: "s".into(),
            gateway: "g".into(),
            online: false,
            host_version: "0.1.0".parse().unwrap(),
            plugins: vec![PluginInfo { name: "policy".into(), world: crate::bundle::World::PolicyPlugin, version: "1.2.0".parse().unwrap(), sha256: "ab".into(), previous: None }],
            last_job: Some(JobStatus {
                job_id: "j1".into(),
                gateway: "g".into(),
                state: JobState::Rejected,
                step: None,
                plugin: None,
                version: None,
                code: Some("replayed".into()),
                reason: Some("old".into()),
                signer: None,
                at_ms: 0,
            }),
            outbox: None,
            directory_version: None,
            event_log_recovered: None,
            at_ms: 0,
        };
        let t = format_status_table(&[
            GatewayView { site: "s".into(), gateway: "g".into(), status: Some(st), trust: Trust::Genuine },
            GatewayView { site: "s".into(), gateway: "h".into(), status: None, trust: Trust::Missing("status erased".into()) },
        ]);
        assert!(t.contains("s\tg\tNO\tpolicy@1.2.0\tj1 rejected (old)\tgenuine"), "{t}");
        assert!(t.contains("s\th\tunknown\t-\t-\tmissing: status erased"), "{t}");
    }
}
