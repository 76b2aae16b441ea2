//! componentize-py for the Python plugin scaffold's test: installed from PyPI into a virtual
//! environment in the repository's ignored `.cache/python`, pinned to the version the
//! scaffold is written against. Python 3.11+ comes from the machine, or from Debian.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The release `gate plugin new --lang python` is written and tested against (keep equal to
/// `gate::scaffold::COMPONENTIZE_PY_VERSION`).
const COMPONENTIZE_PY: &str = "0.25.1";

/// The virtual environment's folder.
pub fn venv(root: &Path) -> PathBuf {
    root.join(".cache/python")
}

/// Makes sure `.cache/python/bin/componentize-py` is the pinned release; idempotent.
pub fn ensure_componentize_py(root: &Path) -> Result<()> {
    let dir = venv(root);
    let tool = dir.join("bin/componentize-py");
    if let Ok(out) = Command::new(&tool).arg("--version").output() {
        if String::from_utf8_lossy(&out.stdout).split_whitespace().last() == Some(COMPONENTIZE_PY) {
            return Ok(());
        }
    }
    let python = python3()?;
    if !dir.join("bin/python").exists() {
        eprintln!("xtask: making a Python virtual environment in {}", dir.display());
        crate::run(Command::new(&python).args(["-m", "venv"]).arg(&dir)).context("python3 -m venv (Debian: apt install python3-venv)")?;
    }
    eprintln!("xtask: installing componentize-py {COMPONENTIZE_PY} from PyPI into {} (about 40 MB)", dir.display());
    crate::run(Command::new(dir.join("bin/python")).args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &format!("componentize-py=={COMPONENTIZE_PY}")]))
        .context("pip install componentize-py")?;
    Ok(())
}

/// A Python of 3.11 or later: the machine's, else Debian's `python3` and `python3-venv`.
fn python3() -> Result<PathBuf> {
    let recent = |p: &Path| Command::new(p).args(["-c", "import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)"]).status().is_ok_and(|s| s.success());
    let which = PathBuf::from("python3");
    if recent(&which) {
        return Ok(which);
    }
    crate::debian::ensure("Python 3 for the Python plugin scaffold's test", &["/usr/bin/python3"], &["python3", "python3-venv"])?;
    let debian = PathBuf::from("/usr/bin/python3");
    if recent(&debian) {
        return Ok(debian);
    }
    bail!("no Python 3.11 or later (with venv) on this machine; componentize-py {COMPONENTIZE_PY} needs one")
}
