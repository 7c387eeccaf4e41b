//! Proof that the harness itself works, without mirrorgate: real registries come up in every mode, images
//! written by hand push and pull with their digests intact, the token issuer's JWTs are accepted by
//! distribution, and the test host names resolve. If these fail, the scenarios' failures mean nothing.

use mirrorgate_e2e::{
    layer_digests_in_layout, push, require_hosts, sha256, HttpCheck, OciImage, RawRequest,
    Registry, Skopeo, TestCa, TestDir, TokenIssuer, TokenIssuerOptions,
};

// tests/run maps the test host names to loopback; every scenario depends on it.
#[test]
fn test_hosts_resolve_to_loopback() {
    require_hosts();
    use std::net::ToSocketAddrs;
    for host in ["gcr.test", "mirror.test", "auth.test", "upstream.test"] {
        let addrs: Vec<_> = (host, 1).to_socket_addrs().unwrap().collect();
        assert!(
            addrs.iter().any(|a| a.ip().is_loopback()),
            "{host} → {addrs:?}"
        );
    }
}

// An open registry accepts a pushed image, serves the same manifest bytes, and a pull gets the same layer.
#[test]
fn open_registry_push_inspect_and_pull_keep_digests() {
    let t = TestDir::new("harness-open").unwrap();
    let registry = Registry::open(t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&t.sub("image").unwrap(), "hello", "latest", 64 * 1024).unwrap();
    let pushed = push(&image, &registry, "library/hello:latest", None).unwrap();

    let direct = Skopeo::new().insecure();
    let raw = direct
        .inspect_raw(&format!(
            "docker://{}/library/hello:latest",
            registry.host()
        ))
        .unwrap();
    let raw = raw.check("inspect").unwrap();
    assert_eq!(
        sha256(raw.stdout.as_bytes()),
        pushed.manifest_digest,
        "registry changed the manifest bytes"
    );

    let out = t.sub("pulled").unwrap();
    let layers = direct
        .pull(
            &format!("docker://{}/library/hello:latest", registry.host()),
            &out,
        )
        .unwrap();
    assert_eq!(layers, pushed.layer_digests);
    assert!(
        registry.requests("/v2/library/hello/manifests/latest") >= 2,
        "log: {}",
        registry.log()
    );
}

// A multi-arch index pushes with --all and pulls back with both platforms' layers.
#[test]
fn multi_arch_index_round_trips() {
    let t = TestDir::new("harness-multi").unwrap();
    let registry = Registry::open(t.path(), "upstream").unwrap();
    let image = OciImage::write_multi_arch(&t.sub("image").unwrap(), "multi", "v1", 4096).unwrap();
    let pushed = push(&image, &registry, "team/multi:v1", None).unwrap();
    let out = t.sub("pulled").unwrap();
    Skopeo::new()
        .insecure()
        .copy(
            &format!("docker://{}/team/multi:v1", registry.host()),
            &format!("oci:{}:all", out.display()),
            true,
        )
        .unwrap()
        .check("copy --all")
        .unwrap();
    assert_eq!(
        layer_digests_in_layout(&out, "all").unwrap(),
        pushed.layer_digests
    );
}

// distribution in token mode accepts the issuer's ES256 tokens (libtrust kid), via skopeo's token dance and
// via a minted token; the issuer counts the requests per scope and credential.
#[test]
fn token_registry_accepts_the_issuers_tokens() {
    let t = TestDir::new("harness-token").unwrap();
    let opts = TokenIssuerOptions {
        users: vec![("alice".into(), "s3cret".into())],
        ..Default::default()
    };
    let issuer = TokenIssuer::start(&t.sub("issuer").unwrap(), opts).unwrap();
    let registry = Registry::token(t.path(), "upstream", &issuer).unwrap();
    let image = OciImage::write_layout(&t.sub("image").unwrap(), "private", "1.0", 10_000).unwrap();

    // push needs a user: the token dance with Basic credentials at the realm
    push(
        &image,
        &registry,
        "corp/private:1.0",
        Some(("alice", "s3cret")),
    )
    .unwrap();
    assert!(
        issuer.count("repository:corp/private:pull,push", Some("alice")) >= 1,
        "total {}",
        issuer.total()
    );

    // anonymous pull gets a pull-only token
    let raw = Skopeo::new()
        .insecure()
        .inspect_raw(&format!("docker://{}/corp/private:1.0", registry.host()))
        .unwrap();
    assert_eq!(
        sha256(raw.check("anonymous inspect").unwrap().stdout.as_bytes()),
        image.top.digest
    );
    assert!(issuer.count("repository:corp/private:pull", None) >= 1);

    // without a token: 401 with a Bearer challenge naming the issuer's realm
    let http = HttpCheck::new(&TestCa::new(&t.sub("ca").unwrap()).unwrap()).unwrap();
    let path = "/v2/corp/private/manifests/1.0";
    let no_token = http
        .send(&RawRequest::plain(registry.port(), &registry.host(), path))
        .unwrap();
    assert_eq!(no_token.status, 401);
    let challenge = no_token
        .header("www-authenticate")
        .unwrap_or_default()
        .to_string();
    assert!(challenge.contains(&issuer.realm()), "{challenge}");

    // with a minted token: the manifest
    let token = issuer
        .sign("alice", &[("corp/private", &["pull"])])
        .unwrap();
    let resp = http
        .send(
            &RawRequest::plain(registry.port(), &registry.host(), path)
                .with_header("authorization", &format!("Bearer {token}"))
                .with_header("accept", "application/vnd.oci.image.manifest.v1+json"),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), image.top.digest);

    // a token for another repository is refused
    let other = issuer.sign("alice", &[("corp/other", &["pull"])]).unwrap();
    let resp = http
        .send(
            &RawRequest::plain(registry.port(), &registry.host(), path)
                .with_header("authorization", &format!("Bearer {other}")),
        )
        .unwrap();
    assert_eq!(resp.status, 401);
}

// A pull-through cache in front of an open registry serves the upstream's image.
#[test]
fn proxy_registry_pulls_through() {
    let t = TestDir::new("harness-proxy").unwrap();
    let upstream = Registry::open(t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&t.sub("image").unwrap(), "cached", "latest", 20_000).unwrap();
    let pushed = push(&image, &upstream, "library/cached:latest", None).unwrap();
    let cache = Registry::proxy(t.path(), "cache", &upstream.url(), None).unwrap();
    let layers = Skopeo::new()
        .insecure()
        .pull(
            &format!("docker://{}/library/cached:latest", cache.host()),
            &t.sub("pulled").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, pushed.layer_digests);
    assert!(
        upstream.requests("/v2/library/cached/blobs/") >= 1,
        "the cache did not fetch from upstream"
    );
}

// A TLS registry with a TestCa leaf is trusted by skopeo through a cert dir holding ca.crt (no
// tls-verify=false), so the CA plumbing the gateway scenarios rely on is sound.
#[test]
fn tls_registry_is_trusted_through_the_cert_dir() {
    let t = TestDir::new("harness-tls").unwrap();
    let ca = TestCa::new(&t.sub("ca").unwrap()).unwrap();
    let leaf = ca
        .issue("registry", &["upstream.test", "127.0.0.1"])
        .unwrap();
    let registry = Registry::start(
        t.path(),
        "upstream",
        mirrorgate_e2e::RegistryMode::Open,
        Some(&leaf),
    )
    .unwrap();
    let image = OciImage::write_layout(&t.sub("image").unwrap(), "tls", "latest", 1000).unwrap();
    push(&image, &registry, "library/tls:latest", None).unwrap();
    let certs = ca.cert_dir(&t.sub("skopeo-certs").unwrap()).unwrap();
    let raw = Skopeo::new()
        .cert_dir(&certs)
        .inspect_raw(&format!(
            "docker://upstream.test:{}/library/tls:latest",
            registry.port()
        ))
        .unwrap();
    assert_eq!(
        sha256(
            raw.check("inspect over verified TLS")
                .unwrap()
                .stdout
                .as_bytes()
        ),
        image.top.digest
    );
    // and the raw client verifies the same chain, over both ALPN protocols the registry offers
    let http = HttpCheck::new(&ca).unwrap();
    let resp = http
        .send(&RawRequest::h1(registry.port(), "upstream.test", "/v2/"))
        .unwrap();
    assert_eq!(resp.status, 200);
    // an untrusted name fails the handshake
    assert!(http
        .send(&RawRequest::h1(registry.port(), "nope.test", "/v2/"))
        .is_err());
}

// The slow-download helper reads a whole blob across its pause and reports the right size and digest, so
// the graceful-shutdown scenario measures the gateway and not the helper.
#[test]
fn download_with_pause_reads_a_whole_blob() {
    let t = TestDir::new("harness-download").unwrap();
    let registry = Registry::open(t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&t.sub("image").unwrap(), "blob", "latest", 8 << 20).unwrap();
    push(&image, &registry, "library/blob:latest", None).unwrap();
    let http = HttpCheck::new(&TestCa::new(&t.sub("ca").unwrap()).unwrap()).unwrap();
    let path = format!("/v2/library/blob/blobs/{}", image.layer_digest());
    let mut paused = false;
    let (status, n, digest) = http
        .download_with_pause(
            &RawRequest::plain(registry.port(), &registry.host(), &path),
            1 << 20,
            std::time::Duration::from_millis(200),
            || {
                paused = true;
                Ok(())
            },
        )
        .unwrap();
    assert!(paused, "the pause callback never ran");
    assert_eq!(
        (status, n, digest.as_str()),
        (200, image.layers[0].size, image.layer_digest())
    );
}
