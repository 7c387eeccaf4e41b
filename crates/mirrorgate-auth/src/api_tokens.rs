//! API tokens (robot accounts): scoped, expiring, one-by-one revocable credentials for CI and customers,
//! used as the Basic password (any user name) or at `/token` like one.
//!
//! A token reads `mgt_<id>_<secret>`: the prefix makes leaked tokens recognisable to secret scanners, the
//! id (16 hex digits) finds the record in O(1), and the secret carries 192 random bits. Only the SHA-256 of
//! the secret is stored: for a high-entropy secret a fast hash is as safe as bcrypt and costs no CPU per
//! request, so tokens need neither the bcrypt semaphore nor the credential cache. Hashes are compared in
//! constant time (`subtle`).
//!
//! The file (`[auth] api_tokens`, JSON) is written by `mirrorgate token` (temporary file + rename, mode
//! 0600) and polled like htpasswd, so a revocation or a new token reaches every replica mounting it within
//! the poll interval. A missing file holds no tokens (deleting it revokes them all). Revoked tokens stay
//! in the file, marked, so they are refused with their own reason and listed.
//!
//! A token's grants are the intersection of its own scope (its `allow` patterns, `route-host/repository`
//! globs, or everything when it has none; push only with `push`; never delete) and its tenant's rules.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::error::AuthError;
use crate::tenants::{Action, Rule};

/// What every API token starts with; a Basic password with this prefix is checked as a token.
pub const API_TOKEN_PREFIX: &str = "mgt_";

/// The user name tokens appear under in logs, metrics and JWT subjects: `token:<name>`.
pub const API_TOKEN_USER_PREFIX: &str = "token:";

/// Random bytes in an id: 64 bits, so ids never collide in practice and need no coordination.
const ID_BYTES: usize = 8;

/// Random bytes in a secret: 192 bits, far past guessing (the brief asks for at least 128).
const SECRET_BYTES: usize = 24;

/// The file format version this code writes and reads.
const FILE_VERSION: u32 = 1;

/// Mode of the token file: it holds no secrets, but names every robot account and its scope.
const FILE_MODE: u32 = 0o600;

/// One token as stored: no secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenRecord {
    /// 16 hex digits, also inside the token.
    pub id: String,
    /// Unique name (logs and metrics say `token:<name>`).
    pub name: String,
    /// The tenant whose rules bound the token.
    pub tenant: String,
    /// Hex SHA-256 of the secret part.
    pub sha256: String,
    /// `route-host/repository` globs the token is limited to; empty: whatever the tenant allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Whether the token may push (where the tenant may too).
    #[serde(default)]
    pub push: bool,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// Expiry, Unix seconds; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Revocation time, Unix seconds; a revoked token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<ApiTokenRecord>,
}

/// What `mirrorgate token create` asks for.
#[derive(Debug, Clone)]
pub struct NewTokenSpec {
    /// Unique name.
    pub name: String,
    /// The tenant.
    pub tenant: String,
    /// Scope patterns (`route-host/repository` globs).
    pub allow: Vec<String>,
    /// Push right.
    pub push: bool,
    /// Lifetime from now; `None`: no expiry.
    pub expires_in: Option<Duration>,
}

/// A freshly made token: the record to store and the token to show once. Debug hides the token.
pub struct NewToken {
    /// What goes into the file.
    pub record: ApiTokenRecord,
    /// The full token (`mgt_...`), shown to the operator once and never stored.
    pub token: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A token's own scope, before the tenant's rules are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    rules: Vec<Rule>,
    push: bool,
}

impl TokenScope {
    /// True when the scope covers `action` on `repo` at `route_host`. Delete is never granted by a token:
    /// deleting is irreversible, and robot accounts are for pulling and publishing.
    pub fn allows(&self, route_host: &str, repo: &str, action: Action) -> bool {
        let covered = self.rules.is_empty()
            || self
                .rules
                .iter()
                .any(|r| r.matches(route_host, repo, Action::Pull));
        match action {
            Action::Pull => covered,
            Action::Push => self.push && covered,
            Action::Delete => false,
        }
    }
}

/// A verified token: who it is and what it may do.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// `token:<name>`.
    pub user: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// Its own scope.
    pub scope: Arc<TokenScope>,
}

/// Makes a token: random id and secret, the record holding the secret's hash. Checks the name and patterns.
pub fn create_token(spec: &NewTokenSpec, now: SystemTime) -> Result<NewToken, AuthError> {
    validate_name(&spec.name)?;
    if spec.tenant.is_empty() {
        return Err(AuthError::Config("the token's tenant is empty".into()));
    }
    for p in &spec.allow {
        scope_rule(p).map_err(AuthError::Config)?;
    }
    let rng = SystemRandom::new();
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut id)
        .and_then(|()| rng.fill(&mut secret))
        .map_err(|_| AuthError::Config("no system randomness for the API token".into()))?;
    let id = data_encoding::HEXLOWER.encode(&id);
    let secret = data_encoding::BASE64URL_NOPAD.encode(&secret);
    let created = unix(now);
    let record = ApiTokenRecord {
        id: id.clone(),
        name: spec.name.clone(),
        tenant: spec.tenant.clone(),
        sha256: data_encoding::HEXLOWER.encode(&Sha256::digest(secret.as_bytes())),
        allow: spec.allow.clone(),
        push: spec.push,
        created,
        expires: spec.expires_in.map(|d| created.saturating_add(d.as_secs())),
        revoked: None,
    };
    Ok(NewToken {
        record,
        token: format!("{API_TOKEN_PREFIX}{id}_{secret}"),
    })
}

/// Reads the token file; a missing file holds no tokens.
pub fn read_token_file(path: &Path) -> Result<Vec<ApiTokenRecord>, AuthError> {
    parse_or_empty(path, &read_or_empty(path)?)
}

/// Writes the token file atomically (temporary file in the same folder, flushed, renamed over), mode 0600,
/// so a watching gateway never reads half a file.
pub fn write_token_file(path: &Path, tokens: &[ApiTokenRecord]) -> Result<(), AuthError> {
    let io = |what: &'static str| {
        move |source| AuthError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    let body = serde_json::to_vec_pretty(&TokenFile {
        version: FILE_VERSION,
        tokens: tokens.to_vec(),
    })
    .map_err(|e| AuthError::ApiTokenFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let name = path
        .file_name()
        .map_or_else(|| "api-tokens".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io("creating temporary API token file"))?;
    let written = file
        .write_all(&body)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing API token file")(e));
    }
    Ok(())
}

/// A token name: what logs show after `token:`, so letters, digits, `.`, `_`, `-` only.
fn validate_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Config(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// A scope pattern is a tenant pull pattern: rights come from `push`, never from a prefix.
fn scope_rule(pattern: &str) -> Result<Rule, String> {
    // Route hosts carry no port, so a `:` before the first `/` is a rights prefix.
    if pattern
        .split_once('/')
        .is_some_and(|(head, _)| head.contains(':'))
    {
        return Err(format!(
            "token scope '{pattern}': write `route-host/repository-pattern` without a prefix; push is the --push flag"
        ));
    }
    Rule::parse(pattern)
}

fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<ApiTokenRecord>, AuthError> {
    let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| AuthError::ApiTokenFile {
        path: path.to_owned(),
        // serde_json's message names line and column and the field, never a value: the file holds no secrets.
        reason: e.to_string(),
    })?;
    if file.version != FILE_VERSION {
        return Err(AuthError::ApiTokenFile {
            path: path.to_owned(),
            reason: format!(
                "version {} (this gateway reads {FILE_VERSION})",
                file.version
            ),
        });
    }
    Ok(file.tokens)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Stored {
    record: ApiTokenRecord,
    digest: [u8; 32],
    user: Arc<str>,
    tenant: Arc<str>,
    scope: Arc<TokenScope>,
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<String, Stored>,
    /// name → id, for JWTs whose subject is `token:<name>`.
    by_name: HashMap<String, String>,
    content_hash: [u8; 32],
}

fn snapshot(
    path: &Path,
    records: Vec<ApiTokenRecord>,
    content_hash: [u8; 32],
) -> Result<Snapshot, AuthError> {
    let bad = |reason: String| AuthError::ApiTokenFile {
        path: path.to_owned(),
        reason,
    };
    let mut s = Snapshot {
        content_hash,
        ..Snapshot::default()
    };
    for record in records {
        let digest: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
            .decode(record.sha256.as_bytes())
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| {
                bad(format!(
                    "token '{}': sha256 is not 64 hex digits",
                    record.name
                ))
            })?;
        let rules = record
            .allow
            .iter()
            .map(|p| scope_rule(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        if s.by_name
            .insert(record.name.clone(), record.id.clone())
            .is_some()
        {
            return Err(bad(format!("token name '{}' appears twice", record.name)));
        }
        let stored = Stored {
            digest,
            user: Arc::from(format!("{API_TOKEN_USER_PREFIX}{}", record.name)),
            tenant: Arc::from(record.tenant.as_str()),
            scope: Arc::new(TokenScope {
                rules,
                push: record.push,
            }),
            record,
        };
        if let Some(dup) = s.by_id.insert(stored.record.id.clone(), stored) {
            return Err(bad(format!("token id '{}' appears twice", dup.record.id)));
        }
    }
    Ok(s)
}

/// The live token set, reloaded when the file changes.
pub struct ApiTokens {
    path: PathBuf,
    current: ArcSwap<Snapshot>,
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTokens")
            .field("path", &self.path)
            .field("tokens", &self.current.load().by_id.len())
            .finish()
    }
}

impl ApiTokens {
    /// Loads the token file (missing: no tokens yet). A broken file is an error: fix it before starting.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let bytes = read_or_empty(&path)?;
        let snap = snapshot(&path, parse_or_empty(&path, &bytes)?, digest(&bytes))?;
        Ok(ApiTokens {
            path,
            current: ArcSwap::from_pointee(snap),
        })
    }

    /// The file behind the tokens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens currently loaded (revoked ones included).
    pub fn len(&self) -> usize {
        self.current.load().by_id.len()
    }

    /// True when no token is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads from the file. `Ok(true)` when it changed; a broken file keeps the current tokens.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let bytes = read_or_empty(&self.path)?;
        self.apply(&bytes)
    }

    fn apply(&self, bytes: &[u8]) -> Result<bool, AuthError> {
        let hash = digest(bytes);
        if self.current.load().content_hash == hash {
            return Ok(false);
        }
        let next = snapshot(&self.path, parse_or_empty(&self.path, bytes)?, hash)?;
        tracing::info!(path = %self.path.display(), tokens = next.by_id.len(), "API tokens reloaded");
        self.current.store(Arc::new(next));
        Ok(true)
    }

    /// Checks a presented token (the whole `mgt_...` string). A wrong or unknown one is
    /// [`AuthError::ApiTokenInvalid`]; revocation and expiry are told only to the holder of the right secret.
    pub fn verify(&self, presented: &str, now: SystemTime) -> Result<VerifiedToken, AuthError> {
        let (id, secret) = presented
            .strip_prefix(API_TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .ok_or(AuthError::ApiTokenInvalid)?;
        let snap = self.current.load();
        let stored = snap.by_id.get(id).ok_or(AuthError::ApiTokenInvalid)?;
        let presented_digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !bool::from(presented_digest.ct_eq(&stored.digest)) {
            return Err(AuthError::ApiTokenInvalid);
        }
        Self::usable(stored, now)
    }

    /// The token named `name`, if it is still usable (for JWTs issued to `token:<name>`).
    pub fn by_name(&self, name: &str, now: SystemTime) -> Result<VerifiedToken, AuthError> {
        let snap = self.current.load();
        let stored = snap
            .by_name
            .get(name)
            .and_then(|id| snap.by_id.get(id))
            .ok_or(AuthError::ApiTokenRevoked)?;
        Self::usable(stored, now)
    }

    fn usable(stored: &Stored, now: SystemTime) -> Result<VerifiedToken, AuthError> {
        if stored.record.revoked.is_some() {
            return Err(AuthError::ApiTokenRevoked);
        }
        if stored.record.expires.is_some_and(|e| unix(now) >= e) {
            return Err(AuthError::ApiTokenExpired);
        }
        Ok(VerifiedToken {
            user: stored.user.clone(),
            tenant: stored.tenant.clone(),
            scope: stored.scope.clone(),
        })
    }

    /// Polls the file every `interval` until `cancel` fires; see [`crate::file_watch`].
    pub async fn watch(&self, interval: Duration, cancel: CancellationToken) {
        crate::file_watch::poll(
            &self.path,
            "API token file",
            interval,
            cancel,
            true,
            |bytes| self.apply(bytes),
        )
        .await;
    }
}

fn read_or_empty(path: &Path) -> Result<Vec<u8>, AuthError> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(AuthError::Io {
            what: "reading API token file",
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_or_empty(path: &Path, bytes: &[u8]) -> Result<Vec<ApiTokenRecord>, AuthError> {
    if bytes.is_empty() {
        Ok(Vec::new())
    } else {
        parse_file(path, bytes)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, allow: &[&str], push: bool, expires: Option<u64>) -> NewTokenSpec {
        NewTokenSpec {
            name: name.into(),
            tenant: "acme".into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            push,
            expires_in: expires.map(Duration::from_secs),
        }
    }

    fn store_with(dir: &Path, tokens: &[ApiTokenRecord]) -> ApiTokens {
        let path = dir.join("api-tokens");
        write_token_file(&path, tokens).unwrap();
        ApiTokens::load(&path).unwrap()
    }

    // Pins issue 16 (API tokens): a token is `mgt_<16 hex>_<secret>` with ≥128 random bits, the file keeps
    // only its SHA-256, and the token verifies as `token:<name>` of its tenant.
    #[test]
    fn create_store_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let t = create_token(&spec("ci-deploy", &[], false, None), now).unwrap();
        let (id, secret) = t
            .token
            .strip_prefix("mgt_")
            .unwrap()
            .split_once('_')
            .unwrap();
        assert_eq!(id.len(), 16);
        assert!(
            data_encoding::BASE64URL_NOPAD
                .decode(secret.as_bytes())
                .unwrap()
                .len()
                * 8
                >= 128
        );
        let store = store_with(dir.path(), std::slice::from_ref(&t.record));
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains(secret) && text.contains(&t.record.sha256));
        let v = store.verify(&t.token, now).unwrap();
        assert_eq!(&*v.user, "token:ci-deploy");
        assert_eq!(&*v.tenant, "acme");
        assert!(!format!("{t:?} {store:?}").contains(secret));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Rule: a wrong secret, an unknown id and a malformed token are all "invalid"; expiry and revocation
    // are told apart, but only to the holder of the right secret.
    #[test]
    fn wrong_expired_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let good = create_token(&spec("good", &[], false, Some(60)), now).unwrap();
        let mut revoked = create_token(&spec("old", &[], false, None), now).unwrap();
        revoked.record.revoked = Some(unix(now));
        let store = store_with(dir.path(), &[good.record.clone(), revoked.record.clone()]);
        let (id, _) = good.token[4..].split_once('_').unwrap();
        for bad in [
            format!("mgt_{id}_wrongsecret"),
            "mgt_0000000000000000_x".to_owned(),
            "mgt_nounderscore".to_owned(),
            "mgt_".to_owned(),
        ] {
            assert!(
                matches!(store.verify(&bad, now), Err(AuthError::ApiTokenInvalid)),
                "{bad}"
            );
        }
        assert!(matches!(
            store.verify(&revoked.token, now),
            Err(AuthError::ApiTokenRevoked)
        ));
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            store.verify(&good.token, later),
            Err(AuthError::ApiTokenExpired)
        ));
        assert!(matches!(
            store.by_name("good", later),
            Err(AuthError::ApiTokenExpired)
        ));
        assert!(store.by_name("good", now).is_ok());
        assert!(matches!(
            store.by_name("old", now),
            Err(AuthError::ApiTokenRevoked)
        ));
    }

    // Pins issue 16: revocation written to the file takes effect on reload; a broken file keeps the old
    // tokens, and a deleted file revokes them all.
    #[test]
    fn revocation_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let t = create_token(&spec("ci", &[], false, None), now).unwrap();
        let store = store_with(dir.path(), std::slice::from_ref(&t.record));
        assert!(store.verify(&t.token, now).is_ok());
        assert!(!store.reload().unwrap());
        std::fs::write(store.path(), "{ not json").unwrap();
        assert!(matches!(
            store.reload(),
            Err(AuthError::ApiTokenFile { .. })
        ));
        assert!(store.verify(&t.token, now).is_ok());
        let mut records = vec![t.record.clone()];
        records[0].revoked = Some(unix(now));
        write_token_file(store.path(), &records).unwrap();
        assert!(store.reload().unwrap());
        assert!(matches!(
            store.verify(&t.token, now),
            Err(AuthError::ApiTokenRevoked)
        ));
        std::fs::remove_file(store.path()).unwrap();
        assert!(store.reload().unwrap());
        assert!(store.is_empty());
    }

    // Rule: the scope limits repositories; push needs the flag; delete is never granted; prefixes are refused.
    #[test]
    fn scope_rules() {
        let s = TokenScope {
            rules: vec![scope_rule("docker.example/acme/*").unwrap()],
            push: false,
        };
        assert!(s.allows("docker.example", "acme/app", Action::Pull));
        assert!(!s.allows("docker.example", "other/app", Action::Pull));
        assert!(!s.allows("docker.example", "acme/app", Action::Push));
        let p = TokenScope {
            rules: vec![],
            push: true,
        };
        assert!(p.allows("any", "x/y", Action::Push));
        assert!(!p.allows("any", "x/y", Action::Delete));
        assert!(scope_rule("push:docker.example/acme/*").is_err());
        assert!(scope_rule("delete:docker.example/acme/*").is_err());
        assert!(create_token(&spec("bad name", &[], false, None), SystemTime::now()).is_err());
        assert!(create_token(&spec("n", &["nohost"], false, None), SystemTime::now()).is_err());
    }
}
