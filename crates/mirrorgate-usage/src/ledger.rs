//! The ledger handle the request path records into, and the writer thread behind it.
//!
//! The request path must never wait on the store: [`Ledger::record`] puts the event on a bounded queue and
//! returns; when the queue is full the event is dropped, counted in `mirrorgate_usage_dropped_total` and
//! logged. One writer thread sums events in memory and adds them to the store every
//! [`LedgerOptions::flush_every`] in one transaction, so a `kill -9` loses at most one interval; a clean
//! shutdown ([`Ledger::close`]) flushes what is left.
//!
//! With [`LedgerOptions::redis`] set the flushes go to the shared ledger in Redis instead (see `shared`): a
//! batch keeps its id until Redis took it, so a retry never counts twice. While the store (SQLite or Redis)
//! fails, counts stay in memory, up to [`LedgerOptions::max_held_rows`] rows; past that, events that would need a new row
//! are dropped and counted in `mirrorgate_usage_dropped_total` (events for rows already held still add up).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge, Registry};
use time::Date;

use crate::batch::{Batch, RepositoryCap};
use crate::error::UsageError;
use crate::event::{Counts, Event, Key};
use crate::query::{Query, Row};
use crate::shared::{day_bytes, SharedStore};
use crate::store::Store;

/// Rows held in memory while the store fails (about 200 bytes each). A day has at most one row per tenant,
/// user, route and (capped) repository, so this is reached only by a long outage on a large mirror.
pub const MAX_HELD_ROWS: usize = 200_000;

/// How long an admin or shutdown flush may wait for the writer before giving up.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// How the ledger is run.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// The SQLite file.
    pub store: PathBuf,
    /// Days older than this are deleted (at start and once a day).
    pub retention: Duration,
    /// The longest time counted events stay in memory only.
    pub flush_every: Duration,
    /// Events waiting for the writer; past it new events are dropped (and counted).
    pub queue: usize,
    /// Distinct repositories per tenant and day before further ones count as `other`.
    pub max_repositories: usize,
    /// Shared mode: the Redis URL of `[limits] redis`. Flushes go there instead of to `store`, and exports
    /// read the sum of every replica from there. The repository cap is then per replica.
    pub redis: Option<String>,
    /// Rows held in memory while the store fails, before new rows are dropped ([`MAX_HELD_ROWS`]).
    pub max_held_rows: usize,
}

/// The ledger's own metric families, registered next to the gateway's.
#[derive(Clone)]
struct LedgerMetrics {
    dropped: IntCounter,
    flush_failures: IntCounter,
    pending_rows: IntGauge,
    redis_up: IntGauge,
}

impl LedgerMetrics {
    fn new(registry: Option<&Registry>) -> Result<Self, prometheus::Error> {
        let m = LedgerMetrics {
            dropped: IntCounter::new(
                "mirrorgate_usage_dropped_total",
                "Finished requests the usage ledger could not count: its queue was full, or the store failed so long \
                 that the counts held in memory reached their bound.",
            )?,
            flush_failures: IntCounter::new(
                "mirrorgate_usage_flush_failures_total",
                "Usage ledger flushes that failed (their counts are kept in memory and retried).",
            )?,
            pending_rows: IntGauge::new(
                "mirrorgate_usage_pending_rows",
                "Usage ledger rows counted in memory and not yet written to the store.",
            )?,
            redis_up: IntGauge::new(
                "mirrorgate_usage_redis_up",
                "1 when the last flush to the shared usage ledger in Redis worked, 0 when it failed \
                 (counts are kept in memory and retried); 1 without shared mode.",
            )?,
        };
        m.redis_up.set(1);
        if let Some(registry) = registry {
            registry.register(Box::new(m.redis_up.clone()))?;
            registry.register(Box::new(m.dropped.clone()))?;
            registry.register(Box::new(m.flush_failures.clone()))?;
            registry.register(Box::new(m.pending_rows.clone()))?;
        }
        Ok(m)
    }
}

enum Command {
    Record(Event),
    Flush(SyncSender<Result<(), UsageError>>),
    Stop,
}

/// The running ledger. Share it as `Arc<Ledger>`.
pub struct Ledger {
    tx: SyncSender<Command>,
    metrics: LedgerMetrics,
    store: PathBuf,
    redis: Option<String>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Today, in UTC: the day an event is counted on.
pub fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

impl Ledger {
    /// Opens the store (creating it), deletes expired days, and starts the writer thread. Blocking file I/O:
    /// call it at start-up, before serving.
    pub fn start(
        options: LedgerOptions,
        registry: Option<&Registry>,
    ) -> Result<Ledger, UsageError> {
        let metrics = LedgerMetrics::new(registry).map_err(|_| UsageError::Stopped)?;
        let mut cap = RepositoryCap::new(options.max_repositories);
        let day = today();
        let sink = match &options.redis {
            Some(url) => Sink::Shared {
                store: Box::new(SharedStore::new(url)?),
                pending: None,
                replica: replica_id(),
                batches: 0,
            },
            None => {
                let store = Store::open(&options.store)?;
                store.prune_before(first_kept(day, options.retention))?;
                for (tenant, repository) in store.repositories_on(day)? {
                    cap.seed(day, &tenant, repository);
                }
                Sink::Local(store)
            }
        };
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        let writer = Writer {
            sink,
            cap,
            batch: Batch::default(),
            metrics: metrics.clone(),
            retention: options.retention,
            max_held_rows: options.max_held_rows,
            pruned_on: day,
        };
        let flush_every = options.flush_every;
        let handle = std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || writer.run(&rx, flush_every))
            .map_err(|source| UsageError::Folder {
                path: options.store.clone(),
                source,
            })?;
        Ok(Ledger {
            tx,
            metrics,
            store: options.store,
            redis: options.redis,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Counts one finished response. Never blocks: a full queue drops the event (counted and logged).
    pub fn record(&self, event: Event) {
        match self.tx.try_send(Command::Record(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics
                    .drop_one("usage ledger queue full: finished requests were not counted");
            }
        }
    }

    /// Writes what is counted in memory now, and waits for it. Blocking.
    pub fn flush(&self) -> Result<(), UsageError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Command::Flush(reply))
            .map_err(|_| UsageError::Stopped)?;
        answer
            .recv_timeout(FLUSH_WAIT)
            .map_err(|_| UsageError::Stopped)?
    }

    /// Flushes, then answers `query` from the store (so the answer includes every request finished so far).
    /// Blocking.
    pub fn query(&self, query: &Query) -> Result<Vec<Row>, UsageError> {
        self.flush()?;
        match &self.redis {
            Some(url) => SharedStore::new(url)?.query(query),
            None => Store::open_read_only(&self.store)?.query(query),
        }
    }

    /// Response bytes each tenant was sent on `day`, as the ledger counts them (every replica's in shared
    /// mode): what the daily byte quotas start from, so a restart does not reset them. Blocking.
    pub fn bytes_sent_on(
        &self,
        day: Date,
    ) -> Result<std::collections::HashMap<String, u64>, UsageError> {
        day_bytes(self.query(&Query {
            from: Some(day),
            to: Some(day),
            tenant: None,
            by: crate::GroupBy::Tenant,
        })?)
    }

    /// The store's file.
    pub fn store_path(&self) -> &Path {
        &self.store
    }

    /// Flushes what is left and stops the writer. Blocking; later events are dropped.
    pub fn close(&self) {
        if self.tx.send(Command::Stop).is_err() {
            return;
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the usage writer panicked; its last counts are lost");
            }
        }
    }
}

/// The first day retention keeps.
fn first_kept(today: Date, retention: Duration) -> Date {
    let days = i64::try_from(retention.as_secs() / 86_400).unwrap_or(i64::MAX);
    today
        .checked_sub(time::Duration::days(days))
        .unwrap_or(Date::MIN)
}

/// A replica's name in batch ids: process id and start time, unique across replicas and restarts.
fn replica_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

impl LedgerMetrics {
    /// Counts one event that could not be counted, logging at 1, 2, 4, 8, … drops (visible without flooding
    /// the log under overload).
    fn drop_one(&self, why: &'static str) {
        self.dropped.inc();
        let dropped = self.dropped.get();
        if dropped.is_power_of_two() {
            tracing::warn!(dropped, "{why}");
        }
    }
}

/// Where flushes go.
enum Sink {
    Local(Store),
    Shared {
        // Boxed: a live Redis connection is much larger than the SQLite handle.
        store: Box<SharedStore>,
        /// The batch Redis has not confirmed yet, with its id: retried as is until it has.
        pending: Option<(String, HashMap<Key, Counts>)>,
        replica: String,
        batches: u64,
    },
}

struct Writer {
    sink: Sink,
    cap: RepositoryCap,
    batch: Batch,
    metrics: LedgerMetrics,
    retention: Duration,
    max_held_rows: usize,
    pruned_on: Date,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>, flush_every: Duration) {
        let mut next = Instant::now() + flush_every;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Record(event)) => self.count(&event),
                Ok(Command::Flush(reply)) => {
                    let _ = reply.try_send(self.flush());
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // Events queued before the stop are counted too.
                    while let Ok(Command::Record(event)) = rx.try_recv() {
                        self.count(&event);
                    }
                    if let Err(error) = self.flush() {
                        tracing::error!(error = %mirrorgate_report::Report(&error), "last usage flush failed; its counts are lost");
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(error) = self.flush() {
                        tracing::warn!(error = %mirrorgate_report::Report(&error), "usage flush failed; counts kept in memory and retried");
                    }
                    self.daily();
                    next = Instant::now() + flush_every;
                }
            }
        }
    }

    /// Rows in memory: the batch and, in shared mode, the batch Redis has not confirmed.
    fn held(&self) -> usize {
        let pending = match &self.sink {
            Sink::Shared {
                pending: Some((_, rows)),
                ..
            } => rows.len(),
            _ => 0,
        };
        self.batch.len() + pending
    }

    fn count(&mut self, event: &Event) {
        let key = self.cap.key(event);
        if self.held() >= self.max_held_rows && !self.batch.contains(&key) {
            self.metrics.drop_one(
                "usage store unreachable for long: memory for held counts is full, new rows are not counted",
            );
            return;
        }
        self.batch.add(key, &Counts::of(event));
        self.metrics.pending_rows.set(gauge(self.held()));
    }

    fn flush(&mut self) -> Result<(), UsageError> {
        let result = match &mut self.sink {
            Sink::Local(store) => {
                if self.batch.is_empty() {
                    return Ok(());
                }
                let rows = self.batch.take();
                let result = store.add(&rows);
                if result.is_err() {
                    self.batch.restore(rows);
                }
                result
            }
            Sink::Shared {
                store,
                pending,
                replica,
                batches,
            } => {
                let result = flush_shared(
                    store,
                    pending,
                    &mut self.batch,
                    replica,
                    batches,
                    self.retention,
                );
                let up = i64::from(result.is_ok());
                if self.metrics.redis_up.get() != up {
                    self.metrics.redis_up.set(up);
                    match &result {
                        Ok(()) => tracing::info!(
                            "shared usage ledger in redis reachable again; held counts written"
                        ),
                        Err(error) => tracing::warn!(
                            error = %mirrorgate_report::Report(error),
                            max_rows = self.max_held_rows,
                            "shared usage ledger in redis unreachable; counts kept in memory and retried"
                        ),
                    }
                }
                result
            }
        };
        if result.is_err() {
            self.metrics.flush_failures.inc();
        }
        self.metrics.pending_rows.set(gauge(self.held()));
        result
    }

    /// Once per UTC day: delete expired days and forget yesterday's repository names.
    fn daily(&mut self) {
        let day = today();
        if day == self.pruned_on {
            return;
        }
        self.pruned_on = day;
        self.cap.forget_before(day);
        // Redis expires each day's hash on its own.
        let Sink::Local(store) = &self.sink else {
            return;
        };
        match store.prune_before(first_kept(day, self.retention)) {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "usage rows past retention deleted"),
            Err(error) => {
                tracing::warn!(error = %mirrorgate_report::Report(&error), "cannot delete expired usage rows")
            }
        }
    }
}

/// Sends the unconfirmed batch (same id as before), then the new one (a new id), until both are in Redis.
fn flush_shared(
    store: &mut SharedStore,
    pending: &mut Option<(String, HashMap<Key, Counts>)>,
    batch: &mut Batch,
    replica: &str,
    batches: &mut u64,
    retention: Duration,
) -> Result<(), UsageError> {
    loop {
        if pending.is_none() {
            if batch.is_empty() {
                return Ok(());
            }
            *batches += 1;
            *pending = Some((format!("{replica}-{batches}"), batch.take()));
        }
        if let Some((id, rows)) = pending.as_ref() {
            if !store.add(id, rows, retention)? {
                tracing::debug!(batch = %id, "usage batch was already in redis (its reply had been lost)");
            }
        }
        *pending = None;
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Activity;

    fn options(dir: &Path, flush_every: Duration) -> LedgerOptions {
        LedgerOptions {
            store: dir.join("usage.db"),
            retention: Duration::from_secs(400 * 86_400),
            flush_every,
            queue: 1024,
            max_repositories: 100,
            redis: None,
            max_held_rows: MAX_HELD_ROWS,
        }
    }

    fn pull(bytes: u64) -> Event {
        Event {
            day: today(),
            tenant: Some("acme".into()),
            user: Some("alice".into()),
            route: "docker.test".into(),
            repository: Some("library/alpine".into()),
            activity: Activity::BlobPull,
            status: 200,
            bytes_sent: bytes,
            bytes_received: 0,
        }
    }

    fn total(path: &Path) -> u64 {
        Store::open_read_only(path)
            .and_then(|s| s.query(&Query::parse(None, None, None, Some("tenant"))?))
            .map(|rows| rows.iter().map(|r| r.counts.blob_bytes_sent).sum())
            .unwrap_or(0)
    }

    // Pins the durability promises: nothing is lost on a clean close, the timer flushes on its own within an
    // interval, and a second start adds to (never replaces) what the first wrote.
    #[test]
    fn close_flushes_and_the_timer_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::start(options(dir.path(), Duration::from_secs(3600)), None).unwrap();
        ledger.record(pull(10));
        ledger.record(pull(5));
        ledger.close();
        assert_eq!(total(&dir.path().join("usage.db")), 15);

        let ledger = Ledger::start(options(dir.path(), Duration::from_millis(50)), None).unwrap();
        ledger.record(pull(100));
        let deadline = Instant::now() + Duration::from_secs(5);
        while total(&dir.path().join("usage.db")) != 115 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(total(&dir.path().join("usage.db")), 115);
        ledger.close();
    }

    // Pins that a query sees every event recorded before it (it flushes first), and that a full queue drops
    // and counts instead of blocking.
    #[test]
    fn query_flushes_first_and_full_queue_drops() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let ledger = Ledger::start(
            options(dir.path(), Duration::from_secs(3600)),
            Some(&registry),
        )
        .unwrap();
        ledger.record(pull(42));
        let rows = ledger
            .query(&Query::parse(None, None, Some("acme"), Some("repository")).unwrap())
            .unwrap();
        assert_eq!(rows[0].repository.as_deref(), Some("library/alpine"));
        assert_eq!(rows[0].counts.blob_bytes_sent, 42);
        ledger.close();
        // After close the writer is gone: records are dropped, counted, and return at once.
        ledger.record(pull(1));
        assert_eq!(ledger.metrics.dropped.get(), 1);
        assert!(registry
            .gather()
            .iter()
            .any(|f| f.name() == "mirrorgate_usage_dropped_total"));
    }

    // Pins the retention arithmetic: `retention` days before today are kept, older ones go.
    #[test]
    fn first_kept_day() {
        let d = time::macros::date!(2026 - 12 - 31);
        assert_eq!(
            first_kept(d, Duration::from_secs(30 * 86_400)),
            time::macros::date!(2026 - 12 - 01)
        );
    }
}
