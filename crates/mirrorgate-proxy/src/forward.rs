//! The request path, as phases. Each phase lives in the module named after it, documented with when it runs and
//! what it may short-circuit; this module ties them together and keeps the endpoint loop.
//!
//! 1. **route** (`plan`) — `Host` (must agree with SNI) → route; the path is parsed as an OCI distribution
//!    request and, for path-prefix / `?ns=` routes, the upstream is picked from the route's list. `/token` is
//!    answered locally (`token_endpoint`). Short-circuits: 421, 400, 403, 404.
//! 2. **rewrite name** (`plan`) — Docker Hub's `library/` rule and the route's regex rewrites.
//! 3. **identify** (`admission`) — Basic (htpasswd), Bearer (our JWT), source CIDR, or anonymous. 401.
//! 4. **authorize** (`admission`) — the tenant's rules for this route, repository and action. 401 / 403 / 404.
//! 5. **limit** (`admission`) — request rate, concurrency, daily bytes. 429 (503 if shared state is required
//!    and down). The local `/v2/` ping is answered after this phase.
//!    Then the **cache** (`cache`, with `[cache]`): GET/HEAD of a manifest or blob answered from the store when
//!    this repository is known to reference it (or a tag is fresh); otherwise the endpoint loop runs and a 200
//!    with a verifiable digest fills the store while it streams. Short-circuits: the cached answer (200/206/416).
//! 6. **choose endpoint** (here) — ordered endpoints, healthy first; connect errors, timeouts and 5xx on
//!    GET/HEAD move to the next one.
//! 7. **upstream auth** (`pool_attempt`, `upstream_auth`) — a member of the upstream's credential pool (most
//!    headroom; a 429 or refused login sets it aside and a read retries once with the next; all aside → 429),
//!    then a cached Bearer token for (realm, service, scope, credential), learned from the upstream's challenge
//!    and fetched once per key, or server-side Basic credentials.
//! 8. **forward** (`attempt`) — the manifest `Accept` list, hop-by-hop headers and client credentials dropped,
//!    bodies streamed both ways.
//! 9. **response** (`respond`, `redirect`) — blob redirects followed or passed on, `Location`/`Link` mapped to
//!    the gateway, upstream challenges replaced, revealing headers removed.
//! 10. **log** (`server`) — when the response body ends: the access-log line and request metrics, with the
//!     [`RequestFacts`] the phases filled in.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_registry::{manifest_accept, RegistryPath, Scope};

use crate::admission::{admit, check_route_deny, Ask};
use crate::attempt::Attempt;
use crate::body::{empty, full, GatewayBody};
use crate::context::{ConnInfo, Plan, RequestCtx, RequestFacts};
use crate::error::{EndpointError, ProxyError};
use crate::headers;
use crate::plan::{checked_authority, plan};
use crate::respond::respond;
use crate::runtime::{Gateway, Runtime};
use crate::upstream::attempt_order;

/// Serves one request on the https listener. Errors are returned typed; the caller renders them.
pub async fn serve(
    gw: &Gateway,
    rt: &Runtime,
    conn: &ConnInfo,
    req: Request<Incoming>,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    // Phase 1: route.
    let (authority, host) = checked_authority(&req, conn, rt.config.server.allow_missing_sni)?;
    let route = rt.router.lookup(&host)?;
    facts.route = Some(route.label.clone());
    let client_ip = headers::client_ip(
        conn.peer.ip(),
        req.headers(),
        &rt.config.server.trusted_proxies,
    );
    if req.uri().path() == "/token" {
        facts.kind = Some(mirrorgate_registry::RequestKind::Token);
        return crate::token_endpoint::serve_token(gw, route, req, &authority, client_ip).await;
    }
    // Phases 1–2: the plan.
    facts.client = Some(client_ip);
    let mut plan = plan(route, &req)?;
    facts.kind = Some(plan.path.kind());
    let repository = plan.client_repository();
    facts.repository.clone_from(&repository);
    let reference = match &plan.path {
        RegistryPath::Manifest { reference, .. } => Some(reference),
        _ => None,
    };
    facts.reference = reference.map(ToString::to_string);
    let ctx = RequestCtx {
        gw,
        rt,
        route,
        authority,
        client_ip,
        method: req.method().clone(),
        action: mirrorgate_auth::Action::for_request(req.method(), plan.path.kind()),
    };

    // Phases 3–5: identify, authorize, limit.
    let ask = Ask {
        route_host: &route.label,
        route_anonymous: route.config.anonymous,
        authority: &ctx.authority,
        repository: repository.as_deref(),
        action: ctx.action,
        mount_from: plan.mount.as_ref().map(|m| m.from_client.as_str()),
        reference,
    };
    let admitted = admit(gw, &ask, req.headers(), client_ip, facts).await?;
    let mount_not_denied = check_route_deny(gw, &route.deny, &ask, facts)?;
    if !admitted.mount_allowed || !mount_not_denied {
        plan.mount = None;
    }
    let admission = admitted.limits;
    let rate_headers = admission.rate_limit_headers();
    let resp = if plan.path == RegistryPath::Ping {
        ping_response(&ctx.method)
    } else {
        crate::cache::serve(&ctx, &plan, req, facts).await?
    };
    let (mut parts, body) = resp.into_parts();
    facts.quota_counted = admission.counts_quota();
    for (name, value) in rate_headers.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Ok(Response::from_parts(
        parts,
        GatewayBody::new(admission.throttle(body)),
    ))
}

/// The local answer to `GET /v2/` once the client passed admission.
fn ping_response(method: &Method) -> Response<GatewayBody> {
    let body = if method == Method::HEAD {
        empty()
    } else {
        full(Bytes::from_static(mirrorgate_registry::PING_BODY))
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Phases 6–9: the endpoint loop. Idempotent requests move on to the next endpoint on failure; a request with
/// a body goes to one endpoint only (its body can be sent once).
pub(crate) async fn forward(
    ctx: &RequestCtx<'_>,
    plan: &Plan,
    req: Request<Incoming>,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    forward_parts(ctx, plan, &parts.headers, Some(body), facts).await
}

/// The endpoint loop for a request the gateway makes itself on the client's behalf (the cache's `HEAD` that
/// revalidates a tag): `ctx.method` with the client's headers and no body.
pub(crate) async fn forward_bodiless(
    ctx: &RequestCtx<'_>,
    plan: &Plan,
    client_headers: &HeaderMap,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    forward_parts(ctx, plan, client_headers, None, facts).await
}

async fn forward_parts(
    ctx: &RequestCtx<'_>,
    plan: &Plan,
    client_headers: &HeaderMap,
    body: Option<Incoming>,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    let server = &ctx.rt.config.server;
    let idempotent = ctx.method == Method::GET || ctx.method == Method::HEAD;
    // Requests without a body (GET, HEAD, the POST that opens an upload) can be sent again after a 401.
    let replayable = idempotent || body.as_ref().is_none_or(http_body::Body::is_end_stream);
    let path_and_query = plan.upstream_path_and_query();
    let mut base_headers =
        headers::upstream_request_headers(client_headers, ctx.client_ip, &server.trusted_proxies);
    if matches!(plan.path, RegistryPath::Manifest { .. }) {
        base_headers.insert(
            header::ACCEPT,
            manifest_accept(client_headers.get_all(header::ACCEPT).iter()),
        );
    }
    let scope = Scope::for_path(&plan.path, &ctx.method).map(|s| s.to_string());

    let mut body = body;
    let order = attempt_order(&plan.endpoints);
    let mut last_failure = None;
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
            ctx,
            endpoint,
            path_and_query: &path_and_query,
            headers: &base_headers,
            scope: scope.as_deref(),
            // The catalog lists every repository the account can see: never with the gateway's account.
            with_credentials: plan.path != RegistryPath::Catalog,
        };
        let can_move_on = idempotent && i + 1 < order.len();
        let resp = match attempt.send_pooled(req_body, replayable, idempotent).await {
            Ok(resp) if resp.status().is_server_error() && can_move_on => {
                last_failure = Some(EndpointError::Status {
                    origin: endpoint.origin.clone(),
                    status: resp.status(),
                });
                attempt.give_up(true);
                attempt.hold_for_retry_after(&resp);
                continue;
            }
            Ok(resp) => resp,
            // A token service failure is the realm's, not this endpoint's: no fallback, no health mark. An
            // exhausted credential pool is ours: the endpoint is fine.
            Err(
                e @ (ProxyError::UpstreamToken { .. } | ProxyError::CredentialsExhausted { .. }),
            ) => return Err(e),
            Err(e) if can_move_on => {
                tracing::info!(route = %ctx.route.label, endpoint = %endpoint.origin, error = %crate::error::Report(&e), "endpoint failed, trying the next one");
                last_failure = Some(EndpointError::Failed {
                    origin: endpoint.origin.clone(),
                    source: Box::new(e),
                });
                attempt.give_up(true);
                continue;
            }
            Err(e) => {
                attempt.give_up(false);
                return Err(e);
            }
        };
        if !attempt.hold_for_retry_after(&resp) {
            attempt.answered();
        }
        return respond(ctx, plan, endpoint, resp).await;
    }
    Err(ProxyError::Unavailable(
        last_failure.unwrap_or(EndpointError::NoEndpoint),
    ))
}
