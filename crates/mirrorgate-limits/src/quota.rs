//! Daily byte quotas: a tenant's bytes sent per UTC day, counted while bodies stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::TimeSource;
use crate::decision::{LimitKind, LimitScope, Limited};

/// A tenant's bytes sent today. In shared mode, bytes not yet flushed to Redis wait in
/// `unflushed`.
#[derive(Debug)]
pub(crate) struct DailyQuota {
    pub(crate) limit: u64,
    pub(crate) clock: TimeSource,
    /// (UTC day, bytes sent that day by this replica)
    pub(crate) today: Mutex<(u64, u64)>,
    pub(crate) unflushed: AtomicU64,
    pub(crate) shared: bool,
}

impl DailyQuota {
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn used(&self) -> u64 {
        let day = self.clock.utc_day();
        let mut today = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if today.0 != day {
            *today = (day, 0);
        }
        today.1
    }

    /// Raises today's count to at least `used` (never lowers it): the ledger's count for the day, so a
    /// restart or a reload does not hand a tenant a fresh quota.
    pub(crate) fn seed(&self, used: u64) {
        let day = self.clock.utc_day();
        let mut today = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if today.0 != day {
            *today = (day, 0);
        }
        today.1 = today.1.max(used);
    }

    pub(crate) fn record(&self, n: u64) {
        let day = self.clock.utc_day();
        {
            let mut today = self.today.lock().unwrap_or_else(|p| p.into_inner());
            if today.0 != day {
                *today = (day, 0);
            }
            today.1 = today.1.saturating_add(n);
        }
        if self.shared {
            self.unflushed.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn check(&self) -> Result<(), Limited> {
        if self.used() < self.limit {
            return Ok(());
        }
        let until = self.clock.until_utc_midnight();
        Err(Limited {
            kind: LimitKind::Quota,
            scope: LimitScope::Tenant,
            retry_after: until,
            limit: self.limit,
            remaining: 0,
            reset: until,
        })
    }
}

/// Where a body reports the bytes it sent.
#[derive(Debug, Clone)]
pub(crate) struct QuotaHandle(pub(crate) Arc<DailyQuota>);

impl QuotaHandle {
    pub(crate) fn record(&self, n: u64) {
        self.0.record(n);
    }
}
