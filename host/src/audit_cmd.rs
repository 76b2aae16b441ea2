//! `gate audit verify` and `gate audit show`: how a property or an inspector checks the
//! gateway's audit trail. Exit 0: the chain is whole; 1: it was tampered with (the first bad
//! entry is named); 2: bad arguments or files.

use crate::{input, runtime, Failure};
use anyhow::anyhow;
use base64::Engine;
use clap::Subcommand;
use gate::audit::{AuditLog, Checkpoint};
use gate::config::SiteConfig;
use std::path::{Path, PathBuf};

/// `gate audit ...`.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the whole hash chain and every checkpoint; exits 1 naming the first bad entry.
    Verify {
        #[command(flatten)]
        at: AuditAt,
        /// A checkpoint the gateway published (saved from MQTT) or wrote, to hold the log to.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The gateway's device public key (base64); by default the key of the first checkpoint.
        #[arg(long)]
        device_public: Option<String>,
    },
    /// Print the audit trail readably (or as JSON lines).
    Show {
        #[command(flatten)]
        at: AuditAt,
        /// First entry to print.
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// One JSON object per entry instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Which audit log: the site's (`<state_dir>/audit.sqlite`) or a file named outright.
#[derive(clap::Args)]
pub struct AuditAt {
    /// Site configuration; the audit log is `<state_dir>/audit.sqlite`.
    #[arg(long, required_unless_present = "db")]
    config: Option<PathBuf>,
    /// The audit database itself (e.g. a copy taken off the gateway).
    #[arg(long)]
    db: Option<PathBuf>,
}

impl AuditAt {
    fn path(&self) -> Result<PathBuf, Failure> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let config = self.config.as_deref().ok_or_else(|| input(anyhow!("give --config or --db")))?;
        let cfg = SiteConfig::load(config).map_err(input)?;
        audit_path(config, &cfg)
    }

    fn open(&self) -> Result<AuditLog, Failure> {
        let path = self.path()?;
        if !path.is_file() {
            return Err(input(anyhow!("{}: no audit log here", path.display())));
        }
        AuditLog::open(&path).map_err(runtime)
    }
}

/// The site's audit log: `<state_dir>/audit.sqlite`.
pub fn audit_path(config: &Path, cfg: &SiteConfig) -> Result<PathBuf, Failure> {
    match &cfg.site.state_dir {
        Some(d) => Ok(d.join("audit.sqlite")),
        None => Err(input(anyhow!("{}: set `site.state_dir`: the audit log lives there", config.display()))),
    }
}

/// Runs `gate audit ...`.
pub fn audit(cmd: AuditCmd) -> Result<u8, Failure> {
    match cmd {
        AuditCmd::Verify { at, checkpoint, device_public } => {
            let log = at.open()?;
            let cp = checkpoint.as_deref().map(Checkpoint::read).transpose().map_err(input)?;
            let device = device_public
                .map(|b| {
                    let raw: [u8; 32] =
                        base64::engine::general_purpose::STANDARD.decode(b.trim()).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| input(anyhow!("--device-public: not 32 bytes of base64")))?;
                    ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|e| input(anyhow!("--device-public: {e}")))
                })
                .transpose()?;
            match log.verify(cp.as_ref(), device.as_ref()).map_err(runtime)? {
                Ok(v) => {
                    println!("{}: the audit chain is whole: {} entries, head {}", log.path().display(), v.entries, v.head);
                    match &v.last_checkpoint {
                        Some(c) => println!("checkpoints checked: {}; the newest covers {} entries, signed by {} at {}", v.checkpoints, c.seq, c.public, c.at_ms),
                        None => println!("no checkpoint to check against: a cut tail cannot be detected without one (pass --checkpoint)"),
                    }
                    Ok(0)
                }
                Err(t) => {
                    println!("{}: TAMPERED: {t}", log.path().display());
                    Ok(1)
                }
            }
        }
        AuditCmd::Show { at, from, json } => {
            let log = at.open()?;
            for e in log.entries(from).map_err(runtime)? {
                if json {
                    println!("{}", serde_json::to_string(&e).map_err(runtime)?);
                } else {
                    let when = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.at_ms) * 1_000_000)
                        .ok()
                        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                        .unwrap_or_else(|| e.at_ms.to_string());
                    let shown = |t: &str| gate::plugin::text::sanitize(t, 200);
                    println!("{:>6}  {when}  {:<22} by {:<20} on {:<24} {}", e.seq, shown(&e.action), shown(&e.actor), shown(&e.target), shown(&e.detail));
                }
            }
            Ok(0)
        }
    }
}
