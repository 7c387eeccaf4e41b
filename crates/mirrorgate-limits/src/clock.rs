//! The time source behind request rates and daily quotas.
//!
//! Limits need two clocks: a monotonic one for GCRA (never jumps back with NTP) and a wall
//! clock for "UTC day" quotas. Both come from one [`TimeSource`] so tests can move time forward
//! by a day without waiting for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::nanos::Nanos;

const DAY_SECS: u64 = 86_400;

/// A cheap-to-clone clock: the real one, or a manual one for tests.
#[derive(Debug, Clone)]
pub struct TimeSource(Arc<Inner>);

#[derive(Debug)]
enum Inner {
    System {
        origin: Instant,
    },
    Manual {
        elapsed_nanos: AtomicU64,
        unix_start: Duration,
    },
}

impl TimeSource {
    /// The machine's clocks.
    pub fn system() -> Self {
        Self(Arc::new(Inner::System {
            origin: Instant::now(),
        }))
    }

    /// A clock that only moves on [`TimeSource::advance`], starting at `unix_start` (time since
    /// the Unix epoch, UTC).
    pub fn manual(unix_start: Duration) -> Self {
        Self(Arc::new(Inner::Manual {
            elapsed_nanos: AtomicU64::new(0),
            unix_start,
        }))
    }

    /// Moves a manual clock forward; does nothing on the system clock (real time cannot be
    /// pushed).
    pub fn advance(&self, by: Duration) {
        if let Inner::Manual { elapsed_nanos, .. } = &*self.0 {
            elapsed_nanos.fetch_add(saturating_nanos(by), Ordering::SeqCst);
        }
    }

    /// Monotonic time since this source was made.
    pub fn elapsed(&self) -> Duration {
        match &*self.0 {
            Inner::System { origin } => origin.elapsed(),
            Inner::Manual { elapsed_nanos, .. } => {
                Duration::from_nanos(elapsed_nanos.load(Ordering::SeqCst))
            }
        }
    }

    /// Wall-clock time since the Unix epoch (UTC).
    pub fn unix_now(&self) -> Duration {
        match &*self.0 {
            Inner::System { .. } => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            Inner::Manual { unix_start, .. } => *unix_start + self.elapsed(),
        }
    }

    /// Days since the Unix epoch, UTC: the key of a daily quota.
    pub fn utc_day(&self) -> u64 {
        self.unix_now().as_secs() / DAY_SECS
    }

    /// Time left until the next UTC midnight, when daily quotas roll over.
    pub fn until_utc_midnight(&self) -> Duration {
        let now = self.unix_now();
        let next = Duration::from_secs((now.as_secs() / DAY_SECS + 1) * DAY_SECS);
        next.saturating_sub(now)
    }
}

impl governor::clock::Clock for TimeSource {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(saturating_nanos(self.elapsed()))
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins: the quota reset is the time to the next UTC midnight, and a manual clock rolls days.
    #[test]
    fn manual_clock_rolls_utc_day() {
        let clock = TimeSource::manual(Duration::from_secs(19_000 * DAY_SECS + DAY_SECS - 90));
        assert_eq!(clock.utc_day(), 19_000);
        assert_eq!(clock.until_utc_midnight(), Duration::from_secs(90));
        clock.advance(Duration::from_secs(91));
        assert_eq!(clock.utc_day(), 19_001);
        assert_eq!(
            clock.until_utc_midnight(),
            Duration::from_secs(DAY_SECS - 1)
        );
    }
}
