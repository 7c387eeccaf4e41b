//! The registry protocol through the gateway, with the clients that speak it in production: skopeo, containerd
//! (`hosts.toml` mirrors and `?ns=`), podman (`registries.conf` mirrors). Upstreams run Docker token auth, so
//! every pull exercises the gateway's token dance; the scenarios cover host and path-prefix routing, `?ns=`
//! validation, a backend pull-through cache that goes away, single-flight upstream tokens, blob redirects
//! (followed, passed through, refused by the SSRF guard) and server-side upstream credentials
//! (docs: protocol.md, config.md).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mirrorgate_e2e::{
    free_port, kv, layer_digests_in_layout, push, route_lines, runtime, sha256, Containerd,
    OciImage, Podman, Pushed, RawRequest, Registry, Stage, TokenIssuer, TokenIssuerOptions,
};

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The user that pushes test images to token-mode upstreams.
const PUSHER: (&str, &str) = ("pusher", "push-secret");

/// The scope of an anonymous pull of `library/hello`, as the gateway asks the upstream's realm for it.
const HELLO_PULL: &str = "repository:library/hello:pull";

/// What registry scenarios add to the shared stage: token-mode upstreams and images pushed to them.
trait RegistryStage {
    /// A token issuer (anonymous pulls allowed, [`PUSHER`] known) and a token-mode registry trusting it.
    fn token_upstream(&self) -> (TokenIssuer, Registry);
    fn token_upstream_with(&self, opts: TokenIssuerOptions) -> (TokenIssuer, Registry);
    /// Writes a single-arch image and pushes it to `registry` as `reference` with the pusher's credentials.
    fn push_image(&self, registry: &Registry, name: &str, reference: &str, bytes: usize) -> Pushed;
}

impl RegistryStage for Stage {
    fn token_upstream(&self) -> (TokenIssuer, Registry) {
        let opts = TokenIssuerOptions {
            users: vec![(PUSHER.0.into(), PUSHER.1.into())],
            ..Default::default()
        };
        self.token_upstream_with(opts)
    }

    fn token_upstream_with(&self, opts: TokenIssuerOptions) -> (TokenIssuer, Registry) {
        let issuer = TokenIssuer::start(&self.t.sub("issuer").unwrap(), opts).unwrap();
        let registry = Registry::token(self.t.path(), "upstream", &issuer).unwrap();
        (issuer, registry)
    }

    fn push_image(&self, registry: &Registry, name: &str, reference: &str, bytes: usize) -> Pushed {
        let image = OciImage::write_layout(
            &self.t.sub(&format!("image-{name}")).unwrap(),
            name,
            "latest",
            bytes,
        )
        .unwrap();
        push(&image, registry, reference, Some(PUSHER)).unwrap()
    }
}

// skopeo pulls `docker.test/hello` (Docker Hub's library rule) from a token-mode upstream with the right layers
// and manifest bytes; a multi-arch index keeps its digest and Content-Type, and copies with every platform.
#[test]
fn token_upstream_single_and_multi_arch() {
    let s = Stage::new("reg-token");
    let (issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 64 * 1024);
    let multi =
        OciImage::write_multi_arch(&s.t.sub("image-multi").unwrap(), "multi", "v1", 8 * 1024)
            .unwrap();
    let multi_pushed = push(&multi, &upstream, "library/multi:v1", Some(PUSHER)).unwrap();
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[
            kv("upstream", &upstream.url()),
            "docker_hub_library = true".into(),
        ],
    ));

    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", "hello:latest"),
            &s.t.sub("pulled-hello").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, hello.layer_digests);
    let raw = s
        .skopeo()
        .inspect_raw(&s.via("docker.test", "hello:latest"))
        .unwrap();
    assert_eq!(
        sha256(raw.check("inspect hello").unwrap().stdout.as_bytes()),
        hello.manifest_digest
    );
    assert!(
        issuer.count(HELLO_PULL, None) >= 1,
        "no anonymous token for {HELLO_PULL}: total {}",
        issuer.total()
    );
    assert!(upstream.requests("/v2/library/hello/manifests/latest") >= 1);

    // the index, raw: same bytes, same Content-Type, the digest header agrees
    let resp = s
        .http
        .send(
            &s.get("docker.test", "/v2/multi/manifests/v1")
                .with_header("accept", MT_INDEX),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some(MT_INDEX));
    assert_eq!(sha256(&resp.body), multi_pushed.manifest_digest);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(multi_pushed.manifest_digest.as_str())
    );

    // a client that accepts only image manifests still gets the index it asked for by digest
    let by_digest = format!("/v2/multi/manifests/{}", multi_pushed.manifest_digest);
    let resp = s
        .http
        .send(
            &s.get("docker.test", &by_digest)
                .with_header("accept", MT_MANIFEST),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), multi_pushed.manifest_digest);

    // copy --all: every platform's layers, and the layout's top entry is the index itself
    let out = s.t.sub("pulled-multi").unwrap();
    s.skopeo()
        .copy(
            &s.via("docker.test", "multi:v1"),
            &format!("oci:{}:all", out.display()),
            true,
        )
        .unwrap()
        .check("copy --all via gateway")
        .unwrap();
    assert_eq!(
        layer_digests_in_layout(&out, "all").unwrap(),
        multi_pushed.layer_digests
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(multi_pushed.manifest_digest.as_str())
    );
}

// A path-prefix route reaches the registry named by the first path component, only when it is listed: an
// unlisted prefix is an OCI error and nothing reaches any upstream.
#[test]
fn path_prefix_routes_only_listed_registries() {
    let s = Stage::new("reg-prefix");
    let (issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 32 * 1024);
    let _gw = s.gateway(&route_lines(
        "mirror.test",
        &[
            "path_prefix = true".into(),
            format!("upstreams = {{ \"gcr.test\" = {:?} }}", upstream.url()),
        ],
    ));

    let layers = s
        .skopeo()
        .pull(
            &s.via("mirror.test", "gcr.test/library/hello:latest"),
            &s.t.sub("pulled").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, hello.layer_digests);
    // the prefix is routing, not part of the repository: the upstream token names library/hello
    assert!(
        issuer.count(HELLO_PULL, None) >= 1,
        "total {}",
        issuer.total()
    );

    let before = upstream.requests("/v2/");
    // (path, statuses that refuse it): with a port the prefix is not a repository component either (400)
    for (path, refusals) in [
        ("/v2/evil.test/library/hello/manifests/latest", &[403, 404][..]),
        (
            "/v2/evil.test:5000/library/hello/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &[400, 403, 404][..],
        ),
    ] {
        let resp = s.http.send(&s.get("mirror.test", path)).unwrap();
        assert!(refusals.contains(&resp.status), "{path}: {} {}", resp.status, resp.text());
        assert!(resp.header("content-type").unwrap_or("").starts_with("application/json"));
        assert!(!resp.oci_error_codes().unwrap().is_empty(), "{}", resp.text());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        upstream.requests("/v2/"),
        before,
        "an unlisted prefix was proxied"
    );
}

// `?ns=` on an ns route: Docker Hub's names are the route's own upstream (library rule on), an unlisted
// registry is 403 DENIED and never proxied.
#[test]
fn ns_query_is_honoured_only_for_listed_registries() {
    let s = Stage::new("reg-ns");
    let (_issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 16 * 1024);
    let listed = format!("upstream.test:{}", upstream.port());
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[
            kv("upstream", &upstream.url()),
            "docker_hub_library = true".into(),
            "ns = true".into(),
            format!("upstreams = {{ {listed:?} = {:?} }}", upstream.url()),
        ],
    ));
    let accept = |r: RawRequest| r.with_header("accept", MT_MANIFEST);

    for ns in ["docker.io", listed.as_str()] {
        let path = match ns {
            "docker.io" => format!("/v2/hello/manifests/latest?ns={ns}"),
            _ => format!("/v2/library/hello/manifests/latest?ns={ns}"),
        };
        let resp = s.http.send(&accept(s.get("docker.test", &path))).unwrap();
        assert_eq!(resp.status, 200, "ns={ns}: {}", resp.text());
        assert_eq!(sha256(&resp.body), hello.manifest_digest, "ns={ns}");
    }

    let before = upstream.requests("/manifests/");
    let resp = s
        .http
        .send(&accept(s.get(
            "docker.test",
            "/v2/hello/manifests/latest?ns=evil.test",
        )))
        .unwrap();
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.oci_error_codes().unwrap(), vec!["DENIED".to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        upstream.requests("/manifests/"),
        before,
        "ns=evil.test was proxied"
    );

    // containerd percent-encodes the query value: `?ns=upstream.test%3A<port>` names the same listed registry
    let encoded = format!(
        "/v2/library/hello/manifests/latest?ns={}",
        listed.replace(':', "%3A")
    );
    let resp = s
        .http
        .send(&accept(s.get("docker.test", &encoded)))
        .unwrap();
    assert_eq!(resp.status, 200, "{encoded}: {}", resp.text());
    assert_eq!(sha256(&resp.body), hello.manifest_digest);
}

// containerd with a hosts.toml mirror pulls `upstream.test:<port>/library/hello` through the gateway: it sends
// `?ns=upstream.test:<port>`, the route lists that registry, and the image's own server is unreachable, so the
// pull can only succeed through the gateway.
#[test]
fn containerd_pulls_through_the_gateway_with_ns() {
    let s = Stage::new("reg-ctrd");
    let (_issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 32 * 1024);
    let registry = format!("upstream.test:{}", upstream.port());
    let gw = s.gateway(&route_lines(
        "docker.test",
        &[
            "ns = true".into(),
            format!("upstreams = {{ {registry:?} = {:?} }}", upstream.url()),
        ],
    ));
    let hosts_dir = s.t.sub("certs.d").unwrap();
    s.ca.containerd_hosts_toml(
        &hosts_dir,
        &registry,
        &format!("http://127.0.0.1:{}", free_port()),
        &[&format!("https://docker.test:{}", s.ports.https)],
    )
    .unwrap();
    let containerd = Containerd::start(s.t.path()).unwrap();
    let before = upstream.requests("/v2/library/hello/manifests/");

    let image = format!("{registry}/library/hello:latest");
    let out = containerd.pull(&hosts_dir, &image).unwrap();
    assert!(
        out.ok(),
        "ctr pull failed: {}{}\ngateway log:\n{}",
        out.stdout,
        out.stderr,
        gw.log()
    );
    assert_eq!(
        containerd.image_digest(&image).unwrap(),
        hello.manifest_digest
    );
    assert!(
        gw.access_count("/v2/library/hello/manifests/", 200) >= 1,
        "the gateway did not serve the manifest:\n{}",
        gw.log()
    );
    assert!(
        gw.access_count(
            &format!("/v2/library/hello/blobs/{}", hello.layer_digests[0]),
            200
        ) >= 1
    );
    assert!(upstream.requests("/v2/library/hello/manifests/") > before);
}

// podman with a registries.conf mirror pulls `upstream.test:<port>/library/hello` through the gateway (the
// registry's own location is unreachable, so the mirror must have served it).
#[test]
fn podman_pulls_through_a_registries_conf_mirror() {
    let s = Stage::new("reg-podman");
    let (_issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 32 * 1024);
    let gw = s.gateway(&route_lines(
        "docker.test",
        &[kv("upstream", &upstream.url())],
    ));
    let registry = format!("upstream.test:{}", upstream.port());
    let podman = Podman::new(
        s.t.path(),
        &registry,
        &format!("127.0.0.1:{}", free_port()),
        &[&format!("docker.test:{}", s.ports.https)],
    )
    .unwrap()
    .cert_dir(&s.certs);

    let image = format!("{registry}/library/hello:latest");
    let out = podman.pull(&image).unwrap();
    assert!(
        out.ok(),
        "podman pull failed: {}{}\ngateway log:\n{}",
        out.stdout,
        out.stderr,
        gw.log()
    );
    assert_eq!(podman.image_digest(&image).unwrap(), hello.manifest_digest);
    assert!(
        gw.access_count("/v2/library/hello/manifests/latest", 200) >= 1,
        "the gateway did not serve the manifest:\n{}",
        gw.log()
    );
    assert!(upstream.requests("/v2/library/hello/manifests/latest") >= 1);
}

// A backend pull-through cache (distribution proxy mode) is tried before the token upstream; when it dies
// mid-test, pulls keep working from the upstream.
#[test]
fn backend_cache_first_then_upstream_when_it_dies() {
    let s = Stage::new("reg-cache");
    let (_issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 64 * 1024);
    let mut cache = Registry::proxy(s.t.path(), "cache", &upstream.url(), None).unwrap();
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[
            kv("upstream", &upstream.url()),
            format!("endpoints = [{:?}]", cache.url()),
            "docker_hub_library = true".into(),
        ],
    ));

    let first = s
        .skopeo()
        .pull(
            &s.via("docker.test", "hello:latest"),
            &s.t.sub("pull-1").unwrap(),
        )
        .unwrap();
    assert_eq!(first, hello.layer_digests);
    assert!(
        cache.requests("/v2/library/hello/manifests/latest") >= 1,
        "the cache was not used"
    );
    assert!(
        cache.requests(&format!(
            "/v2/library/hello/blobs/{}",
            hello.layer_digests[0]
        )) >= 1,
        "the blob did not come from the cache"
    );

    cache.stop();
    let before = upstream.requests("/v2/library/hello/manifests/latest");
    for i in 2..4 {
        let again = s
            .skopeo()
            .pull(
                &s.via("docker.test", "hello:latest"),
                &s.t.sub(&format!("pull-{i}")).unwrap(),
            )
            .unwrap();
        assert_eq!(again, hello.layer_digests, "pull {i} after the cache died");
    }
    assert!(
        upstream.requests("/v2/library/hello/manifests/latest") > before,
        "the upstream did not take over"
    );
}

// 50 concurrent manifest GETs through a cold gateway fetch exactly one upstream token for the scope: the
// token cache is single-flight (the issuer answers slowly so the fetches overlap).
#[test]
fn upstream_token_is_fetched_once_for_concurrent_pulls() {
    let s = Stage::new("reg-single");
    let (issuer, upstream) = s.token_upstream();
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 4 * 1024);
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[kv("upstream", &upstream.url())],
    ));
    issuer.set_delay(Duration::from_millis(500));
    assert_eq!(issuer.count(HELLO_PULL, None), 0);

    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    let resp = s
                        .http
                        .send(
                            &s.get("docker.test", "/v2/library/hello/manifests/latest")
                                .with_header("accept", MT_MANIFEST),
                        )
                        .unwrap();
                    (resp.status, sha256(&resp.body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), 50);
    for (status, digest) in &statuses {
        assert_eq!(
            (*status, digest.as_str()),
            (200, hello.manifest_digest.as_str())
        );
    }
    assert_eq!(
        issuer.count(HELLO_PULL, None),
        1,
        "token requests for {HELLO_PULL}: expected 1 (single-flight), total {}",
        issuer.total()
    );
}

// Blob redirects from an upstream to a loopback "CDN": followed (bytes, no credentials at the CDN) when the
// route allows private targets, passed to the client as a 307 with the CDN's Location, and refused with 502 by
// the SSRF guard when following without the danger flag.
#[test]
fn blob_redirects_follow_pass_through_and_ssrf_guard() {
    let s = Stage::new("reg-redirect");
    let (_issuer, upstream) = s.token_upstream();
    let image =
        OciImage::write_layout(&s.t.sub("image-blob").unwrap(), "blob", "latest", 64 * 1024)
            .unwrap();
    push(&image, &upstream, "library/blob:latest", Some(PUSHER)).unwrap();
    let cdn = Stub::start(StubMode::Files(image.layout.clone()));
    let cdn_base = format!("http://cdn.test:{}", cdn.port);
    let front = Stub::start(StubMode::Forward {
        backend: upstream.port(),
        redirect_blobs: Some(cdn_base.clone()),
    });
    let front_url = format!("http://127.0.0.1:{}", front.port);
    let _gw = s.gateway(&format!(
        "{}{}{}",
        route_lines(
            "docker.test",
            &[
                kv("upstream", &front_url),
                kv("blob_redirects", "follow"),
                "danger_allow_private_redirects = true".into()
            ],
        ),
        route_lines(
            "gcr.test",
            &[
                kv("upstream", &front_url),
                kv("blob_redirects", "pass-through")
            ]
        ),
        route_lines(
            "quay.test",
            &[kv("upstream", &front_url), kv("blob_redirects", "follow")]
        ),
    ));
    let digest = image.layer_digest().to_string();
    let blob = format!("/v2/library/blob/blobs/{digest}");
    let client_secret = "Bearer client-secret-e2e";

    // follow: 200 with the bytes; the CDN saw one request and no credentials
    let resp = s
        .http
        .send(
            &s.get("docker.test", &blob)
                .with_header("authorization", client_secret),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), digest);
    let cdn_seen = cdn.seen();
    assert_eq!(cdn_seen.len(), 1, "{cdn_seen:?}");
    assert_eq!(
        cdn_seen[0].authorization, None,
        "credentials reached the CDN"
    );
    assert!(
        front.seen().iter().any(|r| r.uri.contains("/blobs/")
            && r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer ey"))),
        "the upstream never got the blob request with its own token: {:?}",
        front.seen()
    );

    // pass-through: the client gets the 307 and the CDN's Location; the CDN is not contacted by the gateway
    let resp = s.http.send(&s.get("gcr.test", &blob)).unwrap();
    assert_eq!(resp.status, 307, "{}", resp.text());
    assert_eq!(
        resp.header("location"),
        Some(format!("{cdn_base}/blobs/{digest}?sig=e2e").as_str())
    );
    assert_eq!(cdn.seen().len(), 1);

    // follow without the danger flag: the loopback CDN is refused (SSRF guard), nothing fetched
    let resp = s.http.send(&s.get("quay.test", &blob)).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(
        !resp.oci_error_codes().unwrap().is_empty(),
        "{}",
        resp.text()
    );
    assert_eq!(
        cdn.seen().len(),
        1,
        "the gateway fetched a loopback redirect target"
    );

    // the client's own credentials never reached the upstream on any route
    assert!(
        front
            .seen()
            .iter()
            .all(|r| r.authorization.as_deref() != Some(client_secret)),
        "{:?}",
        front.seen()
    );
}

// Server-side upstream credentials: the upstream refuses anonymous tokens, the route's username/password are
// sent to the token realm, and a client's own Authorization never reaches the upstream or its realm.
#[test]
fn upstream_credentials_are_server_side() {
    let s = Stage::new("reg-creds");
    let opts = TokenIssuerOptions {
        users: vec![
            (PUSHER.0.into(), PUSHER.1.into()),
            ("mirror-bot".into(), "bot-secret".into()),
            ("client".into(), "client-secret".into()),
        ],
        anonymous_pull: false,
        ..Default::default()
    };
    let (issuer, upstream) = s.token_upstream_with(opts);
    let hello = s.push_image(&upstream, "hello", "library/hello:latest", 16 * 1024);
    let front = Stub::start(StubMode::Forward {
        backend: upstream.port(),
        redirect_blobs: None,
    });
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[
            kv("upstream", &format!("http://127.0.0.1:{}", front.port)),
            kv("upstream_username", "mirror-bot"),
            kv("upstream_password", "bot-secret"),
        ],
    ));

    // a client sending its own (valid upstream!) credentials: they must not be used or forwarded
    let client_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("client:client-secret")
    );
    let resp = s
        .http
        .send(
            &s.get("docker.test", "/v2/library/hello/manifests/latest")
                .with_header("accept", MT_MANIFEST)
                .with_header("authorization", &client_basic),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), hello.manifest_digest);

    // and an anonymous skopeo pull works too, on the gateway's credentials
    let layers = s
        .skopeo()
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("pulled").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, hello.layer_digests);

    assert!(
        issuer.count(HELLO_PULL, Some("mirror-bot")) >= 1,
        "total {}",
        issuer.total()
    );
    assert_eq!(
        issuer.count(HELLO_PULL, Some("client")),
        0,
        "the client's credentials reached the realm"
    );
    assert_eq!(
        issuer.count(HELLO_PULL, None),
        0,
        "an anonymous token was asked for"
    );
    let seen = front.seen();
    assert!(!seen.is_empty());
    for r in &seen {
        assert!(
            r.authorization
                .as_deref()
                .is_none_or(|a| a.starts_with("Bearer ")),
            "the upstream got a non-token Authorization on {}: {:?}",
            r.uri,
            r.authorization
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Stub HTTP servers for the redirect and credential scenarios: a recording front in front of the real
// registry (optionally answering authenticated blob GETs with a 307 to a CDN), and a CDN serving blob files.

/// One request a stub received.
#[derive(Clone, Debug)]
struct SeenRequest {
    uri: String,
    authorization: Option<String>,
}

enum StubMode {
    /// Forwards everything to `127.0.0.1:<backend>`; with `redirect_blobs`, a blob GET that carries a Bearer
    /// token is answered `307 <redirect_blobs>/blobs/<digest>?sig=e2e` instead (an S3-backed registry).
    Forward {
        backend: u16,
        redirect_blobs: Option<String>,
    },
    /// Serves `GET /blobs/<digest>` from an OCI layout's `blobs/sha256/`.
    Files(PathBuf),
}

struct Stub {
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

type StubBody = BoxBody<Bytes, hyper::Error>;

impl Stub {
    fn start(mode: StubMode) -> Self {
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(mode);
        let (s, m) = (seen.clone(), mode.clone());
        let task = runtime().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, m) = (s.clone(), m.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        stub_handle(m.clone(), s.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, seen, task }
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stub_response(status: u16, body: Bytes) -> http::Response<StubBody> {
    let mut resp = http::Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp
}

async fn stub_handle(
    mode: Arc<StubMode>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    req: http::Request<Incoming>,
) -> Result<http::Response<StubBody>, Infallible> {
    let uri = req.uri().to_string();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push(SeenRequest {
        uri: uri.clone(),
        authorization: authorization.clone(),
    });
    match &*mode {
        StubMode::Files(layout) => {
            let hex = req
                .uri()
                .path()
                .strip_prefix("/blobs/sha256:")
                .unwrap_or("");
            let ok_name = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
            match ok_name.then(|| std::fs::read(layout.join("blobs/sha256").join(hex))) {
                Some(Ok(bytes)) => Ok(stub_response(200, Bytes::from(bytes))),
                _ => Ok(stub_response(404, Bytes::from_static(b"no such blob"))),
            }
        }
        StubMode::Forward {
            backend,
            redirect_blobs,
        } => {
            let path = req.uri().path().to_string();
            if let (Some(base), Some((_, digest))) = (redirect_blobs, path.split_once("/blobs/")) {
                let authed = authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("Bearer "));
                if req.method() == http::Method::GET && authed && digest.starts_with("sha256:") {
                    let mut resp = stub_response(307, Bytes::new());
                    resp.headers_mut().insert(
                        http::header::LOCATION,
                        http::HeaderValue::from_str(&format!("{base}/blobs/{digest}?sig=e2e"))
                            .unwrap(),
                    );
                    return Ok(resp);
                }
            }
            Ok(forward(*backend, req)
                .await
                .unwrap_or_else(|e| stub_response(502, Bytes::from(format!("stub forward: {e}")))))
        }
    }
}

async fn forward(
    backend: u16,
    req: http::Request<Incoming>,
) -> anyhow::Result<http::Response<StubBody>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}

/// Pins push through a token-mode upstream: the gateway learns the challenge before sending a body it can send
/// only once, pushes with its server-side credentials, and the upload `Location`s point back at the gateway.
#[test]
fn push_through_a_token_upstream_with_server_side_credentials() {
    let s = Stage::new("reg-push");
    let (issuer, upstream) = s.token_upstream();
    let _gw = s.gateway(&route_lines(
        "docker.test",
        &[
            kv("upstream", &upstream.url()),
            kv("upstream_username", PUSHER.0),
            kv("upstream_password", PUSHER.1),
        ],
    ));
    let image = OciImage::write_layout(
        &s.t.sub("image-push").unwrap(),
        "pushed",
        "latest",
        256 * 1024,
    )
    .unwrap();
    let out = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-no-creds",
            "--dest-cert-dir",
        ])
        .arg(&s.certs)
        .arg(image.oci_ref())
        .arg(s.via("docker.test", "library/pushed:v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        issuer.count("repository:library/pushed:pull,push", Some(PUSHER.0)) >= 1,
        "no push token was fetched with the gateway's credentials (total {})",
        issuer.total()
    );
    // What was pushed is there, byte for byte.
    let resp = s
        .http
        .send(
            &s.get("docker.test", "/v2/library/pushed/manifests/v1")
                .with_header("accept", MT_MANIFEST),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), image.manifests[0].digest);
}
