//! `mirrorgate usage`: the usage ledger's export for billing scripts and people; and the ledger's start-up
//! for `run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mirrorgate_config::Config;
use mirrorgate_metrics::Metrics;
use mirrorgate_report::Report;
use mirrorgate_usage::{Format, Ledger, LedgerOptions, Query, SharedStore, Store};

/// How long counts stay in memory only: a `kill -9` loses at most this much.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Finished requests waiting for the writer; a writer this far behind drops (and counts) further ones.
const QUEUE: usize = 65_536;

/// Exit status for bad input (unknown grouping, bad dates, an unreadable store or config): the usage-error
/// status clap uses for its own argument errors.
const BAD_INPUT: u8 = 2;

#[derive(clap::Args)]
pub struct Args {
    /// The config file (TOML); the store is its `[usage] store`.
    #[arg(short = 'c', long = "config", env = "MIRRORGATE_CONFIG")]
    config: PathBuf,
    /// First day (UTC, YYYY-MM-DD), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Last day (UTC, YYYY-MM-DD), inclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only this tenant (`-` is anonymous callers).
    #[arg(long)]
    tenant: Option<String>,
    /// Sum per day, tenant, user (per tenant), route or repository (per tenant). Default: day.
    #[arg(long)]
    by: Option<String>,
    /// table (for a terminal), csv or json. Default: table.
    #[arg(long)]
    format: Option<String>,
}

/// Prints the export; bad input exits 2 with the reason and changes nothing.
pub fn main(args: &Args) -> ExitCode {
    match export(args) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mirrorgate usage: {message}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

fn export(args: &Args) -> Result<String, String> {
    let query = Query::parse(
        args.from.as_deref(),
        args.to.as_deref(),
        args.tenant.as_deref(),
        args.by.as_deref(),
    )
    .map_err(|e| Report(&e).to_string())?;
    let format: Format = args
        .format
        .as_deref()
        .unwrap_or("table")
        .parse()
        .map_err(|e: mirrorgate_usage::UsageError| e.to_string())?;
    let config = mirrorgate_config::load(&args.config).map_err(|e| e.to_string())?;
    // With `[limits] redis` every replica adds into Redis: the bill is the sum there, not this node's file.
    let rows = match &config.limits.redis {
        Some(url) => SharedStore::new(url.as_str()).and_then(|mut shared| shared.query(&query)),
        None => Store::open_read_only(&config.usage.store).and_then(|store| store.query(&query)),
    }
    .map_err(|e| Report(&e).to_string())?;
    Ok(mirrorgate_usage::render(&rows, query.by, format))
}

/// Opens the ledger at `[usage] store` (deleting days past retention) and starts its writer; its metric
/// families join the gateway's registry.
pub async fn start_ledger(config: &Config, metrics: &Metrics) -> anyhow::Result<Arc<Ledger>> {
    let options = LedgerOptions {
        store: config.usage.store.clone(),
        retention: config.usage.retention,
        flush_every: FLUSH_EVERY,
        queue: QUEUE,
        max_repositories: mirrorgate_usage::MAX_REPOSITORIES_PER_TENANT_DAY,
        redis: config.limits.redis.as_ref().map(|url| url.to_string()),
        max_held_rows: mirrorgate_usage::MAX_HELD_ROWS,
    };
    let registry = metrics.registry().clone();
    let store = options.store.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::start(options, Some(&registry)))
        .await
        .context("starting the usage ledger")?
        .map_err(|e| anyhow::anyhow!("{}", Report(&e)))
        .context("starting the usage ledger")?;
    if config.limits.redis.is_some() {
        tracing::info!("usage ledger shared through [limits] redis");
    } else {
        tracing::info!(store = %store.display(), "usage ledger open");
    }
    Ok(Arc::new(ledger))
}

/// Starts each tenant's daily byte quota at the bytes the ledger counted for it today, so a restart (or a
/// reload that rebuilds the limiter) does not hand out a fresh quota; the quota and the ledger count the same
/// response body bytes from there on. On reload the old limiter's count is kept when higher (it includes
/// bytes of responses still streaming, which the ledger counts only when they end). In shared mode the quota
/// already lives in Redis; nothing to seed. A ledger that cannot answer is logged, not fatal.
pub async fn seed_quotas(
    limiter: &mirrorgate_limits::Limiter,
    ledger: &Arc<Ledger>,
    previous: Option<&mirrorgate_limits::Limiter>,
) {
    if limiter.is_shared() {
        return;
    }
    let ledger = ledger.clone();
    let counted =
        tokio::task::spawn_blocking(move || ledger.bytes_sent_on(mirrorgate_usage::today())).await;
    let counted = match counted {
        Ok(Ok(counted)) => counted,
        Ok(Err(e)) => {
            tracing::warn!(error = %Report(&e), "cannot read today's bytes from the usage ledger; daily quotas start at 0");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read today's bytes from the usage ledger; daily quotas start at 0");
            return;
        }
    };
    for (tenant, bytes) in &counted {
        let before = previous
            .and_then(|l| l.quota_used_today(tenant))
            .unwrap_or(0);
        limiter.seed_quota_used(tenant, (*bytes).max(before));
    }
    if let Some(previous) = previous {
        // Tenants with no ledger row yet today may still have bytes streaming through the old limiter.
        for tenant in limiter.quota_tenants() {
            if !counted.contains_key(tenant.as_ref()) {
                if let Some(used) = previous.quota_used_today(&tenant) {
                    limiter.seed_quota_used(&tenant, used);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::num::NonZeroU64;

    use mirrorgate_limits::{Limiter, LimitsSpec, Subject, TenantLimits};
    use mirrorgate_usage::{Activity, Event};

    use super::*;

    fn limiter() -> Limiter {
        let limits = TenantLimits {
            bytes_per_day: NonZeroU64::new(1000),
            ..TenantLimits::default()
        };
        Limiter::new(LimitsSpec {
            tenants: HashMap::from([(Arc::from("acme"), limits)]),
            ..LimitsSpec::default()
        })
        .unwrap()
    }

    // Pins the quota seeding: a fresh limiter starts at the ledger's bytes for today; on reload the old
    // limiter's count wins when higher (it includes bodies still streaming, which the ledger counts at their end).
    #[tokio::test]
    async fn quotas_start_from_the_ledger_and_keep_streaming_bytes_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::start(
                LedgerOptions {
                    store: dir.path().join("u.db"),
                    retention: Duration::from_secs(86_400),
                    flush_every: Duration::from_secs(3600),
                    queue: 16,
                    max_repositories: 10,
                    redis: None,
                    max_held_rows: 100,
                },
                None,
            )
            .unwrap(),
        );
        ledger.record(Event {
            day: mirrorgate_usage::today(),
            tenant: Some(Arc::from("acme")),
            user: None,
            route: "docker.test".into(),
            repository: None,
            activity: Activity::BlobPull,
            status: 200,
            bytes_sent: 600,
            bytes_received: 0,
        });
        let started = limiter();
        seed_quotas(&started, &ledger, None).await;
        assert_eq!(started.quota_used_today("acme"), Some(600));

        let alice = Subject::tenant("acme", Some("alice"), IpAddr::V4(Ipv4Addr::LOCALHOST));
        started.check_local(&alice).unwrap().record_bytes(300);
        let reloaded = limiter();
        seed_quotas(&reloaded, &ledger, Some(&started)).await;
        assert_eq!(reloaded.quota_used_today("acme"), Some(900));
        ledger.close();
    }
}
