//! Property tests for every parser of this crate that sees client or upstream input: request paths, names,
//! references, `WWW-Authenticate` challenges, token scopes, upstream token responses, `Location`/`Link`
//! rewrites and the manifest `Accept` merge.
//!
//! Two kinds of properties: "never panics" over arbitrary text (a panic in a parser is a request that kills a
//! worker), and structural ones over generated valid input (what the gateway writes, it must read back the same;
//! a parsed path never holds what the grammar excludes; a rewritten same-origin `Location` stays on the gateway).
//! The cargo-fuzz targets under `fuzz/` run the same parsers coverage-guided for longer.

use http::HeaderValue;
use mirrorgate_registry::{
    bearer_challenge, manifest_accept, parse_challenges, rewrite_link, rewrite_location,
    split_prefix, Action, BearerChallenge, Digest, LocationRewrite, Reference, RegistryPath,
    RepositoryName, RewriteContext, Scope, TokenResponse, MANIFEST_ACCEPT,
};
use proptest::prelude::*;
use url::Url;

const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run: `PROPTEST_CASES=100000 cargo test …`).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Generators

/// One name component of the distribution grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]{1,6}",
        proptest::collection::vec(("(\\.|_|__|-{1,3})", "[a-z0-9]{1,6}"), 0..3),
    )
        .prop_map(|(head, tail)| {
            let mut s = head;
            for (sep, run) in tail {
                s.push_str(&sep);
                s.push_str(&run);
            }
            s
        })
}

/// A valid repository name of 1–4 components, at most 255 bytes.
fn valid_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..5)
        .prop_map(|parts| parts.join("/"))
        .prop_filter("at most 255 bytes", |n| n.len() <= 255)
}

fn valid_tag() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"
}

fn valid_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")),
        "[0-9a-f]{128}".prop_map(|h| format!("sha512:{h}")),
        (
            "[a-z0-9]{1,8}([+._-][a-z0-9]{1,8})?",
            "[a-zA-Z0-9=_-]{1,40}"
        )
            .prop_filter("not a registered algorithm", |(a, _)| {
                a != "sha256" && a != "sha512"
            })
            .prop_map(|(a, e)| format!("{a}:{e}")),
    ]
}

fn valid_upload_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~=+-]{1,64}".prop_filter("not a dot segment", |id| id != "." && id != "..")
}

/// A valid `/v2/...` path in its canonical spelling (what `to_path` writes).
fn valid_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v2/".to_owned()),
        Just("/v2/_catalog".to_owned()),
        valid_name().prop_map(|n| format!("/v2/{n}/tags/list")),
        (valid_name(), valid_tag()).prop_map(|(n, t)| format!("/v2/{n}/manifests/{t}")),
        (valid_name(), valid_digest()).prop_map(|(n, d)| format!("/v2/{n}/manifests/{d}")),
        (valid_name(), valid_digest()).prop_map(|(n, d)| format!("/v2/{n}/blobs/{d}")),
        valid_name().prop_map(|n| format!("/v2/{n}/blobs/uploads/")),
        (valid_name(), valid_upload_id()).prop_map(|(n, i)| format!("/v2/{n}/blobs/uploads/{i}")),
        (valid_name(), valid_digest()).prop_map(|(n, d)| format!("/v2/{n}/referrers/{d}")),
    ]
}

/// Paths built from segments that sit near the grammar's edges: endpoint words, dot segments, encodings,
/// upper case, empty segments and arbitrary short text.
fn edgy_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2f".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("a%2Fb".to_owned()),
        Just("blobs".to_owned()),
        Just("uploads".to_owned()),
        Just("manifests".to_owned()),
        Just("tags".to_owned()),
        Just("list".to_owned()),
        Just("referrers".to_owned()),
        Just("_catalog".to_owned()),
        Just("library".to_owned()),
        Just(SHA.to_owned()),
        Just("a__b".to_owned()),
        Just("a___b".to_owned()),
        Just("a..b".to_owned()),
        Just("-a".to_owned()),
        Just("A".to_owned()),
        Just("gcr.test".to_owned()),
        component(),
        valid_tag(),
        ".{0,8}",
    ];
    (
        prop_oneof![Just("/v2/"), Just("/v2"), Just("/"), Just("")],
        proptest::collection::vec(segment, 0..8),
    )
        .prop_map(|(head, segs)| format!("{head}{}", segs.join("/")))
}

/// Text for a challenge parameter value: anything, including quotes, backslashes, controls and non-ASCII.
fn param_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        ".{0,30}",
        "[\"\\\\,= \t]{0,10}",
        Just("https://auth.docker.io/token".to_owned()),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Pull),
        Just(Action::Push),
        Just(Action::Delete),
        Just(Action::All),
        "[a-z*_]{1,8}"
            .prop_filter("not a known word", |w| {
                !matches!(w.as_str(), "pull" | "push" | "delete" | "*")
            })
            .prop_map(Action::Other),
    ]
}

/// A scope as the gateway or an upstream builds it: no whitespace or controls, no `:` in the type, no `:` or
/// `,` in action words; the name may hold `:` (`host:port/name`).
fn scope() -> impl Strategy<Value = Scope> {
    (
        "[a-z]{1,10}(\\([a-z]{1,6}\\))?",
        "[a-z0-9._/:-]{1,40}",
        proptest::collection::vec(action(), 0..4),
    )
        .prop_map(|(resource_type, name, actions)| Scope {
            resource_type,
            name,
            actions,
        })
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1e308".to_owned()),
        Just("-0.5".to_owned()),
        Just("\"300\"".to_owned()),
        Just("null".to_owned()),
    ]
}

fn rfc3339ish() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0u32..10000,
            1u32..13,
            1u32..29,
            0u32..24,
            0u32..60,
            0u32..60,
            prop_oneof![Just("Z"), Just("+14:00"), Just("-23:59")]
        )
            .prop_map(|(y, mo, d, h, mi, s, z)| format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{z}"
            )),
        ".{0,30}",
    ]
}

/// An upstream token endpoint body: the fields read by `TokenResponse::parse` with hostile values.
fn token_body() -> impl Strategy<Value = String> {
    (
        proptest::option::of(".{0,20}"),
        proptest::option::of(".{0,20}"),
        proptest::option::of(json_number()),
        proptest::option::of(rfc3339ish()),
    )
        .prop_map(|(token, access_token, expires_in, issued_at)| {
            let mut fields = Vec::new();
            if let Some(t) = token {
                fields.push(format!("\"token\":{}", serde_json::Value::String(t)));
            }
            if let Some(t) = access_token {
                fields.push(format!("\"access_token\":{}", serde_json::Value::String(t)));
            }
            if let Some(n) = expires_in {
                fields.push(format!("\"expires_in\":{n}"));
            }
            if let Some(t) = issued_at {
                fields.push(format!("\"issued_at\":{}", serde_json::Value::String(t)));
            }
            format!("{{{}}}", fields.join(","))
        })
}

fn upstream_base() -> impl Strategy<Value = Url> {
    prop_oneof![
        Just("https://registry-1.docker.io"),
        Just("https://gcr.test"),
        Just("http://127.0.0.1:5000"),
        Just("https://host.test/prefix"),
        Just("https://host.test:8443/a/b/"),
    ]
    .prop_map(|s| Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

fn gateway_url() -> impl Strategy<Value = Url> {
    prop_oneof![
        Just("https://docker.test:8443"),
        Just("https://mirror.test"),
        Just("http://127.0.0.1:18080"),
    ]
    .prop_map(|s| Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}")))
}

/// Same-origin API suffixes (after `/v2/`) with a query an upload session might carry.
fn api_suffix() -> impl Strategy<Value = String> {
    (
        valid_name(),
        prop_oneof![
            valid_upload_id().prop_map(|id| format!("blobs/uploads/{id}")),
            valid_digest().prop_map(|d| format!("blobs/{d}")),
            Just("tags/list".to_owned()),
        ],
        proptest::option::of("[A-Za-z0-9_=&.-]{0,30}"),
    )
        .prop_map(|(name, tail, query)| match query {
            Some(q) => format!("{name}/{tail}?{q}"),
            None => format!("{name}/{tail}"),
        })
}

/// The checks every successfully parsed path must pass, whatever the input was.
fn assert_path_invariants(parsed: &RegistryPath) -> Result<(), TestCaseError> {
    if let Some(name) = parsed.name() {
        let n = name.as_str();
        prop_assert!(!n.is_empty() && n.len() <= 255, "bad length: {n:?}");
        prop_assert!(!n.contains(".."), "name holds '..': {n:?}");
        prop_assert!(!n.contains('%'), "name holds '%': {n:?}");
        prop_assert!(
            n.split('/').all(|c| !c.is_empty()),
            "empty component: {n:?}"
        );
        prop_assert!(
            n.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/')),
            "byte outside the grammar: {n:?}"
        );
    }
    if let RegistryPath::Upload { id, .. } = parsed {
        prop_assert!(id != "." && id != ".." && !id.contains('%') && !id.contains('/'));
    }
    // What the gateway sends upstream reads back as the same request.
    let rebuilt = parsed.to_path();
    let again = RegistryPath::parse(&rebuilt);
    prop_assert_eq!(
        again.as_ref().ok(),
        Some(parsed),
        "{} did not re-parse",
        rebuilt
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Paths and names

proptest! {
    #![proptest_config(config(2000))]

    // Rule: `RegistryPath::parse` never panics, and whatever it accepts is grammar-clean and re-parses.
    #[test]
    fn path_parse_arbitrary_never_panics(path in ".{0,80}") {
        if let Ok(parsed) = RegistryPath::parse(&path) {
            assert_path_invariants(&parsed)?;
        }
    }

    // Rule: the same over paths built from edge-case segments (dot segments, encodings, endpoint words).
    #[test]
    fn path_parse_edgy_segments(path in edgy_path()) {
        if let Ok(parsed) = RegistryPath::parse(&path) {
            assert_path_invariants(&parsed)?;
        }
    }

    // Rule: a canonical valid path parses, and `to_path` gives back exactly the input.
    #[test]
    fn path_valid_round_trips(path in valid_path()) {
        let parsed = RegistryPath::parse(&path);
        prop_assert!(parsed.is_ok(), "{path:?} refused: {parsed:?}");
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.to_path(), path);
        assert_path_invariants(&parsed)?;
    }

    // Rule: `split_prefix` never panics; a known key yields exactly what `/v2<tail>` parses to.
    #[test]
    fn split_prefix_consistent(path in prop_oneof![edgy_path(), ".{0,60}", valid_path()
            .prop_map(|p| p.replacen("/v2/", "/v2/gcr.test/", 1))]) {
        let known = |k: &str| k == "gcr.test" || k == "library" || k == "a";
        match split_prefix(&path, known) {
            Ok(Some((key, parsed))) => {
                prop_assert!(known(key));
                let tail = &path["/v2/".len() + key.len()..];
                prop_assert_eq!(RegistryPath::parse(&format!("/v2{tail}")).ok(), Some(parsed.clone()));
                assert_path_invariants(&parsed)?;
            }
            Ok(None) => {
                let key = path.strip_prefix("/v2/").map(|r| r.split('/').next().unwrap_or(""));
                prop_assert!(key.is_none_or(|k| !known(k)), "known key ignored in {path:?}");
            }
            Err(_) => prop_assert!(path.starts_with("/v2/")),
        }
    }

    // Rule: the name, reference and digest grammars never panic and accept only what they echo back unchanged.
    #[test]
    fn names_references_digests(text in prop_oneof![".{0,300}", "[a-z0-9._/%:-]{0,40}", valid_digest(), valid_name()]) {
        if let Ok(name) = RepositoryName::parse(&text) {
            prop_assert_eq!(name.as_str(), text.as_str());
            prop_assert_eq!(name.to_string(), text.clone());
            prop_assert!(text.len() <= 255 && !text.contains("..") && !text.contains('%'));
            prop_assert_eq!(name.components(), text.split('/').count());
        }
        if let Ok(reference) = Reference::parse(&text) {
            prop_assert_eq!(reference.as_str(), text.as_str());
            match &reference {
                Reference::Tag(tag) => prop_assert!(tag.as_str().len() <= 128 && !text.contains(':')),
                Reference::Digest(_) => prop_assert!(text.contains(':')),
            }
        }
        if let Ok(digest) = Digest::parse(&text) {
            prop_assert_eq!(format!("{}:{}", digest.algorithm(), digest.encoded()), text.clone());
            prop_assert!(!digest.encoded().is_empty() && !digest.algorithm().is_empty());
            prop_assert!(text.len() <= 1024);
        }
    }

    // Rule: every generated valid name, tag and digest is accepted.
    #[test]
    fn valid_grammar_accepted(name in valid_name(), tag in valid_tag(), digest in valid_digest()) {
        prop_assert!(RepositoryName::parse(&name).is_ok(), "name {name:?}");
        prop_assert!(matches!(Reference::parse(&tag), Ok(Reference::Tag(_))), "tag {tag:?}");
        prop_assert!(matches!(Reference::parse(&digest), Ok(Reference::Digest(_))), "digest {digest:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Challenges and scopes

proptest! {
    #![proptest_config(config(2000))]

    // Rule: the challenge parser never panics on arbitrary text, nor on text made of its own grammar's pieces.
    #[test]
    fn challenges_never_panic(header in prop_oneof![
        ".{0,120}",
        "[A-Za-z =,\"\\\\\t/+~.-]{0,80}",
        proptest::collection::vec(prop_oneof![
            Just("Bearer "), Just("Basic "), Just("realm="), Just("\""), Just("\\"), Just(","), Just(" "),
            Just("=="), Just("scope=\"repository:a:pull\""), Just("abc"), Just("\t"), Just("é"), Just("\u{1}"),
        ], 0..20).prop_map(|v| v.concat()),
    ]) {
        if let Ok(challenges) = parse_challenges(&header) {
            prop_assert!(!challenges.is_empty());
            for c in &challenges {
                prop_assert!(!c.scheme.is_empty());
                prop_assert!(c.params.iter().all(|(k, _)| !k.is_empty() && *k == k.to_ascii_lowercase()));
            }
        }
        let _ = BearerChallenge::from_header(&header);
    }

    // Rule: what `bearer_challenge` writes, `BearerChallenge::from_header` reads back (controls but tab dropped).
    #[test]
    fn bearer_challenge_round_trips(
        realm in param_text(),
        service in proptest::option::of(param_text()),
        scope in proptest::option::of(param_text()),
    ) {
        let clean = |s: &str| s.chars().filter(|c| !c.is_control() || *c == '\t').collect::<String>();
        let value = bearer_challenge(&realm, service.as_deref(), scope.as_deref());
        let text = std::str::from_utf8(value.as_bytes());
        prop_assert!(text.is_ok());
        let parsed = BearerChallenge::from_header(text.unwrap());
        prop_assert_eq!(parsed.ok().flatten(), Some(BearerChallenge {
            realm: clean(&realm),
            service: service.as_deref().map(clean),
            scope: scope.as_deref().map(clean),
        }));
    }

    // Rule: a `Basic` challenge next to a `Bearer` one does not hide it, in either order.
    #[test]
    fn bearer_found_among_others(realm in "[ -~]{0,30}", basic_realm in "[ -~]{0,30}", first in any::<bool>()) {
        let bearer = bearer_challenge(&realm, Some("svc"), None);
        let basic = mirrorgate_registry::basic_challenge(&basic_realm);
        let (a, b) = if first { (&bearer, &basic) } else { (&basic, &bearer) };
        let header = format!("{}, {}", a.to_str().unwrap(), b.to_str().unwrap());
        let parsed = BearerChallenge::from_header(&header);
        prop_assert_eq!(parsed.ok().flatten().map(|c| c.realm), Some(realm));
    }

    // Rule: `Scope::parse` never panics, and a parsed scope re-parses from its `Display` unchanged.
    #[test]
    fn scope_parse_arbitrary(text in prop_oneof![".{0,60}", "[a-z:,*/.()-]{0,40}"]) {
        if let Ok(scope) = Scope::parse(&text) {
            prop_assert!(!scope.resource_type.is_empty() && !scope.name.is_empty());
            prop_assert!(!scope.resource_type.contains(':'));
            let shown = scope.to_string();
            prop_assert_eq!(Scope::parse(&shown).ok(), Some(scope));
        }
    }

    // Rule: `Scope` Display → parse is the identity for scopes the gateway or an upstream builds.
    #[test]
    fn scope_display_round_trips(scope in scope()) {
        let shown = scope.to_string();
        prop_assert_eq!(Scope::parse(&shown).ok(), Some(scope.clone()));
        prop_assert_eq!(shown.parse::<Scope>().ok(), Some(scope));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Token responses, rewrites, Accept

proptest! {
    #![proptest_config(config(1000))]

    // Rule: `TokenResponse::parse` never panics on arbitrary bytes.
    #[test]
    fn token_response_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = TokenResponse::parse(&body);
    }

    // Rule: hostile-but-well-formed token bodies (huge or odd `expires_in`, far `issued_at`) never panic, and
    // a token is returned exactly when `token` or `access_token` is a non-empty string.
    #[test]
    fn token_response_hostile_fields(body in token_body()) {
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let has_token = ["token", "access_token"]
            .iter()
            .any(|k| json.get(*k).and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty()));
        let parsed = TokenResponse::parse(body.as_bytes());
        if !has_token {
            prop_assert!(parsed.is_err());
        }
        if let Ok(token) = parsed {
            prop_assert!(has_token);
            prop_assert!(token.expires_at >= token.received_at);
        }
    }

    // Rule: `rewrite_location` and `rewrite_link` never panic on arbitrary header text.
    #[test]
    fn rewrites_never_panic(
        text in prop_oneof![".{0,80}", "[</>;,\"a-z:.?=#@%\\\\ ]{0,60}"],
        base in upstream_base(),
        gateway in gateway_url(),
        prefix in proptest::option::of(Just("gcr.test")),
    ) {
        let request_url = base.join("v2/library/alpine/blobs/uploads/").unwrap();
        let ctx = RewriteContext {
            upstream_base: &base,
            gateway: &gateway,
            path_prefix: prefix,
            name_map: Some(("library/alpine", "alpine")),
        };
        if let Ok(LocationRewrite::Local(local)) = rewrite_location(&text, &request_url, &ctx) {
            prop_assert!(local.starts_with(&gateway.origin().ascii_serialization()));
        }
        let _ = rewrite_link(&text, &request_url, &ctx);
    }

    // Rule: a same-origin upstream API `Location`, absolute or relative, is mapped onto the gateway's origin
    // and into the client's namespace, query kept.
    #[test]
    fn same_origin_location_stays_on_gateway(
        suffix in api_suffix(),
        base in upstream_base(),
        gateway in gateway_url(),
        prefix in proptest::option::of(Just("gcr.test")),
        absolute in any::<bool>(),
    ) {
        let base_path = base.path().trim_end_matches('/');
        let path = format!("{base_path}/v2/{suffix}");
        let location = if absolute {
            format!("{}{path}", base.origin().ascii_serialization())
        } else {
            path
        };
        let request_url = base.join("v2/x/blobs/uploads/").unwrap();
        let ctx = RewriteContext { upstream_base: &base, gateway: &gateway, path_prefix: prefix, name_map: None };
        let rewritten = rewrite_location(&location, &request_url, &ctx);
        let origin = gateway.origin().ascii_serialization();
        let expected = match prefix {
            Some(p) => format!("{origin}/v2/{p}/{suffix}"),
            None => format!("{origin}/v2/{suffix}"),
        };
        prop_assert_eq!(rewritten.ok(), Some(LocationRewrite::Local(expected.clone())));
        let parsed = Url::parse(&expected).unwrap();
        prop_assert_eq!(parsed.origin(), gateway.origin());
    }

    // Rule: a same-origin absolute `Link` becomes an absolute gateway URL, its parameters untouched.
    #[test]
    fn same_origin_link_stays_on_gateway(suffix in api_suffix(), base in upstream_base(), gateway in gateway_url()) {
        let base_path = base.path().trim_end_matches('/');
        let uri = format!("{}{base_path}/v2/{suffix}", base.origin().ascii_serialization());
        let request_url = base.join("v2/x/tags/list").unwrap();
        let ctx = RewriteContext { upstream_base: &base, gateway: &gateway, path_prefix: None, name_map: None };
        let out = rewrite_link(&format!("<{uri}>; rel=\"next\""), &request_url, &ctx);
        let origin = gateway.origin().ascii_serialization();
        prop_assert_eq!(out.ok(), Some(format!("<{origin}/v2/{suffix}>; rel=\"next\"")));
    }

    // Rule: `manifest_accept` never panics and always offers every manifest type, whatever the client sent.
    #[test]
    fn manifest_accept_always_complete(values in proptest::collection::vec(
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            "[a-z/+.;=\", *-]{0,80}".prop_map(String::into_bytes),
        ], 0..4)) {
        let headers: Vec<HeaderValue> = values
            .iter()
            .filter_map(|v| HeaderValue::from_bytes(v).ok())
            .collect();
        let accept = manifest_accept(headers.iter());
        // A client's UTF-8 obs-text is carried over on purpose, so the value is read as bytes, not `to_str`.
        let lower = String::from_utf8_lossy(accept.as_bytes()).to_ascii_lowercase();
        for media_type in MANIFEST_ACCEPT {
            prop_assert!(lower.contains(media_type), "{media_type} missing from {lower}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Regressions found by the properties above (each holds the smallest input that failed).

// Rule: a huge `expires_in` saturates instead of overflowing `Instant + Duration`.
#[test]
fn regression_token_response_huge_expires_in() {
    for body in [
        r#"{"token":"t","expires_in":18446744073709551615}"#,
        r#"{"token":"t","expires_in":1e300}"#,
    ] {
        let token = TokenResponse::parse(body.as_bytes());
        assert!(token.is_ok(), "{body}");
    }
}
