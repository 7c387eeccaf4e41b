//! One try of a request at one endpoint: build the upstream request, send it under `upstream_timeout`, count it,
//! and record the endpoint's health when the try fails. The token dance around it is in `upstream_auth`.

use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::GatewayBody;
use crate::context::RequestCtx;
use crate::error::{EndpointError, ProxyError};
use crate::upstream::Endpoint;

/// One request as it goes to one endpoint: everything but the body and the credentials, which change between
/// the tries of the token dance.
pub struct Attempt<'a> {
    pub ctx: &'a RequestCtx<'a>,
    pub endpoint: &'a Endpoint,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The token scope this request needs upstream (`repository:library/alpine:pull`).
    pub scope: Option<&'a str>,
    /// Whether the endpoint's server-side credentials may be used for this request.
    pub with_credentials: bool,
}

impl Attempt<'_> {
    /// Sends one request to this endpoint. Only the response head is awaited here; body timeouts are the
    /// streaming body's.
    pub async fn send_once(
        &self,
        method: &Method,
        path_and_query: &str,
        authorization: Option<HeaderValue>,
        body: GatewayBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (ctx, endpoint) = (self.ctx, self.endpoint);
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
        let timeout = ctx.rt.config.server.upstream_timeout;
        let result = tokio::time::timeout(timeout, ctx.route.client.send(req)).await;
        let status = match &result {
            Ok(Ok(r)) => Some(r.status().as_u16()),
            _ => None,
        };
        ctx.gw.metrics.upstream_done(
            &ctx.route.label,
            &endpoint.origin,
            status,
            started.elapsed(),
        );
        match result {
            // Registries never ask for proxy credentials: a 407 is the outbound proxy's answer to an http request.
            Ok(Ok(resp)) if resp.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                tracing::warn!(route = %ctx.route.label, endpoint = %endpoint.origin, "the outbound proxy refused the request (407): check upstream_proxy_username/_password");
                Err(ProxyError::Unavailable(EndpointError::Status {
                    origin: endpoint.origin.clone(),
                    status: resp.status(),
                }))
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(source)) => {
                if let Some(refused) = crate::egress::refused_by_proxy(&source) {
                    tracing::warn!(route = %ctx.route.label, endpoint = %endpoint.origin, error = %refused, "the outbound proxy refused the connection");
                }
                Err(ProxyError::Unavailable(EndpointError::Send {
                    origin: endpoint.origin.clone(),
                    source,
                }))
            }
            Err(_) => Err(ProxyError::Timeout(timeout)),
        }
    }

    /// Records that this endpoint failed: skipped for a while, reported as down, and (when the request moves on)
    /// counted as a fallback.
    pub fn give_up(&self, moving_on: bool) {
        let (gw, route, endpoint) = (self.ctx.gw, self.ctx.route, self.endpoint);
        endpoint.mark_down();
        gw.metrics
            .set_endpoint_up(&route.label, &endpoint.origin, false);
        if moving_on {
            gw.metrics.upstream_fallback(&route.label, &endpoint.origin);
        }
    }

    /// Honours an upstream's `Retry-After` for this endpoint's health: a 503 (or a 429 to an endpoint without a
    /// credential pool, whose members take 429s themselves) holds the endpoint down that long. Returns whether
    /// it did.
    pub fn hold_for_retry_after(&self, resp: &Response<Incoming>) -> bool {
        let pooled = !self.endpoint.credentials.is_empty();
        let Some(wait) = retry_after_hold(resp.status(), resp.headers(), pooled) else {
            return false;
        };
        let (gw, route, endpoint) = (self.ctx.gw, self.ctx.route, self.endpoint);
        endpoint.mark_down_for(wait);
        gw.metrics
            .set_endpoint_up(&route.label, &endpoint.origin, false);
        tracing::info!(route = %route.label, endpoint = %endpoint.origin, status = resp.status().as_u16(), for_secs = wait.as_secs(), "endpoint asked to be left alone (Retry-After)");
        true
    }

    /// Records that this endpoint answered.
    pub fn answered(&self) {
        let (gw, route, endpoint) = (self.ctx.gw, self.ctx.route, self.endpoint);
        if !endpoint.is_up() {
            endpoint.mark_up();
        }
        gw.metrics
            .set_endpoint_up(&route.label, &endpoint.origin, true);
    }
}

/// The longest an upstream's `Retry-After` holds an endpoint down: a hostile or confused upstream must not take
/// itself out of rotation for days (a held endpoint is still tried when every endpoint is down).
const MAX_RETRY_AFTER_HOLD: Duration = Duration::from_secs(3600);

/// How long an answer asks the endpoint to be left alone: `Retry-After` on a 503, or on a 429 when the endpoint
/// has no credential pool (with one, the 429 is the credential's, not the endpoint's).
fn retry_after_hold(status: StatusCode, headers: &HeaderMap, pooled: bool) -> Option<Duration> {
    let applies = status == StatusCode::SERVICE_UNAVAILABLE
        || (status == StatusCode::TOO_MANY_REQUESTS && !pooled);
    if !applies {
        return None;
    }
    mirrorgate_registry::retry_after(headers).map(|d| d.min(MAX_RETRY_AFTER_HOLD))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins which answers hold an endpoint down by their Retry-After: 503 always, 429 only without a pool.
    #[test]
    fn retry_after_holds_the_endpoint() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(
            retry_after_hold(StatusCode::SERVICE_UNAVAILABLE, &h, true),
            thirty
        );
        assert_eq!(
            retry_after_hold(StatusCode::TOO_MANY_REQUESTS, &h, false),
            thirty
        );
        assert_eq!(
            retry_after_hold(StatusCode::TOO_MANY_REQUESTS, &h, true),
            None
        );
        assert_eq!(retry_after_hold(StatusCode::BAD_GATEWAY, &h, false), None);
        assert_eq!(
            retry_after_hold(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), false),
            None
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(
            retry_after_hold(StatusCode::SERVICE_UNAVAILABLE, &h, false),
            Some(MAX_RETRY_AFTER_HOLD)
        );
    }
}
