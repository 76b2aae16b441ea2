//! `gate`: the gateway runtime and its tools.
//!
//! Exit codes: 0 success; 1 a replay differed from the trace's expected
//! output; 2 bad input (configuration, trace, plugin, arguments); 3 the
//! gateway failed while running.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use gate::config::SiteConfig;
use gate::trace::Trace;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod audit_cmd;
mod config_cmd;
mod face_cmd;
mod fleet_cmd;
mod report_cmd;

#[derive(Parser)]
#[command(name = "gate", version, about = "The gate gateway: owns the door, runs each site's sandboxed policy plugins, replays recorded hardware traces.")]
struct Cli {
    /// Log filter (also GATE_LOG), e.g. "warn" or "gate=debug".
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log (and `gate run` output) as readable text, or as JSON lines for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway as a service: it serves the GPIO lines and camera of the config's
    /// [hardware]; --trace serves a recorded trace (the demo), --simulate a pin-level trace
    /// on simulated pins, in real time. Stops cleanly on SIGTERM / SIGINT.
    Run {
        /// Site configuration (configs/*.toml, /etc/gate/site.toml).
        #[arg(long)]
        config: PathBuf,
        /// Trace whose inputs stand in for the hardware.
        #[arg(long, conflicts_with = "simulate")]
        trace: Option<PathBuf>,
        /// Pin-level trace driving the [hardware] wiring on simulated pins.
        #[arg(long)]
        simulate: Option<PathBuf>,
        /// Playback speed of a trace, 0.01 to 10000 (default 20 for --trace, 1 for --simulate).
        #[arg(long)]
        speed: Option<f64>,
        /// Event log database (default: <state_dir>/events.sqlite).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Keep serving (door timers, fleet jobs and commands) after the trace ends, until stopped.
        #[arg(long)]
        hold: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Also write what happens as a replayable trace (card numbers and PINs pseudonymised).
        #[arg(long)]
        record: Option<PathBuf>,
        /// With --record: where to write its subject directory (default: <record>.subjects.toml).
        #[arg(long, requires = "record")]
        subjects_out: Option<PathBuf>,
        /// With --record: keep raw card numbers (PINs are always pseudonymised).
        #[arg(long, requires = "record")]
        keep_raw_cards: bool,
    },
    /// Configuration tools: `gate config check FILE` before a gateway uses a file.
    Config {
        #[command(subcommand)]
        cmd: config_cmd::ConfigCmd,
    },
    /// Replay a trace in virtual time; with expected outputs, diff and fail on any difference.
    Replay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        /// Output format: readable text, or trace `expect` lines to paste into a trace.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Subject directory to use instead of the config's (e.g. the one `gate record` wrote).
        #[arg(long)]
        subjects: Option<PathBuf>,
    },
    /// Record what the gate's hardware does as a trace: `gate run --record` on the hardware,
    /// or, with --simulate, a pin-level trace on simulated pins in virtual time.
    Record {
        #[arg(long)]
        config: PathBuf,
        /// The trace to write.
        #[arg(long)]
        out: PathBuf,
        /// Where to write the recording's pseudonymised subject directory (default: <out>.subjects.toml).
        #[arg(long)]
        subjects_out: Option<PathBuf>,
        /// Keep raw card numbers in the recording (PINs are always pseudonymised).
        #[arg(long)]
        keep_raw_cards: bool,
        /// Stand in for live hardware: simulated pins driven by this pin-level trace.
        #[arg(long)]
        simulate: Option<PathBuf>,
        /// Stop a live recording after this many seconds (default: at Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Enrol a resident's face: records the separate consent first, then a template from
    /// several checked photos (stored encrypted; never printed).
    Enroll(face_cmd::EnrollArgs),
    /// Face consent: withdrawing erases the template at once.
    Consent {
        #[command(subcommand)]
        cmd: face_cmd::ConsentCmd,
    },
    /// The audit trail of face data and access rights: verify its hash chain, show it.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// The month's transparency report for residents and inspectors (HTML in Chinese or English, or JSON).
    Report(report_cmd::ReportArgs),
    /// What the gateway holds about one pseudonymous subject (a resident's access request).
    Subject {
        #[command(subcommand)]
        cmd: SubjectCmd,
    },
    /// Face matcher tools: device keys and re-keying the template store.
    Face {
        #[command(subcommand)]
        cmd: face_cmd::FaceCmd,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        cmd: PluginCmd,
    },
    /// Print the stored form of a PIN for a subject directory (PINs are never stored in clear).
    PinHash {
        /// Site id the hash is bound to.
        #[arg(long)]
        site: String,
        /// The PIN; read from standard input when omitted.
        pin: Option<String>,
    },
    /// Fleet operations: operator keys, which gateway runs what.
    Fleet {
        #[command(subcommand)]
        cmd: fleet_cmd::FleetCmd,
    },
    /// The guard station over MQTT: open a door as a named guard, see alarms and denied attempts.
    Guard {
        #[command(subcommand)]
        cmd: fleet_cmd::GuardCmd,
    },
    /// Signed commands to gateways over MQTT: open a door, set its mode, revoke a credential, rotate a unit PIN.
    Remote {
        #[command(subcommand)]
        cmd: fleet_cmd::RemoteCmd,
    },
    /// Print the reference a credential is revoked by (no card number or PIN travels in commands).
    CredentialRef(fleet_cmd::CredentialRefArgs),
    /// Visitor QR passes (what the property's platform issues).
    Qr {
        #[command(subcommand)]
        cmd: QrCmd,
    },
    /// The subject directory in the state dir (large sites): import a TOML directory file.
    Directory {
        #[command(subcommand)]
        cmd: DirectoryCmd,
    },
    /// Measure decision latency, instance cost and replay throughput with the real plugins.
    Bench {
        #[arg(long, required_unless_present = "directory")]
        config: Option<PathBuf>,
        /// Instead: time importing and loading a generated subject directory of N subjects (repeatable).
        #[arg(long, value_name = "N")]
        directory: Vec<usize>,
        /// Decisions to time.
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
        /// Also time camera frame -> decision with this photo of an enrolled subject ([face] must be set up).
        #[arg(long)]
        face_frame: Option<PathBuf>,
        /// Run only these benchmarks (comma-separated): plugin, languages, gateway, replay, face,
        /// swaps, service, cold-start, memory. Default: all.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Where `languages` finds the example policy built in each language (`<lang>/example-policy.wasm`).
        #[arg(long, default_value = "target/plugins/examples")]
        examples: PathBuf,
    },
}

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Replace the directory in `<state_dir>/directory.sqlite` by a TOML subject file (checked
    /// first; all or nothing). The gateway loads it at start when `site.subjects` is not set.
    Import {
        #[arg(long)]
        config: PathBuf,
        /// The subject file ([[subject]] entries, as `site.subjects` takes).
        file: PathBuf,
    },
    /// Print the stored directory's version, subject count and source digest.
    Show {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Validate a component against the contract and print its world, imports, exports and size.
    Check {
        file: PathBuf,
        /// Apply this site's limits (component size, compile budget, memory cap, deadline) instead of the defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the plugin contract (WIT), or write its files into --out DIR, for other
    /// languages' binding generators (componentize-py, componentize-js).
    Wit {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make a ready plugin project: example policy, unit test, sample trace with expectations, README.
    New {
        /// The plugin's name (lower-case letters, digits, `-`); the project folder unless --dir.
        name: String,
        #[arg(long, value_enum, default_value_t = gate::scaffold::Lang::Rust)]
        lang: gate::scaffold::Lang,
        #[arg(long, value_enum, default_value_t = gate::scaffold::Kind::Policy)]
        kind: gate::scaffold::Kind,
        /// Folder to create (must not exist or be empty); default ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The gate plugin SDK (`plugins/sdk` of a gate checkout) to depend on by path (Rust).
        /// Default: the checkout this binary was built in, else a git URL to replace.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run one plugin against one trace on a minimal site (doors from the trace, settings and
    /// subjects from a sidecar), print decisions and diff the trace's expectations.
    /// Exit 0 match, 1 differ, 2 bad input.
    Test {
        plugin: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        /// The sidecar: settings, doors and subjects (default: <trace>.site.toml beside the trace, if any).
        #[arg(long)]
        site: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Run again whenever the component, the trace or the sidecar changes (an author's
        /// loop: rebuild in another terminal, read the diff here); Ctrl-C ends it.
        #[arg(long)]
        watch: bool,
    },
    /// Sign a component into a deployment bundle with an operator key.
    Sign(fleet_cmd::SignArgs),
    /// Deploy a signed bundle to a gateway or a whole site over MQTT, showing progress.
    Deploy(fleet_cmd::DeployArgs),
    /// Order gateways to restore the plugin version they kept (signed, over MQTT).
    Rollback(fleet_cmd::RollbackArgs),
}

#[derive(Subcommand)]
enum SubjectCmd {
    /// Consents, whether a template is held (never the template), credentials by kind (never
    /// their values), recent access events and audit entries of one subject.
    Report(report_cmd::SubjectReportArgs),
}

#[derive(Subcommand)]
enum QrCmd {
    /// Sign a visitor pass with an issuer's Ed25519 secret key (hex): pseudonymous ids, doors,
    /// a validity window and a number of uses. Prints the signed pass (keep it; show it with `qr show`).
    Sign {
        #[arg(long)]
        key_hex: String,
        /// The pass's own pseudonymous id (uses are counted and revocations made by it), e.g. p-20261205-0042.
        #[arg(long)]
        pass: String,
        /// Pseudonymous visitor id, e.g. v-20261205-07 (never a name, phone or ID number).
        #[arg(long)]
        visitor: String,
        /// Pseudonymous id of the inviting resident (a subject of the site).
        #[arg(long)]
        host: String,
        /// A door the pass opens (repeat for several, 1..=16).
        #[arg(long = "door", required = true)]
        doors: Vec<String>,
        /// Start of validity, RFC 3339 (inclusive).
        #[arg(long)]
        not_before: String,
        /// End of validity, RFC 3339 (exclusive; at most 366 days after --not-before).
        #[arg(long, alias = "valid-until")]
        not_after: String,
        /// Entries it grants, 1..=1000.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Print what the visitor's phone shows now (or --at TIME): the signed pass with its current
    /// dynamic code. It changes every 15 s; a property platform serves it to the phone.
    Show {
        /// The site's code key file (`gate qr code-keygen`; the gateways' `qr.code_key`).
        #[arg(long)]
        code_key: PathBuf,
        /// The time to show the code for, RFC 3339 (default: now).
        #[arg(long)]
        at: Option<String>,
        /// The signed pass from `gate qr sign`.
        pass: String,
    },
    /// Make a site's code key for visitor passes' dynamic codes (mode 0600): set it as the
    /// gateways' `qr.code_key` and give the property platform a copy. Never shown to visitors.
    CodeKeygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (hex) of an issuer's secret key, for `qr.issuer_keys`.
    PublicKey {
        #[arg(long)]
        key_hex: String,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Jsonl,
}

/// An error with the exit code it should produce.
struct Failure(u8, anyhow::Error);

fn input<E: Into<anyhow::Error>>(e: E) -> Failure {
    Failure(2, e.into())
}

fn runtime<E: Into<anyhow::Error>>(e: E) -> Failure {
    Failure(3, e.into())
}

fn main() -> ExitCode {
    // Before anything is created: state files 0600, folders 0700 (files.rs).
    gate::files::private_by_default();
    let cli = Cli::parse();
    let filter = cli.log.clone().or_else(|| std::env::var("GATE_LOG").ok()).unwrap_or_else(|| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).init(),
        // Colour only on a terminal: a piped or stored log (journald) carries no escape sequences.
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let format = match cli.log_format {
        LogFormat::Text => gate::service::console::Format::Text,
        LogFormat::Json => gate::service::console::Format::Json,
    };
    match dispatch(cli.cmd, format) {
        Ok(code) => ExitCode::from(code),
        Err(Failure(code, e)) => {
            eprintln!("gate: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn load_config(path: &Path) -> Result<SiteConfig, Failure> {
    let cfg = SiteConfig::load(path).map_err(input)?;
    cfg.check_component_sizes(path).map_err(input)?;
    Ok(cfg)
}

fn cache_dir(cfg: &SiteConfig) -> Option<PathBuf> {
    cfg.site.state_dir.as_ref().map(|d| d.join("plugin-cache"))
}

/// The event log of a run: --db, or `<state_dir>/events.sqlite`; its folder is created.
fn event_db(config: &Path, cfg: &SiteConfig, db: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let db = match db.or_else(|| cfg.site.state_dir.as_ref().map(|d| d.join("events.sqlite"))) {
        Some(p) => p,
        None => return Err(input(anyhow::anyhow!("{}: set `site.state_dir` or pass --db for the event log", config.display()))),
    };
    if let Some(parent) = db.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display())).map_err(runtime)?;
    }
    Ok(db)
}

/// Longest and shortest trace playback speeds `gate run` takes.
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 0.01..=10_000.0;

/// A pin-level trace naming a line `[hardware]` does not wire is bad input: refused before
/// anything is served, naming the trace file and line and the lines that are wired.
fn unwired_line(cfg: &SiteConfig, t: &Trace, file: &Path) -> Result<(), Failure> {
    if !t.has_pins() {
        return Ok(());
    }
    let Some(hw) = cfg.hardware.as_ref() else {
        return Err(input(anyhow::anyhow!("{}: the trace has pin-level `line` inputs but {} has no [hardware] section to wire them to", file.display(), cfg.path.display())));
    };
    // Any other problem opening the simulated pins is the site's, reported when serving.
    let Err(e) = gate::service::source::PinTrace::open(hw, t) else { return Ok(()) };
    let Some(line) = e.unwired_line() else { return Ok(()) };
    let msg = e.to_string();
    // The first input naming the line is the edge refused (edges keep the trace's order).
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let at = text.lines().position(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["input"]["line"].as_str() == Some(line)));
    Err(input(match at {
        Some(i) => anyhow::anyhow!("{}:{}: {msg}", file.display(), i + 1),
        None => anyhow::anyhow!("{}: {msg}", file.display()),
    }))
}

fn serve(cfg: SiteConfig, opts: gate::serve::RunOptions) -> Result<u8, Failure> {
    let mut stdout = std::io::stdout();
    let format = opts.format;
    let s = gate::serve::run(cfg, opts, &mut stdout).map_err(runtime)?;
    if format == gate::service::console::Format::Text {
        println!(
            "\ngate: done. {} granted, {} denied, {} other decisions, {} alarms raised, {} plugin incidents, {} messages published; {} records in the event log.",
            s.granted, s.denied, s.other_decisions, s.alarms, s.plugin_failures, s.published, s.logged
        );
    }
    if s.restart {
        // SIGHUP with a valid configuration: the same binary again, on the same state.
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let exe = std::env::current_exe().map_err(runtime)?;
        let err = std::process::Command::new(exe).args(args.by_ref().skip(1)).exec();
        return Err(runtime(anyhow::anyhow!("restarting on the new configuration: {err}")));
    }
    Ok(0)
}

/// Replays `trace` on `cfg`, prints the records and diffs the trace's expectations: the exit
/// code of `gate replay` and `gate plugin test` (0 match or nothing expected, 1 differ).
fn replay_and_report(cfg: SiteConfig, trace: &Trace, cache: Option<PathBuf>, format: Format) -> Result<u8, Failure> {
    let offset = gate::clock::parse_offset(&cfg.site.utc_offset).map_err(|m| input(anyhow::anyhow!(m)))?;
    let result = gate::replay::run(cfg, trace, cache).map_err(|e| runtime(anyhow::anyhow!(e)))?;
    for p in &result.problems {
        eprintln!("gate: warning: {p} (its doors were served by the fallback policy)");
    }
    let clock = gate::clock::Clock::new(trace.start_ms, offset);
    match format {
        Format::Jsonl => print!("{}", gate::replay::to_expect_lines(&result.records)),
        Format::Text => {
            for (at, r) in &result.records {
                println!("{}  {r}", gate::replay::local_hms(&clock, trace.start_ms + *at as i64));
            }
        }
    }
    if trace.expected.is_empty() {
        return Ok(0);
    }
    match gate::replay::diff(&trace.expected, &result.records) {
        None => {
            eprintln!("gate: replay matches the {} expected outputs", trace.expected.len());
            Ok(0)
        }
        Some(d) => {
            eprintln!("gate: replay differs from the trace's expected outputs:\n{d}");
            Ok(1)
        }
    }
}

/// `gate plugin …`: the author's tools (wit, new, test, check) and the operator's (sign, deploy, rollback).
fn plugin(cmd: PluginCmd) -> Result<u8, Failure> {
    use gate::scaffold::{self, ScaffoldError};
    let scaffold_err = |e: ScaffoldError| match e {
        ScaffoldError::Input(_) => input(e),
        ScaffoldError::Write { .. } => runtime(e),
    };
    match cmd {
        PluginCmd::Wit { out: None } => {
            for (_, text) in scaffold::CONTRACT_FILES {
                print!("{text}");
            }
            Ok(0)
        }
        PluginCmd::Wit { out: Some(dir) } => {
            for f in scaffold::write_wit(&dir).map_err(scaffold_err)? {
                println!("gate: wrote {}", f.display());
            }
            Ok(0)
        }
        PluginCmd::New { name, lang, kind, dir, sdk } => {
            let exe = std::env::current_exe().ok();
            let sdk = scaffold::find_sdk(sdk.as_deref(), exe.as_deref()).map_err(scaffold_err)?;
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            scaffold::new_project(&dir, &name, lang, kind, &sdk).map_err(scaffold_err)?;
            println!("gate: made {} ({name}, gate:plugin@{})", dir.display(), gate::plugin::CONTRACT_VERSION);
            match lang {
                scaffold::Lang::Rust => {
                    if let scaffold::SdkSource::Git(url) = &sdk {
                        println!("gate: the SDK dependency points at {url}: replace it in Cargo.toml, or run again with --sdk PATH/plugins/sdk");
                    }
                    let wasm = format!("target/wasm32-wasip2/release/{}.wasm", name.replace('-', "_"));
                    println!("next:\n  cd {}\n  cargo test\n  cargo build --release --target wasm32-wasip2\n  gate plugin test {wasm} --trace tests/sample.jsonl", dir.display());
                }
                scaffold::Lang::Python => println!(
                    "next (Python 3.11+, componentize-py {}):\n  cd {}\n  componentize-py -d wit -w policy-plugin bindings .\n  python -m unittest test_app\n  componentize-py -d wit -w policy-plugin componentize app -o {name}.wasm\n  gate plugin test {name}.wasm --trace tests/sample.jsonl",
                    scaffold::COMPONENTIZE_PY_VERSION,
                    dir.display()
                ),
                scaffold::Lang::Js => println!(
                    "next (Node.js {}, componentize-js {} from npm):\n  cd {}\n  npm ci\n  npm test\n  npm run build\n  gate plugin test {name}.wasm --trace tests/sample.jsonl",
                    scaffold::NODE_VERSIONS,
                    scaffold::COMPONENTIZE_JS_VERSION,
                    dir.display()
                ),
            }
            Ok(0)
        }
        PluginCmd::Test { plugin, trace, site, format, watch } => {
            // The check and the replay share one compile (a 12-18 MB Python or JavaScript
            // component takes 10-15 s); the cache lives as long as this command.
            let fresh_cache = || tempfile::Builder::new().prefix("gate-plugin-test-").tempdir().map_err(|e| runtime(anyhow::anyhow!("a cache folder for the compiled component: {e}")));
            if !watch {
                return plugin_test(&plugin, &trace, site.as_deref(), format, fresh_cache()?.path());
            }
            let sidecar = gate::harness::sidecar_for(&trace, site.as_deref());
            let files: Vec<&Path> = [Some(plugin.as_path()), Some(trace.as_path()), sidecar.as_deref()].into_iter().flatten().collect();
            // Ctrl-C ends the loop between runs, so the cache folder is removed.
            let ctl = gate::service::Control::new(gate::service::Bell::new());
            gate::service::systemd::handle_signals(ctl.clone()).map_err(|e| runtime(anyhow::anyhow!("installing the signal handler: {e}")))?;
            let mut cache = fresh_cache()?;
            let mut seen = gate::harness::stamps(&files);
            loop {
                let t = std::time::Instant::now();
                let outcome = match plugin_test(&plugin, &trace, site.as_deref(), format, cache.path()) {
                    Ok(code) => format!("exit {code}"),
                    Err(Failure(code, e)) => format!("{e:#} (exit {code})"),
                };
                eprintln!("gate: {outcome} in {:.1} s; watching {} for changes (Ctrl-C ends)", t.elapsed().as_secs_f64(), files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
                let Some(now) = gate::harness::wait_for_change(&files, &seen, &|| ctl.stopping()) else { return Ok(0) };
                if now[0] != seen[0] {
                    // A new component: its predecessor's compiled form goes with the old folder.
                    cache = fresh_cache()?;
                }
                seen = now;
            }
        }
        PluginCmd::Sign(a) => fleet_cmd::sign(a).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        PluginCmd::Deploy(a) => fleet_cmd::deploy(a).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        PluginCmd::Rollback(a) => fleet_cmd::rollback(a).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        PluginCmd::Check { file, config } => plugin_check(file, config),
    }
}

/// `gate plugin test`: checks the component under the sidecar's limits, then replays the trace
/// on the minimal site built around it and diffs the expectations.
fn plugin_test(plugin: &Path, trace: &Path, site: Option<&Path>, format: Format, cache: &Path) -> Result<u8, Failure> {
    let t = Trace::load(trace).map_err(input)?;
    let sidecar = gate::harness::sidecar_for(trace, site);
    // The sidecar's [limits] apply to the check too (a Python component is over 16 MiB).
    let site_as_policy = gate::harness::minimal_site(plugin, gate::config::World::Policy, &t, trace, sidecar.as_deref()).map_err(input)?;
    // Checked on the replay's own engine (fuel), so the replay finds it compiled in `cache`.
    let rt = gate::plugin::Runtime::new(gate::plugin::ExecMode::Deterministic, Some(cache.to_path_buf())).map_err(runtime)?;
    let report = gate::plugin::check::check(&rt, plugin, &site_as_policy.limits).map_err(input)?;
    drop(rt);
    let cfg = match report.world {
        gate::config::World::Policy => site_as_policy,
        world => gate::harness::minimal_site(plugin, world, &t, trace, sidecar.as_deref()).map_err(input)?,
    };
    replay_and_report(cfg, &t, Some(cache.to_path_buf()), format)
}

/// `gate plugin check`: what a component is, against the default or a site's limits.
fn plugin_check(file: PathBuf, config: Option<PathBuf>) -> Result<u8, Failure> {
    let limits = match config {
        Some(c) => gate::config::SiteConfig::load(&c).map_err(input)?.limits,
        None => gate::config::Limits::default(),
    };
    let rt = gate::plugin::Runtime::new(gate::plugin::ExecMode::Live, None).map_err(runtime)?;
    let r = gate::plugin::check::check(&rt, &file, &limits).map_err(input)?;
    println!("{}: ok", file.display());
    println!(
        "  world:   gate:plugin/{}@{}",
        match r.world {
            gate::config::World::Policy => "policy-plugin",
            gate::config::World::Integration => "integration-plugin",
        },
        gate::plugin::CONTRACT_VERSION
    );
    println!("  size:    {} bytes", r.size);
    println!("  sha256:  {}", r.sha256);
    println!("  exports: {}", r.exports.join(", "));
    println!("  imports: {}", r.imports.join(", "));
    Ok(0)
}

fn dispatch(cmd: Cmd, format: gate::service::console::Format) -> Result<u8, Failure> {
    match cmd {
        Cmd::Run { config, trace, simulate, speed, db, hold, seconds, record, subjects_out, keep_raw_cards } => {
            let cfg = load_config(&config)?;
            let trace_file = trace.clone().or_else(|| simulate.clone());
            let (inputs, speed) = match (trace, simulate) {
                (Some(t), _) => (gate::serve::Inputs::Trace(Trace::load(&t).map_err(input)?), speed.unwrap_or(20.0)),
                (None, Some(p)) => {
                    let t = Trace::load(&p).map_err(input)?;
                    if !t.has_pins() {
                        return Err(input(anyhow::anyhow!("{}: --simulate takes a pin-level trace (`line` inputs); serve an event-level trace with --trace", p.display())));
                    }
                    (gate::serve::Inputs::Trace(t), speed.unwrap_or(1.0))
                }
                (None, None) if speed.is_some() => return Err(input(anyhow::anyhow!("--speed applies to a trace; the hardware is served in real time"))),
                (None, None) => (gate::serve::Inputs::Hardware, 1.0),
            };
            if !speed.is_finite() || !SPEED_RANGE.contains(&speed) {
                return Err(input(anyhow::anyhow!("--speed {speed}: must be between {} and {}", SPEED_RANGE.start(), SPEED_RANGE.end())));
            }
            if let (gate::serve::Inputs::Trace(t), Some(file)) = (&inputs, trace_file.as_deref()) {
                unwired_line(&cfg, t, file)?;
            }
            let db = event_db(&config, &cfg, db)?;
            let record = record.map(|out| gate::record::RecordTo { subjects_out: subjects_out.unwrap_or_else(|| out.with_extension("subjects.toml")), out, keep_raw_cards });
            let cache_dir = cache_dir(&cfg);
            serve(cfg, gate::serve::RunOptions { inputs, speed, db, cache_dir, hold, duration: seconds.map(std::time::Duration::from_secs), record, format })
        }
        Cmd::Replay { config, trace, format, subjects } => {
            let cfg = load_config(&config)?;
            let cfg = match subjects {
                Some(s) => cfg.with_subjects(&s).map_err(input)?,
                None => cfg,
            };
            let trace = Trace::load(&trace).map_err(input)?;
            let cache = cache_dir(&cfg);
            replay_and_report(cfg, &trace, cache, format)
        }
        Cmd::Record { config, out, subjects_out, keep_raw_cards, simulate, seconds } => {
            let cfg = load_config(&config)?;
            let to = gate::record::RecordTo { subjects_out: subjects_out.unwrap_or_else(|| out.with_extension("subjects.toml")), out, keep_raw_cards };
            let cache_dir = cache_dir(&cfg);
            let Some(pins) = simulate else {
                // On the hardware a recording is the service with --record.
                let db = event_db(&config, &cfg, None)?;
                let opts = gate::serve::RunOptions {
                    inputs: gate::serve::Inputs::Hardware,
                    speed: 1.0,
                    db,
                    cache_dir,
                    hold: false,
                    duration: seconds.map(std::time::Duration::from_secs),
                    record: Some(to),
                    format,
                };
                return serve(cfg, opts);
            };
            let pins = Trace::load(&pins).map_err(input)?;
            let s = gate::record::record_simulated(cfg, &to, &pins, cache_dir).map_err(|e| match e {
                gate::record::RecordError::Setup(_) => input(e),
                _ => runtime(e),
            })?;
            println!("gate: recorded {} inputs and {} outputs ({} decisions) to {}", s.inputs, s.outputs, s.decisions, s.path.display());
            println!("gate: subject directory with the recording's pseudonyms: {}", s.subjects.display());
            println!("gate: replay with: gate replay --config {} --subjects {} --trace {}", config.display(), s.subjects.display(), s.path.display());
            Ok(0)
        }
        Cmd::Config { cmd } => config_cmd::config(cmd).map_err(runtime),
        Cmd::Enroll(args) => face_cmd::enroll(args),
        Cmd::Consent { cmd } => face_cmd::consent(cmd),
        Cmd::Face { cmd } => face_cmd::face(cmd),
        Cmd::Audit { cmd } => audit_cmd::audit(cmd),
        Cmd::Report(a) => report_cmd::report(a),
        Cmd::Subject { cmd: SubjectCmd::Report(a) } => report_cmd::subject_report(a),
        Cmd::Plugin { cmd } => plugin(cmd),
        Cmd::Fleet { cmd } => fleet_cmd::fleet(cmd).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        Cmd::Remote { cmd } => fleet_cmd::remote(cmd).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        Cmd::Guard { cmd } => fleet_cmd::guard(cmd).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        Cmd::CredentialRef(a) => fleet_cmd::credential_ref(a).map_err(|fleet_cmd::Fail(c, e)| Failure(c, e)),
        Cmd::PinHash { site, pin } => {
            let pin = match pin {
                Some(p) => p,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_line(&mut s).map_err(input)?;
                    s.trim().to_string()
                }
            };
            if pin.is_empty() || !pin.chars().all(|c| c.is_ascii_digit()) {
                return Err(input(anyhow::anyhow!("a PIN is one or more digits")));
            }
            println!("{}", gate::credentials::pin_hash(&site, &pin));
            Ok(0)
        }
        Cmd::Qr { cmd } => {
            let key = |hexkey: &str| -> Result<ed25519_dalek::SigningKey, Failure> {
                let b: [u8; 32] = hex::decode(hexkey).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| input(anyhow::anyhow!("--key-hex must be 32 bytes of hex")))?;
                Ok(ed25519_dalek::SigningKey::from_bytes(&b))
            };
            match cmd {
                QrCmd::Sign { key_hex, pass, visitor, host, doors, not_before, not_after, uses } => {
                    let not_before_ms = gate::clock::parse_rfc3339(&not_before).map_err(|m| input(anyhow::anyhow!("--not-before: {m}")))?;
                    let not_after_ms = gate::clock::parse_rfc3339(&not_after).map_err(|m| input(anyhow::anyhow!("--not-after: {m}")))?;
                    let p = gate::visitor::Pass { pass, visitor, host, doors, not_before_ms, not_after_ms, uses };
                    println!("{}", gate::visitor::issue(&key(&key_hex)?, &p).map_err(|e| input(anyhow::anyhow!("{e}")))?);
                }
                QrCmd::Show { code_key, at, pass } => {
                    let at_ms = match at {
                        Some(t) => gate::clock::parse_rfc3339(&t).map_err(|m| input(anyhow::anyhow!("--at: {m}")))?,
                        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
                    };
                    let key = gate::visitor::CodeKey::load(&code_key).map_err(|e| input(anyhow::anyhow!("--code-key: {e}")))?;
                    println!("{}", gate::visitor::displayed(&key, &pass, at_ms).map_err(|e| input(anyhow::anyhow!("{e}")))?);
                }
                QrCmd::CodeKeygen { out } => {
                    let k = gate::visitor::CodeKey::generate().map_err(|e| runtime(anyhow::anyhow!(e)))?;
                    k.save(&out).map_err(|e| input(anyhow::anyhow!(e)))?;
                    println!("code key written to {} (mode 0600); set `code_key` in [qr] of the site's gateways and give the property platform a copy", out.display());
                }
                QrCmd::PublicKey { key_hex } => println!("{}", hex::encode(key(&key_hex)?.verifying_key().to_bytes())),
            }
            Ok(0)
        }
        Cmd::Directory { cmd } => {
            let (config, file) = match &cmd {
                DirectoryCmd::Import { config, file } => (config, Some(file)),
                DirectoryCmd::Show { config } => (config, None),
            };
            let cfg = load_config(config)?;
            let state = cfg.site.state_dir.clone().ok_or_else(|| input(anyhow::anyhow!("{}: set `site.state_dir`: the directory is kept there", config.display())))?;
            let path = gate::directory::db_path(&state);
            match file {
                Some(file) => {
                    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display())).map_err(input)?;
                    let text = String::from_utf8(bytes).map_err(|e| input(anyhow::anyhow!("{}: not UTF-8 text ({e})", file.display())))?;
                    let entries = gate::config::subjects_from_str(&text, file).map_err(input)?;
                    let mut db = gate::directory::DirectoryDb::open(&path).map_err(runtime)?;
                    let s = db.import(entries, &gate::directory::source_digest(text.as_bytes())).map_err(input)?;
                    println!("gate: imported {} subjects with {} credentials into {} (version {})", s.subjects, s.credentials, path.display(), s.version);
                    if cfg.site.subjects.is_some() {
                        println!("gate: note: {} sets `site.subjects`, which the gateway serves instead; remove it to serve the imported directory", config.display());
                    }
                }
                None => {
                    let db = gate::directory::DirectoryDb::open_existing(&path).map_err(runtime)?.ok_or_else(|| input(anyhow::anyhow!("{}: no directory imported yet", path.display())))?;
                    println!(
                        "{}: version {}, {} subjects, source sha256 {}",
                        path.display(),
                        db.version().map_err(runtime)?,
                        db.count().map_err(runtime)?,
                        db.source_digest().map_err(runtime)?.unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(0)
        }
        Cmd::Bench { directory, .. } if !directory.is_empty() => {
            println!("{}", gate::bench_directory::run(&directory).map_err(runtime)?);
            Ok(0)
        }
        Cmd::Bench { config, iterations, face_frame, only, examples, .. } => {
            let config = config.ok_or_else(|| input(anyhow::anyhow!("--config is required")))?;
            let cfg = load_config(&config)?;
            let report = gate::bench::run(cfg, iterations, face_frame.as_deref(), &examples, &only).map_err(runtime)?;
            println!("{report}");
            Ok(0)
        }
    }
}
