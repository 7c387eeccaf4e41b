//! Property tests for the config parser: `mirrorgate_config::parse` on arbitrary text and on random edits of
//! the shipped config (`config/mirrorgate.toml`).
//!
//! A config is operator input, not client input, but it is reloaded while serving: a panic in `parse` takes
//! the gateway down on a typo. So it must answer `Ok` or `Err`, and every error must point somewhere an
//! operator can look: a line inside the file (with a column), or the whole file.
//! The cargo-fuzz target `config` under `fuzz/` runs the same checks coverage-guided for longer.

use std::path::{Path, PathBuf};

use mirrorgate_config::{parse, ConfigErrors};
use proptest::prelude::*;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run: `PROPTEST_CASES=100000 cargo test …`).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The shipped config: parsed from its own folder so its relative `htpasswd` and `certs` paths resolve.
fn shipped() -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mirrorgate.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// The contract every refusal keeps: a non-empty message about this file, on a line of it (1-based, column
/// 1-based) or about the whole file (line 0, column 0).
fn check_errors(path: &Path, text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty(), "Err with no problem in it");
    let lines = text.split('\n').count();
    for e in errors.iter() {
        prop_assert_eq!(e.file.as_path(), path);
        prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
        if e.line == 0 {
            prop_assert_eq!(e.column, 0, "file-level error with a column: {:?}", e);
        } else {
            prop_assert!(
                e.line <= lines,
                "line {} past the end ({} lines): {:?}",
                e.line,
                lines,
                e
            );
            prop_assert!(e.column >= 1, "line without a column: {e:?}");
        }
        // The rendering `mirrorgate check` prints never panics either.
        let _ = e.to_string();
    }
    Ok(())
}

/// One edit of the config text.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite the byte at a position.
    Replace(usize, Vec<u8>),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Delete a byte range (start, length).
    Delete(usize, usize),
    /// Duplicate the line holding a position (duplicate keys and tables).
    DuplicateLine(usize),
    /// Delete the line holding a position (missing keys and sections).
    DeleteLine(usize),
    /// Cut the text at a position.
    Truncate(usize),
}

/// Text that matters to TOML and to the validators.
#[rustfmt::skip]
const FRAGMENTS: &[&str] = &[
    "[", "]", "[[", "]]", "=", ".", ",", "#", "\n", "\r\n", "\t", " ", "\"", "'", "\"\"\"", "{", "}",
    "\\", "\\u", "0", "-1", "4294967296", "1e999", "true", "nan", "inf", "é", "\u{0}", ":", "/",
    "*", "0.0.0.0:0", "[::1]:", "5MiB", "5XB", "1ms", "0s", "99999999999d", "https://", "http://[",
    "a.localhost", "tls", "acme", "route", "upstreams", "path_prefix", "_env", "_file", "(", "?",
];

/// Bytes that matter to TOML and to the validators, plus anything at all.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(FRAGMENTS).prop_map(|s| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 1..4),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), fragment()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), fragment()).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<usize>(), 1usize..20).prop_map(|(at, n)| Edit::Delete(at, n)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DeleteLine),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &mut Vec<u8>, edit: &Edit) {
    let len = text.len();
    let at = |p: usize| if len == 0 { 0 } else { p % (len + 1) };
    let line_bounds = |text: &[u8], p: usize| {
        let p = at(p).min(text.len());
        let start = text[..p]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let end = text[p..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| p + i + 1);
        (start, end)
    };
    match edit {
        Edit::Replace(p, bytes) => {
            let p = at(*p);
            let end = (p + bytes.len()).min(len);
            text.splice(p..end, bytes.iter().copied());
        }
        Edit::Insert(p, bytes) => {
            let p = at(*p);
            text.splice(p..p, bytes.iter().copied());
        }
        Edit::Delete(p, n) => {
            let p = at(*p);
            let end = (p + n).min(len);
            text.drain(p..end);
        }
        Edit::DuplicateLine(p) => {
            let (start, end) = line_bounds(text, *p);
            let line = text[start..end].to_vec();
            text.splice(end..end, line);
        }
        Edit::DeleteLine(p) => {
            let (start, end) = line_bounds(text, *p);
            text.drain(start..end);
        }
        Edit::Truncate(p) => text.truncate(at(*p)),
    }
}

// Rule: the shipped config is valid, so the mutation properties start from a known-good text.
#[test]
fn shipped_config_is_valid() {
    let (path, text) = shipped();
    let parsed = parse(&path, &text);
    assert!(
        parsed.is_ok(),
        "{}",
        parsed.err().map(|e| e.to_string()).unwrap_or_default()
    );
}

// Pins the README's first command as a caching mirror: the shipped config turns the cache on, bounded to a
// few GiB, for every route.
#[test]
fn shipped_config_caches_within_a_few_gib() {
    let (path, text) = shipped();
    let config = parse(&path, &text).unwrap();
    let cache = config.cache.expect("the shipped config has a [cache]");
    assert!(
        cache.max_size >= 1 << 30 && cache.max_size <= 8 << 30,
        "{}",
        cache.max_size
    );
    assert!(config.routes.iter().all(|r| r.cache));
}

proptest! {
    #![proptest_config(config(1000))]

    // Rule: arbitrary text is answered Ok or Err, never a panic, and every error points into the file.
    #[test]
    fn parse_arbitrary_text(text in prop_oneof![
        ".{0,200}",
        "(\\[{1,2}[a-z._]{0,10}\\]{1,2}\n|[a-z_]{1,12} ?= ?(\"[ -~]{0,20}\"|[0-9]{1,12}|true|\\[\\]|\\{\\})\n){0,10}",
    ]) {
        let path = std::env::temp_dir().join("mirrorgate-fuzz.toml");
        if let Err(errors) = parse(&path, &text) {
            check_errors(&path, &text, &errors)?;
        }
    }

    // Rule: random edits of the shipped config (bytes, lines, truncation) are answered Ok or Err, never a
    // panic, and every error points at a line of the edited text or at the whole file.
    #[test]
    fn parse_mutated_shipped_config(edits in proptest::collection::vec(edit(), 1..5)) {
        let (path, text) = shipped();
        let mut bytes = text.into_bytes();
        for e in &edits {
            apply(&mut bytes, e);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Err(errors) = parse(&path, &text) {
            check_errors(&path, &text, &errors)?;
        }
    }
}
