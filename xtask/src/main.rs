//! `cargo xtask`: the one place that orchestrates the mixed host / wasm build,
//! so a newcomer never builds plugins or fetches models by hand.

mod broker;
mod deb;
mod debian;
mod examples;
mod js;
mod models;
mod plugins;
mod python;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(about = "Build orchestration for the gate workspace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the wasm target, build every plugin, fetch and verify models, install the test broker and browser.
    Setup,
    /// Build every plugin for wasm32-wasip2, and the example policy in each language, into target/plugins/.
    Plugins,
    /// Fetch and verify the face models and ONNX Runtime into models/.
    Models,
    /// Set up, then run the demo gateway serving a recorded morning through the real plugins, and write the month's report.
    Demo {
        /// Extra arguments passed to `gate run`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test.
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then run the benchmarks reported in the README.
    Bench,
    /// Build the release binary and the plugins, then the Debian package target/debian/gate_<version>_<arch>.deb.
    Deb {
        /// Rust target triple to build for, e.g. aarch64-unknown-linux-gnu (default: this machine).
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(&root, Needs::Tests),
        Cmd::Plugins => plugins::build_all(&root).and_then(|()| examples::build_all(&root)),
        Cmd::Models => models::fetch(&root),
        Cmd::Demo { args } => {
            setup(&root, Needs::Demo)?;
            let mut cmd = cargo();
            cmd.current_dir(&root).args(["run", "--release", "--quiet", "-p", "gate", "--", "run", "--config", "configs/demo-site.toml", "--trace", "tests/traces/morning.jsonl"]);
            cmd.args(args);
            run(&mut cmd)?;
            // The demo ends as a property's month does: with the transparency report for residents.
            let out = root.join("target/demo-state/report-2026-11.html");
            let mut report = cargo();
            report.current_dir(&root).args(["run", "--release", "--quiet", "-p", "gate", "--", "report", "--config", "configs/demo-site.toml", "--period", "2026-11", "--out"]).arg(&out);
            run(&mut report)?;
            eprintln!("xtask: the month's transparency report (Chinese; `gate report --lang en` for English) is {}", out.display());
            Ok(())
        }
        Cmd::Test { args } => {
            setup(&root, Needs::Tests)?;
            check_aarch64(&root)?;
            let mut cmd = cargo();
            cmd.current_dir(&root).args(["test", "--release", "--workspace"]);
            cmd.args(args);
            run(&mut cmd)
        }
        Cmd::Deb { target } => {
            plugins::ensure_wasm_target()?;
            plugins::build_all(&root)?;
            if let Some(t) = &target {
                ensure_target(t)?;
            }
            let binary = deb::build_binary(&root, target.as_deref())?;
            let out_dir = root.join("target/debian");
            let inputs = deb::Inputs { root: &root, binary: &binary, plugins_dir: &root.join("target/plugins"), arch: deb::debian_arch(target.as_deref())?, out_dir: &out_dir, fast: false };
            let deb = deb::assemble(&inputs)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Bench => {
            setup(&root, Needs::Bench)?;
            let mut cmd = cargo();
            cmd.current_dir(&root).args(["run", "--release", "--quiet", "-p", "gate", "--", "bench", "--config", "configs/demo-site.toml"]);
            run(&mut cmd)
        }
    }
}

/// What a command needs set up beyond the plugins and models.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// The demo gateway: nothing more.
    Demo,
    /// The benchmarks: the example policy in every language (and their tools).
    Bench,
    /// The tests: the examples, the test broker and browser.
    Tests,
}

/// Everything a fresh machine with only the Rust toolchain needs; each step is idempotent.
fn setup(root: &Path, needs: Needs) -> Result<()> {
    plugins::ensure_wasm_target()?;
    plugins::build_all(root)?;
    models::fetch(root)?;
    if needs != Needs::Demo {
        examples::build_all(root)?;
    }
    if needs == Needs::Tests {
        broker::ensure_installed()?;
        broker::ensure_browser()?;
    }
    Ok(())
}

/// ARM gateways: the hardware layer (Linux GPIO and V4L2 backends included) must compile for
/// aarch64. A check needs only the target's standard library, no cross linker.
fn check_aarch64(root: &Path) -> Result<()> {
    const ARM: &str = "aarch64-unknown-linux-gnu";
    ensure_target(ARM)?;
    let mut cmd = cargo();
    cmd.current_dir(root).args(["check", "--quiet", "-p", "gate-hw", "--target", ARM, "--all-targets"]);
    run(&mut cmd).context("checking gate-hw for aarch64")
}

/// Installs a target's standard library through rustup when it is missing.
fn ensure_target(target: &str) -> Result<()> {
    let out = Command::new("rustc").args(["--print", "sysroot"]).output().context("running rustc")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if Path::new(&sysroot).join("lib/rustlib").join(target).exists() {
        return Ok(());
    }
    eprintln!("xtask: installing the {target} target with rustup");
    run(Command::new("rustup").args(["target", "add", target])).with_context(|| format!("rustup target add {target}"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the workspace root").to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
