//! The listeners: TLS (h2 + HTTP/1.1 by ALPN) in front of the request path, the plain-HTTP redirector that also
//! answers ACME HTTP-01, and graceful shutdown (stop accepting, let in-flight requests finish up to a grace).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mirrorgate_metrics::{RequestLabels, UNROUTED_LABEL};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::{empty, full, Completion, GatewayBody, Metered};
use crate::forward::{serve, ConnInfo, RequestFacts};
use crate::runtime::Gateway;

/// The largest request head accepted (h1 read buffer, h2 header list): registry requests have small heads;
/// bigger ones get 431 instead of tying up memory. Above 64 KiB so that a request line longer than the URI limit
/// (65534 bytes) still gets its precise 414.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// A TLS handshake that takes longer than this is dropped (slow-handshake attacks hold sockets otherwise).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams per h2 connection: enough for parallel layer pulls, bounded against stream floods.
const MAX_H2_STREAMS: u32 = 128;
/// The ALPN protocol of ACME TLS-ALPN-01 validation; such connections carry no HTTP.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Answers ACME HTTP-01 challenges: token → key authorization.
pub type Http01Responder = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Serves the TLS listener until `shutdown`, then waits up to `grace` for open requests.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    let header_timeout = gateway.runtime().config.server.client_header_timeout;
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_pending_accept_reset_streams(Some(64));
    let http = Arc::new(http);
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gateway = gateway.clone();
        let http = http.clone();
        let conn_guard = gateway.metrics.connection_opened("https");
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _conn_guard = conn_guard;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    gateway
                        .metrics
                        .tls_handshake_error("https", handshake_reason(&e));
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    gateway.metrics.tls_handshake_error("https", "timeout");
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // The validator only looks at the certificate.
                return;
            }
            let conn = Arc::new(ConnInfo {
                peer,
                sni: session.server_name().map(str::to_ascii_lowercase),
            });
            let service = service_fn(move |req: Request<Incoming>| {
                let gateway = gateway.clone();
                let conn = conn.clone();
                async move { Ok::<_, Infallible>(handle(&gateway, &conn, req).await) }
            });
            // hyper-util's auto server reads the first bytes to tell h1 from h2 before any header timer runs:
            // a client that completes TLS and then says nothing would hold the socket forever.
            let first_byte = Arc::new(AtomicBool::new(false));
            let io = FirstRead {
                inner: tls,
                seen: first_byte.clone(),
            };
            let served = watcher.watch(
                http.serve_connection(TokioIo::new(io), service)
                    .into_owned(),
            );
            tokio::pin!(served);
            let result = tokio::select! {
                r = &mut served => r,
                () = tokio::time::sleep(header_timeout) => {
                    if !first_byte.load(Ordering::Acquire) {
                        tracing::debug!(%peer, "no request after the TLS handshake; closing");
                        return;
                    }
                    served.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(graceful, grace).await;
}

async fn drain(graceful: GracefulShutdown, grace: Duration) {
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
}

/// A connection's byte stream that notes when the first byte arrives (see the idle-after-handshake guard).
struct FirstRead<T> {
    inner: T,
    seen: Arc<AtomicBool>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.seen.store(true, Ordering::Release);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstRead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn handshake_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoApplicationProtocol) => "no_alpn",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateHandshakeMessage { .. }) => "bad_message",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "tls_error",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}

/// One request, start to end: serve it, render failures, add the headers every answer carries, and log it
/// once its body is done.
async fn handle(
    gateway: &Arc<Gateway>,
    conn: &ConnInfo,
    req: Request<Incoming>,
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
    let mut facts = RequestFacts::default();
    let response = match serve(gateway, &runtime, conn, req, &mut facts).await {
        Ok(r) => r,
        Err(e) => {
            if e.is_internal() {
                tracing::warn!(error = %e, %host, %path, "request failed");
            } else {
                tracing::debug!(error = %e, %host, %path, "request refused");
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
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = parts.status;
    let gw = gateway.clone();
    let peer = conn.peer;
    let idle = Some(runtime.config.server.upstream_timeout);
    let on_done = Box::new(move |bytes: u64, completion: Completion| {
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
    });
    let body = GatewayBody::new(Metered::new(body, idle, on_done));
    Response::from_parts(parts, body)
}

/// Serves the plain-HTTP listener: ACME HTTP-01 answers, and a 308 to https (path and query kept) for
/// everything else. The https port is read from the current config, so moving the https listener on reload
/// needs no restart here.
pub async fn serve_http(
    listener: TcpListener,
    acme: Option<Http01Responder>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        loop {
            let (tcp, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let acme = acme.clone();
            let guard = gateway.metrics.connection_opened("http");
            let gw = gateway.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let acme = acme.clone();
                let https_port = gw.runtime().config.server.https.port();
                async move {
                    Ok::<_, Infallible>(redirect_or_challenge(&req, https_port, acme.as_ref()))
                }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            let watched = graceful.watch(conn);
            tokio::spawn(async move {
                let _guard = guard;
                let _ = watched.await;
            });
        }
        drain(graceful, Duration::from_secs(5)).await;
    }
}

fn redirect_or_challenge<B>(
    req: &Request<B>,
    https_port: u16,
    acme: Option<&Http01Responder>,
) -> Response<GatewayBody> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match acme.and_then(|a| a(token)) {
            Some(key_auth) => {
                let mut r = Response::new(full(key_auth));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => status_only(StatusCode::NOT_FOUND),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::router::host_of);
    let Some(host) = host else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    let authority = if https_port == 443 {
        host
    } else if host.contains(':') {
        format!("[{host}]:{https_port}")
    } else {
        format!("{host}:{https_port}")
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    match HeaderValue::from_str(&format!("https://{authority}{pq}")) {
        Ok(location) => {
            let mut r = status_only(StatusCode::PERMANENT_REDIRECT);
            r.headers_mut().insert(header::LOCATION, location);
            r
        }
        Err(_) => status_only(StatusCode::BAD_REQUEST),
    }
}

fn status_only(status: StatusCode) -> Response<GatewayBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    // Pins the :80 → https redirect: 308, path and query kept, port only when not 443.
    #[test]
    fn redirect_keeps_path_and_query() {
        let r = redirect_or_challenge(&get("/v2/?x=1", "docker.test:8080"), 8443, None);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://docker.test:8443/v2/?x=1"
        );
        let r = redirect_or_challenge(&get("/v2/", "docker.test"), 443, None);
        assert_eq!(r.headers()[header::LOCATION], "https://docker.test/v2/");
    }

    // Pins that HTTP-01 answers come from the responder and unknown tokens are 404, never a redirect.
    #[test]
    fn acme_challenges_are_answered() {
        let responder: Http01Responder =
            Arc::new(|t: &str| (t == "tok").then(|| "tok.thumb".to_string()));
        let r = redirect_or_challenge(
            &get("/.well-known/acme-challenge/tok", "a.test"),
            8443,
            Some(&responder),
        );
        assert_eq!(r.status(), StatusCode::OK);
        let r = redirect_or_challenge(
            &get("/.well-known/acme-challenge/nope", "a.test"),
            8443,
            Some(&responder),
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
