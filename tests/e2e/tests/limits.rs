//! Limits at the gateway: the shape of a 429 (Retry-After, RateLimit-*), what a real client makes of it,
//! bandwidth throttling of one user's body while another user streams at full speed, and one limit held by
//! two gateways through a real redis-server (failing open when it dies). Each scenario stays under ~20 s;
//! timing bands are wide on purpose (2-core CI machines, debug builds).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    free_port, push, require, wait_for_port, Gateway, OciImage, Ports, Proc, Pushed, RawRequest,
    RawResponse, Registry, GENEROUS_LIMITS,
};

const PASSWORD: &str = "pw";

/// The shared stage plus an upstream holding `library/<name>:latest` with one layer of `layer_bytes`.
struct Stage {
    base: mirrorgate_e2e::Stage,
    upstream: Registry,
    image: Pushed,
    image_size: u64,
}

impl std::ops::Deref for Stage {
    type Target = mirrorgate_e2e::Stage;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Stage {
    fn new(name: &str, layer_bytes: usize) -> Self {
        let base = mirrorgate_e2e::Stage::new(name);
        let upstream = Registry::open(base.t.path(), "upstream").unwrap();
        let img =
            OciImage::write_layout(&base.t.sub("image").unwrap(), name, "latest", layer_bytes)
                .unwrap();
        let image = push(&img, &upstream, &format!("library/{name}:latest"), None).unwrap();
        Self {
            image_size: img.layers[0].size,
            base,
            upstream,
            image,
        }
    }

    /// Writes `<dir>/htpasswd` with `users` (bcrypt cost 5, password [`PASSWORD`]) and starts a gateway in
    /// `dir` with a private route docker.test → upstream, `[auth]`, the given tenants and `[limits]` extras.
    fn gateway(
        &self,
        dir: &Path,
        ports: &Ports,
        users: &[&str],
        tenants: &str,
        limits: &str,
    ) -> Gateway {
        let lines: Vec<(&str, &str, u32)> = users.iter().map(|u| (*u, PASSWORD, 5)).collect();
        Htpasswd::create(&dir.join("htpasswd"), &lines).unwrap();
        let toml = format!(
            "{server}\n{tls}\n[auth]\nhtpasswd = \"htpasswd\"\n\n{GENEROUS_LIMITS}{limits}\n\n{tenants}\n\
             [[route]]\nhost = \"docker.test\"\nupstream = {up:?}\nanonymous = false\n",
            server = ports.server_toml(),
            tls = self.tls_toml(),
            up = self.upstream.url(),
        );
        Gateway::start(dir, &toml).unwrap()
    }

    fn get(&self, port: u16, path: &str, user: &str) -> RawResponse {
        let req = RawRequest::h1(port, "docker.test", path)
            .with_host(&format!("docker.test:{port}"))
            .with_header("authorization", &basic_auth(user, PASSWORD))
            .with_header("accept", "application/vnd.oci.image.manifest.v1+json");
        self.http.send(&req).unwrap()
    }

    fn manifest_path(&self) -> String {
        let repo = self.image.reference.split(':').next().unwrap();
        format!("/v2/{repo}/manifests/latest")
    }

    fn blob_path(&self) -> String {
        let repo = self.image.reference.split(':').next().unwrap();
        format!("/v2/{repo}/blobs/{}", self.image.layer_digests[0])
    }
}

/// A `[[tenant]]` table allowing everything on docker.test, with extra limit lines.
fn tenant(name: &str, users: &[&str], extra: &str) -> String {
    let users: Vec<String> = users.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[tenant]]\nname = {name:?}\nusers = [{}]\nallow = [\"docker.test/*\"]\n{extra}\n\n",
        users.join(", ")
    )
}

// requests_per_second = 1, burst = 2: the third quick request is 429 TOOMANYREQUESTS with an integer
// Retry-After ≥ 1 and the RateLimit-* headers. A skopeo pull by a tenant whose daily quota (256 bytes) runs out
// mid-pull fails saying 429 / too many requests. (A 1 request/s limit alone does not fail a skopeo pull:
// containers/image retries 429s, honouring Retry-After, and gets through.)
#[test]
fn rate_limit_429_shape_and_client_error() {
    require("skopeo", "skopeo");
    let s = Stage::new("limit429", 4 * 1024);
    let ports = Ports::free();
    let tenants = format!(
        "{}{}",
        tenant("tight", &["slow"], "requests_per_second = 1\nburst = 2"),
        tenant("quota", &["tiny"], "bytes_per_day = 256"),
    );
    let _gw = s.gateway(s.t.path(), &ports, &["slow", "tiny"], &tenants, "");
    let path = s.manifest_path();

    let start = Instant::now();
    let answers: Vec<RawResponse> = (0..3).map(|_| s.get(ports.https, &path, "slow")).collect();
    let took = start.elapsed();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        took < Duration::from_millis(900),
        "three requests took {took:?}: too slow to test a burst of 2 at 1/s"
    );
    assert_eq!(statuses, vec![200, 200, 429], "{}", answers[2].text());
    let refused = &answers[2];
    assert_eq!(
        refused.oci_error_codes().unwrap(),
        vec!["TOOMANYREQUESTS".to_string()]
    );
    let retry_after = refused
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", refused.headers));
    let secs: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not an integer"));
    assert!(secs >= 1, "Retry-After {secs}");
    for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        let v = refused
            .header(h)
            .unwrap_or_else(|| panic!("429 without {h}: {:?}", refused.headers));
        assert!(v.parse::<u64>().is_ok(), "{h}: {v:?}");
    }
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));

    // skopeo directly, with --debug (containers/image logs each 429 it backs off from) and a short command
    // timeout: containers/image retries a 429 five times, waiting Retry-After capped at 60 s, so without the
    // timeout a quota refusal takes ~4 minutes to surface.
    let out = Command::new("skopeo")
        .args(["--debug", "--insecure-policy", "--command-timeout", "10s"])
        .args(["--override-os", "linux", "--override-arch", "amd64", "copy"])
        .arg("--src-cert-dir")
        .arg(&s.certs)
        .args(["--src-creds", &format!("tiny:{PASSWORD}")])
        .arg(format!(
            "docker://docker.test:{}/{}",
            ports.https, s.image.reference
        ))
        .arg(format!("oci:{}:x", s.t.sub("pulled").unwrap().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a pull past the daily quota succeeded"
    );
    let err = stderr.to_lowercase();
    assert!(
        err.contains("429") || err.contains("too many requests") || err.contains("toomanyrequests"),
        "skopeo said: {stderr}"
    );
}

/// Downloads the blob as `user`; returns the time it took.
fn timed_download(s: &Stage, port: u16, user: &str) -> Duration {
    let start = Instant::now();
    let resp = s.get(port, &s.blob_path(), user);
    let took = start.elapsed();
    assert_eq!(resp.status, 200, "{user}: {}", resp.text());
    assert_eq!(resp.body.len() as u64, s.image_size, "{user}: short body");
    took
}

// bytes_per_second = "8MiB" throttles the body: a 64 MiB blob takes 5–14 s for that user (8 s nominal; the
// band allows a first-second burst and a slow machine), while a user of an unlimited tenant pulling the same
// blob at the same time finishes in under 4 s.
#[test]
fn bandwidth_throttles_one_user_only() {
    let s = Stage::new("bandwidth", 64 << 20);
    let ports = Ports::free();
    let tenants = format!(
        "{}{}",
        tenant("metered", &["metered"], "bytes_per_second = \"8MiB\""),
        tenant("free", &["free"], ""),
    );
    let _gw = s.gateway(s.t.path(), &ports, &["metered", "free"], &tenants, "");
    // warm the path (credential cache, upstream connection) so both timings are about the body
    assert_eq!(s.get(ports.https, &s.manifest_path(), "free").status, 200);

    let (metered, free) = std::thread::scope(|scope| {
        let m = scope.spawn(|| timed_download(&s, ports.https, "metered"));
        let f = scope.spawn(|| timed_download(&s, ports.https, "free"));
        (m.join().unwrap(), f.join().unwrap())
    });
    eprintln!("64 MiB blob: metered user {metered:?}, unlimited user {free:?}");
    assert!(
        metered >= Duration::from_secs(5) && metered <= Duration::from_secs(14),
        "the 8 MiB/s user took {metered:?} for 64 MiB (expected 5–14 s)"
    );
    assert!(
        free < Duration::from_secs(4),
        "the unlimited user took {free:?} for 64 MiB (expected < 4 s)"
    );
}

// Two gateways sharing one redis-server hold a tenant with requests_per_second = 5, burst = 5 to the combined
// limit: over ~3 s of requests alternating between them, at most 5 + 5×3 = 20 pass (tolerance: 12..=26; each
// gateway alone would let ~20 through, ~40 together). When redis dies both keep serving (fail open).
#[test]
fn redis_shares_limits_and_fails_open() {
    require("redis-server", "redis-server");
    let s = Stage::new("redis", 4 * 1024);
    let redis_port = free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &redis_port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let mut redis = Proc::spawn("redis", cmd, s.t.path()).unwrap();
    wait_for_port(redis_port, Duration::from_secs(10)).unwrap();

    let tenants = tenant("shared", &["u"], "requests_per_second = 5\nburst = 5");
    let limits = format!("redis = \"redis://127.0.0.1:{redis_port}\"");
    let ports = [Ports::free(), Ports::free()];
    let dirs = [s.t.sub("gw1").unwrap(), s.t.sub("gw2").unwrap()];
    let _gws: Vec<Gateway> = (0..2)
        .map(|i| s.gateway(&dirs[i], &ports[i], &["u"], &tenants, &limits))
        .collect();

    let mut passed = [0u32; 2];
    let mut refused = [0u32; 2];
    let start = Instant::now();
    let mut i = 0usize;
    // paced at one request per 25 ms (≈ 120 in 3 s, 6× the combined limit), bounded in count
    while start.elapsed() < Duration::from_secs(3) && i < 300 {
        let g = i % 2;
        let due = Duration::from_millis(25) * i as u32;
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        match s.get(ports[g].https, "/v2/", "u").status {
            200 => passed[g] += 1,
            429 => refused[g] += 1,
            other => panic!("gateway {g} answered {other}"),
        }
        i += 1;
    }
    let total = passed[0] + passed[1];
    eprintln!(
        "shared limit over {:?}: passed {passed:?}, refused {refused:?}",
        start.elapsed()
    );
    assert!(
        refused[0] + refused[1] > 0,
        "nothing was refused: the loop was too slow to test the limit"
    );
    assert!(
        (12..=26).contains(&total),
        "{total} requests passed across two gateways (combined limit ≈ 20; unshared ≈ 40)"
    );
    assert!(
        passed[0] > 0 && passed[1] > 0,
        "one gateway passed nothing: {passed:?}"
    );

    redis.kill();
    std::thread::sleep(Duration::from_millis(1200));
    for (g, p) in ports.iter().enumerate() {
        let mut seen = Vec::new();
        let ok = (0..20).any(|_| {
            let status = s.get(p.https, "/v2/", "u").status;
            seen.push(status);
            if status != 200 {
                std::thread::sleep(Duration::from_millis(500));
            }
            status == 200
        });
        assert!(
            ok,
            "gateway {g} did not serve after redis died (fail open); statuses {seen:?}"
        );
        eprintln!("gateway {g} after redis died: {seen:?}");
    }
}

// `[limits] concurrent_requests = 2` holds each anonymous source IP to two requests in flight (it used to be
// validated and then dropped): with two slow blob downloads open (bytes_per_second keeps them open for
// seconds), a third request is 429 TOOMANYREQUESTS with Retry-After and counted as
// `mirrorgate_rate_limited_total{limit="concurrency",scope="ip"}`; once the downloads end, requests pass again.
#[test]
fn anonymous_concurrency_is_held_per_ip() {
    let s = mirrorgate_e2e::Stage::new("anonconc")
        .limits("[limits]\nconcurrent_requests = 2\nbytes_per_second = \"256KiB\"\n");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let img =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "anonconc", "latest", 1 << 20).unwrap();
    let pushed = push(&img, &upstream, "library/anonconc:latest", None).unwrap();
    let _gw = s.gateway(&mirrorgate_e2e::route("docker.test", &upstream.url(), ""));
    let repo = pushed.reference.split(':').next().unwrap();
    let blob = format!("/v2/{repo}/blobs/{}", pushed.layer_digests[0]);
    let refused_label = ["limit=\"concurrency\"", "scope=\"ip\""];
    let before = mirrorgate_e2e::metric(
        &s.metrics(),
        "mirrorgate_rate_limited_total",
        &refused_label,
    );

    let (downloads, third) = std::thread::scope(|scope| {
        let slow: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| s.send(&s.get("docker.test", &blob))))
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let third = s.send(&s.get("docker.test", "/v2/"));
        let downloads: Vec<RawResponse> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        (downloads, third)
    });
    for d in &downloads {
        assert_eq!(d.status, 200, "a held download: {}", d.text());
        assert_eq!(d.body.len() as u64, img.layers[0].size, "short body");
    }
    assert_eq!(
        third.status,
        429,
        "a third request with two in flight: {}",
        third.text()
    );
    assert_eq!(
        third.oci_error_codes().unwrap(),
        vec!["TOOMANYREQUESTS".to_string()]
    );
    assert!(third.header("retry-after").is_some(), "{:?}", third.headers);
    let after = mirrorgate_e2e::metric(
        &s.metrics(),
        "mirrorgate_rate_limited_total",
        &refused_label,
    );
    assert!(
        after >= before + 1.0,
        "rate_limited_total{{concurrency,ip}} went {before} → {after}"
    );
    assert_eq!(
        s.send(&s.get("docker.test", "/v2/")).status,
        200,
        "after the downloads ended"
    );
}
