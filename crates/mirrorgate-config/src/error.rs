//! Config errors that point at the exact place to fix: `file:line:column: key: message`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file the problem is in.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file (unreadable, missing section).
    pub line: usize,
    /// 1-based column; 0 with `line == 0`.
    pub column: usize,
    /// Dotted key path, `route[2].upstream` style; empty for file-level problems.
    pub key: String,
    /// What is wrong and, where we can tell, what to do.
    pub message: String,
}

impl ConfigError {
    /// A problem that concerns the whole file rather than one key.
    pub fn file_level(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match (self.line, self.key.is_empty()) {
            (0, true) => write!(f, "{file}: {}", self.message),
            (0, false) => write!(f, "{file}: {}: {}", self.key, self.message),
            (line, true) => write!(f, "{file}:{line}:{}: {}", self.column, self.message),
            (line, false) => write!(
                f,
                "{file}:{line}:{}: {}: {}",
                self.column, self.key, self.message
            ),
        }
    }
}

/// Every problem found in one pass, so an operator fixes them all at once instead of one per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }

    /// The problems, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the error format that `mirrorgate check`, the README and the e2e tests rely on.
    #[test]
    fn display_names_file_line_and_key() {
        let e = ConfigError {
            file: "/etc/mg.toml".into(),
            line: 7,
            column: 1,
            key: "route[1].upstream".into(),
            message: "not a URL".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/mg.toml:7:1: route[1].upstream: not a URL"
        );
        let f = ConfigError::file_level(Path::new("x.toml"), "cannot read");
        assert_eq!(f.to_string(), "x.toml: cannot read");
    }
}
