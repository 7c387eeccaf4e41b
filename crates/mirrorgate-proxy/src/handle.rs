//! Phase 10, **log**, and the answer's frame: one request on the https listener from start to end — the request
//! path (`forward::serve`), failures rendered as OCI errors, the headers every answer carries (HSTS, the API
//! version), and once the response body has ended (or been abandoned) the access-log line, request metrics, the
//! usage ledger and the audit trail, all from the [`RequestFacts`] the phases filled in.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use mirrorgate_metrics::{RequestLabels, UNROUTED_LABEL};

use crate::body::{empty, full, Completion, GatewayBody, Metered};
use crate::context::{ConnInfo, RequestFacts};
use crate::forward::serve;
use crate::listener::Busy;
use crate::runtime::Gateway;

/// One request, start to end: serve it, render failures, add the headers every answer carries, and log it
/// once its body is done.
pub(crate) async fn handle(
    gateway: &Arc<Gateway>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    busy: Busy,
) -> Response<GatewayBody> {
    let started = Instant::now();
    let runtime = gateway.runtime();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let host = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let bytes_in = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let had_credentials = req.headers().contains_key(header::AUTHORIZATION);
    let mut facts = RequestFacts::default();
    let response = match serve(gateway, &runtime, conn, req, &mut facts).await {
        Ok(r) => r,
        Err(e) => {
            facts.refusal = crate::audit::refusal(&e);
            if e.is_internal() {
                tracing::warn!(error = %crate::error::Report(&e), %host, %path, "request failed");
            } else {
                tracing::debug!(error = %crate::error::Report(&e), %host, %path, "request refused");
            }
            let (parts, body) = e.to_registry().into_response().into_parts();
            Response::from_parts(
                parts,
                if method == http::Method::HEAD {
                    empty()
                } else {
                    full(body)
                },
            )
        }
    };
    let (mut parts, body) = response.into_parts();
    if let Some(hsts) = runtime
        .config
        .server
        .hsts
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
    {
        parts
            .headers
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
    }
    parts.headers.insert(
        mirrorgate_registry::API_VERSION_HEADER,
        mirrorgate_registry::api_version(),
    );
    let status = parts.status;
    let audit = gateway.audit();
    // Only the audit trail reads the digest served; without one, no copy per request.
    let served_digest = audit.as_ref().and_then(|_| {
        parts
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let gw = gateway.clone();
    let peer = conn.peer;
    let idle = Some(runtime.config.server.upstream_timeout);
    let on_done = Box::new(move |bytes: u64, completion: Completion| {
        // The connection counts as busy until the answer is sent or abandoned (this closure runs or drops).
        let _busy = busy;
        let elapsed = started.elapsed();
        let route = facts.route.as_deref().unwrap_or(UNROUTED_LABEL);
        gw.metrics.request_done(
            &RequestLabels {
                route,
                tenant: facts.tenant.as_deref(),
                user: facts.user.as_deref(),
                method: &method,
                kind: facts.kind,
            },
            status.as_u16(),
            elapsed,
            bytes_in,
            bytes,
        );
        crate::usage::record(&gw, &facts, &method, status, bytes, bytes_in);
        tracing::info!(
            target: "mirrorgate::access",
            client = %peer.ip(),
            host = %host,
            method = %method,
            path = %path,
            status = status.as_u16(),
            bytes,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            route,
            endpoint = facts.endpoint.as_deref().unwrap_or("-"),
            tenant = facts.tenant.as_deref().unwrap_or("-"),
            user = facts.user.as_deref().unwrap_or("-"),
            completion = ?completion,
        );
        if let Some(audit) = audit {
            let entry = crate::audit::Entry {
                facts: &facts,
                peer: peer.ip(),
                method: &method,
                status,
                digest: served_digest.as_deref(),
                had_credentials,
            };
            if entry.wanted() {
                audit.record(entry.line());
            }
        }
    });
    let body = GatewayBody::new(Metered::new(body, idle, on_done));
    Response::from_parts(parts, body)
}
