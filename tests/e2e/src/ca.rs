//! A throw-away certificate authority, so every TLS hop in a scenario is verified for real (no
//! `--tls-verify=false` towards the gateway: that would hide certificate bugs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA whose `ca.crt` clients trust, and that issues leaf certificates for the test host names.
pub struct TestCa {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Paths of one leaf certificate (full chain: leaf then CA) and its PKCS#8 key.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Makes the CA and writes `<dir>/ca.crt`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mirrorgate e2e test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing the CA")?;
        let ca = Self {
            dir: dir.to_path_buf(),
            issuer,
        };
        std::fs::write(ca.ca_path(), ca.ca_pem()).context("writing ca.crt")?;
        Ok(ca)
    }

    /// `<dir>/ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a server certificate for `hosts` (DNS names or IP literals) and writes `<dir>/<name>.pem`
    /// (leaf + CA) and `<dir>/<name>.key`.
    pub fn issue(&self, name: &str, hosts: &[&str]) -> anyhow::Result<Leaf> {
        let sans: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(sans).context("leaf params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, hosts.first().copied().unwrap_or(name));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("leaf key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the leaf")?;
        let leaf = Leaf {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&leaf.cert, format!("{}{}", cert.pem(), self.ca_pem()))
            .context("writing leaf cert")?;
        std::fs::write(&leaf.key, key.serialize_pem()).context("writing leaf key")?;
        Ok(leaf)
    }

    /// A folder holding only `ca.crt`, the shape skopeo's `--src-cert-dir` and podman's
    /// `/etc/containers/certs.d/<host>/` expect.
    pub fn cert_dir(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("ca.crt"), self.ca_pem()).context("writing cert dir ca.crt")?;
        Ok(dir.to_path_buf())
    }

    /// Writes containerd's `<certs_d>/<registry>/hosts.toml`: `server` is the registry's own URL, each
    /// mirror is a `[host."…"]` with pull/resolve capabilities and `ca` pointing at this CA.
    pub fn containerd_hosts_toml(
        &self,
        certs_d: &Path,
        registry: &str,
        server: &str,
        mirrors: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let dir = certs_d.join(registry);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = self.ca_path();
        let mut text = format!("server = {}\n", toml_str(server));
        for m in mirrors {
            text.push_str(&format!(
                "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {}\n",
                toml_str(m),
                toml_str(&ca.display().to_string())
            ));
        }
        let path = dir.join("hosts.toml");
        std::fs::write(&path, text).context("writing hosts.toml")?;
        Ok(path)
    }

    /// A rustls client config trusting only this CA (plus the ALPN list the caller sets).
    pub fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .context("adding the CA to the root store")?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Leaf certificates chain to the written ca.crt and name the asked hosts.
    #[test]
    fn leaf_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path()).unwrap();
        let leaf = ca.issue("site", &["docker.test", "127.0.0.1"]).unwrap();
        let pem = std::fs::read_to_string(&leaf.cert).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
        let ok = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(ca.ca_path())
            .arg(&leaf.cert)
            .output();
        if let Ok(out) = ok {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(std::fs::read_to_string(&leaf.key)
            .unwrap()
            .contains("PRIVATE KEY"));
    }

    // hosts.toml names the server and trusts the CA for the mirror.
    #[test]
    fn hosts_toml_points_at_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path()).unwrap();
        let p = ca
            .containerd_hosts_toml(
                &dir.path().join("certs.d"),
                "docker.io",
                "https://docker.test",
                &["https://mirror.test:8443"],
            )
            .unwrap();
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["server"].as_str(), Some("https://docker.test"));
        assert_eq!(
            v["host"]["https://mirror.test:8443"]["ca"].as_str(),
            Some(ca.ca_path().to_str().unwrap())
        );
    }
}
