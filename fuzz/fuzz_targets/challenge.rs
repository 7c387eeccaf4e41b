//! `WWW-Authenticate` from upstreams: `parse_challenges` and `BearerChallenge::from_header` must never panic,
//! and a parsed Bearer challenge must survive being written back and re-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::{parse_challenges, BearerChallenge};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(challenges) = parse_challenges(header) {
        assert!(!challenges.is_empty());
        assert!(challenges.iter().all(|c| !c.scheme.is_empty()));
    }
    if let Ok(Some(bearer)) = BearerChallenge::from_header(header) {
        let written = bearer.to_header_value();
        let text = std::str::from_utf8(written.as_bytes()).expect("written challenge is UTF-8");
        let again = BearerChallenge::from_header(text).expect("written challenge parses");
        let clean = |s: &str| {
            s.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        };
        let expected = BearerChallenge {
            realm: clean(&bearer.realm),
            service: bearer.service.as_deref().map(clean),
            scope: bearer.scope.as_deref().map(clean),
        };
        assert_eq!(again, Some(expected));
    }
});
