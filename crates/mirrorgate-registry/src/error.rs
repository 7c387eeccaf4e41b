//! Errors: the client-facing OCI error answer (`RegistryError`, rendered in exactly one place) and the crate's
//! internal failure type (`Error`) for inputs that come from upstreams rather than from clients.

use std::fmt;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

/// The `code` of an OCI error body, with the HTTP status it is sent with.
///
/// The first group is the OCI distribution spec's list; the second group are answers only a gateway gives
/// (the spec has no words for "wrong host" or "the upstream is down"), spelled like OCI codes so that clients
/// that print `code: message` stay readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 401: no or bad credentials. Must travel with `WWW-Authenticate` (see [`RegistryError::with_challenge`]).
    Unauthorized,
    /// 403: authenticated, but this user/tenant may not do this to this repository.
    Denied,
    /// 404: the repository is not known (also used when a route exists but the repository is not allowed to be
    /// seen: it hides which repositories exist).
    NameUnknown,
    /// 404: no manifest for this tag or digest.
    ManifestUnknown,
    /// 404: no blob for this digest.
    BlobUnknown,
    /// 404: the upload session id is not (or no longer) known.
    BlobUploadUnknown,
    /// 400: the repository name breaks the name grammar (also `%`-encoding, `..`, empty components, and a
    /// rewrite whose result is not a valid name).
    NameInvalid,
    /// 400: the manifest is invalid. The gateway also uses it for a tag that breaks the tag grammar, since a
    /// bad tag names a manifest that cannot exist (distribution's old `TAG_INVALID` is not in the OCI spec).
    ManifestInvalid,
    /// 400: a digest breaks the `algorithm:encoded` grammar.
    DigestInvalid,
    /// 405: the operation is not supported here (e.g. push to a pull-only route, `DELETE` through a mirror).
    Unsupported,
    /// 429: a rate limit or quota was hit. Should travel with `Retry-After` (seconds).
    TooManyRequests,
    /// 404, gateway-side: the path is not an OCI distribution endpoint at all (unknown shape), or no route
    /// matched. Code `NOT_FOUND`.
    NotFound,
    /// 421, gateway-side: the request's `Host` does not match the TLS SNI, or names a host this gateway does
    /// not serve on this connection (HTTP/2 connection reuse across names). Code `MISDIRECTED`.
    Misdirected,
    /// 502, gateway-side: the upstream answered something unusable (connection reset, TLS failure, garbage, a
    /// token server that refused us). Code `UNAVAILABLE`.
    BadGateway,
    /// 503, gateway-side: no upstream endpoint is healthy, or the gateway is shutting down. Code `UNAVAILABLE`.
    Unavailable,
    /// 504, gateway-side: the upstream did not answer in time. Code `UNAVAILABLE`.
    GatewayTimeout,
    /// 500, gateway-side: a bug or an unexpected internal failure (logged by the caller). Code `UNKNOWN`, as in
    /// distribution.
    Internal,
    /// 400, gateway-side: a request to the gateway's own endpoints (the token server) is malformed. Code
    /// `INVALID_REQUEST`, after OAuth2's `invalid_request`.
    InvalidRequest,
}

impl ErrorCode {
    /// Every code, for tests and documentation tables.
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::NameUnknown,
        ErrorCode::ManifestUnknown,
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::ManifestInvalid,
        ErrorCode::DigestInvalid,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::NotFound,
        ErrorCode::Misdirected,
        ErrorCode::BadGateway,
        ErrorCode::Unavailable,
        ErrorCode::GatewayTimeout,
        ErrorCode::Internal,
        ErrorCode::InvalidRequest,
    ];

    /// The wire spelling of the code in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Misdirected => "MISDIRECTED",
            ErrorCode::BadGateway | ErrorCode::Unavailable | ErrorCode::GatewayTimeout => {
                "UNAVAILABLE"
            }
            ErrorCode::Internal => "UNKNOWN",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
        }
    }

    /// The HTTP status the code is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::NameUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::NameInvalid | ErrorCode::ManifestInvalid | ErrorCode::DigestInvalid => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The message used when the caller has nothing more specific to say (wording follows distribution, which
    /// is what users paste into search engines).
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::ManifestUnknown => "manifest unknown",
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::DigestInvalid => "provided digest is invalid",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::NotFound => "not found",
            ErrorCode::Misdirected => "this host is not served on this connection",
            ErrorCode::BadGateway => "upstream registry failed",
            ErrorCode::Unavailable => "no upstream registry is available",
            ErrorCode::GatewayTimeout => "upstream registry timed out",
            ErrorCode::Internal => "internal error",
            ErrorCode::InvalidRequest => "invalid request",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer a client gets when the gateway says no: an OCI error body plus the headers that make clients
/// behave (a challenge to authenticate, a delay before retrying).
///
/// Every refusal in the gateway becomes one of these and leaves through [`RegistryError::into_response`], so the
/// JSON shape and the header rules live in one place. The parts live behind one box: errors travel through
/// every `Result` of the request path and should cost a pointer there, not 200 bytes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {}", .inner.code, .inner.message)]
pub struct RegistryError {
    inner: Box<Parts>,
}

#[derive(Debug, Clone, PartialEq)]
struct Parts {
    code: ErrorCode,
    message: String,
    detail: Option<serde_json::Value>,
    www_authenticate: Option<HeaderValue>,
    retry_after: Option<u64>,
    extra_headers: HeaderMap,
}

impl RegistryError {
    /// An error with `code` and a specific message. Clients print the message: never put secrets in it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            inner: Box::new(Parts {
                code,
                message: message.into(),
                detail: None,
                www_authenticate: None,
                retry_after: None,
                extra_headers: HeaderMap::new(),
            }),
        }
    }

    /// Attaches the OCI `detail` member (structured, e.g. the offending name).
    #[must_use]
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.inner.detail = Some(detail);
        self
    }

    /// Attaches a `WWW-Authenticate` challenge (see [`crate::bearer_challenge`]). The proxy sets one on every
    /// 401: clients that skip the ping learn the realm from whatever 401 they hit first.
    #[must_use]
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.inner.www_authenticate = Some(challenge);
        self
    }

    /// Attaches `Retry-After: secs` (429, 503).
    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.inner.retry_after = Some(secs);
        self
    }

    /// Adds one more response header (appended: a name may repeat), e.g. pass-through `ratelimit-*` headers
    /// on an upstream 429.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.extra_headers.append(name, value);
        self
    }

    /// What went wrong.
    pub fn code(&self) -> ErrorCode {
        self.inner.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The OCI `detail` member, if any.
    pub fn detail(&self) -> Option<&serde_json::Value> {
        self.inner.detail.as_ref()
    }

    /// The challenge sent as `WWW-Authenticate`, if any.
    pub fn www_authenticate(&self) -> Option<&HeaderValue> {
        self.inner.www_authenticate.as_ref()
    }

    /// The `Retry-After` seconds, if any.
    pub fn retry_after(&self) -> Option<u64> {
        self.inner.retry_after
    }

    /// Extra headers sent along.
    pub fn extra_headers(&self) -> &HeaderMap {
        &self.inner.extra_headers
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.inner.code.status()
    }

    /// Renders the answer: status from the code, `Content-Type: application/json`,
    /// `Docker-Distribution-API-Version: registry/2.0` (distribution sends it on every answer, old Docker clients
    /// look for it), `WWW-Authenticate` and `Retry-After` when set, then `extra_headers`. The body is
    /// `{"errors":[{"code":…,"message":…,"detail":…}]}`; `detail` is left out when there is none, as
    /// distribution does. For `HEAD` requests the server drops the body itself.
    pub fn into_response(self) -> Response<Bytes> {
        let Parts {
            code,
            message,
            detail,
            www_authenticate,
            retry_after,
            extra_headers,
        } = *self.inner;
        let mut entry = serde_json::Map::new();
        entry.insert("code".into(), code.as_str().into());
        entry.insert("message".into(), message.into());
        if let Some(detail) = detail {
            entry.insert("detail".into(), detail);
        }
        let body = serde_json::json!({ "errors": [serde_json::Value::Object(entry)] });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = code.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(crate::wire::API_VERSION_HEADER, crate::wire::api_version());
        if let Some(challenge) = www_authenticate {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        let mut last_name: Option<HeaderName> = None;
        for (name, value) in extra_headers {
            // `HeaderMap::into_iter` yields the name only on the first value of each name.
            if let Some(name) = name {
                last_name = Some(name);
            }
            if let Some(name) = &last_name {
                headers.append(name.clone(), value);
            }
        }
        response
    }
}

impl From<ErrorCode> for RegistryError {
    fn from(code: ErrorCode) -> Self {
        RegistryError::new(code, code.default_message())
    }
}

/// Failures of this crate's parsers on input that comes from upstreams or configuration rather than from a
/// client request (those become [`RegistryError`] directly).
///
/// Messages never quote token values or URLs (signed CDN URLs carry credentials in their query).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `WWW-Authenticate` header does not follow RFC 7235.
    #[error("malformed authentication challenge at byte {position}: {reason}")]
    Challenge {
        position: usize,
        reason: &'static str,
    },
    /// A token scope string does not follow `type:name:actions`.
    #[error("malformed scope: {reason}")]
    Scope { reason: &'static str },
    /// The token endpoint's body is not JSON.
    #[error("token response is not valid JSON")]
    TokenJson(#[source] serde_json::Error),
    /// The token endpoint's JSON carries neither `token` nor `access_token`.
    #[error("token response carries neither `token` nor `access_token`")]
    TokenMissing,
    /// `issued_at` is present but not RFC 3339.
    #[error("token response `issued_at` is not an RFC 3339 time")]
    IssuedAt(#[source] time::error::Parse),
    /// A `Location` or `Link` URL cannot be resolved against the request URL.
    #[error("cannot resolve a redirect or link URL")]
    Url(#[source] url::ParseError),
    /// A `Link` header is not `<uri>; params`.
    #[error("malformed Link header")]
    Link,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_json(response: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(response.body()).unwrap()
    }

    // Rule: each code maps to the status the OCI spec (or the gateway table in the docs) gives it.
    #[test]
    fn each_code_has_its_status() {
        let expected: [(ErrorCode, u16, &str); 18] = [
            (ErrorCode::Unauthorized, 401, "UNAUTHORIZED"),
            (ErrorCode::Denied, 403, "DENIED"),
            (ErrorCode::NameUnknown, 404, "NAME_UNKNOWN"),
            (ErrorCode::ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (ErrorCode::BlobUnknown, 404, "BLOB_UNKNOWN"),
            (ErrorCode::BlobUploadUnknown, 404, "BLOB_UPLOAD_UNKNOWN"),
            (ErrorCode::NameInvalid, 400, "NAME_INVALID"),
            (ErrorCode::ManifestInvalid, 400, "MANIFEST_INVALID"),
            (ErrorCode::DigestInvalid, 400, "DIGEST_INVALID"),
            (ErrorCode::Unsupported, 405, "UNSUPPORTED"),
            (ErrorCode::TooManyRequests, 429, "TOOMANYREQUESTS"),
            (ErrorCode::NotFound, 404, "NOT_FOUND"),
            (ErrorCode::Misdirected, 421, "MISDIRECTED"),
            (ErrorCode::BadGateway, 502, "UNAVAILABLE"),
            (ErrorCode::Unavailable, 503, "UNAVAILABLE"),
            (ErrorCode::GatewayTimeout, 504, "UNAVAILABLE"),
            (ErrorCode::Internal, 500, "UNKNOWN"),
            (ErrorCode::InvalidRequest, 400, "INVALID_REQUEST"),
        ];
        assert_eq!(expected.len(), ErrorCode::ALL.len());
        for (code, status, wire) in expected {
            assert_eq!(code.status().as_u16(), status, "{code:?}");
            assert_eq!(code.as_str(), wire, "{code:?}");
            // The rendered response agrees with `status()` and carries the code on the wire.
            let response = RegistryError::from(code).into_response();
            assert_eq!(response.status().as_u16(), status, "{code:?}");
            assert_eq!(body_json(&response)["errors"][0]["code"], wire, "{code:?}");
        }
    }

    // Rule: the body is the OCI shape with message and detail, and the content type is JSON.
    #[test]
    fn body_is_oci_shaped() {
        let response = RegistryError::new(ErrorCode::NameInvalid, "bad name")
            .with_detail(serde_json::json!({"name": "Foo"}))
            .into_response();
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            response.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
        let body = body_json(&response);
        let errors = body["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["message"], "bad name");
        assert_eq!(errors[0]["detail"]["name"], "Foo");
    }

    // Rule: without a detail the member is omitted (distribution's `omitempty`), not sent as null.
    #[test]
    fn detail_omitted_when_absent() {
        let body = body_json(&RegistryError::from(ErrorCode::Denied).into_response());
        assert!(body["errors"][0].get("detail").is_none());
        assert_eq!(
            body["errors"][0]["message"],
            ErrorCode::Denied.default_message()
        );
    }

    // Rule: a 401 carries the challenge it was given as `WWW-Authenticate`.
    #[test]
    fn unauthorized_carries_challenge() {
        let challenge = HeaderValue::from_static(r#"Bearer realm="https://docker.test/token""#);
        let response = RegistryError::from(ErrorCode::Unauthorized)
            .with_challenge(challenge.clone())
            .into_response();
        assert_eq!(response.headers()[WWW_AUTHENTICATE], challenge);
        assert!(RegistryError::from(ErrorCode::Denied)
            .into_response()
            .headers()
            .get(WWW_AUTHENTICATE)
            .is_none());
    }

    // Rule: a 429 carries `Retry-After` in seconds when set, and extra headers pass through, repeated names kept.
    #[test]
    fn too_many_requests_carries_retry_after_and_extras() {
        let response = RegistryError::from(ErrorCode::TooManyRequests)
            .with_retry_after(17)
            .with_header(
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from_static("100;w=21600"),
            )
            .with_header(
                HeaderName::from_static("x-multi"),
                HeaderValue::from_static("a"),
            )
            .with_header(
                HeaderName::from_static("x-multi"),
                HeaderValue::from_static("b"),
            )
            .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "17");
        assert_eq!(response.headers()["ratelimit-limit"], "100;w=21600");
        let multi: Vec<_> = response.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
    }

    // Rule: Display reads `CODE: message` for logs.
    #[test]
    fn display_is_code_and_message() {
        let err = RegistryError::new(ErrorCode::DigestInvalid, "nope");
        assert_eq!(err.to_string(), "DIGEST_INVALID: nope");
    }
}
