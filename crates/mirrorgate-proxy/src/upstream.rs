//! Connections to upstream registries and backend caches: one pooled client per trust set (webpki roots plus a
//! route's `upstream_ca`), HTTP/1.1 and h2 by ALPN, and a health state per endpoint so a dead backend cache is
//! skipped for a while instead of costing a connect timeout on every request.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use url::Url;

use crate::body::GatewayBody;
use crate::connect::{PublicOnlyConnector, PublicOnlyResolver, SystemLookup};
use crate::egress::{Egress, ProxyConnector};
use crate::error::ProxyError;

/// How long an endpoint that failed is skipped (unless every endpoint is down, then it is tried anyway).
const DOWN_FOR: Duration = Duration::from_secs(10);

/// The largest read buffer of an upstream HTTP/1.1 connection. hyper's default grows adaptively to ~400 KiB,
/// and every byte of it is held per stream while a slow client reads (a body chunk is a slice of that buffer,
/// and pins it until sent). 16 KiB is one TLS record towards the client, so chunks stay record-sized, and it
/// bounds what a stalled reader pins; the slow-reader scenario in `connections.rs` measures the total.
const UPSTREAM_READ_BUF: usize = 16 * 1024;

/// Pooled HTTP clients for upstream requests, sharing one TLS config: `configured` for the upstreams and
/// endpoints written in the config (trusted as written, loopback and private addresses included), `untrusted`
/// for URLs learned at run time (redirect targets, token realms), which never connects to a loopback, private
/// or link-local address (checked at connect time, see `connect`). Two pools, so a connection opened for a
/// configured endpoint is never reused for an untrusted URL naming the same authority.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<ProxyConnector<HttpConnector>>, GatewayBody>,
    untrusted: Client<HttpsConnector<ProxyConnector<PublicOnlyConnector>>, GatewayBody>,
    /// The outbound proxy settings both pools dial through (`None`: direct).
    egress: Option<Arc<Egress>>,
}

impl UpstreamClient {
    /// A client trusting the webpki roots plus the PEM certificates in `extra_ca`.
    pub fn new(
        extra_ca: Option<&Path>,
        connect_timeout: Duration,
        egress: Option<Arc<Egress>>,
    ) -> Result<Self, ProxyError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ProxyError::UpstreamCa {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ProxyError::UpstreamCa {
                    path: path.to_path_buf(),
                    reason: "no certificate in the file".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ProxyError::UpstreamCa {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::UpstreamCa {
            path: Default::default(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        configure(&mut http, connect_timeout);
        let via = http.clone();
        let mut guarded =
            HttpConnector::new_with_resolver(PublicOnlyResolver::new(Arc::new(SystemLookup)));
        configure(&mut guarded, connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(ProxyConnector::new(
                http,
                via.clone(),
                egress.clone(),
                false,
            ));
        let guarded = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(ProxyConnector::new(
                PublicOnlyConnector::new(guarded),
                via,
                egress.clone(),
                true,
            ));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .http1_max_buf_size(UPSTREAM_READ_BUF);
        Ok(UpstreamClient {
            client: builder.build(https),
            untrusted: builder.build(guarded),
            egress,
        })
    }

    /// Sends one request to a configured upstream or endpoint; the caller owns timeouts (they differ between
    /// headers and body).
    pub async fn send(
        &self,
        mut req: Request<GatewayBody>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.proxy_authorization(&mut req);
        self.client.request(req).await
    }

    /// Sends one request to a URL the config did not name (a redirect target, a token realm from a challenge).
    /// Unless `allow_private` (the route's `danger_allow_private_redirects`), a destination that is or resolves
    /// to a loopback, private or link-local address fails without a connection;
    /// [`crate::connect::refused_by_guard`] tells that failure apart.
    pub async fn send_untrusted(
        &self,
        req: Request<GatewayBody>,
        allow_private: bool,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut req = req;
        self.proxy_authorization(&mut req);
        if allow_private {
            self.client.request(req).await
        } else {
            self.untrusted.request(req).await
        }
    }
}

impl UpstreamClient {
    /// An http request sent through the proxy in absolute form carries the proxy's credentials itself (https
    /// requests travel inside a tunnel that was authorized once, at `CONNECT`).
    fn proxy_authorization(&self, req: &mut Request<GatewayBody>) {
        if req.uri().scheme_str() != Some("http") {
            return;
        }
        if let Some((_, Some(auth))) = self.egress.as_ref().and_then(|e| e.intercept(req.uri())) {
            req.headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, auth);
        }
    }
}

/// The socket settings both connectors share.
fn configure<R>(http: &mut HttpConnector<R>, connect_timeout: Duration) {
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
}

/// One place requests can be sent: a backend cache or the upstream registry itself.
#[derive(Debug)]
pub struct Endpoint {
    pub url: Url,
    /// `scheme://host:port`, the label used in logs and metrics.
    pub origin: String,
    /// The server-side credential pool of this upstream registry: the route's own for its `upstream`, an
    /// `upstreams` entry's own for that entry (a pool of one), empty for backend caches. They go to this endpoint
    /// and the token realm it names, nowhere else.
    pub credentials: Vec<mirrorgate_config::PoolCredential>,
    down_until_ms: AtomicU64,
    epoch: Instant,
}

impl Endpoint {
    pub fn new(url: Url, credentials: Vec<mirrorgate_config::PoolCredential>) -> Self {
        let origin = url.origin().ascii_serialization();
        Endpoint {
            url,
            origin,
            credentials,
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Healthy unless it failed within the last [`DOWN_FOR`].
    pub fn is_up(&self) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    pub fn mark_down(&self) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(DOWN_FOR.as_millis()).unwrap_or(u64::MAX));
        self.down_until_ms.store(until, Ordering::Relaxed);
    }

    /// Marks the endpoint down for at least `wait` (an upstream's `Retry-After`); a longer hold already in place
    /// stays.
    pub fn mark_down_for(&self, wait: Duration) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self.down_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    pub fn mark_up(&self) {
        self.down_until_ms.store(0, Ordering::Relaxed);
    }

    /// The absolute URL of `path_and_query` on this endpoint.
    pub fn uri(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        let uri = format!("{}{}", self.origin, path_and_query);
        Ok(http::Uri::try_from(uri)?)
    }
}

/// The order to try endpoints in: healthy ones first in configured order, then the ones marked down (a request
/// must not fail just because every endpoint failed once recently).
pub fn attempt_order(endpoints: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
    let (up, down): (Vec<_>, Vec<_>) = endpoints.iter().cloned().partition(|e| e.is_up());
    up.into_iter().chain(down).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the fallback order: a failed endpoint moves behind healthy ones but is never dropped.
    #[test]
    fn down_endpoints_go_last() {
        let a = Arc::new(Endpoint::new(
            Url::parse("http://127.0.0.1:1").unwrap(),
            Vec::new(),
        ));
        let b = Arc::new(Endpoint::new(
            Url::parse("http://127.0.0.1:2").unwrap(),
            Vec::new(),
        ));
        let order = attempt_order(&[a.clone(), b.clone()]);
        assert_eq!(order[0].origin, a.origin);
        a.mark_down();
        let order = attempt_order(&[a.clone(), b.clone()]);
        assert_eq!(order[0].origin, b.origin);
        assert_eq!(order.len(), 2);
        a.mark_up();
        assert!(a.is_up());
    }

    // Pins Retry-After holds: an endpoint is down for the asked time, and a shorter ask never cuts a longer hold.
    #[test]
    fn retry_after_hold_keeps_the_longest() {
        let e = Endpoint::new(Url::parse("http://127.0.0.1:1").unwrap(), Vec::new());
        e.mark_down_for(Duration::from_secs(60));
        assert!(!e.is_up());
        e.mark_down_for(Duration::ZERO);
        assert!(!e.is_up());
        e.mark_up();
        e.mark_down_for(Duration::ZERO);
        assert!(e.is_up());
    }
}
