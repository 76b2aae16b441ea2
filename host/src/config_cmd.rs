//! `gate config check FILE`: a configuration is validated before a gateway uses it.
//!
//! It loads the file exactly as `gate run` does (`SiteConfig::load`: site, limits, doors,
//! subjects, `[hardware]`, `[fleet]`, `[face]`), and then, independently of that first
//! verdict, checks every file the configuration names: each plugin (exists, is a regular
//! file, is a component of its declared world within `limits.max_component_bytes`, through
//! the same `plugin::check` as `gate plugin check`), the face matcher's files and the
//! broker's TLS files. Every problem is printed as `file:line: key …`, not just the first.
//! Devices (`/dev/gpiochip*`, the camera) are only noted when absent: a package is often
//! configured on another machine than the gateway it runs on.

use anyhow::anyhow;
use gate::config::{Limits, SiteConfig, World};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The subcommands of `gate config`.
#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Check a site configuration as `gate run` would load it, plus every plugin and file it
    /// names; print every problem as `file:line: key …`; exit 0 when clean, 2 otherwise.
    Check {
        /// The site configuration, e.g. /etc/gate/site.toml.
        file: PathBuf,
    },
}

/// The parts of a site file whose keys name other files, read leniently (unknown keys and
/// other sections ignored) so that they are checked even when the strict load fails.
#[derive(Deserialize, Default)]
struct Lenient {
    #[serde(default)]
    site: Option<LenientSite>,
    #[serde(default)]
    limits: Option<toml::Value>,
    #[serde(default)]
    plugins: BTreeMap<String, LenientPlugin>,
    #[serde(default)]
    face: Option<LenientFace>,
    #[serde(default)]
    fleet: Option<LenientFleet>,
    #[serde(default)]
    hardware: Option<LenientHardware>,
}

#[derive(Deserialize)]
struct LenientSite {
    #[serde(default)]
    state_dir: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct LenientPlugin {
    #[serde(default)]
    path: Option<Spanned<toml::Value>>,
    #[serde(default)]
    world: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct LenientFace {
    #[serde(default)]
    models_dir: Option<Spanned<toml::Value>>,
    #[serde(default)]
    key: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct LenientFleet {
    #[serde(default)]
    broker: Option<LenientBroker>,
}

#[derive(Deserialize)]
struct LenientBroker {
    #[serde(default)]
    tls: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

#[derive(Deserialize)]
struct LenientHardware {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    gpio_chip: Option<String>,
    #[serde(default)]
    camera: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

/// What a check found: problems make it fail; notes are printed and do not.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Findings {
    fn problem(&mut self, p: String) {
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }
}

/// Runs `gate config …`; the exit code is 0 when clean and 2 on any problem.
pub fn config(cmd: ConfigCmd) -> Result<u8, anyhow::Error> {
    match cmd {
        ConfigCmd::Check { file } => {
            let mut f = check(&file)?;
            // In the order of the file: problems without a line first.
            let prefix = format!("{}:", file.display());
            f.problems.sort_by_key(|p| p.strip_prefix(&prefix).and_then(|rest| rest.split(':').next()).and_then(|n| n.parse::<usize>().ok()));
            for n in &f.notes {
                println!("{n}");
            }
            for p in &f.problems {
                println!("{p}");
            }
            if f.problems.is_empty() {
                println!("{}: ok", file.display());
                Ok(0)
            } else {
                eprintln!("gate: {} problem{} in {}", f.problems.len(), if f.problems.len() == 1 { "" } else { "s" }, file.display());
                Ok(2)
            }
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).bytes().filter(|b| *b == b'\n').count() + 1
}

/// Checks one file; an error only when the file cannot be read at all.
fn check(path: &Path) -> Result<Findings, anyhow::Error> {
    let mut f = Findings::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            f.problem(format!("{}: cannot read: {e}", path.display()));
            return Ok(f);
        }
    };
    let at = |span: std::ops::Range<usize>| format!("{}:{}", path.display(), line_of(&text, span.start));
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    // 1. Exactly what `gate run` loads (its first refusal, with file, line and key).
    let strict = match SiteConfig::load(path) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            f.problem(e.to_string());
            None
        }
    };
    // A file that is not TOML at all has nothing more to check.
    let Ok(lenient) = toml::from_str::<Lenient>(&text) else { return Ok(f) };

    // 2. Where the service keeps its event log.
    match lenient.site.as_ref().and_then(|s| s.state_dir.as_ref()) {
        None => f.problem(format!("{}: key `site.state_dir` is not set: the service keeps its event log and plugin cache there", path.display())),
        Some(s) if s.get_ref().as_str().is_none_or(str::is_empty) => f.problem(format!("{}: key `site.state_dir` must be a non-empty path", at(s.span()))),
        Some(_) => {}
    }

    // 3. Every plugin, with the site's limits (or the defaults when they do not load).
    let limits = match &strict {
        Some(cfg) => cfg.limits.clone(),
        None => lenient.limits.clone().and_then(|v| v.try_into::<Limits>().ok()).unwrap_or_default(),
    };
    if !lenient.plugins.is_empty() {
        let rt = gate::plugin::Runtime::new(gate::plugin::ExecMode::Live, None).map_err(|e| anyhow!("starting the plugin engine: {e}"))?;
        for (name, p) in &lenient.plugins {
            check_plugin(&mut f, &rt, &limits, &base, name, p, &at, path);
        }
    }

    // 4. The face matcher's files, when face is configured.
    if let Some(face) = &lenient.face {
        if let Some(m) = face.models_dir.as_ref().filter(|m| m.get_ref().as_str().is_some()) {
            let dir = base.join(m.get_ref().as_str().unwrap_or_default());
            if !dir.join("manifest.toml").is_file() {
                f.problem(format!("{}: key `face.models_dir`: {} has no manifest.toml (copy the models/ folder of a gate build there)", at(m.span()), dir.display()));
            }
        }
        if let Some(k) = face.key.as_ref().filter(|k| k.get_ref().as_str().is_some()) {
            let key = base.join(k.get_ref().as_str().unwrap_or_default());
            if !key.is_file() {
                f.problem(format!("{}: key `face.key`: {} does not exist (create it with `gate face key new {}`)", at(k.span()), key.display(), key.display()));
            }
        }
    }

    // 5. The broker's TLS files.
    if let Some(tls) = lenient.fleet.as_ref().and_then(|fl| fl.broker.as_ref()).and_then(|b| b.tls.as_ref()) {
        for key in ["ca", "client_cert", "client_key"] {
            let Some(v) = tls.get(key) else { continue };
            let Some(p) = v.get_ref().as_str() else { continue };
            let file = base.join(p);
            if !file.is_file() {
                f.problem(format!("{}: key `fleet.broker.tls.{key}`: {} does not exist or is not a file", at(v.span()), file.display()));
            }
        }
    }

    // 6. Devices are noted, not failed: they belong to the machine the service runs on.
    if let Some(hw) = &lenient.hardware {
        if hw.backend.as_deref() == Some("linux") {
            let chip = hw.gpio_chip.clone().unwrap_or_else(|| "/dev/gpiochip0".into());
            if !Path::new(&chip).exists() {
                f.notes.push(format!("{}: note: key `hardware.gpio_chip`: {chip} does not exist on this machine (the service needs it where it runs)", path.display()));
            }
        }
        if let Some(dev) = hw.camera.as_ref().and_then(|c| c.get("device")) {
            if let Some(d) = dev.get_ref().as_str().filter(|d| !Path::new(d).exists()) {
                f.notes.push(format!("{}: note: key `hardware.camera.device`: {d} does not exist on this machine", at(dev.span())));
            }
        }
    }
    Ok(f)
}

/// One `[plugins.NAME]`: the file exists, is a regular file, and is a component of the
/// declared world within the site's limits.
#[allow(clippy::too_many_arguments)]
fn check_plugin(f: &mut Findings, rt: &gate::plugin::Runtime, limits: &Limits, base: &Path, name: &str, p: &LenientPlugin, at: &dyn Fn(std::ops::Range<usize>) -> String, config: &Path) {
    let Some(pv) = &p.path else {
        f.problem(format!("{}: plugin `{name}`: key `path` is missing", config.display()));
        return;
    };
    let Some(rel) = pv.get_ref().as_str() else { return };
    let file = base.join(rel);
    let where_path = at(pv.span());
    match std::fs::metadata(&file) {
        Err(e) => return f.problem(format!("{where_path}: plugin `{name}` key `path`: {}: {e}", file.display())),
        Ok(m) if !m.is_file() => return f.problem(format!("{where_path}: plugin `{name}` key `path`: {} is not a regular file", file.display())),
        Ok(_) => {}
    }
    let report = match gate::plugin::check::check(rt, &file, limits) {
        Ok(r) => r,
        Err(e) => return f.problem(format!("{where_path}: plugin `{name}` key `path`: {e}")),
    };
    let declared = p.world.as_ref().and_then(|w| w.get_ref().as_str().map(|s| (s, w.span())));
    let Some((declared, span)) = declared else { return };
    let expected = match declared {
        "policy" => World::Policy,
        "integration" => World::Integration,
        // An unknown world is the strict load's finding.
        _ => return,
    };
    if report.world != expected {
        let found = match report.world {
            World::Policy => "policy-plugin",
            World::Integration => "integration-plugin",
        };
        f.problem(format!("{}: plugin `{name}` key `world`: declared \"{declared}\", but {} is a {found} component", at(span), file.display()));
    }
}
