//! Request paths: `RegistryPath::parse` and `split_prefix` must never panic, never yield a name holding `..`,
//! `%` or an empty component, and what they accept must re-parse from `to_path` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::{split_prefix, RegistryPath};

fn check(parsed: &RegistryPath) {
    if let Some(name) = parsed.name() {
        let n = name.as_str();
        assert!(!n.is_empty() && n.len() <= 255, "{n:?}");
        assert!(!n.contains("..") && !n.contains('%'), "{n:?}");
        assert!(n.split('/').all(|c| !c.is_empty()), "{n:?}");
    }
    let rebuilt = parsed.to_path();
    assert_eq!(
        RegistryPath::parse(&rebuilt).ok().as_ref(),
        Some(parsed),
        "{rebuilt}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = RegistryPath::parse(path) {
        check(&parsed);
    }
    let known = |k: &str| k == "gcr.test" || k == "docker.io" || k == "a";
    if let Ok(Some((key, parsed))) = split_prefix(path, known) {
        assert!(known(key));
        check(&parsed);
    }
});
