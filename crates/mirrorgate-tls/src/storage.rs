//! Writing key material to disk so that a crash never leaves a half-written key and nobody but
//! the gateway's user can read it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::TlsError;

/// Creates the storage directory (and parents) with mode 0700 if it does not exist yet.
/// An existing directory keeps its mode: operators may have chosen a group on purpose.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), TlsError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::io(dir, e))
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename, so
/// readers see either the old or the new content; the file gets `mode` before any byte is
/// written, so a secret is never world-readable even for an instant.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", rand::random::<u32>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| TlsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Secrets land with the requested mode and replace the old content whole.
    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    // A missing storage directory is created private.
    #[test]
    fn ensure_dir_creates_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/certs");
        ensure_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
