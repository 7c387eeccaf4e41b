//! Prometheus metrics and the admin listener for mirrorgate.
//!
//! Every metric family the gateway exposes is defined here, in one [`Metrics`] value that owns its own
//! `prometheus::Registry` (never the global one, so tests and several gateways in one process do not
//! collide). Callers record events through typed helpers such as [`Metrics::request_done`] instead of
//! juggling label orders, and every label value is either a closed enum, a configured name (route host,
//! endpoint, tenant) or capped, so a hostile client cannot blow up the series count with raw paths,
//! digests or user names.
//!
//! The admin pages ([`admin_response`]: `/metrics`, `/healthz`, `/readyz`) are served by the proxy's admin
//! listener on a private, plain HTTP/1.1 port; readiness comes from [`Health`], a handful of atomics the rest
//! of the gateway flips.
//!
//! Process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ...)
//! are registered on Linux under their standard, prefix-free names so stock dashboards and alerts work.

mod admin;
mod cache;
mod credential_metrics;
mod error;
mod health;
mod labels;
mod metrics;

pub use admin::{admin_response, METRICS_CONTENT_TYPE};
pub use cache::{CacheKind, CacheMetrics};
pub use credential_metrics::CredentialMetrics;
pub use error::MetricsError;
pub use health::Health;
pub use labels::{
    status_class, AuthFailureReason, Outcome, TokenResult, ANONYMOUS_LABEL, DISABLED_LABEL,
    OVERFLOW_LABEL, UNROUTED_LABEL,
};
pub use metrics::{ConnectionGuard, Metrics, MetricsOptions, RequestLabels};
/// The label types of `mirrorgate_rate_limited_total`, defined by the limits crate (re-exported, not copied).
pub use mirrorgate_limits::{LimitKind, LimitScope};
