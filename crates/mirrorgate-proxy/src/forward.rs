//! The request path, as phases (each documented with when it runs and what it may short-circuit):
//!
//! 1. **route** — `Host` (must agree with SNI) → route; the path is parsed as an OCI distribution request and,
//!    for path-prefix / `?ns=` routes, the upstream is picked from the route's list (never anything else).
//!    Short-circuits: 421 wrong host, 400 invalid name, 404 unknown path, local `/v2/` ping.
//! 2. **rewrite name** — Docker Hub's `library/` rule and the route's regex rewrites.
//! 3. **choose endpoint** — ordered endpoints, healthy first; connect errors, timeouts and 5xx on GET/HEAD move
//!    to the next one.
//! 4. **upstream auth** — a cached Bearer token for (realm, service, scope, credential), learned from the
//!    upstream's challenge and fetched once per key (single-flight), or server-side Basic credentials.
//! 5. **forward** — the manifest `Accept` list, hop-by-hop headers dropped, bodies streamed both ways.
//! 6. **response** — blob redirects followed or passed on, `Location`/`Link` mapped to the gateway, upstream
//!    challenges replaced, `docker-ratelimit-source` removed.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_auth::Action;
use mirrorgate_config::BlobRedirects;
use mirrorgate_registry::{
    manifest_accept, rewrite_link, rewrite_location, strip_response_headers, BearerChallenge,
    ErrorCode, LocationRewrite, RegistryError, RegistryPath, RequestKind, RewriteContext, Scope,
    TokenKey, TokenResponse, UpstreamToken,
};
use url::Url;

use crate::admission::{admit, Ask};
use crate::body::{empty, full, GatewayBody};
use crate::error::ProxyError;
use crate::headers;
use crate::router::{host_of, CompiledRoute};
use crate::runtime::{Gateway, Runtime, UpstreamAuthScheme};
use crate::upstream::{attempt_order, Endpoint};

/// What the request path learned, for the access log and metrics (filled as phases run).
#[derive(Debug, Default)]
pub struct RequestFacts {
    pub route: Option<String>,
    pub kind: Option<RequestKind>,
    pub endpoint: Option<String>,
    pub tenant: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
}

/// Per-connection facts the request path needs.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    /// The TLS server name the client asked for, if it sent one.
    pub sni: Option<String>,
}

/// Everything decided about one request before it goes upstream.
struct Plan<'r> {
    route: &'r CompiledRoute,
    path: RegistryPath,
    /// The name as the client wrote it and as the upstream knows it.
    client_name: Option<String>,
    upstream_name: Option<String>,
    /// Endpoints to try, in order.
    endpoints: Vec<Arc<Endpoint>>,
    /// Path-prefix routes re-insert this after `/v2/` in rewritten URLs.
    prefix: Option<String>,
    /// The query string to forward (`ns` removed).
    query: Option<String>,
}

impl Plan<'_> {
    /// The repository as the client names it, which is what tenant rules and our tokens speak of: on path-prefix
    /// routes the upstream key comes first (`gcr.io/foo/bar`).
    fn client_repository(&self) -> Option<String> {
        self.client_name.as_ref().map(|n| match &self.prefix {
            Some(p) => format!("{p}/{n}"),
            None => n.clone(),
        })
    }
}

/// Serves one request on the https listener. Errors are returned typed; the caller renders them.
pub async fn serve(
    gw: &Gateway,
    rt: &Runtime,
    conn: &ConnInfo,
    req: Request<Incoming>,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    // Phase 1: route.
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        // RFC 9112 §3.2: two Host lines are a bad request, not a choice to make.
        return Err(
            RegistryError::new(ErrorCode::InvalidRequest, "more than one Host header").into(),
        );
    }
    let authority = request_authority(&req).ok_or(ProxyError::NoHost)?;
    let host = host_of(&authority).ok_or(ProxyError::NoHost)?;
    if let Some(sni) = &conn.sni {
        if !sni.eq_ignore_ascii_case(&host) {
            return Err(ProxyError::HostMismatch {
                sni: sni.clone(),
                host,
            });
        }
    }
    let route = rt.router.lookup(&host)?;
    facts.route = Some(route.label.clone());
    let client_ip = headers::client_ip(
        conn.peer.ip(),
        req.headers(),
        &rt.config.server.trusted_proxies,
    );
    if req.uri().path() == "/token" {
        return crate::token_endpoint::serve_token(gw, route, req, &authority, client_ip).await;
    }
    let plan = plan(route, &req)?;
    facts.kind = Some(plan.path.kind());

    // Phases: identify, authorize, limit.
    let repository = plan.client_repository();
    let action = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Action::Pull
    } else {
        Action::Push
    };
    let ask = Ask {
        route_host: &route.label,
        route_anonymous: route.config.anonymous,
        authority: &authority,
        repository: repository.as_deref(),
        action,
    };
    let admission = admit(gw, &ask, req.headers(), client_ip, facts).await?;
    let rate_headers = admission.rate_limit_headers();
    let resp = if plan.path == RegistryPath::Ping {
        ping_response(req.method())
    } else {
        forward(gw, rt, plan, req, &authority, client_ip, facts).await?
    };
    let (mut parts, body) = resp.into_parts();
    for (name, value) in rate_headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Ok(Response::from_parts(
        parts,
        GatewayBody::new(admission.throttle(body)),
    ))
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

fn ping_response(method: &Method) -> Response<GatewayBody> {
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(Bytes::from_static(b"{}"))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Phases 1–2: the parsed path, the endpoints and the upstream name.
fn plan<'r, B>(route: &'r CompiledRoute, req: &Request<B>) -> Result<Plan<'r>, ProxyError> {
    let raw_path = req.uri().path();
    let (ns, query) = split_ns(req.uri().query());
    let cfg = &route.config;

    let mut prefix = None;
    let (path, endpoints) = if cfg.path_prefix {
        match mirrorgate_registry::split_prefix(raw_path, |k| {
            route.named_upstreams.contains_key(&k.to_ascii_lowercase())
        })? {
            Some((key, path)) => {
                let key = key.to_ascii_lowercase();
                prefix = Some(key.clone());
                let ep = route
                    .named_upstreams
                    .get(&key)
                    .cloned()
                    .into_iter()
                    .collect();
                (path, ep)
            }
            None => (RegistryPath::parse(raw_path)?, route.endpoints.clone()),
        }
    } else {
        (RegistryPath::parse(raw_path)?, route.endpoints.clone())
    };

    // containerd's ?ns= names the registry the client meant; honoured only for hosts the route lists.
    let endpoints = match (&ns, cfg.ns, prefix.is_some()) {
        (Some(ns), true, false) => match route.named_upstreams.get(&ns.to_ascii_lowercase()) {
            Some(ep) => vec![ep.clone()],
            None if route.endpoints.is_empty() => {
                return Err(RegistryError::new(
                    ErrorCode::Denied,
                    format!("this gateway does not mirror `{ns}`"),
                )
                .into())
            }
            // A route with its own upstream serves the registry it was configured for; any other ns is refused.
            None if !ns_matches_default(route, ns) => {
                return Err(RegistryError::new(
                    ErrorCode::Denied,
                    format!("this gateway does not mirror `{ns}`"),
                )
                .into())
            }
            None => endpoints,
        },
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
        route,
        path,
        client_name,
        upstream_name,
        endpoints,
        prefix,
        query,
    })
}

/// A `?ns=` for a host-routed route is accepted when it names a registry the route's own upstream stands for:
/// one of its named upstreams, or Docker Hub's names on a `docker_hub_library` route.
fn ns_matches_default(route: &CompiledRoute, ns: &str) -> bool {
    let ns = ns.to_ascii_lowercase();
    let hub = ["docker.io", "registry-1.docker.io", "index.docker.io"];
    // containerd sends `host[:port]` as the image reference wrote it.
    let names_upstream = route.config.upstream.as_ref().is_some_and(|u| {
        let host = u.url.host_str().unwrap_or_default().to_ascii_lowercase();
        match u.url.port() {
            Some(port) => ns == format!("{host}:{port}"),
            None => ns == host,
        }
    });
    (route.config.docker_hub_library && hub.contains(&ns.as_str())) || names_upstream
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

/// Phases 3–6.
async fn forward(
    gw: &Gateway,
    rt: &Runtime,
    plan: Plan<'_>,
    req: Request<Incoming>,
    authority: &str,
    client_ip: IpAddr,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    let server = &rt.config.server;
    let route = plan.route;
    let method = req.method().clone();
    let idempotent = method == Method::GET || method == Method::HEAD;
    // Requests without a body (GET, HEAD, the POST that opens an upload) can be sent again after a 401.
    let replayable = idempotent || http_body::Body::is_end_stream(req.body());
    let mut path_and_query = plan.path.to_path();
    if let Some(q) = &plan.query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let mut base_headers =
        headers::upstream_request_headers(req.headers(), client_ip, &server.trusted_proxies);
    if matches!(plan.path, RegistryPath::Manifest { .. }) {
        base_headers.insert(
            header::ACCEPT,
            manifest_accept(req.headers().get_all(header::ACCEPT).iter()),
        );
    }
    let scope = Scope::for_path(&plan.path, &method).map(|s| s.to_string());

    // Non-idempotent requests carry a body that can be sent once: one endpoint, no retry.
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let order = attempt_order(&plan.endpoints);
    let mut last_failure = String::new();
    for (i, endpoint) in order.iter().enumerate() {
        if !idempotent && i > 0 {
            break;
        }
        let req_body: GatewayBody = match body.take() {
            Some(b) if !idempotent => b.map_err(Into::into).boxed(),
            _ => empty(),
        };
        facts.endpoint = Some(endpoint.origin.clone());
        let attempt = Attempt {
            gw,
            rt,
            route,
            endpoint,
            method: &parts.method,
            path_and_query: &path_and_query,
            headers: &base_headers,
            scope: scope.as_deref(),
        };
        let can_move_on = idempotent && i + 1 < order.len();
        let resp = match attempt.send_with_auth(req_body, replayable).await {
            Ok(resp) if resp.status().is_server_error() && can_move_on => {
                last_failure = format!("{} answered {}", endpoint.origin, resp.status());
                attempt.give_up(true);
                continue;
            }
            Ok(resp) => resp,
            // A token service failure is the realm's, not this endpoint's: no fallback, no health mark.
            Err(e @ ProxyError::UpstreamToken { .. }) => return Err(e),
            Err(e) if can_move_on => {
                tracing::info!(route = %route.label, endpoint = %endpoint.origin, error = %e, "endpoint failed, trying the next one");
                last_failure = e.to_string();
                attempt.give_up(true);
                continue;
            }
            Err(e) => {
                attempt.give_up(false);
                return Err(e);
            }
        };
        if !endpoint.is_up() {
            endpoint.mark_up();
        }
        gw.metrics
            .set_endpoint_up(&route.label, &endpoint.origin, true);
        return respond(
            gw,
            rt,
            &plan,
            endpoint,
            &path_and_query,
            authority,
            &method,
            resp,
        )
        .await;
    }
    Err(ProxyError::Unavailable {
        detail: last_failure,
    })
}

/// One request as it goes to one endpoint: everything but the body and the credentials, which change between
/// the tries of the token dance.
struct Attempt<'a> {
    gw: &'a Gateway,
    rt: &'a Runtime,
    route: &'a CompiledRoute,
    endpoint: &'a Endpoint,
    method: &'a Method,
    path_and_query: &'a str,
    headers: &'a HeaderMap,
    scope: Option<&'a str>,
}

impl Attempt<'_> {
    /// Sends the request, doing the token dance on a 401: learn the challenge, fetch (or reuse) the token, and
    /// retry once. Later requests to the same origin attach the cached token up front.
    async fn send_with_auth(
        &self,
        body: GatewayBody,
        replayable: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (gw, endpoint) = (self.gw, self.endpoint);
        let mut known = gw.schemes.get(&endpoint.origin).map(|s| s.clone());
        if known.is_none() && !replayable {
            // A body can be sent once: learn how this upstream authenticates from a ping before sending it.
            let ping = self.send_once(&Method::GET, "/v2/", None, empty()).await?;
            if ping.status() == StatusCode::UNAUTHORIZED {
                known = learn_scheme(ping.headers());
                if let Some(scheme) = &known {
                    gw.schemes.insert(endpoint.origin.clone(), scheme.clone());
                }
            }
        }
        let auth = match &known {
            Some(scheme) => self.authorization(scheme).await?,
            None => None,
        };
        let resp = self
            .send_once(self.method, self.path_and_query, auth.clone(), body)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED || !replayable {
            return Ok(resp);
        }
        let Some(scheme) = learn_scheme(resp.headers()) else {
            return Ok(resp);
        };
        gw.schemes.insert(endpoint.origin.clone(), scheme.clone());
        // A 401 despite a token we sent means the cached token went stale (revoked, clock skew): fetch anew.
        if let (Some(_), UpstreamAuthScheme::Bearer { .. }) = (&auth, &scheme) {
            if let Some(key) = token_key(self.route, endpoint, &scheme, self.scope) {
                gw.tokens.invalidate(&key);
            }
        }
        let Some(auth) = self.authorization(&scheme).await? else {
            return Ok(resp);
        };
        self.send_once(self.method, self.path_and_query, Some(auth), empty())
            .await
    }

    async fn send_once(
        &self,
        method: &Method,
        path_and_query: &str,
        authorization: Option<HeaderValue>,
        body: GatewayBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (route, endpoint) = (self.route, self.endpoint);
        let uri = endpoint
            .uri(path_and_query)
            .map_err(|e| ProxyError::Internal(format!("upstream URI: {e}")))?;
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(h) = req.headers_mut() {
            *h = self.headers.clone();
            if http_body::Body::is_end_stream(&body) {
                // The client's length describes a body this request does not carry (a GET whose body was
                // dropped, the ping before an upload, a replay): sent on, the upstream would read the next
                // request on the pooled connection as this one's body.
                h.remove(header::CONTENT_LENGTH);
                h.remove(header::CONTENT_TYPE);
            }
            if let Some(a) = authorization {
                h.insert(header::AUTHORIZATION, a);
            }
        }
        let req = req
            .body(body)
            .map_err(|e| ProxyError::Internal(format!("upstream request: {e}")))?;
        let started = Instant::now();
        let timeout = self.rt.config.server.upstream_timeout;
        let result = tokio::time::timeout(timeout, route.client.send(req)).await;
        let status = match &result {
            Ok(Ok(r)) => Some(r.status().as_u16()),
            _ => None,
        };
        self.gw
            .metrics
            .upstream_done(&route.label, &endpoint.origin, status, started.elapsed());
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ProxyError::Unavailable {
                detail: format!("{}: {}", endpoint.origin, error_chain(&e)),
            }),
            Err(_) => Err(ProxyError::Timeout(timeout)),
        }
    }

    async fn authorization(
        &self,
        scheme: &UpstreamAuthScheme,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        upstream_authorization(self.gw, self.route, self.endpoint, scheme, self.scope).await
    }

    /// Records that this endpoint failed: skipped for a while, reported as down, and (when the request moves on)
    /// counted as a fallback.
    fn give_up(&self, moving_on: bool) {
        let (gw, route, endpoint) = (self.gw, self.route, self.endpoint);
        endpoint.mark_down();
        gw.metrics
            .set_endpoint_up(&route.label, &endpoint.origin, false);
        if moving_on {
            gw.metrics.upstream_fallback(&route.label, &endpoint.origin);
        }
    }
}

/// `source: cause: cause` — hyper's top-level errors say little ("client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn learn_scheme(headers: &HeaderMap) -> Option<UpstreamAuthScheme> {
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        if let Ok(Some(b)) = BearerChallenge::from_header(text) {
            if let Ok(realm) = Url::parse(&b.realm) {
                return Some(UpstreamAuthScheme::Bearer {
                    realm,
                    service: b.service.clone(),
                });
            }
        }
        if let Ok(challenges) = mirrorgate_registry::parse_challenges(text) {
            if challenges.iter().any(|c| c.scheme_is("basic")) {
                return Some(UpstreamAuthScheme::Basic);
            }
        }
    }
    None
}

/// Credentials are the upstream's: they go to the route's upstream registry only, never to backend caches.
fn credentials_for<'a>(
    route: &'a CompiledRoute,
    endpoint: &Endpoint,
) -> Option<&'a mirrorgate_config::Credentials> {
    endpoint
        .is_upstream
        .then_some(route.config.upstream_credentials.as_ref())
        .flatten()
}

fn token_key(
    route: &CompiledRoute,
    endpoint: &Endpoint,
    scheme: &UpstreamAuthScheme,
    scope: Option<&str>,
) -> Option<TokenKey> {
    let UpstreamAuthScheme::Bearer { realm, service } = scheme else {
        return None;
    };
    Some(TokenKey {
        realm: realm.to_string(),
        service: service.clone(),
        scope: scope.unwrap_or_default().to_string(),
        credential_id: credentials_for(route, endpoint)
            .map(|c| format!("{}@{}", c.username, route.label)),
    })
}

async fn upstream_authorization(
    gw: &Gateway,
    route: &CompiledRoute,
    endpoint: &Endpoint,
    scheme: &UpstreamAuthScheme,
    scope: Option<&str>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let creds = credentials_for(route, endpoint);
    match scheme {
        UpstreamAuthScheme::Basic => {
            Ok(creds.and_then(|c| basic(&c.username, c.password.expose())))
        }
        UpstreamAuthScheme::Bearer { realm, service } => {
            let Some(key) = token_key(route, endpoint, scheme, scope) else {
                return Ok(None);
            };
            let scopes: Vec<String> = scope.map(str::to_string).into_iter().collect();
            let url = mirrorgate_registry::token_request_url(realm, service.as_deref(), &scopes);
            let fetched = gw
                .tokens
                .get_or_fetch(&key, || fetch_token(route, url, creds))
                .await;
            match fetched {
                Ok((token, outcome)) => {
                    let result = match outcome {
                        mirrorgate_registry::CacheOutcome::Hit => {
                            mirrorgate_metrics::TokenResult::CacheHit
                        }
                        mirrorgate_registry::CacheOutcome::Fetched => {
                            mirrorgate_metrics::TokenResult::Fetched
                        }
                    };
                    gw.metrics.upstream_token(&route.label, result);
                    Ok(HeaderValue::from_str(&format!("Bearer {}", token.value)).ok())
                }
                Err(reason) => {
                    gw.metrics
                        .upstream_token(&route.label, mirrorgate_metrics::TokenResult::Error);
                    Err(ProxyError::UpstreamToken {
                        realm: realm.to_string(),
                        reason,
                    })
                }
            }
        }
    }
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// One token request to the upstream's realm (GET, as Docker Hub and distribution expect).
async fn fetch_token(
    route: &CompiledRoute,
    url: Url,
    creds: Option<&mirrorgate_config::Credentials>,
) -> Result<UpstreamToken, String> {
    let mut req = Request::builder().method(Method::GET).uri(url.as_str());
    if let (Some(h), Some(c)) = (req.headers_mut(), creds) {
        if let Some(v) = basic(&c.username, c.password.expose()) {
            h.insert(header::AUTHORIZATION, v);
        }
    }
    let req = req.body(empty()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), route.client.send(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    // Token answers are small; cap what we read so a hostile realm cannot make us buffer much.
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("the token service answered {status}"));
    }
    TokenResponse::parse(&body).map_err(|e| e.to_string())
}

/// Phase 6: turn the upstream answer into the client's.
#[allow(clippy::too_many_arguments)]
async fn respond(
    gw: &Gateway,
    rt: &Runtime,
    plan: &Plan<'_>,
    endpoint: &Endpoint,
    path_and_query: &str,
    authority: &str,
    method: &Method,
    resp: Response<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let route = plan.route;
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    strip_response_headers(&mut parts.headers);
    if let Some(remaining) = parts
        .headers
        .get("ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
    {
        if let Some(n) = remaining
            .split(';')
            .next()
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            gw.metrics.set_upstream_ratelimit_remaining(&route.label, n);
        }
    }

    if let Some(target) =
        rewrite_upstream_urls(&mut parts, plan, endpoint, path_and_query, authority)?
    {
        let is_blob = matches!(plan.path, RegistryPath::Blob { .. });
        if is_blob
            && route.config.blob_redirects == BlobRedirects::Follow
            && (method == Method::GET || method == Method::HEAD)
        {
            return follow_redirect(rt, route, method, target).await;
        }
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        // Never point a client at the upstream's realm: the upstream refused even with our credentials.
        parts.headers.remove(header::WWW_AUTHENTICATE);
        let challenge = match &gw.auth {
            Some(auth) => {
                let repository = plan.client_repository();
                let action = if matches!(*method, Method::GET | Method::HEAD) {
                    Action::Pull
                } else {
                    Action::Push
                };
                HeaderValue::from_str(&auth.challenge(
                    authority,
                    repository.as_deref(),
                    action,
                    None,
                ))
                .ok()
            }
            None => None,
        };
        let challenge = challenge.unwrap_or_else(|| {
            let host = authority
                .parse::<http::uri::Authority>()
                .map(|a| a.host().to_string())
                .unwrap_or_default();
            mirrorgate_registry::basic_challenge(&host)
        });
        parts.headers.insert(header::WWW_AUTHENTICATE, challenge);
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}

/// Maps upstream URLs in `Location` and `Link` to the gateway (path prefix and renamed repositories
/// included). Returns the target of a redirect that leaves the upstream (a CDN), for the caller to follow or
/// pass on. Only answers that carry one of the two headers pay for URL parsing; most (manifests, blobs) carry
/// neither.
fn rewrite_upstream_urls(
    parts: &mut http::response::Parts,
    plan: &Plan<'_>,
    endpoint: &Endpoint,
    path_and_query: &str,
    authority: &str,
) -> Result<Option<Url>, ProxyError> {
    if !parts.headers.contains_key(header::LOCATION) && !parts.headers.contains_key(header::LINK) {
        return Ok(None);
    }
    let request_url = Url::parse(&format!("{}{}", endpoint.origin, path_and_query))
        .map_err(|e| ProxyError::Internal(format!("request URL: {e}")))?;
    let gateway = Url::parse(&format!("https://{authority}")).map_err(|_| ProxyError::NoHost)?;
    let name_map = match (&plan.upstream_name, &plan.client_name) {
        (Some(u), Some(c)) if u != c => Some((u.as_str(), c.as_str())),
        _ => None,
    };
    let ctx = RewriteContext {
        upstream_base: &endpoint.url,
        gateway: &gateway,
        path_prefix: plan.prefix.as_deref(),
        name_map,
    };
    let mut external = None;
    if let Some(location) = parts
        .headers
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        // On a redirect the target may be local (rewritten) or external (a CDN); on an upload session
        // (202/201) only a local one is mapped.
        match rewrite_location(location, &request_url, &ctx) {
            Ok(LocationRewrite::Local(to)) => {
                if let Ok(v) = HeaderValue::from_str(&to) {
                    parts.headers.insert(header::LOCATION, v);
                }
            }
            Ok(LocationRewrite::External(target)) if parts.status.is_redirection() => {
                external = Some(target);
            }
            Ok(LocationRewrite::External(_)) => {}
            Err(e) => {
                tracing::debug!(route = %plan.route.label, error = %e, "unparseable upstream Location")
            }
        }
    }
    let links: Vec<String> = parts
        .headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| rewrite_link(v, &request_url, &ctx).ok())
        .collect();
    if !links.is_empty() {
        parts.headers.remove(header::LINK);
        for l in links {
            if let Ok(v) = HeaderValue::from_str(&l) {
                parts.headers.append(header::LINK, v);
            }
        }
    }
    Ok(external)
}

/// Fetches a blob redirect target server-side, without any credentials, so the bytes pass through limits and
/// byte counts. Refuses loopback/private/link-local targets unless the route allows them (SSRF guard).
async fn follow_redirect(
    rt: &Runtime,
    route: &CompiledRoute,
    method: &Method,
    mut target: Url,
) -> Result<Response<GatewayBody>, ProxyError> {
    const MAX_HOPS: usize = 5;
    for _ in 0..MAX_HOPS {
        check_redirect_target(&target, route.config.danger_allow_private_redirects).await?;
        let req = Request::builder()
            .method(method.clone())
            .uri(target.as_str())
            .body(empty())
            .map_err(|e| ProxyError::Redirect {
                target: target.to_string(),
                reason: e.to_string(),
            })?;
        let timeout = rt.config.server.upstream_timeout;
        let resp = tokio::time::timeout(timeout, route.client.send(req))
            .await
            .map_err(|_| ProxyError::Timeout(timeout))?
            .map_err(|e| ProxyError::Unavailable {
                detail: format!("redirect target {}: {}", redact(&target), error_chain(&e)),
            })?;
        if resp.status().is_redirection() {
            if let Some(next) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| target.join(l).ok())
            {
                target = next;
                continue;
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        strip_response_headers(&mut parts.headers);
        // CDN headers that mean nothing to a registry client.
        for h in ["set-cookie", "x-amz-request-id", "x-amz-id-2"] {
            parts.headers.remove(h);
        }
        return Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ));
    }
    Err(ProxyError::Redirect {
        target: redact(&target),
        reason: "too many redirects".into(),
    })
}

/// A URL for logs: CDN URLs carry signatures in the query.
fn redact(u: &Url) -> String {
    format!("{}{}", u.origin().ascii_serialization(), u.path())
}

async fn check_redirect_target(target: &Url, allow_private: bool) -> Result<(), ProxyError> {
    let refuse = |reason: &str| ProxyError::Redirect {
        target: redact(target),
        reason: reason.to_string(),
    };
    if !matches!(target.scheme(), "http" | "https") {
        return Err(refuse("not an http(s) URL"));
    }
    if allow_private {
        return Ok(());
    }
    let host = target.host_str().ok_or_else(|| refuse("no host"))?;
    let port = target.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| refuse(&format!("cannot resolve: {e}")))?;
    for addr in addrs {
        if is_private(addr.ip()) {
            return Err(refuse(
                "it resolves to a loopback, private or link-local address",
            ));
        }
    }
    Ok(())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
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

    // Pins the SSRF guard's address classes.
    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    // Pins that the SSRF guard refuses loopback targets unless the route opts in.
    #[tokio::test]
    async fn loopback_redirects_refused_by_default() {
        let u = Url::parse("http://127.0.0.1:9/blob").unwrap();
        assert!(check_redirect_target(&u, false).await.is_err());
        assert!(check_redirect_target(&u, true).await.is_ok());
        assert!(
            check_redirect_target(&Url::parse("file:///etc/passwd").unwrap(), true)
                .await
                .is_err()
        );
    }
}
