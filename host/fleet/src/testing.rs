//! A real Mosquitto broker for tests and benchmarks (feature `testing`): started on free
//! loopback ports with a generated configuration, a plain listener and a TLS listener
//! whose CA, server and client certificates are generated at run time (rcgen), killed on
//! drop, and able to be killed and restarted mid-test on the same ports.

use crate::link::{BrokerConfig, TlsFiles};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or deliberately stopped) mosquitto process.
pub struct Broker {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// TLS listener; requires a client certificate signed by [`Broker::ca`].
    pub tls_port: u16,
    /// Plain listener that requires [`TEST_USER`] / [`TEST_PASSWORD`].
    pub password_port: u16,
    /// TLS listener as shipped in `host/fleet/broker/`: a client certificate per
    /// identity, its CN the user name, and the shipped `acl` file ([`Broker::identity`]).
    pub acl_port: u16,
    /// CA that signed the broker's certificate (and the client certificate).
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The broker's own `max_packet_size` (the shipped one), or none: then only the
    /// limit each MQTT 5 client states at connect protects it.
    max_packet: Option<usize>,
    child: Option<Child>,
}

/// User name accepted on the password listener.
pub const TEST_USER: &str = "gateway";
/// Password of [`TEST_USER`].
pub const TEST_PASSWORD: &str = "correct horse battery staple";

const SETUP_HINT: &str = "mosquitto is not installed: run `cargo xtask setup` (it installs the Debian packages mosquitto and mosquitto-clients)";

fn find_mosquitto() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("mosquitto");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).is_file() {
            return Ok(p.into());
        }
    }
    Err(SETUP_HINT.into())
}

/// The kernel's range for ephemeral ports (outgoing connections and `bind(0)`).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A loopback port that nothing else will take while a broker needs it. Ports are drawn
/// below the ephemeral range, so no outgoing connection of a gateway or CLI running beside
/// the tests is ever given one (with `bind(0)` that happened: a killed broker could not
/// listen again, or a new one could not start). Each port is handed out once per process;
/// the random start keeps separate test processes apart.
fn free_port() -> Result<u16, String> {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let (ephemeral_low, _) = ephemeral_range();
    let span = u32::from(ephemeral_low).saturating_sub(LOW);
    if span < 1_000 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| format!("finding a free port: {e}"))?;
        return l.local_addr().map(|a| a.port()).map_err(|e| e.to_string());
    }
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() % u64::from(span)) as u32
    });
    for _ in 0..span {
        let port = (LOW + (start + HANDED_OUT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(format!("no free loopback port between {LOW} and {ephemeral_low}"))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The ACL shipped in `host/fleet/broker/acl`; the `acl` listener loads it as is.
pub const SHIPPED_ACL: &str = include_str!("../broker/acl");

fn ca_params() -> Result<rcgen::CertificateParams, String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "gate test CA");
    Ok(ca_params)
}

fn generate_certs(dir: &Path) -> Result<(), String> {
    use rcgen::{CertificateParams, CertifiedIssuer, DnType, KeyPair, SanType};
    let e = |e: rcgen::Error| format!("generating test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key).map_err(e)?;

    let server_key = KeyPair::generate().map_err(e)?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
    sp.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)));
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    let server = sp.signed_by(&server_key, &ca).map_err(e)?;

    let client_key = KeyPair::generate().map_err(e)?;
    let mut cp = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    cp.distinguished_name.push(DnType::CommonName, "gate-test-gateway");
    let client = cp.signed_by(&client_key, &ca).map_err(e)?;

    write(&dir.join("ca.pem"), &ca.pem())?;
    write(&dir.join("server.pem"), &server.pem())?;
    write(&dir.join("server.key"), &server_key.serialize_pem())?;
    write(&dir.join("client.pem"), &client.pem())?;
    write(&dir.join("client.key"), &client_key.serialize_pem())
}

fn current_user() -> Option<String> {
    let out = Command::new("id").arg("-un").output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

impl Broker {
    /// Generates certificates and a configuration and starts mosquitto. The TLS listener
    /// requires a client certificate; a third listener requires a user name and password.
    pub fn start() -> Result<Broker, String> {
        Self::start_with(Some(crate::link::MAX_PACKET_BYTES))
    }

    /// Like [`Broker::start`] but with no `max_packet_size` of the broker's own, as a
    /// broker set up without the shipped configuration: it takes and retains any message.
    pub fn start_without_packet_limit() -> Result<Broker, String> {
        Self::start_with(None)
    }

    fn start_with(max_packet: Option<usize>) -> Result<Broker, String> {
        let bin = find_mosquitto()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        generate_certs(dir.path())?;
        let d = dir.path();
        let passwd = d.join("passwd");
        write(&passwd, "")?;
        let ok = Command::new(bin.with_file_name("mosquitto_passwd"))
            .args(["-b"])
            .arg(&passwd)
            .args([TEST_USER, TEST_PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .or_else(|_| Command::new("mosquitto_passwd").arg("-b").arg(&passwd).args([TEST_USER, TEST_PASSWORD]).status())
            .map_err(|e| format!("running mosquitto_passwd: {e}; {SETUP_HINT}"))?;
        if !ok.success() {
            return Err(format!("mosquitto_passwd failed with {ok}"));
        }
        write(&d.join("acl"), SHIPPED_ACL)?;
        let mut b = Broker {
            ca: d.join("ca.pem"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            max_packet,
            dir,
            bin,
            port: 0,
            tls_port: 0,
            password_port: 0,
            acl_port: 0,
            child: None,
        };
        // A port found free can still be taken before mosquitto binds it (by a process
        // outside this one): then start over on other ports rather than fail the test.
        let mut last = String::new();
        for _ in 0..5 {
            (b.port, b.tls_port, b.password_port, b.acl_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
            b.write_config()?;
            match b.launch(Duration::from_secs(3)) {
                Ok(()) => return Ok(b),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn write_config(&self) -> Result<(), String> {
        let d = self.dir.path();
        let user = current_user().map(|u| format!("user {u}\n")).unwrap_or_default();
        let conf = format!(
            "{user}per_listener_settings true\npersistence false\nlog_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\n\
             max_queued_messages 0\nmax_inflight_messages 0\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n\
             listener {password_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n\
             {max_packet}\
             listener {acl_port} 127.0.0.1\nallow_anonymous false\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\nuse_identity_as_username true\nacl_file {acl}\n",
            acl_port = self.acl_port,
            acl = d.join("acl").display(),
            max_packet = self.max_packet.map(|m| format!("max_packet_size {m}\n")).unwrap_or_default(),
            port = self.port,
            tls_port = self.tls_port,
            password_port = self.password_port,
            log = d.join("mosquitto.log").display(),
            ca = d.join("ca.pem").display(),
            cert = d.join("server.pem").display(),
            key = d.join("server.key").display(),
            passwd = d.join("passwd").display(),
        );
        write(&d.join("mosquitto.conf"), &conf)
    }

    /// Starts (again) on the same ports; waits until both listeners accept connections.
    pub fn restart(&mut self) -> Result<(), String> {
        self.launch(Duration::from_secs(10))
    }

    /// Starts mosquitto on the configured ports, retrying while a port is still held
    /// (a killed broker's sockets can linger briefly) until `patience` has passed.
    fn launch(&mut self, patience: Duration) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + patience;
        loop {
            let mut child = Command::new(&self.bin)
                .arg("-c")
                .arg(self.dir.path().join("mosquitto.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // Usually the port is still in TIME_WAIT after a kill: try again.
                    if Instant::now() > deadline {
                        return Err(format!("mosquitto exited with {status}; log: {}", self.log()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                let up = |p| TcpStream::connect((Ipv4Addr::LOCALHOST, p)).is_ok();
                if up(self.port) && up(self.tls_port) && up(self.password_port) && up(self.acl_port) {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("mosquitto did not start listening; log: {}", self.log()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the broker (SIGKILL, like a crash or a cut cable on the broker's side).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Connection settings for the plain listener.
    pub fn plain(&self) -> BrokerConfig {
        BrokerConfig { host: "127.0.0.1".into(), port: self.port, tls: None, username: None, password: None, keep_alive_secs: 5 }
    }

    /// Connection settings for the TLS listener, verifying the generated CA, with the
    /// generated client certificate.
    pub fn tls(&self) -> BrokerConfig {
        BrokerConfig {
            host: "127.0.0.1".into(),
            port: self.tls_port,
            tls: Some(TlsFiles { ca: self.ca.clone(), client_cert: Some(self.client_cert.clone()), client_key: Some(self.client_key.clone()) }),
            username: None,
            password: None,
            keep_alive_secs: 5,
        }
    }

    /// Connection settings for the password listener (plain TCP, user name and password).
    pub fn password(&self) -> BrokerConfig {
        BrokerConfig { host: "127.0.0.1".into(), port: self.password_port, tls: None, username: Some(TEST_USER.into()), password: Some(TEST_PASSWORD.into()), keep_alive_secs: 5 }
    }

    /// Connection settings for the `acl` listener with a client certificate whose CN is
    /// `cn` (issued now by the test CA): the gateway id for a gateway, or a user the
    /// shipped ACL names (`gate-operator`, `gate-consumer`).
    pub fn identity(&self, cn: &str) -> Result<BrokerConfig, String> {
        use rcgen::{CertificateParams, CertifiedIssuer, DnType, KeyPair};
        let e = |e: rcgen::Error| format!("issuing a test certificate: {e}");
        let d = self.dir.path();
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(d.join("ca.key")).map_err(|e| e.to_string())?).map_err(e)?;
        let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key).map_err(e)?;
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca).map_err(e)?;
        let name: String = cn.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let (cert_path, key_path) = (d.join(format!("id-{name}.pem")), d.join(format!("id-{name}.key")));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok(BrokerConfig {
            host: "127.0.0.1".into(),
            port: self.acl_port,
            tls: Some(TlsFiles { ca: self.ca.clone(), client_cert: Some(cert_path), client_key: Some(key_path) }),
            username: None,
            password: None,
            keep_alive_secs: 5,
        })
    }

    /// A scratch directory that lives as long as the broker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A whole gateway's fleet side on a real broker, for tests and benchmarks: the link,
/// the agent with a [`MemorySlot`](crate::deploy::MemorySlot), an event log in SQLite
/// (WAL), one trusted operator key with every permission, and a command executor that
/// records what it was asked to do.
pub struct TestGateway {
    pub site: String,
    pub gateway: String,
    pub handle: crate::link::LinkHandle,
    pub slot: std::sync::Arc<std::sync::Mutex<crate::deploy::MemorySlot>>,
    pub agent: std::sync::Arc<std::sync::Mutex<crate::agent::Agent>>,
    pub executed: std::sync::Arc<std::sync::Mutex<Vec<crate::commands::AuthorisedCommand>>>,
    pub operator_key: crate::keys::OperatorKey,
    /// Base64 of the gateway's device key, as `gate fleet enroll` takes it.
    pub device_public: String,
    pub db: PathBuf,
    /// The fleet's own database (jobs, command log, outbox cursor).
    pub fleet_db: PathBuf,
    writer: rusqlite::Connection,
    next_seq: i64,
    link_task: tokio::task::JoinHandle<Result<(), crate::link::LinkError>>,
    agent_task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<crate::commands::AuthorisedCommand>>>);

impl crate::agent::CommandExecutor for Recorder {
    fn execute(&mut self, cmd: &crate::commands::AuthorisedCommand) -> Result<crate::commands::Executed, String> {
        self.0.lock().map_err(|e| e.to_string())?.push(cmd.clone());
        Ok(format!("{:?} executed", cmd.command.action).into())
    }
}

/// Options for [`TestGateway::start`].
#[derive(Debug, Clone)]
pub struct TestGatewayOptions {
    pub backoff: crate::link::Backoff,
    pub window: usize,
    pub retention: crate::outbox::Retention,
    pub rule: crate::deploy::RollbackRule,
    pub max_bundle_bytes: usize,
}

impl Default for TestGatewayOptions {
    fn default() -> Self {
        Self {
            backoff: crate::link::Backoff { initial: Duration::from_millis(500), max: Duration::from_millis(500) },
            window: 256,
            retention: crate::outbox::Retention::default(),
            rule: crate::deploy::RollbackRule { max_failures: 3, within_ms: 60_000 },
            max_bundle_bytes: crate::bundle::DEFAULT_MAX_BUNDLE_BYTES,
        }
    }
}

impl TestGateway {
    /// Starts the gateway's link and agent tasks (inside a tokio runtime) against `broker`.
    pub fn start(broker: BrokerConfig, site: &str, gateway: &str, opts: TestGatewayOptions) -> Result<TestGateway, String> {
        use crate::deploy::{DeployConfig, Deployer, MemorySlot};
        use crate::keys::{OperatorKey, Permission, TrustedKeys};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let db = dir.path().join("gate.sqlite");
        let writer = rusqlite::Connection::open(&db).map_err(|e| e.to_string())?;
        writer.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").map_err(|e| e.to_string())?;
        crate::outbox::create_event_log(&writer).map_err(|e| e.to_string())?;
        let key = OperatorKey::generate("test-operator").map_err(|e| e.to_string())?;
        let trusted = TrustedKeys::from_config(&[key.trusted_entry(&[Permission::Deploy, Permission::Door, Permission::Credentials, Permission::Pin])]).map_err(|e| e.to_string())?;
        let host_version: semver::Version = "0.1.0".parse().map_err(|e: semver::Error| e.to_string())?;
        let fleet_db = dir.path().join("fleet.sqlite");
        let store = crate::store::FleetStore::open(&fleet_db).map_err(|e| e.to_string())?;
        let cfg = DeployConfig { gateway: gateway.into(), host_version: host_version.clone(), max_bundle_bytes: opts.max_bundle_bytes, rule: opts.rule };
        let (deployer, interrupted) = Deployer::new(cfg, trusted.clone(), store, crate::messages::now_ms()).map_err(|e| e.to_string())?;
        let outbox = crate::outbox::Outbox::open(&db, &fleet_db, opts.retention).map_err(|e| e.to_string())?;
        let mut lc = crate::link::LinkConfig::new(broker, site, gateway);
        lc.backoff = opts.backoff;
        lc.window = opts.window;
        lc.trusted = trusted;
        lc.max_bundle_bytes = opts.max_bundle_bytes;
        let device_public = lc.device_key.public_b64();
        let slot = Arc::new(Mutex::new(MemorySlot::default()));
        let status = crate::messages::Status {
            site: site.into(),
            gateway: gateway.into(),
            online: true,
            host_version: host_version.clone(),
            plugins: vec![],
            last_job: None,
            outbox: None,
            directory_version: None,
            event_log_recovered: None,
            at_ms: crate::messages::now_ms(),
        };
        let (link, handle, mut inbound) = crate::link::Link::new(lc, outbox, status).map_err(|e| e.to_string())?;
        let agent = Arc::new(Mutex::new(crate::agent::Agent::new(site, gateway, host_version, deployer, handle.clone(), &interrupted, crate::messages::GatewayClock::wall())));
        let executed = Arc::new(Mutex::new(Vec::new()));
        let link_task = tokio::spawn(link.run());
        let (a, s, e) = (agent.clone(), slot.clone(), executed.clone());
        let agent_task = tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                let (a, s, mut exec) = (a.clone(), s.clone(), Recorder(e.clone()));
                // Jobs touch SQLite and the slot: run them off the async threads.
                let _ = tokio::task::spawn_blocking(move || {
                    let (Ok(mut a), Ok(mut s)) = (a.lock(), s.lock()) else {
                        return;
                    };
                    if let Err(err) = a.handle(msg, &mut *s, &mut exec) {
                        tracing::error!(error = %err, "agent failed");
                    }
                })
                .await;
            }
        });
        let next_seq = writer.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)).map_err(|e| e.to_string())?;
        Ok(TestGateway {
            site: site.into(),
            gateway: gateway.into(),
            handle,
            slot,
            agent,
            executed,
            operator_key: key,
            device_public,
            db,
            fleet_db,
            writer,
            next_seq,
            link_task,
            agent_task,
            _dir: dir,
        })
    }

    /// Appends `n` decision events to the event log (one transaction) and tells the link.
    /// Returns the seqs written.
    pub fn append_events(&mut self, n: usize) -> Result<std::ops::RangeInclusive<i64>, String> {
        let first = self.next_seq + 1;
        let tx = self.writer.transaction().map_err(|e| e.to_string())?;
        {
            let mut st = tx.prepare_cached("INSERT INTO events (seq, id, at_ms, kind, door, body) VALUES (?1, ?2, ?3, 'decision', 'lobby', ?4)").map_err(|e| e.to_string())?;
            for _ in 0..n {
                self.next_seq += 1;
                let s = self.next_seq;
                let body = format!("{{\"decision\":\"grant\",\"credential\":\"card\",\"subject\":\"s-{}\",\"n\":{s}}}", s % 97);
                st.execute(rusqlite::params![s, format!("{}-ev-{s}", self.gateway), crate::messages::now_ms(), body]).map_err(|e| e.to_string())?;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.handle.events_appended();
        Ok(first..=self.next_seq)
    }

    /// Enrols this gateway's device key in an operator's inventory.
    pub fn enroll(&self, inventory: &mut crate::inventory::Inventory) {
        if let Err(e) = inventory.enroll(&self.site, &self.gateway, &self.device_public) {
            tracing::error!(error = %e, "enrolling a test gateway");
        }
    }

    /// An inventory holding just this gateway.
    pub fn inventory(&self) -> crate::inventory::Inventory {
        let mut inv = crate::inventory::Inventory::default();
        self.enroll(&mut inv);
        inv
    }

    /// Publishes the agent's current status (as the host does after start-up).
    pub fn announce(&self) {
        if let (Ok(a), Ok(s)) = (self.agent.lock(), self.slot.lock()) {
            self.handle.update_status(a.status(&*s));
        }
    }

    /// The host saw `plugin` fail.
    pub fn report_failure(&self, plugin: &str) -> Option<crate::messages::JobStatus> {
        let (Ok(mut a), Ok(mut s)) = (self.agent.lock(), self.slot.lock()) else {
            return None;
        };
        a.report_plugin_failure(&mut *s, plugin).ok().flatten()
    }

    /// Kills the gateway's MQTT connection without a DISCONNECT (as a crash or power cut would).
    pub fn crash(&self) {
        self.link_task.abort();
        self.agent_task.abort();
    }
}
