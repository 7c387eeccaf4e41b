//! Password checks against the htpasswd users: cache first, then throttles, then bcrypt on the
//! blocking pool behind a semaphore.
//!
//! bcrypt is CPU-bound for tens of milliseconds; run on the async workers it would stall every
//! connection on that worker. `spawn_blocking` moves it off them, and the semaphore (2 × cores by
//! default) caps how many run at once so a flood of bad passwords queues instead of taking every core.
//! The queue itself is capped too: past `max_waiting` the answer is 429 at once.
//!
//! Failures lock out a source (an address, or an IPv6 /64: one client holds a whole /64) and a *(user,
//! source)* pair, never a user name alone: ten wrong passwords for `alice` from one place must not lock
//! alice out everywhere (anyone could then lock out anyone, renewably). Across all sources a user's failures
//! only slow the next checks down by [`USER_SLOWDOWN`], which blunts guessing from many addresses without
//! refusing the real user.
//!
//! Concurrent checks of the *same* pair share one bcrypt run (single flight): a CI fleet whose cached
//! credential just expired, or a client opening 16 connections at once, would otherwise run bcrypt once per
//! request until the first result lands in the cache.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OnceCell, Semaphore};

use crate::cache::{CredentialCache, Fingerprint};
use crate::error::AuthError;
use crate::htpasswd::UserStore;
use crate::throttle::FailureThrottle;

/// Tuning for password checks. The defaults suit a gateway for a few thousand users.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    /// Verified credentials kept (default 10 000).
    pub cache_capacity: usize,
    /// How long a verified credential is trusted without bcrypt (default 5 min).
    pub cache_ttl: Duration,
    /// Failures within `failure_window` that trigger a lockout, per source (address or IPv6 /64) and per
    /// (user, source) (default 10). The same count for a user from all sources only slows it down.
    pub max_failures: u32,
    /// Window the failures are counted in (default 60 s).
    pub failure_window: Duration,
    /// How long a locked address or user is refused without running bcrypt (default 60 s).
    pub lockout: Duration,
    /// Concurrent bcrypt checks (default 2 × available cores).
    pub bcrypt_permits: usize,
    /// Checks allowed to wait for a permit before answering 429 (default 256).
    pub max_waiting: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        PasswordPolicy {
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(300),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
            bcrypt_permits: 2 * cores,
            max_waiting: 256,
        }
    }
}

/// Bound on the number of tracked addresses and user names in the failure throttles.
pub(crate) const THROTTLE_CAPACITY: usize = 100_000;

/// The delay added before bcrypt for a user with `max_failures` recent failures from anywhere: long enough to
/// cut a distributed guesser's rate per connection, short enough that the real user barely notices.
pub const USER_SLOWDOWN: Duration = Duration::from_secs(1);

/// The key a client's failures are counted under: its address, or its /64 for IPv6 (IPv4-mapped addresses
/// count as IPv4).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// The lockout every credential check goes through (htpasswd and LDAP): failures count per source (an address,
/// or an IPv6 /64) and per (user, source), so a run of wrong passwords locks that source out, and that user out
/// from that source only — nobody can lock a named user out from everywhere.
#[derive(Debug)]
pub(crate) struct SourceLockout {
    by_source: FailureThrottle<IpAddr>,
    by_user_source: FailureThrottle<(String, IpAddr)>,
}

/// The keys one attempt counts under.
pub(crate) struct Attempt {
    source: IpAddr,
    user_source: (String, IpAddr),
}

impl SourceLockout {
    pub(crate) fn new(policy: &PasswordPolicy) -> Self {
        SourceLockout {
            by_source: failure_throttle(policy),
            by_user_source: failure_throttle(policy),
        }
    }

    /// The attempt's keys, or `Throttled` (with the longest wait) when either key is locked out: refused
    /// without running bcrypt or asking the directory.
    pub(crate) fn admit(
        &self,
        user: &str,
        peer_ip: IpAddr,
        now: Instant,
    ) -> Result<Attempt, AuthError> {
        let source = source_key(peer_ip);
        let user_source = (user.to_owned(), source);
        let locked = [
            self.by_source.check(&source, now).err(),
            self.by_user_source.check(&user_source, now).err(),
        ];
        match locked.into_iter().flatten().max() {
            Some(retry_after) => Err(AuthError::Throttled { retry_after }),
            None => Ok(Attempt {
                source,
                user_source,
            }),
        }
    }

    pub(crate) fn succeeded(&self, attempt: &Attempt) {
        self.by_user_source.record_success(&attempt.user_source);
    }

    pub(crate) fn failed(&self, attempt: &Attempt, now: Instant) {
        self.by_source.record_failure(&attempt.source, now);
        self.by_user_source
            .record_failure(&attempt.user_source, now);
    }
}

fn failure_throttle<K: std::hash::Hash + Eq + Clone>(
    policy: &PasswordPolicy,
) -> FailureThrottle<K> {
    FailureThrottle::new(
        policy.max_failures,
        policy.failure_window,
        policy.lockout,
        THROTTLE_CAPACITY,
    )
}

/// Checks user/password pairs against a [`UserStore`].
#[derive(Debug)]
pub struct PasswordChecker {
    store: Arc<UserStore>,
    cache: CredentialCache,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Locks a source out, and a user out from one source only.
    lockout: SourceLockout,
    /// A user's failures from every source: past the limit, checks are slowed, not refused.
    by_user: FailureThrottle<String>,
    /// Checks in progress, by pair: later arrivals wait for the first one's answer.
    in_flight: DashMap<Fingerprint, Arc<OnceCell<bool>>>,
    bcrypt_runs: AtomicU64,
}

/// Takes a pair's in-flight entry out of the map when its holder is done (or dropped), but only if it is
/// still the same entry: a result must never outlive the check that produced it.
struct InFlight<'a> {
    map: &'a DashMap<Fingerprint, Arc<OnceCell<bool>>>,
    fp: Fingerprint,
    cell: Arc<OnceCell<bool>>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.map
            .remove_if(&self.fp, |_, cell| Arc::ptr_eq(cell, &self.cell));
    }
}

impl PasswordChecker {
    /// Builds a checker over `store`.
    pub fn new(store: Arc<UserStore>, policy: &PasswordPolicy) -> Result<Self, AuthError> {
        let cache =
            CredentialCache::new(policy.cache_capacity, policy.cache_ttl).map_err(|_| {
                AuthError::Config("no system randomness for the credential cache key".into())
            })?;
        Ok(PasswordChecker {
            store,
            cache,
            permits: Arc::new(Semaphore::new(policy.bcrypt_permits.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting: policy.max_waiting,
            lockout: SourceLockout::new(policy),
            by_user: failure_throttle(policy),
            in_flight: DashMap::new(),
            bcrypt_runs: AtomicU64::new(0),
        })
    }

    /// bcrypt verifications run so far (cache hits and shared checks run none).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// The user store behind this checker (for reload and the watcher).
    pub fn store(&self) -> &Arc<UserStore> {
        &self.store
    }

    /// Succeeds when `password` is `user`'s. Unknown users cost a bcrypt run too, so timing does not
    /// reveal which names exist.
    pub async fn check(
        &self,
        user: &str,
        password: &str,
        peer_ip: IpAddr,
    ) -> Result<(), AuthError> {
        let snapshot = self.store.snapshot();
        let fp = self.cache.fingerprint(user, password);
        let now = Instant::now();
        if self.cache.contains(&fp, snapshot.generation, now) {
            return Ok(());
        }
        let attempt = self.lockout.admit(user, peer_ip, now)?;
        if self.by_user.check(&user.to_owned(), now).is_err() {
            tokio::time::sleep(USER_SLOWDOWN).await;
        }

        let cell = self
            .in_flight
            .entry(fp)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let _in_flight = InFlight {
            map: &self.in_flight,
            fp,
            cell: cell.clone(),
        };
        // The first caller runs bcrypt; the others wait for its answer. If it is cancelled (client gone), one
        // of the waiters takes over. The cache is filled inside, before the entry leaves the map, so a later
        // caller finds either the entry or the cache.
        let verified = *cell
            .get_or_try_init(|| async {
                let known = snapshot.users.get(user).is_some();
                let matched = self.bcrypt(user, password, &snapshot).await?;
                if matched && known {
                    self.cache.insert(fp, snapshot.generation, Instant::now());
                }
                Ok::<_, AuthError>(matched && known)
            })
            .await?;

        let now = Instant::now();
        if verified {
            self.lockout.succeeded(&attempt);
            Ok(())
        } else {
            self.lockout.failed(&attempt, now);
            self.by_user.record_failure(&user.to_owned(), now);
            if snapshot.users.get(user).is_some() {
                Err(AuthError::BadCredentials)
            } else {
                Err(AuthError::UnknownUser)
            }
        }
    }

    /// One bcrypt verification on the blocking pool, behind the permits. Unknown users are checked against a
    /// dummy hash, so the answer takes as long as for a known one.
    async fn bcrypt(
        &self,
        user: &str,
        password: &str,
        snapshot: &crate::htpasswd::Snapshot,
    ) -> Result<bool, AuthError> {
        let hash = snapshot
            .users
            .get(user)
            .map_or_else(|| snapshot.dummy_hash.clone(), |h| h.hash.clone());
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(AuthError::Throttled {
                retry_after: Duration::from_secs(1),
            });
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(permit) = permit else {
            return Err(AuthError::Config("password checker closed".into()));
        };
        let password = password.to_owned();
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A malformed hash cannot reach here (parse checks the shape); treat any bcrypt error as
            // "no match" without logging it: its message quotes the hash.
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .map_err(AuthError::Blocking)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::htpasswd::Htpasswd;

    fn checker(policy: PasswordPolicy) -> PasswordChecker {
        let line = format!("alice:{}\n", bcrypt::hash("secret", 4).unwrap());
        let store = Arc::new(UserStore::from_htpasswd(Htpasswd::parse(&line).unwrap()));
        PasswordChecker::new(store, &policy).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // Rule: right password passes, wrong password and unknown user fail the same way.
    #[tokio::test]
    async fn right_wrong_unknown() {
        let c = checker(PasswordPolicy::default());
        c.check("alice", "secret", IP).await.unwrap();
        assert!(matches!(
            c.check("alice", "nope", IP).await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            c.check("mallory", "secret", IP).await,
            Err(AuthError::UnknownUser)
        ));
    }

    // Rule: a success is cached, and a cached pair passes even while the address is locked out.
    #[tokio::test]
    async fn cache_hit_skips_bcrypt_and_lockout() {
        let policy = PasswordPolicy {
            max_failures: 2,
            ..PasswordPolicy::default()
        };
        let c = checker(policy);
        c.check("alice", "secret", IP).await.unwrap();
        for _ in 0..2 {
            let _ = c.check("alice", "bad", IP).await;
        }
        assert!(matches!(
            c.check("alice", "bad", IP).await,
            Err(AuthError::Throttled { .. })
        ));
        c.check("alice", "secret", IP).await.unwrap();
    }

    // Rule: after max failures an address is refused with 429 without running bcrypt, also for other users.
    #[tokio::test]
    async fn throttles_per_ip() {
        let policy = PasswordPolicy {
            max_failures: 3,
            ..PasswordPolicy::default()
        };
        let c = checker(policy);
        for i in 0..3 {
            let _ = c.check(&format!("u{i}"), "bad", IP).await;
        }
        let e = c.check("alice", "secret", IP).await.unwrap_err();
        assert!(e.retry_after().is_some(), "{e:?}");
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        c.check("alice", "secret", other).await.unwrap();
    }

    // Pins issue 21 item 6: failures for a user from one address lock that (user, address) pair only; the
    // right password from another address passes (slowed, not refused), and an IPv6 /64 is one source.
    #[tokio::test(start_paused = true)]
    async fn user_lockout_is_per_source() {
        let policy = PasswordPolicy {
            max_failures: 3,
            ..PasswordPolicy::default()
        };
        let c = checker(policy);
        let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        for _ in 0..3 {
            let _ = c.check("alice", "bad", attacker).await;
        }
        assert!(matches!(
            c.check("alice", "secret", attacker).await,
            Err(AuthError::Throttled { .. })
        ));
        let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let started = tokio::time::Instant::now();
        c.check("alice", "secret", elsewhere).await.unwrap();
        assert!(
            started.elapsed() >= USER_SLOWDOWN,
            "a user guessed at from anywhere is slowed down"
        );

        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        for i in 1..=3 {
            let _ = c.check("bob", "bad", v6(&format!("2001:db8::{i}"))).await;
        }
        assert!(
            matches!(
                c.check("carol", "x", v6("2001:db8::ffff:1")).await,
                Err(AuthError::Throttled { .. })
            ),
            "the /64 is one source"
        );
        assert!(
            matches!(
                c.check("carol", "x", v6("2001:db8:0:1::1")).await,
                Err(AuthError::UnknownUser)
            ),
            "the next /64 is another"
        );
    }

    // Rule: an unknown user costs about as much as a known one (bcrypt runs against a dummy hash).
    #[tokio::test]
    async fn unknown_user_runs_bcrypt() {
        let line = format!("alice:{}\n", bcrypt::hash("secret", 10).unwrap());
        let store = Arc::new(UserStore::from_htpasswd(Htpasswd::parse(&line).unwrap()));
        let c = PasswordChecker::new(store, &PasswordPolicy::default()).unwrap();
        let t = Instant::now();
        let _ = c.check("alice", "bad", IP).await;
        let known = t.elapsed();
        let t = Instant::now();
        let _ = c.check("nobody", "bad", IP).await;
        let unknown = t.elapsed();
        assert!(
            unknown * 3 > known,
            "unknown {unknown:?} vs known {known:?}"
        );
    }

    // Rule: concurrent checks of one pair share a single bcrypt run (right or wrong password), and once they are
    // done nothing of the shared answer stays behind: the next wrong attempt runs bcrypt again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_of_one_pair_share_one_bcrypt_run() {
        let line = format!("alice:{}\n", bcrypt::hash("secret", 8).unwrap());
        let store = Arc::new(UserStore::from_htpasswd(Htpasswd::parse(&line).unwrap()));
        // Every waiter still counts as a failed attempt: no lockout in the way of this test's later checks.
        let policy = PasswordPolicy {
            max_failures: 1000,
            ..PasswordPolicy::default()
        };
        let c = Arc::new(PasswordChecker::new(store, &policy).unwrap());
        let run = |password: &'static str| {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..16 {
                let c = c.clone();
                tasks.spawn(async move { c.check("alice", password, IP).await });
            }
            tasks.join_all()
        };
        for r in run("secret").await {
            r.unwrap();
        }
        assert_eq!(c.bcrypt_runs(), 1, "16 concurrent right checks");
        for r in run("wrong").await {
            assert!(matches!(r, Err(AuthError::BadCredentials)));
        }
        assert_eq!(c.bcrypt_runs(), 2, "16 concurrent wrong checks");
        assert!(c.in_flight.is_empty(), "in-flight entries left behind");
        let _ = c
            .check("alice", "wrong", "127.0.0.2".parse().unwrap())
            .await;
        assert_eq!(
            c.bcrypt_runs(),
            3,
            "a later wrong check must run bcrypt again"
        );
        c.check("alice", "secret", IP).await.unwrap();
        assert_eq!(c.bcrypt_runs(), 3, "the right pair is cached");
    }

    // Rule: a reload (new generation) drops cached credentials, so a changed password stops working.
    #[tokio::test]
    async fn reload_drops_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("old", 4).unwrap())).unwrap();
        let store = Arc::new(UserStore::load(&p).unwrap());
        let c = PasswordChecker::new(store.clone(), &PasswordPolicy::default()).unwrap();
        c.check("alice", "old", IP).await.unwrap();
        std::fs::write(&p, format!("alice:{}\n", bcrypt::hash("new", 4).unwrap())).unwrap();
        assert!(store.reload().unwrap());
        assert!(matches!(
            c.check("alice", "old", IP).await,
            Err(AuthError::BadCredentials)
        ));
        c.check("alice", "new", IP).await.unwrap();
    }

    // Rule: lines made by Debian's `htpasswd -B` (cost 5 and 10) verify; the binary must be present.
    #[tokio::test]
    async fn verifies_real_htpasswd_lines() {
        for cost in ["5", "10"] {
            let out = std::process::Command::new("htpasswd")
                .args(["-Bbn", "-C", cost, "u", "p"])
                .output()
                .expect("the `htpasswd` binary (Debian apache2-utils) is required for this test");
            assert!(
                out.status.success(),
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            assert!(text.starts_with(&format!("u:$2y${cost:0>2}$")), "{text}");
            let store = Arc::new(UserStore::from_htpasswd(Htpasswd::parse(&text).unwrap()));
            let c = PasswordChecker::new(store, &PasswordPolicy::default()).unwrap();
            c.check("u", "p", IP).await.unwrap();
            assert!(c.check("u", "q", IP).await.is_err());
        }
    }
}
