//! `mirrorgate token create|list|revoke`: API tokens (robot accounts) in the file named by `[auth] api_tokens`.
//!
//! The token is printed once, at creation; the file keeps only its SHA-256 (see `mirrorgate_auth::ApiTokens`).
//! Writes are atomic (temporary file + rename, mode 0600), so a gateway polling the file never reads half of
//! it; a revocation reaches every replica that mounts the file within its poll interval.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use mirrorgate_auth::{ApiTokenRecord, NewTokenSpec};
use mirrorgate_config::Config;

/// `mirrorgate token ...`
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Make a token and print it once (store it in your CI's secrets now: it cannot be shown again).
    Create {
        /// The config file (its `[auth] api_tokens` names the token file).
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
        /// The tenant whose rules bound the token.
        #[arg(long)]
        tenant: String,
        /// A unique name; logs and metrics show `token:<name>`.
        #[arg(long)]
        name: String,
        /// Limit the token to `route-host/repository-pattern` (repeatable); default: all its tenant allows.
        #[arg(long = "allow", value_name = "PATTERN")]
        allow: Vec<String>,
        /// Let the token push where its tenant may push.
        #[arg(long)]
        push: bool,
        /// Lifetime, e.g. `90d`, `12h`, `30m` (units s, m, h, d, w); default: no expiry.
        #[arg(long, value_parser = parse_lifetime)]
        expires: Option<Duration>,
    },
    /// List the tokens (never their secrets).
    List {
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Revoke a token by id (or name); it stops working within the gateway's poll interval.
    Revoke {
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
        /// The token's id (as `list` shows it) or name.
        id: String,
    },
}

/// Runs the command; errors are printed with what to do about them.
pub fn main(args: &Args) -> ExitCode {
    match run(args, SystemTime::now(), &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, now: SystemTime, out: &mut dyn std::io::Write) -> Result<()> {
    match &args.command {
        Command::Create {
            config,
            tenant,
            name,
            allow,
            push,
            expires,
        } => {
            let config = load(config)?;
            let file = token_file(&config)?;
            if !config.tenants.iter().any(|t| &t.name == tenant) {
                bail!("no [[tenant]] named {tenant:?} in the config: give one of its tenants with --tenant");
            }
            let mut tokens = read(&file)?;
            if tokens.iter().any(|t| &t.name == name) {
                bail!("a token named {name:?} exists already (revoked ones too): choose another --name");
            }
            let spec = NewTokenSpec {
                name: name.clone(),
                tenant: tenant.clone(),
                allow: allow.clone(),
                push: *push,
                expires_in: *expires,
            };
            let made = mirrorgate_auth::create_token(&spec, now)?;
            tokens.push(made.record.clone());
            write(&file, &tokens)?;
            eprintln!(
                "created token {} ({name}, tenant {tenant}); it is shown once, below:",
                made.record.id
            );
            writeln!(out, "{}", made.token)?;
        }
        Command::List { config } => {
            let tokens = read(&token_file(&load(config)?)?)?;
            writeln!(
                out,
                "{:<16}  {:<20}  {:<12}  {:<8}  {:<20}  {:<20}  SCOPE",
                "ID", "NAME", "TENANT", "STATUS", "CREATED", "EXPIRES"
            )?;
            for t in &tokens {
                let scope = if t.allow.is_empty() {
                    "(tenant's rules)".to_owned()
                } else {
                    t.allow.join(",")
                };
                writeln!(
                    out,
                    "{:<16}  {:<20}  {:<12}  {:<8}  {:<20}  {:<20}  {}{scope}",
                    t.id,
                    t.name,
                    t.tenant,
                    status(t, now),
                    date(t.created),
                    t.expires.map_or_else(|| "never".to_owned(), date),
                    if t.push { "push " } else { "pull " },
                )?;
            }
        }
        Command::Revoke { config, id } => {
            let file = token_file(&load(config)?)?;
            let mut tokens = read(&file)?;
            let Some(t) = tokens.iter_mut().find(|t| &t.id == id || &t.name == id) else {
                bail!(
                    "no token with id or name {id:?} in {}: see `mirrorgate token list`",
                    file.display()
                );
            };
            if t.revoked.is_some() {
                writeln!(out, "token {} ({}) was already revoked", t.id, t.name)?;
                return Ok(());
            }
            t.revoked = Some(unix(now));
            let msg = format!("revoked token {} ({})", t.id, t.name);
            write(&file, &tokens)?;
            writeln!(out, "{msg}")?;
        }
    }
    Ok(())
}

fn load(path: &Path) -> Result<Config> {
    mirrorgate_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn token_file(config: &Config) -> Result<PathBuf> {
    config.auth.api_tokens.clone().context(
        "the config has no `[auth] api_tokens` file: add e.g. `api_tokens = \"api-tokens.json\"` under [auth]",
    )
}

fn read(file: &Path) -> Result<Vec<ApiTokenRecord>> {
    Ok(mirrorgate_auth::read_token_file(file)?)
}

fn write(file: &Path, tokens: &[ApiTokenRecord]) -> Result<()> {
    Ok(mirrorgate_auth::write_token_file(file, tokens)?)
}

fn status(t: &ApiTokenRecord, now: SystemTime) -> &'static str {
    if t.revoked.is_some() {
        "revoked"
    } else if t.expires.is_some_and(|e| unix(now) >= e) {
        "expired"
    } else {
        "active"
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// `<n><unit>` with unit s, m, h, d or w; zero is refused (a token dead on arrival is a typo).
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let unit_at = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?}: add a unit, e.g. `90d` (s, m, h, d, w)"))?;
    let (n, unit) = s.split_at(unit_at);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number then a unit, e.g. `90d`"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d, w)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: a token must live longer than zero"));
    }
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?}: too long"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    fn args(argv: &[&str]) -> Args {
        let mut full = vec!["token"];
        full.extend_from_slice(argv);
        Args {
            command: Cli::parse_from(full).command,
        }
    }

    fn setup() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("mirrorgate.toml");
        std::fs::write(
            &cfg,
            "[server]\nhttps = \"127.0.0.1:8443\"\n\n[auth]\napi_tokens = \"robots.json\"\n\n\
             [[tenant]]\nname = \"acme\"\nallow = [\"docker.test/*\"]\n\n\
             [[route]]\nhost = \"docker.test\"\nupstream = \"http://127.0.0.1:5000\"\n",
        )
        .unwrap();
        let cfg = cfg.to_string_lossy().into_owned();
        (dir, cfg)
    }

    fn exec(argv: &[&str], now: SystemTime) -> Result<String> {
        let mut out = Vec::new();
        run(&args(argv), now, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    // Pins issue 16: create prints the token once and the file (next to the config, mode 0600) holds its
    // hash, never the secret; list shows no secret; revoke marks it, and the gateway's store refuses it.
    #[test]
    fn create_list_revoke() {
        let (dir, cfg) = setup();
        let now = SystemTime::now();
        let printed = exec(
            &[
                "create",
                "-c",
                &cfg,
                "--tenant",
                "acme",
                "--name",
                "ci-deploy",
                "--push",
                "--allow",
                "docker.test/team/*",
                "--expires",
                "90d",
            ],
            now,
        )
        .unwrap();
        let token = printed.trim();
        assert!(token.starts_with("mgt_"), "{token}");
        let secret = token.rsplit('_').next().unwrap();
        let file = dir.path().join("robots.json");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(secret) && text.contains("ci-deploy"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let store = mirrorgate_auth::ApiTokens::load(&file).unwrap();
        let v = store.verify(token, now).unwrap();
        assert_eq!(&*v.user, "token:ci-deploy");
        assert!(store
            .verify(token, now + Duration::from_secs(91 * 86_400))
            .is_err());

        let list = exec(&["list", "-c", &cfg], now).unwrap();
        assert!(
            list.contains("ci-deploy")
                && list.contains("active")
                && list.contains("push docker.test/team/*"),
            "{list}"
        );
        assert!(!list.contains(secret));

        // Duplicate names and unknown tenants are refused before anything is written.
        assert!(exec(
            &[
                "create",
                "-c",
                &cfg,
                "--tenant",
                "acme",
                "--name",
                "ci-deploy"
            ],
            now
        )
        .is_err());
        let e = exec(
            &["create", "-c", &cfg, "--tenant", "nope", "--name", "x"],
            now,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");

        let out = exec(&["revoke", "-c", &cfg, "ci-deploy"], now).unwrap();
        assert!(out.starts_with("revoked token"), "{out}");
        assert!(store.reload().unwrap());
        assert!(matches!(
            store.verify(token, now),
            Err(mirrorgate_auth::AuthError::ApiTokenRevoked)
        ));
        assert!(exec(&["list", "-c", &cfg], now)
            .unwrap()
            .contains("revoked"));
        assert!(exec(&["revoke", "-c", &cfg, "0000"], now).is_err());
    }

    // Rule: lifetimes take a unit; zero and unknown units are refused.
    #[test]
    fn lifetimes() {
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_lifetime("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_lifetime("90").is_err());
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("3y").is_err());
    }
}
