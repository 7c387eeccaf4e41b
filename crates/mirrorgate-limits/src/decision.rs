//! The answer to "may this request go on?" when it is no, and the headers that explain it.
//!
//! Headers follow the IETF `RateLimit` fields draft in its widely deployed form
//! (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` in seconds), next to the
//! `Retry-After` that registry clients actually honour.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Which limit refused the request. The one definition: metrics labels (`limit` on
/// `mirrorgate_rate_limited_total`) and the proxy use this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitKind {
    /// Too many requests per second (GCRA).
    RequestRate,
    /// Too many requests in flight.
    Concurrency,
    /// The tenant's daily byte quota is used up.
    Quota,
    /// Shared limits are required (`fail_open = false`) but Redis cannot be reached.
    Unavailable,
    /// Too many failed logins from one source. Decided by the authenticator's throttle, not by the
    /// [`crate::Limiter`]; listed here so every refusal is counted under one label set.
    AuthFailures,
}

/// Whose limit it was. The one definition, as for [`LimitKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// One user (or one source IP inside a CIDR tenant).
    User,
    /// A tenant's total.
    Tenant,
    /// One anonymous source IP.
    Ip,
}

impl LimitKind {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestRate => "request_rate",
            Self::Concurrency => "concurrency",
            Self::Quota => "quota",
            Self::Unavailable => "unavailable",
            Self::AuthFailures => "auth_failures",
        }
    }
}

impl LimitScope {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Tenant => "tenant",
            Self::Ip => "ip",
        }
    }
}

/// A refused request: becomes `429 TOOMANYREQUESTS` (or 503 for
/// [`LimitKind::Unavailable`]) with [`Limited::headers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Which limit.
    pub kind: LimitKind,
    /// Whose limit.
    pub scope: LimitScope,
    /// How long until a retry can succeed (exact for request rates, from GCRA).
    pub retry_after: Duration,
    /// The limit's size: burst for rates, in-flight cap for concurrency, bytes for quotas.
    pub limit: u64,
    /// What is left of it (0 when refused).
    pub remaining: u64,
    /// Time until the limit is fully available again.
    pub reset: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds: rounded up (a client retrying early is refused again) and
    /// at least 1 (0 invites a busy loop).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after).max(1)
    }

    /// `Retry-After`, `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_secs()),
        );
        insert_ratelimit(
            &mut headers,
            self.limit,
            self.remaining,
            ceil_secs(self.reset).max(1),
        );
        headers
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} limit of the {} reached, retry after {}s",
            self.kind.as_str(),
            self.scope.as_str(),
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for Limited {}

/// The state of the tightest request-rate limit after an admitted request, for the
/// `RateLimit-*` headers of successful responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Burst size of the limit.
    pub limit: u64,
    /// Requests that could still be sent at once.
    pub remaining: u64,
    /// Time until the full burst is available again.
    pub reset: Duration,
}

impl RateInfo {
    /// The one with less room left: the limit a client will hit first.
    pub(crate) fn tighter(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(3);
        insert_ratelimit(
            &mut headers,
            self.limit,
            self.remaining,
            ceil_secs(self.reset),
        );
        headers
    }
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn insert_ratelimit(headers: &mut HeaderMap, limit: u64, remaining: u64, reset_secs: u64) {
    headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
    headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
    headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset_secs));
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(retry_after: Duration) -> Limited {
        Limited {
            kind: LimitKind::RequestRate,
            scope: LimitScope::User,
            retry_after,
            limit: 100,
            remaining: 0,
            reset: Duration::from_millis(2500),
        }
    }

    // Pins: Retry-After rounds up to whole seconds and is never 0.
    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(limited(Duration::from_millis(1200)).retry_after_secs(), 2);
        assert_eq!(limited(Duration::from_secs(3)).retry_after_secs(), 3);
        assert_eq!(limited(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(limited(Duration::ZERO).retry_after_secs(), 1);
    }

    // Pins: a refusal carries exactly Retry-After plus the three RateLimit-* headers.
    #[test]
    fn limited_headers_shape() {
        let h = limited(Duration::from_millis(1200)).headers();
        assert_eq!(h.len(), 4);
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["ratelimit-limit"], "100");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "3");
    }

    // Pins: success headers report the limit the client hits first.
    #[test]
    fn tighter_rate_info_wins() {
        let a = RateInfo {
            limit: 10,
            remaining: 7,
            reset: Duration::from_millis(300),
        };
        let b = RateInfo {
            limit: 100,
            remaining: 2,
            reset: Duration::from_secs(2),
        };
        let t = RateInfo::tighter(Some(a), Some(b)).unwrap();
        assert_eq!(t, b);
        let h = t.headers();
        assert_eq!(h.len(), 3);
        assert_eq!(h["ratelimit-limit"], "100");
        assert_eq!(h["ratelimit-remaining"], "2");
        assert_eq!(h["ratelimit-reset"], "2");
        assert_eq!(RateInfo::tighter(None, Some(a)), Some(a));
    }
}
