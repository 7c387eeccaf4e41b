//! The pieces of the upstream token dance (Docker token spec): the token request URL, the token response, and a
//! concurrent single-flight cache so that a burst of pulls costs one token fetch per (realm, service, scope,
//! credential).
//!
//! The cache holds tokens, which are secrets: `UpstreamToken`'s `Debug` hides the value, and nothing here logs.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use url::Url;

use crate::error::Error;

/// Token lifetime when the response has no (or a zero) `expires_in`, per the Docker token spec.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Upper bound of the refresh margin (see [`UpstreamToken::fresh_until`]).
pub const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// The longest an upstream token is cached, whatever its `expires_in` says: a hostile or broken token service
/// cannot overflow the clock arithmetic, and a day-old token is re-fetched anyway.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Default bound on cached keys: anonymous Docker Hub tokens are per repository, so a busy mirror holds one
/// per pulled repository and credential; a few thousand covers that with a few MiB at most.
pub const DEFAULT_TOKEN_CACHE_CAPACITY: usize = 4096;

/// `GET realm?service=…&scope=…&scope=…`: the anonymous/Basic form of a token request. The realm's own query
/// is kept; one `scope` parameter per scope, as distribution expects.
pub fn token_request_url(realm: &Url, service: Option<&str>, scopes: &[String]) -> Url {
    let mut url = realm.clone();
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = service {
            query.append_pair("service", service);
        }
        for scope in scopes {
            query.append_pair("scope", scope);
        }
    }
    url
}

/// A bearer token from an upstream token server.
#[derive(Clone)]
pub struct UpstreamToken {
    /// The token. Secret: never log it.
    pub value: String,
    /// When the token was received (local clock).
    pub received_at: Instant,
    /// When the token stops being valid (local clock).
    pub expires_at: Instant,
}

impl UpstreamToken {
    /// A token received now, valid for `lifetime`.
    pub fn new(value: impl Into<String>, lifetime: Duration) -> Self {
        let now = Instant::now();
        Self {
            value: value.into(),
            received_at: now,
            expires_at: now + lifetime.min(MAX_TOKEN_LIFETIME),
        }
    }

    /// The instant from which the cache stops handing the token out: `expires_at` minus a margin of
    /// min(30 s, 10 % of the lifetime). The margin covers the time a request takes to reach the upstream and
    /// modest clock drift, and stays proportionate for short-lived tokens (6 s of a 60 s token).
    pub fn fresh_until(&self) -> Instant {
        let lifetime = self.expires_at.saturating_duration_since(self.received_at);
        let margin = (lifetime / 10).min(MAX_REFRESH_MARGIN);
        self.expires_at
            .checked_sub(margin)
            .unwrap_or(self.received_at)
    }

    /// True while the cache may hand the token out.
    pub fn is_fresh_at(&self, now: Instant) -> bool {
        now < self.fresh_until()
    }
}

impl fmt::Debug for UpstreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamToken")
            .field("value", &"<redacted>")
            .field(
                "expires_in",
                &self.expires_at.saturating_duration_since(Instant::now()),
            )
            .finish()
    }
}

/// The token endpoint's JSON answer.
pub struct TokenResponse;

impl TokenResponse {
    /// Reads `token` (or, failing that, `access_token`; empty strings count as missing), `expires_in` in
    /// seconds (missing, zero, negative or non-numeric: 60) and `issued_at` (RFC 3339).
    ///
    /// With `issued_at`, the expiry follows distribution's client: issued_at + expires_in, but never later
    /// than now + expires_in (a server clock ahead of ours must not stretch the lifetime). A token that is
    /// already expired by that reckoning is returned with zero lifetime: usable once, never cached. If our
    /// clock runs ahead of the token server by more than the lifetime, every fetch looks expired and nothing
    /// is cached: slower, still correct.
    pub fn parse(body: &[u8]) -> Result<UpstreamToken, Error> {
        Self::parse_at(body, Instant::now(), OffsetDateTime::now_utc())
    }

    fn parse_at(
        body: &[u8],
        now: Instant,
        wall_now: OffsetDateTime,
    ) -> Result<UpstreamToken, Error> {
        // Parsed as a `Value` and read by hand: serde's typed errors would quote field values.
        let json: serde_json::Value = serde_json::from_slice(body).map_err(Error::TokenJson)?;
        let text = |key: &str| {
            json.get(key)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let value = text("token")
            .or_else(|| text("access_token"))
            .ok_or(Error::TokenMissing)?;
        let expires_in = json
            .get("expires_in")
            .and_then(|v| {
                v.as_u64().or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 1.0)
                        .map(|f| f as u64)
                })
            })
            .filter(|secs| *secs > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let mut lifetime = expires_in;
        if let Some(issued_at) = text("issued_at") {
            let issued_at = OffsetDateTime::parse(issued_at, &Rfc3339).map_err(Error::IssuedAt)?;
            let age = wall_now - issued_at;
            if age.is_positive() {
                lifetime = expires_in.saturating_sub(age.unsigned_abs());
            }
        }
        Ok(UpstreamToken {
            value: value.to_owned(),
            received_at: now,
            expires_at: now + lifetime.min(MAX_TOKEN_LIFETIME),
        })
    }
}

/// What a cached upstream token is valid for. Anonymous Docker Hub tokens are per repository, so the scope is
/// part of the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The token endpoint (`realm` of the challenge).
    pub realm: String,
    pub service: Option<String>,
    /// The scopes asked for, space-joined in the order they are sent.
    pub scope: String,
    /// An opaque id of the upstream credential (e.g. the route name), `None` for anonymous. Never the
    /// password: keys show up in `Debug` output.
    pub credential_id: Option<String>,
}

/// Whether a token came from the cache or from a fetch (for "token fetches vs cache hits" metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Fetched,
}

/// Counters since the cache was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCacheStats {
    /// Answers served from the cache (including callers that waited on another caller's fetch).
    pub hits: u64,
    /// Fetches that succeeded.
    pub fetches: u64,
    /// Fetches that failed.
    pub failures: u64,
    /// Keys dropped to stay within capacity (expired ones first).
    pub evictions: u64,
}

/// A concurrent, bounded cache of upstream tokens with one fetch in flight per key.
///
/// Each key has a slot with an async mutex: the first caller that finds no fresh token fetches while holding
/// it, and callers queued behind it find the fresh token when they get the lock. If that fetch fails, the
/// callers that were already waiting get the same error (the `E: Clone` bound) instead of each retrying in
/// turn against an upstream that just failed; callers arriving later try again (failures are not cached).
/// If the fetching caller is cancelled, the next waiter fetches. [`TokenCache::get_or_fetch_until`] bounds the
/// whole call, wait and fetch, by one deadline.
pub struct TokenCache {
    slots: DashMap<TokenKey, Arc<Slot>>,
    capacity: usize,
    hits: AtomicU64,
    fetches: AtomicU64,
    failures: AtomicU64,
    evictions: AtomicU64,
}

struct Slot {
    state: tokio::sync::Mutex<SlotState>,
    /// Finished fetch attempts; read before queueing on the lock to tell which failures a waiter saw happen.
    finished: AtomicU64,
}

#[derive(Default)]
struct SlotState {
    token: Option<Arc<UpstreamToken>>,
    /// The error of the latest finished attempt, if it failed (type-erased: the error type is chosen per call).
    last_error: Option<Box<dyn Any + Send + Sync>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(DEFAULT_TOKEN_CACHE_CAPACITY)
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("keys", &self.slots.len())
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: DashMap::new(),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The cached token for `key` if fresh, else the result of `fetch` (stored on success).
    ///
    /// No time bound of its own: waiting behind another caller's fetch lasts as long as that fetch. On the
    /// request path use [`TokenCache::get_or_fetch_until`].
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: &TokenKey,
        fetch: F,
    ) -> Result<(Arc<UpstreamToken>, CacheOutcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamToken, E>>,
        E: Clone + Send + Sync + 'static,
    {
        self.single_flight(key, None, fetch).await
    }

    /// Like [`TokenCache::get_or_fetch`], with one deadline over the whole call: the wait behind another
    /// caller's fetch and this caller's own fetch (which must read the token response's head *and* body).
    ///
    /// Why both: a token service that stalls mid-body must not hold the key's lock past the deadline (the
    /// fetch is abandoned and counts as a failed attempt, so callers already queued fail fast with
    /// [`TokenDeadline`] instead of each waiting out a fresh deadline), and a caller queued behind a slow fetch
    /// gives up at its own deadline rather than inheriting the leader's. A caller arriving after a failure
    /// fetches anew: failures are never cached.
    pub async fn get_or_fetch_until<F, Fut, E>(
        &self,
        key: &TokenKey,
        deadline: tokio::time::Instant,
        fetch: F,
    ) -> Result<(Arc<UpstreamToken>, CacheOutcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamToken, E>>,
        E: From<TokenDeadline> + Clone + Send + Sync + 'static,
    {
        let elapsed = || E::from(TokenDeadline);
        self.single_flight(key, Some((deadline, &elapsed)), fetch)
            .await
    }

    /// The single flight. Cancellation-safe: if the caller holding the lock is dropped mid-fetch, the guard is
    /// released without counting a finished attempt, so the next waiter fetches itself instead of reading a
    /// result that will never come.
    async fn single_flight<F, Fut, E>(
        &self,
        key: &TokenKey,
        deadline: Deadline<'_, E>,
        fetch: F,
    ) -> Result<(Arc<UpstreamToken>, CacheOutcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamToken, E>>,
        E: Clone + Send + Sync + 'static,
    {
        let slot = self.slot(key);
        let seen = slot.finished.load(Ordering::Acquire);
        let mut state = within(deadline, slot.state.lock()).await?;
        if let Some(token) = &state.token {
            if token.is_fresh_at(Instant::now()) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((Arc::clone(token), CacheOutcome::Hit));
            }
        }
        if slot.finished.load(Ordering::Acquire) != seen {
            // A fetch finished while we waited and left no fresh token: share its failure.
            if let Some(err) = state
                .last_error
                .as_ref()
                .and_then(|e| e.downcast_ref::<E>())
            {
                return Err(err.clone());
            }
        }
        let result = within(deadline, fetch()).await.and_then(|r| r);
        slot.finished.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(token) => {
                let token = Arc::new(token);
                state.token = Some(Arc::clone(&token));
                state.last_error = None;
                self.fetches.fetch_add(1, Ordering::Relaxed);
                Ok((token, CacheOutcome::Fetched))
            }
            Err(err) => {
                state.token = None;
                state.last_error = Some(Box::new(err.clone()));
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// Drops the token for `key`, e.g. when the upstream answered 401 to it (revoked, or our clock is off).
    pub fn invalidate(&self, key: &TokenKey) {
        self.slots.remove(key);
    }

    /// Drops every token fetched with one credential, e.g. when its realm refused it (password changed): tokens
    /// it got before must not keep serving under an identity the upstream no longer accepts.
    pub fn invalidate_credential(&self, credential_id: &str) {
        self.slots
            .retain(|key, _| key.credential_id.as_deref() != Some(credential_id));
    }

    /// Removes keys without a fresh token and not being fetched. Runs on its own when the cache is full; call
    /// it from a periodic task to give memory back sooner.
    pub fn purge_expired(&self) {
        let now = Instant::now();
        self.slots.retain(|_, slot| slot_is_live(slot, now));
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Counters since the cache was built.
    pub fn stats(&self) -> TokenCacheStats {
        TokenCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            fetches: self.fetches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn slot(&self, key: &TokenKey) -> Arc<Slot> {
        if let Some(slot) = self.slots.get(key) {
            return Arc::clone(slot.value());
        }
        if self.slots.len() >= self.capacity {
            self.make_room();
        }
        // No map guard is held across the `make_room` call above or across any await.
        let slot = self.slots.entry(key.clone()).or_insert_with(|| {
            Arc::new(Slot {
                state: tokio::sync::Mutex::new(SlotState::default()),
                finished: AtomicU64::new(0),
            })
        });
        Arc::clone(slot.value())
    }

    /// Frees space: expired keys first, then the keys whose tokens expire soonest, down to 90 % of capacity
    /// so that a full cache does not sort on every insert. Keys being fetched are kept.
    fn make_room(&self) {
        let before = self.slots.len();
        self.purge_expired();
        let target = self.capacity - self.capacity / 10;
        if self.slots.len() >= self.capacity {
            let mut candidates: Vec<(Instant, TokenKey)> = self
                .slots
                .iter()
                .filter_map(|entry| {
                    let state = entry.value().state.try_lock().ok()?;
                    let expiry = state
                        .token
                        .as_ref()
                        .map_or(Instant::now(), |t| t.expires_at);
                    Some((expiry, entry.key().clone()))
                })
                .collect();
            candidates.sort_by_key(|(expiry, _)| *expiry);
            let excess = self.slots.len().saturating_sub(target.max(1) - 1);
            for (_, key) in candidates.into_iter().take(excess) {
                self.slots.remove(&key);
            }
        }
        let removed = before.saturating_sub(self.slots.len());
        self.evictions.fetch_add(removed as u64, Ordering::Relaxed);
    }
}

/// A token exchange (or the wait for another caller's) outlasted the deadline given to
/// [`TokenCache::get_or_fetch_until`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token service did not answer within the deadline")]
pub struct TokenDeadline;

/// When a single-flight call gives up, and the caller's error for that (none: wait as long as it takes).
type Deadline<'a, E> = Option<(tokio::time::Instant, &'a (dyn Fn() -> E + Sync))>;

/// `fut` raced against `deadline`; the deadline's error when it came first (`fut` is dropped).
async fn within<F: Future, E>(deadline: Deadline<'_, E>, fut: F) -> Result<F::Output, E> {
    match deadline {
        Some((at, elapsed)) => tokio::time::timeout_at(at, fut)
            .await
            .map_err(|_| elapsed()),
        None => Ok(fut.await),
    }
}

/// A slot is live if it holds a fresh token or someone holds its lock (a fetch in flight).
fn slot_is_live(slot: &Slot, now: Instant) -> bool {
    match slot.state.try_lock() {
        Ok(state) => state.token.as_ref().is_some_and(|t| t.is_fresh_at(now)),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn key(scope: &str) -> TokenKey {
        TokenKey {
            realm: "https://auth.test/token".into(),
            service: Some("registry.test".into()),
            scope: scope.into(),
            credential_id: None,
        }
    }

    // Rule: service and every scope become query parameters; the realm's own query is kept.
    #[test]
    fn request_url() {
        let realm = Url::parse("https://auth.test/token?account=x").unwrap();
        let scopes = vec![
            "repository:library/alpine:pull".to_owned(),
            "registry:catalog:*".to_owned(),
        ];
        let url = token_request_url(&realm, Some("registry.docker.io"), &scopes);
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("account".to_owned(), "x".to_owned()),
                ("service".to_owned(), "registry.docker.io".to_owned()),
                ("scope".to_owned(), scopes[0].clone()),
                ("scope".to_owned(), scopes[1].clone()),
            ]
        );
        let bare = token_request_url(&Url::parse("https://auth.test/token").unwrap(), None, &[]);
        assert_eq!(bare.path(), "/token");
    }

    // Rule: `token` is preferred, `access_token` accepted, and expires_in defaults to 60 s.
    #[test]
    fn response_fields() {
        let now = Instant::now();
        let wall = OffsetDateTime::now_utc();
        let t = TokenResponse::parse_at(
            br#"{"token":"a","access_token":"b","expires_in":300}"#,
            now,
            wall,
        )
        .unwrap();
        assert_eq!(t.value, "a");
        assert_eq!(t.expires_at - now, Duration::from_secs(300));
        let t = TokenResponse::parse_at(br#"{"access_token":"b"}"#, now, wall).unwrap();
        assert_eq!(t.value, "b");
        assert_eq!(t.expires_at - now, DEFAULT_TOKEN_LIFETIME);
        let t = TokenResponse::parse_at(
            br#"{"token":"","access_token":"c","expires_in":0}"#,
            now,
            wall,
        )
        .unwrap();
        assert_eq!(t.value, "c");
        assert_eq!(t.expires_at - now, DEFAULT_TOKEN_LIFETIME);
        let t =
            TokenResponse::parse_at(br#"{"token":"d","expires_in":"junk"}"#, now, wall).unwrap();
        assert_eq!(t.expires_at - now, DEFAULT_TOKEN_LIFETIME);
    }

    // Rule: issued_at in the past shortens the lifetime; in the future it cannot stretch it.
    #[test]
    fn issued_at_handling() {
        let now = Instant::now();
        let wall = OffsetDateTime::parse("2024-01-01T00:01:40Z", &Rfc3339).unwrap();
        let body = br#"{"token":"x","expires_in":300,"issued_at":"2024-01-01T00:00:00Z"}"#;
        assert_eq!(
            TokenResponse::parse_at(body, now, wall).unwrap().expires_at - now,
            Duration::from_secs(200)
        );
        let future = br#"{"token":"x","expires_in":300,"issued_at":"2024-01-01T01:00:00Z"}"#;
        assert_eq!(
            TokenResponse::parse_at(future, now, wall)
                .unwrap()
                .expires_at
                - now,
            Duration::from_secs(300)
        );
        let old = br#"{"token":"x","expires_in":60,"issued_at":"2023-01-01T00:00:00Z"}"#;
        let t = TokenResponse::parse_at(old, now, wall).unwrap();
        assert!(!t.is_fresh_at(now));
        let bad = br#"{"token":"x","issued_at":"yesterday"}"#;
        assert!(matches!(
            TokenResponse::parse_at(bad, now, wall),
            Err(Error::IssuedAt(_))
        ));
    }

    // Rule: bodies without a token or not JSON are errors, and the error text never carries the body.
    #[test]
    fn response_errors() {
        assert!(matches!(
            TokenResponse::parse(br#"{"expires_in":60}"#),
            Err(Error::TokenMissing)
        ));
        assert!(matches!(
            TokenResponse::parse(br#"{"token":42}"#),
            Err(Error::TokenMissing)
        ));
        let err = TokenResponse::parse(b"{\"token\":\"s3cret\"").unwrap_err();
        assert!(matches!(err, Error::TokenJson(_)));
        assert!(!format!("{err} {err:?}").contains("s3cret"));
    }

    // Rule: Debug output of a token hides its value.
    #[test]
    fn token_debug_is_redacted() {
        let t = UpstreamToken::new("s3cret-value", Duration::from_secs(60));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    // Rule: the refresh margin is min(30 s, 10 % of the lifetime).
    #[test]
    fn refresh_margin() {
        let t = UpstreamToken::new("x", Duration::from_secs(60));
        assert_eq!(t.expires_at - t.fresh_until(), Duration::from_secs(6));
        let t = UpstreamToken::new("x", Duration::from_secs(3600));
        assert_eq!(t.expires_at - t.fresh_until(), MAX_REFRESH_MARGIN);
        let t = UpstreamToken::new("x", Duration::ZERO);
        assert!(!t.is_fresh_at(t.received_at));
    }

    // Rule: 100 concurrent callers for one key share exactly one fetch.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_flight() {
        let cache = Arc::new(TokenCache::new(16));
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (cache, calls, barrier) =
                (Arc::clone(&cache), Arc::clone(&calls), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_fetch(&key("repository:a:pull"), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, String>(UpstreamToken::new("tok", Duration::from_secs(300)))
                    })
                    .await
            }));
        }
        let mut fetched = 0;
        for task in tasks {
            let (token, outcome) = task.await.unwrap().unwrap();
            assert_eq!(token.value, "tok");
            fetched += usize::from(outcome == CacheOutcome::Fetched);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(fetched, 1);
        let stats = cache.stats();
        assert_eq!((stats.fetches, stats.hits), (1, 99));
    }

    // Rule: a token past its refresh point is fetched again; different keys do not share tokens.
    #[tokio::test]
    async fn expiry_triggers_refetch() {
        let cache = TokenCache::default();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(UpstreamToken::new(
                format!("tok{n}"),
                Duration::from_millis(40),
            ))
        };
        let (first, outcome) = cache.get_or_fetch(&key("s"), fetch).await.unwrap();
        assert_eq!(
            (first.value.as_str(), outcome),
            ("tok0", CacheOutcome::Fetched)
        );
        let (again, outcome) = cache.get_or_fetch(&key("s"), fetch).await.unwrap();
        assert_eq!((again.value.as_str(), outcome), ("tok0", CacheOutcome::Hit));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (renewed, outcome) = cache.get_or_fetch(&key("s"), fetch).await.unwrap();
        assert_eq!(
            (renewed.value.as_str(), outcome),
            ("tok1", CacheOutcome::Fetched)
        );
        let (other, _) = cache.get_or_fetch(&key("other"), fetch).await.unwrap();
        assert_eq!(other.value, "tok2");
    }

    // Rule: a failed fetch is not cached: the next caller fetches again and can succeed.
    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = TokenCache::default();
        let calls = AtomicUsize::new(0);
        let result = cache
            .get_or_fetch(&key("s"), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<UpstreamToken, _>("upstream down".to_owned())
            })
            .await;
        assert_eq!(result.unwrap_err(), "upstream down");
        let (token, outcome) = cache
            .get_or_fetch(&key("s"), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(UpstreamToken::new("ok", Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!(
            (token.value.as_str(), outcome),
            ("ok", CacheOutcome::Fetched)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats().failures, 1);
    }

    // Rule: callers already waiting on a fetch that fails get its error instead of fetching again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_share_a_failure() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls, barrier) =
                (Arc::clone(&cache), Arc::clone(&calls), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                cache
                    .get_or_fetch(&key("s"), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err::<UpstreamToken, _>("down".to_owned())
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap_err(), "down");
        }
        // All 20 queued within the 100 ms of the first fetch; a scheduling hiccup may add a second attempt.
        assert!(
            calls.load(Ordering::SeqCst) <= 2,
            "{}",
            calls.load(Ordering::SeqCst)
        );
    }

    // Rule: the cache stays within capacity, evicting expired keys before fresh ones.
    #[tokio::test]
    async fn bounded_with_expired_first() {
        let cache = TokenCache::new(10);
        let ok = |lifetime: Duration| {
            move || async move { Ok::<_, String>(UpstreamToken::new("t", lifetime)) }
        };
        cache
            .get_or_fetch(&key("keep"), ok(Duration::from_secs(600)))
            .await
            .unwrap();
        for i in 0..9 {
            cache
                .get_or_fetch(&key(&format!("dead{i}")), ok(Duration::ZERO))
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 10);
        cache
            .get_or_fetch(&key("new"), ok(Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.stats().evictions, 9);
        let (_, outcome) = cache
            .get_or_fetch(&key("keep"), ok(Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        for i in 0..50 {
            cache
                .get_or_fetch(&key(&format!("fresh{i}")), ok(Duration::from_secs(600 + i)))
                .await
                .unwrap();
            assert!(cache.len() <= 10);
        }
    }

    // Rule: invalidate drops a key so the next caller fetches.
    #[tokio::test]
    async fn invalidate_forces_fetch() {
        let cache = TokenCache::default();
        let ok = || async { Ok::<_, String>(UpstreamToken::new("t", Duration::from_secs(60))) };
        cache.get_or_fetch(&key("s"), ok).await.unwrap();
        cache.invalidate(&key("s"));
        let (_, outcome) = cache.get_or_fetch(&key("s"), ok).await.unwrap();
        assert_eq!(outcome, CacheOutcome::Fetched);
    }

    #[derive(Debug, Clone, PartialEq)]
    enum FetchErr {
        Down,
        Deadline,
    }

    impl From<TokenDeadline> for FetchErr {
        fn from(_: TokenDeadline) -> Self {
            FetchErr::Deadline
        }
    }

    fn ok_token() -> Result<UpstreamToken, FetchErr> {
        Ok(UpstreamToken::new("fresh", Duration::from_secs(300)))
    }

    // Pins: a fetch that stalls (a token service that sends a head and then nothing) is abandoned at the
    // deadline; callers already queued behind it fail fast with the deadline error instead of each waiting out a
    // fresh one, and the next caller fetches anew and succeeds.
    #[tokio::test(start_paused = true)]
    async fn stalled_fetch_ends_at_deadline_and_frees_the_key() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(5);
        let leader = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch_until(&key("s"), deadline, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<UpstreamToken, FetchErr>>().await
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waiter = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                let own_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                let result = cache
                    .get_or_fetch_until(&key("s"), own_deadline, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        ok_token()
                    })
                    .await;
                (result, tokio::time::Instant::now())
            })
        };
        assert_eq!(leader.await.unwrap().unwrap_err(), FetchErr::Deadline);
        let (result, at) = waiter.await.unwrap();
        assert_eq!(result.unwrap_err(), FetchErr::Deadline);
        assert_eq!(
            at - start,
            Duration::from_secs(5),
            "the waiter shared the leader's end"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the waiter did not fetch again"
        );
        let (token, outcome) = cache
            .get_or_fetch_until(
                &key("s"),
                tokio::time::Instant::now() + Duration::from_secs(5),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    ok_token()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (token.value.as_str(), outcome),
            ("fresh", CacheOutcome::Fetched)
        );
        assert_eq!(cache.stats().failures, 1);
    }

    // Pins: the caller holding the key's lock being dropped mid-fetch (client gone, an outer timeout) does not
    // strand the key: the caller queued behind it fetches itself at once and succeeds.
    #[tokio::test(start_paused = true)]
    async fn dropped_leader_lets_the_next_caller_fetch() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let leader = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("s"), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<UpstreamToken, FetchErr>>().await
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch(&key("s"), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        ok_token()
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let dropped_at = tokio::time::Instant::now();
        leader.abort();
        let (token, outcome) = waiter.await.unwrap().unwrap();
        assert_eq!(
            (token.value.as_str(), outcome),
            ("fresh", CacheOutcome::Fetched)
        );
        assert_eq!(
            tokio::time::Instant::now(),
            dropped_at,
            "no waiting on the dead fetch"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            cache.stats().failures,
            0,
            "a cancelled fetch is no failure to share"
        );
    }

    // Pins: a caller queued behind a slow fetch is bounded by its own deadline, even when the leader's
    // deadline is later (the leader keeps fetching; its success still lands in the cache).
    #[tokio::test(start_paused = true)]
    async fn waiter_behind_a_slow_fetch_keeps_its_own_deadline() {
        let cache = Arc::new(TokenCache::default());
        let start = tokio::time::Instant::now();
        let leader = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .get_or_fetch_until(&key("s"), start + Duration::from_secs(30), || async {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        ok_token()
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let result = cache
            .get_or_fetch_until(&key("s"), start + Duration::from_secs(3), || async {
                ok_token()
            })
            .await;
        assert_eq!(result.unwrap_err(), FetchErr::Deadline);
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(3));
        let (_, outcome) = leader.await.unwrap().unwrap();
        assert_eq!(outcome, CacheOutcome::Fetched);
        let (_, outcome) = cache
            .get_or_fetch_until(
                &key("s"),
                tokio::time::Instant::now() + Duration::from_secs(1),
                || async { ok_token() },
            )
            .await
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
    }

    // Pins: a failed fetch (the token service answered an error) ends the callers queued behind it at once
    // with that error; they do not wait for or start another fetch.
    #[tokio::test(start_paused = true)]
    async fn failed_fetch_fails_queued_callers_fast() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let leader = {
            let (cache, calls) = (Arc::clone(&cache), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_fetch_until(&key("s"), start + Duration::from_secs(5), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Err::<UpstreamToken, _>(FetchErr::Down)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let result = cache
            .get_or_fetch_until(&key("s"), start + Duration::from_secs(5), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                ok_token()
            })
            .await;
        assert_eq!(result.unwrap_err(), FetchErr::Down);
        assert_eq!(tokio::time::Instant::now() - start, Duration::from_secs(2));
        assert_eq!(leader.await.unwrap().unwrap_err(), FetchErr::Down);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    // Pins that a refused credential loses every token it holds, and other credentials keep theirs.
    #[tokio::test]
    async fn invalidate_credential_drops_only_its_tokens() {
        let cache = TokenCache::default();
        let with = |id: Option<&str>, scope: &str| TokenKey {
            credential_id: id.map(str::to_string),
            ..key(scope)
        };
        let ok = || async { Ok::<_, ()>(UpstreamToken::new("t", Duration::from_secs(60))) };
        for k in [
            with(Some("a"), "s1"),
            with(Some("a"), "s2"),
            with(Some("b"), "s1"),
            with(None, "s1"),
        ] {
            cache.get_or_fetch(&k, ok).await.unwrap();
        }
        cache.invalidate_credential("a");
        assert_eq!(cache.len(), 2);
        let (_, outcome) = cache
            .get_or_fetch(&with(Some("b"), "s1"), ok)
            .await
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
        let (_, outcome) = cache
            .get_or_fetch(&with(Some("a"), "s1"), ok)
            .await
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Fetched);
    }
}
