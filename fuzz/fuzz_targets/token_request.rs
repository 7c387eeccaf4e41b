//! `/token` requests: `TokenRequest::from_query` (GET) and `from_form` (POST) must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_auth::TokenRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = TokenRequest::from_form(data) {
        assert!(req
            .scopes
            .iter()
            .all(|s| !s.resource_type.is_empty() && !s.name.is_empty()));
    }
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = TokenRequest::from_query(query);
    }
});
