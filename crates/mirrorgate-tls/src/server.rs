//! The one rustls `ServerConfig` the gateway's TLS listener uses.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::ServerConfig;

use crate::error::TlsError;
use crate::resolver::{CertResolver, ACME_TLS_ALPN};

/// Builds the listener's config: TLS 1.3 and 1.2 (older registry clients still speak 1.2),
/// the ring provider named explicitly so no other provider can be picked up by accident, and
/// ALPN `h2`, `http/1.1` and `acme-tls/1`.
///
/// A connection that negotiated `acme-tls/1` was a TLS-ALPN-01 validation: the HTTP layer must
/// close it after the handshake instead of serving HTTP on it.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::resolver::CertTable;
    use crate::self_signed::self_signed;
    use crate::test_support::{connect, echo_server, ping, served_leaf};

    fn cert(dir: &std::path::Path, hosts: &[&str]) -> crate::LoadedCert {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        self_signed(&hosts, dir).unwrap()
    }

    // Each SNI name gets its own certificate, a wildcard covers its subdomains, and an unknown
    // name falls back to the default (the HTTP layer answers 421 there).
    #[tokio::test]
    async fn sni_selects_cert_with_wildcard_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = cert(&dir.path().join("a"), &["a.test"]);
        let b = cert(&dir.path().join("b"), &["b.test", "*.w.test"]);
        let d = cert(&dir.path().join("d"), &["default.test"]);
        let mut table = CertTable::new();
        table.insert_cert(&a);
        table.insert_cert(&b);
        table.set_default(d.key.clone());
        let addr = echo_server(Arc::new(CertResolver::new(table))).await;
        let roots = [
            a.key.cert[0].clone(),
            b.key.cert[0].clone(),
            d.key.cert[0].clone(),
        ];

        let s = connect(addr, "a.test", &roots).await.unwrap();
        assert_eq!(served_leaf(&s), a.key.cert[0]);
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let s = connect(addr, "b.test", &roots).await.unwrap();
        assert_eq!(served_leaf(&s), b.key.cert[0]);
        let s = connect(addr, "k.w.test", &roots).await.unwrap();
        assert_eq!(served_leaf(&s), b.key.cert[0]);
        // The default does not cover other.test, so verification fails: proof it was served.
        let err = connect(addr, "other.test", &roots).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("valid for DnsName(\"default.test\")"),
            "{err}"
        );
    }

    // A swapped table reaches the next handshake while an established connection keeps working.
    #[tokio::test]
    async fn live_swap_seen_by_new_connection_old_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let one = cert(&dir.path().join("1"), &["a.test"]);
        let two = cert(&dir.path().join("2"), &["a.test", "x.test"]);
        let mut table = CertTable::new();
        table.insert_cert(&one);
        let resolver = Arc::new(CertResolver::new(table));
        let addr = echo_server(resolver.clone()).await;
        let roots = [one.key.cert[0].clone(), two.key.cert[0].clone()];

        let mut old = connect(addr, "a.test", &roots).await.unwrap();
        assert_eq!(served_leaf(&old), one.key.cert[0]);
        let mut table = CertTable::new();
        table.insert_cert(&two);
        resolver.replace(table);
        let new = connect(addr, "a.test", &roots).await.unwrap();
        assert_eq!(served_leaf(&new), two.key.cert[0]);
        ping(&mut old).await;
    }

    // With no default, an unknown SNI fails the handshake rather than leaking some other cert.
    #[tokio::test]
    async fn no_default_means_unknown_sni_fails() {
        let dir = tempfile::tempdir().unwrap();
        let a = cert(dir.path(), &["a.test"]);
        let mut table = CertTable::new();
        table.insert_cert(&a);
        let addr = echo_server(Arc::new(CertResolver::new(table))).await;
        assert!(connect(addr, "zzz.test", &[a.key.cert[0].clone()])
            .await
            .is_err());
    }
}
