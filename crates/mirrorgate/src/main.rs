//! The `mirrorgate` binary: reads the command line and hands over to one command module. Start-up, signals
//! and reload live in `run`; everything that serves requests lives in the library crates.

mod cache_cmd;
mod check;
mod client_config;
mod fds;
mod htpasswd_cmd;
mod run;
mod storage_check;
mod telemetry;
mod tls_setup;
mod token_cmd;
mod usage_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// An edge gateway for container registries.
#[derive(Parser)]
#[command(name = "mirrorgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM/SIGINT (SIGHUP reloads the config).
    Run {
        /// The config file (TOML).
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file as `run` would, print every problem with file, line and key, exit 1 on any.
    Check {
        #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
        config: PathBuf,
    },
    /// Add, update or delete a user's bcrypt line in an htpasswd file (or print the line without -f).
    Htpasswd(htpasswd_cmd::Args),
    /// Print the mirror configuration for a container client (containerd, k3s, docker, podman, cri-o, kind, talos).
    ClientConfig(client_config::Args),
    /// Export the usage ledger (per day, tenant, user, route or repository) as a table, CSV or JSON.
    Usage(usage_cmd::Args),
    /// Create, list or revoke API tokens (robot accounts) in the `[auth] api_tokens` file.
    Token(token_cmd::Args),
    /// Inspect or purge the built-in cache's store on disk (safe while the gateway runs).
    Cache(cache_cmd::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run::main(&config),
        Command::Check { config } => check::main(&config),
        Command::Htpasswd(args) => htpasswd_cmd::main(args),
        Command::ClientConfig(args) => client_config::main(&args),
        Command::Usage(args) => usage_cmd::main(&args),
        Command::Token(args) => token_cmd::main(&args),
        Command::Cache(args) => cache_cmd::main(&args),
    }
}
