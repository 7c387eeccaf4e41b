//! Single-flight fills. The first request for an uncached digest becomes the [`Filler`]: once the upstream
//! answered 200 it hands the body to a background task that writes a temporary file, hashing as it goes.
//! Every request for the same digest meanwhile becomes a [`Joiner`] and reads the growing file, so N clients
//! cost one upstream request and none waits for the whole body before its first byte.
//!
//! The end decides what readers see: verified (digest and announced length), fsynced and renamed → readers end
//! cleanly; anything else (upstream error, stall, wrong digest, truncation, disk error) → the temporary file is
//! removed and every reader's stream ends with an error, so no client takes wrong bytes for a complete blob.
//!
//! A client that disconnects only drops its reader. When every client has left, the fill still runs to its end
//! (bounded by the idle timeout): the bytes are on their way and the next pull wants them.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mirrorgate_registry::Digest;
use tokio::sync::watch;

use crate::error::{BoxError, CacheError};
use crate::read::FileBody;
use crate::store::{blocking, Cache};
use crate::verify::Hasher;

/// Where a fill stands; readers watch it.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// The leader has not got the upstream's answer yet.
    Waiting,
    /// Bytes are arriving; `len` is the length the upstream announced.
    Streaming {
        written: u64,
        len: Option<u64>,
    },
    /// Verified and in place: `written` bytes in all.
    Done {
        written: u64,
    },
    Failed(Arc<str>),
    /// The leader got no cacheable answer; joiners go upstream themselves.
    Abandoned,
}

/// What the leader and its joiners share.
pub(crate) struct FillShared {
    pub(crate) tx: watch::Sender<Phase>,
    pub(crate) file: Arc<File>,
    tmp: PathBuf,
    /// Recorded as referencing the digest once the fill is verified; joiners from other scopes must not read
    /// this fill (the caller checks [`Joiner::scope`]).
    scope: Option<String>,
}

/// What [`Cache::begin`] decided for one request.
pub enum Begin {
    /// This request fetches from upstream and fills (or abandons).
    Lead(Filler),
    /// Another request is already fetching this digest.
    Join(Joiner),
}

/// The right (and duty) to fill one digest. Dropped without [`Filler::start`] it abandons the fill and lets
/// joiners go upstream themselves.
pub struct Filler {
    cache: Cache,
    digest: Digest,
    shared: Arc<FillShared>,
    started: bool,
}

/// A request waiting for another's fill of the same digest.
pub struct Joiner {
    digest: Digest,
    shared: Arc<FillShared>,
}

impl Cache {
    /// Starts or joins the fill of `digest` for `scope`. `Ok(None)` when the cache cannot store this digest (an
    /// algorithm it cannot verify).
    pub fn begin(&self, digest: &Digest, scope: Option<&str>) -> Result<Option<Begin>, CacheError> {
        if Hasher::for_algorithm(digest.algorithm()).is_err() {
            return Ok(None);
        }
        let mut fills = self
            .inner
            .fills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = fills.get(digest.as_str()) {
            return Ok(Some(Begin::Join(Joiner {
                digest: digest.clone(),
                shared: shared.clone(),
            })));
        }
        let tmp = self.temp_path();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(CacheError::io(&tmp))?;
        let (tx, _) = watch::channel(Phase::Waiting);
        let shared = Arc::new(FillShared {
            tx,
            file: Arc::new(file),
            tmp,
            scope: scope.map(str::to_owned),
        });
        fills.insert(digest.to_string(), shared.clone());
        Ok(Some(Begin::Lead(Filler {
            cache: self.clone(),
            digest: digest.clone(),
            shared,
            started: false,
        })))
    }

    fn end_fill(&self, digest: &Digest) {
        self.inner
            .fills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest.as_str());
    }
}

impl Filler {
    /// Hands the upstream's 200 body to the background fill and returns this client's reader. `len` is the
    /// announced `Content-Length`; the fill's scope is recorded as referencing the digest once it is verified.
    pub fn start<S>(mut self, len: Option<u64>, body: S) -> FileBody
    where
        S: Stream<Item = Result<Bytes, BoxError>> + Send + Unpin + 'static,
    {
        self.started = true;
        self.shared
            .tx
            .send_replace(Phase::Streaming { written: 0, len });
        let reader = FileBody::following(
            self.digest.clone(),
            self.shared.file.clone(),
            self.shared.tx.subscribe(),
            len,
        );
        let cache = self.cache.clone();
        let digest = self.digest.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let outcome = run(&cache, &digest, &shared, len, body).await;
            let outcome = match outcome {
                Ok(written) => match &shared.scope {
                    Some(s) => cache
                        .add_references(s, [digest.clone()])
                        .await
                        .map(|()| written),
                    None => Ok(written),
                },
                Err(e) => Err(e),
            };
            cache.end_fill(&digest);
            match outcome {
                Ok(written) => {
                    shared.tx.send_replace(Phase::Done { written });
                    cache.evict();
                }
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %mirrorgate_report::Report(&e), "cache fill failed");
                    let _ = std::fs::remove_file(&shared.tmp);
                    cache.inner.observer.fill_failed();
                    shared
                        .tx
                        .send_replace(Phase::Failed(Arc::from(e.to_string())));
                }
            }
        });
        reader
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        if !self.started {
            self.cache.end_fill(&self.digest);
            let _ = std::fs::remove_file(&self.shared.tmp);
            self.shared.tx.send_replace(Phase::Abandoned);
        }
    }
}

impl Joiner {
    /// The scope whose request leads this fill.
    pub fn scope(&self) -> Option<&str> {
        self.shared.scope.as_deref()
    }

    /// Waits until the leader has an answer: its reader when it fills, `None` when it abandoned (go upstream).
    pub async fn wait(self) -> Option<FileBody> {
        let mut rx = self.shared.tx.subscribe();
        let len = loop {
            match &*rx.borrow_and_update() {
                Phase::Waiting => {}
                Phase::Abandoned => return None,
                Phase::Streaming { len, .. } => break *len,
                Phase::Done { written } => break Some(*written),
                Phase::Failed(_) => break None,
            }
            if rx.changed().await.is_err() {
                return None;
            }
        };
        Some(FileBody::following(
            self.digest,
            self.shared.file.clone(),
            rx,
            len,
        ))
    }
}

/// Writes the body, verifies and commits it; returns the length.
async fn run<S>(
    cache: &Cache,
    digest: &Digest,
    shared: &Arc<FillShared>,
    len: Option<u64>,
    mut body: S,
) -> Result<u64, CacheError>
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + Unpin + 'static,
{
    let idle = cache.inner.settings.fill_idle_timeout;
    let mut hasher = Hasher::for_algorithm(digest.algorithm())?;
    let mut written: u64 = 0;
    loop {
        let chunk = match tokio::time::timeout(idle, body.next()).await {
            Err(_) => return Err(CacheError::Idle(idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(CacheError::Upstream(e)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if chunk.is_empty() {
            continue;
        }
        hasher.update(&chunk);
        let n = chunk.len() as u64;
        if let Some(expected) = len.filter(|l| written + n > *l) {
            return Err(CacheError::LengthMismatch {
                expected,
                got: written + n,
            });
        }
        let file = shared.file.clone();
        let tmp = shared.tmp.clone();
        let at = written;
        blocking(move || {
            std::os::unix::fs::FileExt::write_all_at(&*file, &chunk, at)
                .map_err(CacheError::io(tmp))
        })
        .await?;
        written += n;
        shared.tx.send_replace(Phase::Streaming { written, len });
    }
    if let Some(expected) = len.filter(|l| *l != written) {
        return Err(CacheError::LengthMismatch {
            expected,
            got: written,
        });
    }
    if hasher.finish() != digest.as_str() {
        return Err(CacheError::DigestMismatch {
            expected: digest.to_string(),
        });
    }
    let this = cache.clone();
    let shared2 = shared.clone();
    let digest2 = digest.clone();
    blocking(move || {
        shared2
            .file
            .sync_all()
            .map_err(CacheError::io(&shared2.tmp))?;
        this.commit(&shared2.tmp, &digest2, None, written)
    })
    .await?;
    Ok(written)
}
