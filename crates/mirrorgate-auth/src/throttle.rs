//! Failure throttling for password checks: after `max_failures` failures within `window`, a key is
//! locked for `lockout`. The password checker keys it by source and by (user, source) and refuses those
//! without running bcrypt, so guessing is slow and cannot be used to burn the gateway's CPU; keyed by user
//! name alone it only slows checks down (see `password.rs`: a lock on a bare name would let anyone lock a
//! real user out).
//!
//! A plain fixed-window counter is enough here (this is lockout, not rate shaping).

use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Debug)]
pub(crate) struct FailureThrottle<K: Eq + Hash> {
    map: DashMap<K, Window>,
    max_failures: u32,
    window: Duration,
    lockout: Duration,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
    locked_until: Option<Instant>,
}

impl<K: Eq + Hash + Clone> FailureThrottle<K> {
    pub(crate) fn new(
        max_failures: u32,
        window: Duration,
        lockout: Duration,
        capacity: usize,
    ) -> Self {
        FailureThrottle {
            map: DashMap::new(),
            max_failures,
            window,
            lockout,
            capacity,
        }
    }

    /// `Err(retry_after)` while `key` is locked out.
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        match self.map.get(key).and_then(|w| w.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub(crate) fn record_failure(&self, key: &K, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(key) {
            self.sweep(now);
        }
        let mut w = self.map.entry(key.clone()).or_insert(Window {
            start: now,
            failures: 0,
            locked_until: None,
        });
        if now.duration_since(w.start) > self.window || w.locked_until.is_some_and(|u| u <= now) {
            *w = Window {
                start: now,
                failures: 0,
                locked_until: None,
            };
        }
        w.failures += 1;
        if w.failures >= self.max_failures {
            w.locked_until = Some(now + self.lockout);
        }
    }

    pub(crate) fn record_success(&self, key: &K) {
        self.map.remove(key);
    }

    /// Forgets windows that can no longer lock anything; if that frees nothing, forgets all (a flood of
    /// distinct keys must not grow memory without bound).
    fn sweep(&self, now: Instant) {
        self.map.retain(|_, w| {
            w.locked_until.is_some_and(|u| u > now) || now.duration_since(w.start) <= self.window
        });
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the Nth failure within the window locks the key for the lockout, then it is free again.
    #[test]
    fn locks_after_max_failures_then_releases() {
        let t = FailureThrottle::new(3, Duration::from_secs(60), Duration::from_secs(30), 100);
        let now = Instant::now();
        for _ in 0..2 {
            t.record_failure(&"k", now);
        }
        assert!(t.check(&"k", now).is_ok());
        t.record_failure(&"k", now);
        let wait = t.check(&"k", now + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(t.check(&"other", now).is_ok());
        assert!(t.check(&"k", now + Duration::from_secs(31)).is_ok());
    }

    // Rule: failures spread beyond the window do not lock; success resets.
    #[test]
    fn window_and_success_reset() {
        let t = FailureThrottle::new(3, Duration::from_secs(60), Duration::from_secs(30), 100);
        let now = Instant::now();
        t.record_failure(&"k", now);
        t.record_failure(&"k", now);
        t.record_failure(&"k", now + Duration::from_secs(61));
        assert!(t.check(&"k", now + Duration::from_secs(61)).is_ok());
        t.record_failure(&"k", now + Duration::from_secs(62));
        t.record_success(&"k");
        t.record_failure(&"k", now + Duration::from_secs(63));
        assert!(t.check(&"k", now + Duration::from_secs(63)).is_ok());
    }

    // Rule: the map stays bounded under a flood of distinct keys.
    #[test]
    fn bounded() {
        let t = FailureThrottle::new(3, Duration::from_secs(60), Duration::from_secs(30), 10);
        let now = Instant::now();
        for i in 0..100 {
            t.record_failure(&i, now);
        }
        assert!(t.map.len() <= 10);
    }
}
