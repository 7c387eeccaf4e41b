//! Authorization holes an attacker would probe, against a live gateway in front of a real registry: listing
//! the whole upstream through `/v2/_catalog` (as a user whose tenant has no rule for the route, with a Bearer
//! token that grants nothing, and through a path-prefix route that would list with the route's upstream
//! access), reading tags and referrers of a repository the tenant may not read, locking a named user out from
//! everywhere with wrong passwords from one address, and deleting with push rights. Each scenario shows the
//! attack refused next to a control that the same request shape still works where it should (docs:
//! README "Authentication and tenants", config.md `[[tenant]] allow`).

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    kv, metric, push, route_lines, OciImage, Pushed, RawResponse, Registry, Stage,
};

const OCI_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// htpasswd users: alice reads `library/*`, eve's tenant has rules for another route only, pat may push
/// `team/*`, dan may push and delete `team/*`.
const USERS: &[(&str, &str, u32)] = &[
    ("alice", "pw-alice", 5),
    ("eve", "pw-eve", 5),
    ("pat", "pw-pat", 5),
    ("dan", "pw-dan", 5),
];

const TENANTS: &str = r#"
[[tenant]]
name = "readers"
users = ["alice"]
allow = ["docker.test/library/*", "mirror.test/quay.test/library/*"]

[[tenant]]
name = "elsewhere"
users = ["eve"]
allow = ["gcr.test/*"]

[[tenant]]
name = "pushers"
users = ["pat"]
allow = ["push:docker.test/team/*"]

[[tenant]]
name = "cleaners"
users = ["dan"]
allow = ["push:docker.test/team/*", "delete:docker.test/team/*"]
"#;

/// The shared stage, an upstream holding `library/hello`, `secret/thing` and `team/app`, the users, and a
/// gateway with the token server, the tenants above, a private route `docker.test` and a private path-prefix
/// route `mirror.test` whose only upstream is `quay.test` → the same registry.
struct Scene {
    s: Stage,
    upstream: Registry,
    secret: Pushed,
    team: Pushed,
    _gw: mirrorgate_e2e::Gateway,
}

fn scene(name: &str) -> Scene {
    let s = Stage::new(name);
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image = |dir: &str, tag: &str| {
        OciImage::write_layout(&s.t.sub(dir).unwrap(), dir, tag, 8 * 1024).unwrap()
    };
    push(
        &image("hello", "latest"),
        &upstream,
        "library/hello:latest",
        None,
    )
    .unwrap();
    let secret = push(&image("secret", "v1"), &upstream, "secret/thing:v1", None).unwrap();
    let team = push(&image("team", "v1"), &upstream, "team/app:v1", None).unwrap();
    Htpasswd::create(&s.t.path().join("htpasswd"), USERS).unwrap();
    let gw = s.gateway(&format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n[auth.token]\nkey = \"token-key.pem\"\nissuer = \"mirrorgate\"\n\
         service = \"mirrorgate\"\nttl = \"5m\"\n{TENANTS}\n{}{}",
        route_lines(
            "docker.test",
            &["anonymous = false".into(), kv("upstream", &upstream.url())]
        ),
        route_lines(
            "mirror.test",
            &[
                "anonymous = false".into(),
                "path_prefix = true".into(),
                format!("upstreams = {{ \"quay.test\" = {:?} }}", upstream.url()),
            ]
        ),
    ));
    Scene {
        s,
        upstream,
        secret,
        team,
        _gw: gw,
    }
}

impl Scene {
    /// `method path` on `host` with an optional `Authorization`, sent from `source` (default 127.0.0.1).
    fn call(
        &self,
        method: http::Method,
        host: &str,
        path: &str,
        authorization: Option<&str>,
        source: Option<Ipv4Addr>,
    ) -> RawResponse {
        let mut req = self.s.get(host, path).with_header("accept", OCI_ACCEPT);
        req.method = method;
        if let Some(a) = authorization {
            req = req.with_header("authorization", a);
        }
        if let Some(ip) = source {
            req = req.from_source(ip);
        }
        self.s.send(&req)
    }

    fn get(&self, host: &str, path: &str, authorization: &str) -> RawResponse {
        self.call(http::Method::GET, host, path, Some(authorization), None)
    }

    /// The token for `scope` (query-encoded, may be empty) with Basic `user`.
    fn token(&self, user: (&str, &str), scope: &str) -> String {
        let resp = self.get(
            "docker.test",
            &format!("/token?service=mirrorgate{scope}"),
            &basic_auth(user.0, user.1),
        );
        assert_eq!(resp.status, 200, "token: {}", resp.text());
        resp.json().unwrap()["token"].as_str().unwrap().to_string()
    }

    /// The `actions` the token grants on its first access entry (none when it grants nothing).
    fn granted(token: &str) -> Vec<String> {
        use base64::Engine;
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        claims["access"][0]["actions"]
            .as_array()
            .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
}

/// Asserts an OCI error: `status` and `code` in the body.
fn assert_oci(what: &str, resp: &RawResponse, status: u16, code: &str) {
    let codes = resp.oci_error_codes().unwrap_or_default();
    assert!(
        resp.status == status && codes.iter().any(|c| c == code),
        "{what}: wanted {status} {code}, got {} {}",
        resp.status,
        resp.text()
    );
}

fn user(name: &str) -> (&'static str, &'static str) {
    USERS
        .iter()
        .find(|(u, _, _)| *u == name)
        .map(|(u, p, _)| (*u, *p))
        .unwrap()
}

// 1. The catalog lists every repository of the upstream, whoever asks. It is refused with 403 DENIED before
//    anything is forwarded: for a user whose tenant has no rule for the route, for one whose tenant has, for a
//    Bearer token that grants nothing, and on a path-prefix route (where the upstream would be asked with the
//    route's own access). The upstream never sees a catalog request. Tags and referrers name a repository, so
//    they need the tenant's pull rule like a manifest: secret/thing is 403, library/hello's tags are served.
#[test]
fn catalog_tags_and_referrers_follow_tenant_rules() {
    let sc = scene("sec-catalog");
    let (eve, alice) = (user("eve"), user("alice"));
    let eve_basic = basic_auth(eve.0, eve.1);
    let alice_basic = basic_auth(alice.0, alice.1);
    // the push of secret/thing itself is in the registry's log
    let secret_seen = sc.upstream.requests("/v2/secret/");

    // control: eve is a valid user, the ping answers her
    let ping = sc.get("docker.test", "/v2/", &eve_basic);
    assert_eq!(ping.status, 200, "ping: {}", ping.text());

    for (who, auth) in [("eve", &eve_basic), ("alice", &alice_basic)] {
        let resp = sc.get("docker.test", "/v2/_catalog", auth);
        assert_oci(&format!("catalog as {who}"), &resp, 403, "DENIED");
        assert!(!resp.text().contains("secret/thing"), "{}", resp.text());
    }

    let empty = sc.token(alice, "");
    assert!(
        Scene::granted(&empty).is_empty(),
        "a token without scope grants nothing"
    );
    let bearer = format!("Bearer {empty}");
    assert_oci(
        "catalog with an empty token",
        &sc.get("docker.test", "/v2/_catalog", &bearer),
        403,
        "DENIED",
    );
    assert_oci(
        "manifest with an empty token",
        &sc.get("docker.test", "/v2/library/hello/manifests/latest", &bearer),
        401,
        "UNAUTHORIZED",
    );

    assert_oci(
        "path-prefix catalog",
        &sc.get("mirror.test", "/v2/quay.test/_catalog", &alice_basic),
        403,
        "DENIED",
    );
    // control: the same path-prefix route serves alice's own repositories
    let tags = sc.get(
        "mirror.test",
        "/v2/quay.test/library/hello/tags/list",
        &alice_basic,
    );
    assert_eq!(tags.status, 200, "prefix tags: {}", tags.text());
    assert_eq!(
        sc.upstream.requests("_catalog"),
        0,
        "a catalog request reached the upstream"
    );

    let tags = sc.get("docker.test", "/v2/library/hello/tags/list", &alice_basic);
    assert_eq!(tags.status, 200, "own tags: {}", tags.text());
    assert_eq!(tags.json().unwrap()["tags"][0], "latest");
    assert_oci(
        "tags of a repository outside the rules",
        &sc.get("docker.test", "/v2/secret/thing/tags/list", &alice_basic),
        403,
        "DENIED",
    );
    let referrers = format!("/v2/secret/thing/referrers/{}", sc.secret.manifest_digest);
    assert_oci(
        "referrers of a repository outside the rules",
        &sc.get("docker.test", &referrers, &alice_basic),
        403,
        "DENIED",
    );
    assert_eq!(sc.upstream.requests("/v2/secret/"), secret_seen);
}

// 2. Ten wrong passwords for alice from 127.0.0.1 lock that address (429, alice's right password included),
//    but not alice: her right password from 127.0.0.2 is served. A name the file does not hold and an expired
//    token are counted under their own failure reasons.
#[test]
fn lockout_from_one_address_does_not_lock_out_the_user() {
    let sc = scene("sec-lockout");
    let alice = user("alice");
    let manifest = "/v2/library/hello/manifests/latest";
    let from = |password: &str, ip: [u8; 4]| {
        sc.call(
            http::Method::GET,
            "docker.test",
            manifest,
            Some(&basic_auth(alice.0, password)),
            Some(Ipv4Addr::from(ip)),
        )
    };
    for i in 0..10 {
        assert_eq!(from(&format!("guess-{i}"), [127, 0, 0, 1]).status, 401);
    }
    assert_oci(
        "right password from the attacker's address",
        &from(alice.1, [127, 0, 0, 1]),
        429,
        "TOOMANYREQUESTS",
    );
    let elsewhere = from(alice.1, [127, 0, 0, 2]);
    assert_eq!(
        elsewhere.status,
        200,
        "alice from another address: {}",
        elsewhere.text()
    );

    let nobody = sc.call(
        http::Method::GET,
        "docker.test",
        manifest,
        Some(&basic_auth("mallory", "x")),
        Some(Ipv4Addr::new(127, 0, 0, 3)),
    );
    assert_oci("unknown user", &nobody, 401, "UNAUTHORIZED");
    let metrics = sc.s.metrics();
    let reason = |r: &str| {
        metric(
            &metrics,
            "mirrorgate_auth_failures_total",
            &[&format!("reason=\"{r}\"")],
        )
    };
    assert_eq!(reason("bad_password"), 10.0);
    assert_eq!(reason("unknown_user"), 1.0);

    // An expired token signed with the gateway's own key.
    let key = std::fs::read(sc.s.t.path().join("token-key.pem")).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "mirrorgate", "sub": "alice", "aud": "mirrorgate",
        "exp": now - 3600, "nbf": now - 7200, "iat": now - 7200, "jti": "sec-expired",
        "access": [{"type": "repository", "name": "library/hello", "actions": ["pull"]}],
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&key).unwrap(),
    )
    .unwrap();
    let resp = sc.get("docker.test", manifest, &format!("Bearer {token}"));
    assert_oci("expired token", &resp, 401, "UNAUTHORIZED");
    assert_eq!(
        metric(
            &sc.s.metrics(),
            "mirrorgate_auth_failures_total",
            &["reason=\"expired_token\""]
        ),
        1.0
    );
}

// 3. DELETE is its own right. pat may push team/* but not delete: DELETE of team/app's manifest is 403 and the
//    manifest is still there; a token pat asks for with `delete` does not carry it. dan holds a `delete:` rule:
//    his token carries delete, and his DELETE reaches the registry (202) and the manifest is gone.
#[test]
fn delete_needs_the_delete_right() {
    let sc = scene("sec-delete");
    let (pat, dan) = (user("pat"), user("dan"));
    let path = format!("/v2/team/app/manifests/{}", sc.team.manifest_digest);
    let delete = |who: (&str, &str)| {
        sc.call(
            http::Method::DELETE,
            "docker.test",
            &path,
            Some(&basic_auth(who.0, who.1)),
            None,
        )
    };

    assert_oci("DELETE with push rights", &delete(pat), 403, "DENIED");
    let still = sc.get("docker.test", &path, &basic_auth(pat.0, pat.1));
    assert_eq!(
        still.status,
        200,
        "manifest after refused DELETE: {}",
        still.text()
    );
    let scope = "&scope=repository:team/app:pull,push,delete";
    assert_eq!(Scene::granted(&sc.token(pat, scope)), ["pull", "push"]);

    assert_eq!(
        Scene::granted(&sc.token(dan, scope)),
        ["pull", "push", "delete"]
    );
    let done = delete(dan);
    assert_eq!(
        done.status,
        202,
        "DELETE with the delete right: {}",
        done.text()
    );
    assert_oci(
        "manifest after DELETE",
        &sc.get("docker.test", &path, &basic_auth(dan.0, dan.1)),
        404,
        "MANIFEST_UNKNOWN",
    );
}
