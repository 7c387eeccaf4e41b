//! Certificates through ACME (RFC 8555) with HTTP-01 or TLS-ALPN-01 validation.
//!
//! Serving never waits for the CA: a valid stored certificate is installed in [`AcmeManager::new`],
//! and issuance and renewal run in [`AcmeManager::run`] in the background. A failed attempt
//! keeps whatever is being served and retries with jittered exponential backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

use crate::error::TlsError;
use crate::events::{report_loaded, CertEvents, NoEvents};
use crate::material::{load_pem_pair, parse_pem_pair, LoadedCert};
use crate::resolver::CertResolver;
use crate::storage::{ensure_dir, write_atomic};

const ACCOUNT_FILE: &str = "acme-account.json";
/// Where HTTP-01 validators look (RFC 8555 §8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Which validation the CA is asked to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// The CA fetches `http://<host>/.well-known/acme-challenge/<token>` on port 80; the plain
    /// HTTP listener must answer from [`Http01Tokens`].
    Http01,
    /// The CA opens TLS to `<host>:443` with ALPN `acme-tls/1`; the resolver answers it.
    TlsAlpn01,
}

/// What to obtain, from whom, and where to keep it.
#[derive(Clone, Debug)]
pub struct AcmeSpec {
    /// The CA's directory URL.
    pub directory: Url,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    pub challenge: ChallengeKind,
    /// Extra PEM root(s) to trust for the CA's own HTTPS, on top of the public roots (for a
    /// private or test CA such as pebble).
    pub directory_ca: Option<PathBuf>,
    /// Hosts to cover with one certificate. Wildcards are skipped: they need DNS-01.
    pub hosts: Vec<String>,
    /// Directory for the account, keys and certificates (created 0700 if missing).
    pub storage: PathBuf,
    /// Renew when this fraction of the lifetime is left (1/3: Let's Encrypt's advice).
    pub renew_before_fraction: f64,
    /// First retry delay after a failure; doubles up to `retry_max`, with ±25% jitter.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long to wait for validation and for issuance before giving the attempt up.
    pub poll_timeout: Duration,
}

impl AcmeSpec {
    /// A spec with the documented defaults: TLS-ALPN-01, renew at 2/3 of the lifetime,
    /// retries from 30 s doubling to 1 h, 2 min per polling phase.
    pub fn new(directory: Url, hosts: Vec<String>, storage: impl Into<PathBuf>) -> Self {
        Self {
            directory,
            contact: Vec::new(),
            challenge: ChallengeKind::TlsAlpn01,
            directory_ca: None,
            hosts,
            storage: storage.into(),
            renew_before_fraction: 1.0 / 3.0,
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            poll_timeout: Duration::from_secs(120),
        }
    }
}

/// HTTP-01 answers (token → key authorization) shared with the plain HTTP listener.
#[derive(Clone, Default)]
pub struct Http01Tokens(Arc<ArcSwap<HashMap<String, String>>>);

impl std::fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key authorizations are not secrets, but there is no reason to print them either.
        f.debug_tuple("Http01Tokens")
            .field(&self.0.load().len())
            .finish()
    }
}

impl Http01Tokens {
    /// The key authorization for `token`, if a validation for it is under way.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.load().get(token).cloned()
    }

    /// Answers a request path: `Some(body)` for `/.well-known/acme-challenge/<known token>`
    /// (serve it as `text/plain` 200), `None` otherwise (404).
    pub fn respond(&self, path: &str) -> Option<String> {
        self.get(path.strip_prefix(HTTP01_PREFIX)?)
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        self.0.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_owned(), key_authorization.to_owned());
            m
        });
    }

    fn remove(&self, token: &str) {
        self.0.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }
}

/// The account file: credentials plus the directory they belong to, so pointing the gateway
/// at another CA creates a new account instead of failing with the old one.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Obtains and renews one certificate for a set of hosts and keeps it in the resolver.
pub struct AcmeManager {
    spec: AcmeSpec,
    hosts: Vec<String>,
    name: String,
    resolver: Arc<CertResolver>,
    tokens: Http01Tokens,
    events: Arc<dyn CertEvents>,
    current: Option<LoadedCert>,
    account: Option<Account>,
}

impl AcmeManager {
    /// Prepares the storage, and installs a stored certificate at once if it still covers the
    /// hosts and is valid. Does not contact the CA.
    pub fn new(spec: AcmeSpec, resolver: Arc<CertResolver>) -> Result<Self, TlsError> {
        let mut hosts = Vec::new();
        for host in &spec.hosts {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            if host.starts_with("*.") {
                warn!(host = %host, "ACME skips wildcard hosts (they need DNS-01); serve them from files");
            } else if !host.is_empty() && !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        let Some(first) = hosts.first() else {
            return Err(TlsError::AcmeConfig(
                "no non-wildcard host to request a certificate for".into(),
            ));
        };
        let name = first.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_",
        );
        ensure_dir(&spec.storage)?;
        let mut manager = Self {
            spec,
            hosts,
            name,
            resolver,
            tokens: Http01Tokens::default(),
            events: Arc::new(NoEvents),
            current: None,
            account: None,
        };
        let (cert_path, key_path) = manager.cert_paths();
        if cert_path.exists() {
            match load_pem_pair(&cert_path, &key_path) {
                Ok(stored) if stored.info.covers_all(&manager.hosts) => {
                    if stored.info.is_valid_at(SystemTime::now()) {
                        info!(cert = %cert_path.display(), "serving stored ACME certificate");
                        manager.install(stored);
                    } else {
                        info!(cert = %cert_path.display(), "stored ACME certificate expired");
                    }
                }
                Ok(_) => info!(
                    cert = %cert_path.display(),
                    "stored ACME certificate does not cover every host; a new one will be ordered"
                ),
                Err(e) => {
                    warn!(error = %e, "stored ACME certificate unusable; a new one will be ordered")
                }
            }
        }
        Ok(manager)
    }

    /// Where load and renewal events go (metrics). Events for a certificate installed in
    /// [`AcmeManager::new`] were sent to the no-op default; they are replayed here.
    pub fn events(mut self, events: Arc<dyn CertEvents>) -> Self {
        if let Some(current) = &self.current {
            report_loaded(events.as_ref(), &current.info);
        }
        self.events = events;
        self
    }

    /// The HTTP-01 answers the plain HTTP listener must serve.
    pub fn http01_tokens(&self) -> Http01Tokens {
        self.tokens.clone()
    }

    /// The certificate currently served by this manager, if any.
    pub fn current(&self) -> Option<&LoadedCert> {
        self.current.as_ref()
    }

    /// When the current certificate is due for renewal (`None`: no certificate yet, due now).
    pub fn renew_at(&self) -> Option<SystemTime> {
        let info = &self.current.as_ref()?.info;
        let fraction = self.spec.renew_before_fraction.clamp(0.0, 1.0);
        Some(info.not_after - info.lifetime().mul_f64(fraction))
    }

    /// Runs until `cancel` fires: obtains a certificate when none is served or renewal is due,
    /// and after a failure retries with jittered exponential backoff, keeping the current one.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = if failures > 0 {
                self.backoff(failures)
            } else {
                self.renew_at()
                    .and_then(|at| at.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::ZERO)
            };
            if !wait.is_zero() {
                info!(in_secs = wait.as_secs(), "next ACME attempt scheduled");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.obtain() => r,
            };
            match result {
                Ok(_) => {
                    failures = 0;
                    self.events.on_renewal(Ok(()));
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, failures, "ACME attempt failed; keeping the current certificate");
                    self.events.on_renewal(Err(&e));
                }
            }
        }
    }

    /// One full issuance: order, validate, finalize, store, serve.
    pub async fn obtain(&mut self) -> Result<LoadedCert, TlsError> {
        let account = self.account().await?.clone();
        let identifiers: Vec<Identifier> = self
            .hosts
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(acme("new order"))?;
        let order_url = order.url().to_owned();
        info!(order = %order_url, hosts = ?self.hosts, "ACME order created");

        let mut cleanup = Cleanup {
            tokens: self.tokens.clone(),
            resolver: self.resolver.clone(),
            http_tokens: Vec::new(),
            alpn_hosts: Vec::new(),
        };
        let result = self
            .validate_and_finalize(&mut order, &order_url, &mut cleanup)
            .await;
        cleanup.run();
        let (chain_pem, key_pem) = result?;

        let (cert_path, key_path) = self.cert_paths();
        // Check before storing: a chain that does not match its key must not replace a good pair.
        let loaded = parse_pem_pair(
            chain_pem.as_bytes(),
            &cert_path,
            key_pem.as_bytes(),
            &key_path,
        )?;
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, chain_pem.as_bytes(), 0o644)?;
        info!(order = %order_url, cert = %cert_path.display(), "ACME certificate issued and stored");
        self.install(loaded.clone());
        Ok(loaded)
    }

    async fn validate_and_finalize(
        &self,
        order: &mut instant_acme::Order,
        order_url: &str,
        cleanup: &mut Cleanup,
    ) -> Result<(String, String), TlsError> {
        let challenge_type = match self.spec.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme("fetch authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(TlsError::AcmeProtocol {
                        step: "authorization",
                        reason: format!("authorization is {other:?}"),
                    })
                }
            }
            let mut challenge =
                authz
                    .challenge(challenge_type.clone())
                    .ok_or(TlsError::AcmeProtocol {
                        step: "authorization",
                        reason: format!("the CA offers no {challenge_type:?} challenge"),
                    })?;
            let host = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match self.spec.challenge {
                ChallengeKind::Http01 => {
                    self.tokens
                        .insert(&challenge.token, key_authorization.as_str());
                    cleanup.http_tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let cert = alpn_challenge_cert(&host, key_authorization.digest().as_ref())?;
                    self.resolver.set_challenge(&host, cert);
                    cleanup.alpn_hosts.push(host.clone());
                }
            }
            info!(order = %order_url, host = %host, challenge = ?challenge_type, "ACME challenge ready");
            challenge
                .set_ready()
                .await
                .map_err(acme("set challenge ready"))?;
        }

        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.spec.poll_timeout);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(acme("wait for validation"))?;
        if status != OrderStatus::Ready {
            return Err(TlsError::AcmeProtocol {
                step: "wait for validation",
                reason: format!("order {order_url} is {status:?}"),
            });
        }
        info!(order = %order_url, "ACME order validated; finalizing");

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| TlsError::generate("certificate key", e))?;
        let mut params =
            CertificateParams::new(self.hosts.clone()).map_err(|e| TlsError::generate("CSR", e))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| TlsError::generate("CSR", e))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(acme("finalize"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(acme("download certificate"))?;
        Ok((chain, key.serialize_pem()))
    }

    async fn account(&mut self) -> Result<&Account, TlsError> {
        if self.account.is_none() {
            self.account = Some(self.load_or_create_account().await?);
        }
        self.account
            .as_ref()
            .ok_or_else(|| TlsError::AcmeConfig("account unavailable".into()))
    }

    async fn load_or_create_account(&self) -> Result<Account, TlsError> {
        let path = self.spec.storage.join(ACCOUNT_FILE);
        let directory = self.spec.directory.as_str().to_owned();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredAccount =
                    serde_json::from_slice(&bytes).map_err(|source| TlsError::AccountFile {
                        path: path.clone(),
                        source,
                    })?;
                if stored.directory == directory {
                    let account = Account::builder_with_http(self.http_client()?)
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(acme("restore account"))?;
                    info!(account = %account.id(), "using stored ACME account");
                    return Ok(account);
                }
                info!(directory = %directory, "stored ACME account belongs to another directory; creating a new one");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TlsError::io(path, e)),
        }
        let contact: Vec<&str> = self.spec.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(self.http_client()?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .map_err(acme("create account"))?;
        let json = serde_json::to_vec_pretty(&StoredAccount {
            directory,
            credentials,
        })
        .map_err(|source| TlsError::AccountFile {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json, 0o600)?;
        info!(account = %account.id(), file = %path.display(), "ACME account created");
        Ok(account)
    }

    /// The client used to talk to the CA: ring provider, public roots plus `directory_ca`.
    fn http_client(&self) -> Result<Box<dyn HttpClient>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &self.spec.directory_ca {
            let pem = std::fs::read(ca).map_err(|e| TlsError::io(ca, e))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| TlsError::Pem {
                    path: ca.clone(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: ca.clone() });
            }
            for cert in certs {
                roots.add(cert).map_err(TlsError::Rustls)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let client: HyperClient<_, BodyWrapper<Bytes>> =
            HyperClient::builder(TokioExecutor::new()).build(connector);
        Ok(Box::new(client))
    }

    fn cert_paths(&self) -> (PathBuf, PathBuf) {
        let dir: &Path = &self.spec.storage;
        (
            dir.join(format!("{}.pem", self.name)),
            dir.join(format!("{}.key", self.name)),
        )
    }

    fn install(&mut self, cert: LoadedCert) {
        let old = self.current.as_ref().map(|c| c.key.clone());
        self.resolver.update(|table| {
            table.replace_cert(old.as_ref(), &cert);
            if !table.has_default() {
                table.set_default(cert.key.clone());
            }
        });
        report_loaded(self.events.as_ref(), &cert.info);
        self.current = Some(cert);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = self
            .spec
            .retry_initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let capped = exp.min(self.spec.retry_max);
        // ±25% so replicas sharing a CA do not retry in lock-step.
        capped.mul_f64(rand::random_range(0.75..1.25))
    }
}

/// Challenge material to withdraw once an attempt ends, whatever its outcome.
struct Cleanup {
    tokens: Http01Tokens,
    resolver: Arc<CertResolver>,
    http_tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Cleanup {
    fn run(&mut self) {
        for token in self.http_tokens.drain(..) {
            self.tokens.remove(&token);
        }
        for host in self.alpn_hosts.drain(..) {
            self.resolver.clear_challenge(&host);
        }
    }
}

/// The self-signed certificate with the `acmeIdentifier` extension that proves control of
/// `host` to a TLS-ALPN-01 validator (RFC 8737 §3).
fn alpn_challenge_cert(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::generate("challenge key", e))?;
    let mut params = CertificateParams::new(vec![host.to_owned()])
        .map_err(|e| TlsError::generate("challenge certificate", e))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::generate("challenge certificate", e))?;
    let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|source| {
        TlsError::Pem {
            path: PathBuf::from("<challenge key>"),
            source,
        }
    })?;
    let signing_key = ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(TlsError::Rustls)?;
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which rejects the critical acmeIdentifier extension. The pair was just made together.
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

fn acme(step: &'static str) -> impl FnOnce(instant_acme::Error) -> TlsError {
    move |source| TlsError::Acme { step, source }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::test_support::{
        connect, echo_server_on, free_port, http01_responder, served_leaf, Pebble,
    };

    fn hosts() -> Vec<String> {
        vec!["a.test".into(), "b.test".into()]
    }

    #[derive(Default)]
    struct Counting {
        ok: AtomicUsize,
        failed: AtomicUsize,
        loaded: AtomicUsize,
    }

    impl CertEvents for Counting {
        fn on_loaded(&self, _host: &str, _not_after: SystemTime) {
            self.loaded.fetch_add(1, Ordering::SeqCst);
        }
        fn on_renewal(&self, result: Result<(), &TlsError>) {
            match result {
                Ok(()) => self.ok.fetch_add(1, Ordering::SeqCst),
                Err(_) => self.failed.fetch_add(1, Ordering::SeqCst),
            };
        }
    }

    /// Issues a certificate for a.test and b.test from a real pebble with `kind`, then checks
    /// the gateway serves the pebble-issued chain for both names and a restart reuses it.
    async fn issue_with(kind: ChallengeKind) {
        let dir = tempfile::tempdir().unwrap();
        let pebble = Pebble::start(dir.path()).await;
        let resolver = Arc::new(CertResolver::default());
        let tls_addr = ([127, 0, 0, 1], pebble.tls_port).into();
        echo_server_on(tls_addr, resolver.clone()).await;

        let storage = dir.path().join("certs");
        let mut spec = AcmeSpec::new(pebble.directory.clone(), hosts(), &storage);
        spec.challenge = kind;
        spec.directory_ca = Some(pebble.listener_ca.clone());
        spec.contact = vec!["mailto:ops@example.test".into()];
        spec.poll_timeout = Duration::from_secs(60);
        let mut manager = AcmeManager::new(spec.clone(), resolver.clone()).unwrap();
        assert!(manager.current().is_none());
        let tokens = manager.http01_tokens();
        if kind == ChallengeKind::Http01 {
            http01_responder(pebble.http_port, tokens.clone()).await;
        }
        let issued = if kind == ChallengeKind::Http01 {
            // Through the background task, as the binary runs it.
            let events = Arc::new(Counting::default());
            let cancel = CancellationToken::new();
            let task = tokio::spawn(manager.events(events.clone()).run(cancel.clone()));
            for _ in 0..600 {
                if events.ok.load(Ordering::SeqCst) + events.failed.load(Ordering::SeqCst) > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cancel.cancel();
            task.await.unwrap();
            assert_eq!(
                events.ok.load(Ordering::SeqCst),
                1,
                "issuance through run() failed"
            );
            assert_eq!(events.loaded.load(Ordering::SeqCst), 2);
            load_pem_pair(storage.join("a.test.pem"), storage.join("a.test.key")).unwrap()
        } else {
            manager.obtain().await.unwrap()
        };
        assert!(
            issued.key.cert.len() >= 2,
            "chain should include the intermediate"
        );
        // Challenge material is withdrawn after the attempt.
        assert_eq!(tokens.0.load().len(), 0);
        assert!(resolver.challenges_is_empty());
        for host in ["a.test", "b.test"] {
            let s = connect(tls_addr, host, std::slice::from_ref(&pebble.root))
                .await
                .unwrap();
            assert_eq!(served_leaf(&s), issued.key.cert[0]);
        }
        let mode = |p: PathBuf| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(storage.join("a.test.key")), 0o600);
        assert_eq!(mode(storage.join(ACCOUNT_FILE)), 0o600);

        // Restart with the CA unreachable: the stored cert is served at once, nothing is due.
        drop(pebble);
        let fresh = Arc::new(CertResolver::default());
        let mut dead = spec;
        dead.directory = format!("https://127.0.0.1:{}/dir", free_port())
            .parse()
            .unwrap();
        let events = Arc::new(Counting::default());
        let restarted = AcmeManager::new(dead, fresh.clone())
            .unwrap()
            .events(events.clone());
        assert_eq!(restarted.current().unwrap().key.cert, issued.key.cert);
        assert!(restarted.renew_at().unwrap() > SystemTime::now());
        assert_eq!(events.loaded.load(Ordering::SeqCst), 2);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(restarted.run(cancel.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            events.failed.load(Ordering::SeqCst),
            0,
            "no CA contact expected"
        );
        let served = fresh.table().lookup(Some("b.test")).unwrap();
        assert_eq!(served.cert, issued.key.cert);
        cancel.cancel();
        task.await.unwrap();
    }

    // TLS-ALPN-01 against real pebble: both hosts validated through the resolver's acme-tls/1 path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pebble_issues_with_tls_alpn_01() {
        issue_with(ChallengeKind::TlsAlpn01).await;
    }

    // HTTP-01 against real pebble: both hosts validated through Http01Tokens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pebble_issues_with_http_01() {
        issue_with(ChallengeKind::Http01).await;
    }

    // CA down: the stored (due) certificate keeps being served and retries back off.
    #[tokio::test]
    async fn ca_down_keeps_cert_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("certs");
        std::fs::create_dir_all(&storage).unwrap();
        // A stored certificate in its last third of life: renewal is due immediately.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(hosts()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(80);
        params.not_after = now + time::Duration::days(10);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(storage.join("a.test.pem"), cert.pem()).unwrap();
        std::fs::write(storage.join("a.test.key"), key.serialize_pem()).unwrap();

        let mut spec = AcmeSpec::new(
            format!("https://127.0.0.1:{}/dir", free_port())
                .parse()
                .unwrap(),
            vec!["a.test".into(), "*.w.test".into(), "b.test".into()],
            &storage,
        );
        spec.retry_initial = Duration::from_millis(40);
        spec.retry_max = Duration::from_millis(160);
        let resolver = Arc::new(CertResolver::default());
        let events = Arc::new(Counting::default());
        let manager = AcmeManager::new(spec, resolver.clone())
            .unwrap()
            .events(events.clone());
        assert!(manager.renew_at().unwrap() < SystemTime::now());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(manager.run(cancel.clone()));
        for _ in 0..200 {
            if events.failed.load(Ordering::SeqCst) >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert!(events.failed.load(Ordering::SeqCst) >= 4);
        assert_eq!(events.ok.load(Ordering::SeqCst), 0);
        let served = resolver.table().lookup(Some("a.test")).unwrap();
        assert_eq!(served.cert[0], *cert.der());
        // The failed attempts left no account file behind.
        assert!(!storage.join(ACCOUNT_FILE).exists());
    }

    // Backoff doubles from the initial delay up to the cap, within the ±25% jitter.
    #[test]
    fn backoff_doubles_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AcmeSpec::new(
            "https://127.0.0.1:1/dir".parse().unwrap(),
            hosts(),
            dir.path(),
        );
        let m = AcmeManager::new(spec, Arc::new(CertResolver::default())).unwrap();
        let within = |d: Duration, base: u64| {
            let base = Duration::from_secs(base);
            d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25)
        };
        assert!(within(m.backoff(1), 30));
        assert!(within(m.backoff(2), 60));
        assert!(within(m.backoff(4), 240));
        assert!(within(m.backoff(30), 3600));
    }

    // Only non-wildcard hosts are ordered; a spec with nothing else is a config error.
    #[test]
    fn wildcards_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AcmeSpec::new(
            "https://127.0.0.1:1/dir".parse().unwrap(),
            vec!["*.w.test".into()],
            dir.path(),
        );
        let err = AcmeManager::new(spec, Arc::new(CertResolver::default()))
            .err()
            .unwrap();
        assert!(matches!(err, TlsError::AcmeConfig(_)), "{err}");
    }

    // The HTTP-01 path prefix is required and unknown tokens are not answered.
    #[test]
    fn http01_tokens_answer_only_known_paths() {
        let t = Http01Tokens::default();
        t.insert("tok", "tok.thumb");
        assert_eq!(
            t.respond("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(t.respond("/tok"), None);
        assert_eq!(t.respond("/.well-known/acme-challenge/other"), None);
        t.remove("tok");
        assert_eq!(t.respond("/.well-known/acme-challenge/tok"), None);
    }
}
