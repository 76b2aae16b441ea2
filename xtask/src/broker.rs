//! Installs the Mosquitto broker the fleet tests run against (Debian packages
//! `mosquitto` and `mosquitto-clients`). It only installs; the tests start and
//! stop their own broker on a free loopback port.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Makes sure `mosquitto` is installed: silent when it is already on PATH (or in
/// /usr/sbin, where Debian puts it), otherwise `apt-get update` once and
/// `apt-get install -y mosquitto mosquitto-clients`.
pub fn ensure_installed() -> Result<()> {
    if mosquitto_present() {
        return Ok(());
    }
    eprintln!("xtask: installing the Mosquitto broker for the fleet tests (apt-get)");
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "--no-install-recommends", "mosquitto", "mosquitto-clients"])?;
    if !mosquitto_present() {
        bail!("apt-get installed mosquitto but no `mosquitto` binary was found on PATH or in /usr/sbin");
    }
    Ok(())
}

fn mosquitto_present() -> bool {
    let on_path = Command::new("mosquitto").arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    on_path || std::path::Path::new("/usr/sbin/mosquitto").exists()
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).status().context("running apt-get (is this a Debian machine, and are you root?)")?;
    if !status.success() {
        bail!("apt-get {} failed with {status}", args.join(" "));
    }
    Ok(())
}
