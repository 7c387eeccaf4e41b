//! The listeners: TLS (h2 + HTTP/1.1 by ALPN) in front of the request path, the plain-HTTP redirector that also
//! answers ACME HTTP-01, and graceful shutdown (stop accepting, let in-flight requests finish up to a grace).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mirrorgate_tls::ACME_TLS_ALPN;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{empty, full, GatewayBody};
use crate::context::ConnInfo;
use crate::framing::{FramingGuard, Verdicts};
use crate::handle::handle;
use crate::listener::{accept_loop, drain, drive, Activity, ConnectionCaps};
use crate::runtime::Gateway;

/// The largest request head accepted, in total (h1 read buffer, h2 header list): registry clients send a few
/// KiB at most (a Bearer token with an `x5c` chain is under 4 KiB). Envoy's default is 60 KiB, nginx's 32 KiB.
/// Bigger heads get 431 instead of tying up memory. hyper also bounds its h1 write buffer by this figure.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// URIs longer than this get a precise 414 (a longer one cannot fit in [`MAX_HEAD_BYTES`] and is a 431).
const MAX_URI_BYTES: usize = 32 * 1024;
/// Encrypted bytes queued per connection before writes wait for the socket: one full TLS record.
const TLS_SEND_BUFFER: usize = 16 * 1024;
/// A TLS handshake that takes longer than this is dropped (slow-handshake attacks hold sockets otherwise).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams per h2 connection: enough for parallel layer pulls, bounded against stream floods.
const MAX_H2_STREAMS: u32 = 128;

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
pub(crate) fn admit(
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
pub(crate) fn refuse_before_routing<B>(req: &Request<B>) -> Option<Response<GatewayBody>> {
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

pub(crate) fn status_only(status: StatusCode) -> Response<GatewayBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}
