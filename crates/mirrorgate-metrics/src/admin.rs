//! The admin pages: `/metrics`, `/healthz`, `/readyz`.
//!
//! They are meant for a private address (loopback, a pod port) and carry no authentication, so nothing but
//! these three read-only pages is served. Probes hit them every few seconds, so every answer is built from
//! atomics and the registry without touching the request path's locks. The listener that serves them is the
//! proxy's (`mirrorgate_proxy::serve_admin`), which shares its accept loop with the public listeners.

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::health::Health;
use crate::metrics::Metrics;

/// The `Content-Type` of the text exposition format 0.0.4 that `/metrics` serves.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Answers one admin request:
///
/// - `GET /metrics`: every registered family in the text format ([`METRICS_CONTENT_TYPE`]).
/// - `GET /healthz`: `200 ok` while the process runs (liveness).
/// - `GET /readyz`: `200 ready`, or `503` listing what is missing (see [`Health::missing`]).
/// - `HEAD` works like `GET`; other methods get `405`; other paths `404`.
pub fn admin_response<B>(
    req: &Request<B>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => match metrics.encode_text() {
            Ok(body) => with_type(StatusCode::OK, METRICS_CONTENT_TYPE, body),
            Err(error) => {
                tracing::error!(error = %error, "cannot render /metrics");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
            }
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => {
            let missing = health.missing();
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                let body = format!("not ready: {}\n", missing.join(", "));
                with_type(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    body,
                )
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // Probes and scrapes must always see the live state, never a cached copy.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::metrics::tests::{parse_exposition, value_of};
    use crate::metrics::MetricsOptions;

    struct Reply {
        status: u16,
        headers: http::HeaderMap,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
    }

    /// One request through [`admin_response`] (the socket side is the proxy's listener, tested there).
    async fn call(metrics: &Metrics, health: &Health, method: &str, path: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let (parts, body) = admin_response(&req, metrics, health).into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let body = if method == "HEAD" {
            String::new()
        } else {
            String::from_utf8(body.to_vec()).unwrap()
        };
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    fn start() -> (Arc<Metrics>, Arc<Health>) {
        (
            Metrics::new(MetricsOptions::default()).unwrap(),
            Arc::new(Health::new()),
        )
    }

    // Rule: /metrics serves the text format 0.0.4 with the registry's families.
    #[tokio::test]
    async fn metrics_page_serves_exposition() {
        let (metrics, health) = start();
        metrics.auth_failure(crate::AuthFailureReason::Forbidden);
        let _conn = metrics.connection_opened("admin");
        let reply = call(&metrics, &health, "GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        let samples = parse_exposition(&reply.body);
        let forbidden = [("reason", "forbidden")];
        assert_eq!(
            value_of(&samples, "mirrorgate_auth_failures_total", &forbidden),
            Some(1.0)
        );
        let admin = [("listener", "admin")];
        assert_eq!(
            value_of(&samples, "mirrorgate_connections_active", &admin),
            Some(1.0)
        );
    }

    // Rule: /healthz is 200 while alive; /readyz is 503 naming what is missing until all conditions hold.
    #[tokio::test]
    async fn health_and_readiness() {
        let (metrics, health) = start();
        let live = call(&metrics, &health, "GET", "/healthz").await;
        assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));

        let not_ready = call(&metrics, &health, "GET", "/readyz").await;
        assert_eq!(not_ready.status, 503);
        assert!(
            not_ready.body.contains("no usable certificate"),
            "{}",
            not_ready.body
        );
        assert!(
            not_ready.body.contains("config not loaded"),
            "{}",
            not_ready.body
        );

        health.set_listeners_bound(true);
        health.set_config_loaded(true);
        let still = call(&metrics, &health, "GET", "/readyz").await;
        assert_eq!(still.status, 503);
        assert_eq!(still.body, "not ready: no usable certificate\n");

        health.set_certificate_ready(true);
        let ready = call(&metrics, &health, "GET", "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

        health.set_draining(true);
        let draining = call(&metrics, &health, "GET", "/readyz").await;
        assert_eq!(draining.status, 503);
        assert_eq!(draining.body, "not ready: shutting down\n");
    }

    // Rule: unknown paths are 404 and non-GET methods on known paths are 405 with Allow.
    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let (m, h) = start();
        assert_eq!(call(&m, &h, "GET", "/v2/").await.status, 404);
        assert_eq!(call(&m, &h, "GET", "/metrics/extra").await.status, 404);
        let post = call(&m, &h, "POST", "/metrics").await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        let head = call(&m, &h, "HEAD", "/healthz").await;
        assert_eq!(head.status, 200);
    }
}
