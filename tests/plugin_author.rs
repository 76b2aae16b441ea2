//! A site integrator's loop, from outside this repository: `gate plugin new` makes a project in
//! an empty temp dir, cargo builds it there (the SDK by path, nothing copied), and `gate plugin
//! test` runs the component against the project's own sample trace; a broken rule then fails
//! with a diff. Also `gate plugin wit` and the harness's bad-input errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::{gate, root, text};

/// Where the scaffolded projects build: kept between runs so a re-run compiles only the project.
fn target_dir() -> PathBuf {
    root().join("target/plugin-author")
}

fn cargo(dir: &Path, args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo).current_dir(dir).args(args).arg("--offline").env("CARGO_TARGET_DIR", target_dir()).output().expect("run cargo")
}

fn gate_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gate")).current_dir(dir).args(args).output().expect("run gate")
}

#[test]
fn a_new_rust_project_builds_outside_the_workspace_passes_its_sample_trace_and_a_broken_rule_fails_with_a_diff() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sdk = root().join("plugins/sdk");
    let o = gate_in(tmp.path(), &["plugin", "new", "--lang", "rust", "site-policy", "--sdk", sdk.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    let project = tmp.path().join("site-policy");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("[profile.release]") && manifest.contains(&format!("path = \"{}\"", sdk.display())), "{manifest}");
    // Offline, cargo resolves from what is cached; the workspace's lock file makes it pick the
    // versions this repository's own build fetched, on any machine.
    std::fs::copy(root().join("Cargo.lock"), project.join("Cargo.lock")).expect("copy Cargo.lock");

    // The rules' own unit tests, natively.
    let o = cargo(&project, &["test"]);
    assert!(o.status.success(), "cargo test of the new project:\n{}", text(&o));
    assert!(text(&o).contains("test result: ok. 5 passed"), "{}", text(&o));

    let build = |project: &Path| {
        let o = cargo(project, &["build", "--release", "--target", "wasm32-wasip2"]);
        assert!(o.status.success(), "cargo build of the new project:\n{}", text(&o));
    };
    build(&project);
    let wasm = target_dir().join("wasm32-wasip2/release/site_policy.wasm");
    let o = gate_in(&project, &["plugin", "check", wasm.to_str().expect("utf-8")]);
    assert!(o.status.success() && text(&o).contains("gate:plugin/policy-plugin@0.2.0"), "{}", text(&o));

    let wasm = wasm.to_str().expect("utf-8");
    sample_passes(&project, wasm, "site-policy");
    break_the_unknown_card_rule(&project.join("src/lib.rs"), "return Decision::deny(\"unknown credential\");", "return Decision::deny(\"no entry\");");
    build(&project);
    sample_shows_the_broken_rule(&project, wasm);
}

/// `gate plugin test` of a new project's component against its own sample trace: it matches.
fn sample_passes(project: &Path, wasm: &str, name: &str) {
    let o = gate_in(project, &["plugin", "test", wasm, "--trace", "tests/sample.jsonl"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("replay matches the") && out.contains(&format!("plugin:{name}")), "{out}");
    assert!(out.contains("NEED  card|pin|nfc") && out.contains("outside hours") && out.contains("liveness check failed"), "{out}");
}

/// Breaks a rule in the project's source: an unknown card now gets another reason.
fn break_the_unknown_card_rule(source: &Path, rule: &str, broken_rule: &str) {
    let src = std::fs::read_to_string(source).expect("read the source");
    let broken = src.replacen(rule, broken_rule, 1);
    assert_ne!(src, broken, "the rule to break is in the template");
    std::fs::write(source, broken).expect("write the source");
}

/// The sample trace catches the broken rule: exit 1 and a diff naming both reasons.
fn sample_shows_the_broken_rule(project: &Path, wasm: &str) {
    let o = gate_in(project, &["plugin", "test", wasm, "--trace", "tests/sample.jsonl"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("replay differs from the trace's expected outputs"), "{out}");
    assert!(out.lines().any(|l| l.starts_with('-') && l.contains("\"reason\":\"unknown credential\"")), "{out}");
    assert!(out.lines().any(|l| l.starts_with('+') && l.contains("\"reason\":\"no entry\"")), "{out}");
}

/// componentize-py from `cargo xtask setup` (`.cache/python`, pinned).
fn python_tool(name: &str) -> PathBuf {
    let p = root().join(".cache/python/bin").join(name);
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` (cargo xtask test does)", p.display());
    p
}

/// `gate plugin new --lang LANG NAME` in `dir`, for a language whose tools read the contract
/// from the project: it says how to build (`build_hint`) and writes the contract the host serves.
fn new_project_with_contract(dir: &Path, lang: &str, name: &str, build_hint: &str) -> PathBuf {
    let o = gate_in(dir, &["plugin", "new", "--lang", lang, name]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(build_hint), "{}", text(&o));
    let project = dir.join(name);
    assert_eq!(std::fs::read_to_string(project.join("wit/gate-plugin.wit")).expect("wit"), std::fs::read_to_string(root().join("wit/gate-plugin.wit")).expect("wit"));
    project
}

fn run_in(dir: &Path, program: &Path, args: &[&str]) -> Output {
    Command::new(program).current_dir(dir).args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

#[test]
fn a_new_python_project_passes_its_unit_tests_and_its_sample_trace_and_a_broken_rule_fails_with_a_diff() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = new_project_with_contract(tmp.path(), "python", "py-policy", "componentize-py -d wit -w policy-plugin");
    let (cpy, python) = (python_tool("componentize-py"), python_tool("python"));

    // The contract's types for Python, then the rules' own unit tests, natively.
    let o = run_in(&project, &cpy, &["-d", "wit", "-w", "policy-plugin", "bindings", "."]);
    assert!(o.status.success(), "bindings:\n{}", text(&o));
    let o = run_in(&project, &python, &["-m", "unittest", "-v", "test_app"]);
    assert!(o.status.success() && text(&o).contains("Ran 5 tests"), "unit tests of the new project:\n{}", text(&o));

    let build = |project: &Path| {
        let o = run_in(project, &cpy, &["-d", "wit", "-w", "policy-plugin", "componentize", "app", "-o", "py-policy.wasm"]);
        assert!(o.status.success(), "componentize:\n{}", text(&o));
    };
    build(&project);
    sample_passes(&project, "py-policy.wasm", "py-policy");
    break_the_unknown_card_rule(&project.join("app.py"), "return Decision_Deny(\"unknown credential\")", "return Decision_Deny(\"no entry\")");
    build(&project);
    sample_shows_the_broken_rule(&project, "py-policy.wasm");
}

/// npm with componentize-js from `cargo xtask setup` (`.cache/js`, the JavaScript example's own
/// lock file) first on the PATH, as a project's `npm ci` would put it in `node_modules/.bin`.
fn npm_in(dir: &Path, args: &[&str]) -> Output {
    let bin = root().join(".cache/js/node_modules/.bin");
    assert!(bin.join("componentize-js").exists(), "{} is missing componentize-js: run `cargo xtask setup` (cargo xtask test does)", bin.display());
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths))).expect("PATH");
    Command::new("npm").current_dir(dir).args(args).env("PATH", path).output().expect("run npm")
}

#[test]
fn a_new_javascript_project_passes_its_unit_tests_and_its_sample_trace_and_a_broken_rule_fails_with_a_diff() {
    let tmp = tempfile::tempdir().expect("tmp");
    let project = new_project_with_contract(tmp.path(), "js", "js-policy", "npm run build");

    // The rules' own unit tests, natively (`node --test`).
    let o = npm_in(&project, &["test"]);
    assert!(o.status.success() && text(&o).contains("# pass 5") && text(&o).contains("# fail 0"), "unit tests of the new project:\n{}", text(&o));

    // The project's own build command (componentize-js, flags from its package.json).
    let build = |project: &Path| {
        let o = npm_in(project, &["run", "build"]);
        assert!(o.status.success(), "npm run build:\n{}", text(&o));
    };
    build(&project);
    // The component imports the contract and nothing else (every WASI feature left out).
    let o = gate_in(&project, &["plugin", "check", "js-policy.wasm"]);
    assert!(o.status.success() && text(&o).contains("gate:plugin/policy-plugin@0.2.0"), "{}", text(&o));
    let imports = text(&o).lines().find(|l| l.trim_start().starts_with("imports:")).map(str::to_string).expect("an imports line");
    assert!(!imports.contains("wasi:"), "{imports}");

    sample_passes(&project, "js-policy.wasm", "js-policy");
    break_the_unknown_card_rule(&project.join("rules.js"), "return deny('unknown credential');", "return deny('no entry');");
    build(&project);
    sample_shows_the_broken_rule(&project, "js-policy.wasm");
}

#[test]
fn the_contract_is_written_for_other_languages_as_the_host_serves_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let want = std::fs::read_to_string(root().join("wit/gate-plugin.wit")).expect("wit");
    let o = gate_in(tmp.path(), &["plugin", "wit", "--out", "wit"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(tmp.path().join("wit/gate-plugin.wit")).expect("written"), want);
    let o = gate(&["plugin", "wit"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
}

#[test]
fn plugin_test_refuses_bad_input_with_exit_2_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let policy = support::plugin("resident-policy");
    let trace = tmp.path().join("t.jsonl");
    std::fs::write(&trace, "{\"gate_trace\":1,\"site\":\"s\",\"start\":\"2026-11-23T07:00:00+08:00\"}\n{\"at\":0,\"input\":{\"kind\":\"card\",\"door\":\"north\",\"number\":\"1\"}}\n").expect("trace");
    // A sidecar with a key it does not know: file, line and key.
    let side = tmp.path().join("t.site.toml");
    std::fs::write(&side, "[settings]\ndefault-open-ms = 5000\n\n[[door]]\nid = \"north\"\ncolour = \"red\"\n").expect("sidecar");
    let o = gate(&["plugin", "test", policy.to_str().expect("utf-8"), "--trace", trace.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains(&format!("{}:6:", side.display())) && text(&o).contains("colour"), "{}", text(&o));
    // Not a component at all.
    std::fs::remove_file(&side).expect("rm");
    let o = gate(&["plugin", "test", trace.to_str().expect("utf-8"), "--trace", trace.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Without a sidecar the plugin decides on the trace's doors; nothing expected, exit 0.
    let o = gate(&["plugin", "test", policy.to_str().expect("utf-8"), "--trace", trace.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("DENY  unknown credential") && text(&o).contains("plugin:resident-policy"), "{}", text(&o));
    // A project is never written over an existing one.
    std::fs::create_dir(tmp.path().join("taken")).expect("mkdir");
    std::fs::write(tmp.path().join("taken/keep.txt"), "mine").expect("write");
    let o = gate_in(tmp.path(), &["plugin", "new", "taken"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(tmp.path().join("taken/keep.txt")).expect("kept"), "mine");
}

/// `gate plugin test --watch`: the author's loop. It tests at once, then again each time the
/// component changes, until Ctrl-C; a rebuilt component that breaks the sample shows exit 1,
/// and Ctrl-C ends it cleanly, its compile cache removed.
#[test]
fn plugin_test_watch_runs_again_when_the_component_changes() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;
    let tmp = tempfile::tempdir().expect("tmp");
    let examples = root().join("plugins/examples/tests");
    for f in ["sample.jsonl", "sample.site.toml"] {
        std::fs::copy(examples.join(f), tmp.path().join(f)).expect("copy the sample");
    }
    let wasm = tmp.path().join("example-policy.wasm");
    std::fs::copy(root().join("target/plugins/examples/rust/example-policy.wasm"), &wasm).expect("the Rust example (cargo xtask plugins)");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).expect("scratch");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gate"))
        .current_dir(tmp.path())
        .env("TMPDIR", &scratch)
        .args(["plugin", "test", "example-policy.wasm", "--trace", "sample.jsonl", "--watch"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gate");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_outcome = || loop {
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("gate plugin test --watch said nothing for 2 minutes");
        if line.contains("watching") {
            return line;
        }
    };
    let first = next_outcome();
    assert!(first.contains("exit 0") && first.contains("example-policy.wasm"), "{first}");
    // A "rebuild" that grants everyone: the sample's unknown card and spoof now differ.
    std::fs::copy(support::plugin("grant-all"), &wasm).expect("replace the component");
    let second = next_outcome();
    assert!(second.contains("exit 1"), "{second}");
    // Ctrl-C.
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("run kill");
    assert!(sent.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gate plugin test --watch did not end on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let left: Vec<_> = std::fs::read_dir(&scratch).expect("scratch").map(|e| e.expect("entry").file_name()).collect();
    assert!(left.is_empty(), "the compile cache was left behind: {left:?}");
}
