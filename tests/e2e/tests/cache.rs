//! The built-in pull-through cache with a real `docker-registry` upstream (open and token mode), skopeo and
//! podman: repeated pulls stay local, cached digests keep pulling while the upstream is down (also after a
//! gateway restart), a digest cached through one repository is not served through another, `max_size` bounds
//! the store, an expired tag is revalidated with one HEAD, `mirrorgate cache stats|purge`, a corrupted upstream
//! blob is never cached, `kill -9` mid-fill leaves no entry, 50 clients of one uncached blob make one upstream
//! GET, and an exhausted credential pool serves a known tag stale (design.md "Caching", config.md `[cache]`).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mirrorgate_e2e::{metric, push, route, OciImage, Pushed, Registry, Stage};

/// A route for `docker.test` over `upstream` plus a `[cache]` in the scratch folder with `extra` lines.
fn cached_route(upstream: &Registry, extra: &str) -> String {
    format!(
        "{}[cache]\ndir = \"cache\"\n{extra}\n",
        route("docker.test", &upstream.url(), "")
    )
}

fn push_image(s: &Stage, upstream: &Registry, name: &str, reference: &str, bytes: usize) -> Pushed {
    let image = OciImage::write_layout(
        &s.t.sub(&format!("image-{name}")).unwrap(),
        name,
        "v1",
        bytes,
    )
    .unwrap();
    push(&image, upstream, reference, None).unwrap()
}

/// Upstream requests for content by digest (blobs, manifests by digest).
fn by_digest_requests(upstream: &Registry) -> usize {
    upstream.requests("/blobs/sha256:") + upstream.requests("/manifests/sha256:")
}

/// Bytes of the files under `dir` (recursively).
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            disk_usage(&e.path())
        } else {
            m.len()
        };
    }
    total
}

// Pins the cache's promise as a mirror: the second pull reaches no upstream content by digest (the registry's
// own log proves it); with the upstream stopped, cached images still pull by digest and by their fresh tag
// while an uncached one gets a clean OCI error; after a gateway restart with the upstream still down, the
// cached digests are still served.
#[test]
fn repeated_pulls_stay_local_and_survive_upstream_loss_and_restart() {
    let s = Stage::new("cache-mirror");
    let mut upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "team-a/app:v1", 256 * 1024);
    let other = push_image(&s, &upstream, "other", "team-a/other:v1", 16 * 1024);
    let config = cached_route(&upstream, "");
    let gw = s.gateway(&config);
    let tag_requests = || upstream.requests("/v2/team-a/app/manifests/v1");
    let pushed_tag = tag_requests();

    let first = s
        .skopeo()
        .pull(
            &s.via("docker.test", "team-a/app:v1"),
            &s.t.sub("pull-1").unwrap(),
        )
        .unwrap();
    assert_eq!(first, app.layer_digests);
    let after_first = by_digest_requests(&upstream);
    assert!(
        after_first >= 2,
        "the first pull fetched the layer and config"
    );

    let by_digest = format!("team-a/app@{}", app.manifest_digest);
    for (i, reference) in ["team-a/app:v1", by_digest.as_str()].iter().enumerate() {
        let layers = s
            .skopeo()
            .pull(
                &s.via("docker.test", reference),
                &s.t.sub(&format!("pull-again-{i}")).unwrap(),
            )
            .unwrap();
        assert_eq!(layers, app.layer_digests);
    }
    assert_eq!(
        by_digest_requests(&upstream),
        after_first,
        "a repeated pull reached the upstream:\n{}",
        upstream.log()
    );
    assert_eq!(
        tag_requests(),
        pushed_tag + 1,
        "the fresh tag is answered locally"
    );
    let m = s.metrics();
    assert!(metric(&m, "mirrorgate_cache_hits_total", &["kind=\"blob\""]) >= 2.0);
    assert!(metric(&m, "mirrorgate_cache_bytes", &[]) >= 256.0 * 1024.0);
    // A blob answered from the store is logged as delivered whole: hyper drops a body once its
    // Content-Length went out, which must not read as a client that went away.
    let log = gw.log();
    let hits: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("endpoint=\"cache\"") && l.contains("method=GET path=/v2/team-a/app/blobs/")
        })
        .collect();
    assert!(hits.len() >= 2, "no cache hits logged:\n{log}");
    for line in hits {
        assert!(line.contains("completion=Complete"), "{line}");
    }

    upstream.stop();
    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", &by_digest),
            &s.t.sub("pull-down").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, app.layer_digests);
    let resp = s.send(&s.get(
        "docker.test",
        &format!("/v2/team-a/other/blobs/{}", other.layer_digests[0]),
    ));
    assert!(
        resp.status >= 500,
        "uncached blob: {} {}",
        resp.status,
        resp.text()
    );
    assert!(
        !resp.oci_error_codes().unwrap().is_empty(),
        "{}",
        resp.text()
    );

    drop(gw);
    let _gw = s.gateway(&config);
    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", &by_digest),
            &s.t.sub("pull-restarted").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, app.layer_digests);
    let resp = s.send(
        &s.get(
            "docker.test",
            &format!("/v2/team-a/app/blobs/{}", app.layer_digests[0]),
        )
        .with_header("range", "bytes=10-19"),
    );
    assert_eq!(resp.status, 206, "{}", resp.text());
    assert_eq!(resp.body.len(), 10);
}

// Pins repository scoping: a blob and a manifest cached through `team-a/app` are not served through
// `team-b/other`, for which the upstream says they are unknown.
#[test]
fn content_cached_for_one_repository_is_not_served_to_another() {
    let s = Stage::new("cache-scope");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "team-a/app:v1", 32 * 1024);
    let _other = push_image(&s, &upstream, "unrelated", "team-b/other:v1", 8 * 1024);
    let _gw = s.gateway(&cached_route(&upstream, ""));
    s.skopeo()
        .pull(
            &s.via("docker.test", "team-a/app:v1"),
            &s.t.sub("pull").unwrap(),
        )
        .unwrap();

    let blob = format!("/v2/team-a/app/blobs/{}", app.layer_digests[0]);
    assert_eq!(s.send(&s.get("docker.test", &blob)).status, 200);
    let leak = s.send(&s.get(
        "docker.test",
        &format!("/v2/team-b/other/blobs/{}", app.layer_digests[0]),
    ));
    assert_eq!(leak.status, 404, "served {} bytes", leak.body.len());
    assert_eq!(leak.oci_error_codes().unwrap(), vec!["BLOB_UNKNOWN"]);
    let leak = s.send(&s.get(
        "docker.test",
        &format!("/v2/team-b/other/manifests/{}", app.manifest_digest),
    ));
    assert_eq!(leak.status, 404, "{}", leak.text());
}

// Pins the size bound: with `max_size` smaller than three images, pulling all three keeps the store under it
// (least recently used entries evicted, counted in a metric) and the most recent image is still served from
// the cache.
#[test]
fn max_size_bounds_the_store() {
    let s = Stage::new("cache-bound");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let layer = 200 * 1024;
    let images: Vec<Pushed> = (0..3)
        .map(|i| {
            push_image(
                &s,
                &upstream,
                &format!("img{i}"),
                &format!("team-a/img{i}:v1"),
                layer,
            )
        })
        .collect();
    let max_size = 450 * 1024;
    let _gw = s.gateway(&cached_route(&upstream, &format!("max_size = {max_size}")));
    for (i, img) in images.iter().enumerate() {
        let layers = s
            .skopeo()
            .pull(
                &s.via("docker.test", &format!("team-a/img{i}:v1")),
                &s.t.sub(&format!("pull-{i}")).unwrap(),
            )
            .unwrap();
        assert_eq!(layers, img.layer_digests);
        let used = disk_usage(&s.t.path().join("cache/blobs"));
        assert!(used <= max_size, "store holds {used} bytes after image {i}");
    }
    assert!(metric(&s.metrics(), "mirrorgate_cache_evictions_total", &[]) >= 1.0);

    let last = &images[2];
    let before = upstream.requests(&last.layer_digests[0]);
    s.skopeo()
        .pull(
            &s.via(
                "docker.test",
                &format!("team-a/img2@{}", last.manifest_digest),
            ),
            &s.t.sub("pull-last-again").unwrap(),
        )
        .unwrap();
    assert_eq!(upstream.requests(&last.layer_digests[0]), before);
}

// Pins tags and the route switches: a route's `tag_ttl` overrides `[cache]`'s (the tag is fetched again once
// it is older), a stale tag is served while every endpoint fails (`stale_if_error`), and a route with
// `cache = false` reaches the upstream on every pull.
#[test]
fn tag_ttl_stale_if_error_and_route_opt_out() {
    let s = Stage::new("cache-tags");
    let mut upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "team-a/app:v1", 16 * 1024);
    let config = format!(
        "{}{}[cache]\ndir = \"cache\"\ntag_ttl = \"1h\"\nstale_if_error = \"1h\"\n",
        route("docker.test", &upstream.url(), "tag_ttl = \"1s\""),
        route("gcr.test", &upstream.url(), "cache = false"),
    );
    let _gw = s.gateway(&config);
    let pull = |host: &str, dir: &str| {
        s.skopeo()
            .pull(&s.via(host, "team-a/app:v1"), &s.t.sub(dir).unwrap())
            .unwrap()
    };

    let layer = &app.layer_digests[0];
    let before = upstream.requests(layer);
    pull("gcr.test", "opt-out-1");
    pull("gcr.test", "opt-out-2");
    assert_eq!(
        upstream.requests(layer),
        before + 2,
        "cache = false fetched twice"
    );

    let tag_requests = || upstream.requests("/v2/team-a/app/manifests/v1");
    let before = tag_requests();
    pull("docker.test", "tag-1");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    pull("docker.test", "tag-2");
    assert_eq!(tag_requests(), before + 2, "the route's 1s tag_ttl applies");

    upstream.stop();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let layers = pull("docker.test", "tag-stale");
    assert_eq!(layers, app.layer_digests);
}

/// Upstream requests with `method` whose URI contains `path_part` (the registry logs each request's method).
fn requests_by(upstream: &Registry, method: &str, path_part: &str) -> usize {
    let method = format!("http.request.method={method}");
    upstream
        .log()
        .lines()
        .filter(|l| {
            l.contains("response completed") && l.contains(&method) && l.contains(path_part)
        })
        .count()
}

/// `mirrorgate cache <args> -c <config>`: (exit code, stdout, stderr).
fn cache_cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(mirrorgate_e2e::bin_path())
        .arg("cache")
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Pins tag revalidation: past `tag_ttl` one HEAD upstream (no GET) refreshes an unchanged tag, which is then
// answered from the cache (its bytes counted as saved); a moved tag is fetched again. And `mirrorgate cache
// stats|purge` on the store of the running gateway: purging the repository makes the next pull fetch again.
#[test]
fn expired_tag_revalidates_with_one_head_and_admin_purges() {
    let s = Stage::new("cache-revalidate");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "team-a/app:v1", 16 * 1024);
    let gw = s.gateway(&cached_route(&upstream, "tag_ttl = \"1s\""));
    let pull = |dir: &str| {
        s.skopeo()
            .pull(
                &s.via("docker.test", "team-a/app:v1"),
                &s.t.sub(dir).unwrap(),
            )
            .unwrap()
    };
    let tag = "/v2/team-a/app/manifests/v1";
    let (gets, heads) = (
        requests_by(&upstream, "GET", tag),
        requests_by(&upstream, "HEAD", tag),
    );

    assert_eq!(pull("first"), app.layer_digests);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(pull("revalidated"), app.layer_digests);
    assert_eq!(
        requests_by(&upstream, "GET", tag),
        gets + 1,
        "{}",
        upstream.log()
    );
    assert_eq!(
        requests_by(&upstream, "HEAD", tag),
        heads + 1,
        "{}",
        upstream.log()
    );
    let m = s.metrics();
    assert!(metric(&m, "mirrorgate_cache_hits_total", &["kind=\"manifest\""]) >= 1.0);
    assert!(
        metric(
            &m,
            "mirrorgate_cache_hit_bytes_total",
            &["route=\"docker.test\""]
        ) > 0.0
    );

    let moved = push_image(&s, &upstream, "moved", "team-a/app:v1", 8 * 1024);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(pull("moved"), moved.layer_digests);

    let (code, out, err) = cache_cli(gw.config_path(), &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("repositories: 1"), "{out}");
    assert!(!out.contains("entries: 0 "), "{out}");
    let (code, _, err) = cache_cli(gw.config_path(), &["purge"]);
    assert_eq!(code, 2, "purge without a selection is refused: {err}");
    let (code, out, err) = cache_cli(gw.config_path(), &["purge", "--repository", "team-a/app"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.starts_with("removed 0 entries"), "{out}");
    let (_, out, _) = cache_cli(gw.config_path(), &["stats"]);
    assert!(out.contains("entries: 0 "), "{out}");

    let layer = &moved.layer_digests[0];
    let before = upstream.requests(layer);
    assert_eq!(pull("after-purge"), moved.layer_digests);
    assert_eq!(
        upstream.requests(layer),
        before + 1,
        "the purged layer is fetched again"
    );
}

/// The blob file of `digest` inside a `docker-registry`'s filesystem storage.
fn stored_blob(upstream: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    upstream
        .dir()
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// The cache's entry file for `digest` under the scratch folder's `cache/`.
fn cached_blob(s: &Stage, digest: &str) -> std::path::PathBuf {
    s.t.path()
        .join("cache/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn file_sha256(path: &Path) -> String {
    mirrorgate_e2e::sha256(&std::fs::read(path).unwrap())
}

// Pins the token-mode upstream with real clients: skopeo pulls twice (the second reaches no upstream content
// and asks the token service for nothing more), and podman then pulls the same image through a registries.conf
// mirror, served from the cache.
#[test]
fn token_upstream_pulled_twice_by_skopeo_then_by_podman() {
    const PUSHER: (&str, &str) = ("pusher", "push-secret");
    let s = Stage::new("cache-token");
    let issuer = mirrorgate_e2e::TokenIssuer::start(
        &s.t.sub("issuer").unwrap(),
        mirrorgate_e2e::TokenIssuerOptions {
            users: vec![(PUSHER.0.into(), PUSHER.1.into())],
            ..Default::default()
        },
    )
    .unwrap();
    let upstream = Registry::token(s.t.path(), "upstream", &issuer).unwrap();
    let image = OciImage::write_layout(
        &s.t.sub("image-hello").unwrap(),
        "hello",
        "latest",
        64 * 1024,
    )
    .unwrap();
    let hello = push(&image, &upstream, "library/hello:latest", Some(PUSHER)).unwrap();
    let gw = s.gateway(&cached_route(&upstream, ""));

    let pull = |dir: &str| {
        s.skopeo()
            .pull(
                &s.via("docker.test", "library/hello:latest"),
                &s.t.sub(dir).unwrap(),
            )
            .unwrap()
    };
    assert_eq!(pull("first"), hello.layer_digests);
    let (contents, tokens) = (by_digest_requests(&upstream), issuer.total());
    assert_eq!(pull("second"), hello.layer_digests);
    assert_eq!(
        by_digest_requests(&upstream),
        contents,
        "{}",
        upstream.log()
    );
    assert_eq!(
        issuer.total(),
        tokens,
        "the second pull needed no upstream token"
    );

    let registry = format!("upstream.test:{}", upstream.port());
    let podman = mirrorgate_e2e::Podman::new(
        s.t.path(),
        &registry,
        &format!("127.0.0.1:{}", mirrorgate_e2e::free_port()),
        &[&format!("docker.test:{}", s.ports.https)],
    )
    .unwrap()
    .cert_dir(&s.certs);
    let reference = format!("{registry}/library/hello:latest");
    let out = podman.pull(&reference).unwrap();
    assert!(
        out.ok(),
        "podman pull: {}{}\n{}",
        out.stdout,
        out.stderr,
        gw.log()
    );
    assert_eq!(
        podman.image_digest(&reference).unwrap(),
        hello.manifest_digest
    );
    assert_eq!(
        by_digest_requests(&upstream),
        contents,
        "podman's pull reached the upstream"
    );
}

// Pins verification against a real upstream: a blob whose bytes were corrupted inside the registry's storage
// fails the pull, never becomes an entry, and is counted in `mirrorgate_cache_fill_errors_total`.
#[test]
fn corrupted_upstream_blob_fails_the_pull_and_is_not_cached() {
    let s = Stage::new("cache-corrupt");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "team-a/app:v1", 256 * 1024);
    let layer = &app.layer_digests[0];
    let stored = stored_blob(&upstream, layer);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let _gw = s.gateway(&cached_route(&upstream, ""));

    let pulled = s.skopeo().pull(
        &s.via("docker.test", "team-a/app:v1"),
        &s.t.sub("pull").unwrap(),
    );
    assert!(pulled.is_err(), "a corrupted layer pulled: {pulled:?}");
    let resp = s.http.download_with_pause(
        &s.get("docker.test", &format!("/v2/team-a/app/blobs/{layer}")),
        u64::MAX,
        std::time::Duration::ZERO,
        || Ok(()),
    );
    assert!(
        resp.is_err(),
        "the stream of wrong bytes ended cleanly: {resp:?}"
    );
    assert!(
        !cached_blob(&s, layer).exists(),
        "the corrupted blob became an entry"
    );
    assert!(metric(&s.metrics(), "mirrorgate_cache_fill_errors_total", &[]) >= 1.0);
}

/// A TCP relay to `backend` that passes the backend's answers on `chunk` bytes per `every` (a slow upstream).
struct SlowRelay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowRelay {
    fn start(backend: u16, chunk: usize, every: std::time::Duration) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = mirrorgate_e2e::runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut server_rx, mut server_tx) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                    });
                    let mut buf = vec![0u8; chunk];
                    loop {
                        let n = match server_rx.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(every).await;
                    }
                    up.abort();
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// Pins crash safety: `kill -9` of the gateway while a large blob is being filled leaves no entry; the restart
// removes the partial file, and the next pull fills the blob cleanly (its entry hashes to its digest).
#[test]
fn kill_9_during_a_fill_leaves_no_partial_entry() {
    let s = Stage::new("cache-kill");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let big = push_image(&s, &upstream, "big", "team-a/big:v1", 16 << 20);
    let layer = &big.layer_digests[0];
    // About 3 MiB/s: the 16 MiB fill takes seconds, the kill lands in its middle.
    let relay = SlowRelay::start(
        upstream.port(),
        64 * 1024,
        std::time::Duration::from_millis(20),
    );
    let config = format!(
        "{}[cache]\ndir = \"cache\"\n",
        route(
            "docker.test",
            &format!("http://127.0.0.1:{}", relay.port),
            ""
        )
    );
    let mut gw = s.gateway(&config);
    let pid = gw.pid().to_string();
    let got = s.http.download_with_pause(
        &s.get("docker.test", &format!("/v2/team-a/big/blobs/{layer}")),
        2 << 20,
        std::time::Duration::from_secs(2),
        || {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status()?;
            anyhow::ensure!(status.success(), "kill -9 {pid}: {status}");
            Ok(())
        },
    );
    assert!(got.is_err(), "the download survived kill -9: {got:?}");
    assert!(gw.wait_exit(std::time::Duration::from_secs(5)).is_err());
    let tmp = s.t.path().join("cache/tmp");
    let partial: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(
        !partial.is_empty(),
        "no partial fill to clean up: the kill came too late"
    );
    assert!(
        !cached_blob(&s, layer).exists(),
        "a partial blob became an entry"
    );
    drop(gw);

    let _gw = s.gateway(&config);
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the start left partial fills"
    );
    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", "team-a/big:v1"),
            &s.t.sub("pull").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, big.layer_digests);
    assert_eq!(file_sha256(&cached_blob(&s, layer)), *layer);
}

// Pins single flight at scale: 50 clients asking at once for one uncached 64 MiB blob cause exactly one
// upstream GET of it (the registry's log), every body hashes to the digest, and the gateway's RSS stays far
// below the blob's size (bodies stream from the growing file; nothing holds the blob in memory).
#[test]
fn fifty_clients_one_uncached_blob_one_upstream_get() {
    const CLIENTS: usize = 50;
    const SIZE: usize = 64 << 20;
    let s = Stage::new("cache-flight");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let big = push_image(&s, &upstream, "big", "team-a/big:v1", SIZE);
    let layer = big.layer_digests[0].clone();
    let gw = s.gateway(&cached_route(&upstream, "max_size = \"1GiB\""));
    // warm up connections and allocator arenas before the idle figure
    let warm = s.send(&s.get(
        "docker.test",
        &format!("/v2/team-a/big/manifests/{}", big.manifest_digest),
    ));
    assert_eq!(warm.status, 200);
    let idle = gw.rss_kib().unwrap();
    let before = requests_by(&upstream, "GET", &layer);

    let req = s.get("docker.test", &format!("/v2/team-a/big/blobs/{layer}"));
    let done = std::sync::atomic::AtomicBool::new(false);
    let (results, peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut peak = idle;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(gw.rss_kib().unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            peak
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (http, req) = (s.http.clone(), req.clone());
                scope.spawn(move || {
                    http.download_with_pause(&req, u64::MAX, std::time::Duration::ZERO, || Ok(()))
                })
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (results, sampler.join().unwrap())
    });
    for r in &results {
        let (status, n, digest) = r.as_ref().unwrap();
        assert_eq!(
            (*status, digest.as_str()),
            (200, layer.as_str()),
            "{n} bytes"
        );
        assert!(*n as usize >= SIZE, "{n} bytes");
    }
    assert_eq!(
        requests_by(&upstream, "GET", &layer),
        before + 1,
        "{}",
        upstream.log()
    );
    let above = peak.saturating_sub(idle);
    println!("single flight: {CLIENTS} clients, RSS idle {idle} KiB, peak {peak} KiB");
    assert!(
        above < (SIZE as u64 / 1024) / 2,
        "RSS rose {above} KiB for a {} KiB blob",
        SIZE / 1024
    );
}

// Pins stale-if-error when every upstream credential is set aside (`CredentialsExhausted`): behind a
// Docker-Hub-like front allowing one manifest GET per account, a tag moved upstream after its TTL needs a GET
// the only account may no longer make (429, set aside), so the tag's last manifest is served instead — and
// again on the next pull, when the gateway refuses from its exhausted pool without asking upstream. Both are
// logged with their reason and counted.
#[test]
fn exhausted_credential_pool_serves_a_known_tag_stale() {
    const PUSHER: (&str, &str) = ("pusher", "push-secret");
    const MANIFEST: &str = "/v2/library/hello/manifests/latest";
    let s = Stage::new("cache-pool");
    let issuer = mirrorgate_e2e::TokenIssuer::start(
        &s.t.sub("issuer").unwrap(),
        mirrorgate_e2e::TokenIssuerOptions {
            users: vec![
                (PUSHER.0.into(), PUSHER.1.into()),
                ("hub-one".into(), "pw-one".into()),
            ],
            anonymous_pull: false,
            ..Default::default()
        },
    )
    .unwrap();
    let registry = Registry::token(s.t.path(), "upstream", &issuer).unwrap();
    // The name seeds the image's bytes: two names, two manifests.
    let write =
        |name: &str| OciImage::write_layout(&s.t.sub(name).unwrap(), name, "latest", 4096).unwrap();
    let hello = push(
        &write("image-1"),
        &registry,
        "library/hello:latest",
        Some(PUSHER),
    )
    .unwrap();
    let front = mirrorgate_e2e::RateLimitFront::start(
        registry.port(),
        1,
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    let gw = s.gateway(&format!(
        "{}[[route.upstream_credentials]]\nname = \"hub-1\"\nusername = \"hub-one\"\npassword = \"pw-one\"\n\n\
         [cache]\ndir = \"cache\"\nstale_if_error = \"1h\"\n",
        route("docker.test", &front.url(), "tag_ttl = \"1s\"")
    ));
    let pull = || {
        s.send(
            &s.get("docker.test", MANIFEST)
                .with_header("accept", "application/vnd.oci.image.manifest.v1+json"),
        )
    };
    let first = pull();
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(mirrorgate_e2e::sha256(&first.body), hello.manifest_digest);

    push(
        &write("image-2"),
        &registry,
        "library/hello:latest",
        Some(PUSHER),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for i in 0..2 {
        let resp = pull();
        assert_eq!(resp.status, 200, "pull {i}: {}\n{}", resp.text(), gw.log());
        assert_eq!(mirrorgate_e2e::sha256(&resp.body), hello.manifest_digest);
    }
    // The first stale answer follows the upstream's 429 (the account is then set aside), the second the
    // gateway's own exhausted pool: `CredentialsExhausted`, handled like any other upstream failure.
    assert_eq!(front.refused("hub-one"), 1);
    let log = gw.log();
    let stale: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("serving the tag's last manifest"))
        .collect();
    assert_eq!(stale.len(), 2, "{log}");
    assert!(stale[0].contains("429"), "{stale:?}");
    assert!(stale[1].contains("every upstream credential"), "{stale:?}");
    let m = s.metrics();
    let route_label = ["route=\"docker.test\""];
    assert_eq!(
        metric(&m, "mirrorgate_cache_stale_serves_total", &route_label),
        2.0
    );
}
