//! Counts gathered in memory between two flushes, and the per-tenant, per-day cap on distinct repositories
//! that keeps a client from growing the ledger without bound.

use std::collections::{HashMap, HashSet};

use time::Date;

use crate::event::{Counts, Event, Key, NONE, OTHER_REPOSITORY};

/// The rows added since the last flush.
#[derive(Debug, Default)]
pub struct Batch {
    rows: HashMap<Key, Counts>,
}

impl Batch {
    pub fn add(&mut self, key: Key, counts: &Counts) {
        self.rows.entry(key).or_default().add(counts);
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.rows.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Hands the rows over and leaves the batch empty.
    pub fn take(&mut self) -> HashMap<Key, Counts> {
        std::mem::take(&mut self.rows)
    }

    /// Puts rows back after a failed flush (they are retried with the next one).
    pub fn restore(&mut self, rows: HashMap<Key, Counts>) {
        for (key, counts) in rows {
            self.add(key, &counts);
        }
    }
}

/// Which repositories each tenant already has a row for, per day. Past `cap` distinct names a tenant's further
/// repositories that day are counted under [`OTHER_REPOSITORY`].
#[derive(Debug)]
pub struct RepositoryCap {
    cap: usize,
    seen: HashMap<(Date, String), HashSet<String>>,
}

impl RepositoryCap {
    pub fn new(cap: usize) -> Self {
        RepositoryCap {
            cap,
            seen: HashMap::new(),
        }
    }

    /// Notes a repository the store already holds (at start, so a restart does not reset the cap).
    pub fn seed(&mut self, day: Date, tenant: &str, repository: String) {
        self.seen
            .entry((day, tenant.to_string()))
            .or_default()
            .insert(repository);
    }

    /// The ledger key of `event`, its repository capped.
    pub fn key(&mut self, event: &Event) -> Key {
        let tenant = event.tenant.as_deref().unwrap_or(NONE).to_string();
        let repository = match event.repository.as_deref() {
            None => NONE.to_string(),
            Some(repo) => {
                let seen = self.seen.entry((event.day, tenant.clone())).or_default();
                if seen.contains(repo) {
                    repo.to_string()
                } else if seen.len() < self.cap {
                    seen.insert(repo.to_string());
                    repo.to_string()
                } else {
                    OTHER_REPOSITORY.to_string()
                }
            }
        };
        Key {
            day: event.day,
            tenant,
            user: event.user.as_deref().unwrap_or(NONE).to_string(),
            route: event.route.clone(),
            repository,
        }
    }

    /// Forgets days before `today` (their rows are written; only today and later take new names).
    pub fn forget_before(&mut self, today: Date) {
        self.seen.retain(|(day, _), _| *day >= today);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Activity;

    fn pull(day: Date, tenant: &str, repo: &str) -> Event {
        Event {
            day,
            tenant: Some(tenant.into()),
            user: None,
            route: "docker.test".into(),
            repository: Some(repo.into()),
            activity: Activity::BlobPull,
            status: 200,
            bytes_sent: 10,
            bytes_received: 0,
        }
    }

    // Pins the cardinality cap: past `cap` distinct repositories per tenant and day, new names go to `other`;
    // names already seen keep their row, other tenants and the next day have their own budget.
    #[test]
    fn repositories_past_the_cap_count_as_other() {
        let d1 = time::macros::date!(2026 - 12 - 01);
        let d2 = time::macros::date!(2026 - 12 - 02);
        let mut cap = RepositoryCap::new(2);
        assert_eq!(cap.key(&pull(d1, "a", "r1")).repository, "r1");
        assert_eq!(cap.key(&pull(d1, "a", "r2")).repository, "r2");
        assert_eq!(cap.key(&pull(d1, "a", "r3")).repository, OTHER_REPOSITORY);
        assert_eq!(cap.key(&pull(d1, "a", "r1")).repository, "r1");
        assert_eq!(cap.key(&pull(d1, "b", "r3")).repository, "r3");
        assert_eq!(cap.key(&pull(d2, "a", "r3")).repository, "r3");
        cap.forget_before(d2);
        cap.seed(d2, "a", "r9".into());
        assert_eq!(cap.key(&pull(d2, "a", "r4")).repository, OTHER_REPOSITORY);
    }

    // Pins aggregation: events with the same key add up in one row; a failed flush's rows come back intact.
    #[test]
    fn batch_adds_and_restores() {
        let d = time::macros::date!(2026 - 12 - 01);
        let mut cap = RepositoryCap::new(10);
        let mut batch = Batch::default();
        for _ in 0..3 {
            let e = pull(d, "a", "r1");
            batch.add(cap.key(&e), &Counts::of(&e));
        }
        assert_eq!(batch.len(), 1);
        let rows = batch.take();
        assert!(batch.is_empty());
        batch.restore(rows);
        let rows = batch.take();
        let counts = rows.values().next().copied().unwrap_or_default();
        assert_eq!((counts.requests, counts.blob_bytes_sent), (3, 30));
    }
}
