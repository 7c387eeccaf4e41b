//! The embedded store: one SQLite table, one row per (day, tenant, user, route, repository), counters added
//! in one transaction per flush. Operators can read it with `sqlite3` (`SELECT * FROM usage`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use time::Date;

use crate::error::UsageError;
use crate::event::{Counts, Key, COUNTER_COLUMNS};
use crate::query::{format_day, Query, Row};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    tenant TEXT NOT NULL,
    user TEXT NOT NULL,
    route TEXT NOT NULL,
    repository TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    manifest_pulls INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    blob_bytes_sent INTEGER NOT NULL DEFAULT 0,
    blob_bytes_from_cache INTEGER NOT NULL DEFAULT 0,
    pushes INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    denied INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant, user, route, repository)
) WITHOUT ROWID;
";

const UPSERT: &str = "
INSERT INTO usage (day, tenant, user, route, repository, requests, manifest_pulls, bytes_sent,
                   blob_bytes_sent, blob_bytes_from_cache, pushes, bytes_received, throttled, denied)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT (day, tenant, user, route, repository) DO UPDATE SET
    requests = requests + excluded.requests,
    manifest_pulls = manifest_pulls + excluded.manifest_pulls,
    bytes_sent = bytes_sent + excluded.bytes_sent,
    blob_bytes_sent = blob_bytes_sent + excluded.blob_bytes_sent,
    blob_bytes_from_cache = blob_bytes_from_cache + excluded.blob_bytes_from_cache,
    pushes = pushes + excluded.pushes,
    bytes_received = bytes_received + excluded.bytes_received,
    throttled = throttled + excluded.throttled,
    denied = denied + excluded.denied
";

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store for writing. WAL journaling: readers (`/usage`, `mirrorgate
    /// usage`, `sqlite3`) never block the writer, and a committed flush survives `kill -9`.
    pub fn open(path: &Path) -> Result<Store, UsageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| UsageError::Folder {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let open = |source| UsageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing store for reading only: an export never creates or changes one.
    pub fn open_read_only(path: &Path) -> Result<Store, UsageError> {
        let open = |source| UsageError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
        // Fails here, not at the first query, when the file is no SQLite database or has no ledger.
        conn.query_row("SELECT count(*) FROM usage WHERE 0", [], |_| Ok(()))
            .map_err(open)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    fn failed(&self, doing: &'static str) -> impl Fn(rusqlite::Error) -> UsageError + '_ {
        move |source| UsageError::Store {
            path: self.path.clone(),
            doing,
            source,
        }
    }

    /// Adds `rows` to the stored counters, all or nothing.
    pub fn add(&mut self, rows: &HashMap<Key, Counts>) -> Result<(), UsageError> {
        let path = self.path.clone();
        let failed = |doing| {
            let path = path.clone();
            move |source| UsageError::Store {
                path,
                doing,
                source,
            }
        };
        let tx = self
            .conn
            .transaction()
            .map_err(failed("starting a flush"))?;
        {
            let mut stmt = tx
                .prepare_cached(UPSERT)
                .map_err(failed("preparing a flush"))?;
            for (k, c) in rows {
                stmt.execute(params![
                    format_day(k.day),
                    k.tenant,
                    k.user,
                    k.route,
                    k.repository,
                    sql_int(c.requests),
                    sql_int(c.manifest_pulls),
                    sql_int(c.bytes_sent),
                    sql_int(c.blob_bytes_sent),
                    sql_int(c.blob_bytes_from_cache),
                    sql_int(c.pushes),
                    sql_int(c.bytes_received),
                    sql_int(c.throttled),
                    sql_int(c.denied),
                ])
                .map_err(failed("writing a row"))?;
            }
        }
        tx.commit().map_err(failed("committing a flush"))
    }

    /// Deletes the days before `first_kept`; returns how many rows went.
    pub fn prune_before(&self, first_kept: Date) -> Result<usize, UsageError> {
        self.conn
            .execute(
                "DELETE FROM usage WHERE day < ?1",
                params![format_day(first_kept)],
            )
            .map_err(self.failed("deleting expired days"))
    }

    /// The (tenant, repository) pairs stored for `day` (seeds the repository cap after a restart).
    pub fn repositories_on(&self, day: Date) -> Result<Vec<(String, String)>, UsageError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT tenant, repository FROM usage WHERE day = ?1")
            .map_err(self.failed("reading today's repositories"))?;
        let rows = stmt
            .query_map(params![format_day(day)], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.failed("reading today's repositories"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.failed("reading today's repositories"))
    }

    /// Sums the stored counters as `query` asks, ordered by the grouping's fields.
    pub fn query(&self, query: &Query) -> Result<Vec<Row>, UsageError> {
        let columns = query.by.columns();
        let group = columns.join(", ");
        let sums = COUNTER_COLUMNS
            .iter()
            .map(|c| format!("SUM({c})"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {group}, {sums} FROM usage \
             WHERE (?1 IS NULL OR day >= ?1) AND (?2 IS NULL OR day <= ?2) AND (?3 IS NULL OR tenant = ?3) \
             GROUP BY {group} ORDER BY {group}"
        );
        let mut stmt = self
            .conn
            .prepare(&sql)
            .map_err(self.failed("preparing an export"))?;
        let from = query.from.map(format_day);
        let to = query.to.map(format_day);
        let rows = stmt
            .query_map(params![from, to, query.tenant], |r| {
                let mut row = Row {
                    day: None,
                    tenant: None,
                    user: None,
                    route: None,
                    repository: None,
                    counts: Counts::default(),
                };
                for (i, column) in columns.iter().enumerate() {
                    let value: String = r.get(i)?;
                    match *column {
                        "day" => row.day = Some(value),
                        "tenant" => row.tenant = Some(value),
                        "user" => row.user = Some(value),
                        "route" => row.route = Some(value),
                        _ => row.repository = Some(value),
                    }
                }
                let n = columns.len();
                let get = |i: usize| {
                    r.get::<_, i64>(n + i)
                        .map(|v| u64::try_from(v).unwrap_or(0))
                };
                row.counts = Counts {
                    requests: get(0)?,
                    manifest_pulls: get(1)?,
                    bytes_sent: get(2)?,
                    blob_bytes_sent: get(3)?,
                    blob_bytes_from_cache: get(4)?,
                    pushes: get(5)?,
                    bytes_received: get(6)?,
                    throttled: get(7)?,
                    denied: get(8)?,
                };
                Ok(row)
            })
            .map_err(self.failed("running an export"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.failed("running an export"))
    }
}

/// SQLite integers are signed 64-bit; counters past `i64::MAX` (8 EiB) stay at the maximum.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::GroupBy;
    use time::macros::date;

    fn key(day: Date, tenant: &str, user: &str, repo: &str) -> Key {
        Key {
            day,
            tenant: tenant.into(),
            user: user.into(),
            route: "docker.test".into(),
            repository: repo.into(),
        }
    }

    fn bytes(n: u64) -> Counts {
        Counts {
            requests: 1,
            blob_bytes_sent: n,
            ..Counts::default()
        }
    }

    // Pins flush semantics: two flushes of the same key add up (never replace), survive reopening the file,
    // and exports sum per grouping and honour the day range and tenant filter.
    #[test]
    fn flushes_add_up_and_exports_sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/usage.db");
        let d1 = date!(2026 - 12 - 01);
        let d2 = date!(2026 - 12 - 02);
        {
            let mut store = Store::open(&path).unwrap();
            store
                .add(&HashMap::from([
                    (key(d1, "a", "alice", "r1"), bytes(100)),
                    (key(d1, "b", "bob", "r1"), bytes(7)),
                ]))
                .unwrap();
            store
                .add(&HashMap::from([
                    (key(d1, "a", "alice", "r1"), bytes(50)),
                    (key(d2, "a", "carol", "r2"), bytes(1)),
                ]))
                .unwrap();
        }
        let store = Store::open_read_only(&path).unwrap();
        let by_tenant = store
            .query(&Query::parse(None, None, None, Some("tenant")).unwrap())
            .unwrap();
        let totals: Vec<_> = by_tenant
            .iter()
            .map(|r| {
                (
                    r.tenant.clone().unwrap(),
                    r.counts.blob_bytes_sent,
                    r.counts.requests,
                )
            })
            .collect();
        assert_eq!(totals, vec![("a".into(), 151, 3), ("b".into(), 7, 1)]);
        let q = Query::parse(
            Some("2026-12-01"),
            Some("2026-12-01"),
            Some("a"),
            Some("user"),
        )
        .unwrap();
        let rows = store.query(&q).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].user.as_deref(), Some("alice"));
        assert_eq!(rows[0].counts.blob_bytes_sent, 150);
        let by_day = store
            .query(&Query {
                by: GroupBy::Day,
                ..q
            })
            .unwrap();
        assert_eq!(by_day[0].day.as_deref(), Some("2026-12-01"));
        assert_eq!(crate::query::parse_day(&format_day(d2)).ok(), Some(d2));
    }

    // Pins retention: days before the first kept day are deleted, later days stay.
    #[test]
    fn retention_deletes_old_days() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("usage.db")).unwrap();
        store
            .add(&HashMap::from([
                (key(date!(2025 - 01 - 01), "a", "-", "r"), bytes(1)),
                (key(date!(2026 - 12 - 01), "a", "-", "r"), bytes(2)),
            ]))
            .unwrap();
        assert_eq!(store.prune_before(date!(2026 - 01 - 01)).unwrap(), 1);
        let rows = store
            .query(&Query::parse(None, None, None, None).unwrap())
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].day.as_deref(), Some("2026-12-01"));
    }

    // Pins that an export never creates a store, and that a file that is not a ledger is refused on open.
    #[test]
    fn read_only_open_refuses_missing_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        assert!(matches!(
            Store::open_read_only(&missing),
            Err(UsageError::Open { .. })
        ));
        assert!(!missing.exists());
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, b"not a database at all, not even close").unwrap();
        assert!(matches!(
            Store::open_read_only(&junk),
            Err(UsageError::Open { .. })
        ));
    }
}
