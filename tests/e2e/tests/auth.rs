//! Client authentication at the gateway: htpasswd users (real `htpasswd -B` lines) with Basic, the built-in
//! token server (GET with Basic, POST form as containerd does), forged or misused JWTs, tenant `allow` rules,
//! CIDR tenants, htpasswd reloads while running, and distribution accepting the gateway's tokens. Every
//! scenario runs real processes on loopback, configured only through the TOML contract (docs: config.md,
//! protocol.md "Token auth").

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    push, runtime, Gateway, OciImage, Pushed, RawRequest, RawResponse, Registry, RegistryMode,
    TestCa,
};
use serde_json::json;

const ALICE: (&str, &str) = ("alice", "pw-alice");
/// bob's line uses bcrypt cost 10 (the common default), alice's cost 5.
const BOB: (&str, &str) = ("bob", "pw-bob");
const CAROL: (&str, &str) = ("carol", "pw-carol");
const HELLO_MANIFEST: &str = "/v2/library/hello/manifests/latest";
const OCI_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// The `[auth]` part every scenario here shares: htpasswd, the token server, and tenant team-a (alice, bob,
/// carol) allowed to pull `docker.test/library/*`.
const AUTH_TOML: &str = r#"
[auth]
htpasswd = "htpasswd"

[auth.token]
key = "token-key.pem"
issuer = "mirrorgate"
service = "mirrorgate"
ttl = "5m"

[[tenant]]
name = "team-a"
users = ["alice", "bob", "carol"]
allow = ["docker.test/library/*"]
"#;

/// The shared stage plus an upstream holding `library/hello:latest` and `other/thing:latest`, and the
/// htpasswd file.
struct Stage {
    base: mirrorgate_e2e::Stage,
    upstream: Registry,
    hello: Pushed,
    users: Htpasswd,
}

impl std::ops::Deref for Stage {
    type Target = mirrorgate_e2e::Stage;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Stage {
    fn new(name: &str) -> Self {
        let base = mirrorgate_e2e::Stage::new(name);
        let t = &base.t;
        let upstream = Registry::open(t.path(), "upstream").unwrap();
        let image =
            OciImage::write_layout(&t.sub("hello").unwrap(), "hello", "latest", 64 * 1024).unwrap();
        let hello = push(&image, &upstream, "library/hello:latest", None).unwrap();
        let other =
            OciImage::write_layout(&t.sub("other").unwrap(), "thing", "latest", 16 * 1024).unwrap();
        push(&other, &upstream, "other/thing:latest", None).unwrap();
        let users = Htpasswd::create(
            &t.path().join("htpasswd"),
            &[
                (ALICE.0, ALICE.1, 5),
                (BOB.0, BOB.1, 10),
                (CAROL.0, CAROL.1, 5),
            ],
        )
        .unwrap();
        Self {
            base,
            upstream,
            hello,
            users,
        }
    }

    /// The shared config with `auth` and one private route docker.test → the upstream.
    fn config(&self, auth: &str) -> String {
        self.base.config(&format!(
            "{auth}\n[[route]]\nhost = \"docker.test\"\nupstream = {:?}\nanonymous = false\n",
            self.upstream.url()
        ))
    }

    fn gateway(&self, auth: &str) -> Gateway {
        Gateway::start(self.t.path(), &self.config(auth)).unwrap()
    }

    /// `docker://docker.test:<https>/<repo>`.
    fn image(&self, repo: &str) -> String {
        self.via("docker.test", repo)
    }

    /// A GET on docker.test with an optional `Authorization`.
    fn get(&self, path: &str, authorization: Option<&str>) -> RawResponse {
        let mut req = self
            .base
            .get("docker.test", path)
            .with_header("accept", OCI_ACCEPT);
        if let Some(a) = authorization {
            req = req.with_header("authorization", a);
        }
        self.send(&req)
    }

    /// `GET /token?service=mirrorgate&scope=…` with Basic `user:password`; the token on a 200.
    fn token(&self, user: &str, password: &str, scope: &str) -> String {
        let resp = self.get(
            &format!("/token?service=mirrorgate&scope={scope}"),
            Some(&basic_auth(user, password)),
        );
        assert_eq!(resp.status, 200, "token request: {}", resp.text());
        resp.json().unwrap()["token"].as_str().unwrap().to_string()
    }
}

/// Asserts a 401 with an OCI UNAUTHORIZED body and a `WWW-Authenticate` challenge; returns the challenge.
fn assert_unauthorized(what: &str, resp: &RawResponse) -> String {
    assert_eq!(resp.status, 401, "{what}: {} {}", resp.status, resp.text());
    let codes = resp.oci_error_codes().unwrap();
    assert!(
        codes.iter().any(|c| c == "UNAUTHORIZED"),
        "{what}: codes {codes:?}"
    );
    resp.header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate: {:?}", resp.headers))
        .to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims shaped like the gateway's own (docs: protocol.md "Token auth" 5).
fn claims(exp_from_now: i64, repo: &str, actions: &[&str]) -> serde_json::Value {
    let now = unix_now() as i64;
    json!({
        "iss": "mirrorgate", "sub": "alice", "aud": "mirrorgate",
        "exp": now + exp_from_now, "nbf": now - 3600, "iat": now - 3600, "jti": format!("e2e-{now}"),
        "access": [{"type": "repository", "name": repo, "actions": actions}],
    })
}

/// Signs `claims` ES256 with a PKCS#8 PEM key, naming `kid` in the header.
fn sign_es256(key_pem: &[u8], kid: Option<String>, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = kid;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// POSTs an urlencoded form over TLS (ALPN http/1.1) and returns status and body: the token endpoint's POST
/// is what containerd tries first.
fn post_form(ca: &TestCa, port: u16, host: &str, path: &str, form: &str) -> (u16, String) {
    let mut cfg = ca.client_config().unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (host, path, form) = (host.to_string(), path.to_string(), form.to_string());
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from(host.clone()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

// Basic with htpasswd users pulls through a private route; a wrong password, an unknown user, no credentials
// and a Basic value that is not base64 all get 401 UNAUTHORIZED with a Bearer challenge naming our realm.
#[test]
fn basic_auth_pulls_and_bad_credentials_get_401() {
    let s = Stage::new("auth-basic");
    let _gw = s.gateway(AUTH_TOML);

    for (user, password) in [ALICE, BOB] {
        let layers = s
            .skopeo()
            .creds(user, password)
            .pull(
                &s.image("library/hello:latest"),
                &s.t.sub(&format!("pull-{user}")).unwrap(),
            )
            .unwrap();
        assert_eq!(layers, s.hello.layer_digests, "{user}'s pull");
    }

    let realm = format!("realm=\"https://docker.test:{}/token\"", s.ports.https);
    let cases = [
        ("wrong password", Some(basic_auth(ALICE.0, "nope"))),
        ("unknown user", Some(basic_auth("mallory", "pw"))),
        ("no credentials", None),
        (
            "malformed base64",
            Some("Basic %%%not-base64%%%".to_string()),
        ),
    ];
    for (what, authorization) in cases {
        let resp = s.get(HELLO_MANIFEST, authorization.as_deref());
        let challenge = assert_unauthorized(what, &resp);
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains(&realm),
            "{what}: challenge {challenge}"
        );
        assert!(
            challenge.contains("service=\"mirrorgate\"")
                && challenge.contains("scope=\"repository:library/hello:pull\""),
            "{what}: challenge {challenge}"
        );
    }

    let out = s
        .skopeo()
        .creds(ALICE.0, "nope")
        .copy(
            &s.image("library/hello:latest"),
            &format!("oci:{}:x", s.t.sub("bad").unwrap().display()),
            false,
        )
        .unwrap();
    assert!(!out.ok(), "a wrong password pulled");
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("401") || err.contains("unauthorized"),
        "skopeo said: {}",
        out.stderr
    );
}

// The token server answers GET with Basic and POST with a password form (containerd's way); both tokens are
// accepted as Bearer on a manifest GET.
#[test]
fn token_server_get_and_post() {
    let s = Stage::new("auth-token");
    let _gw = s.gateway(AUTH_TOML);

    let resp = s.get(
        "/token?service=mirrorgate&scope=repository:library/hello:pull",
        Some(&basic_auth(ALICE.0, ALICE.1)),
    );
    assert_eq!(resp.status, 200, "GET /token: {}", resp.text());
    let v = resp.json().unwrap();
    let token = v["token"].as_str().expect("token").to_string();
    assert_eq!(v["access_token"].as_str(), Some(token.as_str()), "{v}");
    assert!(v["expires_in"].as_u64().is_some_and(|e| e > 0), "{v}");
    let issued = v["issued_at"].as_str().expect("issued_at");
    time::OffsetDateTime::parse(issued, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("issued_at {issued} is not RFC 3339: {e}"));

    let resp = s.get(HELLO_MANIFEST, Some(&bearer(&token)));
    assert_eq!(resp.status, 200, "GET token as Bearer: {}", resp.text());

    let form = format!(
        "grant_type=password&username={}&password={}&service=mirrorgate&scope=repository%3Alibrary%2Fhello%3Apull\
         &client_id=e2e",
        ALICE.0, ALICE.1
    );
    let (status, body) = post_form(&s.ca, s.ports.https, "docker.test", "/token", &form);
    assert_eq!(status, 200, "POST /token: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let posted = v["access_token"].as_str().expect("access_token");
    let resp = s.get(HELLO_MANIFEST, Some(&bearer(posted)));
    assert_eq!(resp.status, 200, "POST token as Bearer: {}", resp.text());

    let (status, body) = post_form(
        &s.ca,
        s.ports.https,
        "docker.test",
        "/token",
        &form.replace(ALICE.1, "wrong"),
    );
    assert_eq!(status, 401, "POST /token with a wrong password: {body}");
}

// Forged and misused JWTs are refused with 401: `alg: none`, a token signed by another P-256 key under our key
// id, an expired one signed with our own key, a pull token for repository A used on B, and a pull-only token
// used to start an upload (which must never reach the upstream).
#[test]
fn forged_and_misused_tokens_get_401() {
    let s = Stage::new("auth-jwt");
    let _gw = s.gateway(AUTH_TOML);
    let good = s.token(ALICE.0, ALICE.1, "repository:library/hello:pull");
    let kid = jsonwebtoken::decode_header(&good).unwrap().kid;
    assert!(kid.is_some(), "the gateway's tokens carry a kid");
    // sanity: the real token works, so the refusals below are about the token
    assert_eq!(s.get(HELLO_MANIFEST, Some(&bearer(&good))).status, 200);

    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(300, "library/hello", &["pull"])
            .to_string()
            .as_bytes())
    );
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let wrong_key = sign_es256(
        other_key.as_bytes(),
        kid.clone(),
        &claims(300, "library/hello", &["pull"]),
    );
    let our_key = std::fs::read(s.t.path().join("token-key.pem")).unwrap();
    let expired = sign_es256(
        &our_key,
        kid.clone(),
        &claims(-600, "library/hello", &["pull"]),
    );
    // the same key with a valid expiry is accepted: the expired refusal is about `exp` alone
    let fresh = sign_es256(&our_key, kid, &claims(300, "library/hello", &["pull"]));
    assert_eq!(
        s.get(HELLO_MANIFEST, Some(&bearer(&fresh))).status,
        200,
        "a well-formed token signed with token-key.pem was refused"
    );

    for (what, token, path) in [
        ("alg none", alg_none.as_str(), HELLO_MANIFEST),
        ("wrong key", wrong_key.as_str(), HELLO_MANIFEST),
        ("expired", expired.as_str(), HELLO_MANIFEST),
        (
            "repo A token on repo B",
            good.as_str(),
            "/v2/library/other/manifests/latest",
        ),
    ] {
        assert_unauthorized(what, &s.get(path, Some(&bearer(token))));
    }

    let uploads_before = s.upstream.requests("/blobs/uploads");
    let mut post = RawRequest::h1(
        s.ports.https,
        "docker.test",
        "/v2/library/hello/blobs/uploads/",
    )
    .with_header("authorization", &bearer(&good));
    post.method = http::Method::POST;
    post.host = format!("docker.test:{}", s.ports.https);
    let resp = s.http.send(&post).unwrap();
    let challenge = assert_unauthorized("push with a pull-only token", &resp);
    assert!(challenge.contains("push"), "challenge {challenge}");
    assert_eq!(
        s.upstream.requests("/blobs/uploads"),
        uploads_before,
        "an upload with a pull-only token reached the upstream"
    );
}

// Tenant rules: alice (team-a, `docker.test/library/*`) pulls library/hello and gets 403 DENIED on
// other/thing, by Basic and by skopeo; the token server grants nothing for other/thing.
#[test]
fn tenant_allow_rules() {
    let s = Stage::new("auth-tenant");
    let _gw = s.gateway(AUTH_TOML);
    let alice = basic_auth(ALICE.0, ALICE.1);

    let resp = s.get(HELLO_MANIFEST, Some(&alice));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let before = s.upstream.requests("/v2/other/thing");
    let resp = s.get("/v2/other/thing/manifests/latest", Some(&alice));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.oci_error_codes().unwrap(), vec!["DENIED".to_string()]);
    assert_eq!(
        s.upstream.requests("/v2/other/thing"),
        before,
        "a denied request reached the upstream"
    );

    let skopeo = s.skopeo().creds(ALICE.0, ALICE.1);
    skopeo
        .pull(&s.image("library/hello:latest"), &s.t.sub("ok").unwrap())
        .unwrap();
    let out = skopeo
        .copy(
            &s.image("other/thing:latest"),
            &format!("oci:{}:x", s.t.sub("denied").unwrap().display()),
            false,
        )
        .unwrap();
    assert!(!out.ok(), "alice pulled other/thing");
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("denied") || err.contains("403") || err.contains("unauthorized"),
        "skopeo said: {}",
        out.stderr
    );

    // the token grants the intersection: nothing for other/thing
    let token = s.token(ALICE.0, ALICE.1, "repository:other/thing:pull");
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let granted = claims["access"].as_array().cloned().unwrap_or_default();
    assert!(
        granted
            .iter()
            .all(|a| a["actions"].as_array().is_none_or(|acts| acts.is_empty())),
        "other/thing granted: {claims}"
    );
}

// A tenant identified by `cidrs = ["127.0.0.0/8"]` pulls from a private route without any credentials.
#[test]
fn cidr_tenant_pulls_without_credentials() {
    let s = Stage::new("auth-cidr");
    let auth = r#"
[auth]
htpasswd = "htpasswd"

[auth.token]
key = "token-key.pem"

[[tenant]]
name = "office"
cidrs = ["127.0.0.0/8"]
allow = ["docker.test/library/*"]
"#;
    let _gw = s.gateway(auth);
    let layers = s
        .skopeo()
        .pull(
            &s.image("library/hello:latest"),
            &s.t.sub("pulled").unwrap(),
        )
        .unwrap();
    assert_eq!(layers, s.hello.layer_digests);
    // still bound by the tenant's rules, and told to log in (401 with our challenge), not refused for good
    let c = assert_unauthorized(
        "other/thing from the network",
        &s.get("/v2/other/thing/manifests/latest", None),
    );
    assert!(c.starts_with("Bearer realm="), "{c}");
    // `/v2/` challenges the network client on this private route, so Docker would present its login
    assert_unauthorized("ping from the network", &s.get("/v2/", None));
}

/// Polls `check` every `every` until it holds or `deadline` passes; returns how long it took.
fn wait_until(
    deadline: Duration,
    every: Duration,
    mut check: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

// The htpasswd file is watched: a user removed while the gateway runs gets 401 within ~5 s, and once added
// back with a new password is let in with it within ~5 s while the old one stays refused. (Users named in a
// tenant must exist when the gateway starts, so the scenario starts with carol present.) Polls are 1.5 s
// apart to stay under the failed-login lockout.
#[test]
fn htpasswd_reload_removes_and_adds_users() {
    let mut s = Stage::new("auth-reload");
    let _gw = s.gateway(AUTH_TOML);
    let old = basic_auth(CAROL.0, CAROL.1);
    let new = basic_auth(CAROL.0, "pw-carol-2");
    assert_eq!(
        s.get(HELLO_MANIFEST, Some(&old)).status,
        200,
        "carol at start"
    );

    s.users.remove(CAROL.0).unwrap();
    let took = wait_until(Duration::from_secs(8), Duration::from_millis(1500), || {
        s.get(HELLO_MANIFEST, Some(&old)).status == 401
    });
    let took =
        took.unwrap_or_else(|| panic!("carol still got in 8 s after being removed from htpasswd"));
    eprintln!("carol was refused {took:?} after being removed");
    assert!(took <= Duration::from_secs(6), "removal took {took:?}");

    s.users.add(CAROL.0, "pw-carol-2", 10).unwrap();
    let took = wait_until(Duration::from_secs(8), Duration::from_millis(1500), || {
        s.get(HELLO_MANIFEST, Some(&new)).status == 200
    });
    let took =
        took.unwrap_or_else(|| panic!("carol was not let in within 8 s of being added back"));
    eprintln!("carol got in {took:?} after being added back");
    assert!(took <= Duration::from_secs(6), "reload took {took:?}");
    assert_unauthorized(
        "carol's old password after the change",
        &s.get(HELLO_MANIFEST, Some(&old)),
    );
    // alice was never touched
    assert_eq!(
        s.get(HELLO_MANIFEST, Some(&basic_auth(ALICE.0, ALICE.1)))
            .status,
        200
    );
}

// distribution in token mode, trusting the gateway's `token-key.crt` with the gateway's issuer and service,
// accepts a token fetched from the gateway's /token (200 or 404-unknown means accepted; 401 does not), and
// still refuses no token and a token signed by another key.
#[test]
fn distribution_accepts_gateway_tokens() {
    let s = Stage::new("auth-interop");
    let _gw = s.gateway(AUTH_TOML);
    let crt = s.t.path().join("token-key.crt");
    assert!(crt.exists(), "the gateway did not write token-key.crt");
    let registry = Registry::start(
        s.t.path(),
        "token-registry",
        RegistryMode::Token {
            bundle: crt,
            realm: format!("https://docker.test:{}/token", s.ports.https),
            service: "mirrorgate".into(),
            issuer: "mirrorgate".into(),
        },
        None,
    )
    .unwrap();
    let get = |authorization: Option<&str>| {
        let mut req = RawRequest::plain(registry.port(), &registry.host(), HELLO_MANIFEST)
            .with_header("accept", OCI_ACCEPT);
        if let Some(a) = authorization {
            req = req.with_header("authorization", a);
        }
        s.http.send(&req).unwrap()
    };

    let resp = get(None);
    assert_eq!(
        resp.status,
        401,
        "the registry is not in token mode: {}",
        resp.text()
    );

    let token = s.token(ALICE.0, ALICE.1, "repository:library/hello:pull");
    let resp = get(Some(&bearer(&token)));
    assert!(
        resp.status == 200
            || (resp.status == 404
                && resp
                    .oci_error_codes()
                    .unwrap()
                    .iter()
                    .any(|c| c == "MANIFEST_UNKNOWN" || c == "NAME_UNKNOWN")),
        "distribution refused the gateway's token: {} {}\nregistry log tail:\n{}",
        resp.status,
        resp.text(),
        registry
            .log()
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .join("\n")
    );

    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid;
    let forged = sign_es256(
        other_key.as_bytes(),
        kid,
        &claims(300, "library/hello", &["pull"]),
    );
    assert_eq!(
        get(Some(&bearer(&forged))).status,
        401,
        "a forged token was accepted"
    );
}
