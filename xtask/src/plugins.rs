//! Builds the guest plugins for wasm32-wasip2 (and assembles the hand-made test
//! components written in the text format) and collects them in target/plugins/.

use anyhow::{Context, Result};
use std::path::Path;

/// Every plugin crate in the workspace; each becomes target/plugins/<name>.wasm.
pub const PLUGINS: &[&str] = &[
    "resident-policy",
    "platform-bridge",
    "spin-forever",
    "memory-hog",
    "deep-recursion",
    "always-trap",
    "log-flood",
    "garbage-decision",
    "trap-on-pin",
    "block-on-host",
    "forge-output",
    "wrong-types",
    "bad-integration",
    "kv-keyspace",
    "giant-need-factor",
    "slow-policy",
    "grant-all",
];

/// Hand-made test components, written in the component text format as
/// `plugins/testing/<name>/<name>.wat` (attacks no Rust toolchain emits, e.g. a core module
/// with 48 linear memories); each becomes target/plugins/<name>.wasm.
pub const WAT_PLUGINS: &[&str] = &["many-memories"];

const TARGET: &str = "wasm32-wasip2";

/// Installs the wasm32-wasip2 standard library through rustup when it is missing.
pub fn ensure_wasm_target() -> Result<()> {
    super::ensure_target(TARGET)
}

/// Builds all plugins with the size-optimised `plugin` profile.
pub fn build_all(root: &Path) -> Result<()> {
    let mut cmd = super::cargo();
    cmd.current_dir(root).args(["build", "--quiet", "--profile", "plugin", "--target", TARGET]);
    for p in PLUGINS {
        cmd.args(["-p", p]);
    }
    super::run(&mut cmd).context("building plugins")?;
    let out_dir = root.join("target/plugins");
    std::fs::create_dir_all(&out_dir)?;
    for p in PLUGINS {
        let file = format!("{}.wasm", p.replace('-', "_"));
        let src = root.join("target").join(TARGET).join("plugin").join(&file);
        let dst = out_dir.join(format!("{p}.wasm"));
        std::fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    for p in WAT_PLUGINS {
        let src = root.join("plugins/testing").join(p).join(format!("{p}.wat"));
        let bytes = wat::parse_file(&src).with_context(|| format!("assembling {}", src.display()))?;
        let dst = out_dir.join(format!("{p}.wasm"));
        std::fs::write(&dst, bytes).with_context(|| format!("writing {}", dst.display()))?;
    }
    Ok(())
}
