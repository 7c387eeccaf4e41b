//! Upstream credential pools against a Docker-Hub-like rate limit: a real token-mode `docker-registry` behind a
//! [`RateLimitFront`] that allows N manifest GETs per account per window. A pool of accounts carries about K
//! times one account's quota with no client-visible error, an account with a wrong password is set aside while
//! the others carry on, an exhausted pool answers 429 with `Retry-After` (not 502), and an account comes back
//! once its window has passed (docs: config.md `upstream_credentials`, README "Upstream credential pools").

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mirrorgate_e2e::{
    kv, metric, push, route_lines, Gateway, OciImage, Pushed, RateLimitFront, Registry, Stage,
    TokenIssuer, TokenIssuerOptions,
};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const PUSHER: (&str, &str) = ("pusher", "push-secret");
const MANIFEST: &str = "/v2/library/hello/manifests/latest";

/// A token upstream knowing the pusher and the pool accounts, with `library/hello` pushed, behind a front
/// allowing `limit` manifest GETs per account per `window`.
struct Upstream {
    _issuer: TokenIssuer,
    _registry: Registry,
    front: RateLimitFront,
    hello: Pushed,
}

fn upstream(s: &Stage, accounts: &[(&str, &str)], limit: u64, window: Duration) -> Upstream {
    let mut users = vec![(PUSHER.0.to_string(), PUSHER.1.to_string())];
    users.extend(accounts.iter().map(|(u, p)| (u.to_string(), p.to_string())));
    let opts = TokenIssuerOptions {
        users,
        anonymous_pull: false,
        ..Default::default()
    };
    let issuer = TokenIssuer::start(&s.t.sub("issuer").unwrap(), opts).unwrap();
    let registry = Registry::token(s.t.path(), "upstream", &issuer).unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "hello", "latest", 4096).unwrap();
    let hello = push(&image, &registry, "library/hello:latest", Some(PUSHER)).unwrap();
    let front = RateLimitFront::start(registry.port(), limit, window).unwrap();
    Upstream {
        _issuer: issuer,
        _registry: registry,
        front,
        hello,
    }
}

/// The route on `front` with a pool of `(name, user, password)` members.
fn pool_gateway(s: &Stage, up: &Upstream, members: &[(&str, &str, &str)]) -> Gateway {
    let mut text = route_lines("docker.test", &[kv("upstream", &up.front.url())]);
    for (name, user, password) in members {
        text.push_str(&format!(
            "[[route.upstream_credentials]]\n{}\n{}\n{}\n\n",
            kv("name", name),
            kv("username", user),
            kv("password", password)
        ));
    }
    s.gateway(&text)
}

fn pull_manifest(s: &Stage) -> mirrorgate_e2e::RawResponse {
    s.send(
        &s.get("docker.test", MANIFEST)
            .with_header("accept", MT_MANIFEST),
    )
}

// Pins the pool's point: two accounts with a limit of N each serve 2N pulls with no client-visible error, each
// account used N times; the (2N+1)th pull finds the pool exhausted and gets 429 TOOMANYREQUESTS with a
// Retry-After (never 502); the metrics show each account's headroom and state by name.
#[test]
fn two_accounts_serve_twice_the_quota_then_429() {
    const N: u64 = 4;
    let s = Stage::new("pool-quota");
    let up = upstream(
        &s,
        &[("hub-one", "pw-one"), ("hub-two", "pw-two")],
        N,
        Duration::from_secs(600),
    );
    let gw = pool_gateway(
        &s,
        &up,
        &[
            ("hub-1", "hub-one", "pw-one"),
            ("hub-2", "hub-two", "pw-two"),
        ],
    );
    for i in 0..2 * N {
        let resp = pull_manifest(&s);
        assert_eq!(resp.status, 200, "pull {i}: {}", resp.text());
        assert_eq!(mirrorgate_e2e::sha256(&resp.body), up.hello.manifest_digest);
    }
    assert_eq!(up.front.served("hub-one"), N);
    assert_eq!(up.front.served("hub-two"), N);

    // Exhausted: the first over-limit pull meets the upstream's 429 on both accounts (each tried once)…
    let resp = pull_manifest(&s);
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.text());
    // …and the next is answered by the gateway itself from the set-aside pool, without asking upstream.
    let refused_before = up.front.refused("hub-one") + up.front.refused("hub-two");
    let resp = pull_manifest(&s);
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.oci_error_codes().unwrap(), ["TOOMANYREQUESTS"]);
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=601).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        up.front.refused("hub-one") + up.front.refused("hub-two"),
        refused_before
    );

    let m = s.metrics();
    for name in ["hub-1", "hub-2"] {
        let credential = format!("credential=\"{name}\"");
        let labels = [credential.as_str()];
        assert_eq!(
            metric(&m, "mirrorgate_upstream_credential_available", &labels),
            0.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &m,
                "mirrorgate_upstream_credential_throttled_total",
                &labels
            ),
            1.0,
            "{name}"
        );
        assert!(
            metric(&m, "mirrorgate_upstream_credential_requests_total", &labels) >= N as f64,
            "{name}"
        );
    }
    assert!(
        !m.contains("pw-one") && !m.contains("hub-one"),
        "secrets or users in metrics"
    );
    assert!(gw.log().contains("upstream credential set aside"));
}

// Pins the refused login: an account whose password is wrong is set aside (its realm answered 401) and the
// request is retried with the other account, so no pull fails; the other account carries every pull.
#[test]
fn wrong_password_is_set_aside_and_the_other_carries_on() {
    let s = Stage::new("pool-badpw");
    let up = upstream(
        &s,
        &[("hub-one", "pw-one"), ("hub-two", "pw-two")],
        100,
        Duration::from_secs(600),
    );
    let gw = pool_gateway(
        &s,
        &up,
        &[
            ("stale", "hub-one", "changed-elsewhere"),
            ("good", "hub-two", "pw-two"),
        ],
    );
    for i in 0..5 {
        let resp = pull_manifest(&s);
        assert_eq!(resp.status, 200, "pull {i}: {}", resp.text());
    }
    assert_eq!(up.front.served("hub-two"), 5);
    assert_eq!(up.front.served("hub-one"), 0);
    let m = s.metrics();
    assert_eq!(
        metric(
            &m,
            "mirrorgate_upstream_credential_available",
            &["credential=\"stale\""]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "mirrorgate_upstream_credential_available",
            &["credential=\"good\""]
        ),
        1.0
    );
    let log = gw.log();
    assert!(log.contains("login refused"), "{log}");
}

// Pins the return: an account set aside for its window comes back once the window (Retry-After) has passed,
// and pulls succeed again without a restart; while it is aside the gateway answers 429, not 502.
#[test]
fn an_account_returns_after_its_window() {
    let s = Stage::new("pool-return");
    let up = upstream(&s, &[("hub-one", "pw-one")], 2, Duration::from_secs(3));
    let gw = pool_gateway(&s, &up, &[("only", "hub-one", "pw-one")]);
    for _ in 0..2 {
        assert_eq!(pull_manifest(&s).status, 200);
    }
    let resp = pull_manifest(&s);
    assert_eq!(resp.status, 429, "{}", resp.text());
    let resp = pull_manifest(&s);
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.oci_error_codes().unwrap(), ["TOOMANYREQUESTS"]);
    assert!(resp.header("retry-after").is_some());
    std::thread::sleep(Duration::from_secs(5));
    let resp = pull_manifest(&s);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.front.served("hub-one"), 3);
    assert!(gw.log().contains("returns to the pool"), "{}", gw.log());
}
