//! Phase 1, **route**: the `Host` (which must agree with the TLS SNI) picks the route; the path is parsed as an
//! OCI distribution request; on path-prefix and `?ns=` routes the registry is picked from the route's own list
//! (never anything else); and phase 2, **rewrite name**, applies Docker Hub's `library/` rule and the route's
//! regex rewrites.
//!
//! Short-circuits: 421 for a wrong or missing host (or a missing SNI unless `allow_missing_sni`), 400 for an
//! invalid name, 404 for an unknown path, 403 for an `ns` the route does not mirror.

use http::{header, Request};
use mirrorgate_registry::{ErrorCode, RegistryError, RegistryPath};

use crate::context::{ConnInfo, Plan, UpstreamKey};
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
    let (ns, query) = split_ns(req.uri().query());
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
            let mut upstream = name.clone();
            if cfg.docker_hub_library {
                upstream = mirrorgate_registry::docker_hub_library(&upstream)?.into_owned();
            }
            if !route.rewrites.is_empty() {
                upstream = route.rewrites.apply(&upstream)?.into_owned();
            }
            let s = upstream.as_str().to_string();
            (path.with_name(upstream), Some(s))
        }
        None => (path, None),
    };
    Ok(Plan {
        path,
        client_name,
        upstream_name,
        endpoints,
        upstream_key,
        query,
    })
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

/// Splits `ns=` out of a query string (percent-decoded: containerd sends `ns=host%3Aport`); the other pairs are
/// forwarded as they came.
fn split_ns(query: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(q) = query else { return (None, None) };
    let mut ns = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            if pair.is_empty() {
                return false;
            }
            match url::form_urlencoded::parse(pair.as_bytes()).next() {
                Some((k, v)) if k == "ns" => {
                    ns = Some(v.into_owned());
                    false
                }
                _ => true,
            }
        })
        .collect();
    (ns, (!rest.is_empty()).then(|| rest.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
