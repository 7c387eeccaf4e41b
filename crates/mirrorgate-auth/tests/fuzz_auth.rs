//! Property tests for every parser of this crate that sees client input: the `Authorization` header, htpasswd
//! files, `/token` queries and forms, and bearer tokens handed back to the verifier.
//!
//! "Never panics" over arbitrary input, plus round trips over generated valid input (a Basic header built from
//! any user/password reads back the same; scopes sent in a query or form arrive in order) and the security
//! property of the verifier: nothing but an untouched token of ours is accepted.
//! The cargo-fuzz targets under `fuzz/` run the same parsers coverage-guided for longer.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderValue;
use mirrorgate_auth::{
    parse_authorization, parse_basic, AccessEntry, Action, Credentials, Htpasswd, TokenIssuer,
    TokenKey, TokenRequest, TokenSpec, TokenVerifier,
};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

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

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A syntactically valid bcrypt hash (the parser checks shape, not the hash).
fn bcrypt_hash() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("$2y$"), Just("$2b$"), Just("$2a$")],
        4u32..32,
        "[A-Za-z0-9./]{53}",
    )
        .prop_map(|(prefix, cost, body)| format!("{prefix}{cost:02}${body}"))
}

/// Scope strings as clients send them, plus malformed ones.
fn scope_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ("[a-z]{1,10}", "[a-z0-9._/:-]{1,30}", "[a-z*,]{0,15}")
            .prop_map(|(t, n, a)| format!("{t}:{n}:{a}")),
        "[a-z:(),*]{0,20}",
        ".{0,20}",
    ]
}

fn token_spec(dir: &std::path::Path) -> TokenSpec {
    TokenSpec {
        key_path: dir.join("token-key.pem"),
        issuer: "mirrorgate-test".into(),
        service: "registry.test".into(),
        ttl: Duration::from_secs(300),
        refresh_ttl: Duration::from_secs(3600),
    }
}

proptest! {
    #![proptest_config(config(2000))]

    // Rule: the `Authorization` parsers never panic on any bytes a header value may hold.
    #[test]
    fn authorization_arbitrary_bytes(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        "(Basic|Bearer|basic|BEARER|Digest)?[ \t]{0,3}[A-Za-z0-9+/=:_ -]{0,60}".prop_map(String::into_bytes),
    ]) {
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let _ = parse_basic(&value);
            if let Ok(creds) = parse_authorization(&value) {
                if let Credentials::Bearer(token) = &creds {
                    prop_assert!(!token.is_empty());
                }
                // Debug output never shows the secret parts.
                let shown = format!("{creds:?}");
                match &creds {
                    Credentials::Basic { user, password } => {
                        let frame = format!("Basic {{ user: {user:?}, .. }}");
                        prop_assert!(frame.contains(password.as_str()) || !shown.contains(password.as_str()));
                    }
                    Credentials::Bearer(token) => {
                        prop_assert!("Bearer(..)".contains(token.as_str()) || !shown.contains(token.as_str()));
                    }
                }
            }
        }
    }

    // Rule: `Basic base64(user:password)` reads back as (user, password), with or without padding and in any
    // scheme case; the password may hold `:`.
    #[test]
    fn basic_round_trips(
        user in "[^:\u{0}]{0,20}",
        password in ".{0,30}",
        scheme in prop_oneof![Just("Basic"), Just("basic"), Just("BASIC")],
        padded in any::<bool>(),
    ) {
        let mut encoded = B64.encode(format!("{user}:{password}"));
        if !padded {
            encoded = encoded.trim_end_matches('=').to_owned();
        }
        let value = HeaderValue::from_str(&format!("{scheme} {encoded}")).unwrap();
        prop_assert_eq!(parse_basic(&value).ok(), Some((user.clone(), password.clone())));
        prop_assert_eq!(
            parse_authorization(&value).ok(),
            Some(Credentials::Basic { user, password })
        );
    }

    // Rule: `Bearer <token>` yields the token trimmed, in any scheme case.
    #[test]
    fn bearer_round_trips(token in "[A-Za-z0-9._~+/=-]{1,80}", scheme in prop_oneof![Just("Bearer"), Just("bearer")]) {
        let value = HeaderValue::from_str(&format!("{scheme}  {token} ")).unwrap();
        prop_assert_eq!(parse_authorization(&value).ok(), Some(Credentials::Bearer(token)));
    }

    // Rule: `Htpasswd::parse` never panics; it accepts only files whose every line is blank, a comment or a
    // unique `user:bcrypt` entry, and reports problems on lines that exist.
    #[test]
    fn htpasswd_arbitrary_text(text in prop_oneof![
        ".{0,200}",
        "([a-z:#$0-9./ \n\r]{0,30}\n){0,6}",
    ]) {
        let line_count = text.lines().count();
        match Htpasswd::parse(&text) {
            Ok(users) => prop_assert!(users.len() <= line_count),
            Err(errors) => {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert!(e.line >= 1 && e.line <= line_count, "line {} of {}", e.line, line_count);
                }
            }
        }
    }

    // Rule: generated valid files (comments, blank lines, CRLF, unique users) parse with every user present;
    // a repeated user is refused.
    #[test]
    fn htpasswd_valid_files(
        entries in proptest::collection::btree_map("[A-Za-z0-9._@-]{1,16}", bcrypt_hash(), 1..8),
        crlf in any::<bool>(),
        comment in "#[ -~]{0,20}",
        duplicate in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("{comment}{eol}{eol}");
        for (user, hash) in &entries {
            text.push_str(&format!("{user}:{hash}{eol}"));
        }
        let first = entries.iter().next().map(|(u, h)| format!("{u}:{h}{eol}")).unwrap();
        if duplicate {
            text.push_str(&first);
        }
        match Htpasswd::parse(&text) {
            Ok(users) => {
                prop_assert!(!duplicate);
                prop_assert_eq!(users.len(), entries.len());
                for user in entries.keys() {
                    prop_assert!(users.contains(user));
                }
            }
            Err(errors) => {
                prop_assert!(duplicate, "valid file refused: {errors}");
                prop_assert_eq!(errors.0.len(), 1);
            }
        }
    }

    // Rule: `/token` query and form parsers never panic on arbitrary bytes.
    #[test]
    fn token_request_arbitrary(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..150),
        "((grant_type|username|password|refresh_token|service|scope|account|offline_token|access_type|client_id)=[a-z%0-9+:,_ ]{0,15}&?){0,6}"
            .prop_map(String::into_bytes),
    ]) {
        let _ = TokenRequest::from_form(&bytes);
        let _ = TokenRequest::from_query(&String::from_utf8_lossy(&bytes));
    }

    // Rule: scopes sent as repeated `scope=` (GET) or space-separated (POST) arrive in order, encoded any way
    // the form encoder does it; a malformed one fails the whole request.
    #[test]
    fn token_request_scopes_round_trip(scopes in proptest::collection::vec(scope_text(), 0..4), user in ".{1,10}", pass in ".{0,10}") {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("service", "registry.test");
        for s in &scopes {
            query.append_pair("scope", s);
        }
        let query = query.finish();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "password");
        form.append_pair("username", &user);
        form.append_pair("password", &pass);
        form.append_pair("scope", &scopes.join(" "));
        let form = form.finish();

        let words: Vec<&str> = scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()).collect();
        let all_valid = words.iter().all(|w| mirrorgate_auth::Scope::parse(w).is_ok());
        for (parsed, service) in [
            (TokenRequest::from_query(&query), Some("registry.test")),
            (TokenRequest::from_form(form.as_bytes()), None),
        ] {
            match parsed {
                Ok(req) => {
                    prop_assert!(all_valid);
                    prop_assert_eq!(req.service.as_deref(), service);
                    let names: Vec<String> = req.scopes.iter().map(|s| s.name.clone()).collect();
                    let expected: Vec<String> = words
                        .iter()
                        .map(|w| mirrorgate_auth::Scope::parse(w).unwrap().name)
                        .collect();
                    prop_assert_eq!(names, expected);
                }
                Err(_) => prop_assert!(!all_valid),
            }
        }
    }
}

// Rule: the verifier never panics and never accepts anything but an untouched token of ours: arbitrary
// strings, JWT-shaped strings with forged headers (`alg: none`, HS256, foreign `kid`, embedded `jwk`) and
// valid tokens with one character changed are all refused, while the untouched token passes.
#[test]
fn jwt_verify_refuses_everything_forged() {
    let dir = tempfile::tempdir().unwrap();
    let spec = token_spec(dir.path());
    let key = Arc::new(TokenKey::load_or_generate(&spec.key_path).unwrap());
    let issuer = TokenIssuer::new(key.clone(), spec.clone());
    let verifier = TokenVerifier::new(key, &spec);
    let access = vec![AccessEntry {
        kind: "repository".into(),
        name: "library/alpine".into(),
        actions: vec!["pull".into()],
    }];
    let good = issuer.issue("alice", access).unwrap().token;
    let verify = |t: &str| verifier.verify(t, "registry.test", "library/alpine", Action::Pull);
    assert!(verify(&good).is_ok(), "the untouched token must verify");

    let mut runner = TestRunner::new(config(500));

    // Arbitrary text, and JWT-shaped text whose parts are base64url of anything.
    let arbitrary = prop_oneof![
        ".{0,200}",
        "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,90}",
    ];
    runner
        .run(&arbitrary, |t| {
            prop_assert!(verify(&t).is_err());
            Ok(())
        })
        .unwrap();

    // Forged headers over claims that would otherwise be accepted.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "mirrorgate-test", "sub": "alice", "aud": "registry.test",
        "exp": now + 300, "nbf": now, "iat": now, "jti": "x",
        "access": [{"type": "repository", "name": "library/alpine", "actions": ["pull"]}],
    });
    let headers = prop_oneof![
        Just(r#"{"alg":"none","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"HS256","typ":"JWT"}"#.to_owned()),
        Just(r#"{"alg":"RS256"}"#.to_owned()),
        Just(r#"{"alg":"ES256","kid":"AAAA:BBBB"}"#.to_owned()),
        Just(r#"{"alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}}"#.to_owned()),
        "\\{\"alg\":\"[A-Za-z0-9]{0,8}\"\\}",
        ".{0,40}",
    ];
    let signatures = prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{86}",
        Just(good.rsplit('.').next().unwrap_or("").to_owned()),
    ];
    let payload = B64URL.encode(claims.to_string());
    runner
        .run(&(headers, signatures), |(header, sig)| {
            let token = format!("{}.{payload}.{sig}", B64URL.encode(header));
            prop_assert!(verify(&token).is_err(), "forged token accepted: {token}");
            Ok(())
        })
        .unwrap();

    // One character of the real token replaced (the `.` separators included).
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
            .chars()
            .collect();
    let mutation = (0..good.len(), 0..alphabet.len());
    runner
        .run(&mutation, |(at, pick)| {
            let mut bytes = good.clone().into_bytes();
            let replacement = alphabet[pick] as u8;
            prop_assume!(bytes[at] != replacement);
            bytes[at] = replacement;
            let token = String::from_utf8(bytes).unwrap();
            prop_assert!(verify(&token).is_err(), "tampered token accepted: {token}");
            Ok(())
        })
        .unwrap();
}
