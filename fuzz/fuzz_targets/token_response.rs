//! Upstream token endpoint bodies: `TokenResponse::parse` must never panic, whatever JSON (or not) it gets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::TokenResponse;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = TokenResponse::parse(data) {
        assert!(token.expires_at >= token.received_at);
    }
});
