//! The crate's one error type. Every variant that comes from a file names that file, because
//! the person reading the message is an operator who has to fix that file.

use std::path::PathBuf;

/// Everything that can go wrong while loading, generating or obtaining TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file or directory could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no `CERTIFICATE` block.
    #[error("no certificate found in {}", path.display())]
    NoCertificate { path: PathBuf },
    /// A PEM file holds no private key block (PKCS#8, SEC1 or PKCS#1).
    #[error("no private key found in {}", path.display())]
    NoPrivateKey { path: PathBuf },
    /// A PEM file is not valid PEM.
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The private key is in a format or algorithm the ring provider cannot sign with.
    #[error("unsupported private key in {}: {source}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// The leaf certificate could not be parsed as X.509.
    #[error("invalid certificate in {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// rcgen failed to generate a key, certificate or CSR.
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a configuration or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[source] rustls::Error),
    /// An ACME step failed; `step` says which one.
    #[error("ACME {step}: {source}")]
    Acme {
        step: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    /// The ACME server answered with something we cannot use.
    #[error("ACME {step}: {reason}")]
    AcmeProtocol { step: &'static str, reason: String },
    /// The stored ACME account file could not be (de)serialized.
    #[error("ACME account file {}: {source}", path.display())]
    AccountFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The ACME configuration cannot work (for example, only wildcard hosts).
    #[error("ACME configuration: {0}")]
    AcmeConfig(String),
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn generate(what: &'static str, source: rcgen::Error) -> Self {
        Self::Generate { what, source }
    }
}
