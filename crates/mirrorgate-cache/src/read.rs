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
    let n = (limit - st.pos).min(CHUNK);
    let file = st.file.clone();
    let at = st.pos;
    let digest = st.digest.to_string();
    let buf = blocking(move || {
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at)
            .map_err(CacheError::io(digest))?;
        Ok(buf)
    })
    .await?;
    st.pos += n;
    Ok(Some(Bytes::from(buf)))
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
