//! A Docker-token-spec auth server for upstream registries in token mode: it signs ES256 JWTs the way
//! distribution verifies them, and counts who asked for which scope, so scenarios can assert that the
//! gateway caches upstream tokens (one fetch per scope, not one per request).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::env::runtime;

/// Who the issuer knows and what it puts in its tokens.
#[derive(Clone, Debug)]
pub struct TokenIssuerOptions {
    /// `(user, password)` pairs accepted as Basic credentials (or `grant_type=password` form fields).
    pub users: Vec<(String, String)>,
    /// Anonymous callers get tokens granting only `pull`; when false they get 401.
    pub anonymous_pull: bool,
    pub issuer: String,
    pub service: String,
    pub ttl: Duration,
}

impl Default for TokenIssuerOptions {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            anonymous_pull: true,
            issuer: "e2e-token-issuer".into(),
            service: "e2e-registry".into(),
            ttl: Duration::from_secs(300),
        }
    }
}

/// Key of the request counter: (scope as asked, Basic user name or `None` for anonymous).
type CountKey = (String, Option<String>);

struct Shared {
    opts: TokenIssuerOptions,
    key_pem: String,
    kid: String,
    counts: Mutex<HashMap<CountKey, u64>>,
    delay_ms: AtomicU64,
    serial: AtomicU64,
}

/// A running token server on `http://127.0.0.1:<port>/token`; stops when dropped.
pub struct TokenIssuer {
    port: u16,
    bundle: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenIssuer {
    /// Makes a P-256 key and self-signed certificate (written to `<dir>/token-issuer.crt`, the registry's
    /// `rootcertbundle`) and starts serving.
    pub fn start(dir: &Path, opts: TokenIssuerOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = KeyPair::generate().context("token key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, opts.issuer.clone());
        let cert = params.self_signed(&key).context("token cert")?;
        let bundle = dir.join("token-issuer.crt");
        std::fs::write(&bundle, cert.pem()).context("writing token-issuer.crt")?;
        let shared = Arc::new(Shared {
            kid: libtrust_key_id(&key.subject_public_key_info()),
            key_pem: key.serialize_pem(),
            opts,
            counts: Mutex::new(HashMap::new()),
            delay_ms: AtomicU64::new(0),
            serial: AtomicU64::new(0),
        });
        let listener = runtime()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding")?;
        let port = listener.local_addr()?.port();
        let task = crate::proc::spawn_http1(listener, shared.clone(), handle);
        Ok(Self {
            port,
            bundle,
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM certificate of the signing key: the registry's `auth.token.rootcertbundle`.
    pub fn cert_bundle(&self) -> &Path {
        &self.bundle
    }

    pub fn issuer(&self) -> &str {
        &self.shared.opts.issuer
    }

    pub fn service(&self) -> &str {
        &self.shared.opts.service
    }

    /// The libtrust key id put in every token's `kid` header.
    pub fn key_id(&self) -> &str {
        &self.shared.kid
    }

    /// How many token requests asked for `scope` with credential `user` (`None`: anonymous).
    pub fn count(&self, scope: &str, user: Option<&str>) -> u64 {
        let counts = self.shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .get(&(scope.to_string(), user.map(str::to_string)))
            .copied()
            .unwrap_or(0)
    }

    /// All token requests so far (a request with several scopes counts once per scope).
    pub fn total(&self) -> u64 {
        self.shared
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    /// Delays every answer, to make concurrent fetches overlap (single-flight checks).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Mints a token directly, e.g. to call the registry without the challenge dance.
    /// `access` is `(repository, actions)`.
    pub fn sign(&self, sub: &str, access: &[(&str, &[&str])]) -> anyhow::Result<String> {
        let access: Vec<_> = access
            .iter()
            .map(|(name, acts)| json!({"type": "repository", "name": name, "actions": acts}))
            .collect();
        sign(&self.shared, sub, access)
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// libtrust's key id: base32 (no padding) of the first 30 bytes of sha256(SPKI DER), in 12 groups of 4
/// joined by `:`. distribution 2.x looks the signing key up by this `kid`.
pub(crate) fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = Sha256::digest(spki_der);
    let b32 = data_encoding::BASE32_NOPAD.encode(&hash[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sign(s: &Shared, sub: &str, access: Vec<serde_json::Value>) -> anyhow::Result<String> {
    let now = now();
    let claims = json!({
        "iss": s.opts.issuer,
        "sub": sub,
        "aud": s.opts.service,
        "exp": now + s.opts.ttl.as_secs(),
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("e2e-{now}-{}", s.serial.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(s.kid.clone());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(s.key_pem.as_bytes())
        .context("loading the EC key")?;
    jsonwebtoken::encode(&header, &claims, &key).context("signing the JWT")
}

fn respond(status: u16, body: serde_json::Value) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// GET `/token?service=&scope=…` with optional Basic credentials, or POST form with
/// `grant_type=password&username=&password=` (containerd's first try).
async fn handle(
    s: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let delay = s.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if req.uri().path() != "/token" {
        return Ok(respond(
            404,
            json!({"errors": [{"code": "NOT_FOUND", "message": "only /token here"}]}),
        ));
    }
    let mut params: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let mut creds = basic_credentials(req.headers());
    if req.method() == http::Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let (Some(u), Some(p)) = (get("username"), get("password")) {
            creds = Some((u, p));
        }
        params.extend(form);
    }
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    {
        let mut counts = s.counts.lock().unwrap_or_else(|e| e.into_inner());
        let user = creds.as_ref().map(|(u, _)| u.clone());
        if scopes.is_empty() {
            *counts.entry((String::new(), user.clone())).or_default() += 1;
        }
        for scope in &scopes {
            *counts.entry((scope.clone(), user.clone())).or_default() += 1;
        }
    }
    let user = match &creds {
        Some((u, p)) => {
            if !s.opts.users.iter().any(|(uu, pp)| uu == u && pp == p) {
                return Ok(respond(
                    401,
                    json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}),
                ));
            }
            Some(u.clone())
        }
        None if s.opts.anonymous_pull => None,
        None => {
            return Ok(respond(
                401,
                json!({"errors": [{"code": "UNAUTHORIZED", "message": "credentials needed"}]}),
            ))
        }
    };
    let access: Vec<_> = scopes
        .iter()
        .filter_map(|sc| grant(sc, user.is_some()))
        .collect();
    match sign(&s, user.as_deref().unwrap_or(""), access) {
        Ok(token) => Ok(respond(
            200,
            json!({
                "token": token,
                "access_token": token,
                "expires_in": s.opts.ttl.as_secs(),
                "issued_at": time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            }),
        )),
        Err(e) => Ok(respond(
            500,
            json!({"errors": [{"code": "UNKNOWN", "message": format!("{e:#}")}]}),
        )),
    }
}

/// `repository:<name>:<actions>` → an access entry; known users get what they ask, anonymous only pull.
/// The name may hold a `:` (a host's port), so type and actions are split off the ends.
fn grant(scope: &str, known_user: bool) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let actions: Vec<&str> = actions
        .split(',')
        .filter(|a| known_user || *a == "pull")
        .collect();
    Some(json!({"type": kind, "name": name, "actions": actions}))
}

fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The kid has libtrust's shape: 48 base32 characters in 12 groups of 4.
    #[test]
    fn key_id_has_the_libtrust_shape() {
        let kid = libtrust_key_id(b"any spki bytes");
        let groups: Vec<_> = kid.split(':').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 4
            && g.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))));
    }

    // Names with a port keep it; anonymous callers lose push.
    #[test]
    fn scope_grant_splits_from_the_right() {
        let g = grant("repository:localhost:5000/foo:pull,push", false).unwrap();
        assert_eq!(g["name"], "localhost:5000/foo");
        assert_eq!(g["actions"], json!(["pull"]));
        let g = grant("repository:foo:pull,push", true).unwrap();
        assert_eq!(g["actions"], json!(["pull", "push"]));
    }
}
