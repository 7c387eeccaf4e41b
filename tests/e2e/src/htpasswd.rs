//! htpasswd files made by Apache's own `htpasswd -B` (apache2-utils), the tool operators use, so the gateway
//! is tested against the `$2y$` bcrypt lines it will meet rather than hashes the test made itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use base64::Engine;

use crate::env::require;

/// An htpasswd file the test edits while the gateway watches it. Every change rewrites the whole file
/// through a temp file and a rename, so the watcher never reads half a line.
pub struct Htpasswd {
    path: PathBuf,
    /// `(user, line)` in file order.
    lines: Vec<(String, String)>,
}

impl Htpasswd {
    /// Writes `path` with one bcrypt line per `(user, password, cost)`.
    pub fn create(path: &Path, users: &[(&str, &str, u32)]) -> anyhow::Result<Self> {
        require("htpasswd", "apache2-utils");
        let mut file = Self {
            path: path.to_path_buf(),
            lines: Vec::new(),
        };
        for (user, password, cost) in users {
            file.lines
                .push((user.to_string(), bcrypt_line(user, password, *cost)?));
        }
        file.write()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds (or replaces) `user`.
    pub fn add(&mut self, user: &str, password: &str, cost: u32) -> anyhow::Result<()> {
        let line = bcrypt_line(user, password, cost)?;
        self.lines.retain(|(u, _)| u != user);
        self.lines.push((user.to_string(), line));
        self.write()
    }

    /// Removes `user`; fails if it was not there (a scenario bug).
    pub fn remove(&mut self, user: &str) -> anyhow::Result<()> {
        let before = self.lines.len();
        self.lines.retain(|(u, _)| u != user);
        if self.lines.len() == before {
            bail!("{user} is not in {}", self.path.display());
        }
        self.write()
    }

    fn write(&self) -> anyhow::Result<()> {
        let text: String = self.lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming onto {}", self.path.display()))
    }
}

/// `htpasswd -nbB -C <cost> user password`: one `user:$2y$…` line.
pub fn bcrypt_line(user: &str, password: &str, cost: u32) -> anyhow::Result<String> {
    let out = Command::new("htpasswd")
        .args(["-nbB", "-C", &cost.to_string(), user, password])
        .output()
        .context("running htpasswd")?;
    if !out.status.success() {
        bail!(
            "htpasswd -nbB failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !line.starts_with(&format!("{user}:$2y$")) {
        bail!("htpasswd made an unexpected line for {user}");
    }
    Ok(line)
}

/// The `Authorization` value for Basic `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines are real `$2y$` bcrypt at the asked cost, and edits keep the other users.
    #[test]
    fn add_and_remove_keep_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let mut f = Htpasswd::create(&path, &[("alice", "pw", 5)]).unwrap();
        f.add("bob", "pw2", 10).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("alice:$2y$05$"), "{text}");
        assert!(text.contains("bob:$2y$10$"), "{text}");
        f.remove("alice").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("alice:"), "{text}");
        assert!(f.remove("alice").is_err());
    }

    // The Basic header is standard base64 of user:password.
    #[test]
    fn basic_header_shape() {
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
    }
}
