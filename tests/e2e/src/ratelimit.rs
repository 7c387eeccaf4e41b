//! A Docker-Hub-like rate-limiting front for a real token-mode registry: it forwards everything to the registry
//! and counts manifest GETs per token subject (the `sub` of the JWT the e2e [`TokenIssuer`](crate::TokenIssuer)
//! signed), answering with `ratelimit-limit` / `ratelimit-remaining` (`<n>;w=<window secs>`) and, past the
//! limit, 429 with the OCI `TOOMANYREQUESTS` error and `Retry-After` until that subject's window resets.
//! Docker Hub counts manifest GETs per account (HEADs are free); so does this front.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::env::runtime;

type FrontBody = BoxBody<Bytes, hyper::Error>;

/// One subject's window: pulls counted since it started.
struct Window {
    started: Instant,
    used: u64,
}

struct Shared {
    backend: u16,
    limit: u64,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
    /// Every manifest GET by subject, answered or refused: `(served, refused)`.
    tally: Mutex<HashMap<String, (u64, u64)>>,
}

/// The running front on `http://127.0.0.1:<port>`; stops when dropped.
pub struct RateLimitFront {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RateLimitFront {
    /// Fronts the registry on `127.0.0.1:<backend>`, allowing `limit` manifest GETs per subject per `window`.
    pub fn start(backend: u16, limit: u64, window: Duration) -> anyhow::Result<Self> {
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            backend,
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
            tally: Mutex::new(HashMap::new()),
        });
        let task = crate::proc::spawn_http1(listener, shared.clone(), handle);
        Ok(Self { port, shared, task })
    }

    /// `http://127.0.0.1:<port>`, the gateway's `upstream`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Manifest GETs served to `subject` (the token's `sub`, the Basic user it was issued to).
    pub fn served(&self, subject: &str) -> u64 {
        self.tally(subject).0
    }

    /// Manifest GETs refused with 429 to `subject`.
    pub fn refused(&self, subject: &str) -> u64 {
        self.tally(subject).1
    }

    fn tally(&self, subject: &str) -> (u64, u64) {
        let t = self.shared.tally.lock().unwrap_or_else(|e| e.into_inner());
        t.get(subject).copied().unwrap_or_default()
    }
}

impl Drop for RateLimitFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `sub` of a Bearer JWT, read without verifying (the registry behind verifies it).
fn bearer_subject(headers: &http::HeaderMap) -> Option<String> {
    let token = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(claims.get("sub")?.as_str()?.to_string())
}

/// Where the subject's budget stands for this request: `Ok(remaining after it)` or `Err(until reset)`.
fn take(s: &Shared, subject: &str) -> Result<u64, Duration> {
    let mut windows = s.windows.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let w = windows.entry(subject.to_string()).or_insert(Window {
        started: now,
        used: 0,
    });
    if now.duration_since(w.started) >= s.window {
        *w = Window {
            started: now,
            used: 0,
        };
    }
    if w.used >= s.limit {
        return Err(s.window.saturating_sub(now.duration_since(w.started)));
    }
    w.used += 1;
    Ok(s.limit - w.used)
}

fn header(v: String) -> http::HeaderValue {
    http::HeaderValue::from_str(&v).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

async fn handle(
    s: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<FrontBody>, Infallible> {
    let counted = req.method() == http::Method::GET && req.uri().path().contains("/manifests/");
    let subject = bearer_subject(req.headers()).filter(|_| counted);
    let w = s.window.as_secs();
    let budget = subject
        .as_deref()
        .map(|sub| (sub.to_string(), take(&s, sub)));
    if let Some((sub, Err(reset))) = &budget {
        s.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sub.clone())
            .or_default()
            .1 += 1;
        let body = serde_json::json!({"errors": [{
            "code": "TOOMANYREQUESTS",
            "message": "You have reached your pull rate limit.",
        }]});
        let mut resp = http::Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        let h = resp.headers_mut();
        h.insert("content-type", header("application/json".into()));
        h.insert("ratelimit-limit", header(format!("{};w={w}", s.limit)));
        h.insert("ratelimit-remaining", header(format!("0;w={w}")));
        h.insert("retry-after", header((reset.as_secs() + 1).to_string()));
        return Ok(resp);
    }
    let mut resp = match forward(s.backend, req).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = http::Response::new(
                Full::new(Bytes::from(format!("front forward: {e}")))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = http::StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    if let Some((sub, Ok(remaining))) = budget {
        if resp.status().is_success() {
            s.tally
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(sub)
                .or_default()
                .0 += 1;
        }
        let h = resp.headers_mut();
        h.insert("ratelimit-limit", header(format!("{};w={w}", s.limit)));
        h.insert("ratelimit-remaining", header(format!("{remaining};w={w}")));
    }
    Ok(resp)
}

async fn forward(
    backend: u16,
    req: http::Request<Incoming>,
) -> anyhow::Result<http::Response<FrontBody>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}
