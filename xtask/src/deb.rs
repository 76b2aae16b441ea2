//! `cargo xtask deb [--target T]`: the Debian package of the gateway, `target/debian/gate_<version>_<arch>.deb`.
//!
//! The tree is staged by hand and packed by `dpkg-deb --build --root-owner-group`: dpkg-deb
//! is part of dpkg, on every Debian machine, so a fresh machine with only rustup needs no
//! packaging tool compiled first, and every entry's mode is set here, where it can be read.
//! The files come from `packaging/` (see its README). This module uses only std and anyhow,
//! because `tests/package.rs` includes it to pack the release binary it was built with.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package version: the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The example plugins the package installs into /usr/lib/gate/plugins/.
pub const PLUGINS: &[&str] = &["resident-policy", "platform-bridge"];

/// What goes into the package, and where it comes from.
pub struct Inputs<'a> {
    /// The workspace root (for `packaging/`).
    pub root: &'a Path,
    /// The release `gate` binary.
    pub binary: &'a Path,
    /// The folder holding `<plugin>.wasm` (target/plugins).
    pub plugins_dir: &'a Path,
    /// Debian architecture name (amd64, arm64).
    pub arch: &'a str,
    /// Where the .deb (and its staging tree) are written.
    pub out_dir: &'a Path,
    /// Pack with gzip -1 (a second, for tests) instead of xz -6 (about 20 s of CPU, a
    /// third smaller: what ships). dpkg reads both.
    pub fast: bool,
}

/// One file of the package: where it is installed, where it comes from, its mode.
struct Entry {
    dest: &'static str,
    src: PathBuf,
    mode: u32,
}

/// The Debian architecture of a Rust target triple (None: the machine's own).
pub fn debian_arch(target: Option<&str>) -> Result<&'static str> {
    let arch = match target {
        Some(t) => t.split('-').next().unwrap_or_default(),
        None => std::env::consts::ARCH,
    };
    Ok(match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" | "armv7" => "armhf",
        "riscv64gc" | "riscv64" => "riscv64",
        other => bail!("no Debian architecture known for `{other}` (target {target:?})"),
    })
}

/// Builds the release `gate` binary for `target` (the plugins are built by `cargo xtask
/// plugins`) and returns its path. For a foreign target the Debian cross linker is used
/// (`<gnu triple>-gcc`) unless cargo is already told which linker to use.
pub fn build_binary(root: &Path, target: Option<&str>) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(["build", "--release", "-p", "gate"]);
    if let Some(t) = target {
        cmd.args(["--target", t]);
        let var = format!("CARGO_TARGET_{}_LINKER", t.to_uppercase().replace('-', "_"));
        if std::env::var_os(&var).is_none() {
            let gnu = t.replace("-unknown-", "-");
            let linker = format!("{gnu}-gcc");
            if Command::new(&linker).arg("--version").output().is_err() {
                bail!("no cross linker `{linker}` for {t}: install it with `apt-get install gcc-{}` (or set {var})", gnu.replace('_', "-"));
            }
            cmd.env(var, linker);
        }
    }
    let status = cmd.status().context("starting cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p gate{} failed with {status}", target.map(|t| format!(" --target {t}")).unwrap_or_default());
    }
    Ok(match target {
        Some(t) => root.join("target").join(t).join("release/gate"),
        None => root.join("target/release/gate"),
    })
}

/// Stages the package tree and packs it; returns the path of the .deb.
pub fn assemble(i: &Inputs<'_>) -> Result<PathBuf> {
    let pkg = i.root.join("packaging");
    let files = vec![
        Entry { dest: "usr/bin/gate", src: i.binary.to_path_buf(), mode: 0o755 },
        Entry { dest: "usr/lib/systemd/system/gate.service", src: pkg.join("gate.service"), mode: 0o644 },
        Entry { dest: "usr/lib/sysusers.d/gate.conf", src: pkg.join("sysusers.conf"), mode: 0o644 },
        Entry { dest: "usr/lib/tmpfiles.d/gate.conf", src: pkg.join("tmpfiles.conf"), mode: 0o644 },
        Entry { dest: "usr/lib/udev/rules.d/60-gate-gpio.rules", src: pkg.join("60-gate-gpio.rules"), mode: 0o644 },
        // Conffiles: readable by root (and, once the postinst ran tmpfiles, the gate group) only.
        Entry { dest: "etc/gate/site.toml", src: pkg.join("site.toml"), mode: 0o640 },
        Entry { dest: "etc/gate/subjects.toml", src: pkg.join("subjects.toml"), mode: 0o640 },
        Entry { dest: "usr/share/doc/gate/copyright", src: pkg.join("copyright"), mode: 0o644 },
        Entry { dest: "DEBIAN/postinst", src: pkg.join("postinst"), mode: 0o755 },
        Entry { dest: "DEBIAN/prerm", src: pkg.join("prerm"), mode: 0o755 },
        Entry { dest: "DEBIAN/postrm", src: pkg.join("postrm"), mode: 0o755 },
    ];
    let plugin_dests: Vec<(&str, String)> = PLUGINS.iter().map(|p| (*p, format!("usr/lib/gate/plugins/{p}.wasm"))).collect();

    let name = format!("gate_{VERSION}_{}", i.arch);
    let stage = i.out_dir.join("stage").join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let mut installed_bytes: u64 = 0;
    let mut put = |dest: &str, src: &Path, mode: u32| -> Result<()> {
        let to = stage.join(dest);
        let dir = to.parent().context("a file has a folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::copy(src, &to).with_context(|| format!("copying {} (is it built?) to {}", src.display(), to.display()))?;
        set_mode(&to, mode)?;
        if !dest.starts_with("DEBIAN/") {
            installed_bytes = installed_bytes.saturating_add(std::fs::metadata(&to)?.len());
        }
        Ok(())
    };
    for e in files {
        put(e.dest, &e.src, e.mode)?;
    }
    for (p, dest) in &plugin_dests {
        put(dest, &i.plugins_dir.join(format!("{p}.wasm")), 0o644)?;
    }
    // Folders 0755, whatever the umask of the machine building the package.
    set_dir_modes(&stage)?;

    let depends = depends(i.binary)?;
    let control = format!(
        "Package: gate\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: gate developers <gate@example.org>\n\
         Installed-Size: {kib}\n\
         Depends: {depends}, systemd | passwd\n\
         Recommends: systemd\n\
         Suggests: mosquitto\n\
         Section: net\n\
         Priority: optional\n\
         Description: gateway for the door of a residential community\n \
         gate owns the door, the card / NFC reader, the keypad and the camera of a gate,\n \
         runs each site's access policy as a sandboxed WebAssembly plugin, logs every\n \
         decision to SQLite, and links to a fleet over MQTT. Face recognition is one\n \
         option, never the only one; biometric data never leaves the gateway.\n \
         .\n \
         This package installs the gate binary, the example plugins, the systemd unit\n \
         (not started until you enable it), the gate system user, and a commented\n \
         example /etc/gate/site.toml.\n",
        arch = i.arch,
        kib = installed_bytes.div_ceil(1024),
    );
    write(&stage.join("DEBIAN/control"), &control, 0o644)?;
    write(&stage.join("DEBIAN/conffiles"), "/etc/gate/site.toml\n/etc/gate/subjects.toml\n", 0o644)?;
    write(&stage.join("DEBIAN/md5sums"), &md5sums(&stage)?, 0o644)?;

    let deb = i.out_dir.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .args(if i.fast { ["-Zgzip", "-z1"] } else { ["-Zxz", "-z6"] })
        .arg(&stage)
        .arg(&deb)
        .output()
        .context("running dpkg-deb (part of dpkg; on Debian it is always present)")?;
    if !out.status.success() {
        bail!("dpkg-deb --build {} failed: {}", stage.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(deb)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

/// DEBIAN/md5sums: `md5sum` of every installed file, paths relative to the root.
fn md5sums(stage: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(stage, stage, &mut files)?;
    files.sort();
    let out = Command::new("md5sum").current_dir(stage).args(&files).output().context("running md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).context("md5sum output")
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let rel = p.strip_prefix(base)?.to_string_lossy().to_string();
        if rel == "DEBIAN" {
            continue;
        }
        if p.is_dir() {
            collect(base, &p, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Depends of the binary, from the ELF's own dynamic section (`readelf` from binutils, which
/// the Rust linker setup already needs): each shared library it links maps to its Debian
/// package, libc6 with the newest GLIBC symbol version the binary asks for. An unknown
/// library fails the build rather than produce a package that cannot run.
pub fn depends(binary: &Path) -> Result<String> {
    let run = |flag: &str| -> Result<String> {
        let out = Command::new("readelf").args(["--wide", flag]).arg(binary).output().context("running readelf (binutils)")?;
        if !out.status.success() {
            bail!("readelf {flag} {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut packages: Vec<String> = Vec::new();
    for line in run("--dynamic")?.lines().filter(|l| l.contains("(NEEDED)")) {
        let lib = line.split('[').nth(1).and_then(|s| s.split(']').next()).unwrap_or_default();
        let pkg = match lib {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1" | "libutil.so.1" => "libc6",
            l if l.starts_with("ld-linux") => "libc6",
            "libgcc_s.so.1" => "libgcc-s1",
            other => bail!("{} links `{other}`: add its Debian package to xtask/src/deb.rs", binary.display()),
        };
        if !packages.iter().any(|p| p == pkg) {
            packages.push(pkg.to_string());
        }
    }
    let glibc = run("--version-info")?
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max();
    Ok(packages
        .iter()
        .map(|p| match (p.as_str(), glibc) {
            ("libc6", Some((major, minor))) => format!("libc6 (>= {major}.{minor})"),
            _ => p.clone(),
        })
        .collect::<Vec<_>>()
        .join(", "))
}
