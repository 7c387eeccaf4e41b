//! The token signing key: ES256 (P-256), PKCS#8 PEM on disk, generated on first start, with a
//! self-signed certificate beside it for distribution's `auth.token.rootcertbundle`.
//!
//! distribution 2.8 finds the verification key either through the JWT header's `x5c` (a certificate
//! chain it verifies against the bundle) or through `kid` (the libtrust fingerprint of a key in the
//! bundle). We send both, so either path works, and both point at the same certificate file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use data_encoding::BASE32_NOPAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use sha2::{Digest, Sha256};
use time::{Duration as TimeDuration, OffsetDateTime};

use crate::error::AuthError;

/// How long a generated certificate is valid. Distribution refuses an expired bundle certificate, and
/// renewing means editing the registry's config, so it is long.
const CERT_VALIDITY_DAYS: i64 = 3650;
/// A certificate closer than this to its end is regenerated at start (and a warning says to update the
/// registry's bundle).
const CERT_RENEW_BEFORE_DAYS: i64 = 30;

/// The loaded signing key with everything derived from it.
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    key_id: String,
    cert_der: Vec<u8>,
    cert_pem: String,
    cert_path: PathBuf,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("key_id", &self.key_id)
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// `<key>.crt` beside the key: `token-key.pem` → `token-key.crt`.
pub fn certificate_path_for(key_path: &Path) -> PathBuf {
    let candidate = key_path.with_extension("crt");
    if candidate == key_path {
        let mut s = key_path.as_os_str().to_owned();
        s.push(".crt");
        PathBuf::from(s)
    } else {
        candidate
    }
}

/// The libtrust key id distribution 2.8 matches `kid` against: the first 240 bits of SHA-256 over the
/// SubjectPublicKeyInfo DER, base32 (RFC 4648, no padding), in twelve `:`-joined groups of four.
pub fn libtrust_key_id(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    let encoded = BASE32_NOPAD.encode(&digest[..30]);
    let groups: Vec<&str> = encoded
        .as_bytes()
        .chunks(4)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    groups.join(":")
}

impl TokenKey {
    /// Loads the PKCS#8 PEM key at `path`, or generates one (mode 0600, written atomically) when the
    /// file is missing. Makes sure a matching, unexpired self-signed certificate sits at
    /// [`certificate_path_for`]`(path)`, writing a new one when it is missing, stale or for another key.
    /// Blocking file I/O: call at start-up or from `spawn_blocking`.
    pub fn load_or_generate(path: &Path) -> Result<Self, AuthError> {
        let key_pair = match fs::read_to_string(path) {
            Ok(pem) => {
                warn_if_readable_by_others(path);
                let kp = KeyPair::from_pem(&pem)
                    .map_err(|e| key_err(path, format!("not a PKCS#8 PEM private key ({e})")))?;
                if kp.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
                    return Err(key_err(
                        path,
                        "the token key must be ECDSA P-256 (ES256)".into(),
                    ));
                }
                kp
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kp = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(AuthError::KeyGen)?;
                write_atomic(path, kp.serialize_pem().as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                kp
            }
            Err(source) => {
                return Err(AuthError::Io {
                    what: "reading token key",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::from_key_pair(path, &key_pair)
    }

    fn from_key_pair(path: &Path, key_pair: &KeyPair) -> Result<Self, AuthError> {
        let spki = key_pair.subject_public_key_info();
        let cert_path = certificate_path_for(path);
        let cert_der = match existing_cert(&cert_path, &spki) {
            Some(der) => der,
            None => {
                let cert = self_signed(key_pair)?;
                write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
                tracing::warn!(
                    path = %cert_path.display(),
                    "wrote a new token certificate; put it in the registry's auth.token.rootcertbundle"
                );
                cert.der().to_vec()
            }
        };
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        Ok(TokenKey {
            encoding: EncodingKey::from_ec_der(key_pair.serialized_der()),
            decoding: DecodingKey::from_ec_der(key_pair.public_key_raw()),
            key_id: libtrust_key_id(&spki),
            cert_der,
            cert_pem,
            cert_path,
        })
    }

    /// The libtrust key id sent as the JWT `kid`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The certificate (DER) sent as the JWT `x5c`.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate as PEM, for `auth.token.rootcertbundle`.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the certificate was written.
    pub fn certificate_path(&self) -> &Path {
        &self.cert_path
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

fn key_err(path: &Path, reason: String) -> AuthError {
    AuthError::Key {
        path: path.to_owned(),
        reason,
    }
}

/// The certificate at `path` when it holds `spki` and is not near its end; `None` means "write a new one".
fn existing_cert(path: &Path, spki: &[u8]) -> Option<Vec<u8>> {
    let bytes = fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).ok()?;
    let cert = pem.parse_x509().ok()?;
    if cert.public_key().raw != spki {
        tracing::warn!(path = %path.display(), "token certificate is for another key; replacing it");
        return None;
    }
    let renew_at = OffsetDateTime::now_utc() + TimeDuration::days(CERT_RENEW_BEFORE_DAYS);
    if cert.validity().not_after.timestamp() < renew_at.unix_timestamp() {
        tracing::warn!(path = %path.display(), "token certificate expires soon; replacing it");
        return None;
    }
    Some(pem.contents.clone())
}

fn self_signed(key_pair: &KeyPair) -> Result<rcgen::Certificate, AuthError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(AuthError::KeyGen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mirrorgate token signer");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - TimeDuration::days(1);
    params.not_after = now + TimeDuration::days(CERT_VALIDITY_DAYS);
    // A CA that signs nothing else: Go's verifier accepts it as its own root in the bundle either way,
    // and marking it a CA keeps stricter verifiers happy.
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.self_signed(key_pair).map_err(AuthError::KeyGen)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes via a temporary file in the same folder and a rename, so a crash never leaves half a key,
/// and the key is never readable by others even for a moment.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), AuthError> {
    let io = |what, source| AuthError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io("creating the folder for", e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", e));
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "token key is readable by group or others; chmod 600 it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the key id is libtrust's; pinned against a Docker daemon key.json (kid computed by libtrust).
    #[test]
    fn libtrust_key_id_matches_docker_vector() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x = b64
            .decode("JuipZ8q29CKnnce0qVzSorTcbeKc96kIN7GEj-pO6ZE")
            .unwrap();
        let y = b64
            .decode("ezTci7edLG7N7Fa7ZFWheADWzK_pTwY2wn9XlzJaFqg")
            .unwrap();
        // SubjectPublicKeyInfo for a P-256 point: fixed header, then 0x04 || x || y.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        spki.extend_from_slice(&x);
        spki.extend_from_slice(&y);
        let id = libtrust_key_id(&spki);
        assert_eq!(
            id,
            "IBUD:XIHZ:7N4J:PLVF:7V2T:CKIK:JFBM:U4SH:TIVB:DCS4:JSCG:5HPC"
        );
        assert_eq!(id.len(), 59);
        assert_eq!(id.split(':').count(), 12);
    }

    // Rule: the certificate sits beside the key as <key>.crt.
    #[test]
    fn cert_path_naming() {
        assert_eq!(
            certificate_path_for(Path::new("/a/token-key.pem")),
            PathBuf::from("/a/token-key.crt")
        );
        assert_eq!(
            certificate_path_for(Path::new("token")),
            PathBuf::from("token.crt")
        );
        assert_eq!(
            certificate_path_for(Path::new("x.crt")),
            PathBuf::from("x.crt.crt")
        );
    }

    // Rule: a missing key is generated (0600, PKCS#8 P-256) with a matching cert; a restart reuses both.
    #[test]
    fn generate_then_reload_same_key_and_cert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs/token-key.pem");
        let k1 = TokenKey::load_or_generate(&path).unwrap();
        let pem = fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            k1.certificate_path(),
            dir.path().join("certs/token-key.crt")
        );
        let cert_file = fs::read(k1.certificate_path()).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(&cert_file).unwrap();
        let cert = p.parse_x509().unwrap();
        assert_eq!(libtrust_key_id(cert.public_key().raw), k1.key_id());

        let k2 = TokenKey::load_or_generate(&path).unwrap();
        assert_eq!(k1.key_id(), k2.key_id());
        assert_eq!(
            k1.certificate_der(),
            k2.certificate_der(),
            "cert reused, bundle stays valid"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    // Rule: a certificate for another key is replaced; a non-P-256 or garbage key file is refused.
    #[test]
    fn replaces_foreign_cert_and_refuses_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pem");
        let b = dir.path().join("b.pem");
        let ka = TokenKey::load_or_generate(&a).unwrap();
        TokenKey::load_or_generate(&b).unwrap();
        fs::copy(dir.path().join("b.crt"), dir.path().join("a.crt")).unwrap();
        let ka2 = TokenKey::load_or_generate(&a).unwrap();
        assert_eq!(ka.key_id(), ka2.key_id());
        let (_, p) =
            x509_parser::pem::parse_x509_pem(&fs::read(dir.path().join("a.crt")).unwrap()).unwrap();
        assert_eq!(
            libtrust_key_id(p.parse_x509().unwrap().public_key().raw),
            ka.key_id()
        );

        let ed = dir.path().join("ed.pem");
        fs::write(
            &ed,
            KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .unwrap()
                .serialize_pem(),
        )
        .unwrap();
        assert!(matches!(
            TokenKey::load_or_generate(&ed),
            Err(AuthError::Key { .. })
        ));
        let junk = dir.path().join("junk.pem");
        fs::write(&junk, "not a key").unwrap();
        assert!(matches!(
            TokenKey::load_or_generate(&junk),
            Err(AuthError::Key { .. })
        ));
    }
}
