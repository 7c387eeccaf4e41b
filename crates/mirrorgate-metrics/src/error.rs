//! The crate's one error type.

/// What can go wrong while building the metrics or rendering them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A metric could not be created or registered (bad name, duplicate family, bad buckets).
    /// Only happens at start-up, and only through a programming error, but it is reported, not panicked.
    #[error("cannot register metric `{name}`")]
    Register {
        /// The family that failed.
        name: String,
        /// What prometheus said.
        #[source]
        source: prometheus::Error,
    },
    /// Gathered metric families could not be rendered in the text exposition format.
    #[error("cannot encode metrics in the text format")]
    Encode(#[source] prometheus::Error),
}
