//! Faults the gateway must survive without lying to clients or falling over: an upstream that dies in the
//! middle of a blob, one that accepts TCP and never answers, a backend cache answering 500s, a dead token
//! realm, redis unreachable at start, an ACME storage folder that cannot be written, and the config file
//! deleted under a running gateway. Each scenario asserts the protective behaviour itself (an error instead of
//! a short body, a 504 in time, a fallback, fail-open, the old certificate kept, the last config kept), so
//! removing the protection fails it. Real processes on loopback throughout (docs: design.md, config.md).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mirrorgate_e2e::{
    endpoints, free_port, metric, push, require, require_hosts, rewrite, runtime, sha256, Gateway,
    OciImage, Pebble, Ports, Pushed, Registry, RegistryMode, Stage, TestDir, TokenIssuer,
    TokenIssuerOptions, GENEROUS_LIMITS,
};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The user that pushes test images to token-mode upstreams.
const PUSHER: (&str, &str) = ("pusher", "push-secret");
/// The blob cut in half by a dying upstream: far more than every socket buffer between the processes, so the
/// kill lands while most of it is still unsent.
const BIG: usize = 128 << 20;
/// How much of the big blob the client reads before the upstream is killed.
const CUT_AFTER: u64 = 4 << 20;
/// `[server] upstream_timeout` for the hanging-upstream scenario, and the slack allowed on top of it.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
const TIMEOUT_MARGIN: Duration = Duration::from_secs(4);
/// What the ACME manager logs when an attempt fails and it keeps the current certificate.
const FAILED_ATTEMPT: &str = "ACME attempt failed";

/// The shared stage, asking for OCI manifests on every [`Stage::get`].
fn stage(name: &str) -> Stage {
    Stage::new(name).accept(MT_MANIFEST)
}

/// Writes a single-arch image of `bytes` layer bytes.
fn image(s: &Stage, name: &str, bytes: usize) -> OciImage {
    OciImage::write_layout(
        &s.t.sub(&format!("image-{name}")).unwrap(),
        name,
        "latest",
        bytes,
    )
    .unwrap()
}

/// An anonymous `[[route]]` for `host`: `upstream`, and `urls` tried before it.
fn route(host: &str, upstream: &str, urls: &[String]) -> String {
    mirrorgate_e2e::route(host, upstream, &endpoints(urls))
}

fn manifest_path(pushed: &Pushed) -> String {
    let (repo, tag) = pushed.reference.split_once(':').unwrap();
    format!("/v2/{repo}/manifests/{tag}")
}

/// A TCP server that accepts connections and never answers (a wedged upstream); counts accepts.
struct Hang {
    port: u16,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Hang {
    fn start() -> Self {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = runtime().spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        Self {
            port,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP server answering every request with 500 and an OCI error body (a broken backend cache).
struct Failing {
    port: u16,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Failing {
    fn start() -> Self {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicU64::new(0));
        let count = hits.clone();
        let task = runtime().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
                        count.fetch_add(1, Ordering::Relaxed);
                        async {
                            let mut resp = http::Response::new(Full::new(Bytes::from_static(
                                br#"{"errors":[{"code":"UNKNOWN","message":"cache storage broken"}]}"#,
                            )));
                            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, hits, task }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Failing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay on a fixed port in front of a token issuer, so the realm can go down (connection refused, open
/// connections cut) and come back on the same URL, which the registry's challenge names.
struct Relay {
    port: u16,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    fn start(port: u16, to: u16) -> Self {
        // The port was just released by the previous relay: retry briefly (tokio sets SO_REUSEADDR).
        let start = Instant::now();
        let listener = loop {
            match runtime().block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))) {
                Ok(l) => break l,
                Err(e) if start.elapsed() > Duration::from_secs(5) => {
                    panic!("cannot bind the realm relay on {port} again: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let handles = conns.clone();
        let task = runtime().spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                handles.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self { port, task, conns }
    }

    /// Stops accepting and cuts every relayed connection (the realm is down).
    fn stop(self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // Let the aborted tasks drop their sockets before the caller probes the port.
        let port = self.port;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the realm relay on {port} still accepts after stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Makes a folder immutable (`chattr +i`): as root, `chmod 0500` does not stop writes, the immutable flag does.
/// Cleared on drop so the scratch dir can be removed.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Self {
        require("chattr", "e2fsprogs");
        let out = Command::new("chattr").arg("+i").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "chattr +i {} failed (a filesystem without the immutable flag?): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = Self(dir.to_path_buf());
        let probe = dir.join(".write-probe");
        let write = std::fs::write(&probe, b"x");
        assert!(
            write.is_err(),
            "{} is still writable after chattr +i; the scenario would prove nothing",
            dir.display()
        );
        guard
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

// An upstream killed in the middle of a 128 MiB blob: the client sees the body fail (HTTP/1.1: the connection
// ends before Content-Length; h2: the stream is reset), never a complete-looking short body; the next request
// falls back from the dead backend cache to the upstream and gets the whole blob.
#[test]
fn upstream_killed_mid_blob_is_an_error_then_falls_back() {
    let s = stage("fault-midblob");
    let image = image(&s, "big", BIG);
    let mut cache_a = Registry::open(s.t.path(), "cache-a").unwrap();
    let mut cache_c = Registry::open(s.t.path(), "cache-c").unwrap();
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    for r in [&cache_a, &cache_c, &upstream] {
        push(&image, r, "library/big:latest", None).unwrap();
    }
    let routes = format!(
        "{}{}",
        route("docker.test", &upstream.url(), &[cache_a.url()]),
        route("gcr.test", &upstream.url(), &[cache_c.url()]),
    );
    let gw = s.gateway(&routes);
    let digest = image.layer_digest().to_string();
    let size = image.layers[0].size;
    let blob = format!("/v2/library/big/blobs/{digest}");

    for (proto, host, h2, cache) in [
        ("http/1.1", "docker.test", false, &mut cache_a),
        ("h2", "gcr.test", true, &mut cache_c),
    ] {
        let mut req = s.get(host, &blob);
        if h2 {
            req.h2 = true;
        }
        let outcome =
            s.http
                .download_with_pause(&req, CUT_AFTER, Duration::from_millis(500), || {
                    cache.stop();
                    Ok(())
                });
        match outcome {
            Ok((status, n, got)) if n == size && got == digest => panic!(
                "{proto}: status {status} and the whole {size}-byte blob was delivered although its endpoint was killed after \
                 {CUT_AFTER} bytes: it was already in flight, so nothing was cut (raise BIG)"
            ),
            Ok((status, n, got)) => panic!(
                "{proto}: the client saw a complete-looking body after the upstream died: status {status}, \
                 {n} of {size} bytes, {got}\n{}",
                gw.log()
            ),
            Err(e) => {
                let e = format!("{e:#}");
                assert!(
                    e.contains("body cut after"),
                    "{proto}: the request failed before the body ({e}); expected a 200 whose body breaks"
                );
                eprintln!("{proto}: upstream killed mid-blob → client error: {e}");
            }
        }

        let served_before = upstream.requests(&digest);
        let resp = s.send(&req);
        assert_eq!(
            resp.status,
            200,
            "{proto}: the request after the kill did not fall back: {}",
            resp.text()
        );
        assert_eq!(
            resp.body.len() as u64,
            size,
            "{proto}: fallback body length"
        );
        assert_eq!(sha256(&resp.body), digest, "{proto}: fallback body digest");
        assert!(
            upstream.requests(&digest) > served_before,
            "{proto}: the fallback blob did not come from the upstream registry"
        );
    }
    let failed = gw
        .log()
        .lines()
        .filter(|l| l.contains("mirrorgate::access") && l.contains("completion=Failed"))
        .count();
    eprintln!("access-log lines with completion=Failed: {failed}");
}

// A hanging upstream (TCP accepted, no answer) with `upstream_timeout = "3s"`: 504 UNAVAILABLE after ~3 s,
// not a hung client; with a second endpoint the same wait ends in a fallback and a 200.
#[test]
fn hanging_upstream_times_out_or_falls_back() {
    let s = stage("fault-hang");
    let hang_only = Hang::start();
    let hang_cache = Hang::start();
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let pushed = push(
        &image(&s, "small", 16 * 1024),
        &upstream,
        "library/small:latest",
        None,
    )
    .unwrap();
    let routes = format!(
        "{}{}",
        route("docker.test", &hang_only.url(), &[]),
        route("gcr.test", &upstream.url(), &[hang_cache.url()]),
    );
    let gw = s.gateway_with(
        &format!("upstream_timeout = \"{}s\"\n", UPSTREAM_TIMEOUT.as_secs()),
        &routes,
    );
    let path = manifest_path(&pushed);

    let start = Instant::now();
    let resp = s.send(&s.get("docker.test", &path));
    let took = start.elapsed();
    assert_eq!(resp.status, 504, "hanging upstream: {}", resp.text());
    assert_eq!(
        resp.oci_error_codes().unwrap(),
        vec!["UNAVAILABLE".to_string()]
    );
    assert!(
        took >= UPSTREAM_TIMEOUT.mul_f64(0.8) && took <= UPSTREAM_TIMEOUT + TIMEOUT_MARGIN,
        "504 after {took:?}; expected ~{UPSTREAM_TIMEOUT:?} (+{TIMEOUT_MARGIN:?})"
    );
    assert!(
        hang_only.accepted.load(Ordering::Relaxed) >= 1,
        "the hanging upstream was never contacted"
    );
    eprintln!("hanging upstream: 504 after {took:?}");

    let start = Instant::now();
    let resp = s.send(&s.get("gcr.test", &path));
    let took = start.elapsed();
    assert_eq!(
        resp.status,
        200,
        "hanging cache, live upstream: {}\n{}",
        resp.text(),
        gw.log()
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );
    assert!(
        hang_cache.accepted.load(Ordering::Relaxed) >= 1,
        "the hanging cache was never tried"
    );
    assert!(
        took <= UPSTREAM_TIMEOUT + TIMEOUT_MARGIN,
        "fallback took {took:?}"
    );
    eprintln!("hanging cache: fallback 200 after {took:?}");
}

// A backend cache answering 500 is skipped: the request is served by the upstream (200, right digest), and
// `mirrorgate_upstream_fallbacks_total` counts the move away from the cache.
#[test]
fn failing_backend_cache_falls_back_to_upstream() {
    let s = stage("fault-500");
    let cache = Failing::start();
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let pushed = push(
        &image(&s, "small", 16 * 1024),
        &upstream,
        "library/small:latest",
        None,
    )
    .unwrap();
    let _gw = s.gateway(&route("docker.test", &upstream.url(), &[cache.origin()]));
    let from = format!("from_endpoint=\"{}\"", cache.origin());
    let before = metric(
        &s.metrics(),
        "mirrorgate_upstream_fallbacks_total",
        &[&from],
    );

    let resp = s.send(&s.get("docker.test", &manifest_path(&pushed)));
    assert_eq!(
        resp.status,
        200,
        "backend cache answering 500: {}",
        resp.text()
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );
    assert!(
        cache.hits.load(Ordering::Relaxed) >= 1,
        "the failing cache was never asked"
    );
    let metrics = s.metrics();
    let after = metric(&metrics, "mirrorgate_upstream_fallbacks_total", &[&from]);
    assert!(
        after >= before + 1.0,
        "mirrorgate_upstream_fallbacks_total{{{from}}} went {before} → {after}; metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("fallbacks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// A token-mode upstream whose realm is down: 502 UNAVAILABLE as OCI JSON, the gateway keeps running; the realm
// back on the same URL → 200; down again → a new scope fails (502) while a cached token still serves.
#[test]
fn token_realm_down_is_502_then_recovers() {
    let s = stage("fault-realm");
    let issuer = TokenIssuer::start(
        &s.t.sub("issuer").unwrap(),
        TokenIssuerOptions {
            users: vec![(PUSHER.0.into(), PUSHER.1.into())],
            ..Default::default()
        },
    )
    .unwrap();
    let realm_port = free_port();
    let relay = Relay::start(realm_port, issuer.port());
    let mode = RegistryMode::Token {
        bundle: issuer.cert_bundle().to_path_buf(),
        realm: format!("http://127.0.0.1:{realm_port}/token"),
        service: issuer.service().to_string(),
        issuer: issuer.issuer().to_string(),
    };
    let upstream = Registry::start(s.t.path(), "upstream", mode, None).unwrap();
    let hello = push(
        &image(&s, "hello", 16 * 1024),
        &upstream,
        "library/hello:latest",
        Some(PUSHER),
    )
    .unwrap();
    let other = push(
        &image(&s, "other", 16 * 1024),
        &upstream,
        "library/other:latest",
        Some(PUSHER),
    )
    .unwrap();
    relay.stop();
    let mut gw = s.gateway(&route("docker.test", &upstream.url(), &[]));

    let resp = s.send(&s.get("docker.test", &manifest_path(&hello)));
    assert_eq!(resp.status, 502, "realm down: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.oci_error_codes().unwrap(),
        vec!["UNAVAILABLE".to_string()]
    );
    assert!(
        Path::new(&format!("/proc/{}", gw.pid())).exists(),
        "the gateway died"
    );
    assert_eq!(
        s.send(&s.get("docker.test", "/v2/")).status,
        200,
        "ping while the realm is down"
    );

    let relay = Relay::start(realm_port, issuer.port());
    let resp = s.send(&s.get("docker.test", &manifest_path(&hello)));
    assert_eq!(
        resp.status,
        200,
        "realm back: {}\n{}",
        resp.text(),
        gw.log()
    );
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(hello.manifest_digest.as_str())
    );

    relay.stop();
    let resp = s.send(&s.get("docker.test", &manifest_path(&other)));
    assert_eq!(
        resp.status,
        502,
        "realm down again, uncached scope: {}",
        resp.text()
    );
    let resp = s.send(&s.get("docker.test", &manifest_path(&hello)));
    assert_eq!(
        resp.status,
        200,
        "realm down again, cached scope: {}",
        resp.text()
    );
    gw.stop().unwrap();
}

// `[limits] redis` pointing at a dead port: the gateway still starts, reports ready, and serves (fail open).
#[test]
fn redis_down_at_start_fails_open() {
    let s = stage("fault-redis");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let pushed = push(
        &image(&s, "small", 16 * 1024),
        &upstream,
        "library/small:latest",
        None,
    )
    .unwrap();
    let dead = free_port();
    let limits = format!(
        "[limits]\nrequests_per_second = 100\nburst = 100\nbytes_per_second = \"1GiB\"\n\
         redis = \"redis://127.0.0.1:{dead}\"\n"
    );
    let s = s.limits(&limits);
    let config = s.config(&route("docker.test", &upstream.url(), &[]));
    let gw = Gateway::start(s.t.path(), &config)
        .unwrap_or_else(|e| panic!("the gateway did not start with redis down: {e:#}"));
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            s.send(&s.get("docker.test", &manifest_path(&pushed)))
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        vec![200; 5],
        "requests right after start with redis down\n{}",
        gw.log()
    );
    // Once the background probe has found redis unreachable (and said so), limited requests still pass.
    let start = Instant::now();
    let said = loop {
        let log = gw.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("redis") && l.contains("unreachable"))
        {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the gateway never logged that redis is unreachable; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("gateway on redis: {said}");
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            s.send(&s.get("docker.test", &manifest_path(&pushed)))
                .status
        })
        .collect();
    assert_eq!(
        statuses,
        vec![200; 5],
        "requests with redis known to be down\n{}",
        gw.log()
    );
}

// ACME storage that cannot be written (`chattr +i` on `certs/`; chmod does not stop root) when renewal is due:
// the renewal fails on the write, the failure is logged, and the old certificate keeps being served.
#[test]
fn acme_storage_unwritable_keeps_the_old_certificate() {
    require_hosts();
    let validity = Duration::from_secs(30);
    let t = TestDir::new("fault-acme").unwrap();
    let ports = Ports::free();
    let pebble = Pebble::start(
        &t.sub("pebble").unwrap(),
        ports.http,
        ports.https,
        Some(validity),
    )
    .unwrap();
    let client = pebble.client().unwrap();
    let config = format!(
        "{}\n{}\n{GENEROUS_LIMITS}\n{}",
        ports.server_toml(),
        pebble.tls_toml("certs", "tls-alpn-01"),
        route("docker.test", "http://127.0.0.1:9", &[]),
    );
    let gw = Gateway::start(t.path(), &config).unwrap();
    let issued = client
        .wait_trusted(ports.https, "docker.test", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", gw.log()));
    let issued_at = Instant::now();
    let storage = t.path().join("certs");
    let failures_before = gw.log().matches(FAILED_ATTEMPT).count();
    let _frozen = Immutable::set(&storage);

    // Renewal is due at 2/3 of the lifetime (20 s); the certificate stays valid until 30 s.
    let deadline = issued_at + validity - Duration::from_secs(3);
    let storage_text = storage.display().to_string();
    let line = loop {
        let log = gw.log();
        let storage_failure = log
            .lines()
            .filter(|l| l.contains(FAILED_ATTEMPT))
            .skip(failures_before)
            .find(|l| {
                l.contains(&storage_text) || l.contains("not permitted") || l.contains("ermission")
            })
            .map(str::to_string);
        if let Some(line) = storage_failure {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no failed renewal naming the storage was logged before the certificate's last seconds; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("renewal into unwritable storage: {line}");
    let served = client.handshake(ports.https, "docker.test").unwrap();
    assert_eq!(
        served, issued,
        "the certificate changed although it could not be stored"
    );
    let mut conn = client.keep_open(ports.https, "docker.test", false).unwrap();
    assert_eq!(conn.get("/v2/").unwrap(), 200);
}

// The config file deleted while running: requests keep being served with the last config, the gateway says
// so in its log, and a valid file written again is picked up (a new route starts answering).
#[test]
fn config_deleted_keeps_serving_then_recreated_is_picked_up() {
    let s = stage("fault-config");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let pushed = push(
        &image(&s, "small", 16 * 1024),
        &upstream,
        "library/small:latest",
        None,
    )
    .unwrap();
    let first = s.config(&route("docker.test", &upstream.url(), &[]));
    let gw = Gateway::start(s.t.path(), &first).unwrap();
    let path = manifest_path(&pushed);
    assert_eq!(s.send(&s.get("docker.test", &path)).status, 200);
    let unrouted = s.send(&s.get("gcr.test", &path)).status;
    assert_ne!(unrouted, 200, "gcr.test has no route yet");

    let mut problems = Vec::new();
    let log_before = gw.log().len();
    std::fs::remove_file(gw.config_path()).unwrap();
    // Two config polls (2 s each) and some.
    std::thread::sleep(Duration::from_secs(5));
    let statuses: Vec<u16> = (0..3)
        .map(|_| s.send(&s.get("docker.test", &path)).status)
        .collect();
    if statuses != vec![200; 3] {
        problems.push(format!(
            "with the config file deleted, requests answered {statuses:?}"
        ));
    }
    let log = gw.log();
    let since = log.get(log_before..).unwrap_or_default();
    let config_name = gw.config_path().display().to_string();
    let said: Vec<&str> = since
        .lines()
        .filter(|l| l.contains(&config_name) || l.contains("mirrorgate.toml"))
        .collect();
    if !said
        .iter()
        .any(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        problems.push(format!(
            "no WARN/ERROR line about the deleted {config_name} within 5 s; lines naming it: {said:?}"
        ));
    }

    let second = format!("{first}\n{}", route("gcr.test", &upstream.url(), &[]));
    rewrite(gw.config_path(), &second);
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < Duration::from_secs(15) {
        last = s.send(&s.get("gcr.test", &path)).status;
        if last == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if last != 200 {
        problems.push(format!(
            "the recreated config (adding gcr.test) was not picked up within 15 s: gcr.test answers {last}"
        ));
    }
    let still = s.send(&s.get("docker.test", &path)).status;
    if still != 200 {
        problems.push(format!(
            "docker.test answers {still} after the config came back"
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\n--- gateway log since the deletion ---\n{}",
        problems.join("\n"),
        gw.log().get(log_before..).unwrap_or_default()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Issue 22.3: the admin listener through a drain.

// SIGTERM with a request in flight (an upstream that never answers holds the drain open for the grace): the
// admin listener keeps serving — /readyz turns 503 "shutting down", /metrics still 200 — until the process
// exits, instead of refusing connections the moment draining starts.
#[test]
fn readyz_turns_503_during_the_drain_and_metrics_stay_up() {
    let s = stage("fault-drain-admin");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let mut gw = s.gateway_with(
        "shutdown_grace = \"6s\"\nupstream_timeout = \"60s\"",
        &route("docker.test", &silent_url, &[]),
    );
    let req = s.get("docker.test", "/v2/library/held/manifests/latest");
    let http = s.http.clone();
    let in_flight = std::thread::spawn(move || http.send(&req).map(|r| r.status));
    // the request is in flight once the silent upstream has its connection
    let (_held, _) = silent.accept().unwrap();
    gw.terminate().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let admin = s.ports.admin;
    let ask = |path: &str| {
        s.http.send(&mirrorgate_e2e::RawRequest::plain(
            admin,
            &format!("127.0.0.1:{admin}"),
            path,
        ))
    };
    let ready = ask("/readyz").expect("/readyz refused during the drain");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("shutting down"), "{}", ready.text());
    let scraped = ask("/metrics").expect("/metrics refused during the drain");
    assert_eq!(scraped.status, 200);
    gw.wait_exit(Duration::from_secs(30)).unwrap();
    let _ = in_flight.join();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_err(),
        "admin still listening after exit"
    );
}

// ---- A stalling token service, and a state folder that cannot be written ----

/// How a [`HostileRealm`] answers its first token request once armed.
#[derive(Clone, Copy)]
enum Stall {
    /// A complete response head announcing 100 body bytes, 5 of them, then nothing.
    MidBody,
    /// The response head at one byte per second.
    SlowHead,
}

/// A token service in front of a real [`TokenIssuer`]: relays every request, except the first one after
/// [`HostileRealm::arm`], which it answers with `stall` and then holds open. Counts the requests it saw.
struct HostileRealm {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileRealm {
    fn start(issuer_port: u16, stall: Stall) -> Self {
        use std::sync::atomic::AtomicBool;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (flag, count) = (armed.clone(), requests.clone());
        let task = runtime().spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (flag, count) = (flag.clone(), count.clone());
                tokio::spawn(async move {
                    // A token request is a GET: its head is the whole request.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match inbound.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if flag.swap(false, Ordering::SeqCst) {
                        let resp_head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
                        match stall {
                            Stall::MidBody => {
                                let _ = inbound.write_all(resp_head).await;
                                let _ = inbound.write_all(b"{\"tok").await;
                            }
                            Stall::SlowHead => {
                                for byte in resp_head {
                                    if inbound.write_all(&[*byte]).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }
                        // Hold the connection without another byte.
                        tokio::time::sleep(Duration::from_secs(600)).await;
                        return;
                    }
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", issuer_port)).await
                    else {
                        return;
                    };
                    if outbound.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            port,
            armed,
            requests,
            task,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The next token request gets the stall.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Drop for HostileRealm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `[server] upstream_timeout` of the stalling-realm scenarios, and the slack allowed on top of it.
const TOKEN_DEADLINE: Duration = Duration::from_secs(5);
const TOKEN_MARGIN: Duration = Duration::from_secs(3);

/// A token-mode upstream whose realm is a [`HostileRealm`] stalling as `stall` on the first pull through the
/// gateway: that pull ends by the deadline with a 5xx OCI error, and a pull of the same repository right after
/// it gets a new token and succeeds (no lock held by a dead fetch).
fn stalled_realm_ends_at_deadline(name: &str, stall: Stall) {
    let s = stage(name);
    let issuer = TokenIssuer::start(
        &s.t.sub("issuer").unwrap(),
        TokenIssuerOptions {
            users: vec![(PUSHER.0.into(), PUSHER.1.into())],
            ..Default::default()
        },
    )
    .unwrap();
    let realm = HostileRealm::start(issuer.port(), stall);
    let mode = RegistryMode::Token {
        bundle: issuer.cert_bundle().to_path_buf(),
        realm: realm.realm(),
        service: issuer.service().to_string(),
        issuer: issuer.issuer().to_string(),
    };
    let upstream = Registry::start(s.t.path(), "upstream", mode, None).unwrap();
    let pushed = push(
        &image(&s, "x", 16 * 1024),
        &upstream,
        "library/x:latest",
        Some(PUSHER),
    )
    .unwrap();
    let gw = s.gateway_with(
        &format!("upstream_timeout = \"{}s\"", TOKEN_DEADLINE.as_secs()),
        &route("docker.test", &upstream.url(), &[]),
    );
    let before = realm.requests.load(Ordering::SeqCst);
    realm.arm();

    let start = Instant::now();
    let first = s.http.send(&s.get("docker.test", &manifest_path(&pushed)));
    let took = start.elapsed();
    let first = first.unwrap_or_else(|e| {
        panic!(
            "the first pull got no answer ({e:#}) after {took:?}; the token exchange has no deadline\n{}",
            gw.log()
        )
    });
    assert!(
        took <= TOKEN_DEADLINE + TOKEN_MARGIN,
        "the first pull took {took:?}; the deadline is {TOKEN_DEADLINE:?}"
    );
    assert!(
        (500..600).contains(&first.status),
        "stalled token service: {} {}",
        first.status,
        first.text()
    );
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert!(
        !first.oci_error_codes().unwrap().is_empty(),
        "{}",
        first.text()
    );

    let start = Instant::now();
    let second = s.send(&s.get("docker.test", &manifest_path(&pushed)));
    assert_eq!(
        second.status,
        200,
        "the pull after the stall: {}\n{}",
        second.text(),
        gw.log()
    );
    assert_eq!(
        second.header("docker-content-digest"),
        Some(pushed.manifest_digest.as_str())
    );
    assert!(
        start.elapsed() < TOKEN_DEADLINE,
        "the second pull waited {:?}",
        start.elapsed()
    );
    assert!(
        realm.requests.load(Ordering::SeqCst) >= before + 2,
        "the second pull sent no new token request"
    );
}

// The token service sends a response head and 5 body bytes, then stalls (issue 22): with upstream_timeout = 5s
// the pull ends by the deadline with a 5xx OCI error, and the next pull of the same repository succeeds.
#[test]
fn token_service_stalling_mid_body_ends_at_deadline() {
    stalled_realm_ends_at_deadline("fault-token-body", Stall::MidBody);
}

// The token service sends its response head at one byte per second: the pull also ends by the deadline, and
// the next pull of the same repository succeeds.
#[test]
fn token_service_slow_head_ends_at_deadline() {
    stalled_realm_ends_at_deadline("fault-token-head", Stall::SlowHead);
}

// A self-signed config whose tls.storage is immutable (`chattr +i`): `mirrorgate check` fails naming
// tls.storage with its line and "storage not writable", and `run` refuses to start before binding a port.
// The same folder writable again passes `check`.
#[test]
fn unwritable_storage_fails_check_and_run() {
    require_hosts();
    let t = TestDir::new("fault-storage").unwrap();
    let ports = Ports::free();
    let storage = t.sub("state").unwrap();
    let config = format!(
        "{}\n[tls]\nstorage = \"state\"\n\n{GENEROUS_LIMITS}\n{}",
        ports.server_toml(),
        route("docker.test", "http://127.0.0.1:9", &[]),
    );
    let path = t.path().join("mirrorgate.toml");
    std::fs::write(&path, &config).unwrap();
    let line = config
        .lines()
        .position(|l| l.starts_with("storage ="))
        .unwrap()
        + 1;
    {
        let _frozen = Immutable::set(&storage);
        let out = Gateway::check(&path).unwrap();
        assert!(!out.status.success(), "check passed: {}", out.stdout);
        let expected = format!("mirrorgate.toml:{line}:1: tls.storage: storage not writable");
        assert!(
            out.stderr.contains(&expected),
            "check said:\n{}\nexpected a line containing {expected:?}",
            out.stderr
        );
        let started = Gateway::start(t.path(), &config);
        let err = match started {
            Ok(_) => panic!("run started with an unwritable storage folder"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("storage not writable"), "run said: {err}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", ports.https)).is_err(),
            "a refused start left the https port bound"
        );
    }
    let out = Gateway::check(&path).unwrap();
    assert!(out.status.success(), "writable again: {}", out.stderr);
}
