//! A self-signed certificate for setups that configure neither files nor ACME, so the gateway
//! always speaks TLS. It is kept on disk and reused so users can trust it once.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use tracing::{info, warn};

use crate::error::TlsError;
use crate::material::{load_pem_pair, parse_pem_pair, LoadedCert};
use crate::storage::{ensure_dir, write_atomic};

/// File names under the storage directory.
const CERT_FILE: &str = "self-signed.pem";
const KEY_FILE: &str = "self-signed.key";

/// 825 days: the longest lifetime Apple platforms accept for a trusted server certificate, so
/// a user who trusted it once is not asked again for over two years.
const LIFETIME: Duration = Duration::from_secs(825 * 24 * 3600);
/// Regenerate ahead of expiry so a restart never serves a certificate about to lapse.
const REGENERATE_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Returns an ECDSA P-256 self-signed certificate covering every one of `hosts` (wildcards
/// allowed; none given means `localhost`). A certificate stored earlier under `storage_dir`
/// is reused while it covers exactly these hosts and has more than 30 days left; otherwise a
/// new one is generated and stored (`self-signed.pem`, `self-signed.key` mode 0600).
pub fn self_signed(hosts: &[String], storage_dir: &Path) -> Result<LoadedCert, TlsError> {
    let mut wanted: Vec<String> = hosts
        .iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if wanted.is_empty() {
        wanted.push("localhost".to_owned());
    }
    wanted.sort();
    wanted.dedup();

    ensure_dir(storage_dir)?;
    let cert_path = storage_dir.join(CERT_FILE);
    let key_path = storage_dir.join(KEY_FILE);
    if cert_path.exists() {
        match load_pem_pair(&cert_path, &key_path) {
            Ok(existing) if reusable(&existing, &wanted) => {
                info!(path = %cert_path.display(), "reusing stored self-signed certificate");
                return Ok(existing);
            }
            Ok(_) => info!(
                path = %cert_path.display(),
                "stored self-signed certificate covers other hosts or expires soon; regenerating"
            ),
            Err(e) => warn!(error = %e, "stored self-signed certificate unusable; regenerating"),
        }
    }

    let (cert_pem, key_pem) = generate(&wanted)?;
    // Key first: a crash between the two writes leaves a mismatched pair, which the next
    // start detects and regenerates, rather than a certificate without its key.
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
    info!(path = %cert_path.display(), hosts = ?wanted, "generated self-signed certificate");
    parse_pem_pair(
        cert_pem.as_bytes(),
        &cert_path,
        key_pem.as_bytes(),
        &key_path,
    )
}

fn reusable(existing: &LoadedCert, wanted: &[String]) -> bool {
    let mut have = existing.info.hosts.clone();
    have.sort();
    have.dedup();
    let now = SystemTime::now();
    have == wanted
        && existing.info.is_valid_at(now)
        && existing
            .info
            .not_after
            .duration_since(now)
            .is_ok_and(|left| left > REGENERATE_BEFORE)
}

fn generate(hosts: &[String]) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::generate("self-signed key", e))?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| TlsError::generate("self-signed certificate", e))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mirrorgate self-signed");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clients whose clock runs a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + LIFETIME;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::generate("self-signed certificate", e))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    // The certificate covers every host (wildcards too), and the key is private, in a private dir.
    #[test]
    fn covers_hosts_and_stores_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("certs");
        let c = self_signed(&hosts(&["b.test", "*.w.test"]), &storage).unwrap();
        assert_eq!(c.info.hosts, vec!["*.w.test", "b.test"]);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&storage.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&storage), 0o700);
    }

    // A restart with the same hosts reuses the stored certificate byte for byte.
    #[test]
    fn reused_across_restarts_for_same_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(&hosts(&["a.test", "b.test"]), dir.path()).unwrap();
        let again = self_signed(&hosts(&["B.test", "a.test"]), dir.path()).unwrap();
        assert_eq!(first.key.cert, again.key.cert);
    }

    // A changed host list yields a new certificate that covers the new list.
    #[test]
    fn regenerated_when_hosts_change() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(&hosts(&["a.test"]), dir.path()).unwrap();
        let second = self_signed(&hosts(&["a.test", "c.test"]), dir.path()).unwrap();
        assert_ne!(first.key.cert, second.key.cert);
        assert_eq!(second.info.hosts, vec!["a.test", "c.test"]);
    }

    // A corrupt stored pair is replaced instead of failing start-up.
    #[test]
    fn regenerated_when_stored_pair_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        self_signed(&hosts(&["a.test"]), dir.path()).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        let c = self_signed(&hosts(&["a.test"]), dir.path()).unwrap();
        assert_eq!(c.info.hosts, vec!["a.test"]);
    }
}
