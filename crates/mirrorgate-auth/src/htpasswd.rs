//! htpasswd files with bcrypt lines only, and the live user set that is reloaded when the file changes.
//!
//! Only bcrypt (`$2y$`, `$2b$`, `$2a$`, as `htpasswd -B` writes) is accepted: the other schemes Apache
//! still reads (`$apr1$`, `{SHA}`, DES crypt, plain text) are fast to brute-force, and a gateway in front of
//! the internet should refuse them loudly at start rather than accept them quietly.
//!
//! The watcher polls instead of using inotify: Kubernetes Secret mounts replace a symlink to a new
//! directory, which inotify watches on the old file never see.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::{AuthError, HtpasswdErrors, HtpasswdLineError, HtpasswdProblem};

/// The bcrypt cost assumed for the dummy hash when there are no users to copy it from.
const DEFAULT_COST: u32 = 10;

/// A syntactically valid bcrypt salt+hash (53 characters). Unknown users are checked against it so
/// that "no such user" costs as much time as "wrong password".
const DUMMY_BODY: &str = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

/// One user's bcrypt hash. Debug output hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct UserHash {
    pub(crate) hash: String,
    pub(crate) cost: u32,
}

impl fmt::Debug for UserHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserHash")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// A parsed htpasswd file: user → bcrypt hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Htpasswd {
    users: HashMap<String, UserHash>,
}

impl Htpasswd {
    /// Parses htpasswd text. Blank lines and `#` comments are skipped; every refused line is reported.
    pub fn parse(text: &str) -> Result<Self, HtpasswdErrors> {
        let mut users: HashMap<String, UserHash> = HashMap::new();
        let mut first_seen: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                errors.push(HtpasswdLineError {
                    line: line_no,
                    user: None,
                    problem: HtpasswdProblem::NoSeparator,
                });
                continue;
            };
            let err = |problem| HtpasswdLineError {
                line: line_no,
                user: Some(user.to_owned()),
                problem,
            };
            if user.is_empty() {
                errors.push(HtpasswdLineError {
                    line: line_no,
                    user: None,
                    problem: HtpasswdProblem::EmptyUser,
                });
                continue;
            }
            if let Some(&first_line) = first_seen.get(user) {
                errors.push(err(HtpasswdProblem::Duplicate { first_line }));
                continue;
            }
            first_seen.insert(user.to_owned(), line_no);
            match parse_bcrypt(hash) {
                Ok(cost) => {
                    users.insert(
                        user.to_owned(),
                        UserHash {
                            hash: hash.to_owned(),
                            cost,
                        },
                    );
                }
                Err(problem) => errors.push(err(problem)),
            }
        }
        if errors.is_empty() {
            Ok(Htpasswd { users })
        } else {
            Err(HtpasswdErrors(errors))
        }
    }

    /// Reads and parses an htpasswd file; a broken file yields all its problems at once.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            what: "reading htpasswd file",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|errors| AuthError::Htpasswd {
            path: path.to_owned(),
            errors,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// True when `user` has a line.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// User names, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, user: &str) -> Option<&UserHash> {
        self.users.get(user)
    }

    /// The most common cost among the users (ties: the higher), used for the dummy hash.
    fn typical_cost(&self) -> u32 {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for h in self.users.values() {
            *counts.entry(h.cost).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(cost, n)| (n, cost))
            .map(|(cost, _)| cost)
            .unwrap_or(DEFAULT_COST)
    }
}

/// One htpasswd line, `user:$2y$NN$...`: the form `htpasswd -B` writes, which this module (and every
/// other htpasswd reader) accepts. The one place lines are made, so the writer (`mirrorgate htpasswd`) and
/// the reader here cannot drift apart. bcrypt reads at most 72 bytes; a longer password is refused rather
/// than silently cut. The caller checks the user name (no `:`, no whitespace); the cost must be 4..=31.
pub fn hash_line(user: &str, password: &str, cost: u32) -> Result<String, AuthError> {
    let parts = bcrypt::non_truncating_hash_with_result(password, cost).map_err(AuthError::Hash)?;
    Ok(format!(
        "{user}:{}",
        parts.format_for_version(bcrypt::Version::TwoY)
    ))
}

/// Checks a bcrypt hash's shape and returns its cost; anything else is named for the error message.
fn parse_bcrypt(hash: &str) -> Result<u32, HtpasswdProblem> {
    let rest = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p));
    let Some(rest) = rest else {
        return Err(HtpasswdProblem::UnsupportedScheme(scheme_name(hash)));
    };
    let Some((cost, body)) = rest.split_once('$') else {
        return Err(HtpasswdProblem::MalformedBcrypt("no cost field"));
    };
    let cost: u32 = match cost.parse() {
        Ok(c) if cost.len() == 2 && (4..=31).contains(&c) => c,
        _ => {
            return Err(HtpasswdProblem::MalformedBcrypt(
                "cost must be two digits, 04 to 31",
            ))
        }
    };
    let alphabet_ok = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if body.len() != 53 || !alphabet_ok {
        return Err(HtpasswdProblem::MalformedBcrypt(
            "salt and hash must be 53 bcrypt-base64 characters",
        ));
    }
    Ok(cost)
}

/// Names a non-bcrypt scheme for the error message, without quoting the hash.
fn scheme_name(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "$apr1$ MD5"
    } else if hash.starts_with("{SHA}") {
        "{SHA} SHA-1"
    } else if hash.starts_with("$2x$") {
        "$2x$ legacy bcrypt"
    } else if hash.starts_with("$1$") {
        "$1$ MD5-crypt"
    } else if hash.starts_with("$5$") {
        "$5$ SHA-256-crypt"
    } else if hash.starts_with("$6$") {
        "$6$ SHA-512-crypt"
    } else if hash.starts_with('$') {
        "unknown $-scheme"
    } else if hash.len() == 13
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
    {
        "DES crypt"
    } else {
        "plain text or unknown"
    }
}

/// One loaded generation of users.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) users: Htpasswd,
    /// Bumped on every successful reload that changed the file; the credential cache keys on it.
    pub(crate) generation: u64,
    /// A bcrypt hash at the users' typical cost that no password matches in practice.
    pub(crate) dummy_hash: String,
    content_hash: [u8; 32],
}

/// The current users, swapped atomically on reload so readers never wait.
#[derive(Debug)]
pub struct UserStore {
    path: Option<PathBuf>,
    current: ArcSwap<Snapshot>,
}

impl UserStore {
    /// Loads the users from `path`. A missing or broken file is an error here: at start-up the operator
    /// must fix it.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let bytes = read(&path)?;
        let users = parse_bytes(&path, &bytes)?;
        Ok(UserStore {
            current: ArcSwap::from_pointee(snapshot(users, 0, digest(&bytes))),
            path: Some(path),
        })
    }

    /// A fixed user set with no file behind it (reload is a no-op).
    pub fn from_htpasswd(users: Htpasswd) -> Self {
        UserStore {
            current: ArcSwap::from_pointee(snapshot(users, 0, [0; 32])),
            path: None,
        }
    }

    /// The file this store reloads from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads from the file. Returns `Ok(true)` when the users changed. An unreadable or broken file
    /// keeps the current users and returns the error for the caller to log.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = read(path)?;
        self.apply(path, &bytes)
    }

    fn apply(&self, path: &Path, bytes: &[u8]) -> Result<bool, AuthError> {
        let hash = digest(bytes);
        let current = self.current.load();
        if current.content_hash == hash {
            return Ok(false);
        }
        let users = parse_bytes(path, bytes)?;
        let next = snapshot(users, current.generation + 1, hash);
        tracing::info!(path = %path.display(), users = next.users.len(), generation = next.generation, "htpasswd reloaded");
        self.current.store(Arc::new(next));
        Ok(true)
    }

    /// The generation of the current users; changes on every effective reload.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// True when `user` currently exists.
    pub fn contains(&self, user: &str) -> bool {
        self.current.load().users.contains(user)
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Polls the file every `interval` and reloads when its content changes, until `cancel` fires.
    /// The content hash is compared on every poll (the files are small), so a same-size rewrite within
    /// one mtime tick and a Kubernetes symlink swap are both seen. Failures are logged once per broken
    /// version and the old users stay in force.
    pub async fn watch(&self, interval: Duration, cancel: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        crate::file_watch::poll(&path, "htpasswd", interval, cancel, false, |bytes| {
            self.apply(&path, bytes)
        })
        .await;
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Io {
        what: "reading htpasswd file",
        path: path.to_owned(),
        source,
    })
}

fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Htpasswd, AuthError> {
    let text = std::str::from_utf8(bytes).map_err(|e| AuthError::Io {
        what: "reading htpasswd file (not UTF-8)",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Htpasswd::parse(text).map_err(|errors| AuthError::Htpasswd {
        path: path.to_owned(),
        errors,
    })
}

fn snapshot(users: Htpasswd, generation: u64, content_hash: [u8; 32]) -> Snapshot {
    let dummy_hash = format!("$2b${:02}${DUMMY_BODY}", users.typical_cost());
    Snapshot {
        users,
        generation,
        dummy_hash,
        content_hash,
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice:$2y$05$Kc4f0aP0R7mbxwqNQpX2fOzH0oE5m0jQ5I6CsnnqhmFQ3Hc9p0Q1a";

    // Pins issue 15: the lines this crate makes are `$2y$` at the asked cost and parse back here; a
    // password past bcrypt's 72 bytes and a cost out of range are refused, never cut or clamped.
    #[test]
    fn hash_line_round_trips() {
        let line = hash_line("alice", "s3cret", 4).unwrap();
        assert!(line.starts_with("alice:$2y$04$"), "{line}");
        let h = Htpasswd::parse(&line).unwrap();
        let hash = &h.get("alice").unwrap().hash;
        assert!(bcrypt::verify("s3cret", hash).unwrap());
        assert!(matches!(
            hash_line("a", &"x".repeat(73), 4),
            Err(AuthError::Hash(_))
        ));
        assert!(matches!(hash_line("a", "p", 3), Err(AuthError::Hash(_))));
    }

    // Rule: all three bcrypt prefixes are accepted, with comments, blank lines and CRLF endings.
    #[test]
    fn parses_bcrypt_lines_comments_and_blanks() {
        let body = &ALICE["alice:$2y$05$".len()..];
        let text = format!("# users\n\n{ALICE}\r\nbob:$2b$10${body}\ncarol:$2a$04${body}\n   \n");
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("bob").unwrap().cost, 10);
        assert_eq!(h.get("carol").unwrap().cost, 4);
    }

    // Rule: every non-bcrypt scheme is refused with line number, user and scheme, and all errors are returned.
    #[test]
    fn refuses_other_schemes_and_reports_all_lines() {
        let text = format!(
            "{ALICE}\n# c\nbob:$apr1$abc$def\ncarol:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ndave:plainpass\nerin:abcdefghijklm\nnocolon\nfrank:$2y$03$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nalice:$2y$05$x\n"
        );
        let errs = Htpasswd::parse(&text).unwrap_err().0;
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            errs[0].problem,
            HtpasswdProblem::UnsupportedScheme("$apr1$ MD5")
        );
        assert_eq!(errs[0].to_string(), "line 3: user 'bob' uses an unsupported hash scheme ($apr1$ MD5); only bcrypt is accepted: run `htpasswd -B`");
        assert_eq!(
            errs[1].problem,
            HtpasswdProblem::UnsupportedScheme("{SHA} SHA-1")
        );
        assert_eq!(
            errs[2].problem,
            HtpasswdProblem::UnsupportedScheme("plain text or unknown")
        );
        assert_eq!(
            errs[3].problem,
            HtpasswdProblem::UnsupportedScheme("DES crypt")
        );
        assert_eq!(errs[4].problem, HtpasswdProblem::NoSeparator);
        assert!(matches!(
            errs[5].problem,
            HtpasswdProblem::MalformedBcrypt(_)
        ));
        assert_eq!(
            errs[6].problem,
            HtpasswdProblem::Duplicate { first_line: 1 }
        );
        // The message never quotes a hash.
        let all = HtpasswdErrors(errs).to_string();
        assert!(!all.contains("W6ph5") && !all.contains("plainpass") && !all.contains("$def"));
    }

    // Rule: load() reports the path and every problem; a missing file is an I/O error.
    #[test]
    fn load_reports_path_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, "a:$apr1$x$y\nb:{SHA}x\n").unwrap();
        let e = Htpasswd::load(&p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("htpasswd") && msg.contains("2 problems") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(matches!(
            Htpasswd::load(&dir.path().join("missing")),
            Err(AuthError::Io { .. })
        ));
    }

    // Rule: reload swaps users and bumps the generation; a broken file keeps the old users.
    #[test]
    fn reload_swaps_or_keeps_old_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("htpasswd");
        std::fs::write(&p, format!("{ALICE}\n")).unwrap();
        let store = UserStore::load(&p).unwrap();
        assert!(store.contains("alice"));
        assert!(!store.reload().unwrap(), "unchanged file is not a reload");
        assert_eq!(store.generation(), 0);

        std::fs::write(&p, ALICE.replace("alice", "bob")).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(store.generation(), 1);
        assert!(store.contains("bob") && !store.contains("alice"));

        std::fs::write(&p, "bob:$apr1$x$y\n").unwrap();
        assert!(matches!(store.reload(), Err(AuthError::Htpasswd { .. })));
        assert!(store.contains("bob"));
        assert_eq!(store.generation(), 1);

        std::fs::remove_file(&p).unwrap();
        assert!(matches!(store.reload(), Err(AuthError::Io { .. })));
        assert!(store.contains("bob"));
    }

    // Rule: the watcher picks up a Kubernetes-style symlink swap without inotify.
    #[tokio::test]
    async fn watcher_follows_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("v1");
        let v2 = dir.path().join("v2");
        std::fs::write(&v1, format!("{ALICE}\n")).unwrap();
        std::fs::write(&v2, ALICE.replace("alice", "bob")).unwrap();
        let link = dir.path().join("htpasswd");
        std::os::unix::fs::symlink(&v1, &link).unwrap();
        let store = Arc::new(UserStore::load(&link).unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let store = store.clone();
            let cancel = cancel.clone();
            async move { store.watch(Duration::from_millis(20), cancel).await }
        });
        let tmp = dir.path().join("htpasswd.new");
        std::os::unix::fs::symlink(&v2, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        let mut seen = false;
        for _ in 0..100 {
            if store.contains("bob") {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert!(seen, "watcher did not reload after the symlink swap");
        assert!(!store.contains("alice"));
    }

    // Rule: the dummy hash follows the users' typical cost so unknown users cost the same time.
    #[test]
    fn dummy_hash_uses_typical_cost() {
        let body = &ALICE["alice:$2y$05$".len()..];
        let h = Htpasswd::parse(&format!(
            "a:$2y$07${body}\nb:$2y$07${body}\nc:$2y$12${body}\n"
        ))
        .unwrap();
        assert!(snapshot(h, 0, [0; 32]).dummy_hash.starts_with("$2b$07$"));
        assert!(snapshot(Htpasswd::default(), 0, [0; 32])
            .dummy_hash
            .starts_with("$2b$10$"));
    }
}
