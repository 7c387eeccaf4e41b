//! Store-level tests: fills, verification, single flight, eviction, restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mirrorgate_registry::{Digest, Tag};
use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::{sha256_of, Begin, Cache, CacheError, CacheSettings, FileBody, Observer};

#[derive(Default)]
struct Counts {
    evicted: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

impl Observer for Counts {
    fn evicted(&self, n: u64) {
        self.evicted.fetch_add(n, Ordering::Relaxed);
    }
    fn fill_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    fn size(&self, bytes: u64, _: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }
}

fn settings(dir: &std::path::Path, max_size: u64) -> CacheSettings {
    CacheSettings {
        dir: dir.to_path_buf(),
        max_size,
        min_free: None,
        fill_idle_timeout: Duration::from_secs(5),
    }
}

fn open(dir: &std::path::Path, max_size: u64) -> (Cache, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let cache = Cache::open(settings(dir, max_size), counts.clone()).unwrap();
    (cache, counts)
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::parse(&sha256_of(bytes)).unwrap()
}

/// A body fed chunk by chunk from the test.
fn channel_body() -> (
    mpsc::Sender<Result<Bytes, BoxError>>,
    impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + Unpin + 'static,
) {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, BoxError>>(4);
    let s = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, Box::pin(s))
}

fn once_body(
    bytes: &'static [u8],
) -> impl futures_util::Stream<Item = Result<Bytes, BoxError>> + Send + Unpin + 'static {
    futures_util::stream::iter(vec![Ok(Bytes::from_static(bytes))])
}

pub(crate) async fn collect(mut body: FileBody) -> Result<Vec<u8>, CacheError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn lead(cache: &Cache, digest: &Digest) -> crate::Filler {
    lead_in(cache, digest, "s")
}

fn lead_in(cache: &Cache, digest: &Digest, scope: &str) -> crate::Filler {
    match cache.begin(digest, Some(scope)).unwrap() {
        Some(Begin::Lead(f)) => f,
        _ => panic!("expected to lead"),
    }
}

// Pins a complete fill: the leader's reader gets every byte and a clean end, the entry exists afterwards, the
// scope is recorded as referencing it, and all of it survives a restart.
#[tokio::test]
async fn fill_commits_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20);
    let data: &'static [u8] = b"layer bytes";
    let d = digest_of(data);
    let reader =
        lead_in(&cache, &d, "r|team-a/app").start(Some(data.len() as u64), once_body(data));
    assert_eq!(collect(reader).await.unwrap(), data);
    // The reference is written just after the reader's clean end: give the task its turn.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cache.contains(&d));
    assert!(cache.references("r|team-a/app", &d));
    assert!(!cache.references("r|team-b/other", &d));
    drop(cache);

    let (cache, _) = open(dir.path(), 1 << 20);
    let entry = cache.open_entry(&d).unwrap();
    assert_eq!(entry.size, data.len() as u64);
    let body = FileBody::range(entry.file.clone(), d.clone(), 6, entry.size);
    assert_eq!(collect(body).await.unwrap(), b"bytes");
    assert!(cache.references("r|team-a/app", &d));
}

// Pins the rule that a wrong body never becomes an entry and its reader never sees a clean end.
#[tokio::test]
async fn wrong_digest_fill_fails_reader_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, counts) = open(dir.path(), 1 << 20);
    let d = digest_of(b"the real bytes");
    let reader = lead_in(&cache, &d, "s").start(Some(9), once_body(b"evil byte"));
    let err = collect(reader).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(!cache.contains(&d));
    assert!(!cache.references("s", &d));
    assert_eq!(counts.failed.load(Ordering::Relaxed), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}

// Pins that a body shorter than its announced length (upstream cut off) fails the reader, and an upstream
// error mid-body too.
#[tokio::test]
async fn truncated_or_failing_body_fails_reader() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, counts) = open(dir.path(), 1 << 20);
    let data: &'static [u8] = b"0123456789";
    let d = digest_of(data);
    let reader = lead(&cache, &d).start(Some(10), once_body(&data[..5]));
    assert!(matches!(
        collect(reader).await,
        Err(CacheError::FillFailed { .. })
    ));
    let (tx, body) = channel_body();
    let reader = lead(&cache, &d).start(None, body);
    tx.send(Ok(Bytes::from_static(b"01234"))).await.unwrap();
    tx.send(Err("connection reset".into())).await.unwrap();
    assert!(collect(reader).await.is_err());
    assert!(!cache.contains(&d));
    assert_eq!(counts.failed.load(Ordering::Relaxed), 2);
}

// Pins single flight: N concurrent requests for one digest make one leader (one upstream fetch); every joiner
// streams the body while it is written (first bytes before the last are sent) and gets every byte; a joiner
// that leaves early does not stop the fill for the others.
#[tokio::test]
async fn concurrent_requests_share_one_fill() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 30);
    let chunks: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 100_000]).collect();
    let all: Vec<u8> = chunks.concat();
    let d = digest_of(&all);

    let mut leaders = 0;
    let mut joiners = Vec::new();
    let mut filler = None;
    for _ in 0..20 {
        match cache.begin(&d, Some("s")).unwrap().unwrap() {
            Begin::Lead(f) => {
                leaders += 1;
                filler = Some(f);
            }
            Begin::Join(j) => joiners.push(j),
        }
    }
    assert_eq!(leaders, 1, "one upstream fetch");
    let (tx, body) = channel_body();
    let leader_reader = filler.unwrap().start(Some(all.len() as u64), body);

    let mut tasks = Vec::new();
    for (i, j) in joiners.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut body = j.wait().await.expect("the leader fills");
            if i == 0 {
                // Leaves after the first chunk.
                let _ = body.next().await;
                return None;
            }
            Some(collect(body).await)
        }));
    }
    // The first chunk reaches a joiner before the rest is sent.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let follower = cache.begin(&d, Some("s")).unwrap().unwrap();
    let Begin::Join(follower) = follower else {
        panic!("still filling")
    };
    tx.send(Ok(Bytes::from(chunks[0].clone()))).await.unwrap();
    tokio::spawn(async move {
        let mut body = follower.wait().await.unwrap();
        let first = body.next().await.unwrap().unwrap();
        let _ = first_tx.send(first.len());
        collect(body).await
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(5), first_rx)
            .await
            .unwrap()
            .unwrap()
            > 0
    );
    drop(leader_reader); // the leader's own client disconnects
    for c in &chunks[1..] {
        tx.send(Ok(Bytes::from(c.clone()))).await.unwrap();
    }
    drop(tx);
    for t in tasks {
        if let Some(result) = t.await.unwrap() {
            assert_eq!(sha256_of(&result.unwrap()), d.as_str());
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cache.contains(&d));
}

// Pins that a leader without a cacheable answer (404, redirect) releases its joiners to go upstream.
#[tokio::test]
async fn abandoned_leader_releases_joiners() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20);
    let d = digest_of(b"x");
    let filler = lead(&cache, &d);
    let Some(Begin::Join(j)) = cache.begin(&d, Some("s")).unwrap() else {
        panic!("expected to join")
    };
    let waiting = tokio::spawn(j.wait());
    drop(filler);
    assert!(waiting.await.unwrap().is_none());
    assert!(matches!(
        cache.begin(&d, Some("s")).unwrap(),
        Some(Begin::Lead(_))
    ));
}

// Pins the size bound: least recently used entries go first, a hit refreshes an entry, and a reader of an
// evicted entry still reads all of it.
#[tokio::test]
async fn max_size_evicts_lru_without_breaking_readers() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, counts) = open(dir.path(), 25);
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![b'a' + i; 10]).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| digest_of(b)).collect();
    cache
        .put(&ds[0], None, Bytes::from(blobs[0].clone()))
        .await
        .unwrap();
    cache
        .put(&ds[1], None, Bytes::from(blobs[1].clone()))
        .await
        .unwrap();
    let held = cache.open_entry(&ds[0]).unwrap(); // ds[0] is now the most recent
    cache
        .put(&ds[2], None, Bytes::from(blobs[2].clone()))
        .await
        .unwrap();
    assert!(cache.contains(&ds[0]) && cache.contains(&ds[2]));
    assert!(!cache.contains(&ds[1]));
    assert_eq!(cache.usage(), (20, 2));
    assert_eq!(counts.evicted.load(Ordering::Relaxed), 1);

    let d3 = digest_of(b"dddddddddd");
    cache
        .put(&d3, None, Bytes::from_static(b"dddddddddd"))
        .await
        .unwrap();
    assert!(!cache.contains(&ds[0]));
    let body = FileBody::range(held.file.clone(), ds[0].clone(), 0, held.size);
    assert_eq!(collect(body).await.unwrap(), blobs[0]);
    assert!(counts.bytes.load(Ordering::Relaxed) <= 25);
}

// Pins the min_free floor: with a floor above the filesystem's free space, nothing is kept.
#[tokio::test]
async fn min_free_floor_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), 1 << 30);
    s.min_free = Some(u64::MAX);
    let cache = Cache::open(s, Arc::new(crate::NoObserver)).unwrap();
    let d = digest_of(b"x");
    cache.put(&d, None, Bytes::from_static(b"x")).await.unwrap();
    assert!(!cache.contains(&d));
}

// Pins restart cleanup: temporary files of a fill that never finished (a crash) are removed at start and never
// served; complete entries are.
#[tokio::test]
async fn start_removes_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = digest_of(b"done");
    {
        let (cache, _) = open(dir.path(), 1 << 20);
        cache
            .put(&d, None, Bytes::from_static(b"done"))
            .await
            .unwrap();
        let partial = digest_of(b"partial");
        let _filler = lead(&cache, &partial);
        // The process dies here: simulate by leaking the leader (no Drop cleanup).
        std::mem::forget(_filler);
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        1
    );
    let (cache, _) = open(dir.path(), 1 << 20);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(cache.contains(&d));
    assert_eq!(cache.usage(), (4, 1));
}

// Pins manifests: stored only when the bytes match the digest, served back with their Content-Type; tags
// remember their digest and fetch time across a restart.
#[tokio::test]
async fn manifests_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20);
    let m = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let d = digest_of(&m);
    let wrong = digest_of(b"other");
    assert!(cache.put(&wrong, Some("x"), m.clone()).await.is_err());
    assert!(!cache.contains(&wrong));
    let ct = "application/vnd.oci.image.manifest.v1+json";
    cache.put(&d, Some(ct), m.clone()).await.unwrap();
    let tag = Tag::parse("latest").unwrap();
    cache.put_tag("s", &tag, &d).await.unwrap();
    drop(cache);
    let (cache, _) = open(dir.path(), 1 << 20);
    let e = cache.open_entry(&d).unwrap();
    assert_eq!(e.media_type.as_deref(), Some(ct));
    assert_eq!(cache.read_all(&e).await.unwrap(), m);
    let t = cache.tag("s", &tag).unwrap();
    assert_eq!(t.digest, d);
    assert!(t.fetched.elapsed().unwrap() < Duration::from_secs(60));
    assert!(cache.tag("other", &tag).is_none());
}

// Pins `mirrorgate cache stats|purge`: figures read from the files; purging a repository drops what only it
// referenced and keeps what another repository still references; purging a digest removes it everywhere.
#[tokio::test]
async fn admin_stats_and_purge() {
    use crate::{purge, scope, stats, Purged, Selection};
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20);
    let (shared, only_a, only_b) = (
        Bytes::from_static(b"shared layer"),
        Bytes::from_static(b"a's own layer"),
        Bytes::from_static(b"b's manifest"),
    );
    let (ds, da, db) = (digest_of(&shared), digest_of(&only_a), digest_of(&only_b));
    cache.put(&ds, None, shared.clone()).await.unwrap();
    cache.put(&da, None, only_a.clone()).await.unwrap();
    cache
        .put(
            &db,
            Some("application/vnd.oci.image.manifest.v1+json"),
            only_b.clone(),
        )
        .await
        .unwrap();
    let (a, b) = (
        scope("docker.test", "team-a/app"),
        scope("docker.test", "team-b/app"),
    );
    cache
        .add_references(&a, [ds.clone(), da.clone()])
        .await
        .unwrap();
    cache
        .add_references(&b, [ds.clone(), db.clone()])
        .await
        .unwrap();
    cache
        .put_tag(&b, &Tag::parse("v1").unwrap(), &db)
        .await
        .unwrap();

    let s = stats(dir.path()).unwrap();
    assert_eq!((s.entries, s.manifests, s.scopes, s.tags), (3, 1, 2, 1));
    assert_eq!(s.bytes, (shared.len() + only_a.len() + only_b.len()) as u64);

    let p = purge(
        dir.path(),
        &Selection::Scopes {
            scopes: vec![a.clone()],
            digest: None,
        },
    )
    .unwrap();
    assert_eq!(
        p,
        Purged {
            entries: 1,
            bytes: only_a.len() as u64,
            references: 2,
            tags: 0
        }
    );
    assert!(!cache.references(&a, &ds) && cache.references(&b, &ds));
    // The running store forgets the purged entry on its next lookup; the shared one still serves.
    assert!(cache.open_entry(&da).is_none());
    assert!(cache.open_entry(&ds).is_some());

    let p = purge(dir.path(), &Selection::Digest(db.clone())).unwrap();
    assert_eq!((p.entries, p.references, p.tags), (1, 1, 1));
    assert!(cache.tag(&b, &Tag::parse("v1").unwrap()).is_none());

    let p = purge(dir.path(), &Selection::All).unwrap();
    assert_eq!((p.entries, p.references), (1, 1));
    assert_eq!(stats(dir.path()).unwrap().entries, 0);
}

// Pins that a client following a fill with an announced length never has every byte before the fill is
// verified: the last byte waits for the digest check, so wrong bytes end in an error, never in a body the
// client can take for complete (a Content-Length body with all its bytes is complete to any HTTP client).
#[tokio::test]
async fn last_byte_waits_for_verification() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = open(dir.path(), 1 << 20);
    let d = digest_of(b"the real bytes");
    let (tx, body) = channel_body();
    let mut reader = lead(&cache, &d).start(Some(9), body);
    tx.send(Ok(Bytes::from_static(b"evil byte"))).await.unwrap();
    let mut got = 0;
    while let Ok(Some(chunk)) =
        tokio::time::timeout(Duration::from_millis(300), reader.next()).await
    {
        got += chunk.unwrap().len();
    }
    assert_eq!(got, 8, "bytes delivered before verification");
    drop(tx);
    assert!(matches!(reader.next().await, Some(Err(_))));
}
