//! Turns a byte offset in the config text into `line`, `column` and a dotted key path.
//!
//! The `toml` crate reports spans but not key paths, and our own validation knows spans through
//! `toml::Spanned`. Walking the text backwards to the nearest table header is enough to name the key the way an
//! operator reads the file (`route[2].upstream`), without a second TOML parser.

use std::path::Path;

use crate::error::ConfigError;

/// The config text with what is needed to point into it.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column of a byte offset (clamped into the text).
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// The table path in force at `offset` (`server`, `route[2]`, `tls.acme`), from the nearest header above it.
    fn table_at(&self, offset: usize) -> String {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let mut current = String::new();
        let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut pos = 0usize;
        for line in self.text.split_inclusive('\n') {
            if pos > offset {
                break;
            }
            let t = line.trim();
            if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
                let name = name.trim().to_string();
                let n = counts.entry(name.clone()).or_insert(0);
                *n += 1;
                current = format!("{name}[{n}]");
            } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
                let name = name.trim();
                // A sub-table of an array of tables (`[tls.acme]` is plain, `[route.x]` would belong to the last route).
                current = match name.split_once('.') {
                    Some((head, tail)) if counts.contains_key(head) => {
                        format!("{head}[{}].{tail}", counts[head])
                    }
                    _ => name.to_string(),
                };
            }
            pos += line.len();
        }
        current
    }

    /// The bare key written on the line of `offset` (`upstream` in `upstream = "…"`), if any.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let line = &self.text[start..end];
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_string())
    }

    /// An error at `offset` whose key is derived from the text there.
    pub(crate) fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let key = match (self.table_at(offset), self.key_on_line(offset)) {
            (t, Some(k)) if t.is_empty() => k,
            (t, Some(k)) => format!("{t}.{k}"),
            (t, None) => t,
        };
        self.error_with_key(offset, key, message)
    }

    /// An error at `offset` naming `key` explicitly (validation knows the key it checks).
    pub(crate) fn error_with_key(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(offset);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nhttps = \"x\"\n\n[[route]]\nhost = \"a\"\n\n[[route]]\nhost = \"b\"\nupstream = 1\n[tls.acme]\ncontact = []\n";

    // Pins how keys are named in errors: array-of-tables entries are numbered from 1, as an operator counts them.
    #[test]
    fn names_keys_inside_arrays_of_tables() {
        let src = Source {
            file: Path::new("c.toml"),
            text: TEXT,
        };
        let at = TEXT.find("upstream").unwrap();
        let e = src.error_at(at, "bad");
        assert_eq!(
            (e.line, e.column, e.key.as_str()),
            (9, 1, "route[2].upstream")
        );
        let at = TEXT.find("contact").unwrap();
        assert_eq!(src.error_at(at, "bad").key, "tls.acme.contact");
        let at = TEXT.find("https").unwrap();
        assert_eq!(src.error_at(at, "bad").key, "server.https");
    }

    // Pins that hostile offsets (past the end, inside a multi-byte char) never panic.
    #[test]
    fn offsets_are_clamped() {
        let text = "a = \"é\"";
        let src = Source {
            file: Path::new("c.toml"),
            text,
        };
        for i in 0..20 {
            let _ = src.error_at(i, "x");
        }
    }
}
