//! API tokens (robot accounts, issue 16) with real clients: tokens made by `mirrorgate token create`, used as
//! the Basic password by skopeo (pull and push, through the token server) and podman (`--creds`); push only
//! with `--push`; another tenant's repository refused; an expired token refused; a revoked token stops working
//! once the gateway's poll picks the file up; every refusal counted with its reason, the secret never logged.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::basic_auth;
use mirrorgate_e2e::{bin_path, metric, push, OciImage, Outcome, Podman, Registry, Stage};

const AUTH_TOML: &str = r#"
[auth]
api_tokens = "api-tokens.json"

[auth.token]
key = "token-key.pem"
issuer = "mirrorgate"
service = "mirrorgate"
ttl = "5m"

[[tenant]]
name = "acme"
allow = ["docker.test/library/*", "push:docker.test/acme/*"]

[[tenant]]
name = "globex"
allow = ["docker.test/globex/*"]
"#;

/// `mirrorgate token ARGS -c CONFIG`; panics unless it succeeds; its stdout.
fn token_cmd(config: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(bin_path());
    cmd.arg("token")
        .arg(args[0])
        .arg("-c")
        .arg(config)
        .args(&args[1..]);
    Outcome::run(cmd)
        .unwrap()
        .check(&format!("mirrorgate token {}", args.join(" ")))
        .unwrap()
        .stdout
}

/// `mirrorgate token create` for tenant `tenant`: the printed token.
fn create(config: &Path, tenant: &str, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "--tenant", tenant, "--name", name];
    args.extend_from_slice(extra);
    let token = token_cmd(config, &args).trim().to_string();
    assert!(token.starts_with("mgt_"), "{token}");
    token
}

fn auth_failures(s: &Stage, reason: &str) -> f64 {
    metric(
        &s.metrics(),
        "mirrorgate_auth_failures_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

// Pins issue 16 (API tokens, bad input): the whole life of robot tokens with skopeo and podman.
#[test]
fn api_tokens_with_skopeo_and_podman() {
    let s = Stage::new("api-tokens");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let hello =
        OciImage::write_layout(&s.t.sub("hello").unwrap(), "hello", "latest", 32 * 1024).unwrap();
    push(&hello, &upstream, "library/hello:latest", None).unwrap();
    let globex =
        OciImage::write_layout(&s.t.sub("globex").unwrap(), "g", "latest", 8 * 1024).unwrap();
    push(&globex, &upstream, "globex/app:latest", None).unwrap();
    let rest = format!(
        "{AUTH_TOML}\n[[route]]\nhost = \"docker.test\"\nupstream = {:?}\nanonymous = false\n",
        upstream.url()
    );
    // Tokens are made before the start, with a config that points at the same token file.
    let cli_config = s.t.path().join("cli.toml");
    std::fs::write(&cli_config, s.config(&rest)).unwrap();
    let puller = create(&cli_config, "acme", "ci-pull", &[]);
    let pusher = create(
        &cli_config,
        "acme",
        "ci-push",
        &[
            "--push",
            "--allow",
            "docker.test/acme/*",
            "--expires",
            "90d",
        ],
    );
    let short = create(&cli_config, "acme", "short-lived", &["--expires", "1s"]);
    let short_made = Instant::now();
    let file = std::fs::read_to_string(s.t.path().join("api-tokens.json")).unwrap();
    for t in [&puller, &pusher, &short] {
        // `mgt_<id>_<secret>`: the secret is base64url, which may itself contain `_`.
        let secret = t.splitn(3, '_').nth(2).unwrap();
        assert!(!file.contains(secret), "the token file holds a secret");
    }
    let listed = token_cmd(&cli_config, &["list"]);
    assert!(listed.contains("ci-pull") && !listed.contains(puller.splitn(3, '_').nth(2).unwrap()));
    let gw = s.gateway(&rest);

    // Pull with a token as the password, whatever the user name: skopeo (token server) and podman.
    let skopeo = s.skopeo().creds("anything", &puller);
    skopeo
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("p1").unwrap(),
        )
        .unwrap();
    let authority = s.authority("docker.test");
    let podman = Podman::new(s.t.path(), &authority, &authority, &[])
        .unwrap()
        .cert_dir(&s.certs)
        .creds("ci-pull", &puller);
    let image = format!("{authority}/library/hello:latest");
    podman
        .pull(&image)
        .unwrap()
        .check("podman pull with a token")
        .unwrap();

    // Push only with --push, and only inside the token's own scope.
    let src = hello.oci_ref();
    let dest = s.via("docker.test", "acme/app:v1");
    let refused = s
        .skopeo()
        .creds("ci-pull", &puller)
        .push(&src, &dest)
        .unwrap();
    assert!(
        !refused.ok(),
        "a pull-only token pushed: {}",
        refused.stdout
    );
    s.skopeo()
        .creds("ci-push", &pusher)
        .push(&src, &dest)
        .unwrap()
        .check("push with a --push token")
        .unwrap();
    // The pushing token's scope leaves out library/*, which its tenant may pull: 403.
    let get = |authorization: &str, path: &str| {
        s.send(
            &s.get("docker.test", path)
                .with_header("authorization", authorization)
                .with_header("accept", "application/vnd.oci.image.manifest.v1+json"),
        )
    };
    let r = get(
        &basic_auth("x", &pusher),
        "/v2/library/hello/manifests/latest",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    // Another tenant's repository: 403 DENIED.
    let forbidden_before = auth_failures(&s, "forbidden");
    let r = get(&basic_auth("x", &puller), "/v2/globex/app/manifests/latest");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.oci_error_codes().unwrap(), vec!["DENIED".to_string()]);
    assert!(auth_failures(&s, "forbidden") > forbidden_before);

    // Bad input: a wrong secret with the right prefix, an expired token, a Basic header without a colon.
    let wrong = format!("{}x", &puller);
    let r = get(
        &basic_auth("x", &wrong),
        "/v2/library/hello/manifests/latest",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").is_some());
    assert!(auth_failures(&s, "bad_api_token") >= 1.0);
    // Expiry is kept in whole seconds: two seconds after creation the token is past it, however fast the
    // pulls above were.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(short_made.elapsed()));
    let r = get(
        &basic_auth("x", &short),
        "/v2/library/hello/manifests/latest",
    );
    assert_eq!(r.status, 401, "expired token: {}", r.text());
    assert!(r.text().contains("expired"), "{}", r.text());
    assert!(auth_failures(&s, "expired_api_token") >= 1.0);
    let r = get("Basic bm9jb2xvbg==", "/v2/library/hello/manifests/latest");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(auth_failures(&s, "malformed") >= 1.0);

    // Revocation reaches the running gateway within its poll interval, for skopeo and at /token.
    token_cmd(gw.config_path(), &["revoke", "ci-pull"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(
            &basic_auth("x", &puller),
            "/v2/library/hello/manifests/latest",
        );
        if r.status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revoked token still works: {}",
            r.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = skopeo
        .pull(
            &s.via("docker.test", "library/hello:latest"),
            &s.t.sub("p2").unwrap(),
        )
        .unwrap_err();
    assert!(
        format!("{out:#}").contains("401")
            || format!("{out:#}").to_lowercase().contains("unauthorized"),
        "{out:#}"
    );
    assert!(auth_failures(&s, "revoked_api_token") >= 1.0);

    // Logs name the token, never its secret.
    let log = gw.log();
    assert!(
        log.contains("token:ci-pull"),
        "no token user in the access log"
    );
    for t in [&puller, &pusher, &short] {
        assert!(
            !log.contains(t.splitn(3, '_').nth(2).unwrap()),
            "a secret reached the log"
        );
    }
}

/// A stage whose upstream holds `library/hello:latest`, the token config written for the CLI, and the rest of
/// the gateway's config (a private docker.test route).
fn token_stage(name: &str) -> (Stage, Registry, std::path::PathBuf, String) {
    let s = Stage::new(name);
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let hello =
        OciImage::write_layout(&s.t.sub("hello").unwrap(), "hello", "latest", 32 * 1024).unwrap();
    push(&hello, &upstream, "library/hello:latest", None).unwrap();
    let rest = format!(
        "{AUTH_TOML}\n[[route]]\nhost = \"docker.test\"\nupstream = {:?}\nanonymous = false\n",
        upstream.url()
    );
    let cli_config = s.t.path().join("cli.toml");
    std::fs::write(&cli_config, s.config(&rest)).unwrap();
    (s, upstream, cli_config, rest)
}

/// Waits until the gateway answers `status` to a manifest GET with `token` as the Basic password (the token
/// file is polled).
fn wait_for_token_status(s: &Stage, token: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.send(
            &s.get("docker.test", "/v2/library/hello/manifests/latest")
                .with_header("authorization", &basic_auth("x", token))
                .with_header("accept", "application/vnd.oci.image.manifest.v1+json"),
        );
        if r.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the token still answers {} (waiting for {status})",
            r.status
        );
        // Once a second: every try with a token the gateway does not know yet (or no longer accepts) counts
        // as a failure for the source's lockout, and the token file is reloaded every 2 s.
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A containerd pulling from the gateway itself (`hosts.toml` for `docker.test:<port>` trusting the test CA),
/// and a pull of `library/hello` with `ci:<token>` as ctr's `--user`.
fn containerd_puller(s: &Stage) -> impl Fn(&str) -> Outcome + '_ {
    let authority = s.authority("docker.test");
    let hosts = s.t.sub("certs.d").unwrap();
    let url = format!("https://{authority}");
    s.ca.containerd_hosts_toml(&hosts, &authority, &url, &[&url])
        .unwrap();
    let ctr = mirrorgate_e2e::Containerd::start(s.t.path()).unwrap();
    let image = format!("{authority}/library/hello:latest");
    move |token: &str| {
        ctr.pull_as(&hosts, &image, Some(&format!("ci:{token}")))
            .unwrap()
    }
}

// Pins issue 16 (API tokens with containerd): a token as ctr's `--user` password pulls through the token
// server, and once `mirrorgate token revoke` reaches the gateway the next pull is refused with 401.
#[test]
fn api_token_revoked_with_containerd() {
    let (s, _upstream, cli_config, rest) = token_stage("api-tokens-ctr-revoke");
    let ci = create(&cli_config, "acme", "ci", &[]);
    let gw = s.gateway(&rest);
    let pull = containerd_puller(&s);
    let out = pull(&ci);
    assert!(
        out.ok(),
        "ctr pull with a token: {}\n{}",
        out.stderr,
        gw.log()
    );

    token_cmd(gw.config_path(), &["revoke", "ci"]);
    wait_for_token_status(&s, &ci, 401);
    let out = pull(&ci);
    assert!(!out.ok(), "a revoked token pulled");
    let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        said.contains("401") || said.contains("unauthorized"),
        "{said}"
    );
    assert!(auth_failures(&s, "revoked_api_token") >= 1.0);
}

// Pins issue 16 (API tokens with containerd): a token made while the gateway runs with `--expires 8s` pulls,
// and is refused once those seconds have passed.
#[test]
fn api_token_expired_with_containerd() {
    let (s, _upstream, cli_config, rest) = token_stage("api-tokens-ctr-expiry");
    let gw = s.gateway(&rest);
    let pull = containerd_puller(&s);
    let lifetime = Duration::from_secs(8);
    let born = Instant::now();
    let short = create(&cli_config, "acme", "ci-short", &["--expires", "8s"]);
    wait_for_token_status(&s, &short, 200);
    let out = pull(&short);
    assert!(
        out.ok(),
        "ctr pull with a fresh token: {}\n{}",
        out.stderr,
        gw.log()
    );
    std::thread::sleep(
        (born + lifetime + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    );
    let out = pull(&short);
    assert!(!out.ok(), "an expired token pulled");
    assert!(auth_failures(&s, "expired_api_token") >= 1.0);
}

// Pins issue 16 (API tokens with the Docker engine): `docker login -u ci --password-stdin` with a token logs
// in and pulls; after `mirrorgate token revoke` the next pull is refused.
#[test]
fn api_tokens_with_docker() {
    let (s, upstream, cli_config, rest) = token_stage("api-tokens-docker");
    let ci = create(&cli_config, "acme", "ci", &[]);
    let gw = s.gateway(&rest);
    let authority = s.authority("docker.test");
    let docker = mirrorgate_e2e::Docker::start(
        s.t.path(),
        &s.certs.join("ca.crt"),
        &authority,
        &[&authority],
    )
    .unwrap();
    let login = docker.login(&authority, "ci", &ci).unwrap();
    assert!(
        login.ok() && login.stdout.contains("Login Succeeded"),
        "docker login with a token: {}{}\n{}",
        login.stdout,
        login.stderr,
        gw.log()
    );
    let image = format!("{authority}/library/hello:latest");
    let before = upstream.requests("/v2/library/hello/manifests/");
    let out = docker.run(&["pull", &image]).unwrap();
    assert!(
        out.ok(),
        "docker pull with a token: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(upstream.requests("/v2/library/hello/manifests/") > before);
    assert!(
        gw.log().contains("token:ci"),
        "the access log does not name the token"
    );

    token_cmd(gw.config_path(), &["revoke", "ci"]);
    wait_for_token_status(&s, &ci, 401);
    let out = docker.run(&["pull", &image]).unwrap();
    assert!(!out.ok(), "a revoked token pulled: {}", out.stdout);
    let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
    assert!(
        said.contains("unauthorized") || said.contains("401"),
        "{said}"
    );
    assert!(auth_failures(&s, "revoked_api_token") >= 1.0);
}
