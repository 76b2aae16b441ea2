//! Site configuration (`configs/*.toml`): doors, credentials, plugins, limits, fallback.
//!
//! Loading validates everything a gateway needs before it touches a door, and
//! every error names the file, the line and the key. A site where some door
//! accepts only face is refused: the law says face must never be the only way in.

use crate::event::{CredentialKind, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Spanned;

/// A configuration problem, located as precisely as the file allows.
#[derive(Debug, Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the key.
    pub message: String,
}

/// A fully loaded and validated site.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub site: Site,
    pub limits: Limits,
    pub timing: Timing,
    pub face: FaceBands,
    pub fallback: Fallback,
    pub qr: QrConfig,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub doors: Vec<Door>,
    /// The subject directory (who holds which credential), from `site.subjects`.
    pub subjects: Vec<SubjectEntry>,
    /// The gate's wiring (`[hardware]`): relays, inputs and readers per door; None = no hardware layer.
    pub hardware: Option<gate_hw::HardwareConfig>,
    /// Fleet operations over MQTT (`[fleet]`); None = the gateway runs alone.
    pub fleet: Option<FleetConfig>,
    /// How long the gateway keeps what it keeps (`[retention]`).
    pub retention: RetentionConfig,
    /// How a visitor's call to a resident falls through (`[calls]`).
    pub calls: CallsConfig,
    /// The file this was loaded from.
    pub path: PathBuf,
}

/// Identity of the site and gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub id: String,
    pub gateway: String,
    /// Site's offset from UTC, "+08:00"; local time drives schedules.
    #[serde(default = "default_offset")]
    pub utc_offset: String,
    /// Subject directory file, relative to this config.
    #[serde(default)]
    pub subjects: Option<PathBuf>,
    /// Where the event log and plugin cache live, relative to this config.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

fn default_offset() -> String {
    "+00:00".into()
}

/// Sandbox limits applied to every plugin call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline of one plugin call.
    pub deadline_ms: u64,
    /// Linear-memory cap of one plugin instance.
    pub memory_mb: u64,
    /// Instruction budget of one call in replay (deterministic).
    pub fuel: u64,
    /// Consecutive failures before a plugin is quarantined.
    pub failures_before_quarantine: u32,
    /// How long a quarantined plugin stays out of service.
    pub quarantine_ms: u64,
    /// Log lines a plugin may write per second; the rest are dropped and counted.
    pub log_lines_per_sec: u32,
    /// Bytes a plugin may keep in its key-value store.
    pub kv_quota_bytes: usize,
    /// Messages an integration plugin may publish per second.
    pub publish_per_sec: u32,
    /// Largest payload an integration plugin may publish.
    pub max_payload_bytes: usize,
    /// Largest component file a plugin may be (1 KiB..=256 MiB).
    pub max_component_bytes: u64,
    /// Wall time compiling one component may take (100..=600 000 ms); a cached
    /// precompiled component is not compiled again.
    pub compile_ms: u64,
    /// Longest a card read may wait (in service) for its plugin call to start (1..=5 000 ms);
    /// a read that waited longer is decided by the fallback at once, never late.
    pub max_decision_wait_ms: u64,
    /// Longest a decided event may wait (in service) for an integration plugin (10..=600 000 ms);
    /// older ones are dropped, counted and reported. Alarms are never dropped.
    pub max_event_wait_ms: u64,
}

/// Range of `limits.max_component_bytes`.
pub const MAX_COMPONENT_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=256 << 20;
/// Range of `limits.compile_ms`.
pub const COMPILE_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=600_000;
/// Range of `limits.max_decision_wait_ms`.
pub const MAX_DECISION_WAIT_MS_RANGE: std::ops::RangeInclusive<u64> = 1..=5_000;
/// Range of `limits.max_event_wait_ms`.
pub const MAX_EVENT_WAIT_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=600_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 20,
            memory_mb: 32,
            fuel: 500_000_000,
            failures_before_quarantine: 3,
            quarantine_ms: 60_000,
            log_lines_per_sec: 20,
            kv_quota_bytes: 64 * 1024,
            publish_per_sec: 50,
            max_payload_bytes: 16 * 1024,
            max_component_bytes: 16 << 20,
            compile_ms: 30_000,
            max_decision_wait_ms: 250,
            max_event_wait_ms: 5_000,
        }
    }
}

/// Time windows that make credential events one-shot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// The same credential at the same door within this window is a duplicate.
    pub repeat_window_ms: u64,
    /// A read captured longer ago than this is stale and ignored.
    pub max_input_age_ms: u64,
    /// How long a multi-factor attempt waits for its next factor.
    pub factor_timeout_ms: u64,
}

/// `[retention]`: how long access events, alarms and audit entries are kept. Purges run by
/// themselves in service and are audited. (Unused face templates: `[face]`.)
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Access events (decisions, door and plugin records), in days: 1..=3650.
    pub events_days: u64,
    /// Alarms, in days: 1..=3650.
    pub alarms_days: u64,
    /// Audit entries, in days: 180..=36500 (security audit needs at least six months).
    pub audit_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { events_days: 180, alarms_days: 365, audit_days: 1095 }
    }
}

/// `[calls]`: how long a visitor's call rings each stage before it falls through to the
/// next (indoor station, then the resident's phone, then the guard). 0 skips a stage;
/// otherwise 1,000..=600,000 ms (checked in `bounds.rs`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    pub indoor_ms: u64,
    pub phone_ms: u64,
    pub guard_ms: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig { indoor_ms: 30_000, phone_ms: 45_000, guard_ms: 60_000 }
    }
}

/// The ranges of `[retention]`'s keys.
pub const RETENTION_RANGES: [(&str, std::ops::RangeInclusive<u64>); 3] = [("events_days", 1..=3650), ("alarms_days", 1..=3650), ("audit_days", 180..=36500)];

impl Default for Timing {
    fn default() -> Self {
        Timing { repeat_window_ms: 2_000, max_input_age_ms: 3_000, factor_timeout_ms: 20_000 }
    }
}

/// `[face]`: score thresholds that turn a face similarity into a band, and where the
/// on-device matcher finds its models, template store and device key. Without
/// `models_dir`, `db` and `key` face recognition is off (card, PIN, NFC keep working).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaceBands {
    pub strong: f32,
    pub weak: f32,
    /// Liveness probability (0.0..=1.0) at or above which a matched face is `live`
    /// (default 0.50; host/face/README.md, "Liveness").
    pub live: f32,
    /// Liveness probability (0.0..=1.0, at most `live`) below which a matched face is
    /// `spoof`; between the two it is `unknown` (default 0.10).
    pub spoof: f32,
    /// Folder with `manifest.toml`, the models and ONNX Runtime (relative to the config file).
    pub models_dir: Option<PathBuf>,
    /// Template store: consents and encrypted templates (relative to the config file).
    pub db: Option<PathBuf>,
    /// Device key file that encrypts the templates, mode 0600 (relative to the config file).
    pub key: Option<PathBuf>,
    /// Erase, at start, the templates of subjects no longer in the subject directory
    /// (default true; false only warns about them and stops matching them).
    pub erase_orphans: bool,
    /// Erase templates not matched for this many days (0..=3650; 0, the default, keeps a
    /// template until its consent is withdrawn or its subject leaves the directory).
    pub unused_days: u32,
}

impl Default for FaceBands {
    fn default() -> Self {
        // Chosen from SFace scores on real photos (host/face/README.md): genuine
        // pairs 0.74-0.80, impostors mean 0.14, max 0.35 (0.45 in the brief's larger set).
        FaceBands { strong: 0.60, weak: 0.50, live: 0.50, spoof: 0.10, models_dir: None, db: None, key: None, erase_orphans: true, unused_days: 0 }
    }
}

impl FaceBands {
    /// The band of a cosine score by these thresholds; None below `weak` (nobody matched)
    /// or for a score that is not a number.
    pub fn band(&self, score: f32) -> Option<crate::event::FaceBand> {
        use crate::event::FaceBand;
        match score {
            s if !s.is_finite() => None,
            s if s >= self.strong => Some(FaceBand::Strong),
            s if s >= self.weak => Some(FaceBand::Weak),
            _ => None,
        }
    }

    /// Whether the site configures the on-device matcher at all.
    pub fn configured(&self) -> bool {
        self.models_dir.is_some()
    }

    /// Checks the bands and that the matcher's paths come together; resolves them against `base`.
    fn resolve(mut self, base: &Path) -> Result<FaceBands, String> {
        for (key, v) in [("face.strong", self.strong), ("face.weak", self.weak)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("key `{key}`: {v} is not a cosine score between 0.0 and 1.0"));
            }
        }
        for (key, v) in [("face.live", self.live), ("face.spoof", self.spoof)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("key `{key}`: {v} is not a liveness probability between 0.0 and 1.0"));
            }
        }
        if self.spoof > self.live {
            return Err(format!("keys `face.spoof` ({}) and `face.live` ({}): spoof must not be above live", self.spoof, self.live));
        }
        if self.unused_days > 3650 {
            return Err(format!("key `face.unused_days`: {} is out of range 0..=3650 (days; 0 keeps templates until withdrawn)", self.unused_days));
        }
        if self.weak > self.strong {
            return Err(format!("keys `face.weak` ({}) and `face.strong` ({}): weak must not be above strong", self.weak, self.strong));
        }
        let set = [("face.models_dir", &self.models_dir), ("face.db", &self.db), ("face.key", &self.key)];
        if set.iter().any(|(_, p)| p.is_some()) {
            if let Some((key, _)) = set.iter().find(|(_, p)| p.is_none()) {
                return Err(format!("key `{key}` is missing: the face matcher needs `models_dir`, `db` and `key` together (or none of them to run without face)"));
            }
        }
        for (key, p) in set {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(format!("key `{key}` must not be empty"));
            }
        }
        self.models_dir = self.models_dir.map(|p| base.join(p));
        self.db = self.db.map(|p| base.join(p));
        self.key = self.key.map(|p| base.join(p));
        Ok(self)
    }
}

/// What the host decides by itself when a door's plugin cannot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// Roles whose credentials the fallback honours.
    pub roles: Vec<Role>,
    /// Non-biometric credentials the fallback honours.
    pub credentials: Vec<CredentialKind>,
    pub open_ms: u32,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback { roles: vec![Role::Resident, Role::Staff], credentials: vec![CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc], open_ms: 5_000 }
    }
}

/// Trusted issuers of visitor QR passes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrConfig {
    /// Hex Ed25519 public keys.
    #[serde(default)]
    pub issuer_keys: Vec<String>,
    /// The site's code key file for passes' dynamic codes (`gate qr code-keygen`), shared
    /// with the property platform; relative to the config file. Required with `issuer_keys`.
    #[serde(default)]
    pub code_key: Option<PathBuf>,
}

/// Which contract a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Policy,
    Integration,
}

/// One plugin the site loads.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    /// Absolute path of the component.
    pub path: PathBuf,
    pub world: World,
    /// Settings the plugin reads through its `config` import.
    pub settings: BTreeMap<String, String>,
    /// Integration plugins publish only under this topic prefix.
    pub prefix: Option<String>,
}

/// One door or lane.
#[derive(Debug, Clone)]
pub struct Door {
    pub id: String,
    pub credentials: Vec<CredentialKind>,
    /// Name of the policy plugin serving this door; None = the fallback alone.
    pub policy: Option<String>,
    pub open_ms: u32,
    pub max_open_ms: u32,
    pub held_open_ms: u64,
    pub exit_open_ms: u32,
    pub fire_release: bool,
    /// A unit door (a building entrance) with a shared unit PIN, set and rotated by an
    /// operator command; the PIN lives only as a hash in the gateway's state.
    pub unit_pin: bool,
}

impl Door {
    /// Whether this door accepts the credential kind at all.
    pub fn accepts(&self, kind: CredentialKind) -> bool {
        self.credentials.contains(&kind)
    }
}

/// One subject in the directory: pseudonymous id, role, and the credentials
/// that resolve to it. Never a name, ID number or unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectEntry {
    pub id: String,
    pub role: Role,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub cards: Vec<String>,
    /// sha256 hex of "<site id>:<pin>" (see `gate pin-hash`); PINs are never stored in clear.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    #[serde(default)]
    pub nfc: Vec<String>,
    #[serde(default)]
    pub plates: Vec<String>,
}

// ---- raw file shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    site: Site,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    timing: Timing,
    #[serde(default)]
    face: FaceBands,
    #[serde(default)]
    fallback: Fallback,
    #[serde(default)]
    qr: QrConfig,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default, rename = "door")]
    doors: Vec<Spanned<RawDoor>>,
    #[serde(default)]
    hardware: Option<Spanned<gate_hw::HardwareConfig>>,
    #[serde(default)]
    fleet: Option<Spanned<FleetConfig>>,
    #[serde(default)]
    retention: RetentionConfig,
    #[serde(default)]
    calls: CallsConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: PathBuf,
    world: World,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoor {
    id: String,
    credentials: Spanned<Vec<CredentialKind>>,
    #[serde(default)]
    policy: Option<Spanned<String>>,
    #[serde(default = "default_open")]
    open_ms: u32,
    #[serde(default = "default_max_open")]
    max_open_ms: u32,
    #[serde(default = "default_held_open")]
    held_open_ms: u64,
    #[serde(default = "default_open")]
    exit_open_ms: u32,
    #[serde(default = "default_true")]
    fire_release: bool,
    #[serde(default)]
    unit_pin: bool,
}

fn default_open() -> u32 {
    5_000
}
fn default_max_open() -> u32 {
    30_000
}
fn default_held_open() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubjects {
    #[serde(default, rename = "subject")]
    subjects: Vec<Spanned<SubjectEntry>>,
}

/// Largest site configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Largest subject directory file read (large sites import into the state dir instead).
pub const MAX_SUBJECTS_BYTES: u64 = 512 << 20;

/// Reads a text file the gateway was given, refusing what is not a regular file (a FIFO
/// or `/dev/zero` would block or never end), anything above `max` bytes, and invalid
/// UTF-8 (naming the line and byte). Every loader of outside text reads through this.
pub fn read_input(path: &Path, max: u64, what: &str) -> Result<String, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |line: Option<usize>, message: String| ConfigError { file: path.to_path_buf(), line, message };
    let meta = std::fs::metadata(path).map_err(|e| fail(None, format!("cannot read {what}: {e}")))?;
    if !meta.is_file() {
        return Err(fail(None, format!("cannot read {what}: not a regular file")));
    }
    // O_NONBLOCK: should the path be swapped for a FIFO after the check, opening it does not wait for a writer.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(0o4000).open(path).map_err(|e| fail(None, format!("cannot read {what}: {e}")))?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(fail(None, format!("cannot read {what}: not a regular file")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(max)).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| fail(None, format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > max {
        return Err(fail(None, format!("{what} is larger than {max} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..bad];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let col = before.iter().rposition(|b| *b == b'\n').map_or(bad, |nl| bad - nl - 1) + 1;
        fail(Some(line), format!("{what} is not valid UTF-8: byte {col} of this line (byte offset {bad} in the file)"))
    })
}

/// Byte offsets of a text's line starts, built once, so a span's line is a binary search
/// (counting newlines from the start for every span made large directories quadratic).
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `text` in one pass.
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }
}

/// The line of one offset (a single error); use [`LineIndex`] for many.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

fn parse_err(file: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let mut message = e.message().trim().to_string();
    // Type and duplicate-key errors do not name their key: name the key of the line.
    if let Some(span) = e.span().filter(|_| !message.contains('`')) {
        let start = text[..span.start.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
        let line = text[start..].lines().next().unwrap_or("");
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_start_matches('{').trim();
            if !key.is_empty() && !key.starts_with('[') && !key.starts_with('#') && key.len() <= 80 {
                message = format!("key `{key}`: {message}");
            }
        } else if let Some(header) = line.trim().strip_prefix('[') {
            message = format!("table `[{}`: {message}", header.trim_end());
        }
    }
    ConfigError { file: file.to_path_buf(), line: e.span().map(|s| line_of(text, s.start)), message }
}

impl SiteConfig {
    /// Loads and validates a site configuration and its subject directory.
    /// Refuses, before anything runs, a configured component larger than
    /// `limits.max_component_bytes`. A missing file is reported when the plugin loads
    /// (its doors use the fallback).
    pub fn check_component_sizes(&self, config_path: &Path) -> Result<(), ConfigError> {
        for (name, p) in &self.plugins {
            let Ok(meta) = std::fs::metadata(&p.path) else { continue };
            if meta.len() > self.limits.max_component_bytes {
                return Err(ConfigError {
                    file: config_path.to_path_buf(),
                    line: None,
                    message: format!("plugin `{name}`: component {} is {} bytes, above key `limits.max_component_bytes` = {}", p.path.display(), meta.len(), self.limits.max_component_bytes),
                });
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
        let text = read_input(path, MAX_CONFIG_BYTES, "site configuration")?;
        Self::from_str(&text, path)
    }

    /// Parses and validates configuration text; `path` locates errors and relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<SiteConfig, ConfigError> {
        let doc = toml::de::DeTable::parse(text).map_err(|e| parse_err(path, text, e))?;
        let lines = LineIndex::new(text);
        // Every number against its stated range, with its key and line, before any is used.
        crate::bounds::check_config(doc.get_ref(), &lines).map_err(|b| ConfigError { file: path.to_path_buf(), line: Some(b.line), message: b.message })?;
        let raw: RawSite = toml::from_str(text).map_err(|e| parse_err(path, text, e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let span_of = |keys: &[&str]| -> Option<std::ops::Range<usize>> {
            let mut t = doc.get_ref();
            let mut span = None;
            for k in keys {
                let v = t.get(*k)?;
                span = Some(v.span());
                if let toml::de::DeValue::Table(inner) = v.get_ref() {
                    t = inner;
                }
            }
            span
        };
        let err = |span: Option<std::ops::Range<usize>>, message: String| ConfigError { file: path.to_path_buf(), line: span.map(|s| lines.line(s.start)), message };

        crate::clock::parse_offset(&raw.site.utc_offset).map_err(|m| err(None, format!("key `site.utc_offset`: {m}")))?;
        if raw.site.id.is_empty() || raw.site.gateway.is_empty() {
            return Err(err(None, "keys `site.id` and `site.gateway` must not be empty".into()));
        }
        if raw.limits.deadline_ms == 0 || raw.limits.memory_mb == 0 || raw.limits.fuel == 0 {
            return Err(err(None, "keys `limits.deadline_ms`, `limits.memory_mb` and `limits.fuel` must be above 0".into()));
        }
        if !MAX_COMPONENT_BYTES_RANGE.contains(&raw.limits.max_component_bytes) {
            return Err(err(
                None,
                format!("key `limits.max_component_bytes`: {} is outside {}..={}", raw.limits.max_component_bytes, MAX_COMPONENT_BYTES_RANGE.start(), MAX_COMPONENT_BYTES_RANGE.end()),
            ));
        }
        if !COMPILE_MS_RANGE.contains(&raw.limits.compile_ms) {
            return Err(err(None, format!("key `limits.compile_ms`: {} is outside {}..={}", raw.limits.compile_ms, COMPILE_MS_RANGE.start(), COMPILE_MS_RANGE.end())));
        }
        for (key, value, range) in [("max_decision_wait_ms", raw.limits.max_decision_wait_ms, MAX_DECISION_WAIT_MS_RANGE), ("max_event_wait_ms", raw.limits.max_event_wait_ms, MAX_EVENT_WAIT_MS_RANGE)]
        {
            if !range.contains(&value) {
                return Err(err(None, format!("key `limits.{key}`: {value} is outside {}..={}", range.start(), range.end())));
            }
        }
        let r = &raw.retention;
        for ((key, range), value) in RETENTION_RANGES.iter().zip([r.events_days, r.alarms_days, r.audit_days]) {
            if !range.contains(&value) {
                return Err(err(None, format!("key `retention.{key}`: {value} is outside {}..={}", range.start(), range.end())));
            }
        }
        if let Some(k) = raw.fallback.credentials.iter().find(|k| k.is_biometric()) {
            return Err(err(span_of(&["fallback", "credentials"]), format!("key `fallback.credentials`: `{k}` is biometric; the fallback honours only non-biometric credentials")));
        }
        if !raw.fallback.roles.contains(&Role::Resident) {
            return Err(err(span_of(&["fallback", "roles"]), "key `fallback.roles`: must include \"resident\": when a plugin fails, residents must still get in with a card, PIN or phone".into()));
        }
        for k in &raw.qr.issuer_keys {
            crate::credentials::parse_issuer_key(k).map_err(|m| err(span_of(&["qr", "issuer_keys"]), m))?;
        }
        if !raw.qr.issuer_keys.is_empty() && raw.qr.code_key.is_none() {
            return Err(err(
                span_of(&["qr", "issuer_keys"]),
                "key `qr.code_key`: missing: visitor passes are shown with a dynamic code, checked with the site's code key (make one with `gate qr code-keygen --out FILE` and give the platform a copy)".into(),
            ));
        }
        if let Some(k) = &raw.qr.code_key {
            let file = base.join(k);
            crate::visitor::CodeKey::load(&file).map_err(|e| err(span_of(&["qr", "code_key"]), format!("key `qr.code_key`: {e} (make one with `gate qr code-keygen --out {}`)", file.display())))?;
        }

        let mut plugins = BTreeMap::new();
        for (name, p) in raw.plugins {
            let settings = p
                .config
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect();
            if p.world == World::Integration && p.prefix.as_deref().is_none_or(str::is_empty) {
                return Err(err(None, format!("plugin `{name}`: key `prefix` is required for an integration plugin (it may publish only under it)")));
            }
            let path = base.join(&p.path);
            plugins.insert(name.clone(), PluginConfig { name, path, world: p.world, settings, prefix: p.prefix });
        }

        let mut doors = Vec::new();
        for sd in raw.doors {
            let span = sd.span();
            let d = sd.into_inner();
            if doors.iter().any(|x: &Door| x.id == d.id) {
                return Err(err(Some(span), format!("door `{}` is defined twice", d.id)));
            }
            let cred_span = d.credentials.span();
            let creds = d.credentials.into_inner();
            if creds.is_empty() {
                return Err(err(Some(cred_span), format!("door `{}` key `credentials`: a door must accept at least one credential", d.id)));
            }
            if !creds.iter().any(|k| !k.is_biometric()) {
                return Err(err(
                    Some(cred_span),
                    format!(
                        "door `{}` key `credentials`: accepts only face. Face recognition must never be the only way in \
                     (PRC face-recognition measures 2025, SPC 2021 art. 10): add a non-biometric credential such as \
                     \"card\", \"pin\" or \"nfc\"",
                        d.id
                    ),
                ));
            }
            if !creds.iter().any(|k| raw.fallback.credentials.contains(k)) {
                return Err(err(
                    Some(cred_span),
                    format!(
                        "door `{}` key `credentials`: none of them is honoured by `fallback.credentials`, so a failing \
                     plugin would leave residents no way in; accept one of {:?} or extend the fallback",
                        d.id,
                        raw.fallback.credentials.iter().map(|k| k.as_str()).collect::<Vec<_>>()
                    ),
                ));
            }
            let policy = match d.policy {
                None => None,
                Some(p) => {
                    let pspan = p.span();
                    let name = p.into_inner();
                    match plugins.get(&name) {
                        None => return Err(err(Some(pspan), format!("door `{}` key `policy`: no plugin `{name}` under [plugins]", d.id))),
                        Some(pc) if pc.world != World::Policy => return Err(err(Some(pspan), format!("door `{}` key `policy`: plugin `{name}` is not a policy plugin", d.id))),
                        Some(_) => Some(name),
                    }
                }
            };
            if d.unit_pin && !creds.contains(&CredentialKind::Pin) {
                return Err(err(Some(cred_span), format!("door `{}` has `unit_pin = true` but does not accept \"pin\"", d.id)));
            }
            for (key, v) in [("open_ms", d.open_ms), ("exit_open_ms", d.exit_open_ms)] {
                if v == 0 || v > d.max_open_ms {
                    return Err(err(Some(span.clone()), format!("door `{}` key `{key}`: {v} must be between 1 and the door's `max_open_ms` ({})", d.id, d.max_open_ms)));
                }
            }
            doors.push(Door {
                id: d.id,
                credentials: creds,
                policy,
                open_ms: d.open_ms,
                max_open_ms: d.max_open_ms,
                held_open_ms: d.held_open_ms,
                exit_open_ms: d.exit_open_ms,
                fire_release: d.fire_release,
                unit_pin: d.unit_pin,
            });
        }
        if doors.is_empty() {
            return Err(err(None, "no [[door]] defined".into()));
        }
        // A policy's opening times (settings named `…open-ms` / `…open_ms`) against the
        // doors it serves: a grant past a door's `max_open_ms` is a plugin failure, and
        // three of them quarantine the site's own policy.
        for d in &doors {
            let Some(pc) = d.policy.as_ref().and_then(|p| plugins.get(p)) else { continue };
            for (k, v) in pc.settings.iter().filter(|(k, _)| k.ends_with("open-ms") || k.ends_with("open_ms")) {
                let Ok(ms) = v.trim().parse::<u64>() else { continue };
                if ms > u64::from(d.max_open_ms) {
                    return Err(err(
                        span_of(&["plugins", &pc.name, "config"]),
                        format!("key `plugins.{}.config.{k}`: {ms} ms is above the `max_open_ms` ({}) of door `{}`, which the plugin serves", pc.name, d.max_open_ms, d.id),
                    ));
                }
            }
        }

        let hardware = match raw.hardware {
            None => None,
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                check_hardware(&h, &doors).map_err(|m| {
                    // Point at the offending entry: the first one holding a value the message names.
                    let named: Vec<&str> = m.split('`').skip(1).step_by(2).collect();
                    let entry = doc.get_ref().get("hardware").and_then(|v| v.get_ref().as_table()).and_then(|hw| {
                        hw.values()
                            .filter_map(|v| v.get_ref().as_array())
                            .flat_map(|a| a.iter())
                            .find(|e| e.get_ref().as_table().is_some_and(|t| t.values().any(|v| v.get_ref().as_str().is_some_and(|x| named.contains(&x)))))
                    });
                    err(Some(entry.map_or(span, |e| e.span())), format!("[hardware]: {m}"))
                })?;
                Some(h)
            }
        };

        let face = raw.face.resolve(&base).map_err(|m| err(None, m))?;

        let fleet = match raw.fleet {
            None => None,
            Some(f) => {
                let span = f.span();
                let mut f = f.into_inner();
                check_fleet(&f, &raw.site).map_err(|m| err(Some(span.clone()), format!("[fleet]: {m}")))?;
                // The event log's purge must never remove an event the outbox may still publish.
                let kept_hours = raw.retention.events_days.min(raw.retention.alarms_days).saturating_mul(24);
                if f.outbox.max_age_hours == 0 || f.outbox.max_age_hours > kept_hours {
                    return Err(err(
                        Some(span),
                        format!(
                            "[fleet]: key `outbox.max_age_hours` = {} must be between 1 and the event log's retention ({kept_hours} h from `retention.events_days` / `retention.alarms_days`), or unpublished events would be purged",
                            f.outbox.max_age_hours
                        ),
                    ));
                }
                if let Some(t) = f.broker.tls.as_mut() {
                    t.ca = base.join(&t.ca);
                    t.client_cert = t.client_cert.as_ref().map(|p| base.join(p));
                    t.client_key = t.client_key.as_ref().map(|p| base.join(p));
                }
                f.ref_key = f.ref_key.as_ref().map(|p| base.join(p));
                Some(f)
            }
        };

        let subjects = match &raw.site.subjects {
            None => Vec::new(),
            Some(rel) => load_subjects(&base.join(rel))?,
        };

        Ok(SiteConfig {
            site: Site { state_dir: raw.site.state_dir.as_ref().map(|d| base.join(d)), ..raw.site },
            limits: raw.limits,
            timing: raw.timing,
            face,
            fallback: raw.fallback,
            qr: QrConfig { code_key: raw.qr.code_key.as_ref().map(|p| base.join(p)), ..raw.qr },
            plugins,
            doors,
            subjects,
            hardware,
            fleet,
            retention: raw.retention,
            calls: raw.calls,
            path: path.to_path_buf(),
        })
    }

    /// The same site with another subject directory (e.g. the pseudonymised one `gate record` writes).
    pub fn with_subjects(mut self, path: &Path) -> Result<SiteConfig, ConfigError> {
        self.subjects = load_subjects(path)?;
        Ok(self)
    }

    /// The door with this id.
    pub fn door(&self, id: &str) -> Option<&Door> {
        self.doors.iter().find(|d| d.id == id)
    }
}

/// The `[fleet]` section: how this gateway reaches the broker and whom it trusts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `[fleet.broker]`: host, port, optional TLS files (relative to this config) and credentials.
    pub broker: gate_fleet::link::BrokerConfig,
    /// `[[fleet.trusted_keys]]`: operator keys and what each may do.
    #[serde(default)]
    pub trusted_keys: Vec<gate_fleet::keys::TrustedKeyConfig>,
    /// The site's credential reference key file (`gate fleet ref-keygen`), relative to this
    /// file: revoke / reinstate references are keyed with it (HMAC-SHA256).
    #[serde(default)]
    pub ref_key: Option<std::path::PathBuf>,
    /// `[fleet.outbox]`: how much unpublished backlog is kept while the broker is away.
    #[serde(default)]
    pub outbox: OutboxRetention,
    /// Largest bundle accepted, bytes.
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: usize,
    /// Failures of a freshly deployed plugin that make the gateway roll it back…
    #[serde(default = "default_rollback_failures")]
    pub rollback_failures: u32,
    /// …when they happen within this many ms of the swap.
    #[serde(default = "default_rollback_window")]
    pub rollback_window_ms: i64,
}

/// Outbox retention (`[fleet.outbox]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxRetention {
    /// Most unpublished events kept; older ones are skipped and counted past it.
    pub max_pending: u64,
    /// Unpublished events older than this many hours are skipped and counted; 0 = no age bound.
    pub max_age_hours: u64,
}

impl Default for OutboxRetention {
    fn default() -> Self {
        OutboxRetention { max_pending: 1_000_000, max_age_hours: 7 * 24 }
    }
}

fn default_max_bundle() -> usize {
    gate_fleet::bundle::DEFAULT_MAX_BUNDLE_BYTES
}
fn default_rollback_failures() -> u32 {
    3
}
fn default_rollback_window() -> i64 {
    5 * 60 * 1000
}

/// Checks `[fleet]`: ids usable as topic levels, trusted keys well-formed, limits sane.
fn check_fleet(f: &FleetConfig, site: &Site) -> Result<(), String> {
    gate_fleet::topics::check_level("site.id", &site.id).map_err(|e| format!("{e} (site ids name MQTT topics)"))?;
    gate_fleet::topics::check_level("site.gateway", &site.gateway).map_err(|e| format!("{e} (gateway ids name MQTT topics)"))?;
    if f.broker.host.is_empty() || f.broker.port == 0 {
        return Err("key `broker`: `host` and `port` must be set".into());
    }
    if f.broker.username.is_some() != f.broker.password.is_some() {
        return Err("key `broker`: `username` and `password` go together".into());
    }
    gate_fleet::keys::TrustedKeys::from_config(&f.trusted_keys).map_err(|e| format!("key `trusted_keys`: {e}"))?;
    if f.max_bundle_bytes == 0 || f.rollback_failures == 0 || f.rollback_window_ms <= 0 || f.outbox.max_pending == 0 {
        return Err("keys `max_bundle_bytes`, `rollback_failures`, `rollback_window_ms` and `outbox.max_pending` must be above 0".into());
    }
    Ok(())
}

/// Checks the `[hardware]` section against itself and the site's doors; the message names the key.
fn check_hardware(h: &gate_hw::HardwareConfig, doors: &[Door]) -> Result<(), String> {
    use gate_hw::config::InputKind;
    h.validate().map_err(|e| match e {
        gate_hw::HwError::Config(m) => m,
        other => other.to_string(),
    })?;
    let known = |d: &str| doors.iter().any(|x| x.id == d);
    for r in &h.relays {
        if !known(&r.door) {
            return Err(format!("key `relays.door`: no [[door]] `{}`", r.door));
        }
    }
    for r in &h.readers {
        if !known(&r.door) {
            return Err(format!("reader `{}` key `door`: no [[door]] `{}`", r.name, r.door));
        }
    }
    for i in &h.inputs {
        match (&i.door, i.kind) {
            (Some(d), _) if !known(d) => return Err(format!("input `{}` key `door`: no [[door]] `{d}`", i.name)),
            (None, InputKind::DoorContact | InputKind::ExitButton) => return Err(format!("input `{}` key `door`: a {:?} input must name its door", i.name, i.kind)),
            _ => {}
        }
    }
    Ok(())
}

/// Loads a subject directory file; duplicate ids or credential values (cards, PIN
/// hashes, NFC tokens, plates as normalised) are refused naming both subjects and lines.
/// Linear in the file's size.
pub fn load_subjects(path: &Path) -> Result<Vec<SubjectEntry>, ConfigError> {
    let text = read_input(path, MAX_SUBJECTS_BYTES, "subject directory")?;
    subjects_from_str(&text, path)
}

/// Parses and checks subject directory text; `path` locates errors.
pub fn subjects_from_str(text: &str, path: &Path) -> Result<Vec<SubjectEntry>, ConfigError> {
    let raw: RawSubjects = toml::from_str(text).map_err(|e| parse_err(path, text, e))?;
    check_subjects(raw.subjects, text, path)
}

/// The `[[subject]]` entries of a file that holds other sections too (the sidecar of
/// `gate plugin test`), checked exactly as a subject directory; errors name its lines.
pub fn subjects_within(text: &str, path: &Path) -> Result<Vec<SubjectEntry>, ConfigError> {
    #[derive(Deserialize)]
    struct Within {
        #[serde(default, rename = "subject")]
        subjects: Vec<Spanned<SubjectEntry>>,
    }
    let raw: Within = toml::from_str(text).map_err(|e| parse_err(path, text, e))?;
    check_subjects(raw.subjects, text, path)
}

fn check_subjects(subjects: Vec<Spanned<SubjectEntry>>, text: &str, path: &Path) -> Result<Vec<SubjectEntry>, ConfigError> {
    let raw = RawSubjects { subjects };
    let lines = LineIndex::new(text);
    let mut seen_ids: std::collections::HashMap<String, usize> = std::collections::HashMap::with_capacity(raw.subjects.len());
    let mut seen_creds: std::collections::HashMap<(&'static str, String), (String, usize)> = std::collections::HashMap::with_capacity(raw.subjects.len() * 2);
    let mut out = Vec::with_capacity(raw.subjects.len());
    for s in raw.subjects {
        let line = lines.line(s.span().start);
        let s = s.into_inner();
        let fail = |message: String| ConfigError { file: path.to_path_buf(), line: Some(line), message };
        if s.id.is_empty() {
            return Err(fail("subject key `id` must not be empty".into()));
        }
        if let Some(first) = seen_ids.insert(s.id.clone(), line) {
            return Err(fail(format!("subject id `{}` is defined twice (first at line {first})", s.id)));
        }
        for h in &s.pin_sha256 {
            if crate::credentials::pin_hash_bytes(h).is_none() {
                return Err(fail(format!("subject `{}` key `pin_sha256`: expected 64 hex digits (see `gate pin-hash`)", s.id)));
            }
        }
        let creds = s
            .cards
            .iter()
            .map(|c| ("card", c.clone()))
            .chain(s.pin_sha256.iter().map(|c| ("PIN hash", c.to_ascii_lowercase())))
            .chain(s.nfc.iter().map(|c| ("NFC token", c.clone())))
            .chain(s.plates.iter().map(|c| ("plate", crate::credentials::normalise_plate(c))));
        for (kind, value) in creds {
            if value.is_empty() {
                return Err(fail(format!("subject `{}`: an empty {kind}", s.id)));
            }
            if let Some((other, at)) = seen_creds.insert((kind, value), (s.id.clone(), line)) {
                return Err(fail(format!("subject `{}`: the same {kind} is already held by subject `{other}` (line {at}); every credential names one holder", s.id)));
            }
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[site]
id = "test-site"
gateway = "gw-1"

[[door]]
id = "north"
credentials = ["face", "card"]
"#;

    #[test]
    fn minimal_site_loads_with_defaults() {
        let c = SiteConfig::from_str(BASE, Path::new("configs/t.toml")).expect("valid");
        assert_eq!(c.doors[0].id, "north");
        assert_eq!(c.limits.deadline_ms, 20);
        assert!(c.doors[0].policy.is_none());
    }

    #[test]
    fn face_only_door_is_refused_with_line_and_reason() {
        let text = BASE.replace(r#"["face", "card"]"#, r#"["face"]"#);
        let e = SiteConfig::from_str(&text, Path::new("configs/t.toml")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        let msg = e.to_string();
        assert!(msg.starts_with("configs/t.toml:8:"), "{msg}");
        assert!(msg.contains("door `north`") && msg.contains("only way in"), "{msg}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("{BASE}colour = \"red\"\n");
        let e = SiteConfig::from_str(&text, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert_eq!(e.line, Some(9), "{e}");
    }

    #[test]
    fn door_pointing_at_missing_plugin_is_refused() {
        let text = format!("{BASE}policy = \"nope\"\n");
        let e = SiteConfig::from_str(&text, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("no plugin `nope`"), "{e}");
    }

    #[test]
    fn hardware_section_is_validated_naming_file_line_and_key() {
        let hw = "\n[hardware]\nbackend = \"linux\"\n[[hardware.relays]]\ndoor = \"north\"\nline = 17\n";
        let c = SiteConfig::from_str(&format!("{BASE}{hw}"), Path::new("c.toml")).expect("valid");
        assert_eq!(c.hardware.map(|h| h.relays.len()), Some(1));

        let e = SiteConfig::from_str(&format!("{BASE}{}", hw.replace("\"north\"", "\"south\"")), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:12: [hardware]: key `relays.door`: no [[door]] `south`"), "{e}");

        let e = SiteConfig::from_str(&format!("{BASE}{}", hw.replace("line = 17", "line = 17\nactive_hi = true")), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("active_hi") && e.line.is_some(), "{e}");

        // Held-open and forced-open belong to the host's door controller (`held_open_ms` on the [[door]]).
        let e = SiteConfig::from_str(&format!("{BASE}{hw}[hardware.doors.north]\nheld_open_ms = 1000\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown field `doors`") && e.line.is_some(), "{e}");

        let contact = "[[hardware.inputs]]\nname = \"n-contact\"\nkind = \"door-contact\"\nline = 5\n";
        let e = SiteConfig::from_str(&format!("{BASE}{hw}{contact}"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("input `n-contact` key `door`"), "{e}");
        assert_eq!(e.line, Some(15), "the error points at the offending entry, not at [hardware]: {e}");
    }

    #[test]
    fn face_matcher_paths_resolve_against_the_config_and_come_together() {
        let c = SiteConfig::from_str(BASE, Path::new("configs/t.toml")).expect("valid");
        assert!(!c.face.configured(), "face is off unless configured");

        let all = "\n[face]\nmodels_dir = \"../models\"\ndb = \"faces.sqlite\"\nkey = \"device.key\"\n";
        let c = SiteConfig::from_str(&format!("{BASE}{all}"), Path::new("configs/t.toml")).expect("valid");
        assert!(c.face.configured());
        assert_eq!(c.face.models_dir.as_deref(), Some(Path::new("configs/../models")));
        assert_eq!(c.face.key.as_deref(), Some(Path::new("configs/device.key")));

        let e = SiteConfig::from_str(&format!("{BASE}{}", all.replace("key = \"device.key\"\n", "")), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml: key `face.key` is missing"), "{e}");

        let e = SiteConfig::from_str(&format!("{BASE}\n[face]\nstrong = 0.4\nweak = 0.5\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("`face.weak`") && e.to_string().contains("above strong"), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}\n[face]\nstrong = 1.5\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("key `face.strong`: 1.5"), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}\n[face]\nlive = 0.3\nspoof = 0.4\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("`face.spoof`") && e.to_string().contains("above live"), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}\n[face]\nlive = -0.1\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("key `face.live`: -0.1"), "{e}");
    }

    #[test]
    fn fleet_section_loads_and_bad_keys_are_named() {
        let key = gate_fleet::keys::OperatorKey::generate("ops").unwrap();
        let fleet = format!(
            "\n[fleet]\nrollback_failures = 2\n[fleet.broker]\nhost = \"127.0.0.1\"\nport = 1883\n[fleet.broker.tls]\nca = \"ca.pem\"\n[[fleet.trusted_keys]]\nid = \"ops\"\npublic = \"{}\"\nmay = [\"deploy\"]\n",
            key.public_b64()
        );
        let c = SiteConfig::from_str(&format!("{BASE}{fleet}"), Path::new("configs/c.toml")).expect("valid");
        let f = c.fleet.expect("fleet");
        assert_eq!((f.rollback_failures, f.trusted_keys.len()), (2, 1));
        assert_eq!(f.broker.tls.unwrap().ca, Path::new("configs/ca.pem"));
        let e = SiteConfig::from_str(&format!("{BASE}{}", fleet.replace(&key.public_b64(), "bm90IGEga2V5")), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("[fleet]: key `trusted_keys`") && e.to_string().contains("\"ops\""), "{e}");
        assert!(e.line.is_some(), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}{}", fleet.replace("port = 1883", "port = 1883\nqos = 2")), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("qos"), "{e}");
    }

    #[test]
    fn fallback_may_not_honour_face() {
        let text = format!("{BASE}\n[fallback]\ncredentials = [\"face\", \"card\"]\n");
        let e = SiteConfig::from_str(&text, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("biometric"), "{e}");
    }

    #[test]
    fn door_without_fallback_credential_is_refused() {
        let text = BASE.replace(r#"["face", "card"]"#, r#"["face", "qr"]"#);
        let e = SiteConfig::from_str(&text, Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("fallback"), "{e}");
    }

    fn subject_file(pins: [&str; 2], plates: [&str; 2]) -> String {
        format!(
            "[[subject]]\nid = \"r-1\"\nrole = \"resident\"\ncards = [\"1001\"]\npin_sha256 = [\"{}\"]\nplates = [\"{}\"]\n\n[[subject]]\nid = \"r-2\"\nrole = \"resident\"\ncards = [\"1002\"]\npin_sha256 = [\"{}\"]\nplates = [\"{}\"]\n",
            crate::credentials::pin_hash("s", pins[0]),
            plates[0],
            crate::credentials::pin_hash("s", pins[1]),
            plates[1]
        )
    }

    #[test]
    fn two_subjects_with_the_same_pin_hash_are_refused_naming_both_and_the_line() {
        assert_eq!(subjects_from_str(&subject_file(["111111", "222222"], ["A1", "A2"]), Path::new("s.toml")).unwrap().len(), 2);
        let e = subjects_from_str(&subject_file(["111111", "111111"], ["A1", "A2"]), Path::new("s.toml")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.to_string().contains("subject `r-2`: the same PIN hash is already held by subject `r-1` (line 1)"), "{e}");
        // Upper-case hex is the same hash.
        let upper = subject_file(["111111", "222222"], ["A1", "A2"]).replace(&crate::credentials::pin_hash("s", "222222"), &crate::credentials::pin_hash("s", "111111").to_ascii_uppercase());
        assert!(subjects_from_str(&upper, Path::new("s.toml")).unwrap_err().to_string().contains("same PIN hash"));
        // Plates are compared as the reader normalises them.
        let e = subjects_from_str(&subject_file(["111111", "222222"], ["浙A 123", "浙a-123"]), Path::new("s.toml")).unwrap_err();
        assert!(e.to_string().contains("the same plate is already held by subject `r-1`"), "{e}");
    }

    #[test]
    fn line_index_agrees_with_counting_newlines() {
        let text = "a\nbb\n\nccc\n";
        let idx = LineIndex::new(text);
        for off in 0..=text.len() + 2 {
            assert_eq!(idx.line(off), line_of(text, off), "offset {off}");
        }
    }

    #[test]
    fn inputs_that_are_not_regular_files_or_not_utf8_are_refused_saying_where() {
        let e = read_input(Path::new("/dev/zero"), 1024, "site configuration").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read_input(&fifo, 1024, "trace").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let bad = tmp.path().join("bad.toml");
        std::fs::write(&bad, b"[site]\nid = \"s\xff\"\n").unwrap();
        let e = SiteConfig::load(&bad).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("not valid UTF-8: byte 8 of this line"), "{e}");
        std::fs::write(&bad, vec![b'#'; 2048]).unwrap();
        assert!(read_input(&bad, 1024, "trace").unwrap_err().to_string().contains("larger than 1024 bytes"));
    }

    #[test]
    fn a_policy_opening_time_above_a_door_maximum_is_refused_at_start() {
        let plugin = "\n[plugins.rp]\npath = \"rp.wasm\"\nworld = \"policy\"\nconfig = { default-open-ms = 5000, long-open-ms = 12000 }\n";
        let door = "policy = \"rp\"\nmax_open_ms = 10000\n";
        let e = SiteConfig::from_str(&format!("{BASE}{door}{plugin}"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:15: key `plugins.rp.config.long-open-ms`: 12000 ms is above the `max_open_ms` (10000) of door `north`"), "{e}");
        SiteConfig::from_str(&format!("{BASE}{}{plugin}", door.replace("10000", "12000")), Path::new("c.toml")).expect("within the door's maximum");
    }

    #[test]
    fn type_and_duplicate_key_errors_name_their_key() {
        let e = SiteConfig::from_str(&format!("{BASE}fire_release = \"yes\"\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:9: key `fire_release`:"), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}id = \"south\"\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:9: key `id`:") && e.to_string().contains("duplicate"), "{e}");
    }

    #[test]
    fn reproducers_past_their_bounds_are_refused_naming_key_and_line() {
        let cases: &[(&str, &str, usize)] = &[
            ("\n[timing]\nfactor_timeout_ms = 9223372036854775807\n", "timing.factor_timeout_ms", 11),
            ("held_open_ms = 9223372036854775807\n", "door.held_open_ms", 9),
            ("\n[limits]\nmemory_mb = 17592186044416\n", "limits.memory_mb", 11),
            ("\n[limits]\nfailures_before_quarantine = 0\n", "limits.failures_before_quarantine", 11),
            ("exit_open_ms = 0\n", "door.exit_open_ms", 9),
            ("\n[fallback]\nopen_ms = 0\n", "fallback.open_ms", 11),
        ];
        for (extra, key, line) in cases {
            let e = SiteConfig::from_str(&format!("{BASE}{extra}"), Path::new("c.toml")).unwrap_err();
            assert!(e.to_string().starts_with(&format!("c.toml:{line}: key `{key}`:")), "{extra}: {e}");
        }
        let e = SiteConfig::from_str(&format!("{BASE}\n[fallback]\nroles = []\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:11: key `fallback.roles`: must include \"resident\""), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}\n[qr]\nissuer_keys = [\"{}\"]\n", "00".repeat(32)), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:11: key `qr.issuer_keys`") && e.to_string().contains("weak"), "{e}");
        // Visitor passes are shown with a dynamic code: trusting an issuer needs the code key too.
        let demo_issuer = "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
        let e = SiteConfig::from_str(&format!("{BASE}\n[qr]\nissuer_keys = [\"{demo_issuer}\"]\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("c.toml:11: key `qr.code_key`: missing") && e.to_string().contains("gate qr code-keygen"), "{e}");
        let e = SiteConfig::from_str(&format!("{BASE}\n[qr]\nissuer_keys = [\"{demo_issuer}\"]\ncode_key = \"qr.key\"\n"), Path::new("/nonexistent/c.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/c.toml:12: key `qr.code_key`: visitor pass code key /nonexistent/qr.key:"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        crate::visitor::CodeKey::generate().unwrap().save(&dir.path().join("qr.key")).unwrap();
        let ok = SiteConfig::from_str(&format!("{BASE}\n[qr]\nissuer_keys = [\"{demo_issuer}\"]\ncode_key = \"qr.key\"\n"), &dir.path().join("c.toml")).unwrap();
        assert_eq!(ok.qr.code_key, Some(dir.path().join("qr.key")), "relative to the config file");
        let e = SiteConfig::from_str(&format!("{BASE}max_open_ms = 3000\nopen_ms = 2000\nexit_open_ms = 4000\n"), Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("door `north` key `exit_open_ms`: 4000 must be between 1 and the door's `max_open_ms` (3000)"), "{e}");
    }
}
