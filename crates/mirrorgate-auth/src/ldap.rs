//! LDAP users: Basic credentials that htpasswd does not know (and that are no API token) are checked
//! against a directory.
//!
//! A check is two steps on one connection: search the user under `user_base` with the service account's
//! bind (`user_filter`, the user name escaped per RFC 4515 so `*` or `)(uid=*` match nothing but themselves),
//! then bind as the one entry found with the presented password. The entry's `group_attribute` values
//! (`memberOf`: the `memberof` overlay, Active Directory) are the user's groups; [`crate::Tenants`] maps
//! them to a tenant.
//!
//! - Empty passwords are refused before any bind: an empty simple bind is an *anonymous* bind, which
//!   directories answer with success.
//! - Successful checks are cached like htpasswd ones (a keyed fingerprint, short TTL), and failures lock
//!   out a source and a (user, source) pair with the same policy as wrong passwords.
//! - A directory that is down, slow or refuses the service bind is [`AuthError::DirectoryUnavailable`]
//!   (503): the password may be right, so it is neither a 401 nor a lockout failure. htpasswd users and
//!   API tokens never reach this module, so they keep working.
//! - At most `max_connections` checks talk to the directory at once, each bounded by `timeout` (waiting
//!   for a connection included), so a slow directory queues LDAP logins without stalling anything else.
//!   Idle service-bound connections are kept for reuse.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::sync::{Mutex, Semaphore};

use crate::cache::CredentialCache;
use crate::error::AuthError;
use crate::password::{PasswordPolicy, SourceLockout};

/// The directory settings; the integrator maps `[auth.ldap]` onto it.
#[derive(Clone)]
pub struct LdapSpec {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS before any bind.
    pub starttls: bool,
    /// Extra trusted CA certificates (PEM), besides the public roots.
    pub ca: Option<PathBuf>,
    /// The service account that searches users.
    pub bind_dn: String,
    /// Its password.
    pub bind_password: String,
    /// Where users are searched (subtree).
    pub user_base: String,
    /// A filter holding `{user}`.
    pub user_filter: String,
    /// The attribute of the user entry that lists its group DNs.
    pub group_attribute: String,
    /// Bound on one whole check, waiting for a connection included (default 5 s).
    pub timeout: Duration,
    /// Checks talking to the directory at once, and idle connections kept (default 8).
    pub max_connections: usize,
}

impl std::fmt::Debug for LdapSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapSpec")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &"<redacted>")
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .finish_non_exhaustive()
    }
}

/// Default bound on one LDAP check.
pub const LDAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of concurrent directory checks and kept connections.
pub const LDAP_CONNECTIONS: usize = 8;
/// How long a user verified by the directory is remembered for bearer tokens issued to it (the token's own
/// lifetime is shorter; this only bounds the map).
const KNOWN_FOR: Duration = Duration::from_secs(3600);
/// Bound on the remembered users.
const KNOWN_CAPACITY: usize = 100_000;

/// What the directory said about a user and password.
enum Verdict {
    /// The bind succeeded; the user's group DNs.
    Valid(Vec<String>),
    /// No such user, several entries, or the bind was refused.
    Invalid,
}

/// Users checked against the directory, with their cache, lockouts and connection pool.
pub(crate) struct LdapUsers {
    spec: LdapSpec,
    settings: LdapConnSettings,
    permits: Semaphore,
    idle: Mutex<Vec<Ldap>>,
    cache: CredentialCache,
    /// Users verified recently, with their groups: cache hits and bearer tokens read them.
    known: DashMap<String, (Arc<[String]>, Instant)>,
    /// The same lockout settings as htpasswd, per source and per (user, source).
    lockout: SourceLockout,
    binds: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for LdapUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapUsers")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Lower case, no spaces around `,` and `=`: enough to compare the DNs people write in the config with the
/// DNs directories return.
pub(crate) fn normalise_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("=")
                .to_lowercase()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The search filter for `user`: `{user}` replaced by the RFC 4515-escaped name.
pub(crate) fn user_filter(template: &str, user: &str) -> String {
    template.replace("{user}", &ldap_escape(user))
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> AuthError {
    AuthError::DirectoryUnavailable(format!("{what}: {e}"))
}

/// TLS to the directory: the public roots plus the configured CA.
fn tls_config(ca: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, AuthError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| AuthError::Config(format!("LDAP CA {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(AuthError::Config(format!(
                "LDAP CA {}: no certificate in the file",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| AuthError::Config(format!("LDAP CA {}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Config(format!("LDAP TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl LdapUsers {
    /// Reads the CA (blocking file I/O: call at start-up).
    pub(crate) fn new(spec: LdapSpec, policy: &PasswordPolicy) -> Result<Self, AuthError> {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(spec.timeout)
            .set_starttls(spec.starttls)
            .set_config(tls_config(spec.ca.as_ref())?);
        let cache =
            CredentialCache::new(policy.cache_capacity, policy.cache_ttl).map_err(|_| {
                AuthError::Config("no system randomness for the credential cache key".into())
            })?;
        Ok(LdapUsers {
            permits: Semaphore::new(spec.max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            settings,
            spec,
            cache,
            known: DashMap::new(),
            lockout: SourceLockout::new(policy),
            binds: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Binds as users attempted so far (cache hits and refused empty passwords make none).
    #[cfg(test)]
    pub(crate) fn binds(&self) -> u64 {
        self.binds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The groups of a user the directory verified within the last hour, for bearer tokens issued to it.
    pub(crate) fn known_groups(&self, user: &str) -> Option<Arc<[String]>> {
        let entry = self.known.get(user)?;
        (entry.1.elapsed() < KNOWN_FOR).then(|| entry.0.clone())
    }

    /// Succeeds with the user's group DNs when the directory accepts `password` for `user`.
    pub(crate) async fn check(
        &self,
        user: &str,
        password: &str,
        peer_ip: IpAddr,
    ) -> Result<Arc<[String]>, AuthError> {
        let fp = self.cache.fingerprint(user, password);
        let now = Instant::now();
        if self.cache.contains(&fp, 0, now) {
            if let Some(groups) = self.known_groups(user) {
                return Ok(groups);
            }
        }
        let attempt = self.lockout.admit(user, peer_ip, now)?;
        let verdict = if password.is_empty() {
            Verdict::Invalid
        } else {
            tokio::time::timeout(self.spec.timeout, self.ask(user, password))
                .await
                .map_err(|_| {
                    unavailable("no answer", format!("within {:?}", self.spec.timeout))
                })??
        };
        let now = Instant::now();
        match verdict {
            Verdict::Valid(groups) => {
                let groups: Arc<[String]> = groups.into();
                self.cache.insert(fp, 0, now);
                if self.known.len() >= KNOWN_CAPACITY {
                    self.known.retain(|_, (_, at)| at.elapsed() < KNOWN_FOR);
                    if self.known.len() >= KNOWN_CAPACITY {
                        self.known.clear();
                    }
                }
                self.known.insert(user.to_owned(), (groups.clone(), now));
                self.lockout.succeeded(&attempt);
                Ok(groups)
            }
            Verdict::Invalid => {
                self.lockout.failed(&attempt, now);
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// One check against the directory: a service-bound connection (kept or new), the search, the user's
    /// bind, and the service bind again before the connection is kept for the next check.
    async fn ask(&self, user: &str, password: &str) -> Result<Verdict, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| unavailable("connection pool", e))?;
        let kept = self.idle.lock().await.pop();
        let mut ldap = match kept {
            Some(mut l) => {
                if l.is_closed() {
                    self.connect().await?
                } else {
                    l
                }
            }
            None => self.connect().await?,
        };
        let filter = user_filter(&self.spec.user_filter, user);
        let attrs = vec![self.spec.group_attribute.as_str()];
        let (entries, _) = ldap
            .search(&self.spec.user_base, Scope::Subtree, &filter, attrs)
            .await
            .and_then(|r| r.success())
            .map_err(|e| unavailable("user search", e))?;
        if entries.len() != 1 {
            if entries.len() > 1 {
                tracing::warn!(
                    user,
                    entries = entries.len(),
                    "LDAP user filter matches several entries; refused"
                );
            }
            self.keep(ldap).await;
            return Ok(Verdict::Invalid);
        }
        let mut entry = entries.into_iter().map(SearchEntry::construct);
        let Some(entry) = entry.next() else {
            return Ok(Verdict::Invalid);
        };
        let groups = entry
            .attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&self.spec.group_attribute))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.binds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bound = ldap
            .simple_bind(&entry.dn, password)
            .await
            .map_err(|e| unavailable("user bind", e))?;
        let verdict = if bound.rc == 0 {
            Verdict::Valid(groups)
        } else {
            Verdict::Invalid
        };
        // Back to the service identity before the connection serves another check.
        if self.service_bind(&mut ldap).await.is_ok() {
            self.keep(ldap).await;
        }
        Ok(verdict)
    }

    async fn keep(&self, ldap: Ldap) {
        let mut idle = self.idle.lock().await;
        if idle.len() < self.spec.max_connections {
            idle.push(ldap);
        }
    }

    async fn service_bind(&self, ldap: &mut Ldap) -> Result<(), AuthError> {
        let r = ldap
            .simple_bind(&self.spec.bind_dn, &self.spec.bind_password)
            .await
            .map_err(|e| unavailable("service bind", e))?;
        if r.rc != 0 {
            tracing::warn!(rc = r.rc, bind_dn = %self.spec.bind_dn, "LDAP service bind refused");
            return Err(unavailable("service bind refused", r.rc));
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Ldap, AuthError> {
        let (conn, mut ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.spec.url)
            .await
            .map_err(|e| unavailable("connect", e))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.spec.timeout);
        self.service_bind(&mut ldap).await?;
        Ok(ldap)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    // Pins RFC 4515 escaping of the user name in the filter: `*`, `(`, `)`, `\` and NUL are hex-escaped.
    #[test]
    fn filter_escapes_the_user() {
        assert_eq!(user_filter("(uid={user})", "alice"), "(uid=alice)");
        assert_eq!(user_filter("(uid={user})", "*"), "(uid=\\2a)");
        assert_eq!(
            user_filter("(uid={user})", "x)(uid=*"),
            "(uid=x\\29\\28uid=\\2a)"
        );
        assert_eq!(user_filter("(uid={user})", "a\\b\0"), "(uid=a\\5cb\\00)");
    }

    // Pins DN comparison: case and spaces around separators do not matter.
    #[test]
    fn dns_compare_normalised() {
        assert_eq!(
            normalise_dn("CN=Dev, OU=Groups,dc=corp"),
            normalise_dn("cn=dev,ou=groups,dc=corp")
        );
    }

    fn spec(url: &str) -> LdapSpec {
        LdapSpec {
            url: url.into(),
            starttls: false,
            ca: None,
            bind_dn: "cn=svc".into(),
            bind_password: "pw".into(),
            user_base: "dc=x".into(),
            user_filter: "(uid={user})".into(),
            group_attribute: "memberOf".into(),
            timeout: Duration::from_millis(500),
            max_connections: 2,
        }
    }

    // Pins that an empty password is refused without any bind (an empty simple bind is anonymous), and counts
    // as a failure.
    #[tokio::test]
    async fn empty_password_never_binds() {
        let users = LdapUsers::new(spec("ldap://127.0.0.1:1"), &PasswordPolicy::default()).unwrap();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(matches!(
            users.check("alice", "", ip).await,
            Err(AuthError::BadCredentials)
        ));
        assert_eq!(users.binds(), 0);
    }

    // Pins that an unreachable directory is "unavailable" (503), not a wrong password, and no lockout.
    #[tokio::test]
    async fn directory_down_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let policy = PasswordPolicy {
            max_failures: 1,
            ..PasswordPolicy::default()
        };
        let users = LdapUsers::new(spec(&format!("ldap://127.0.0.1:{port}")), &policy).unwrap();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..3 {
            let e = users.check("alice", "pw", ip).await.unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
        }
    }
}
