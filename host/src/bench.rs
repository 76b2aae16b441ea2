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
    fn of(mut v: Vec<Duration>) -> Stats {
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

/// Everything `gate bench` measured.
pub struct Report {
    pub plugin: String,
    pub plugin_call: Stats,
    pub gateway_decision: Stats,
    pub fresh_instance: Stats,
    pub replay_events: usize,
    pub replay_secs: f64,
    /// Camera frame (JPEG/PNG file) to logged decision through the real models and plugin,
    /// or why it was not measured.
    pub face: Result<Stats, String>,
    /// Decisions made while plugins were being swapped in service.
    pub swap: SwapReport,
    pub machine: String,
}

/// Decisions under a steady stream of card reads while the policy plugin is swapped
/// again and again on the policy thread (the path a fleet deployment's activation takes).
#[derive(Debug, Clone)]
pub struct SwapReport {
    pub swaps: usize,
    /// How long each swap took from the request to the policy thread having done it.
    pub swap_time: Stats,
    pub submitted: usize,
    pub decided: usize,
    /// Decisions not made by the plugin (fallback or host) — a half-loaded plugin would show here.
    pub not_by_plugin: usize,
    /// Card read handed over -> decision logged, for reads handed over within 2 ms of a swap.
    pub during_swap: Stats,
    pub all: Stats,
    /// The plugin call deadline the latency is judged against.
    pub deadline: Duration,
    pub reads_per_sec: u32,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "gate bench on {}", self.machine)?;
        writeln!(f, "plugin: {}", self.plugin)?;
        writeln!(f, "one decision through the plugin (live engine)     {}", self.plugin_call)?;
        writeln!(f, "card read -> logged decision -> relay (gateway)   {}", self.gateway_decision)?;
        writeln!(f, "fresh plugin instance                             {}", self.fresh_instance)?;
        write!(
            f,
            "replay throughput: {} events in {:.3} s = {:.0} events/s (virtual time, fuel-metered, in-memory log)",
            self.replay_events,
            self.replay_secs,
            self.replay_events as f64 / self.replay_secs
        )?;
        match &self.face {
            Ok(s) => write!(
                f,
                "\ncamera frame -> face match -> decision (gateway) p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms   (n = {})\n  (file read + JPEG/PNG decode + detect + align + embed + 1:N search + plugin + log)",
                s.p50.as_secs_f64() * 1e3,
                s.p99.as_secs_f64() * 1e3,
                s.max.as_secs_f64() * 1e3,
                s.n
            ),
            Err(why) => write!(f, "\nface: not measured: {why}"),
        }?;
        let w = &self.swap;
        write!(
            f,
            "\nplugin swaps under load: {} swaps while {} card reads/s arrived; {} reads, {} decided ({} lost), {} not by the plugin\n  swap request -> done on the policy thread            {}\n  read -> logged decision, reads within 2 ms of a swap {}\n  read -> logged decision, all reads                   {}\n  slowest decision {:.2} ms against the {} ms plugin deadline",
            w.swaps,
            w.reads_per_sec,
            w.submitted,
            w.decided,
            w.submitted.saturating_sub(w.decided),
            w.not_by_plugin,
            w.swap_time,
            w.during_swap,
            w.all,
            w.all.max.as_secs_f64() * 1e3,
            w.deadline.as_millis()
        )
    }
}

/// Runs all measurements against the first door that has a policy plugin; with
/// `face_frame`, also frame-to-decision through the site's `[face]` matcher.
pub fn run(cfg: SiteConfig, iterations: usize, face_frame: Option<&std::path::Path>) -> Result<Report> {
    let door = cfg.doors.iter().find(|d| d.policy.is_some()).cloned().ok_or_else(|| anyhow!("no door with a policy plugin in {}", cfg.path.display()))?;
    let plugin = door.policy.clone().unwrap_or_default();
    let pc = cfg.plugins.get(&plugin).cloned().ok_or_else(|| anyhow!("plugin `{plugin}` missing"))?;
    let resident = cfg.subjects.iter().find(|s| s.role == crate::event::Role::Resident && !s.cards.is_empty()).cloned().ok_or_else(|| anyhow!("the subject directory has no resident with a card"))?;
    let offset = parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let start = crate::clock::parse_rfc3339("2026-11-23T07:00:00+08:00").map_err(anyhow::Error::msg)?;
    let clock = Clock::new(start, offset);

    // 1. One decision through the real plugin, live engine (epoch deadlines, no fuel).
    let rt = Runtime::new(ExecMode::Live, None)?;
    let loaded = rt.load(&pc.path, &cfg.limits)?;
    let mut slot = Slot::new(&rt, &pc, &loaded, &cfg.limits, clock.clone(), Default::default())?;
    let event = wit::AccessEvent {
        id: "bench-1".into(),
        door: door.id.clone(),
        direction: wit::Direction::Entry,
        time: timestamp(&clock, start),
        credential: wit::Credential::Card,
        subject: Some(wit::Subject { id: resident.id.clone(), role: wit::Role::Resident, groups: resident.groups.clone() }),
        prior: vec![],
    };
    for _ in 0..1000 {
        slot.decide(&rt, &event).map_err(|f| anyhow!("plugin failed during warm-up: {f}"))?;
    }
    let mut calls = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let r = slot.decide(&rt, &event);
        calls.push(t.elapsed());
        r.map_err(|f| anyhow!("plugin failed: {f}"))?;
    }

    // 2. Fresh instances.
    let mut fresh = Vec::new();
    for _ in 0..500 {
        fresh.push(slot.instantiate_fresh(&rt).map_err(|f| anyhow!("instantiate failed: {f}"))?);
    }

    // 3. The whole gateway path, in-memory log: a card read to a logged decision and relay pulse.
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

    // 4. Replay throughput: a long synthetic morning through the deterministic engine.
    let n = 200_000usize;
    let cards: Vec<(String, String)> = cfg.subjects.iter().flat_map(|s| s.cards.iter().map(move |c| (s.id.clone(), c.clone()))).collect();
    let doors: Vec<String> = cfg.doors.iter().filter(|d| d.accepts(crate::event::CredentialKind::Card)).map(|d| d.id.clone()).collect();
    let inputs: Vec<(u64, Input)> = (0..n)
        .map(|i| {
            let (_, number) = &cards[i % cards.len()];
            let door = doors[i % doors.len()].clone();
            (i as u64 * 3_000, Input::Card { door, direction: Direction::Entry, number: number.clone(), captured_at: None })
        })
        .collect();
    let trace = Trace { header: Header { gate_trace: 1, site: cfg.site.id.clone(), start: "2026-11-23T07:00:00+08:00".into(), description: None }, start_ms: start, inputs, expected: vec![] };
    let log = EventLog::in_memory(&cfg.site.gateway)?;
    let (mut gw, _) = Gateway::new(cfg.clone(), Clock::new(start, offset), Runtime::new(ExecMode::Deterministic, None)?, log).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    crate::replay::drive(&mut gw, &trace).context("replay")?;
    let replay_secs = t.elapsed().as_secs_f64();

    // 5. Face: a real photo through the real models, gallery and plugin, to a logged decision.
    let face = match face_frame {
        None => Err("pass --face-frame PHOTO (a photo of an enrolled subject) and configure [face]".to_string()),
        Some(frame) => face_frames(&cfg, &door.id, frame, start, offset)?,
    };

    // 6. Swaps under load, in service mode (policy thread), as a deployment activates.
    let swap = swaps_under_load(&cfg, &door.id, &pc, &resident.cards[0], start, offset)?;

    Ok(Report {
        swap,
        plugin: format!("{plugin} ({}, {} bytes)", pc.path.display(), loaded.size),
        plugin_call: Stats::of(calls),
        gateway_decision: Stats::of(gwd),
        fresh_instance: Stats::of(fresh),
        replay_events: n,
        replay_secs,
        face,
        machine: machine(),
    })
}

/// Feeds card reads at a steady rate to a gateway in service mode while another thread
/// swaps freshly linked instances of the policy plugin in, as a fleet activation does.
fn swaps_under_load(cfg: &SiteConfig, door: &str, pc: &crate::config::PluginConfig, card: &str, start: i64, offset: i32) -> Result<SwapReport> {
    const SWAPS: usize = 40;
    const READS_PER_SEC: u32 = 1000;
    let log = EventLog::in_memory(&cfg.site.gateway)?;
    let clock = Clock::new(start, offset);
    let (mut gw, problems) = Gateway::new(cfg.clone(), clock.clone(), Runtime::new(ExecMode::Live, None)?, log).map_err(anyhow::Error::msg)?;
    if !problems.is_empty() {
        return Err(anyhow!("plugins failed to load: {problems:?}"));
    }
    gw.spawn_policy_worker(crate::service::Bell::new())?;
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
        std::thread::sleep(Duration::from_millis(200));
        for slot in staged {
            let t = Instant::now();
            let old = control.swap(&name, slot, Duration::from_secs(5))?;
            times.push((t, t.elapsed()));
            drop(old);
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(times)
    });

    let input = Input::Card { door: door.to_string(), direction: Direction::Entry, number: card.to_string(), captured_at: None };
    let every = Duration::from_secs(1) / READS_PER_SEC;
    let mut waiting: std::collections::VecDeque<Instant> = Default::default();
    // (handed over, read -> logged decision)
    let mut done: Vec<(Instant, Duration)> = Vec::new();
    let (mut submitted, mut decided, mut not_by_plugin) = (0usize, 0usize, 0usize);
    let mut now = start;
    let t0 = Instant::now();
    let mut next = t0;
    let mut collect = |recs: Vec<crate::gateway::Timed>, waiting: &mut std::collections::VecDeque<Instant>| {
        for (_, r) in recs {
            if let crate::event::Record::Decision { by, .. } = r {
                if let Some(at) = waiting.pop_front() {
                    done.push((at, at.elapsed()));
                }
                decided += 1;
                if !by.starts_with("plugin:") {
                    not_by_plugin += 1;
                }
            }
        }
    };
    while !swapper.is_finished() || !waiting.is_empty() {
        if Instant::now() >= next && !swapper.is_finished() {
            // Reads a minute apart in gateway time: never a repeat, the door always relocked.
            now += 60_000;
            clock.set_ms(now);
            waiting.push_back(Instant::now());
            let recs = gw.handle(now, &input, None)?;
            submitted += 1;
            collect(recs, &mut waiting);
            next += every;
        }
        gw.wait_policy(next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5)));
        let recs = gw.poll_policy()?;
        collect(recs, &mut waiting);
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!("swap benchmark did not finish within 60 s"));
        }
    }
    let swap_times = swapper.join().map_err(|_| anyhow!("swap thread panicked"))?.map_err(|e| anyhow!("swap failed: {e}"))?;
    // A read "meets" a swap when it was handed over within 2 ms either side of one: it
    // queued behind the swap or was the new instance's first call.
    let near = Duration::from_millis(2);
    let during: Vec<Duration> = done.iter().filter(|(at, _)| swap_times.iter().any(|(s, d)| *at + near >= *s && *at <= *s + *d + near)).map(|(_, d)| *d).collect();
    if during.is_empty() {
        return Err(anyhow!("no read arrived near a swap; the benchmark measured nothing"));
    }
    let all: Vec<Duration> = done.iter().map(|(_, d)| *d).collect();
    Ok(SwapReport {
        swaps: swap_times.len(),
        swap_time: Stats::of(swap_times.iter().map(|(_, d)| *d).collect()),
        submitted,
        decided,
        not_by_plugin,
        during_swap: Stats::of(during),
        all: Stats::of(all),
        deadline: Duration::from_millis(cfg.limits.deadline_ms),
        reads_per_sec: READS_PER_SEC,
    })
}

/// Frame-to-decision latency of 200 camera frames, 60 s apart (beyond every repeat window).
fn face_frames(cfg: &SiteConfig, door: &str, frame: &std::path::Path, start: i64, offset: i32) -> Result<Result<Stats, String>> {
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
    tracing::info!(enrolled, "face bench done");
    Ok(Ok(Stats::of(times)))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}
