//! Phase 6, **response**: the upstream's answer becomes the client's. Hop-by-hop and revealing headers are
//! dropped, Docker Hub's remaining pull count is recorded, `Location`/`Link` are mapped back to the gateway (in
//! the client's namespace), blob redirects to a CDN are followed or passed on, and an upstream 401 is answered
//! with the gateway's own challenge (never the upstream's realm).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_config::BlobRedirects;
use mirrorgate_registry::{
    rewrite_link, rewrite_location, strip_response_headers, LocationRewrite, RegistryPath,
    RewriteContext,
};
use url::Url;

use crate::body::GatewayBody;
use crate::context::{Plan, RequestCtx};
use crate::error::ProxyError;
use crate::headers;
use crate::redirect::follow_redirect;
use crate::upstream::Endpoint;

/// Turns the upstream answer from `endpoint` into the client's.
pub async fn respond(
    ctx: &RequestCtx<'_>,
    plan: &Plan,
    endpoint: &Endpoint,
    resp: Response<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let route = ctx.route;
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    strip_response_headers(&mut parts.headers);
    if let Some(n) = mirrorgate_registry::ratelimit_remaining(&parts.headers) {
        ctx.gw
            .metrics
            .set_upstream_ratelimit_remaining(&route.label, n);
    }

    if let Some(target) = rewrite_upstream_urls(ctx, &mut parts, plan, endpoint)? {
        let is_blob = matches!(plan.path, RegistryPath::Blob { .. });
        let is_read = ctx.action == mirrorgate_auth::Action::Pull;
        if is_blob && is_read && route.config.blob_redirects == BlobRedirects::Follow {
            return follow_redirect(ctx, target).await;
        }
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        // Never point a client at the upstream's realm: the upstream refused even with our credentials.
        parts.headers.remove(header::WWW_AUTHENTICATE);
        parts
            .headers
            .insert(header::WWW_AUTHENTICATE, our_challenge(ctx, plan));
    }
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}

/// The gateway's own challenge for this request: Bearer pointing at our token endpoint when there is client
/// auth, else Basic for the host.
fn our_challenge(ctx: &RequestCtx<'_>, plan: &Plan) -> HeaderValue {
    let bearer = ctx.gw.auth.as_ref().and_then(|auth| {
        let repository = plan.client_repository();
        HeaderValue::from_str(&auth.challenge(
            &ctx.authority,
            repository.as_deref(),
            ctx.action,
            None,
        ))
        .ok()
    });
    bearer.unwrap_or_else(|| {
        let host = ctx
            .authority
            .parse::<http::uri::Authority>()
            .map(|a| a.host().to_string())
            .unwrap_or_default();
        mirrorgate_registry::basic_challenge(&host)
    })
}

/// Maps upstream URLs in `Location` and `Link` to the gateway (path prefix and renamed repositories
/// included). Returns the target of a redirect that leaves the upstream (a CDN), for the caller to follow or
/// pass on. Only answers that carry one of the two headers pay for URL parsing; most (manifests, blobs) carry
/// neither.
fn rewrite_upstream_urls(
    ctx: &RequestCtx<'_>,
    parts: &mut http::response::Parts,
    plan: &Plan,
    endpoint: &Endpoint,
) -> Result<Option<Url>, ProxyError> {
    if !parts.headers.contains_key(header::LOCATION) && !parts.headers.contains_key(header::LINK) {
        return Ok(None);
    }
    let request_url = Url::parse(&format!(
        "{}{}",
        endpoint.origin,
        plan.upstream_path_and_query()
    ))
    .map_err(|e| ProxyError::Internal(format!("request URL: {e}")))?;
    let gateway =
        Url::parse(&format!("https://{}", ctx.authority)).map_err(|_| ProxyError::NoHost)?;
    let name_map = match (&plan.upstream_name, &plan.client_name) {
        (Some(u), Some(c)) if u != c => Some((u.as_str(), c.as_str())),
        _ => None,
    };
    let rewrite = RewriteContext {
        upstream_base: &endpoint.url,
        gateway: &gateway,
        path_prefix: plan.path_prefix(),
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
        match rewrite_location(location, &request_url, &rewrite) {
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
                tracing::debug!(route = %ctx.route.label, error = %e, "unparseable upstream Location")
            }
        }
    }
    let links: Vec<String> = parts
        .headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| rewrite_link(v, &request_url, &rewrite).ok())
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
