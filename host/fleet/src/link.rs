//! The gateway's MQTT link (rumqttc, MQTT 5): TLS via rustls with a CA file and optional client
//! certificate, or username / password; the gateway's Maximum Packet Size stated in its
//! CONNECT, so the broker drops what is larger instead of sending it; reconnect with
//! exponential back-off; the
//! retained birth status and the last-will death status; subscriptions to jobs and
//! commands; draining the [`Outbox`] with QoS 1 (cursor advanced on PUBACK); and the
//! rate-limited publish path for integration plugins.
//!
//! One task owns the rumqttc event loop and all link state ([`LinkState`]); the host
//! talks to it through a cloneable [`LinkHandle`] and receives [`Inbound`] messages.

use crate::commands::{AuthenticCommand, CommandError};
use crate::keys::TrustedKeys;
use crate::limit::{Rate, ShedLog, TokenBucket};
use crate::messages::{GatewayClock, JobStatus, Status};
use crate::outbox::{Outbox, OutboxError};
use crate::signed::{DeviceKey, Kind};
use crate::topics::{GatewayTopics, TopicError};
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::{MqttOptions, Outgoing, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

/// TLS files for the broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate chain, for brokers that require client certificates.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// Where and how to reach the broker (the site configuration's `[fleet.broker]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// MQTT keep-alive, seconds (the broker declares the client dead after 1.5×). The
    /// gateway's link uses 5 to 65,535: a smaller value is raised to 5, a larger one cut.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
}

fn default_keep_alive() -> u64 {
    15
}

/// The shortest keep-alive the gateway's MQTT 5 link uses (rumqttc's lower bound).
pub const LINK_MIN_KEEP_ALIVE_SECS: u64 = 5;

/// Largest MQTT packet either side of the link handles (bundles travel as one message).
pub const MAX_PACKET_BYTES: usize = 40 * 1024 * 1024;

/// Problems setting up or running the link.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("TLS file {path}: {why}")]
    TlsFile { path: String, why: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("the MQTT client's request queue is closed")]
    Closed,
    #[error("the broker refused an event in its PUBACK ({0}); it stays in the outbox")]
    Refused(String),
}

/// Whether an MQTT 5 PUBACK reason means the broker took the message (no subscriber yet
/// is still taken: a retained or later-subscribed consumer gets it).
fn accepted(reason: PubAckReason) -> bool {
    matches!(reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers)
}

fn tls_config(t: &TlsFiles) -> Result<rustls::ClientConfig, LinkError> {
    let file_err = |p: &PathBuf, why: String| LinkError::TlsFile { path: p.display().to_string(), why };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&t.ca).map_err(|e| file_err(&t.ca, e.to_string()))?;
    for c in certs {
        let c = c.map_err(|e| file_err(&t.ca, e.to_string()))?;
        roots.add(c).map_err(|e| file_err(&t.ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(file_err(&t.ca, "no CERTIFICATE in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| LinkError::Tls(e.to_string()))?.with_root_certificates(roots);
    match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert).map_err(|e| file_err(cert, e.to_string()))?.collect();
            let chain = chain.map_err(|e| file_err(cert, e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| LinkError::Tls(e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(LinkError::Tls("client_cert and client_key go together".into())),
    }
}

fn transport(broker: &BrokerConfig) -> Result<Option<Transport>, LinkError> {
    match &broker.tls {
        Some(t) => Ok(Some(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(t)?))))),
        None => Ok(None),
    }
}

/// MQTT 3.1.1 rumqttc options for `broker` with `client_id` (the operator CLI and other
/// clients that are not the gateway's link): clean session, TLS and credentials as
/// configured, packet limit [`MAX_PACKET_BYTES`].
pub fn mqtt_options(broker: &BrokerConfig, client_id: &str) -> Result<MqttOptions, LinkError> {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(Duration::from_secs(broker.keep_alive_secs.max(1)));
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    if let Some(t) = transport(broker)? {
        o.set_transport(t);
    }
    if let (Some(u), Some(p)) = (&broker.username, &broker.password) {
        o.set_credentials(u.clone(), p.clone());
    }
    Ok(o)
}

/// MQTT 5 options for the gateway's link: the same TLS, credentials and keep-alive as
/// [`mqtt_options`]; a clean start with no session kept (session expiry 0, what a 3.1.1
/// clean session is); and the CONNECT property Maximum Packet Size = [`MAX_PACKET_BYTES`],
/// so a conforming broker drops a larger message for this client instead of sending it
/// (MQTT 5.0, 3.1.2.11.4; Mosquitto logs `Dropping too large outgoing PUBLISH`).
pub fn link_options(broker: &BrokerConfig, client_id: &str) -> Result<rumqttc::v5::MqttOptions, LinkError> {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, broker.host.clone(), broker.port);
    // rumqttc's MQTT 5 client refuses (panics on) a keep-alive under 5 s; the protocol's
    // field is 16 bits.
    o.set_keep_alive(Duration::from_secs(broker.keep_alive_secs.clamp(LINK_MIN_KEEP_ALIVE_SECS, u64::from(u16::MAX))));
    o.set_clean_start(true);
    o.set_session_expiry_interval(None);
    o.set_max_packet_size(Some(MAX_PACKET_BYTES as u32));
    if let Some(t) = transport(broker)? {
        o.set_transport(t);
    }
    if let (Some(u), Some(p)) = (&broker.username, &broker.password) {
        o.set_credentials(u.clone(), p.clone());
    }
    Ok(o)
}

/// Exponential back-off between reconnect attempts, with ±20 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(250), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// Delay before attempt `attempt` (0-based) without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
    /// Delay with jitter, so a fleet that lost the broker together does not return together.
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand_core::RngCore;
        let base = self.base_delay(attempt).as_millis() as u64;
        let spread = base / 5;
        let jitter = if spread == 0 { 0 } else { rand_core::OsRng.next_u64() % (2 * spread + 1) };
        Duration::from_millis(base - spread + jitter)
    }
}

/// Publish limits of one integration plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    pub per_second: u32,
    pub burst: u32,
    pub max_payload: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self { per_second: 20, burst: 40, max_payload: 64 * 1024 }
    }
}

/// Why a plugin's publish was refused (maps 1:1 onto the WIT `publish-error`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PluginPublishError {
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] TopicError),
    #[error("publish rate limit exceeded")]
    RateLimited,
    #[error("payload of {0} bytes is larger than the plugin's limit")]
    PayloadTooLarge(usize),
}

/// Bounds on what arrives from the broker, applied before a message is handed on:
/// anything with a broker account can publish on a gateway's inbound topics, so a flood
/// is shed here (counted, reported at most every few seconds) and never reaches a store.
/// The signature is checked here first: a job or command a trusted key signed passes
/// whatever junk arrives beside it; only what does not verify spends the junk rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Unauthenticated job requests handed to the host for a refusal (default 1/s, burst 10).
    pub jobs: Rate,
    /// Unauthenticated commands handed to the host for a refusal (default 20/s, burst 50).
    pub commands: Rate,
    /// Ed25519 verifications at most (default 1,000/s, burst 2,000: about 50 ms of one
    /// core a second at ~50 µs each). Only messages that pass every cheap check (JSON,
    /// id, target, validity window, a trusted key id) get one.
    pub verifies: Rate,
    /// Messages waiting for the host at most (default 64); more are shed. Unauthenticated
    /// ones may take only half of it, so genuine ones always find room.
    pub queue: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        Self { jobs: Rate { per_second: 1, burst: 10 }, commands: Rate { per_second: 20, burst: 50 }, verifies: Rate { per_second: 1_000, burst: 2_000 }, queue: 64 }
    }
}

/// Ids of genuine jobs and commands remembered to shed replays of them (most recent).
const RECENT_IDS: usize = 4096;

fn recent_key(job: bool, id: &str) -> String {
    format!("{}{id}", if job { "j:" } else { "c:" })
}

/// Link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub broker: BrokerConfig,
    pub site: String,
    pub gateway: String,
    /// MQTT client id; defaults to `gate-{site}-{gateway}`.
    pub client_id: Option<String>,
    pub backoff: Backoff,
    /// Most outbox events in flight (published, not yet acknowledged).
    pub window: usize,
    pub plugin_limits: PluginLimits,
    /// What the operators' side may send before the link sheds it.
    pub inbound: InboundLimits,
    /// The gateway's clock: the outbox's age bound and status times are measured on it,
    /// the clock the events were stamped with.
    pub clock: GatewayClock,
    /// The gateway's device key: every status, will, job progress, reply and event is
    /// signed with it (a fresh random key unless the host sets its stored one).
    pub device_key: Arc<DeviceKey>,
    /// Operator keys the gateway trusts: inbound jobs and commands are verified against
    /// them before they are queued (the same keys the deployer holds).
    pub trusted: TrustedKeys,
    /// The deployer's bundle limit; a job request may be twice it (base64 and JSON).
    pub max_bundle_bytes: usize,
}

impl LinkConfig {
    pub fn new(broker: BrokerConfig, site: &str, gateway: &str) -> Self {
        Self {
            broker,
            site: site.into(),
            gateway: gateway.into(),
            client_id: None,
            backoff: Backoff::default(),
            window: 256,
            plugin_limits: PluginLimits::default(),
            inbound: InboundLimits::default(),
            clock: GatewayClock::wall(),
            device_key: Arc::new(DeviceKey::generate()),
            trusted: TrustedKeys::default(),
            max_bundle_bytes: crate::bundle::DEFAULT_MAX_BUNDLE_BYTES,
        }
    }
}

/// Messages for the host from the operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A job request (raw JSON of a [`crate::messages::JobRequest`]) on `jobs/{job_id}`;
    /// `signer` is the key whose signature the link verified, `None` for one that did not
    /// verify (handed on, at a bounded rate, only to be refused).
    Job { job_id: String, payload: Vec<u8>, signer: Option<String> },
    /// A command on `cmd/{id}`, checked by the link: authentic, or why not (to be refused).
    Command { id: String, checked: Result<AuthenticCommand, CommandError> },
}

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Opening the connection (attempt number).
    Connecting {
        attempt: u32,
    },
    Connected,
    /// Waiting out the back-off before the next attempt.
    Waiting {
        attempt: u32,
        until: Instant,
    },
    Stopped,
}

/// Counters the host can show (and tests and benchmarks use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkSnapshot {
    pub connected: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Outbox events acknowledged by the broker.
    pub events_acked: u64,
    /// Highest event seq acknowledged.
    pub cursor: i64,
    /// Plugin messages dropped because the link was down.
    pub plugin_dropped: u64,
    /// Inbound messages shed (unauthenticated over their rate, over the verification
    /// rate, repeated, queue full, unexpected topic).
    pub inbound_shed: u64,
    /// Inbound jobs and commands whose signature verified (handed on unless repeated).
    pub inbound_genuine: u64,
    /// Times the link failed on its own storage and started over.
    pub restarts: u64,
    /// Connections lost to a message over [`MAX_PACKET_BYTES`] from a broker that ignored
    /// the limit the gateway stated at connect (a conforming broker drops such a message
    /// itself and logs it; the gateway never sees it).
    pub oversize: u64,
    /// Publishes the broker refused in its PUBACK (MQTT 5 reason code: ACL, quota).
    pub refused: u64,
}

enum Request {
    JobStatus(JobStatus),
    Reply(crate::commands::CommandReply),
    Status(Box<Status>),
    Plugin { topic: String, payload: Vec<u8> },
    AuditCheckpoint(String),
    Report { period: String, body: String },
    Shutdown,
}

/// The host's side of the link. Cheap to clone.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::UnboundedSender<Request>,
    events: Arc<Notify>,
    topics: GatewayTopics,
    limits: PluginLimits,
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
    snapshot: watch::Receiver<LinkSnapshot>,
}

impl LinkHandle {
    /// Tells the link new rows were written to the event log.
    pub fn events_appended(&self) {
        self.events.notify_one();
    }
    /// Publishes (retained) a job's progress; kept and sent on reconnect if offline.
    pub fn publish_job_status(&self, s: &JobStatus) {
        let _ = self.tx.send(Request::JobStatus(s.clone()));
    }
    /// Publishes a command reply (kept and sent on reconnect if offline).
    pub fn publish_reply(&self, r: &crate::commands::CommandReply) {
        let _ = self.tx.send(Request::Reply(r.clone()));
    }
    /// Replaces the status: published retained now, and the death message from the next connect.
    pub fn update_status(&self, s: Status) {
        let _ = self.tx.send(Request::Status(Box::new(s)));
    }
    /// An integration plugin publishes `payload` to `topic` under its `prefix`: topic
    /// checked, payload size and rate limited; QoS 0, dropped (and counted) while offline.
    pub fn plugin_publish(&self, prefix: &str, topic: &str, payload: Vec<u8>) -> Result<(), PluginPublishError> {
        let full = self.topics.plugin_out(prefix, topic)?;
        if payload.len() > self.limits.max_payload {
            return Err(PluginPublishError::PayloadTooLarge(payload.len()));
        }
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let rate = Rate { per_second: self.limits.per_second, burst: self.limits.burst };
            if !buckets.entry(prefix.to_string()).or_insert_with(|| TokenBucket::new(rate)).take() {
                return Err(PluginPublishError::RateLimited);
            }
        }
        let _ = self.tx.send(Request::Plugin { topic: full, payload });
        Ok(())
    }
    /// Publishes (retained, QoS 1) the audit trail's newest checkpoint, a JSON document the
    /// gateway signed itself; the latest one is sent again on reconnect if offline.
    pub fn publish_audit_checkpoint(&self, checkpoint_json: String) {
        let _ = self.tx.send(Request::AuditCheckpoint(checkpoint_json));
    }
    /// Publishes (retained, QoS 1, signed with the device key) the transparency report of
    /// the month `period` (`YYYY-MM`); the latest one is sent again on reconnect if offline.
    pub fn publish_report(&self, period: &str, report_json: String) {
        let _ = self.tx.send(Request::Report { period: period.to_string(), body: report_json });
    }
    /// Publishes an offline status, disconnects and ends [`Link::run`].
    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
    }
    /// The latest counters.
    pub fn snapshot(&self) -> LinkSnapshot {
        *self.snapshot.borrow()
    }
    /// Waits until the counters satisfy `pred` or `timeout` passes; returns the last snapshot.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&LinkSnapshot) -> bool) -> Result<LinkSnapshot, LinkSnapshot> {
        let mut rx = self.snapshot.clone();
        let res = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match res {
            Ok(Ok(s)) => Ok(*s),
            _ => Err(*self.snapshot.borrow()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    Event(i64),
    Job(String),
    Reply(String),
    Other,
}

/// The link task: owns the rumqttc client and event loop, the outbox and the state.
pub struct Link {
    cfg: LinkConfig,
    topics: GatewayTopics,
    client: AsyncClient,
    eventloop: EventLoop,
    outbox: Outbox,
    state: LinkState,
    status: Status,
    rx: mpsc::UnboundedReceiver<Request>,
    events: Arc<Notify>,
    inbound: mpsc::Sender<Inbound>,
    job_bucket: TokenBucket,
    command_bucket: TokenBucket,
    verify_bucket: TokenBucket,
    /// Ids of genuine jobs and commands handed on, oldest first, to shed replays.
    recent: VecDeque<String>,
    shed: ShedLog,
    snapshot_tx: watch::Sender<LinkSnapshot>,
    snap: LinkSnapshot,
    /// Tags of publishes handed to rumqttc, in order; matched to packet ids on send.
    sent: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    pending_jobs: BTreeMap<String, JobStatus>,
    pending_replies: BTreeMap<String, Vec<u8>>,
    /// The newest audit checkpoint, published again at every connect (retained).
    pending_checkpoint: Option<Vec<u8>>,
    /// The newest monthly report (topic, sealed payload), published again at every connect.
    pending_report: Option<(String, Vec<u8>)>,
    /// A clean reconnect is under way so the last will lists the plugins now running.
    refreshing_will: bool,
    /// Storage failures in a row (reset when the cursor moves again).
    restart_streak: u32,
    /// Connections in a row lost to an oversized inbound message, and when the last one began.
    oversize_streak: u32,
    connected_at: Option<Instant>,
}

impl Link {
    /// Builds the link (it connects when [`Link::run`] is awaited). `status` is the first
    /// birth message; its offline twin is the last will.
    pub fn new(cfg: LinkConfig, outbox: Outbox, status: Status) -> Result<(Link, LinkHandle, mpsc::Receiver<Inbound>), LinkError> {
        let topics = GatewayTopics::new(&cfg.site, &cfg.gateway)?;
        let client_id = cfg.client_id.clone().unwrap_or_else(|| format!("gate-{}-{}", cfg.site, cfg.gateway));
        let opts = link_options(&cfg.broker, &client_id)?;
        let (client, eventloop) = AsyncClient::new(opts, cfg.window + 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::channel(cfg.inbound.queue.max(1));
        let snap = LinkSnapshot { cursor: outbox.cursor(), ..Default::default() };
        let (snapshot_tx, snapshot) = watch::channel(snap);
        let events = Arc::new(Notify::new());
        let handle = LinkHandle { tx, events: events.clone(), topics: topics.clone(), limits: cfg.plugin_limits, buckets: Arc::default(), snapshot };
        let limits = cfg.inbound;
        let link = Link {
            cfg,
            topics,
            client,
            eventloop,
            outbox,
            state: LinkState::Connecting { attempt: 0 },
            status,
            rx,
            events,
            inbound: in_tx,
            job_bucket: TokenBucket::new(limits.jobs),
            command_bucket: TokenBucket::new(limits.commands),
            verify_bucket: TokenBucket::new(limits.verifies),
            recent: VecDeque::new(),
            shed: ShedLog::new("mqtt inbound", Duration::from_secs(10)),
            snapshot_tx,
            snap,
            sent: VecDeque::new(),
            by_pkid: HashMap::new(),
            pending_jobs: BTreeMap::new(),
            pending_replies: BTreeMap::new(),
            pending_checkpoint: None,
            pending_report: None,
            refreshing_will: false,
            restart_streak: 0,
            oversize_streak: 0,
            connected_at: None,
        };
        Ok((link, handle, in_rx))
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    fn death(&self) -> Vec<u8> {
        let mut d = self.status.clone();
        d.online = false;
        self.cfg.device_key.seal_json(Kind::Status, &self.topics.status(), &d)
    }

    fn publish(&mut self, tag: Tag, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                self.sent.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT request queue full; message will be retried");
                false
            }
        }
    }

    fn publish_status(&mut self) {
        let mut s = self.status.clone();
        s.online = true;
        s.at_ms = self.cfg.clock.now_ms();
        s.outbox = self.outbox.stats().ok();
        let topic = self.topics.status();
        let payload = self.cfg.device_key.seal_json(Kind::Status, &topic, &s);
        self.publish(Tag::Other, topic, QoS::AtLeastOnce, true, payload);
    }

    fn on_connected(&mut self) -> Result<(), LinkError> {
        self.state = LinkState::Connected;
        self.snap.connected = true;
        self.snap.connects += 1;
        self.connected_at = Some(Instant::now());
        tracing::info!(broker = %self.cfg.broker.host, port = self.cfg.broker.port, "MQTT link up");
        self.publish_status();
        let _ = self.client.try_subscribe(self.topics.jobs_filter(), QoS::AtLeastOnce);
        let _ = self.client.try_subscribe(self.topics.commands_filter(), QoS::AtLeastOnce);
        let jobs: Vec<JobStatus> = self.pending_jobs.values().cloned().collect();
        for j in jobs {
            self.send_job(j);
        }
        let replies: Vec<(String, Vec<u8>)> = self.pending_replies.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (id, p) in replies {
            if let Ok(t) = self.topics.command_reply(&id) {
                self.publish(Tag::Reply(id), t, QoS::AtLeastOnce, false, p);
            }
        }
        if let Some(cp) = self.pending_checkpoint.clone() {
            self.publish(Tag::Other, self.topics.audit_checkpoint(), QoS::AtLeastOnce, true, cp);
        }
        if let Some((topic, payload)) = self.pending_report.clone() {
            self.publish(Tag::Other, topic, QoS::AtLeastOnce, true, payload);
        }
        self.outbox.rewind()?;
        self.outbox.enforce_retention(self.cfg.clock.now_ms())?;
        self.fill_window()
    }

    fn on_disconnected(&mut self, err: &rumqttc::v5::ConnectionError) -> Result<(), LinkError> {
        let attempt = match self.state {
            LinkState::Connecting { attempt } => attempt + 1,
            _ => 0,
        };
        let refreshing = std::mem::take(&mut self.refreshing_will);
        // The CONNECT states the packet limit, so a conforming broker never sends more. A
        // broker that ignores it still ends the connection with one (the client cannot skip
        // a packet), and a retained one comes back on every connect: say so once per run of
        // them, and wait longer each time instead of flapping.
        use rumqttc::v5::{mqttbytes::Error as WireError, ConnectionError, StateError};
        let oversize =
            matches!(err, ConnectionError::MqttState(StateError::Deserialization(WireError::PayloadSizeLimitExceeded { .. })) | ConnectionError::MqttState(StateError::IncomingPacketTooLarge { .. }));
        let lasted = self.connected_at.take().map(|t| t.elapsed());
        if oversize && lasted.is_some_and(|d| d > Duration::from_secs(60)) {
            self.oversize_streak = 0;
        }
        let attempt = if oversize {
            self.snap.oversize += 1;
            if self.oversize_streak == 0 {
                tracing::error!(limit = MAX_PACKET_BYTES, "the broker sent a message over the packet limit the gateway stated at connect (the broker ignores MQTT 5 Maximum Packet Size; a retained job or command?); it is offered again on every connect: clear it on the broker, and set max_packet_size there (host/fleet/broker/mosquitto.conf); reconnecting with a growing back-off");
            }
            self.oversize_streak = self.oversize_streak.saturating_add(1);
            attempt.max(self.oversize_streak)
        } else {
            if lasted.is_some() {
                self.oversize_streak = 0;
            }
            attempt
        };
        if refreshing {
            tracing::info!("MQTT reconnecting so the last will lists the plugins now running");
        } else if oversize {
            tracing::debug!(error = %err, "MQTT link down on an oversized message");
        } else if self.snap.connected {
            tracing::warn!(error = %err, "MQTT link down; events queue in the outbox");
        } else {
            tracing::debug!(error = %err, attempt, "MQTT connect failed");
        }
        self.snap.connected = false;
        self.sent.clear();
        self.by_pkid.clear();
        self.outbox.rewind()?;
        self.outbox.enforce_retention(self.cfg.clock.now_ms())?;
        let until = if refreshing { Instant::now() } else { Instant::now() + self.cfg.backoff.delay(attempt) };
        self.state = LinkState::Waiting { attempt, until };
        // The next connection carries the latest status as its last will.
        let will = LastWill::new(self.topics.status(), self.death(), QoS::AtLeastOnce, true, None);
        self.eventloop.options.set_last_will(will);
        Ok(())
    }

    fn send_job(&mut self, j: JobStatus) {
        if let Ok(t) = self.topics.job_progress(&j.job_id) {
            let payload = self.cfg.device_key.seal_json(Kind::JobProgress, &t, &j);
            // Only a job a trusted key signed leaves a retained status on the broker; the
            // refusal of anything else is said once, to whoever is listening.
            let retain = j.signer.is_some();
            self.publish(Tag::Job(j.job_id.clone()), t, QoS::AtLeastOnce, retain, payload);
        }
    }

    fn fill_window(&mut self) -> Result<(), LinkError> {
        if self.state != LinkState::Connected {
            return Ok(());
        }
        let room = self.cfg.window.saturating_sub(self.outbox.in_flight());
        if room == 0 {
            return Ok(());
        }
        for ev in self.outbox.next_batch(room)? {
            let topic = if ev.is_alarm() { self.topics.alarms() } else { self.topics.events() };
            let payload = self.cfg.device_key.seal_json(Kind::Event, &topic, &ev.to_message());
            if !self.publish(Tag::Event(ev.seq), topic, QoS::AtLeastOnce, false, payload) {
                // Queue full: forget the rest of this batch; it is re-read after a rewind.
                self.outbox.rewind()?;
                break;
            }
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) -> Result<(), LinkError> {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected()?,
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(tag) = self.sent.pop_front() {
                    if pkid != 0 {
                        self.by_pkid.insert(pkid, tag);
                    }
                }
            }
            Event::Incoming(Packet::PubAck(ack)) if !accepted(ack.reason) => {
                // MQTT 5 lets the broker refuse a publish in its PUBACK (an ACL, a quota):
                // nothing refused moves the cursor. Start over after a back-off; the event
                // stays in the outbox and is sent again.
                let tag = self.by_pkid.remove(&ack.pkid);
                self.snap.refused = self.snap.refused.saturating_add(1);
                if matches!(tag, Some(Tag::Event(_))) {
                    return Err(LinkError::Refused(format!("{:?}", ack.reason)));
                }
                tracing::warn!(reason = ?ack.reason, "the broker refused a publish");
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.by_pkid.remove(&ack.pkid) {
                Some(Tag::Event(seq)) => {
                    self.outbox.acked(seq)?;
                    self.restart_streak = 0;
                    self.snap.events_acked += 1;
                    self.snap.cursor = self.outbox.cursor();
                    self.fill_window()?;
                }
                Some(Tag::Job(id)) => {
                    self.pending_jobs.remove(&id);
                }
                Some(Tag::Reply(id)) => {
                    self.pending_replies.remove(&id);
                }
                _ => {}
            },
            Event::Incoming(Packet::Publish(p)) => {
                if p.payload.is_empty() {
                    return Ok(()); // a cleared retained job
                }
                let topic = std::str::from_utf8(&p.topic).unwrap_or("");
                match self.topics.parse_inbound(topic) {
                    Ok(crate::topics::Inbound::Job(id)) => {
                        let id = id.to_string();
                        self.on_job(id, &p.payload);
                    }
                    Ok(crate::topics::Inbound::Command(id)) => {
                        let id = id.to_string();
                        self.on_command(id, &p.payload);
                    }
                    Err(_) => self.shed("unexpected topic"),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A job request: its signature is checked first (within the verification budget);
    /// a genuine one is handed on past any junk, anything else spends the junk rate.
    fn on_job(&mut self, job_id: String, payload: &[u8]) {
        if self.recent.contains(&recent_key(true, &job_id)) {
            return self.shed("repeated");
        }
        let signer = match crate::deploy::precheck_job(payload, &job_id, self.cfg.max_bundle_bytes) {
            Ok(job) if self.verify_bucket.take() => job.verify(&self.cfg.trusted).ok(),
            Ok(_) => return self.shed("over the verification rate"),
            Err(_) => None,
        };
        let genuine = signer.is_some();
        self.hand_on(genuine, job_id.clone(), Inbound::Job { job_id, payload: payload.to_vec(), signer });
    }

    /// A command: checked here (cheap checks, then the signature within the verification
    /// budget), and handed on with the verdict, so it is verified once.
    fn on_command(&mut self, id: String, payload: &[u8]) {
        // A genuine command with this id was handed on already: this is its replay or a
        // forgery under its id; either way shed, before any cryptography.
        if self.recent.contains(&recent_key(false, &id)) {
            return self.shed("repeated");
        }
        let now = self.cfg.clock.now_ms();
        let checked = match crate::commands::precheck(payload, &id, &self.cfg.site, &self.cfg.gateway, now) {
            Ok(c) if self.cfg.trusted.get(c.claimed_key()).is_none() => c.verify(&self.cfg.trusted),
            Ok(c) if self.verify_bucket.take() => c.verify(&self.cfg.trusted),
            Ok(_) => return self.shed("over the verification rate"),
            Err(e) => Err(e),
        };
        self.hand_on(checked.is_ok(), id.clone(), Inbound::Command { id, checked });
    }

    /// Queues `msg` for the host. A genuine one is shed only if its id was handed on
    /// already (a replay) or the whole queue is full; an unauthenticated one needs a
    /// token of its kind's rate and may fill only half of the queue.
    fn hand_on(&mut self, genuine: bool, id: String, msg: Inbound) {
        let is_job = matches!(msg, Inbound::Job { .. });
        if genuine {
            self.snap.inbound_genuine = self.snap.inbound_genuine.saturating_add(1);
            let key = recent_key(is_job, &id);
            if self.inbound.try_send(msg).is_err() {
                return self.shed("host queue full");
            }
            if self.recent.len() >= RECENT_IDS {
                self.recent.pop_front();
            }
            self.recent.push_back(key);
            return;
        }
        let bucket = if is_job { &mut self.job_bucket } else { &mut self.command_bucket };
        if !bucket.take() {
            return self.shed("unauthenticated, over its rate");
        }
        if self.inbound.capacity() <= self.cfg.inbound.queue.max(1) / 2 {
            return self.shed("unauthenticated, host queue half full");
        }
        if self.inbound.try_send(msg).is_err() {
            self.shed("host queue full");
        }
    }

    fn shed(&mut self, reason: &'static str) {
        self.shed.shed(reason);
        self.snap.inbound_shed = self.shed.total;
    }

    fn on_request(&mut self, r: Request) -> Result<bool, LinkError> {
        let connected = self.state == LinkState::Connected;
        match r {
            Request::JobStatus(j) => {
                self.pending_jobs.insert(j.job_id.clone(), j.clone());
                if connected {
                    self.send_job(j);
                }
            }
            Request::Reply(r) => {
                let Ok(t) = self.topics.command_reply(&r.id) else { return Ok(true) };
                let payload = self.cfg.device_key.seal_json(Kind::Reply, &t, &r);
                self.pending_replies.insert(r.id.clone(), payload.clone());
                if connected {
                    self.publish(Tag::Reply(r.id), t, QoS::AtLeastOnce, false, payload);
                }
            }
            Request::Status(s) => {
                let plugins_changed = self.status.plugins != s.plugins;
                self.status = *s;
                if connected {
                    self.publish_status();
                    // A will is fixed at connect time (MQTT 3.1.1 and 5): reconnect cleanly
                    // (a DISCONNECT discards the old will) so a later death message does
                    // not name the plugins that ran before.
                    if plugins_changed && self.client.try_disconnect().is_ok() {
                        self.refreshing_will = true;
                    }
                }
            }
            Request::Plugin { topic, payload } => {
                if connected {
                    self.publish(Tag::Other, topic, QoS::AtMostOnce, false, payload);
                } else {
                    self.snap.plugin_dropped += 1;
                }
            }
            Request::AuditCheckpoint(body) => {
                let payload = body.into_bytes();
                self.pending_checkpoint = Some(payload.clone());
                if connected {
                    self.publish(Tag::Other, self.topics.audit_checkpoint(), QoS::AtLeastOnce, true, payload);
                }
            }
            Request::Report { period, body } => match self.topics.report(&period) {
                Ok(topic) => {
                    let payload = self.cfg.device_key.seal(Kind::Report, &topic, &body);
                    self.pending_report = Some((topic.clone(), payload.clone()));
                    if connected {
                        self.publish(Tag::Other, topic, QoS::AtLeastOnce, true, payload);
                    }
                }
                Err(e) => tracing::error!(error = %e, "report not published"),
            },
            Request::Shutdown => return Ok(false),
        }
        Ok(true)
    }

    /// Runs the link until [`LinkHandle::shutdown`] (or every handle is dropped). It never
    /// stops on its own: a failure of its storage drops the connection and starts over
    /// after a back-off, the events staying in the outbox.
    pub async fn run(mut self) -> Result<(), LinkError> {
        let will = LastWill::new(self.topics.status(), self.death(), QoS::AtLeastOnce, true, None);
        self.eventloop.options.set_last_will(will);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let _ = self.snapshot_tx.send(self.snap);
            match self.step(&mut tick).await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => self.restart(&e),
            }
        }
    }

    /// One turn of the state machine; false once stopped.
    async fn step(&mut self, tick: &mut tokio::time::Interval) -> Result<bool, LinkError> {
        match self.state {
            LinkState::Stopped => return Ok(false),
            LinkState::Waiting { attempt, until } => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => self.state = LinkState::Connecting { attempt },
                    r = self.rx.recv() => match r {
                        Some(r) => if !self.on_request(r)? { self.state = LinkState::Stopped },
                        None => self.state = LinkState::Stopped,
                    },
                    _ = tick.tick() => {
                        self.shed.flush();
                        self.outbox.enforce_retention(self.cfg.clock.now_ms())?;
                    }
                }
            }
            LinkState::Connecting { .. } => match self.eventloop.poll().await {
                Ok(ev) => self.on_event(ev)?,
                Err(e) => self.on_disconnected(&e)?,
            },
            LinkState::Connected => {
                tokio::select! {
                    biased;
                    ev = self.eventloop.poll() => match ev {
                        Ok(ev) => self.on_event(ev)?,
                        Err(e) => self.on_disconnected(&e)?,
                    },
                    r = self.rx.recv() => match r {
                        Some(r) => if !self.on_request(r)? { self.stop().await; },
                        None => self.stop().await,
                    },
                    _ = self.events.notified() => self.fill_window()?,
                    _ = tick.tick() => {
                        self.shed.flush();
                        self.fill_window()?
                    }
                }
            }
        }
        Ok(true)
    }

    /// The link's own storage failed: drop the connection, forget the window (the events
    /// stay in the outbox) and try again after a back-off that grows while it keeps failing.
    fn restart(&mut self, e: &LinkError) {
        self.snap.restarts += 1;
        self.restart_streak = self.restart_streak.saturating_add(1);
        let delay = self.cfg.backoff.delay(self.restart_streak);
        tracing::error!(error = %e, restarts = self.snap.restarts, retry_in_ms = delay.as_millis() as u64, "the MQTT link failed; starting over");
        self.eventloop.clean();
        self.snap.connected = false;
        self.sent.clear();
        self.by_pkid.clear();
        self.outbox.forget_in_flight();
        self.refreshing_will = false;
        self.state = LinkState::Waiting { attempt: self.restart_streak, until: Instant::now() + delay };
    }

    async fn stop(&mut self) {
        let death = self.death();
        let _ = self.client.try_publish(self.topics.status(), QoS::AtLeastOnce, true, death);
        let _ = self.client.try_disconnect();
        // Let the event loop flush the offline status and the disconnect.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
                _ => {}
            }
        }
        let _ = self.outbox.save();
        self.snap.connected = false;
        let _ = self.snapshot_tx.send(self.snap);
        self.state = LinkState::Stopped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) };
        assert_eq!(b.base_delay(0), Duration::from_millis(100));
        assert_eq!(b.base_delay(3), Duration::from_millis(800));
        assert_eq!(b.base_delay(10), Duration::from_secs(2));
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(2));
        for a in 0..8 {
            let d = b.delay(a).as_millis() as f64;
            let base = b.base_delay(a).as_millis() as f64;
            assert!(d >= base * 0.8 && d <= base * 1.2, "attempt {a}: {d} vs {base}");
        }
    }

    #[test]
    fn a_keep_alive_below_five_seconds_is_raised_not_a_panic() {
        for k in [0, 2, 5, u64::MAX] {
            let b = BrokerConfig { host: "localhost".into(), port: 1883, tls: None, username: None, password: None, keep_alive_secs: k };
            let o = link_options(&b, "x").unwrap();
            assert_eq!(o.keep_alive().as_secs(), k.clamp(5, 65_535));
        }
    }

    #[test]
    fn missing_or_empty_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").unwrap();
        let mut b =
            BrokerConfig { host: "localhost".into(), port: 8883, tls: Some(TlsFiles { ca: empty.clone(), client_cert: None, client_key: None }), username: None, password: None, keep_alive_secs: 5 };
        let e = mqtt_options(&b, "x").unwrap_err().to_string();
        assert!(e.contains("ca.pem") && e.contains("no CERTIFICATE"), "{e}");
        b.tls = Some(TlsFiles { ca: dir.path().join("missing.pem"), client_cert: None, client_key: None });
        assert!(mqtt_options(&b, "x").unwrap_err().to_string().contains("missing.pem"));
    }

    #[tokio::test]
    async fn plugin_publishes_are_checked_and_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.sqlite");
        crate::outbox::create_event_log(&rusqlite::Connection::open(&path).unwrap()).unwrap();
        let outbox = Outbox::open(&path, &dir.path().join("fleet.sqlite"), Default::default()).unwrap();
        let mut cfg = LinkConfig::new(BrokerConfig { host: "127.0.0.1".into(), port: 1, tls: None, username: None, password: None, keep_alive_secs: 5 }, "s", "g");
        cfg.plugin_limits = PluginLimits { per_second: 1, burst: 3, max_payload: 8 };
        let status = Status {
            site: "s".into(),
            gateway: "g".into(),
            online: true,
            host_version: "0.1.0".parse().unwrap(),
            plugins: vec![],
            last_job: None,
            outbox: None,
            directory_version: None,
            event_log_recovered: None,
            at_ms: 0,
        };
        let (_link, h, _rx) = Link::new(cfg, outbox, status).unwrap();
        assert!(matches!(h.plugin_publish("bridge", "../x", vec![]), Err(PluginPublishError::InvalidTopic(_))));
        assert_eq!(h.plugin_publish("bridge", "a", vec![0; 9]), Err(PluginPublishError::PayloadTooLarge(9)));
        for _ in 0..3 {
            h.plugin_publish("bridge", "a", vec![1]).unwrap();
        }
        assert_eq!(h.plugin_publish("bridge", "a", vec![1]), Err(PluginPublishError::RateLimited));
        // Another plugin has its own budget.
        h.plugin_publish("other", "a", vec![1]).unwrap();
    }
}
