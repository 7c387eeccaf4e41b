//! The config file: `mirrorgate_config::parse` must answer Ok or Err, never panic, and every error must point
//! at a line of the text (with a column) or at the whole file. Seeded with the shipped config, so libFuzzer's
//! mutations start from a valid file; the path is the shipped one, so relative paths in it resolve.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/mirrorgate.toml"
    ));
    if let Err(errors) = mirrorgate_config::parse(path, text) {
        let lines = text.split('\n').count();
        assert!(!errors.0.is_empty());
        for e in errors.iter() {
            assert!(!e.message.trim().is_empty(), "{e:?}");
            if e.line == 0 {
                assert_eq!(e.column, 0, "{e:?}");
            } else {
                assert!(e.line <= lines && e.column >= 1, "{e:?}");
            }
            let _ = e.to_string();
        }
    }
});
