//! `mirrorgate cache stats|purge`: the built-in cache's store, read and trimmed on disk. Safe while a gateway
//! serves from the same directory (see `mirrorgate_cache::purge` for why, and for what a running gateway
//! notices when).

use std::path::PathBuf;
use std::process::ExitCode;

use mirrorgate_cache::{Purged, Selection, Stats};
use mirrorgate_config::{CacheConfig, Config};
use mirrorgate_registry::{Digest, RepositoryName};
use mirrorgate_report::Report;

/// Exit status for bad input (no `[cache]`, a bad digest or repository): clap's usage-error status.
const BAD_INPUT: u8 = 2;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand)]
enum CacheCommand {
    /// Print what the store holds: entries, bytes against max_size, repositories, tags, fills in progress.
    Stats {
        /// The config file (TOML); the store is its `[cache] dir`.
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Remove entries: one repository's (under every route, or one with --route), one digest's, or with --all
    /// everything.
    Purge {
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
        /// A repository as clients name it (`library/alpine`): its references and tags, and entries no other
        /// repository references.
        #[arg(long)]
        repository: Option<String>,
        /// A digest (`sha256:…`): everywhere, or only within --repository.
        #[arg(long)]
        digest: Option<String>,
        /// With --repository: only under this route (its host as written in the config).
        #[arg(long, requires = "repository")]
        route: Option<String>,
        /// Everything (required when neither --repository nor --digest is given).
        #[arg(long, conflicts_with_all = ["repository", "digest"])]
        all: bool,
    },
}

pub fn main(args: &Args) -> ExitCode {
    let result = match &args.command {
        CacheCommand::Stats { config } => stats(config),
        CacheCommand::Purge {
            config,
            repository,
            digest,
            route,
            all,
        } => purge(
            config,
            repository.as_deref(),
            digest.as_deref(),
            route.as_deref(),
            *all,
        ),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mirrorgate cache: {message}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

/// The config and its `[cache]`; a config without one is bad input.
fn cache_config(path: &std::path::Path) -> Result<(Config, CacheConfig), String> {
    let config = mirrorgate_config::load(path).map_err(|e| e.to_string())?;
    let Some(cache) = config.cache.clone() else {
        return Err(format!("{}: no [cache] section", path.display()));
    };
    Ok((config, cache))
}

fn stats(path: &std::path::Path) -> Result<String, String> {
    let (_, c) = cache_config(path)?;
    let s = mirrorgate_cache::stats(&c.dir).map_err(|e| Report(&e).to_string())?;
    Ok(render_stats(&c.dir, c.max_size, &s))
}

fn render_stats(dir: &std::path::Path, max_size: u64, s: &Stats) -> String {
    format!(
        "dir: {}\nentries: {} ({} manifests, {} blobs)\nbytes: {} of max_size {}\nrepositories: {}\ntags: {}\nfills in progress: {} ({} bytes)\n",
        dir.display(),
        s.entries,
        s.manifests,
        s.entries.saturating_sub(s.manifests),
        s.bytes,
        max_size,
        s.scopes,
        s.tags,
        s.in_progress,
        s.in_progress_bytes,
    )
}

fn purge(
    path: &std::path::Path,
    repository: Option<&str>,
    digest: Option<&str>,
    route: Option<&str>,
    all: bool,
) -> Result<String, String> {
    let (config, c) = cache_config(path)?;
    let digest = digest
        .map(|d| Digest::parse(d).map_err(|e| format!("--digest {d}: {e}")))
        .transpose()?;
    let selection = match (repository, digest, all) {
        (None, None, true) => Selection::All,
        (None, Some(d), _) => Selection::Digest(d),
        (Some(r), digest, _) => {
            RepositoryName::parse(r).map_err(|e| format!("--repository {r}: {e}"))?;
            let routes: Vec<String> = config.routes.iter().map(|x| x.host.to_string()).collect();
            let routes: Vec<&String> = match route {
                Some(want) => {
                    let found: Vec<&String> = routes.iter().filter(|h| *h == want).collect();
                    if found.is_empty() {
                        return Err(format!(
                            "--route {want}: no such route in {}",
                            path.display()
                        ));
                    }
                    found
                }
                None => routes.iter().collect(),
            };
            Selection::Scopes {
                scopes: routes
                    .into_iter()
                    .map(|h| mirrorgate_cache::scope(h, r))
                    .collect(),
                digest,
            }
        }
        (None, None, false) => {
            return Err("purge needs --repository, --digest or --all".to_owned());
        }
    };
    let p = mirrorgate_cache::purge(&c.dir, &selection).map_err(|e| Report(&e).to_string())?;
    Ok(render_purged(&p))
}

fn render_purged(p: &Purged) -> String {
    format!(
        "removed {} entries ({} bytes), {} references, {} tags\n",
        p.entries, p.bytes, p.references, p.tags
    )
}
