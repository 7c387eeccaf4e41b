//! The usage phase: when a response body ends (the access-log point in `server`), the finished request is
//! handed to the usage ledger; and the admin listener's `GET /usage` export.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use mirrorgate_config::Secret;
use mirrorgate_registry::RequestKind;
use mirrorgate_usage::{Activity, Event, Ledger, Query};
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use crate::context::RequestFacts;
use crate::runtime::Gateway;

/// What a finished request was, for billing: decided from what it asked for, not from its status (the
/// ledger counts pulls and pushes only when they succeeded).
fn activity(kind: Option<RequestKind>, method: &Method) -> Activity {
    match (kind, method) {
        (Some(RequestKind::Manifest), &Method::GET) => Activity::ManifestPull,
        (Some(RequestKind::Manifest), &Method::PUT) => Activity::Push,
        (Some(RequestKind::Blob), &Method::GET) => Activity::BlobPull,
        (Some(RequestKind::Upload), &Method::PATCH | &Method::PUT | &Method::POST) => {
            Activity::Upload
        }
        _ => Activity::Other,
    }
}

/// Counts one finished request in the gateway's ledger. Requests that matched no route belong to no tenant
/// and are not counted. Never blocks (see [`Ledger::record`]).
pub(crate) fn record(
    gw: &Gateway,
    facts: &RequestFacts,
    method: &Method,
    status: StatusCode,
    bytes_sent: u64,
    bytes_received: u64,
) {
    if let (Some(tenant), false) = (facts.tenant.as_deref(), facts.quota_counted) {
        // One count for the quota and the ledger: bytes of answers that were not counted while streaming
        // (refusals, errors before admission) go to the quota here, as they go to the ledger below.
        gw.limiter().record_sent(tenant, bytes_sent);
    }
    let (Some(ledger), Some(route)) = (gw.usage(), facts.route.as_ref()) else {
        return;
    };
    ledger.record(Event {
        day: mirrorgate_usage::today(),
        tenant: facts.tenant.clone(),
        user: facts.user.clone(),
        route: route.clone(),
        repository: facts.repository.clone(),
        activity: activity(facts.kind, method),
        status: status.as_u16(),
        bytes_sent,
        bytes_received,
    });
}

/// Who may read `/usage`; `None` lets the request through, else the refusal to send. The rows name every
/// tenant, user and repository, and the admin port is not private enough for that on its own — in Kubernetes
/// every pod reaches the metrics Service that Prometheus scrapes. With `[usage] export_token` a request must
/// carry it as `Authorization: Bearer` (401 with a challenge otherwise, whoever asks); without one, only
/// loopback clients — the host itself, `kubectl port-forward` — are answered (403 for the rest).
pub(crate) fn export_refusal(
    peer: IpAddr,
    token: Option<&Secret>,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let Some(token) = token else {
        if peer.to_canonical().is_loopback() {
            return None;
        }
        return Some(json(
            StatusCode::FORBIDDEN,
            error_body("/usage answers loopback clients only; set [usage] export_token to read it from elsewhere"),
        ));
    };
    let presented =
        headers.get(header::AUTHORIZATION).and_then(
            |v| match mirrorgate_auth::parse_authorization(v) {
                Ok(mirrorgate_auth::Credentials::Bearer(t)) => Some(t),
                _ => None,
            },
        );
    // Digests of equal length, compared in constant time: neither the token's length nor its prefix leaks.
    let digest = |s: &str| sha2::Sha256::digest(s.as_bytes());
    let matches = presented.is_some_and(|p| bool::from(digest(&p).ct_eq(&digest(token.expose()))));
    if matches {
        return None;
    }
    let mut refusal = json(
        StatusCode::UNAUTHORIZED,
        error_body("/usage needs the export token as `Authorization: Bearer`"),
    );
    refusal.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"mirrorgate usage\""),
    );
    Some(refusal)
}

/// `GET /usage?from=&to=&tenant=&by=` on the admin listener: the export as JSON (the same rows as
/// `mirrorgate usage --format json`), including every request finished so far. Bad parameters are 400 with
/// the reason; a store that cannot be read is 500.
pub(crate) async fn admin_usage<B>(
    req: &Request<B>,
    ledger: Option<Arc<Ledger>>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body("method not allowed"),
        );
    }
    let Some(ledger) = ledger else {
        return json(StatusCode::NOT_FOUND, error_body("the usage ledger is off"));
    };
    let mut params = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        params.insert(k.into_owned(), v.into_owned());
    }
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "tenant" | "by"))
    {
        return json(
            StatusCode::BAD_REQUEST,
            error_body(&format!(
                "unknown parameter `{unknown}`: expected from, to, tenant, by"
            )),
        );
    }
    let get = |k: &str| params.get(k).map(String::as_str);
    let query = match Query::parse(get("from"), get("to"), get("tenant"), get("by")) {
        Ok(q) => q,
        Err(e) => return json(StatusCode::BAD_REQUEST, error_body(&e.to_string())),
    };
    let answer = tokio::task::spawn_blocking(move || ledger.query(&query)).await;
    match answer {
        Ok(Ok(rows)) => json(
            StatusCode::OK,
            serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()),
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %crate::error::Report(&e), "cannot answer /usage");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                error_body("cannot read the usage store"),
            )
        }
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("the usage query failed"),
        ),
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the billing classification: manifest GET is a pull, manifest PUT a push, blob GET carries bytes,
    // upload requests carry received bytes, HEAD and everything else only count as requests.
    #[test]
    fn activities() {
        assert_eq!(
            activity(Some(RequestKind::Manifest), &Method::GET),
            Activity::ManifestPull
        );
        assert_eq!(
            activity(Some(RequestKind::Manifest), &Method::HEAD),
            Activity::Other
        );
        assert_eq!(
            activity(Some(RequestKind::Manifest), &Method::PUT),
            Activity::Push
        );
        assert_eq!(
            activity(Some(RequestKind::Blob), &Method::GET),
            Activity::BlobPull
        );
        assert_eq!(
            activity(Some(RequestKind::Upload), &Method::PATCH),
            Activity::Upload
        );
        assert_eq!(activity(None, &Method::GET), Activity::Other);
    }

    // Pins who reads the export: without a token, loopback peers only (v4, v6, v4-mapped); with one, the
    // right Bearer token from anywhere and nothing else — not a wrong, empty or Basic one, not loopback
    // without it.
    #[test]
    fn export_access() {
        let token = Secret::new("0123456789abcdef0123456789abcdef");
        let none = HeaderMap::new();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"] {
            assert!(export_refusal(ip(local), None, &none).is_none(), "{local}");
        }
        for remote in ["10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1", "fd00::1"] {
            let r = export_refusal(ip(remote), None, &none).expect(remote);
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{remote}");
        }
        let good = with("Bearer 0123456789abcdef0123456789abcdef");
        assert!(export_refusal(ip("10.1.2.3"), Some(&token), &good).is_none());
        assert!(export_refusal(ip("127.0.0.1"), Some(&token), &good).is_none());
        for (peer, headers) in [
            ("127.0.0.1", none.clone()),
            ("10.1.2.3", none.clone()),
            ("10.1.2.3", with("Bearer 0123456789abcdef0123456789abcdeX")),
            ("10.1.2.3", with("Bearer 0123456789abcdef")),
            ("10.1.2.3", with("Bearer ")),
            (
                "10.1.2.3",
                with("Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
            ),
        ] {
            let r = export_refusal(ip(peer), Some(&token), &headers).expect(peer);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{peer} {headers:?}");
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    // Pins the admin export's refusals: unknown parameters, a bad grouping and from after to are 400s with a
    // reason, before the store is touched.
    #[tokio::test]
    async fn admin_usage_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(
            Ledger::start(
                mirrorgate_usage::LedgerOptions {
                    store: dir.path().join("u.db"),
                    retention: std::time::Duration::from_secs(86_400 * 10),
                    flush_every: std::time::Duration::from_secs(60),
                    queue: 16,
                    max_repositories: 10,
                    redis: None,
                    max_held_rows: 100,
                },
                None,
            )
            .unwrap(),
        );
        let req = |q: &str| Request::get(format!("/usage{q}")).body(()).unwrap();
        for bad in ["?by=week", "?from=2026-12-02&to=2026-12-01", "?colour=red"] {
            let r = admin_usage(&req(bad), Some(ledger.clone())).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let r = admin_usage(&req("?by=tenant"), Some(ledger.clone())).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = admin_usage(&req(""), None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        ledger.close();
    }
}
