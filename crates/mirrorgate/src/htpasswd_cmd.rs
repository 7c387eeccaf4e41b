//! `mirrorgate htpasswd`: add, update or delete one user's bcrypt line, so operators need neither Apache's
//! `htpasswd` nor a hand-edited file.
//!
//! The file may be watched by a running gateway, which reloads it on change: a half-written file would drop
//! every user for one poll. Writes therefore go to a temporary file in the same folder, which is flushed to
//! disk and renamed over the original in one step; the original's mode (and owner, where allowed) is kept, and
//! a new file is created readable by its owner only, because the hashes inside are brute-forceable offline.
//! Lines of other users and comments stay where they were.

use std::fs;
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

/// bcrypt's own input limit: longer passwords would be silently cut, so two passwords sharing their first
/// 72 bytes would both be accepted.
const BCRYPT_MAX_PASSWORD_BYTES: usize = 72;

/// Apache's htpasswd refuses longer names too.
const MAX_USER_LEN: usize = 255;

/// Mode for a file this command creates: the hashes are secrets.
const NEW_FILE_MODE: u32 = 0o600;

/// `mirrorgate htpasswd [-f FILE] [--stdin] [--cost N] [--delete] USER`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The htpasswd file to update (created with mode 0600 if missing). Without it the line is printed.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Read the password from the first line of standard input instead of prompting on the terminal.
    #[arg(long)]
    stdin: bool,
    /// bcrypt cost (work factor, 2^N rounds). 10 is what `htpasswd -B` uses; each +1 doubles the time a
    /// login (and a brute-force guess) takes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    cost: u32,
    /// Remove the user's line from FILE instead of setting a password.
    #[arg(long, requires = "file", conflicts_with_all = ["stdin", "cost"])]
    delete: bool,
    /// The user name (no `:`, no whitespace).
    user: String,
}

/// What an update did to the file, for the message to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Updated,
    Deleted,
}

/// Runs the command; errors are printed with what to do about them.
pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate htpasswd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    validate_user(&args.user)?;
    if args.delete {
        // `requires = "file"` makes clap refuse --delete without -f.
        let Some(file) = &args.file else {
            bail!("--delete needs the file to change: add -f FILE");
        };
        update_file(file, &args.user, None)?;
        eprintln!("deleted user {} from {}", args.user, file.display());
        return Ok(());
    }
    let password = if args.stdin {
        read_password_line(io::stdin().lock())?
    } else {
        prompt_password()?
    };
    let line = hash_line(&args.user, &password, args.cost)?;
    match &args.file {
        None => {
            let mut out = io::stdout().lock();
            writeln!(out, "{line}").context("writing the line to standard output")?;
        }
        Some(file) => {
            let change = update_file(file, &args.user, Some(&line))?;
            let verb = if change == Change::Added {
                "added"
            } else {
                "updated"
            };
            eprintln!("{verb} user {} in {}", args.user, file.display());
        }
    }
    Ok(())
}

/// Refuses names the gateway could not read back or that would change the file's meaning.
pub(crate) fn validate_user(user: &str) -> Result<()> {
    if user.is_empty() {
        bail!("the user name is empty: give one, e.g. `mirrorgate htpasswd -f htpasswd alice`");
    }
    if user.contains(':') {
        bail!("the user name {user:?} contains `:`, which separates name and hash in htpasswd: choose a name without it");
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the user name {user:?} contains whitespace or control characters: choose a name without them");
    }
    if user.starts_with('#') {
        bail!("the user name {user:?} starts with `#`, which would make its line a comment: choose another name");
    }
    if user.len() > MAX_USER_LEN {
        bail!("the user name is longer than {MAX_USER_LEN} bytes: choose a shorter one");
    }
    Ok(())
}

/// Asks twice on the terminal without echo; refuses to run without one rather than read a pipe by surprise.
fn prompt_password() -> Result<String> {
    if !io::stdin().is_terminal() {
        bail!("no terminal to prompt for the password on: pipe it in with --stdin (e.g. `printf '%s\\n' \"$PASS\" | mirrorgate htpasswd --stdin ...`)");
    }
    let first = rpassword::prompt_password("New password: ")
        .context("reading the password from the terminal")?;
    let second = rpassword::prompt_password("Re-type new password: ")
        .context("reading the password from the terminal")?;
    if first != second {
        bail!("the two passwords differ: run the command again and type the same password twice");
    }
    check_password(&first)?;
    Ok(first)
}

/// The first line of `input`, without its line ending (`\n` or `\r\n`); the rest of the line is the password.
fn read_password_line(mut input: impl BufRead) -> Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if let Some(stripped) = line.strip_suffix('\n') {
        line.truncate(stripped.strip_suffix('\r').unwrap_or(stripped).len());
    }
    check_password(&line)?;
    Ok(line)
}

fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        bail!("the password is empty: give a non-empty password");
    }
    if password.len() > BCRYPT_MAX_PASSWORD_BYTES {
        bail!("the password is longer than {BCRYPT_MAX_PASSWORD_BYTES} bytes, and bcrypt ignores everything past that: use a shorter one");
    }
    Ok(())
}

/// `user:$2y$NN$...`, made by `mirrorgate-auth`, which also reads these lines: one owner of the format.
fn hash_line(user: &str, password: &str, cost: u32) -> Result<String> {
    mirrorgate_auth::hash_line(user, password, cost).with_context(|| {
        format!("hashing the password with bcrypt cost {cost} (use a cost from 4 to 31)")
    })
}

/// The user field of an htpasswd line, if the line is a user line (the gateway trims lines the same way).
fn line_user(line: &str) -> Option<&str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

/// `text` with `user`'s line replaced by `new_line` (or removed when `None`), every other line and comment
/// kept in order. A new user is appended. Later duplicate lines of the same user are dropped: the gateway
/// refuses files with duplicates, and the operator just said which password is meant.
fn update_text(text: &str, user: &str, new_line: Option<&str>) -> (String, Option<Change>) {
    let mut out = String::with_capacity(text.len() + new_line.map_or(0, str::len) + 1);
    let mut change = None;
    for line in text.lines() {
        if line_user(line) == Some(user) {
            if change.is_none() {
                if let Some(new_line) = new_line {
                    out.push_str(new_line);
                    out.push('\n');
                }
            }
            change = Some(if new_line.is_some() {
                Change::Updated
            } else {
                Change::Deleted
            });
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if change.is_none() {
        if let Some(new_line) = new_line {
            out.push_str(new_line);
            out.push('\n');
            change = Some(Change::Added);
        }
    }
    (out, change)
}

/// Applies one change to the file at `path` atomically. Deleting an unknown user or from a missing file is an
/// error, so a typo in the name does not pass silently.
fn update_file(path: &Path, user: &str, new_line: Option<&str>) -> Result<Change> {
    // Follow a symlink so the link survives and the file it names is what changes.
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
            .with_context(|| format!("resolving the symlink {}", path.display()))?,
        _ => path.to_path_buf(),
    };
    let existing = match fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading {} (check the path and its permissions)",
                    target.display()
                )
            })
        }
    };
    if new_line.is_none() && existing.is_none() {
        bail!(
            "{} does not exist, so there is no user to delete: check the path",
            target.display()
        );
    }
    let (text, change) = update_text(existing.as_deref().unwrap_or(""), user, new_line);
    let Some(change) = change else {
        bail!(
            "user {user} is not in {}: check the name (nothing was changed)",
            target.display()
        );
    };
    write_atomic(&target, text.as_bytes())?;
    Ok(change)
}

/// Temp file in the same folder (so the rename cannot cross file systems), fsync, keep mode and owner,
/// rename, fsync the folder so the rename itself is durable.
fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .with_context(|| {
            format!(
                "creating a temporary file in {} (the folder must exist and be writable)",
                dir.display()
            )
        })?;

    let existing = fs::metadata(path).ok();
    let mode = existing
        .as_ref()
        .map_or(NEW_FILE_MODE, |m| m.permissions().mode() & 0o7777);
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .context("setting the new file's mode")?;
    if let Some(meta) = &existing {
        let mine = tmp
            .as_file()
            .metadata()
            .context("reading the temporary file's owner")?;
        if (mine.uid(), mine.gid()) != (meta.uid(), meta.gid()) {
            if let Err(e) =
                std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()))
            {
                eprintln!(
                    "warning: could not keep the owner {}:{} of {} ({e}); the file now belongs to the user running this command",
                    meta.uid(),
                    meta.gid(),
                    path.display()
                );
            }
        }
    }

    tmp.write_all(contents)
        .context("writing the temporary file")?;
    tmp.as_file()
        .sync_all()
        .context("flushing the temporary file to disk")?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("replacing {}", path.display()))?;
    if let Ok(d) = fs::File::open(&dir) {
        // Best effort: some file systems refuse fsync on a folder; the data itself is already on disk.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::process::Command;
    use std::sync::Arc;

    use mirrorgate_auth::{Htpasswd, PasswordChecker, PasswordPolicy, UserStore};

    use super::*;

    /// Cost 4 keeps the tests fast; the format is the same for every cost.
    const COST: u32 = 4;

    /// Runs Debian's `htpasswd -vb`; a missing binary fails the test instead of skipping it.
    fn apache_verifies(file: &Path, user: &str, password: &str) -> bool {
        let out = Command::new("htpasswd")
            .args(["-vb"])
            .arg(file)
            .args([user, password])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run `htpasswd` (install Debian's apache2-utils): {e}")
            });
        out.status.success()
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    // Rule: the line is `$2y$` bcrypt that the bcrypt crate, the gateway's own parser and Apache all accept.
    #[tokio::test]
    async fn written_line_verifies_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        update_file(
            &file,
            "alice",
            Some(&hash_line("alice", "s3cret pass", COST).unwrap()),
        )
        .unwrap();

        let text = fs::read_to_string(&file).unwrap();
        let (user, hash) = text.trim_end().split_once(':').unwrap();
        assert_eq!(user, "alice");
        assert!(hash.starts_with("$2y$04$"), "{hash}");
        assert!(bcrypt::verify("s3cret pass", hash).unwrap());
        assert!(!bcrypt::verify("wrong", hash).unwrap());

        let parsed = Htpasswd::parse(&text).unwrap();
        assert!(parsed.contains("alice"));
        let checker = PasswordChecker::new(
            Arc::new(UserStore::from_htpasswd(parsed)),
            &PasswordPolicy::default(),
        )
        .unwrap();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        checker.check("alice", "s3cret pass", ip).await.unwrap();
        assert!(checker.check("alice", "wrong", ip).await.is_err());

        assert!(apache_verifies(&file, "alice", "s3cret pass"));
        assert!(!apache_verifies(&file, "alice", "wrong"));
    }

    // Rule: the requested cost is the one written (and Apache still verifies other costs).
    #[test]
    fn cost_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        update_file(&file, "bob", Some(&hash_line("bob", "pw", 5).unwrap())).unwrap();
        assert!(lines(&file)[0].starts_with("bob:$2y$05$"));
        assert!(apache_verifies(&file, "bob", "pw"));
    }

    // Rule: updating one user keeps every other line and comment in place, and only that user's password changes.
    #[test]
    fn update_keeps_other_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let bob = hash_line("bob", "bobpw", COST).unwrap();
        let carol = hash_line("carol", "carolpw", COST).unwrap();
        let old_alice = hash_line("alice", "old", COST).unwrap();
        fs::write(
            &file,
            format!("# team A\n{bob}\n{old_alice}\n\n# team B\n{carol}\n"),
        )
        .unwrap();

        let change = update_file(
            &file,
            "alice",
            Some(&hash_line("alice", "new", COST).unwrap()),
        )
        .unwrap();
        assert_eq!(change, Change::Updated);
        let got = lines(&file);
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], "# team A");
        assert_eq!(got[1], bob);
        assert!(got[2].starts_with("alice:$2y$"));
        assert_ne!(got[2], old_alice);
        assert_eq!(&got[3..], ["", "# team B", carol.as_str()]);
        assert!(apache_verifies(&file, "alice", "new"));
        assert!(!apache_verifies(&file, "alice", "old"));
        assert!(apache_verifies(&file, "bob", "bobpw"));
        assert!(apache_verifies(&file, "carol", "carolpw"));
        Htpasswd::parse(&fs::read_to_string(&file).unwrap()).unwrap();
    }

    // Rule: a new user is appended after the existing lines, even when the file lacks a final newline.
    #[test]
    fn new_user_is_appended() {
        let (text, change) = update_text("# c\nbob:$2y$04$x", "alice", Some("alice:h"));
        assert_eq!(change, Some(Change::Added));
        assert_eq!(text, "# c\nbob:$2y$04$x\nalice:h\n");
    }

    // Rule: a user name inside a comment or as a prefix of another name is not that user's line; duplicates go.
    #[test]
    fn only_exact_user_lines_match() {
        let text = "#alice:old\nalice2:h2\n alice:h1\nalice:dup\n";
        let (out, change) = update_text(text, "alice", Some("alice:new"));
        assert_eq!(change, Some(Change::Updated));
        assert_eq!(out, "#alice:old\nalice2:h2\nalice:new\n");
    }

    // Rule: --delete removes the user and nothing else; deleting an unknown user is an error that changes nothing.
    #[test]
    fn delete_removes_only_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let bob = hash_line("bob", "bobpw", COST).unwrap();
        let alice = hash_line("alice", "alicepw", COST).unwrap();
        fs::write(&file, format!("# users\n{alice}\n{bob}\n")).unwrap();

        assert_eq!(update_file(&file, "alice", None).unwrap(), Change::Deleted);
        assert_eq!(lines(&file), vec!["# users".to_owned(), bob.clone()]);
        assert!(!apache_verifies(&file, "alice", "alicepw"));
        assert!(apache_verifies(&file, "bob", "bobpw"));

        let before = fs::read_to_string(&file).unwrap();
        let err = update_file(&file, "mallory", None).unwrap_err();
        assert!(format!("{err:#}").contains("not in"), "{err:#}");
        assert_eq!(fs::read_to_string(&file).unwrap(), before);

        let missing = dir.path().join("nope");
        assert!(update_file(&missing, "bob", None).is_err());
        assert!(!missing.exists());
    }

    // Rule: writes are atomic: no temporary file is left behind, the mode of an existing file is kept, and a
    // new file is private (0600).
    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        update_file(
            &file,
            "alice",
            Some(&hash_line("alice", "pw", COST).unwrap()),
        )
        .unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
            0o600
        );

        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        update_file(&file, "bob", Some(&hash_line("bob", "pw", COST).unwrap())).unwrap();
        update_file(&file, "alice", None).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
            0o640
        );

        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["htpasswd".to_owned()]);
    }

    // Rule: updating through a symlink changes the file it names and keeps the link.
    #[test]
    fn symlink_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("htpasswd");
        fs::write(&real, "").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        update_file(
            &link,
            "alice",
            Some(&hash_line("alice", "pw", COST).unwrap()),
        )
        .unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(apache_verifies(&real, "alice", "pw"));
    }

    // Rule: user names that would break the file or be read back differently are refused with a hint.
    #[test]
    fn bad_user_names_are_refused() {
        for bad in ["", "a:b", "a b", "a\tb", "#alice", "a\nb"] {
            let err = validate_user(bad).unwrap_err().to_string();
            assert!(
                err.contains("choose") || err.contains("give one"),
                "{bad:?}: {err}"
            );
        }
        validate_user("alice.smith@example.com").unwrap();
        validate_user(&"x".repeat(MAX_USER_LEN + 1)).unwrap_err();
    }

    // Rule: --stdin reads exactly the first line without its line ending; empty and >72-byte passwords are refused.
    #[test]
    fn stdin_password_line() {
        assert_eq!(
            read_password_line(&b"pa ss\r\nnext\n"[..]).unwrap(),
            "pa ss"
        );
        assert_eq!(read_password_line(&b"nonewline"[..]).unwrap(), "nonewline");
        assert!(read_password_line(&b"\n"[..]).is_err());
        assert!(read_password_line(&b""[..]).is_err());
        let long = format!("{}\n", "x".repeat(BCRYPT_MAX_PASSWORD_BYTES + 1));
        assert!(read_password_line(long.as_bytes()).is_err());
        let max = format!("{}\n", "x".repeat(BCRYPT_MAX_PASSWORD_BYTES));
        assert!(read_password_line(max.as_bytes()).is_ok());
    }
}
