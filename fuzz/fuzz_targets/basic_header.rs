//! The `Authorization` header (and the manifest `Accept` merge, the other client header parsed by hand):
//! `parse_basic`, `parse_authorization` and `manifest_accept` must never panic on any header value.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use mirrorgate_auth::{parse_authorization, parse_basic, Credentials};
use mirrorgate_registry::{manifest_accept, MANIFEST_ACCEPT};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let _ = parse_basic(&value);
    if let Ok(Credentials::Bearer(token)) = parse_authorization(&value) {
        assert!(!token.is_empty());
    }
    let accept = manifest_accept(std::iter::once(&value));
    let lower = String::from_utf8_lossy(accept.as_bytes()).to_ascii_lowercase();
    for media_type in MANIFEST_ACCEPT {
        assert!(lower.contains(media_type));
    }
});
