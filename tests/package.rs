//! The Debian package and `gate config check`, as an operator meets them.
//!
//! The package is packed once per run by the same code as `cargo xtask deb`
//! (`xtask/src/deb.rs`, included below) from the release `gate` this test was built with and
//! the plugins in target/plugins (gzip instead of xz: a second instead of twenty); it then installs with the real `dpkg` into scratch roots
//! (`dpkg --root` with chrootless maintainer scripts, and `dpkg -x`), never the machine itself.

#[path = "../xtask/src/deb.rs"]
#[allow(dead_code)]
mod deb;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed ({}):\n{}", o.status, text(&o));
    o
}

/// The package, packed once for all tests of this binary.
fn package() -> &'static Path {
    static DEB: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, deb) = DEB.get_or_init(|| {
        let root = root();
        let plugins = root.join("target/plugins");
        for p in deb::PLUGINS {
            assert!(plugins.join(format!("{p}.wasm")).exists(), "target/plugins/{p}.wasm is missing: run `cargo xtask plugins`");
        }
        let out = tempfile::tempdir().expect("temp dir");
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_gate"));
        let arch = deb::debian_arch(None).expect("this machine's Debian architecture");
        let deb = deb::assemble(&deb::Inputs { root: &root, binary: &binary, plugins_dir: &plugins, arch, out_dir: out.path(), fast: true }).expect("packing the .deb");
        (out, deb)
    });
    deb
}

/// `dpkg-deb --contents`: path -> (mode string, owner/group).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let o = run(Command::new("dpkg-deb").arg("--contents").arg(deb));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].trim_start_matches('.').trim_end_matches('/').to_string(), (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// A scratch root dpkg can install into: an empty dpkg database and Debian's base users and
/// groups (no libc6 in it, hence `--force-depends`).
fn scratch_root() -> tempfile::TempDir {
    let r = tempfile::tempdir().expect("temp dir");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"] {
        std::fs::create_dir_all(r.path().join(d)).unwrap();
    }
    std::fs::write(r.path().join("var/lib/dpkg/status"), "").unwrap();
    std::fs::copy("/usr/share/base-passwd/passwd.master", r.path().join("etc/passwd")).expect("base-passwd (Debian's base users)");
    std::fs::copy("/usr/share/base-passwd/group.master", r.path().join("etc/group")).expect("base-passwd (Debian's base groups)");
    r
}

fn dpkg(root: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display())).args(["--force-script-chrootless", "--force-not-root", "--force-depends", "--log=/dev/null"]).args(args);
    run(&mut cmd)
}

/// The line of /etc/passwd or /etc/group in `root` for `name`, split at colons.
fn entry(root: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(root.join("etc").join(file)).ok()?;
    text.lines().find(|l| l.starts_with(&format!("{name}:"))).map(|l| l.split(':').map(str::to_string).collect())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn the_package_holds_the_gateway_with_its_modes_conffiles_and_control_fields() {
    let deb = package();
    let name = deb.file_name().unwrap().to_string_lossy();
    assert_eq!(name, format!("gate_{}_{}.deb", deb::VERSION, deb::debian_arch(None).unwrap()));

    let field = |f: &str| String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("--field").arg(deb).arg(f)).stdout).trim().to_string();
    assert_eq!(field("Package"), "gate");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"), "the workspace version");
    let depends = field("Depends");
    assert!(depends.contains("libc6 (>= 2."), "libc6 with the newest GLIBC symbol version the binary needs: {depends}");
    assert!(!depends.contains("mosquitto"), "a gateway does not need a broker of its own: {depends}");
    assert!(field("Suggests").contains("mosquitto"));
    assert!(field("Installed-Size").parse::<u64>().unwrap() > 1000);

    let c = contents(deb);
    let expect = [
        ("/usr/bin/gate", "-rwxr-xr-x"),
        ("/usr/lib/gate/plugins/resident-policy.wasm", "-rw-r--r--"),
        ("/usr/lib/gate/plugins/platform-bridge.wasm", "-rw-r--r--"),
        ("/usr/lib/systemd/system/gate.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/gate.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/gate.conf", "-rw-r--r--"),
        ("/usr/lib/udev/rules.d/60-gate-gpio.rules", "-rw-r--r--"),
        ("/etc/gate/site.toml", "-rw-r-----"),
        ("/etc/gate/subjects.toml", "-rw-r-----"),
        ("/usr/share/doc/gate/copyright", "-rw-r--r--"),
        ("/usr/lib/gate/plugins", "drwxr-xr-x"),
    ];
    for (path, m) in expect {
        let (got, owner) = c.get(path).unwrap_or_else(|| panic!("{path} is not in the package: {c:#?}"));
        assert_eq!((got.as_str(), owner.as_str()), (m, "root/root"), "{path}");
    }
    assert!(!c.keys().any(|p| p.starts_with("/var")), "state is made by the postinst, not shipped: {c:#?}");
    assert!(!c.keys().any(|p| p.contains("testing") || p.contains("spin-forever")), "no test plugin ships");

    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(ctrl.path()));
    assert_eq!(std::fs::read_to_string(ctrl.path().join("conffiles")).unwrap(), "/etc/gate/site.toml\n/etc/gate/subjects.toml\n");
    for script in ["postinst", "prerm", "postrm"] {
        let p = ctrl.path().join(script);
        assert_eq!(mode(&p), 0o755, "{script} is executable");
        let o = Command::new("sh").arg("-n").arg(&p).output().unwrap();
        assert!(o.status.success(), "{script} does not parse: {}", text(&o));
    }
    let md5 = std::fs::read_to_string(ctrl.path().join("md5sums")).unwrap();
    assert!(md5.lines().any(|l| l.ends_with("  usr/bin/gate")), "{md5}");
}

#[test]
fn dpkg_installs_into_a_scratch_root_creates_the_user_and_keeps_config_and_state_until_purge() {
    let deb = package();
    let r = scratch_root();
    let root = r.path();
    let o = dpkg(root, &["--install", deb.to_str().unwrap()]);
    assert!(text(&o).contains("gate config check /etc/gate/site.toml"), "the postinst points at the check: {}", text(&o));

    for f in ["usr/bin/gate", "usr/lib/gate/plugins/resident-policy.wasm", "usr/lib/systemd/system/gate.service", "etc/gate/site.toml"] {
        assert!(root.join(f).is_file(), "{f} installed");
    }
    // The user and groups of /usr/lib/sysusers.d/gate.conf, as the postinst applied it.
    let user = entry(root, "passwd", "gate").expect("a gate user");
    assert!(user[2].parse::<u32>().unwrap() < 1000, "a system user: {user:?}");
    assert_eq!((user[5].as_str(), user[6].as_str()), ("/var/lib/gate", "/usr/sbin/nologin"), "{user:?}");
    let group = entry(root, "group", "gate").expect("a gate group");
    assert_eq!(user[3], group[2], "its own primary group");
    for g in ["gpio", "video"] {
        let e = entry(root, "group", g).unwrap_or_else(|| panic!("group {g}"));
        assert!(e[3].split(',').any(|m| m == "gate"), "gate is in {g}: {e:?}");
    }
    // State 0700 of the gate user; the configuration 0640 root:gate.
    let state = root.join("var/lib/gate");
    let meta = std::fs::metadata(&state).expect("/var/lib/gate made by the postinst");
    assert_eq!((meta.mode() & 0o7777, meta.uid().to_string()), (0o700, user[2].clone()));
    let site = root.join("etc/gate/site.toml");
    let meta = std::fs::metadata(&site).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid().to_string()), (0o640, 0, group[2].clone()));

    // The operator edits the config; the gateway writes its state.
    let mut edited = std::fs::read_to_string(&site).unwrap();
    edited.push_str("\n# edited by the operator\n");
    std::fs::write(&site, &edited).unwrap();
    std::fs::write(state.join("events.sqlite"), "the event log").unwrap();

    // An upgrade to a newer version keeps both.
    let newer = newer_version(deb);
    dpkg(root, &["--install", newer.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&site).unwrap(), edited, "an upgrade keeps the operator's site.toml");
    assert!(state.join("events.sqlite").exists(), "an upgrade keeps the state");
    assert_eq!(entry(root, "passwd", "gate").unwrap()[2], user[2], "same user after the upgrade");

    // Remove: the program goes, config and state stay.
    dpkg(root, &["--remove", "gate"]);
    assert!(!root.join("usr/bin/gate").exists());
    assert_eq!(std::fs::read_to_string(&site).unwrap(), edited, "remove keeps the conffiles");
    assert!(state.join("events.sqlite").exists(), "remove keeps the state");

    // Purge: config and state go; the system user stays (as Debian does for system users).
    dpkg(root, &["--purge", "gate"]);
    assert!(!site.exists(), "purge removes the conffiles");
    assert!(!state.exists(), "purge removes /var/lib/gate");
    assert!(entry(root, "passwd", "gate").is_some());
}

/// The same package relabelled one version up, so dpkg runs a real upgrade.
fn newer_version(deb: &Path) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let tree = dir.join("tree");
    run(Command::new("dpkg-deb").arg("--raw-extract").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap().replace(&format!("Version: {}\n", deb::VERSION), &format!("Version: {}+1\n", deb::VERSION));
    std::fs::write(&control, text).unwrap();
    let out = dir.join("newer.deb");
    run(Command::new("dpkg-deb").args(["--build", "--root-owner-group", "-Zgzip", "-z1"]).arg(&tree).arg(&out));
    out
}

#[test]
fn without_systemd_the_postinst_creates_the_user_with_useradd() {
    let deb = package();
    let r = scratch_root();
    let root = r.path();
    run(Command::new("dpkg").arg("-x").arg(deb).arg(root));
    // A PATH with the tools of a machine without systemd: no systemd-sysusers / -tmpfiles.
    let bin = tempfile::tempdir().unwrap();
    for tool in ["sh", "grep", "cut", "install", "chown", "chmod", "groupadd", "useradd", "usermod", "cat"] {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists()).unwrap_or_else(|| panic!("{tool} (package passwd / coreutils)"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let ctrl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(ctrl.path()));
    for _ in 0..2 {
        // Twice: a second configure (an upgrade) must find everything in place.
        run(Command::new(bin.path().join("sh")).arg(ctrl.path().join("postinst")).args(["configure", ""]).env_clear().env("PATH", bin.path()).env("DPKG_ROOT", root));
    }
    let user = entry(root, "passwd", "gate").expect("a gate user");
    assert!(user[2].parse::<u32>().unwrap() < 1000, "{user:?}");
    for g in ["gpio", "video"] {
        let e = entry(root, "group", g).unwrap_or_else(|| panic!("group {g}"));
        assert!(e[3].split(',').any(|m| m == "gate"), "gate is in {g}: {e:?}");
    }
    let meta = std::fs::metadata(root.join("var/lib/gate")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid().to_string()), (0o700, user[2].clone()));
    assert_eq!(mode(&root.join("etc/gate/site.toml")), 0o640);
}

/// `dpkg -x` into a scratch root, with the installed site.toml pointed at that root and the
/// check's subjects beside it; returns (root, site.toml, gate).
fn unpacked() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let r = tempfile::tempdir().unwrap();
    run(Command::new("dpkg").arg("-x").arg(package()).arg(r.path()));
    let site = r.path().join("etc/gate/site.toml");
    let text = std::fs::read_to_string(&site).unwrap();
    assert!(text.contains("\"/usr/lib/gate/plugins/resident-policy.wasm\"") && text.contains("state_dir = \"/var/lib/gate\""), "the installed site.toml points at the installed plugins and state");
    let root = r.path().display().to_string();
    std::fs::write(&site, text.replace("\"/usr/lib/gate/", &format!("\"{root}/usr/lib/gate/")).replace("\"/var/lib/gate\"", &format!("\"{root}/var/lib/gate\""))).unwrap();
    std::fs::copy(root_path("packaging/check/subjects.toml"), r.path().join("etc/gate/subjects.toml")).unwrap();
    let gate = r.path().join("usr/bin/gate");
    (r, site, gate)
}

fn root_path(p: &str) -> PathBuf {
    root().join(p)
}

#[test]
fn the_installed_gateway_checks_its_config_and_serves_a_trace_with_the_installed_plugins() {
    let (r, site, gate) = unpacked();
    let o = Command::new(&gate).args(["config", "check"]).arg(&site).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("{}: ok", site.display())), "{}", text(&o));

    // Replay: the installed plugins decide exactly as the check trace expects.
    let trace = root_path("packaging/check/trace.jsonl");
    let o = Command::new(&gate).args(["replay", "--config"]).arg(&site).arg("--trace").arg(&trace).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("replay matches the 27 expected outputs"), "{}", text(&o));

    // The service path: `gate run` serving the trace (in place of the GPIO of [hardware]),
    // logging to the state directory of the config.
    let o = Command::new(&gate).args(["run", "--config"]).arg(&site).arg("--trace").arg(&trace).args(["--speed", "1000", "--seconds", "60"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("gate: done. 3 granted, 2 denied"), "{out}");
    assert!(r.path().join("var/lib/gate/events.sqlite").is_file(), "the event log is in the configured state_dir");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED the_unit_passes_systemd_analyze_verify: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(o.status.success());
    let (r, _, gate) = unpacked();
    // The unit as installed, with ExecStart at the unpacked binary (verify checks that it exists).
    let unit_text = std::fs::read_to_string(r.path().join("usr/lib/systemd/system/gate.service")).unwrap();
    assert!(unit_text.contains("ExecStart=/usr/bin/gate run --config /etc/gate/site.toml"), "{unit_text}");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("gate.service");
    std::fs::write(&unit, unit_text.replace("/usr/bin/gate", gate.to_str().unwrap())).unwrap();
    let o = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output().unwrap();
    let problems: Vec<String> = text(&o).lines().filter(|l| l.contains("gate.service")).map(str::to_string).collect();
    assert!(o.status.success() && problems.is_empty(), "systemd-analyze verify:\n{}", text(&o));
}

#[test]
fn config_check_names_every_problem_with_its_line_and_key() {
    let gate = env!("CARGO_BIN_EXE_gate");
    let plugins = root_path("target/plugins");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root_path("packaging/subjects.toml"), dir.path().join("subjects.toml")).unwrap();
    let good = std::fs::read_to_string(root_path("packaging/site.toml")).unwrap().replace("/usr/lib/gate/plugins", plugins.to_str().unwrap()).replace("\"/var/lib/gate\"", "\"state\"");
    let site = dir.path().join("site.toml");
    std::fs::write(&site, &good).unwrap();
    let o = Command::new(gate).args(["config", "check"]).arg(&site).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Three problems at once: a misspelt key, a plugin file that is not there, and a
    // policy component declared as the integration plugin.
    let bad = good
        .replace("deadline_ms = 20 ", "deadline_msec = 20 ")
        .replace(&format!("{}/resident-policy.wasm", plugins.display()), "/nowhere/resident-policy.wasm")
        .replace(&format!("{}/platform-bridge.wasm", plugins.display()), &format!("{}/resident-policy.wasm", plugins.display()));
    std::fs::write(&site, &bad).unwrap();
    let line = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} in the test config")) + 1;
    let o = Command::new(gate).args(["config", "check"]).arg(&site).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let s = site.display();
    let expected = [
        (format!("{s}:{}:", line("deadline_msec")), "deadline_msec"),
        (format!("{s}:{}: plugin `resident-policy` key `path`:", line("/nowhere/resident-policy.wasm")), "/nowhere/resident-policy.wasm"),
        (format!("{s}:{}: plugin `platform-bridge` key `world`:", line("world = \"integration\"")), "policy-plugin"),
    ];
    for (prefix, detail) in &expected {
        assert!(out.lines().any(|l| l.starts_with(prefix.as_str()) && l.contains(detail)), "expected a line `{prefix} …{detail}…` in:\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with(s.to_string().as_str()) && !l.contains(": note:")).count(), 3, "exactly the three problems:\n{out}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("3 problems"), "{}", text(&o));
}
