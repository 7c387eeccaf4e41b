//! The answers the cache phase builds from the store: a cached blob (whole, or a `Range` → 206 / 416), a blob
//! streamed while its fill runs, and the header facts they need (digest, length, whether the client's `Accept`
//! takes a cached manifest's type).

use crate::body::{empty, BoxError, GatewayBody};
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use mirrorgate_cache::{Entry, FileBody};
use mirrorgate_registry::Digest;

/// A cached blob: whole, or the one range asked for.
pub(crate) fn blob_answer(
    method: &Method,
    client: &HeaderMap,
    digest: &Digest,
    entry: &Entry,
) -> Response<GatewayBody> {
    let range = client
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| byte_range(r, entry.size));
    let (status, start, end) = match range {
        None | Some(RangeAsk::Ignore) => (StatusCode::OK, 0, entry.size),
        Some(RangeAsk::Satisfiable(s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(RangeAsk::Unsatisfiable) => {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", entry.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let body = if method == Method::HEAD {
        empty()
    } else {
        file_body(FileBody::range(
            entry.file.clone(),
            digest.clone(),
            start,
            end,
        ))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, entry.size)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    insert_digest(h, digest);
    resp
}

/// A joiner's answer: the blob as the leader's fill writes it.
pub(crate) fn streamed_blob(digest: &Digest, body: FileBody) -> Response<GatewayBody> {
    let len = body.len();
    let mut resp = Response::new(file_body(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(l) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(l));
    }
    insert_digest(h, digest);
    resp
}

pub(crate) fn file_body(body: FileBody) -> GatewayBody {
    let left = body.len();
    BodyExt::boxed(FileFrames { body, left })
}

/// A [`FileBody`] as an HTTP body that knows its length. hyper stops polling a body once it has written the
/// `Content-Length` it announced and drops it; `is_end_stream` turning true with the last byte is what lets
/// the access log, the metrics and the ledger count that delivery as complete rather than abandoned.
struct FileFrames {
    body: FileBody,
    /// Bytes still to come, when the length is known.
    left: Option<u64>,
}

impl http_body::Body for FileFrames {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let polled = self.body.poll_next_unpin(cx);
        polled.map(|item| {
            item.map(|r| match r {
                Ok(chunk) => {
                    if let Some(left) = self.left.as_mut() {
                        *left = left.saturating_sub(chunk.len() as u64);
                    }
                    Ok(http_body::Frame::data(chunk))
                }
                Err(e) => Err(Box::new(e) as BoxError),
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.left.map_or_else(
            http_body::SizeHint::default,
            http_body::SizeHint::with_exact,
        )
    }
}

pub(crate) fn insert_digest(h: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        h.insert("docker-content-digest", v);
    }
}

pub(crate) fn announced_digest(h: &HeaderMap) -> Option<Digest> {
    Digest::parse(h.get("docker-content-digest")?.to_str().ok()?).ok()
}

pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Whether the client's `Accept` admits `media_type` (no `Accept`, or `*/*`, admits everything: old clients
/// that send none get what the registry would give them).
pub(crate) fn accepts(client: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for v in client.get_all(header::ACCEPT) {
        any = true;
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t == "*/*" || t.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}

/// What a `Range` header asks of an entry of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeAsk {
    /// `start..end` (end exclusive).
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Not a single byte range we serve (several ranges, another unit): the whole entry, 200.
    Ignore,
}

pub(crate) fn byte_range(value: &str, size: u64) -> RangeAsk {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAsk::Ignore;
    };
    if spec.contains(',') {
        return RangeAsk::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeAsk::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size)),
            Err(_) => None,
        },
        (false, true) => a.parse::<u64>().ok().map(|s| (s, size)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if e >= s => Some((s, (e + 1).min(size))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => RangeAsk::Ignore,
        Some((s, _)) if s >= size => RangeAsk::Unsatisfiable,
        Some((s, e)) => RangeAsk::Satisfiable(s, e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use mirrorgate_cache::{Cache, CacheSettings};

    use super::*;

    // Pins the Range forms containerd and Docker send when they resume, and the refusals.
    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), RangeAsk::Satisfiable(0, 10));
        assert_eq!(byte_range("bytes=90-", 100), RangeAsk::Satisfiable(90, 100));
        assert_eq!(byte_range("bytes=-10", 100), RangeAsk::Satisfiable(90, 100));
        assert_eq!(
            byte_range("bytes=50-500", 100),
            RangeAsk::Satisfiable(50, 100)
        );
        assert_eq!(byte_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), RangeAsk::Ignore);
        assert_eq!(byte_range("items=0-1", 100), RangeAsk::Ignore);
        assert_eq!(byte_range("bytes=9-1", 100), RangeAsk::Ignore);
    }

    // Pins content negotiation of cached manifests: a client that does not accept the stored type goes upstream.
    #[test]
    fn accept_header() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json; q=0.9"),
        );
        assert!(!accepts(&h, "application/vnd.oci.image.index.v1+json"));
        assert!(accepts(
            &h,
            "application/vnd.docker.distribution.manifest.v2+json"
        ));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(accepts(&h, "application/vnd.oci.image.index.v1+json"));
    }

    // Pins the 206 answer of a cached blob: status, Content-Range, length and exactly the asked bytes.
    #[tokio::test]
    async fn cached_blob_range_is_206() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(
            CacheSettings {
                dir: dir.path().into(),
                max_size: 1 << 20,
                min_free: None,
                fill_idle_timeout: Duration::from_secs(5),
            },
            Arc::new(mirrorgate_cache::NoObserver),
        )
        .unwrap();
        let data = Bytes::from_static(b"0123456789");
        let d = Digest::parse(&mirrorgate_cache::sha256_of(&data)).unwrap();
        cache.put(&d, None, data).await.unwrap();
        let entry = cache.open_entry(&d).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-4"));
        let resp = blob_answer(&Method::GET, &h, &d, &entry);
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "3");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"234");
        let resp = blob_answer(&Method::GET, &HeaderMap::new(), &d, &entry);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["docker-content-digest"], d.as_str());
    }
}
