//! The one error type of the cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The error type of bodies the cache is handed (the proxy's body error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong in the store or in a fill.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A file operation under the cache directory failed.
    #[error("cache file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The digest's algorithm is not one the cache can verify (only sha256 and sha512 are stored).
    #[error("digest algorithm `{0}` cannot be verified")]
    UnsupportedAlgorithm(String),
    /// The body's bytes hash to something else: it never becomes an entry.
    #[error("body does not match its digest {expected}")]
    DigestMismatch { expected: String },
    /// The body ended before (or ran past) the length the upstream announced.
    #[error("body of {got} bytes where {expected} were announced")]
    LengthMismatch { expected: u64, got: u64 },
    /// The upstream body failed while it was being filled.
    #[error("upstream body failed")]
    Upstream(#[source] BoxError),
    /// The upstream body stalled.
    #[error("upstream body idle for more than {0:?}")]
    Idle(Duration),
    /// A client following a fill learns that the fill failed (the leader's error, as text: it is shared).
    #[error("the fill of {digest} failed: {reason}")]
    FillFailed { digest: String, reason: Arc<str> },
    /// A blocking file task did not finish (panicked or cancelled at shutdown).
    #[error("blocking file task")]
    Task(#[source] tokio::task::JoinError),
}

impl CacheError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CacheError {
        let path = path.into();
        move |source| CacheError::Io { path, source }
    }
}
