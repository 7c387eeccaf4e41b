//! Administration of a store on disk, without opening it as a [`Cache`](crate::Cache): `mirrorgate cache
//! stats|purge` runs next to a gateway that serves from the same directory.
//!
//! Why this is safe while a gateway runs: every fact is a file written whole and renamed into place, and these
//! functions only read or unlink such files; they never touch `tmp/` (a running fill's file). A reader that
//! holds an entry open keeps reading it after an unlink. The running gateway's in-memory index learns of a
//! purged entry on its next lookup (the open fails, the entry is forgotten and fetched again), so its
//! `mirrorgate_cache_bytes` overcounts until then. A fill that is in flight during a purge still lands when it
//! completes: purge removes what is stored at that moment.

use std::collections::HashSet;
use std::path::Path;

use mirrorgate_registry::Digest;

use crate::error::CacheError;
use crate::layout::{Layout, TYPE_SUFFIX};

/// What the store holds, read from its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Complete entries (blobs and manifests) and their bytes.
    pub entries: u64,
    pub bytes: u64,
    /// Entries stored with a `Content-Type`: manifests.
    pub manifests: u64,
    /// Scopes (route + repository) that reference at least one digest.
    pub scopes: u64,
    /// Tags with a recorded fetch.
    pub tags: u64,
    /// Fills (or writes) in progress, and their bytes so far.
    pub in_progress: u64,
    pub in_progress_bytes: u64,
}

/// Which entries [`purge`] removes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Everything: entries, references and tags.
    All,
    /// One digest everywhere: the entry, every scope's reference to it and every tag pointing at it.
    Digest(Digest),
    /// What these scopes (one repository under each route) know: their references and tags; entries no other
    /// scope references any more are removed too. With a digest: only that digest within these scopes.
    Scopes {
        scopes: Vec<String>,
        digest: Option<Digest>,
    },
}

/// What [`purge`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub entries: u64,
    pub bytes: u64,
    pub references: u64,
    pub tags: u64,
}

/// Reads the store's figures. A missing directory is an empty store.
pub fn stats(dir: &Path) -> Result<Stats, CacheError> {
    let layout = Layout::new(dir.to_path_buf());
    let mut s = Stats::default();
    for (path, name) in files_two_deep(&layout.blobs_dir())? {
        if name.ends_with(TYPE_SUFFIX) {
            s.manifests += 1;
            continue;
        }
        s.entries += 1;
        s.bytes += file_len(&path);
    }
    s.scopes = subdirs(&layout.refs_dir())?.len() as u64;
    s.tags = files_two_deep(&layout.tags_dir())?.len() as u64;
    for (path, _) in files(&layout.tmp_dir())? {
        s.in_progress += 1;
        s.in_progress_bytes += file_len(&path);
    }
    Ok(s)
}

/// Removes what `selection` names and reports what went.
pub fn purge(dir: &Path, selection: &Selection) -> Result<Purged, CacheError> {
    let layout = Layout::new(dir.to_path_buf());
    let mut purged = Purged::default();
    match selection {
        Selection::All => {
            for (path, name) in files_two_deep(&layout.blobs_dir())? {
                if let Some(d) = entry_digest(&path, &name) {
                    remove_entry(&layout, &d, &mut purged)?;
                }
            }
            for (path, _) in files_two_deep(&layout.refs_dir())? {
                remove(&path, &mut purged.references)?;
            }
            for (path, _) in files_two_deep(&layout.tags_dir())? {
                remove(&path, &mut purged.tags)?;
            }
        }
        Selection::Digest(d) => {
            for scope_dir in subdirs(&layout.refs_dir())? {
                remove(
                    &scope_dir.join(Layout::reference_name(d)),
                    &mut purged.references,
                )?;
            }
            remove_tags_to(&subdirs(&layout.tags_dir())?, Some(d), &mut purged)?;
            remove_entry(&layout, d, &mut purged)?;
        }
        Selection::Scopes { scopes, digest } => {
            let mut dropped = HashSet::new();
            let mut tag_dirs = Vec::new();
            for scope in scopes {
                let refs = layout.scope_refs_dir(scope);
                for (path, name) in files(&refs)? {
                    let Some(d) = reference_digest(&name) else {
                        continue;
                    };
                    if digest.as_ref().is_some_and(|want| *want != d) {
                        continue;
                    }
                    remove(&path, &mut purged.references)?;
                    dropped.insert(d);
                }
                tag_dirs.push(layout.scope_tags_dir(scope));
            }
            remove_tags_to(&tag_dirs, digest.as_ref(), &mut purged)?;
            // An entry stays while any other scope still references it: that scope may be served from it.
            let mut still = HashSet::new();
            for (_, name) in files_two_deep(&layout.refs_dir())? {
                if let Some(d) = reference_digest(&name) {
                    still.insert(d);
                }
            }
            for d in dropped.difference(&still) {
                remove_entry(&layout, d, &mut purged)?;
            }
        }
    }
    Ok(purged)
}

fn remove_entry(layout: &Layout, d: &Digest, purged: &mut Purged) -> Result<(), CacheError> {
    let path = layout.blob(d);
    let len = file_len(&path);
    let mut n = 0;
    remove(&path, &mut n)?;
    if n > 0 {
        purged.entries += 1;
        purged.bytes += len;
    }
    remove(&layout.media_type(d), &mut 0)
}

/// Removes the tags in `dirs` (all of them, or those pointing at `digest`).
fn remove_tags_to(
    dirs: &[std::path::PathBuf],
    digest: Option<&Digest>,
    purged: &mut Purged,
) -> Result<(), CacheError> {
    for dir in dirs {
        for (path, _) in files(dir)? {
            let points_at = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_owned));
            if digest.is_none_or(|d| points_at.as_deref() == Some(d.as_str())) {
                remove(&path, &mut purged.tags)?;
            }
        }
    }
    Ok(())
}

/// Unlinks `path`, counting it; already gone is fine (the gateway may have evicted it meanwhile).
fn remove(path: &Path, count: &mut u64) -> Result<(), CacheError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            *count += 1;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io(path)(e)),
    }
}

fn entry_digest(path: &Path, name: &str) -> Option<Digest> {
    if name.ends_with(TYPE_SUFFIX) {
        return None;
    }
    let alg = path.parent()?.file_name()?.to_str()?;
    Digest::parse(&format!("{alg}:{name}")).ok()
}

fn reference_digest(name: &str) -> Option<Digest> {
    let (alg, encoded) = name.split_once('-')?;
    Digest::parse(&format!("{alg}:{encoded}")).ok()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The plain files directly in `dir` with their names; none if `dir` does not exist.
fn files(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, CacheError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|(p, _)| p.is_file())
        .collect())
}

fn subdirs(dir: &Path) -> Result<Vec<std::path::PathBuf>, CacheError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|(p, _)| p.is_dir())
        .map(|(p, _)| p)
        .collect())
}

/// The files one level below `dir`'s subdirectories (`blobs/<alg>/*`, `refs/<scope>/*`, `tags/<scope>/*`).
fn files_two_deep(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, CacheError> {
    let mut out = Vec::new();
    for sub in subdirs(dir)? {
        out.extend(files(&sub)?);
    }
    Ok(out)
}

fn list(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, CacheError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(CacheError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((entry.path(), name));
    }
    Ok(out)
}
