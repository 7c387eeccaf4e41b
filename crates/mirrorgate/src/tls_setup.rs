//! Builds the TLS front door from `[tls]`: the SNI resolver, the certificate source behind it (self-signed,
//! watched files or ACME) and the hooks that report certificates to metrics.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use mirrorgate_config::{AcmeChallenge, Config, TlsSource};
use mirrorgate_metrics::{Health, Metrics, Outcome};
use mirrorgate_proxy::Http01Responder;
use mirrorgate_tls::{
    AcmeManager, AcmeSpec, CertEvents, CertResolver, CertTable, ChallengeKind, FileWatcher,
    TlsError,
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

/// The TLS server config, plus the HTTP-01 responder when ACME uses it.
pub struct FrontDoor {
    pub server_config: Arc<rustls::ServerConfig>,
    pub http01: Option<Http01Responder>,
}

/// Sets up certificates and spawns their background tasks (file watcher, ACME) on the current runtime.
pub fn start(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    cancel: &CancellationToken,
) -> anyhow::Result<FrontDoor> {
    let resolver = Arc::new(CertResolver::new(CertTable::new()));
    let events: Arc<dyn CertEvents> = Arc::new(MetricsEvents(metrics.clone()));
    let hosts = config.certificate_hosts();
    let storage = &config.tls.storage;
    let mut http01 = None;
    match &config.tls.source {
        TlsSource::SelfSigned => {
            let cert = mirrorgate_tls::self_signed(&hosts, storage).with_context(|| {
                format!(
                    "making the self-signed certificate under {}",
                    storage.display()
                )
            })?;
            install_default(&resolver, &cert, events.as_ref());
            tracing::warn!(
                cert = %storage.join("self-signed.pem").display(),
                "serving a self-signed certificate: clients must trust this file (or configure [tls] cert/key or [tls.acme])"
            );
        }
        TlsSource::Files { cert, key } => {
            let mut watcher = FileWatcher::new(cert, key, resolver.clone()).events(events.clone());
            watcher
                .load_initial()
                .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
            tokio::spawn(watcher.run(cancel.clone()));
        }
        TlsSource::Acme(acme) => {
            // Until ACME delivers, the self-signed certificate keeps the listener usable.
            let fallback = mirrorgate_tls::self_signed(&hosts, storage).with_context(|| {
                format!(
                    "making the self-signed certificate under {}",
                    storage.display()
                )
            })?;
            install_default(&resolver, &fallback, events.as_ref());
            let mut spec = AcmeSpec::new(acme.directory.clone(), hosts.clone(), storage.clone());
            spec.contact = acme.contact.clone();
            spec.directory_ca = acme.directory_ca.clone();
            spec.challenge = match acme.challenge {
                AcmeChallenge::Http01 => ChallengeKind::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeKind::TlsAlpn01,
            };
            if spec.challenge == ChallengeKind::Http01 && config.server.http.is_none() {
                anyhow::bail!("tls.acme.challenge = \"http-01\" needs server.http (the CA validates over plain HTTP)");
            }
            let manager = AcmeManager::new(spec, resolver.clone())
                .context("setting up ACME")?
                .events(events.clone());
            let tokens = manager.http01_tokens();
            http01 = Some(Arc::new(move |token: &str| tokens.get(token)) as Http01Responder);
            tokio::spawn(manager.run(cancel.clone()));
        }
    }
    health.set_certificate_ready(true);
    let server_config =
        mirrorgate_tls::server_config(resolver).context("building the TLS server config")?;
    Ok(FrontDoor {
        server_config,
        http01,
    })
}

fn install_default(
    resolver: &CertResolver,
    cert: &mirrorgate_tls::LoadedCert,
    events: &dyn CertEvents,
) {
    let mut table = CertTable::new();
    table.insert_cert(cert);
    table.set_default(cert.key.clone());
    resolver.replace(table);
    for host in &cert.info.hosts {
        events.on_loaded(host, cert.info.not_after);
    }
}
