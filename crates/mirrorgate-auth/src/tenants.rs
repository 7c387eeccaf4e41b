//! Tenants and their access rules: which users and networks belong to whom, and which route hosts and
//! repositories each may pull or push.
//!
//! # Patterns
//! An `allow` entry is `[push:|delete:]<route host>/<repository glob>`. `*` matches any run of characters,
//! `/` included, so `team/*` covers `team/a` and `team/a/b` (registries nest freely; a per-segment `*`
//! would make operators list every depth). `team/*` does not cover `team` itself. A host part of `*`
//! means every route host; other host parts use the same glob (`*.docker.example`). Matching is exact
//! and case-sensitive: repository names are lower case by the distribution spec and hosts are compared as
//! configured. Pull rules grant pull; `push:` rules grant push *and* pull on their pattern; `delete:` rules grant
//! delete only. Delete is its own right, never implied by push or by an open route: pushing a tag is
//! reversible (push it again), deleting a manifest or blob is not, and distribution asks for `delete`
//! separately too. Any other `word:` prefix is refused (a typo must not silently become a pull rule).
//!
//! # Who gets what
//! - a user in a tenant: that tenant's rules;
//! - a user in no tenant: pull everywhere while no tenant is configured (the htpasswd-only set-up),
//!   nothing once tenants exist (every user must then be placed);
//! - a network (CIDR) client: its tenant's rules; the longest matching prefix picks the tenant;
//! - an anonymous client, on a route that allows anonymous access: the rules of the tenant named
//!   [`ANONYMOUS_TENANT`] if one is configured, else pull and push on that route (never delete). That
//!   tenant may have no users and no CIDRs; it exists only to narrow anonymous access.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::Method;
use ipnet::IpNet;
use mirrorgate_registry::{Reference, RequestKind};

use crate::deny::{DenyRule, DenyRules};
use crate::error::AuthError;

/// The tenant whose rules, when configured, narrow anonymous access on anonymous routes.
pub const ANONYMOUS_TENANT: &str = "anonymous";

/// A tenant as configured; the integrator builds these from the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantSpec {
    /// Unique name (used in logs, metrics labels and limits).
    pub name: String,
    /// htpasswd users in this tenant (each user in at most one tenant).
    pub users: Vec<String>,
    /// Source networks whose requests without credentials belong to this tenant.
    pub cidrs: Vec<IpNet>,
    /// Access patterns, see the module docs.
    pub allow: Vec<String>,
    /// Deny patterns (see [`crate::deny`]): refused even where `allow` matches.
    pub deny: Vec<String>,
    /// LDAP group DNs whose members belong to this tenant (each group in at most one tenant).
    pub ldap_groups: Vec<String>,
}

/// What a request wants to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read manifests, blobs, tags.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete manifests and blobs. Only `delete:` rules grant it.
    Delete,
}

impl Action {
    /// The token-spec action name (distribution asks for `delete` on `DELETE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The action a registry request needs: `GET`/`HEAD` read (pull); `DELETE` of a manifest, blob or
    /// anything else stored removes content (delete); `DELETE` of an upload session cancels an upload the
    /// client started, which is part of pushing and removes nothing stored (push); every other method
    /// writes (push).
    pub fn for_request(method: &Method, kind: RequestKind) -> Action {
        match *method {
            Method::GET | Method::HEAD => Action::Pull,
            Method::DELETE if kind != RequestKind::Upload => Action::Delete,
            _ => Action::Push,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// The right the rule's prefix names: `Pull` (none), `Push` (`push:`) or `Delete` (`delete:`).
    right: Action,
    host: String,
    repo: String,
}

impl Rule {
    pub(crate) fn parse(pattern: &str) -> Result<Rule, String> {
        let Some((head, repo)) = pattern.split_once('/') else {
            return Err(format!(
                "allow pattern '{pattern}' must be '[push:|delete:]<route host>/<repository pattern>'"
            ));
        };
        // Route hosts carry no port, so a `:` before the first `/` can only end a prefix.
        let (right, host) = match head.split_once(':') {
            None => (Action::Pull, head),
            Some(("push", host)) => (Action::Push, host),
            Some(("delete", host)) => (Action::Delete, host),
            Some((other, _)) => {
                return Err(format!(
                    "allow pattern '{pattern}' has the unknown prefix '{other}:' (known: 'push:', 'delete:')"
                ))
            }
        };
        if host.is_empty() || repo.is_empty() {
            return Err(format!(
                "allow pattern '{pattern}' has an empty host or repository part"
            ));
        }
        Ok(Rule {
            right,
            host: host.to_owned(),
            repo: repo.to_owned(),
        })
    }

    /// Push implies pull; delete implies nothing and nothing implies delete.
    fn grants(&self, action: Action) -> bool {
        matches!(
            (self.right, action),
            (Action::Pull | Action::Push, Action::Pull)
                | (Action::Push, Action::Push)
                | (Action::Delete, Action::Delete)
        )
    }

    pub(crate) fn matches(&self, route_host: &str, repo: &str, action: Action) -> bool {
        self.grants(action) && glob(&self.host, route_host) && glob(&self.repo, repo)
    }
}

#[derive(Debug)]
struct Tenant {
    rules: Vec<Rule>,
    deny: DenyRules,
}

/// All tenants, with lookups by user and by source address.
#[derive(Debug, Default)]
pub struct Tenants {
    tenants: HashMap<Arc<str>, Tenant>,
    by_user: HashMap<String, Arc<str>>,
    /// LDAP group DNs, normalised (see [`crate::ldap::normalise_dn`]).
    by_group: HashMap<String, Arc<str>>,
    /// Sorted by prefix length, longest first, so the first hit is the most specific.
    cidrs: Vec<(IpNet, Arc<str>)>,
}

impl Tenants {
    /// Builds the lookups; rejects duplicate names, a user in two tenants, the same network in two
    /// tenants, malformed patterns, and users or networks on the anonymous tenant.
    pub fn new(specs: Vec<TenantSpec>) -> Result<Self, AuthError> {
        let mut out = Tenants::default();
        let mut seen_nets: HashMap<IpNet, Arc<str>> = HashMap::new();
        for spec in specs {
            let name: Arc<str> = Arc::from(spec.name.as_str());
            if spec.name.is_empty() {
                return Err(AuthError::Config("a tenant has an empty name".into()));
            }
            if out.tenants.contains_key(&name) {
                return Err(AuthError::Config(format!(
                    "tenant '{name}' is defined twice"
                )));
            }
            if &*name == ANONYMOUS_TENANT && (!spec.users.is_empty() || !spec.cidrs.is_empty()) {
                return Err(AuthError::Config(format!(
                    "tenant '{ANONYMOUS_TENANT}' holds the rules for anonymous clients; it cannot have users or cidrs"
                )));
            }
            let rules = spec
                .allow
                .iter()
                .map(|p| {
                    Rule::parse(p).map_err(|e| AuthError::Config(format!("tenant '{name}': {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let deny = DenyRules::new(&spec.deny)
                .map_err(|e| AuthError::Config(format!("tenant '{name}': {e}")))?;
            for user in spec.users {
                if let Some(other) = out.by_user.get(&user) {
                    return Err(AuthError::Config(format!(
                        "user '{user}' is in tenants '{other}' and '{name}'"
                    )));
                }
                out.by_user.insert(user, name.clone());
            }
            for group in &spec.ldap_groups {
                let key = crate::ldap::normalise_dn(group);
                if let Some(other) = out.by_group.insert(key, name.clone()) {
                    return Err(AuthError::Config(format!(
                        "LDAP group '{group}' is in tenants '{other}' and '{name}'"
                    )));
                }
            }
            for net in spec.cidrs {
                let net = net.trunc();
                if let Some(other) = seen_nets.get(&net) {
                    return Err(AuthError::Config(format!(
                        "network {net} is in tenants '{other}' and '{name}'"
                    )));
                }
                seen_nets.insert(net, name.clone());
                out.cidrs.push((net, name.clone()));
            }
            out.tenants.insert(name, Tenant { rules, deny });
        }
        out.cidrs
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(out)
    }

    /// The tenant `user` belongs to.
    pub fn tenant_of_user(&self, user: &str) -> Option<&Arc<str>> {
        self.by_user.get(user)
    }

    /// The tenant of an LDAP user in `groups` (DNs as the directory gives them): the first group that names
    /// one, in the directory's order.
    pub fn tenant_of_groups(&self, groups: &[String]) -> Option<&Arc<str>> {
        groups
            .iter()
            .find_map(|g| self.by_group.get(&crate::ldap::normalise_dn(g)))
    }

    /// The tenant whose network holds `ip` (longest prefix wins). IPv4-mapped IPv6 addresses match
    /// IPv4 networks.
    pub fn tenant_of_ip(&self, ip: IpAddr) -> Option<&Arc<str>> {
        let ip = ip.to_canonical();
        self.cidrs
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, t)| t)
    }

    /// True when a tenant by that name exists.
    pub fn contains(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// True when any tenant, the anonymous one included, is configured: then rules narrow what
    /// clients may read.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// True when any tenant other than the anonymous one is configured.
    pub fn has_tenants(&self) -> bool {
        self.tenants.keys().any(|n| &**n != ANONYMOUS_TENANT)
    }

    /// True when `tenant`'s rules allow `action` on `repo` at `route_host`. Unknown tenants get nothing.
    pub fn allows(&self, tenant: &str, route_host: &str, repo: &str, action: Action) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| t.rules.iter().any(|r| r.matches(route_host, repo, action)))
    }

    /// The first of `tenant`'s deny rules refusing a request on `repo` at `route_host` with `reference` (the
    /// anonymous client's rules are those of [`ANONYMOUS_TENANT`]).
    pub fn denied(
        &self,
        tenant: &str,
        route_host: &str,
        repo: &str,
        reference: Option<&Reference>,
    ) -> Option<&DenyRule> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.deny.refusing(route_host, repo, reference))
    }

    /// What a user in no tenant may do: pull everywhere while no tenant is configured, else nothing.
    pub fn allows_untenanted_user(&self, action: Action) -> bool {
        action == Action::Pull && !self.has_tenants()
    }

    /// What an anonymous client may do on a route that allows anonymous access: the
    /// [`ANONYMOUS_TENANT`]'s rules if configured, else pull and push (delete only ever comes from a
    /// `delete:` rule). The caller must already have checked that the route allows anonymous access.
    pub fn allows_anonymous(&self, route_host: &str, repo: &str, action: Action) -> bool {
        match self.tenants.get(ANONYMOUS_TENANT) {
            Some(t) => t.rules.iter().any(|r| r.matches(route_host, repo, action)),
            None => action != Action::Delete,
        }
    }
}

/// Glob match where `*` is any run of characters, `/` included. Linear-time two-pointer matching with
/// backtracking to the last star.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, users: &[&str], cidrs: &[&str], allow: &[&str]) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            users: users.iter().map(|s| s.to_string()).collect(),
            cidrs: cidrs.iter().map(|s| s.parse().unwrap()).collect(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: Vec::new(),
            ldap_groups: Vec::new(),
        }
    }

    // Pins the LDAP group mapping: DNs compare normalised, the first mapped group wins, and a group may name
    // only one tenant.
    #[test]
    fn ldap_groups_map_to_tenants() {
        let mut dev = spec("dev", &[], &[], &["docker.example/*"]);
        dev.ldap_groups = vec!["cn=dev,ou=groups,dc=corp".into()];
        let mut ops = spec("ops", &[], &[], &[]);
        ops.ldap_groups = vec!["cn=ops,ou=groups,dc=corp".into()];
        let t = Tenants::new(vec![dev.clone(), ops]).unwrap();
        let of = |g: &[&str]| {
            let g: Vec<String> = g.iter().map(|s| s.to_string()).collect();
            t.tenant_of_groups(&g).map(|t| t.to_string())
        };
        assert_eq!(of(&["CN=Dev, ou=Groups,dc=corp"]).as_deref(), Some("dev"));
        assert_eq!(
            of(&["cn=other,dc=corp", "cn=ops,ou=groups,dc=corp"]).as_deref(),
            Some("ops")
        );
        assert_eq!(of(&["cn=other,dc=corp"]), None);
        assert_eq!(of(&[]), None);
        let mut again = spec("again", &[], &[], &[]);
        again.ldap_groups = vec!["cn=DEV,ou=groups,dc=corp".into()];
        assert!(Tenants::new(vec![dev, again]).is_err());
    }

    // Rule: `*` matches within and across `/`; `team/*` covers nested names but not `team` itself.
    #[test]
    fn glob_semantics() {
        assert!(glob("team/*", "team/a"));
        assert!(glob("team/*", "team/a/b"));
        assert!(!glob("team/*", "team"));
        assert!(!glob("team/*", "teamx/a"));
        assert!(glob("*", "library/alpine"));
        assert!(glob("*/alpine", "library/alpine"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("library/alpine", "library/alpine"));
        assert!(!glob("library/alpine", "library/alpine2"));
    }

    // Rule: pull patterns grant pull only; push: patterns grant push and pull; host `*` is any route.
    #[test]
    fn rules_pull_push_and_hosts() {
        let t = Tenants::new(vec![spec(
            "acme",
            &["alice"],
            &[],
            &[
                "docker.example/*",
                "gcr.example/google-containers/*",
                "push:docker.example/team/*",
                "*/shared/*",
            ],
        )])
        .unwrap();
        assert!(t.allows("acme", "docker.example", "library/alpine", Action::Pull));
        assert!(!t.allows("acme", "docker.example", "library/alpine", Action::Push));
        assert!(t.allows("acme", "docker.example", "team/a/b", Action::Push));
        assert!(t.allows(
            "acme",
            "gcr.example",
            "google-containers/pause",
            Action::Pull
        ));
        assert!(!t.allows("acme", "gcr.example", "other/pause", Action::Pull));
        assert!(t.allows("acme", "quay.example", "shared/x", Action::Pull));
        assert!(!t.allows("nobody", "docker.example", "library/alpine", Action::Pull));

        let p = Tenants::new(vec![spec("p", &[], &[], &["push:reg.example/x/*"])]).unwrap();
        assert!(
            p.allows("p", "reg.example", "x/y", Action::Pull),
            "push implies pull"
        );
    }

    // Pins issue 21 item 8: delete is its own right; push never implies it, delete implies nothing else,
    // and an open route without an anonymous tenant still refuses it.
    #[test]
    fn delete_is_its_own_right() {
        let t = Tenants::new(vec![spec(
            "acme",
            &[],
            &[],
            &["push:reg.example/team/*", "delete:reg.example/team/old/*"],
        )])
        .unwrap();
        assert!(t.allows("acme", "reg.example", "team/app", Action::Push));
        assert!(!t.allows("acme", "reg.example", "team/app", Action::Delete));
        assert!(t.allows("acme", "reg.example", "team/old/x", Action::Delete));
        let only_delete =
            Tenants::new(vec![spec("d", &[], &[], &["delete:reg.example/*"])]).unwrap();
        assert!(!only_delete.allows("d", "reg.example", "x", Action::Pull));
        assert!(!only_delete.allows("d", "reg.example", "x", Action::Push));
        let none = Tenants::new(vec![]).unwrap();
        assert!(!none.allows_anonymous("h", "r", Action::Delete));
        assert!(!none.allows_untenanted_user(Action::Delete));
    }

    // Pins the method → action map: DELETE of stored content is delete, cancelling an upload is push.
    #[test]
    fn action_for_request() {
        use RequestKind as K;
        assert_eq!(Action::for_request(&Method::GET, K::Manifest), Action::Pull);
        assert_eq!(Action::for_request(&Method::HEAD, K::Blob), Action::Pull);
        assert_eq!(Action::for_request(&Method::PUT, K::Manifest), Action::Push);
        assert_eq!(Action::for_request(&Method::POST, K::Upload), Action::Push);
        assert_eq!(Action::for_request(&Method::PATCH, K::Upload), Action::Push);
        assert_eq!(
            Action::for_request(&Method::DELETE, K::Manifest),
            Action::Delete
        );
        assert_eq!(
            Action::for_request(&Method::DELETE, K::Blob),
            Action::Delete
        );
        assert_eq!(
            Action::for_request(&Method::DELETE, K::Upload),
            Action::Push
        );
    }

    // Rule: users and CIDRs map to tenants; the longest prefix wins; IPv4-mapped addresses match.
    #[test]
    fn lookups() {
        let t = Tenants::new(vec![
            spec("wide", &["bob"], &["10.0.0.0/8"], &[]),
            spec("narrow", &["carol"], &["10.1.0.0/16"], &[]),
        ])
        .unwrap();
        assert_eq!(t.tenant_of_user("bob").map(|s| &**s), Some("wide"));
        assert_eq!(t.tenant_of_user("zed"), None);
        assert_eq!(
            t.tenant_of_ip("10.1.2.3".parse().unwrap()).map(|s| &**s),
            Some("narrow")
        );
        assert_eq!(
            t.tenant_of_ip("10.2.2.3".parse().unwrap()).map(|s| &**s),
            Some("wide")
        );
        assert_eq!(
            t.tenant_of_ip("::ffff:10.1.0.1".parse().unwrap())
                .map(|s| &**s),
            Some("narrow")
        );
        assert_eq!(t.tenant_of_ip("127.0.0.1".parse().unwrap()), None);
    }

    // Rule: inconsistent specs are refused with a message naming the conflict.
    #[test]
    fn rejects_inconsistent_specs() {
        let cases = vec![
            vec![spec("a", &[], &[], &[]), spec("a", &[], &[], &[])],
            vec![spec("a", &["u"], &[], &[]), spec("b", &["u"], &[], &[])],
            vec![
                spec("a", &[], &["10.0.0.0/8"], &[]),
                spec("b", &[], &["10.0.0.0/8"], &[]),
            ],
            vec![spec("a", &[], &[], &["docker.example"])],
            vec![spec("a", &[], &[], &["pul:docker.example/*"])],
            vec![spec("a", &[], &[], &["delete:/x"])],
            vec![spec(ANONYMOUS_TENANT, &["u"], &[], &[])],
        ];
        for specs in cases {
            assert!(matches!(Tenants::new(specs), Err(AuthError::Config(_))));
        }
    }

    // Rule: anonymous clients get everything unless an "anonymous" tenant narrows it; untenanted users
    // pull only while no tenant exists.
    #[test]
    fn anonymous_and_untenanted() {
        let none = Tenants::new(vec![]).unwrap();
        assert!(none.allows_anonymous("h", "r", Action::Push));
        assert!(none.allows_untenanted_user(Action::Pull));
        assert!(!none.allows_untenanted_user(Action::Push));
        let t = Tenants::new(vec![spec(
            ANONYMOUS_TENANT,
            &[],
            &[],
            &["pub.example/library/*"],
        )])
        .unwrap();
        assert!(t.allows_anonymous("pub.example", "library/alpine", Action::Pull));
        assert!(!t.allows_anonymous("pub.example", "other/x", Action::Pull));
        assert!(
            t.allows_untenanted_user(Action::Pull),
            "the anonymous tenant alone is not a tenant set-up"
        );
        let t = Tenants::new(vec![spec("acme", &["a"], &[], &[])]).unwrap();
        assert!(!t.allows_untenanted_user(Action::Pull));
    }
}
