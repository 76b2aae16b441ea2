//! componentize-js for the JavaScript example and scaffold: `npm ci` of the JavaScript example's
//! own `package.json` + `package-lock.json` (`plugins/examples/js-policy`, componentize-js pinned
//! exactly, the whole tree by the lock file) into the repository's ignored `.cache/js`, so the
//! tests build with exactly what a new project's `npm ci` installs. Node.js and npm come from the
//! machine, or from Debian (whose bookworm Node 18 is too old: the error says so).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The release `gate plugin new --lang js` is written and tested against (keep equal to
/// `gate::scaffold::COMPONENTIZE_JS_VERSION` and to the example's `package.json`).
const COMPONENTIZE_JS: &str = "0.23.0";

/// The Node.js releases the pinned tree runs on: the strictest `engines` in the lock file
/// (rolldown and oxc-minify, through jco 1.35: `^20.19.0 || >=22.12.0`).
const NODE_SUPPORTED: &str = "20.19+ or 22.12+";

/// Whether Node `major.minor` is within [`NODE_SUPPORTED`].
fn node_supported((major, minor): (u32, u32)) -> bool {
    (major == 20 && minor >= 19) || (major, minor) >= (22, 12)
}

/// The JavaScript example, whose `package.json` and `package-lock.json` pin the toolchain.
fn example(root: &Path) -> PathBuf {
    root.join("plugins/examples/js-policy")
}

/// The folder the toolchain is installed into.
pub fn dir(root: &Path) -> PathBuf {
    root.join(".cache/js")
}

/// Makes sure `.cache/js/node_modules/.bin/componentize-js` is the pinned tree; idempotent, and
/// fast (no npm run) when the installed lock file equals the committed one.
pub fn ensure_componentize_js(root: &Path) -> Result<()> {
    let dir = dir(root);
    let src = example(root);
    let lock = std::fs::read(src.join("package-lock.json")).with_context(|| format!("reading {}/package-lock.json", src.display()))?;
    let installed = dir.join("node_modules/@bytecodealliance/componentize-js/package.json");
    let version_ok = std::fs::read_to_string(&installed).is_ok_and(|t| t.contains(&format!("\"version\": \"{COMPONENTIZE_JS}\"")));
    if version_ok && std::fs::read(dir.join("package-lock.json")).is_ok_and(|l| l == lock) && dir.join("node_modules/.bin/componentize-js").exists() {
        return Ok(());
    }
    let node = node()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in ["package.json", "package-lock.json"] {
        std::fs::copy(src.join(f), dir.join(f)).with_context(|| format!("copying {}/{f} into {}", src.display(), dir.display()))?;
    }
    eprintln!(
        "xtask: installing componentize-js {COMPONENTIZE_JS} (with jco, wizer and StarlingMonkey) from npm into {} with `npm ci`: about 160 packages, 390 MB unpacked; a minute or more (Node {})",
        dir.display(),
        node.version
    );
    crate::run(Command::new(&node.npm).current_dir(&dir).args(["ci", "--no-audit", "--no-fund", "--loglevel=warn"])).context("npm ci of the JavaScript example's package-lock.json")?;
    if !dir.join("node_modules/.bin/componentize-js").exists() {
        bail!("npm ci ran but {} has no node_modules/.bin/componentize-js", dir.display());
    }
    eprintln!("xtask: componentize-js {COMPONENTIZE_JS} is in {}", dir.display());
    Ok(())
}

/// A Node.js recent enough, with its npm.
struct Node {
    npm: PathBuf,
    version: String,
}

/// The machine's `node` and `npm`, else Debian's `nodejs` and `npm`; an old one is refused with
/// the version needed.
fn node() -> Result<Node> {
    if which("node").is_none() || which("npm").is_none() {
        crate::debian::ensure("Node.js and npm for the JavaScript plugin scaffold's test", &["/usr/bin/npm"], &["nodejs", "npm"])?;
    }
    let out = Command::new("node").arg("--version").output().context("running node --version")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let Some((major, minor)) = parse_version(&version) else {
        bail!("`node --version` printed `{version}`, not a version");
    };
    if !node_supported((major, minor)) {
        bail!(
            "Node.js {version} cannot run componentize-js {COMPONENTIZE_JS}: its dependencies need Node {NODE_SUPPORTED} (Debian bookworm's `nodejs` is 18.20, too old); install such a Node.js (e.g. Debian trixie's, or NodeSource's 20.x / 22.x) and run `cargo xtask setup` again"
        );
    }
    let npm = which("npm").context("npm is not on PATH (Debian: apt install npm)")?;
    Ok(Node { npm, version })
}

/// `v20.19.2` → (20, 19).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_are_read_and_compared() {
        assert_eq!(parse_version("v20.20.2"), Some((20, 20)));
        assert_eq!(parse_version("v18.20.4\n"), Some((18, 20)));
        assert_eq!(parse_version("nonsense"), None);
        let ok = |v: &str| parse_version(v).is_some_and(node_supported);
        assert!(ok("v20.20.2") && ok("v20.19.0") && ok("v22.12.0") && ok("v24.1.0"));
        assert!(!ok("v18.20.4") && !ok("v20.18.3") && !ok("v21.7.3") && !ok("v22.11.0"));
    }
}
