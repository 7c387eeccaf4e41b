//! The gateway's foundation: TLS by host name, routing to an upstream registry with ordered endpoints,
//! streaming big blobs in bounded memory, HTTP→HTTPS, h2 and HTTP/1.1, config errors that point at the line,
//! and a graceful stop. Each test starts real registries and a real `mirrorgate run` on loopback, configured
//! only through the documented TOML contract (docs: config.md).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mirrorgate_e2e::{
    endpoints, free_port, push, route, sha256, Gateway, OciImage, RawRequest, Registry, Stage,
};

/// The gateway's memory bound while streaming a 256 MiB blob: a proxy that buffers blobs cannot stay under it.
const RSS_BOUND_KIB: u64 = 64 * 1024;

// A client pulling docker.test over verified TLS gets the upstream's image, byte for byte.
#[test]
fn pull_through_tls_by_host() {
    let s = Stage::new("pull");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "hello", "latest", 512 * 1024).unwrap();
    let pushed = push(&image, &upstream, "library/hello:latest", None).unwrap();
    let _gw = s.gateway(&route("docker.test", &upstream.url(), ""));

    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("pulled").unwrap(),
        )
        .unwrap();
    assert_eq!(
        layers, pushed.layer_digests,
        "pulled layers differ from the pushed ones"
    );

    let raw = s
        .skopeo()
        .inspect_raw(&s.via("docker.test", "library/hello:latest"))
        .unwrap();
    assert_eq!(
        sha256(raw.check("inspect via gateway").unwrap().stdout.as_bytes()),
        pushed.manifest_digest
    );
    assert!(
        upstream.requests("/v2/library/hello/manifests/latest") >= 1,
        "the upstream never saw the pull"
    );
}

// A Host the gateway does not serve gets an OCI error (421 on a known SNI, 404/421 or a refused handshake on an
// unknown one) and nothing reaches the upstream.
#[test]
fn wrong_host_is_refused_and_never_proxied() {
    let s = Stage::new("wronghost");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "hello", "latest", 1024).unwrap();
    push(&image, &upstream, "library/hello:latest", None).unwrap();
    let _gw = s.gateway(&route("docker.test", &upstream.url(), ""));
    let path = "/v2/library/hello/manifests/latest";
    let before = upstream.requests("/v2/library/hello");
    let wrong_host = format!("nope.test:{}", s.ports.https);

    // SNI docker.test, Host nope.test: misdirected request
    for req in [
        RawRequest::h1(s.ports.https, "docker.test", path).with_host(&wrong_host),
        RawRequest::h2(s.ports.https, "docker.test", path).with_host(&wrong_host),
    ] {
        let resp = s.http.send(&req).unwrap();
        assert_eq!(
            resp.status,
            421,
            "{:?} Host nope.test: {} {}",
            resp.version,
            resp.status,
            resp.text()
        );
        assert!(
            resp.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "{:?}",
            resp.headers
        );
        assert!(
            !resp.oci_error_codes().unwrap().is_empty(),
            "empty OCI errors: {}",
            resp.text()
        );
    }

    // unknown SNI and Host: refused at the handshake, or an OCI error; never a proxied answer
    let unknown = RawRequest::h1(s.ports.https, "nope.test", path)
        .with_host(&wrong_host)
        .insecure();
    if let Ok(resp) = s.http.send(&unknown) {
        assert!(
            [404, 421].contains(&resp.status),
            "unknown host answered {} {}",
            resp.status,
            resp.text()
        );
        assert!(
            !resp.oci_error_codes().unwrap().is_empty(),
            "{}",
            resp.text()
        );
    }

    assert_eq!(
        upstream.requests("/v2/library/hello"),
        before,
        "a wrong-host request reached the upstream"
    );
}

// Endpoints are tried in order before the upstream: a dead one is skipped, a live one serves, and when it dies
// too the upstream still does.
#[test]
fn endpoint_fallback_then_upstream() {
    let s = Stage::new("fallback");
    let mut cache = Registry::open(s.t.path(), "endpoint-a").unwrap();
    let upstream = Registry::open(s.t.path(), "upstream-b").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "hello", "latest", 256 * 1024).unwrap();
    let pushed = push(&image, &cache, "library/hello:latest", None).unwrap();
    push(&image, &upstream, "library/hello:latest", None).unwrap();
    let upstream_before = upstream.requests("/manifests/");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let _gw = s.gateway(&route(
        "docker.test",
        &upstream.url(),
        &endpoints(&[dead, cache.url()]),
    ));

    let first = s
        .skopeo()
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("pull-1").unwrap(),
        )
        .unwrap();
    assert_eq!(first, pushed.layer_digests);
    assert!(
        cache.requests("/v2/library/hello/manifests/latest") >= 1,
        "the live endpoint was not used"
    );
    assert_eq!(
        upstream.requests("/manifests/"),
        upstream_before,
        "upstream used while an endpoint was up"
    );

    cache.stop();
    let second = s
        .skopeo()
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("pull-2").unwrap(),
        )
        .unwrap();
    assert_eq!(second, pushed.layer_digests);
    assert!(
        upstream.requests("/v2/library/hello/manifests/latest") > upstream_before,
        "upstream not used as fallback"
    );
}

// A 256 MiB layer streams through: the pull succeeds with the right digest while the gateway's resident memory,
// sampled every 50 ms during the pull, stays under 64 MiB (a memory bound, not a timing assertion).
#[test]
fn large_blob_streams_in_bounded_memory() {
    let s = Stage::new("large");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "big", "latest", 256 << 20).unwrap();
    let pushed = push(&image, &upstream, "library/big:latest", None).unwrap();
    let gw = s.gateway(&route("docker.test", &upstream.url(), ""));

    let done = AtomicBool::new(false);
    let peak = AtomicU64::new(0);
    let layers = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(kib) = gw.rss_kib() {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let r = s.skopeo().pull(
            &s.via("docker.test", "library/big:latest"),
            &s.t.sub("pulled").unwrap(),
        );
        done.store(true, Ordering::Relaxed);
        r
    })
    .unwrap();
    assert_eq!(layers, pushed.layer_digests);
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("gateway peak VmRSS during a 256 MiB pull: {peak} KiB");
    assert!(peak > 0, "no RSS sample was taken");
    assert!(
        peak < RSS_BOUND_KIB,
        "gateway VmRSS peaked at {peak} KiB (bound {RSS_BOUND_KIB} KiB): is it buffering blobs?"
    );
}

// Plain HTTP answers 308 to the same host, path and query on the https port.
#[test]
fn http_redirects_to_https() {
    let s = Stage::new("redirect");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let _gw = s.gateway(&route("docker.test", &upstream.url(), ""));
    let req = RawRequest::plain(
        s.ports.http,
        &format!("docker.test:{}", s.ports.http),
        "/v2/?x=1",
    );
    let resp = s.http.send(&req).unwrap();
    assert_eq!(resp.status, 308, "{}", resp.text());
    assert_eq!(
        resp.header("location"),
        Some(format!("https://docker.test:{}/v2/?x=1", s.ports.https).as_str())
    );
}

// Both ALPN protocols serve the ping, and every TLS answer carries HSTS.
#[test]
fn h2_and_http11_with_hsts() {
    let s = Stage::new("alpn");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let _gw = s.gateway(&route("docker.test", &upstream.url(), ""));
    for (req, version) in [
        (
            RawRequest::h1(s.ports.https, "docker.test", "/v2/"),
            http::Version::HTTP_11,
        ),
        (
            RawRequest::h2(s.ports.https, "docker.test", "/v2/"),
            http::Version::HTTP_2,
        ),
    ] {
        let resp = s.http.send(&req).unwrap();
        assert_eq!(resp.version, version);
        assert_eq!(resp.status, 200, "{version:?} /v2/: {}", resp.text());
        let hsts = resp
            .header("strict-transport-security")
            .unwrap_or_else(|| panic!("{version:?}: no HSTS header"));
        assert!(hsts.contains("max-age="), "{hsts}");
    }
}

// `mirrorgate check` names file, line and key of each problem and exits 1; a good file passes.
#[test]
fn check_reports_file_line_and_key() {
    let s = Stage::new("check");
    let good = s.config(&route("docker.test", "http://127.0.0.1:5000", ""));
    let good_path = s.t.path().join("good.toml");
    std::fs::write(&good_path, &good).unwrap();
    let out = Gateway::check(&good_path).unwrap();
    assert!(
        out.ok(),
        "a valid config was rejected: {}{}",
        out.stdout,
        out.stderr
    );

    // (file, text, the key the error must name): the bad line is always the last one
    let typo = format!("{good}upstreem = \"http://127.0.0.1:5001\"\n");
    let bad_url = good.replace(
        "upstream = \"http://127.0.0.1:5000\"",
        "upstream = \"not a url\"",
    );
    for (file, text, key) in [
        ("typo.toml", typo, "upstreem"),
        ("badurl.toml", bad_url, "upstream"),
    ] {
        let path = s.t.path().join(file);
        std::fs::write(&path, &text).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{key} not in the test's own config"));
        let out = Gateway::check(&path).unwrap();
        let said = format!("{}{}", out.stdout, out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "check of {file} exited {:?}: {said}",
            out.status
        );
        assert!(
            said.contains(&format!("{file}:{line}")),
            "{file}: no `{file}:{line}` in: {said}"
        );
        assert!(
            said.contains(key),
            "{file}: key `{key}` not named in: {said}"
        );
    }
}

// SIGTERM while a blob is being downloaded: the download completes intact, then the gateway exits cleanly.
#[test]
fn sigterm_lets_an_inflight_blob_finish() {
    let s = Stage::new("shutdown");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "slow", "latest", 64 << 20).unwrap();
    let pushed = push(&image, &upstream, "library/slow:latest", None).unwrap();
    let mut gw = s.gateway(&route("docker.test", &upstream.url(), ""));

    let digest = &pushed.layer_digests[0];
    let req = RawRequest::h1(
        s.ports.https,
        "docker.test",
        &format!("/v2/library/slow/blobs/{digest}"),
    );
    // read 1 MiB, SIGTERM, pause 1 s with the rest still in flight, then read on
    let (status, n, got) = s
        .http
        .download_with_pause(&req, 1 << 20, Duration::from_secs(1), || gw.terminate())
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(n, image.layers[0].size, "the in-flight body was cut");
    assert_eq!(&got, digest);
    gw.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", s.ports.https)).is_err(),
        "still listening after exit"
    );
}
