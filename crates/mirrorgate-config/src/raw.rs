//! The file as written: serde structs that reject unknown keys and keep the span of every value that
//! validation may complain about. Nothing here is trusted; `validate` turns it into `model` types.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: S<RawServer>,
    #[serde(default)]
    pub tls: Option<S<RawTls>>,
    #[serde(default)]
    pub auth: Option<S<RawAuth>>,
    #[serde(default)]
    pub tenant: Vec<S<RawTenant>>,
    #[serde(default)]
    pub limits: Option<S<RawLimits>>,
    #[serde(default)]
    pub cache: Option<S<RawCache>>,
    #[serde(default)]
    pub route: Vec<S<RawRoute>>,
    #[serde(default)]
    pub usage: Option<S<RawUsage>>,
    pub audit: Option<S<RawAudit>>,
}

/// `[usage]`: the usage ledger (on by default; the section only moves the store or changes retention).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUsage {
    pub store: Option<S<String>>,
    pub retention: Option<S<String>>,
    pub export_token: Option<S<String>>,
    pub export_token_env: Option<S<String>>,
    pub export_token_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub file: S<String>,
    pub max_size: Option<S<RawSize>>,
    pub keep: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub https: S<String>,
    pub http: Option<S<String>>,
    pub admin: Option<S<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<S<String>>,
    /// `false` turns HSTS off, a string replaces the header value.
    pub hsts: Option<S<HstsSetting>>,
    pub upstream_timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub client_header_timeout: Option<S<String>>,
    pub shutdown_grace: Option<S<String>>,
    pub log_format: Option<S<String>>,
    pub metrics_user_labels: Option<S<bool>>,
    pub idle_timeout: Option<S<String>>,
    pub max_connections: Option<S<u32>>,
    pub max_connections_per_ip: Option<S<u32>>,
    pub allow_missing_sni: Option<S<bool>>,
    pub upstream_proxy: Option<S<String>>,
    pub upstream_proxy_username: Option<S<String>>,
    pub upstream_proxy_username_env: Option<S<String>>,
    pub upstream_proxy_username_file: Option<S<String>>,
    pub upstream_proxy_password: Option<S<String>>,
    pub upstream_proxy_password_env: Option<S<String>>,
    pub upstream_proxy_password_file: Option<S<String>>,
    pub no_proxy: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum HstsSetting {
    Enabled(bool),
    Value(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub storage: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub acme: Option<S<RawAcme>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub directory: S<String>,
    #[serde(default)]
    pub contact: Vec<S<String>>,
    pub challenge: Option<S<String>>,
    pub directory_ca: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub htpasswd: Option<S<String>>,
    pub api_tokens: Option<S<String>>,
    pub token: Option<S<RawToken>>,
    pub ldap: Option<S<RawLdap>>,
}

/// `[auth.ldap]`: users checked against an LDAP directory after htpasswd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLdap {
    pub url: S<String>,
    pub starttls: Option<S<bool>>,
    pub ca: Option<S<String>>,
    pub bind_dn: S<String>,
    pub bind_password: Option<S<String>>,
    pub bind_password_env: Option<S<String>>,
    pub bind_password_file: Option<S<String>>,
    pub user_base: S<String>,
    pub user_filter: Option<S<String>>,
    pub group_attribute: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawToken {
    pub key: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub service: Option<S<String>>,
    pub ttl: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTenant {
    pub name: S<String>,
    #[serde(default)]
    pub users: Vec<S<String>>,
    #[serde(default)]
    pub cidrs: Vec<S<String>>,
    pub requests_per_second: Option<S<u32>>,
    pub burst: Option<S<u32>>,
    pub bytes_per_second: Option<S<RawSize>>,
    pub concurrent_requests: Option<S<u32>>,
    pub tenant_requests_per_second: Option<S<u32>>,
    pub tenant_bytes_per_second: Option<S<RawSize>>,
    pub tenant_concurrent_requests: Option<S<u32>>,
    pub bytes_per_day: Option<S<RawSize>>,
    #[serde(default)]
    pub allow: Vec<S<String>>,
    #[serde(default)]
    pub deny: Vec<S<String>>,
    #[serde(default)]
    pub ldap_groups: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub requests_per_second: Option<S<u32>>,
    pub burst: Option<S<u32>>,
    pub bytes_per_second: Option<S<RawSize>>,
    pub concurrent_requests: Option<S<u32>>,
    pub redis: Option<S<String>>,
    pub redis_fail_open: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub dir: Option<S<String>>,
    pub max_size: Option<S<RawSize>>,
    pub min_free: Option<S<RawSize>>,
    pub tag_ttl: Option<S<String>>,
    pub stale_if_error: Option<S<String>>,
}

/// Sizes are strings (`"50MiB"`) or integers (bytes).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub host: S<String>,
    pub upstream: Option<S<String>>,
    #[serde(default)]
    pub endpoints: Vec<S<String>>,
    pub anonymous: Option<S<bool>>,
    pub docker_hub_library: Option<S<bool>>,
    /// k3s-style rewrites; a TOML table keeps the file's order, and the first match wins.
    pub rewrite: Option<S<toml::Table>>,
    pub blob_redirects: Option<S<String>>,
    pub danger_allow_private_redirects: Option<S<bool>>,
    pub upstream_username: Option<S<String>>,
    pub upstream_username_env: Option<S<String>>,
    pub upstream_username_file: Option<S<String>>,
    pub upstream_password: Option<S<String>>,
    pub upstream_password_env: Option<S<String>>,
    pub upstream_password_file: Option<S<String>>,
    /// A named pool replacing `upstream_username`/`_password` (giving both is an error).
    #[serde(default)]
    pub upstream_credentials: Vec<S<RawUpstreamCredential>>,
    pub upstream_ca: Option<S<String>>,
    pub path_prefix: Option<S<bool>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, S<toml::Value>>,
    pub ns: Option<S<bool>>,
    pub cache: Option<S<bool>>,
    pub tag_ttl: Option<S<String>>,
    #[serde(default)]
    pub deny: Vec<S<String>>,
    pub upstream_proxy: Option<S<String>>,
}

/// An `upstreams` entry written as a table: the URL and that registry's own credentials. (Entries are read as
/// `toml::Value` first, since an entry may also be a bare URL string, and spans do not survive untagged enums:
/// errors inside the table point at the entry.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNamedUpstreamTable {
    pub url: String,
    pub username: Option<String>,
    pub username_env: Option<String>,
    pub username_file: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

/// One `[[route.upstream_credentials]]` member: a name for metrics and logs, and a username/password pair (each
/// inline, `_env` or `_file`), or neither for the member named `anonymous`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamCredential {
    pub name: S<String>,
    pub username: Option<S<String>>,
    pub username_env: Option<S<String>>,
    pub username_file: Option<S<String>>,
    pub password: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub password_file: Option<S<String>>,
}
