//! `mirrorgate run`: start-up in numbered steps, then signals — SIGHUP (or a changed config file) reloads,
//! SIGTERM/SIGINT drain and stop.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mirrorgate_metrics::{Health, Metrics, MetricsOptions, Outcome};
use mirrorgate_proxy::Gateway;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{check, telemetry, tls_setup};

/// How often the htpasswd file is checked (new users work, removed users stop, within this).
const HTPASSWD_POLL: Duration = Duration::from_secs(2);

/// How often idle limiter keys are evicted and the key counts exported.
const LIMITER_HOUSEKEEPING: Duration = Duration::from_secs(30);

fn spawn_limiter_housekeeping(
    limiter: Arc<mirrorgate_limits::Limiter>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_HOUSEKEEPING);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    limiter.housekeep();
                    let k = limiter.key_counts();
                    metrics.set_limiter_keys("user_rate", k.user_rate);
                    metrics.set_limiter_keys("ip_rate", k.ip_rate);
                    metrics.set_limiter_keys("concurrency", k.concurrency);
                    metrics.set_limiter_keys("byte_buckets", k.byte_buckets);
                }
            }
        }
    });
}

/// How often the config file is checked for changes (reload without SIGHUP, e.g. a Kubernetes ConfigMap).
const CONFIG_POLL: Duration = Duration::from_secs(2);

pub fn main(path: &Path) -> ExitCode {
    // 1. Validate the whole config before binding anything.
    let checked = match check::validate(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "mirrorgate: refusing to start with {} config problem(s)",
                errors.len()
            );
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(checked.config.server.log_format);
    log_warnings(&checked.warnings);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirrorgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(path.to_path_buf(), checked)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: PathBuf, checked: check::Checked) -> anyhow::Result<()> {
    let check::Checked {
        config, runtime, ..
    } = checked;
    let cancel = CancellationToken::new();
    // 2. Metrics and health, so every later step can report.
    let metrics = Metrics::new(MetricsOptions::default()).context("registering metrics")?;
    let health = Arc::new(Health::new());
    metrics.config_reload(Outcome::Success);
    health.set_config_loaded(true);

    // 3. Certificates (self-signed, files or ACME); background tasks start here.
    let front = tls_setup::start(&config, &metrics, &health, &cancel)?;

    // 4. Bind every listener before serving any, so a taken port fails the start cleanly.
    let https = bind(config.server.https, "server.https").await?;
    let http = match config.server.http {
        Some(addr) => Some(bind(addr, "server.http").await?),
        None => None,
    };
    let admin = match config.server.admin {
        Some(addr) => Some(bind(addr, "server.admin").await?),
        None => None,
    };
    health.set_listeners_bound(true);

    // 5. The serving state.
    let grace = config.server.shutdown_grace;
    let https_port = config.server.https.port();
    let config = Arc::new(config);
    let auth = if mirrorgate_proxy::auth_enabled(&config) {
        let spec = mirrorgate_proxy::auth_spec(&config);
        // Loads htpasswd and the token key (generating it on first start): blocking file I/O.
        let auth = tokio::task::spawn_blocking(move || mirrorgate_auth::Authenticator::new(spec))
            .await
            .context("setting up authentication")?
            .context("setting up authentication")?;
        let auth = Arc::new(auth);
        if let Some(users) = auth.users().cloned() {
            let cancel = cancel.clone();
            tokio::spawn(async move { users.watch(HTPASSWD_POLL, cancel).await });
        }
        Some(auth)
    } else {
        None
    };
    let limiter = Arc::new(
        mirrorgate_limits::Limiter::new(mirrorgate_proxy::limits_spec(&config))
            .context("setting up limits")?,
    );
    spawn_limiter_housekeeping(limiter.clone(), metrics.clone(), cancel.clone());
    let gateway = Gateway::new(runtime, metrics.clone(), auth, limiter);

    // 6. Serve.
    let mut tasks = tokio::task::JoinSet::new();
    tracing::info!(https = %config.server.https, routes = config.routes.len(), "mirrorgate serving");
    tasks.spawn(mirrorgate_proxy::serve_https(
        https,
        front.server_config,
        gateway.clone(),
        cancel.clone(),
        grace,
    ));
    if let Some(http) = http {
        tasks.spawn(mirrorgate_proxy::serve_http(
            http,
            https_port,
            front.http01,
            gateway.clone(),
            cancel.clone(),
        ));
    }
    if let Some(admin) = admin {
        tasks.spawn(mirrorgate_metrics::serve_admin(
            admin,
            metrics.clone(),
            health.clone(),
            cancel.clone(),
        ));
    }

    // 7. Signals and reload until asked to stop.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = fingerprint(&path);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                seen = fingerprint(&path);
                reload(&path, &gateway, &metrics);
            }
            _ = poll.tick() => {
                let now = fingerprint(&path);
                if now != seen && now.is_some() {
                    seen = now;
                    reload(&path, &gateway, &metrics);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(
        ?grace,
        "shutting down: no new connections, draining in-flight requests"
    );
    health.set_draining(true);
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Validates and swaps in a new config; a bad one is logged and the running config stays.
fn reload(path: &Path, gateway: &Gateway, metrics: &Metrics) {
    let refused = |reason: String| {
        metrics.config_reload(Outcome::Failure);
        tracing::error!(config = %path.display(), %reason, "config reload refused; the previous config keeps serving");
    };
    let checked = match check::validate(path) {
        Ok(checked) => checked,
        Err(errors) => {
            return refused(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    };
    log_warnings(&checked.warnings);
    if let Some(auth) = &gateway.auth {
        match mirrorgate_auth::Tenants::new(mirrorgate_proxy::tenant_specs(&checked.config)) {
            Ok(tenants) => auth.set_tenants(tenants),
            Err(e) => return refused(e.to_string()),
        }
    }
    gateway.replace(checked.runtime);
    metrics.config_reload(Outcome::Success);
    tracing::info!(config = %path.display(), "config reloaded");
}

fn log_warnings(warnings: &[mirrorgate_config::ConfigError]) {
    for w in warnings {
        tracing::warn!(problem = %w, "config warning (`mirrorgate check` fails on it)");
    }
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Binds `addr`, turning the errors a first run meets into advice.
async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "another process listens on {addr} (see `ss -ltnp 'sport = :{}'`); stop it or change {key}",
                addr.port()
            ),
            io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE (`setcap cap_net_bind_service=+ep mirrorgate`), or use a port >= 1024 in {key}"
            ),
            io::ErrorKind::AddrNotAvailable => format!("{addr} is not an address of this machine; fix {key}"),
            _ => format!("check {key}"),
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}: {hint}")
    })
}
