//! Turning PEM files into a `CertifiedKey` the resolver can serve, and reading back from the
//! leaf what the rest of the gateway needs to know: which hosts it covers and when it expires.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::error::TlsError;

/// A certificate chain with its key, ready to serve, plus what the leaf says about itself.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    /// The chain (leaf first) and signing key, as the resolver hands it to rustls.
    pub key: Arc<CertifiedKey>,
    /// What the leaf certificate covers and until when.
    pub info: LeafInfo,
}

/// The facts about a leaf certificate that routing and metrics care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafInfo {
    /// DNS names from the subjectAltName extension, lower-cased (wildcards kept as `*.x`).
    pub hosts: Vec<String>,
    /// The start of the validity period.
    pub not_before: SystemTime,
    /// The end of the validity period; exported as an expiry metric and used for renewal.
    pub not_after: SystemTime,
}

impl LeafInfo {
    /// Whether the certificate is inside its validity period at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The full validity period (zero if the dates are reversed).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// Whether every one of `hosts` is listed (exactly, case-insensitively) in the SANs.
    pub fn covers_all(&self, hosts: &[String]) -> bool {
        hosts
            .iter()
            .all(|h| self.hosts.iter().any(|s| s.eq_ignore_ascii_case(h)))
    }
}

/// Loads a PEM chain and its private key (PKCS#8, SEC1 or PKCS#1) and checks that the key
/// belongs to the leaf. Errors name the file at fault, because an operator has to fix it.
pub fn load_pem_pair(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<LoadedCert, TlsError> {
    let cert_path = cert_path.as_ref();
    let key_path = key_path.as_ref();
    let cert_pem = std::fs::read(cert_path).map_err(|e| TlsError::io(cert_path, e))?;
    let key_pem = std::fs::read(key_path).map_err(|e| TlsError::io(key_path, e))?;
    parse_pem_pair(&cert_pem, cert_path, &key_pem, key_path)
}

/// Like [`load_pem_pair`] on bytes already read; the paths are only used in error messages.
pub fn parse_pem_pair(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<LoadedCert, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert_path.to_owned(),
            source,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let info = leaf_info(leaf, cert_path)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey {
                path: key_path.to_owned(),
            })
        }
        Err(source) => {
            return Err(TlsError::Pem {
                path: key_path.to_owned(),
                source,
            })
        }
    };
    let signing_key = ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    // ring always knows the public key of keys it loaded, so "unknown" cannot hide a mismatch.
    if certified.keys_match().is_err() {
        return Err(TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
    })
}

/// Reads SAN host names and validity from a DER leaf certificate.
pub fn leaf_info(leaf: &CertificateDer<'_>, path: &Path) -> Result<LeafInfo, TlsError> {
    let bad = |source| TlsError::Certificate {
        path: path.to_owned(),
        source,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => bad(e),
        x509_parser::nom::Err::Incomplete(_) => {
            bad(x509_parser::error::X509Error::InvalidCertificate)
        }
    })?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                hosts.push(dns.to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    Ok(LeafInfo {
        hosts,
        not_before: asn1_to_system(validity.not_before.timestamp()),
        not_after: asn1_to_system(validity.not_after.timestamp()),
    })
}

fn asn1_to_system(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

    fn pair(hosts: &[&str]) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    // A good pair loads and exposes its SAN hosts and expiry.
    #[test]
    fn loads_pair_and_reads_sans() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(&["A.test", "*.b.test"]);
        let loaded = load_pem_pair(
            write(dir.path(), "site.pem", &c),
            write(dir.path(), "site.key", &k),
        )
        .unwrap();
        assert_eq!(loaded.info.hosts, vec!["a.test", "*.b.test"]);
        assert!(loaded.info.not_after > SystemTime::now());
    }

    // A key from another pair is rejected, and the message says so and names both files.
    #[test]
    fn mismatched_key_is_rejected_with_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(&["a.test"]);
        let (_, other_key) = pair(&["a.test"]);
        let err = load_pem_pair(
            write(dir.path(), "site.pem", &c),
            write(dir.path(), "site.key", &other_key),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{msg}");
        assert!(msg.contains("does not match the certificate"), "{msg}");
        assert!(
            msg.contains("site.key") && msg.contains("site.pem"),
            "{msg}"
        );
    }

    // A cert file with no CERTIFICATE block names the file.
    #[test]
    fn empty_cert_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, k) = pair(&["a.test"]);
        let err = load_pem_pair(
            write(dir.path(), "site.pem", "nothing here\n"),
            write(dir.path(), "site.key", &k),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("no certificate found in")
                && err.to_string().ends_with("site.pem"),
            "{err}"
        );
    }

    // A key file that holds only a certificate says no key was found.
    #[test]
    fn missing_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = pair(&["a.test"]);
        let err = load_pem_pair(
            write(dir.path(), "site.pem", &c),
            write(dir.path(), "site.key", &c),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("site.key"), "{err}");
    }
}
