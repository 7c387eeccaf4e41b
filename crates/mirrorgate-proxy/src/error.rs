//! What can go wrong on the request path, and the one place where it becomes an answer to the client.
//!
//! Like linkerd2-proxy's "rescue": every failure is a typed error that keeps its source; [`ProxyError::to_registry`]
//! maps each to an OCI error (status, JSON body, `WWW-Authenticate`, `Retry-After`). Unknown failures become a
//! 500 and are logged at warn by the caller.

use std::path::PathBuf;
use std::time::Duration;

use mirrorgate_registry::{ErrorCode, RegistryError};

/// A failure of the gateway's HTTP side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A route's `upstream_ca` could not be used (caught at start and reload, before serving).
    #[error("upstream CA `{}`: {reason}", path.display())]
    UpstreamCa { path: PathBuf, reason: String },
    /// No route serves this host.
    #[error("no route for host `{host}`")]
    NoRoute { host: String },
    /// The request's `Host` differs from the TLS SNI (HTTP/2 connection reuse, or a spoofing attempt).
    #[error("host `{host}` does not match the TLS server name `{sni}`")]
    HostMismatch { sni: String, host: String },
    /// The request has no usable host at all.
    #[error("request without a Host")]
    NoHost,
    /// A protocol-level refusal decided before contacting anyone (bad name, denied, limited, unsupported).
    #[error("{}", .0.message())]
    Registry(#[from] RegistryError),
    /// Every endpoint failed to connect or answered 5xx.
    #[error("no endpoint answered: {detail}")]
    Unavailable { detail: String },
    /// The upstream did not send response headers in time.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// Fetching an upstream token failed.
    #[error("upstream token fetch from {realm} failed: {reason}")]
    UpstreamToken { realm: String, reason: String },
    /// A redirect target the gateway refuses to follow (SSRF guard) or could not parse.
    #[error("refusing to follow redirect to {target}: {reason}")]
    Redirect { target: String, reason: String },
    /// A bug or unexpected state; the message is for the log, the client gets a generic 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The OCI answer for this failure. The only place that decides statuses and codes of gateway failures.
    pub fn to_registry(&self) -> RegistryError {
        match self {
            ProxyError::Registry(e) => e.clone(),
            ProxyError::NoRoute { host } => RegistryError::new(
                ErrorCode::Misdirected,
                format!("this gateway does not serve `{host}`"),
            ),
            ProxyError::HostMismatch { .. } => {
                RegistryError::new(ErrorCode::Misdirected, self.to_string())
            }
            ProxyError::NoHost => {
                RegistryError::new(ErrorCode::Misdirected, "the request names no host")
            }
            ProxyError::Unavailable { .. } => RegistryError::new(
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
            ProxyError::UpstreamCa { .. } | ProxyError::Internal(_) => {
                RegistryError::new(ErrorCode::Internal, ErrorCode::Internal.default_message())
            }
        }
    }

    /// Whether the failure is the gateway's own fault (logged at warn) rather than the client's or upstream's.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            ProxyError::Internal(_) | ProxyError::UpstreamCa { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

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
                ProxyError::Unavailable { detail: "x".into() },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ProxyError::Timeout(Duration::from_secs(1)),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                ProxyError::UpstreamToken {
                    realm: "r".into(),
                    reason: "x".into(),
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ProxyError::Redirect {
                    target: "t".into(),
                    reason: "x".into(),
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

    // Pins that internal details never reach the client body.
    #[test]
    fn internal_details_stay_in_the_log() {
        let r = ProxyError::Internal("secret path /etc/x".into())
            .to_registry()
            .into_response();
        let body = String::from_utf8(r.body().to_vec()).unwrap();
        assert!(!body.contains("/etc/x"), "{body}");
    }
}
