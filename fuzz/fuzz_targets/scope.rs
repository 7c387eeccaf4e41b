//! Token scopes from clients and upstreams: `Scope::parse` must never panic, and a parsed scope must re-parse
//! from its `Display` unchanged. The token server (`mirrorgate_auth::Scope`) uses this same type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::Scope;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scope) = Scope::parse(text) {
        assert!(!scope.resource_type.is_empty() && !scope.name.is_empty());
        let shown = scope.to_string();
        assert_eq!(Scope::parse(&shown).ok(), Some(scope));
    }
});
