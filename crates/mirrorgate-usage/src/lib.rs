//! The usage ledger: what each tenant pulled and pushed, day by day, for billing, "why was I throttled?" and
//! spotting abuse. Prometheus counters are no ledger (they reset on restart, are sampled and have no
//! repository dimension); this crate keeps durable per-day rows in an embedded SQLite file that operators
//! can also read with `sqlite3`.
//!
//! Rows are keyed by (UTC day, tenant, user or token name, route, repository) and count requests, manifest
//! pulls, blob bytes sent, pushes, bytes received, 429s and 403s. The request path records an [`Event`] when a
//! response body ends, so an aborted pull counts the bytes actually sent.
//!
//! Modules:
//! - `event`: one finished response, the row key and the counters it adds.
//! - `batch`: counts summed in memory between flushes; the per-tenant, per-day repository cap.
//! - `store`: the SQLite table, flushes, retention, export queries.
//! - `shared`: the same rows summed in Redis by every replica (`[limits] redis`).
//! - `ledger`: the handle the request path records into, the writer thread, flush and shutdown.
//! - `query`, `format`: what an export asks for and how it is printed (table, CSV, JSON).
//! - `error`: the crate's error.

#![forbid(unsafe_code)]

mod batch;
mod error;
mod event;
mod format;
mod ledger;
mod query;
mod shared;
mod store;

pub use error::UsageError;
pub use event::{Activity, Counts, Event, NONE, OTHER_REPOSITORY};
pub use format::{render, Format};
pub use ledger::{today, Ledger, LedgerOptions, MAX_HELD_ROWS};
pub use query::{format_day, parse_day, GroupBy, Query, Row};
pub use shared::SharedStore;
pub use store::Store;

/// Distinct repositories one tenant gets rows for per day; further ones are counted under
/// [`OTHER_REPOSITORY`]. Far above what a real tenant pulls in a day, small enough that a client walking
/// random names cannot grow the store without bound.
pub const MAX_REPOSITORIES_PER_TENANT_DAY: usize = 1000;
