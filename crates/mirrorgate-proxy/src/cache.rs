//! Phase 5 (end), **cache**: runs after identify/authorize/limit and wraps the endpoint loop. The store is
//! `mirrorgate-cache`; this module decides what may be answered from it, for whom, and what is filled.
//!
//! - Blob or manifest **by digest**: answered from the store when the entry exists **and** this scope (route +
//!   repository as the client names it) is known to reference it — a manifest of the repository listed it, or
//!   the upstream served it for that repository. Otherwise the endpoint loop runs; a 200 fills the store (a
//!   blob while it streams, single flight; a manifest once verified) and records the reference.
//! - Manifest **by tag**: answered while the tag's last fetch is younger than `tag_ttl` (the route's
//!   override first). When every endpoint fails, a known tag is served for up to `stale_if_error` more.
//! - `Range` on a cached blob → 206 (416 when unsatisfiable).
//!
//! Cache trouble never fails a request: a store error is logged and the request goes upstream. The answer is
//! returned to `forward::serve`, which wraps it in the same throttle, byte count and access log as an upstream
//! answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_cache::{Begin, Cache, CacheSettings, Entry, Observer};
use mirrorgate_config::Config;
use mirrorgate_metrics::{CacheKind, CacheMetrics, Metrics};
use mirrorgate_registry::{Digest, Reference, RegistryPath, Tag};

use crate::body::{empty, full, GatewayBody};
use crate::cache_answer::{
    accepts, announced_digest, blob_answer, content_length, file_body, insert_digest, streamed_blob,
};
use crate::context::{Plan, RequestCtx, RequestFacts};
use crate::error::ProxyError;

/// Manifests are held in memory to be verified before they are stored; registries refuse bigger ones.
const MAX_MANIFEST: u64 = 4 << 20;
/// Shown as the endpoint of answers the cache gave, in the access log.
const CACHE_ENDPOINT: &str = "cache";

/// The store and its metrics, opened once per process.
pub struct GatewayCache {
    store: Cache,
    metrics: CacheMetrics,
}

/// Why the cache could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum CacheSetupError {
    #[error("cache metrics")]
    Metrics(#[source] mirrorgate_metrics::MetricsError),
    #[error("opening the cache")]
    Open(#[source] mirrorgate_cache::CacheError),
}

struct MetricsObserver(CacheMetrics);

impl Observer for MetricsObserver {
    fn evicted(&self, n: u64) {
        self.0.evicted(n);
    }
    fn fill_failed(&self) {
        self.0.fill_failed();
    }
    fn size(&self, bytes: u64, entries: u64) {
        self.0.set_size(bytes, entries);
    }
}

impl GatewayCache {
    /// Opens the store of `config`'s `[cache]`; `None` without one.
    pub fn open(config: &Config, metrics: &Metrics) -> Result<Option<Self>, CacheSetupError> {
        let Some(c) = &config.cache else {
            return Ok(None);
        };
        let cache_metrics = CacheMetrics::register(metrics).map_err(CacheSetupError::Metrics)?;
        let settings = CacheSettings {
            dir: c.dir.clone(),
            max_size: c.max_size,
            min_free: c.min_free,
            fill_idle_timeout: config.server.upstream_timeout,
        };
        let store = Cache::open(settings, Arc::new(MetricsObserver(cache_metrics.clone())))
            .map_err(CacheSetupError::Open)?;
        Ok(Some(GatewayCache {
            store,
            metrics: cache_metrics,
        }))
    }
}

/// What one request asks of the cache.
enum Ask<'p> {
    Blob(&'p Digest),
    ManifestByDigest(&'p Digest),
    ManifestByTag(&'p Tag),
}

/// Serves `req` from the cache or through the endpoint loop, filling the cache on the way.
pub(crate) async fn serve(
    ctx: &RequestCtx<'_>,
    plan: &Plan,
    req: Request<Incoming>,
    facts: &mut RequestFacts,
) -> Result<Response<GatewayBody>, ProxyError> {
    let cache = ctx.gw.cache().filter(|_| ctx.route.config.cache);
    let (Some(cache), Some(cfg)) = (cache, ctx.rt.config.cache.as_ref()) else {
        return crate::forward::forward(ctx, plan, req, facts).await;
    };
    let ask = match &plan.path {
        RegistryPath::Blob { digest, .. } => Ask::Blob(digest),
        RegistryPath::Manifest {
            reference: Reference::Digest(d),
            ..
        } => Ask::ManifestByDigest(d),
        RegistryPath::Manifest {
            reference: Reference::Tag(t),
            ..
        } => Ask::ManifestByTag(t),
        _ => return crate::forward::forward(ctx, plan, req, facts).await,
    };
    if ctx.method != Method::GET && ctx.method != Method::HEAD {
        return crate::forward::forward(ctx, plan, req, facts).await;
    }
    let Some(repository) = plan.client_repository() else {
        return crate::forward::forward(ctx, plan, req, facts).await;
    };
    let scope = mirrorgate_cache::scope(&ctx.route.label, &repository);
    let ttl = ctx.route.config.tag_ttl.unwrap_or(cfg.tag_ttl);
    let c = Served { ctx, cache, scope };
    match ask {
        Ask::Blob(d) => c.blob(d, plan, req, facts).await,
        Ask::ManifestByDigest(d) => c.manifest_by_digest(d, plan, req, facts).await,
        Ask::ManifestByTag(t) => {
            c.manifest_by_tag(t, ttl, cfg.stale_if_error, plan, req, facts)
                .await
        }
    }
}

struct Served<'a, 'c> {
    ctx: &'a RequestCtx<'c>,
    cache: &'a GatewayCache,
    scope: String,
}

impl Served<'_, '_> {
    /// Counts an answer from the cache, and its body's bytes as upstream bytes saved.
    fn hit(&self, kind: CacheKind, facts: &mut RequestFacts, resp: &Response<GatewayBody>) {
        let label = &self.ctx.route.label;
        self.cache.metrics.hit(label, kind);
        if self.ctx.method != Method::HEAD {
            if let Some(n) = content_length(resp.headers()) {
                self.cache.metrics.hit_bytes(label, n);
            }
        }
        facts.endpoint = Some(CACHE_ENDPOINT.to_owned());
    }

    fn miss(&self, kind: CacheKind) {
        self.cache.metrics.miss(&self.ctx.route.label, kind);
    }

    /// A cached entry this scope may see.
    fn entry(&self, digest: &Digest) -> Option<Entry> {
        if !self.cache.store.references(&self.scope, digest) {
            return None;
        }
        self.cache.store.open_entry(digest)
    }

    async fn blob(
        &self,
        digest: &Digest,
        plan: &Plan,
        req: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        if let Some(entry) = self.entry(digest) {
            let resp = blob_answer(&self.ctx.method, req.headers(), digest, &entry);
            self.hit(CacheKind::Blob, facts, &resp);
            return Ok(resp);
        }
        self.miss(CacheKind::Blob);
        let store = &self.cache.store;
        let ranged = req.headers().contains_key(header::RANGE);
        if self.ctx.method == Method::HEAD || ranged || store.contains(digest) {
            // Nothing to fill: pass the upstream's answer on, and learn the reference from a 200.
            let resp = crate::forward::forward(self.ctx, plan, req, facts).await?;
            if resp.status() == StatusCode::OK && store.contains(digest) {
                self.learn(std::slice::from_ref(digest)).await;
            }
            return Ok(resp);
        }
        let filler = match store.begin(digest, Some(&self.scope)) {
            Ok(Some(Begin::Lead(f))) => Some(f),
            Ok(Some(Begin::Join(j))) if j.scope() == Some(self.scope.as_str()) => {
                if let Some(body) = j.wait().await {
                    let resp = streamed_blob(digest, body);
                    self.hit(CacheKind::Blob, facts, &resp);
                    return Ok(resp);
                }
                None
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %crate::error::Report(&e), "cache fill could not start");
                None
            }
        };
        let resp = crate::forward::forward(self.ctx, plan, req, facts).await?;
        let Some(filler) = filler.filter(|_| resp.status() == StatusCode::OK) else {
            return Ok(resp);
        };
        let (parts, body) = resp.into_parts();
        let len = content_length(&parts.headers);
        let stream = body.into_data_stream().boxed();
        let reader = filler.start(len, stream);
        Ok(Response::from_parts(parts, file_body(reader)))
    }

    async fn manifest_by_digest(
        &self,
        digest: &Digest,
        plan: &Plan,
        req: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        if let Some(entry) = self.entry(digest) {
            if let Some(resp) = self
                .manifest_answer(digest, &entry, req.headers(), facts)
                .await
            {
                return Ok(resp);
            }
        }
        self.miss(CacheKind::Manifest);
        let resp = crate::forward::forward(self.ctx, plan, req, facts).await?;
        self.fill_manifest(resp, Some(digest), None).await
    }

    /// A tag: fresh → from the cache. Past `tag_ttl` → one `HEAD` upstream; the same digest refreshes the
    /// tag's fetch time and is answered from the cache, another digest (or none) leads to the full `GET`. When
    /// upstream fails (429, 5xx, connect error, token failure, every credential set aside), a known tag is
    /// answered stale for up to `stale_if_error` past its TTL.
    async fn manifest_by_tag(
        &self,
        tag: &Tag,
        ttl: Duration,
        stale_if_error: Duration,
        plan: &Plan,
        req: Request<Incoming>,
        facts: &mut RequestFacts,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let known = self.cache.store.tag(&self.scope, tag);
        let age = known.as_ref().map(|t| {
            SystemTime::now()
                .duration_since(t.fetched)
                .unwrap_or_default()
        });
        let client_headers = req.headers().clone();
        let usable = known.as_ref().and_then(|t| {
            let entry = self.entry(&t.digest)?;
            accepts(&client_headers, entry.media_type.as_deref()?)
                .then_some((t.digest.clone(), entry))
        });
        let stale_ok = age.is_some_and(|a| a < ttl + stale_if_error);
        if let (Some((digest, entry)), Some(age)) = (&usable, age) {
            if age < ttl {
                if let Some(resp) = self
                    .manifest_answer(digest, entry, &client_headers, facts)
                    .await
                {
                    return Ok(resp);
                }
            } else {
                let head = self.revalidate(plan, &client_headers, facts).await;
                match &head {
                    Ok(r)
                        if r.status() == StatusCode::OK
                            && announced_digest(r.headers()).as_ref() == Some(digest) =>
                    {
                        if let Err(e) = self.cache.store.put_tag(&self.scope, tag, digest).await {
                            tracing::warn!(error = %crate::error::Report(&e), "tag fetch time not refreshed");
                        }
                        if let Some(resp) = self
                            .manifest_answer(digest, entry, &client_headers, facts)
                            .await
                        {
                            return Ok(resp);
                        }
                    }
                    _ => {
                        if let Some(reason) = upstream_failure(&head).filter(|_| stale_ok) {
                            if let Some(resp) = self
                                .stale_answer(tag, digest, entry, &client_headers, &reason, facts)
                                .await
                            {
                                return Ok(resp);
                            }
                        }
                    }
                }
            }
        }
        self.miss(CacheKind::Manifest);
        let upstream = crate::forward::forward(self.ctx, plan, req, facts).await;
        if let (Some(reason), Some((digest, entry))) = (upstream_failure(&upstream), &usable) {
            if stale_ok {
                if let Some(resp) = self
                    .stale_answer(tag, digest, entry, &client_headers, &reason, facts)
                    .await
                {
                    return Ok(resp);
                }
            }
        }
        self.fill_manifest(upstream?, None, Some(tag)).await
    }

    /// One `HEAD` of the tag upstream, through the same endpoints, credentials and tokens as the client's
    /// request would go.
    async fn revalidate(
        &self,
        plan: &Plan,
        client_headers: &HeaderMap,
        facts: &mut RequestFacts,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let ctx = self.ctx;
        let head = RequestCtx {
            gw: ctx.gw,
            rt: ctx.rt,
            route: ctx.route,
            authority: ctx.authority.clone(),
            client_ip: ctx.client_ip,
            method: Method::HEAD,
            action: ctx.action,
        };
        crate::forward::forward_bodiless(&head, plan, client_headers, facts).await
    }

    /// The tag's last manifest, served because upstream failed: counted and logged with the reason.
    async fn stale_answer(
        &self,
        tag: &Tag,
        digest: &Digest,
        entry: &Entry,
        client_headers: &HeaderMap,
        reason: &str,
        facts: &mut RequestFacts,
    ) -> Option<Response<GatewayBody>> {
        let resp = self
            .manifest_answer(digest, entry, client_headers, facts)
            .await?;
        self.cache.metrics.stale_served(&self.ctx.route.label);
        tracing::warn!(route = %self.ctx.route.label, tag = %tag, reason, "upstream failed; serving the tag's last manifest from the cache");
        Some(resp)
    }

    /// A cached manifest as the answer, when the client accepts its type.
    async fn manifest_answer(
        &self,
        digest: &Digest,
        entry: &Entry,
        client: &HeaderMap,
        facts: &mut RequestFacts,
    ) -> Option<Response<GatewayBody>> {
        let media_type = entry.media_type.as_deref()?;
        if !accepts(client, media_type) {
            return None;
        }
        let bytes = match self.cache.store.read_all(entry).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %crate::error::Report(&e), "cached manifest unreadable");
                return None;
            }
        };
        let mut resp = Response::new(if self.ctx.method == Method::HEAD {
            empty()
        } else {
            full(bytes.clone())
        });
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            h.insert(header::CONTENT_TYPE, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        insert_digest(h, digest);
        self.hit(CacheKind::Manifest, facts, &resp);
        Some(resp)
    }

    /// Stores a 200 manifest answer (GET only) once its bytes match the digest it was asked by or the one the
    /// upstream announced, and learns what it references. The client gets the same bytes and headers.
    async fn fill_manifest(
        &self,
        resp: Response<GatewayBody>,
        asked: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<Response<GatewayBody>, ProxyError> {
        let len = content_length(resp.headers());
        if resp.status() != StatusCode::OK
            || self.ctx.method != Method::GET
            || len.is_none_or(|l| l > MAX_MANIFEST)
        {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        // The body is small (bounded above) and must be whole before it can be verified. An upstream failure
        // here fails this request as it would have failed while streaming.
        let bytes = body
            .collect()
            .await
            .map_err(|e| ProxyError::Internal(format!("upstream manifest body: {e}")))?
            .to_bytes();
        let announced = announced_digest(&parts.headers);
        let digest = match (asked, announced) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(d)) => Some(d),
            (None, None) => Digest::parse(&mirrorgate_cache::sha256_of(&bytes)).ok(),
        };
        if let Some(d) = digest {
            self.store_manifest(&d, &parts.headers, bytes.clone(), tag)
                .await;
        }
        Ok(Response::from_parts(parts, full(bytes)))
    }

    async fn store_manifest(
        &self,
        d: &Digest,
        headers: &HeaderMap,
        bytes: Bytes,
        tag: Option<&Tag>,
    ) {
        let store = &self.cache.store;
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = store.put(d, media_type, bytes.clone()).await {
            tracing::warn!(digest = %d, error = %crate::error::Report(&e), "manifest not cached");
            return;
        }
        let mut refs = mirrorgate_registry::manifest_references(&bytes);
        refs.push(d.clone());
        self.learn(&refs).await;
        if let Some(t) = tag {
            if let Err(e) = store.put_tag(&self.scope, t, d).await {
                tracing::warn!(error = %crate::error::Report(&e), "tag not cached");
            }
        }
    }

    async fn learn(&self, digests: &[Digest]) {
        if let Err(e) = self
            .cache
            .store
            .add_references(&self.scope, digests.iter().cloned())
            .await
        {
            tracing::warn!(error = %crate::error::Report(&e), "cache references not recorded");
        }
    }
}

/// Why an upstream answer counts as a failure that a known tag may be served stale for: 429, 5xx, or any
/// error of the endpoint loop (connect error, timeout, token failure, every credential set aside).
fn upstream_failure(upstream: &Result<Response<GatewayBody>, ProxyError>) -> Option<String> {
    match upstream {
        Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
            Some(r.status().to_string())
        }
        Ok(_) => None,
        Err(e) => Some(crate::error::Report(e).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins what lets a known tag be served stale: 429, 5xx and every endpoint-loop error — an exhausted
    // credential pool included — but not a 404 or a 200.
    #[test]
    fn upstream_failures_that_serve_stale() {
        let status = |s: StatusCode| {
            let mut r = Response::new(empty());
            *r.status_mut() = s;
            Ok(r)
        };
        let exhausted = Err(ProxyError::CredentialsExhausted {
            route: "docker.test".into(),
            retry_after: Duration::from_secs(3),
        });
        let reason = upstream_failure(&exhausted).unwrap();
        assert!(reason.contains("credential"), "{reason}");
        assert!(upstream_failure(&status(StatusCode::TOO_MANY_REQUESTS)).is_some());
        assert!(upstream_failure(&status(StatusCode::BAD_GATEWAY)).is_some());
        assert!(upstream_failure(&status(StatusCode::NOT_FOUND)).is_none());
        assert!(upstream_failure(&status(StatusCode::OK)).is_none());
    }
}
