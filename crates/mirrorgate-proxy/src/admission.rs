//! Phases between routing and forwarding: **identify** the client (Basic via htpasswd, Bearer via our own JWT,
//! source CIDR, or anonymous), **authorize** the repository and action against the tenant's rules, and
//! **limit** (request rate, concurrency, daily bytes). Each may short-circuit with 401 / 403 / 429; when all
//! pass, the returned [`Admission`] rides along with the response body (bandwidth throttling, byte quota,
//! concurrency permits released when the body ends).

use std::net::IpAddr;

use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use mirrorgate_auth::{AccessRequest, Action, AuthError, ErrorKind, Identity};
use mirrorgate_limits::{Admission, LimitKind, Limited, Subject};
use mirrorgate_metrics::{AuthFailureReason, LimitScope};
use mirrorgate_registry::{ErrorCode, RegistryError};

use crate::error::ProxyError;
use crate::forward::RequestFacts;
use crate::runtime::Gateway;

/// What one request asks to do, as access rules see it.
pub struct Ask<'a> {
    /// The route's host pattern as configured (what `allow` patterns name).
    pub route_host: &'a str,
    pub route_anonymous: bool,
    /// The authority the client used (the token realm must point there).
    pub authority: &'a str,
    /// The repository as the client names it (with the upstream prefix on path-prefix routes).
    pub repository: Option<&'a str>,
    pub action: Action,
}

/// Identify → authorize → limit.
pub async fn admit(
    gw: &Gateway,
    ask: &Ask<'_>,
    headers: &HeaderMap,
    client_ip: IpAddr,
    facts: &mut RequestFacts,
) -> Result<Admission, ProxyError> {
    let identity = match &gw.auth {
        Some(auth) => {
            let req = AccessRequest {
                route_host: ask.route_host,
                route_anonymous: ask.route_anonymous,
                repository: ask.repository,
                action: ask.action,
            };
            let authorization = headers.get(AUTHORIZATION);
            let identity = match auth.identify(authorization, client_ip, &req).await {
                Ok(id) => id,
                Err(e) => return Err(auth_refusal(gw, ask, &e)),
            };
            facts.tenant = identity.tenant.clone();
            facts.user = identity.user.clone();
            if let Err(e) = auth.authorize(&identity, &req) {
                return Err(auth_refusal(gw, ask, &e));
            }
            Some(identity)
        }
        None => None,
    };
    let subject = subject(identity.as_ref(), client_ip);
    gw.limiter()
        .check(&subject)
        .await
        .map_err(|limited| limit_refusal(gw, &limited))
}

fn subject(identity: Option<&Identity>, ip: IpAddr) -> Subject {
    match identity.and_then(|i| i.tenant.clone()) {
        Some(tenant) if tenant.as_ref() != mirrorgate_auth::ANONYMOUS_TENANT => {
            Subject::tenant(tenant, identity.and_then(|i| i.user.as_deref()), ip)
        }
        _ => Subject::anonymous(ip),
    }
}

/// The one place auth failures become answers: 401 with our challenge, 403, 429 or 400.
pub fn auth_refusal(gw: &Gateway, ask: &Ask<'_>, e: &AuthError) -> ProxyError {
    let reason = match e {
        AuthError::MissingCredentials => Some(AuthFailureReason::MissingCredentials),
        AuthError::MalformedHeader(_) => Some(AuthFailureReason::Malformed),
        AuthError::BadCredentials => Some(AuthFailureReason::BadPassword),
        AuthError::InvalidToken(_)
        | AuthError::TokenRejected(_)
        | AuthError::InsufficientScope { .. } => Some(AuthFailureReason::InvalidToken),
        AuthError::Denied { .. } => Some(AuthFailureReason::Forbidden),
        _ => None,
    };
    if let Some(r) = reason {
        gw.metrics.auth_failure(r);
    }
    let err = match e.kind() {
        ErrorKind::Unauthorized => {
            let challenge = gw
                .auth
                .as_ref()
                .map(|a| a.challenge(ask.authority, ask.repository, ask.action, Some(e)))
                .and_then(|c| HeaderValue::from_str(&c).ok());
            let mut r = RegistryError::new(ErrorCode::Unauthorized, e.to_string());
            if let Some(c) = challenge {
                r = r.with_challenge(c);
            }
            r
        }
        ErrorKind::Denied => RegistryError::new(ErrorCode::Denied, e.to_string()),
        ErrorKind::Throttled => {
            gw.metrics
                .rate_limited(mirrorgate_metrics::LimitKind::AuthFailures, LimitScope::Ip);
            let secs = e.retry_after().map_or(1, |d| d.as_secs().max(1));
            RegistryError::new(ErrorCode::TooManyRequests, e.to_string()).with_retry_after(secs)
        }
        ErrorKind::BadRequest => RegistryError::new(ErrorCode::InvalidRequest, e.to_string()),
        _ => {
            tracing::warn!(error = %e, "authentication failed internally");
            RegistryError::new(ErrorCode::Internal, ErrorCode::Internal.default_message())
        }
    };
    ProxyError::Registry(err)
}

/// A limit hit becomes 429 (503 when shared limit state is required and unreachable), with `Retry-After` and
/// the `RateLimit-*` headers.
fn limit_refusal(gw: &Gateway, limited: &Limited) -> ProxyError {
    gw.metrics.rate_limited(limited.kind, limited.scope);
    let code = if limited.kind == LimitKind::Unavailable {
        ErrorCode::Unavailable
    } else {
        ErrorCode::TooManyRequests
    };
    let mut err =
        RegistryError::new(code, limited.to_string()).with_retry_after(limited.retry_after_secs());
    for (name, value) in limited.headers().iter() {
        if name != http::header::RETRY_AFTER {
            err = err.with_header(name.clone(), value.clone());
        }
    }
    ProxyError::Registry(err)
}
