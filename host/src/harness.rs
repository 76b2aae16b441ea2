//! `gate plugin test`: one plugin against one trace on a built-in minimal site, so a plugin
//! author sees decisions (and a diff against the trace's expectations) without writing a site
//! configuration. The site is built here; the run is `replay::run`, exactly as `gate replay`.
//!
//! The minimal site: one door per door the trace names (or the sidecar's `[[door]]`), each
//! accepting every credential kind and served by the plugin when it is a policy plugin; the
//! sidecar's `[[subject]]` entries as the subject directory; default limits, timing, face bands
//! and fallback. The sidecar (`--site FILE`, or `<trace>.site.toml` beside the trace) is
//! documented in the root README, "Writing plugins outside this repository".

use crate::config::{ConfigError, SiteConfig, World};
use crate::event::CredentialKind;
use crate::trace::Trace;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest sidecar file read.
pub const MAX_SIDECAR_BYTES: u64 = 4 << 20;

/// The gateway id of the minimal site (event ids in expectations start with it).
pub const GATEWAY: &str = "plugin-test";

/// Every credential kind: a door of the minimal site accepts them all unless the sidecar says.
const ALL_KINDS: [CredentialKind; 8] =
    [CredentialKind::Face, CredentialKind::Card, CredentialKind::Pin, CredentialKind::Nfc, CredentialKind::Qr, CredentialKind::Plate, CredentialKind::GuardRelease, CredentialKind::Intercom];

/// The sidecar file: what a trace does not say about the site.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// Site-local offset from UTC, "+08:00"; default: the offset of the trace's `start`.
    #[serde(default)]
    utc_offset: Option<String>,
    /// The plugin's own settings (its `config` import), as in a site's `[plugins.NAME] config`.
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    /// Doors, when the defaults do not fit (fewer credential kinds, other opening times).
    #[serde(default, rename = "door")]
    doors: Vec<SidecarDoor>,
    /// Subjects, in the subject directory format (checked by `config::subjects_within`).
    #[serde(default, rename = "subject")]
    subjects: Vec<toml::Value>,
    /// The site's `[limits]` (same keys and ranges), e.g. a larger `max_component_bytes`
    /// for a Python or JavaScript component.
    #[serde(default)]
    limits: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SidecarDoor {
    id: String,
    #[serde(default)]
    credentials: Option<Vec<CredentialKind>>,
    #[serde(default)]
    open_ms: Option<u32>,
    #[serde(default)]
    max_open_ms: Option<u32>,
}

/// The sidecar used for a trace: `--site`, else `<trace without .jsonl>.site.toml` if it exists.
pub fn sidecar_for(trace: &Path, site: Option<&Path>) -> Option<PathBuf> {
    if let Some(s) = site {
        return Some(s.to_path_buf());
    }
    let name = trace.file_name()?.to_str()?;
    let stem = name.strip_suffix(".jsonl").unwrap_or(name);
    let p = trace.with_file_name(format!("{stem}.site.toml"));
    p.is_file().then_some(p)
}

/// The plugin's name in the minimal site (`by: plugin:<name>` in records): the file stem,
/// with `_` as `-` (cargo writes `my_policy.wasm` for the crate `my-policy`).
pub fn plugin_name(plugin: &Path) -> String {
    plugin.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").replace('_', "-")
}

/// The site offset a trace's RFC 3339 `start` carries ("...+08:00" → "+08:00", "...Z" → "+00:00").
fn offset_of_start(start: &str) -> String {
    if start.ends_with('Z') || start.ends_with('z') {
        return "+00:00".into();
    }
    match start.len().checked_sub(6).and_then(|i| start.get(i..)) {
        Some(tail) if tail.starts_with(['+', '-']) && tail.as_bytes().get(3) == Some(&b':') => tail.to_string(),
        _ => "+00:00".into(),
    }
}

/// Doors the trace's inputs name, in order of first appearance.
fn doors_of(trace: &Trace) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in trace.inputs.iter().filter_map(|(_, input)| input.door()) {
        if !out.iter().any(|x| x == d) {
            out.push(d.to_string());
        }
    }
    out
}

/// TOML text of a basic string (quotes and escapes by the toml crate).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Builds the minimal site running `plugin` (of `world`) for `trace`, reading `sidecar` if given.
/// Errors name the sidecar (or the trace) and the key.
pub fn minimal_site(plugin: &Path, world: World, trace: &Trace, trace_path: &Path, sidecar: Option<&Path>) -> Result<SiteConfig, ConfigError> {
    let (side, side_text) = match sidecar {
        Some(p) => {
            let text = crate::config::read_input(p, MAX_SIDECAR_BYTES, "plugin test site")?;
            let side: Sidecar = toml::from_str(&text).map_err(|e| ConfigError {
                file: p.to_path_buf(),
                line: e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1),
                message: e.message().trim().to_string(),
            })?;
            (side, text)
        }
        None => (Sidecar::default(), String::new()),
    };
    let named = sidecar.unwrap_or(trace_path);
    let name = plugin_name(plugin);
    let abs = std::path::absolute(plugin).unwrap_or_else(|_| plugin.to_path_buf());
    let offset = side.utc_offset.clone().unwrap_or_else(|| offset_of_start(&trace.header.start));
    let site_id = if trace.header.site.is_empty() { "plugin-test-site".to_string() } else { trace.header.site.clone() };

    let mut t = String::new();
    t.push_str(&format!("[site]\nid = {}\ngateway = {}\nutc_offset = {}\n\n", quoted(&site_id), quoted(GATEWAY), quoted(&offset)));
    let world_name = match world {
        World::Policy => "policy",
        World::Integration => "integration",
    };
    t.push_str(&format!("[plugins.{}]\npath = {}\nworld = {}\n", quoted(&name), quoted(&abs.to_string_lossy()), quoted(world_name)));
    if world == World::Integration {
        t.push_str(&format!("prefix = {}\n", quoted(&name)));
    }
    if !side.settings.is_empty() {
        let mut table = toml::Table::new();
        for (k, v) in &side.settings {
            table.insert(k.clone(), v.clone());
        }
        t.push_str(&format!("[plugins.{}.config]\n{}\n", quoted(&name), toml::to_string(&table).unwrap_or_default()));
    }
    if let Some(limits) = &side.limits {
        t.push_str(&format!("\n[limits]\n{}\n", toml::to_string(limits).unwrap_or_default()));
    }
    let doors: Vec<SidecarDoor> =
        if side.doors.is_empty() { doors_of(trace).into_iter().map(|id| SidecarDoor { id, credentials: None, open_ms: None, max_open_ms: None }).collect() } else { side.doors };
    if doors.is_empty() {
        return Err(ConfigError { file: named.to_path_buf(), line: None, message: "no door: the trace names none; declare one with [[door]] id = \"...\" in the sidecar (--site)".into() });
    }
    for d in &doors {
        let kinds = d.credentials.clone().unwrap_or_else(|| ALL_KINDS.to_vec());
        let list: Vec<String> = kinds.iter().map(|k| quoted(k.as_str())).collect();
        t.push_str(&format!("\n[[door]]\nid = {}\ncredentials = [{}]\n", quoted(&d.id), list.join(", ")));
        if world == World::Policy {
            t.push_str(&format!("policy = {}\n", quoted(&name)));
        }
        if let Some(ms) = d.max_open_ms {
            t.push_str(&format!("max_open_ms = {ms}\n"));
        }
        if let Some(ms) = d.open_ms {
            t.push_str(&format!("open_ms = {ms}\nexit_open_ms = {ms}\n"));
        }
    }
    // The site is ours, its problems are the sidecar's: name the sidecar and the key, not a
    // line of text the author never saw.
    let mut cfg = SiteConfig::from_str(&t, named).map_err(|e| ConfigError { line: None, ..e })?;
    cfg.subjects = if side_text.is_empty() { Vec::new() } else { crate::config::subjects_within(&side_text, named)? };
    debug_assert!(side.subjects.len() == cfg.subjects.len());
    Ok(cfg)
}

/// What `gate plugin test --watch` compares: each file's modification time and length (None
/// while a file is missing, e.g. during a rebuild).
pub fn stamps(files: &[&Path]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

/// Returns once `files` differ from `seen` and have stayed the same for a moment (a build
/// writes a component in pieces; testing half a file would report a bogus error).
pub fn wait_for_change(files: &[&Path], seen: &[Option<(std::time::SystemTime, u64)>]) {
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);
    loop {
        std::thread::sleep(POLL);
        let now = stamps(files);
        if now.as_slice() != seen && now.iter().all(Option::is_some) {
            std::thread::sleep(POLL);
            if stamps(files) == now {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(text: &str) -> Trace {
        Trace::parse(text, Path::new("t.jsonl")).expect("trace")
    }

    const TRACE: &str = "{\"gate_trace\":1,\"site\":\"s\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n{\"at\":0,\"input\":{\"kind\":\"card\",\"door\":\"north\",\"number\":\"1\"}}\n{\"at\":5,\"input\":{\"kind\":\"exit-button\",\"door\":\"garage\"}}\n{\"at\":9,\"input\":{\"kind\":\"card\",\"door\":\"north\",\"number\":\"2\"}}\n";

    #[test]
    fn without_a_sidecar_every_door_the_trace_names_is_served_by_the_plugin_in_the_traces_offset() {
        let t = trace(TRACE);
        let cfg = minimal_site(Path::new("x/my_policy.wasm"), World::Policy, &t, Path::new("t.jsonl"), None).expect("site");
        let ids: Vec<&str> = cfg.doors.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["north", "garage"]);
        assert!(cfg.doors.iter().all(|d| d.policy.as_deref() == Some("my-policy") && d.credentials.len() == 8));
        assert_eq!(cfg.site.utc_offset, "+08:00");
        assert!(cfg.subjects.is_empty());
    }

    #[test]
    fn a_sidecar_gives_doors_settings_and_subjects_and_its_errors_name_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let side = dir.path().join("t.site.toml");
        std::fs::write(
            &side,
            "utc_offset = \"+01:00\"\n[settings]\nopen-ms = 7000\n[[door]]\nid = \"lobby\"\ncredentials = [\"card\"]\n[[subject]]\nid = \"r-1\"\nrole = \"resident\"\ncards = [\"1\"]\n",
        )
        .expect("write");
        let t = trace(TRACE);
        let cfg = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).expect("site");
        assert_eq!(cfg.doors.len(), 1);
        assert_eq!(cfg.doors[0].credentials, vec![CredentialKind::Card]);
        assert_eq!(cfg.plugins["p"].settings["open-ms"], "7000");
        assert_eq!(cfg.subjects[0].id, "r-1");
        assert_eq!(cfg.site.utc_offset, "+01:00");

        std::fs::write(&side, "[[subject]]\nid = \"r-1\"\nrole = \"resident\"\n\n[[subject]]\nid = \"r-1\"\nrole = \"staff\"\n").expect("write");
        let e = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:5:", side.display())) && e.contains("defined twice"), "{e}");

        std::fs::write(&side, "[[door]]\nid = \"face-only\"\ncredentials = [\"face\"]\n").expect("write");
        let e = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).unwrap_err().to_string();
        assert!(e.starts_with(&side.display().to_string()) && e.contains("face-only") && e.contains("credentials"), "{e}");

        // The site's limits, with their ranges: a Python component needs more than 16 MiB.
        std::fs::write(&side, "[limits]\nmax_component_bytes = 33554432\n").expect("write");
        let cfg = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).expect("site");
        assert_eq!(cfg.limits.max_component_bytes, 32 << 20);
        std::fs::write(&side, "[limits]\nmax_component_bytes = 0\n").expect("write");
        let e = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).unwrap_err().to_string();
        assert!(e.starts_with(&side.display().to_string()) && e.contains("max_component_bytes"), "{e}");

        std::fs::write(&side, "colour = \"red\"\n").expect("write");
        let e = minimal_site(Path::new("p.wasm"), World::Policy, &t, Path::new("t.jsonl"), Some(&side)).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:1:", side.display())) && e.contains("colour"), "{e}");
    }

    #[test]
    fn an_integration_plugin_gets_a_prefix_and_leaves_the_doors_to_the_fallback() {
        let t = trace(TRACE);
        let cfg = minimal_site(Path::new("bridge.wasm"), World::Integration, &t, Path::new("t.jsonl"), None).expect("site");
        assert_eq!(cfg.plugins["bridge"].prefix.as_deref(), Some("bridge"));
        assert!(cfg.doors.iter().all(|d| d.policy.is_none()));
    }

    #[test]
    fn the_sidecar_is_found_beside_the_trace() {
        let dir = tempfile::tempdir().expect("tmp");
        let tr = dir.path().join("sample.jsonl");
        assert_eq!(sidecar_for(&tr, None), None);
        std::fs::write(dir.path().join("sample.site.toml"), "").expect("write");
        assert_eq!(sidecar_for(&tr, None), Some(dir.path().join("sample.site.toml")));
        assert_eq!(sidecar_for(&tr, Some(Path::new("other.toml"))), Some(PathBuf::from("other.toml")));
    }

    #[test]
    fn offsets_come_from_the_start() {
        assert_eq!(offset_of_start("2026-11-23T07:00:00+08:00"), "+08:00");
        assert_eq!(offset_of_start("2026-11-23T07:00:00-03:30"), "-03:30");
        assert_eq!(offset_of_start("2026-11-23T07:00:00Z"), "+00:00");
    }
}
