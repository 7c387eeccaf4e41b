//! The admin listener: `/metrics`, `/healthz`, `/readyz` over plain HTTP/1.1.
//!
//! It is meant for a private address (loopback, a pod port) and carries no authentication, so it serves
//! nothing but these three read-only pages. Probes hit it every few seconds, so every answer is built from
//! atomics and the registry without touching the request path's locks.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

/// The `Content-Type` of the text exposition format 0.0.4 that `/metrics` serves.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client that has not sent its request head by then is dropped (slow or stuck scrapers).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open admin connections may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (typically out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the admin pages on `listener` until `shutdown` is cancelled, then lets open connections
/// finish (up to a few seconds) and returns.
///
/// - `GET /metrics`: every registered family in the text format ([`METRICS_CONTENT_TYPE`]).
/// - `GET /healthz`: `200 ok` while the process runs (liveness).
/// - `GET /readyz`: `200 ready`, or `503` listing what is missing (see [`Health::missing`]).
/// - `HEAD` works like `GET`; other methods get `405`; other paths `404`.
///
/// Admin connections count in the connection metrics under `listener="admin"`.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener serving /metrics /healthz /readyz");
    }

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let guard = metrics.connection_opened("admin");
        let service = {
            let metrics = Arc::clone(&metrics);
            let health = Arc::clone(&health);
            service_fn(move |req| {
                let response = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "admin connection ended with an error");
            }
            drop(guard);
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin listener: connections still open after the drain timeout");
    }
}

/// Answers one admin request.
fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
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
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::metrics::tests::{parse_exposition, value_of};
    use crate::metrics::MetricsOptions;

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one raw HTTP/1.1 request over a fresh loopback connection and reads the whole answer.
    async fn call(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        Arc<Health>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new(MetricsOptions::default()).unwrap();
        let health = Arc::new(Health::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_admin(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            shutdown.clone(),
        ));
        (addr, metrics, health, shutdown, task)
    }

    // Rule: /metrics serves the text format 0.0.4 with the registry's families over a real socket.
    #[tokio::test]
    async fn metrics_page_serves_exposition() {
        let (addr, metrics, _health, shutdown, task) = start().await;
        metrics.auth_failure(crate::AuthFailureReason::Forbidden);
        let reply = call(addr, "GET", "/metrics").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
        let samples = parse_exposition(&reply.body);
        let forbidden = [("reason", "forbidden")];
        assert_eq!(
            value_of(&samples, "mirrorgate_auth_failures_total", &forbidden),
            Some(1.0)
        );
        // The scrape's own connection is counted while it is open.
        let admin = [("listener", "admin")];
        assert_eq!(
            value_of(&samples, "mirrorgate_connections_active", &admin),
            Some(1.0)
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    // Rule: /healthz is 200 while alive; /readyz is 503 naming what is missing until all conditions hold.
    #[tokio::test]
    async fn health_and_readiness() {
        let (addr, _metrics, health, shutdown, task) = start().await;
        let live = call(addr, "GET", "/healthz").await;
        assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));

        let not_ready = call(addr, "GET", "/readyz").await;
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
        let still = call(addr, "GET", "/readyz").await;
        assert_eq!(still.status, 503);
        assert_eq!(still.body, "not ready: no usable certificate\n");

        health.set_certificate_ready(true);
        let ready = call(addr, "GET", "/readyz").await;
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
        shutdown.cancel();
        task.await.unwrap();
    }

    // Rule: unknown paths are 404 and non-GET methods on known paths are 405 with Allow.
    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let (addr, _metrics, _health, shutdown, task) = start().await;
        assert_eq!(call(addr, "GET", "/v2/").await.status, 404);
        assert_eq!(call(addr, "GET", "/metrics/extra").await.status, 404);
        let post = call(addr, "POST", "/metrics").await;
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        let head = call(addr, "HEAD", "/healthz").await;
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        shutdown.cancel();
        task.await.unwrap();
    }

    // Rule: cancelling the token stops the listener: the future returns and the port refuses connections.
    #[tokio::test]
    async fn shutdown_stops_listening() {
        let (addr, _metrics, _health, shutdown, task) = start().await;
        assert_eq!(call(addr, "GET", "/healthz").await.status, 200);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
