use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::event::{Activity, Event};
use crate::{today, GroupBy, Ledger, LedgerOptions};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private redis-server on a unix socket (append-only file on, so a restart keeps the data), killed on
/// drop.
struct RedisProcess {
    child: Option<Child>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl RedisProcess {
    fn start() -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: shared-mode tests need it"
        );
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("r.sock");
        let mut r = RedisProcess {
            child: None,
            socket,
            dir,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = Command::new(REDIS_SERVER)
            .args(["--port", "0", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn replica(dir: &Path, name: &str, url: &str) -> Ledger {
    Ledger::start(
        LedgerOptions {
            store: dir.join(format!("{name}.db")),
            retention: Duration::from_secs(30 * 86_400),
            flush_every: Duration::from_secs(3600),
            queue: 1024,
            max_repositories: 100,
            redis: Some(url.to_string()),
            max_held_rows: 1000,
        },
        None,
    )
    .unwrap()
}

fn pull(tenant: &str, user: &str, bytes: u64) -> Event {
    Event {
        day: today(),
        tenant: Some(Arc::from(tenant)),
        user: Some(Arc::from(user)),
        route: "docker.test".into(),
        repository: Some("library/alpine".into()),
        activity: Activity::BlobPull,
        status: 200,
        bytes_sent: bytes,
        bytes_received: 0,
    }
}

fn by(group: GroupBy) -> Query {
    Query {
        from: None,
        to: None,
        tenant: None,
        by: group,
    }
}

fn blob_bytes(rows: &[Row]) -> Vec<(Option<String>, Option<String>, u64)> {
    rows.iter()
        .map(|r| (r.tenant.clone(), r.user.clone(), r.counts.blob_bytes_sent))
        .collect()
}

// Pins shared mode: two replicas add into one Redis, either one's export shows the sum per tenant and user,
// and nothing is written to the local SQLite file.
#[test]
fn replicas_add_up_in_redis() {
    let redis = RedisProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), "a", &redis.url());
    let b = replica(dir.path(), "b", &redis.url());
    a.record(pull("acme", "alice", 100));
    b.record(pull("acme", "alice", 20));
    b.record(pull("acme", "bob", 3));
    a.record(pull("beta", "carol", 7));
    a.flush().unwrap();
    let rows = b.query(&by(GroupBy::User)).unwrap();
    assert_eq!(
        blob_bytes(&rows),
        vec![
            (Some("acme".into()), Some("alice".into()), 120),
            (Some("acme".into()), Some("bob".into()), 3),
            (Some("beta".into()), Some("carol".into()), 7),
        ]
    );
    let days = a.query(&by(GroupBy::Day)).unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].counts.requests, 4);
    assert_eq!(days[0].counts.bytes_sent, 130);
    assert_eq!(a.bytes_sent_on(today()).unwrap().get("acme"), Some(&123));
    assert!(!dir.path().join("a.db").exists());
    a.close();
    b.close();
}

// Pins exactly-once batches: the same batch id sent twice (a retry after a lost reply) counts once; a new
// id counts again; the day's hash expires per retention.
#[test]
fn a_retried_batch_counts_once() {
    let redis = RedisProcess::start();
    let mut store = SharedStore::new(&redis.url()).unwrap();
    let key = Key {
        day: today(),
        tenant: "acme".into(),
        user: "alice".into(),
        route: "docker.test".into(),
        repository: "library/alpine".into(),
    };
    let rows = HashMap::from([(key, Counts::of(&pull("acme", "alice", 50)))]);
    let retention = Duration::from_secs(86_400);
    assert!(store.add("r1-1", &rows, retention).unwrap());
    assert!(!store.add("r1-1", &rows, retention).unwrap());
    assert!(store.add("r1-2", &rows, retention).unwrap());
    let total = store.query(&by(GroupBy::Tenant)).unwrap();
    assert_eq!(total[0].counts.blob_bytes_sent, 100);
    assert_eq!(total[0].counts.requests, 2);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let ttl: i64 = conn.ttl(hash_key(today(), "acme")).unwrap();
    assert!(ttl > 86_400 && ttl <= 2 * 86_400, "ttl {ttl}");
}

// Pins the outage path: with Redis gone, flushes fail, counts stay in memory (gauge and metric say so) up to
// `max_held_rows` rows (further new rows dropped and counted); once Redis is back the next flush writes them, once.
#[test]
fn redis_down_keeps_counts_and_retries() {
    let mut redis = RedisProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let ledger = Ledger::start(
        LedgerOptions {
            store: dir.path().join("u.db"),
            retention: Duration::from_secs(30 * 86_400),
            flush_every: Duration::from_secs(3600),
            queue: 1024,
            max_repositories: 100,
            redis: Some(redis.url()),
            max_held_rows: 3,
        },
        Some(&registry),
    )
    .unwrap();
    ledger.record(pull("acme", "alice", 10));
    ledger.flush().unwrap();
    redis.kill();
    ledger.record(pull("acme", "alice", 5));
    assert!(matches!(ledger.flush(), Err(UsageError::Redis { .. })));
    let gauge = |name: &str| {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.get_metric()[0].get_gauge().get_value())
    };
    assert_eq!(gauge("mirrorgate_usage_redis_up"), Some(0.0));
    assert_eq!(gauge("mirrorgate_usage_pending_rows"), Some(1.0));
    ledger.record(pull("acme", "alice", 1));
    // The bound (3 rows: alice's unconfirmed batch, alice's and bob's new rows): carol's new row is dropped and
    // counted; rows already held still add up.
    ledger.record(pull("acme", "bob", 2));
    ledger.record(pull("acme", "carol", 4));
    ledger.record(pull("acme", "bob", 2));
    let _ = ledger.flush();
    assert_eq!(gauge("mirrorgate_usage_pending_rows"), Some(3.0));
    let dropped = registry
        .gather()
        .iter()
        .find(|f| f.name() == "mirrorgate_usage_dropped_total")
        .map(|f| f.get_metric()[0].get_counter().get_value());
    assert_eq!(dropped, Some(1.0));
    redis.restart();
    let rows = ledger.query(&by(GroupBy::Tenant)).unwrap();
    assert_eq!(rows[0].counts.blob_bytes_sent, 20);
    assert_eq!(rows[0].counts.requests, 5);
    assert_eq!(gauge("mirrorgate_usage_redis_up"), Some(1.0));
    assert_eq!(gauge("mirrorgate_usage_pending_rows"), Some(0.0));
    ledger.close();
}

// Pins the key and field layout round trip, including tenants with `:` in the name.
#[test]
fn keys_and_fields_round_trip() {
    let day = today();
    assert_eq!(parse_hash_key(&hash_key(day, "a:b")), Some((day, "a:b")));
    let key = Key {
        day,
        tenant: "t".into(),
        user: "u".into(),
        route: "r".into(),
        repository: "x/y".into(),
    };
    assert_eq!(
        parse_field(day, "t", &field(&key, "pushes")),
        Some((key, 5))
    );
    assert_eq!(parse_hash_key("mirrorgate:usage:batch:1-2"), None);
}
