//! Small facts of the wire protocol that more than one part of the gateway needs: the API version header, the
//! `/v2/` ping body, Docker Hub's names, the headers a CDN adds, and Docker Hub's rate-limit headers. One
//! definition each, so the proxy, the binary's client-config output and the error renderer cannot drift apart.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// `Docker-Distribution-API-Version`: distribution sends it on every answer; old Docker clients look for it to
/// recognise a registry.
pub const API_VERSION_HEADER: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");

/// The value of [`API_VERSION_HEADER`].
pub fn api_version() -> HeaderValue {
    HeaderValue::from_static("registry/2.0")
}

/// The body of a successful `GET /v2/` (distribution answers `{}`).
pub const PING_BODY: &[u8] = b"{}";

/// The names Docker Hub goes by in image references, mirror configs and containerd's `?ns=`: the short name
/// images use (first: the canonical one), the registry host the engine talks to, the legacy index name and the
/// web name some configs copy.
pub const DOCKER_HUB_HOSTS: &[&str] = &[
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
];

/// True if `host` (any case, no port) is one of [`DOCKER_HUB_HOSTS`].
pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_HOSTS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
}

/// Headers a blob CDN (S3, CloudFront, GCS) adds that mean nothing to a registry client and can identify the
/// gateway's storage account: removed from followed redirect answers.
pub const CDN_RESPONSE_HEADERS: &[&str] = &["set-cookie", "x-amz-request-id", "x-amz-id-2"];

/// Removes [`CDN_RESPONSE_HEADERS`].
pub fn strip_cdn_headers(headers: &mut HeaderMap) {
    for name in CDN_RESPONSE_HEADERS {
        headers.remove(*name);
    }
}

/// The count in Docker Hub's `ratelimit-remaining: 76;w=21600` (the window after `;` is ignored here).
pub fn ratelimit_remaining(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("ratelimit-remaining")?
        .to_str()
        .ok()?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins Docker Hub's rate-limit header grammar: the count before `;`, garbage ignored.
    #[test]
    fn ratelimit_remaining_reads_the_count() {
        let mut h = HeaderMap::new();
        assert_eq!(ratelimit_remaining(&h), None);
        h.insert(
            "ratelimit-remaining",
            HeaderValue::from_static("76;w=21600"),
        );
        assert_eq!(ratelimit_remaining(&h), Some(76));
        h.insert("ratelimit-remaining", HeaderValue::from_static(" 5 "));
        assert_eq!(ratelimit_remaining(&h), Some(5));
        h.insert("ratelimit-remaining", HeaderValue::from_static("lots"));
        assert_eq!(ratelimit_remaining(&h), None);
    }

    // Pins that Docker Hub's three names are recognised in any case, and nothing else is.
    #[test]
    fn docker_hub_names() {
        assert!(is_docker_hub("docker.io"));
        assert!(is_docker_hub("Registry-1.Docker.IO"));
        assert!(is_docker_hub("index.docker.io"));
        assert!(!is_docker_hub("docker.io.evil.example"));
        assert!(!is_docker_hub("quay.io"));
    }
}
