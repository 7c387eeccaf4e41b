//! The corporate egress point: deny rules that refuse tags, digests and whole repositories even where `allow`
//! matches, the audit trail of manifest pulls, pushes and refusals, and the outbound proxy (Debian's squid) (docs: config.md "second round",
//! README "Corporate egress").

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{push, route, sha256, OciImage, Pushed, Registry, RegistryMode, Squid, Stage};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn push_image(s: &Stage, registry: &Registry, name: &str, reference: &str) -> Pushed {
    let image = OciImage::write_layout(
        &s.t.sub(&format!("image-{name}")).unwrap(),
        name,
        "latest",
        4 * 1024,
    )
    .unwrap();
    push(&image, registry, reference, None).unwrap()
}

/// GET `path` on docker.test with `auth`: (status, body text).
fn get(s: &Stage, path: &str, auth: &str) -> (u16, String) {
    let resp = s.send(
        &s.get("docker.test", path)
            .with_header("accept", MT_MANIFEST)
            .with_header("authorization", auth),
    );
    (resp.status, resp.text())
}

/// `[auth]`, one tenant allowed everything on docker.test but `tenant_deny`, and the route with `route_deny`.
/// `library/app:latest`'s manifest through the gateway on `host`.
fn pull_app(s: &Stage, host: &str) -> mirrorgate_e2e::RawResponse {
    s.send(
        &s.get(host, "/v2/library/app/manifests/latest")
            .with_header("accept", MT_MANIFEST),
    )
}

/// Waits for squid's access log to show `needle`; fails with the log otherwise.
fn assert_squid_logged(squid: &Squid, needle: &str) {
    assert!(
        squid.wait_for_log(needle),
        "no {needle:?} in squid's log:\n{}",
        squid.access_log()
    );
}

fn deny_rest(upstream: &Registry, tenant_deny: &str, route_deny: &str) -> String {
    format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n\
         [[tenant]]\nname = \"corp\"\nusers = [\"alice\"]\nallow = [\"docker.test/*\"]\ndeny = [{tenant_deny}]\n\n{}",
        route(
            "docker.test",
            &upstream.url(),
            &format!("deny = [{route_deny}]")
        )
        .replace("anonymous = true\n", "")
    )
}

// Pins issue 20 (deny rules): a tenant's `*:latest` rule and a route's digest and repository rules refuse
// manifest requests with 403 DENIED naming the rule, before the upstream is asked; allowed tags still pass;
// blobs are covered by repository rules only (a digest rule does not follow a manifest to its blobs); and the
// rules change with a config reload.
#[test]
fn deny_rules_refuse_tags_digests_and_repositories() {
    let s = Stage::new("egress-deny");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let latest = push_image(&s, &upstream, "app-latest", "library/app:latest");
    let v1 = push_image(&s, &upstream, "app-v1", "library/app:v1");
    let pinned = push_image(&s, &upstream, "pinned", "library/pinned:v2");
    let evil = push_image(&s, &upstream, "evil", "evil/tool:v1");
    Htpasswd::create(&s.t.path().join("htpasswd"), &[("alice", "alice-pw", 4)]).unwrap();
    let route_deny = format!(
        "\"docker.test/evil/*\", \"docker.test/library/pinned@{}\"",
        pinned.manifest_digest
    );
    let gw = s.gateway(&deny_rest(
        &upstream,
        "\"docker.test/*:latest\"",
        &route_deny,
    ));
    let alice = basic_auth("alice", "alice-pw");

    // the tenant's tag rule wins over its allow rule, and the upstream is never asked
    let asked = upstream.requests("/manifests/latest");
    let (status, text) = get(&s, "/v2/library/app/manifests/latest", &alice);
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("DENIED"), "{text}");
    assert!(
        text.contains("docker.test/*:latest"),
        "the rule is named: {text}"
    );
    assert!(text.contains("tenant 'corp'"), "{text}");
    assert_eq!(upstream.requests("/manifests/latest"), asked);
    // other tags pass, and so does the denied tag's content by digest (a tag rule covers the tag only)
    let (status, text) = get(&s, "/v2/library/app/manifests/v1", &alice);
    assert_eq!(status, 200, "{text}");
    let by_digest = format!("/v2/library/app/manifests/{}", latest.manifest_digest);
    assert_eq!(get(&s, &by_digest, &alice).0, 200);
    assert_eq!(
        get(
            &s,
            &format!("/v2/library/app/manifests/{}", v1.manifest_digest),
            &alice
        )
        .0,
        200
    );

    // the route's digest rule refuses that manifest by digest, for everyone on the route
    let (status, text) = get(
        &s,
        &format!("/v2/library/pinned/manifests/{}", pinned.manifest_digest),
        &alice,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("route 'docker.test'"), "{text}");
    // ... but blobs are not followed: the layer of the denied manifest is still served
    let blob = format!("/v2/library/pinned/blobs/{}", pinned.layer_digests[0]);
    assert_eq!(get(&s, &blob, &alice).0, 200);

    // a rule without a reference covers the whole repository: manifests, blobs, tag lists
    for path in [
        "/v2/evil/tool/manifests/v1".to_string(),
        format!("/v2/evil/tool/blobs/{}", evil.layer_digests[0]),
        "/v2/evil/tool/tags/list".to_string(),
    ] {
        let (status, text) = get(&s, &path, &alice);
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("docker.test/evil/*"), "{path}: {text}");
    }

    // rules reload live: without the tenant's tag rule `latest` is served, with a new one `v1` is refused
    gw.reload_with(&s.config(&deny_rest(&upstream, "\"docker.test/library/app:v*\"", "")))
        .unwrap();
    let (status, text) = get(&s, "/v2/library/app/manifests/latest", &alice);
    assert_eq!(status, 200, "{text}");
    let (status, text) = get(&s, "/v2/library/app/manifests/v1", &alice);
    assert_eq!(status, 403, "{text}");
    assert_eq!(get(&s, "/v2/evil/tool/manifests/v1", &alice).0, 200);
}

/// The audit file's lines, parsed.
fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits up to 10 s for `want` lines in the audit file (lines are written when a response body ends).
fn wait_lines(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let lines = audit_lines(path);
        if lines.len() >= want || start.elapsed() > Duration::from_secs(10) {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// Pins issue 20 (audit trail): a real client's pull writes manifest lines with who, what and the digest served;
// a deny refusal is written with its reason; blob fetches and the credential-less 401 are not; no credential
// reaches the file.
#[test]
fn audit_trail_records_pulls_and_refusals() {
    let s = Stage::new("egress-audit");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let app = push_image(&s, &upstream, "app", "library/app:latest");
    push_image(&s, &upstream, "app-v1", "library/app:v1");
    Htpasswd::create(&s.t.path().join("htpasswd"), &[("alice", "alice-pw", 4)]).unwrap();
    let _gw = s.gateway(&format!(
        "[audit]\nfile = \"audit.jsonl\"\n\n{}",
        deny_rest(&upstream, "\"docker.test/*:v1\"", "")
    ));
    let audit = s.t.path().join("audit.jsonl");

    let pulled = s.t.sub("pulled").unwrap();
    s.skopeo()
        .creds("alice", "alice-pw")
        .pull(
            &format!("{}:latest", s.via("docker.test", "library/app")),
            &pulled,
        )
        .unwrap();
    let lines = wait_lines(&audit, 1);
    let pulls: Vec<_> = lines
        .iter()
        .filter(|l| l["method"] == "GET" && l["status"] == 200)
        .collect();
    assert!(!pulls.is_empty(), "no manifest GET line: {lines:?}");
    let pull = pulls[0];
    assert_eq!(pull["action"], "pull", "{pull}");
    assert_eq!(pull["tenant"], "corp", "{pull}");
    assert_eq!(pull["user"], "alice", "{pull}");
    assert_eq!(pull["route"], "docker.test", "{pull}");
    assert_eq!(pull["repository"], "library/app", "{pull}");
    assert_eq!(pull["reference"], "latest", "{pull}");
    assert_eq!(pull["digest"], app.manifest_digest.as_str(), "{pull}");
    assert_eq!(pull["client"], "127.0.0.1", "{pull}");
    assert!(pull["refused"].is_null(), "{pull}");
    assert!(
        lines.iter().all(|l| l["reference"].is_string()),
        "only manifest requests (no blobs, no challenge 401s): {lines:?}"
    );

    let before = lines.len();
    let (status, text) = get(
        &s,
        "/v2/library/app/manifests/v1",
        &basic_auth("alice", "alice-pw"),
    );
    assert_eq!(status, 403, "{text}");
    let lines = wait_lines(&audit, before + 1);
    let refused = lines.last().unwrap();
    assert_eq!(refused["status"], 403, "{refused}");
    assert_eq!(refused["reference"], "v1", "{refused}");
    assert!(refused["digest"].is_null(), "{refused}");
    assert!(
        refused["refused"]
            .as_str()
            .is_some_and(|r| r.contains("docker.test/*:v1")),
        "{refused}"
    );

    let raw = std::fs::read_to_string(&audit).unwrap();
    assert!(
        !raw.contains("alice-pw") && !raw.contains("Basic "),
        "{raw}"
    );
}

// Pins issue 20 (audit rotation): past `max_size` the file is rotated to `.1`, `.2`, only `keep` rotated files
// stay, and no file grows past the limit.
#[test]
fn audit_file_rotates_by_size() {
    let s = Stage::new("egress-rotate");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    push_image(&s, &upstream, "app", "library/app:latest");
    let _gw = s.gateway(&format!(
        "[audit]\nfile = \"audit.jsonl\"\nmax_size = \"2KiB\"\nkeep = 2\n\n{}",
        route("docker.test", &upstream.url(), "")
    ));
    let audit = s.t.path().join("audit.jsonl");
    let rotated = |i: u32| s.t.path().join(format!("audit.jsonl.{i}"));
    for _ in 0..40 {
        let resp = s.send(
            &s.get("docker.test", "/v2/library/app/manifests/latest")
                .with_header("accept", MT_MANIFEST),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    // The writer thread may still be draining its queue (and be between the renames of a rotation): wait until
    // the three files exist and have stopped changing.
    let sizes = || {
        [audit.clone(), rotated(1), rotated(2)].map(|p| std::fs::metadata(p).map(|m| m.len()).ok())
    };
    let start = Instant::now();
    let mut last = sizes();
    let mut stable_since = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
        let now = sizes();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if now.iter().all(Option::is_some)
            && stable_since.elapsed() > Duration::from_millis(500)
        {
            break;
        }
    }
    assert!(
        rotated(1).exists() && rotated(2).exists(),
        "not rotated twice"
    );
    assert!(!rotated(3).exists(), "keep = 2 kept a third file");
    for p in [audit.clone(), rotated(1), rotated(2)] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", p.display());
        assert!(!audit_lines(&p).is_empty(), "{} is empty", p.display());
    }
}

// Pins issue 20 (outbound proxy): with `upstream_proxy` set, an https upstream is reached through squid with
// CONNECT (TLS still verified against the upstream's CA inside the tunnel) and an http upstream in absolute form,
// both with the proxy credentials; a `no_proxy` host goes direct; wrong proxy credentials make the pull an
// upstream failure logged as the proxy's refusal.
#[test]
fn upstream_traffic_goes_through_the_outbound_proxy() {
    let s = Stage::new("egress-proxy");
    let squid = Squid::start(s.t.path(), "proxyuser", "proxy-pw").unwrap();
    let leaf = s.ca.issue("upstream", &["upstream.test"]).unwrap();
    let secure = Registry::start(s.t.path(), "secure", RegistryMode::Open, Some(&leaf)).unwrap();
    let plain = Registry::open(s.t.path(), "plain").unwrap();
    let tls_app = push_image(&s, &secure, "tls-app", "library/app:latest");
    let plain_app = push_image(&s, &plain, "plain-app", "library/app:latest");
    std::fs::write(s.t.path().join("proxy-password"), "proxy-pw\n").unwrap();
    let ca = s.ca.ca_path().display().to_string();
    let routes = |password_file: &str| {
        format!(
            "{}{}{}",
            route(
                "docker.test",
                &format!("https://upstream.test:{}", secure.port()),
                &format!("upstream_ca = {ca:?}")
            ),
            route(
                "gcr.test",
                &format!("http://upstream.test:{}", plain.port()),
                ""
            ),
            route("quay.test", &plain.url(), ""),
        )
        .replace("PASSWORD_FILE", password_file)
    };
    let server = |password_file: &str| {
        format!(
            "upstream_proxy = {:?}\nupstream_proxy_username = \"proxyuser\"\nupstream_proxy_password_file = {password_file:?}\nno_proxy = [\"127.0.0.1\"]\n",
            squid.url()
        )
    };
    let gw = s.gateway_with(&server("proxy-password"), &routes("proxy-password"));
    let pull = |host: &str| pull_app(&s, host);

    // https upstream: a CONNECT tunnel through squid, as the proxy user
    let resp = pull("docker.test");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), tls_app.manifest_digest);
    let connect = format!("CONNECT upstream.test:{} proxyuser", secure.port());
    assert_squid_logged(&squid, &connect);

    // http upstream: absolute-form requests through squid
    let resp = pull("gcr.test");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), plain_app.manifest_digest);
    let absolute = format!(
        "GET http://upstream.test:{}/v2/library/app/manifests/latest proxyuser",
        plain.port()
    );
    assert_squid_logged(&squid, &absolute);

    // a no_proxy host goes direct: the same registry by 127.0.0.1 is served (squid's log is checked at the end)
    let resp = pull("quay.test");
    assert_eq!(resp.status, 200, "{}", resp.text());

    // wrong proxy credentials: squid answers CONNECT with 407, the pull fails as an upstream error
    std::fs::write(s.t.path().join("wrong-password"), "nope\n").unwrap();
    gw.reload_with(&s.config_with(&server("wrong-password"), &routes("wrong-password")))
        .unwrap();
    let resp = pull("docker.test");
    assert!(resp.status >= 500, "{}: {}", resp.status, resp.text());
    assert!(
        gw.log()
            .contains("the outbound proxy refused the connection"),
        "{}",
        gw.log()
    );
    assert_squid_logged(&squid, "TCP_DENIED/407");
    let log = squid.access_log();
    assert!(
        !log.contains(&format!("127.0.0.1:{}", plain.port())),
        "a no_proxy request went through squid:\n{log}"
    );
}

// Pins issue 20 (outbound proxy from the environment): with no proxy key in the config, HTTPS_PROXY (credentials
// in its URL) carries https upstream traffic through squid, and NO_PROXY sends the hosts it lists direct.
#[test]
fn the_environment_proxy_is_honoured_when_the_config_says_nothing() {
    let s = Stage::new("egress-env-proxy");
    let squid = Squid::start(s.t.path(), "envuser", "env-pw").unwrap();
    let leaf =
        s.ca.issue("upstream", &["upstream.test", "127.0.0.1"])
            .unwrap();
    let secure = Registry::start(s.t.path(), "secure", RegistryMode::Open, Some(&leaf)).unwrap();
    let app = push_image(&s, &secure, "app", "library/app:latest");
    let proxy = squid.url().replace("http://", "http://envuser:env-pw@");
    let s = s.env("HTTPS_PROXY", &proxy).env("NO_PROXY", "127.0.0.1");
    let ca = s.ca.ca_path().display().to_string();
    let upstream_ca = format!("upstream_ca = {ca:?}");
    let _gw = s.gateway(&format!(
        "{}{}",
        route(
            "docker.test",
            &format!("https://upstream.test:{}", secure.port()),
            &upstream_ca
        ),
        route("gcr.test", &secure.url(), &upstream_ca),
    ));
    let pull = |host: &str| pull_app(&s, host);
    let resp = pull("docker.test");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(sha256(&resp.body), app.manifest_digest);
    let connect = format!("CONNECT upstream.test:{} envuser", secure.port());
    assert_squid_logged(&squid, &connect);
    // NO_PROXY: the same registry by 127.0.0.1 is reached directly
    let resp = pull("gcr.test");
    assert_eq!(resp.status, 200, "{}", resp.text());
    std::thread::sleep(Duration::from_secs(3));
    let log = squid.access_log();
    assert!(
        !log.contains(&format!("127.0.0.1:{}", secure.port())),
        "a NO_PROXY request went through squid:\n{log}"
    );
}
