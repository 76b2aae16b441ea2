//! The service benchmarks of `gate bench`: what the gateway does as a service, measured on
//! the service itself. Cold start and resident memory spawn the real `gate run` process
//! (wall clock, durable event log, policy thread, fleet link off); the latency under load
//! drives the one service loop (`service::run`) with a source that hands it card reads at a
//! steady wall-clock rate, the way GPIO edges arrive.

use crate::clock::Clock;
use crate::config::{PluginConfig, SiteConfig};
use crate::event::{Direction, Input, Record};
use crate::gateway::{Gateway, Timed};
use crate::hardware::HardwareError;
use crate::plugin::{ExecMode, Runtime};
use crate::service::{self, Arrival, Bell, Control, NoHooks, Options, Pace, Source};
use crate::store::EventLog;
use anyhow::{anyhow, Context, Result};
use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::bench::Stats;

/// A scratch directory for one benchmark run, removed afterwards.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// A fresh directory under the system's temp dir, private to this user.
    pub fn new() -> Result<Scratch> {
        tempfile::Builder::new().prefix("gate-bench-").tempdir().map(Scratch).context("creating a scratch folder")
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// The site's configuration file rewritten for a run in `state_dir`: every relative path made
/// absolute (so the copy can live anywhere), the state directory replaced, `[fleet]` dropped
/// (no broker here), and `[face]` pointed at `face` (models dir, template db, key) when given.
fn config_for(cfg: &SiteConfig, state_dir: &Path, face: Option<(&Path, &Path, &Path)>) -> Result<String> {
    let text = std::fs::read_to_string(&cfg.path).with_context(|| format!("reading {}", cfg.path.display()))?;
    let mut doc: toml::Table = text.parse().with_context(|| format!("parsing {}", cfg.path.display()))?;
    // Absolute: the rewritten file lives elsewhere, and relative paths follow the file.
    let dir = cfg.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = std::fs::canonicalize(dir).with_context(|| format!("finding {}", dir.display()))?;
    let abs = |v: &mut toml::Value| {
        if let Some(p) = v.as_str() {
            *v = toml::Value::String(base.join(p).display().to_string());
        }
    };
    if let Some(site) = doc.get_mut("site").and_then(|v| v.as_table_mut()) {
        if let Some(v) = site.get_mut("subjects") {
            abs(v);
        }
        site.insert("state_dir".into(), toml::Value::String(state_dir.display().to_string()));
    }
    if let Some(plugins) = doc.get_mut("plugins").and_then(|v| v.as_table_mut()) {
        for (_, p) in plugins.iter_mut() {
            if let Some(v) = p.as_table_mut().and_then(|t| t.get_mut("path")) {
                abs(v);
            }
        }
    }
    doc.remove("fleet");
    if let Some(face_t) = doc.get_mut("face").and_then(|v| v.as_table_mut()) {
        for k in ["models_dir", "db", "key"] {
            face_t.remove(k);
        }
        if let Some((models, db, key)) = face {
            face_t.insert("models_dir".into(), toml::Value::String(models.display().to_string()));
            face_t.insert("db".into(), toml::Value::String(db.display().to_string()));
            face_t.insert("key".into(), toml::Value::String(key.display().to_string()));
        }
    }
    Ok(toml::to_string(&doc)?)
}

/// A trace starting now: `inputs` at their offsets (ms).
fn write_trace(cfg: &SiteConfig, path: &Path, inputs: &[(u64, Input)]) -> Result<()> {
    let offset = crate::clock::parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut t = format!("{{\"gate_trace\":1,\"site\":{:?},\"start\":{:?},\"description\":\"gate bench\"}}\n", cfg.site.id, crate::record::rfc3339_of(now_ms, offset)?);
    for (at, i) in inputs {
        t.push_str(&crate::trace::input_line(*at, i));
        t.push('\n');
    }
    std::fs::write(path, t).with_context(|| format!("writing {}", path.display()))
}

/// Residents' card reads at the doors that take cards: (door, card) pairs, the bench door first.
fn resident_reads(cfg: &SiteConfig, door: &str) -> Vec<(String, String)> {
    let mut doors: Vec<String> = cfg.doors.iter().filter(|d| d.accepts(crate::event::CredentialKind::Card)).map(|d| d.id.clone()).collect();
    doors.sort_by_key(|d| d != door);
    let cards: Vec<String> = cfg.subjects.iter().filter(|s| s.role == crate::event::Role::Resident).flat_map(|s| s.cards.iter().cloned()).collect();
    doors.iter().flat_map(|d| cards.iter().map(move |c| (d.clone(), c.clone()))).collect()
}

fn card(door: &str, number: &str) -> Input {
    Input::Card { door: door.into(), direction: Direction::Entry, number: number.into(), captured_at: None }
}

/// What one `gate run` said, line by line, as it arrived.
enum Line {
    Out(Instant, String),
    Err(Instant, String),
}

/// A `gate run` process and its output.
struct Run {
    child: Child,
    started: Instant,
    lines: mpsc::Receiver<Line>,
}

impl Run {
    /// Starts `gate run --config C --trace T (or --simulate T) --speed 1 --hold --log-format
    /// json`, logging at info.
    fn start(exe: &Path, config: &Path, trace: &Path, pins: bool, db: &Path) -> Result<Run> {
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(["--log-format", "json", "run", "--hold", "--speed", "1", "--config"])
            .arg(config)
            .arg(if pins { "--simulate" } else { "--trace" })
            .arg(trace)
            .arg("--db")
            .arg(db)
            .env("GATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let err = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Line::Out(Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                // A failing run says why here; the bench shows it.
                if l.contains("error") || l.contains("ERROR") {
                    eprintln!("gate run: {l}");
                }
                if tx2.send(Line::Err(Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        Ok(Run { child, started, lines })
    }

    /// The next line, waiting at most `timeout`.
    fn next(&self, timeout: Duration) -> Result<Line> {
        self.lines.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => anyhow!("gate run said nothing for {timeout:?}"),
            mpsc::RecvTimeoutError::Disconnected => anyhow!("gate run ended before the measurement was done"),
        })
    }

    /// VmRSS and VmHWM of the process, in MiB.
    fn memory(&self) -> Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).context("reading /proc/PID/status")?;
        let kib = |key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
    }

    /// SIGTERM, then waits for the clean stop.
    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(anyhow!("gate run did not stop within 10 s of SIGTERM"))
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A decision record printed by `gate run --log-format json`: its `by`.
fn decision_by(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["record"]["kind"] == "decision").then(|| v["record"]["by"].as_str().unwrap_or("").to_string())
}

/// Whether a printed record is a read handled (decided, or ignored as a repeat).
fn handled(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v["record"]["kind"] == "decision" || v["record"]["kind"] == "ignored")
}

/// Cold start: process start -> first logged decision, with no plugin cache (the fallback
/// serves while the plugins compile on a helper thread; also when the policy plugin is in
/// service) and with the cache that run left behind. Three rounds, each on fresh state.
pub fn cold_start(cfg: &SiteConfig, exe: &Path, work: &Scratch, door: &str) -> Result<String> {
    let policy = cfg.door(door).and_then(|d| d.policy.clone()).unwrap_or_default();
    let reads = resident_reads(cfg, door);
    // A resident's card at the bench door at once, then a read every 600 ms (beyond the repeat window).
    // (The first read's Wiegand frame takes 75 ms on the wires: it starts at 100 ms.)
    let inputs: Vec<(u64, Input)> = (0..50).map(|i| (100 + i as u64 * 600, card(&reads[i % reads.len()].0, &reads[i % reads.len()].1))).collect();
    // On the wires of [hardware] (simulated pins): the service of a door, as on a gate.
    let hw = cfg.hardware.as_ref().ok_or_else(|| anyhow!("{}: cold start runs on simulated pins and needs [hardware]", cfg.path.display()))?;
    let inputs = crate::hardware::twin(hw, &inputs)?;
    let trace = work.path("cold.jsonl");
    let mut out = String::new();
    for round in 0..3 {
        let state = work.path(&format!("cold-{round}"));
        let config = work.path(&format!("cold-{round}.toml"));
        std::fs::write(&config, config_for(cfg, &state, None)?)?;
        for cache in ["no cache", "warm cache"] {
            write_trace(cfg, &trace, &inputs)?;
            let run = Run::start(exe, &config, &trace, true, &state.join(format!("events-{}.sqlite", cache.len())))?;
            let (mut first, mut in_service, mut compiled) = (None, None, 0);
            // Without a cache: until every plugin is compiled (so the next start finds them all).
            while first.is_none() || (cache == "no cache" && compiled < cfg.plugins.len()) {
                match run.next(Duration::from_secs(60))? {
                    Line::Out(at, l) => {
                        if let Some(by) = decision_by(&l) {
                            first.get_or_insert((at - run.started, by));
                        }
                    }
                    Line::Err(at, l) => {
                        if l.contains("in the background and in service") {
                            compiled += 1;
                            if l.contains(&format!("\"{policy}\"")) {
                                in_service = Some(at - run.started);
                            }
                        }
                    }
                }
            }
            run.stop()?;
            let (t, by) = first.unwrap_or_default();
            out.push_str(&format!("round {}, {cache:<10}: first decision {:>6.1} ms after process start [{by}]", round + 1, t.as_secs_f64() * 1e3));
            if let Some(s) = in_service {
                out.push_str(&format!("; {policy} compiled and in service at {:.1} ms", s.as_secs_f64() * 1e3));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Resident memory of `gate run` (VmRSS, and VmHWM = peak) idle and at the end of 10 s of
/// 1,000 card reads/s, without face and with `[face]` on (ONNX Runtime and both models loaded).
pub fn memory(cfg: &SiteConfig, exe: &Path, work: &Scratch, door: &str) -> Result<String> {
    let reads = resident_reads(cfg, door);
    const IDLE_MS: u64 = 3_000;
    const LOAD: usize = 10_000;
    // One read, an idle stretch, then 1,000 reads/s: residents' cards and unknown ones.
    let mut inputs: Vec<(u64, Input)> = vec![(0, card(&reads[0].0, &reads[0].1))];
    for i in 0..LOAD {
        let (d, c) = &reads[i % reads.len()];
        let number = if i % 4 == 0 { c.clone() } else { format!("9{:07}", i) };
        inputs.push((IDLE_MS + 1_000 + i as u64, card(d, &number)));
    }
    // The models `cargo xtask setup` fetched (the bench runs from the workspace root).
    let models = std::fs::canonicalize("models").unwrap_or_else(|_| PathBuf::from("models"));
    let mut out = String::new();
    for face in [false, true] {
        let state = work.path(&format!("mem-{face}"));
        std::fs::create_dir_all(&state)?;
        let face_paths = if face {
            let key = state.join("face.key");
            let made = Command::new(exe).args(["face", "key", "new"]).arg(&key).output()?;
            if !made.status.success() {
                out.push_str(&format!("with face: not measured: `gate face key new` failed: {}\n", String::from_utf8_lossy(&made.stderr).trim()));
                continue;
            }
            Some((models.clone(), state.join("faces.sqlite"), key))
        } else {
            None
        };
        let config = work.path(&format!("mem-{face}.toml"));
        std::fs::write(&config, config_for(cfg, &state, face_paths.as_ref().map(|(a, b, c)| (a.as_path(), b.as_path(), c.as_path())))?)?;
        // A first start fills the plugin cache: this measures the service, not the compiler.
        let warm = work.path("mem-warm.jsonl");
        write_trace(cfg, &warm, &inputs[..1])?;
        let run = Run::start(exe, &config, &warm, false, &state.join("warm.sqlite"))?;
        wait_for(&run, |l| matches!(l, Line::Out(_, o) if decision_by(o).is_some()), "the first decision")?;
        run.stop()?;

        let trace = work.path(&format!("mem-{face}.jsonl"));
        write_trace(cfg, &trace, &inputs)?;
        let run = Run::start(exe, &config, &trace, false, &state.join("events.sqlite"))?;
        let mut face_on = !face;
        let mut decided = 0usize;
        let mut idle = None;
        while decided < LOAD + 1 {
            match run.next(Duration::from_secs(60))? {
                Line::Out(_, l) => {
                    face_on |= l.contains("face recognition on");
                    if l.contains("face recognition OFF") {
                        out.push_str(&format!("with face: not measured: {l}\n"));
                        break;
                    }
                    if handled(&l) {
                        decided += 1;
                        if decided == 1 {
                            // Idle: the first read served, nothing else for a while.
                            std::thread::sleep(Duration::from_millis(IDLE_MS / 2));
                            idle = Some(run.memory()?);
                        }
                    }
                }
                Line::Err(..) => {}
            }
        }
        if decided < LOAD + 1 || !face_on {
            continue;
        }
        let loaded = run.memory()?;
        run.stop()?;
        let (idle_rss, idle_hwm) = idle.unwrap_or_default();
        let label = if face { "face on (ONNX Runtime + YuNet + SFace)" } else { "no face" };
        out.push_str(&format!("{label:<40} idle VmRSS {idle_rss:>6.1} MiB (VmHWM {idle_hwm:>6.1});  after {LOAD} reads at 1,000/s VmRSS {:>6.1} MiB (VmHWM {:>6.1})\n", loaded.0, loaded.1));
    }
    Ok(out)
}

fn wait_for(run: &Run, mut f: impl FnMut(&Line) -> bool, what: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if f(&run.next(Duration::from_secs(120))?) {
            return Ok(());
        }
    }
    Err(anyhow!("timed out waiting for {what}"))
}

/// Card reads at a steady wall-clock rate, as GPIO edges arrive: remembers when each was
/// handed to the loop, and when the decision it led to was logged and handed to the relay
/// driver ([`Source::follow`], where the relay command goes out).
pub(crate) struct SteadyReads {
    start_us: i64,
    every_us: i64,
    reads: Vec<Input>,
    next: usize,
    /// Per door, when each read not yet decided was handed over.
    taken: HashMap<String, VecDeque<Instant>>,
    /// Per door: when the read was handed over, how long until its decision was logged and at
    /// the relay driver, and who decided.
    pub(crate) done: HashMap<String, Vec<(Instant, Duration, String)>>,
}

impl SteadyReads {
    /// `reads`, one every `1 / per_second` s of gateway time from `start_ms` (Unix ms).
    pub(crate) fn new(start_ms: i64, per_second: i64, reads: Vec<Input>) -> SteadyReads {
        SteadyReads { start_us: start_ms.saturating_mul(1_000), every_us: 1_000_000 / per_second.max(1), reads, next: 0, taken: HashMap::new(), done: HashMap::new() }
    }
}

impl Source for SteadyReads {
    fn next_us(&mut self, _now_us: i64) -> Option<i64> {
        (self.next < self.reads.len()).then(|| self.start_us + self.every_us * self.next as i64)
    }

    fn take(&mut self, now_us: i64, out: &mut Vec<Arrival>) -> Result<(), HardwareError> {
        while self.next < self.reads.len() && self.start_us + self.every_us * self.next as i64 <= now_us {
            let input = self.reads[self.next].clone();
            let at = (self.start_us + self.every_us * self.next as i64) / 1_000;
            self.taken.entry(input.door().unwrap_or_default().to_string()).or_default().push_back(Instant::now());
            out.push(Arrival { at, input, captured: None });
            self.next += 1;
        }
        Ok(())
    }

    fn exhausted(&self) -> bool {
        self.next >= self.reads.len()
    }

    fn follow(&mut self, records: &[Timed]) -> Result<(), HardwareError> {
        for (_, r) in records {
            if let Record::Decision { door, by, .. } = r {
                if let Some(at) = self.taken.get_mut(door).and_then(VecDeque::pop_front) {
                    self.done.entry(door.clone()).or_default().push((at, at.elapsed(), by.clone()));
                }
            }
        }
        Ok(())
    }
}

/// The service path under load: 1,000 card reads/s (residents at the bench door, and one
/// read a second at another door whose policy plugin spins until its deadline) through the
/// service loop at wall pace, the policy thread, and the durable event log (SQLite WAL, full
/// sync, in a file): read handed to the loop -> decision logged -> relay command.
pub fn service_under_load(cfg: &SiteConfig, door: &str, resident_card: &str, offset: i32) -> Result<String> {
    const READS_PER_SEC: i64 = 1_000;
    const SECONDS: i64 = 10;
    let mut cfg = cfg.clone();
    // Every read is a fresh attempt (the same card again and again would be a duplicate).
    cfg.timing.repeat_window_ms = 0;
    let other = cfg.doors.iter().find(|d| d.id != door && d.accepts(crate::event::CredentialKind::Card)).map(|d| d.id.clone()).ok_or_else(|| anyhow!("the site has only one door that takes cards"))?;
    let policy = cfg.door(door).and_then(|d| d.policy.clone()).unwrap_or_default();
    let pc = cfg.plugins.get(&policy).cloned().ok_or_else(|| anyhow!("plugin `{policy}` missing"))?;
    let spin = pc.path.with_file_name("spin-forever.wasm");
    if !spin.exists() {
        return Err(anyhow!("{} is missing: run `cargo xtask plugins`", spin.display()));
    }
    cfg.plugins.insert("hang".into(), PluginConfig { name: "hang".into(), path: spin, world: crate::config::World::Policy, settings: Default::default(), prefix: None });
    for d in cfg.doors.iter_mut().filter(|d| d.id == other) {
        d.policy = Some("hang".into());
    }
    let work = Scratch::new()?;
    let start = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let clock = Clock::new(start, offset);
    let log = EventLog::open(&work.path("events.sqlite"), &cfg.site.gateway)?;
    let (mut gw, problems) = Gateway::new(cfg.clone(), clock, Runtime::new(ExecMode::Live, None)?, log).map_err(anyhow::Error::msg)?;
    if !problems.is_empty() {
        return Err(anyhow!("plugins failed to load: {problems:?}"));
    }
    let bell = Bell::new();
    gw.spawn_policy_worker(bell.clone())?;
    let n = (READS_PER_SEC * SECONDS) as usize;
    let reads: Vec<Input> = (0..n).map(|i| if i % READS_PER_SEC as usize == 500 { card(&other, resident_card) } else { card(door, resident_card) }).collect();
    // The first read half a second after the start: the loop is turning by then.
    let mut source = SteadyReads::new(start + 500, READS_PER_SEC, reads);
    let ctl = Control::new(bell);
    let opts = Options { max_wall: Some(Duration::from_secs(SECONDS as u64 + 30)), ..Options::default() };
    let mut sink = |_: service::Step| Ok::<(), service::ServiceError>(());
    service::run(&mut gw, &mut source, Pace::wall(start, 1.0), &opts, &ctl, None, &mut NoHooks, &mut sink)?;
    service::stop(&mut gw, &mut source, &opts, &ctl, None, &mut sink)?;
    let mut out = format!("{n} card reads at {READS_PER_SEC}/s through the service loop, policy thread, durable event log; `{other}`'s plugin spins to its {} ms deadline\n", cfg.limits.deadline_ms);
    for d in [door.to_string(), other] {
        let done = source.done.remove(&d).unwrap_or_default();
        let asked = source.reads.iter().filter(|i| i.door() == Some(d.as_str())).count();
        let mut by: Vec<(String, usize)> = Vec::new();
        for (_, _, b) in &done {
            match by.iter_mut().find(|(x, _)| x == b) {
                Some((_, c)) => *c += 1,
                None => by.push((b.clone(), 1)),
            }
        }
        let who = by.iter().map(|(b, c)| format!("{c} by {b}")).collect::<Vec<_>>().join(", ");
        let stats = if done.is_empty() { "none decided".to_string() } else { Stats::of(done.iter().map(|(_, t, _)| *t).collect()).to_string() };
        out.push_str(&format!("  {d:<14} read -> logged decision -> relay command  {stats}\n  {:<14} {asked} reads, {} decided: {who}\n", "", done.len()));
    }
    Ok(out)
}
