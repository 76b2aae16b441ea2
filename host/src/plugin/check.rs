//! `gate plugin check`: what a component is, before a site trusts it.

use super::bindings::{integration::IntegrationPluginPre, policy::PolicyPluginPre};
use super::{PluginError, Runtime};
use crate::config::World;
use std::path::Path;

/// What `gate plugin check` prints.
#[derive(Debug)]
pub struct CheckReport {
    pub world: World,
    pub size: usize,
    pub sha256: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Compiles a component and finds which contract world it satisfies.
pub fn check(rt: &Runtime, path: &Path) -> Result<CheckReport, PluginError> {
    let loaded = rt.load(path)?;
    let ty = loaded.component.component_type();
    let imports: Vec<String> = ty.imports(rt.engine()).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(rt.engine()).map(|(n, _)| n.to_string()).collect();
    let as_policy = rt
        .policy_linker
        .instantiate_pre(&loaded.component)
        .and_then(PolicyPluginPre::new);
    let world = match as_policy {
        Ok(_) => World::Policy,
        Err(policy_err) => match rt.integration_linker.instantiate_pre(&loaded.component).and_then(IntegrationPluginPre::new) {
            Ok(_) => World::Integration,
            Err(integration_err) => {
                return Err(PluginError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!(
                        "fits neither world of gate:plugin@0.1.0.\n  as policy-plugin: {policy_err:#}\n  as integration-plugin: {integration_err:#}"
                    ),
                })
            }
        },
    };
    Ok(CheckReport { world, size: loaded.size, sha256: loaded.sha256, imports, exports })
}
