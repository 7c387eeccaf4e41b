//! The name, reference and digest grammars: never panic, and accept only what they echo back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_registry::{Digest, Reference, RepositoryName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = RepositoryName::parse(text) {
        assert_eq!(name.as_str(), text);
        assert!(text.len() <= 255 && !text.contains("..") && !text.contains('%'));
    }
    if let Ok(reference) = Reference::parse(text) {
        assert_eq!(reference.as_str(), text);
    }
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(format!("{}:{}", digest.algorithm(), digest.encoded()), text);
    }
});
