//! The gateway's side of fleet operations (`[fleet]`, crate `gate-fleet`): signed
//! plugin deployment into the real wasmtime runtime, remote commands through the door
//! controller, and the MQTT link that publishes the event log.
//!
//! Threads: the gateway loop owns the door and never waits on the network; the link
//! runs on its own tokio thread; the agent (deployment jobs, commands, automatic
//! rollback) runs on its own thread and compiles, links and self-tests new plugins
//! there. Only the finished swap goes to the policy thread, queued like an event, so
//! it lands between two decisions.

use crate::clock::Clock;
use crate::config::{PluginConfig, SiteConfig, World};
use crate::event::{CredentialKind, Direction, DoorMode, Input, Outcome, PluginStatus, Record, Role};
use crate::gateway::{Gateway, GatewayError, Timed};
use crate::plugin::Slot;
use crate::trace::{input_line, Header, Trace};
use crate::worker::PluginControl;
use gate_fleet::agent::{Agent, CommandExecutor};
use gate_fleet::bundle::{self, Manifest, World as FleetWorld};
use gate_fleet::commands::{AuthorisedCommand, CommandAction, DirectoryChange, DoorMode as FleetDoorMode, Executed};
use gate_fleet::deploy::{ActivePlugin, DeployConfig, Deployer, PluginSlot, RollbackRule};
use gate_fleet::keys::TrustedKeys;
use gate_fleet::link::{Inbound, Link, LinkConfig, LinkHandle, PluginLimits};
use gate_fleet::messages::{GatewayClock, PluginInfo, Status};
use gate_fleet::outbox::{Outbox, Retention};
use gate_fleet::store::FleetStore;
use semver::Version;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the fleet side could not start.
#[derive(Debug, Error)]
pub enum FleetError {
    #[error("the site configuration has no [fleet] section")]
    NotConfigured,
    #[error("[fleet] key `trusted_keys`: {0}")]
    Keys(#[from] gate_fleet::keys::KeyError),
    #[error(transparent)]
    Store(#[from] gate_fleet::store::StoreError),
    #[error(transparent)]
    Outbox(#[from] gate_fleet::outbox::OutboxError),
    #[error("[fleet] key `broker`: {0}")]
    Link(#[from] gate_fleet::link::LinkError),
    #[error("fleet: {0}")]
    Setup(String),
}

/// Carries out one authorised command on the gateway: its records and what to reply.
fn execute(gw: &mut Gateway, now: i64, req: &RemoteCommand) -> Result<Result<(Vec<Timed>, Executed), String>, GatewayError> {
    let sender = req.sender.as_str();
    Ok(match &req.action {
        CommandAction::OpenDoorOnce { door } => gw.remote_open(now, door, &req.command, sender)?.map(|(recs, ())| (recs, format!("door `{door}` released once").into())),
        CommandAction::SetDoorMode { door, mode, for_ms } => {
            let mode = match mode {
                FleetDoorMode::Normal => DoorMode::Normal,
                FleetDoorMode::Locked => DoorMode::Locked,
                FleetDoorMode::HeldOpen => DoorMode::HeldOpen,
            };
            gw.remote_set_mode(now, door, mode, *for_ms, sender)?.map(|(recs, until)| {
                let detail = match until {
                    Some(u) => format!("door `{door}` {} for {} s, until {} gateway time", mode.as_str(), for_ms / 1000, crate::replay::local_hms(gw.clock(), u)),
                    None => format!("door `{door}` back to normal"),
                };
                (recs, detail.into())
            })
        }
        CommandAction::RevokeCredential { credential_ref, reason } => gw.remote_revoke(now, credential_ref, reason, sender)?.map(|(recs, holder)| {
            let detail = match holder {
                Some(h) => format!("{credential_ref} of {h} revoked"),
                None if credential_ref.starts_with("pass:") => format!("visitor {credential_ref} revoked"),
                None => format!("{credential_ref} revoked (no holder in this gateway's directory now; it stays refused if one is added)"),
            };
            (recs, detail.into())
        }),
        CommandAction::ReinstateCredential { credential_ref, reason } => gw.remote_reinstate(now, credential_ref, reason, sender)?.map(|(recs, holder)| {
            let of = holder.map(|h| format!(" of {h}")).unwrap_or_default();
            (recs, format!("{credential_ref}{of} reinstated").into())
        }),
        CommandAction::RotateUnitPin { door, .. } => gw.remote_rotate_unit_pin(now, door, sender)?.map(|(recs, pin)| {
            let detail = format!("unit PIN of door `{door}` replaced; the old one no longer opens it");
            (recs, Executed { detail, secret_for_sender: Some(pin) })
        }),
        CommandAction::DirectoryChanges { version, changes } => {
            let ops: Result<Vec<_>, String> = changes
                .iter()
                .map(|c| match c {
                    DirectoryChange::Upsert { subject: s } => crate::directory::sync_upsert(&s.id, &s.role, &s.groups, &s.credentials),
                    DirectoryChange::Remove { id } => gate_face::validate_subject(id).map(|()| crate::directory::SyncOp::Remove { id: id.clone() }).map_err(|e| e.to_string()),
                })
                .collect();
            match ops {
                Ok(ops) => gw.remote_directory(now, crate::directory::SyncStep::Changes { version: *version }, &ops, sender)?.map(directory_done),
                Err(why) => Err(why),
            }
        }
        CommandAction::GuardOpen { door, guard, reason } => gw.guard_open(now, door, guard, reason, sender)?.map(|(recs, ())| (recs, format!("door `{door}` released once by guard {guard}").into())),
        CommandAction::CallResident { door, resident } => gw.remote_call(now, door, resident, sender)?.map(|(recs, d)| (recs, d.into())),
        CommandAction::AnswerCall { call, via, open } => gw.remote_answer(now, call, via, *open, sender)?.map(|(recs, d)| (recs, d.into())),
        CommandAction::GuardVisitor { guard, visitor, host, doors, for_ms, uses } => {
            gw.guard_visitor(now, guard, visitor, host, doors, *for_ms, *uses, sender)?.map(|(recs, pass)| (recs, format!("pass {pass}").into()))
        }
        CommandAction::GuardAttention { guard, minutes } => gw.guard_attention(now, guard, *minutes)?.map(|(recs, v)| (recs, v.to_string().into())),
        CommandAction::DirectorySnapshot { version, page, pages, subjects } => {
            let ops: Result<Vec<_>, String> = subjects.iter().map(|s| crate::directory::sync_upsert(&s.id, &s.role, &s.groups, &s.credentials)).collect();
            let step = crate::directory::SyncStep::SnapshotPage { version: *version, page: *page, pages: *pages };
            match ops {
                Ok(ops) => gw.remote_directory(now, step, &ops, sender)?.map(directory_done),
                Err(why) => Err(why),
            }
        }
    })
}

/// The reply detail of an applied directory change.
fn directory_done((recs, s): (Vec<Timed>, crate::directory::SyncSummary)) -> (Vec<Timed>, Executed) {
    (recs, format!("directory at version {}: {} added, {} changed, {} removed", s.version, s.added.len(), s.changed.len(), s.removed.len()).into())
}

/// Version reported for plugins loaded from the site configuration (not deployed).
pub const CONFIGURED_VERSION: Version = Version::new(0, 0, 0);

/// How long an activation may wait for the events queued before it.
const SWAP_TIMEOUT: Duration = Duration::from_secs(10);

/// A plugin as this gateway runs it: what the fleet reports, and where its component is.
#[derive(Clone, Debug)]
struct Entry {
    info: ActivePlugin,
    path: PathBuf,
    settings: BTreeMap<String, String>,
}

/// What `fleet/active.json` remembers of a deployed plugin, so a restart serves it
/// again, and of the version it replaced, so a rollback still works after a restart.
#[derive(serde::Serialize, serde::Deserialize)]
struct Deployed {
    version: Version,
    sha256: String,
    path: PathBuf,
    settings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<Box<Deployed>>,
}

impl Deployed {
    fn of(e: &Entry) -> Deployed {
        Deployed { version: e.info.version.clone(), sha256: e.info.sha256.clone(), path: e.path.clone(), settings: e.settings.clone(), previous: None }
    }
}

fn active_file(dir: &Path) -> PathBuf {
    dir.join("active.json")
}

fn read_deployed(dir: &Path) -> BTreeMap<String, Deployed> {
    let path = active_file(dir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeMap::new();
    };
    match serde_json::from_str::<BTreeMap<String, Deployed>>(&text) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "unreadable list of deployed plugins; serving the configured ones");
            BTreeMap::new()
        }
    }
}

/// The fleet's working directory next to the event log `db`.
pub fn fleet_dir(db: &Path) -> PathBuf {
    db.parent().unwrap_or(Path::new(".")).join("fleet")
}

/// The gateway's device key in [`fleet_dir`] (made there, mode 0600, on first use; the
/// directory is 0700). It signs everything the gateway publishes and never leaves it.
pub fn device_key(db: &Path) -> Result<(gate_fleet::signed::DeviceKey, bool), FleetError> {
    let dir = fleet_dir(db);
    std::fs::create_dir_all(&dir).map_err(|e| FleetError::Setup(format!("creating {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    gate_fleet::signed::DeviceKey::load_or_create(&dir.join("device.key")).map_err(|e| FleetError::Setup(e.to_string()))
}

/// The fleet's own database (jobs, sequences, command log, outbox cursor) in [`fleet_dir`].
pub fn fleet_db(db: &Path) -> PathBuf {
    fleet_dir(db).join("fleet.sqlite")
}

/// The site with the plugins the fleet deployed (recorded in `<dir>/active.json`) in
/// place of the configured ones, so a restart serves what was last activated. A
/// component whose file is missing or no longer has its recorded sha256 is skipped
/// (with an error in the log) and the configured one is served.
pub fn with_deployed(mut cfg: SiteConfig, dir: &Path) -> SiteConfig {
    for (name, d) in read_deployed(dir) {
        let Some(pc) = cfg.plugins.get_mut(&name) else {
            continue;
        };
        match std::fs::read(&d.path) {
            Ok(bytes) if bundle::sha256_hex(&bytes) == d.sha256 => {
                tracing::info!(plugin = %name, version = %d.version, "serving the deployed version");
                pc.path = d.path;
                pc.settings = d.settings;
            }
            _ => {
                tracing::error!(plugin = %name, file = %d.path.display(), "deployed component missing or changed on disk; serving the configured one")
            }
        }
    }
    cfg
}

/// Rewrites a self-test trace for travel over MQTT: every card number, PIN, NFC token
/// and plate becomes a reference to its holder (`@r-0001`, from `cfg`'s subject
/// directory) or `@unknown-N` for values nobody holds. The gateway resolves `@id`
/// against its own directory, so the trace decides the same and carries no credential.
pub fn pseudonymise_trace(text: &str, cfg: &SiteConfig) -> Result<String, String> {
    let dir = crate::credentials::Directory::from_config(cfg).map_err(|e| e.to_string())?;
    let mut unknown: BTreeMap<String, String> = BTreeMap::new();
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let mut v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        // Only inputs carry credentials; every other line (header, expected outputs) travels
        // exactly as written, so expected payloads keep the key order the plugin publishes in.
        let Some(raw) = v.get("input").cloned() else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        {
            let mut input: Input = serde_json::from_value(raw).map_err(|e| format!("line {}: {e}", n + 1))?;
            let mut refer = |kind: &str, value: &mut String, holder: Option<&crate::credentials::Subject>| {
                let next = unknown.len() + 1;
                *value = match holder {
                    Some(s) => format!("@{}", s.id),
                    None => unknown.entry(format!("{kind}:{value}")).or_insert_with(|| format!("@unknown-{next}")).clone(),
                };
            };
            match &mut input {
                Input::Card { number, .. } => refer("card", number, dir.by_card(number)),
                Input::Pin { pin, .. } => refer("pin", pin, dir.by_pin(pin)),
                Input::Nfc { token, .. } => refer("nfc", token, dir.by_nfc(token)),
                Input::Plate { plate, .. } => refer("plate", plate, dir.by_plate(plate)),
                // Nothing to hide: the line travels as written (a face input keeps its score).
                _ => {
                    out.push_str(line);
                    out.push('\n');
                    continue;
                }
            }
            v["input"] = serde_json::to_value(&input).map_err(|e| e.to_string())?;
        }
        out.push_str(&serde_json::to_string(&v).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    Ok(out)
}

/// The first card number, PIN, NFC token or plate in `trace` that is not a subject
/// reference (`@…`), as "kind at line-time", if any.
fn raw_credential(trace: &Trace) -> Option<String> {
    trace.inputs.iter().find_map(|(at, i)| {
        let (kind, v) = match i {
            Input::Card { number, .. } => ("card number", number),
            Input::Pin { pin, .. } => ("PIN", pin),
            Input::Nfc { token, .. } => ("NFC token", token),
            Input::Plate { plate, .. } => ("plate", plate),
            _ => return None,
        };
        (!v.starts_with('@')).then(|| format!("a raw {kind} at {at} ms"))
    })
}

fn to_fleet_world(w: World) -> FleetWorld {
    match w {
        World::Policy => FleetWorld::PolicyPlugin,
        World::Integration => FleetWorld::IntegrationPlugin,
    }
}

/// The real plugin slot: stages on the policy engine's own engine (off the policy
/// thread), self-tests in deterministic replay, swaps on the policy thread.
pub struct HostSlot {
    cfg: SiteConfig,
    control: PluginControl,
    clock: Clock,
    db: PathBuf,
    dir: PathBuf,
    components: PathBuf,
    cache_dir: Option<PathBuf>,
    active: BTreeMap<String, Entry>,
    /// The version each plugin replaced; its slot is linked again on demand after a restart.
    previous: BTreeMap<String, (Entry, Option<Slot>)>,
    staged: BTreeMap<String, (Entry, Slot)>,
    /// Time the last stage (compile + link + first instance) and self-test took.
    pub last_timings: (Duration, Duration),
}

impl HostSlot {
    /// The plugins of `cfg` as they were loaded; deployed components go under `dir`.
    pub fn new(cfg: SiteConfig, control: PluginControl, clock: Clock, db: &Path, dir: &Path, cache_dir: Option<PathBuf>) -> HostSlot {
        let mut active = BTreeMap::new();
        let mut previous = BTreeMap::new();
        let mut deployed = read_deployed(dir);
        for (name, pc) in &cfg.plugins {
            let Ok(bytes) = std::fs::read(&pc.path) else {
                continue;
            };
            let sha256 = bundle::sha256_hex(&bytes);
            let this = deployed.remove(name).filter(|d| d.sha256 == sha256 && d.path == pc.path);
            let version = this.as_ref().map_or(CONFIGURED_VERSION, |d| d.version.clone());
            let mut info = ActivePlugin { name: name.clone(), world: to_fleet_world(pc.world), version, sha256, previous: None };
            if let Some(p) = this.and_then(|d| d.previous) {
                info.previous = Some(p.version.clone());
                let pinfo = ActivePlugin { name: name.clone(), world: info.world, version: p.version, sha256: p.sha256, previous: None };
                previous.insert(name.clone(), (Entry { info: pinfo, path: p.path, settings: p.settings }, None));
            }
            active.insert(name.clone(), Entry { info, path: pc.path.clone(), settings: pc.settings.clone() });
        }
        HostSlot {
            cfg,
            control,
            clock,
            db: db.to_path_buf(),
            dir: dir.to_path_buf(),
            components: dir.join("components"),
            cache_dir,
            active,
            previous,
            staged: BTreeMap::new(),
            last_timings: (Duration::ZERO, Duration::ZERO),
        }
    }

    /// Records the active plugins' components and the versions they replaced
    /// (atomically) for the next start, and deletes components nothing refers to any more.
    fn save_active(&self) {
        let m: BTreeMap<&String, Deployed> = self
            .active
            .iter()
            .filter(|(_, e)| e.info.version != CONFIGURED_VERSION)
            .map(|(n, e)| {
                let mut d = Deployed::of(e);
                d.previous = self.previous.get(n).map(|(p, _)| Box::new(Deployed::of(p)));
                (n, d)
            })
            .collect();
        let keep: Vec<&PathBuf> = self.active.values().chain(self.previous.values().map(|(e, _)| e)).chain(self.staged.values().map(|(e, _)| e)).map(|e| &e.path).collect();
        if let Ok(files) = std::fs::read_dir(&self.components) {
            for f in files.flatten().map(|f| f.path()) {
                if !keep.contains(&&f) {
                    let _ = std::fs::remove_file(&f);
                }
            }
        }
        let path = active_file(&self.dir);
        let tmp = path.with_extension("tmp");
        let res = serde_json::to_vec_pretty(&m).map_err(std::io::Error::other).and_then(|b| std::fs::write(&tmp, b)).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            tracing::error!(file = %path.display(), error = %e, "could not record the deployed plugins; a restart serves the configured ones");
        }
    }

    fn kv(&self, plugin: &str) -> BTreeMap<String, Vec<u8>> {
        let read = || -> rusqlite::Result<BTreeMap<String, Vec<u8>>> {
            let c = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let mut st = c.prepare("SELECT key, value FROM plugin_kv WHERE plugin = ?1")?;
            let rows = st.query_map([plugin], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            rows.collect()
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(plugin, error = %e, "could not read the plugin's kv store; the new version starts empty");
            BTreeMap::new()
        })
    }

    /// Links a kept version again (after a restart), checking its component is unchanged.
    fn relink(&self, e: &Entry) -> Result<Slot, String> {
        let bytes = std::fs::read(&e.path).map_err(|err| format!("the kept version's component {}: {err}", e.path.display()))?;
        if bundle::sha256_hex(&bytes) != e.info.sha256 {
            return Err(format!("the kept version's component {} changed on disk", e.path.display()));
        }
        self.link(&e.info.name, &e.path, &bytes, &e.settings).map(|(slot, _)| slot)
    }

    /// Compiles (or takes from the cache) and links a component of plugin `name` on the
    /// policy engine's own engine, with its kv store; returns the slot and the sha256.
    fn link(&self, name: &str, path: &Path, component: &[u8], settings: &BTreeMap<String, String>) -> Result<(Slot, String), String> {
        let pc = self.cfg.plugins.get(name).ok_or_else(|| format!("plugin `{name}` is not configured at this site"))?;
        let rt = self.control.runtime();
        let loaded = rt.load_bytes(component, path, &self.cfg.limits).map_err(|e| e.to_string())?;
        let pcfg = PluginConfig { name: name.to_string(), path: path.to_path_buf(), world: pc.world, settings: settings.clone(), prefix: pc.prefix.clone() };
        let slot = Slot::new(rt, &pcfg, &loaded, &self.cfg.limits, self.clock.clone(), self.kv(name)).map_err(|e| e.to_string())?;
        Ok((slot, loaded.sha256.clone()))
    }

    /// The site as replay should see it with the active plugins and `staged` in place.
    fn site_with(&self, staged: Option<&Entry>) -> SiteConfig {
        let mut cfg = self.cfg.clone();
        cfg.fleet = None;
        for e in self.active.values().chain(staged) {
            if let Some(pc) = cfg.plugins.get_mut(&e.info.name) {
                pc.path = e.path.clone();
                pc.settings = e.settings.clone();
            }
        }
        cfg
    }

    /// The host's own check of a policy plugin: every resident who holds a card (or
    /// phone NFC) must get in (or be asked for a non-biometric second factor) at one of
    /// the plugin's doors at least, on a weekday at 10:00, and no probe may make the
    /// plugin fail (trap, time out, ask for face only, grant beyond the door's maximum).
    fn host_check(&self, cfg: &SiteConfig, name: &str) -> Result<usize, String> {
        let doors: Vec<_> = cfg.doors.iter().filter(|d| d.policy.as_deref() == Some(name)).collect();
        let mut lines = Vec::new();
        let mut at = 0u64;
        for s in cfg.subjects.iter().filter(|s| s.role == Role::Resident) {
            for d in &doors {
                let input = if let (Some(card), true) = (s.cards.first(), d.accepts(CredentialKind::Card)) {
                    Input::Card { door: d.id.clone(), direction: Direction::Entry, number: card.clone(), captured_at: None }
                } else if let (Some(tok), true) = (s.nfc.first(), d.accepts(CredentialKind::Nfc)) {
                    Input::Nfc { door: d.id.clone(), direction: Direction::Entry, token: tok.clone(), captured_at: None }
                } else {
                    continue;
                };
                at += 5_000;
                lines.push(input_line(at, &input));
            }
        }
        if lines.is_empty() {
            return Ok(0);
        }
        let header = Header { gate_trace: crate::trace::VERSION, site: cfg.site.id.clone(), start: format!("2026-11-24T10:00:00{}", cfg.site.utc_offset), description: Some("host check".into()) };
        let text = format!("{}\n{}\n", serde_json::to_string(&header).unwrap_or_default(), lines.join("\n"));
        let trace = Trace::parse(&text, Path::new("host check")).map_err(|e| format!("host check: {e}"))?;
        let replay = crate::replay::run(cfg.clone(), &trace, self.cache_dir.clone()).map_err(|e| format!("host check: {e}"))?;
        let mut outcome: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
        for (_, r) in &replay.records {
            match r {
                Record::Plugin { plugin, status: PluginStatus::Failed, reason } if plugin == name => {
                    return Err(format!("host check: the plugin failed on a resident's credential ({reason}); its doors would fall back to the host policy"));
                }
                Record::Decision { door, subject: Some(s), outcome: o, by, .. } if by == &format!("plugin:{name}") => {
                    let e = outcome.entry(s.clone()).or_default();
                    e.0 |= *o != Outcome::Deny;
                    e.1.push(door.clone());
                }
                _ => {}
            }
        }
        if let Some((who, (_, at_doors))) = outcome.iter().find(|(_, (ok, _))| !ok) {
            return Err(format!("host check: resident `{who}` would be denied with their card at every door ({}); a plugin must never lock residents out", at_doors.join(", ")));
        }
        Ok(lines.len())
    }
}

impl PluginSlot for HostSlot {
    fn active(&self, name: &str) -> Option<ActivePlugin> {
        self.active.get(name).map(|e| e.info.clone())
    }

    fn plugins(&self) -> Vec<ActivePlugin> {
        self.active.values().map(|e| e.info.clone()).collect()
    }

    fn stage(&mut self, m: &Manifest, component: &[u8]) -> Result<(), String> {
        let t = Instant::now();
        let Some(pc) = self.cfg.plugins.get(&m.name) else {
            return Err(format!("plugin `{}` is not configured at this site (add [plugins.{}] to the site configuration first)", m.name, m.name));
        };
        if to_fleet_world(pc.world) != m.world {
            return Err(format!("plugin `{}` is configured as a {:?} plugin; the bundle is a {}", m.name, pc.world, m.world.wit_name()));
        }
        std::fs::create_dir_all(&self.components).map_err(|e| format!("creating {}: {e}", self.components.display()))?;
        let path = self.components.join(format!("{}-{}-{}.wasm", m.name, m.version, &m.sha256[..m.sha256.len().min(12)]));
        std::fs::write(&path, component).map_err(|e| format!("writing {}: {e}", path.display()))?;
        let (mut slot, sha256) = self.link(&m.name, &path, component, &m.config)?;
        slot.instantiate_fresh(self.control.runtime()).map_err(|e| format!("the component does not start: {e}"))?;
        let info = ActivePlugin { name: m.name.clone(), world: m.world, version: m.version.clone(), sha256, previous: None };
        self.staged.insert(m.name.clone(), (Entry { info, path, settings: m.config.clone() }, slot));
        self.last_timings.0 = t.elapsed();
        tracing::info!(plugin = %m.name, version = %m.version, ms = t.elapsed().as_millis() as u64, "plugin staged");
        Ok(())
    }

    fn self_test(&mut self, m: &Manifest) -> Result<(), String> {
        let t = Instant::now();
        let entry = self.staged.get(&m.name).map(|(e, _)| e.clone()).ok_or_else(|| format!("nothing staged for `{}`", m.name))?;
        let mut cfg = self.site_with(Some(&entry));
        // Self-tests name credentials by holder (`@id`); resolve those like the real ones.
        let site = cfg.site.id.clone();
        for s in cfg.subjects.iter_mut() {
            let r = format!("@{}", s.id);
            s.cards.push(r.clone());
            s.nfc.push(r.clone());
            s.plates.push(r.clone());
            s.pin_sha256.push(crate::credentials::pin_hash(&site, &r));
        }
        for st in &m.self_tests {
            let text = format!("{}\n{}\n", st.trace.trim_end(), st.expected.trim_end());
            let trace = Trace::parse(&text, Path::new(&format!("self-test `{}`", st.name))).map_err(|e| e.to_string())?;
            if trace.expected.is_empty() {
                return Err(format!("self-test `{}` has no expected outputs", st.name));
            }
            if let Some(what) = raw_credential(&trace) {
                return Err(format!("self-test `{}` carries {what}; credentials must travel as holder references (sign with `gate plugin sign --config-from`)", st.name));
            }
            let replay = crate::replay::run(cfg.clone(), &trace, self.cache_dir.clone()).map_err(|e| format!("self-test `{}`: {e}", st.name))?;
            if let Some(p) = replay.problems.first() {
                return Err(format!("self-test `{}`: {p}", st.name));
            }
            if let Some(d) = crate::replay::diff(&trace.expected, &replay.records) {
                let d: String = d.chars().take(1500).collect();
                return Err(format!("self-test `{}` did not produce its expected outputs:\n{d}", st.name));
            }
        }
        let probes = if m.world == FleetWorld::PolicyPlugin { self.host_check(&cfg, &m.name)? } else { 0 };
        self.last_timings.1 = t.elapsed();
        tracing::info!(plugin = %m.name, version = %m.version, self_tests = m.self_tests.len(), probes, ms = t.elapsed().as_millis() as u64, "plugin self-tested");
        Ok(())
    }

    fn activate(&mut self, name: &str) -> Result<(), String> {
        let (mut entry, slot) = self.staged.remove(name).ok_or_else(|| format!("nothing staged for `{name}`"))?;
        let old = self.control.swap(name, slot, SWAP_TIMEOUT)?;
        if let (Some(old_slot), Some(old_entry)) = (old, self.active.get(name).cloned()) {
            entry.info.previous = Some(old_entry.info.version.clone());
            self.previous.insert(name.to_string(), (old_entry, Some(old_slot)));
        }
        self.active.insert(name.to_string(), entry);
        self.save_active();
        Ok(())
    }

    fn discard(&mut self, name: &str) {
        if let Some((e, _)) = self.staged.remove(name) {
            if self.active.values().all(|a| a.path != e.path) {
                let _ = std::fs::remove_file(&e.path);
            }
        }
    }

    fn rollback(&mut self, name: &str) -> Result<Version, String> {
        let (entry, slot) = self.previous.remove(name).ok_or_else(|| format!("no previous version of `{name}` is kept"))?;
        let slot = match slot {
            Some(s) => s,
            None => match self.relink(&entry) {
                Ok(s) => s,
                Err(e) => {
                    self.previous.insert(name.to_string(), (entry, None));
                    return Err(e);
                }
            },
        };
        match self.control.swap(name, slot, SWAP_TIMEOUT) {
            Ok(_) => {
                let v = entry.info.version.clone();
                self.active.insert(name.to_string(), entry);
                self.save_active();
                Ok(v)
            }
            Err(e) => {
                self.previous.insert(name.to_string(), (entry, None));
                Err(e)
            }
        }
    }
}

/// An authorised command, handed to the gateway loop (which owns the door and the
/// directory), with where to send the outcome.
pub struct RemoteCommand {
    pub action: CommandAction,
    pub command: String,
    pub sender: String,
    reply: Sender<Result<Executed, String>>,
}

/// Executes authorised commands by handing them to the gateway loop and waiting for it.
pub struct Commands {
    tx: Sender<RemoteCommand>,
    bell: crate::service::Bell,
}

impl CommandExecutor for Commands {
    fn execute(&mut self, cmd: &AuthorisedCommand) -> Result<Executed, String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(RemoteCommand { action: cmd.command.action.clone(), command: cmd.command.id.clone(), sender: cmd.sender.clone(), reply })
            .map_err(|_| "the gateway loop has stopped".to_string())?;
        self.bell.ring();
        rx.recv_timeout(Duration::from_secs(5)).map_err(|_| "the gateway loop did not act on the command within 5 s".to_string())?
    }
}

/// Inbound messages handed to the agent and not yet handled, at most.
const AGENT_QUEUE: usize = 8;

enum AgentMsg {
    Inbound(Box<Inbound>),
    PluginFailed(String),
}

/// The fleet side of `gate run`: link and agent threads, and what the gateway loop
/// calls (never blocking): [`Fleet::after`] with its records, [`Fleet::poll_commands`].
pub struct Fleet {
    handle: LinkHandle,
    to_agent: Sender<AgentMsg>,
    commands: Receiver<RemoteCommand>,
    prefixes: BTreeMap<String, String>,
    db: PathBuf,
    link_done: Receiver<()>,
    reports: Option<crate::report_publish::MonthlyReports>,
}

impl Fleet {
    /// Starts the link and the agent for `gw` (whose policy worker must be running).
    /// `db` is the event log the outbox publishes; deployed components go next to it.
    /// Authorised commands ring `bell`, so the service loop carries them out at once.
    pub fn start(gw: &Gateway, db: &Path, cache_dir: Option<PathBuf>, bell: crate::service::Bell) -> Result<Fleet, FleetError> {
        let cfg = gw.config().clone();
        let fc = cfg.fleet.clone().ok_or(FleetError::NotConfigured)?;
        let site = cfg.site.id.clone();
        let gateway = cfg.site.gateway.clone();
        let trusted = TrustedKeys::from_config(&fc.trusted_keys)?;
        let host_version: Version = env!("CARGO_PKG_VERSION").parse().map_err(|e: semver::Error| FleetError::Setup(e.to_string()))?;
        // The fleet's own database: fleet traffic never takes the event log's write lock.
        let dir = fleet_dir(db);
        std::fs::create_dir_all(&dir).map_err(|e| FleetError::Setup(format!("creating {}: {e}", dir.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let fleet_db = fleet_db(db);
        let store = FleetStore::open(&fleet_db)?;
        let moved = store.migrate_from(db)?;
        if moved > 0 {
            tracing::info!(rows = moved, from = %db.display(), to = %fleet_db.display(), "fleet tables moved out of the event log");
        }
        let dcfg = DeployConfig {
            gateway: gateway.clone(),
            host_version: host_version.clone(),
            max_bundle_bytes: fc.max_bundle_bytes,
            rule: RollbackRule { max_failures: fc.rollback_failures, within_ms: fc.rollback_window_ms },
        };
        // One clock: the fleet side measures retention, command windows and the rollback
        // window on the gateway's clock, the one its events are stamped with.
        let clock = {
            let c = gw.clock().clone();
            GatewayClock::new(move || c.now_ms())
        };
        let (deployer, interrupted) = Deployer::new(dcfg, trusted.clone(), store, clock.now_ms())?;
        let retention = Retention { max_pending: fc.outbox.max_pending, max_age_ms: (fc.outbox.max_age_hours > 0).then(|| fc.outbox.max_age_hours as i64 * 3_600_000) };
        let outbox = Outbox::open(db, &fleet_db, retention)?;
        let control = gw.plugin_control().ok_or_else(|| FleetError::Setup("the policy worker is not running".into()))?;
        let slot = HostSlot::new(cfg.clone(), control, gw.clock().clone(), db, &dir, cache_dir);
        let recovered = gw.log().recovered_from().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        let status = Status {
            site: site.clone(),
            gateway: gateway.clone(),
            online: true,
            host_version: host_version.clone(),
            plugins: slot.plugins().iter().map(PluginInfo::from).collect(),
            last_job: deployer.last_job().ok().flatten(),
            outbox: None,
            directory_version: Some(gw.directory_version().load(Ordering::Acquire)).filter(|v| *v > 0),
            event_log_recovered: recovered.clone(),
            at_ms: clock.now_ms(),
        };
        let mut lc = LinkConfig::new(fc.broker.clone(), &site, &gateway);
        lc.clock = clock.clone();
        // The link verifies inbound jobs and commands against the same keys, before its
        // queue, so junk cannot crowd out what an operator signed.
        lc.trusted = trusted;
        lc.max_bundle_bytes = fc.max_bundle_bytes;
        let (key, created) = device_key(db)?;
        if created {
            tracing::info!(public = %key.public_b64(), "device key created; enrol it with `gate fleet enroll`");
        }
        lc.device_key = Arc::new(key);
        lc.plugin_limits = PluginLimits { per_second: cfg.limits.publish_per_sec, burst: cfg.limits.publish_per_sec.saturating_mul(2).max(1), max_payload: cfg.limits.max_payload_bytes };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| FleetError::Setup(format!("starting the network runtime: {e}")))?;
        let (link, handle, mut inbound) = {
            let _in_rt = rt.enter();
            Link::new(lc, outbox, status)?
        };
        let (to_agent, agent_rx) = mpsc::channel::<AgentMsg>();
        let (done_tx, link_done) = mpsc::channel();
        let forward = to_agent.clone();
        // Inbound messages the agent has not finished yet. The forwarder waits while there
        // are AGENT_QUEUE of them, so a slow job (a deployment takes seconds) backs the
        // link's bounded queue up, and the link sheds the rest before anything is stored.
        let waiting = Arc::new(AtomicUsize::new(0));
        let (w_fwd, w_agent) = (waiting.clone(), waiting);
        std::thread::Builder::new()
            .name("gate-fleet-link".into())
            .spawn(move || {
                rt.block_on(async move {
                    tokio::spawn(async move {
                        while let Some(m) = inbound.recv().await {
                            while w_fwd.load(Ordering::Acquire) >= AGENT_QUEUE {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            w_fwd.fetch_add(1, Ordering::AcqRel);
                            if forward.send(AgentMsg::Inbound(Box::new(m))).is_err() {
                                break;
                            }
                        }
                    });
                    if let Err(e) = link.run().await {
                        tracing::error!(error = %e, "the MQTT link stopped");
                    }
                });
                let _ = done_tx.send(());
            })
            .map_err(|e| FleetError::Setup(format!("starting the link thread: {e}")))?;
        let (cmd_tx, commands) = mpsc::channel();
        let mut agent = Agent::new(&site, &gateway, host_version, deployer, handle.clone(), &interrupted, clock.clone());
        agent.set_directory_version(gw.directory_version());
        agent.set_event_log_recovered(recovered);
        // Deployments and rollbacks change what decides the doors: the agent writes them to
        // the audit trail itself (its appends are transactions, safe beside the gateway's).
        let mut audit = match crate::audit::AuditLog::open(&crate::audit::AuditLog::path_beside(db)) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::error!(error = %e, "the fleet agent cannot open the audit trail; deployments will not be audited");
                None
            }
        };
        let mut slot = slot;
        let mut exec = Commands { tx: cmd_tx, bell };
        handle.update_status(agent.status(&slot));
        std::thread::Builder::new()
            .name("gate-fleet-agent".into())
            .spawn(move || loop {
                let msg = match agent_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        agent.tick();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let res = match msg {
                    AgentMsg::Inbound(m) => {
                        let r = agent.handle(*m, &mut slot, &mut exec);
                        w_agent.fetch_sub(1, Ordering::AcqRel);
                        r.map(|ended| {
                            if let (Some(s), Some(a)) = (ended, audit.as_mut()) {
                                audit_job(a, clock.now_ms(), &s);
                            }
                        })
                    }
                    AgentMsg::PluginFailed(p) => agent.report_plugin_failure(&mut slot, &p).map(|rolled| {
                        if let Some(s) = rolled {
                            tracing::warn!(plugin = %p, job = %s.job_id, reason = s.reason.as_deref().unwrap_or(""), "plugin rolled back by itself");
                            if let Some(a) = audit.as_mut() {
                                audit_job(a, clock.now_ms(), &s);
                            }
                        }
                    }),
                };
                if let Err(e) = res {
                    tracing::error!(error = %e, "fleet agent could not record a job or command");
                }
            })
            .map_err(|e| FleetError::Setup(format!("starting the agent thread: {e}")))?;
        let prefixes = cfg.plugins.iter().filter_map(|(n, p)| p.prefix.clone().map(|x| (n.clone(), x))).collect();
        tracing::info!(site = %site, gateway = %gateway, broker = %format!("{}:{}", fc.broker.host, fc.broker.port), "fleet link started");
        let reports = match crate::report_publish::MonthlyReports::start(cfg.clone(), db, handle.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the monthly report thread; reports will not be published");
                None
            }
        };
        Ok(Fleet { handle, to_agent, commands, prefixes, db: db.to_path_buf(), link_done, reports })
    }

    /// The link's counters.
    pub fn handle(&self) -> &LinkHandle {
        &self.handle
    }

    /// Tells the outbox about new rows, the agent about plugin failures (it may roll
    /// back), and publishes integration plugins' messages under their prefix. Never blocks.
    pub fn after(&self, records: &[Timed]) {
        if records.is_empty() {
            return;
        }
        self.handle.events_appended();
        for (_, r) in records {
            match r {
                Record::Plugin { plugin, status: PluginStatus::Failed, .. } => {
                    let _ = self.to_agent.send(AgentMsg::PluginFailed(plugin.clone()));
                }
                Record::Publish { plugin, topic, payload } => {
                    let Some(prefix) = self.prefixes.get(plugin) else {
                        continue;
                    };
                    let rel = topic.strip_prefix(prefix.trim_end_matches('/')).map(|t| t.trim_start_matches('/')).unwrap_or(topic);
                    let bytes = payload.to_bytes();
                    if let Err(e) = self.handle.plugin_publish(prefix, rel, bytes) {
                        tracing::warn!(plugin = %plugin, topic = %topic, error = %e, "plugin message not published");
                    }
                }
                _ => {}
            }
        }
    }

    /// Publishes the last complete month's transparency report when one falls due (at start,
    /// then at each month's end on the gateway's clock). Never blocks: gathered elsewhere.
    pub fn monthly_report(&self, now_ms: i64) {
        if let Some(r) = &self.reports {
            r.tick(now_ms);
        }
    }

    /// Carries out the authorised commands waiting for the gateway loop.
    pub fn poll_commands(&self, gw: &mut Gateway) -> Result<Vec<Timed>, GatewayError> {
        let mut out = Vec::new();
        while let Ok(req) = self.commands.try_recv() {
            let now = gw.clock().now_ms();
            let outcome = execute(gw, now, &req)?;
            if let Ok((recs, _)) = &outcome {
                out.extend(recs.iter().cloned());
            }
            let _ = req.reply.send(outcome.map(|(_, done)| done));
        }
        self.after(&out);
        Ok(out)
    }

    /// Waits up to `timeout` for the broker to acknowledge every logged event, then
    /// publishes the offline status and disconnects.
    pub fn shutdown(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let last: i64 = rusqlite::Connection::open_with_flags(&self.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)))
            .unwrap_or(0);
        while self.handle.snapshot().cursor < last && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.handle.shutdown();
        // The offline status goes out on the way down; never wait past the caller's budget.
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(300));
        let _ = self.link_done.recv_timeout(left);
    }
}

/// Writes a job that changed the plugins (a deployment, an ordered or automatic rollback)
/// to the audit trail, naming the key that signed it or `host` for an automatic rollback.
/// Jobs refused or failed changed nothing and are on the job status topic already.
fn audit_job(audit: &mut crate::audit::AuditLog, now: i64, s: &gate_fleet::messages::JobStatus) {
    use crate::audit::Action;
    use gate_fleet::messages::JobState;
    let action = match (s.state, s.code.as_deref()) {
        (JobState::Succeeded, Some("rolled-back")) | (JobState::RolledBack, _) => Action::PluginRolledBack,
        (JobState::Succeeded, _) => Action::PluginDeployed,
        _ => return,
    };
    let actor = match (s.state, &s.signer) {
        (JobState::RolledBack, _) => "host".to_string(),
        (_, Some(k)) => format!("key:{k}"),
        (_, None) => "unknown".to_string(),
    };
    let target = format!("plugin:{}", s.plugin.as_deref().unwrap_or("?"));
    let detail = serde_json::json!({"job": s.job_id, "version": s.version.as_ref().map(|v| v.to_string()), "code": s.code, "reason": s.reason});
    if let Err(e) = audit.append(now, &actor, action, &target, detail) {
        tracing::error!(error = %e, job = %s.job_id, "the audit trail could not record a plugin change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> SiteConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        SiteConfig::load(&root.join("configs/demo-site.toml")).expect("demo site")
    }

    #[test]
    fn self_test_traces_name_holders_never_credentials() {
        let cfg = demo();
        let text = "{\"gate_trace\":1,\"site\":\"maple-court\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n\
            {\"at\":1,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\",\"number\":\"10012345\"}}\n\
            {\"at\":2,\"input\":{\"kind\":\"pin\",\"door\":\"north-gate\",\"pin\":\"246810\"}}\n\
            {\"at\":3,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\",\"number\":\"99999999\"}}\n\
            {\"at\":4,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\",\"number\":\"88888888\"}}\n\
            {\"at\":5,\"input\":{\"kind\":\"card\",\"door\":\"north-gate\",\"number\":\"99999999\"}}\n";
        let out = pseudonymise_trace(text, &cfg).unwrap();
        for raw in ["10012345", "246810", "99999999", "88888888"] {
            assert!(!out.contains(raw), "{raw} left in {out}");
        }
        let t = Trace::parse(&out, Path::new("t")).unwrap();
        assert_eq!(raw_credential(&t), None);
        let refs: Vec<String> = t.inputs.iter().map(|(_, i)| serde_json::to_value(i).unwrap()).map(|v| v["number"].as_str().or(v["pin"].as_str()).unwrap().to_string()).collect();
        // Holders by id; unknown cards stay distinct from each other and equal to themselves.
        assert_eq!(refs, ["@r-0001", "@r-0001", "@unknown-1", "@unknown-2", "@unknown-1"]);
        let raw = Trace::parse(text, Path::new("t")).unwrap();
        assert_eq!(raw_credential(&raw).as_deref(), Some("a raw card number at 1 ms"));
    }
}
