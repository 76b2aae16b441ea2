//! `gate bench`: the numbers the README reports, measured with the real
//! plugins of a site configuration on the machine at hand.

use crate::clock::{parse_offset, Clock};
use crate::config::SiteConfig;
use crate::event::{Direction, Input};
use crate::gateway::Gateway;
use crate::plugin::bindings::policy::gate::plugin::types as wit;
use crate::plugin::caps::clock::timestamp;
use crate::plugin::{ExecMode, Runtime, Slot};
use crate::store::EventLog;
use crate::trace::{Header, Trace};
use anyhow::{anyhow, Context, Result};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Latency percentiles of one measurement.
#[derive(Debug, Clone)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    /// Percentiles of `v` (not empty).
    pub(crate) fn of(mut v: Vec<Duration>) -> Stats {
        v.sort();
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        Stats { n: v.len(), p50: at(0.50), p99: at(0.99), max: at(1.0) }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p50 {:>8.2} µs   p99 {:>8.2} µs   max {:>9.2} µs   (n = {})", us(self.p50), us(self.p99), us(self.max), self.n)
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The measurements `gate bench` can run (`--only` picks some; all by default).
pub const PARTS: &[&str] = &["plugin", "languages", "gateway", "replay", "face", "swaps", "service", "cold-start", "memory"];

/// Everything `gate bench` measured: one block of text per part, in order.
pub struct Report {
    pub machine: String,
    /// The 1-minute load average before and after (other work on the machine skews numbers).
    pub load: (String, String),
    pub parts: Vec<(String, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "gate bench on {}; load average {} before, {} after", self.machine, self.load.0, self.load.1)?;
        for (name, text) in &self.parts {
            writeln!(f, "\n[{name}]\n{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// Runs the measurements named in `only` (all when empty) against the first door that has
/// a policy plugin; `face_frame` adds frame-to-decision through the site's `[face]` matcher;
/// `examples` holds the example policy built in each language (`cargo xtask plugins`).
pub fn run(cfg: SiteConfig, iterations: usize, face_frame: Option<&Path>, examples: &Path, only: &[String]) -> Result<Report> {
    if let Some(bad) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(anyhow!("--only {bad}: not a benchmark; the benchmarks are {}", PARTS.join(", ")));
    }
    let want = |p: &str| only.is_empty() || only.iter().any(|o| o == p);
    let door = cfg.doors.iter().find(|d| d.policy.is_some()).cloned().ok_or_else(|| anyhow!("no door with a policy plugin in {}", cfg.path.display()))?;
    let plugin = door.policy.clone().unwrap_or_default();
    let pc = cfg.plugins.get(&plugin).cloned().ok_or_else(|| anyhow!("plugin `{plugin}` missing"))?;
    let resident = cfg.subjects.iter().find(|s| s.role == crate::event::Role::Resident && !s.cards.is_empty()).cloned().ok_or_else(|| anyhow!("the subject directory has no resident with a card"))?;
    let offset = parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let start = crate::clock::parse_rfc3339("2026-11-23T07:00:00+08:00").map_err(anyhow::Error::msg)?;
    let clock = Clock::new(start, offset);
    let load_before = load_average();
    let mut parts = Vec::new();

    let event = wit::AccessEvent {
        id: "bench-1".into(),
        door: door.id.clone(),
        direction: wit::Direction::Entry,
        time: timestamp(&clock, start),
        credential: wit::Credential::Card,
        subject: Some(wit::Subject { id: resident.id.clone(), role: wit::Role::Resident, groups: resident.groups.clone() }),
        prior: vec![],
    };
    if want("plugin") {
        let c = PluginCosts::measure(&pc, &cfg.limits, &clock, &event, iterations)?;
        parts.push((
            "plugin".into(),
            format!(
                "plugin: {plugin} ({}, {} bytes)\none decision through the plugin (live engine)  {}\nfresh plugin instance                          {}",
                pc.path.display(),
                c.size,
                c.decision,
                c.fresh
            ),
        ));
    }

    if want("languages") {
        parts.push(("languages".into(), crate::bench_languages::run(&cfg, &door.id, &resident.cards[0], &clock, &event, iterations, examples, start, offset)?));
    }

    if want("gateway") {
        // The core alone, inline policy, in-memory log: a card read to a logged decision and relay pulse.
        let log = EventLog::in_memory(&cfg.site.gateway)?;
        let (mut gw, problems) = Gateway::new(cfg.clone(), clock.clone(), Runtime::new(ExecMode::Live, None)?, log).map_err(anyhow::Error::msg)?;
        if !problems.is_empty() {
            return Err(anyhow!("plugins failed to load: {problems:?}"));
        }
        let card = Input::Card { door: door.id.clone(), direction: Direction::Entry, number: resident.cards[0].clone(), captured_at: None };
        let mut gwd = Vec::with_capacity(iterations);
        let mut now = start;
        for i in 0..iterations + 500 {
            // Space reads beyond the repeat window and the door's open time.
            now += 60_000;
            clock.set_ms(now);
            let t = Instant::now();
            gw.handle(now, &card, None)?;
            if i >= 500 {
                gwd.push(t.elapsed());
            }
        }
        parts.push(("gateway".into(), format!("card read -> logged decision -> relay (core, inline policy, in-memory log)  {}", Stats::of(gwd))));
    }

    if want("replay") {
        parts.push(("replay".into(), replay_throughput(&cfg, start, offset)?));
    }

    if want("face") {
        let face = match face_frame {
            None => Err("pass --face-frame PHOTO (a photo of an enrolled subject) and configure [face]".to_string()),
            Some(frame) => face_frames(&cfg, &door.id, frame, start, offset)?,
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let text = match face {
            Ok((s, live)) => {
                let live = match live {
                    Some(l) => format!("liveness model (crop + fr_liveness, matched face only)   p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   (n = {})", ms(l.p50), ms(l.p99), ms(l.max), l.n),
                    None => "liveness model: not loaded (models/fr_liveness.onnx missing or not the pinned file): every verdict is `unknown`".into(),
                };
                format!(
                    "camera frame -> face match -> decision (gateway) p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   (n = {})\n  (file read + JPEG/PNG decode + detect + align + embed + 1:N search + liveness + plugin + log)\n{live}",
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max),
                    s.n
                )
            }
            Err(why) => format!("not measured: {why}"),
        };
        parts.push(("face".into(), text));
    }

    if want("swaps") {
        parts.push(("swaps".into(), swaps_under_load(&cfg, &door.id, &pc, &resident.cards[0], start, offset)?));
    }

    if want("service") {
        parts.push(("service".into(), crate::bench_service::service_under_load(&cfg, &door.id, &resident.cards[0], offset)?));
    }

    if want("cold-start") || want("memory") {
        let exe = std::env::current_exe().context("finding the gate binary")?;
        let work = crate::bench_service::Scratch::new()?;
        if want("cold-start") {
            parts.push(("cold-start".into(), crate::bench_service::cold_start(&cfg, &exe, &work, &door.id)?));
        }
        if want("memory") {
            parts.push(("memory".into(), crate::bench_service::memory(&cfg, &exe, &work, &door.id)?));
        }
    }

    Ok(Report { machine: machine(), load: (load_before, load_average()), parts })
}

/// What one plugin costs on the live engine: its size, one decision on a ready instance, a
/// fresh instance, and the memory an instance holds after deciding.
pub(crate) struct PluginCosts {
    pub size: usize,
    /// Compiling the component (a gateway does it once per version and caches it).
    pub compile: Duration,
    pub decision: Stats,
    pub fresh: Stats,
    /// Bytes of linear memory and tables of one instance after its decisions.
    pub instance_bytes: usize,
}

impl PluginCosts {
    /// Times `iterations` decisions of `event` (after 1,000 to warm up) and 200 fresh instances.
    pub(crate) fn measure(pc: &crate::config::PluginConfig, limits: &crate::config::Limits, clock: &Clock, event: &wit::AccessEvent, iterations: usize) -> Result<PluginCosts> {
        let rt = Runtime::new(ExecMode::Live, None)?;
        let t = Instant::now();
        let loaded = rt.load(&pc.path, limits)?;
        let compile = t.elapsed();
        let mut slot = Slot::new(&rt, pc, &loaded, limits, clock.clone(), Default::default())?;
        for _ in 0..1000 {
            slot.decide(&rt, event).map_err(|f| anyhow!("{}: failed during warm-up: {f}", pc.name))?;
        }
        let mut calls = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let t = Instant::now();
            let r = slot.decide(&rt, event);
            calls.push(t.elapsed());
            r.map_err(|f| anyhow!("{}: failed: {f}", pc.name))?;
        }
        let instance_bytes = slot.instance_bytes();
        let mut fresh = Vec::new();
        for _ in 0..200 {
            fresh.push(slot.instantiate_fresh(&rt).map_err(|f| anyhow!("{}: instantiate failed: {f}", pc.name))?);
        }
        Ok(PluginCosts { size: loaded.size, compile, decision: Stats::of(calls), fresh: Stats::of(fresh), instance_bytes })
    }
}

/// Events per second through `replay::drive` (the service loop at virtual pace) with the
/// site's plugins, fuel-metered: a long synthetic morning of card reads, with the event log
/// in memory (as `gate replay`) and in a file (WAL, the replay's one transaction).
fn replay_throughput(cfg: &SiteConfig, start: i64, offset: i32) -> Result<String> {
    let n = 200_000usize;
    let cards: Vec<String> = cfg.subjects.iter().flat_map(|s| s.cards.iter().cloned()).collect();
    let doors: Vec<String> = cfg.doors.iter().filter(|d| d.accepts(crate::event::CredentialKind::Card)).map(|d| d.id.clone()).collect();
    if cards.is_empty() || doors.is_empty() {
        return Err(anyhow!("the site has no cards or no door that takes them"));
    }
    let inputs: Vec<(u64, Input)> = (0..n)
        .map(|i| {
            let number = cards[i % cards.len()].clone();
            let door = doors[i % doors.len()].clone();
            (i as u64 * 3_000, Input::Card { door, direction: Direction::Entry, number, captured_at: None })
        })
        .collect();
    let trace = Trace { header: Header { gate_trace: 1, site: cfg.site.id.clone(), start: "2026-11-23T07:00:00+08:00".into(), description: None }, start_ms: start, inputs, expected: vec![] };
    let mut out = String::new();
    let scratch = crate::bench_service::Scratch::new()?;
    for (what, log) in [("in-memory event log", EventLog::in_memory(&cfg.site.gateway)?), ("event log in a file", EventLog::open(&scratch.path("replay.sqlite"), &cfg.site.gateway)?)] {
        let (mut gw, problems) = Gateway::new(cfg.clone(), Clock::new(start, offset), Runtime::new(ExecMode::Deterministic, None)?, log).map_err(anyhow::Error::msg)?;
        if !problems.is_empty() {
            return Err(anyhow!("plugins failed to load: {problems:?}"));
        }
        let (t, cpu0) = (Instant::now(), thread_cpu());
        let records = crate::replay::drive(&mut gw, &trace).context("replay")?;
        let (secs, cpu) = (t.elapsed().as_secs_f64(), thread_cpu().zip(cpu0).map(|(b, a)| (b - a).as_secs_f64()));
        out.push_str(&format!("replay throughput ({what}): {n} events ({} records) in {secs:.3} s = {:.0} events/s", records.len(), n as f64 / secs));
        if let Some(cpu) = cpu {
            // On a shared machine the wall clock counts other people's work; the CPU time does not.
            out.push_str(&format!("; {cpu:.3} s on the CPU = {:.0} events per CPU-second", n as f64 / cpu));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Feeds card reads at a steady rate to a gateway in service mode while another thread
/// swaps freshly linked instances of the policy plugin in, as a fleet activation does.
pub(crate) fn swaps_under_load(cfg: &SiteConfig, door: &str, pc: &crate::config::PluginConfig, card: &str, start: i64, offset: i32) -> Result<String> {
    use crate::service::{self, Bell, Control, NoHooks, Options, Pace};
    const SWAPS: usize = 40;
    const READS_PER_SEC: i64 = 1000;
    let mut cfg = cfg.clone();
    // Every read is a fresh attempt (the same card again and again would be a duplicate).
    cfg.timing.repeat_window_ms = 0;
    let log = EventLog::in_memory(&cfg.site.gateway)?;
    let clock = Clock::new(start, offset);
    let (mut gw, problems) = Gateway::new(cfg.clone(), clock.clone(), Runtime::new(ExecMode::Live, None)?, log).map_err(anyhow::Error::msg)?;
    if !problems.is_empty() {
        return Err(anyhow!("plugins failed to load: {problems:?}"));
    }
    let bell = Bell::new();
    gw.spawn_policy_worker(bell.clone())?;
    let control = gw.plugin_control().ok_or_else(|| anyhow!("no policy thread"))?;
    // Compile and link off the policy thread, as the fleet agent does; only the swap crosses.
    let loaded = control.runtime().load(&pc.path, &cfg.limits)?;
    let mut staged = Vec::new();
    for _ in 0..SWAPS {
        staged.push(Slot::new(control.runtime(), pc, &loaded, &cfg.limits, clock.clone(), Default::default())?);
    }
    let name = pc.name.clone();
    let swapper = std::thread::spawn(move || -> Result<Vec<(Instant, Duration)>, String> {
        let mut times = Vec::new();
        std::thread::sleep(Duration::from_millis(300));
        for slot in staged {
            let t = Instant::now();
            let old = control.swap(&name, slot, Duration::from_secs(5))?;
            times.push((t, t.elapsed()));
            drop(old);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(times)
    });

    // Reads from 0.1 s to 2.6 s through the one service loop at wall pace; the swaps run from
    // 0.3 s to about 2.3 s.
    let submitted = 2_500usize;
    let input = Input::Card { door: door.to_string(), direction: Direction::Entry, number: card.to_string(), captured_at: None };
    let mut source = crate::bench_service::SteadyReads::new(start + 100, READS_PER_SEC, vec![input; submitted]);
    let ctl = Control::new(bell);
    let opts = Options { max_wall: Some(Duration::from_secs(60)), ..Options::default() };
    let mut sink = |_: service::Step| Ok::<(), service::ServiceError>(());
    service::run(&mut gw, &mut source, Pace::wall(start, 1.0), &opts, &ctl, None, &mut NoHooks, &mut sink)?;
    service::stop(&mut gw, &mut source, &opts, &ctl, None, &mut sink)?;
    let done: Vec<(Instant, Duration, String)> = source.done.remove(door).unwrap_or_default();
    let decided = done.len();
    let not_by_plugin = done.iter().filter(|(_, _, by)| !by.starts_with("plugin:")).count();
    let swap_times = swapper.join().map_err(|_| anyhow!("swap thread panicked"))?.map_err(|e| anyhow!("swap failed: {e}"))?;
    // A read "meets" a swap when it was handed over within 2 ms either side of one: it
    // queued behind the swap or was the new instance's first call.
    let near = Duration::from_millis(2);
    let during: Vec<Duration> = done.iter().filter(|(at, _, _)| swap_times.iter().any(|(s, d)| *at + near >= *s && *at <= *s + *d + near)).map(|(_, d, _)| *d).collect();
    if during.is_empty() {
        return Err(anyhow!("no read arrived near a swap; the benchmark measured nothing"));
    }
    let all: Vec<Duration> = done.iter().map(|(_, d, _)| *d).collect();
    let all: Stats = Stats::of(all);
    Ok(format!(
        "{} swaps while {READS_PER_SEC} card reads/s arrived; {submitted} reads, {decided} decided ({} lost), {not_by_plugin} not by the plugin\n  swap request -> in service (new instance made first) {}\n  read -> logged decision, reads within 2 ms of a swap {}\n  read -> logged decision, all reads                   {}\n  slowest decision {:.2} ms against the {} ms plugin deadline",
        swap_times.len(),
        submitted.saturating_sub(decided),
        Stats::of(swap_times.iter().map(|(_, d)| *d).collect()),
        Stats::of(during),
        all,
        all.max.as_secs_f64() * 1e3,
        cfg.limits.deadline_ms
    ))
}

/// Frame-to-decision latency of 200 camera frames, 60 s apart (beyond every repeat window).
/// Also returns the liveness model's own cost on the matched face, over 200 runs of the
/// matcher alone (None without a liveness model).
fn face_frames(cfg: &SiteConfig, door: &str, frame: &std::path::Path, start: i64, offset: i32) -> Result<Result<(Stats, Option<Stats>), String>> {
    let log = EventLog::in_memory(&cfg.site.gateway)?;
    let clock = Clock::new(start, offset);
    let (mut gw, _) = Gateway::new(cfg.clone(), clock.clone(), Runtime::new(ExecMode::Live, None)?, log).map_err(anyhow::Error::msg)?;
    if let Some(why) = gw.face().off_reason() {
        return Ok(Err(format!("face recognition is off: {why}")));
    }
    let enrolled = gw.face().enrolled();
    let input = Input::CameraFrame { door: door.to_string(), direction: Direction::Entry, file: frame.to_path_buf(), captured_at: None };
    let mut times = Vec::new();
    let mut now = start;
    for i in 0..210 {
        now += 60_000;
        clock.set_ms(now);
        let t = Instant::now();
        let recs = gw.handle(now, &input, None)?;
        if i >= 10 {
            times.push(t.elapsed());
        }
        if i == 0 && !recs.iter().any(|(_, r)| matches!(r, crate::event::Record::Decision { subject: Some(_), .. })) {
            return Ok(Err(format!("{} matched nobody among the {enrolled} enrolled templates: {recs:?}", frame.display())));
        }
    }
    let mut live = None;
    if gw.face().has_liveness() {
        let decoded = gate_face::Frame::decode(&std::fs::read(frame)?).map_err(|e| anyhow::anyhow!("{}: {e}", frame.display()))?;
        let mut lt = Vec::new();
        for _ in 0..200 {
            match gw.face().stage_timings(&decoded) {
                Some(Ok(t)) => lt.push(t.liveness),
                Some(Err(e)) => return Ok(Err(e)),
                None => return Ok(Err("face recognition is off".into())),
            }
        }
        live = Some(Stats::of(lt));
    }
    tracing::info!(enrolled, "face bench done");
    Ok(Ok((Stats::of(times), live)))
}

/// CPU time the calling thread has used (Linux: /proc/thread-self/schedstat, in ns).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse::<u64>().ok().map(Duration::from_nanos)
}

/// The 1-minute load average, as /proc/loadavg says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().next().map(String::from)).unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}
