//! The one error type of the ledger.

use std::path::PathBuf;

/// What can go wrong reading, writing or asking the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The store cannot be opened (missing, unreadable, not a database, folder not writable).
    #[error("cannot open the usage store `{}`", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A statement against an open store failed.
    #[error("usage store `{}`: {doing}", path.display())]
    Store {
        path: PathBuf,
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The store's folder cannot be created.
    #[error("cannot create the folder of the usage store `{}`", path.display())]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The writer thread is gone (after shutdown, or it could not start).
    #[error("the usage writer has stopped")]
    Stopped,
    /// A call to the shared ledger in Redis failed (unreachable, timed out, refused).
    #[error("shared usage ledger in redis: {doing}")]
    Redis {
        doing: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// A date that is not `YYYY-MM-DD`.
    #[error("`{text}` is not a date (expected YYYY-MM-DD)")]
    BadDate {
        text: String,
        #[source]
        source: time::error::Parse,
    },
    /// An unknown grouping.
    #[error("unknown grouping `{0}`: expected day, tenant, user, route or repository")]
    BadGrouping(String),
    /// An unknown output format.
    #[error("unknown format `{0}`: expected table, csv or json")]
    BadFormat(String),
    /// `from` after `to`.
    #[error("the range is empty: from {from} is after to {to}")]
    EmptyRange { from: String, to: String },
}
