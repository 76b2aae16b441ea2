//! `gate bench --only languages`: what the same site policy costs written in each language
//! `gate plugin new` writes (the examples of `plugins/examples/`, built by `cargo xtask
//! plugins`): component size, compile, one decision, a fresh instance, memory per instance,
//! and decisions while new versions are swapped in under 1,000 card reads/s.

use crate::bench::{swaps_under_load, PluginCosts};
use crate::clock::Clock;
use crate::config::{PluginConfig, SiteConfig, World};
use crate::plugin::bindings::policy::gate::plugin::types as wit;
use anyhow::{anyhow, Result};
use std::fmt::Write;
use std::path::Path;

/// Largest example component accepted here (a Python one is about 18 MB) and the compile
/// budget (12-18 MB components take 5-19 s on a 2-core machine): the limits the examples'
/// sample sidecar sets for `gate plugin test`.
const MAX_COMPONENT_BYTES: u64 = 32 << 20;
const COMPILE_MS: u64 = 120_000;

/// Measures each built example on `door` of `cfg`, in place of the door's own policy.
#[allow(clippy::too_many_arguments)]
pub fn run(cfg: &SiteConfig, door: &str, card: &str, clock: &Clock, event: &wit::AccessEvent, iterations: usize, examples: &Path, start: i64, offset: i32) -> Result<String> {
    let mut out = String::new();
    let mut measured = 0;
    for lang in crate::scaffold::Lang::ALL.map(crate::scaffold::Lang::name) {
        let path = examples.join(lang).join("example-policy.wasm");
        if !path.exists() {
            let _ = writeln!(out, "{lang:<6}: not built ({} missing; `cargo xtask plugins` builds it)", path.display());
            continue;
        }
        let (cfg, pc) = with_example(cfg, door, &path)?;
        let c = PluginCosts::measure(&pc, &cfg.limits, clock, event, iterations)?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        let _ = writeln!(
            out,
            "{lang:<6}: component {:.1} MB, compiled in {:.0} ms (once per version, then cached)\n  one decision, ready instance   p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs  (n = {})\n  a fresh instance               p50 {:>8.1} µs  p99 {:>8.1} µs  max {:>8.1} µs  (n = {})\n  memory of one instance         {:.1} MiB (linear memories and tables)",
            c.size as f64 / 1e6,
            ms(c.compile),
            us(c.decision.p50),
            us(c.decision.p99),
            us(c.decision.max),
            c.decision.n,
            us(c.fresh.p50),
            us(c.fresh.p99),
            us(c.fresh.max),
            c.fresh.n,
            c.instance_bytes as f64 / (1u64 << 20) as f64
        );
        let swaps = swaps_under_load(&cfg, door, &pc, card, start, offset)?;
        for line in swaps.lines() {
            let _ = writeln!(out, "  {line}");
        }
        measured += 1;
    }
    if measured == 0 {
        return Err(anyhow!("no example policy is built under {}: run `cargo xtask plugins`", examples.display()));
    }
    Ok(out)
}

/// `cfg` with the example at `path` as the policy of `door` (its sample settings are the
/// example's defaults), and the component size and compile limits the examples need.
fn with_example(cfg: &SiteConfig, door: &str, path: &Path) -> Result<(SiteConfig, PluginConfig)> {
    let mut cfg = cfg.clone();
    let name = "example-policy".to_string();
    let pc = PluginConfig { name: name.clone(), path: path.to_path_buf(), world: World::Policy, settings: Default::default(), prefix: None };
    cfg.plugins.insert(name.clone(), pc.clone());
    let d = cfg.doors.iter_mut().find(|d| d.id == door).ok_or_else(|| anyhow!("door `{door}` missing"))?;
    d.policy = Some(name);
    cfg.limits.max_component_bytes = cfg.limits.max_component_bytes.max(MAX_COMPONENT_BYTES);
    cfg.limits.compile_ms = cfg.limits.compile_ms.max(COMPILE_MS);
    Ok((cfg, pc))
}
