//! What can go wrong on the request path, and the one place where it becomes an answer to the client.
//!
//! Like linkerd2-proxy's "rescue": every failure is a typed error that keeps its source; [`ProxyError::to_registry`]
//! maps each to an OCI error (status, JSON body, `WWW-Authenticate`, `Retry-After`). Unknown failures become a
//! 500 and are logged at warn by the caller.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use mirrorgate_registry::{ErrorCode, RegistryError};

use crate::upstream_auth::TokenFetchError;

/// A failure of the gateway's HTTP side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A route's `upstream_ca` could not be used (caught at start and reload, before serving).
    #[error("upstream CA `{}`: {reason}", path.display())]
    UpstreamCa { path: PathBuf, reason: String },
    /// A route's `deny` list could not be parsed (caught at start and reload, before serving).
    #[error("route `{route}`: {reason}")]
    RouteDeny { route: String, reason: String },
    /// No route serves this host.
    #[error("no route for host `{host}`")]
    NoRoute { host: String },
    /// The request's `Host` differs from the TLS SNI (HTTP/2 connection reuse, or a spoofing attempt).
    #[error("host `{host}` does not match the TLS server name `{sni}`")]
    HostMismatch { sni: String, host: String },
    /// The request has no usable host at all.
    #[error("request without a Host")]
    NoHost,
    /// The TLS client sent no SNI, so the certificate it accepted vouches for no host (unless
    /// `allow_missing_sni`).
    #[error("host `{host}` asked for on a connection without TLS server name")]
    MissingSni { host: String },
    /// A protocol-level refusal decided before contacting anyone (bad name, denied, limited, unsupported).
    #[error("{}", .0.message())]
    Registry(#[from] RegistryError),
    /// Every endpoint failed to connect or answered 5xx; the source is the last endpoint's failure.
    #[error("no endpoint answered")]
    Unavailable(#[source] EndpointError),
    /// The upstream did not send response headers in time.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// Fetching an upstream token failed.
    #[error("upstream token fetch from {realm} failed")]
    UpstreamToken {
        realm: String,
        #[source]
        source: TokenFetchError,
    },
    /// A redirect target the gateway refuses to follow (SSRF guard).
    #[error("refusing to follow redirect to {target}")]
    Redirect {
        target: String,
        #[source]
        reason: RedirectRefusal,
    },
    /// Every member of the upstream's credential pool is set aside (rate limited or login refused). Answered
    /// 429 with the soonest return as `Retry-After`, not 502: the upstream is fine, our quota is not. The
    /// built-in cache's hook: a cached copy may be served instead (stale-if-error) before this reaches the client.
    #[error("every upstream credential of route {route} is set aside for {retry_after:?}")]
    CredentialsExhausted {
        route: String,
        retry_after: Duration,
    },
    /// A bug or unexpected state; the message is for the log, the client gets a generic 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How one endpoint failed to answer usably.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The request could not be sent or no response head came back (connect, TLS, reset).
    #[error("{origin}: cannot send the request")]
    Send {
        origin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The endpoint answered with a server error.
    #[error("{origin} answered {status}")]
    Status { origin: String, status: StatusCode },
    /// The try failed for another reason (timeout, token service), kept whole.
    #[error("{origin} failed")]
    Failed {
        origin: String,
        #[source]
        source: Box<ProxyError>,
    },
    /// The plan had no endpoint to try.
    #[error("no endpoint to try")]
    NoEndpoint,
}

/// Why a redirect target is not followed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectRefusal {
    #[error("not an http(s) URL")]
    Scheme,
    #[error("it is or resolves to a loopback, private or link-local address")]
    PrivateAddress,
    #[error("too many redirects")]
    TooManyHops,
}

pub use mirrorgate_report::Report;

impl ProxyError {
    /// The OCI answer for this failure. The only place that decides statuses and codes of gateway failures.
    pub fn to_registry(&self) -> RegistryError {
        match self {
            ProxyError::Registry(e) => e.clone(),
            ProxyError::NoRoute { host } => RegistryError::new(
                ErrorCode::Misdirected,
                format!("this gateway does not serve `{host}`"),
            ),
            ProxyError::HostMismatch { .. } | ProxyError::MissingSni { .. } => {
                RegistryError::new(ErrorCode::Misdirected, self.to_string())
            }
            ProxyError::NoHost => {
                RegistryError::new(ErrorCode::Misdirected, "the request names no host")
            }
            ProxyError::Unavailable(_) => RegistryError::new(
                ErrorCode::BadGateway,
                "no upstream endpoint answered; try again later",
            ),
            ProxyError::Timeout(_) => RegistryError::new(
                ErrorCode::GatewayTimeout,
                "the upstream registry did not answer in time",
            ),
            ProxyError::UpstreamToken { .. } => RegistryError::new(
                ErrorCode::BadGateway,
                "the upstream registry's token service failed",
            ),
            ProxyError::Redirect { .. } => RegistryError::new(
                ErrorCode::BadGateway,
                "the upstream redirected to a location the gateway does not follow",
            ),
            ProxyError::CredentialsExhausted { retry_after, .. } => RegistryError::new(
                ErrorCode::TooManyRequests,
                "the upstream registry's pull limit is used up for every account of this gateway; try again later",
            )
            .with_retry_after(crate::credentials::retry_after_secs(*retry_after)),
            ProxyError::UpstreamCa { .. }
            | ProxyError::RouteDeny { .. }
            | ProxyError::Internal(_) => {
                RegistryError::new(ErrorCode::Internal, ErrorCode::Internal.default_message())
            }
        }
    }

    /// Whether the failure is the gateway's own fault (logged at warn) rather than the client's or upstream's.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ProxyError::Internal(_) | ProxyError::UpstreamCa { .. } | ProxyError::RouteDeny { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins each gateway failure's status: wrong host 421, dead upstream 502, slow upstream 504, bug 500.
    #[test]
    fn each_failure_has_its_status() {
        let cases = [
            (
                ProxyError::NoRoute { host: "x".into() },
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (
                ProxyError::HostMismatch {
                    sni: "a".into(),
                    host: "b".into(),
                },
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (ProxyError::NoHost, StatusCode::MISDIRECTED_REQUEST),
            (
                ProxyError::Unavailable(EndpointError::NoEndpoint),
                StatusCode::BAD_GATEWAY,
            ),
            (
                ProxyError::MissingSni { host: "h".into() },
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (
                ProxyError::Timeout(Duration::from_secs(1)),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                ProxyError::UpstreamToken {
                    realm: "r".into(),
                    source: TokenFetchError::Status(StatusCode::FORBIDDEN),
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ProxyError::Redirect {
                    target: "t".into(),
                    reason: RedirectRefusal::PrivateAddress,
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ProxyError::Internal("bug".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                ProxyError::Registry(RegistryError::new(ErrorCode::Denied, "no")),
                StatusCode::FORBIDDEN,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.to_registry().status(), status, "{err}");
        }
    }

    // Pins the exhausted pool's answer: 429 TOOMANYREQUESTS with the soonest return as Retry-After, not 502.
    #[test]
    fn exhausted_pool_is_429_with_retry_after() {
        let e = ProxyError::CredentialsExhausted {
            route: "docker.test".into(),
            retry_after: Duration::from_millis(2500),
        };
        let r = e.to_registry();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.code(), ErrorCode::TooManyRequests);
        assert_eq!(r.retry_after(), Some(3));
    }

    // Pins that internal details never reach the client body.
    #[test]
    fn internal_details_stay_in_the_log() {
        let r = ProxyError::Internal("secret path /etc/x".into())
            .to_registry()
            .into_response();
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(!body.contains("/etc/x"), "{body}");
    }

    // Pins that log lines keep the cause chain: the endpoint and the underlying reason both appear.
    #[test]
    fn report_walks_the_chain() {
        let e = ProxyError::Unavailable(EndpointError::Status {
            origin: "http://cache:5000".into(),
            status: StatusCode::BAD_GATEWAY,
        });
        let text = Report(&e).to_string();
        assert!(
            text.starts_with("no endpoint answered: http://cache:5000 answered 502"),
            "{text}"
        );
    }
}
