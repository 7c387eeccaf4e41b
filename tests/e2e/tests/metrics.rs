//! The admin listener's `/metrics` (Prometheus text) moves with real traffic: a skopeo pull through the gateway
//! from a token-mode upstream counts blob requests, response bytes, and upstream tokens fetched once and then
//! served from the cache.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use mirrorgate_e2e::{
    metric, push, route, OciImage, Registry, Stage, TokenIssuer, TokenIssuerOptions,
};

// Before/after one skopeo pull: requests_total{kind="blob"} moved and response_bytes_total grew by at least
// the layer's size; after a second pull, upstream_token_requests_total{result="cache_hit"} moved (the token
// fetched for the first pull was reused).
#[test]
fn metrics_follow_pulls() {
    let s = Stage::new("metrics");
    let t = &s.t;
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

    let _gw = s.gateway(&route("docker.test", &upstream.url(), ""));
    let skopeo = s.skopeo();
    let image_ref = s.via("docker.test", "library/hello:latest");

    let before = s.metrics();
    let layers = skopeo.pull(&image_ref, &t.sub("pull-1").unwrap()).unwrap();
    assert_eq!(layers, pushed.layer_digests);
    let after = s.metrics();

    let blob = |text: &str| metric(text, "mirrorgate_requests_total", &["kind=\"blob\""]);
    let bytes = |text: &str| metric(text, "mirrorgate_response_bytes_total", &[]);
    let hits = |text: &str| {
        metric(
            text,
            "mirrorgate_upstream_token_requests_total",
            &["result=\"cache_hit\""],
        )
    };
    let fetched = |text: &str| {
        metric(
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
    let last = s.metrics();
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
