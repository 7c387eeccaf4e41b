//! The admin listener's `/metrics` (Prometheus text) moves with real traffic: a skopeo pull through the gateway
//! from a token-mode upstream counts blob requests, response bytes, and upstream tokens fetched once and then
//! served from the cache.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use mirrorgate_e2e::{
    push, require_hosts, Gateway, HttpCheck, OciImage, Ports, RawRequest, Registry, Skopeo, TestCa,
    TestDir, TokenIssuer, TokenIssuerOptions,
};

/// Sum of every sample of `name` whose label set contains all of `labels` (`key="value"` strings).
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(http: &HttpCheck, admin: u16) -> String {
    let resp = http
        .send(&RawRequest::plain(
            admin,
            &format!("127.0.0.1:{admin}"),
            "/metrics",
        ))
        .unwrap();
    assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
    resp.text()
}

// Before/after one skopeo pull: requests_total{kind="blob"} moved and response_bytes_total grew by at least
// the layer's size; after a second pull, upstream_token_requests_total{result="cache_hit"} moved (the token
// fetched for the first pull was reused).
#[test]
fn metrics_follow_pulls() {
    require_hosts();
    let t = TestDir::new("metrics").unwrap();
    let ca = TestCa::new(&t.sub("ca").unwrap()).unwrap();
    let leaf = ca.issue("site", &["docker.test"]).unwrap();
    let certs = ca.cert_dir(&t.sub("skopeo-certs").unwrap()).unwrap();
    let http = HttpCheck::new(&ca).unwrap();
    let issuer = TokenIssuer::start(
        &t.sub("issuer").unwrap(),
        TokenIssuerOptions {
            users: vec![("pusher".into(), "pw".into())],
            ..Default::default()
        },
    )
    .unwrap();
    let upstream = Registry::token(t.path(), "upstream", &issuer).unwrap();
    let image =
        OciImage::write_layout(&t.sub("image").unwrap(), "hello", "latest", 1 << 20).unwrap();
    let pushed = push(
        &image,
        &upstream,
        "library/hello:latest",
        Some(("pusher", "pw")),
    )
    .unwrap();
    let layer_size = image.layers[0].size as f64;

    let ports = Ports::free();
    let toml = format!(
        "{server}\n[tls]\ncert = {cert:?}\nkey = {key:?}\n\n[limits]\nrequests_per_second = 10000\nburst = 10000\n\
         bytes_per_second = \"10GiB\"\n\n[[route]]\nhost = \"docker.test\"\nupstream = {up:?}\nanonymous = true\n",
        server = ports.server_toml(),
        cert = leaf.cert.display().to_string(),
        key = leaf.key.display().to_string(),
        up = upstream.url(),
    );
    let gw = Gateway::start(t.path(), &toml).unwrap();
    let skopeo = Skopeo::new().cert_dir(&certs);
    let image_ref = format!("docker://docker.test:{}/library/hello:latest", ports.https);

    let before = scrape(&http, gw.admin_port());
    let layers = skopeo.pull(&image_ref, &t.sub("pull-1").unwrap()).unwrap();
    assert_eq!(layers, pushed.layer_digests);
    let after = scrape(&http, gw.admin_port());

    let blob = |text: &str| sum(text, "mirrorgate_requests_total", &["kind=\"blob\""]);
    let bytes = |text: &str| sum(text, "mirrorgate_response_bytes_total", &[]);
    let hits = |text: &str| {
        sum(
            text,
            "mirrorgate_upstream_token_requests_total",
            &["result=\"cache_hit\""],
        )
    };
    let fetched = |text: &str| {
        sum(
            text,
            "mirrorgate_upstream_token_requests_total",
            &["result=\"fetched\""],
        )
    };
    eprintln!(
        "after pull 1: blob requests {} → {}, response bytes {} → {}, tokens fetched {}, cache hits {}",
        blob(&before),
        blob(&after),
        bytes(&before),
        bytes(&after),
        fetched(&after),
        hits(&after)
    );
    assert!(
        blob(&after) >= blob(&before) + 2.0,
        "mirrorgate_requests_total{{kind=\"blob\"}} did not count the config and layer blobs"
    );
    assert!(
        bytes(&after) - bytes(&before) >= layer_size,
        "mirrorgate_response_bytes_total grew by {} < the layer's {layer_size} bytes",
        bytes(&after) - bytes(&before)
    );
    assert!(
        fetched(&after) >= 1.0,
        "no upstream token fetch counted, yet the upstream is in token mode"
    );

    skopeo.pull(&image_ref, &t.sub("pull-2").unwrap()).unwrap();
    let last = scrape(&http, gw.admin_port());
    eprintln!(
        "after pull 2: tokens fetched {}, cache hits {} (issuer saw {} token requests)",
        fetched(&last),
        hits(&last),
        issuer.total()
    );
    assert!(
        hits(&last) > hits(&after),
        "the second pull did not reuse a cached upstream token (cache_hit {} → {})",
        hits(&after),
        hits(&last)
    );
    assert!(
        blob(&last) >= blob(&after) + 2.0,
        "the second pull's blobs were not counted"
    );
}
