//! The config contract of mirrorgate: one TOML file, read into raw serde structs that reject unknown keys, then
//! validated into runtime types (`Duration`, compiled regexes, parsed URLs and CIDRs) in one pass that collects
//! *every* problem with its file, line and key.
//!
//! Why a crate of its own: the README, the helm chart, `mirrorgate check` and the end-to-end tests all share this
//! contract, and every other crate consumes the validated types only, so a value that reached them is known good.

mod error;
mod locate;
mod model;
mod raw;
mod validate;
mod values;

pub use error::{ConfigError, ConfigErrors};
pub use model::{
    AcmeChallenge, AcmeConfig, AnonymousLimits, AuditConfig, AuditTarget, AuthConfig,
    BlobRedirects, CacheConfig, Config, Credentials, HostPattern, LdapConfig, LimitsConfig,
    LogFormat, OutboundProxy, PoolCredential, Route, RouteProxy, Secret, ServerConfig,
    TenantConfig, TlsConfig, TlsSource, TokenConfig, Upstream, UsageConfig,
    ANONYMOUS_CREDENTIAL_NAME, DEFAULT_CREDENTIAL_NAME,
};

use std::path::Path;

/// Reads and validates the config file at `path`.
///
/// Relative paths inside the file are resolved against the file's folder, so the same config works whatever
/// the working directory of the process is (systemd units, helm mounts, tests).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::file_level(
            path,
            format!("cannot read the config file: {e}"),
        ))
    })?;
    parse(path, &text)
}

/// Validates `text` as if it had been read from `path` (used by `load`, reload and the tests).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    validate::validate(path, text)
}
