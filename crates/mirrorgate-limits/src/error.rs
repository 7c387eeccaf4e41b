//! The crate's error: what can go wrong building a [`crate::Limiter`].
//!
//! A request being over a limit is not an error of this crate but a decision; see
//! [`crate::Limited`].

/// Failures when setting limits up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `[limits] redis` is not a URL the redis client understands.
    #[error("invalid redis URL for shared limits")]
    RedisUrl {
        /// The client's parse error.
        #[source]
        source: redis::RedisError,
    },
    /// Shared mode spawns background tasks (lease renewal, byte flushing, health probes).
    #[error("shared limits need a running tokio runtime")]
    NoRuntime {
        /// Why no runtime was found.
        #[source]
        source: tokio::runtime::TryCurrentError,
    },
}
