//! The admission decision: request rate, concurrency and daily quota for one request.
//!
//! Order of checks, cheapest and reversible first: daily quota (read only), concurrency (a
//! permit that is given back if a later check refuses), then request rates per user (or IP) and
//! per tenant (GCRA through governor; a token taken from the user limiter is not given back when
//! the tenant limiter refuses, which errs on the strict side). In shared mode the same decision is
//! then taken once more, atomically, in Redis.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateSnapshot;
use governor::nanos::Nanos;
use governor::NotUntil;

use crate::admission::{Admission, LocalPermit};
use crate::clock::TimeSource;
use crate::decision::{LimitKind, LimitScope, Limited, RateInfo};
use crate::quota::QuotaHandle;
use crate::script::{InflightArgs, QuotaArgs, SharedRequest};
use crate::shared::{AdmitError, Shared};
use crate::spec::LimitsSpec;
use crate::state::{AnonState, TenantState};
use crate::subject::{Subject, SubjectClass, UserKey};
use crate::LimitsError;

/// Housekeeping (evicting idle keys) runs inline every this many checks, so memory stays bounded
/// even when nobody calls [`Limiter::housekeep`] (the binary calls it on a timer and exports the key counts).
const HOUSEKEEP_EVERY: u64 = 8192;

/// A concurrency refusal has no exact retry time; one second is a polite back-off.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// How many keys the limiter holds, for metrics and for checking that eviction works.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    /// Per-user request-rate states, over all tenants.
    pub user_rate: usize,
    /// Per-IP request-rate states of anonymous clients.
    pub ip_rate: usize,
    /// Per-user concurrency counters.
    pub concurrency: usize,
    /// Per-user and per-IP bandwidth buckets.
    pub byte_buckets: usize,
}

/// Request rates, concurrency caps, bandwidth buckets and daily quotas for every tenant, user and
/// anonymous IP. Build once per configuration and share as `Arc<Limiter>`.
pub struct Limiter {
    clock: TimeSource,
    tenants: HashMap<Arc<str>, TenantState>,
    anonymous: AnonState,
    checks: AtomicU64,
    housekeeping: AtomicBool,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("tenants", &self.tenants.len())
            .field("shared", &self.shared.is_some())
            .field("keys", &self.key_counts())
            .finish()
    }
}

impl Limiter {
    /// Limits on the machine's clocks. With `spec.shared` set this must run inside a tokio
    /// runtime: it spawns the task that connects to Redis, probes it, renews concurrency leases
    /// and flushes byte counts.
    pub fn new(spec: LimitsSpec) -> Result<Self, LimitsError> {
        Self::with_clock(spec, TimeSource::system())
    }

    /// Limits on a given clock (tests move a manual clock across midnight).
    pub fn with_clock(spec: LimitsSpec, clock: TimeSource) -> Result<Self, LimitsError> {
        let shared_mode = spec.shared.is_some();
        let tenants: HashMap<Arc<str>, TenantState> = spec
            .tenants
            .iter()
            .map(|(name, limits)| {
                (
                    name.clone(),
                    TenantState::new(name.clone(), limits, &clock, shared_mode),
                )
            })
            .collect();
        let shared = match spec.shared {
            Some(shared_spec) => {
                let quotas = tenants
                    .values()
                    .filter_map(|t| t.quota.clone().map(|q| (t.name.clone(), q)))
                    .collect();
                Some(Shared::start(shared_spec, quotas, clock.clone())?)
            }
            None => None,
        };
        Ok(Self {
            anonymous: AnonState::new(&spec.anonymous, &clock),
            clock,
            tenants,
            checks: AtomicU64::new(0),
            housekeeping: AtomicBool::new(false),
            shared,
        })
    }

    /// Decides whether `subject` may send a request now: local limits first (cheap, and they
    /// refuse most floods without a Redis round trip), then, in shared mode, the limits all
    /// replicas share.
    pub async fn check(&self, subject: &Subject) -> Result<Admission, Limited> {
        let mut admission = self.check_local(subject)?;
        let Some(shared) = &self.shared else {
            return Ok(admission);
        };
        let Some(request) = self.shared_request(subject) else {
            return Ok(admission);
        };
        match shared.admit(request).await {
            Ok((permit, rate)) => {
                admission.shared_permit = permit;
                if rate.is_some() {
                    admission.rate = rate;
                }
                Ok(admission)
            }
            Err(AdmitError::Limited(limited)) => Err(limited),
            Err(AdmitError::Unreachable) if shared.fail_open() => Ok(admission),
            Err(AdmitError::Unreachable) => Err(Limited {
                kind: LimitKind::Unavailable,
                scope: scope_of(subject),
                retry_after: Duration::from_secs(1),
                limit: 0,
                remaining: 0,
                reset: Duration::from_secs(1),
            }),
        }
    }

    /// The local (this replica only) decision, without Redis. [`Limiter::check`] is this plus
    /// shared mode; call this directly only where no runtime is available.
    pub fn check_local(&self, subject: &Subject) -> Result<Admission, Limited> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % HOUSEKEEP_EVERY == HOUSEKEEP_EVERY - 1 {
            self.housekeep();
        }
        match &subject.class {
            SubjectClass::Anonymous => self.check_anonymous(subject.ip),
            SubjectClass::Tenant(name) => match self.tenants.get(name) {
                Some(tenant) => self.check_tenant(tenant, subject),
                None => {
                    tracing::debug!(tenant = %name, "no limits configured for tenant");
                    Ok(Admission::unlimited())
                }
            },
        }
    }

    fn check_anonymous(&self, ip: IpAddr) -> Result<Admission, Limited> {
        let mut admission = Admission::default();
        if let Some(inflight) = &self.anonymous.ip_inflight {
            let permit = inflight
                .acquire(&ip)
                .ok_or_else(|| concurrency_limited(LimitScope::Ip, inflight.max))?;
            admission.permits.push(permit);
        }
        if let Some(rate) = &self.anonymous.ip_rate {
            admission.rate = Some(self.outcome(rate.limiter.check_key(&ip), LimitScope::Ip)?);
        }
        if let Some(bytes) = &self.anonymous.ip_bytes {
            admission.buckets.push(bytes.get(&ip));
        }
        Ok(admission)
    }

    fn check_tenant(&self, tenant: &TenantState, subject: &Subject) -> Result<Admission, Limited> {
        let user = UserKey::of(subject);
        let mut admission = Admission::default();
        if let Some(quota) = &tenant.quota {
            quota.check()?;
            admission.quota = Some(QuotaHandle(quota.clone()));
        }
        if let Some(inflight) = &tenant.users_inflight {
            let permit = inflight
                .acquire(&user)
                .ok_or_else(|| concurrency_limited(LimitScope::User, inflight.max))?;
            admission.permits.push(permit);
        }
        if let Some((max, counter)) = &tenant.total_inflight {
            let permit = LocalPermit::try_acquire(counter, *max)
                .ok_or_else(|| concurrency_limited(LimitScope::Tenant, *max))?;
            admission.permits.push(permit);
        }
        let mut rate = None;
        if let Some(users) = &tenant.users_rate {
            rate = Some(self.outcome(users.limiter.check_key(&user), LimitScope::User)?);
        }
        if let Some(total) = &tenant.total_rate {
            let info = self.outcome(total.limiter.check(), LimitScope::Tenant)?;
            rate = RateInfo::tighter(rate, Some(info));
        }
        admission.rate = rate;
        if let Some(bytes) = &tenant.users_bytes {
            admission.buckets.push(bytes.get(&user));
        }
        if let Some(bucket) = &tenant.total_bytes {
            admission.buckets.push(bucket.clone());
        }
        Ok(admission)
    }

    fn outcome(
        &self,
        result: Result<StateSnapshot, NotUntil<Nanos>>,
        scope: LimitScope,
    ) -> Result<RateInfo, Limited> {
        match result {
            Ok(snapshot) => {
                let quota = snapshot.quota();
                let burst = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                Ok(RateInfo {
                    limit: u64::from(burst),
                    remaining: u64::from(remaining),
                    reset: quota.replenish_interval() * burst.saturating_sub(remaining),
                })
            }
            Err(not_until) => {
                let quota = not_until.quota();
                let burst = quota.burst_size().get();
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Limited {
                    kind: LimitKind::RequestRate,
                    scope,
                    retry_after: wait,
                    limit: u64::from(burst),
                    remaining: 0,
                    reset: wait + quota.replenish_interval() * (burst - 1),
                })
            }
        }
    }

    /// What Redis must decide for `subject`, or `None` when nothing shared applies.
    fn shared_request(&self, subject: &Subject) -> Option<SharedRequest> {
        let mut request = SharedRequest::default();
        match &subject.class {
            SubjectClass::Anonymous => {
                let ip = subject.ip;
                request.first_rate = (self.anonymous.ip_rate.as_ref())
                    .map(|r| r.args(format!("rate:ip:{ip}"), LimitScope::Ip));
                request.first_inflight =
                    (self.anonymous.ip_inflight.as_ref()).map(|c| InflightArgs {
                        key: format!("conc:ip:{ip}"),
                        max: c.max,
                        scope: LimitScope::Ip,
                    });
            }
            SubjectClass::Tenant(name) => {
                let tenant = self.tenants.get(name)?;
                let user = UserKey::of(subject).redis_part();
                request.first_rate = tenant
                    .users_rate
                    .as_ref()
                    .map(|r| r.args(format!("rate:{name}:{user}"), LimitScope::User));
                request.tenant_rate = tenant
                    .total_rate
                    .as_ref()
                    .map(|r| r.args(format!("rate:{name}"), LimitScope::Tenant));
                request.first_inflight = tenant.users_inflight.as_ref().map(|c| InflightArgs {
                    key: format!("conc:{name}:{user}"),
                    max: c.max,
                    scope: LimitScope::User,
                });
                request.tenant_inflight =
                    tenant.total_inflight.as_ref().map(|(max, _)| InflightArgs {
                        key: format!("conc:{name}"),
                        max: *max,
                        scope: LimitScope::Tenant,
                    });
                request.quota = tenant.quota.as_ref().map(|q| QuotaArgs {
                    key: format!("quota:{name}:{}", self.clock.utc_day()),
                    limit: q.limit(),
                    unflushed: q.unflushed.load(Ordering::Relaxed),
                    until_midnight: self.clock.until_utc_midnight(),
                });
            }
        }
        (!request.is_empty()).then_some(request)
    }

    /// Evicts keys whose state equals a fresh one (rate limiters past their burst window, idle
    /// concurrency counters, full and unused bandwidth buckets) and gives the memory back. Runs
    /// inline every 8192 checks; the binary also runs it on a timer, with the current limiter of each reload.
    pub fn housekeep(&self) {
        if self.housekeeping.swap(true, Ordering::AcqRel) {
            return; // another thread is at it
        }
        for tenant in self.tenants.values() {
            if let Some(rate) = &tenant.users_rate {
                rate.limiter.retain_recent();
                rate.limiter.shrink_to_fit();
            }
            if let Some(inflight) = &tenant.users_inflight {
                inflight.evict_idle();
            }
            if let Some(bytes) = &tenant.users_bytes {
                bytes.evict_idle();
            }
        }
        if let Some(rate) = &self.anonymous.ip_rate {
            rate.limiter.retain_recent();
            rate.limiter.shrink_to_fit();
        }
        if let Some(inflight) = &self.anonymous.ip_inflight {
            inflight.evict_idle();
        }
        if let Some(bytes) = &self.anonymous.ip_bytes {
            bytes.evict_idle();
        }
        self.housekeeping.store(false, Ordering::Release);
    }

    /// Keys currently held, for metrics.
    pub fn key_counts(&self) -> KeyCounts {
        let mut counts = KeyCounts::default();
        for tenant in self.tenants.values() {
            counts.user_rate += tenant.users_rate.as_ref().map_or(0, |r| r.limiter.len());
            counts.concurrency += tenant
                .users_inflight
                .as_ref()
                .map_or(0, |c| c.counters.len());
            counts.byte_buckets += tenant.users_bytes.as_ref().map_or(0, |b| b.buckets.len());
        }
        counts.concurrency += self
            .anonymous
            .ip_inflight
            .as_ref()
            .map_or(0, |c| c.counters.len());
        counts.ip_rate = self
            .anonymous
            .ip_rate
            .as_ref()
            .map_or(0, |r| r.limiter.len());
        counts.byte_buckets += self
            .anonymous
            .ip_bytes
            .as_ref()
            .map_or(0, |b| b.buckets.len());
        counts
    }

    /// Bytes `tenant` sent today through this replica, or `None` without a daily quota.
    pub fn quota_used_today(&self, tenant: &str) -> Option<u64> {
        self.tenants.get(tenant)?.quota.as_ref().map(|q| q.used())
    }

    /// Starts `tenant`'s count of bytes sent today at (at least) `used`, as the usage ledger counted them
    /// before this limiter existed (a restart, or a reload that changed limits). In shared mode the count
    /// lives in Redis and survives restarts on its own; this only sets the replica's local view.
    pub fn seed_quota_used(&self, tenant: &str, used: u64) {
        if let Some(quota) = self.tenants.get(tenant).and_then(|t| t.quota.as_ref()) {
            quota.seed(used);
        }
    }

    /// Counts `bytes` sent to `tenant` outside an admitted, quota-counted body (refusals, errors before
    /// admission), so the quota counts every response byte the usage ledger counts.
    pub fn record_sent(&self, tenant: &str, bytes: u64) {
        if let Some(quota) = self.tenants.get(tenant).and_then(|t| t.quota.as_ref()) {
            quota.record(bytes);
        }
    }

    /// The tenants that have a daily byte quota.
    pub fn quota_tenants(&self) -> Vec<Arc<str>> {
        self.tenants
            .values()
            .filter(|t| t.quota.is_some())
            .map(|t| t.name.clone())
            .collect()
    }

    /// Whether shared mode is on.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether Redis answered the last call (for metrics and `/readyz`). Always `true` without
    /// shared mode: there is nothing to be unhealthy.
    pub fn redis_healthy(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.healthy())
    }
}

fn concurrency_limited(scope: LimitScope, max: u32) -> Limited {
    Limited {
        kind: LimitKind::Concurrency,
        scope,
        retry_after: CONCURRENCY_RETRY,
        limit: u64::from(max),
        remaining: 0,
        reset: CONCURRENCY_RETRY,
    }
}

fn scope_of(subject: &Subject) -> LimitScope {
    match subject.class {
        SubjectClass::Anonymous => LimitScope::Ip,
        SubjectClass::Tenant(_) => LimitScope::Tenant,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;
    use crate::spec::{AnonymousLimits, TenantLimits};

    const START: Duration = Duration::from_secs(19_723 * 86_400 + 12 * 3600); // a UTC noon

    fn nz(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn tenant_limiter(limits: TenantLimits, clock: &TimeSource) -> Limiter {
        let mut tenants = HashMap::new();
        tenants.insert(Arc::from("acme"), limits);
        Limiter::with_clock(
            LimitsSpec {
                tenants,
                ..LimitsSpec::default()
            },
            clock.clone(),
        )
        .unwrap()
    }

    fn alice() -> Subject {
        Subject::tenant("acme", Some("alice"), ip(1))
    }

    // Pins: a user gets exactly `burst` requests at once, then 429 with GCRA's exact wait.
    #[test]
    fn burst_then_limited_with_retry_after() {
        let clock = TimeSource::manual(START);
        let limits = TenantLimits {
            requests_per_second: nz(2),
            burst: nz(5),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        for _ in 0..5 {
            limiter.check_local(&alice()).unwrap();
        }
        let limited = limiter.check_local(&alice()).unwrap_err();
        assert_eq!(limited.kind, LimitKind::RequestRate);
        assert_eq!(limited.scope, LimitScope::User);
        assert_eq!(limited.retry_after, Duration::from_millis(500));
        assert_eq!(limited.limit, 5);
        assert_eq!(limited.headers()["retry-after"], "1");
        // Another user of the tenant is not affected.
        limiter
            .check_local(&Subject::tenant("acme", Some("bob"), ip(1)))
            .unwrap();
        clock.advance(Duration::from_millis(200));
        let limited = limiter.check_local(&alice()).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_millis(300));
        clock.advance(Duration::from_millis(300));
        limiter.check_local(&alice()).unwrap();
    }

    // Pins: the tenant total binds across users, reported with scope Tenant.
    #[test]
    fn tenant_total_rate_binds_across_users() {
        let clock = TimeSource::manual(START);
        let limits = TenantLimits {
            requests_per_second: nz(100),
            tenant_requests_per_second: nz(3),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        for n in 0..3 {
            limiter
                .check_local(&Subject::tenant("acme", Some(&format!("u{n}")), ip(1)))
                .unwrap();
        }
        let limited = limiter
            .check_local(&Subject::tenant("acme", Some("u9"), ip(1)))
            .unwrap_err();
        assert_eq!(
            (limited.kind, limited.scope),
            (LimitKind::RequestRate, LimitScope::Tenant)
        );
    }

    // Pins: successful responses get RateLimit-* headers from the tightest rate limit.
    #[test]
    fn admission_headers_report_remaining_burst() {
        let clock = TimeSource::manual(START);
        let limits = TenantLimits {
            requests_per_second: nz(10),
            burst: nz(4),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        let first = limiter.check_local(&alice()).unwrap();
        let h = first.rate_limit_headers();
        assert_eq!(h["ratelimit-limit"], "4");
        assert_eq!(h["ratelimit-remaining"], "3");
        assert_eq!(h["ratelimit-reset"], "1");
        let second = limiter.check_local(&alice()).unwrap();
        assert_eq!(second.rate_limit_headers()["ratelimit-remaining"], "2");
        assert!(Admission::unlimited().rate_limit_headers().is_empty());
    }

    // Pins: in-flight caps per user and per tenant; permits come back when the Admission drops.
    #[test]
    fn concurrency_released_on_drop() {
        let clock = TimeSource::manual(START);
        let limits = TenantLimits {
            concurrent_requests: nz(2),
            tenant_concurrent_requests: nz(3),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        let a = limiter.check_local(&alice()).unwrap();
        let b = limiter.check_local(&alice()).unwrap();
        let refused = limiter.check_local(&alice()).unwrap_err();
        assert_eq!(
            (refused.kind, refused.scope),
            (LimitKind::Concurrency, LimitScope::User)
        );
        assert_eq!(refused.limit, 2);
        let c = limiter
            .check_local(&Subject::tenant("acme", Some("bob"), ip(2)))
            .unwrap();
        let refused = limiter
            .check_local(&Subject::tenant("acme", Some("carol"), ip(3)))
            .unwrap_err();
        assert_eq!(refused.scope, LimitScope::Tenant);
        drop(a);
        // The user slot is back, and the refused user check did not leak a tenant slot.
        let d = limiter.check_local(&alice()).unwrap();
        drop((b, c, d));
        let all: Vec<_> = (0..2)
            .map(|_| limiter.check_local(&alice()).unwrap())
            .collect();
        assert_eq!(all.len(), 2);
    }

    // Pins: quota counts bytes sent, refuses until UTC midnight, and rolls over with the day.
    #[test]
    fn quota_exhausts_and_rolls_over_at_utc_midnight() {
        let clock = TimeSource::manual(Duration::from_secs(19_723 * 86_400 + 86_400 - 60));
        let limits = TenantLimits {
            bytes_per_day: NonZeroU64::new(1000),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        let admission = limiter.check_local(&alice()).unwrap();
        admission.record_bytes(999);
        limiter.check_local(&alice()).unwrap().record_bytes(1);
        assert_eq!(limiter.quota_used_today("acme"), Some(1000));
        let refused = limiter.check_local(&alice()).unwrap_err();
        assert_eq!(
            (refused.kind, refused.scope),
            (LimitKind::Quota, LimitScope::Tenant)
        );
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        assert_eq!(refused.headers()["retry-after"], "60");
        assert_eq!(refused.headers()["ratelimit-limit"], "1000");
        clock.advance(Duration::from_secs(59));
        assert!(limiter.check_local(&alice()).is_err());
        clock.advance(Duration::from_secs(1));
        limiter.check_local(&alice()).unwrap();
        assert_eq!(limiter.quota_used_today("acme"), Some(0));
    }

    // Pins: a seeded count (the ledger's bytes for today, after a restart) refuses like bytes sent by this
    // limiter, is never lowered by a smaller seed, and ignores tenants without a quota.
    #[test]
    fn seeded_quota_refuses_after_restart() {
        let clock = TimeSource::manual(START);
        let limits = TenantLimits {
            bytes_per_day: NonZeroU64::new(1000),
            ..TenantLimits::default()
        };
        let limiter = tenant_limiter(limits, &clock);
        limiter.seed_quota_used("acme", 999);
        limiter.seed_quota_used("nobody", 5000);
        limiter.check_local(&alice()).unwrap().record_bytes(1);
        limiter.seed_quota_used("acme", 10);
        assert_eq!(limiter.quota_used_today("acme"), Some(1000));
        let refused = limiter.check_local(&alice()).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Quota);
    }

    // Pins: keyed state is bounded: 100k anonymous IPs are evicted once their window passed.
    #[test]
    fn eviction_bounds_keys() {
        let clock = TimeSource::manual(START);
        let spec = LimitsSpec {
            anonymous: AnonymousLimits {
                requests_per_second: nz(10),
                burst: nz(20),
                bytes_per_second: NonZeroU64::new(1 << 20),
                concurrent_requests: None,
            },
            ..LimitsSpec::default()
        };
        let limiter = Limiter::with_clock(spec, clock.clone()).unwrap();
        for n in 0..100_000 {
            drop(limiter.check_local(&Subject::anonymous(ip(n))).unwrap());
        }
        // Inline housekeeping ran meanwhile, but nothing was old enough to go.
        assert_eq!(limiter.key_counts().ip_rate, 100_000);
        // One client stays active.
        let busy = Subject::anonymous(ip(7));
        clock.advance(Duration::from_secs(5));
        limiter.check_local(&busy).unwrap();
        limiter.housekeep();
        let counts = limiter.key_counts();
        assert_eq!(counts.ip_rate, 1);
        // No body ever reserved from the per-IP buckets: all full, unused, and evicted.
        assert_eq!(counts.byte_buckets, 0);
    }

    // Pins: anonymous limits are per source IP.
    #[test]
    fn anonymous_limits_are_per_ip() {
        let clock = TimeSource::manual(START);
        let spec = LimitsSpec {
            anonymous: AnonymousLimits {
                requests_per_second: nz(1),
                burst: nz(1),
                bytes_per_second: None,
                concurrent_requests: None,
            },
            ..LimitsSpec::default()
        };
        let limiter = Limiter::with_clock(spec, clock).unwrap();
        limiter.check_local(&Subject::anonymous(ip(1))).unwrap();
        let refused = limiter.check_local(&Subject::anonymous(ip(1))).unwrap_err();
        assert_eq!(refused.scope, LimitScope::Ip);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        limiter.check_local(&Subject::anonymous(ip(2))).unwrap();
    }

    // Pins `[limits] concurrent_requests`: each anonymous source IP holds at most that many requests in
    // flight (refused with scope `ip`), a finished request gives its slot back, and other IPs are unaffected.
    #[test]
    fn anonymous_concurrency_is_per_ip() {
        let spec = LimitsSpec {
            anonymous: AnonymousLimits {
                concurrent_requests: nz(2),
                ..AnonymousLimits::default()
            },
            ..LimitsSpec::default()
        };
        let limiter = Limiter::with_clock(spec, TimeSource::manual(START)).unwrap();
        let first = limiter.check_local(&Subject::anonymous(ip(1))).unwrap();
        let _second = limiter.check_local(&Subject::anonymous(ip(1))).unwrap();
        let refused = limiter.check_local(&Subject::anonymous(ip(1))).unwrap_err();
        assert_eq!(
            (refused.kind, refused.scope, refused.limit),
            (LimitKind::Concurrency, LimitScope::Ip, 2)
        );
        let _other = limiter.check_local(&Subject::anonymous(ip(2))).unwrap();
        drop(first);
        limiter.check_local(&Subject::anonymous(ip(1))).unwrap();
        assert_eq!(limiter.key_counts().concurrency, 2);
    }
}
