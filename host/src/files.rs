//! File modes of the gateway's state: the event log, the face template store, the plugin
//! cache and kv, the fleet database, recordings. Their contents say who came home when, so
//! only the gateway's own user may read them: files 0600, directories 0700.
//!
//! The process umask is set to 077 once at start (`private_by_default`), so every file and
//! folder any part of the gateway creates (SQLite's journals included) is private without
//! each writer remembering it; `restrict` tightens a file an older version left readable.

use std::path::Path;

/// Makes every file and directory this process creates owner-only (umask 077).
pub fn private_by_default() {
    #[cfg(unix)]
    // SAFETY: umask only sets the calling process's file-mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Removes group and other permissions from an existing file or directory (a state file an
/// older gate created 0644). A missing path is not an error.
pub fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077))?;
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (SQLite's `-wal`, `-shm`, `-journal`).
pub fn sibling(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_existing_world_readable_file_is_made_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("events.sqlite");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
        restrict(&dir.path().join("absent")).unwrap();
    }
}
