//! `gate bench --directory N`: how long the subject directory takes to import and to
//! load at start, and how much memory it holds, at community and fleet scale.
//!
//! Generated subjects (one card and one PIN hash each, a plate for every fourth) are
//! imported into a fresh directory database, then loaded the way a gateway loads it at
//! start; the resident memory it adds is read from /proc/self/status. Sizes up to
//! 100,000 also time the TOML path (parse, check, build) for comparison.

use crate::config::SubjectEntry;
use crate::credentials::{pin_hash, Directory};
use crate::directory::{db_path, DirectoryDb};
use crate::event::Role;
use anyhow::{anyhow, Context, Result};
use std::fmt::Write as _;
use std::time::Instant;

const SITE: &str = "bench-site";

fn subject(i: usize) -> SubjectEntry {
    SubjectEntry {
        id: format!("r-{i:07}"),
        role: Role::Resident,
        groups: if i.is_multiple_of(10) { vec!["staff-car-park".into()] } else { Vec::new() },
        cards: vec![format!("{}", 10_000_000 + i)],
        pin_sha256: vec![pin_hash(SITE, &format!("{:08}", i))],
        nfc: Vec::new(),
        plates: if i.is_multiple_of(4) { vec![format!("浙A {i:07}")] } else { Vec::new() },
    }
}

/// Resident and peak memory of this process, KiB, from /proc/self/status.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) this process has used, seconds, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// Set in the child process that loads one directory, so its memory is the load's alone.
const CHILD: &str = "GATE_BENCH_DIRECTORY_LOAD";

/// In the child: loads the directory at `path` like a gateway at start and checks it
/// resolves; prints wall seconds, CPU seconds, RSS before and after, and peak RSS (KiB).
fn child(path: &std::path::Path, n: usize) -> Result<String> {
    let (rss0, _) = memory_kib();
    let (t, c) = (Instant::now(), cpu_secs());
    let db = DirectoryDb::open(path)?;
    let mut d = Directory::new(SITE);
    let loaded = db.load_into(&mut d)?;
    drop(db);
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    let (rss1, hwm) = memory_kib();
    // The loaded directory must answer, or the numbers mean nothing.
    let last = n - 1;
    let by_card = d.by_card(&format!("{}", 10_000_000 + last)).map(|s| s.id.clone());
    let by_pin = d.by_pin(&format!("{:08}", n / 2)).map(|s| s.id.clone());
    if loaded != n || by_card.as_deref() != Some(format!("r-{last:07}").as_str()) || by_pin.as_deref() != Some(format!("r-{:07}", n / 2).as_str()) {
        return Err(anyhow!("the loaded directory of {n} does not resolve its own subjects ({loaded} loaded)"));
    }
    Ok(format!("{wall} {cpu} {rss0} {rss1} {hwm}"))
}

fn toml_of(n: usize) -> String {
    let mut t = String::with_capacity(n.saturating_mul(160));
    for i in 0..n {
        let s = subject(i);
        let _ = write!(t, "[[subject]]\nid = \"{}\"\nrole = \"resident\"\ncards = [\"{}\"]\npin_sha256 = [\"{}\"]\n", s.id, s.cards[0], s.pin_sha256[0]);
        if let Some(p) = s.plates.first() {
            let _ = writeln!(t, "plates = [\"{p}\"]");
        }
        t.push('\n');
    }
    t
}

/// Imports and loads directories of each size; returns the report's lines.
pub fn run(sizes: &[usize]) -> Result<String> {
    if let Some(path) = std::env::var_os(CHILD) {
        return child(std::path::Path::new(&path), sizes.first().copied().unwrap_or(1));
    }
    let mut out = String::from("subject directory (generated: a card and a PIN hash each, a plate for every fourth)\n");
    out.push_str("load = a fresh process opening the database and building every index, as a gateway at start\n");
    let _ = writeln!(out, "{:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>12}  {:>10}", "subjects", "import", "load", "load CPU", "load RSS +", "peak RSS", "TOML load");
    for &n in sizes {
        if n == 0 || n > 10_000_000 {
            return Err(anyhow!("--directory {n}: the size must be between 1 and 10,000,000 subjects"));
        }
        let dir = std::env::temp_dir().join(format!("gate-bench-directory-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = db_path(&dir);
        let t = Instant::now();
        let mut db = DirectoryDb::open(&path)?;
        db.import((0..n).map(subject), "bench")?;
        let import = t.elapsed();
        drop(db);

        let exe = std::env::current_exe().context("finding the gate binary")?;
        let run = std::process::Command::new(exe).args(["bench", "--directory", &n.to_string()]).env(CHILD, &path).output().context("starting the load child")?;
        let _ = std::fs::remove_dir_all(&dir);
        let said = String::from_utf8_lossy(&run.stdout).trim().to_string();
        let f: Vec<f64> = said.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        let [wall, cpu, rss0, rss1, hwm] = f[..] else {
            return Err(anyhow!("the load child failed: {said} {}", String::from_utf8_lossy(&run.stderr).trim()));
        };

        let toml = if n <= 100_000 {
            let text = toml_of(n);
            let t = Instant::now();
            let entries = crate::config::subjects_from_str(&text, std::path::Path::new("bench.toml")).context("parsing the generated TOML")?;
            let mut d = Directory::new(SITE);
            for e in &entries {
                d.add(e).map_err(|e| anyhow!("{e}"))?;
            }
            format!("{:.3} s", t.elapsed().as_secs_f64())
        } else {
            "-".into()
        };
        let _ = writeln!(out, "{:>10}  {:>8.3} s  {:>8.3} s  {:>8.3} s  {:>9.1} MB  {:>9.1} MB  {:>10}", n, import.as_secs_f64(), wall, cpu, (rss1 - rss0) / 1024.0, hwm / 1024.0, toml);
    }
    Ok(out)
}
