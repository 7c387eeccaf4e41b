//! Shared mode: with `[limits] redis` set, every replica adds its flushed batches into Redis and exports read
//! the sum there, so N replicas bill from one ledger.
//!
//! Layout: one hash per UTC day and tenant, `mirrorgate:usage:{day}:{tenant}`, with one field per user, route,
//! repository and counter (`{user}\x1f{route}\x1f{repository}\x1f{counter}`, the unit separator never
//! appears in validated names), incremented with `HINCRBY`. Day and tenant in the key let an export skip whole
//! hashes outside its range or tenant, and let each hash expire on its own (`EXPIREAT` the end of its day plus
//! retention). Only non-zero counters are written.
//!
//! A batch is added by one Lua script, so Redis applies all of it or nothing (a replica dying halfway sends
//! no half batch). The script first sets a marker for the batch's id (`SET NX`, kept a day); a batch whose
//! marker exists is skipped. A replica that lost the reply to an applied batch retries it with the same id,
//! so nothing is counted twice; a batch that failed is retried, so nothing is lost while the replica lives.
//! Durability across a Redis restart is Redis's own (run it with `appendonly yes`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::{Commands as _, Script};
use time::Date;

use crate::error::UsageError;
use crate::event::{Counts, Key, COUNTER_COLUMNS};
use crate::query::{format_day, parse_day, Query, Row};

/// Every key of the shared ledger starts with this (the limits use `mirrorgate:limits`).
const PREFIX: &str = "mirrorgate:usage";
/// Separates user, route, repository and counter in a hash field.
const SEP: char = '\u{1f}';
/// How long a batch's marker stays: far longer than any retry of a batch whose reply was lost.
const MARKER_TTL_SECS: u64 = 86_400;
/// Connect, read and write timeout of one call: the writer thread must not hang on a dead Redis.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Adds one batch, all or nothing, once per batch id.
/// KEYS[1]: the batch's marker; KEYS[2..]: the day-and-tenant hashes.
/// ARGV[1]: marker ttl (s); then per hash in KEYS order: expire-at (unix s), field count, field, increment, …
/// Reply: 1 applied, 0 already applied before.
const ADD_LUA: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local a = 2
for k = 2, #KEYS do
  local expire_at = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIREAT', KEYS[k], expire_at)
end
return 1
"#;

/// A connection to the shared ledger.
pub struct SharedStore {
    client: redis::Client,
    conn: Option<redis::Connection>,
    add: Script,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may carry a password.
        f.debug_struct("SharedStore").finish_non_exhaustive()
    }
}

fn failed(doing: &'static str) -> impl Fn(redis::RedisError) -> UsageError {
    move |source| UsageError::Redis { doing, source }
}

impl SharedStore {
    /// Parses the URL; connecting happens on first use (and again after any failure).
    pub fn new(url: &str) -> Result<SharedStore, UsageError> {
        let client = redis::Client::open(url).map_err(failed("parsing the redis URL"))?;
        Ok(SharedStore {
            client,
            conn: None,
            add: Script::new(ADD_LUA),
        })
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, UsageError> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(TIMEOUT)
                .map_err(failed("connecting"))?;
            conn.set_read_timeout(Some(TIMEOUT))
                .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
                .map_err(failed("connecting"))?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(UsageError::Stopped)
    }

    /// Runs `call` on the connection; any error drops it, so the next call reconnects.
    fn with<T>(
        &mut self,
        call: impl FnOnce(&mut redis::Connection) -> Result<T, UsageError>,
    ) -> Result<T, UsageError> {
        let result = call(self.connection()?);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Adds `rows` under batch id `batch` (unique per replica and batch; the same id for a retry), keeping
    /// each day `retention` after its end. `Ok(false)`: this batch was already added (a retry after a lost
    /// reply), nothing changed.
    pub fn add(
        &mut self,
        batch: &str,
        rows: &HashMap<Key, Counts>,
        retention: Duration,
    ) -> Result<bool, UsageError> {
        let mut hashes: BTreeMap<(Date, &str), Vec<(String, u64)>> = BTreeMap::new();
        for (key, counts) in rows {
            let fields = hashes.entry((key.day, key.tenant.as_str())).or_default();
            for (column, n) in COUNTER_COLUMNS.iter().zip(counts.fields()) {
                if n > 0 {
                    fields.push((field(key, column), n));
                }
            }
        }
        hashes.retain(|_, fields| !fields.is_empty());
        if hashes.is_empty() {
            return Ok(true);
        }
        let script = self.add.clone();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(format!("{PREFIX}:batch:{batch}"))
            .arg(MARKER_TTL_SECS);
        for ((day, tenant), fields) in &hashes {
            invocation
                .key(hash_key(*day, tenant))
                .arg(expire_at(*day, retention))
                .arg(fields.len());
            for (name, n) in fields {
                invocation.arg(name).arg(n.to_string());
            }
        }
        self.with(|conn| {
            invocation
                .invoke::<i64>(conn)
                .map(|applied| applied == 1)
                .map_err(failed("adding a batch"))
        })
    }

    /// Sums the shared ledger as `query` asks (every replica's batches).
    pub fn query(&mut self, query: &Query) -> Result<Vec<Row>, UsageError> {
        let rows = self.with(|conn| {
            let keys: Vec<String> = conn
                .scan_match::<_, String>(format!("{PREFIX}:????-??-??:*"))
                .map_err(failed("listing the ledger's days"))?
                .collect();
            let mut rows: HashMap<Key, Counts> = HashMap::new();
            for hash in keys {
                let Some((day, tenant)) = parse_hash_key(&hash) else {
                    continue;
                };
                if !query.selects(day, tenant) {
                    continue;
                }
                let fields: HashMap<String, i64> =
                    conn.hgetall(&hash).map_err(failed("reading a day"))?;
                for (name, n) in fields {
                    let Some((key, index)) = parse_field(day, tenant, &name) else {
                        continue;
                    };
                    rows.entry(key)
                        .or_default()
                        .add_field(index, u64::try_from(n).unwrap_or(0));
                }
            }
            Ok(rows)
        })?;
        Ok(query.group(&rows))
    }
}

/// Per-tenant `bytes_sent` of an export grouped by tenant.
pub(crate) fn day_bytes(rows: Vec<Row>) -> Result<HashMap<String, u64>, UsageError> {
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.tenant?, r.counts.bytes_sent)))
        .collect())
}

fn hash_key(day: Date, tenant: &str) -> String {
    format!("{PREFIX}:{}:{tenant}", format_day(day))
}

fn parse_hash_key(key: &str) -> Option<(Date, &str)> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(':')?;
    let (day, tenant) = (rest.get(..10)?, rest.get(10..)?.strip_prefix(':')?);
    Some((parse_day(day).ok()?, tenant))
}

fn field(key: &Key, counter: &str) -> String {
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{counter}",
        key.user, key.route, key.repository
    )
}

fn parse_field(day: Date, tenant: &str, field: &str) -> Option<(Key, usize)> {
    let mut parts = field.split(SEP);
    let (user, route, repository, counter) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let index = COUNTER_COLUMNS.iter().position(|c| *c == counter)?;
    let key = Key {
        day,
        tenant: tenant.to_string(),
        user: user.to_string(),
        route: route.to_string(),
        repository: repository.to_string(),
    };
    Some((key, index))
}

/// The end of `day` plus `retention`, in unix seconds: when the day's hash expires.
fn expire_at(day: Date, retention: Duration) -> i64 {
    let end = day
        .next_day()
        .unwrap_or(day)
        .midnight()
        .assume_utc()
        .unix_timestamp();
    end.saturating_add(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
