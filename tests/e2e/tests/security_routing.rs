//! Attacks on the routing and identity paths of the request: one registry's upstream credentials handed to
//! another, a `?ns=` spelling that dodges the rules the path-prefix spelling obeys, a cross-repository blob
//! mount that reads a repository the caller may not pull, and a TLS client without SNI naming any routed host.
//! Each scenario shows the attack failing next to the legitimate request that must keep working
//! (docs: config.md "second round", design.md "Identity").

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    kv, push, route_lines, sha256, OciImage, Pushed, RawRequest, Registry, Stage, TokenIssuer,
    TokenIssuerOptions,
};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PUSHER: (&str, &str) = ("pusher", "push-secret");
const HELLO_PULL: &str = "repository:library/hello:pull";

fn push_image(s: &Stage, registry: &Registry, name: &str, reference: &str, creds: bool) -> Pushed {
    let image = OciImage::write_layout(
        &s.t.sub(&format!("image-{name}")).unwrap(),
        name,
        "latest",
        8 * 1024,
    )
    .unwrap();
    push(&image, registry, reference, creds.then_some(PUSHER)).unwrap()
}

fn manifest(s: &Stage, host: &str, path: &str, auth: Option<&str>) -> (u16, Vec<u8>, String) {
    let mut req = s.get(host, path).with_header("accept", MT_MANIFEST);
    if let Some(a) = auth {
        req = req.with_header("authorization", a);
    }
    let resp = s.send(&req);
    let text = resp.text();
    (resp.status, resp.body.to_vec(), text)
}

// Rule: a route's upstream credentials go to its `upstream` only. On a path-prefix route the other registries
// it lists get no credentials unless their own `upstreams` entry carries some; the token realm sees exactly
// which account asked.
#[test]
fn upstream_credentials_go_to_their_own_registry_only() {
    let s = Stage::new("sec-creds");
    let opts = TokenIssuerOptions {
        users: vec![
            (PUSHER.0.into(), PUSHER.1.into()),
            ("hub-bot".into(), "hub-secret".into()),
            ("ghcr-bot".into(), "ghcr-secret".into()),
        ],
        ..Default::default()
    };
    let issuer = TokenIssuer::start(&s.t.sub("issuer").unwrap(), opts).unwrap();
    let upstream = Registry::token(s.t.path(), "upstream", &issuer).unwrap();
    let hello = push_image(&s, &upstream, "hello", "library/hello:latest", true);
    let url = upstream.url();
    let _gw = s.gateway(&route_lines(
        "mirror.test",
        &[
            kv("upstream", &url),
            kv("upstream_username", "hub-bot"),
            kv("upstream_password", "hub-secret"),
            "path_prefix = true".into(),
            format!(
                "upstreams = {{ \"quay.test\" = {url:?}, \"ghcr.test\" = {{ url = {url:?}, username = \"ghcr-bot\", password = \"ghcr-secret\" }} }}"
            ),
        ],
    ));

    // control: the route's own upstream is asked with the route's account
    let (status, body, text) = manifest(
        &s,
        "mirror.test",
        "/v2/library/hello/manifests/latest",
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(sha256(&body), hello.manifest_digest);
    assert!(
        issuer.count(HELLO_PULL, Some("hub-bot")) >= 1,
        "total {}",
        issuer.total()
    );

    // the attack: a pull through another listed registry must not carry hub-bot's account to it
    let before = issuer.count(HELLO_PULL, Some("hub-bot"));
    let (status, _, text) = manifest(
        &s,
        "mirror.test",
        "/v2/quay.test/library/hello/manifests/latest",
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        issuer.count(HELLO_PULL, Some("hub-bot")),
        before,
        "the route's credentials went to quay.test's token realm"
    );
    assert!(
        issuer.count(HELLO_PULL, None) >= 1,
        "quay.test was not asked anonymously"
    );

    // an entry with its own credentials uses exactly those
    let (status, _, text) = manifest(
        &s,
        "mirror.test",
        "/v2/ghcr.test/library/hello/manifests/latest",
        None,
    );
    assert_eq!(status, 200, "{text}");
    assert!(issuer.count(HELLO_PULL, Some("ghcr-bot")) >= 1);
    assert_eq!(issuer.count(HELLO_PULL, Some("hub-bot")), before);
}

// Rule: `?ns=<registry>` and `/v2/<registry>/...` are two spellings of one request and are authorized alike, as
// `<registry>/<name>`: a tenant allowed only `mirror.test/library/*` cannot reach quay.test's library by ns.
#[test]
fn ns_requests_are_authorized_like_the_path_prefix_form() {
    let s = Stage::new("sec-ns");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let quay = Registry::open(s.t.path(), "quay").unwrap();
    push_image(&s, &upstream, "own", "library/foo:latest", false);
    let foreign = push_image(&s, &quay, "foreign", "library/foo:latest", false);
    Htpasswd::create(
        &s.t.path().join("htpasswd"),
        &[("alice", "alice-pw", 4), ("bob", "bob-pw", 4)],
    )
    .unwrap();
    let _gw = s.gateway(&format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n\
         [[tenant]]\nname = \"narrow\"\nusers = [\"alice\"]\nallow = [\"mirror.test/library/*\"]\n\n\
         [[tenant]]\nname = \"wide\"\nusers = [\"bob\"]\nallow = [\"mirror.test/quay.test/library/*\"]\n\n{}",
        route_lines(
            "mirror.test",
            &[
                kv("upstream", &upstream.url()),
                "path_prefix = true".into(),
                "ns = true".into(),
                format!("upstreams = {{ \"quay.test\" = {:?} }}", quay.url()),
            ],
        )
    ));
    let alice = basic_auth("alice", "alice-pw");
    let bob = basic_auth("bob", "bob-pw");

    // control: alice reads her own route's library
    let (status, _, text) = manifest(
        &s,
        "mirror.test",
        "/v2/library/foo/manifests/latest",
        Some(&alice),
    );
    assert_eq!(status, 200, "{text}");
    // both spellings of quay.test's library are refused to alice
    let before = quay.requests("/manifests/");
    for path in [
        "/v2/quay.test/library/foo/manifests/latest",
        "/v2/library/foo/manifests/latest?ns=quay.test",
    ] {
        let (status, _, text) = manifest(&s, "mirror.test", path, Some(&alice));
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("DENIED"), "{text}");
    }
    assert_eq!(
        quay.requests("/manifests/"),
        before,
        "quay.test was asked for alice"
    );
    // and granted to bob, whose rule names quay.test's library, in both spellings
    for path in [
        "/v2/quay.test/library/foo/manifests/latest",
        "/v2/library/foo/manifests/latest?ns=quay.test",
    ] {
        let (status, body, text) = manifest(&s, "mirror.test", path, Some(&bob));
        assert_eq!(status, 200, "{path}: {text}");
        assert_eq!(sha256(&body), foreign.manifest_digest, "{path}");
    }
}

// Rule: a cross-repository blob mount reads its `from` repository, so it needs the caller's pull right there;
// without it the mount is dropped and an ordinary upload starts (202), so the blob never appears in the
// caller's repository.
#[test]
fn blob_mount_needs_pull_on_the_source_repository() {
    let s = Stage::new("sec-mount");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let secret = push_image(&s, &upstream, "secret", "team-a/secret:latest", false);
    let blob = secret.layer_digests[0].clone();
    Htpasswd::create(
        &s.t.path().join("htpasswd"),
        &[("bob", "bob-pw", 4), ("carol", "carol-pw", 4)],
    )
    .unwrap();
    let _gw = s.gateway(&format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n\
         [[tenant]]\nname = \"b\"\nusers = [\"bob\"]\n\
         allow = [\"docker.test/team-b/*\", \"push:docker.test/team-b/*\"]\n\n\
         [[tenant]]\nname = \"ab\"\nusers = [\"carol\"]\n\
         allow = [\"docker.test/team-a/*\", \"docker.test/team-c/*\", \"push:docker.test/team-c/*\"]\n\n{}",
        route_lines("docker.test", &[kv("upstream", &upstream.url())])
    ));
    let post = |who: &str, target: &str| {
        let mut req = RawRequest::h1(
            s.ports.https,
            "docker.test",
            &format!("/v2/{target}/blobs/uploads/?mount={blob}&from=team-a/secret"),
        )
        .with_host(&s.authority("docker.test"))
        .with_header("authorization", who)
        .with_header("content-length", "0");
        req.method = http::Method::POST;
        s.send(&req)
    };
    let head_blob = |who: &str, repo: &str| {
        let mut req = s
            .get("docker.test", &format!("/v2/{repo}/blobs/{blob}"))
            .with_header("authorization", who);
        req.method = http::Method::HEAD;
        s.send(&req).status
    };
    let bob = basic_auth("bob", "bob-pw");
    let carol = basic_auth("carol", "carol-pw");

    // the attack: bob may push team-b but not read team-a
    let resp = post(&bob, "team-b/app");
    assert_eq!(
        resp.status,
        202,
        "the mount was honoured: {} {:?}",
        resp.text(),
        resp.header("location")
    );
    assert_eq!(
        head_blob(&bob, "team-b/app"),
        404,
        "team-a's blob became readable in team-b/app"
    );
    assert!(
        !upstream.log().contains("from=team-a"),
        "the mount reached the registry"
    );

    // control: carol may read team-a and push team-c, so her mount is honoured
    let resp = post(&carol, "team-c/app");
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(head_blob(&carol, "team-c/app"), 200);
}

// Rule: without SNI the certificate a client accepted vouches for no host: a TLS connection without SNI may
// not name a routed host (421), unless `[server] allow_missing_sni = true` (IP-literal access).
#[test]
fn a_missing_sni_is_a_misdirected_request_unless_allowed() {
    let s = Stage::new("sec-sni");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let routes = route_lines(
        "docker.test",
        &[kv("upstream", &upstream.url()), "anonymous = true".into()],
    );
    // rustls sends no SNI for an IP-literal server name
    let no_sni = || {
        s.get("docker.test", "/v2/")
            .with_sni("127.0.0.1")
            .insecure()
    };
    {
        let _gw = s.gateway(&routes);
        assert_eq!(s.send(&s.get("docker.test", "/v2/")).status, 200, "control");
        let resp = s.send(&no_sni());
        assert_eq!(resp.status, 421, "{}", resp.text());
        assert!(
            !resp.oci_error_codes().unwrap().is_empty(),
            "{}",
            resp.text()
        );
    }
    let _gw = s.gateway_with("allow_missing_sni = true", &routes);
    let resp = s.send(&no_sni());
    assert_eq!(resp.status, 200, "{}", resp.text());
}
