//! Phases between routing and forwarding: **identify** the client (Basic via htpasswd, Bearer via our own JWT,
//! source CIDR, or anonymous), **authorize** the repository and action against the tenant's rules (the catalog
//! is refused here, before anything is forwarded, so the route's upstream credentials never list it), and
//! **limit** (request rate, concurrency, daily bytes). Each may short-circuit with 401 / 403 / 429; when all
//! pass, the returned [`Admission`] rides along with the response body (bandwidth throttling, byte quota,
//! concurrency permits released when the body ends).

use std::net::IpAddr;

use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use mirrorgate_auth::{AccessRequest, Action, AuthError, DenyRules, ErrorKind, Identity, Resource};
use mirrorgate_limits::{Admission, LimitKind, Limited, Subject};
use mirrorgate_metrics::{AuthFailureReason, LimitScope};
use mirrorgate_registry::{ErrorCode, Reference, RegistryError, RequestKind};

use crate::context::RequestFacts;
use crate::error::ProxyError;
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
    /// The source repository of a cross-repository blob mount (`?mount=…&from=…`), in the same naming as
    /// `repository`: it is read, so it needs the caller's pull right too.
    pub mount_from: Option<&'a str>,
    /// The tag or digest of a manifest request, for deny rules.
    pub reference: Option<&'a Reference>,
}

/// A request that passed admission.
pub struct Admitted {
    /// Limits that ride along with the response body.
    pub limits: Admission,
    /// Whether the caller may read [`Ask::mount_from`]; when not, the mount is dropped and the upload starts
    /// normally (what distribution does for a mount it does not allow), so no blob of an unreadable
    /// repository becomes readable through a mount.
    pub mount_allowed: bool,
}

/// Identify → authorize → limit.
pub async fn admit(
    gw: &Gateway,
    ask: &Ask<'_>,
    headers: &HeaderMap,
    client_ip: IpAddr,
    facts: &mut RequestFacts,
) -> Result<Admitted, ProxyError> {
    let mut mount_allowed = ask.mount_from.is_some();
    let identity = match &gw.auth {
        Some(auth) => {
            let req = AccessRequest {
                route_host: ask.route_host,
                route_anonymous: ask.route_anonymous,
                resource: resource(facts.kind, ask.repository),
                action: ask.action,
                reference: ask.reference,
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
            if let Some(from) = ask.mount_from {
                mount_allowed = may_read(auth, authorization, client_ip, &req, from).await;
            }
            Some(identity)
        }
        None => None,
    };
    let subject = subject(identity.as_ref(), client_ip);
    let limits = gw
        .limiter()
        .check(&subject)
        .await
        .map_err(|limited| limit_refusal(gw, &limited))?;
    Ok(Admitted {
        limits,
        mount_allowed,
    })
}

/// The route's deny rules, for every client whatever its tenant (run after [`admit`], so a client without
/// credentials still gets its 401 first). A refused mount source only drops the mount, like an unreadable one.
pub fn check_route_deny(
    gw: &Gateway,
    deny: &DenyRules,
    ask: &Ask<'_>,
    facts: &RequestFacts,
) -> Result<bool, ProxyError> {
    if deny.is_empty() {
        return Ok(true);
    }
    if let Some(repo) = ask.repository {
        if let Some(rule) = deny.refusing(ask.route_host, repo, ask.reference) {
            let who = match (&facts.tenant, &facts.user) {
                (Some(t), Some(u)) => format!("{t}/{u}"),
                (Some(t), None) => t.to_string(),
                (None, Some(u)) => u.to_string(),
                (None, None) => "anonymous".to_owned(),
            };
            let e = AuthError::DenyRule {
                who,
                target: mirrorgate_auth::deny_target(ask.route_host, repo, ask.reference),
                action: ask.action,
                rule: rule.to_string(),
                owner: format!("route '{}'", ask.route_host),
            };
            return Err(auth_refusal(gw, ask, &e));
        }
    }
    Ok(ask
        .mount_from
        .is_none_or(|from| deny.refusing(ask.route_host, from, None).is_none()))
}

/// Whether the same credentials may pull `repository`: the identity is established again for a pull of it (a
/// Bearer token must grant that pull itself; Basic credentials hit the verified-credential cache), then the
/// tenant rules are asked.
async fn may_read(
    auth: &mirrorgate_auth::Authenticator,
    authorization: Option<&HeaderValue>,
    client_ip: IpAddr,
    req: &AccessRequest<'_>,
    repository: &str,
) -> bool {
    let read = AccessRequest {
        resource: Resource::Repository(repository),
        action: Action::Pull,
        reference: None,
        ..*req
    };
    match auth.identify(authorization, client_ip, &read).await {
        Ok(identity) => auth.authorize(&identity, &read).is_ok(),
        Err(_) => false,
    }
}

/// What the request is about, from the parsed path's kind: a request naming no repository is the ping only when
/// the path parsed as one; anything else without a repository (the catalog, or a kind not recorded) is treated
/// as the catalog, so it fails closed.
fn resource(kind: Option<RequestKind>, repository: Option<&str>) -> Resource<'_> {
    match (kind, repository) {
        (_, Some(repo)) => Resource::Repository(repo),
        (Some(RequestKind::Ping), None) => Resource::Ping,
        (_, None) => Resource::Catalog,
    }
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
    if let Some(r) = failure_reason(e) {
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
        ErrorKind::Unavailable => {
            tracing::warn!(error = %e, "authentication backend unavailable");
            RegistryError::new(ErrorCode::Unavailable, e.to_string())
        }
        _ => {
            tracing::warn!(error = %e, "authentication failed internally");
            RegistryError::new(ErrorCode::Internal, ErrorCode::Internal.default_message())
        }
    };
    ProxyError::Registry(err)
}

/// The `reason` label of `mirrorgate_auth_failures_total` for a refusal; `None` for throttling (counted as a
/// limit), bad token-endpoint requests and internal failures.
fn failure_reason(e: &AuthError) -> Option<AuthFailureReason> {
    Some(match e {
        AuthError::MissingCredentials => AuthFailureReason::MissingCredentials,
        AuthError::MalformedHeader(_) => AuthFailureReason::Malformed,
        AuthError::UnknownUser => AuthFailureReason::UnknownUser,
        AuthError::BadCredentials => AuthFailureReason::BadPassword,
        AuthError::ExpiredToken(_) => AuthFailureReason::ExpiredToken,
        AuthError::ApiTokenInvalid => AuthFailureReason::BadApiToken,
        AuthError::ApiTokenExpired => AuthFailureReason::ExpiredApiToken,
        AuthError::ApiTokenRevoked => AuthFailureReason::RevokedApiToken,
        AuthError::InvalidToken(_)
        | AuthError::TokenRejected(_)
        | AuthError::InsufficientScope { .. } => AuthFailureReason::InvalidToken,
        AuthError::Denied { .. }
        | AuthError::DenyRule { .. }
        | AuthError::CatalogRefused { .. } => AuthFailureReason::Forbidden,
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // Pins issue 21 item 1: only a path parsed as the ping is the ping; a missing repository otherwise is the
    // catalog (refused), whatever the kind says, and a named repository is always a repository request.
    #[test]
    fn resource_from_the_parsed_path() {
        assert_eq!(resource(Some(RequestKind::Ping), None), Resource::Ping);
        assert_eq!(
            resource(Some(RequestKind::Catalog), None),
            Resource::Catalog
        );
        assert_eq!(resource(None, None), Resource::Catalog);
        assert_eq!(
            resource(Some(RequestKind::Manifest), None),
            Resource::Catalog
        );
        for kind in [RequestKind::Tags, RequestKind::Referrers, RequestKind::Blob] {
            assert_eq!(
                resource(Some(kind), Some("a/b")),
                Resource::Repository("a/b")
            );
        }
    }

    // Pins issue 15: every `reason` label value the README lists is reachable from an auth error.
    #[test]
    fn every_failure_reason_is_reachable() {
        let jwt =
            || jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidToken);
        let expired =
            jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::ExpiredSignature);
        let cases = [
            (
                AuthError::MissingCredentials,
                Some(AuthFailureReason::MissingCredentials),
            ),
            (
                AuthError::MalformedHeader(mirrorgate_auth::HeaderError::Empty),
                Some(AuthFailureReason::Malformed),
            ),
            (AuthError::UnknownUser, Some(AuthFailureReason::UnknownUser)),
            (
                AuthError::BadCredentials,
                Some(AuthFailureReason::BadPassword),
            ),
            (
                AuthError::InvalidToken(jwt()),
                Some(AuthFailureReason::InvalidToken),
            ),
            (
                AuthError::TokenRejected("x"),
                Some(AuthFailureReason::InvalidToken),
            ),
            (
                AuthError::ExpiredToken(expired),
                Some(AuthFailureReason::ExpiredToken),
            ),
            (
                AuthError::Denied {
                    who: "t/u".into(),
                    route_host: "h".into(),
                    repository: "r".into(),
                    action: Action::Delete,
                },
                Some(AuthFailureReason::Forbidden),
            ),
            (
                AuthError::CatalogRefused {
                    who: "t/u".into(),
                    route_host: "h".into(),
                },
                Some(AuthFailureReason::Forbidden),
            ),
            (
                AuthError::Throttled {
                    retry_after: Duration::from_secs(1),
                },
                None,
            ),
        ];
        let mut seen = Vec::new();
        for (e, want) in cases {
            assert_eq!(failure_reason(&e), want, "{e:?}");
            seen.extend(want);
        }
        for r in [
            AuthFailureReason::MissingCredentials,
            AuthFailureReason::Malformed,
            AuthFailureReason::UnknownUser,
            AuthFailureReason::BadPassword,
            AuthFailureReason::InvalidToken,
            AuthFailureReason::ExpiredToken,
            AuthFailureReason::Forbidden,
        ] {
            assert!(seen.contains(&r), "{} is never produced", r.as_str());
        }
    }
}
