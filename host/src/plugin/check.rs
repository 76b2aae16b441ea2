//! `gate plugin check`: what a component is, before a site trusts it.

use super::bindings::policy::gate::plugin::types::{AccessEvent, Decision, GateEvent};
use super::bindings::{integration::IntegrationPluginPre, policy::PolicyPluginPre};
use super::runtime::State;
use super::{PluginError, Runtime, CONTRACT_VERSION};
use crate::config::World;
use std::path::Path;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};

/// The interface each world exports and the function in it.
const POLICY_EXPORT: (&str, &str) = ("gate:plugin/policy@0.2.0", "decide");
const HANDLER_EXPORT: (&str, &str) = ("gate:plugin/handler@0.2.0", "on-event");

/// Proves a linked component exports its world's function with exactly the
/// contract's types. The generated `*Pre::new` only finds exports by name (types
/// are checked when an instance is first loaded), so without this a component
/// exporting `decide(u32) -> u32` would pass. Uses the same check the generated
/// bindings run at load (`ComponentFunc::typecheck`, wasmtime pinned at =48.0.8),
/// without running any plugin code.
pub fn typecheck_exports(pre: &InstancePre<State>, world: World) -> wasmtime::Result<()> {
    let component = pre.component();
    let ty = pre.instance_type();
    let (iface, name) = match world {
        World::Policy => POLICY_EXPORT,
        World::Integration => HANDLER_EXPORT,
    };
    let (_, inst) = component.get_export(None, iface).ok_or_else(|| wasmtime::format_err!("no export `{iface}` found"))?;
    let (item, _) = component.get_export(Some(&inst), name).ok_or_else(|| wasmtime::format_err!("no export `{name}` in `{iface}`"))?;
    let ComponentItem::ComponentFunc(func) = item else {
        wasmtime::bail!("export `{name}` of `{iface}` is not a function");
    };
    let checked = match world {
        World::Policy => func.typecheck::<(&AccessEvent,), (Decision,)>(&ty),
        World::Integration => func.typecheck::<(&GateEvent,), (Result<(), String>,)>(&ty),
    };
    checked.map_err(|e| e.context(format!("export `{iface}#{name}` does not have the contract's type")))
}

/// Refuses a component that names another version of the contract in its imports or
/// exports (one built with an older SDK), saying which, before linking would fail with a
/// less helpful "import not found".
pub fn check_version(component: &Component) -> wasmtime::Result<()> {
    let ty = component.component_type();
    let engine = component.engine();
    let names: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).chain(ty.exports(engine).map(|(n, _)| n.to_string())).collect();
    let other = names.iter().filter_map(|n| n.strip_prefix("gate:plugin/")).filter_map(|n| n.split_once('@')).map(|(_, v)| v).find(|v| *v != CONTRACT_VERSION);
    match other {
        Some(v) => wasmtime::bail!("built against gate:plugin@{v}, but this host serves gate:plugin@{CONTRACT_VERSION}; rebuild it with this release's plugin SDK (plugins/sdk)"),
        None => Ok(()),
    }
}

/// What `gate plugin check` prints.
#[derive(Debug)]
pub struct CheckReport {
    pub world: World,
    pub size: usize,
    pub sha256: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Compiles a component, finds which contract world it satisfies and starts it once.
/// `limits` are the site's (or the defaults): size, compile budget, memory cap and
/// deadline apply.
pub fn check(rt: &Runtime, path: &Path, limits: &crate::config::Limits) -> Result<CheckReport, PluginError> {
    let loaded = rt.load(path, limits)?;
    check_version(&loaded.component).map_err(|e| PluginError::Invalid { path: path.to_path_buf(), reason: format!("{e:#}") })?;
    let ty = loaded.component.component_type();
    let imports: Vec<String> = ty.imports(rt.engine()).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(rt.engine()).map(|(n, _)| n.to_string()).collect();
    let as_policy = rt.policy_linker.instantiate_pre(&loaded.component).and_then(|ip| typecheck_exports(&ip, World::Policy).and_then(|()| PolicyPluginPre::new(ip)));
    let world = match as_policy {
        Ok(_) => World::Policy,
        Err(policy_err) => match rt.integration_linker.instantiate_pre(&loaded.component).and_then(|ip| typecheck_exports(&ip, World::Integration).and_then(|()| IntegrationPluginPre::new(ip))) {
            Ok(_) => World::Integration,
            Err(integration_err) => {
                return Err(PluginError::Invalid {
                    path: path.to_path_buf(),
                    reason: format!("fits neither world of gate:plugin@{CONTRACT_VERSION}.\n  as policy-plugin: {policy_err:#}\n  as integration-plugin: {integration_err:#}"),
                })
            }
        },
    };
    starts_within_limits(rt, path, &loaded, world, limits)?;
    Ok(CheckReport { world, size: loaded.size, sha256: loaded.sha256, imports, exports })
}

/// Instantiates the component once, as the gateway would for a call, under `limits`
/// (memory cap across all its memories and tables, deadline): its start functions run,
/// no export is called. A component that cannot start within the limits is refused with
/// the reason (e.g. the memory cap and its key), instead of failing on every call later.
fn starts_within_limits(rt: &Runtime, path: &Path, loaded: &super::Loaded, world: World, limits: &crate::config::Limits) -> Result<(), PluginError> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
    let cfg = crate::config::PluginConfig { name, path: path.to_path_buf(), world, settings: Default::default(), prefix: None };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0);
    let mut slot = super::Slot::new(rt, &cfg, loaded, limits, crate::clock::Clock::new(now, 0), Default::default())?;
    slot.instantiate_fresh(rt).map(|_| ()).map_err(|fault| PluginError::DoesNotStart { path: path.to_path_buf(), fault })
}
