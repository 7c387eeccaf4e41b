//! Bearer tokens handed back by clients: `TokenVerifier::verify` must never panic and never accept anything
//! but an untouched token of ours. Inputs starting with `~` edit a real token instead (position, byte pairs),
//! so the fuzzer also explores near-valid tokens.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mirrorgate_auth::{AccessEntry, Action, TokenIssuer, TokenKey, TokenSpec, TokenVerifier};

struct Fixture {
    _dir: tempfile::TempDir,
    verifier: TokenVerifier,
    good: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = TokenSpec {
            key_path: dir.path().join("token-key.pem"),
            issuer: "mirrorgate-fuzz".into(),
            service: "registry.test".into(),
            // Long enough that the token stays valid through a long fuzzing run.
            ttl: Duration::from_secs(7 * 24 * 3600),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
        };
        let key = Arc::new(TokenKey::load_or_generate(&spec.key_path).expect("token key"));
        let issuer = TokenIssuer::new(key.clone(), spec.clone());
        let access = vec![AccessEntry {
            kind: "repository".into(),
            name: "library/alpine".into(),
            actions: vec!["pull".into()],
        }];
        let good = issuer.issue("alice", access).expect("issue").token;
        let verifier = TokenVerifier::new(key, &spec);
        Fixture {
            _dir: dir,
            verifier,
            good,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let token = match data.split_first() {
        Some((b'~', edits)) => {
            let mut bytes = f.good.clone().into_bytes();
            for pair in edits.chunks_exact(2) {
                let at = usize::from(pair[0]) * bytes.len() / 256;
                bytes[at] = pair[1];
            }
            match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => return,
            }
        }
        _ => match std::str::from_utf8(data) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
    };
    let verdict = f
        .verifier
        .verify(&token, "registry.test", "library/alpine", Action::Pull);
    if token != f.good {
        assert!(
            verdict.is_err(),
            "accepted a token that is not ours: {token}"
        );
    }
});
