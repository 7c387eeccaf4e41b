//! Raw → validated, in one pass that records every problem instead of stopping at the first.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;
use url::Url;

use crate::error::{ConfigError, ConfigErrors};
use crate::locate::Source;
use crate::model::*;
use crate::raw::*;
use crate::values;

/// Defaults, with the reason each is what it is.
mod defaults {
    use std::time::Duration;

    /// The Envoy route timeout of the arrangement mirrorgate replaces; big blobs over slow links need it.
    pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);
    /// Short, so a dead first endpoint costs little before the next one is tried.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Long enough for a slow mobile client, short enough that slow-header attacks free their sockets.
    pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Kubernetes' default terminationGracePeriodSeconds is 30 s.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    /// One year, the value HSTS preload lists ask for.
    pub const HSTS: &str = "max-age=31536000";
    /// Long enough that a client between two pulls keeps its connection, short enough that thousands of
    /// parked sockets do not pile up.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Far above what one instance serves in practice, well below the file-descriptor limit
    /// (RLIMIT_NOFILE is raised to its hard limit at start, commonly 524288 or 1048576).
    pub const MAX_CONNECTIONS: u32 = 20_000;
    /// A busy node behind NAT (a CI runner pulling many layers in parallel) stays far below it; one host
    /// alone cannot take the global cap.
    pub const MAX_CONNECTIONS_PER_IP: u32 = 256;
    /// Docker Hub hands out 300 s tokens; clients refresh on 401 anyway.
    pub const TOKEN_TTL: Duration = Duration::from_secs(300);
    /// A folder beside the config, like `tls.storage`'s `certs`.
    pub const CACHE_DIR: &str = "cache";
    /// Big enough for a working set of a few dozen images, small enough for a default disk.
    pub const CACHE_MAX_SIZE: u64 = 50 << 30;
    /// Short: a moved tag is seen within minutes, yet a burst of pulls of one tag asks upstream once.
    pub const CACHE_TAG_TTL: Duration = Duration::from_secs(600);
    /// A week: an upstream outage over a long weekend does not stop known tags from pulling.
    pub const CACHE_STALE_IF_ERROR: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The usage ledger's file, under `tls.storage` (the folder the gateway already owns and checks).
    pub const USAGE_STORE: &str = "usage.db";
    /// A year of bills plus a month for disputes.
    pub const USAGE_RETENTION: Duration = Duration::from_secs(400 * 86_400);
}

struct Validator<'a> {
    src: Source<'a>,
    base: PathBuf,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err<T>(&mut self, at: &S<T>, key: impl Into<String>, message: impl Into<String>) {
        let e = self.src.error_with_key(at.span().start, key, message);
        self.errors.push(e);
    }

    /// Runs `parse` on a spanned value, recording a failure under `key`.
    fn check<T, U>(
        &mut self,
        at: &S<T>,
        key: impl Into<String>,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        match parse(at.get_ref()) {
            Ok(v) => Some(v),
            Err(m) => {
                self.err(at, key, m);
                None
            }
        }
    }

    /// A path relative to the config file's folder.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// A path that must name a readable file now (certificates, CA bundles, htpasswd).
    fn readable_file(&mut self, at: &S<String>, key: &str) -> Option<PathBuf> {
        let path = self.path(at.get_ref());
        match std::fs::File::open(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                self.err(at, key, format!("cannot read `{}`: {e}", path.display()));
                None
            }
        }
    }

    fn duration(&mut self, at: &Option<S<String>>, key: &str, default: Duration) -> Duration {
        match at {
            Some(s) => self
                .check(s, key, |v| values::duration(v))
                .unwrap_or(default),
            None => default,
        }
    }

    /// A byte limit; zero is refused (see [`values::ZERO_LIMIT`]).
    fn size(&mut self, at: &Option<S<RawSize>>, key: &str) -> Option<NonZeroU64> {
        at.as_ref().and_then(|s| self.check(s, key, values::size))
    }

    /// A count limit; zero is refused (see [`values::ZERO_LIMIT`]).
    fn positive(&mut self, at: &Option<S<u32>>, key: &str) -> Option<NonZeroU32> {
        at.as_ref()
            .and_then(|s| self.check(s, key, |&n| values::count(n)))
    }

    /// A secret given inline, as `*_env` (environment variable name) or `*_file` (path): at most one of them.
    fn secret(
        &mut self,
        key: &str,
        inline: &Option<S<String>>,
        env: &Option<S<String>>,
        file: &Option<S<String>>,
    ) -> Option<String> {
        let given: Vec<&S<String>> = [inline, env, file].into_iter().flatten().collect();
        if given.len() > 1 {
            self.err(
                given[1],
                key,
                format!("give only one of `{key}`, `{key}_env` and `{key}_file`"),
            );
            return None;
        }
        if let Some(v) = inline {
            return Some(v.get_ref().clone());
        }
        if let Some(name) = env {
            return match std::env::var(name.get_ref()) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    self.err(
                        name,
                        format!("{key}_env"),
                        format!("the environment variable `{}` is not set", name.get_ref()),
                    );
                    None
                }
            };
        }
        if let Some(p) = file {
            let path = self.path(p.get_ref());
            return match std::fs::read_to_string(&path) {
                Ok(v) => Some(v.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    self.err(
                        p,
                        format!("{key}_file"),
                        format!("cannot read `{}`: {e}", path.display()),
                    );
                    None
                }
            };
        }
        None
    }
}

/// At most this many unknown keys are collected in one pass (a wrong file would otherwise report hundreds).
const MAX_UNKNOWN_KEYS: usize = 32;

/// Deserializes the text, collecting every unknown key rather than the first: serde stops at the first
/// error, so each unknown key's line is blanked (spaces of the same length, so spans still point into the
/// original text) and the text parsed again. Any other kind of error ends the collection, and only the first
/// error of the pass is kept unless it is an unknown key: what follows another error is likely its echo.
fn deserialize(src: &Source<'_>) -> (Option<RawConfig>, Vec<ConfigError>) {
    let mut text = src.text.to_string();
    let mut errors = Vec::new();
    for _ in 0..=MAX_UNKNOWN_KEYS {
        let e = match toml::from_str::<RawConfig>(&text) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let offset = e.span().map_or(0, |s| s.start);
        let message = e.message().trim().replace('\n', " ");
        let unknown_key = message.starts_with("unknown field");
        if unknown_key || errors.is_empty() {
            errors.push(src.error_at(offset, message));
        }
        if !unknown_key || !blank_line(&mut text, offset) {
            break;
        }
    }
    (None, errors)
}

/// Replaces the line holding `offset` with spaces (byte for byte); false when there is nothing left to blank.
fn blank_line(text: &mut String, offset: usize) -> bool {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    if text[start..end].trim().is_empty() {
        return false;
    }
    let spaces = " ".repeat(end - start);
    text.replace_range(start..end, &spaces);
    true
}

pub(crate) fn validate(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let src = Source { file: path, text };
    let (raw, schema_errors) = deserialize(&src);
    let Some(raw) = raw else {
        return Err(ConfigErrors(schema_errors));
    };
    let schema_count = schema_errors.len();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut v = Validator {
        src,
        base,
        errors: schema_errors,
    };

    let server = server(&mut v, &raw.server);
    let routes: Vec<Route> = raw
        .route
        .iter()
        .enumerate()
        .filter_map(|(i, r)| route(&mut v, i + 1, r))
        .collect();
    duplicate_hosts(&mut v, &raw.route);
    if raw.route.is_empty() {
        v.errors.push(ConfigError::file_level(
            path,
            "no [[route]] is configured: the gateway would serve nothing",
        ));
    }
    let tls = tls(&mut v, raw.tls.as_ref());
    let auth = auth(&mut v, raw.auth.as_ref());
    let tenants = tenants(&mut v, &raw.tenant);
    let limits = limits(&mut v, raw.limits.as_ref());
    let cache = cache(&mut v, raw.cache.as_ref());
    let usage = usage(&mut v, raw.usage.as_ref(), &tls.storage);
    let audit = raw.audit.as_ref().map(|a| audit::audit(&mut v, a));

    if !v.errors.is_empty() {
        // Unknown keys first (they often explain what follows), then the rest in file order.
        v.errors[schema_count..].sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(v.errors));
    }
    match server {
        Some(server) => Ok(Config {
            source: path.to_path_buf(),
            server,
            tls,
            auth,
            tenants,
            limits,
            cache,
            routes,
            usage,
            audit,
        }),
        None => Err(ConfigErrors::single(ConfigError::file_level(
            path,
            "invalid [server] section",
        ))),
    }
}

fn server(v: &mut Validator<'_>, raw: &S<RawServer>) -> Option<ServerConfig> {
    let r = raw.get_ref();
    let https = v.check(&r.https, "server.https", |s| values::socket_addr(s));
    let http = r
        .http
        .as_ref()
        .and_then(|s| v.check(s, "server.http", |s| values::socket_addr(s)));
    let admin = r
        .admin
        .as_ref()
        .and_then(|s| v.check(s, "server.admin", |s| values::socket_addr(s)));
    let trusted_proxies = r
        .trusted_proxies
        .iter()
        .filter_map(|c| v.check(c, "server.trusted_proxies", |s| cidr(s)))
        .collect();
    let hsts = match r.hsts.as_ref().map(|h| h.get_ref()) {
        None | Some(HstsSetting::Enabled(true)) => Some(defaults::HSTS.to_string()),
        Some(HstsSetting::Enabled(false)) => None,
        Some(HstsSetting::Value(s)) => {
            if http::HeaderValue::from_str(s).is_err() || s.is_empty() {
                if let Some(h) = r.hsts.as_ref() {
                    v.err(h, "server.hsts", "not a valid header value");
                }
            }
            Some(s.clone())
        }
    };
    let log_format = match r.log_format.as_ref() {
        None => LogFormat::Text,
        Some(f) => v
            .check(f, "server.log_format", |s| match s.as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("`{other}`: expected \"text\" or \"json\"")),
            })
            .unwrap_or(LogFormat::Text),
    };
    let upstream_timeout = v.duration(
        &r.upstream_timeout,
        "server.upstream_timeout",
        defaults::UPSTREAM_TIMEOUT,
    );
    let connect_timeout = v.duration(
        &r.connect_timeout,
        "server.connect_timeout",
        defaults::CONNECT_TIMEOUT,
    );
    let client_header_timeout = v.duration(
        &r.client_header_timeout,
        "server.client_header_timeout",
        defaults::CLIENT_HEADER_TIMEOUT,
    );
    let shutdown_grace = v.duration(
        &r.shutdown_grace,
        "server.shutdown_grace",
        defaults::SHUTDOWN_GRACE,
    );
    let idle_timeout = v.duration(
        &r.idle_timeout,
        "server.idle_timeout",
        defaults::IDLE_TIMEOUT,
    );
    let max_connections = v
        .positive(&r.max_connections, "server.max_connections")
        .map_or(defaults::MAX_CONNECTIONS, |n| n.get());
    let max_connections_per_ip = v
        .positive(&r.max_connections_per_ip, "server.max_connections_per_ip")
        .map_or(defaults::MAX_CONNECTIONS_PER_IP, |n| n.get());
    if let (Some(a), Some(b)) = (https, http) {
        if a == b {
            if let Some(h) = &r.http {
                v.err(h, "server.http", "the same address as server.https");
            }
        }
    }
    Some(ServerConfig {
        https: https?,
        http,
        admin,
        trusted_proxies,
        hsts,
        upstream_timeout,
        connect_timeout,
        client_header_timeout,
        shutdown_grace,
        log_format,
        metrics_user_labels: r.metrics_user_labels.as_ref().is_some_and(|b| *b.get_ref()),
        idle_timeout,
        max_connections,
        max_connections_per_ip,
        allow_missing_sni: r.allow_missing_sni.as_ref().is_some_and(|b| *b.get_ref()),
        upstream_proxy: egress::server_proxy(v, raw),
        no_proxy: egress::no_proxy(v, &r.no_proxy),
    })
}

fn cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"))
}

fn host_pattern(s: &str) -> Result<HostPattern, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "`{s}` is not a host name (letters, digits, `-` and dots; `*.` prefix for a wildcard)"
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(name.to_string())
    } else {
        HostPattern::Exact(name.to_string())
    })
}

/// One `upstreams` entry: `"https://quay.io"` or `{ url = "...", username_env = "...", password_env = "..." }`.
fn named_upstream(v: &mut Validator<'_>, entry: &S<toml::Value>, key: &str) -> Option<Upstream> {
    let (url, table) = match entry.get_ref() {
        toml::Value::String(url) => (url.clone(), None),
        toml::Value::Table(t) => match t.clone().try_into::<RawNamedUpstreamTable>() {
            Ok(t) => (t.url.clone(), Some(t)),
            Err(e) => {
                v.err(entry, key, e.to_string().trim().to_string());
                return None;
            }
        },
        _ => {
            v.err(
                entry,
                key,
                "expected a URL or a table { url = \"…\", username = …, password = … }",
            );
            return None;
        }
    };
    let url = match values::base_url(&url) {
        Ok(url) => url,
        Err(m) => {
            v.err(entry, format!("{key}.url"), m);
            return None;
        }
    };
    let credentials = table.and_then(|t| {
        // The table's values have no spans of their own: errors point at the entry.
        let at = |o: Option<String>| o.map(|s| S::new(entry.span(), s));
        credentials(
            v,
            entry,
            &format!("{key}.username"),
            [&at(t.username), &at(t.username_env), &at(t.username_file)],
            &format!("{key}.password"),
            [&at(t.password), &at(t.password_env), &at(t.password_file)],
        )
    });
    Some(Upstream {
        url,
        credentials: single_pool(credentials),
    })
}

/// The single form as a pool of one.
fn single_pool(credentials: Option<Credentials>) -> Vec<PoolCredential> {
    credentials
        .map(|c| PoolCredential {
            name: DEFAULT_CREDENTIAL_NAME.to_string(),
            credentials: Some(c),
        })
        .into_iter()
        .collect()
}

/// `[[route.upstream_credentials]]`: names unique and non-empty, each member a username/password pair, except
/// `anonymous`, which has neither.
fn credential_pool(
    v: &mut Validator<'_>,
    raw: &[S<RawUpstreamCredential>],
    k: &dyn Fn(&str) -> String,
) -> Vec<PoolCredential> {
    let mut pool: Vec<PoolCredential> = Vec::with_capacity(raw.len());
    for (j, member) in raw.iter().enumerate() {
        let m = member.get_ref();
        let key = |field: &str| k(&format!("upstream_credentials[{}].{field}", j + 1));
        let name = m.name.get_ref().trim().to_string();
        if name.is_empty() {
            v.err(&m.name, key("name"), "must not be empty");
            continue;
        }
        if pool.iter().any(|p| p.name == name) {
            v.err(
                &m.name,
                key("name"),
                format!("`{name}` names two members of the pool"),
            );
            continue;
        }
        let given = [
            &m.username,
            &m.username_env,
            &m.username_file,
            &m.password,
            &m.password_env,
            &m.password_file,
        ]
        .iter()
        .any(|o| o.is_some());
        if !given {
            if name == ANONYMOUS_CREDENTIAL_NAME {
                pool.push(PoolCredential {
                    name,
                    credentials: None,
                });
            } else {
                v.err(
                    &m.name,
                    key("username"),
                    format!("missing: only the member named `{ANONYMOUS_CREDENTIAL_NAME}` goes without a username and password"),
                );
            }
            continue;
        }
        if name == ANONYMOUS_CREDENTIAL_NAME {
            v.err(
                &m.name,
                key("name"),
                format!("`{ANONYMOUS_CREDENTIAL_NAME}` stands for the anonymous quota and takes no username or password"),
            );
            continue;
        }
        if let Some(credentials) = credentials(
            v,
            member,
            &key("username"),
            [&m.username, &m.username_env, &m.username_file],
            &key("password"),
            [&m.password, &m.password_env, &m.password_file],
        ) {
            pool.push(PoolCredential {
                name,
                credentials: Some(credentials),
            });
        }
    }
    pool
}

/// A username/password pair, each given inline, as `_env` or as `_file`: both or neither.
fn credentials<T>(
    v: &mut Validator<'_>,
    anchor: &S<T>,
    user_key: &str,
    user: [&Option<S<String>>; 3],
    password_key: &str,
    password: [&Option<S<String>>; 3],
) -> Option<Credentials> {
    let username = v.secret(user_key, user[0], user[1], user[2]);
    let pass = v.secret(password_key, password[0], password[1], password[2]);
    let given = |forms: [&Option<S<String>>; 3]| forms.iter().any(|o| o.is_some());
    match (username, pass) {
        (Some(username), Some(password)) => Some(Credentials {
            username,
            password: Secret::new(password),
        }),
        (None, None) => None,
        // A side that was given but failed to resolve has its own error already.
        _ if given(user) && given(password) => None,
        _ => {
            v.err(
                anchor,
                password_key,
                "upstream credentials need both a username and a password",
            );
            None
        }
    }
}

fn route(v: &mut Validator<'_>, i: usize, raw: &S<RawRoute>) -> Option<Route> {
    let r = raw.get_ref();
    let k = |key: &str| format!("route[{i}].{key}");
    let host = v.check(&r.host, k("host"), |s| host_pattern(s));
    let upstream = r
        .upstream
        .as_ref()
        .and_then(|u| v.check(u, k("upstream"), |s| values::base_url(s)));
    let endpoints: Vec<Url> = r
        .endpoints
        .iter()
        .filter_map(|e| v.check(e, k("endpoints"), |s| values::base_url(s)))
        .collect();
    let path_prefix = r.path_prefix.as_ref().is_some_and(|b| *b.get_ref());
    let ns = r.ns.as_ref().is_some_and(|b| *b.get_ref());
    let mut upstreams = Vec::new();
    for (name, entry) in &r.upstreams {
        // Keys are registry names as clients write them: a host, optionally with a port (`registry.local:5000`).
        let (host_part, port_ok) = match name.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().is_ok()),
            None => (name.as_str(), true),
        };
        if !port_ok
            || host_pattern(host_part).map(|h| matches!(h, HostPattern::Exact(_))) != Ok(true)
        {
            v.err(
                entry,
                k(&format!("upstreams.\"{name}\"")),
                format!("`{name}` is not a registry host name"),
            );
            continue;
        }
        if let Some(up) = named_upstream(v, entry, &k(&format!("upstreams.\"{name}\""))) {
            upstreams.push((name.to_ascii_lowercase(), up));
        }
    }
    if (path_prefix || (ns && r.upstream.is_none())) && r.upstreams.is_empty() {
        v.err(&r.host, k("upstreams"), "path_prefix and ns routes need an `upstreams` table naming the registries they may reach");
    }
    if !path_prefix && !ns && r.upstream.is_none() {
        v.err(
            &r.host,
            k("upstream"),
            "missing: every route needs an upstream (or path_prefix/ns with `upstreams`)",
        );
    }
    if !r.endpoints.is_empty() && r.upstream.is_none() {
        v.err(
            &r.endpoints[0],
            k("endpoints"),
            "endpoints are tried before `upstream`, which is missing",
        );
    }
    let mut rewrite = Vec::new();
    if let Some(table) = &r.rewrite {
        for (pattern, replacement) in table.get_ref() {
            let Some(replacement) = replacement.as_str() else {
                v.err(
                    table,
                    k("rewrite"),
                    format!("the replacement for `{pattern}` must be a string"),
                );
                continue;
            };
            match Regex::new(pattern) {
                Ok(re) => rewrite.push((re, replacement.to_string())),
                Err(e) => v.err(
                    table,
                    k("rewrite"),
                    format!("`{pattern}` is not a valid regex: {e}"),
                ),
            }
        }
    }
    let blob_redirects = match &r.blob_redirects {
        None => BlobRedirects::Follow,
        Some(b) => v
            .check(b, k("blob_redirects"), |s| match s.as_str() {
                "follow" => Ok(BlobRedirects::Follow),
                "pass-through" => Ok(BlobRedirects::PassThrough),
                other => Err(format!(
                    "`{other}`: expected \"follow\" or \"pass-through\""
                )),
            })
            .unwrap_or(BlobRedirects::Follow),
    };
    let upstream_credentials = credentials(
        v,
        &r.host,
        &k("upstream_username"),
        [
            &r.upstream_username,
            &r.upstream_username_env,
            &r.upstream_username_file,
        ],
        &k("upstream_password"),
        [
            &r.upstream_password,
            &r.upstream_password_env,
            &r.upstream_password_file,
        ],
    );
    let single_given = [
        &r.upstream_username,
        &r.upstream_username_env,
        &r.upstream_username_file,
        &r.upstream_password,
        &r.upstream_password_env,
        &r.upstream_password_file,
    ]
    .iter()
    .any(|o| o.is_some());
    let pool = credential_pool(v, &r.upstream_credentials, &k);
    if let Some(first) = r.upstream_credentials.first() {
        if single_given {
            v.err(
                first,
                k("upstream_credentials"),
                "give either `upstream_credentials` or `upstream_username`/`upstream_password`, not both",
            );
        }
        if r.upstream.is_none() {
            v.err(
                first,
                k("upstream_credentials"),
                "the pool belongs to `upstream`, which is missing (`upstreams` entries carry their own)",
            );
        }
    }
    let credentials = if r.upstream_credentials.is_empty() {
        single_pool(upstream_credentials)
    } else {
        pool
    };
    let upstream = upstream.map(|url| Upstream { url, credentials });
    let upstream_ca = r
        .upstream_ca
        .as_ref()
        .and_then(|p| v.readable_file(p, &k("upstream_ca")));
    Some(Route {
        host: host?,
        upstream,
        endpoints,
        anonymous: r.anonymous.as_ref().is_some_and(|b| *b.get_ref()),
        docker_hub_library: r.docker_hub_library.as_ref().is_some_and(|b| *b.get_ref()),
        rewrite,
        blob_redirects,
        danger_allow_private_redirects: r
            .danger_allow_private_redirects
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
        upstream_ca,
        path_prefix,
        upstreams,
        ns,
        cache: r.cache.as_ref().is_none_or(|b| *b.get_ref()),
        tag_ttl: r
            .tag_ttl
            .as_ref()
            .and_then(|t| v.check(t, k("tag_ttl"), |s| values::duration(s))),
        deny: deny_list(v, &r.deny, &k("deny")),
        upstream_proxy: egress::route_proxy(v, &r.upstream_proxy, &k("upstream_proxy")),
    })
}

fn duplicate_hosts(v: &mut Validator<'_>, routes: &[S<RawRoute>]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let host = r.get_ref().host.get_ref().trim().to_ascii_lowercase();
        if let Some(first) = seen.insert(host.clone(), i + 1) {
            v.err(
                &r.get_ref().host,
                format!("route[{}].host", i + 1),
                format!("`{host}` is already the host of route[{first}]"),
            );
        }
    }
}

fn tls(v: &mut Validator<'_>, raw: Option<&S<RawTls>>) -> TlsConfig {
    let Some(raw) = raw else {
        return TlsConfig {
            storage: v.path("certs"),
            source: TlsSource::SelfSigned,
        };
    };
    let r = raw.get_ref();
    let storage = v.path(r.storage.as_ref().map_or("certs", |s| s.get_ref().as_str()));
    let source = match (&r.cert, &r.key, &r.acme) {
        (Some(c), _, Some(_)) => {
            v.err(
                c,
                "tls.cert",
                "give either cert/key or [tls.acme], not both",
            );
            TlsSource::SelfSigned
        }
        (Some(c), Some(k), None) => {
            let cert = v.readable_file(c, "tls.cert");
            let key = v.readable_file(k, "tls.key");
            match (cert, key) {
                (Some(cert), Some(key)) => TlsSource::Files { cert, key },
                _ => TlsSource::SelfSigned,
            }
        }
        (Some(c), None, None) => {
            v.err(c, "tls.key", "missing: tls.cert needs tls.key");
            TlsSource::SelfSigned
        }
        (None, Some(k), _) => {
            v.err(k, "tls.cert", "missing: tls.key needs tls.cert");
            TlsSource::SelfSigned
        }
        (None, None, Some(acme)) => {
            acme_config(v, acme).map_or(TlsSource::SelfSigned, TlsSource::Acme)
        }
        (None, None, None) => TlsSource::SelfSigned,
    };
    TlsConfig { storage, source }
}

fn acme_config(v: &mut Validator<'_>, raw: &S<RawAcme>) -> Option<AcmeConfig> {
    let r = raw.get_ref();
    let directory = v.check(&r.directory, "tls.acme.directory", |s| {
        let u = Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
        if u.scheme() != "https" {
            return Err("the ACME directory must be an https URL".to_string());
        }
        Ok(u)
    });
    let contact = r
        .contact
        .iter()
        .filter_map(|c| {
            v.check(c, "tls.acme.contact", |s| {
                if s.starts_with("mailto:") {
                    Ok(s.clone())
                } else {
                    Err(format!("`{s}`: contacts are `mailto:` URLs"))
                }
            })
        })
        .collect();
    let challenge = match &r.challenge {
        None => AcmeChallenge::TlsAlpn01,
        Some(c) => v
            .check(c, "tls.acme.challenge", |s| match s.as_str() {
                "tls-alpn-01" => Ok(AcmeChallenge::TlsAlpn01),
                "http-01" => Ok(AcmeChallenge::Http01),
                other => Err(format!(
                    "`{other}`: expected \"tls-alpn-01\" or \"http-01\""
                )),
            })
            .unwrap_or(AcmeChallenge::TlsAlpn01),
    };
    let directory_ca = r
        .directory_ca
        .as_ref()
        .and_then(|p| v.readable_file(p, "tls.acme.directory_ca"));
    Some(AcmeConfig {
        directory: directory?,
        contact,
        challenge,
        directory_ca,
    })
}

fn auth(v: &mut Validator<'_>, raw: Option<&S<RawAuth>>) -> AuthConfig {
    let Some(raw) = raw else {
        return AuthConfig::default();
    };
    let r = raw.get_ref();
    let htpasswd = r
        .htpasswd
        .as_ref()
        .and_then(|p| v.readable_file(p, "auth.htpasswd"));
    let api_tokens = r.api_tokens.as_ref().map(|p| v.path(p.get_ref()));
    let token = r.token.as_ref().map(|t| {
        let t = t.get_ref();
        TokenConfig {
            key: v.path(
                t.key
                    .as_ref()
                    .map_or("token-key.pem", |s| s.get_ref().as_str()),
            ),
            issuer: t
                .issuer
                .as_ref()
                .map_or_else(|| "mirrorgate".to_string(), |s| s.get_ref().clone()),
            service: t
                .service
                .as_ref()
                .map_or_else(|| "mirrorgate".to_string(), |s| s.get_ref().clone()),
            ttl: v.duration(&t.ttl, "auth.token.ttl", defaults::TOKEN_TTL),
        }
    });
    let ldap = r.ldap.as_ref().and_then(|l| ldap::ldap(v, l));
    AuthConfig {
        htpasswd,
        api_tokens,
        token,
        ldap,
    }
}

/// `[push:|delete:]route-host/repository-pattern`. Route hosts carry no port, so a `:` before the first `/` ends
/// a prefix, and a prefix other than the two rights is a typo that must not become a pull rule. (The auth crate
/// parses the same grammar into its rules; this check gives the operator the file, line and key.)
fn allow_pattern(s: &str) -> Result<(), String> {
    let hint = "write `route-host/repository-pattern` (e.g. \"docker.example/*\"), with `push:` first for push \
                or `delete:` first for delete";
    let Some((head, repo)) = s.split_once('/') else {
        return Err(format!("`{s}`: {hint}"));
    };
    let host = match head.split_once(':') {
        None => head,
        Some(("push" | "delete", host)) => host,
        Some((other, _)) => {
            return Err(format!(
                "`{s}`: unknown prefix `{other}:` (`push:` or `delete:`); {hint}"
            ))
        }
    };
    if host.is_empty() || repo.is_empty() {
        return Err(format!("`{s}`: {hint}"));
    }
    Ok(())
}

/// `route-host/repository-pattern[:tag-pattern|@digest-pattern]`, no prefix: a deny rule refuses every action.
/// (The auth crate parses the same grammar into its deny rules; this check gives the file, line and key.)
fn deny_pattern(s: &str) -> Result<(), String> {
    let hint = "write `route-host/repository-pattern`, optionally followed by `:tag-pattern` or `@digest-pattern` \
                (e.g. \"docker.example/*:latest\")";
    let Some((host, rest)) = s.split_once('/') else {
        return Err(format!("`{s}`: {hint}"));
    };
    if host.contains(':') {
        return Err(format!(
            "`{s}`: a deny rule refuses every action and takes no `push:`/`delete:` prefix; {hint}"
        ));
    }
    let (repo, reference) = match rest.split_once('@') {
        Some((repo, digest)) => (repo, Some(digest)),
        None => {
            let last = rest.rsplit('/').next().unwrap_or(rest);
            match last.split_once(':') {
                Some((_, tag)) => (&rest[..rest.len() - tag.len() - 1], Some(tag)),
                None => (rest, None),
            }
        }
    };
    let bad_ref = reference.is_some_and(|r| r.is_empty() || r.contains(['@', '/']));
    if host.is_empty() || repo.is_empty() || repo.contains(['@', ':']) || bad_ref {
        return Err(format!("`{s}`: {hint}"));
    }
    Ok(())
}

fn deny_list(v: &mut Validator<'_>, raw: &[S<String>], key: &str) -> Vec<String> {
    raw.iter()
        .filter_map(|d| v.check(d, key, |s| deny_pattern(s).map(|()| s.clone())))
        .collect()
}

fn tenants(v: &mut Validator<'_>, raw: &[S<RawTenant>]) -> Vec<TenantConfig> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut users: HashMap<String, String> = HashMap::new();
    let mut groups: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let r = t.get_ref();
        let k = |key: &str| format!("tenant[{}].{key}", i + 1);
        let name = r.name.get_ref().clone();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            v.err(
                &r.name,
                k("name"),
                "tenant names use letters, digits, `-`, `_` and `.` (they become metric labels)",
            );
        }
        if let Some(first) = names.insert(name.clone(), i + 1) {
            v.err(
                &r.name,
                k("name"),
                format!("`{name}` is already the name of tenant[{first}]"),
            );
        }
        for u in &r.users {
            if let Some(other) = users.insert(u.get_ref().clone(), name.clone()) {
                v.err(
                    u,
                    k("users"),
                    format!(
                        "user `{}` already belongs to tenant `{other}`; a user has one tenant",
                        u.get_ref()
                    ),
                );
            }
        }
        let cidrs = r
            .cidrs
            .iter()
            .filter_map(|c| v.check(c, k("cidrs"), |s| cidr(s)))
            .collect();
        for a in &r.allow {
            v.check(a, k("allow"), |s| allow_pattern(s));
        }
        let ldap_groups = ldap::groups(v, &r.ldap_groups, &k("ldap_groups"), &mut groups, &name);
        out.push(TenantConfig {
            name,
            users: r.users.iter().map(|u| u.get_ref().clone()).collect(),
            cidrs,
            requests_per_second: v.positive(&r.requests_per_second, &k("requests_per_second")),
            burst: v.positive(&r.burst, &k("burst")),
            bytes_per_second: v.size(&r.bytes_per_second, &k("bytes_per_second")),
            concurrent_requests: v.positive(&r.concurrent_requests, &k("concurrent_requests")),
            tenant_requests_per_second: v.positive(
                &r.tenant_requests_per_second,
                &k("tenant_requests_per_second"),
            ),
            tenant_bytes_per_second: v
                .size(&r.tenant_bytes_per_second, &k("tenant_bytes_per_second")),
            tenant_concurrent_requests: v.positive(
                &r.tenant_concurrent_requests,
                &k("tenant_concurrent_requests"),
            ),
            bytes_per_day: v.size(&r.bytes_per_day, &k("bytes_per_day")),
            allow: r.allow.iter().map(|a| a.get_ref().clone()).collect(),
            deny: deny_list(v, &r.deny, &k("deny")),
            ldap_groups,
        });
    }
    out
}

fn limits(v: &mut Validator<'_>, raw: Option<&S<RawLimits>>) -> LimitsConfig {
    let Some(raw) = raw else {
        return LimitsConfig {
            redis_fail_open: true,
            ..LimitsConfig::default()
        };
    };
    let r = raw.get_ref();
    let redis = r.redis.as_ref().and_then(|s| {
        v.check(s, "limits.redis", |s| {
            let u = Url::parse(s).map_err(|e| format!("`{s}` is not a URL ({e})"))?;
            match u.scheme() {
                "redis" | "rediss" | "redis+unix" | "unix" => Ok(u),
                other => Err(format!(
                    "`{other}`: expected a redis://, rediss:// or unix:// URL"
                )),
            }
        })
    });
    LimitsConfig {
        anonymous: AnonymousLimits {
            requests_per_second: v.positive(&r.requests_per_second, "limits.requests_per_second"),
            burst: v.positive(&r.burst, "limits.burst"),
            bytes_per_second: v.size(&r.bytes_per_second, "limits.bytes_per_second"),
            concurrent_requests: v.positive(&r.concurrent_requests, "limits.concurrent_requests"),
        },
        redis,
        redis_fail_open: r.redis_fail_open.as_ref().is_none_or(|b| *b.get_ref()),
    }
}

fn cache(v: &mut Validator<'_>, raw: Option<&S<RawCache>>) -> Option<CacheConfig> {
    let r = raw?.get_ref();
    Some(CacheConfig {
        dir: v.path(
            r.dir
                .as_ref()
                .map_or(defaults::CACHE_DIR, |s| s.get_ref().as_str()),
        ),
        max_size: v
            .size(&r.max_size, "cache.max_size")
            .map_or(defaults::CACHE_MAX_SIZE, |n| n.get()),
        min_free: v.size(&r.min_free, "cache.min_free").map(|n| n.get()),
        tag_ttl: v.duration(&r.tag_ttl, "cache.tag_ttl", defaults::CACHE_TAG_TTL),
        stale_if_error: v.duration(
            &r.stale_if_error,
            "cache.stale_if_error",
            defaults::CACHE_STALE_IF_ERROR,
        ),
    })
}

/// `[usage]`: a relative store is resolved against `tls.storage`; retention is at least one day.
fn usage(v: &mut Validator<'_>, raw: Option<&S<RawUsage>>, storage: &Path) -> UsageConfig {
    let r = raw.map(|r| r.get_ref());
    let store = match r.and_then(|r| r.store.as_ref()) {
        Some(s) if s.get_ref().trim().is_empty() => {
            v.err(s, "usage.store", "must name a file");
            storage.join(defaults::USAGE_STORE)
        }
        Some(s) => storage.join(s.get_ref()),
        None => storage.join(defaults::USAGE_STORE),
    };
    let retention_raw = r.and_then(|r| r.retention.as_ref());
    let retention = match retention_raw {
        Some(s) => match v.check(s, "usage.retention", |t| values::duration(t)) {
            Some(d) if d < Duration::from_secs(86_400) => {
                v.err(
                    s,
                    "usage.retention",
                    "must be at least 1d: the ledger keeps whole days",
                );
                defaults::USAGE_RETENTION
            }
            Some(d) => d,
            None => defaults::USAGE_RETENTION,
        },
        None => defaults::USAGE_RETENTION,
    };
    let export_token = r.and_then(|r| {
        let token = v.secret(
            "usage.export_token",
            &r.export_token,
            &r.export_token_env,
            &r.export_token_file,
        )?;
        if token.trim().len() < MIN_EXPORT_TOKEN {
            let at = [&r.export_token, &r.export_token_env, &r.export_token_file]
                .into_iter()
                .flatten()
                .next()?;
            v.err(
                at,
                "usage.export_token",
                format!("must be at least {MIN_EXPORT_TOKEN} characters: it guards every tenant's bill (`openssl rand -hex 32` makes one)"),
            );
            return None;
        }
        Some(Secret::new(token.trim()))
    });
    UsageConfig {
        store,
        retention,
        export_token,
    }
}

/// The shortest `usage.export_token` accepted: guessing it must be out of reach.
const MIN_EXPORT_TOKEN: usize = 20;

mod audit;
mod egress;
mod ldap;
#[cfg(test)]
mod tests;
