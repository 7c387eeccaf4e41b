//! Rate limits, concurrency caps, bandwidth and daily byte quotas for mirrorgate's tenants,
//! users and anonymous clients.
//!
//! A paid multi-tenant mirror must keep one tenant (or one leaked credential, or one noisy IP)
//! from starving the others and from running up egress. This crate answers, per request, "may it
//! go on?" ([`Limiter::check`] → [`Admission`] or [`Limited`], which knows its 429 headers), and
//! throttles the response body while it streams ([`ThrottledBody`]) instead of delaying headers,
//! which would make large pulls time out. With [`SharedSpec`], N replicas enforce one limit
//! together through Redis and fall back to local limits when Redis is gone.
//!
//! The specs here are plain structs so this crate does not depend on the config schema; the
//! proxy (`mirrorgate-proxy` `specs.rs`) maps `[[tenant]]` and `[limits]` into a [`LimitsSpec`].

mod admission;
mod bandwidth;
mod clock;
mod decision;
mod error;
mod limiter;
mod quota;
mod script;
mod shared;
mod spec;
mod state;
mod subject;

pub use admission::Admission;
pub use bandwidth::{ByteBucket, OnBytes, ThrottledBody};
pub use clock::TimeSource;
pub use decision::{LimitKind, LimitScope, Limited, RateInfo};
pub use error::LimitsError;
pub use limiter::{KeyCounts, Limiter};
pub use spec::{AnonymousLimits, LimitsSpec, SharedSpec, TenantLimits};
pub use subject::{Subject, SubjectClass};
