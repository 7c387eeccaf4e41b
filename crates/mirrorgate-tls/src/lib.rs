//! TLS material for mirrorgate's front door.
//!
//! The gateway terminates TLS itself, so it needs certificates that appear, rotate and renew
//! without restarts. This crate provides:
//! - a [`CertResolver`] picking the certificate by SNI (exact, one-label wildcard, default) from
//!   a table swapped atomically, plus TLS-ALPN-01 challenge answers;
//! - [`server_config`], the listener's rustls config (ring provider, TLS 1.2/1.3, ALPN);
//! - [`self_signed`], a persisted self-signed default for setups with no certificate at all;
//! - [`load_pem_pair`] and a [`FileWatcher`] for operator-provided (e.g. Kubernetes Secret) files;
//! - [`AcmeManager`], obtaining and renewing certificates through ACME in the background;
//! - [`CertEvents`], the hook through which metrics learn about expiry and renewals.
//!
//! It takes plain parameters (paths, host lists, durations) so it does not depend on the
//! config schema.

mod acme;
mod error;
mod events;
mod material;
mod resolver;
mod self_signed;
mod server;
mod storage;
mod watcher;

#[cfg(test)]
mod test_support;

pub use acme::{AcmeManager, AcmeSpec, ChallengeKind, Http01Tokens};
pub use error::TlsError;
pub use events::{CertEvents, NoEvents};
pub use material::{leaf_info, load_pem_pair, parse_pem_pair, LeafInfo, LoadedCert};
pub use resolver::{CertResolver, CertTable, ACME_TLS_ALPN};
pub use self_signed::self_signed;
pub use server::server_config;
pub use watcher::FileWatcher;
