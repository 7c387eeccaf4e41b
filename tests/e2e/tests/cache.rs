//! The built-in pull-through cache with a real `docker-registry` upstream and skopeo: repeated pulls stay
//! local, cached digests keep pulling while the upstream is down (also after a gateway restart), a digest
//! cached through one repository is not served through another, and `max_size` bounds the store
//! (design.md "Caching", config.md `[cache]`).

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
