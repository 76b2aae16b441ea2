//! The operator's fleet commands: `gate fleet keygen|status|enroll|device-key|verify-events`,
//! `gate plugin sign|deploy|rollback`, `gate remote …` (signed commands) and `gate credential-ref`.
//! Thin wrappers over `gate_fleet::operator`, printing progress while a job runs.

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use gate_fleet::bundle::{Manifest, SelfTest, World};
use gate_fleet::commands::{CommandAction, CommandReply, DoorMode, ReplyKey};
use gate_fleet::inventory::Inventory;
use gate_fleet::keys::{OperatorKey, Permission};
use gate_fleet::link::{BrokerConfig, TlsFiles};
use gate_fleet::messages::{now_ms, JobState, JobStatus};
use gate_fleet::operator::{self, Operator, Target};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A failure with its exit code (2 bad input, 3 broker or runtime trouble).
pub struct Fail(pub u8, pub anyhow::Error);

fn bad<E: Into<anyhow::Error>>(e: E) -> Fail {
    Fail(2, e.into())
}

fn broken<E: Into<anyhow::Error>>(e: E) -> Fail {
    Fail(3, e.into())
}

/// `gate fleet …`
#[derive(Subcommand)]
pub enum FleetCmd {
    /// Generate an operator key (Ed25519); prints the `[[fleet.trusted_keys]]` entry for site configs.
    Keygen {
        /// Key id (names the operator in job status and the command log).
        #[arg(long)]
        id: String,
        /// Where to write the secret key file (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Permissions to put in the printed entry: deploy, door, credentials, pin, directory.
        #[arg(long, value_delimiter = ',', default_value = "deploy")]
        may: Vec<String>,
    },
    /// Which gateway runs which plugin version, online or not, and its last job; every
    /// enrolled gateway is listed, `unknown` when its status is missing or forged.
    Status {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// A site's transparency report for one month, combined from the signed reports its
    /// gateways publish: people with face data counted once across gateways (by keyed
    /// references), entries by credential, and a warning well before the filing threshold.
    /// Exits 1 when an enrolled gateway's report is missing or forged (the numbers are partial).
    Report {
        #[command(flatten)]
        broker: BrokerArgs,
        #[arg(long)]
        site: String,
        /// The month, YYYY-MM.
        #[arg(long)]
        period: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enrol a gateway's device key in the operator's inventory (what site-wide commands
    /// target and every gateway message is checked against).
    Enroll {
        /// The gateway, as `site/gateway`.
        #[arg(long)]
        gateway: String,
        /// Its device key, as `gate fleet device-key` prints it on the gateway.
        #[arg(long)]
        public: String,
        /// The operator's inventory file (created, mode 0600).
        #[arg(long, default_value = DEFAULT_INVENTORY)]
        inventory: PathBuf,
    },
    /// Make a site's credential reference key (mode 0600): give it to `gate credential-ref
    /// --ref-key` and to the site's gateways as `[fleet] ref_key`; never to the broker.
    RefKeygen {
        /// Where to write it (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// On a gateway: print the public half of its device key (made on first use), for enrolment.
    DeviceKey {
        /// The gateway's site configuration.
        #[arg(long)]
        config: PathBuf,
        /// The event log (default `<state_dir>/events.sqlite`); the key lives in `fleet/` beside it.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Say which events are genuine and which forged: from the broker (for --seconds) or
    /// from a capture written by `mosquitto_sub -v`.
    VerifyEvents {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Only this site's events (from the broker).
        #[arg(long)]
        site: Option<String>,
        /// Read `topic payload` lines from this file instead of subscribing.
        #[arg(long)]
        capture: Option<PathBuf>,
        /// How long to listen on the broker, seconds (1-3600).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// Where the operator's inventory is kept unless `--inventory` says otherwise.
pub const DEFAULT_INVENTORY: &str = "gate-inventory.json";

/// How the operator reaches the broker.
#[derive(Args, Clone)]
pub struct BrokerArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub broker_host: String,
    #[arg(long, default_value_t = 1883)]
    pub broker_port: u16,
    /// CA certificate (PEM) of the broker; enables TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// Broker password.
    #[arg(long)]
    pub password: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The operator's inventory of enrolled gateways (`gate fleet enroll`).
    #[arg(long, default_value = DEFAULT_INVENTORY)]
    pub inventory: PathBuf,
}

impl BrokerArgs {
    fn config(&self) -> BrokerConfig {
        BrokerConfig {
            host: self.broker_host.clone(),
            port: self.broker_port,
            tls: self.ca.clone().map(|ca| TlsFiles { ca, client_cert: self.client_cert.clone(), client_key: self.client_key.clone() }),
            username: self.username.clone(),
            password: self.username.as_ref().and(self.password.clone()),
            keep_alive_secs: 15,
        }
    }

    fn inventory(&self) -> Result<Inventory, Fail> {
        Inventory::load(&self.inventory).map_err(bad)
    }

    /// Connects and checks what gateways say against the inventory.
    async fn connect(&self) -> Result<Operator, Fail> {
        let inv = self.inventory()?;
        let mut op = Operator::connect(&self.config(), &client_id(), Duration::from_secs(self.timeout)).await.map_err(broken)?;
        op.set_inventory(inv);
        Ok(op)
    }
}

/// Prints the gateway messages that were not believed; true if there were any.
fn print_ignored(op: &mut Operator) -> bool {
    let ignored = op.take_ignored();
    for i in &ignored {
        println!("{}: {} message ignored: {}", i.topic, i.trust.label().to_uppercase(), i.trust.why());
    }
    !ignored.is_empty()
}

/// Where a job goes: `--gateway site/gateway` or `--site site`.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// One gateway, as `site/gateway`.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Every gateway enrolled in this site (`gate fleet enroll`), whether it answers or not.
    #[arg(long)]
    pub site: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> Result<Target, Fail> {
        match (&self.gateway, &self.site) {
            (Some(g), _) => {
                let (site, gateway) = g.split_once('/').ok_or_else(|| bad(anyhow!("--gateway {g:?}: expected site/gateway")))?;
                Ok(Target::Gateway { site: site.into(), gateway: gateway.into() })
            }
            (None, Some(s)) => Ok(Target::Site(s.clone())),
            (None, None) => Err(bad(anyhow!("give --gateway site/gateway or --site site"))),
        }
    }
}

/// `gate plugin sign`
#[derive(Args)]
pub struct SignArgs {
    /// Operator key file (from `gate fleet keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// The compiled component (.wasm).
    #[arg(long)]
    pub component: PathBuf,
    /// Plugin name, as the site configuration calls it.
    #[arg(long)]
    pub name: String,
    /// Contract world: policy-plugin or integration-plugin.
    #[arg(long, default_value = "policy-plugin")]
    pub world: String,
    /// Plugin version (semver).
    #[arg(long)]
    pub version: String,
    /// Deployment sequence; must grow with every bundle of this plugin (default: now, Unix ms).
    #[arg(long)]
    pub sequence: Option<u64>,
    /// Smallest host version that can run it (default: this host's).
    #[arg(long)]
    pub min_host_version: Option<String>,
    /// Take the plugin's configuration from `[plugins.<name>].config` of this site configuration.
    #[arg(long)]
    pub config_from: Option<PathBuf>,
    /// A configuration value, key=value (repeatable; overrides --config-from).
    #[arg(long = "set")]
    pub set: Vec<String>,
    /// A trace with expected outputs the gateway replays before the swap (repeatable).
    #[arg(long = "self-test")]
    pub self_tests: Vec<PathBuf>,
    /// Allow going to a lower version than the one running (a signed downgrade).
    #[arg(long)]
    pub rollback: bool,
    /// Where to write the bundle.
    #[arg(long)]
    pub out: PathBuf,
}

/// `gate plugin deploy`
#[derive(Args)]
pub struct DeployArgs {
    /// Signed bundle from `gate plugin sign`.
    #[arg(long)]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// `gate plugin rollback`
#[derive(Args)]
pub struct RollbackArgs {
    /// Operator key file with `deploy` permission.
    #[arg(long)]
    pub key: PathBuf,
    /// Plugin to restore to the version its gateways kept.
    #[arg(long)]
    pub plugin: String,
    /// Sequence of the order (default: now, Unix ms); must be newer than any deployment.
    #[arg(long)]
    pub sequence: Option<u64>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

fn permission(s: &str) -> Result<Permission, Fail> {
    serde_json::from_value(serde_json::Value::String(s.trim().to_string())).map_err(|_| bad(anyhow!("--may {s:?}: use deploy, door, credentials, pin, directory, guard or intercom")))
}

fn network() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(broken)
}

fn client_id() -> String {
    format!("gate-operator-{}-{}", std::process::id(), now_ms())
}

/// `gate fleet …`
pub fn fleet(cmd: FleetCmd) -> Result<u8, Fail> {
    match cmd {
        FleetCmd::Keygen { id, out, may } => {
            let may = may.iter().map(|m| permission(m)).collect::<Result<Vec<_>, _>>()?;
            let key = OperatorKey::generate(&id).map_err(bad)?;
            key.save(&out).map_err(bad)?;
            let e = key.trusted_entry(&may);
            let may: Vec<String> = e.may.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect();
            eprintln!("gate: secret key written to {} (keep it private)", out.display());
            println!("[[fleet.trusted_keys]]\nid = {:?}\npublic = {:?}\nmay = [{}]", e.id, e.public, may.join(", "));
            Ok(0)
        }
        FleetCmd::Status { broker, site } => network()?.block_on(async {
            let mut op = broker.connect().await?;
            if op.inventory().is_empty() {
                eprintln!("gate: the inventory {} has no gateway: every status is unverified (enrol them with `gate fleet enroll`)", broker.inventory.display());
            }
            let rows = op.fleet_status(site.as_deref(), Duration::from_millis(700)).await.map_err(broken)?;
            op.disconnect().await;
            if rows.is_empty() {
                eprintln!("gate: no gateway has reported a status{}", site.map(|s| format!(" for site {s}")).unwrap_or_default());
            }
            print!("{}", operator::format_status_table(&rows));
            Ok(0)
        }),
        FleetCmd::Report { broker, site, period, json } => {
            gate::report::month_bounds(&period, 0).map_err(bad)?;
            network()?.block_on(async {
                let mut op = broker.connect().await?;
                let rows = op.site_reports(&site, &period, Duration::from_millis(700)).await.map_err(broken)?;
                op.disconnect().await;
                let mut reports = Vec::new();
                let mut missing = Vec::new();
                for r in rows {
                    let parsed = r.body.as_deref().map(serde_json::from_str::<gate::report::Report>);
                    match (r.trust.is_genuine(), parsed) {
                        (true, Some(Ok(rep))) if rep.site == r.site && rep.gateway == r.gateway && rep.period == period => reports.push(rep),
                        (true, Some(Ok(_))) => missing.push((r.gateway, "the report names another gateway or month than its topic".into())),
                        (true, Some(Err(e))) => missing.push((r.gateway, format!("the report is not gate-report/1 JSON: {e}"))),
                        (_, _) => missing.push((r.gateway, format!("{}: {}", r.trust.label(), r.trust.why()))),
                    }
                }
                let s = gate::report::combine(&site, &period, &reports, missing);
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).map_err(broken)?);
                } else {
                    print!("{}", format_site_report(&s));
                }
                Ok(u8::from(!s.missing.is_empty() || s.gateways.is_empty()))
            })
        }
        FleetCmd::Enroll { gateway, public, inventory } => {
            let (site, gw) = gateway.split_once('/').ok_or_else(|| bad(anyhow!("--gateway {gateway:?}: expected site/gateway")))?;
            let mut inv = Inventory::load(&inventory).map_err(bad)?;
            let before = inv.enroll(site, gw, &public).map_err(|e| bad(anyhow!("--public: {e}")))?;
            inv.save(&inventory).map_err(broken)?;
            match before {
                Some(old) if old != public.trim() => println!("{site}/{gw}: key replaced in {} (was {old})", inventory.display()),
                Some(_) => println!("{site}/{gw}: already enrolled in {}", inventory.display()),
                None => println!("{site}/{gw}: enrolled in {}", inventory.display()),
            }
            Ok(0)
        }
        FleetCmd::DeviceKey { config, db } => {
            let cfg = gate::config::SiteConfig::load(&config).map_err(bad)?;
            let db = db.or_else(|| cfg.site.state_dir.as_ref().map(|d| d.join("events.sqlite"))).ok_or_else(|| bad(anyhow!("{}: set `site.state_dir` or pass --db", config.display())))?;
            let (key, created) = gate::fleet::device_key(&db).map_err(broken)?;
            if created {
                eprintln!("gate: device key created in {}", gate::fleet::fleet_dir(&db).display());
            }
            println!("gate fleet enroll --gateway {}/{} --public {}", cfg.site.id, cfg.site.gateway, key.public_b64());
            Ok(0)
        }
        FleetCmd::RefKeygen { out } => {
            let key = gate::credentials::RefKey::generate().map_err(|e| broken(anyhow!(e)))?;
            key.save(&out).map_err(|e| bad(anyhow!(e)))?;
            println!("reference key written to {} (mode 0600); set `ref_key` in [fleet] of the site's gateways", out.display());
            Ok(0)
        }
        FleetCmd::VerifyEvents { broker, site, capture, seconds } => verify_events(&broker, site.as_deref(), capture.as_deref(), seconds),
    }
}

/// `gate fleet verify-events`: one line per event, genuine / forged / unverified, and a
/// summary; exit 1 when anything was not genuine.
fn verify_events(broker: &BrokerArgs, site: Option<&str>, capture: Option<&std::path::Path>, seconds: u64) -> Result<u8, Fail> {
    let inv = broker.inventory()?;
    let messages: Vec<(String, Vec<u8>)> = match capture {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())).map_err(bad)?;
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let (topic, payload) = line.split_once(' ').ok_or_else(|| bad(anyhow!("{}:{}: expected `topic payload` (mosquitto_sub -v)", path.display(), n + 1)))?;
                out.push((topic.to_string(), payload.as_bytes().to_vec()));
            }
            out
        }
        None => {
            if !(1..=3600).contains(&seconds) {
                return Err(bad(anyhow!("--seconds {seconds}: use 1-3600")));
            }
            network()?.block_on(async {
                let mut op = broker.connect().await?;
                let got = op.listen_events(site, Duration::from_secs(seconds)).await.map_err(broken)?;
                op.disconnect().await;
                Ok::<_, Fail>(got)
            })?
        }
    };
    let (mut genuine, mut other) = (0u64, 0u64);
    for (topic, payload) in &messages {
        if gate_fleet::signed::classify(topic).is_none_or(|(_, _, k)| k != gate_fleet::signed::Kind::Event) {
            continue;
        }
        let (trust, body) = inv.open(topic, payload);
        let id = body.as_deref().and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok()).and_then(|v| v.get("id").and_then(|i| i.as_str()).map(String::from)).unwrap_or_else(|| "?".into());
        if trust.is_genuine() {
            genuine += 1;
            println!("{topic} {id}: genuine");
        } else {
            other += 1;
            println!("{topic} {id}: {}: {}", trust.label().to_uppercase(), trust.why());
        }
    }
    println!("{genuine} genuine, {other} not genuine");
    Ok(u8::from(other > 0))
}

/// Splits a trace file into its trace part and its expected-output part, with every
/// credential value replaced by a reference to its holder (bundles travel over MQTT).
fn self_test(path: &PathBuf, site: Option<&gate::config::SiteConfig>) -> Result<SelfTest, Fail> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading self-test {}", path.display())).map_err(bad)?;
    gate::trace::Trace::parse(&text, path).map_err(bad)?;
    let site = site.ok_or_else(|| bad(anyhow!("--self-test needs --config-from: card numbers and PINs in the trace are replaced by references to their holders from that site's directory")))?;
    let text = gate::fleet::pseudonymise_trace(&text, site).map_err(|e| bad(anyhow!("self-test {}: {e}", path.display())))?;
    let (mut trace, mut expected) = (String::new(), String::new());
    for line in text.lines() {
        let is_expect = serde_json::from_str::<serde_json::Value>(line).ok().is_some_and(|v| v.get("expect").is_some());
        let to = if is_expect { &mut expected } else { &mut trace };
        to.push_str(line);
        to.push('\n');
    }
    if expected.is_empty() {
        return Err(bad(anyhow!("self-test {}: the trace has no expected outputs (add them with `gate replay --format jsonl`)", path.display())));
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "self-test".into());
    Ok(SelfTest { name, trace, expected })
}

/// `gate plugin sign`
pub fn sign(a: SignArgs) -> Result<u8, Fail> {
    let world = match a.world.as_str() {
        "policy-plugin" | "policy" => World::PolicyPlugin,
        "integration-plugin" | "integration" => World::IntegrationPlugin,
        w => return Err(bad(anyhow!("--world {w:?}: use policy-plugin or integration-plugin"))),
    };
    let mut config = BTreeMap::new();
    let mut site_cfg = None;
    if let Some(site) = &a.config_from {
        let cfg = gate::config::SiteConfig::load(site).map_err(bad)?;
        let pc = cfg.plugins.get(&a.name).ok_or_else(|| bad(anyhow!("{}: no [plugins.{}]", site.display(), a.name)))?;
        config = pc.settings.clone();
        site_cfg = Some(cfg);
    }
    for kv in &a.set {
        let (k, v) = kv.split_once('=').ok_or_else(|| bad(anyhow!("--set {kv:?}: expected key=value")))?;
        config.insert(k.trim().to_string(), v.to_string());
    }
    let manifest = Manifest {
        name: a.name.clone(),
        world,
        version: a.version.parse().map_err(|e| bad(anyhow!("--version {:?}: {e}", a.version)))?,
        sha256: String::new(),
        min_host_version: a.min_host_version.as_deref().unwrap_or(env!("CARGO_PKG_VERSION")).parse().map_err(|e| bad(anyhow!("--min-host-version: {e}")))?,
        config,
        self_tests: a.self_tests.iter().map(|p| self_test(p, site_cfg.as_ref())).collect::<Result<_, _>>()?,
        sequence: a.sequence.unwrap_or(now_ms() as u64),
        rollback: a.rollback,
        created_at_ms: now_ms(),
    };
    let b = operator::sign_bundle_file(&a.key, &a.component, manifest).map_err(bad)?;
    std::fs::write(&a.out, b.to_bytes()).with_context(|| format!("writing {}", a.out.display())).map_err(broken)?;
    let m = b.unverified_manifest().map_err(broken)?;
    println!(
        "{}: {} {} ({}) signed by {}, sequence {}, sha256 {}, {} self-test(s)",
        a.out.display(),
        m.name,
        m.version,
        m.world.wit_name(),
        b.signature.as_ref().map(|s| s.key_id.as_str()).unwrap_or("?"),
        m.sequence,
        m.sha256,
        m.self_tests.len()
    );
    Ok(0)
}

/// An empty site is bad input (exit 2); anything else is the broker's trouble (exit 3).
fn target_error(e: operator::OperatorError) -> Fail {
    match e {
        operator::OperatorError::EmptySite(_) | operator::OperatorError::Topic(_) => bad(e),
        e => broken(e),
    }
}

/// The site report as the operator reads it.
fn format_site_report(s: &gate::report::SiteReport) -> String {
    let mut o = format!("site {} · {} · {} gateway(s) reported\n", s.site, s.period, s.gateways.len());
    for (gw, why) in &s.missing {
        o.push_str(&format!("  {gw}: NO REPORT COMBINED ({why}); the numbers below are partial\n"));
    }
    let bound = if s.face_subjects_distinct { "" } else { " (upper bound: a gateway sent no subject references; set [fleet] ref_key)" };
    o.push_str(&format!("people with face data: {}{bound} ({} templates on {} gateway(s))\n", s.face_subjects, s.templates_held, s.gateways.len()));
    o.push_str(&format!("filing threshold: {} / {}{}\n", s.face_subjects, s.filing_threshold, if s.filing_warning { " · WARNING: near the threshold, prepare to file" } else { "" }));
    let list = |m: &std::collections::BTreeMap<String, u64>| if m.is_empty() { "none".to_string() } else { m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ") };
    o.push_str(&format!("entries by credential: {}\n", list(&s.entries_by_credential)));
    o.push_str(&format!("denied by credential: {}\n", list(&s.denied_by_credential)));
    o.push_str(&format!("consents given {}, withdrawn {}; templates erased: {}\n", s.consents_given, s.consents_withdrawn, list(&s.erased)));
    o.push_str(&format!("plugin failures {}, fallback decisions {}\n", s.plugin_failures, s.fallback_decisions));
    if !s.audit_broken.is_empty() {
        o.push_str(&format!("WARNING audit trail does not verify on: {}\n", s.audit_broken.join(", ")));
    }
    o
}

fn report(results: &[(String, Option<JobStatus>)]) -> u8 {
    let mut code = 0;
    for (gw, s) in results {
        match s {
            Some(s) if s.state == JobState::Succeeded => println!("{gw}: succeeded{}", s.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()),
            Some(s) => {
                code = 1;
                println!("{gw}: {}{}{}", s.state.as_str(), s.code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(), s.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default());
            }
            None => {
                code = 1;
                println!("{gw}: no answer (the job stays queued on the broker for when it comes online)");
            }
        }
    }
    code
}

/// `gate plugin deploy`
pub fn deploy(a: DeployArgs) -> Result<u8, Fail> {
    let bundle = operator::read_bundle_file(&a.bundle).map_err(bad)?;
    let target = a.target.target()?;
    network()?.block_on(async {
        let mut op = a.broker.connect().await?;
        let res = op.deploy(&target, &bundle, Duration::from_secs(a.broker.timeout), &mut |gw, s| eprintln!("  {}", operator::format_progress(gw, s))).await.map_err(target_error)?;
        let forged = print_ignored(&mut op);
        op.disconnect().await;
        Ok(report(&res).max(u8::from(forged)))
    })
}

/// `gate plugin rollback`
pub fn rollback(a: RollbackArgs) -> Result<u8, Fail> {
    let key = OperatorKey::load(&a.key).map_err(bad)?;
    let target = a.target.target()?;
    network()?.block_on(async {
        let mut op = a.broker.connect().await?;
        let seq = a.sequence.unwrap_or(now_ms() as u64);
        let res = op.rollback(&key, &target, &a.plugin, seq, Duration::from_secs(a.broker.timeout), &mut |gw, s| eprintln!("  {}", operator::format_progress(gw, s))).await.map_err(target_error)?;
        let forged = print_ignored(&mut op);
        op.disconnect().await;
        Ok(report(&res).max(u8::from(forged)))
    })
}

/// `gate remote …`: signed commands to gateways, answered with who did what.
#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Release a door once.
    OpenDoor {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        door: String,
    },
    /// Lock a door, hold it open, or return it to normal; every mode ends by itself.
    DoorMode {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        door: String,
        /// normal, locked or held-open.
        #[arg(long)]
        mode: String,
        /// How long the mode lasts: e.g. 90s, 30m, 2h, 1d (at most 7 days).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
    },
    /// Revoke a credential (by its reference from `gate credential-ref`) or every credential of a holder.
    Revoke {
        #[command(flatten)]
        to: CommandTarget,
        #[command(flatten)]
        what: CredentialArgs,
    },
    /// Undo a revocation (by the same reference or --subject).
    Reinstate {
        #[command(flatten)]
        to: CommandTarget,
        #[command(flatten)]
        what: CredentialArgs,
    },
    /// Give a unit door a new random PIN; it comes back sealed to this command and is printed here only.
    RotateUnitPin {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        door: String,
    },
}

/// Who signs a command and which gateways get it.
#[derive(Args)]
pub struct CommandTarget {
    /// Operator key file with the permission the command needs (door, credentials or pin).
    #[arg(long)]
    pub key: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Which credential a revocation (or its undoing) is about, and why.
#[derive(Args)]
pub struct CredentialArgs {
    /// A credential reference such as card:3f0c… (never the card number itself), or
    /// pass:<id> for a visitor pass.
    #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
    pub reference: Option<String>,
    /// A holder's pseudonymous id: all of their credentials.
    #[arg(long)]
    pub subject: Option<String>,
    /// Why (kept in the event log).
    #[arg(long)]
    pub reason: String,
}

impl CredentialArgs {
    /// `--reference` (checked) or `--subject` as a credential reference, with the reason.
    fn reference(self) -> Result<(String, String), Fail> {
        let r = match (self.reference, self.subject) {
            (Some(r), _) if gate::credentials::is_reference(&r) => r,
            (Some(r), _) if r.starts_with("pass:") => return Err(bad(anyhow!("--reference {r:?}: a visitor pass id must be pseudonymous, like pass:p-20261205-0042"))),
            (Some(r), _) => return Err(bad(anyhow!("--reference {r:?} is not a credential reference: make one with `gate credential-ref` (or pass:<id> for a visitor pass)"))),
            (None, Some(s)) => format!("subject:{s}"),
            (None, None) => return Err(bad(anyhow!("give --reference or --subject"))),
        };
        Ok((r, self.reason))
    }
}

/// Parses `90s`, `30m`, `2h`, `1d` (or plain milliseconds) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration such as 90s, 30m, 2h or 1d"))?;
    let per = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(per).filter(|ms| *ms > 0).ok_or_else(|| format!("{s:?} is not a usable duration"))
}

/// `gate guard …`: the guard station, over the same signed commands (a key with `guard`).
#[derive(Subcommand)]
pub enum GuardCmd {
    /// Release a door once as a named guard, with the reason (both kept in the event log
    /// and the audit trail), e.g. for an elderly resident waiting at the gate.
    Open {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        door: String,
        /// The guard's pseudonymous id (a subject with role guard).
        #[arg(long)]
        guard: String,
        #[arg(long)]
        reason: String,
    },
    /// Register a walk-in visitor (a pseudonymous id, never a name or ID number) of a
    /// resident: prints the pass the gateway signed, and with --code-key the code to show now.
    Visitor {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        guard: String,
        /// Pseudonymous visitor id, e.g. v-20261205-07.
        #[arg(long)]
        visitor: String,
        /// The resident visited (pseudonymous id).
        #[arg(long)]
        host: String,
        /// Doors the pass opens (repeat, or comma-separated).
        #[arg(long = "door", value_delimiter = ',', required = true)]
        doors: Vec<String>,
        /// How long it is valid from now: e.g. 30m, 2h (1 min to 24 h).
        #[arg(long = "for", default_value = "2h")]
        duration: String,
        /// Entries it grants (1..=10).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        uses: u32,
        /// The site's code key (`[qr] code_key`): also print what to show the visitor now.
        #[arg(long)]
        code_key: Option<PathBuf>,
    },
    /// What needs the guard: active alarms (held open, forced, fire) and denied attempts.
    Attention {
        #[command(flatten)]
        to: CommandTarget,
        #[arg(long)]
        guard: String,
        /// Denied attempts of the last this many minutes (1..=120).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=120))]
        minutes: u32,
    },
}

/// `gate guard …`
pub fn guard(cmd: GuardCmd) -> Result<u8, Fail> {
    if let GuardCmd::Visitor { to, guard, visitor, host, doors, duration, uses, code_key } = cmd {
        let for_ms = parse_duration_ms(&duration).map_err(|e| bad(anyhow!("--for {e}")))?;
        let code_key = code_key.map(|p| gate::visitor::CodeKey::load(&p).map_err(|e| bad(anyhow!("--code-key: {e}")))).transpose()?;
        return send_then(to, CommandAction::GuardVisitor { guard, visitor, host, doors, for_ms, uses }, None, &|detail| {
            let pass = detail.strip_prefix("pass ").unwrap_or(detail);
            if let Some(k) = &code_key {
                match gate::visitor::displayed(k, pass, now_ms() as i64) {
                    Ok(shown) => println!("show the visitor now: {shown}"),
                    Err(e) => println!("the pass could not be shown: {e}"),
                }
            }
        });
    }
    let (to, action) = match cmd {
        GuardCmd::Open { to, door, guard, reason } => (to, CommandAction::GuardOpen { door, guard, reason }),
        GuardCmd::Attention { to, guard, minutes } => (to, CommandAction::GuardAttention { guard, minutes }),
        GuardCmd::Visitor { .. } => unreachable!("handled above"),
    };
    send(to, action, None)
}

/// `gate remote …`
pub fn remote(cmd: RemoteCmd) -> Result<u8, Fail> {
    let mut reply_key = None;
    let (to, action) = match cmd {
        RemoteCmd::OpenDoor { to, door } => (to, CommandAction::OpenDoorOnce { door }),
        RemoteCmd::DoorMode { to, door, mode, duration } => {
            let mode: DoorMode = serde_json::from_value(serde_json::Value::String(mode.clone())).map_err(|_| bad(anyhow!("--mode {mode:?}: use normal, locked or held-open")))?;
            let for_ms = parse_duration_ms(&duration).map_err(|e| bad(anyhow!("--for {e}")))?;
            (to, CommandAction::SetDoorMode { door, mode, for_ms })
        }
        RemoteCmd::Revoke { to, what } => {
            let (credential_ref, reason) = what.reference()?;
            (to, CommandAction::RevokeCredential { credential_ref, reason })
        }
        RemoteCmd::Reinstate { to, what } => {
            let (credential_ref, reason) = what.reference()?;
            (to, CommandAction::ReinstateCredential { credential_ref, reason })
        }
        RemoteCmd::RotateUnitPin { to, door } => {
            let k = ReplyKey::generate();
            let action = CommandAction::RotateUnitPin { door, reply_key: k.public_b64() };
            reply_key = Some(k);
            (to, action)
        }
    };
    send(to, action, reply_key)
}

/// Signs `action`, sends it to the target gateways and prints each answer.
fn send(to: CommandTarget, action: CommandAction, reply_key: Option<ReplyKey>) -> Result<u8, Fail> {
    send_then(to, action, reply_key, &|_| {})
}

/// As [`send`], then calls `done` with the detail of each successful answer.
fn send_then(to: CommandTarget, action: CommandAction, reply_key: Option<ReplyKey>, done: &dyn Fn(&str)) -> Result<u8, Fail> {
    let key = OperatorKey::load(&to.key).map_err(bad)?;
    let target = to.target.target()?;
    let timeout = Duration::from_secs(to.broker.timeout.min(300));
    network()?.block_on(async {
        let mut op = to.broker.connect().await?;
        // A site is the gateways enrolled in it: one whose status was erased or forged
        // still gets the command, and is reported as "no answer" if it does not reply.
        let gateways = match &target {
            Target::Gateway { site, gateway } => vec![(site.clone(), gateway.clone())],
            Target::Site(site) => op.inventory().gateways(Some(site)),
        };
        if gateways.is_empty() {
            return Err(bad(anyhow!("no gateway of that site is enrolled in {} (`gate fleet enroll`)", to.broker.inventory.display())));
        }
        let results = op.command_many(&key, &gateways, action, timeout).await.map_err(broken)?;
        let mut code = 0;
        for (site, gw, r) in results {
            match r {
                Ok(r) => {
                    code = code.max(print_reply(&site, &gw, &r, reply_key.as_ref()));
                    if r.ok {
                        done(&r.detail);
                    }
                }
                Err(e) => {
                    code = 1;
                    println!("{site}/{gw}: no answer ({e})");
                }
            }
        }
        if print_ignored(&mut op) {
            code = code.max(1);
        }
        op.disconnect().await;
        Ok(code)
    })
}

fn print_reply(site: &str, gw: &str, r: &CommandReply, reply_key: Option<&ReplyKey>) -> u8 {
    let by = r.sender.as_deref().map(|s| format!(" (as {s})")).unwrap_or_default();
    if !r.ok {
        println!("{site}/{gw}: refused ({}): {}{by}", r.code, r.detail);
        return 1;
    }
    match serde_json::from_str::<serde_json::Value>(&r.detail) {
        // A guard's view comes back as JSON: shown as lines a person reads at a glance.
        Ok(v) if v.get("alarms").is_some() && v.get("denied").is_some() => {
            println!("{site}/{gw}: needs the guard{by}:");
            let alarms = v["alarms"].as_array().cloned().unwrap_or_default();
            if alarms.is_empty() {
                println!("  no active alarm");
            }
            for a in alarms {
                println!("  ALARM {} at {} since {}", a["alarm"].as_str().unwrap_or("?"), a["door"].as_str().unwrap_or("?"), a["since"].as_str().unwrap_or("?"));
            }
            for c in v["calls_waiting"].as_array().cloned().unwrap_or_default() {
                println!(
                    "  CALL {} at {} for {} rings the guard until {}",
                    c["call"].as_str().unwrap_or("?"),
                    c["door"].as_str().unwrap_or("?"),
                    c["resident"].as_str().unwrap_or("?"),
                    c["until"].as_str().unwrap_or("?")
                );
            }
            let denied = v["denied"].as_array().cloned().unwrap_or_default();
            println!("  {} denied attempt(s) in the last {} min", denied.len(), v["minutes"]);
            for d in denied {
                println!("  {} {} {} denied: {}", d["at"].as_str().unwrap_or("?"), d["door"].as_str().unwrap_or("?"), d["credential"].as_str().unwrap_or("?"), d["reason"].as_str().unwrap_or(""));
            }
        }
        _ => println!("{site}/{gw}: done: {}{by}", r.detail),
    }
    if let (Some(sealed), Some(k)) = (&r.sealed, reply_key) {
        match k.open(sealed) {
            Ok(secret) => println!("{site}/{gw}: new unit PIN: {secret}"),
            Err(e) => {
                println!("{site}/{gw}: the new PIN could not be opened: {e}");
                return 1;
            }
        }
    }
    0
}

/// `gate credential-ref`: the reference an operator revokes a credential by, keyed with
/// the site's reference key (nobody without it can test a guess against a reference).
#[derive(Args)]
pub struct CredentialRefArgs {
    /// The site's reference key file (`gate fleet ref-keygen`; the gateway's `[fleet] ref_key`).
    #[arg(long)]
    pub ref_key: PathBuf,
    #[arg(long, group = "what")]
    pub card: Option<String>,
    #[arg(long, group = "what")]
    pub nfc: Option<String>,
    #[arg(long, group = "what")]
    pub plate: Option<String>,
    /// A PIN's stored hash (`pin_sha256` in the subject directory).
    #[arg(long, group = "what")]
    pub pin_sha256: Option<String>,
}

pub fn credential_ref(a: CredentialRefArgs) -> Result<u8, Fail> {
    use gate::event::CredentialKind as K;
    let (kind, value) = match (a.card, a.nfc, a.plate, a.pin_sha256) {
        (Some(v), ..) => (K::Card, v),
        (_, Some(v), ..) => (K::Nfc, v),
        (_, _, Some(v), _) => (K::Plate, v),
        (.., Some(v)) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => (K::Pin, v),
        (.., Some(v)) => return Err(bad(anyhow!("--pin-sha256 {v:?}: expected 64 hex digits (`gate pin-hash`)"))),
        _ => return Err(bad(anyhow!("give one of --card, --nfc, --plate or --pin-sha256"))),
    };
    let key = gate::credentials::RefKey::load(&a.ref_key).map_err(|e| bad(anyhow!(e)))?;
    println!("{}", gate::credentials::keyed_credential_ref(&key, kind, &value));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_duration_ms;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("0s").is_err() && parse_duration_ms("soon").is_err() && parse_duration_ms("3w").is_err());
    }
}
