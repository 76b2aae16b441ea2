//! Remote commands (open a door once, set a door's mode with an expiry, revoke a
//! credential, rotate a unit door's PIN), their authorisation, and replies.
//!
//! Authorisation design: a command is the JSON of a [`Command`] signed (Ed25519,
//! domain `gate-command/1`) by an operator key listed in the site's trusted keys with
//! the permission the action needs ([`CommandAction::permission`]). The command names
//! its target site and gateway (a command for one gateway is useless at another), is
//! valid only between `issued_at_ms - skew` and `expires_at_ms` (at most
//! [`MAX_COMMAND_LIFETIME_MS`] after issue), and its id is remembered until it expires,
//! so a captured command cannot be replayed. The verified key id is the sender logged
//! with the command and echoed in the reply.
//!
//! No command carries a PIN, card number or biometric data: credentials are named by
//! the host's pseudonymous credential reference, and a PIN rotation makes the gateway
//! generate the new PIN itself and hand it to the property over its local channel.

use crate::keys::{self, OperatorKey, Permission, SigError, SignatureBlock, TrustedKeys};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Signature domain of commands.
pub const COMMAND_DOMAIN: &str = "gate-command/1";
/// Longest validity a command may ask for (5 minutes).
pub const MAX_COMMAND_LIFETIME_MS: i64 = 5 * 60 * 1000;
/// Clock skew tolerated between operator and gateway.
pub const CLOCK_SKEW_MS: i64 = 60 * 1000;
/// Largest command message accepted.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;

/// How a door behaves until a mode's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DoorMode {
    /// Credentials decide, as configured.
    Normal,
    /// Nobody is let in by credentials (fire release and egress still work: the host owns them).
    Locked,
    /// The door stays released.
    HeldOpen,
}

/// What the operator wants done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum CommandAction {
    /// Release the door once (one-shot; never repeated on reconnect).
    OpenDoorOnce { door: String },
    /// Put the door in `mode` until `until_ms`, then back to normal.
    SetDoorMode { door: String, mode: DoorMode, until_ms: i64 },
    /// Revoke the credential with this pseudonymous reference (never a raw card number).
    RevokeCredential { credential_ref: String, reason: String },
    /// Generate a new PIN for a unit door on the gateway; the PIN never travels over MQTT.
    RotateUnitPin { door: String },
}

impl CommandAction {
    /// The permission the signing key needs.
    pub fn permission(&self) -> Permission {
        match self {
            CommandAction::OpenDoorOnce { .. } | CommandAction::SetDoorMode { .. } => Permission::Door,
            CommandAction::RevokeCredential { .. } => Permission::Credentials,
            CommandAction::RotateUnitPin { .. } => Permission::Pin,
        }
    }
}

/// The signed content of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Correlation id: also the topic level and the reply's id.
    pub id: String,
    pub site: String,
    pub gateway: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub action: CommandAction,
}

/// A command on the wire: `command` is the JSON of a [`Command`], signed as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SignedCommand {
    pub command: String,
    pub signature: SignatureBlock,
}

/// The gateway's answer on `cmd/{id}/reply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandReply {
    /// The command's id (correlation id).
    pub id: String,
    pub ok: bool,
    /// "done", or the refusal code ("unauthorised", "expired", "replayed", "failed", …).
    pub code: String,
    /// Human-readable detail.
    pub detail: String,
    /// Verified sender key id; absent when the signature did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    pub at_ms: i64,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    #[error("command is malformed: {0}")]
    Malformed(String),
    #[error("command is {0} bytes, larger than {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
    #[error("unauthorised: {0}")]
    Unauthorised(#[from] SigError),
    #[error("command is for {site}/{gateway}, not this gateway")]
    WrongTarget { site: String, gateway: String },
    #[error("command expired or not yet valid (issued {issued}, expires {expires}, now {now})")]
    Expired { issued: i64, expires: i64, now: i64 },
    #[error("command asks to be valid for {0} ms, longer than {MAX_COMMAND_LIFETIME_MS}")]
    LifetimeTooLong(i64),
    #[error("command id {0:?} was already received (replayed)")]
    Replayed(String),
    #[error("command id {topic:?} in the topic does not match {body:?} in the body")]
    IdMismatch { topic: String, body: String },
}

impl CommandError {
    /// Reply code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Malformed(_) | CommandError::TooLarge(_) | CommandError::IdMismatch { .. } => "malformed",
            CommandError::Unauthorised(_) => "unauthorised",
            CommandError::WrongTarget { .. } => "wrong-target",
            CommandError::Expired { .. } | CommandError::LifetimeTooLong(_) => "expired",
            CommandError::Replayed(_) => "replayed",
        }
    }
}

/// A command whose signature, permission, target, validity and freshness were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorisedCommand {
    pub command: Command,
    /// Key id of the operator who signed it.
    pub sender: String,
}

impl AuthorisedCommand {
    /// The reply for the host's outcome of executing it.
    pub fn reply(&self, outcome: Result<String, String>, at_ms: i64) -> CommandReply {
        let (ok, code, detail) = match outcome {
            Ok(d) => (true, "done".to_string(), d),
            Err(d) => (false, "failed".to_string(), d),
        };
        CommandReply { id: self.command.id.clone(), ok, code, detail, sender: Some(self.sender.clone()), at_ms }
    }
}

/// Builds and signs a command (operator side).
pub fn sign_command(key: &OperatorKey, command: &Command) -> Result<SignedCommand, CommandError> {
    let text = serde_json::to_string(command).map_err(|e| CommandError::Malformed(e.to_string()))?;
    Ok(SignedCommand { signature: key.sign(COMMAND_DOMAIN, text.as_bytes()), command: text })
}

/// Remembers command ids until they expire; persisted by [`crate::store::FleetStore`].
pub trait SeenCommands {
    /// Records `id` (valid until `expires_at_ms`); false if it was already recorded.
    fn record_once(&mut self, id: &str, expires_at_ms: i64, now_ms: i64) -> bool;
}

/// Checks a raw command received on `cmd/{topic_id}` for this site / gateway.
pub fn authorise(
    raw: &[u8],
    topic_id: &str,
    site: &str,
    gateway: &str,
    trusted: &TrustedKeys,
    seen: &mut dyn SeenCommands,
    now_ms: i64,
) -> Result<AuthorisedCommand, CommandError> {
    if raw.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(raw.len()));
    }
    let signed: SignedCommand = serde_json::from_slice(raw).map_err(|e| CommandError::Malformed(e.to_string()))?;
    // The body is parsed only to learn which permission the action needs; nothing in it
    // is acted on before the signature verifies.
    let command: Command = serde_json::from_str(&signed.command).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let sender = keys::verify(trusted, COMMAND_DOMAIN, signed.command.as_bytes(), &signed.signature, command.action.permission())?;
    if command.id != topic_id {
        return Err(CommandError::IdMismatch { topic: topic_id.into(), body: command.id });
    }
    if command.site != site || command.gateway != gateway {
        return Err(CommandError::WrongTarget { site: command.site, gateway: command.gateway });
    }
    if command.expires_at_ms - command.issued_at_ms > MAX_COMMAND_LIFETIME_MS {
        return Err(CommandError::LifetimeTooLong(command.expires_at_ms - command.issued_at_ms));
    }
    if now_ms < command.issued_at_ms - CLOCK_SKEW_MS || now_ms > command.expires_at_ms {
        return Err(CommandError::Expired { issued: command.issued_at_ms, expires: command.expires_at_ms, now: now_ms });
    }
    if !seen.record_once(&command.id, command.expires_at_ms, now_ms) {
        return Err(CommandError::Replayed(command.id));
    }
    Ok(AuthorisedCommand { command, sender })
}

/// The reply for a refused command.
pub fn refusal(topic_id: &str, err: &CommandError, at_ms: i64) -> CommandReply {
    CommandReply { id: topic_id.into(), ok: false, code: err.code().into(), detail: err.to_string(), sender: None, at_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Seen(HashMap<String, i64>);
    impl SeenCommands for Seen {
        fn record_once(&mut self, id: &str, exp: i64, now: i64) -> bool {
            self.0.retain(|_, e| *e >= now);
            self.0.insert(id.into(), exp).is_none()
        }
    }

    fn setup(may: &[Permission]) -> (OperatorKey, TrustedKeys) {
        let k = OperatorKey::generate("guard-desk").unwrap();
        let t = TrustedKeys::from_config(&[k.trusted_entry(may)]).unwrap();
        (k, t)
    }

    fn cmd(id: &str, action: CommandAction, now: i64) -> Command {
        Command { id: id.into(), site: "s".into(), gateway: "g".into(), issued_at_ms: now, expires_at_ms: now + 30_000, action }
    }

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn an_authorised_command_names_its_sender_once() {
        let (k, t) = setup(&[Permission::Door]);
        let raw = serde_json::to_vec(&sign_command(&k, &cmd("c1", CommandAction::OpenDoorOnce { door: "lobby".into() }, NOW)).unwrap()).unwrap();
        let mut seen = Seen::default();
        let a = authorise(&raw, "c1", "s", "g", &t, &mut seen, NOW + 10).unwrap();
        assert_eq!(a.sender, "guard-desk");
        let reply = a.reply(Ok("released".into()), NOW + 20);
        assert!(reply.ok && reply.id == "c1" && reply.sender.as_deref() == Some("guard-desk"));
        // The same bytes again are a replay.
        assert_eq!(authorise(&raw, "c1", "s", "g", &t, &mut seen, NOW + 30), Err(CommandError::Replayed("c1".into())));
    }

    #[test]
    fn refusals_cover_permission_target_time_and_tampering() {
        let (k, t) = setup(&[Permission::Door]);
        let mut seen = Seen::default();
        let revoke = CommandAction::RevokeCredential { credential_ref: "cred-77".into(), reason: "lost".into() };
        let raw = serde_json::to_vec(&sign_command(&k, &cmd("c2", revoke, NOW)).unwrap()).unwrap();
        let e = authorise(&raw, "c2", "s", "g", &t, &mut seen, NOW).unwrap_err();
        assert_eq!(e.code(), "unauthorised", "{e}");

        let open = cmd("c3", CommandAction::OpenDoorOnce { door: "d".into() }, NOW);
        let raw = serde_json::to_vec(&sign_command(&k, &open).unwrap()).unwrap();
        assert!(matches!(authorise(&raw, "c3", "s", "other", &t, &mut seen, NOW), Err(CommandError::WrongTarget { .. })));
        assert!(matches!(authorise(&raw, "c3", "s", "g", &t, &mut seen, NOW + 31_000), Err(CommandError::Expired { .. })));
        assert!(matches!(authorise(&raw, "c9", "s", "g", &t, &mut seen, NOW), Err(CommandError::IdMismatch { .. })));

        let mut signed = sign_command(&k, &open).unwrap();
        signed.command = signed.command.replace("\"d\"", "\"vault\"");
        let raw = serde_json::to_vec(&signed).unwrap();
        assert!(matches!(authorise(&raw, "c3", "s", "g", &t, &mut seen, NOW), Err(CommandError::Unauthorised(SigError::BadSignature(_)))));

        let mut long = cmd("c4", CommandAction::SetDoorMode { door: "d".into(), mode: DoorMode::HeldOpen, until_ms: NOW + 1 }, NOW);
        long.expires_at_ms = NOW + MAX_COMMAND_LIFETIME_MS + 1;
        let raw = serde_json::to_vec(&sign_command(&k, &long).unwrap()).unwrap();
        assert!(matches!(authorise(&raw, "c4", "s", "g", &t, &mut seen, NOW), Err(CommandError::LifetimeTooLong(_))));
    }
}
