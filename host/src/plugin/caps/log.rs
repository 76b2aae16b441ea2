//! `gate:plugin/log`: rate-limited logging into the host's `tracing` log.

use super::SharedWindow;
use crate::clock::Clock;
use crate::plugin::bindings::policy::gate::plugin::log::{Host, Level};

/// Longest message kept; the rest is cut so a plugin cannot bloat the log.
const MAX_MESSAGE: usize = 512;

/// The log capability of one plugin instance.
pub struct LogCap {
    plugin: String,
    clock: Clock,
    window: SharedWindow,
    /// Lines dropped by the rate limit since the instance started.
    pub dropped: u64,
}

impl LogCap {
    /// `window` is the plugin's own, shared by all its instances.
    pub fn new(plugin: &str, clock: Clock, window: SharedWindow) -> Self {
        LogCap { plugin: plugin.to_string(), clock, window, dropped: 0 }
    }
}

impl Host for LogCap {
    fn log(&mut self, level: Level, message: String) {
        if !self.window.take(self.clock.now_ms()) {
            self.dropped += 1;
            return;
        }
        let wanted = match level {
            Level::Debug => tracing::enabled!(target: "gate::plugin_log", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "gate::plugin_log", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "gate::plugin_log", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "gate::plugin_log", tracing::Level::ERROR),
        };
        // A line nobody reads is not cleaned or formatted (it still counts against the budget).
        if !wanted {
            return;
        }
        let msg = crate::plugin::text::sanitize(&message, MAX_MESSAGE);
        let plugin = self.plugin.as_str();
        match level {
            Level::Debug => tracing::debug!(target: "gate::plugin_log", plugin, "{msg}"),
            Level::Info => tracing::info!(target: "gate::plugin_log", plugin, "{msg}"),
            Level::Warn => tracing::warn!(target: "gate::plugin_log", plugin, "{msg}"),
            Level::Error => tracing::error!(target: "gate::plugin_log", plugin, "{msg}"),
        }
    }
}
