//! `mirrorgate run`: start-up in numbered steps, then signals — SIGHUP (or a changed config file) reloads,
//! SIGTERM/SIGINT drain and stop.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mirrorgate_config::Config;
use mirrorgate_metrics::{Health, Metrics, MetricsOptions, Outcome};
use mirrorgate_proxy::Gateway;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{check, fds, telemetry, tls_setup};

/// How often the htpasswd file is checked (new users work, removed users stop, within this).
const HTPASSWD_POLL: Duration = Duration::from_secs(2);

/// How often idle limiter keys are evicted and the key counts exported.
const LIMITER_HOUSEKEEPING: Duration = Duration::from_secs(30);

fn spawn_limiter_housekeeping(
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LIMITER_HOUSEKEEPING);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let limiter = gateway.limiter();
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
    // 1. Validate the whole config, and that the state folder takes writes, before binding anything.
    let checked = match check::validate_for_start(path) {
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
    let nofile = fds::raise_nofile_limit();
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
    match runtime.block_on(serve(path.to_path_buf(), checked, nofile)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: PathBuf, checked: check::Checked, nofile: Option<u64>) -> anyhow::Result<()> {
    let check::Checked {
        config, runtime, ..
    } = checked;
    let shutdown = CancellationToken::new();
    // 2. Metrics and health, so every later step can report.
    let metrics = Metrics::new(MetricsOptions {
        per_user_labels: config.server.metrics_user_labels,
        ..MetricsOptions::default()
    })
    .context("registering metrics")?;
    let health = Arc::new(Health::new());
    metrics.config_reload(Outcome::Success);
    health.set_config_loaded(true);

    // 3. Certificates (self-signed, files or ACME); background tasks start here.
    let tls = tls_setup::TlsManager::start(&config, &metrics, &health, &shutdown)?;

    // 4. Authentication (htpasswd, token key) and limits.
    let auth = if mirrorgate_proxy::auth_enabled(&config) {
        let spec = mirrorgate_proxy::auth_spec(&config);
        // Loads htpasswd and the token key (generating it on first start): blocking file I/O.
        let auth = tokio::task::spawn_blocking(move || mirrorgate_auth::Authenticator::new(spec))
            .await
            .context("setting up authentication")?
            .context("setting up authentication")?;
        let auth = Arc::new(auth);
        if let Some(users) = auth.users().cloned() {
            let cancel = shutdown.clone();
            tokio::spawn(async move { users.watch(HTPASSWD_POLL, cancel).await });
        }
        // API tokens are polled like htpasswd: a revocation reaches every replica within HTPASSWD_POLL.
        if let Some(tokens) = auth.api_tokens().cloned() {
            let cancel = shutdown.clone();
            tokio::spawn(async move { tokens.watch(HTPASSWD_POLL, cancel).await });
        }
        Some(auth)
    } else {
        None
    };
    let limiter = Arc::new(
        mirrorgate_limits::Limiter::new(mirrorgate_proxy::limits_spec(&config))
            .context("setting up limits")?,
    );
    let gateway = Gateway::new(runtime, metrics.clone(), auth, limiter);
    // The cache's store is scanned once here (temporary files of a crash removed, the LRU order rebuilt).
    gateway
        .open_cache(&config)
        .context("opening the [cache] directory")?;
    if let Some(audit) = &config.audit {
        let log = mirrorgate_proxy::AuditLog::start(audit, metrics.clone())
            .context("starting the audit trail")?;
        gateway.set_audit(Some(Arc::new(log)));
    }
    spawn_limiter_housekeeping(gateway.clone(), metrics.clone(), shutdown.clone());
    // The usage ledger: opened (and expired days deleted) before serving, so its file problems stop the start.
    let usage = crate::usage_cmd::start_ledger(&config, &metrics).await?;
    gateway.set_usage(usage.clone());
    crate::usage_cmd::seed_quotas(&gateway.limiter(), &usage, None).await;

    // 5. Bind every listener before serving any, so a taken port fails the start cleanly; then serve.
    let spawner = Spawner {
        gateway: gateway.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        tls_config: tls.server_config.clone(),
        http01: tls.http01_responder(),
        caps: mirrorgate_proxy::ConnectionCaps::new(nofile),
        usage: usage.clone(),
    };
    let mut listeners = Listeners::new(shutdown.clone());
    let bound = listeners.bind_moved(&config.server).await?;
    listeners.commit(bound, &config.server, &spawner);
    health.set_listeners_bound(true);
    tracing::info!(https = %config.server.https, routes = config.routes.len(), "mirrorgate serving");

    // 6. Signals and reload until asked to stop.
    let mut server = Server {
        path,
        gateway,
        metrics,
        tls,
        listeners,
        spawner,
        config: Arc::new(config),
    };
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = fingerprint(&server.path);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                seen = fingerprint(&server.path);
                server.reload().await;
            }
            _ = poll.tick() => {
                let now = fingerprint(&server.path);
                if now == seen {
                    continue;
                }
                if now.is_none() {
                    // Deleted (or mid-replace): say so once; the last config keeps serving until a file is back.
                    tracing::warn!(config = %server.path.display(), "the config file is gone; the last config keeps serving");
                } else {
                    server.reload().await;
                }
                seen = now;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = server.config.server.shutdown_grace;
    tracing::info!(
        ?grace,
        "shutting down: no new connections, draining in-flight requests"
    );
    health.set_draining(true);
    shutdown.cancel();
    // The admin listener outlives the drain: probes see 503 and /metrics stays scrapeable until exit.
    server.listeners.join().await;
    // Every request has ended: write the ledger's last counts (a clean stop loses nothing).
    if tokio::task::spawn_blocking(move || usage.close())
        .await
        .is_err()
    {
        tracing::error!("the last usage flush did not finish");
    }
    Ok(())
}

/// What reload needs: the running parts and the config they were last set up from.
struct Server {
    path: PathBuf,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    tls: tls_setup::TlsManager,
    listeners: Listeners,
    spawner: Spawner,
    config: Arc<Config>,
}

impl Server {
    /// Validates the file and applies it: new listener addresses are bound first (so a taken port refuses
    /// the reload before anything changed), then certificates, limits and routes are swapped, and only then
    /// do the new listeners start accepting and the old ones stop — a request on a new address never meets
    /// the old limits. A failure at any step refuses the reload; a certificate change already applied
    /// stays, and the old routing keeps serving.
    async fn reload(&mut self) {
        let refused = |metrics: &Metrics, path: &Path, reason: String| {
            metrics.config_reload(Outcome::Failure);
            tracing::error!(config = %path.display(), %reason, "config reload refused; the previous config keeps serving");
        };
        let checked = match check::validate(&self.path) {
            Ok(checked) => checked,
            Err(errors) => {
                let reason = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return refused(&self.metrics, &self.path, reason);
            }
        };
        log_warnings(&checked.warnings);
        let config = &checked.config;
        // Opened before anything is applied, so an unwritable audit file refuses the whole reload.
        let new_audit = if config.audit == self.config.audit {
            None
        } else {
            match config
                .audit
                .as_ref()
                .map(|a| mirrorgate_proxy::AuditLog::start(a, self.metrics.clone()))
                .transpose()
            {
                Ok(log) => Some(log),
                Err(e) => {
                    let reason = format!("{:#}", anyhow::Error::new(e));
                    return refused(&self.metrics, &self.path, reason);
                }
            }
        };
        let bound = match self.listeners.bind_moved(&config.server).await {
            Ok(bound) => bound,
            Err(e) => return refused(&self.metrics, &self.path, format!("{e:#}")),
        };
        match self.tls.apply(config) {
            Ok(true) => tracing::info!("certificate source changed"),
            Ok(false) => {}
            Err(e) => return refused(&self.metrics, &self.path, format!("{e:#}")),
        }
        if config.tenants != self.config.tenants || config.limits != self.config.limits {
            match mirrorgate_limits::Limiter::new(mirrorgate_proxy::limits_spec(config)) {
                Ok(limiter) => {
                    let limiter = Arc::new(limiter);
                    let old = self.gateway.limiter();
                    crate::usage_cmd::seed_quotas(&limiter, &self.spawner.usage, Some(&old)).await;
                    self.gateway.replace_limiter(limiter);
                    tracing::info!("limits changed: limiter state starts afresh");
                }
                Err(e) => return refused(&self.metrics, &self.path, e.to_string()),
            }
        }
        if let Some(log) = new_audit {
            self.gateway.set_audit(log.map(Arc::new));
        }
        if let Some(auth) = &self.gateway.auth {
            auth.set_tenants(checked.tenants);
        }
        self.config = checked.runtime.config.clone();
        self.gateway.replace(checked.runtime);
        self.listeners
            .commit(bound, &self.config.server, &self.spawner);
        self.metrics.config_reload(Outcome::Success);
        tracing::info!(config = %self.path.display(), "config reloaded");
    }
}

/// The shared handles every listener task needs.
struct Spawner {
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    tls_config: Arc<rustls::ServerConfig>,
    http01: mirrorgate_proxy::Http01Responder,
    /// Open connections of the https and http listeners, against `max_connections(_per_ip)`.
    caps: Arc<mirrorgate_proxy::ConnectionCaps>,
    /// The usage ledger, for the admin listener's `/usage`.
    usage: Arc<mirrorgate_usage::Ledger>,
}

/// One running listener: its address and the token that stops its accept loop (its open connections then
/// drain on their own).
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
}

/// The https, http and admin listeners, moved to new addresses on reload without a gap: the new socket is
/// bound (and serving) before the old one stops accepting. The admin listener hangs off its own token, so
/// it keeps answering while the public listeners drain after `shutdown`.
struct Listeners {
    https: Option<Running>,
    http: Option<Running>,
    admin: Option<Running>,
    tasks: tokio::task::JoinSet<()>,
    admin_tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
    admin_shutdown: CancellationToken,
}

/// Sockets bound for a reload but not yet served on.
struct Bound(Vec<(Kind, SocketAddr, TcpListener)>);

/// The listeners `server` asks for, with the key each address comes from.
fn wanted(
    server: &mirrorgate_config::ServerConfig,
) -> [(Kind, Option<SocketAddr>, &'static str); 3] {
    [
        (Kind::Https, Some(server.https), "server.https"),
        (Kind::Http, server.http, "server.http"),
        (Kind::Admin, server.admin, "server.admin"),
    ]
}

#[derive(Clone, Copy)]
enum Kind {
    Https,
    Http,
    Admin,
}

impl Listeners {
    fn new(shutdown: CancellationToken) -> Self {
        Listeners {
            https: None,
            http: None,
            admin: None,
            tasks: tokio::task::JoinSet::new(),
            admin_tasks: tokio::task::JoinSet::new(),
            shutdown,
            admin_shutdown: CancellationToken::new(),
        }
    }

    /// Binds every listener whose address changed, without serving on it yet: one failure leaves every
    /// listener as it was. [`Listeners::commit`] then starts them.
    async fn bind_moved(
        &mut self,
        server: &mirrorgate_config::ServerConfig,
    ) -> anyhow::Result<Bound> {
        let mut bound = Vec::new();
        for (kind, addr, key) in wanted(server) {
            let current = self.slot(kind).as_ref().map(|r| r.addr);
            if let Some(addr) = addr.filter(|a| Some(*a) != current) {
                bound.push((kind, addr, bind(addr, key).await?));
            }
        }
        Ok(Bound(bound))
    }

    /// Serves on the sockets `bound` holds and stops the listeners they replace (or that the config no
    /// longer names). Called after the config they serve is in place, so the first request on a new
    /// address already meets the new routes and limits.
    fn commit(
        &mut self,
        Bound(bound): Bound,
        server: &mirrorgate_config::ServerConfig,
        spawner: &Spawner,
    ) {
        for (kind, addr, listener) in bound {
            let stop = match kind {
                Kind::Admin => self.admin_shutdown.child_token(),
                Kind::Https | Kind::Http => self.shutdown.child_token(),
            };
            self.spawn(kind, listener, stop.clone(), spawner, server.shutdown_grace);
            if let Some(old) = self.slot(kind).replace(Running { addr, stop }) {
                tracing::info!(from = %old.addr, to = %addr, "listener moved");
                old.stop.cancel();
            }
        }
        for (kind, addr, _) in wanted(server) {
            if addr.is_none() {
                if let Some(old) = self.slot(kind).take() {
                    tracing::info!(addr = %old.addr, "listener closed");
                    old.stop.cancel();
                }
            }
        }
    }

    fn slot(&mut self, kind: Kind) -> &mut Option<Running> {
        match kind {
            Kind::Https => &mut self.https,
            Kind::Http => &mut self.http,
            Kind::Admin => &mut self.admin,
        }
    }

    fn spawn(
        &mut self,
        kind: Kind,
        listener: TcpListener,
        stop: CancellationToken,
        s: &Spawner,
        grace: Duration,
    ) {
        match kind {
            Kind::Https => self.tasks.spawn(mirrorgate_proxy::serve_https(
                listener,
                s.tls_config.clone(),
                s.gateway.clone(),
                s.caps.clone(),
                stop,
                grace,
            )),
            Kind::Http => self.tasks.spawn(mirrorgate_proxy::serve_http(
                listener,
                Some(s.http01.clone()),
                s.gateway.clone(),
                s.caps.clone(),
                stop,
            )),
            Kind::Admin => self.admin_tasks.spawn(mirrorgate_proxy::serve_admin(
                listener,
                s.metrics.clone(),
                s.health.clone(),
                s.gateway.clone(),
                stop,
            )),
        };
    }

    /// Waits for the public listener tasks (after shutdown: until their connections drained or the grace ran
    /// out), then stops the admin listener and waits for it.
    async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.admin_shutdown.cancel();
        while self.admin_tasks.join_next().await.is_some() {}
    }
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
