//! Small facts of the wire protocol that more than one part of the gateway needs: the API version header, the
//! `/v2/` ping body, Docker Hub's names, the headers a CDN adds, and Docker Hub's rate-limit headers. One
//! definition each, so the proxy, the binary's client-config output and the error renderer cannot drift apart.

use std::time::{Duration, SystemTime};

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

/// The window of Docker Hub's rate-limit headers, `w=21600` in `ratelimit-remaining: 0;w=21600` (or in
/// `ratelimit-limit` when the other carries none): how long until a used-up budget is whole again at the latest.
pub fn ratelimit_window(headers: &HeaderMap) -> Option<Duration> {
    ["ratelimit-remaining", "ratelimit-limit"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .flat_map(|v| v.split(';').skip(1))
        .filter_map(|param| param.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// `Retry-After` as a delay from now: its delay-seconds form (what registries and Docker Hub send), or its
/// HTTP-date form (RFC 9110 §10.2.3; some CDNs and proxies send it) measured against this machine's clock —
/// a date already past reads as no wait. Anything else reads as absent, and callers fall back to the
/// rate-limit window or a backoff.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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

    // Pins where a rate-limit window is read: `w=` of either header, remaining first; none without `w=`.
    #[test]
    fn ratelimit_window_reads_w() {
        let mut h = HeaderMap::new();
        assert_eq!(ratelimit_window(&h), None);
        h.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
        assert_eq!(ratelimit_window(&h), Some(Duration::from_secs(21600)));
        h.insert("ratelimit-remaining", HeaderValue::from_static("0; w=5"));
        assert_eq!(ratelimit_window(&h), Some(Duration::from_secs(5)));
        let mut bare = HeaderMap::new();
        bare.insert("ratelimit-remaining", HeaderValue::from_static("3"));
        assert_eq!(ratelimit_window(&bare), None);
    }

    // Pins Retry-After: delay-seconds, or an HTTP-date counted from now (a past date is no wait); garbage
    // reads as absent.
    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:30:30 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(150)));
        // The obsolete RFC 850 and asctime forms HTTP/1.1 recipients must also accept.
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wednesday, 21-Oct-15 07:29:00 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(60)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed Oct 21 07:28:10 2015"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(retry_after_at(&h, now), Some(Duration::ZERO));
        for junk in ["soon", "-5", "7.5", ""] {
            h.insert("retry-after", HeaderValue::from_static(junk));
            assert_eq!(retry_after(&h), None, "{junk:?}");
        }
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
