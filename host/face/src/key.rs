//! The device key: 32 random bytes in a file outside the database, readable by its owner only.

use crate::error::StoreError;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// A template-encryption key loaded from its key file; wiped on drop.
pub struct DeviceKey {
    bytes: Zeroizing<[u8; 32]>,
    path: PathBuf,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({}, id {})", self.path.display(), self.id())
    }
}

impl DeviceKey {
    /// Creates a new random key file (hex, mode 0600); refuses to overwrite an existing one.
    pub fn create(path: &Path) -> Result<DeviceKey, StoreError> {
        let err = |message: String| StoreError::Key { path: path.to_path_buf(), message };
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).map_err(|e| err(format!("no randomness: {e}")))?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| err(format!("cannot create: {e}")))?;
        let text = Zeroizing::new(hex::encode(bytes.as_ref()) + "\n");
        file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| err(format!("cannot write: {e}")))?;
        Ok(DeviceKey { bytes, path: path.to_path_buf() })
    }

    /// Loads a key file: 64 hex digits. Refuses files that group or others may read.
    pub fn load(path: &Path) -> Result<DeviceKey, StoreError> {
        let err = |message: String| StoreError::Key { path: path.to_path_buf(), message };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(err(format!("permissions {mode:o} let others read the key; run `chmod 600` on it")));
            }
        }
        if !meta.is_file() {
            return Err(err("not a regular file".into()));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| err("expected 64 hex digits (a 256-bit key)".into()))?;
        Ok(DeviceKey { bytes, path: path.to_path_buf() })
    }

    /// A short public fingerprint of the key, stored beside the templates to detect a wrong key.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"gate-face device key id\0");
        h.update(self.bytes.as_ref());
        hex::encode(&h.finalize()[..8])
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Where the key was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_loads_back_with_the_same_id_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.key");
        let k = DeviceKey::create(&path).unwrap();
        assert_eq!(DeviceKey::load(&path).unwrap().id(), k.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(DeviceKey::create(&path).is_err(), "an existing key must never be overwritten");
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.key");
        DeviceKey::create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = DeviceKey::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_short_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.key");
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(&path).unwrap().write_all(b"abcd\n").unwrap();
        assert!(DeviceKey::load(&path).unwrap_err().to_string().contains("64 hex digits"));
    }
}
