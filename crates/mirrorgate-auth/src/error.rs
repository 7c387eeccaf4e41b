//! The crate's one error type, shaped so the proxy can pick the answer (401 with a challenge, 403 DENIED,
//! 429 with `Retry-After`, 400, or 500) from [`AuthError::kind`] alone.
//!
//! No variant carries a password, a token, a bcrypt hash or key material, and no kept source error
//! does either: errors are logged, and logs must never hold secrets.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::tenants::Action;

/// Everything that can go wrong while identifying a client, checking its rights, loading auth material
/// or issuing tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The route needs credentials and the request carried none.
    #[error("authentication required")]
    MissingCredentials,
    /// The `Authorization` header could not be read.
    #[error("malformed Authorization header")]
    MalformedHeader(#[source] HeaderError),
    /// A wrong password for a known user. Says the same as [`AuthError::UnknownUser`], so the answer
    /// does not tell which user names exist; the two differ only for metrics and logs.
    #[error("invalid username or password")]
    BadCredentials,
    /// A user name the htpasswd file does not hold (bcrypt still ran, against a dummy hash).
    #[error("invalid username or password")]
    UnknownUser,
    /// A Basic password with the API token prefix that is no current token: unknown id, wrong secret or
    /// malformed. Says nothing about which.
    #[error("invalid API token")]
    ApiTokenInvalid,
    /// The right API token, past its expiry.
    #[error("API token expired")]
    ApiTokenExpired,
    /// The right API token, revoked (or, for a JWT issued to one, no longer in the file).
    #[error("API token revoked")]
    ApiTokenRevoked,
    /// The API token file is unreadable as JSON or inconsistent. The reason names fields and lines only: the
    /// file holds hashes, never secrets.
    #[error("API token file {}: {reason}", path.display())]
    ApiTokenFile {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A bearer token failed signature, algorithm, issuer or audience checks.
    #[error("invalid token")]
    InvalidToken(#[source] jsonwebtoken::errors::Error),
    /// A bearer token of ours past its `exp` (plus leeway): the client should fetch a new one.
    #[error("token expired")]
    ExpiredToken(#[source] jsonwebtoken::errors::Error),
    /// A bearer token is well-formed and signed by us but may not be used here.
    #[error("token rejected: {0}")]
    TokenRejected(&'static str),
    /// A valid token that does not cover this repository and action; the client should fetch a new one.
    #[error("token does not grant {action} on repository '{repository}'")]
    InsufficientScope {
        /// The repository the request was for.
        repository: String,
        /// What the request wanted to do.
        action: Action,
    },
    /// The client is known, but its tenant's rules do not allow this.
    #[error("{who} may not {action} repository '{repository}' on {route_host}")]
    Denied {
        /// The identity as logged (tenant/user or "anonymous").
        who: String,
        /// The route host the request came in on.
        route_host: String,
        /// The repository the request was for.
        repository: String,
        /// What the request wanted to do.
        action: Action,
    },
    /// A deny rule of the tenant or of the route refuses the request (deny wins over allow).
    #[error("{who} may not {action} '{target}': refused by deny rule '{rule}' of {owner}")]
    DenyRule {
        /// The identity as logged.
        who: String,
        /// `host/repository[:tag|@digest]` as asked for.
        target: String,
        /// What the request wanted to do.
        action: Action,
        /// The rule as written.
        rule: String,
        /// Whose rule it is: `tenant 'acme'` or `route 'docker.example'`.
        owner: String,
    },
    /// `/v2/_catalog` (a request naming no repository that is not the `/v2/` ping) while auth is on: a
    /// listing of the upstream would show repositories the caller's rules do not cover, fetched with the
    /// route's own upstream credentials. Refused like a denied repository (403 DENIED).
    #[error(
        "{who} may not list repositories on {route_host}: this gateway does not serve the catalog"
    )]
    CatalogRefused {
        /// The identity as logged.
        who: String,
        /// The route host the request came in on.
        route_host: String,
    },
    /// Too many failed attempts from this address or for this user, or too many bcrypt checks queued.
    #[error("too many failed authentication attempts; retry in {}s", retry_after.as_secs().max(1))]
    Throttled {
        /// How long the client should wait.
        retry_after: Duration,
    },
    /// The token endpoint got a request it cannot serve (bad scope, unknown grant, wrong service).
    #[error("invalid token request: {0}")]
    InvalidRequest(String),
    /// The htpasswd file has lines we refuse; every bad line is listed.
    #[error("htpasswd file {}: {errors}", path.display())]
    Htpasswd {
        /// The file that was read.
        path: PathBuf,
        /// Every problem found, in line order.
        errors: HtpasswdErrors,
    },
    /// A file could not be read or written.
    #[error("{} {}", what, path.display())]
    Io {
        /// What was being done ("reading htpasswd file", "writing token key", ...).
        what: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The token signing key or its certificate is unusable.
    #[error("token key {}: {reason}", path.display())]
    Key {
        /// The key (or certificate) file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen failed to make a key or certificate.
    #[error("generating the token key or certificate")]
    KeyGen(#[source] rcgen::Error),
    /// jsonwebtoken failed to sign (only with a broken key).
    #[error("signing a token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Tenant specs are inconsistent (duplicate names, a user in two tenants, a bad pattern, ...).
    #[error("tenant configuration: {0}")]
    Config(String),
    /// bcrypt refused to hash a new password (cost out of range, password too long).
    #[error("hashing the password with bcrypt")]
    Hash(#[source] bcrypt::BcryptError),
    /// A bcrypt worker task died.
    #[error("password check task failed")]
    Blocking(#[source] tokio::task::JoinError),
    /// The LDAP directory could not be asked (down, slow, TLS or service bind failure): the user may be
    /// right, so this is neither 401 nor a lockout failure. The reason names no password.
    #[error("the LDAP directory is unavailable: {0}")]
    DirectoryUnavailable(String),
}

/// How the proxy should answer an [`AuthError`]; the mapping to status codes lives in one place there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401 UNAUTHORIZED with a `WWW-Authenticate` challenge.
    Unauthorized,
    /// 403 DENIED.
    Denied,
    /// 429 TOOMANYREQUESTS with `Retry-After` ([`AuthError::retry_after`]).
    Throttled,
    /// 400 (token endpoint only).
    BadRequest,
    /// 500: configuration or internal failure; log it.
    Internal,
    /// 503 UNAVAILABLE: a dependency (the LDAP directory) is down; try again later.
    Unavailable,
}

impl AuthError {
    /// Which answer this error calls for.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AuthError::MissingCredentials
            | AuthError::MalformedHeader(_)
            | AuthError::BadCredentials
            | AuthError::UnknownUser
            | AuthError::ApiTokenInvalid
            | AuthError::ApiTokenExpired
            | AuthError::ApiTokenRevoked
            | AuthError::InvalidToken(_)
            | AuthError::ExpiredToken(_)
            | AuthError::TokenRejected(_)
            | AuthError::InsufficientScope { .. } => ErrorKind::Unauthorized,
            AuthError::Denied { .. }
            | AuthError::DenyRule { .. }
            | AuthError::CatalogRefused { .. } => ErrorKind::Denied,
            AuthError::Throttled { .. } => ErrorKind::Throttled,
            AuthError::InvalidRequest(_) => ErrorKind::BadRequest,
            AuthError::Htpasswd { .. }
            | AuthError::Io { .. }
            | AuthError::ApiTokenFile { .. }
            | AuthError::Key { .. }
            | AuthError::KeyGen(_)
            | AuthError::Sign(_)
            | AuthError::Hash(_)
            | AuthError::Config(_)
            | AuthError::Blocking(_) => ErrorKind::Internal,
            AuthError::DirectoryUnavailable(_) => ErrorKind::Unavailable,
        }
    }

    /// For [`ErrorKind::Throttled`]: how long to tell the client to wait (at least one second).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Throttled { retry_after } => {
                Some((*retry_after).max(Duration::from_secs(1)))
            }
            _ => None,
        }
    }

    /// The `error=` value of a Bearer challenge (RFC 6750), when one applies.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
            AuthError::InvalidToken(_)
            | AuthError::ExpiredToken(_)
            | AuthError::TokenRejected(_) => Some("invalid_token"),
            _ => None,
        }
    }
}

/// Why an `Authorization` header could not be read. None of these echo header bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The header value has bytes outside visible ASCII.
    #[error("header is not visible ASCII")]
    NotAscii,
    /// Neither `Basic` nor `Bearer`.
    #[error("unsupported authorization scheme")]
    UnknownScheme,
    /// The scheme has no credentials after it.
    #[error("empty credentials")]
    Empty,
    /// Basic credentials are not base64. The decoder's own error is dropped on purpose: it quotes the
    /// offending byte, which is part of a credential.
    #[error("basic credentials are not base64")]
    Base64,
    /// The decoded Basic credentials are not UTF-8.
    #[error("basic credentials are not UTF-8")]
    Utf8(#[source] std::str::Utf8Error),
    /// The decoded Basic credentials have no `:` between user and password.
    #[error("basic credentials have no ':' separator")]
    NoColon,
}

/// All problems found in one htpasswd file, so an operator fixes them in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdErrors(pub Vec<HtpasswdLineError>);

impl fmt::Display for HtpasswdErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// One refused htpasswd line. Names the line and the user, never the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdLineError {
    /// 1-based line number.
    pub line: usize,
    /// The user on that line, when one could be read.
    pub user: Option<String>,
    /// What is wrong.
    pub problem: HtpasswdProblem,
}

/// What is wrong with an htpasswd line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtpasswdProblem {
    /// No `user:hash` shape.
    NoSeparator,
    /// Nothing before the colon.
    EmptyUser,
    /// The same user twice.
    Duplicate {
        /// Where the user first appeared.
        first_line: usize,
    },
    /// A hash scheme other than bcrypt (the name says which).
    UnsupportedScheme(&'static str),
    /// A bcrypt prefix with a cost outside 4..=31 or a body that is not 53 bcrypt-base64 characters.
    MalformedBcrypt(&'static str),
}

impl fmt::Display for HtpasswdLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        let user = self.user.as_deref().unwrap_or("");
        match &self.problem {
            HtpasswdProblem::NoSeparator => write!(f, "expected 'user:bcrypt-hash'"),
            HtpasswdProblem::EmptyUser => write!(f, "empty user name"),
            HtpasswdProblem::Duplicate { first_line } => {
                write!(f, "user '{user}' appears again (first on line {first_line})")
            }
            HtpasswdProblem::UnsupportedScheme(scheme) => write!(
                f,
                "user '{user}' uses an unsupported hash scheme ({scheme}); only bcrypt is accepted: run `htpasswd -B`"
            ),
            HtpasswdProblem::MalformedBcrypt(why) => {
                write!(f, "user '{user}' has a malformed bcrypt hash ({why}); recreate it with `htpasswd -B`")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: each client-facing error maps to the answer the proxy must give (401/403/429/400/500).
    #[test]
    fn kinds_map_to_answers() {
        assert_eq!(
            AuthError::MissingCredentials.kind(),
            ErrorKind::Unauthorized
        );
        assert_eq!(AuthError::BadCredentials.kind(), ErrorKind::Unauthorized);
        assert_eq!(AuthError::UnknownUser.kind(), ErrorKind::Unauthorized);
        assert_eq!(
            AuthError::UnknownUser.to_string(),
            AuthError::BadCredentials.to_string(),
            "the answer must not tell unknown users from wrong passwords"
        );
        let catalog = AuthError::CatalogRefused {
            who: "t/u".into(),
            route_host: "h".into(),
        };
        assert_eq!(catalog.kind(), ErrorKind::Denied);
        let denied = AuthError::Denied {
            who: "t/u".into(),
            route_host: "h".into(),
            repository: "r".into(),
            action: Action::Push,
        };
        assert_eq!(denied.kind(), ErrorKind::Denied);
        let throttled = AuthError::Throttled {
            retry_after: Duration::from_millis(10),
        };
        assert_eq!(throttled.kind(), ErrorKind::Throttled);
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(
            AuthError::InvalidRequest("x".into()).kind(),
            ErrorKind::BadRequest
        );
        assert_eq!(AuthError::Config("x".into()).kind(), ErrorKind::Internal);
        let scope = AuthError::InsufficientScope {
            repository: "a".into(),
            action: Action::Pull,
        };
        assert_eq!(scope.bearer_error(), Some("insufficient_scope"));
    }

    // Rule: the htpasswd message names line, user and scheme, and tells the operator the fix.
    #[test]
    fn htpasswd_message_names_line_user_and_fix() {
        let e = HtpasswdLineError {
            line: 3,
            user: Some("bob".into()),
            problem: HtpasswdProblem::UnsupportedScheme("$apr1$ MD5"),
        };
        assert_eq!(
            e.to_string(),
            "line 3: user 'bob' uses an unsupported hash scheme ($apr1$ MD5); only bcrypt is accepted: run `htpasswd -B`"
        );
    }
}
