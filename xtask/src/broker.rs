//! Installs the Mosquitto broker the fleet tests run against (Debian packages
//! `mosquitto` and `mosquitto-clients`). It only installs; the tests start and
//! stop their own broker on a free loopback port.

use anyhow::Result;

/// Makes sure `mosquitto` is installed (Debian puts it in /usr/sbin).
pub fn ensure_installed() -> Result<()> {
    crate::debian::ensure("the Mosquitto broker for the fleet tests", &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"], &["mosquitto", "mosquitto-clients"])
}

/// Makes sure headless Chromium and a Chinese font are installed: the transparency report's
/// test renders the page in a real browser and looks at the screenshot.
pub fn ensure_browser() -> Result<()> {
    crate::debian::ensure("Chromium for the report test", &["/usr/bin/chromium"], &["chromium"])?;
    crate::debian::ensure("a Chinese font for the report test", &["/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"], &["fonts-wqy-microhei"])
}
