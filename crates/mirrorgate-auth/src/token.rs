//! The built-in token server (Docker token spec): request parsing, the access grant, and JWT issuing.
//!
//! Tokens follow what distribution 2.8 (`registry/auth/token/token.go`) checks: header `alg: ES256`,
//! `typ: JWT`, `kid` = libtrust key id, `x5c` = [standard-base64 DER certificate]; claims `iss`, `sub`,
//! `aud` (a single string, as 2.8's `ClaimSet.Audience` is), `exp`, `nbf`, `iat`, `jti`, and
//! `access: [{type, name, actions}]`. The grant is the intersection of what was asked and what the
//! rules allow; an empty `access` list is a valid token for nothing.
//!
//! # Refresh tokens
//! Asked for with `offline_token=true` (GET) or `access_type=offline` (POST password grant), and only
//! for htpasswd users. A refresh token is a JWT signed by the same key with `typ: "refresh"` in its
//! claims, `sub` = the user, no `access`, a long `exp`, and `pwh`: a truncated SHA-256 of the user's
//! bcrypt line, so changing the password (or removing the user) revokes it. The verifier refuses refresh
//! tokens as access tokens, and the token endpoint refuses access tokens as refresh tokens.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use mirrorgate_registry::Action as ScopeAction;
/// Requested scopes are the registry protocol's own type: one parser for the whole gateway.
pub use mirrorgate_registry::Scope;

use crate::error::AuthError;
use crate::key::TokenKey;
use crate::tenants::Action;

/// Default refresh token lifetime: long enough that `docker login` is not needed weekly.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The `typ` claim that marks a refresh token.
pub(crate) const REFRESH_TYP: &str = "refresh";

/// Token server settings; the integrator builds this from `[auth.token]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// ES256 PKCS#8 PEM key, generated if missing; the certificate goes beside it as `<key>.crt`.
    pub key_path: std::path::PathBuf,
    /// The `iss` claim (distribution: `auth.token.issuer`).
    pub issuer: String,
    /// The `aud` claim and the challenge's `service` (distribution: `auth.token.service`).
    pub service: String,
    /// Access token lifetime (`expires_in`).
    pub ttl: Duration,
    /// Refresh token lifetime ([`DEFAULT_REFRESH_TTL`] is a reasonable value).
    pub refresh_ttl: Duration,
}

/// One `access` entry of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// `repository` for everything this gateway grants.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name as the client sees it on the route.
    pub name: String,
    /// Granted actions (`pull`, `push`, `delete`).
    pub actions: Vec<String>,
}

impl AccessEntry {
    /// True when this entry grants `action` on `repository`. `*` grants pull and push; delete must be
    /// named (the issuer never writes `*`, and delete is never implied).
    pub fn covers(&self, repository: &str, action: Action) -> bool {
        self.kind == "repository"
            && self.name == repository
            && self
                .actions
                .iter()
                .any(|a| a == action.as_str() || (a == "*" && action != Action::Delete))
    }
}

/// JWT claims, ours and distribution's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// The user, or empty for anonymous and network clients.
    pub sub: String,
    /// Audience: the service.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Random token id.
    pub jti: String,
    /// What the token grants.
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// `refresh` on refresh tokens, absent on access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    /// Refresh tokens only: fingerprint of the user's htpasswd hash, so a password change revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwh: Option<String>,
}

/// How the client authenticates to the token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum Grant {
    /// GET: credentials (if any) come in the `Authorization` header.
    Header,
    /// POST `grant_type=password`.
    Password {
        /// `username`.
        username: String,
        /// `password` (secret).
        password: String,
    },
    /// POST `grant_type=refresh_token`.
    RefreshToken(String),
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Header => f.write_str("Header"),
            Grant::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Grant::RefreshToken(_) => f.write_str("RefreshToken(..)"),
        }
    }
}

/// A parsed token endpoint request (GET query or POST form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// How the client authenticates.
    pub grant: Grant,
    /// `service`, when given; must equal ours.
    pub service: Option<String>,
    /// Requested scopes, in order.
    pub scopes: Vec<Scope>,
    /// `account` (GET, informational).
    pub account: Option<String>,
    /// `client_id` (informational, for logs).
    pub client_id: Option<String>,
    /// A refresh token was asked for (`offline_token=true` or `access_type=offline`).
    pub offline: bool,
}

impl TokenRequest {
    /// Parses a GET query: `service`, repeated `scope`, `account`, `offline_token`, `client_id`.
    pub fn from_query(query: &str) -> Result<Self, AuthError> {
        let mut req = Self::empty(Grant::Header);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "service" => req.service = Some(v.into_owned()),
                "scope" => req.push_scopes(&v)?,
                "account" => req.account = Some(v.into_owned()),
                "client_id" => req.client_id = Some(v.into_owned()),
                "offline_token" => req.offline = v == "true" || v == "1",
                _ => {}
            }
        }
        Ok(req)
    }

    /// Parses a POST form (`application/x-www-form-urlencoded`): `grant_type=password|refresh_token`,
    /// `username`, `password`, `refresh_token`, `service`, `scope` (space-separated, and repeated),
    /// `client_id`, `access_type`.
    pub fn from_form(body: &[u8]) -> Result<Self, AuthError> {
        let mut req = Self::empty(Grant::Header);
        let (mut grant_type, mut username, mut password, mut refresh) = (None, None, None, None);
        for (k, v) in url::form_urlencoded::parse(body) {
            match &*k {
                "grant_type" => grant_type = Some(v.into_owned()),
                "username" => username = Some(v.into_owned()),
                "password" => password = Some(v.into_owned()),
                "refresh_token" => refresh = Some(v.into_owned()),
                "service" => req.service = Some(v.into_owned()),
                "scope" => req.push_scopes(&v)?,
                "client_id" => req.client_id = Some(v.into_owned()),
                "access_type" => req.offline = v == "offline",
                _ => {}
            }
        }
        req.grant = match grant_type.as_deref() {
            Some("password") => match (username, password) {
                (Some(username), Some(password)) => Grant::Password { username, password },
                _ => {
                    return Err(AuthError::InvalidRequest(
                        "password grant needs username and password".into(),
                    ))
                }
            },
            Some("refresh_token") => match refresh {
                Some(t) => Grant::RefreshToken(t),
                None => {
                    return Err(AuthError::InvalidRequest(
                        "refresh_token grant needs refresh_token".into(),
                    ))
                }
            },
            Some(other) => {
                return Err(AuthError::InvalidRequest(format!(
                    "unsupported grant_type '{other}'"
                )))
            }
            None => return Err(AuthError::InvalidRequest("missing grant_type".into())),
        };
        Ok(req)
    }

    fn empty(grant: Grant) -> Self {
        TokenRequest {
            grant,
            service: None,
            scopes: Vec::new(),
            account: None,
            client_id: None,
            offline: false,
        }
    }

    fn push_scopes(&mut self, value: &str) -> Result<(), AuthError> {
        for s in value.split(' ').filter(|s| !s.is_empty()) {
            let scope = Scope::parse(s)
                .map_err(|e| AuthError::InvalidRequest(format!("malformed scope '{s}': {e}")))?;
            self.scopes.push(scope);
        }
        Ok(())
    }
}

/// The token endpoint's JSON answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token (Docker clients read this).
    pub token: String,
    /// The same token (OAuth2 clients read this).
    pub access_token: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
    /// RFC 3339 issue time.
    pub issued_at: String,
    /// Present when a refresh token was asked for and may be given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("issued_at", &self.issued_at)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Grants the intersection of the requested scopes and what `allowed(repository, action)` permits.
/// Only `repository` scopes are granted; `*` is read as pull and push (never delete: a `delete` is
/// granted only when asked for by name and allowed by a `delete:` rule); `registry:catalog` is never
/// granted (a catalog across upstreams means nothing). Repeated names are merged.
pub fn grant_access(
    scopes: &[Scope],
    mut allowed: impl FnMut(&str, Action) -> bool,
) -> Vec<AccessEntry> {
    const ORDER: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];
    let mut granted: BTreeMap<&str, [bool; 3]> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    // `repository(plugin)` carries a class; it is still a repository scope.
    let is_repository = |s: &&Scope| s.resource_type.split('(').next() == Some("repository");
    for scope in scopes.iter().filter(is_repository) {
        let wants = |a: Action| {
            scope.actions.iter().any(|x| {
                matches!(
                    (x, a),
                    (ScopeAction::Pull, Action::Pull)
                        | (ScopeAction::Push, Action::Push)
                        | (ScopeAction::Delete, Action::Delete)
                        | (ScopeAction::All, Action::Pull | Action::Push)
                )
            })
        };
        if !granted.contains_key(scope.name.as_str()) {
            order.push(&scope.name);
        }
        let e = granted.entry(&scope.name).or_default();
        for (slot, action) in e.iter_mut().zip(ORDER) {
            *slot |= wants(action) && allowed(&scope.name, action);
        }
    }
    order
        .into_iter()
        .filter_map(|name| {
            let got = granted.get(name).copied().unwrap_or_default();
            let actions: Vec<String> = ORDER
                .iter()
                .zip(got)
                .filter(|(_, g)| *g)
                .map(|(a, _)| a.as_str().to_owned())
                .collect();
            (!actions.is_empty()).then(|| AccessEntry {
                kind: "repository".into(),
                name: name.to_owned(),
                actions,
            })
        })
        .collect()
}

/// Signs access and refresh tokens with the [`TokenKey`].
#[derive(Debug, Clone)]
pub struct TokenIssuer {
    key: Arc<TokenKey>,
    spec: TokenSpec,
    header: Header,
}

/// An issued token with the facts the response needs.
#[derive(Clone)]
pub struct Issued {
    /// The compact JWT.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer signing with `key` under `spec`'s issuer, service and lifetimes.
    pub fn new(key: Arc<TokenKey>, spec: TokenSpec) -> Self {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        header.kid = Some(key.key_id().to_owned());
        header.x5c = Some(vec![
            base64::engine::general_purpose::STANDARD.encode(key.certificate_der())
        ]);
        TokenIssuer { key, spec, header }
    }

    /// The settings.
    pub fn spec(&self) -> &TokenSpec {
        &self.spec
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<TokenKey> {
        &self.key
    }

    /// Issues an access token for `subject` (empty for anonymous) granting `access`.
    pub fn issue(&self, subject: &str, access: Vec<AccessEntry>) -> Result<Issued, AuthError> {
        self.issue_at(unix_now(), subject, access, None)
    }

    /// Issues a refresh token for `user`, bound to their current htpasswd hash.
    pub(crate) fn issue_refresh(&self, user: &str, bcrypt_hash: &str) -> Result<Issued, AuthError> {
        self.issue_at(
            unix_now(),
            user,
            Vec::new(),
            Some(password_fingerprint(bcrypt_hash)),
        )
    }

    pub(crate) fn issue_at(
        &self,
        now: u64,
        subject: &str,
        access: Vec<AccessEntry>,
        refresh_pwh: Option<String>,
    ) -> Result<Issued, AuthError> {
        let ttl = if refresh_pwh.is_some() {
            self.spec.refresh_ttl
        } else {
            self.spec.ttl
        };
        let claims = Claims {
            iss: self.spec.issuer.clone(),
            sub: subject.to_owned(),
            aud: self.spec.service.clone(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: random_id()?,
            access,
            typ: refresh_pwh.as_ref().map(|_| REFRESH_TYP.to_owned()),
            pwh: refresh_pwh,
        };
        let token = jsonwebtoken::encode(&self.header, &claims, self.key.encoding_key())
            .map_err(AuthError::Sign)?;
        Ok(Issued { token, claims })
    }

    /// Builds the endpoint's JSON answer for an issued access token (and optional refresh token).
    pub fn response(&self, access: &Issued, refresh: Option<Issued>) -> TokenResponse {
        let issued_at = i64::try_from(access.claims.iat)
            .ok()
            .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        TokenResponse {
            token: access.token.clone(),
            access_token: access.token.clone(),
            expires_in: access.claims.exp.saturating_sub(access.claims.iat),
            issued_at,
            refresh_token: refresh.map(|r| r.token),
        }
    }
}

/// Truncated SHA-256 of a bcrypt line: changes whenever the password does, reveals nothing usable
/// (the salted hash is not guessable from it, and cannot be checked against a password without it).
pub(crate) fn password_fingerprint(bcrypt_hash: &str) -> String {
    let d = Sha256::digest(bcrypt_hash.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&d[..16])
}

fn random_id() -> Result<String, AuthError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::Config("no system randomness for the token id".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn issuer_in(dir: &std::path::Path) -> TokenIssuer {
        let key = Arc::new(TokenKey::load_or_generate(&dir.join("token-key.pem")).unwrap());
        TokenIssuer::new(
            key,
            TokenSpec {
                key_path: dir.join("token-key.pem"),
                issuer: "mirrorgate".into(),
                service: "mirrorgate".into(),
                ttl: Duration::from_secs(300),
                refresh_ttl: DEFAULT_REFRESH_TTL,
            },
        )
    }

    fn b64json(part: &str) -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    // Rule: scope grammar: type from the left, actions from the right, ports in names survive.
    #[test]
    fn scope_parsing() {
        let r = TokenRequest::from_query(
            "scope=repository:localhost:5000/foo:pull&scope=repository(plugin):vieux/sshfs:pull",
        )
        .unwrap();
        assert_eq!(r.scopes[0].name, "localhost:5000/foo");
        let granted = grant_access(&r.scopes, |_, _| true);
        assert_eq!(
            granted.len(),
            2,
            "a classed repository scope is still a repository scope"
        );
        assert!(TokenRequest::from_query("scope=repository").is_err());
        assert!(TokenRequest::from_query("scope=repository::pull").is_err());
    }

    // Rule: GET query parsing: repeated scopes, offline_token, service, account.
    #[test]
    fn query_parsing() {
        let r = TokenRequest::from_query(
            "service=mirrorgate&scope=repository%3Aa%3Apull&scope=repository:b:pull,push&account=alice&offline_token=true",
        )
        .unwrap();
        assert_eq!(r.grant, Grant::Header);
        assert_eq!(r.service.as_deref(), Some("mirrorgate"));
        assert_eq!(r.scopes.len(), 2);
        assert_eq!(r.account.as_deref(), Some("alice"));
        assert!(r.offline);
    }

    // Rule: POST form parsing: password and refresh grants, space-separated and repeated scopes.
    #[test]
    fn form_parsing() {
        let r = TokenRequest::from_form(
            b"grant_type=password&username=alice&password=s%3Acret&service=mirrorgate&scope=repository:a:pull+repository:b:push&scope=repository:c:pull&client_id=containerd&access_type=offline",
        )
        .unwrap();
        assert_eq!(
            r.grant,
            Grant::Password {
                username: "alice".into(),
                password: "s:cret".into()
            }
        );
        assert_eq!(
            r.scopes.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert!(r.offline);
        assert!(
            !format!("{r:?}").contains("s:cret"),
            "Debug hides the password"
        );
        let r = TokenRequest::from_form(b"grant_type=refresh_token&refresh_token=abc&service=x")
            .unwrap();
        assert_eq!(r.grant, Grant::RefreshToken("abc".into()));
        assert!(TokenRequest::from_form(b"grant_type=client_credentials").is_err());
        assert!(TokenRequest::from_form(b"grant_type=password&username=a").is_err());
        assert!(TokenRequest::from_form(b"username=a&password=b").is_err());
    }

    // Rule: the grant is the intersection of asked and allowed; `*` never grants more than pull/push;
    // catalog is never granted; nothing allowed gives an empty list.
    #[test]
    fn grant_is_intersection() {
        let scopes: Vec<Scope> = [
            "repository:a:pull,push",
            "repository:b:pull",
            "repository:c:*",
            "registry:catalog:*",
            "repository:a:pull",
            "repository:d:push",
        ]
        .iter()
        .map(|s| Scope::parse(s).unwrap())
        .collect();
        let g = grant_access(&scopes, |name, action| match name {
            "a" | "c" => true,
            "b" => action == Action::Push,
            _ => action == Action::Pull,
        });
        let got: Vec<(String, Vec<String>)> = g.into_iter().map(|e| (e.name, e.actions)).collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), vec!["pull".into(), "push".into()]),
                ("c".into(), vec!["pull".into(), "push".into()])
            ]
        );
        assert!(grant_access(&scopes, |_, _| false).is_empty());
    }

    // Pins issue 21 item 8: `delete` in a scope is granted only with the delete right, `*` and push never
    // carry it, and an issued delete grant covers exactly delete.
    #[test]
    fn delete_scope_needs_the_delete_right() {
        let scopes: Vec<Scope> = [
            "repository:a:pull,push,delete",
            "repository:b:delete",
            "repository:c:*",
        ]
        .iter()
        .map(|s| Scope::parse(s).unwrap())
        .collect();
        let push_only = grant_access(&scopes, |_, action| action != Action::Delete);
        assert!(push_only
            .iter()
            .all(|e| !e.actions.iter().any(|a| a == "delete")));
        assert!(!push_only.iter().any(|e| e.name == "b"));
        let everything = grant_access(&scopes, |_, _| true);
        let got: Vec<(String, Vec<String>)> = everything
            .into_iter()
            .map(|e| (e.name, e.actions))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "a".into(),
                    vec!["pull".into(), "push".into(), "delete".into()]
                ),
                ("b".into(), vec!["delete".into()]),
                ("c".into(), vec!["pull".into(), "push".into()]),
            ]
        );
        let star = AccessEntry {
            kind: "repository".into(),
            name: "c".into(),
            actions: vec!["*".into()],
        };
        assert!(star.covers("c", Action::Push));
        assert!(!star.covers("c", Action::Delete));
    }

    // Rule: the JWT header and claims have the shape distribution 2.8 expects.
    #[test]
    fn token_shape_matches_distribution() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer_in(dir.path());
        let access = vec![AccessEntry {
            kind: "repository".into(),
            name: "library/alpine".into(),
            actions: vec!["pull".into()],
        }];
        let t = iss.issue("alice", access).unwrap();
        let parts: Vec<&str> = t.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let h = b64json(parts[0]);
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["typ"], "JWT");
        assert_eq!(h["kid"], iss.key().key_id());
        let x5c = h["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        let der = base64::engine::general_purpose::STANDARD
            .decode(x5c[0].as_str().unwrap())
            .unwrap();
        assert_eq!(der, iss.key().certificate_der());
        let c = b64json(parts[1]);
        assert_eq!(c["iss"], "mirrorgate");
        assert_eq!(c["sub"], "alice");
        assert!(c["aud"].is_string(), "2.8 reads aud as a single string");
        assert_eq!(c["aud"], "mirrorgate");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 300);
        assert_eq!(c["nbf"], c["iat"]);
        assert!(c["jti"].as_str().unwrap().len() >= 16);
        assert_eq!(c["access"][0]["type"], "repository");
        assert_eq!(c["access"][0]["name"], "library/alpine");
        assert_eq!(c["access"][0]["actions"][0], "pull");
        assert!(c.get("typ").is_none() && c.get("pwh").is_none());
        // ES256 signatures are raw r||s, 64 bytes.
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        assert_eq!(sig.len(), 64);
        // An empty grant still makes a token, with an empty access array.
        let e = iss.issue("", vec![]).unwrap();
        assert_eq!(
            b64json(e.token.split('.').nth(1).unwrap())["access"],
            serde_json::json!([])
        );
    }

    // Rule: the response carries token and access_token (same), expires_in, RFC 3339 issued_at.
    #[test]
    fn response_shape() {
        let dir = tempfile::tempdir().unwrap();
        let iss = issuer_in(dir.path());
        let t = iss.issue_at(1_700_000_000, "", vec![], None).unwrap();
        let r = serde_json::to_value(iss.response(&t, None)).unwrap();
        assert_eq!(r["token"], r["access_token"]);
        assert_eq!(r["expires_in"], 300);
        assert_eq!(r["issued_at"], "2023-11-14T22:13:20Z");
        assert!(r.get("refresh_token").is_none());
    }
}
