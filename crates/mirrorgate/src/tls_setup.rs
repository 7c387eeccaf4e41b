//! The TLS front door from `[tls]`: one SNI resolver for the life of the process, and the certificate source
//! feeding it (self-signed, watched files or ACME) with the hooks that report certificates to metrics.
//!
//! On reload a changed `[tls]` section (or a changed set of route hosts) starts the new source *before* the old
//! one's background tasks are stopped; the listeners never change their rustls config, only what the resolver
//! holds, so open connections are untouched.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use arc_swap::ArcSwapOption;
use mirrorgate_config::{AcmeChallenge, Config, TlsConfig, TlsSource};
use mirrorgate_metrics::{Health, Metrics, Outcome};
use mirrorgate_proxy::Http01Responder;
use mirrorgate_tls::{
    AcmeManager, AcmeSpec, CertEvents, CertResolver, CertTable, ChallengeKind, FileWatcher,
    Http01Tokens, LoadedCert, TlsError,
};
use tokio_util::sync::CancellationToken;

/// Reports certificate events as Prometheus series.
struct MetricsEvents(Arc<Metrics>);

impl CertEvents for MetricsEvents {
    fn on_loaded(&self, host: &str, not_after: SystemTime) {
        self.0.set_certificate_expiry(host, not_after);
    }

    fn on_renewal(&self, result: Result<(), &TlsError>) {
        self.0.acme_renewal(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
    }
}

/// What decides the certificate source; a reload that changes neither keeps the running source.
#[derive(PartialEq)]
struct Source {
    tls: TlsConfig,
    /// The route hosts a made certificate must cover (self-signed, ACME); empty for static files, which cover
    /// what they cover whatever the routes say.
    hosts: Vec<String>,
}

impl Source {
    fn of(config: &Config) -> Self {
        let hosts = match config.tls.source {
            TlsSource::Files { .. } => Vec::new(),
            TlsSource::SelfSigned | TlsSource::Acme(_) => config.certificate_hosts(),
        };
        Source {
            tls: config.tls.clone(),
            hosts,
        }
    }
}

/// The resolver, the rustls config built on it, and the running certificate source.
pub struct TlsManager {
    resolver: Arc<CertResolver>,
    pub server_config: Arc<rustls::ServerConfig>,
    /// Current HTTP-01 answers; the plain listener's responder reads through this, so a new ACME source is
    /// answered without restarting that listener.
    http01: Arc<ArcSwapOption<Http01Tokens>>,
    events: Arc<dyn CertEvents>,
    source: Source,
    /// Stops the current source's background tasks (file watcher, ACME loop).
    tasks: CancellationToken,
    shutdown: CancellationToken,
}

impl TlsManager {
    /// Sets up certificates from `config` and spawns their background tasks on the current runtime.
    pub fn start(
        config: &Config,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let resolver = Arc::new(CertResolver::new(CertTable::new()));
        let server_config = mirrorgate_tls::server_config(resolver.clone())
            .context("building the TLS server config")?;
        let mut manager = TlsManager {
            resolver,
            server_config,
            http01: Arc::new(ArcSwapOption::empty()),
            events: Arc::new(MetricsEvents(metrics.clone())),
            source: Source::of(config),
            tasks: shutdown.child_token(),
            shutdown: shutdown.clone(),
        };
        let tasks = manager.tasks.clone();
        manager.start_source(config, &tasks)?;
        health.set_certificate_ready(true);
        Ok(manager)
    }

    /// The HTTP-01 responder for the plain listener (answers nothing unless ACME with HTTP-01 runs).
    pub fn http01_responder(&self) -> Http01Responder {
        let current = self.http01.clone();
        Arc::new(move |token: &str| current.load().as_ref().and_then(|t| t.get(token)))
    }

    /// Applies a reloaded config: a changed `[tls]` or host set starts the new source first; if it fails, the
    /// old source keeps running and the error is returned (the reload is refused).
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<bool> {
        let source = Source::of(config);
        if source == self.source {
            return Ok(false);
        }
        let tasks = self.shutdown.child_token();
        if let Err(e) = self.start_source(config, &tasks) {
            tasks.cancel();
            return Err(e);
        }
        std::mem::replace(&mut self.tasks, tasks).cancel();
        self.source = source;
        Ok(true)
    }

    fn start_source(&mut self, config: &Config, tasks: &CancellationToken) -> anyhow::Result<()> {
        let hosts = config.certificate_hosts();
        let storage = &config.tls.storage;
        match &config.tls.source {
            TlsSource::SelfSigned => {
                let cert = self_signed(&hosts, storage)?;
                self.install_only(&cert);
                self.http01.store(None);
                tracing::warn!(
                    cert = %storage.join("self-signed.pem").display(),
                    "serving a self-signed certificate: clients must trust this file (or configure [tls] cert/key or [tls.acme])"
                );
            }
            TlsSource::Files { cert, key } => {
                let context = || format!("loading {} and {}", cert.display(), key.display());
                // Load first, then swap the whole table at once: a handshake never sees an empty table, and
                // hosts of a previous certificate do not linger.
                let loaded = mirrorgate_tls::load_pem_pair(cert, key).with_context(context)?;
                self.install_only(&loaded);
                let mut watcher =
                    FileWatcher::new(cert, key, self.resolver.clone()).events(self.events.clone());
                watcher.load_initial().with_context(context)?;
                self.http01.store(None);
                tokio::spawn(watcher.run(tasks.clone()));
            }
            TlsSource::Acme(acme) => {
                if acme.challenge == AcmeChallenge::Http01 && config.server.http.is_none() {
                    anyhow::bail!("tls.acme.challenge = \"http-01\" needs server.http (the CA validates over plain HTTP)");
                }
                let mut spec =
                    AcmeSpec::new(acme.directory.clone(), hosts.clone(), storage.clone());
                spec.contact = acme.contact.clone();
                spec.directory_ca = acme.directory_ca.clone();
                spec.challenge = match acme.challenge {
                    AcmeChallenge::Http01 => ChallengeKind::Http01,
                    AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
                };
                // Until ACME delivers, the self-signed certificate keeps the listener usable; a stored ACME
                // certificate (loaded by the manager) replaces it at once.
                let fallback = self_signed(&hosts, storage)?;
                self.install_only(&fallback);
                let manager = AcmeManager::new(spec, self.resolver.clone())
                    .context("setting up ACME")?
                    .events(self.events.clone());
                self.http01.store(Some(Arc::new(manager.http01_tokens())));
                tokio::spawn(manager.run(tasks.clone()));
            }
        }
        Ok(())
    }

    /// Serves `cert` alone (and as the default for unknown names).
    fn install_only(&self, cert: &LoadedCert) {
        let mut table = CertTable::new();
        table.insert_cert(cert);
        table.set_default(cert.key.clone());
        self.resolver.replace(table);
        for host in &cert.info.hosts {
            self.events.on_loaded(host, cert.info.not_after);
        }
    }
}

fn self_signed(hosts: &[String], storage: &std::path::Path) -> anyhow::Result<LoadedCert> {
    mirrorgate_tls::self_signed(hosts, storage).with_context(|| {
        format!(
            "making the self-signed certificate under {}",
            storage.display()
        )
    })
}
