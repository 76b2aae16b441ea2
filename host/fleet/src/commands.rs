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
//! generate the new PIN itself and return it sealed (libsodium sealed box, X25519) to a
//! one-time key the operator put in the signed command, so the broker never sees it.

use crate::keys::{self, OperatorKey, Permission, SigError, SignatureBlock, TrustedKeys};
use base64::Engine as _;
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
    /// Put the door in `mode` for `for_ms` from when the gateway applies it, then back
    /// to normal (a duration, so the gateway's clock alone decides the end). `normal`
    /// ends a mode early.
    SetDoorMode { door: String, mode: DoorMode, for_ms: u64 },
    /// Revoke the credential with this pseudonymous reference (`card:…`, `pin:…`, `nfc:…`,
    /// `plate:…` from `gate credential-ref`, or `subject:<id>` for all of a holder's).
    RevokeCredential { credential_ref: String, reason: String },
    /// Undo a revocation of this reference (a card found again, a revocation by mistake).
    ReinstateCredential { credential_ref: String, reason: String },
    /// Generate a new PIN for a unit door on the gateway. It comes back only sealed to
    /// `reply_key` (base64 X25519 public key, used once).
    RotateUnitPin { door: String, reply_key: String },
    /// Incremental changes to the subject directory, applied in one transaction. `version`
    /// must be exactly one more than the gateway's: an old one is refused, a gap is refused
    /// (send the missing change, or a snapshot).
    DirectoryChanges { version: u64, changes: Vec<DirectoryChange> },
    /// One page (1-based, in order) of a whole directory at `version`, for a new gateway
    /// or to resynchronise: each page adds or updates its subjects; the last page removes
    /// every subject no page named and sets the version.
    DirectorySnapshot { version: u64, page: u32, pages: u32, subjects: Vec<DirectorySubject> },
    /// The guard `guard` (a pseudonymous id the directory holds with role guard) releases
    /// `door` once, for the `reason` logged with it (e.g. "elderly resident waiting").
    GuardOpen { door: String, guard: String, reason: String },
    /// What needs the guard: active alarms, and denied attempts of the last `minutes`
    /// (1..=120); answered as JSON in the reply's detail.
    GuardAttention { guard: String, minutes: u32 },
    /// The guard registers a walk-in visitor (pseudonymous id, no name or ID number) of
    /// resident `host`: the gateway answers with a pass for `doors`, valid from now for
    /// `for_ms` and `uses` entries, signed by its device key.
    GuardVisitor { guard: String, visitor: String, host: String, doors: Vec<String>, for_ms: u64, uses: u32 },
    /// A door panel: a visitor calls `resident` (pseudonymous) at `door`; the gateway rings
    /// the indoor station, then the phone, then the guard (`[calls]`).
    CallResident { door: String, resident: String },
    /// An answer to the live call `call` by the `indoor` station, the resident's `phone`
    /// (through the property platform) or the `guard`: `open` opens that door once for that
    /// call, else the call is declined. One-shot like every command; a late one is refused.
    AnswerCall { call: String, via: String, open: bool },
}

/// A subject as the property platform sends it: a pseudonymous id, and credentials only
/// as references keyed with the site's reference key (`card:…`, `pin:…`, `nfc:…`,
/// `plate:…` as `gate credential-ref` makes them), so no card number or PIN is ever on
/// the broker; the gateway computes the same reference from what is presented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectorySubject {
    pub id: String,
    /// `resident`, `staff`, `visitor`, `guard` or `contractor`.
    pub role: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub credentials: Vec<String>,
}

/// One change of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum DirectoryChange {
    /// Add the subject, or replace its role, groups and credentials.
    Upsert { subject: DirectorySubject },
    /// Remove the subject, its credentials and its face template.
    Remove { id: String },
}

impl CommandAction {
    /// The permission the signing key needs.
    pub fn permission(&self) -> Permission {
        match self {
            CommandAction::OpenDoorOnce { .. } | CommandAction::SetDoorMode { .. } => Permission::Door,
            CommandAction::RevokeCredential { .. } | CommandAction::ReinstateCredential { .. } => Permission::Credentials,
            CommandAction::RotateUnitPin { .. } => Permission::Pin,
            CommandAction::DirectoryChanges { .. } | CommandAction::DirectorySnapshot { .. } => Permission::Directory,
            CommandAction::GuardOpen { .. } | CommandAction::GuardAttention { .. } | CommandAction::GuardVisitor { .. } => Permission::Guard,
            CommandAction::CallResident { .. } | CommandAction::AnswerCall { .. } => Permission::Intercom,
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
    /// A secret for the sender alone (a new unit PIN), base64 of a sealed box to the
    /// command's `reply_key`; open it with [`ReplyKey::open`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<String>,
    pub at_ms: i64,
}

/// What the host did for a command: a readable detail, and a secret the sender alone
/// may read (sealed before it leaves the gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub detail: String,
    pub secret_for_sender: Option<String>,
}

impl From<String> for Executed {
    fn from(detail: String) -> Self {
        Executed { detail, secret_for_sender: None }
    }
}

/// The operator's one-time X25519 key for a command whose answer carries a secret.
pub struct ReplyKey(crypto_box::SecretKey);

impl ReplyKey {
    pub fn generate() -> ReplyKey {
        ReplyKey(crypto_box::SecretKey::generate(&mut rand_core::OsRng))
    }

    /// The public half, base64, for the command's `reply_key`.
    pub fn public_b64(&self) -> String {
        B64.encode(self.0.public_key().as_bytes())
    }

    /// Opens a reply's `sealed` field.
    pub fn open(&self, sealed_b64: &str) -> Result<String, CommandError> {
        let bad = |what: &str| CommandError::Malformed(format!("sealed reply: {what}"));
        let ct = B64.decode(sealed_b64).map_err(|_| bad("not base64"))?;
        let pt = self.0.unseal(&ct).map_err(|_| bad("does not open with this reply key (tampered, or for another command)"))?;
        String::from_utf8(pt).map_err(|_| bad("not text"))
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn reply_public_key(b64: &str) -> Result<crypto_box::PublicKey, CommandError> {
    let raw: [u8; 32] = B64.decode(b64).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| CommandError::Malformed("`reply_key` is not a base64 X25519 public key (32 bytes)".into()))?;
    Ok(crypto_box::PublicKey::from(raw))
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
    /// The reply for the host's outcome of executing it; a secret is sealed to the
    /// command's reply key here, and dropped if the command had none.
    pub fn reply(&self, outcome: Result<Executed, String>, at_ms: i64) -> CommandReply {
        let (ok, code, detail, sealed) = match outcome {
            Ok(e) => {
                let sealed = match (&e.secret_for_sender, &self.command.action) {
                    (Some(secret), CommandAction::RotateUnitPin { reply_key, .. }) => {
                        match reply_public_key(reply_key).and_then(|k| k.seal(&mut rand_core::OsRng, secret.as_bytes()).map_err(|_| CommandError::Malformed("sealing failed".into()))) {
                            Ok(ct) => Some(B64.encode(ct)),
                            Err(err) => {
                                return CommandReply {
                                    id: self.command.id.clone(),
                                    ok: false,
                                    code: "failed".into(),
                                    detail: format!("{}; the secret could not be sealed: {err}", e.detail),
                                    sender: Some(self.sender.clone()),
                                    sealed: None,
                                    at_ms,
                                }
                            }
                        }
                    }
                    _ => None,
                };
                (true, "done".to_string(), e.detail, sealed)
            }
            Err(d) => (false, "failed".to_string(), d, None),
        };
        CommandReply { id: self.command.id.clone(), ok, code, detail, sender: Some(self.sender.clone()), sealed, at_ms }
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

/// A command that passed every check but its signature (no cryptography yet): what the
/// link may look at cheaply for anything anyone with a broker account can send.
#[derive(Debug, Clone)]
pub struct UnverifiedCommand {
    signed: SignedCommand,
    command: Command,
}

/// The cheap checks of a raw command received on `cmd/{topic_id}` for this site /
/// gateway, in this order: size, JSON, body, id, target, lifetime, validity window, reply
/// key. Nothing in the body is acted on; [`UnverifiedCommand::verify`] checks the signature.
pub fn precheck(raw: &[u8], topic_id: &str, site: &str, gateway: &str, now_ms: i64) -> Result<UnverifiedCommand, CommandError> {
    if raw.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge(raw.len()));
    }
    let signed: SignedCommand = serde_json::from_slice(raw).map_err(|e| CommandError::Malformed(e.to_string()))?;
    let command: Command = serde_json::from_str(&signed.command).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if command.id != topic_id {
        return Err(CommandError::IdMismatch { topic: topic_id.into(), body: command.id });
    }
    if command.site != site || command.gateway != gateway {
        return Err(CommandError::WrongTarget { site: command.site, gateway: command.gateway });
    }
    if command.expires_at_ms.saturating_sub(command.issued_at_ms) > MAX_COMMAND_LIFETIME_MS {
        return Err(CommandError::LifetimeTooLong(command.expires_at_ms.saturating_sub(command.issued_at_ms)));
    }
    check_window(&command, now_ms)?;
    if let CommandAction::RotateUnitPin { reply_key, .. } = &command.action {
        reply_public_key(reply_key)?;
    }
    Ok(UnverifiedCommand { signed, command })
}

fn check_window(command: &Command, now_ms: i64) -> Result<(), CommandError> {
    if now_ms < command.issued_at_ms.saturating_sub(CLOCK_SKEW_MS) || now_ms > command.expires_at_ms {
        return Err(CommandError::Expired { issued: command.issued_at_ms, expires: command.expires_at_ms, now: now_ms });
    }
    Ok(())
}

impl UnverifiedCommand {
    /// The key this command names, before anything is verified (for counting, never trust).
    pub fn claimed_key(&self) -> &str {
        &self.signed.signature.key_id
    }

    /// The signature check (one Ed25519 verification): a trusted key holding the
    /// permission the action needs signed the command text as is.
    pub fn verify(self, trusted: &TrustedKeys) -> Result<AuthenticCommand, CommandError> {
        let sender = keys::verify(trusted, COMMAND_DOMAIN, self.signed.command.as_bytes(), &self.signed.signature, self.command.action.permission())?;
        Ok(AuthenticCommand(AuthorisedCommand { command: self.command, sender }))
    }
}

/// A command whose signature, permission, target and validity were checked, not yet
/// whether its id is new ([`admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticCommand(AuthorisedCommand);

impl AuthenticCommand {
    /// The command's id.
    pub fn id(&self) -> &str {
        &self.0.command.id
    }
}

/// Every check but the replay check: [`precheck`] then [`UnverifiedCommand::verify`].
pub fn authenticate(raw: &[u8], topic_id: &str, site: &str, gateway: &str, trusted: &TrustedKeys, now_ms: i64) -> Result<AuthenticCommand, CommandError> {
    precheck(raw, topic_id, site, gateway, now_ms)?.verify(trusted)
}

/// Admits an authentic command at `now_ms`: still within its window, and its id never
/// received before (recorded in `seen` until it expires).
pub fn admit(cmd: AuthenticCommand, seen: &mut dyn SeenCommands, now_ms: i64) -> Result<AuthorisedCommand, CommandError> {
    let AuthenticCommand(cmd) = cmd;
    check_window(&cmd.command, now_ms)?;
    if !seen.record_once(&cmd.command.id, cmd.command.expires_at_ms, now_ms) {
        return Err(CommandError::Replayed(cmd.command.id));
    }
    Ok(cmd)
}

/// Checks a raw command received on `cmd/{topic_id}` for this site / gateway:
/// [`authenticate`] then [`admit`].
pub fn authorise(raw: &[u8], topic_id: &str, site: &str, gateway: &str, trusted: &TrustedKeys, seen: &mut dyn SeenCommands, now_ms: i64) -> Result<AuthorisedCommand, CommandError> {
    admit(authenticate(raw, topic_id, site, gateway, trusted, now_ms)?, seen, now_ms)
}

/// The reply for a refused command.
pub fn refusal(topic_id: &str, err: &CommandError, at_ms: i64) -> CommandReply {
    CommandReply { id: topic_id.into(), ok: false, code: err.code().into(), detail: err.to_string(), sender: None, sealed: None, at_ms }
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
        let reply = a.reply(Ok(Executed::from("released".to_string())), NOW + 20);
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

        let mut long = cmd("c4", CommandAction::SetDoorMode { door: "d".into(), mode: DoorMode::HeldOpen, for_ms: 1 }, NOW);
        long.expires_at_ms = NOW + MAX_COMMAND_LIFETIME_MS + 1;
        let raw = serde_json::to_vec(&sign_command(&k, &long).unwrap()).unwrap();
        assert!(matches!(authorise(&raw, "c4", "s", "g", &t, &mut seen, NOW), Err(CommandError::LifetimeTooLong(_))));
    }

    #[test]
    fn a_new_pin_reaches_only_the_holder_of_the_reply_key() {
        let (k, t) = setup(&[Permission::Pin]);
        let mut seen = Seen::default();
        let rk = ReplyKey::generate();
        let rotate = cmd("c5", CommandAction::RotateUnitPin { door: "b3".into(), reply_key: rk.public_b64() }, NOW);
        let raw = serde_json::to_vec(&sign_command(&k, &rotate).unwrap()).unwrap();
        let a = authorise(&raw, "c5", "s", "g", &t, &mut seen, NOW).unwrap();
        let reply = a.reply(Ok(Executed { detail: "rotated".into(), secret_for_sender: Some("483920".into()) }), NOW);
        let wire = serde_json::to_string(&reply).unwrap();
        assert!(reply.ok && !wire.contains("483920"), "{wire}");
        assert_eq!(rk.open(reply.sealed.as_deref().unwrap()).unwrap(), "483920");
        assert!(ReplyKey::generate().open(reply.sealed.as_deref().unwrap()).is_err(), "another key cannot open it");

        // A reply key that is not a key is refused before anything is done.
        let bad = cmd("c6", CommandAction::RotateUnitPin { door: "b3".into(), reply_key: "nope".into() }, NOW);
        let raw = serde_json::to_vec(&sign_command(&k, &bad).unwrap()).unwrap();
        assert!(matches!(authorise(&raw, "c6", "s", "g", &t, &mut seen, NOW), Err(CommandError::Malformed(_))));
        // Secrets are never attached to other commands' replies.
        let (k2, t2) = setup(&[Permission::Door]);
        let open = cmd("c7", CommandAction::OpenDoorOnce { door: "b3".into() }, NOW);
        let raw = serde_json::to_vec(&sign_command(&k2, &open).unwrap()).unwrap();
        let a = authorise(&raw, "c7", "s", "g", &t2, &mut seen, NOW).unwrap();
        assert_eq!(a.reply(Ok(Executed { detail: "x".into(), secret_for_sender: Some("1".into()) }), NOW).sealed, None);
    }
}
