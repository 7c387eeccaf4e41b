//! The store: open (clean temp files, rebuild the LRU index from the files), entries by digest, references of
//! scopes to digests, tags, bounded size.
//!
//! A *scope* is the caller's name for "who may see this": the proxy uses route + repository. Content is global
//! (a digest is the same bytes wherever it came from), knowledge is per scope: an entry is served for a scope
//! only after the caller recorded that the scope references it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mirrorgate_registry::{Digest, Tag};

use crate::error::CacheError;
use crate::fill::FillShared;
use crate::index::Index;
use crate::layout::{Layout, TYPE_SUFFIX};
use crate::verify::verify;

/// The scope under which the proxy records what a repository references: the route's label and the
/// repository as the client names it. One definition, shared by the request path and `mirrorgate cache purge`.
pub fn scope(route: &str, repository: &str) -> String {
    format!("{route}|{repository}")
}

/// How the store is bounded and how long a fill may stall.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Least recently used entries are removed while the entries together exceed this.
    pub max_size: u64,
    /// Entries are also removed while the filesystem has less than this available.
    pub min_free: Option<u64>,
    /// A fill whose upstream body sends nothing for this long fails (nobody may be reading it any more).
    pub fill_idle_timeout: Duration,
}

/// Where the store reports what metrics want to know (the proxy connects it to its metrics).
pub trait Observer: Send + Sync {
    /// `n` entries were evicted.
    fn evicted(&self, n: u64);
    /// A fill failed (upstream error, wrong digest, truncated body, disk error).
    fn fill_failed(&self);
    /// The store now holds `bytes` in `entries` entries.
    fn size(&self, bytes: u64, entries: u64);
}

/// An [`Observer`] that ignores everything (tests, tools).
pub struct NoObserver;

impl Observer for NoObserver {
    fn evicted(&self, _: u64) {}
    fn fill_failed(&self) {}
    fn size(&self, _: u64, _: u64) {}
}

/// The cache. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) layout: Layout,
    pub(crate) settings: CacheSettings,
    index: Mutex<Index>,
    pub(crate) fills: Mutex<HashMap<String, Arc<FillShared>>>,
    pub(crate) observer: Arc<dyn Observer>,
    tmp_seq: AtomicU64,
}

/// A complete entry, opened: readers keep the file even if it is evicted meanwhile (an unlinked file stays
/// readable through open descriptors on Linux).
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: Arc<File>,
    pub size: u64,
    /// The `Content-Type` a manifest was first served with (absent for blobs).
    pub media_type: Option<String>,
}

/// What a tag pointed at when it was last fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEntry {
    pub digest: Digest,
    pub fetched: SystemTime,
}

impl Cache {
    /// Opens (creating) the store: removes temporary files a crash left behind, loads every complete entry in
    /// last-use order, and evicts if the bounds shrank since the last run.
    pub fn open(settings: CacheSettings, observer: Arc<dyn Observer>) -> Result<Cache, CacheError> {
        let layout = Layout::new(settings.dir.clone());
        let tmp = layout.tmp_dir();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(CacheError::io(&tmp))?;
        }
        for dir in [tmp, layout.blobs_dir()] {
            std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
        }
        let mut found = scan_entries(&layout.blobs_dir())?;
        found.sort_by_key(|f| f.used);
        let mut index = Index::default();
        for f in &found {
            index.insert(&f.digest, f.size);
        }
        let cache = Cache {
            inner: Arc::new(Inner {
                layout,
                settings,
                index: Mutex::new(index),
                fills: Mutex::new(HashMap::new()),
                observer,
                tmp_seq: AtomicU64::new(0),
            }),
        };
        cache.evict();
        tracing::info!(dir = %cache.inner.layout.root().display(), entries = found.len(), "cache opened");
        Ok(cache)
    }

    /// Bytes held in entries, and how many.
    pub fn usage(&self) -> (u64, usize) {
        let ix = self.index();
        (ix.total(), ix.len())
    }

    /// Whether a complete entry for `digest` exists.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.index().contains(digest.as_str())
    }

    /// Opens the entry for `digest` and marks it used. `None` if absent (or removed behind the store's back,
    /// which also forgets it).
    pub fn open_entry(&self, digest: &Digest) -> Option<Entry> {
        if !self.index().contains(digest.as_str()) {
            return None;
        }
        let path = self.inner.layout.blob(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache entry vanished");
                self.forget(digest.as_str());
                return None;
            }
        };
        let size = file.metadata().ok()?.len();
        // The use time persists as the mtime, so the LRU order survives a restart. Best effort.
        let _ = file.set_modified(SystemTime::now());
        self.index().touch(digest.as_str());
        let media_type = std::fs::read_to_string(self.inner.layout.media_type(digest)).ok();
        Some(Entry {
            file: Arc::new(file),
            size,
            media_type,
        })
    }

    /// Stores `bytes` (a manifest) under `digest` after verifying them, with the `Content-Type` it was served
    /// with.
    pub async fn put(
        &self,
        digest: &Digest,
        media_type: Option<&str>,
        bytes: bytes::Bytes,
    ) -> Result<(), CacheError> {
        verify(digest, &bytes)?;
        let this = self.clone();
        let digest = digest.clone();
        let media_type = media_type.map(str::to_owned);
        blocking(move || {
            let tmp = this.temp_path();
            let mut f = File::create(&tmp).map_err(CacheError::io(&tmp))?;
            f.write_all(&bytes).map_err(CacheError::io(&tmp))?;
            f.sync_all().map_err(CacheError::io(&tmp))?;
            this.commit(&tmp, &digest, media_type.as_deref(), bytes.len() as u64)
        })
        .await?;
        self.evict();
        Ok(())
    }

    /// Reads a whole (small) entry: manifests.
    pub async fn read_all(&self, entry: &Entry) -> Result<bytes::Bytes, CacheError> {
        let file = entry.file.clone();
        let size = entry.size;
        let root = self.inner.layout.root().to_path_buf();
        blocking(move || {
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, 0)
                .map_err(CacheError::io(root))?;
            Ok(bytes::Bytes::from(buf))
        })
        .await
    }

    /// Records that `scope` references each of `digests` (a manifest of it listed them, or the upstream served
    /// them for it).
    pub async fn add_references(
        &self,
        scope: &str,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Result<(), CacheError> {
        let paths: Vec<PathBuf> = digests
            .into_iter()
            .map(|d| self.inner.layout.reference(scope, &d))
            .collect();
        blocking(move || {
            for p in paths {
                if p.exists() {
                    continue;
                }
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(CacheError::io(dir))?;
                }
                File::create(&p).map_err(CacheError::io(&p))?;
            }
            Ok(())
        })
        .await
    }

    /// Whether `scope` is known to reference `digest`.
    pub fn references(&self, scope: &str, digest: &Digest) -> bool {
        self.inner.layout.reference(scope, digest).exists()
    }

    /// Records what `tag` of `scope` points at, fetched now.
    pub async fn put_tag(&self, scope: &str, tag: &Tag, digest: &Digest) -> Result<(), CacheError> {
        let path = self.inner.layout.tag(scope, tag);
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = format!("{digest}\n{secs}\n");
        let this = self.clone();
        blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(CacheError::io(dir))?;
            }
            let tmp = this.temp_path();
            std::fs::write(&tmp, text).map_err(CacheError::io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(CacheError::io(&path))
        })
        .await
    }

    /// What `tag` of `scope` last pointed at, if it was ever fetched.
    pub fn tag(&self, scope: &str, tag: &Tag) -> Option<TagEntry> {
        let text = std::fs::read_to_string(self.inner.layout.tag(scope, tag)).ok()?;
        let mut lines = text.lines();
        let digest = Digest::parse(lines.next()?).ok()?;
        let secs: u64 = lines.next()?.parse().ok()?;
        Some(TagEntry {
            digest,
            fetched: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    /// A fresh temporary path under `tmp/` (emptied at every start).
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .layout
            .tmp_dir()
            .join(format!("{}-{n}", std::process::id()))
    }

    /// Moves a verified, fsynced temporary file into place and indexes it.
    pub(crate) fn commit(
        &self,
        tmp: &Path,
        digest: &Digest,
        media_type: Option<&str>,
        size: u64,
    ) -> Result<(), CacheError> {
        let target = self.inner.layout.blob(digest);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(CacheError::io(dir))?;
        }
        if let Some(t) = media_type {
            // The type first: an entry is never visible without the type it must be served with.
            let type_path = self.inner.layout.media_type(digest);
            let type_tmp = self.temp_path();
            std::fs::write(&type_tmp, t).map_err(CacheError::io(&type_tmp))?;
            std::fs::rename(&type_tmp, &type_path).map_err(CacheError::io(&type_path))?;
        }
        std::fs::rename(tmp, &target).map_err(CacheError::io(&target))?;
        if let Some(dir) = target.parent() {
            // The rename itself survives a crash only once the directory is synced.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.index().insert(digest.as_str(), size);
        Ok(())
    }

    /// Removes least recently used entries while the store is over `max_size` or the filesystem under
    /// `min_free`. Readers of a removed entry keep reading it (their descriptor holds the file).
    pub(crate) fn evict(&self) {
        let settings = &self.inner.settings;
        let mut evicted = 0;
        loop {
            let victim = {
                let mut ix = self.index();
                let over = ix.total() > settings.max_size;
                let low = settings.min_free.is_some_and(|floor| {
                    crate::statfs::available(self.inner.layout.root()).is_some_and(|a| a < floor)
                });
                if !(over || low) {
                    break;
                }
                match ix.pop_oldest() {
                    Some((digest, _)) => digest,
                    None => break,
                }
            };
            if let Ok(d) = Digest::parse(&victim) {
                let _ = std::fs::remove_file(self.inner.layout.blob(&d));
                let _ = std::fs::remove_file(self.inner.layout.media_type(&d));
            }
            evicted += 1;
        }
        if evicted > 0 {
            tracing::debug!(evicted, "cache evicted entries");
            self.inner.observer.evicted(evicted);
        }
        let (bytes, entries) = self.usage();
        self.inner.observer.size(bytes, entries as u64);
    }

    fn forget(&self, digest: &str) {
        self.index().remove(digest);
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent-enough index (each method is one step).
        self.inner
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs blocking file work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(CacheError::Task)?
}

struct Found {
    digest: String,
    size: u64,
    used: SystemTime,
}

/// Every complete entry under `blobs/`: `<algorithm>/<encoded>` files whose name forms a valid digest.
fn scan_entries(blobs: &Path) -> Result<Vec<Found>, CacheError> {
    let mut found = Vec::new();
    for alg in std::fs::read_dir(blobs).map_err(CacheError::io(blobs))? {
        let alg = alg.map_err(CacheError::io(blobs))?;
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        let alg_path = alg.path();
        for entry in std::fs::read_dir(&alg_path).map_err(CacheError::io(&alg_path))? {
            let entry = entry.map_err(CacheError::io(&alg_path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(TYPE_SUFFIX) {
                continue;
            }
            let Ok(digest) = Digest::parse(&format!("{alg_name}:{name}")) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            found.push(Found {
                digest: digest.to_string(),
                size: meta.len(),
                used: meta.modified().unwrap_or(UNIX_EPOCH),
            });
        }
    }
    Ok(found)
}
