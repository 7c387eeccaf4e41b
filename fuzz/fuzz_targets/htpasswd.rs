//! htpasswd files: `Htpasswd::parse` must never panic, and every reported problem sits on a line of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorgate_auth::Htpasswd;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    match Htpasswd::parse(text) {
        Ok(users) => assert!(users.len() <= lines),
        Err(errors) => {
            assert!(!errors.0.is_empty());
            assert!(errors.0.iter().all(|e| e.line >= 1 && e.line <= lines));
        }
    }
});
