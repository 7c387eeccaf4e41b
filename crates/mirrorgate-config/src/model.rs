//! The validated config: what every other crate consumes. A value of these types has passed every check, so
//! consumers never re-validate (parse, don't validate).

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;
use url::Url;

/// The whole validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (reload watches it; errors name it).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub tenants: Vec<TenantConfig>,
    pub limits: LimitsConfig,
    /// `[cache]`; `None` = no cache.
    pub cache: Option<CacheConfig>,
    pub routes: Vec<Route>,
    pub usage: UsageConfig,
    /// `[audit]`; `None` writes no audit trail.
    pub audit: Option<AuditConfig>,
}

/// `[usage]`: the usage ledger, always on.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageConfig {
    /// The SQLite file; a relative `store` is resolved against `tls.storage` (default `usage.db` there).
    pub store: PathBuf,
    /// Days older than this are deleted (default 400 days: a year of bills plus a month of disputes).
    pub retention: Duration,
    /// The Bearer token the admin listener's `/usage` asks for; without one it answers loopback clients only.
    pub export_token: Option<Secret>,
}

/// `[audit]`: one JSON line per manifest pull, push or delete and per refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub target: AuditTarget,
    /// The file is rotated (`file.1`, `file.2`, …) before a line would take it past this.
    pub max_size: u64,
    /// Rotated files kept; older ones are deleted.
    pub keep: u32,
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// `file = "-"`: standard output (a collector reads the container's stdout).
    Stdout,
    /// A file, relative to the config file's folder; created if missing, appended to.
    File(std::path::PathBuf),
}

impl Config {
    /// Every concrete host name a certificate must cover (wildcard routes as `*.suffix`).
    pub fn certificate_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.routes.iter().map(|r| r.host.to_string()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// `[server]`: listeners and the timeouts of the forward path.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// Peers whose `X-Forwarded-For` is believed; everyone else's is replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// The `Strict-Transport-Security` value, `None` when turned off with `hsts = false`.
    pub hsts: Option<String>,
    /// Upper bound for the upstream to send response headers, and for any pause in a streamed body.
    /// Default 600 s: the route timeout of the Envoy arrangement this gateway replaces.
    pub upstream_timeout: Duration,
    /// TCP + TLS connect to one endpoint; short (default 10 s) so fallback to the next endpoint is quick.
    pub connect_timeout: Duration,
    /// Time a client has to send its request headers (default 30 s): slow-header clients are cut off.
    pub client_header_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM before connections are closed (default 30 s).
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// Label request metrics by user too (off by default: user names are personal data and, with many users,
    /// the largest cardinality cost; capped at 1000 values even when on).
    pub metrics_user_labels: bool,
    /// A connection with no request in flight (an h2 connection without open streams, a kept-alive HTTP/1.1
    /// connection between requests) is closed after this (default 60 s): idle sockets are file descriptors.
    pub idle_timeout: Duration,
    /// Connections the https and http listeners hold at once (default 20000); past it new ones are closed
    /// right after accept. The admin listener is not counted and keeps answering.
    pub max_connections: u32,
    /// Connections one source address may hold at once (default 256). Counted at accept time, so the address
    /// is the TCP peer's (a proxy in `trusted_proxies` counts as one source).
    pub max_connections_per_ip: u32,
    /// Serve TLS clients that send no SNI (IP-literal access). Off by default: without SNI the certificate a
    /// client accepted vouches for no host, so any routed host could be named over such a connection (421).
    pub allow_missing_sni: bool,
    /// `upstream_proxy` with its credentials; `None` with `no_proxy` empty means "from the environment"
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`).
    pub upstream_proxy: Option<OutboundProxy>,
    /// Hosts (`host`, `*.suffix`, `.suffix`), addresses and CIDRs reached directly. `Some` even when empty if
    /// the key was written (then the environment is not consulted).
    pub no_proxy: Option<Vec<String>>,
}

/// An outbound HTTP proxy: `CONNECT` for https targets, absolute-form requests for http ones.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundProxy {
    /// `http://host:port` (no path, no user info).
    pub url: Url,
    /// Sent as `Proxy-Authorization: Basic`.
    pub credentials: Option<Credentials>,
}

/// A route's `upstream_proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum RouteProxy {
    /// Key left out: `[server]`'s proxy settings (or the environment's).
    #[default]
    Inherit,
    /// `"none"`: this route's upstreams are reached directly.
    Direct,
    /// A proxy URL of its own (the server's credentials and `no_proxy` apply).
    Via(Url),
}

/// Access and diagnostic log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Folder for ACME and self-signed material (created if missing).
    pub storage: PathBuf,
    pub source: TlsSource,
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsSource {
    /// No cert/key and no ACME: a self-signed certificate covering every route host, made at start.
    SelfSigned,
    /// Static PEM files, watched and swapped when they change (cert-manager, hand-managed).
    Files { cert: PathBuf, key: PathBuf },
    /// ACME; until the first certificate is issued the self-signed one is served.
    Acme(AcmeConfig),
}

/// `[tls.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: Url,
    pub contact: Vec<String>,
    pub challenge: AcmeChallenge,
    pub directory_ca: Option<PathBuf>,
}

/// The ACME challenge type answered by the gateway itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

/// `[auth]`.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub htpasswd: Option<PathBuf>,
    /// `api_tokens`: the API token file made by `mirrorgate token` (relative to the config file). It may not
    /// exist yet: the first `mirrorgate token create` makes it, and the gateway picks it up on its next poll.
    pub api_tokens: Option<PathBuf>,
    pub token: Option<TokenConfig>,
    /// `[auth.ldap]`: a directory checked for users htpasswd does not know.
    pub ldap: Option<LdapConfig>,
}

/// `[auth.ldap]`: search the user with the service bind, then bind as the user's DN with the password.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    /// `ldap://` or `ldaps://`.
    pub url: Url,
    /// Upgrade an `ldap://` connection with StartTLS before any bind.
    pub starttls: bool,
    /// Extra CA certificates (PEM) trusted for the directory, besides the system's.
    pub ca: Option<PathBuf>,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub user_base: String,
    /// Contains `{user}`, replaced by the RFC 4515-escaped user name.
    pub user_filter: String,
    /// The user entry's attribute listing the DNs of its groups (`memberOf`).
    pub group_attribute: String,
}

/// `[auth.token]`: the built-in token server.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub key: PathBuf,
    pub issuer: String,
    pub service: String,
    pub ttl: Duration,
}

/// `[[tenant]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub name: String,
    pub users: Vec<String>,
    pub cidrs: Vec<IpNet>,
    // Limits: `None` is "no limit" (the key left out); zero is refused by validation, so the types say so.
    pub requests_per_second: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
    pub bytes_per_second: Option<NonZeroU64>,
    pub concurrent_requests: Option<NonZeroU32>,
    pub tenant_requests_per_second: Option<NonZeroU32>,
    pub tenant_bytes_per_second: Option<NonZeroU64>,
    /// In-flight requests of the whole tenant (`concurrent_requests` is per user).
    pub tenant_concurrent_requests: Option<NonZeroU32>,
    pub bytes_per_day: Option<NonZeroU64>,
    /// `route-host/repository-glob` patterns, `push:` prefixed for push, `delete:` for delete.
    pub allow: Vec<String>,
    /// `route-host/repository-glob[:tag-glob|@digest-glob]` patterns refused even where `allow` matches.
    pub deny: Vec<String>,
    /// Group DNs: an LDAP user in one of them belongs to this tenant.
    pub ldap_groups: Vec<String>,
}

/// `[limits]`: defaults for anonymous clients, per source IP, and the shared-state switch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsConfig {
    pub anonymous: AnonymousLimits,
    pub redis: Option<Url>,
    /// Keep serving on local limits when Redis is unreachable (default true).
    pub redis_fail_open: bool,
}

/// Per-IP limits for anonymous clients; `None` is "no limit", zero is refused by validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnonymousLimits {
    pub requests_per_second: Option<NonZeroU32>,
    pub burst: Option<NonZeroU32>,
    pub bytes_per_second: Option<NonZeroU64>,
    pub concurrent_requests: Option<NonZeroU32>,
}

/// `[[route]]`: one public host (or wildcard) and where its requests go.
#[derive(Debug, Clone)]
pub struct Route {
    pub host: HostPattern,
    /// The registry of last resort; `None` only for path-prefix / ns routes that name upstreams per request.
    pub upstream: Option<Upstream>,
    /// Tried in order before `upstream` (backend caches first).
    pub endpoints: Vec<Url>,
    pub anonymous: bool,
    pub docker_hub_library: bool,
    /// Repository rewrites, first match wins.
    pub rewrite: Vec<(Regex, String)>,
    pub blob_redirects: BlobRedirects,
    /// Off by default: following a redirect to loopback/private addresses would make the gateway an SSRF tool.
    pub danger_allow_private_redirects: bool,
    pub upstream_ca: Option<PathBuf>,
    pub path_prefix: bool,
    /// Upstreams a path-prefix or `?ns=` request may name, by the name clients use (`gcr.io`).
    pub upstreams: Vec<(String, Upstream)>,
    pub ns: bool,
    /// Whether this route uses `[cache]` (on by default when `[cache]` exists).
    pub cache: bool,
    /// This route's override of `[cache] tag_ttl`.
    pub tag_ttl: Option<Duration>,
    /// Deny patterns for everyone on this route (same grammar as a tenant's `deny`).
    pub deny: Vec<String>,
    pub upstream_proxy: RouteProxy,
}

/// `[cache]`: the built-in pull-through cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The store's folder (relative to the config file's folder), created if missing.
    pub dir: PathBuf,
    /// Least recently used entries are removed past this many bytes.
    pub max_size: u64,
    /// Entries are also removed while the filesystem has less than this available.
    pub min_free: Option<u64>,
    /// How long a tag's manifest is served without asking upstream.
    pub tag_ttl: Duration,
    /// How long past `tag_ttl` a known tag is still served when every endpoint fails.
    pub stale_if_error: Duration,
}

/// An upstream registry: its base URL (scheme, host, port; no path) and its own server-side credentials.
/// Credentials belong to exactly one upstream: a route's `upstream_credentials` pool (or its single
/// `upstream_username`/`_password`) to its `upstream`, an `upstreams` entry's `username`/`password` to that
/// entry, so a path-prefix route never hands one registry's account to another.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub url: Url,
    /// The credential pool, in configured order; empty means anonymous. The single form is a pool of one named
    /// [`DEFAULT_CREDENTIAL_NAME`].
    pub credentials: Vec<PoolCredential>,
}

/// The metrics and log name of a credential given in the single form (`upstream_username`/`_password`, or an
/// `upstreams` entry's own).
pub const DEFAULT_CREDENTIAL_NAME: &str = "default";

/// The pool member name that stands for the upstream's anonymous quota (no username, no password).
pub const ANONYMOUS_CREDENTIAL_NAME: &str = "anonymous";

/// One member of an upstream credential pool: the name metrics and logs show (never the secret), and the
/// credentials, or `None` for the `anonymous` member that uses the upstream's anonymous quota.
#[derive(Debug, Clone)]
pub struct PoolCredential {
    pub name: String,
    pub credentials: Option<Credentials>,
}

impl Upstream {
    /// `scheme://host:port` without a trailing slash.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

/// How blob redirects from an upstream (307 to a CDN) reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRedirects {
    /// Fetch the target server-side: limits, byte counts and metrics see the bytes.
    Follow,
    /// Hand the redirect to the client: cheaper, but the bytes bypass the gateway.
    PassThrough,
}

/// Server-side upstream credentials.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// A secret string that never prints itself: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is sent, never where it could be logged.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A route host: exact, or `*.suffix` matching exactly one more label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Holds the suffix without the `*.` (`docker.example` for `*.docker.example`).
    Wildcard(String),
}

impl HostPattern {
    /// Whether a lower-cased host name without port matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }

    /// For a wildcard match, the label in place of `*` (a secret-hostname tenant key).
    pub fn wildcard_label<'a>(&self, host: &'a str) -> Option<&'a str> {
        match self {
            HostPattern::Exact(_) => None,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|l| l.strip_suffix('.'))
                .filter(|l| !l.is_empty() && !l.contains('.')),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the wildcard rule: `*` is exactly one label, like in certificates.
    #[test]
    fn wildcard_matches_one_label() {
        let p = HostPattern::Wildcard("docker.example".into());
        assert!(p.matches("k3y.docker.example"));
        assert!(!p.matches("docker.example"));
        assert!(!p.matches("a.b.docker.example"));
        assert!(!p.matches("xdocker.example"));
        assert_eq!(p.wildcard_label("k3y.docker.example"), Some("k3y"));
    }

    // Pins that secrets never print.
    #[test]
    fn secrets_are_redacted() {
        let c = Credentials {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
