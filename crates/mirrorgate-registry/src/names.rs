//! Repository name transforms applied before a request goes upstream: Docker Hub's `library/` rule and
//! k3s-style regex rewrites. Every result is re-validated, so a rewrite can never produce a path that the
//! name grammar would have refused from a client.

use std::borrow::Cow;

use regex::Regex;

use crate::error::{ErrorCode, RegistryError};
use crate::reference::RepositoryName;

/// Docker Hub keeps official images under `library/`: a single-component name `alpine` means
/// `library/alpine`, in the path and in the token scope alike. Multi-component names are left alone.
///
/// Fails with `NAME_INVALID` only if the prefixed name would exceed the length limit.
pub fn docker_hub_library(name: &RepositoryName) -> Result<Cow<'_, RepositoryName>, RegistryError> {
    if name.as_str().contains('/') {
        return Ok(Cow::Borrowed(name));
    }
    RepositoryName::parse(&format!("library/{name}")).map(Cow::Owned)
}

/// An ordered list of `(regex, replacement)` rules with the semantics of k3s `registries.yaml` `rewrite`:
/// the regex is matched against the repository name (without host and tag), and the first rule whose regex
/// matches rewrites the name by replacing the match (every match, like Go's `ReplaceAllString`) with the
/// replacement, where `$1`, `${1}` and `${name}` refer to capture groups.
///
/// Anchor patterns (`^rancher/(.*)$`) to rewrite whole names; an unanchored pattern replaces only the part
/// it matches.
#[derive(Debug, Clone, Default)]
pub struct Rewrites {
    rules: Vec<(Regex, String)>,
}

impl Rewrites {
    /// Rules in priority order (first match wins).
    pub fn new(rules: Vec<(Regex, String)>) -> Self {
        Self { rules }
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rewrites `name` with the first matching rule; borrows when no rule matches.
    ///
    /// Fails with `NAME_INVALID` when the result is not a valid repository name (the detail carries the
    /// rewritten text, so an operator can see which rule produced it).
    pub fn apply<'a>(
        &self,
        name: &'a RepositoryName,
    ) -> Result<Cow<'a, RepositoryName>, RegistryError> {
        let Some((regex, replacement)) = self
            .rules
            .iter()
            .find(|(regex, _)| regex.is_match(name.as_str()))
        else {
            return Ok(Cow::Borrowed(name));
        };
        let rewritten = regex.replace_all(name.as_str(), replacement.as_str());
        RepositoryName::parse(&rewritten).map(Cow::Owned).map_err(|err| {
            RegistryError::new(ErrorCode::NameInvalid, "repository name rewrite produced an invalid name").with_detail(
                serde_json::json!({ "name": name.as_str(), "rewritten": err.detail().map_or(serde_json::Value::Null, |d| d["name"].clone()) }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepositoryName {
        RepositoryName::parse(s).unwrap()
    }

    fn rules(list: &[(&str, &str)]) -> Rewrites {
        Rewrites::new(
            list.iter()
                .map(|(re, to)| (Regex::new(re).unwrap(), (*to).to_owned()))
                .collect(),
        )
    }

    // Rule: single-component names get `library/`, others are untouched (and borrowed).
    #[test]
    fn library_prefix() {
        assert_eq!(
            docker_hub_library(&name("alpine")).unwrap().as_str(),
            "library/alpine"
        );
        let multi = name("bitnami/redis");
        assert!(matches!(
            docker_hub_library(&multi).unwrap(),
            Cow::Borrowed(_)
        ));
        let long = name(&"a".repeat(250));
        assert_eq!(
            docker_hub_library(&long).unwrap_err().code(),
            ErrorCode::NameInvalid
        );
    }

    // Rule: the k3s documentation example rewrites with `$1`.
    #[test]
    fn k3s_example() {
        let r = rules(&[("^rancher/(.*)", "mirrorproject/rancher-images/$1")]);
        let n = name("rancher/coredns-coredns");
        assert_eq!(
            r.apply(&n).unwrap().as_str(),
            "mirrorproject/rancher-images/coredns-coredns"
        );
        let other = name("library/alpine");
        assert!(matches!(r.apply(&other).unwrap(), Cow::Borrowed(_)));
    }

    // Rule: the first matching rule wins, later ones are not applied on top.
    #[test]
    fn first_match_wins() {
        let r = rules(&[("^(.*)$", "library/$1"), ("^library/(.*)$", "never/$1")]);
        assert_eq!(r.apply(&name("hello")).unwrap().as_str(), "library/hello");
        let r = rules(&[("^nomatch$", "x"), ("^a/(.*)$", "b/${1}")]);
        assert_eq!(r.apply(&name("a/c")).unwrap().as_str(), "b/c");
    }

    // Rule: only the matched part is replaced when the pattern is not anchored.
    #[test]
    fn partial_match_replaces_match_only() {
        let r = rules(&[("old", "new")]);
        assert_eq!(
            r.apply(&name("team/old-app")).unwrap().as_str(),
            "team/new-app"
        );
    }

    // Rule: a rewrite producing an invalid name is NAME_INVALID, with the result in the detail.
    #[test]
    fn invalid_result_rejected() {
        let r = rules(&[("^(.*)$", "UPPER/$1")]);
        let err = r.apply(&name("x")).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NameInvalid);
        assert_eq!(err.detail().unwrap()["rewritten"], "UPPER/x");
        let r = rules(&[("^(.*)$", "a/../$1")]);
        assert_eq!(
            r.apply(&name("x")).unwrap_err().code(),
            ErrorCode::NameInvalid
        );
    }
}
