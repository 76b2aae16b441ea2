//! Checks `models/manifest.toml` and the files it lists before anything is loaded.

use crate::error::ModelError;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
struct Manifest {
    file: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    path: String,
    role: String,
    sha256: String,
    #[serde(default)]
    arch: Option<String>,
}

/// The verified files the engine loads.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The YuNet face detector.
    pub detector: PathBuf,
    /// The SFace recogniser.
    pub recogniser: PathBuf,
    /// The ONNX Runtime shared library.
    pub runtime: PathBuf,
    /// The presentation-attack (liveness) model, when the manifest lists it and it is in
    /// place; without it every verdict is `Liveness::Unknown`.
    pub liveness: Option<PathBuf>,
}

/// Reads the manifest in `models_dir`, checks each model and the runtime library by sha256,
/// and refuses `.onnx` files that the manifest does not list.
pub fn verify(models_dir: &Path) -> Result<ModelFiles, ModelError> {
    let path = models_dir.join("manifest.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::ManifestRead { path: path.clone(), source })?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| ModelError::ManifestParse { path: path.clone(), message: e.to_string() })?;
    let arch = std::env::consts::ARCH;
    let pick = |role: &'static str| -> Result<&Entry, ModelError> {
        manifest.file.iter().find(|e| e.role == role && e.arch.as_deref().is_none_or(|a| a == arch)).ok_or(ModelError::ManifestIncomplete { path: path.clone(), role, arch })
    };
    // Liveness is optional: not listed, listed but not fetched, or not the pinned file (never
    // loaded then) gives `unknown`, loudly; the detector and recogniser are not optional.
    let liveness = match manifest.file.iter().find(|e| e.role == "liveness") {
        None => None,
        Some(e) => match check(models_dir, e) {
            Ok(p) => Some(p),
            Err(ModelError::Missing { path }) => {
                tracing::warn!(path = %path.display(), "liveness model missing (run `cargo xtask models`); liveness is `unknown`");
                None
            }
            // Not the pinned file: never loaded, and face keeps working with `unknown`.
            Err(e) => {
                tracing::warn!(error = %e, "liveness model refused; liveness is `unknown`");
                None
            }
        },
    };
    let files = ModelFiles { detector: check(models_dir, pick("detector")?)?, recogniser: check(models_dir, pick("recogniser")?)?, runtime: check(models_dir, pick("runtime")?)?, liveness };
    // A model the manifest does not name may be a swapped or left-over file: refuse it loudly.
    if let Ok(dir) = std::fs::read_dir(models_dir) {
        for entry in dir.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "onnx") {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if !manifest.file.iter().any(|e| e.path == name) {
                    return Err(ModelError::Unexpected { path: p });
                }
            }
        }
    }
    Ok(files)
}

fn check(models_dir: &Path, entry: &Entry) -> Result<PathBuf, ModelError> {
    let path = models_dir.join(&entry.path);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ModelError::Missing { path }),
        Err(source) => return Err(ModelError::Read { path, source }),
    };
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| ModelError::Read { path: path.clone(), source })?;
    let actual = hex::encode(hasher.finalize());
    if actual != entry.sha256 {
        return Err(ModelError::Corrupt { path, expected: entry.sha256.clone(), actual });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = String::new();
        for (role, (name, body)) in ["detector", "recogniser", "runtime"].iter().zip(files) {
            std::fs::write(dir.path().join(name), body).unwrap();
            let sha = hex::encode(Sha256::digest(body));
            manifest += &format!("[[file]]\npath = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha}\"\n\n");
        }
        std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        dir
    }

    const FILES: [(&str, &[u8]); 3] = [("d.onnx", b"detector"), ("r.onnx", b"recogniser"), ("lib.so", b"runtime")];

    #[test]
    fn listed_files_with_matching_digests_verify() {
        let dir = site(&FILES);
        let files = verify(dir.path()).unwrap();
        assert_eq!(files.detector, dir.path().join("d.onnx"));
    }

    #[test]
    fn a_missing_model_is_named_and_setup_is_suggested() {
        let dir = site(&FILES);
        std::fs::remove_file(dir.path().join("r.onnx")).unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Missing { .. }));
        assert!(err.to_string().contains("r.onnx") && err.to_string().contains("cargo xtask"));
    }

    #[test]
    fn a_corrupt_model_is_refused_with_both_digests() {
        let dir = site(&FILES);
        std::fs::write(dir.path().join("d.onnx"), b"detectoR").unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn an_unlisted_model_file_is_refused() {
        let dir = site(&FILES);
        std::fs::write(dir.path().join("other.onnx"), b"x").unwrap();
        assert!(matches!(verify(dir.path()).unwrap_err(), ModelError::Unexpected { .. }));
    }

    #[test]
    fn the_liveness_model_is_optional_and_never_used_unless_it_is_the_pinned_file() {
        let dir = site(&FILES);
        let body = b"liveness model";
        let entry = format!("[[file]]\npath = \"l.onnx\"\nrole = \"liveness\"\nsha256 = \"{}\"\n", hex::encode(Sha256::digest(body)));
        let manifest = std::fs::read_to_string(dir.path().join("manifest.toml")).unwrap() + &entry;
        std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        // Listed but not fetched: face works, liveness is off.
        assert_eq!(verify(dir.path()).unwrap().liveness, None);
        std::fs::write(dir.path().join("l.onnx"), body).unwrap();
        assert_eq!(verify(dir.path()).unwrap().liveness, Some(dir.path().join("l.onnx")));
        // Swapped for another file: not loaded, and face still works.
        std::fs::write(dir.path().join("l.onnx"), b"another model").unwrap();
        let files = verify(dir.path()).unwrap();
        assert_eq!(files.liveness, None);
        assert_eq!(files.detector, dir.path().join("d.onnx"));
    }

    #[test]
    fn a_garbled_manifest_names_the_file() {
        let dir = site(&FILES);
        std::fs::write(dir.path().join("manifest.toml"), "[[file]\n").unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("manifest.toml"), "{err}");
    }
}
