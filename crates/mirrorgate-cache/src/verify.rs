//! Digest verification: the algorithms a cache entry can be checked against.

use mirrorgate_registry::Digest;
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::CacheError;

/// Whether the cache can verify (and so store) content with this digest: sha256 and sha512.
pub fn can_verify(digest: &Digest) -> bool {
    matches!(digest.algorithm(), "sha256" | "sha512")
}

/// An incremental hash of a body, for the algorithm its digest names.
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn for_algorithm(algorithm: &str) -> Result<Self, CacheError> {
        match algorithm {
            "sha256" => Ok(Hasher::Sha256(Sha256::new())),
            "sha512" => Ok(Hasher::Sha512(Sha512::new())),
            other => Err(CacheError::UnsupportedAlgorithm(other.to_owned())),
        }
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest text (`sha256:<hex>`) of everything hashed.
    pub(crate) fn finish(self) -> String {
        let (algorithm, sum) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let mut out = String::with_capacity(algorithm.len() + 1 + sum.len() * 2);
        out.push_str(algorithm);
        out.push(':');
        for b in sum {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Checks `bytes` against `digest`.
pub(crate) fn verify(digest: &Digest, bytes: &[u8]) -> Result<(), CacheError> {
    let mut h = Hasher::for_algorithm(digest.algorithm())?;
    h.update(bytes);
    if h.finish() == digest.as_str() {
        Ok(())
    } else {
        Err(CacheError::DigestMismatch {
            expected: digest.to_string(),
        })
    }
}

/// The sha256 digest of `bytes` (manifests fetched by tag are stored under the digest of their bytes).
pub fn sha256_of(bytes: &[u8]) -> String {
    let mut h = Hasher::Sha256(Sha256::new());
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins both registered algorithms against known vectors, and that other algorithms are refused rather than
    // trusted.
    #[test]
    fn sha256_and_sha512_verify_others_refused() {
        let d256 = Digest::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        assert!(verify(&d256, b"hello").is_ok());
        assert!(matches!(
            verify(&d256, b"hellO"),
            Err(CacheError::DigestMismatch { .. })
        ));
        let d512 = Digest::parse("sha512:9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043").unwrap();
        assert!(verify(&d512, b"hello").is_ok());
        let other = Digest::parse("md5:abc").unwrap();
        assert!(!can_verify(&other));
        assert!(matches!(
            verify(&other, b"x"),
            Err(CacheError::UnsupportedAlgorithm(_))
        ));
    }
}
