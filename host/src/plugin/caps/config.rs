//! `gate:plugin/config`: the plugin's own settings from the site configuration.

use crate::plugin::bindings::policy::gate::plugin::config::Host;
use std::collections::BTreeMap;

/// The config capability: read-only settings.
pub struct ConfigCap {
    pub settings: BTreeMap<String, String>,
}

impl Host for ConfigCap {
    fn get(&mut self, key: String) -> Option<String> {
        self.settings.get(&key).cloned()
    }
}
