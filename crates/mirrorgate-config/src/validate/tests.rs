use std::path::Path;

use super::*;

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigErrors> {
    crate::parse(&dir.join("mirrorgate.toml"), text)
}

const MINIMAL: &str = r#"
[server]
https = "127.0.0.1:8443"

[[route]]
host = "docker.test"
upstream = "http://127.0.0.1:5000"
"#;

// Pins the defaults documented in the contract.
#[test]
fn minimal_config_gets_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.server.upstream_timeout, Duration::from_secs(600));
    assert_eq!(c.server.hsts.as_deref(), Some("max-age=31536000"));
    assert!(matches!(c.tls.source, TlsSource::SelfSigned));
    assert_eq!(c.tls.storage, dir.path().join("certs"));
    assert_eq!(c.routes[0].blob_redirects, BlobRedirects::Follow);
    assert!(c.limits.redis_fail_open);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_connections, 20_000);
    assert_eq!(c.server.max_connections_per_ip, 256);
    assert!(!c.server.allow_missing_sni);
}

// Pins the connection keys of `[server]`: values reach the validated type, zero caps are refused with the key.
#[test]
fn connection_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let with = |lines: &str| MINIMAL.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1);
    let c = parse_in(
        dir.path(),
        &with("idle_timeout = \"5s\"\nmax_connections = 100\nmax_connections_per_ip = 3\nallow_missing_sni = true"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.server.max_connections, 100);
    assert_eq!(c.server.max_connections_per_ip, 3);
    assert!(c.server.allow_missing_sni);
    let e = parse_in(
        dir.path(),
        &with("max_connections_per_ip = 0\nidle_timeout = \"0s\""),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("server.max_connections_per_ip"), "{e}");
    assert!(e.contains("server.idle_timeout"), "{e}");
    assert!(parse_in(dir.path(), &with("max_connections = -1")).is_err());
}

// Pins that the full example of config.md is accepted, so the contract document stays true.
#[test]
fn contract_example_parses() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "site.pem",
        "site.key",
        "htpasswd",
        "upstream-ca.pem",
        "pebble-root.pem",
    ] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    std::env::var("PATH").unwrap();
    let text = r#"
[server]
https = "127.0.0.1:8443"
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
trusted_proxies = ["10.0.0.0/8"]
hsts = "max-age=31536000"
upstream_timeout = "600s"
idle_timeout = "60s"
max_connections = 20000
max_connections_per_ip = 256
allow_missing_sni = false

[tls]
storage = "certs"
[tls.acme]
directory = "https://acme-v02.api.letsencrypt.org/directory"
contact = ["mailto:ops@example.com"]
challenge = "tls-alpn-01"
directory_ca = "pebble-root.pem"

[auth]
htpasswd = "htpasswd"

[auth.token]
key = "token-key.pem"
issuer = "mirrorgate"
service = "mirrorgate"
ttl = "5m"

[[tenant]]
name = "acme-corp"
users = ["alice", "bob"]
cidrs = ["192.0.2.0/24"]
requests_per_second = 20
burst = 100
bytes_per_second = "50MiB"
concurrent_requests = 32
tenant_requests_per_second = 200
tenant_bytes_per_second = "500MiB"
bytes_per_day = "200GiB"
allow = ["docker.example/*", "gcr.example/google-containers/*"]

[limits]
requests_per_second = 5
burst = 20
bytes_per_second = "5MiB"
redis = "redis://127.0.0.1:6379"

[cache]
dir = "cache"
max_size = "50GiB"
min_free = "2GiB"
tag_ttl = "10m"
stale_if_error = "7d"

[[route]]
host = "docker.example"
upstream = "https://registry-1.docker.io"
endpoints = ["http://docker-cache:5000"]
anonymous = false
docker_hub_library = true
rewrite = { "^(.*)$" = "library/$1" }
blob_redirects = "follow"
upstream_username_env = "PATH"
upstream_password_env = "PATH"
upstream_ca = "upstream-ca.pem"

[[route]]
host = "mirror.example"
path_prefix = true
upstreams = { "gcr.io" = "https://gcr.io", "quay.io" = "https://quay.io" }
ns = true
cache = false
tag_ttl = "1h"
"#;
    let c = parse_in(dir.path(), text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.routes.len(), 2);
    assert_eq!(
        c.tenants[0].bytes_per_day.map(std::num::NonZeroU64::get),
        Some(200 << 30)
    );
    assert_eq!(c.routes[0].rewrite.len(), 1);
    assert!(c.routes[0]
        .upstream
        .as_ref()
        .is_some_and(|u| !u.credentials.is_empty()));
    assert_eq!(c.routes[1].upstreams.len(), 2);
    assert!(c.cache.is_some() && c.routes[0].cache && !c.routes[1].cache);
    assert!(matches!(c.tls.source, TlsSource::Acme(_)));
    assert_eq!(c.auth.token.as_ref().unwrap().ttl, Duration::from_secs(300));
}

// Pins "unknown keys are errors, and the error names file, line and key".
#[test]
fn unknown_key_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nhttps = \"127.0.0.1:1\"\n\n[[route]]\nhost = \"a.test\"\nupstreem = \"http://x\"\n";
    let e = parse_in(dir.path(), text).unwrap_err();
    let first = &e.0[0];
    assert_eq!(first.line, 6, "{e}");
    assert_eq!(first.key, "route[1].upstreem", "{e}");
    assert!(first.message.contains("unknown field"), "{e}");
    assert!(e.to_string().contains("mirrorgate.toml:6:"), "{e}");
}

// Pins that validation reports every problem at once, in file order.
#[test]
fn all_problems_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
https = "nowhere"
upstream_timeout = "soon"

[[route]]
host = "a.test"
upstream = "ftp://x"
rewrite = { "([" = "x" }

[[route]]
host = "A.test"
upstream = "http://x"
blob_redirects = "teleport"
"#;
    let e = parse_in(dir.path(), text).unwrap_err();
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.https",
            "server.upstream_timeout",
            "route[1].upstream",
            "route[1].rewrite",
            "route[2].host",
            "route[2].blob_redirects"
        ],
        "{e}"
    );
    assert!(e.iter().all(|e| e.line > 0));
}

// Pins that files named in the config must be readable and are resolved next to the config.
#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{MINIMAL}\n[tls]\ncert = \"site.pem\"\nkey = \"site.key\"\n");
    let e = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(
        e.0[0]
            .message
            .contains(&dir.path().join("site.pem").display().to_string()),
        "{e}"
    );
}

// Pins the secret sources: exactly one of inline/_env/_file, and a missing env var is an error, never empty.
#[test]
fn secrets_from_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let ok = format!("{MINIMAL}upstream_username = \"u\"\nupstream_password_file = \"pw\"\n");
    let c = parse_in(dir.path(), &ok).unwrap();
    assert_eq!(
        c.routes[0]
            .upstream
            .as_ref()
            .and_then(|u| u.credentials.first())
            .and_then(|m| m.credentials.as_ref())
            .unwrap()
            .password
            .expose(),
        "s3cret"
    );
    let missing = format!("{MINIMAL}upstream_username = \"u\"\nupstream_password_env = \"MIRRORGATE_TEST_SURELY_UNSET\"\n");
    let e = parse_in(dir.path(), &missing).unwrap_err();
    assert_eq!(e.0[0].key, "route[1].upstream_password_env");
    let both = format!("{MINIMAL}upstream_username = \"u\"\nupstream_password = \"a\"\nupstream_password_file = \"pw\"\n");
    assert!(parse_in(dir.path(), &both).is_err());
}

// Pins the open-relay guard at config level: path-prefix/ns routes must list their upstreams.
#[test]
fn prefix_routes_need_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nhttps = \"127.0.0.1:1\"\n[[route]]\nhost = \"mirror.test\"\npath_prefix = true\n";
    let e = parse_in(dir.path(), text).unwrap_err();
    assert_eq!(e.0[0].key, "route[1].upstreams", "{e}");
}

// Pins tenant rules: one tenant per user, allow patterns shaped host/repo.
#[test]
fn tenant_rules() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}\n[[tenant]]\nname = \"a\"\nusers = [\"u\"]\nallow = [\"nohost\"]\n[[tenant]]\nname = \"b\"\nusers = [\"u\"]\n"
    );
    let e = parse_in(dir.path(), &text).unwrap_err();
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["tenant[1].allow", "tenant[2].users"], "{e}");
}

// Pins issue 21 item 8: `delete:` is a known allow prefix; an unknown prefix is refused with its line and key.
#[test]
fn allow_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let ok = format!(
        "{MINIMAL}\n[[tenant]]\nname = \"a\"\nallow = [\"docker.test/*\", \"push:docker.test/t/*\", \"delete:docker.test/t/*\"]\n"
    );
    let c = parse_in(dir.path(), &ok).unwrap();
    assert_eq!(c.tenants[0].allow.len(), 3);
    let bad = format!(
        "{MINIMAL}\n[[tenant]]\nname = \"a\"\nallow = [\n  \"docker.test/*\",\n  \"remove:docker.test/t/*\",\n]\n"
    );
    let e = parse_in(dir.path(), &bad).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].key, "tenant[1].allow", "{e}");
    let line = bad[..bad.find("remove:").unwrap()].lines().count();
    assert_eq!(e.0[0].line, line, "{e}");
    assert!(e.to_string().contains("unknown prefix `remove:`"), "{e}");
}

// Pins issue 20 (deny rules): tenant and route `deny` lists take repository, tag and digest patterns; a prefix
// or an empty part is refused with its line and key.
#[test]
fn deny_rules() {
    let dir = tempfile::tempdir().unwrap();
    let ok = format!(
        "{MINIMAL}deny = [\"docker.test/*@sha256:*\"]\n[[tenant]]\nname = \"a\"\ndeny = [\"docker.test/*:latest\", \"docker.test/evil/*\"]\n"
    );
    let c = parse_in(dir.path(), &ok).unwrap();
    assert_eq!(
        c.tenants[0].deny,
        ["docker.test/*:latest", "docker.test/evil/*"]
    );
    assert_eq!(c.routes[0].deny, ["docker.test/*@sha256:*"]);
    let bad = format!(
        "{MINIMAL}deny = [\"push:docker.test/*\"]\n[[tenant]]\nname = \"a\"\ndeny = [\n  \"docker.test/x:\",\n]\n"
    );
    let e = parse_in(dir.path(), &bad).unwrap_err();
    let keys: Vec<(&str, usize)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
    let line = bad[..bad.find("docker.test/x:").unwrap()].lines().count();
    let route_line = bad[..bad.find("push:").unwrap()].lines().count();
    assert_eq!(
        keys,
        [("route[1].deny", route_line), ("tenant[1].deny", line)],
        "{e}"
    );
}

// Pins issue 20 (audit trail): `[audit] file` is a path relative to the config (or "-" for stdout), with
// defaults for rotation; unknown keys, zero sizes and rotation of stdout are refused with their key.
#[test]
fn audit_section() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.audit, None);
    let text =
        format!("{MINIMAL}\n[audit]\nfile = \"audit.jsonl\"\nmax_size = \"1MiB\"\nkeep = 3\n");
    let a = parse_in(dir.path(), &text).unwrap().audit.unwrap();
    assert_eq!(a.target, AuditTarget::File(dir.path().join("audit.jsonl")));
    assert_eq!((a.max_size, a.keep), (1024 * 1024, 3));
    let text = format!("{MINIMAL}\n[audit]\nfile = \"-\"\n");
    let a = parse_in(dir.path(), &text).unwrap().audit.unwrap();
    assert_eq!(
        (a.target, a.max_size, a.keep),
        (AuditTarget::Stdout, 100 * 1024 * 1024, 10)
    );
    for (bad, key) in [
        ("file = \"a\"\nmax_size = 0", "audit.max_size"),
        ("file = \"-\"\nmax_size = \"1MiB\"", "audit.max_size"),
        ("file = \"\"", "audit.file"),
        ("file = \"a\"\nrotate = true", "audit.rotate"),
    ] {
        let e = parse_in(dir.path(), &format!("{MINIMAL}\n[audit]\n{bad}\n")).unwrap_err();
        assert_eq!(e.0[0].key, key, "{bad}: {e}");
    }
}

// Pins issue 20 (outbound proxy): `upstream_proxy` is an http:// URL without credentials or path, its credentials
// come in pairs, `no_proxy` entries are single hosts or networks, and a route's `upstream_proxy` is "none" or a URL.
#[test]
fn outbound_proxy_keys() {
    let dir = tempfile::tempdir().unwrap();
    let with_server = |extra: &str, route_extra: &str| {
        MINIMAL.replace(
            "https = \"127.0.0.1:8443\"",
            &format!("https = \"127.0.0.1:8443\"\n{extra}"),
        ) + route_extra
    };
    let c = parse_in(dir.path(), &with_server(
        "upstream_proxy = \"http://proxy.test:3128\"\nupstream_proxy_username = \"u\"\nupstream_proxy_password = \"p\"\nno_proxy = [\"*.corp.test\", \"10.0.0.0/8\"]",
        "upstream_proxy = \"none\"\n",
    ))
    .unwrap();
    let p = c.server.upstream_proxy.unwrap();
    assert_eq!(p.url.as_str(), "http://proxy.test:3128/");
    assert_eq!(p.credentials.unwrap().username, "u");
    assert_eq!(c.server.no_proxy.unwrap(), ["*.corp.test", "10.0.0.0/8"]);
    assert_eq!(c.routes[0].upstream_proxy, RouteProxy::Direct);
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!((c.server.upstream_proxy, c.server.no_proxy), (None, None));
    assert_eq!(c.routes[0].upstream_proxy, RouteProxy::Inherit);
    for (server, route, key) in [
        (
            "upstream_proxy = \"https://proxy.test\"",
            "",
            "server.upstream_proxy",
        ),
        (
            "upstream_proxy = \"http://u:p@proxy.test\"",
            "",
            "server.upstream_proxy",
        ),
        (
            "upstream_proxy = \"http://proxy.test/x\"",
            "",
            "server.upstream_proxy",
        ),
        (
            "upstream_proxy = \"http://proxy.test\"\nupstream_proxy_username = \"u\"",
            "",
            "server.upstream_proxy_password",
        ),
        ("no_proxy = [\"a.test,b.test\"]", "", "server.no_proxy"),
        (
            "",
            "upstream_proxy = \"socks5://x\"\n",
            "route[1].upstream_proxy",
        ),
    ] {
        let e = parse_in(dir.path(), &with_server(server, route)).unwrap_err();
        assert_eq!(e.0[0].key, key, "{server} {route}: {e}");
    }
}

// Pins that a syntax error is located too.
#[test]
fn syntax_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let e = parse_in(dir.path(), "[server]\nhttps = \n").unwrap_err();
    assert_eq!(e.0[0].line, 2, "{e}");
}

// Pins that `check` reports every unknown key in one pass, with the semantic problems of the rest of the file.
#[test]
fn every_unknown_key_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[server]\nhttps = \"127.0.0.1:1\"\nhttp_port = 80\n\n[[route]]\nhost = \"a.test\"\nupstreem = \"http://x\"\nupstream = \"ftp://x\"\n";
    let e = parse_in(dir.path(), text).unwrap_err();
    let keys: Vec<(&str, usize)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        keys,
        [
            ("server.http_port", 3),
            ("route[1].upstreem", 7),
            ("route[1].upstream", 8)
        ],
        "{e}"
    );
}

// Pins that credentials belong to one upstream: the route's go to `upstream` only, an `upstreams` entry carries
// its own or none, and a broken entry is reported at its key.
#[test]
fn named_upstreams_carry_their_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[server]
https = "127.0.0.1:8443"

[[route]]
host = "mirror.test"
upstream = "https://hub.test"
upstream_username = "hub-bot"
upstream_password = "hub-secret"
path_prefix = true
upstreams = { "quay.test" = "https://quay.test", "ghcr.test" = { url = "https://ghcr.test", username = "g", password = "p" } }
"#;
    let c = parse_in(dir.path(), text).unwrap_or_else(|e| panic!("{e}"));
    let r = &c.routes[0];
    let own = r.upstream.as_ref().map(|u| &u.credentials).unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].name, "default");
    assert_eq!(
        own[0].credentials.as_ref().map(|c| c.username.as_str()),
        Some("hub-bot")
    );
    let named = |name: &str| r.upstreams.iter().find(|(n, _)| n == name).map(|(_, u)| u);
    assert!(named("quay.test").unwrap().credentials.is_empty());
    let ghcr = named("ghcr.test").unwrap();
    assert_eq!(ghcr.url.as_str(), "https://ghcr.test/");
    let ghcr_own = ghcr.credentials[0].credentials.as_ref().unwrap();
    assert_eq!(ghcr_own.password.expose(), "p");

    for (entry, key) in [
        (
            r#"{ url = "https://x.test", user = "u" }"#,
            r#"upstreams."x.test""#,
        ),
        (
            r#"{ url = "https://x.test", username = "u" }"#,
            r#"upstreams."x.test".password"#,
        ),
        (r#"{ url = "ftp://x.test" }"#, r#"upstreams."x.test".url"#),
        ("42", r#"upstreams."x.test""#),
    ] {
        let text = format!(
            "[server]\nhttps = \"127.0.0.1:8443\"\n\n[[route]]\nhost = \"m.test\"\npath_prefix = true\nupstreams = {{ \"x.test\" = {entry} }}\n"
        );
        let err = parse_in(dir.path(), &text).unwrap_err().to_string();
        assert!(err.contains(key), "{entry}: {err}");
        assert!(
            err.contains(":7:"),
            "{entry}: the error names the line: {err}"
        );
    }
}

// Pins the one zero rule for limits: 0 is refused at its file/line/key with the advice to omit the key, for
// counts and sizes, tenants and anonymous clients alike; an omitted key is "no limit".
#[test]
fn zero_limits_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}\n[limits]\nconcurrent_requests = 0\nbytes_per_second = 0\n\n[[tenant]]\nname = \"t\"\ncidrs = [\"10.0.0.0/8\"]\nrequests_per_second = 0\nbytes_per_day = \"0 GiB\"\n"
    );
    let e = parse_in(dir.path(), &text).unwrap_err();
    let found: Vec<(&str, usize)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        found,
        [
            ("limits.concurrent_requests", 10),
            ("limits.bytes_per_second", 11),
            ("tenant[1].requests_per_second", 16),
            ("tenant[1].bytes_per_day", 17),
        ],
        "{e}"
    );
    assert!(e
        .iter()
        .all(|e| e.message.contains("omit the key for no limit")));
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.limits.anonymous, AnonymousLimits::default());
}

// Pins the credential pool: members in order with their names, `anonymous` without secrets, secrets from env and
// file like the single form.
#[test]
fn upstream_credential_pool() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hub2-token"), "t2\n").unwrap();
    let text = format!(
        r#"{MINIMAL}
[[route.upstream_credentials]]
name = "hub-1"
username = "u1"
password_env = "PATH"
[[route.upstream_credentials]]
name = "hub-2"
username = "u2"
password_file = "hub2-token"
[[route.upstream_credentials]]
name = "anonymous"
"#
    );
    let c = parse_in(dir.path(), &text).unwrap_or_else(|e| panic!("{e}"));
    let pool = &c.routes[0].upstream.as_ref().unwrap().credentials;
    let names: Vec<&str> = pool.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["hub-1", "hub-2", "anonymous"]);
    assert_eq!(
        pool[1].credentials.as_ref().unwrap().password.expose(),
        "t2"
    );
    assert!(pool[2].credentials.is_none());
}

// Pins the pool's refusals, each at its key: the pool and the single form together, duplicate names, a member
// without secrets that is not `anonymous`, `anonymous` with secrets, half a pair, unknown keys.
#[test]
fn upstream_credential_pool_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let member = |body: &str| format!("[[route.upstream_credentials]]\n{body}\n");
    let cases = [
        (
            format!(
                "{MINIMAL}upstream_username = \"u\"\nupstream_password = \"p\"\n{}",
                member("name = \"a\"\nusername = \"u\"\npassword = \"p\"")
            ),
            "route[1].upstream_credentials",
        ),
        (
            format!(
                "{MINIMAL}{}{}",
                member("name = \"a\"\nusername = \"u\"\npassword = \"p\""),
                member("name = \"a\"\nusername = \"v\"\npassword = \"q\"")
            ),
            "route[1].upstream_credentials[2].name",
        ),
        (
            format!("{MINIMAL}{}", member("name = \"hub\"")),
            "route[1].upstream_credentials[1].username",
        ),
        (
            format!(
                "{MINIMAL}{}",
                member("name = \"anonymous\"\nusername = \"u\"\npassword = \"p\"")
            ),
            "route[1].upstream_credentials[1].name",
        ),
        (
            format!("{MINIMAL}{}", member("name = \"a\"\nusername = \"u\"")),
            "route[1].upstream_credentials[1].password",
        ),
        (
            format!(
                "{MINIMAL}{}",
                member("name = \"a\"\nuser = \"u\"\npassword = \"p\"")
            ),
            "route.upstream_credentials[1].user",
        ),
    ];
    for (text, key) in cases {
        let e = parse_in(dir.path(), &text).unwrap_err();
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys.first(), Some(&key), "{text}\n{e}");
        assert!(keys.len() <= 2, "{e}");
    }
}

// Pins the `[cache]` section: defaults with their reasons, sizes and durations parsed, the route switch and
// override, and a bad value reported with its key.
#[test]
fn cache_section_and_route_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert!(c.cache.is_none());
    assert!(c.routes[0].cache);

    let text = format!(
        "{MINIMAL}cache = false\ntag_ttl = \"1h\"\n\n[cache]\nmax_size = \"2GiB\"\nmin_free = 1000\ntag_ttl = \"5m\"\n"
    );
    let c = parse_in(dir.path(), &text).unwrap();
    let cache = c.cache.unwrap();
    assert_eq!(cache.dir, dir.path().join("cache"));
    assert_eq!(cache.max_size, 2 << 30);
    assert_eq!(cache.min_free, Some(1000));
    assert_eq!(cache.tag_ttl, Duration::from_secs(300));
    assert_eq!(cache.stale_if_error, Duration::from_secs(7 * 24 * 3600));
    assert!(!c.routes[0].cache);
    assert_eq!(c.routes[0].tag_ttl, Some(Duration::from_secs(3600)));

    let bad = format!("{MINIMAL}\n[cache]\nmax_size = \"lots\"\nsize = 1\n");
    let e = parse_in(dir.path(), &bad).unwrap_err().to_string();
    assert!(e.contains("unknown field `size`"), "{e}");
    let bad = format!("{MINIMAL}\n[cache]\nmax_size = \"lots\"\n");
    let e = parse_in(dir.path(), &bad).unwrap_err().to_string();
    assert!(e.contains("cache.max_size"), "{e}");
}

// Pins `[usage]`: on by default at `usage.db` under tls.storage, a relative store resolved against
// tls.storage, retention parsed and refused below a day or with an unknown key, each error with its key.
#[test]
fn usage_section() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.usage.store, dir.path().join("certs/usage.db"));
    assert_eq!(c.usage.retention, Duration::from_secs(400 * 86_400));
    let text = format!(
        "{MINIMAL}\n[tls]\nstorage = \"state\"\n\n[usage]\nstore = \"ledger/u.db\"\nretention = \"30d\"\n"
    );
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.usage.store, dir.path().join("state/ledger/u.db"));
    assert_eq!(c.usage.retention, Duration::from_secs(30 * 86_400));
    let text = format!("{MINIMAL}\n[usage]\nstore = \"/var/lib/u.db\"\n");
    assert_eq!(
        parse_in(dir.path(), &text).unwrap().usage.store,
        Path::new("/var/lib/u.db")
    );
    let text = format!("{MINIMAL}\n[usage]\nretention = \"1h\"\n");
    let e = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(e.0[0].key, "usage.retention", "{e}");
    assert!(e.0[0].message.contains("at least 1d"), "{e}");
    let text = format!("{MINIMAL}\n[usage]\nretention = \"soon\"\n");
    assert_eq!(
        parse_in(dir.path(), &text).unwrap_err().0[0].key,
        "usage.retention"
    );
    let text = format!("{MINIMAL}\n[usage]\nkeep = \"1d\"\n");
    assert_eq!(
        parse_in(dir.path(), &text).unwrap_err().0[0].key,
        "usage.keep"
    );
}

// Pins `usage.export_token`: absent by default; inline or from a file (trimmed); one source only; a short
// token is refused with its key and never echoed.
#[test]
fn usage_export_token() {
    let dir = tempfile::tempdir().unwrap();
    assert!(parse_in(dir.path(), MINIMAL)
        .unwrap()
        .usage
        .export_token
        .is_none());
    let token = "0123456789abcdef0123456789abcdef";
    let text = format!("{MINIMAL}\n[usage]\nexport_token = \"{token}\"\n");
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.usage.export_token.unwrap().expose(), token);
    std::fs::write(dir.path().join("usage-token"), format!("{token}\n")).unwrap();
    let text = format!("{MINIMAL}\n[usage]\nexport_token_file = \"usage-token\"\n");
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.usage.export_token.unwrap().expose(), token);
    let text = format!(
        "{MINIMAL}\n[usage]\nexport_token = \"{token}\"\nexport_token_file = \"usage-token\"\n"
    );
    let e = parse_in(dir.path(), &text).unwrap_err();
    assert!(e.0[0].message.contains("only one of"), "{e}");
    let text = format!("{MINIMAL}\n[usage]\nexport_token = \"short-secret\"\n");
    let e = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(e.0[0].key, "usage.export_token", "{e}");
    assert!(e.0[0].message.contains("at least 20"), "{e}");
    assert!(!e.to_string().contains("short-secret"), "{e}");
}

// Pins issue 16: `[auth] api_tokens` is a path relative to the config file that need not exist yet (the first
// `mirrorgate token create` makes it); a typo next to it is still refused with its key.
#[test]
fn api_tokens_path_resolves_relative_and_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[auth]\napi_tokens = \"robots.json\"\n"),
    )
    .unwrap();
    assert_eq!(c.auth.api_tokens, Some(dir.path().join("robots.json")));
    let e = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[auth]\napi_token = \"robots.json\"\n"),
    )
    .unwrap_err();
    assert_eq!(e.0[0].key, "auth.api_token", "{e}");
}

const LDAP: &str = r#"
[auth.ldap]
url = "ldap://127.0.0.1:3389"
starttls = true
bind_dn = "cn=svc,dc=corp,dc=test"
bind_password = "s3cret"
user_base = "ou=people,dc=corp,dc=test"

[[tenant]]
name = "dev"
ldap_groups = ["cn=dev,ou=groups,dc=corp,dc=test"]
allow = ["docker.test/*"]
"#;

// Pins `[auth.ldap]` and `ldap_groups` reaching the validated types, with the documented defaults.
#[test]
fn ldap_keys_reach_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), &format!("{MINIMAL}{LDAP}")).unwrap();
    let l = c.auth.ldap.expect("ldap");
    assert_eq!(l.url.as_str(), "ldap://127.0.0.1:3389");
    assert!(l.starttls);
    assert_eq!(l.bind_password.expose(), "s3cret");
    assert_eq!(l.user_filter, "(uid={user})");
    assert_eq!(l.group_attribute, "memberOf");
    assert!(!format!("{:?}", l.bind_password).contains("s3cret"));
    assert_eq!(
        c.tenants[0].ldap_groups,
        vec!["cn=dev,ou=groups,dc=corp,dc=test".to_string()]
    );
}

// Pins the LDAP validation errors: each names its line and key.
#[test]
fn ldap_errors_name_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "url = \"ldap://127.0.0.1:3389\"",
            "url = \"http://x\"",
            "auth.ldap.url",
        ),
        (
            "starttls = true",
            "starttls = true\nurl2 = 1",
            "auth.ldap.url2",
        ),
        (
            "bind_password = \"s3cret\"",
            "bind_password = \"s3cret\"\nuser_filter = \"(uid=alice)\"",
            "auth.ldap.user_filter",
        ),
        ("bind_password = \"s3cret\"", "", "auth.ldap.bind_password"),
        (
            "name = \"dev\"",
            "name = \"dev\"\nldap_groups = [\"developers\"]",
            "tenant[1].ldap_groups",
        ),
        (
            "url = \"ldap://127.0.0.1:3389\"",
            "url = \"ldaps://127.0.0.1:3389\"",
            "auth.ldap.url",
        ),
    ];
    for (from, to, key) in cases {
        let text = format!("{MINIMAL}{}", LDAP.replacen(from, to, 1));
        let e = parse_in(dir.path(), &text).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.line > 0 && e.key.ends_with(key) || e.message.contains(key)),
            "{key}: {e}"
        );
    }
    // One group, one tenant.
    let text = format!(
        "{MINIMAL}{LDAP}\n[[tenant]]\nname = \"ops\"\nldap_groups = [\"CN=dev, ou=groups,dc=corp,dc=test\"]\n"
    );
    let e = parse_in(dir.path(), &text).unwrap_err();
    assert!(e.iter().any(|e| e.key == "tenant[2].ldap_groups"), "{e}");
}
