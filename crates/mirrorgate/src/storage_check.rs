//! "Can the gateway write its state folder?", asked by `check` and by `run` before binding anything.
//!
//! The self-signed certificate and the ACME account and certificates are written to `tls.storage`. Without this
//! probe a read-only mount or a full disk surfaces only once `run` tries to write (or, with ACME, at the first
//! renewal), which makes a rollout fail after `check` said the config was fine. Reload does not ask: a disk
//! filling up later must not freeze every config change.

use std::io::Write;
use std::path::{Path, PathBuf};

use mirrorgate_config::{Config, ConfigError, TlsSource};

/// Bytes the probe writes: one page, so a full filesystem (tmpfs included) refuses it.
const PROBE_BYTES: usize = 4096;

/// An error naming `tls.storage` (with its line when the key is written in the file) when the storage folder
/// cannot be written. Only asked when the certificate source writes there (self-signed, ACME).
pub fn storage_writable(path: &Path, config: &Config) -> Result<(), ConfigError> {
    if matches!(config.tls.source, TlsSource::Files { .. }) {
        return Ok(());
    }
    let dir = &config.tls.storage;
    probe(dir).map_err(|e| {
        let (line, column) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| key_position(&text, "tls", "storage"))
            .unwrap_or((0, 0));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            key: "tls.storage".into(),
            message: format!(
                "storage not writable: {} ({e}); the certificate material is kept there",
                dir.display()
            ),
        }
    })
}

/// Writes, syncs and removes a probe file in `dir`, or (when `dir` does not exist yet, as `run` creates it) in
/// its nearest existing ancestor.
fn probe(dir: &Path) -> std::io::Result<()> {
    let target = nearest_existing(dir);
    let file = target.join(format!(".mirrorgate-write-probe-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)?;
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    // The probe may exist even when the write failed (full disk): remove it either way.
    let removed = std::fs::remove_file(&file);
    result?;
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn nearest_existing(dir: &Path) -> PathBuf {
    let mut current = dir;
    while !current.exists() {
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => return PathBuf::from("."),
        }
    }
    current.to_path_buf()
}

/// 1-based line and column of `key = …` inside `[table]`, found by a plain scan (the config was already
/// parsed; this only points the operator at the line).
fn key_position(text: &str, table: &str, key: &str) -> Option<(usize, usize)> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[') {
            current = rest
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            continue;
        }
        if current == table {
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some((i + 1, line.len() - trimmed.len() + 1));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins: the key is found inside its table only, with its line and column.
    #[test]
    fn finds_the_key_in_its_table() {
        let text = "[server]\nstorage = \"no\"\n\n[tls]\n  storage = \"certs\"\n[limits]\n";
        assert_eq!(key_position(text, "tls", "storage"), Some((5, 3)));
        assert_eq!(
            key_position("[tls]\nstorage_x = 1\n", "tls", "storage"),
            None
        );
    }

    // Pins: a writable folder passes and keeps no probe file; a missing folder is judged by its parent.
    #[test]
    fn writable_folder_passes_and_stays_clean() {
        let dir = tempfile::tempdir().unwrap();
        probe(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        probe(&dir.path().join("not/yet")).unwrap();
        assert!(!dir.path().join("not").exists());
    }

    // Pins: a path that cannot hold files (its "folder" is a regular file) is reported.
    #[test]
    fn unwritable_folder_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(probe(&file).is_err());
    }
}
