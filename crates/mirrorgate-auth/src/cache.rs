//! The verified-credential cache: bcrypt at cost 10 takes 50-100 ms, so a client that pulls a
//! hundred layers would otherwise burn seconds of CPU per pull.
//!
//! Only *successful* checks are cached, keyed by HMAC-SHA256(per-process random key, user ‖ 0x00 ‖
//! password): the password itself is never stored, and the key dies with the process, so a memory dump
//! gives no offline oracle that outlives it. Entries carry the htpasswd generation they were made under
//! and the whole cache is dropped when the generation moves (a removed user or a changed password stops
//! working at the next reload, not at the next expiry).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ring::hmac;
use ring::rand::SystemRandom;

/// A keyed fingerprint of one (user, password) pair.
pub(crate) type Fingerprint = [u8; 32];

#[derive(Debug)]
pub(crate) struct CredentialCache {
    key: hmac::Key,
    entries: DashMap<Fingerprint, Entry>,
    capacity: usize,
    ttl: Duration,
    generation: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    generation: u64,
}

impl CredentialCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Result<Self, ring::error::Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())?;
        Ok(CredentialCache {
            key,
            entries: DashMap::new(),
            capacity,
            ttl,
            generation: AtomicU64::new(0),
        })
    }

    pub(crate) fn fingerprint(&self, user: &str, password: &str) -> Fingerprint {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Drops everything when the htpasswd generation has moved since the last call.
    fn sync_generation(&self, generation: u64) {
        let seen = self.generation.load(Ordering::Acquire);
        if seen != generation
            && self
                .generation
                .compare_exchange(seen, generation, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.entries.clear();
        }
    }

    /// True when this exact pair was verified under `generation` and has not expired.
    pub(crate) fn contains(&self, fp: &Fingerprint, generation: u64, now: Instant) -> bool {
        self.sync_generation(generation);
        match self.entries.get(fp).map(|e| *e) {
            Some(e) if e.generation == generation && e.expires > now => true,
            Some(_) => {
                self.entries.remove(fp);
                false
            }
            None => false,
        }
    }

    /// Records a successful check. When full, expired entries go first; if it is still full, the whole
    /// cache is dropped (cheap, and only costs a re-check per active client).
    pub(crate) fn insert(&self, fp: Fingerprint, generation: u64, now: Instant) {
        self.sync_generation(generation);
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries
                .retain(|_, e| e.generation == generation && e.expires > now);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(
            fp,
            Entry {
                expires: now + self.ttl,
                generation,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the key is a keyed hash that separates user and password and never equals a plain hash.
    #[test]
    fn fingerprint_is_keyed_and_separated() {
        let a = CredentialCache::new(10, Duration::from_secs(60)).unwrap();
        let b = CredentialCache::new(10, Duration::from_secs(60)).unwrap();
        assert_eq!(a.fingerprint("u", "p"), a.fingerprint("u", "p"));
        assert_ne!(
            a.fingerprint("u", "p"),
            b.fingerprint("u", "p"),
            "per-process random key"
        );
        assert_ne!(
            a.fingerprint("ab", "c"),
            a.fingerprint("a", "bc"),
            "user/password boundary matters"
        );
    }

    // Rule: entries expire, and a generation change drops them all.
    #[test]
    fn expiry_and_generation() {
        let c = CredentialCache::new(10, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        let fp = c.fingerprint("u", "p");
        c.insert(fp, 0, now);
        assert!(c.contains(&fp, 0, now));
        assert!(!c.contains(&fp, 0, now + Duration::from_secs(61)));
        c.insert(fp, 0, now);
        assert!(!c.contains(&fp, 1, now), "new generation");
        assert_eq!(c.len(), 0);
    }

    // Rule: the cache is bounded.
    #[test]
    fn bounded() {
        let c = CredentialCache::new(3, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        for i in 0..10 {
            c.insert(c.fingerprint(&format!("u{i}"), "p"), 0, now);
            assert!(c.len() <= 3);
        }
        assert!(c.contains(&c.fingerprint("u9", "p"), 0, now));
    }
}
