//! The built-in pull-through cache: a content-addressed store on local disk, shared by every route, bounded by
//! size (least recently used first) and by a free-space floor, that survives restarts and fills each digest
//! once however many clients ask for it at the same time.
//!
//! Why a crate of its own: the store's guarantees (a wrong or truncated body never becomes an entry; eviction
//! never breaks a reader; a restart after a crash serves what was complete) are about files and ordering, not
//! HTTP. `mirrorgate-proxy` decides *what* may be served to *whom* and asks this crate for bytes.
//!
//! Contents:
//! - [`Cache`] (`store`): open/clean/reload, entries by digest, which scope (route + repository) references
//!   which digest, tags with their fetch time, eviction.
//! - `fill`: single-flight streaming fills ([`Begin`], [`Filler`], [`Joiner`]): temp file → verify → fsync →
//!   rename, while every waiting client reads the growing file.
//! - [`FileBody`] (`read`): a stream of an entry or of a fill in progress, with ranges.
//! - `layout`: where each fact lives on disk; `index`: the in-memory LRU order rebuilt from it.
//! - `verify`: sha256 / sha512 digests; `statfs`: free space of the cache's filesystem.
//! - `admin`: [`stats`] and [`purge`] of a store on disk, safe next to a running gateway.
//! - [`CacheError`] (`error`).

mod admin;
mod error;
mod fill;
mod index;
mod layout;
mod read;
mod statfs;
mod store;
mod verify;

pub use admin::{purge, stats, Purged, Selection, Stats};
pub use error::CacheError;
pub use fill::{Begin, Filler, Joiner};
pub use read::FileBody;
pub use store::{scope, Cache, CacheSettings, Entry, NoObserver, Observer, TagEntry};
pub use verify::{can_verify, sha256_of};

#[cfg(test)]
mod tests;
