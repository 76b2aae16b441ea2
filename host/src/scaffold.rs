//! Tools for plugin authors outside this repository: `gate plugin wit` writes the contract for
//! other languages' binding generators, `gate plugin new` writes a ready project: a copy of the
//! example of its language in `plugins/examples/`, embedded in the binary (so the gate binary
//! alone is enough to start), renamed.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// The contract files, embedded at build time: (file name, text).
pub const CONTRACT_FILES: &[(&str, &str)] = &[("gate-plugin.wit", include_str!("../../wit/gate-plugin.wit"))];

/// Where generated projects get the SDK when no local copy is given or found: a placeholder
/// for the repository the site got gate from (README, "Writing plugins outside this repository").
pub const SDK_GIT_PLACEHOLDER: &str = "https://git.example.com/gate.git";

/// A scaffolding step that failed: bad input (exit 2) or the file system.
#[derive(Debug, Error)]
pub enum ScaffoldError {
    #[error("{0}")]
    Input(String),
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// The languages `gate plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust: cargo builds it for wasm32-wasip2 with the gate plugin SDK
    Rust,
    /// Python 3.11+: componentize-py builds it from app.py and the contract in wit/
    Python,
    /// JavaScript (Node.js 20.19+): componentize-js builds it from app.js and the contract in wit/
    Js,
}

impl Lang {
    /// Every language with an example and a scaffold.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// Its name on the command line (`--lang`), in `plugins/examples/<name>-policy` and in
    /// `target/plugins/examples/<name>/`, where `cargo xtask plugins` puts its example.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

/// The componentize-py release the Python scaffold is written and tested against (its README
/// and `gate plugin new` name it).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The componentize-js release the JavaScript scaffold is written and tested against (its
/// `package.json` pins it; `cargo xtask setup` installs that lock file into `.cache/js`).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The Node.js releases the JavaScript scaffold's pinned toolchain runs on (its lock file's
/// strictest `engines`, which the example's `package.json` states).
pub const NODE_VERSIONS: &str = "^20.19.0 || >=22.12.0";

/// Which world the project implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A policy plugin: decides access events (world `policy-plugin`)
    Policy,
}

/// How a generated Rust project depends on the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// A local `plugins/sdk` directory (absolute).
    Path(PathBuf),
    /// A git repository holding `plugins/sdk`.
    Git(String),
}

impl SdkSource {
    /// The dependency line for Cargo.toml.
    fn dependency(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        match self {
            SdkSource::Path(p) => format!("gate-plugin-sdk = {{ path = {} }}", quote(&p.to_string_lossy())),
            SdkSource::Git(url) => format!("# Replace the URL by the gate repository you build plugins against.\ngate-plugin-sdk = {{ git = {} }}", quote(url)),
        }
    }
}

/// Writes the contract files into `dir` (created if missing); returns the files written.
pub fn write_wit(dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    std::fs::create_dir_all(dir).map_err(|source| ScaffoldError::Write { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for (name, text) in CONTRACT_FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| ScaffoldError::Write { path: path.clone(), source })?;
        out.push(path);
    }
    Ok(out)
}

/// The SDK a new project should use: `--sdk`, else the `plugins/sdk` of the gate checkout the
/// running binary was built in (found upwards from the executable), else the git placeholder.
pub fn find_sdk(given: Option<&Path>, exe: Option<&Path>) -> Result<SdkSource, ScaffoldError> {
    if let Some(p) = given {
        let dir = std::path::absolute(p).map_err(|e| ScaffoldError::Input(format!("--sdk {}: {e}", p.display())))?;
        if !is_sdk(&dir) {
            return Err(ScaffoldError::Input(format!("--sdk {}: not the gate plugin SDK (no Cargo.toml of `gate-plugin-sdk` there)", p.display())));
        }
        return Ok(SdkSource::Path(dir));
    }
    let found = exe.into_iter().flat_map(Path::ancestors).map(|a| a.join("plugins/sdk")).find(|d| is_sdk(d));
    Ok(match found {
        Some(d) => SdkSource::Path(d),
        None => SdkSource::Git(SDK_GIT_PLACEHOLDER.into()),
    })
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("name = \"gate-plugin-sdk\""))
}

/// A project name: 1..=64 of lower-case ASCII letters, digits and `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let ok =
        (1..=64).contains(&name.len()) && name.starts_with(|c: char| c.is_ascii_lowercase()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ScaffoldError::Input(format!("plugin name `{name}`: use 1 to 64 lower-case letters, digits and `-`, starting with a letter (e.g. `maple-court-policy`)")))
    }
}

/// One file of an example project: (path in the new project, text of the example).
type Template = (&'static str, &'static str);

/// The examples in `plugins/examples/` are real projects, built and replayed by this
/// repository's own build; a new project is a copy with the name (and, for Rust, the SDK
/// dependency) replaced. This is the name they carry.
pub const EXAMPLE_NAME: &str = "example-policy";

/// The Rust example's SDK dependency, replaced by the new project's [`SdkSource`].
const EXAMPLE_SDK_DEP: &str = "gate-plugin-sdk = { path = \"../../sdk\" }";

/// The sample trace and its sidecar, shared by the examples of every language.
const SAMPLE: &[Template] =
    &[("tests/sample.jsonl", include_str!("../../plugins/examples/tests/sample.jsonl")), ("tests/sample.site.toml", include_str!("../../plugins/examples/tests/sample.site.toml"))];

const RUST_POLICY: &[Template] = &[
    ("Cargo.toml", include_str!("../../plugins/examples/rust-policy/Cargo.toml")),
    (".gitignore", include_str!("../../plugins/examples/rust-policy/.gitignore")),
    ("README.md", include_str!("../../plugins/examples/rust-policy/README.md")),
    ("src/lib.rs", include_str!("../../plugins/examples/rust-policy/src/lib.rs")),
];

const PYTHON_POLICY: &[Template] = &[
    ("app.py", include_str!("../../plugins/examples/python-policy/app.py")),
    ("test_app.py", include_str!("../../plugins/examples/python-policy/test_app.py")),
    (".gitignore", include_str!("../../plugins/examples/python-policy/.gitignore")),
    ("README.md", include_str!("../../plugins/examples/python-policy/README.md")),
];

const JS_POLICY: &[Template] = &[
    ("package.json", include_str!("../../plugins/examples/js-policy/package.json")),
    ("package-lock.json", include_str!("../../plugins/examples/js-policy/package-lock.json")),
    ("rules.js", include_str!("../../plugins/examples/js-policy/rules.js")),
    ("rules.test.js", include_str!("../../plugins/examples/js-policy/rules.test.js")),
    ("app.js", include_str!("../../plugins/examples/js-policy/app.js")),
    (".gitignore", include_str!("../../plugins/examples/js-policy/.gitignore")),
    ("README.md", include_str!("../../plugins/examples/js-policy/README.md")),
];

/// The example project of one language and kind.
fn example(lang: Lang, kind: Kind) -> &'static [Template] {
    match (lang, kind) {
        (Lang::Rust, Kind::Policy) => RUST_POLICY,
        (Lang::Python, Kind::Policy) => PYTHON_POLICY,
        (Lang::Js, Kind::Policy) => JS_POLICY,
    }
}

/// Writes a new project `dir` (which must not exist yet, or be empty) named `name`.
pub fn new_project(dir: &Path, name: &str, lang: Lang, kind: Kind, sdk: &SdkSource) -> Result<Vec<PathBuf>, ScaffoldError> {
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(ScaffoldError::Input(format!("{}: already exists and is not empty; nothing was written", dir.display())));
    }
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    for (rel, text) in example(lang, kind).iter().chain(SAMPLE) {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ScaffoldError::Write { path: parent.to_path_buf(), source })?;
        }
        let body = text.replace(EXAMPLE_SDK_DEP, &sdk.dependency()).replace(EXAMPLE_NAME, name).replace(&EXAMPLE_NAME.replace('-', "_"), &crate_name);
        std::fs::write(&path, body).map_err(|source| ScaffoldError::Write { path: path.clone(), source })?;
        written.push(path);
    }
    // Other languages' binding generators read the contract from the project itself.
    if lang != Lang::Rust {
        written.extend(write_wit(&dir.join("wit"))?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_contract_is_the_one_the_host_serves() {
        let (_, text) = CONTRACT_FILES[0];
        assert!(text.contains(&format!("package gate:plugin@{};", crate::plugin::CONTRACT_VERSION)));
        let dir = tempfile::tempdir().expect("tmp");
        let files = write_wit(&dir.path().join("wit")).expect("write");
        assert_eq!(std::fs::read_to_string(&files[0]).expect("read"), text);
    }

    #[test]
    fn every_example_is_written_against_the_contract_the_host_serves() {
        let current = format!("gate:plugin@{}", crate::plugin::CONTRACT_VERSION);
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            let files = example(lang, Kind::Policy);
            assert!(files.iter().any(|(_, t)| t.contains(&current)), "{lang:?}: no file names {current}");
            for (rel, text) in files {
                for (i, _) in text.match_indices("gate:plugin@") {
                    assert!(text[i..].starts_with(&current), "{lang:?} {rel} names another contract version than {current}");
                }
            }
        }
        let (_, cargo) = RUST_POLICY[0];
        assert!(cargo.contains(EXAMPLE_SDK_DEP), "the Rust example's SDK line is what new projects replace");
    }

    #[test]
    fn the_javascript_example_pins_the_componentize_js_the_scaffold_names() {
        let (_, package) = JS_POLICY[0];
        assert!(package.contains(&format!("\"@bytecodealliance/componentize-js\": \"{COMPONENTIZE_JS_VERSION}\"")), "{package}");
        assert!(package.contains(&format!("\"node\": \"{NODE_VERSIONS}\"")), "{package}");
        let (_, lock) = JS_POLICY[1];
        assert!(lock.contains(&format!("\"node_modules/@bytecodealliance/componentize-js\": {{\n      \"version\": \"{COMPONENTIZE_JS_VERSION}\"")), "the lock file pins another componentize-js");
    }

    #[test]
    fn a_javascript_project_is_the_example_renamed_with_the_contract_beside_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("maple-js");
        renamed_project(&p, "maple-js", Lang::Js);
        let package = std::fs::read_to_string(p.join("package.json")).expect("read");
        assert!(package.contains("\"name\": \"maple-js\"") && package.contains("--out maple-js.wasm app.js"), "{package}");
        assert!(p.join("wit/gate-plugin.wit").is_file() && p.join("tests/sample.jsonl").is_file());
    }

    /// A new project at `p`, none of whose files keeps the example's name or SDK path.
    fn renamed_project(p: &Path, name: &str, lang: Lang) {
        let files = new_project(p, name, lang, Kind::Policy, &SdkSource::Git(SDK_GIT_PLACEHOLDER.into())).expect("new");
        for f in &files {
            let t = std::fs::read_to_string(f).expect("read");
            assert!(!t.contains("example-policy") && !t.contains("example_policy") && !t.contains("../../sdk"), "{} keeps the example's name or SDK path", f.display());
        }
    }

    #[test]
    fn a_language_has_one_name_on_the_command_line_and_in_the_examples() {
        use clap::ValueEnum;
        assert_eq!(Lang::value_variants(), Lang::ALL.as_slice());
        for lang in Lang::ALL {
            assert_eq!(lang.to_possible_value().expect("a --lang value").get_name(), lang.name());
            assert!(!example(lang, Kind::Policy).is_empty(), "{lang:?} has no example");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("maple-court-policy").is_ok());
        for bad in ["", "Policy", "9lives", "a_b", "a-", "../x", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_project_is_the_example_renamed_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("my-policy");
        renamed_project(&p, "my-policy", Lang::Rust);
        let cargo = std::fs::read_to_string(p.join("Cargo.toml")).expect("read");
        assert!(cargo.contains("name = \"my-policy\"") && cargo.contains(SDK_GIT_PLACEHOLDER), "{cargo}");
        let lib = std::fs::read_to_string(p.join("src/lib.rs")).expect("read");
        assert!(lib.contains("my-policy: a site policy"), "{lib}");
        let e = new_project(&p, "my-policy", Lang::Rust, Kind::Policy, &SdkSource::Git(SDK_GIT_PLACEHOLDER.into())).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
    }

    #[test]
    fn the_sdk_is_found_from_the_binary_of_a_checkout() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("root");
        let exe = root.join("target/release/gate");
        assert_eq!(find_sdk(None, Some(&exe)).expect("sdk"), SdkSource::Path(root.join("plugins/sdk")));
        assert_eq!(find_sdk(None, Some(Path::new("/usr/bin/gate"))).expect("sdk"), SdkSource::Git(SDK_GIT_PLACEHOLDER.into()));
        assert!(find_sdk(Some(Path::new("/nonexistent")), None).is_err());
    }
}
