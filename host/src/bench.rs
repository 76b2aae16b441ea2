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
    pub machine: String,
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
        }
    }
}

/// Runs all measurements against the first door that has a policy plugin; with
/// `face_frame`, also frame-to-decision through the site's `[face]` matcher.
pub fn run(cfg: SiteConfig, iterations: usize, face_frame: Option<&std::path::Path>) -> Result<Report> {
    let door = cfg.doors.iter().find(|d| d.policy.is_some()).cloned().ok_or_else(|| anyhow!("no door with a policy plugin in {}", cfg.path.display()))?;
    let plugin = door.policy.clone().unwrap_or_default();
    let pc = cfg.plugins.get(&plugin).cloned().ok_or_else(|| anyhow!("plugin `{plugin}` missing"))?;
    let resident = cfg
        .subjects
        .iter()
        .find(|s| s.role == crate::event::Role::Resident && !s.cards.is_empty())
        .cloned()
        .ok_or_else(|| anyhow!("the subject directory has no resident with a card"))?;
    let offset = parse_offset(&cfg.site.utc_offset).map_err(anyhow::Error::msg)?;
    let start = crate::clock::parse_rfc3339("2026-11-23T07:00:00+08:00").map_err(anyhow::Error::msg)?;
    let clock = Clock::new(start, offset);

    // 1. One decision through the real plugin, live engine (epoch deadlines, no fuel).
    let rt = Runtime::new(ExecMode::Live, None)?;
    let loaded = rt.load(&pc.path)?;
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
    let cards: Vec<(String, String)> = cfg
        .subjects
        .iter()
        .flat_map(|s| s.cards.iter().map(move |c| (s.id.clone(), c.clone())))
        .collect();
    let doors: Vec<String> = cfg.doors.iter().filter(|d| d.accepts(crate::event::CredentialKind::Card)).map(|d| d.id.clone()).collect();
    let inputs: Vec<(u64, Input)> = (0..n)
        .map(|i| {
            let (_, number) = &cards[i % cards.len()];
            let door = doors[i % doors.len()].clone();
            (i as u64 * 3_000, Input::Card { door, direction: Direction::Entry, number: number.clone(), captured_at: None })
        })
        .collect();
    let trace = Trace {
        header: Header { gate_trace: 1, site: cfg.site.id.clone(), start: "2026-11-23T07:00:00+08:00".into(), description: None },
        start_ms: start,
        inputs,
        expected: vec![],
    };
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

    Ok(Report {
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
