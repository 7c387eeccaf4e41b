//! A request that was let through, and what it holds until its response body ends.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use http::HeaderMap;

use crate::bandwidth::ByteBucket;
use crate::decision::RateInfo;
use crate::quota::QuotaHandle;
use crate::shared::SharedPermit;

/// A request that may go on. Keep it alive until the response body has ended or was dropped
/// (hand it to [`crate::ThrottledBody`]): it holds the concurrency permits.
#[derive(Debug, Default)]
pub struct Admission {
    pub(crate) permits: Vec<LocalPermit>,
    pub(crate) shared_permit: Option<SharedPermit>,
    pub(crate) rate: Option<RateInfo>,
    pub(crate) buckets: Vec<Arc<ByteBucket>>,
    pub(crate) quota: Option<QuotaHandle>,
}

impl Admission {
    /// An admission with no limits at all (unlimited routes, unknown tenants).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// `RateLimit-Limit`/`-Remaining`/`-Reset` for a successful response, from the request-rate
    /// limit with the least room left. Best effort: `limit` is the burst size, `remaining` how
    /// many requests could be sent at once right now (in shared mode, as Redis saw it), `reset`
    /// the time until the full burst is back. Empty when no request rate applies.
    pub fn rate_limit_headers(&self) -> HeaderMap {
        self.rate.map(|r| r.headers()).unwrap_or_default()
    }

    /// The request-rate state behind [`Admission::rate_limit_headers`].
    pub fn rate_info(&self) -> Option<RateInfo> {
        self.rate
    }

    /// Counts bytes sent outside a [`crate::ThrottledBody`] towards the daily quota.
    pub fn record_bytes(&self, n: u64) {
        if let Some(quota) = &self.quota {
            quota.record(n);
        }
    }

    /// Whether the body [`Admission::throttle`] wraps counts towards a daily quota (else the bytes of the
    /// answer are the caller's to report, with [`crate::Limiter::record_sent`]).
    pub fn counts_quota(&self) -> bool {
        self.quota.is_some()
    }

    /// Wraps a response body so it is throttled, counted, and releases this admission at its end.
    pub fn throttle<B>(self, body: B) -> crate::ThrottledBody<B> {
        crate::ThrottledBody::new(body, self)
    }

    pub(crate) fn buckets(&self) -> &[Arc<ByteBucket>] {
        &self.buckets
    }

    pub(crate) fn quota_handle(&self) -> Option<QuotaHandle> {
        self.quota.clone()
    }
}

/// One in-flight slot; given back on drop.
#[derive(Debug)]
pub(crate) struct LocalPermit(pub(crate) Arc<AtomicU32>);

impl LocalPermit {
    pub(crate) fn try_acquire(counter: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter.clone()))
    }
}

impl Drop for LocalPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
