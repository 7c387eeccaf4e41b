//! The per-configuration limiter state: GCRA limiters, concurrency counters and bandwidth buckets per
//! tenant, user and anonymous IP, and how idle keys are evicted.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::admission::LocalPermit;
use crate::bandwidth::ByteBucket;
use crate::clock::TimeSource;
use crate::decision::LimitScope;
use crate::quota::DailyQuota;
use crate::script::RateArgs;
use crate::spec::{AnonymousLimits, TenantLimits};
use crate::subject::UserKey;

type KeyedLimiter<K> = RateLimiter<K, DashMapStateStore<K>, TimeSource, StateInformationMiddleware>;
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TimeSource, StateInformationMiddleware>;

/// A GCRA limiter with what the headers need to know about it.
pub(crate) struct Rate<L> {
    pub(crate) limiter: L,
    pub(crate) rps: NonZeroU32,
    pub(crate) burst: NonZeroU32,
}

impl<L> Rate<L> {
    pub(crate) fn args(&self, key: String, scope: LimitScope) -> RateArgs {
        RateArgs {
            key,
            interval: Duration::from_secs(1) / self.rps.get(),
            burst: self.burst.get(),
            scope,
        }
    }
}

pub(crate) fn quota(rps: NonZeroU32, burst: NonZeroU32) -> Quota {
    Quota::per_second(rps).allow_burst(burst)
}

pub(crate) fn keyed<K: std::hash::Hash + Eq + Clone>(
    rps: Option<NonZeroU32>,
    burst: Option<NonZeroU32>,
    clock: &TimeSource,
) -> Option<Rate<KeyedLimiter<K>>> {
    let rps = rps?;
    let burst = burst.unwrap_or(rps);
    let limiter = RateLimiter::dashmap_with_clock(quota(rps, burst), clock.clone())
        .with_middleware::<StateInformationMiddleware>();
    Some(Rate {
        limiter,
        rps,
        burst,
    })
}

/// Counters per key, evicted when idle.
pub(crate) struct ConcurrencyMap<K: std::hash::Hash + Eq> {
    pub(crate) max: u32,
    pub(crate) counters: DashMap<K, Arc<AtomicU32>>,
}

impl<K: std::hash::Hash + Eq + Clone> ConcurrencyMap<K> {
    pub(crate) fn acquire(&self, key: &K) -> Option<LocalPermit> {
        // Cloned under the shard lock: eviction (also under that lock) sees the extra reference.
        let counter = self.counters.entry(key.clone()).or_default().clone();
        LocalPermit::try_acquire(&counter, self.max)
    }

    pub(crate) fn evict_idle(&self) {
        self.counters
            .retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Acquire) > 0);
        self.counters.shrink_to_fit();
    }
}

/// Bandwidth buckets per key, evicted when full and unused.
pub(crate) struct BucketMap<K: std::hash::Hash + Eq> {
    pub(crate) rate: u64,
    pub(crate) buckets: DashMap<K, Arc<ByteBucket>>,
}

impl<K: std::hash::Hash + Eq + Clone> BucketMap<K> {
    pub(crate) fn new(rate: Option<NonZeroU64>) -> Option<Self> {
        rate.map(|rate| Self {
            rate: rate.get(),
            buckets: DashMap::new(),
        })
    }

    pub(crate) fn get(&self, key: &K) -> Arc<ByteBucket> {
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| Arc::new(ByteBucket::new(self.rate)))
            .clone()
    }

    pub(crate) fn evict_idle(&self) {
        // Only full buckets go: dropping one in debt would let a client reset its rate.
        self.buckets
            .retain(|_, b| Arc::strong_count(b) > 1 || !b.is_full());
        self.buckets.shrink_to_fit();
    }
}

pub(crate) struct TenantState {
    pub(crate) name: Arc<str>,
    pub(crate) users_rate: Option<Rate<KeyedLimiter<UserKey>>>,
    pub(crate) total_rate: Option<Rate<DirectLimiter>>,
    pub(crate) users_inflight: Option<ConcurrencyMap<UserKey>>,
    pub(crate) total_inflight: Option<(u32, Arc<AtomicU32>)>,
    pub(crate) users_bytes: Option<BucketMap<UserKey>>,
    pub(crate) total_bytes: Option<Arc<ByteBucket>>,
    pub(crate) quota: Option<Arc<DailyQuota>>,
}

impl TenantState {
    pub(crate) fn new(
        name: Arc<str>,
        spec: &TenantLimits,
        clock: &TimeSource,
        shared: bool,
    ) -> Self {
        let total_rate = spec.tenant_requests_per_second.map(|rps| {
            let burst = spec.burst.map_or(rps, |b| b.max(rps));
            let limiter = RateLimiter::direct_with_clock(quota(rps, burst), clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            Rate {
                limiter,
                rps,
                burst,
            }
        });
        Self {
            users_rate: keyed(spec.requests_per_second, spec.burst, clock),
            total_rate,
            users_inflight: spec.concurrent_requests.map(|max| ConcurrencyMap {
                max: max.get(),
                counters: DashMap::new(),
            }),
            total_inflight: spec
                .tenant_concurrent_requests
                .map(|max| (max.get(), Arc::default())),
            users_bytes: BucketMap::new(spec.bytes_per_second),
            total_bytes: spec
                .tenant_bytes_per_second
                .map(|rate| Arc::new(ByteBucket::new(rate.get()))),
            quota: spec.bytes_per_day.map(|limit| {
                Arc::new(DailyQuota {
                    limit: limit.get(),
                    clock: clock.clone(),
                    today: Mutex::new((clock.utc_day(), 0)),
                    unflushed: AtomicU64::new(0),
                    shared,
                })
            }),
            name,
        }
    }
}

pub(crate) struct AnonState {
    pub(crate) ip_rate: Option<Rate<KeyedLimiter<IpAddr>>>,
    pub(crate) ip_inflight: Option<ConcurrencyMap<IpAddr>>,
    pub(crate) ip_bytes: Option<BucketMap<IpAddr>>,
}

impl AnonState {
    pub(crate) fn new(spec: &AnonymousLimits, clock: &TimeSource) -> Self {
        Self {
            ip_rate: keyed(spec.requests_per_second, spec.burst, clock),
            ip_inflight: spec.concurrent_requests.map(|max| ConcurrencyMap {
                max: max.get(),
                counters: DashMap::new(),
            }),
            ip_bytes: BucketMap::new(spec.bytes_per_second),
        }
    }
}
