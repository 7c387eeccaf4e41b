//! Picking the certificate for a handshake from its SNI name, with tables that can be swapped
//! while the gateway serves: a renewal or a rotated Secret must reach new connections without
//! a restart and without disturbing connections already established.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::material::LoadedCert;

/// The ALPN protocol id of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// An immutable host → certificate table; build a new one and hand it to
/// [`CertResolver::replace`] (or edit a copy in [`CertResolver::update`]) to change what is served.
#[derive(Clone, Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`: `*.docker.example` is stored as `docker.example`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertTable")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("default", &self.default.is_some())
            .finish()
    }
}

impl CertTable {
    /// An empty table: every handshake fails until something is inserted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `host` with `key`. `*.suffix` registers a one-label wildcard.
    pub fn insert(&mut self, host: &str, key: Arc<CertifiedKey>) {
        let host = normalize(host);
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard.insert(suffix.to_owned(), key),
            None => self.exact.insert(host, key),
        };
    }

    /// Serves every SAN host of `cert` with it.
    pub fn insert_cert(&mut self, cert: &LoadedCert) {
        for host in &cert.info.hosts {
            self.insert(host, cert.key.clone());
        }
    }

    /// The certificate for handshakes whose SNI matches nothing (or is absent).
    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// Whether handshakes matching no entry get a certificate.
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// Removes every entry (default included) pointing at `key`, so a replaced certificate
    /// that covered more hosts than its successor leaves nothing stale behind.
    pub fn remove_key(&mut self, key: &Arc<CertifiedKey>) {
        self.exact.retain(|_, k| !Arc::ptr_eq(k, key));
        self.wildcard.retain(|_, k| !Arc::ptr_eq(k, key));
        if self.default.as_ref().is_some_and(|d| Arc::ptr_eq(d, key)) {
            self.default = None;
        }
    }

    /// Swaps `old` for `new` everywhere: entries (and the default) that pointed at `old` are
    /// dropped, and `new` is inserted for its SAN hosts; it becomes the default if `old` was.
    pub fn replace_cert(&mut self, old: Option<&Arc<CertifiedKey>>, new: &LoadedCert) {
        let was_default = match (old, &self.default) {
            (Some(old), Some(d)) => Arc::ptr_eq(old, d),
            _ => false,
        };
        if let Some(old) = old {
            self.remove_key(old);
        }
        self.insert_cert(new);
        if was_default {
            self.default = Some(new.key.clone());
        }
    }

    /// Exact name first, then a one-label wildcard, then the default.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = normalize(sni);
            if let Some(k) = self.exact.get(&sni) {
                return Some(k.clone());
            }
            if let Some((_, parent)) = sni.split_once('.') {
                if let Some(k) = self.wildcard.get(parent) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }

    /// Whether a certificate is configured specifically for `host` (exact or wildcard).
    /// The HTTP layer can use this to answer 421 for hosts served only by the default.
    pub fn has_host(&self, host: &str) -> bool {
        let host = normalize(host);
        self.exact.contains_key(&host)
            || host
                .split_once('.')
                .is_some_and(|(_, p)| self.wildcard.contains_key(p))
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The `ResolvesServerCert` behind the gateway's `ServerConfig`. Cheap to read on every
/// handshake (one atomic load), swapped whole on change.
#[derive(Default)]
pub struct CertResolver {
    table: ArcSwap<CertTable>,
    /// TLS-ALPN-01 challenge certificates by host; only offered to `acme-tls/1` handshakes.
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("table", &*self.table.load())
            .field(
                "challenges",
                &self.challenges.load().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl CertResolver {
    /// A resolver serving `table`.
    pub fn new(table: CertTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            challenges: ArcSwap::default(),
        }
    }

    /// Serves `table` from the next handshake on; established connections are unaffected.
    pub fn replace(&self, table: CertTable) {
        self.table.store(Arc::new(table));
    }

    /// Edits a copy of the current table and swaps it in; retried if another writer raced us,
    /// so concurrent updaters (file watcher, ACME) never lose each other's changes.
    pub fn update(&self, edit: impl Fn(&mut CertTable)) {
        self.table.rcu(|current| {
            let mut next = CertTable::clone(current);
            edit(&mut next);
            next
        });
    }

    /// The table currently served.
    pub fn table(&self) -> Arc<CertTable> {
        self.table.load_full()
    }

    /// Offers `key` to `acme-tls/1` handshakes for `host` (TLS-ALPN-01).
    pub fn set_challenge(&self, host: &str, key: Arc<CertifiedKey>) {
        let host = normalize(host);
        self.challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(host.clone(), key.clone());
            next
        });
    }

    /// Withdraws the challenge certificate for `host`.
    pub fn clear_challenge(&self, host: &str) {
        let host = normalize(host);
        self.challenges.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(&host);
            next
        });
    }

    #[cfg(test)]
    pub(crate) fn challenges_is_empty(&self) -> bool {
        self.challenges.load().is_empty()
    }

    fn resolve_for(
        &self,
        sni: Option<&str>,
        mut alpn: Option<impl Iterator<Item = impl AsRef<[u8]>>>,
    ) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: the validator offers exactly one protocol, acme-tls/1. Such a handshake
        // gets the challenge certificate or nothing, never a real one.
        let is_challenge = alpn.as_mut().is_some_and(|protocols| {
            let first = protocols.next();
            first.is_some_and(|p| p.as_ref() == ACME_TLS_ALPN) && protocols.next().is_none()
        });
        if is_challenge {
            let sni = normalize(sni?);
            return self.challenges.load().get(&sni).cloned();
        }
        self.table.load().lookup(sni)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_for(client_hello.server_name(), client_hello.alpn())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring;

    fn key() -> Arc<CertifiedKey> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(kp.serialize_der().into());
        Arc::new(
            CertifiedKey::from_der(vec![cert.der().clone()], der, &ring::default_provider())
                .unwrap(),
        )
    }

    fn resolve(r: &CertResolver, sni: Option<&str>, alpn: &[&[u8]]) -> Option<Arc<CertifiedKey>> {
        let alpn = if alpn.is_empty() {
            None
        } else {
            Some(alpn.iter().copied())
        };
        r.resolve_for(sni, alpn)
    }

    // A wildcard covers exactly one extra label, case-insensitively; exact names win.
    #[test]
    fn wildcard_matches_one_label() {
        let (w, e, d) = (key(), key(), key());
        let mut t = CertTable::new();
        t.insert("*.Docker.Test", w.clone());
        t.insert("exact.docker.test", e.clone());
        t.set_default(d.clone());
        assert!(Arc::ptr_eq(&t.lookup(Some("k1.docker.test")).unwrap(), &w));
        assert!(Arc::ptr_eq(&t.lookup(Some("K1.DOCKER.TEST.")).unwrap(), &w));
        assert!(Arc::ptr_eq(
            &t.lookup(Some("exact.docker.test")).unwrap(),
            &e
        ));
        assert!(Arc::ptr_eq(&t.lookup(Some("a.b.docker.test")).unwrap(), &d));
        assert!(Arc::ptr_eq(&t.lookup(Some("docker.test")).unwrap(), &d));
        assert!(Arc::ptr_eq(&t.lookup(None).unwrap(), &d));
        assert!(t.has_host("k1.docker.test") && !t.has_host("docker.test"));
    }

    // Only a ClientHello offering exactly acme-tls/1 sees challenge certs, and never the real one.
    #[test]
    fn acme_tls_alpn_gets_challenge_cert_only() {
        let (real, chal) = (key(), key());
        let mut t = CertTable::new();
        t.insert("a.test", real.clone());
        let r = CertResolver::new(t);
        assert!(resolve(&r, Some("a.test"), &[ACME_TLS_ALPN]).is_none());
        r.set_challenge("a.test", chal.clone());
        let got = resolve(&r, Some("a.test"), &[ACME_TLS_ALPN]).unwrap();
        assert!(Arc::ptr_eq(&got, &chal));
        let got = resolve(&r, Some("a.test"), &[b"h2", ACME_TLS_ALPN]).unwrap();
        assert!(Arc::ptr_eq(&got, &real));
        r.clear_challenge("a.test");
        assert!(resolve(&r, Some("a.test"), &[ACME_TLS_ALPN]).is_none());
    }

    // Replacing a cert drops the hosts only the old one covered and keeps its default role.
    #[test]
    fn replace_cert_removes_stale_hosts() {
        let old = key();
        let mut t = CertTable::new();
        t.insert("gone.test", old.clone());
        t.insert("kept.test", old.clone());
        t.set_default(old.clone());
        let new = LoadedCert {
            key: key(),
            info: crate::material::LeafInfo {
                hosts: vec!["kept.test".into()],
                not_before: std::time::SystemTime::now(),
                not_after: std::time::SystemTime::now(),
            },
        };
        t.replace_cert(Some(&old), &new);
        assert!(!t.has_host("gone.test"));
        assert!(Arc::ptr_eq(&t.lookup(Some("kept.test")).unwrap(), &new.key));
        assert!(Arc::ptr_eq(&t.lookup(Some("gone.test")).unwrap(), &new.key));
    }
}
