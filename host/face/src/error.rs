//! Typed errors of the face matcher; messages name what failed and where, never biometric data.
//! Variants are documented by their messages.
#![allow(missing_docs)]

use std::path::PathBuf;

/// Why the face engine could not be started; the gate then runs without face.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("face models: cannot read manifest {path}: {source}")]
    ManifestRead { path: PathBuf, source: std::io::Error },
    #[error("face models: manifest {path} is malformed: {message}")]
    ManifestParse { path: PathBuf, message: String },
    #[error("face models: manifest {path} lists no {role} for this machine ({arch})")]
    ManifestIncomplete { path: PathBuf, role: &'static str, arch: &'static str },
    #[error("face models: {path} is missing (run `cargo xtask models` or `cargo xtask setup`)")]
    Missing { path: PathBuf },
    #[error("face models: {path} has sha256 {actual}, the manifest expects {expected}; the file is corrupt or not the one listed")]
    Corrupt { path: PathBuf, expected: String, actual: String },
    #[error("face models: {path} is not listed in the manifest")]
    Unexpected { path: PathBuf },
    #[error("face models: cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("face models: cannot load ONNX Runtime from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("face models: {path} does not load as a {role} model: {message}")]
    Model { path: PathBuf, role: &'static str, message: String },
    #[error("face matcher settings: {0}")]
    Config(String),
}

/// Why a frame could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("frame: {0}")]
    Frame(String),
    #[error("face model inference failed in {stage}: {message}")]
    Inference { stage: &'static str, message: String },
}

/// Why a template store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("template store {path}: {source}")]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error("template store {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("device key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("template store {path} was written under device key {stored}, but the key file gives {given}; use the right key file or re-key")]
    ForeignKey { path: PathBuf, stored: String, given: String },
    #[error("template of subject {subject:?} failed authentication: it was tampered with, moved from another subject, or encrypted under another key")]
    Tampered { subject: String },
    #[error("subject id {0:?} is not a valid pseudonymous id (1-64 characters of A-Z a-z 0-9 . _ -)")]
    InvalidSubject(String),
    #[error("subject {0:?} has no active face consent; record consent before enrolling")]
    NoConsent(String),
    #[error("consent record is incomplete: {0}")]
    InvalidConsent(String),
    #[error("enrolment of {subject:?} failed: {accepted} usable sample(s) of {needed} needed ({reasons})")]
    NotEnoughSamples { subject: String, accepted: usize, needed: usize, reasons: String },
    #[error("enrolment of {subject:?} failed: the samples do not show one person (lowest agreement {score:.2})")]
    InconsistentSamples { subject: String, score: f32 },
    #[error("template store {path}: another connection held it for longer than {waited_ms} ms (a backup, an inspector's sqlite3?); nothing was changed, run the command again when it is closed")]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("template store {path}: the template of {subject:?} is deleted but its bytes are still in {file}; the erasure is recorded as pending and the next withdrawal, purge or start of the store finishes it")]
    NotErased { path: PathBuf, subject: String, file: PathBuf },
    #[error(transparent)]
    Face(#[from] FaceError),
}
