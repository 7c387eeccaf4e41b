//! Client identity for mirrorgate: who a request comes from and what it may do.
//!
//! A registry gateway on the internet sees three kinds of clients: people and CI with htpasswd
//! credentials, container runtimes that only speak the Docker token dance, and whole networks (or the
//! public) without credentials. This crate answers for all three so the proxy only calls two functions
//! per request ([`Authenticator::identify`], [`Authenticator::authorize`]) and one for `/token`
//! ([`Authenticator::token`]):
//!
//! - `htpasswd`: bcrypt-only htpasswd files, reloaded by polling (Kubernetes Secret mounts swap symlinks);
//! - `password`, `cache`, `throttle`: bcrypt off the async workers behind a semaphore, a keyed cache of
//!   verified credentials, and failure lockouts per source and per (user, source);
//! - `header`: the `Authorization` header;
//! - `tenants`, `identity`: users and networks → tenants → `allow` rules per route host and repository;
//! - `deny`: patterns over repositories, tags and digests that win over `allow`;
//! - `key`, `token`, `verify`: the ES256 token server that distribution 2.8 (`docker-registry`) accepts,
//!   and the verifier for our own tokens;
//! - `ldap`: users htpasswd does not know, checked against an LDAP directory (search, then bind as the
//!   user), their groups mapped to tenants;
//! - `api_tokens`: robot accounts — scoped, expiring, revocable tokens used as Basic passwords, stored
//!   as SHA-256 hashes in a file polled like htpasswd (`file_watch`);
//! - `authenticator`: the facade tying these together.
//!
//! Secrets (passwords, tokens, hashes, keys) never appear in errors, `Debug` output or logs.

mod api_tokens;
mod authenticator;
mod cache;
mod deny;
mod error;
mod file_watch;
mod header;
mod htpasswd;
mod identity;
mod key;
mod ldap;
mod password;
mod tenants;
mod throttle;
mod token;
mod verify;

pub use api_tokens::{
    create_token, read_token_file, write_token_file, ApiTokenRecord, ApiTokens, NewToken,
    NewTokenSpec, TokenScope, VerifiedToken, API_TOKEN_PREFIX, API_TOKEN_USER_PREFIX,
};
pub use authenticator::{AccessRequest, AuthSpec, Authenticator, Resource};
pub use deny::{target as deny_target, DenyRule, DenyRules};
pub use error::{
    AuthError, ErrorKind, HeaderError, HtpasswdErrors, HtpasswdLineError, HtpasswdProblem,
};
pub use header::{parse_authorization, parse_basic, Credentials};
pub use htpasswd::{hash_line, Htpasswd, UserStore};
pub use identity::{AuthMethod, Identity};
pub use key::{certificate_path_for, libtrust_key_id, TokenKey};
pub use ldap::{LdapSpec, LDAP_CONNECTIONS, LDAP_TIMEOUT};
pub use password::{PasswordChecker, PasswordPolicy};
pub use tenants::{Action, TenantSpec, Tenants, ANONYMOUS_TENANT};
pub use token::{
    grant_access, AccessEntry, Claims, Grant, Issued, Scope, TokenIssuer, TokenRequest,
    TokenResponse, TokenSpec, DEFAULT_REFRESH_TTL,
};
pub use verify::{TokenVerifier, LEEWAY_SECS};
