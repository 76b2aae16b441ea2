//! `gate report` (the month's transparency report) and `gate subject report` (what the
//! gateway holds about one pseudonymous subject, to answer a resident's access request).

use crate::audit_cmd::audit_path;
use crate::{input, load_config, runtime, Failure};
use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use gate::audit::{Action, AuditLog};
use gate::report::{Lang, Sources};
use std::path::{Path, PathBuf};

/// `gate report`.
#[derive(Args)]
pub struct ReportArgs {
    #[arg(long)]
    config: PathBuf,
    /// The month, YYYY-MM, in the site's local time.
    #[arg(long)]
    period: String,
    /// Language of the page: Chinese (the residents read Chinese) or English.
    #[arg(long, value_enum, default_value_t = LangArg::Zh)]
    lang: LangArg,
    /// A page to print or post, or JSON (schema: host/schema/report.json).
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    format: ReportFormat,
    /// Where to write it (a page meant to be printed or posted: it holds counts only).
    #[arg(long)]
    out: PathBuf,
    /// Event log (default: <state_dir>/events.sqlite).
    #[arg(long)]
    db: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    Zh,
    En,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ReportFormat {
    Html,
    Json,
}

/// `gate subject report`.
#[derive(Args)]
pub struct SubjectReportArgs {
    #[arg(long)]
    config: PathBuf,
    /// Event log (default: <state_dir>/events.sqlite).
    #[arg(long)]
    db: Option<PathBuf>,
    /// How many recent access events to list.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    recent: u32,
    /// The pseudonymous subject id, e.g. r-0003.
    subject: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn event_log(config: &Path, cfg: &gate::config::SiteConfig, db: Option<PathBuf>) -> Result<PathBuf, Failure> {
    db.or_else(|| cfg.site.state_dir.as_ref().map(|d| d.join("events.sqlite"))).ok_or_else(|| input(anyhow!("{}: set `site.state_dir` or pass --db", config.display())))
}

/// Writes the month's report and audits that it was made.
pub fn report(a: ReportArgs) -> Result<u8, Failure> {
    let cfg = load_config(&a.config)?;
    let events = event_log(&a.config, &cfg, a.db)?;
    let audit = audit_path(&a.config, &cfg)?;
    let now = now_ms();
    let ref_key = gate::credentials::RefKey::for_site(&cfg).map_err(|e| input(anyhow!("{}: {e}", a.config.display())))?;
    let r = gate::report::gather(&Sources { cfg: &cfg, event_log: &events, audit: &audit, ref_key: ref_key.as_ref() }, &a.period, now).map_err(|e| match e {
        gate::report::ReportError::Period(_) => input(e),
        other => runtime(other),
    })?;
    let offset = gate::clock::parse_offset(&cfg.site.utc_offset).unwrap_or(0);
    let text = match a.format {
        ReportFormat::Json => serde_json::to_string_pretty(&r).map_err(runtime)? + "\n",
        ReportFormat::Html => gate::report::html(&r, if matches!(a.lang, LangArg::Zh) { Lang::Zh } else { Lang::En }, offset),
    };
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display())).map_err(runtime)?;
    if let Some(dir) = audit.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())).map_err(runtime)?;
    }
    let mut log = AuditLog::open(&audit).map_err(runtime)?;
    let detail = serde_json::json!({"format": if a.format == ReportFormat::Json { "json" } else { "html" }, "face_subjects": r.face.subjects_held, "audit_whole": r.audit.whole});
    log.append(now, &gate::audit::local_actor(), Action::ReportGenerated, &format!("period:{}", r.period), detail).map_err(runtime)?;
    println!("gate: report for {} written to {}", r.period, a.out.display());
    if r.face.filing_warning {
        println!("gate: WARNING {} people's face data is held: the filing threshold is {}", r.face.subjects_held, r.face.filing_threshold);
    }
    if !r.audit.whole {
        println!("gate: WARNING the audit trail does not verify: {}", r.audit.problem.as_deref().unwrap_or(""));
    }
    Ok(0)
}

/// Prints what the gateway holds about one subject: never a template, PIN or card number.
pub fn subject_report(a: SubjectReportArgs) -> Result<u8, Failure> {
    let cfg = load_config(&a.config)?;
    let shown = |t: &str| gate::plugin::text::sanitize(t, 200);
    let Some(entry) = cfg.subjects.iter().find(|s| s.id == a.subject) else {
        return Err(input(anyhow!("{}: no subject `{}` in the directory", a.config.display(), shown(&a.subject))));
    };
    println!("Subject {} ({:?}{})", shown(&entry.id), entry.role, if entry.groups.is_empty() { String::new() } else { format!(", groups {}", entry.groups.join(", ")) });
    println!("\nCredentials held (kinds and counts only; values are never shown):");
    for (kind, n) in [("card", entry.cards.len()), ("PIN", entry.pin_sha256.len()), ("phone NFC", entry.nfc.len()), ("licence plate", entry.plates.len())] {
        println!("  {kind:<14} {n}");
    }

    println!("\nFace:");
    match (&cfg.face.db, &cfg.face.key) {
        (Some(db), Some(key)) if db.is_file() => {
            let store = gate_face::TemplateStore::open(db, key).map_err(runtime)?;
            let consents = store.consents(&a.subject).map_err(runtime)?;
            if consents.is_empty() {
                println!("  no consent was ever recorded");
            }
            for c in consents {
                let withdrawn = c.withdrawn_at_ms.map(|w| format!(", withdrawn {}", iso(w))).unwrap_or_default();
                println!(
                    "  consent given {} for \"{}\" (notice {}, {}){withdrawn}",
                    iso(c.consent.given_at_ms),
                    shown(&c.consent.purpose),
                    shown(&c.consent.notice_version),
                    shown(&c.consent.capture)
                );
            }
            let has = store.enrolled().map_err(runtime)?.contains(&a.subject);
            println!("  template held: {} (encrypted on this device; the template itself is never shown or exported)", if has { "yes" } else { "no" });
        }
        _ => println!("  face recognition is not set up on this gateway: nothing held"),
    }

    let events = event_log(&a.config, &cfg, a.db)?;
    println!("\nRecent access events (newest first, at most {}):", a.recent);
    if events.is_file() {
        let conn = rusqlite::Connection::open_with_flags(&events, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).with_context(|| format!("opening {}", events.display())).map_err(runtime)?;
        let mut st = conn
            .prepare(
                "SELECT id, at_ms, door, json_extract(body, '$.credential'), json_extract(body, '$.outcome'), json_extract(body, '$.direction')
                 FROM events WHERE kind = 'decision' AND json_extract(body, '$.subject') = ?1 ORDER BY seq DESC LIMIT ?2",
            )
            .map_err(runtime)?;
        let rows = st
            .query_map(rusqlite::params![a.subject, a.recent], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, Option<String>>(5)?))
            })
            .map_err(runtime)?;
        let mut any = false;
        for row in rows {
            let (id, at, door, cred, outcome, dir) = row.map_err(runtime)?;
            any = true;
            println!(
                "  {}  {:<14} {:<4} {:<6} {:<6} {}",
                iso(at),
                shown(&door.unwrap_or_default()),
                shown(&dir.unwrap_or_default()),
                shown(&cred.unwrap_or_default()),
                shown(&outcome.unwrap_or_default()),
                shown(&id)
            );
        }
        if !any {
            println!("  none");
        }
    } else {
        println!("  no event log at {}", events.display());
    }

    let audit = audit_path(&a.config, &cfg)?;
    println!("\nAudit entries about this subject:");
    let mut any = false;
    if audit.is_file() {
        let log = AuditLog::open(&audit).map_err(runtime)?;
        for e in log.entries(1).map_err(runtime)? {
            let about = e.target == a.subject
                || e.target == format!("subject:{}", a.subject)
                || serde_json::from_str::<serde_json::Value>(&e.detail).ok().and_then(|d| d.get("holder").and_then(|h| h.as_str()).map(|h| h == a.subject)).unwrap_or(false);
            if about {
                any = true;
                println!("  #{:<5} {}  {} by {}", e.seq, iso(e.at_ms), shown(&e.action), shown(&e.actor));
            }
        }
    }
    if !any {
        println!("  none");
    }
    Ok(0)
}

fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok().and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()).unwrap_or_else(|| ms.to_string())
}
