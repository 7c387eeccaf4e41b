//! Phase 4, **upstream auth**: how the gateway authenticates to an upstream. The scheme is learned from the
//! upstream's first 401 and remembered per origin; Bearer tokens are cached per (realm, service, scope,
//! credential) and fetched once per key (single flight); Basic sends the server-side credentials.
//!
//! Credentials belong to exactly one upstream: the route's `upstream` carries the route's credential pool
//! (`upstream_credentials`, or `upstream_username`/`_password` as a pool of one), each `upstreams` entry its own
//! (default none), backend caches none. They go to that upstream and to the token realm it names, never anywhere
//! else. Which pool member a try uses is decided in `pool_attempt`.
//!
//! The whole token exchange — response head and body — runs under one deadline, so a token service that stalls
//! mid-answer cannot hold a pull (or the single flight behind it) longer than that.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use mirrorgate_config::{Credentials, PoolCredential};
use mirrorgate_metrics::TokenResult;
use mirrorgate_registry::{
    CacheOutcome, TokenKey, TokenResponse, UpstreamAuthScheme, UpstreamToken,
};
use url::Url;

use crate::attempt::Attempt;
use crate::body::{empty, GatewayBody};
use crate::context::RequestCtx;
use crate::error::ProxyError;
use crate::upstream::Endpoint;

/// The longest a token exchange may take even when `upstream_timeout` is longer: a token answer is a few hundred
/// bytes, and every pull of the repository waits on it.
const MAX_TOKEN_DEADLINE: Duration = Duration::from_secs(30);
/// Token answers are small; what we read is capped so a hostile realm cannot make us buffer much.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Why an upstream token could not be had. Cloneable so that callers waiting on the same single-flight fetch
/// share the failure; sources are behind `Arc` for that.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenFetchError {
    #[error("cannot build the token request")]
    Request(#[source] Arc<http::Error>),
    #[error("cannot reach the token service")]
    Send(#[source] Arc<hyper_util::client::legacy::Error>),
    #[error("the token exchange did not finish in time")]
    Deadline(#[from] mirrorgate_registry::TokenDeadline),
    #[error("reading the token response failed")]
    Body(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("the token service answered {0}")]
    Status(StatusCode),
    #[error("the token response is not usable")]
    Parse(#[source] Arc<mirrorgate_registry::Error>),
}

impl Attempt<'_> {
    /// Sends the request with `credential` (a member of the endpoint's pool, `None`: anonymous), doing the token
    /// dance on a 401: learn the challenge, fetch (or reuse) the token, and
    /// retry once. Later requests to the same origin attach the cached token up front.
    pub async fn send_with_auth(
        &self,
        credential: Option<&PoolCredential>,
        body: GatewayBody,
        replayable: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (gw, endpoint) = (self.ctx.gw, self.endpoint);
        let mut known = gw.schemes.get(&endpoint.origin).map(|s| s.clone());
        if known.is_none() && !replayable {
            // A body can be sent once: learn how this upstream authenticates from a ping before sending it.
            let ping = self.send_once(&Method::GET, "/v2/", None, empty()).await?;
            if ping.status() == StatusCode::UNAUTHORIZED {
                known = UpstreamAuthScheme::from_headers(ping.headers());
                if let Some(scheme) = &known {
                    gw.schemes.insert(endpoint.origin.clone(), scheme.clone());
                }
            }
        }
        let auth = match &known {
            Some(scheme) => self.authorization(scheme, credential).await?,
            None => None,
        };
        let method = &self.ctx.method;
        let resp = self
            .send_once(method, self.path_and_query, auth.clone(), body)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED || !replayable {
            return Ok(resp);
        }
        let Some(scheme) = UpstreamAuthScheme::from_headers(resp.headers()) else {
            return Ok(resp);
        };
        gw.schemes.insert(endpoint.origin.clone(), scheme.clone());
        // A 401 despite a token we sent means the cached token went stale (revoked, clock skew): fetch anew.
        if let (Some(_), UpstreamAuthScheme::Bearer { .. }) = (&auth, &scheme) {
            if let Some(key) = token_key(endpoint, credential, &scheme, self.scope) {
                gw.tokens.invalidate(&key);
            }
        }
        let Some(auth) = self.authorization(&scheme, credential).await? else {
            return Ok(resp);
        };
        self.send_once(method, self.path_and_query, Some(auth), empty())
            .await
    }

    /// The `Authorization` for this endpoint under `scheme`: a (cached) Bearer token, Basic credentials, or
    /// nothing (anonymous).
    async fn authorization(
        &self,
        scheme: &UpstreamAuthScheme,
        credential: Option<&PoolCredential>,
    ) -> Result<Option<HeaderValue>, ProxyError> {
        let (ctx, endpoint) = (self.ctx, self.endpoint);
        let creds = credential.and_then(|c| c.credentials.as_ref());
        let (realm, service) = match scheme {
            UpstreamAuthScheme::Basic => {
                return Ok(creds.and_then(|c| basic(&c.username, c.password.expose())))
            }
            UpstreamAuthScheme::Bearer { realm, service } => (realm, service),
        };
        let Some(key) = token_key(endpoint, credential, scheme, self.scope) else {
            return Ok(None);
        };
        let scopes: Vec<String> = self.scope.map(str::to_string).into_iter().collect();
        let url = mirrorgate_registry::token_request_url(realm, service.as_deref(), &scopes);
        let deadline = ctx
            .rt
            .config
            .server
            .upstream_timeout
            .min(MAX_TOKEN_DEADLINE);
        let label = &ctx.route.label;
        // The realm comes from the upstream's answer, not from the config: a realm on a private address is
        // reached only on the upstream's own host or when the route allows private targets, so a hostile
        // upstream cannot point our credentials at an internal service.
        let allow_private = ctx.route.config.danger_allow_private_redirects
            || realm.host_str() == endpoint.url.host_str();
        let fetched = ctx
            .gw
            .tokens
            .get_or_fetch_until(&key, tokio::time::Instant::now() + deadline, || {
                fetch_token(ctx, url, creds, allow_private)
            })
            .await;
        match fetched {
            Ok((token, outcome)) => {
                let result = match outcome {
                    CacheOutcome::Hit => TokenResult::CacheHit,
                    CacheOutcome::Fetched => TokenResult::Fetched,
                };
                ctx.gw.metrics.upstream_token(label, result);
                Ok(HeaderValue::from_str(&format!("Bearer {}", token.value)).ok())
            }
            Err(source) => {
                ctx.gw.metrics.upstream_token(label, TokenResult::Error);
                Err(ProxyError::UpstreamToken {
                    realm: redact(realm),
                    source,
                })
            }
        }
    }
}

/// The token cache key of a request to `endpoint` with `credential`; `None` unless the scheme is Bearer.
pub fn token_key(
    endpoint: &Endpoint,
    credential: Option<&PoolCredential>,
    scheme: &UpstreamAuthScheme,
    scope: Option<&str>,
) -> Option<TokenKey> {
    let UpstreamAuthScheme::Bearer { realm, service } = scheme else {
        return None;
    };
    Some(TokenKey {
        realm: realm.to_string(),
        service: service.clone(),
        scope: scope.unwrap_or_default().to_string(),
        credential_id: credential.and_then(|c| credential_id(endpoint, c)),
    })
}

/// The token cache's name for a pool member's tokens: member name, user and upstream origin (never the
/// password), so two members', or two upstreams', tokens never mix, and a member whose username changed in a
/// reload does not reuse the old user's tokens. `None` for the anonymous member (anonymous tokens are shared).
pub fn credential_id(endpoint: &Endpoint, credential: &PoolCredential) -> Option<String> {
    credential
        .credentials
        .as_ref()
        .map(|c| format!("{}:{}@{}", credential.name, c.username, endpoint.origin))
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// One token request to the upstream's realm (GET, as Docker Hub and distribution expect), head and body. The
/// caller bounds the whole exchange with one deadline.
async fn fetch_token(
    ctx: &RequestCtx<'_>,
    url: Url,
    creds: Option<&Credentials>,
    allow_private: bool,
) -> Result<UpstreamToken, TokenFetchError> {
    let mut req = Request::builder().method(Method::GET).uri(url.as_str());
    if let (Some(h), Some(c)) = (req.headers_mut(), creds) {
        if let Some(v) = basic(&c.username, c.password.expose()) {
            h.insert(header::AUTHORIZATION, v);
        }
    }
    let req = req
        .body(empty())
        .map_err(|e| TokenFetchError::Request(Arc::new(e)))?;
    let resp = ctx
        .route
        .client
        .send_untrusted(req, allow_private)
        .await
        .map_err(|e| TokenFetchError::Send(Arc::new(e)))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
        .collect()
        .await
        .map_err(|e| TokenFetchError::Body(Arc::from(e)))?
        .to_bytes();
    if !status.is_success() {
        return Err(TokenFetchError::Status(status));
    }
    TokenResponse::parse(&body).map_err(|e| TokenFetchError::Parse(Arc::new(e)))
}

/// A URL for logs and errors: realms and CDN URLs may carry signatures or credentials in the query.
pub fn redact(u: &Url) -> String {
    format!("{}{}", u.origin().ascii_serialization(), u.path())
}
