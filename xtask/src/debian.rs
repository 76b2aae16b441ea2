//! Debian packages the tests need (the broker, the browser that renders the report), installed
//! with apt-get when missing. Only installs; the tests start and stop what they use.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Installs `packages` when none of `present` exists, then checks again; `what` names the
/// need in the progress line.
pub fn ensure(what: &str, present: &[&str], packages: &[&str]) -> Result<()> {
    if present.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    eprintln!("xtask: installing {what} (apt-get install {})", packages.join(" "));
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args)?;
    if !present.iter().any(|p| Path::new(p).exists()) {
        bail!("apt-get installed {} but none of {} exists", packages.join(" "), present.join(", "));
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get (is this a Debian machine, and are you root?)")?;
    if !status.success() {
        bail!("apt-get {} failed with {status}", args.join(" "));
    }
    Ok(())
}
