//! Upstream credential pools: which of an upstream's credentials a request uses, and which are set aside.
//!
//! A route's `upstream_credentials` (or its single `upstream_username`/`_password`, a pool of one) belong to its
//! upstream endpoint. Per request the member with the most headroom is used — the last `ratelimit-remaining` the
//! upstream reported for it, unknown counting as full — round-robin among equals, so a fresh pool spreads its
//! load instead of draining its first account. A member the upstream throttled (429) or whose login the realm
//! refused is set aside until its window resets: the upstream's `Retry-After`, else the rate-limit window
//! (`w=`), else an exponential backoff with jitter. When every member is set aside the caller answers 429 with
//! the soonest return.
//!
//! The state lives in the [`Gateway`](crate::Gateway), keyed by route, upstream origin and member name, so a
//! reload that keeps a member's name keeps what was learned about it (a reload must not send a throttled
//! account straight back to Docker Hub).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use mirrorgate_config::PoolCredential;
use mirrorgate_metrics::CredentialMetrics;

/// The first set-aside of a member without a `Retry-After` or window to go by (a refused login, a bare 429).
/// Short, because a password fixed by a reload or a blip at the realm should not cost minutes.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest backoff: a member refused again and again is still retried now and then, so a fixed password
/// brings it back without a restart.
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// The longest an upstream's word (`Retry-After`, a rate-limit window) sets a member aside: a day, four of
/// Docker Hub's six-hour windows. A hostile or broken header (`Retry-After: 99999999999`) costs a member a
/// day, never the pool for good — and never an overflowing deadline.
const SET_ASIDE_MAX: Duration = Duration::from_secs(24 * 3600);

/// Which pool: one upstream endpoint of one route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolId {
    route: String,
    origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MemberId {
    pool: PoolId,
    name: String,
}

/// What is known about one member.
#[derive(Debug, Default)]
struct MemberState {
    /// The last `ratelimit-remaining` the upstream reported; `None` (never seen, or the window reset) is full.
    remaining: Option<u64>,
    /// Set aside until then.
    aside_until: Option<Instant>,
    /// Set-asides in a row without a usable answer in between (drives the backoff).
    failures: u32,
}

/// Why a member is set aside (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAsideCause {
    /// The upstream answered 429.
    RateLimited,
    /// The token realm answered 401/403 to its login.
    LoginRefused,
}

impl SetAsideCause {
    fn as_str(self) -> &'static str {
        match self {
            SetAsideCause::RateLimited => "rate limited",
            SetAsideCause::LoginRefused => "login refused",
        }
    }
}

/// The outcome of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Use the member at this index of the pool.
    Use(usize),
    /// Every member is set aside; the soonest returns after this long.
    Exhausted { retry_after: Duration },
}

/// Pool state of every route, surviving reloads (see the module doc).
#[derive(Debug, Default)]
pub struct CredentialPools {
    members: DashMap<MemberId, MemberState>,
    /// Where the next round-robin scan starts, per pool.
    cursors: DashMap<PoolId, usize>,
}

impl CredentialPools {
    /// Keeps the state of the members the endpoints of `router` still have and drops the rest, with their
    /// metric series once no endpoint of the route has a member of that name: a reload that removes or
    /// renames a member must not leave its state and series behind for good.
    pub fn retain(&self, router: &crate::router::Router, metrics: &CredentialMetrics) {
        let mut present = HashSet::new();
        for route in router.routes() {
            for endpoint in route.endpoints.iter().chain(route.named_upstreams.values()) {
                for member in &endpoint.credentials {
                    present.insert(MemberId {
                        pool: PoolId {
                            route: route.label.clone(),
                            origin: endpoint.origin.clone(),
                        },
                        name: member.name.clone(),
                    });
                }
            }
        }
        self.retain_members(&present, metrics);
    }

    fn retain_members(&self, present: &HashSet<MemberId>, metrics: &CredentialMetrics) {
        let mut gone = Vec::new();
        self.members.retain(|id, _| {
            let keep = present.contains(id);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        self.cursors
            .retain(|pool, _| present.iter().any(|m| m.pool == *pool));
        for id in gone {
            if !present
                .iter()
                .any(|m| m.pool.route == id.pool.route && m.name == id.name)
            {
                metrics.forget(&id.pool.route, &id.name);
            }
        }
    }
}

/// One pool as a request sees it: the shared state, the configured members, and where to report.
pub struct Pool<'a> {
    pub state: &'a CredentialPools,
    pub metrics: &'a CredentialMetrics,
    pub route: &'a str,
    pub origin: &'a str,
    pub members: &'a [PoolCredential],
}

impl Pool<'_> {
    fn pool_id(&self) -> PoolId {
        PoolId {
            route: self.route.to_string(),
            origin: self.origin.to_string(),
        }
    }

    fn with_member<T>(&self, index: usize, f: impl FnOnce(&mut MemberState, &str) -> T) -> T {
        let name = self.members.get(index).map_or("", |m| m.name.as_str());
        let id = MemberId {
            pool: self.pool_id(),
            name: name.to_string(),
        };
        let mut state = self.state.members.entry(id).or_insert_with(|| {
            self.metrics.set_available(self.route, name, true);
            MemberState::default()
        });
        f(&mut state, name)
    }

    /// The member a read uses now: the most headroom among those not set aside, round-robin among equals.
    /// Members whose time is up come back here (with their headroom reset: their window has passed).
    pub fn pick(&self, now: Instant) -> Choice {
        let n = self.members.len();
        if n == 0 {
            return Choice::Exhausted {
                retry_after: BACKOFF_BASE,
            };
        }
        let id = self.pool_id();
        let start = self.state.cursors.get(&id).map_or(0, |c| *c % n);
        let mut best: Option<(usize, u64)> = None;
        let mut soonest: Option<Duration> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            let score = self.with_member(i, |st, name| {
                if let Some(until) = st.aside_until {
                    if until > now {
                        return Err(until - now);
                    }
                    st.aside_until = None;
                    st.remaining = None;
                    self.metrics.set_available(self.route, name, true);
                    tracing::info!(route = %self.route, credential = %name, "upstream credential returns to the pool");
                }
                Ok(st.remaining.unwrap_or(u64::MAX))
            });
            match score {
                Ok(score) if best.is_none_or(|(_, b)| score > b) => best = Some((i, score)),
                Ok(_) => {}
                Err(wait) => soonest = Some(soonest.map_or(wait, |s| s.min(wait))),
            }
        }
        match best {
            Some((i, _)) => {
                self.state.cursors.insert(id, i + 1);
                Choice::Use(i)
            }
            None => Choice::Exhausted {
                retry_after: soonest.unwrap_or(BACKOFF_BASE),
            },
        }
    }

    /// The member a write uses: always the first, so a push keeps one identity from its first request to its
    /// last (an upload session is not moved between accounts), whatever the reads are doing.
    pub fn pick_for_write(&self) -> Choice {
        if self.members.is_empty() {
            return Choice::Exhausted {
                retry_after: BACKOFF_BASE,
            };
        }
        Choice::Use(0)
    }

    /// Records the headroom the upstream reported for a member.
    pub fn observe_remaining(&self, index: usize, remaining: u64) {
        self.with_member(index, |st, name| {
            st.remaining = Some(remaining);
            self.metrics.set_remaining(self.route, name, remaining);
        });
    }

    /// Records a usable answer to a member: its backoff starts over.
    pub fn succeeded(&self, index: usize) {
        self.with_member(index, |st, _| st.failures = 0);
    }

    /// Sets a member aside for `wait` (the upstream's word) or, without one, an exponential backoff with
    /// jitter. Returns how long.
    pub fn set_aside(
        &self,
        index: usize,
        cause: SetAsideCause,
        wait: Option<Duration>,
        now: Instant,
    ) -> Duration {
        self.with_member(index, |st, name| {
            st.failures = st.failures.saturating_add(1);
            let wait = wait
                .unwrap_or_else(|| backoff(st.failures))
                .min(SET_ASIDE_MAX);
            st.aside_until = Some(now + wait);
            st.remaining = Some(0);
            self.metrics.set_available(self.route, name, false);
            tracing::warn!(route = %self.route, credential = %name, cause = cause.as_str(), for_secs = wait.as_secs(), "upstream credential set aside");
            wait
        })
    }
}

/// `BACKOFF_BASE · 2^(failures-1)`, capped at `BACKOFF_MAX`, plus up to a quarter more at random so members
/// refused together do not come back together.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let plain = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX);
    // A random u64 from the std hasher's per-process random keys: jitter needs no stronger randomness.
    let random = RandomState::new().hash_one(Instant::now());
    let quarter_permille = random % 250;
    let extra = plain.mul_f64(quarter_permille as f64 / 1000.0);
    plain + extra
}

/// Seconds for a `Retry-After` header: rounded up, at least one (zero would invite an immediate retry).
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorgate_config::{Credentials, Secret};
    use mirrorgate_metrics::{Metrics, MetricsOptions};

    fn members(names: &[&str]) -> Vec<PoolCredential> {
        names
            .iter()
            .map(|n| PoolCredential {
                name: n.to_string(),
                credentials: Some(Credentials {
                    username: format!("{n}-user"),
                    password: Secret::new("pw"),
                }),
            })
            .collect()
    }

    fn pool<'a>(
        state: &'a CredentialPools,
        metrics: &'a Metrics,
        members: &'a [PoolCredential],
    ) -> Pool<'a> {
        Pool {
            state,
            metrics: &metrics.credentials,
            route: "docker.test",
            origin: "https://hub.test",
            members,
        }
    }

    fn metrics() -> std::sync::Arc<Metrics> {
        Metrics::new(MetricsOptions::default()).unwrap()
    }

    // Pins round-robin among equals: a fresh pool (all unknown, i.e. full) spreads reads over every member.
    #[test]
    fn equals_take_turns() {
        let (state, m, ms) = (
            CredentialPools::default(),
            metrics(),
            members(&["a", "b", "c"]),
        );
        let p = pool(&state, &m, &ms);
        let now = Instant::now();
        let picks: Vec<Choice> = (0..6).map(|_| p.pick(now)).collect();
        let idx: Vec<usize> = picks
            .iter()
            .map(|c| match c {
                Choice::Use(i) => *i,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(idx, [0, 1, 2, 0, 1, 2]);
    }

    // Pins the selection rule: most reported headroom wins; unknown headroom counts as full.
    #[test]
    fn most_headroom_wins_and_unknown_is_full() {
        let (state, m, ms) = (
            CredentialPools::default(),
            metrics(),
            members(&["a", "b", "c"]),
        );
        let p = pool(&state, &m, &ms);
        let now = Instant::now();
        p.observe_remaining(0, 10);
        p.observe_remaining(1, 50);
        // c unknown: full.
        assert_eq!(p.pick(now), Choice::Use(2));
        p.observe_remaining(2, 20);
        assert_eq!(p.pick(now), Choice::Use(1));
        assert_eq!(p.pick(now), Choice::Use(1));
        p.observe_remaining(1, 5);
        assert_eq!(p.pick(now), Choice::Use(2));
    }

    // Pins pruning on reload: a member the new config lacks loses its state and its metric series; a kept
    // member keeps being set aside (what a reload must not reset).
    #[test]
    fn retain_drops_removed_members_and_their_series() {
        let (state, m, ms) = (CredentialPools::default(), metrics(), members(&["a", "b"]));
        let p = pool(&state, &m, &ms);
        let t0 = Instant::now();
        p.set_aside(
            0,
            SetAsideCause::RateLimited,
            Some(Duration::from_secs(60)),
            t0,
        );
        p.set_aside(
            1,
            SetAsideCause::RateLimited,
            Some(Duration::from_secs(60)),
            t0,
        );
        p.observe_remaining(0, 3);
        let series = |name: &str| {
            m.encode_text()
                .unwrap()
                .contains(&format!(r#"credential="{name}",route="docker.test""#))
        };
        assert!(series("a") && series("b"));
        let present = HashSet::from([MemberId {
            pool: PoolId {
                route: "docker.test".into(),
                origin: "https://hub.test".into(),
            },
            name: "b".into(),
        }]);
        state.retain_members(&present, &m.credentials);
        assert!(!series("a"), "a's series outlived it");
        assert!(series("b"));
        assert_eq!(state.members.len(), 1);
        // b is still set aside; a brand-new a would start full.
        let kept = members(&["b"]);
        assert!(matches!(
            pool(&state, &m, &kept).pick(t0),
            Choice::Exhausted { .. }
        ));
    }

    // Pins the bound on the upstream's word: an absurd Retry-After sets a member aside for a day, and the
    // deadline arithmetic does not overflow (Instant + Duration::MAX panics).
    #[test]
    fn an_absurd_wait_is_capped_at_a_day() {
        let (state, m, ms) = (CredentialPools::default(), metrics(), members(&["a"]));
        let p = pool(&state, &m, &ms);
        let t0 = Instant::now();
        let wait = p.set_aside(0, SetAsideCause::RateLimited, Some(Duration::MAX), t0);
        assert_eq!(wait, SET_ASIDE_MAX);
        assert_eq!(
            p.pick(t0),
            Choice::Exhausted {
                retry_after: SET_ASIDE_MAX
            }
        );
        assert_eq!(p.pick(t0 + SET_ASIDE_MAX), Choice::Use(0));
    }

    // Pins set-aside: a throttled member is skipped until its window passes, then returns with full headroom;
    // all set aside → exhausted with the soonest return.
    #[test]
    fn set_aside_until_the_window_resets() {
        let (state, m, ms) = (CredentialPools::default(), metrics(), members(&["a", "b"]));
        let p = pool(&state, &m, &ms);
        let t0 = Instant::now();
        p.set_aside(
            0,
            SetAsideCause::RateLimited,
            Some(Duration::from_secs(30)),
            t0,
        );
        assert_eq!(p.pick(t0), Choice::Use(1));
        assert_eq!(p.pick(t0), Choice::Use(1));
        p.set_aside(
            1,
            SetAsideCause::RateLimited,
            Some(Duration::from_secs(10)),
            t0,
        );
        assert_eq!(
            p.pick(t0 + Duration::from_secs(4)),
            Choice::Exhausted {
                retry_after: Duration::from_secs(6)
            }
        );
        // b's window passed: it returns, as full.
        assert_eq!(p.pick(t0 + Duration::from_secs(11)), Choice::Use(1));
        let text = m.encode_text().unwrap();
        assert!(
            text.contains(
                r#"mirrorgate_upstream_credential_available{credential="a",route="docker.test"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mirrorgate_upstream_credential_available{credential="b",route="docker.test"} 1"#
            ),
            "{text}"
        );
        assert_eq!(p.pick(t0 + Duration::from_secs(31)), Choice::Use(0));
    }

    // Pins the backoff without an upstream hint: doubling from the base, jittered up by at most a quarter,
    // capped; a usable answer starts it over.
    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        for (failures, plain) in [(1u32, 5u64), (2, 10), (3, 20), (30, 900)] {
            let d = backoff(failures);
            let plain = Duration::from_secs(plain);
            assert!(d >= plain && d <= plain.mul_f64(1.25), "{failures}: {d:?}");
        }
        let (state, m, ms) = (CredentialPools::default(), metrics(), members(&["a"]));
        let p = pool(&state, &m, &ms);
        let t0 = Instant::now();
        let first = p.set_aside(0, SetAsideCause::LoginRefused, None, t0);
        let second = p.set_aside(0, SetAsideCause::LoginRefused, None, t0);
        assert!(second >= Duration::from_secs(10), "{first:?} {second:?}");
        p.succeeded(0);
        let again = p.set_aside(0, SetAsideCause::LoginRefused, None, t0);
        assert!(again < Duration::from_secs(7), "{again:?}");
    }

    // Pins that pool state survives a reload keeping the member's name: a new config's pool (same route,
    // origin, name) sees the old set-aside, and a renamed member starts fresh.
    #[test]
    fn state_is_keyed_by_name_across_reloads() {
        let (state, m) = (CredentialPools::default(), metrics());
        let t0 = Instant::now();
        let before = members(&["a", "b"]);
        pool(&state, &m, &before).set_aside(
            0,
            SetAsideCause::RateLimited,
            Some(Duration::from_secs(60)),
            t0,
        );
        let reloaded = members(&["b", "a"]);
        let p = pool(&state, &m, &reloaded);
        assert_eq!(p.pick(t0), Choice::Use(0)); // b
        assert_eq!(p.pick(t0), Choice::Use(0)); // a is still aside
        let renamed = members(&["a2", "b"]);
        let p = pool(&state, &m, &renamed);
        let picks = [p.pick(t0), p.pick(t0)];
        assert!(picks.contains(&Choice::Use(0)), "{picks:?}");
    }

    // Pins that writes keep one identity: always the first member, even while reads rotate.
    #[test]
    fn writes_use_the_first_member() {
        let (state, m, ms) = (CredentialPools::default(), metrics(), members(&["a", "b"]));
        let p = pool(&state, &m, &ms);
        p.pick(Instant::now());
        assert_eq!(p.pick_for_write(), Choice::Use(0));
        assert_eq!(p.pick_for_write(), Choice::Use(0));
    }

    // Pins Retry-After rounding: up, never zero.
    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(4100)), 5);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
