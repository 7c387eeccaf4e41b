//! Shared mode: limits enforced together by all replicas through Redis.
//!
//! - Request rate: GCRA, the same algorithm as the local limiters, in one Lua script that checks
//!   the user (or IP) and tenant limits, the concurrency caps and the daily quota and commits all
//!   of them only if every one passes. Time comes from Redis (`TIME`), so replicas' clocks do not
//!   need to agree.
//! - Concurrency: a sorted set of permits per key scored by lease expiry. Live permits are
//!   renewed every 10 s; a crashed replica's permits expire after at most 30 s.
//! - Daily quota: `INCRBY` on a per-day key that expires after the day. Bytes are counted locally
//!   and flushed every 250 ms, so the quota can be overshot by what all replicas send in 250 ms
//!   (plus, as in local mode, whatever responses already admitted send afterwards: the quota
//!   refuses new requests, it never cuts a body).
//! - Redis unreachable: every call has a short timeout (50 ms by default). The first failure
//!   opens a circuit: requests stop calling Redis and use the local limits only (`fail_open`) or
//!   are refused, until a background probe (every 250 ms) gets an answer again. Transitions are
//!   logged once each way. While open, each replica enforces the full limit on its own, so the
//!   total can reach N times the limit.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::clock::TimeSource;
use crate::decision::{LimitKind, Limited, RateInfo};
use crate::quota::DailyQuota;
use crate::script::{AdmitCall, AdmitReply, SharedRequest, Verdict, ADMIT_LUA};
use crate::spec::SharedSpec;
use crate::LimitsError;

/// A permit not renewed for this long is considered dead (its replica is gone).
const LEASE: Duration = Duration::from_secs(30);
/// How often live permits are renewed; a third of the lease survives two missed renewals.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Background tick: quota flush and health probe period.
const TICK: Duration = Duration::from_millis(250);
/// A concurrency refusal has no exact retry time; one second is a polite back-off.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);
/// Background calls (connect, probe, flush, renew) may take longer than request-path calls.
const BACKGROUND_TIMEOUT: Duration = Duration::from_millis(500);

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// Pushes the lease of one permit forward in each of its sets (only if it is still there).
const RENEW_LUA: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now_ms + lease, ARGV[1])
  redis.call('PEXPIRE', key, lease * 2)
end
return 1
"#;

/// Why Redis did not admit a request.
#[derive(Debug)]
pub(crate) enum AdmitError {
    Limited(Limited),
    Unreachable,
}

/// Redis connection, health and background work of shared mode.
pub(crate) struct Shared {
    spec: SharedSpec,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    health: AtomicU8,
    admit: Script,
    renew: Script,
    /// Live permits: member id → the lease sets it is in.
    live: DashMap<String, Vec<String>>,
    replica: String,
    next_permit: AtomicU64,
    quotas: Vec<(Arc<str>, Arc<DailyQuota>)>,
    clock: TimeSource,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("Shared")
            .field("healthy", &self.healthy())
            .finish()
    }
}

impl Shared {
    /// Parses the URL and spawns the background task; connecting happens there, so a Redis that
    /// is down at start-up does not stop the gateway.
    pub(crate) fn start(
        spec: SharedSpec,
        quotas: Vec<(Arc<str>, Arc<DailyQuota>)>,
        clock: TimeSource,
    ) -> Result<Arc<Self>, LimitsError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|source| LimitsError::NoRuntime { source })?;
        let client = redis::Client::open(spec.redis_url.as_str())
            .map_err(|source| LimitsError::RedisUrl { source })?;
        let since_epoch = clock.unix_now().as_nanos();
        let shared = Arc::new(Self {
            spec,
            client,
            conn: Mutex::new(None),
            health: AtomicU8::new(UNKNOWN),
            admit: Script::new(ADMIT_LUA),
            renew: Script::new(RENEW_LUA),
            live: DashMap::new(),
            replica: format!("{}-{since_epoch:x}", std::process::id()),
            next_permit: AtomicU64::new(0),
            quotas,
            clock,
        });
        runtime.spawn(background(Arc::downgrade(&shared)));
        Ok(shared)
    }

    pub(crate) fn healthy(&self) -> bool {
        self.health.load(Ordering::Acquire) == UP
    }

    pub(crate) fn fail_open(&self) -> bool {
        self.spec.fail_open
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.spec.key_prefix)
    }

    fn connection(&self) -> Option<ConnectionManager> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_health(&self, up: bool, error: Option<&redis::RedisError>) {
        let new = if up { UP } else { DOWN };
        if self.health.swap(new, Ordering::AcqRel) == new {
            return;
        }
        if up {
            tracing::info!(
                "redis for shared limits is reachable; limits are shared across replicas"
            );
        } else if self.spec.fail_open {
            tracing::warn!(
                error = error.map(tracing::field::display),
                "redis for shared limits is unreachable; serving with per-replica limits"
            );
        } else {
            tracing::warn!(
                error = error.map(tracing::field::display),
                "redis for shared limits is unreachable; refusing limited requests (fail_open = false)"
            );
        }
    }

    /// One atomic decision in Redis for `request`.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        request: SharedRequest,
    ) -> Result<(Option<SharedPermit>, Option<RateInfo>), AdmitError> {
        if !self.healthy() {
            return Err(AdmitError::Unreachable);
        }
        let Some(mut conn) = self.connection() else {
            return Err(AdmitError::Unreachable);
        };
        let member = format!(
            "{}:{}",
            self.replica,
            self.next_permit.fetch_add(1, Ordering::Relaxed)
        );
        let call = AdmitCall {
            request: &request,
            key_prefix: &self.spec.key_prefix,
            member: &member,
            lease: LEASE,
        };
        let invocation = call.invocation(&self.admit);
        let reply: Vec<i64> =
            match tokio::time::timeout(self.spec.timeout, invocation.invoke_async(&mut conn)).await
            {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    self.set_health(false, Some(&e));
                    return Err(AdmitError::Unreachable);
                }
                Err(_elapsed) => {
                    self.set_health(false, None);
                    return Err(AdmitError::Unreachable);
                }
            };
        let Some(reply) = AdmitReply::parse(&reply) else {
            tracing::warn!(?reply, "unexpected reply from the shared-limits script");
            return Err(AdmitError::Unreachable);
        };
        let limited = |kind, retry_after| {
            Err(AdmitError::Limited(Limited {
                kind,
                scope: reply.scope,
                retry_after,
                limit: reply.limit,
                remaining: 0,
                reset: retry_after,
            }))
        };
        match reply.verdict {
            Verdict::Admitted => {
                let keys = call.inflight_keys();
                let permit = (!keys.is_empty()).then(|| {
                    self.live.insert(member.clone(), keys.clone());
                    SharedPermit {
                        shared: self.clone(),
                        member,
                        keys,
                    }
                });
                let rate = (reply.limit > 0).then_some(RateInfo {
                    limit: reply.limit,
                    remaining: reply.remaining,
                    reset: reply.wait,
                });
                Ok((permit, rate))
            }
            Verdict::RateLimited => limited(LimitKind::RequestRate, reply.wait),
            Verdict::ConcurrencyLimited => limited(LimitKind::Concurrency, CONCURRENCY_RETRY),
            Verdict::QuotaUsed => limited(
                LimitKind::Quota,
                request
                    .quota
                    .as_ref()
                    .map_or(Duration::ZERO, |q| q.until_midnight),
            ),
        }
    }

    async fn release(&self, member: String, keys: Vec<String>) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.zrem(key, &member).ignore();
        }
        // On failure the lease expires on its own.
        let _ = tokio::time::timeout(BACKGROUND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
    }

    /// Connects if needed and checks that Redis answers.
    async fn probe(&self) {
        let conn = match self.connection() {
            Some(conn) => conn,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(BACKGROUND_TIMEOUT)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                let connect = ConnectionManager::new_with_config(self.client.clone(), config);
                match tokio::time::timeout(BACKGROUND_TIMEOUT * 2, connect).await {
                    Ok(Ok(conn)) => {
                        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                        conn
                    }
                    Ok(Err(e)) => return self.set_health(false, Some(&e)),
                    Err(_elapsed) => return self.set_health(false, None),
                }
            }
        };
        let mut conn = conn;
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(BACKGROUND_TIMEOUT, ping).await {
            Ok(Ok(_)) => self.set_health(true, None),
            Ok(Err(e)) => self.set_health(false, Some(&e)),
            Err(_elapsed) => self.set_health(false, None),
        }
    }

    /// Sends bytes counted since the last flush; on failure they are kept for the next one.
    async fn flush_quotas(&self) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let day = self.clock.utc_day();
        let expire_at = (day + 2) * 86_400;
        let mut pipe = redis::pipe();
        let mut taken = Vec::new();
        for (tenant, quota) in &self.quotas {
            let n = quota.unflushed.swap(0, Ordering::AcqRel);
            if n > 0 {
                let key = self.key(&format!("quota:{tenant}:{day}"));
                pipe.incr(&key, n)
                    .ignore()
                    .expire_at(&key, expire_at as i64)
                    .ignore();
                taken.push((quota, n));
            }
        }
        if taken.is_empty() {
            return;
        }
        let sent =
            tokio::time::timeout(BACKGROUND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            for (quota, n) in taken {
                quota.unflushed.fetch_add(n, Ordering::AcqRel);
            }
        }
    }

    async fn renew_leases(&self) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let live: Vec<(String, Vec<String>)> = self
            .live
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let lease = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
        for (member, keys) in live {
            let mut invocation = self.renew.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(member).arg(lease);
            let renewed = invocation.invoke_async::<i64>(&mut conn);
            if tokio::time::timeout(BACKGROUND_TIMEOUT, renewed)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Probes, flushes and renews until the limiter is dropped.
async fn background(weak: Weak<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renew_every = (RENEW_EVERY.as_millis() / TICK.as_millis()).max(1) as u64;
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else { return };
        n += 1;
        // Probe on every tick while down (to notice recovery quickly), every second while up.
        if !shared.healthy() || n % 4 == 0 {
            shared.probe().await;
        }
        if shared.healthy() {
            shared.flush_quotas().await;
            if n % renew_every == 0 {
                shared.renew_leases().await;
            }
        }
    }
}

/// A concurrency slot held in Redis; removed on drop (or expired by its lease).
pub(crate) struct SharedPermit {
    shared: Arc<Shared>,
    member: String,
    keys: Vec<String>,
}

impl std::fmt::Debug for SharedPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPermit")
            .field("member", &self.member)
            .finish()
    }
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        self.shared.live.remove(&self.member);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let member = std::mem::take(&mut self.member);
            let keys = std::mem::take(&mut self.keys);
            runtime.spawn(async move { shared.release(member, keys).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::num::NonZeroU32;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::{LimitScope, Limiter, LimitsSpec, Subject, TenantLimits};

    const REDIS_SERVER: &str = "/usr/bin/redis-server";

    /// A private redis-server on a unix socket, killed on drop.
    struct RedisProcess {
        child: Child,
        socket: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl RedisProcess {
        fn start() -> Self {
            assert!(
                Path::new(REDIS_SERVER).exists(),
                "{REDIS_SERVER} is missing: shared-mode tests need it (apt-get install redis-server)"
            );
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("r.sock");
            let child = Command::new(REDIS_SERVER)
                .args(["--port", "0", "--save", "", "--appendonly", "no"])
                .arg("--unixsocket")
                .arg(&socket)
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !socket.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Self {
                child,
                socket,
                _dir: dir,
            }
        }

        fn url(&self) -> String {
            format!("redis+unix://{}", self.socket.display())
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RedisProcess {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn replica(url: &str, fail_open: bool, limits: TenantLimits) -> Limiter {
        let mut tenants = HashMap::new();
        tenants.insert(Arc::from("acme"), limits);
        let shared = SharedSpec {
            fail_open,
            ..SharedSpec::new(url)
        };
        Limiter::new(LimitsSpec {
            tenants,
            shared: Some(shared),
            ..LimitsSpec::default()
        })
        .unwrap()
    }

    async fn wait_health(limiters: &[&Limiter], healthy: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !limiters.iter().all(|l| l.redis_healthy() == healthy) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis health never became {healthy}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn user(name: &str) -> Subject {
        Subject::tenant("acme", Some(name), IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    // Pins: two replicas hold a tenant to its combined rate (±20 %), and keep serving, reporting
    // unhealthy, once Redis is killed (fail open).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_tenant_rate_and_fail_open() {
        let mut redis = RedisProcess::start();
        let limits = TenantLimits {
            tenant_requests_per_second: NonZeroU32::new(20),
            ..TenantLimits::default()
        };
        let (a, b) = (
            replica(&redis.url(), true, limits.clone()),
            replica(&redis.url(), true, limits),
        );
        wait_health(&[&a, &b], true).await;

        let start = tokio::time::Instant::now();
        let window = Duration::from_millis(1500);
        let (mut admitted, mut offered, mut n) = (0u32, 0u32, 0u32);
        while start.elapsed() < window {
            for limiter in [&a, &b] {
                n += 1;
                offered += 1;
                match limiter.check(&user(&format!("u{n}"))).await {
                    Ok(_) => admitted += 1,
                    Err(limited) => {
                        assert_eq!(limited.kind, LimitKind::RequestRate);
                        assert_eq!(limited.scope, LimitScope::Tenant);
                        assert!(limited.retry_after <= Duration::from_millis(50));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        // Burst 20 plus 20/s; each replica alone would admit that much again.
        let expected = 20.0 + 20.0 * elapsed;
        let got = f64::from(admitted);
        assert!(
            offered > 2 * admitted,
            "the test did not push past the limit"
        );
        assert!(
            (expected * 0.8..=expected * 1.2).contains(&got),
            "admitted {got}, expected about {expected:.0}"
        );

        redis.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
        for limiter in [&a, &b] {
            for i in 0..2 {
                limiter.check(&user(&format!("after{i}"))).await.unwrap();
            }
        }
        wait_health(&[&a, &b], false).await;
    }

    // Pins: a concurrency slot taken on one replica is seen by the other and comes back on drop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_concurrency_released_on_drop() {
        let redis = RedisProcess::start();
        let limits = TenantLimits {
            concurrent_requests: NonZeroU32::new(1),
            ..TenantLimits::default()
        };
        let (a, b) = (
            replica(&redis.url(), true, limits.clone()),
            replica(&redis.url(), true, limits),
        );
        wait_health(&[&a, &b], true).await;
        let held = a.check(&user("alice")).await.unwrap();
        let refused = b.check(&user("alice")).await.unwrap_err();
        assert_eq!(
            (refused.kind, refused.scope),
            (LimitKind::Concurrency, LimitScope::User)
        );
        b.check(&user("bob")).await.unwrap();
        drop(held);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while b.check(&user("alice")).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "permit never released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Pins: bytes sent through one replica count towards the quota another replica enforces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_daily_quota() {
        let redis = RedisProcess::start();
        let limits = TenantLimits {
            bytes_per_day: std::num::NonZeroU64::new(1000),
            ..TenantLimits::default()
        };
        let (a, b) = (
            replica(&redis.url(), true, limits.clone()),
            replica(&redis.url(), true, limits),
        );
        wait_health(&[&a, &b], true).await;
        a.check(&user("alice")).await.unwrap().record_bytes(1000);
        // Flushed within one 250 ms tick.
        tokio::time::sleep(TICK * 3).await;
        let refused = b.check(&user("bob")).await.unwrap_err();
        assert_eq!(refused.kind, LimitKind::Quota);
        assert!(refused.retry_after <= Duration::from_secs(86_400));
        assert_eq!(b.quota_used_today("acme"), Some(0), "b itself sent nothing");
    }

    // Pins: fail_open = false refuses limited requests while Redis is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_closed_refuses_without_redis() {
        let mut redis = RedisProcess::start();
        let limits = TenantLimits {
            requests_per_second: NonZeroU32::new(100),
            ..TenantLimits::default()
        };
        let a = replica(&redis.url(), false, limits);
        wait_health(&[&a], true).await;
        a.check(&user("alice")).await.unwrap();
        redis.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match a.check(&user("alice")).await {
                Err(limited) => {
                    assert_eq!(limited.kind, LimitKind::Unavailable);
                    break;
                }
                Ok(_) => assert!(tokio::time::Instant::now() < deadline, "still admitting"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!a.redis_healthy());
    }

    // Pins: shared mode needs a runtime for its background task, and says so instead of panicking.
    #[test]
    fn shared_mode_outside_runtime_is_an_error() {
        let spec = LimitsSpec {
            shared: Some(SharedSpec::new("redis://127.0.0.1:1")),
            ..LimitsSpec::default()
        };
        assert!(matches!(
            Limiter::new(spec),
            Err(LimitsError::NoRuntime { .. })
        ));
    }
}
