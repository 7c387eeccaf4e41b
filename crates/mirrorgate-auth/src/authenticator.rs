//! The facade the proxy calls: identify the client, authorize the request, serve the token endpoint,
//! and build challenges.
//!
//! The identity rules (design.md "Identity"), the same at `/v2/`, `/token` and every registry request:
//! 1. presented credentials are always verified — wrong ones are 401 whatever the network, valid ones win
//!    over any network identity;
//! 2. no credentials: the source network's tenant, else anonymous (on anonymous routes only);
//! 3. a client without a verified user that may not do something gets 401 with our challenge, never 403 —
//!    403 DENIED is for a verified user lacking the right (Docker sends credentials only after a 401);
//! 4. `/v2/` without credentials is 401 on private routes even for a network tenant, while the token
//!    endpoint issues that tenant's tokens without credentials (Docker's mirror client asks anonymously).
//!
//! Phases (as the proxy runs them):
//! 1. [`Authenticator::identify`]: Basic → htpasswd (cached bcrypt); Bearer → our token, which must cover
//!    the repository and action; no credentials → the tenant of the source network, else anonymous when
//!    the route allows it, else 401.
//! 2. [`Authenticator::authorize`]: the identity's rules (see [`crate::Tenants`]) for this route host,
//!    repository and action, else 403 DENIED for a user, 401 for a client without one. What the
//!    request is about is explicit ([`Resource`]): the `/v2/` ping needs an identity only (and credentials
//!    on private routes), a repository request needs a rule, and the catalog is refused (403 DENIED, for
//!    everyone: logging in would not help) — rules speak of repositories, so a listing of the upstream
//!    cannot be narrowed to them, and it would be fetched with the route's own upstream credentials.
//!
//! API tokens (see [`crate::ApiTokens`]) come as the Basic password with any user name: a password with the
//! `mgt_` prefix is checked against the token file (SHA-256, no bcrypt) when `api_tokens` is configured. The
//! identity is `token:<name>` in the token's tenant, and its own scope narrows that tenant's rules — here, at
//! `/token`, and for JWTs issued to it (whose subject `token:<name>` must still name a usable token). Wrong
//! tokens count towards a per-source lockout with the same policy as wrong passwords.
//!
//! A bearer token names the user (or nobody) and the repositories it covers, but not the route host:
//! the tenant's rules are checked again on every request, so a token fetched on one route cannot
//! widen access on another.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use mirrorgate_registry::Reference;

use crate::api_tokens::{ApiTokens, API_TOKEN_PREFIX, API_TOKEN_USER_PREFIX};
use crate::error::AuthError;
use crate::header::{parse_authorization, Credentials};
use crate::htpasswd::UserStore;
use crate::identity::{AuthMethod, Identity};
use crate::key::TokenKey;
use crate::ldap::{LdapSpec, LdapUsers};
use crate::password::{source_key, PasswordChecker, PasswordPolicy, THROTTLE_CAPACITY};
use crate::tenants::{Action, TenantSpec, Tenants, ANONYMOUS_TENANT};
use crate::throttle::FailureThrottle;
use crate::token::{
    grant_access, password_fingerprint, Grant, TokenIssuer, TokenRequest, TokenResponse, TokenSpec,
};
use crate::verify::TokenVerifier;

/// Everything the authenticator is built from; the integrator maps `[auth]`, `[auth.token]` and
/// `[[tenant]]` onto it.
#[derive(Debug, Clone, Default)]
pub struct AuthSpec {
    /// htpasswd file (bcrypt lines); `None`: no Basic users.
    pub htpasswd: Option<PathBuf>,
    /// API token file (`mirrorgate token`); `None`: no API tokens.
    pub api_tokens: Option<PathBuf>,
    /// Token server settings; `None`: no token endpoint, Basic challenges.
    pub token: Option<TokenSpec>,
    /// Tenants and their rules.
    pub tenants: Vec<TenantSpec>,
    /// Password check tuning.
    pub password: PasswordPolicy,
    /// LDAP directory for users htpasswd does not know; `None`: none.
    pub ldap: Option<LdapSpec>,
}

/// What a registry request is about, as authorization tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `/v2/`: the version check; any identity passes.
    Ping,
    /// `/v2/_catalog` (also `/v2/<registry>/_catalog` on path-prefix routes): always refused.
    Catalog,
    /// A request naming a repository (manifests, blobs, uploads, `tags/list`, `referrers`), as the client
    /// names it on the route.
    Repository(&'a str),
}

impl<'a> Resource<'a> {
    /// The repository, for repository requests.
    pub fn repository(self) -> Option<&'a str> {
        match self {
            Resource::Repository(repo) => Some(repo),
            Resource::Ping | Resource::Catalog => None,
        }
    }
}

/// The request facts identification and authorization look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// The route's host as configured (what `allow` patterns name).
    pub route_host: &'a str,
    /// The route's `anonymous` flag.
    pub route_anonymous: bool,
    /// What the request is about.
    pub resource: Resource<'a>,
    /// What the request does.
    pub action: Action,
    /// The manifest reference (tag or digest) of a manifest request, for deny rules; `None` otherwise.
    pub reference: Option<&'a Reference>,
}

/// Identifies and authorizes clients; one per process, shared by all connections.
#[derive(Debug)]
pub struct Authenticator {
    passwords: Option<PasswordChecker>,
    tenants: ArcSwap<Tenants>,
    issuer: Option<TokenIssuer>,
    verifier: Option<TokenVerifier>,
    api_tokens: Option<Arc<ApiTokens>>,
    /// Wrong API tokens, per source (address or IPv6 /64): locked out like wrong passwords.
    token_failures: FailureThrottle<IpAddr>,
    /// Users htpasswd does not know, checked against LDAP.
    ldap: Option<LdapUsers>,
}

impl Authenticator {
    /// Loads the htpasswd file and the token key (generating it if missing) and builds the tenants.
    /// Blocking file I/O: call at start-up.
    pub fn new(spec: AuthSpec) -> Result<Self, AuthError> {
        let users = spec
            .htpasswd
            .map(UserStore::load)
            .transpose()?
            .map(Arc::new);
        let token = match spec.token {
            Some(t) => Some((Arc::new(TokenKey::load_or_generate(&t.key_path)?), t)),
            None => None,
        };
        let mut auth = Self::from_parts(users, Tenants::new(spec.tenants)?, token, &spec.password)?;
        auth.ldap = spec
            .ldap
            .map(|l| LdapUsers::new(l, &spec.password))
            .transpose()?;
        Ok(match spec.api_tokens {
            Some(path) => auth.with_api_tokens(Arc::new(ApiTokens::load(path)?)),
            None => auth,
        })
    }

    /// Adds API tokens (see the module docs).
    pub fn with_api_tokens(mut self, tokens: Arc<ApiTokens>) -> Self {
        self.api_tokens = Some(tokens);
        self
    }

    /// The API tokens, for spawning [`ApiTokens::watch`].
    pub fn api_tokens(&self) -> Option<&Arc<ApiTokens>> {
        self.api_tokens.as_ref()
    }

    /// Builds from already-loaded parts (tests, or an integrator that loads them itself).
    pub fn from_parts(
        users: Option<Arc<UserStore>>,
        tenants: Tenants,
        token: Option<(Arc<TokenKey>, TokenSpec)>,
        policy: &PasswordPolicy,
    ) -> Result<Self, AuthError> {
        let passwords = users.map(|u| PasswordChecker::new(u, policy)).transpose()?;
        let (issuer, verifier) = match token {
            Some((key, spec)) => {
                let verifier = TokenVerifier::new(key.clone(), &spec);
                (Some(TokenIssuer::new(key, spec)), Some(verifier))
            }
            None => (None, None),
        };
        Ok(Authenticator {
            passwords,
            tenants: ArcSwap::from_pointee(tenants),
            issuer,
            verifier,
            api_tokens: None,
            token_failures: FailureThrottle::new(
                policy.max_failures,
                policy.failure_window,
                policy.lockout,
                THROTTLE_CAPACITY,
            ),
            ldap: None,
        })
    }

    /// The user store, for `reload()` on SIGHUP and for spawning [`UserStore::watch`].
    pub fn users(&self) -> Option<&Arc<UserStore>> {
        self.passwords.as_ref().map(PasswordChecker::store)
    }

    /// The current tenants.
    pub fn tenants(&self) -> Arc<Tenants> {
        self.tenants.load_full()
    }

    /// Swaps in new tenants (config reload).
    pub fn set_tenants(&self, tenants: Tenants) {
        self.tenants.store(Arc::new(tenants));
    }

    /// The token issuer, when the token server is configured.
    pub fn token_issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// Who is asking. See the module docs for the order of checks.
    pub async fn identify(
        &self,
        authorization: Option<&HeaderValue>,
        peer_ip: IpAddr,
        req: &AccessRequest<'_>,
    ) -> Result<Identity, AuthError> {
        let tenants = self.tenants.load();
        match authorization.map(parse_authorization).transpose()? {
            Some(Credentials::Basic { user, password }) => {
                self.check_basic(&tenants, &user, &password, peer_ip).await
            }
            Some(Credentials::Bearer(token)) => {
                let verifier = self
                    .verifier
                    .as_ref()
                    .ok_or(AuthError::TokenRejected("no token server configured"))?;
                let service = verifier.service();
                let claims = match req.resource {
                    Resource::Repository(repo) => {
                        verifier.verify(&token, service, repo, req.action)?
                    }
                    // The catalog is refused by `authorize` whatever the token says.
                    Resource::Ping | Resource::Catalog => verifier.verify_any(&token, service)?,
                };
                if claims.sub.is_empty() {
                    let tenant = tenants.tenant_of_ip(peer_ip).cloned();
                    return Ok(Identity {
                        tenant,
                        user: None,
                        method: AuthMethod::Bearer,
                        scope: None,
                    });
                }
                if let Some(name) = claims.sub.strip_prefix(API_TOKEN_USER_PREFIX) {
                    // Issued to an API token: it must still be usable (revocation and expiry reach JWTs too).
                    let tokens = self.api_tokens.as_ref().ok_or(AuthError::ApiTokenRevoked)?;
                    let t = tokens.by_name(name, SystemTime::now())?;
                    return Ok(Identity {
                        tenant: Some(t.tenant),
                        user: Some(t.user),
                        method: AuthMethod::Bearer,
                        scope: Some(t.scope),
                    });
                }
                let tenant = if self.users().is_some_and(|u| u.contains(&claims.sub)) {
                    tenants.tenant_of_user(&claims.sub).cloned()
                } else if let Some(groups) =
                    self.ldap.as_ref().and_then(|l| l.known_groups(&claims.sub))
                {
                    // Issued to an LDAP user verified within the hour: the tenant of its groups then.
                    tenants
                        .tenant_of_user(&claims.sub)
                        .or_else(|| tenants.tenant_of_groups(&groups))
                        .cloned()
                } else {
                    return Err(AuthError::TokenRejected(
                        "the token's user no longer exists",
                    ));
                };
                Ok(Identity {
                    tenant,
                    user: Some(Arc::from(claims.sub.as_str())),
                    method: AuthMethod::Bearer,
                    scope: None,
                })
            }
            None => self.without_credentials(&tenants, peer_ip, req.route_anonymous),
        }
    }

    /// Basic credentials: an API token when the password has the token prefix and tokens are configured,
    /// else an htpasswd password.
    async fn check_basic(
        &self,
        tenants: &Tenants,
        user: &str,
        password: &str,
        peer_ip: IpAddr,
    ) -> Result<Identity, AuthError> {
        match &self.api_tokens {
            Some(tokens) if password.starts_with(API_TOKEN_PREFIX) => {
                self.check_api_token(tokens, password, peer_ip)
            }
            _ => self.check_password(tenants, user, password, peer_ip).await,
        }
    }

    /// One token check: refused without looking while the source is locked out; every failure counts.
    fn check_api_token(
        &self,
        tokens: &ApiTokens,
        presented: &str,
        peer_ip: IpAddr,
    ) -> Result<Identity, AuthError> {
        let source = source_key(peer_ip);
        let now = Instant::now();
        self.token_failures
            .check(&source, now)
            .map_err(|retry_after| AuthError::Throttled { retry_after })?;
        match tokens.verify(presented, SystemTime::now()) {
            Ok(t) => Ok(Identity {
                tenant: Some(t.tenant),
                user: Some(t.user),
                method: AuthMethod::ApiToken,
                scope: Some(t.scope),
            }),
            Err(e) => {
                self.token_failures.record_failure(&source, now);
                Err(e)
            }
        }
    }

    async fn check_password(
        &self,
        tenants: &Tenants,
        user: &str,
        password: &str,
        peer_ip: IpAddr,
    ) -> Result<Identity, AuthError> {
        // Names htpasswd does not hold go to the directory, when there is one (see `crate::ldap`).
        if let Some(ldap) = &self.ldap {
            if !self.users().is_some_and(|u| u.contains(user)) {
                let groups = ldap.check(user, password, peer_ip).await?;
                let tenant = tenants
                    .tenant_of_user(user)
                    .or_else(|| tenants.tenant_of_groups(&groups))
                    .cloned();
                return Ok(Identity {
                    tenant,
                    user: Some(Arc::from(user)),
                    method: AuthMethod::Basic,
                    scope: None,
                });
            }
        }
        let checker = self.passwords.as_ref().ok_or(AuthError::UnknownUser)?;
        checker.check(user, password, peer_ip).await?;
        let tenant = tenants.tenant_of_user(user).cloned();
        Ok(Identity {
            tenant,
            user: Some(Arc::from(user)),
            method: AuthMethod::Basic,
            scope: None,
        })
    }

    fn without_credentials(
        &self,
        tenants: &Tenants,
        peer_ip: IpAddr,
        anonymous: bool,
    ) -> Result<Identity, AuthError> {
        if let Some(tenant) = tenants.tenant_of_ip(peer_ip) {
            Ok(Identity {
                tenant: Some(tenant.clone()),
                user: None,
                method: AuthMethod::Network,
                scope: None,
            })
        } else if anonymous {
            Ok(Identity::anonymous())
        } else {
            Err(AuthError::MissingCredentials)
        }
    }

    /// May `identity` do `req.action` on `req.resource` at `req.route_host`? The ping only needs an
    /// identity (and, for clients without user or tenant, an anonymous route); the catalog is refused for
    /// everyone (see the module docs); a repository needs a rule.
    pub fn authorize(&self, identity: &Identity, req: &AccessRequest<'_>) -> Result<(), AuthError> {
        if identity.is_anonymous() && !req.route_anonymous {
            return Err(AuthError::MissingCredentials);
        }
        let repo = match req.resource {
            // Rule 4: a client that presented nothing is challenged at `/v2/` on a private route, even when
            // its network names a tenant; otherwise Docker (which only sends credentials after a 401 there)
            // would never present the credentials it logged in with.
            Resource::Ping if identity.method == AuthMethod::Network && !req.route_anonymous => {
                return Err(AuthError::MissingCredentials)
            }
            Resource::Ping => return Ok(()),
            Resource::Catalog => {
                return Err(AuthError::CatalogRefused {
                    who: identity.to_string(),
                    route_host: req.route_host.to_owned(),
                })
            }
            Resource::Repository(repo) => repo,
        };
        let tenants = self.tenants.load();
        // Deny wins over allow: checked first, against the tenant's rules (the anonymous tenant's for anonymous
        // clients; users in no tenant have none).
        let deny_tenant = match (&identity.tenant, &identity.user) {
            (Some(t), _) => Some(&**t),
            (None, Some(_)) => None,
            (None, None) => Some(ANONYMOUS_TENANT),
        };
        if let Some(tenant) = deny_tenant {
            if let Some(rule) = tenants.denied(tenant, req.route_host, repo, req.reference) {
                return Err(AuthError::DenyRule {
                    who: identity.to_string(),
                    target: crate::deny::target(req.route_host, repo, req.reference),
                    action: req.action,
                    rule: rule.to_string(),
                    owner: format!("tenant '{tenant}'"),
                });
            }
        }
        if self.allowed(
            &tenants,
            identity,
            req.route_host,
            req.route_anonymous,
            repo,
            req.action,
        ) {
            Ok(())
        } else if identity.user.is_none() {
            // Rule 3: no verified user (a network tenant, an anonymous client, an anonymous token) is told
            // to log in, never refused for good: Docker and containerd present credentials only after a 401.
            Err(AuthError::MissingCredentials)
        } else {
            Err(AuthError::Denied {
                who: identity.to_string(),
                route_host: req.route_host.to_owned(),
                repository: repo.to_owned(),
                action: req.action,
            })
        }
    }

    fn allowed(
        &self,
        tenants: &Tenants,
        identity: &Identity,
        route_host: &str,
        route_anonymous: bool,
        repo: &str,
        action: Action,
    ) -> bool {
        if identity
            .scope
            .as_ref()
            .is_some_and(|s| !s.allows(route_host, repo, action))
        {
            return false;
        }
        match (&identity.tenant, &identity.user) {
            (Some(t), _) => tenants.allows(t, route_host, repo, action),
            (None, Some(_)) => tenants.allows_untenanted_user(action),
            (None, None) => route_anonymous && tenants.allows_anonymous(route_host, repo, action),
        }
    }

    /// The token endpoint (`GET|POST https://<route host>/token`): authenticates the client, grants the
    /// intersection of the requested scopes and its rules on this route, and signs the token(s).
    /// `authorization` is the request's header (used by GET); POST grants carry their own credentials.
    pub async fn token(
        &self,
        request: &TokenRequest,
        authorization: Option<&HeaderValue>,
        peer_ip: IpAddr,
        route_host: &str,
        route_anonymous: bool,
    ) -> Result<TokenResponse, AuthError> {
        let issuer = self
            .issuer
            .as_ref()
            .ok_or_else(|| AuthError::InvalidRequest("no token server configured".into()))?;
        if request
            .service
            .as_deref()
            .is_some_and(|s| s != issuer.spec().service)
        {
            return Err(AuthError::InvalidRequest("unknown service".into()));
        }
        let tenants = self.tenants.load();
        let (identity, may_refresh) = match &request.grant {
            Grant::Password { username, password } => (
                self.check_basic(&tenants, username, password, peer_ip)
                    .await?,
                true,
            ),
            Grant::RefreshToken(token) => (self.identity_from_refresh(&tenants, token)?, false),
            Grant::Header => match authorization.map(parse_authorization).transpose()? {
                Some(Credentials::Basic { user, password }) => (
                    self.check_basic(&tenants, &user, &password, peer_ip)
                        .await?,
                    true,
                ),
                Some(Credentials::Bearer(_)) => {
                    return Err(AuthError::InvalidRequest(
                        "the token endpoint takes Basic credentials".into(),
                    ))
                }
                None => (
                    self.without_credentials(&tenants, peer_ip, route_anonymous)?,
                    false,
                ),
            },
        };
        let access = grant_access(&request.scopes, |repo, action| {
            self.allowed(
                &tenants,
                &identity,
                route_host,
                route_anonymous,
                repo,
                action,
            )
        });
        let subject = identity.user.as_deref().unwrap_or("");
        tracing::debug!(
            who = %identity, method = identity.method.as_str(), route = route_host,
            requested = request.scopes.len(), granted = access.len(), "token issued"
        );
        let access_token = issuer.issue(subject, access)?;
        let refresh = match (&identity.user, request.offline && may_refresh) {
            (Some(user), true) => {
                let hash = self
                    .users()
                    .and_then(|u| u.snapshot().users.get(user).map(|h| h.hash.clone()));
                hash.map(|h| issuer.issue_refresh(user, &h)).transpose()?
            }
            _ => None,
        };
        Ok(issuer.response(&access_token, refresh))
    }

    fn identity_from_refresh(&self, tenants: &Tenants, token: &str) -> Result<Identity, AuthError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or(AuthError::TokenRejected("no token server configured"))?;
        let claims = verifier.verify_refresh(token)?;
        let current = self.users().and_then(|u| {
            u.snapshot()
                .users
                .get(&claims.sub)
                .map(|h| password_fingerprint(&h.hash))
        });
        if current.is_none() || current != claims.pwh {
            return Err(AuthError::TokenRejected(
                "refresh token revoked (user removed or password changed)",
            ));
        }
        let tenant = tenants.tenant_of_user(&claims.sub).cloned();
        Ok(Identity {
            tenant,
            user: Some(Arc::from(claims.sub.as_str())),
            method: AuthMethod::Bearer,
            scope: None,
        })
    }

    /// The `WWW-Authenticate` value for a 401 on this route. `authority` is the host[:port] the client
    /// used (the realm must reach us as the client sees us). With the token server: a Bearer challenge
    /// with realm `https://<authority>/token`, our service, the scope when a repository is known, and
    /// `error=` from `error` when it has one. Without: Basic.
    pub fn challenge(
        &self,
        authority: &str,
        repository: Option<&str>,
        action: Action,
        error: Option<&AuthError>,
    ) -> String {
        let Some(issuer) = &self.issuer else {
            return format!("Basic realm=\"{}\"", quote(authority));
        };
        let mut out = format!(
            "Bearer realm=\"https://{}/token\",service=\"{}\"",
            quote(authority),
            quote(&issuer.spec().service)
        );
        if let Some(repo) = repository {
            let actions = match action {
                Action::Pull => "pull",
                Action::Push => "pull,push",
                Action::Delete => "delete",
            };
            out.push_str(&format!(",scope=\"repository:{}:{actions}\"", quote(repo)));
        }
        if let Some(code) = error.and_then(AuthError::bearer_error) {
            out.push_str(&format!(",error=\"{code}\""));
        }
        out
    }
}

/// Escapes a value for an RFC 7235 quoted-string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use base64::Engine;

    use super::*;
    use crate::htpasswd::Htpasswd;
    use crate::token::DEFAULT_REFRESH_TTL;
    use crate::ErrorKind;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const OFFICE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 10, 0, 5));

    struct Fixture {
        _dir: tempfile::TempDir,
        htpasswd: PathBuf,
        auth: Authenticator,
    }

    fn line(user: &str, pw: &str) -> String {
        format!("{user}:{}\n", bcrypt::hash(pw, 4).unwrap())
    }

    fn fixture(tenants: Vec<TenantSpec>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(
            &htpasswd,
            line("alice", "wonder") + &line("bob", "builder") + &line("loner", "x"),
        )
        .unwrap();
        let spec = AuthSpec {
            htpasswd: Some(htpasswd.clone()),
            api_tokens: None,
            token: Some(TokenSpec {
                key_path: dir.path().join("token-key.pem"),
                issuer: "mirrorgate".into(),
                service: "mirrorgate".into(),
                ttl: Duration::from_secs(300),
                refresh_ttl: DEFAULT_REFRESH_TTL,
            }),
            tenants,
            password: PasswordPolicy::default(),
            ldap: None,
        };
        Fixture {
            auth: Authenticator::new(spec).unwrap(),
            _dir: dir,
            htpasswd,
        }
    }

    /// `acme()` plus an "anonymous" tenant allowed `docker.example/library/*`.
    fn acme_with_anonymous_library() -> Vec<TenantSpec> {
        let mut t = acme();
        t.push(TenantSpec {
            name: "anonymous".into(),
            allow: vec!["docker.example/library/*".into()],
            ..Default::default()
        });
        t
    }

    fn acme() -> Vec<TenantSpec> {
        vec![
            TenantSpec {
                name: "acme".into(),
                users: vec!["alice".into()],
                cidrs: vec![],
                allow: vec![
                    "docker.example/library/*".into(),
                    "push:docker.example/acme/*".into(),
                ],
                deny: vec![],
                ldap_groups: vec![],
            },
            TenantSpec {
                name: "office".into(),
                users: vec!["bob".into()],
                cidrs: vec!["127.10.0.0/16".parse().unwrap()],
                allow: vec!["docker.example/*".into()],
                deny: vec![],
                ldap_groups: vec![],
            },
        ]
    }

    fn basic(user: &str, pw: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    fn req<'a>(repo: Option<&'a str>, action: Action, anonymous: bool) -> AccessRequest<'a> {
        AccessRequest {
            route_host: "docker.example",
            route_anonymous: anonymous,
            resource: repo.map_or(Resource::Ping, Resource::Repository),
            action,
            reference: None,
        }
    }

    fn catalog(anonymous: bool) -> AccessRequest<'static> {
        AccessRequest {
            resource: Resource::Catalog,
            ..req(None, Action::Pull, anonymous)
        }
    }

    // Rule: Basic → htpasswd user with their tenant; rules then allow or deny (403).
    #[tokio::test]
    async fn basic_identify_then_authorize() {
        let f = fixture(acme());
        let r = req(Some("library/alpine"), Action::Pull, false);
        let id = f
            .auth
            .identify(Some(&basic("alice", "wonder")), LOOPBACK, &r)
            .await
            .unwrap();
        assert_eq!(id.to_string(), "acme/alice");
        assert_eq!(id.method, AuthMethod::Basic);
        f.auth.authorize(&id, &r).unwrap();
        let push = req(Some("library/alpine"), Action::Push, false);
        assert_eq!(
            f.auth.authorize(&id, &push).unwrap_err().kind(),
            ErrorKind::Denied
        );
        f.auth
            .authorize(&id, &req(Some("acme/app"), Action::Push, false))
            .unwrap();
        let e = f
            .auth
            .identify(Some(&basic("alice", "nope")), LOOPBACK, &r)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(!format!("{e} {e:?}").contains("nope"));
    }

    // Pins issue 20 (deny rules): a tenant's deny rule wins over its allow rule and names itself in the
    // refusal; tags it does not match and other tenants pass; the anonymous tenant's rules bind anonymous
    // clients.
    #[tokio::test]
    async fn deny_wins_over_allow() {
        let mut t = acme();
        t[0].deny = vec!["docker.example/library/*:latest".into()];
        t.push(TenantSpec {
            name: ANONYMOUS_TENANT.into(),
            allow: vec!["docker.example/*".into()],
            deny: vec!["docker.example/evil/*".into()],
            ..Default::default()
        });
        let f = fixture(t);
        let latest = Reference::parse("latest").unwrap();
        let pinned = Reference::parse("3.19").unwrap();
        let with = |repo, reference| AccessRequest {
            reference,
            ..req(Some(repo), Action::Pull, true)
        };
        let alice = f
            .auth
            .identify(
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                &with("library/alpine", None),
            )
            .await
            .unwrap();
        let e = f
            .auth
            .authorize(&alice, &with("library/alpine", Some(&latest)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied);
        let msg = e.to_string();
        assert!(msg.contains("docker.example/library/*:latest"), "{msg}");
        assert!(
            msg.contains("docker.example/library/alpine:latest"),
            "{msg}"
        );
        f.auth
            .authorize(&alice, &with("library/alpine", Some(&pinned)))
            .unwrap();
        f.auth
            .authorize(&alice, &with("library/alpine", None))
            .unwrap();
        let office = f
            .auth
            .identify(None, OFFICE, &with("library/alpine", None))
            .await
            .unwrap();
        f.auth
            .authorize(&office, &with("library/alpine", Some(&latest)))
            .unwrap();
        let anon = Identity::anonymous();
        f.auth.authorize(&anon, &with("good/x", None)).unwrap();
        let e = f.auth.authorize(&anon, &with("evil/x", None)).unwrap_err();
        assert!(matches!(e, AuthError::DenyRule { .. }), "{e:?}");
    }

    // Pins issue 21 item 1: the catalog is refused (403) for every identity — a tenant user, a network
    // client, an anonymous client on an open route, an untenanted user with no tenants configured, and a
    // Bearer token with empty access — while the ping still passes for all of them.
    #[tokio::test]
    async fn catalog_is_refused_for_everyone() {
        let f = fixture(acme());
        let alice = f
            .auth
            .identify(Some(&basic("alice", "wonder")), LOOPBACK, &catalog(false))
            .await
            .unwrap();
        let office = f
            .auth
            .identify(None, OFFICE, &catalog(false))
            .await
            .unwrap();
        let anon = f
            .auth
            .identify(None, LOOPBACK, &catalog(true))
            .await
            .unwrap();
        let q = TokenRequest::from_query("service=mirrorgate").unwrap();
        let empty = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        let bearer_id = f
            .auth
            .identify(Some(&bearer(&empty.token)), LOOPBACK, &catalog(false))
            .await
            .unwrap();
        for (id, anonymous) in [
            (&alice, false),
            (&office, false),
            (&anon, true),
            (&bearer_id, false),
        ] {
            let e = f.auth.authorize(id, &catalog(anonymous)).unwrap_err();
            assert!(matches!(e, AuthError::CatalogRefused { .. }), "{id}: {e:?}");
            assert_eq!(e.kind(), ErrorKind::Denied);
            // The ping passes, except for a network client on a private route (rule 4).
            let ping = f.auth.authorize(id, &req(None, Action::Pull, anonymous));
            assert_eq!(ping.is_ok(), id.method != AuthMethod::Network, "{id}");
        }
        // The empty-access token passes no repository request either.
        let e = f
            .auth
            .identify(
                Some(&bearer(&empty.token)),
                LOOPBACK,
                &req(Some("library/alpine"), Action::Pull, false),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::InsufficientScope { .. }));
        let open = fixture(vec![]);
        let id = open
            .auth
            .identify(Some(&basic("loner", "x")), LOOPBACK, &catalog(false))
            .await
            .unwrap();
        assert!(matches!(
            open.auth.authorize(&id, &catalog(false)),
            Err(AuthError::CatalogRefused { .. })
        ));
    }

    // Pins issue 21 item 8: push rights do not delete; a `delete:` rule does, and a token must name delete.
    #[tokio::test]
    async fn delete_needs_its_own_rule_and_scope() {
        let mut t = acme();
        t[0].allow.push("delete:docker.example/acme/old/*".into());
        let f = fixture(t);
        let id = f
            .auth
            .identify(
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                &req(None, Action::Pull, false),
            )
            .await
            .unwrap();
        let e = f
            .auth
            .authorize(&id, &req(Some("acme/app"), Action::Delete, false))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied);
        f.auth
            .authorize(&id, &req(Some("acme/old/x"), Action::Delete, false))
            .unwrap();
        let q = TokenRequest::from_query(
            "scope=repository:acme/app:pull,push,delete&scope=repository:acme/old/x:delete",
        )
        .unwrap();
        let resp = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        let h = bearer(&resp.token);
        let e = f
            .auth
            .identify(
                Some(&h),
                LOOPBACK,
                &req(Some("acme/app"), Action::Delete, false),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::InsufficientScope { .. }));
        f.auth
            .identify(
                Some(&h),
                LOOPBACK,
                &req(Some("acme/old/x"), Action::Delete, false),
            )
            .await
            .unwrap();
        assert_eq!(
            f.auth.challenge("h", Some("acme/old/x"), Action::Delete, None),
            "Bearer realm=\"https://h/token\",service=\"mirrorgate\",scope=\"repository:acme/old/x:delete\""
        );
    }

    // Rule: a user in no tenant is denied once tenants exist.
    #[tokio::test]
    async fn untenanted_user_denied_when_tenants_exist() {
        let f = fixture(acme());
        let r = req(Some("library/alpine"), Action::Pull, false);
        let id = f
            .auth
            .identify(Some(&basic("loner", "x")), LOOPBACK, &r)
            .await
            .unwrap();
        assert_eq!(
            f.auth.authorize(&id, &r).unwrap_err().kind(),
            ErrorKind::Denied
        );
        let open = fixture(vec![]);
        let id = open
            .auth
            .identify(Some(&basic("loner", "x")), LOOPBACK, &r)
            .await
            .unwrap();
        open.auth.authorize(&id, &r).unwrap();
    }

    // Rule: no credentials → CIDR tenant, else anonymous on anonymous routes, else 401.
    #[tokio::test]
    async fn no_credentials_paths() {
        let f = fixture(acme());
        let r = req(Some("x/y"), Action::Pull, false);
        let id = f.auth.identify(None, OFFICE, &r).await.unwrap();
        assert_eq!(
            (id.method, id.tenant.as_deref()),
            (AuthMethod::Network, Some("office"))
        );
        f.auth.authorize(&id, &r).unwrap();
        assert!(matches!(
            f.auth.identify(None, LOOPBACK, &r).await,
            Err(AuthError::MissingCredentials)
        ));
        let anon = req(Some("x/y"), Action::Pull, true);
        let id = f.auth.identify(None, LOOPBACK, &anon).await.unwrap();
        assert_eq!(id.method, AuthMethod::Anonymous);
        f.auth.authorize(&id, &anon).unwrap();
        assert!(matches!(
            f.auth.authorize(&id, &r),
            Err(AuthError::MissingCredentials)
        ));
    }

    // Pins identity rule 1: presented credentials are verified even from a tenant's network — a wrong
    // password is 401 there too, and a right one wins over the network tenant (bob is in "office" by name,
    // alice in "acme": from the office network alice is still acme/alice, with acme's rights only).
    #[tokio::test]
    async fn presented_credentials_win_over_the_network() {
        let f = fixture(acme());
        let r = req(Some("library/alpine"), Action::Pull, false);
        for (who, pw) in [("alice", "nope"), ("nobody", "x")] {
            let e = f
                .auth
                .identify(Some(&basic(who, pw)), OFFICE, &r)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthorized, "{who}");
        }
        let id = f
            .auth
            .identify(Some(&basic("alice", "wonder")), OFFICE, &r)
            .await
            .unwrap();
        assert_eq!(
            (id.method, id.to_string().as_str()),
            (AuthMethod::Basic, "acme/alice")
        );
        // office may pull other/x; alice (verified) may not, and is refused for good (403).
        let other = req(Some("other/x"), Action::Pull, false);
        assert_eq!(
            f.auth.authorize(&id, &other).unwrap_err().kind(),
            ErrorKind::Denied
        );
        // The token endpoint too: a wrong password from the office network is 401, not an office token.
        let q = TokenRequest::from_query("scope=repository:other/x:pull").unwrap();
        let e = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "nope")),
                OFFICE,
                "docker.example",
                false,
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
    }

    // Pins identity rule 3: a client without a verified user that its rules do not cover is told to log in
    // (401), never 403 — a network tenant pushing, an anonymous client outside the anonymous tenant's rules,
    // and an anonymous token from the network; a verified user lacking the right gets 403.
    #[tokio::test]
    async fn without_a_user_refusals_are_401() {
        let f = fixture(acme_with_anonymous_library());
        let push = req(Some("x/y"), Action::Push, false);
        let office = f.auth.identify(None, OFFICE, &push).await.unwrap();
        let e = f.auth.authorize(&office, &push).unwrap_err();
        assert!(matches!(e, AuthError::MissingCredentials), "{e:?}");
        let open = req(Some("private/x"), Action::Pull, true);
        let anon = f.auth.identify(None, LOOPBACK, &open).await.unwrap();
        let e = f.auth.authorize(&anon, &open).unwrap_err();
        assert!(matches!(e, AuthError::MissingCredentials), "{e:?}");
        // An anonymous token fetched from the office network on another route host is checked against
        // the office rules here, and refused with 401.
        let q = TokenRequest::from_query("scope=repository:x/y:pull").unwrap();
        let tok = f
            .auth
            .token(&q, None, OFFICE, "docker.example", false)
            .await
            .unwrap();
        let elsewhere = AccessRequest {
            route_host: "gcr.example",
            ..req(Some("x/y"), Action::Pull, false)
        };
        let id = f
            .auth
            .identify(Some(&bearer(&tok.token)), OFFICE, &elsewhere)
            .await
            .unwrap();
        let e = f.auth.authorize(&id, &elsewhere).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e:?}");
        let bob = f
            .auth
            .identify(Some(&basic("bob", "builder")), LOOPBACK, &push)
            .await
            .unwrap();
        assert_eq!(
            f.auth.authorize(&bob, &push).unwrap_err().kind(),
            ErrorKind::Denied
        );
    }

    // Pins identity rule 4: `/v2/` without credentials is 401 on a private route even from a tenant's
    // network (so Docker presents its login), passes on an anonymous route; the token endpoint issues the
    // network tenant's grant without credentials, and that token then passes the ping and the pull.
    #[tokio::test]
    async fn ping_challenges_network_clients_and_token_serves_them() {
        let f = fixture(acme());
        let ping = req(None, Action::Pull, false);
        let office = f.auth.identify(None, OFFICE, &ping).await.unwrap();
        let e = f.auth.authorize(&office, &ping).unwrap_err();
        assert!(matches!(e, AuthError::MissingCredentials), "{e:?}");
        f.auth
            .authorize(&office, &req(None, Action::Pull, true))
            .unwrap();
        let q =
            TokenRequest::from_query("service=mirrorgate&scope=repository:x/y:pull,push").unwrap();
        let tok = f
            .auth
            .token(&q, None, OFFICE, "docker.example", false)
            .await
            .unwrap();
        let h = bearer(&tok.token);
        let id = f.auth.identify(Some(&h), OFFICE, &ping).await.unwrap();
        f.auth.authorize(&id, &ping).unwrap();
        let pull = req(Some("x/y"), Action::Pull, false);
        let id = f.auth.identify(Some(&h), OFFICE, &pull).await.unwrap();
        assert_eq!(id.tenant.as_deref(), Some("office"));
        f.auth.authorize(&id, &pull).unwrap();
        // office may not push: the token did not grant it, so the push is a 401 to log in.
        let e = f
            .auth
            .identify(Some(&h), OFFICE, &req(Some("x/y"), Action::Push, false))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
    }

    // Rule: the token endpoint grants the intersection, and the token then works as Bearer for exactly that.
    #[tokio::test]
    async fn token_endpoint_then_bearer() {
        let f = fixture(acme());
        let q = TokenRequest::from_query(
            "service=mirrorgate&scope=repository:library/alpine:pull,push&scope=repository:other/x:pull",
        )
        .unwrap();
        let resp = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        assert_eq!(resp.token, resp.access_token);
        assert!(resp.refresh_token.is_none());
        let h = bearer(&resp.token);
        let pull = req(Some("library/alpine"), Action::Pull, false);
        let id = f.auth.identify(Some(&h), LOOPBACK, &pull).await.unwrap();
        assert_eq!(
            (id.method, id.to_string().as_str()),
            (AuthMethod::Bearer, "acme/alice")
        );
        f.auth.authorize(&id, &pull).unwrap();
        let e = f
            .auth
            .identify(
                Some(&h),
                LOOPBACK,
                &req(Some("library/alpine"), Action::Push, false),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::InsufficientScope { .. }));
        let e = f
            .auth
            .identify(
                Some(&h),
                LOOPBACK,
                &req(Some("other/x"), Action::Pull, false),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::InsufficientScope { .. }));
        // The ping accepts any valid token.
        f.auth
            .identify(Some(&h), LOOPBACK, &req(None, Action::Pull, false))
            .await
            .unwrap();
    }

    // Rule: a token's user removed from htpasswd stops working at the next reload.
    #[tokio::test]
    async fn bearer_for_removed_user_rejected() {
        let f = fixture(acme());
        let q = TokenRequest::from_query("scope=repository:library/alpine:pull").unwrap();
        let resp = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "wonder")),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        std::fs::write(&f.htpasswd, line("bob", "builder")).unwrap();
        f.auth.users().unwrap().reload().unwrap();
        let (h, r) = (
            bearer(&resp.token),
            req(Some("library/alpine"), Action::Pull, false),
        );
        assert!(matches!(
            f.auth.identify(Some(&h), LOOPBACK, &r).await,
            Err(AuthError::TokenRejected(_))
        ));
    }

    // Rule: POST password grant with access_type=offline returns a refresh token; the refresh grant
    // works until the password changes.
    #[tokio::test]
    async fn refresh_flow_and_revocation() {
        let f = fixture(acme());
        let form = TokenRequest::from_form(
            b"grant_type=password&username=alice&password=wonder&service=mirrorgate&access_type=offline&scope=repository:library/alpine:pull",
        )
        .unwrap();
        let resp = f
            .auth
            .token(&form, None, LOOPBACK, "docker.example", false)
            .await
            .unwrap();
        let refresh = resp.refresh_token.clone().unwrap();
        let body = format!("grant_type=refresh_token&refresh_token={refresh}&service=mirrorgate&scope=repository:library/alpine:pull");
        let rr = TokenRequest::from_form(body.as_bytes()).unwrap();
        let again = f
            .auth
            .token(&rr, None, LOOPBACK, "docker.example", false)
            .await
            .unwrap();
        assert!(again.refresh_token.is_none());
        let pull = req(Some("library/alpine"), Action::Pull, false);
        f.auth
            .identify(Some(&bearer(&again.token)), LOOPBACK, &pull)
            .await
            .unwrap();
        // A refresh token is not a bearer token.
        assert!(f
            .auth
            .identify(Some(&bearer(&refresh)), LOOPBACK, &pull)
            .await
            .is_err());
        // Password change revokes it.
        std::fs::write(
            &f.htpasswd,
            line("alice", "changed") + &line("bob", "builder"),
        )
        .unwrap();
        f.auth.users().unwrap().reload().unwrap();
        assert!(matches!(
            f.auth
                .token(&rr, None, LOOPBACK, "docker.example", false)
                .await,
            Err(AuthError::TokenRejected(_))
        ));
        // GET with offline_token=true and Basic credentials also returns one.
        let q = TokenRequest::from_query("offline_token=true&scope=repository:library/alpine:pull")
            .unwrap();
        let r = f
            .auth
            .token(
                &q,
                Some(&basic("alice", "changed")),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        assert!(r.refresh_token.is_some());
    }

    // Rule: anonymous token requests: 401 on private routes, an empty-or-allowed grant on anonymous ones;
    // a wrong service is a 400.
    #[tokio::test]
    async fn anonymous_tokens_and_service_check() {
        let f = fixture(acme());
        let q = TokenRequest::from_query(
            "service=mirrorgate&scope=repository:library/alpine:pull,push",
        )
        .unwrap();
        let e = f
            .auth
            .token(&q, None, LOOPBACK, "docker.example", false)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        let r = f
            .auth
            .token(&q, None, LOOPBACK, "docker.example", true)
            .await
            .unwrap();
        let pull = req(Some("library/alpine"), Action::Pull, true);
        let id = f
            .auth
            .identify(Some(&bearer(&r.token)), LOOPBACK, &pull)
            .await
            .unwrap();
        assert!(id.user.is_none());
        f.auth.authorize(&id, &pull).unwrap();
        // The same anonymous token is no good on a private route.
        assert!(f
            .auth
            .authorize(&id, &req(Some("library/alpine"), Action::Pull, false))
            .is_err());
        let bad = TokenRequest::from_query("service=elsewhere").unwrap();
        let e = f
            .auth
            .token(&bad, None, LOOPBACK, "docker.example", true)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest);
    }

    // Rule: an "anonymous" tenant narrows what anonymous tokens get.
    #[tokio::test]
    async fn anonymous_tenant_narrows_grant() {
        let f = fixture(acme_with_anonymous_library());
        let q = TokenRequest::from_query(
            "scope=repository:library/alpine:pull,push&scope=repository:private/x:pull",
        )
        .unwrap();
        let r = f
            .auth
            .token(&q, None, LOOPBACK, "docker.example", true)
            .await
            .unwrap();
        let verifier = f.auth.verifier.as_ref().unwrap();
        let c = verifier.verify_any(&r.token, "mirrorgate").unwrap();
        assert_eq!(c.access.len(), 1);
        assert_eq!(
            (c.access[0].name.as_str(), c.access[0].actions.clone()),
            ("library/alpine", vec!["pull".to_string()])
        );
    }

    // Rule: challenges carry realm, service, scope and error; values are quoted safely.
    #[test]
    fn challenges() {
        let f = fixture(vec![]);
        let e = AuthError::InsufficientScope {
            repository: "a".into(),
            action: Action::Push,
        };
        assert_eq!(
            f.auth.challenge("docker.example:8443", Some("library/alpine"), Action::Push, Some(&e)),
            "Bearer realm=\"https://docker.example:8443/token\",service=\"mirrorgate\",scope=\"repository:library/alpine:pull,push\",error=\"insufficient_scope\""
        );
        assert_eq!(
            f.auth.challenge("h", None, Action::Pull, None),
            "Bearer realm=\"https://h/token\",service=\"mirrorgate\""
        );
        let plain = Authenticator::from_parts(
            Some(Arc::new(UserStore::from_htpasswd(Htpasswd::default()))),
            Tenants::default(),
            None,
            &PasswordPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            plain.challenge("a\"b", None, Action::Pull, None),
            "Basic realm=\"a\\\"b\""
        );
    }

    /// Adds an API token file to a fixture's authenticator; returns the tokens made (by name).
    fn with_tokens(f: Fixture, specs: &[crate::NewTokenSpec]) -> (Fixture, Vec<crate::NewToken>) {
        let path = f._dir.path().join("api-tokens");
        let made: Vec<_> = specs
            .iter()
            .map(|s| crate::create_token(s, std::time::SystemTime::now()).unwrap())
            .collect();
        let records: Vec<_> = made.iter().map(|t| t.record.clone()).collect();
        crate::write_token_file(&path, &records).unwrap();
        let tokens = Arc::new(ApiTokens::load(&path).unwrap());
        let Fixture {
            _dir,
            htpasswd,
            auth,
        } = f;
        let auth = auth.with_api_tokens(tokens);
        (
            Fixture {
                _dir,
                htpasswd,
                auth,
            },
            made,
        )
    }

    fn token_spec(name: &str, tenant: &str, allow: &[&str], push: bool) -> crate::NewTokenSpec {
        crate::NewTokenSpec {
            name: name.into(),
            tenant: tenant.into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            push,
            expires_in: None,
        }
    }

    // Pins issue 16 (API tokens): a token is the Basic password under any user name; the identity is
    // `token:<name>` in its tenant; grants are its scope ∩ the tenant's rules (push only with the flag,
    // another tenant's repository is 403); the user name never matters.
    #[tokio::test]
    async fn api_token_as_basic_password_scope_meets_tenant() {
        let (f, t) = with_tokens(
            fixture(acme()),
            &[
                token_spec("ci-pull", "acme", &[], false),
                token_spec("ci-push", "acme", &["docker.example/acme/*"], true),
            ],
        );
        let pull = req(Some("library/alpine"), Action::Pull, false);
        let id = f
            .auth
            .identify(Some(&basic("whoever", &t[0].token)), LOOPBACK, &pull)
            .await
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("token:ci-pull"));
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.method, AuthMethod::ApiToken);
        f.auth.authorize(&id, &pull).unwrap();
        // The tenant allows push to acme/*, but this token has no push flag.
        let push = req(Some("acme/app"), Action::Push, false);
        assert_eq!(
            f.auth.authorize(&id, &push).unwrap_err().kind(),
            ErrorKind::Denied
        );
        // The pushing token may push acme/* but its scope leaves out library/*, which its tenant allows.
        let pusher = f
            .auth
            .identify(Some(&basic("ci-push", &t[1].token)), OFFICE, &push)
            .await
            .unwrap();
        assert_eq!(
            pusher.tenant.as_deref(),
            Some("acme"),
            "credentials win over the network"
        );
        f.auth.authorize(&pusher, &push).unwrap();
        assert!(matches!(
            f.auth.authorize(&pusher, &pull),
            Err(AuthError::Denied { .. })
        ));
        // Another tenant's repository (office may pull docker.example/*, acme may not pull other/*).
        let other = req(Some("other/app"), Action::Pull, false);
        assert!(matches!(
            f.auth.authorize(&id, &other),
            Err(AuthError::Denied { .. })
        ));
        // A wrong secret with the right prefix is 401, never a password check.
        let e = f
            .auth
            .identify(
                Some(&basic("alice", &format!("{}x", t[0].token))),
                LOOPBACK,
                &pull,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::ApiTokenInvalid));
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
    }

    // Pins issue 16: at `/token` an API token works like a password; the JWT's subject is `token:<name>`,
    // carries only the scope ∩ tenant grants, and stops working once the token is revoked (on reload).
    #[tokio::test]
    async fn api_token_at_token_endpoint_and_revocation() {
        let (f, t) = with_tokens(
            fixture(acme()),
            &[token_spec(
                "ci",
                "acme",
                &["docker.example/library/*"],
                false,
            )],
        );
        let q = TokenRequest::from_query(
            "service=mirrorgate&scope=repository:library/alpine:pull&scope=repository:acme/app:pull,push",
        )
        .unwrap();
        let resp = f
            .auth
            .token(
                &q,
                Some(&basic("ci", &t[0].token)),
                LOOPBACK,
                "docker.example",
                false,
            )
            .await
            .unwrap();
        let pull = req(Some("library/alpine"), Action::Pull, false);
        let id = f
            .auth
            .identify(Some(&bearer(&resp.token)), LOOPBACK, &pull)
            .await
            .unwrap();
        assert_eq!(id.to_string(), "acme/token:ci");
        f.auth.authorize(&id, &pull).unwrap();
        let e = f
            .auth
            .identify(
                Some(&bearer(&resp.token)),
                LOOPBACK,
                &req(Some("acme/app"), Action::Pull, false),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::InsufficientScope { .. }), "{e:?}");

        let tokens = f.auth.api_tokens().unwrap();
        let mut records = crate::read_token_file(tokens.path()).unwrap();
        records[0].revoked = Some(1);
        crate::write_token_file(tokens.path(), &records).unwrap();
        assert!(tokens.reload().unwrap());
        let e = f
            .auth
            .identify(Some(&bearer(&resp.token)), LOOPBACK, &pull)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::ApiTokenRevoked), "{e:?}");
        let e = f
            .auth
            .identify(Some(&basic("ci", &t[0].token)), LOOPBACK, &pull)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::ApiTokenRevoked), "{e:?}");
    }

    // Pins issue 16 (bad input): wrong tokens lock the source out like wrong passwords — past the limit even
    // the right token is refused (429) from that source, while another source still gets in.
    #[tokio::test]
    async fn wrong_api_tokens_lock_the_source_out() {
        let (f, t) = with_tokens(fixture(acme()), &[token_spec("ci", "acme", &[], false)]);
        let pull = req(Some("library/alpine"), Action::Pull, false);
        for _ in 0..PasswordPolicy::default().max_failures {
            let e = f
                .auth
                .identify(
                    Some(&basic("ci", "mgt_0000000000000000_nope")),
                    LOOPBACK,
                    &pull,
                )
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::ApiTokenInvalid));
        }
        let e = f
            .auth
            .identify(Some(&basic("ci", &t[0].token)), LOOPBACK, &pull)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled, "{e:?}");
        f.auth
            .identify(Some(&basic("ci", &t[0].token)), OFFICE, &pull)
            .await
            .unwrap();
    }
}
