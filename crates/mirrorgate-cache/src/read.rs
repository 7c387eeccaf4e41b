//! [`FileBody`]: the bytes of a complete entry (whole or a range) or of a fill in progress, read with
//! positional reads off the async workers, a bounded chunk at a time (a multi-GiB blob costs one chunk of
//! memory per reader).

use std::fs::File;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::Stream;
use mirrorgate_registry::Digest;
use tokio::sync::watch;

use crate::error::CacheError;
use crate::fill::Phase;
use crate::store::blocking;

const CHUNK: u64 = 256 * 1024;

/// A stream of bytes from the cache. A reader of a fill ends with an error, never cleanly, unless the fill was
/// verified and committed; with an announced length it gets the last byte only then.
pub struct FileBody {
    // The mutex makes the stream `Sync` (response bodies must be); it is never contended.
    inner: Mutex<BoxStream<'static, Result<Bytes, CacheError>>>,
    len: Option<u64>,
}

struct State {
    digest: Digest,
    file: Arc<File>,
    pos: u64,
    /// Complete entry: read up to here (exclusive). A fill: follow `progress` instead.
    end: u64,
    progress: Option<watch::Receiver<Phase>>,
    finished: bool,
}

impl FileBody {
    /// Bytes `start..end` of a complete entry.
    pub fn range(file: Arc<File>, digest: Digest, start: u64, end: u64) -> FileBody {
        let state = State {
            digest,
            file,
            pos: start,
            end,
            progress: None,
            finished: false,
        };
        FileBody::new(state, Some(end.saturating_sub(start)))
    }

    pub(crate) fn following(
        digest: Digest,
        file: Arc<File>,
        progress: watch::Receiver<Phase>,
        len: Option<u64>,
    ) -> FileBody {
        let state = State {
            digest,
            file,
            pos: 0,
            end: 0,
            progress: Some(progress),
            finished: false,
        };
        FileBody::new(state, len)
    }

    fn new(state: State, len: Option<u64>) -> FileBody {
        let s = stream::unfold(state, |mut st| async move {
            if st.finished {
                return None;
            }
            match next_chunk(&mut st).await {
                Ok(Some(b)) => Some((Ok(b), st)),
                Ok(None) => None,
                Err(e) => {
                    st.finished = true;
                    Some((Err(e), st))
                }
            }
        });
        FileBody {
            inner: Mutex::new(Box::pin(s)),
            len,
        }
    }

    /// The length the stream will have if it ends cleanly, when known.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the stream is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }
}

/// The next chunk, `None` at a clean end.
async fn next_chunk(st: &mut State) -> Result<Option<Bytes>, CacheError> {
    let limit = match st.progress.as_mut() {
        None => st.end,
        Some(rx) => loop {
            let phase = rx.borrow_and_update().clone();
            match phase {
                // The last byte of an announced length waits for verification: a client holding every byte
                // of a Content-Length body takes it as complete, so a wrong body must never arrive whole.
                Phase::Streaming { written, len } => {
                    let cap = len.map_or(written, |l| written.min(l.saturating_sub(1)));
                    if cap > st.pos {
                        break cap;
                    }
                }
                Phase::Done { written } => break written,
                Phase::Failed(reason) => {
                    return Err(CacheError::FillFailed {
                        digest: st.digest.to_string(),
                        reason,
                    })
                }
                Phase::Abandoned => {
                    return Err(CacheError::FillFailed {
                        digest: st.digest.to_string(),
                        reason: Arc::from("abandoned"),
                    })
                }
                Phase::Waiting => {}
            }
            if rx.changed().await.is_err() {
                return Err(CacheError::FillFailed {
                    digest: st.digest.to_string(),
                    reason: Arc::from("the fill went away"),
                });
            }
        },
    };
    if st.pos >= limit {
        return Ok(None);
    }
    let n = usize::try_from((limit - st.pos).min(CHUNK)).unwrap_or(CHUNK as usize);
    let buf = read_at(&st.file, &st.digest, st.pos, n).await?;
    st.pos += n as u64;
    Ok(Some(Bytes::from(buf)))
}

/// `n` bytes at `at`. First tried on the calling worker with `RWF_NOWAIT`, which the kernel answers from the
/// page cache or refuses at once (`EAGAIN`) rather than wait for the disk: a hot blob — the common cache hit —
/// then streams without a hop to the blocking pool per chunk, which otherwise sets the pace of a single fast
/// client. Whatever the page cache does not hold (or a filesystem without `RWF_NOWAIT`) is read on the
/// blocking pool, so a worker never waits on the disk.
async fn read_at(
    file: &Arc<File>,
    digest: &Digest,
    at: u64,
    n: usize,
) -> Result<Vec<u8>, CacheError> {
    let mut buf = vec![0u8; n];
    let cached = rustix::io::preadv2(
        &**file,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        at,
        rustix::io::ReadWriteFlags::NOWAIT,
    )
    .unwrap_or(0);
    if cached == n {
        return Ok(buf);
    }
    read_rest(file.clone(), digest.to_string(), buf, at, cached).await
}

/// Fills `buf[from..]` (the bytes at `at + from`) on the blocking pool: the part a `RWF_NOWAIT` read left.
async fn read_rest(
    file: Arc<File>,
    digest: String,
    mut buf: Vec<u8>,
    at: u64,
    from: usize,
) -> Result<Vec<u8>, CacheError> {
    blocking(move || {
        let rest = buf.get_mut(from..).unwrap_or_default();
        std::os::unix::fs::FileExt::read_exact_at(&*file, rest, at + from as u64)
            .map_err(CacheError::io(digest))?;
        Ok(buf)
    })
    .await
}

impl Stream for FileBody {
    type Item = Result<Bytes, CacheError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap()
    }

    // The blocking-pool half picks up exactly where a short `RWF_NOWAIT` read stopped.
    #[tokio::test]
    async fn the_rest_of_a_short_read_lands_after_it() {
        let mut f = tempfile::tempfile().unwrap();
        let data = pattern(3 * 100_000);
        f.write_all(&data).unwrap();
        let file = Arc::new(f);
        let at = 50_000u64;
        let n = 200_000usize;
        let mut buf = vec![0u8; n];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf[..70_000], at).unwrap();
        let got = read_rest(file, "d".into(), buf, at, 70_000).await.unwrap();
        assert_eq!(got, &data[50_000..250_000]);
    }

    // A read whose pages are partly evicted (so `RWF_NOWAIT` answers short or `EAGAIN` where the filesystem
    // honours the eviction) still yields every byte in order; a range ends exactly at its end.
    #[tokio::test]
    async fn a_partly_evicted_file_streams_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data = pattern(3 * CHUNK as usize + 12_345);
        let mut f = File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        for (off, len) in [(CHUNK / 2, CHUNK / 2), (2 * CHUNK, CHUNK)] {
            let _ = rustix::fs::fadvise(
                &*file,
                off,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::DontNeed,
            );
        }
        let whole = crate::tests::collect(FileBody::range(
            file.clone(),
            digest(),
            0,
            data.len() as u64,
        ))
        .await
        .unwrap();
        assert_eq!(whole.len(), data.len());
        assert!(whole == data, "bytes differ");
        let part = crate::tests::collect(FileBody::range(file, digest(), 1000, CHUNK * 2 + 7))
            .await
            .unwrap();
        assert!(
            part == data[1000..(CHUNK * 2 + 7) as usize],
            "range bytes differ"
        );
    }
}
