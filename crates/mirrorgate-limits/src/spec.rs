//! Plain limit specifications.
//!
//! These mirror the `[[tenant]]` and `[limits]` keys of config.md without depending on the config
//! crate: the proxy maps validated config into them (`mirrorgate-proxy` `specs.rs`), so this crate can be
//! built and tested alone. Every limit is `Option<NonZero…>`: `None` is "not limited", and zero cannot be
//! written (config validation refuses it with "omit the key for no limit").

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

/// Limits of one tenant (`[[tenant]]`). `None` means "not limited" for that dimension.
///
/// Per-user values apply to each user of the tenant separately; clients identified only by a
/// tenant CIDR (no credentials) count as one "user" per source IP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Requests per second per user (`requests_per_second`).
    pub requests_per_second: Option<NonZeroU32>,
    /// Requests a user may send at once before the rate applies (`burst`); defaults to one
    /// second's worth of `requests_per_second`.
    pub burst: Option<NonZeroU32>,
    /// Response body bytes per second per user (`bytes_per_second`).
    pub bytes_per_second: Option<NonZeroU64>,
    /// In-flight requests per user (`concurrent_requests`).
    pub concurrent_requests: Option<NonZeroU32>,
    /// Requests per second for the whole tenant (`tenant_requests_per_second`). Its burst is
    /// `max(burst, tenant_requests_per_second)`: a tenant total must never be tighter in bursts
    /// than a single one of its users.
    pub tenant_requests_per_second: Option<NonZeroU32>,
    /// Response body bytes per second for the whole tenant (`tenant_bytes_per_second`).
    pub tenant_bytes_per_second: Option<NonZeroU64>,
    /// In-flight requests for the whole tenant (`tenant_concurrent_requests`).
    pub tenant_concurrent_requests: Option<NonZeroU32>,
    /// Response body bytes per UTC day for the whole tenant (`bytes_per_day`).
    pub bytes_per_day: Option<NonZeroU64>,
}

/// Limits for anonymous clients, applied per source IP (`[limits]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnonymousLimits {
    /// Requests per second per source IP.
    pub requests_per_second: Option<NonZeroU32>,
    /// Burst per source IP; defaults to one second's worth of `requests_per_second`.
    pub burst: Option<NonZeroU32>,
    /// Response body bytes per second per source IP.
    pub bytes_per_second: Option<NonZeroU64>,
    /// In-flight requests per source IP (`concurrent_requests`).
    pub concurrent_requests: Option<NonZeroU32>,
}

/// Shared mode: request rate, concurrency and daily quotas are kept in Redis so that N replicas
/// enforce one limit together (`[limits] redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSpec {
    /// `redis://host:port/db` or `redis+unix:///path/to/socket`.
    pub redis_url: String,
    /// When Redis is unreachable: `true` keeps serving with the local (per-replica) limits,
    /// `false` refuses limited requests with [`crate::LimitKind::Unavailable`] (also before the
    /// first connection succeeds at start-up).
    pub fail_open: bool,
    /// Upper bound for one Redis round trip on the request path; a hanging Redis must not stall
    /// requests. Default 50 ms.
    pub timeout: Duration,
    /// Prefix of every Redis key, so several deployments can share one Redis. Default
    /// `"mirrorgate:limits"`.
    pub key_prefix: String,
}

impl SharedSpec {
    /// Shared mode with the documented defaults (fail open, 50 ms timeout).
    pub fn new(redis_url: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            fail_open: true,
            timeout: Duration::from_millis(50),
            key_prefix: "mirrorgate:limits".to_owned(),
        }
    }
}

/// Everything the [`crate::Limiter`] needs.
#[derive(Debug, Clone, Default)]
pub struct LimitsSpec {
    /// Tenants by name.
    pub tenants: HashMap<Arc<str>, TenantLimits>,
    /// Per-IP limits for anonymous clients.
    pub anonymous: AnonymousLimits,
    /// Shared mode, when `[limits] redis` is set.
    pub shared: Option<SharedSpec>,
}
