//! Phase 1, **route**: the `Host` (which must agree with the TLS SNI) picks the route; the path is parsed as an
//! OCI distribution request; on path-prefix and `?ns=` routes the registry is picked from the route's own list
//! (never anything else); and phase 2, **rewrite name**, applies Docker Hub's `library/` rule and the route's
//! regex rewrites.
//!
//! Short-circuits: 421 for a wrong or missing host (or a missing SNI unless `allow_missing_sni`), 400 for an
//! invalid name, 404 for an unknown path, 403 for an `ns` the route does not mirror.

use http::{header, Request};
use mirrorgate_registry::{Digest, ErrorCode, RegistryError, RegistryPath, RepositoryName};

use crate::context::{ConnInfo, Mount, Plan, UpstreamKey};
use crate::error::ProxyError;
use crate::router::{host_of, CompiledRoute};

/// The authority the client addressed, checked against the connection: exactly one `Host`, and the same host
/// the TLS handshake named. Returns `(authority, host)`.
pub fn checked_authority<B>(
    req: &Request<B>,
    conn: &ConnInfo,
    allow_missing_sni: bool,
) -> Result<(String, String), ProxyError> {
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: two Host lines are a bad request, not a choice to make.
        return Err(
            RegistryError::new(ErrorCode::InvalidRequest, "more than one Host header").into(),
        );
    }
    let authority = request_authority(req).ok_or(ProxyError::NoHost)?;
    let host = host_of(&authority).ok_or(ProxyError::NoHost)?;
    match &conn.sni {
        Some(sni) if !sni.eq_ignore_ascii_case(&host) => Err(ProxyError::HostMismatch {
            sni: sni.clone(),
            host,
        }),
        // Without SNI the certificate the client accepted says nothing about the host it names: any routed host
        // could be reached over a connection made for another (or for an IP literal).
        None if !allow_missing_sni => Err(ProxyError::MissingSni { host }),
        _ => Ok((authority, host)),
    }
}

/// The authority the client addressed: `:authority` (h2, absolute-form) or `Host`.
fn request_authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// Phases 1–2: the parsed path, the endpoints and the upstream name.
pub fn plan<B>(route: &CompiledRoute, req: &Request<B>) -> Result<Plan, ProxyError> {
    let raw_path = req.uri().path();
    let QueryParts {
        ns,
        mount,
        from,
        rest: query,
    } = QueryParts::split(req.uri().query());
    let cfg = &route.config;

    let mut upstream_key = None;
    let (path, endpoints) = if cfg.path_prefix {
        match mirrorgate_registry::split_prefix(raw_path, |k| {
            route.named_upstreams.contains_key(&k.to_ascii_lowercase())
        })? {
            Some((key, path)) => {
                let key = key.to_ascii_lowercase();
                let ep = route
                    .named_upstreams
                    .get(&key)
                    .cloned()
                    .into_iter()
                    .collect();
                upstream_key = Some(UpstreamKey::PathPrefix(key));
                (path, ep)
            }
            None => (RegistryPath::parse(raw_path)?, route.endpoints.clone()),
        }
    } else {
        (RegistryPath::parse(raw_path)?, route.endpoints.clone())
    };

    // containerd's ?ns= names the registry the client meant; honoured only for hosts the route lists.
    let endpoints = match (&ns, cfg.ns, upstream_key.is_some()) {
        (Some(ns), true, false) => {
            let ns = ns.to_ascii_lowercase();
            match route.named_upstreams.get(&ns) {
                Some(ep) => {
                    let ep = vec![ep.clone()];
                    upstream_key = Some(UpstreamKey::Ns(ns));
                    ep
                }
                // A route with its own upstream serves the registry it was configured for; any other ns is
                // refused.
                None if route.endpoints.is_empty() || !ns_matches_default(route, &ns) => {
                    return Err(RegistryError::new(
                        ErrorCode::Denied,
                        format!("this gateway does not mirror `{ns}`"),
                    )
                    .into())
                }
                None => endpoints,
            }
        }
        _ => endpoints,
    };
    if endpoints.is_empty() && path != RegistryPath::Ping {
        return Err(RegistryError::new(
            ErrorCode::NameUnknown,
            "this route needs the upstream registry as the first path component (e.g. /v2/gcr.io/...)",
        )
        .into());
    }

    let client_name = path.name().map(|n| n.as_str().to_string());
    let (path, upstream_name) = match path.name() {
        Some(name) => {
            let upstream = upstream_name_of(route, name)?;
            let s = upstream.as_str().to_string();
            (path.with_name(upstream), Some(s))
        }
        None => (path, None),
    };
    // A mount is meaningful on an upload start only; elsewhere the two parameters travel on untouched.
    let (mount, query) = match (&path, mount, from) {
        (RegistryPath::UploadStart { .. }, Some(m), Some(f)) => {
            (mount_of(route, upstream_key.as_ref(), &m, &f), query)
        }
        (_, m, f) => (
            None,
            join_query(query, m.map(|m| ("mount", m)), f.map(|f| ("from", f))),
        ),
    };
    Ok(Plan {
        path,
        client_name,
        upstream_name,
        endpoints,
        upstream_key,
        query,
        mount,
    })
}

/// The repository name as the upstream knows it: Docker Hub's `library/` rule, then the route's rewrites.
fn upstream_name_of(
    route: &CompiledRoute,
    name: &RepositoryName,
) -> Result<RepositoryName, ProxyError> {
    let mut upstream = name.clone();
    if route.config.docker_hub_library {
        upstream = mirrorgate_registry::docker_hub_library(&upstream)?.into_owned();
    }
    if !route.rewrites.is_empty() {
        upstream = route.rewrites.apply(&upstream)?.into_owned();
    }
    Ok(upstream)
}

/// The mount an upload start asked for, or `None` when it cannot be honoured (a bad digest or name, or a
/// source on another registry than the target): the upload then starts normally, as distribution does.
fn mount_of(
    route: &CompiledRoute,
    key: Option<&UpstreamKey>,
    mount: &str,
    from: &str,
) -> Option<Mount> {
    let digest = Digest::parse(mount).ok()?;
    // On a path-prefix request the client names the source with the registry key in front, like the target;
    // with `?ns=` (and host routing) the client's names carry no key.
    let (from_client, bare) = match key {
        Some(UpstreamKey::PathPrefix(k)) => {
            let bare = from.strip_prefix(k.as_str())?.strip_prefix('/')?;
            (from.to_string(), bare)
        }
        Some(UpstreamKey::Ns(k)) => (format!("{k}/{from}"), from),
        None => (from.to_string(), from),
    };
    let name = RepositoryName::parse(bare).ok()?;
    let from_upstream = upstream_name_of(route, &name).ok()?.as_str().to_string();
    Some(Mount {
        digest,
        from_client,
        from_upstream,
    })
}

fn join_query(
    rest: Option<String>,
    a: Option<(&str, String)>,
    b: Option<(&str, String)>,
) -> Option<String> {
    let mut ser = url::form_urlencoded::Serializer::new(rest.unwrap_or_default());
    for (k, v) in a.into_iter().chain(b) {
        ser.append_pair(k, &v);
    }
    let q = ser.finish();
    (!q.is_empty()).then_some(q)
}

/// A `?ns=` (lower-cased) for a host-routed route is accepted when it names the registry the route's own
/// upstream stands for: its `host[:port]` as containerd sends it, or Docker Hub's names on a
/// `docker_hub_library` route.
fn ns_matches_default(route: &CompiledRoute, ns: &str) -> bool {
    let names_upstream = route.config.upstream.as_ref().is_some_and(|u| {
        let host = u.url.host_str().unwrap_or_default().to_ascii_lowercase();
        match u.url.port() {
            Some(port) => ns == format!("{host}:{port}"),
            None => ns == host,
        }
    });
    (route.config.docker_hub_library && mirrorgate_registry::is_docker_hub(ns)) || names_upstream
}

/// The query parameters the gateway acts on, percent-decoded (containerd sends `ns=host%3Aport`), and the
/// other pairs as they came. A parameter given twice counts with its last value, as distribution reads it.
#[derive(Debug, Default, PartialEq, Eq)]
struct QueryParts {
    ns: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    rest: Option<String>,
}

impl QueryParts {
    fn split(query: Option<&str>) -> QueryParts {
        let Some(q) = query else {
            return QueryParts::default();
        };
        let mut parts = QueryParts::default();
        let rest: Vec<&str> = q
            .split('&')
            .filter(|pair| {
                if pair.is_empty() {
                    return false;
                }
                let Some((k, v)) = url::form_urlencoded::parse(pair.as_bytes()).next() else {
                    return true;
                };
                let slot = match k.as_ref() {
                    "ns" => &mut parts.ns,
                    "mount" => &mut parts.mount,
                    "from" => &mut parts.from,
                    _ => return true,
                };
                *slot = Some(v.into_owned());
                false
            })
            .collect();
        parts.rest = (!rest.is_empty()).then(|| rest.join("&"));
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ns(q: Option<&str>) -> (Option<String>, Option<String>) {
        let p = QueryParts::split(q);
        (p.ns, p.rest)
    }

    // Pins that ?ns= never reaches the upstream and other query parameters (pagination) do.
    #[test]
    fn ns_is_split_from_the_query() {
        assert_eq!(
            split_ns(Some("ns=docker.io")),
            (Some("docker.io".into()), None)
        );
        assert_eq!(
            split_ns(Some("n=10&ns=gcr.io&last=a")),
            (Some("gcr.io".into()), Some("n=10&last=a".into()))
        );
        assert_eq!(split_ns(None), (None, None));
        assert_eq!(
            split_ns(Some("ns=upstream.test%3A5000")),
            (Some("upstream.test:5000".into()), None)
        );
    }

    // Pins that mount and from are taken out of the query (they are re-added only after authorization).
    #[test]
    fn mount_and_from_are_split_out() {
        let p = QueryParts::split(Some("mount=sha256%3Aab&from=team-a%2Fsecret&x=1"));
        assert_eq!(p.mount.as_deref(), Some("sha256:ab"));
        assert_eq!(p.from.as_deref(), Some("team-a/secret"));
        assert_eq!(p.rest.as_deref(), Some("x=1"));
    }

    fn conn(sni: Option<&str>) -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            sni: sni.map(str::to_string),
        }
    }

    fn get(host: &str) -> Request<()> {
        Request::builder()
            .uri("/v2/")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    // Pins the host checks: Host must equal SNI; no SNI is a mismatch unless the config allows it.
    #[test]
    fn host_must_match_sni() {
        let ok = checked_authority(&get("docker.test:8443"), &conn(Some("docker.test")), false);
        assert_eq!(ok.unwrap().1, "docker.test");
        assert!(matches!(
            checked_authority(&get("gcr.test"), &conn(Some("docker.test")), false),
            Err(ProxyError::HostMismatch { .. })
        ));
        assert!(matches!(
            checked_authority(&get("gcr.test"), &conn(None), false),
            Err(ProxyError::MissingSni { .. })
        ));
        assert!(checked_authority(&get("gcr.test"), &conn(None), true).is_ok());
    }
}
