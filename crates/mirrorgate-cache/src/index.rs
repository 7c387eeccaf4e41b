//! The in-memory view of the entries: size and last use of each digest, in least-recently-used order. Rebuilt
//! at start from the files (their mtime is the persisted use time), kept in step by every insert, hit and
//! eviction.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<String, Slot>,
    order: BTreeMap<u64, String>,
    next_tick: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    tick: u64,
}

impl Index {
    /// Adds (or refreshes) an entry as the most recently used.
    pub(crate) fn insert(&mut self, digest: &str, size: u64) {
        self.remove(digest);
        let tick = self.tick();
        self.entries.insert(digest.to_owned(), Slot { size, tick });
        self.order.insert(tick, digest.to_owned());
        self.total += size;
    }

    /// Marks an entry used now; false if it is not known.
    pub(crate) fn touch(&mut self, digest: &str) -> bool {
        let tick = self.tick();
        let Some(slot) = self.entries.get_mut(digest) else {
            return false;
        };
        self.order.remove(&slot.tick);
        slot.tick = tick;
        self.order.insert(tick, digest.to_owned());
        true
    }

    pub(crate) fn remove(&mut self, digest: &str) -> Option<u64> {
        let slot = self.entries.remove(digest)?;
        self.order.remove(&slot.tick);
        self.total -= slot.size;
        Some(slot.size)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(String, u64)> {
        let (_, digest) = self.order.pop_first()?;
        let slot = self.entries.remove(&digest)?;
        self.total -= slot.size;
        Some((digest, slot.size))
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.entries.contains_key(digest)
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins LRU order: a touched entry leaves the eviction queue's head, totals follow inserts and removals.
    #[test]
    fn least_recently_used_goes_first() {
        let mut ix = Index::default();
        ix.insert("a", 10);
        ix.insert("b", 20);
        ix.insert("c", 30);
        assert!(ix.touch("a"));
        assert_eq!(ix.total(), 60);
        assert_eq!(ix.pop_oldest(), Some(("b".into(), 20)));
        assert_eq!(ix.pop_oldest(), Some(("c".into(), 30)));
        assert_eq!(ix.total(), 10);
        ix.insert("a", 5);
        assert_eq!((ix.len(), ix.total()), (1, 5));
        assert!(!ix.touch("zz"));
    }
}
