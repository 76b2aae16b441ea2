//! The example site policy in every language `gate plugin new` writes (`plugins/examples/`),
//! built as a site integrator builds it: each copied into `target/examples/<lang>-policy/` with
//! the contract, built with its own language's tools (cached in `.cache/`), and collected as
//! `target/plugins/examples/<lang>/example-policy.wasm` for the tests and `gate bench` (one
//! name, so that every language's decisions read `by: plugin:example-policy`).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The languages with an example, as `plugins/examples/<lang>-policy` and `target/plugins/examples/<lang>/`
/// (every `gate::scaffold::Lang`: tests/examples.rs fails when one is missing here).
pub const LANGS: &[&str] = &["rust", "python", "js"];

/// Builds every example; a language whose component is newer than its sources is skipped.
pub fn build_all(root: &Path) -> Result<()> {
    crate::python::ensure_componentize_py(root)?;
    crate::js::ensure_componentize_js(root)?;
    for lang in LANGS {
        let out = root.join("target/plugins/examples").join(lang).join("example-policy.wasm");
        let src = root.join("plugins/examples").join(format!("{lang}-policy"));
        // Rust is always handed to cargo, which knows what changed; the others are rebuilt when
        // the example, the sample, the contract or their own tool changed.
        let tool = match *lang {
            "python" => Some(crate::python::venv(root).join("bin/componentize-py")),
            "js" => Some(crate::js::dir(root).join("package-lock.json")),
            _ => None,
        };
        if let Some(tool) = tool {
            if newer_than_all(&out, &[src.clone(), root.join("plugins/examples/tests"), root.join("wit"), tool]) {
                continue;
            }
        }
        eprintln!("xtask: building the {lang} example policy (plugins/examples/{lang}-policy)");
        let dir = root.join("target/examples").join(format!("{lang}-policy"));
        copy_project(root, &src, &dir)?;
        let built = match *lang {
            "rust" => build_rust(root, &dir)?,
            "python" => build_python(root, &dir)?,
            "js" => build_js(root, &dir)?,
            other => anyhow::bail!("no build for the {other} example"),
        };
        std::fs::create_dir_all(out.parent().unwrap_or(root))?;
        std::fs::copy(&built, &out).with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    }
    Ok(())
}

/// A fresh copy of the example, with the shared sample trace in `tests/` and the contract in
/// `wit/`, as `gate plugin new` lays a project out.
fn copy_project(root: &Path, src: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    copy_dir(src, dir)?;
    copy_dir(&root.join("plugins/examples/tests"), &dir.join("tests"))?;
    copy_dir(&root.join("wit"), &dir.join("wit"))
}

/// What an author's own build leaves in an example folder: never copied, never an input.
const SKIPPED: &[&str] = &["target", "node_modules"];

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if SKIPPED.iter().any(|s| entry.file_name() == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// cargo, outside the workspace, pinned by the workspace's lock file (whose crates the
/// workspace's own build has already fetched); shares its target folder with the scaffold test.
fn build_rust(root: &Path, dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)?;
    let sdk = toml::Value::String(root.join("plugins/sdk").display().to_string()).to_string();
    std::fs::write(&manifest, text.replace("path = \"../../sdk\"", &format!("path = {sdk}")))?;
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
    let target = root.join("target/plugin-author");
    crate::run(crate::cargo().current_dir(dir).args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"]).env("CARGO_TARGET_DIR", &target)).context("building the Rust example")?;
    Ok(target.join("wasm32-wasip2/release/example_policy.wasm"))
}

/// componentize-py from `.cache/python` (installed by `python::ensure_componentize_py`).
fn build_python(root: &Path, dir: &Path) -> Result<PathBuf> {
    let tool = crate::python::venv(root).join("bin/componentize-py");
    let out = dir.join("example-policy.wasm");
    crate::run(Command::new(tool).current_dir(dir).args(["-d", "wit", "-w", "policy-plugin", "componentize", "app", "-o"]).arg(&out)).context("componentize-py of the Python example")?;
    Ok(out)
}

/// The example's own `npm run build` (componentize-js, its flags in `package.json`), with the
/// tool from `.cache/js` (installed by `js::ensure_componentize_js`) on the PATH in place of
/// the project's `node_modules/`.
fn build_js(root: &Path, dir: &Path) -> Result<PathBuf> {
    let bin = crate::js::dir(root).join("node_modules/.bin");
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths)))?;
    crate::run(Command::new("npm").current_dir(dir).args(["run", "--silent", "build"]).env("PATH", path)).context("npm run build of the JavaScript example")?;
    Ok(dir.join("example-policy.wasm"))
}

/// Whether `out` exists and is newer than every file under `inputs`.
fn newer_than_all(out: &Path, inputs: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else { return false };
    fn newest(p: &Path) -> Option<std::time::SystemTime> {
        let meta = std::fs::metadata(p).ok()?;
        if !meta.is_dir() {
            return meta.modified().ok();
        }
        std::fs::read_dir(p).ok()?.filter_map(|e| e.ok()).filter(|e| !SKIPPED.iter().any(|s| e.file_name() == *s)).filter_map(|e| newest(&e.path())).max()
    }
    inputs.iter().all(|i| newest(i).is_some_and(|t| t < built))
}
