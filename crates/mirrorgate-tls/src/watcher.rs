//! Reloading operator-provided certificate files when they change. Polling rather than inotify,
//! because Kubernetes Secret mounts replace files by swapping a symlink, which inotify
//! watches on the old target do not see.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::TlsError;
use crate::events::{report_loaded, CertEvents, NoEvents};
use crate::material::{parse_pem_pair, LoadedCert};
use crate::resolver::CertResolver;

/// What identifies one version of the pair on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    cert_meta: (Option<SystemTime>, u64),
    key_meta: (Option<SystemTime>, u64),
    digest: [u8; 32],
}

/// Watches a cert/key pair and serves each new version that parses and matches; a broken
/// version is reported once and the previous certificate stays in service.
pub struct FileWatcher {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<CertResolver>,
    events: Arc<dyn CertEvents>,
    interval: Duration,
    as_default: bool,
    current: Option<Arc<CertifiedKey>>,
    last_seen: Option<Fingerprint>,
}

impl FileWatcher {
    /// A watcher for `cert_path`/`key_path` feeding `resolver`; polls every 10 s by default and
    /// makes the certificate the resolver's default as well.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        Self {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            resolver,
            events: Arc::new(NoEvents),
            interval: Duration::from_secs(10),
            as_default: true,
            current: None,
            last_seen: None,
        }
    }

    /// How often the files are checked.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Where load events are reported.
    pub fn events(mut self, events: Arc<dyn CertEvents>) -> Self {
        self.events = events;
        self
    }

    /// Whether the certificate also answers handshakes whose SNI matches no table entry.
    pub fn as_default(mut self, as_default: bool) -> Self {
        self.as_default = as_default;
        self
    }

    /// Loads the pair now and serves it. Meant for start-up, where a broken pair is fatal.
    pub fn load_initial(&mut self) -> Result<LoadedCert, TlsError> {
        let (fingerprint, loaded) = self.read()?;
        self.install(&loaded);
        self.last_seen = Some(fingerprint);
        Ok(loaded)
    }

    /// Polls until `cancel` fires. Call [`FileWatcher::load_initial`] first to fail start-up on
    /// a broken pair; otherwise the first poll loads it.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => self.poll_once(),
            }
        }
    }

    /// One check: reload if the files changed since the last check.
    fn poll_once(&mut self) {
        let fingerprint = match fingerprint(&self.cert_path, &self.key_path) {
            Ok((fp, _, _)) => fp,
            Err(e) => {
                // A Secret update can be observed half-way; only a persistent error matters,
                // and the old certificate keeps being served meanwhile.
                warn!(error = %e, "cannot read certificate files; keeping the current certificate");
                return;
            }
        };
        if self.last_seen.as_ref() == Some(&fingerprint) {
            return;
        }
        match self.read() {
            Ok((fp, loaded)) => {
                info!(
                    cert = %self.cert_path.display(),
                    hosts = ?loaded.info.hosts,
                    "certificate files changed; serving the new certificate"
                );
                self.install(&loaded);
                self.last_seen = Some(fp);
            }
            Err(e) => {
                warn!(
                    cert = %self.cert_path.display(),
                    reason = %e,
                    "new certificate files rejected; keeping the current certificate"
                );
                self.last_seen = Some(fingerprint);
            }
        }
    }

    fn read(&self) -> Result<(Fingerprint, LoadedCert), TlsError> {
        let (fp, cert, key) = fingerprint(&self.cert_path, &self.key_path)?;
        let loaded = parse_pem_pair(&cert, &self.cert_path, &key, &self.key_path)?;
        Ok((fp, loaded))
    }

    fn install(&mut self, loaded: &LoadedCert) {
        let old = self.current.clone();
        let as_default = self.as_default;
        self.resolver.update(|table| {
            table.replace_cert(old.as_ref(), loaded);
            if as_default {
                table.set_default(loaded.key.clone());
            }
        });
        self.current = Some(loaded.key.clone());
        report_loaded(self.events.as_ref(), &loaded.info);
    }
}

fn fingerprint(cert: &Path, key: &Path) -> Result<(Fingerprint, Vec<u8>, Vec<u8>), TlsError> {
    let meta = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .map_err(|e| TlsError::io(p, e))
    };
    let cert_meta = meta(cert)?;
    let key_meta = meta(key)?;
    let cert_bytes = std::fs::read(cert).map_err(|e| TlsError::io(cert, e))?;
    let key_bytes = std::fs::read(key).map_err(|e| TlsError::io(key, e))?;
    let mut hasher = Sha256::new();
    hasher.update(&cert_bytes);
    hasher.update([0u8]);
    hasher.update(&key_bytes);
    let fp = Fingerprint {
        cert_meta,
        key_meta,
        digest: hasher.finalize().into(),
    };
    Ok((fp, cert_bytes, key_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{connect, echo_server, served_leaf};

    fn pair(hosts: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    // A good update is served; a mismatched update is rejected and the previous cert stays.
    #[tokio::test]
    async fn good_update_swaps_bad_update_keeps_old_cert() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("site.pem"), dir.path().join("site.key"));
        let (c1, k1) = pair(&["a.test"]);
        std::fs::write(&cert_path, &c1).unwrap();
        std::fs::write(&key_path, &k1).unwrap();

        let resolver = Arc::new(CertResolver::default());
        let mut watcher = FileWatcher::new(&cert_path, &key_path, resolver.clone())
            .interval(Duration::from_millis(50));
        watcher.load_initial().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watcher.run(cancel.clone()));
        let addr = echo_server(resolver.clone()).await;

        let (c2, k2) = pair(&["a.test"]);
        let (_, k3) = pair(&["a.test"]);
        let roots = [der(&c1), der(&c2)];
        assert_eq!(
            served_leaf(&connect(addr, "a.test", &roots).await.unwrap()),
            der(&c1)
        );

        std::fs::write(&key_path, &k2).unwrap();
        std::fs::write(&cert_path, &c2).unwrap();
        let mut served = der(&c1);
        for _ in 0..100 {
            served = served_leaf(&connect(addr, "a.test", &roots).await.unwrap());
            if served == der(&c2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(served, der(&c2), "good update was not picked up");

        // Key from another pair: rejected, c2 keeps being served.
        std::fs::write(&key_path, &k3).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            served_leaf(&connect(addr, "a.test", &roots).await.unwrap()),
            der(&c2)
        );
        // Not even the SNI-less default changed.
        assert!(Arc::ptr_eq(
            &resolver.table().lookup(None).unwrap(),
            &resolver.table().lookup(Some("a.test")).unwrap()
        ));
        cancel.cancel();
        task.await.unwrap();
    }

    // A broken pair at start-up is an error naming the problem, not a silent empty table.
    #[test]
    fn initial_load_reports_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(&["a.test"]);
        let (_, k) = pair(&["a.test"]);
        std::fs::write(dir.path().join("c.pem"), c).unwrap();
        std::fs::write(dir.path().join("k.pem"), k).unwrap();
        let mut w = FileWatcher::new(
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            Arc::new(CertResolver::default()),
        );
        let err = w.load_initial().unwrap_err();
        assert!(
            err.to_string().contains("does not match the certificate"),
            "{err}"
        );
    }
}
