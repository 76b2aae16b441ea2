//! `gate enroll`, `gate consent withdraw`, `gate face rekey`, `gate face key new`, `gate face pad`:
//! the face matcher's operator commands. They print reports, never a template.

use crate::{input, load_config, runtime, Failure};
use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use gate::config::SiteConfig;
use gate_face::{Consent, DeviceKey, EnrollPolicy, FaceEngine, Frame, StoreError, TemplateStore};
use std::path::{Path, PathBuf};

/// `gate enroll`.
#[derive(Args)]
pub struct EnrollArgs {
    /// Site configuration with `[face]` models_dir, db and key.
    #[arg(long)]
    config: PathBuf,
    /// Pseudonymous subject id from the site's subject directory (no name, ID number or unit).
    #[arg(long)]
    subject: String,
    /// What the face is used for, as stated in the consent, e.g. "entry at the community gates".
    #[arg(long)]
    purpose: String,
    /// Version of the notice the resident was shown.
    #[arg(long)]
    notice_version: String,
    /// How the separate consent was captured, e.g. "signed at the property office".
    #[arg(long)]
    capture: String,
    /// Usable photos the template needs (each checked for size, sharpness and pose).
    #[arg(long, default_value_t = 2)]
    min_samples: usize,
    /// Photos of the resident (JPEG / PNG); they are decoded in memory and never stored.
    #[arg(required = true)]
    photos: Vec<PathBuf>,
}

/// `gate consent ...`.
#[derive(Subcommand)]
pub enum ConsentCmd {
    /// Withdraw a subject's face consent: erases the template at once, for real.
    Withdraw {
        #[arg(long)]
        config: PathBuf,
        subject: String,
    },
}

/// `gate face ...`.
#[derive(Subcommand)]
pub enum FaceCmd {
    /// Re-encrypt every template under a new device key file, without re-enrolment.
    Rekey {
        #[arg(long)]
        config: PathBuf,
        /// The new key file (create it with `gate face key new`).
        #[arg(long)]
        new_key: PathBuf,
    },
    /// Device key files.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Measure presentation-attack detection (ISO/IEC 30107-3 style) on a folder of samples:
    /// SAMPLES/bona-fide/*.jpg|png and SAMPLES/attack/<species>/*.jpg|png. Prints APCER per
    /// species, BPCER and a threshold sweep; counts and rates only, never a sample's score.
    Pad {
        /// Site configuration whose `[face] models_dir` and thresholds are measured.
        #[arg(long)]
        config: PathBuf,
        /// The samples folder.
        #[arg(long)]
        samples: PathBuf,
    },
}

/// `gate face key ...`.
#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a new random device key file (mode 0600); refuses to overwrite one.
    New { path: PathBuf },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Exit code of a store error: the operator's input (key, subject, photos) or the machine.
fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Database { .. } | StoreError::File { .. } | StoreError::Busy { .. } | StoreError::NotErased { .. } => runtime(e),
        _ => input(e),
    }
}

/// The site's `[face]` paths, or a bad-input error naming the file and key.
fn face_paths(cfg: &SiteConfig) -> Result<(PathBuf, PathBuf, PathBuf), Failure> {
    gate::face::paths(&cfg.face)
        .map(|(m, d, k)| (m.to_path_buf(), d.to_path_buf(), k.to_path_buf()))
        .map_err(|_| input(anyhow!("{}: [face] needs `models_dir`, `db` and `key` for this command", cfg.path.display())))
}

/// Appends to the site's audit trail (`<state_dir>/audit.sqlite`) as the local operator. A site
/// without a state dir keeps no trail: said once, on stderr.
fn audit(cfg: &SiteConfig, action: gate::audit::Action, subject: &str, detail: serde_json::Value) -> Result<(), Failure> {
    let Some(dir) = cfg.site.state_dir.as_ref() else {
        eprintln!("gate: warning: `site.state_dir` is not set, so this action is not in an audit trail");
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display())).map_err(runtime)?;
    let mut log = gate::audit::AuditLog::open(&dir.join("audit.sqlite")).map_err(runtime)?;
    log.append(now_ms(), &gate::audit::local_actor(), action, subject, detail).map_err(runtime)?;
    Ok(())
}

fn open_store(cfg: &SiteConfig) -> Result<TemplateStore, Failure> {
    let (_, db, key) = face_paths(cfg)?;
    TemplateStore::open(&db, &key).map_err(store_failure)
}

/// `gate enroll`: consent first, then the template from several checked photos.
pub fn enroll(a: EnrollArgs) -> Result<u8, Failure> {
    let cfg = load_config(&a.config)?;
    let (models, _, _) = face_paths(&cfg)?;
    gate_face::validate_subject(&a.subject).map_err(input)?;
    let directory = gate::directory::load_for(&cfg).map_err(|e| input(anyhow!("{}: {e}", a.config.display())))?;
    if directory.subject(&a.subject).is_none() {
        return Err(input(anyhow!("subject `{}` is not in the subject directory of {}; add it there first (the gate matches faces to pseudonymous subject ids)", a.subject, a.config.display())));
    }
    if a.min_samples < 2 {
        return Err(input(anyhow!("--min-samples must be at least 2 (a template from one photo cannot be checked for agreement)")));
    }
    // Everything that can fail on bad input is checked before the consent is written.
    let mut frames = Vec::with_capacity(a.photos.len());
    for p in &a.photos {
        let bytes = std::fs::read(p).with_context(|| format!("photo {}", p.display())).map_err(input)?;
        frames.push((p.display().to_string(), Frame::decode(&bytes).with_context(|| format!("photo {}", p.display())).map_err(input)?));
    }
    let engine = FaceEngine::open(&models, gate::face::match_config(&cfg.face)).map_err(input)?;
    let store = open_store(&cfg)?;

    let consent = Consent { subject: a.subject.clone(), purpose: a.purpose.clone(), notice_version: a.notice_version.clone(), capture: a.capture.clone(), given_at_ms: now_ms() };
    let id = store.record_consent(&consent).map_err(store_failure)?;
    println!("gate: consent #{id} recorded for {}: purpose \"{}\", notice {}, captured: {}", a.subject, a.purpose, a.notice_version, a.capture);
    audit(&cfg, gate::audit::Action::ConsentGiven, &a.subject, serde_json::json!({"consent": id, "purpose": a.purpose, "notice_version": a.notice_version, "capture": a.capture}))?;
    let policy = EnrollPolicy { min_samples: a.min_samples, ..EnrollPolicy::default() };
    let report = match store.enroll(&engine, &a.subject, &frames, &policy, now_ms()) {
        Ok(r) => r,
        Err(e) => {
            println!("gate: no template stored for {} (the consent stays on record; withdraw it with `gate consent withdraw`)", a.subject);
            return Err(store_failure(e));
        }
    };
    println!("gate: enrolled {} from {} of {} photos", report.subject, report.samples_used, a.photos.len());
    audit(&cfg, gate::audit::Action::Enrolled, &a.subject, serde_json::json!({"consent": id, "photos": a.photos.len(), "samples_used": report.samples_used}))?;
    for (i, why) in &report.rejected {
        let name = a.photos.get(*i).map_or_else(|| format!("#{i}"), |p| p.display().to_string());
        println!("gate:   not used: {name}: {why}");
    }
    let key_id = DeviceKey::load(cfg.face.key.as_deref().unwrap_or(Path::new(""))).map(|k| k.id()).unwrap_or_default();
    println!("gate: template stored encrypted in {} under device key {key_id}; no photo, crop or template was written anywhere else", cfg.face.db.as_deref().unwrap_or(Path::new("")).display());
    Ok(0)
}

/// `gate consent withdraw`: erases the template and withdraws every consent of the subject.
pub fn consent(cmd: ConsentCmd) -> Result<u8, Failure> {
    match cmd {
        ConsentCmd::Withdraw { config, subject } => {
            let cfg = load_config(&config)?;
            gate_face::validate_subject(&subject).map_err(input)?;
            let mut store = open_store(&cfg)?;
            let r = store.withdraw(&subject, now_ms()).map_err(store_failure)?;
            let template = if r.template_erased { "template erased (its bytes verified gone from every file of the store)" } else { "no template was stored" };
            println!("gate: consent withdrawn for {}: {template}; {} consent record(s) marked withdrawn", r.subject, r.consents_withdrawn);
            if r.pending_finished > 0 {
                println!("gate: {} erasure(s) left pending by an earlier failure are now finished", r.pending_finished);
            }
            audit(&cfg, gate::audit::Action::ConsentWithdrawn, &subject, serde_json::json!({"consents": r.consents_withdrawn}))?;
            if r.template_erased {
                audit(&cfg, gate::audit::Action::TemplateErased, &subject, serde_json::json!({"why": "withdrawal", "verified_gone": true}))?;
            }
            Ok(0)
        }
    }
}

/// `gate face rekey` and `gate face key new`.
pub fn face(cmd: FaceCmd) -> Result<u8, Failure> {
    match cmd {
        FaceCmd::Rekey { config, new_key } => {
            let cfg = load_config(&config)?;
            let mut store = open_store(&cfg)?;
            let n = store.rekey(&new_key).map_err(store_failure)?;
            let id = DeviceKey::load(&new_key).map(|k| k.id()).unwrap_or_default();
            println!("gate: re-encrypted {n} template(s) under {} (key id {id})", new_key.display());
            audit(&cfg, gate::audit::Action::TemplatesRekeyed, "face", serde_json::json!({"templates": n, "key_id": id}))?;
            println!("gate: now set `key` under [face] in {} to this file; the old key no longer opens the store", config.display());
            Ok(0)
        }
        FaceCmd::Pad { config, samples } => {
            let cfg = load_config(&config)?;
            let (models, _, _) = face_paths(&cfg)?;
            let engine = FaceEngine::open(&models, gate::face::match_config(&cfg.face)).map_err(input)?;
            match gate_face::evaluate_pad(&engine, &samples) {
                Ok(report) => {
                    print!("{report}");
                    Ok(0)
                }
                Err(e @ (gate_face::PadError::NoSamples { .. } | gate_face::PadError::Sample { .. } | gate_face::PadError::NoModel)) => Err(input(e)),
                Err(e) => Err(runtime(e)),
            }
        }
        FaceCmd::Key { cmd: KeyCmd::New { path } } => {
            let key = DeviceKey::create(&path).map_err(input)?;
            println!("gate: created device key {} (key id {}, mode 0600); keep it off backups that leave the gateway", path.display(), key.id());
            Ok(0)
        }
    }
}
