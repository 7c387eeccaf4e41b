//! Label values: closed enums for everything the gateway decides, and a cap for names that come from
//! users or tenants.
//!
//! Every distinct label set is a time series that Prometheus keeps in memory, so a label fed from request
//! data (a path, a digest, a user name) is a denial-of-service knob. Here the only open-ended values are
//! tenant and user names, and those pass through a [`LabelCap`].

use std::collections::HashSet;
use std::sync::RwLock;

use mirrorgate_registry::RequestKind;

/// Label value used once a capped label has seen its maximum number of distinct values.
pub const OVERFLOW_LABEL: &str = "other";
/// Tenant label value for requests that belong to no tenant (anonymous pulls).
pub const ANONYMOUS_LABEL: &str = "anonymous";
/// Tenant label value when tenant labels are turned off in [`crate::MetricsOptions`].
pub const DISABLED_LABEL: &str = "all";
/// Route label value for requests whose host matched no configured route.
pub const UNROUTED_LABEL: &str = "unrouted";

/// The `kind` label on request metrics: the request kind folded into the values dashboards use
/// (uploads count as `blob`; tags, catalog, referrers and requests that are no registry path as `other`).
pub(crate) fn kind_label(kind: Option<RequestKind>) -> &'static str {
    match kind {
        Some(RequestKind::Manifest) => "manifest",
        Some(RequestKind::Blob | RequestKind::Upload) => "blob",
        Some(RequestKind::Token) => "token",
        Some(RequestKind::Ping) => "ping",
        Some(RequestKind::Tags | RequestKind::Catalog | RequestKind::Referrers) | None => "other",
    }
}

/// Where an upstream Bearer token came from; the `result` label on token metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenResult {
    /// Served from the token cache.
    CacheHit,
    /// Fetched from the upstream realm.
    Fetched,
    /// The realm could not be reached or refused us.
    Error,
}

impl TokenResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CacheHit => "cache_hit",
            Self::Fetched => "fetched",
            Self::Error => "error",
        }
    }
}

/// Why a client failed to authenticate or was refused; the `reason` label on
/// `mirrorgate_auth_failures_total`. A closed list so that error text never becomes a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailureReason {
    /// The route needs credentials and none were sent.
    MissingCredentials,
    /// The `Authorization` header could not be parsed.
    Malformed,
    /// Basic auth with a user name the htpasswd file does not know.
    UnknownUser,
    /// Basic auth with a wrong password.
    BadPassword,
    /// A Bearer token that is not ours or whose signature does not verify.
    InvalidToken,
    /// A Bearer token past its expiry.
    ExpiredToken,
    /// Authenticated, but not allowed this route, repository or action.
    Forbidden,
    /// A Basic password with the API token prefix that is no token: unknown id or wrong secret.
    BadApiToken,
    /// The right API token, past its expiry.
    ExpiredApiToken,
    /// The right API token, revoked.
    RevokedApiToken,
}

impl AuthFailureReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::Malformed => "malformed",
            Self::UnknownUser => "unknown_user",
            Self::BadPassword => "bad_password",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::Forbidden => "forbidden",
            Self::BadApiToken => "bad_api_token",
            Self::ExpiredApiToken => "expired_api_token",
            Self::RevokedApiToken => "revoked_api_token",
        }
    }
}

/// Success or failure of a background job (ACME renewal, config reload); the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It did not; the previous state stays in force.
    Failure,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The `status_class` label for an HTTP status: `"2xx"`, `"4xx"`, ... Anything outside 100..=599 (which
/// hyper would not produce, but an upstream might send) is `"other"`, so the label stays a closed set.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The `method` label: the methods a registry client uses keep their name, anything else (including
/// extension methods a client invents) becomes `"OTHER"`.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Admits at most `max` distinct values for one label; later newcomers read as [`OVERFLOW_LABEL`].
///
/// Values already admitted keep their own label forever (until restart), so a series never flips between
/// its name and `"other"`. The read lock makes the common case (a value seen before) cheap.
#[derive(Debug)]
pub(crate) struct LabelCap {
    max: usize,
    seen: RwLock<HashSet<String>>,
}

impl LabelCap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// The label value to use for `value`: itself if admitted, else [`OVERFLOW_LABEL`].
    pub(crate) fn admit<'a>(&self, value: &'a str) -> &'a str {
        // A poisoned lock only means another thread panicked mid-insert; the set is still a valid set.
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        if seen.contains(value) {
            return value;
        }
        if seen.len() >= self.max {
            return OVERFLOW_LABEL;
        }
        drop(seen);
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        // Re-check under the write lock: another thread may have filled the last slot meanwhile.
        if seen.contains(value) {
            return value;
        }
        if seen.len() >= self.max {
            return OVERFLOW_LABEL;
        }
        seen.insert(value.to_owned());
        value
    }

    /// How many distinct values were admitted.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: status classes are a closed set; out-of-range codes do not mint new label values.
    #[test]
    fn status_classes() {
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(307), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "other");
        assert_eq!(status_class(600), "other");
    }

    // Pins that every `kind` value dashboards use is reachable, `token` included.
    #[test]
    fn kind_labels() {
        assert_eq!(kind_label(Some(RequestKind::Token)), "token");
        assert_eq!(kind_label(Some(RequestKind::Upload)), "blob");
        assert_eq!(kind_label(Some(RequestKind::Manifest)), "manifest");
        assert_eq!(kind_label(Some(RequestKind::Ping)), "ping");
        assert_eq!(kind_label(Some(RequestKind::Tags)), "other");
        assert_eq!(kind_label(None), "other");
    }

    // Rule: unknown HTTP methods collapse into one label value.
    #[test]
    fn methods_are_capped() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::HEAD), "HEAD");
        let weird = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&weird), "OTHER");
    }

    // Rule: the cap admits `max` distinct values, keeps admitted ones stable, and overflows the rest.
    #[test]
    fn cap_admits_then_overflows() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.admit("c"), OVERFLOW_LABEL);
        assert_eq!(cap.admit("a"), "a");
        assert_eq!(cap.admit("b"), "b");
        assert_eq!(cap.len(), 2);
    }

    // Rule: a zero cap admits nothing (every value is "other").
    #[test]
    fn zero_cap_admits_nothing() {
        let cap = LabelCap::new(0);
        assert_eq!(cap.admit("a"), OVERFLOW_LABEL);
        assert_eq!(cap.len(), 0);
    }
}
