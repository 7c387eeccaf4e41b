//! The plain-HTTP listeners: the `:80` redirector (a 308 to https, and ACME HTTP-01 answers) and the admin
//! listener (`/metrics`, `/healthz`, `/readyz`, `/usage`). Neither carries registry traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use mirrorgate_metrics::{Health, Metrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{full, GatewayBody};
use crate::listener::{accept_loop, drain, drive, Activity, ConnectionCaps};
use crate::runtime::Gateway;
use crate::server::{admit, refuse_before_routing, status_only, MAX_HEAD_BYTES};

/// The plain-HTTP listener only redirects and answers ACME: a short head timeout and a short drain.
const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// The admin listener: slow or stuck scrapers are dropped; open scrapes get a few seconds at exit.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_DRAIN: Duration = Duration::from_secs(5);

/// Answers ACME HTTP-01 challenges: token → key authorization.
pub type Http01Responder = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

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
/// the usage export `/usage`, see `usage::admin_usage`, guarded by `usage::export_refusal`) until
/// `stop`. Not counted against the connection caps, so probes are answered while the public listeners are
/// full; the binary stops it only after the public listeners have drained, so `/readyz` says 503 during the
/// drain instead of refusing connections.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    gateway: Arc<Gateway>,
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
            let gateway = Arc::clone(&gateway);
            service_fn(move |req: Request<Incoming>| {
                let busy = activity.busy();
                let metrics = Arc::clone(&metrics);
                let health = Arc::clone(&health);
                let gateway = Arc::clone(&gateway);
                async move {
                    let _busy = busy;
                    let response = if req.uri().path() == "/usage" {
                        let token = gateway.runtime().config.usage.export_token.clone();
                        match crate::usage::export_refusal(peer.ip(), token.as_ref(), req.headers())
                        {
                            Some(refusal) => refusal,
                            None => crate::usage::admin_usage(&req, gateway.usage().cloned()).await,
                        }
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
