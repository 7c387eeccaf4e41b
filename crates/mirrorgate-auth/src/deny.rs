//! Deny rules: patterns that refuse a repository, a tag or a digest even where an `allow` rule matches.
//!
//! # Grammar
//! `<route host>/<repository glob>[:<tag glob>|@<digest glob>]`, with the glob of `allow` patterns (`*` is any
//! run of characters, `/` included). Repository names hold neither `:` nor `@`, so the split is unambiguous:
//! an `@` starts a digest pattern, a `:` in the last path segment starts a tag pattern.
//!
//! # What a rule covers
//! - a rule **without a reference** (`docker.example/evil/*`) refuses every request on the repositories it
//!   matches: manifests, blobs, tag lists, uploads, deletes;
//! - a **tag** rule (`docker.example/*:latest`) refuses manifest requests by a matching tag (pull, push, delete);
//! - a **digest** rule (`docker.example/app@sha256:0123…`) refuses manifest requests by a matching digest.
//!
//! Blobs are addressed by their own digest, not by the tag or manifest that lists them, so tag and digest rules
//! do not follow a manifest to its blobs: a client that already knows a blob digest can still fetch that blob.
//! A tag pull that happens to resolve to a denied digest is not refused either; deny the tag too, or the whole
//! repository with a rule without reference.

use std::fmt;

use mirrorgate_registry::Reference;

use crate::tenants::glob;

/// What a rule says about the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefPattern {
    /// No reference part: the whole repository.
    Any,
    Tag(String),
    Digest(String),
}

/// One parsed deny pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyRule {
    /// As written, for the refusal message.
    pattern: String,
    host: String,
    repo: String,
    reference: RefPattern,
}

impl DenyRule {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<DenyRule, String> {
        let hint =
            "write `route-host/repository-pattern`, optionally followed by `:tag-pattern` or \
                    `@digest-pattern` (e.g. \"docker.example/*:latest\")";
        let Some((host, rest)) = pattern.split_once('/') else {
            return Err(format!("deny pattern '{pattern}': {hint}"));
        };
        if host.contains(':') {
            return Err(format!(
                "deny pattern '{pattern}': a deny rule refuses every action, it takes no `push:`/`delete:` prefix \
                 (and route hosts carry no port)"
            ));
        }
        let (repo, reference) = if let Some((repo, digest)) = rest.split_once('@') {
            (repo, RefPattern::Digest(digest.to_owned()))
        } else {
            let last = rest.rsplit('/').next().unwrap_or(rest);
            match last.split_once(':') {
                Some((_, tag)) => (
                    &rest[..rest.len() - tag.len() - 1],
                    RefPattern::Tag(tag.to_owned()),
                ),
                None => (rest, RefPattern::Any),
            }
        };
        let bad_ref = match &reference {
            RefPattern::Any => false,
            RefPattern::Tag(t) | RefPattern::Digest(t) => t.is_empty() || t.contains(['@', '/']),
        };
        if host.is_empty() || repo.is_empty() || bad_ref || repo.contains(['@', ':']) {
            return Err(format!("deny pattern '{pattern}': {hint}"));
        }
        Ok(DenyRule {
            pattern: pattern.to_owned(),
            host: host.to_owned(),
            repo: repo.to_owned(),
            reference,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the rule refuses a request on `repo` at `route_host` with `reference` (the manifest reference
    /// of a manifest request, `None` for every other kind).
    pub fn matches(&self, route_host: &str, repo: &str, reference: Option<&Reference>) -> bool {
        if !glob(&self.host, route_host) || !glob(&self.repo, repo) {
            return false;
        }
        match (&self.reference, reference) {
            (RefPattern::Any, _) => true,
            (RefPattern::Tag(p), Some(Reference::Tag(t))) => glob(p, t.as_str()),
            (RefPattern::Digest(p), Some(Reference::Digest(d))) => glob(p, d.as_str()),
            _ => false,
        }
    }
}

impl fmt::Display for DenyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// A list of deny rules (a tenant's or a route's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyRules(Vec<DenyRule>);

impl DenyRules {
    /// Parses every pattern; the first bad one is the error.
    pub fn new(patterns: &[String]) -> Result<DenyRules, String> {
        patterns
            .iter()
            .map(|p| DenyRule::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map(DenyRules)
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first rule that refuses the request, if any.
    pub fn refusing(
        &self,
        route_host: &str,
        repo: &str,
        reference: Option<&Reference>,
    ) -> Option<&DenyRule> {
        self.0
            .iter()
            .find(|r| r.matches(route_host, repo, reference))
    }
}

/// `host/repo`, `host/repo:tag` or `host/repo@digest`: what a refusal message names.
pub fn target(route_host: &str, repo: &str, reference: Option<&Reference>) -> String {
    match reference {
        None => format!("{route_host}/{repo}"),
        Some(Reference::Tag(t)) => format!("{route_host}/{repo}:{t}"),
        Some(Reference::Digest(d)) => format!("{route_host}/{repo}@{d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    // Pins the deny grammar: `@` starts a digest pattern, a `:` in the last segment a tag pattern, nothing a
    // repository-wide rule; prefixes, ports and empty parts are refused.
    #[test]
    fn grammar() {
        let tag = DenyRule::parse("docker.example/team/*:v1*").unwrap();
        assert_eq!(tag.repo, "team/*");
        assert_eq!(tag.reference, RefPattern::Tag("v1*".into()));
        let digest = DenyRule::parse("docker.example/app@sha256:*").unwrap();
        assert_eq!(digest.repo, "app");
        assert_eq!(digest.reference, RefPattern::Digest("sha256:*".into()));
        let any = DenyRule::parse("*/evil/*").unwrap();
        assert_eq!(any.reference, RefPattern::Any);
        for bad in [
            "docker.example",
            "push:docker.example/*",
            "docker.example:443/x",
            "/x",
            "docker.example/",
            "docker.example/x:",
            "docker.example/x@",
            "docker.example/a:b/c",
            "docker.example/a@b@c",
        ] {
            assert!(DenyRule::parse(bad).is_err(), "{bad}");
        }
    }

    // Pins what each kind of rule covers: tag rules only tags, digest rules only digests, repository rules every
    // request on the repository (blobs and tag lists included, reference `None`).
    #[test]
    fn coverage() {
        let rules = DenyRules::new(&[
            "docker.example/*:latest".into(),
            format!("docker.example/app@{DIGEST}"),
            "*/evil/*".into(),
        ])
        .unwrap();
        let hit = |host, repo, reference: Option<&Reference>| {
            rules
                .refusing(host, repo, reference)
                .map(|rule| rule.as_str().to_owned())
        };
        assert_eq!(
            hit("docker.example", "library/alpine", Some(&r("latest"))).as_deref(),
            Some("docker.example/*:latest")
        );
        assert_eq!(
            hit("docker.example", "library/alpine", Some(&r("3.19"))),
            None
        );
        assert_eq!(
            hit("other.example", "library/alpine", Some(&r("latest"))),
            None
        );
        assert_eq!(hit("docker.example", "library/alpine", None), None);
        assert!(hit("docker.example", "app", Some(&r(DIGEST))).is_some());
        assert_eq!(hit("docker.example", "app", Some(&r("v1"))), None);
        assert_eq!(
            hit("docker.example", "app", None),
            None,
            "blobs are not followed"
        );
        assert!(hit("quay.example", "evil/x", None).is_some());
        assert!(hit("quay.example", "evil/x", Some(&r("v1"))).is_some());
        assert_eq!(hit("quay.example", "evil", None), None);
    }

    // Pins the refusal message's target naming.
    #[test]
    fn target_names() {
        assert_eq!(target("h", "a/b", None), "h/a/b");
        assert_eq!(target("h", "a", Some(&r("v1"))), "h/a:v1");
        assert_eq!(target("h", "a", Some(&r(DIGEST))), format!("h/a@{DIGEST}"));
    }
}
