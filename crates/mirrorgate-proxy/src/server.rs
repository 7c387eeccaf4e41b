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
use mirrorgate_metrics::{Health, Metrics, RequestLabels, UNROUTED_LABEL};
use mirrorgate_tls::ACME_TLS_ALPN;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{empty, full, Completion, GatewayBody, Metered};
use crate::context::{ConnInfo, RequestFacts};
use crate::forward::serve;
use crate::framing::{FramingGuard, Verdicts};
use crate::listener::{accept_loop, drain, drive, Activity, Busy, ConnectionCaps};
use crate::runtime::Gateway;

/// The largest request head accepted, in total (h1 read buffer, h2 header list): registry clients send a few
/// KiB at most (a Bearer token with an `x5c` chain is under 4 KiB). Envoy's default is 60 KiB, nginx's 32 KiB.
/// Bigger heads get 431 instead of tying up memory. hyper also bounds its h1 write buffer by this figure.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// URIs longer than this get a precise 414 (a longer one cannot fit in [`MAX_HEAD_BYTES`] and is a 431).
const MAX_URI_BYTES: usize = 32 * 1024;
/// Encrypted bytes queued per connection before writes wait for the socket: one full TLS record.
const TLS_SEND_BUFFER: usize = 16 * 1024;
/// A TLS handshake that takes longer than this is dropped (slow-handshake attacks hold sockets otherwise).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams per h2 connection: enough for parallel layer pulls, bounded against stream floods.
const MAX_H2_STREAMS: u32 = 128;
/// The plain-HTTP listener only redirects and answers ACME: a short head timeout and a short drain.
const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// The admin listener: slow or stuck scrapers are dropped; open scrapes get a few seconds at exit.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

/// Answers ACME HTTP-01 challenges: token → key authorization.
pub type Http01Responder = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Serves the TLS listener until `stop`, then waits up to `grace` for open requests. Connections past the
/// caps in `caps` (shared with the plain-HTTP listener) are closed right after accept.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    caps: Arc<ConnectionCaps>,
    stop: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let tracker = TaskTracker::new();
    let draining = CancellationToken::new();
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
    accept_loop(listener, "https", &stop, |tcp, peer| {
        let Some(permit) = admit(&gateway, &caps, "https", peer) else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let gateway = gateway.clone();
        let http = http.clone();
        let draining = draining.clone();
        let conn_guard = gateway.metrics.connection_opened("https");
        tracker.spawn(async move {
            let _permit = permit;
            let _conn_guard = conn_guard;
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
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
            // rustls queues encrypted bytes the socket has not taken yet up to this limit (64 KiB by
            // default); for a client that reads slowly that queue is memory held per connection.
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
                // The validator only looks at the certificate.
                return;
            }
            let conn = Arc::new(ConnInfo {
                peer,
                sni: session.server_name().map(str::to_ascii_lowercase),
            });
            let idle_timeout = gateway.runtime().config.server.idle_timeout;
            let activity = Activity::new();
            let verdicts = Verdicts::default();
            let service = {
                let activity = activity.clone();
                let verdicts = verdicts.clone();
                service_fn(move |req: Request<Incoming>| {
                    let gateway = gateway.clone();
                    let conn = conn.clone();
                    let busy = activity.busy();
                    let ambiguous =
                        req.version() < http::Version::HTTP_2 && verdicts.next_is_ambiguous();
                    async move {
                        if ambiguous {
                            return Ok::<_, Infallible>(ambiguous_framing());
                        }
                        if let Some(refused) = refuse_before_routing(&req) {
                            return Ok::<_, Infallible>(refused);
                        }
                        Ok::<_, Infallible>(handle(&gateway, &conn, req, busy).await)
                    }
                })
            };
            // hyper-util's auto server reads the first bytes to tell h1 from h2 before any header timer runs:
            // a client that completes TLS and then says nothing would hold the socket forever.
            let first_byte = Arc::new(AtomicBool::new(false));
            let io = FirstRead {
                inner: FramingGuard::new(tls, verdicts),
                seen: first_byte.clone(),
            };
            let served = async {
                drive!(
                    http.serve_connection(TokioIo::new(io), service),
                    &activity,
                    idle_timeout,
                    &draining
                )
            };
            tokio::pin!(served);
            let result = tokio::select! {
                r = &mut served => r.unwrap_or(Ok(())),
                () = tokio::time::sleep(header_timeout) => {
                    if !first_byte.load(Ordering::Acquire) {
                        tracing::debug!(%peer, "no request after the TLS handshake; closing");
                        return;
                    }
                    served.await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    })
    .await;
    drain(&tracker, &draining, "https", grace).await;
}

/// Counts a new public connection against the caps of the current config, or closes it (counted in
/// `mirrorgate_connections_refused_total`). At accept time the TCP peer is the only address known.
fn admit(
    gateway: &Gateway,
    caps: &Arc<ConnectionCaps>,
    listener: &'static str,
    peer: std::net::SocketAddr,
) -> Option<crate::listener::ConnectionPermit> {
    let runtime = gateway.runtime();
    let server = &runtime.config.server;
    match caps.admit(
        peer.ip(),
        server.max_connections,
        server.max_connections_per_ip,
    ) {
        Ok(permit) => Some(permit),
        Err(refusal) => {
            gateway
                .metrics
                .connection_refused(listener, refusal.label());
            tracing::debug!(%peer, listener, reason = refusal.label(), "connection cap reached; closing");
            None
        }
    }
}

/// Requests refused before any routing, on every listener: an over-long URI is 414 (a precise answer rather
/// than the 431 of a head past [`MAX_HEAD_BYTES`]).
///
/// `Content-Length` together with `Transfer-Encoding` is answered before this (hyper drops the length, so only
/// the `framing` scan beside it can tell); conflicting lengths and bad chunking are hyper's own 400.
fn refuse_before_routing<B>(req: &Request<B>) -> Option<Response<GatewayBody>> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(status_only(StatusCode::URI_TOO_LONG));
    }
    None
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
    let served_digest = parts
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let audit = gateway.audit();
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

/// Serves the plain-HTTP listener: ACME HTTP-01 answers, and a 308 to https (path and query kept) for
/// everything else. The https port is read from the current config, so moving the https listener on reload
/// needs no restart here. Its connections count against the same caps as the https listener's.
pub async fn serve_http(
    listener: TcpListener,
    acme: Option<Http01Responder>,
    gateway: Arc<Gateway>,
    caps: Arc<ConnectionCaps>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let draining = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    accept_loop(listener, "http", &stop, |tcp, peer| {
        let Some(permit) = admit(&gateway, &caps, "http", peer) else {
            return;
        };
        let acme = acme.clone();
        let guard = gateway.metrics.connection_opened("http");
        let gw = gateway.clone();
        let activity = Activity::new();
        let service = {
            let activity = activity.clone();
            service_fn(move |req: Request<Incoming>| {
                let _busy = activity.busy();
                let https_port = gw.runtime().config.server.https.port();
                let response = refuse_before_routing(&req)
                    .unwrap_or_else(|| redirect_or_challenge(&req, https_port, acme.as_ref()));
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let idle_timeout = gateway.runtime().config.server.idle_timeout;
        let draining = draining.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _guard = guard;
            let _ = drive!(conn, &activity, idle_timeout, &draining);
        });
    })
    .await;
    drain(&tracker, &draining, "http", HTTP_DRAIN).await;
}

/// Serves the admin pages (`/metrics`, `/healthz`, `/readyz`, see `mirrorgate_metrics::admin_response`, and
/// the usage export `/usage`, see `usage::admin_usage`) until
/// `stop`. Not counted against the connection caps, so probes are answered while the public listeners are
/// full; the binary stops it only after the public listeners have drained, so `/readyz` says 503 during the
/// drain instead of refusing connections.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    usage: Option<Arc<mirrorgate_usage::Ledger>>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let draining = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .keep_alive(true);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listener serving /metrics /healthz /readyz");
    }
    accept_loop(listener, "admin", &stop, |tcp, peer| {
        let guard = metrics.connection_opened("admin");
        let activity = Activity::new();
        let service = {
            let metrics = Arc::clone(&metrics);
            let health = Arc::clone(&health);
            let activity = activity.clone();
            let usage = usage.clone();
            service_fn(move |req: Request<Incoming>| {
                let busy = activity.busy();
                let metrics = Arc::clone(&metrics);
                let health = Arc::clone(&health);
                let usage = usage.clone();
                async move {
                    let _busy = busy;
                    let response = if req.uri().path() == "/usage" {
                        crate::usage::admin_usage(&req, usage).await
                    } else {
                        mirrorgate_metrics::admin_response(&req, &metrics, &health)
                    };
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let draining = draining.clone();
        tracker.spawn(async move {
            let _guard = guard;
            if let Some(Err(error)) = drive!(conn, &activity, ADMIN_IDLE_TIMEOUT, &draining) {
                tracing::debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    })
    .await;
    drain(&tracker, &draining, "admin", ADMIN_DRAIN).await;
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

/// The answer to a request with both `Content-Length` and `Transfer-Encoding` (see `framing`): 400, and the
/// connection closes after it.
fn ambiguous_framing() -> Response<GatewayBody> {
    let err = mirrorgate_registry::RegistryError::new(
        mirrorgate_registry::ErrorCode::InvalidRequest,
        "a request may not carry both Content-Length and Transfer-Encoding",
    );
    let (mut parts, body) = err.into_response().into_parts();
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Response::from_parts(parts, full(body))
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
