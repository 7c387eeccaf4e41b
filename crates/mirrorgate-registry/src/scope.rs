//! Token scopes (`repository:library/alpine:pull,push`, `registry:catalog:*`): what a token asks for and what
//! a request needs.

use std::fmt;
use std::str::FromStr;

use http::Method;

use crate::error::Error;
use crate::path::RegistryPath;

/// One action of a scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    /// `delete`: distribution asks for it on `DELETE`; kept so scopes from upstreams round-trip.
    Delete,
    /// `*`: every action (used with `registry:catalog:*`).
    All,
    /// Any other action word, kept verbatim so an unknown scope is re-sent unchanged rather than widened.
    Other(String),
}

impl Action {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
            Action::Other(other) => other,
        }
    }

    fn parse(word: &str) -> Action {
        match word {
            "pull" => Action::Pull,
            "push" => Action::Push,
            "delete" => Action::Delete,
            "*" => Action::All,
            other => Action::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `resource_type:name:actions`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `repository`, `registry`, … (may carry a class, `repository(plugin)`; kept as text).
    pub resource_type: String,
    /// The resource name: a repository name, possibly with `host:port/` in front, or `catalog`.
    pub name: String,
    /// Actions in the order given; may be empty (a token for nothing is valid).
    pub actions: Vec<Action>,
}

impl Scope {
    /// Parses one scope. The type ends at the first `:`, the actions start after the *last* `:` (a name may
    /// hold a `host:port`); actions are comma-separated, empty words skipped.
    pub fn parse(scope: &str) -> Result<Scope, Error> {
        if scope.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(Error::Scope {
                reason: "whitespace or control character",
            });
        }
        let (resource_type, rest) = scope.split_once(':').ok_or(Error::Scope {
            reason: "missing ':'",
        })?;
        let (name, actions) = rest.rsplit_once(':').ok_or(Error::Scope {
            reason: "missing actions",
        })?;
        if resource_type.is_empty() {
            return Err(Error::Scope {
                reason: "empty resource type",
            });
        }
        if name.is_empty() {
            return Err(Error::Scope {
                reason: "empty resource name",
            });
        }
        let actions = actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(Action::parse)
            .collect();
        Ok(Scope {
            resource_type: resource_type.to_owned(),
            name: name.to_owned(),
            actions,
        })
    }

    /// `repository:<name>:<actions>`.
    pub fn repository(name: impl Into<String>, actions: Vec<Action>) -> Scope {
        Scope {
            resource_type: "repository".into(),
            name: name.into(),
            actions,
        }
    }

    /// `registry:catalog:*`, the scope for `/v2/_catalog`.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: "registry".into(),
            name: "catalog".into(),
            actions: vec![Action::All],
        }
    }

    /// What a request on repository `name` needs: `GET`/`HEAD` pull; every other method (`POST`, `PUT`,
    /// `PATCH`, `DELETE`, and unknown ones, which get the stronger grant) `pull,push`.
    ///
    /// Distribution itself asks for `delete` on `DELETE`; the gateway's access rules know pull and push only,
    /// so `DELETE` is push here.
    pub fn for_request(name: &str, method: &Method) -> Scope {
        let actions = if method == Method::GET || method == Method::HEAD {
            vec![Action::Pull]
        } else {
            vec![Action::Pull, Action::Push]
        };
        Scope::repository(name, actions)
    }

    /// The scope a parsed request needs: repository scopes per [`Scope::for_request`], the catalog scope for
    /// `/v2/_catalog`, nothing for the ping.
    pub fn for_path(path: &RegistryPath, method: &Method) -> Option<Scope> {
        match path {
            RegistryPath::Ping => None,
            RegistryPath::Catalog => Some(Scope::catalog()),
            other => other
                .name()
                .map(|name| Scope::for_request(name.as_str(), method)),
        }
    }

    /// True if the scope lists `action` (or `*`).
    pub fn allows(&self, action: &Action) -> bool {
        self.actions
            .iter()
            .any(|a| a == action || *a == Action::All)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.resource_type, self.name)?;
        for (i, action) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(action.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Scope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: type, name and actions are split as the Docker token spec says.
    #[test]
    fn parses_repository_scope() {
        let s = Scope::parse("repository:library/alpine:pull,push").unwrap();
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.name, "library/alpine");
        assert_eq!(s.actions, [Action::Pull, Action::Push]);
    }

    // Rule: actions are split at the LAST ':' so a host:port in the name survives.
    #[test]
    fn host_port_in_name() {
        let s = Scope::parse("repository:localhost:5000/foo/bar:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/foo/bar");
        assert_eq!(s.actions, [Action::Pull]);
    }

    // Rule: the catalog scope parses to `*` and displays back unchanged.
    #[test]
    fn catalog_scope() {
        let s = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(s, Scope::catalog());
        assert!(s.allows(&Action::Pull));
        assert_eq!(s.to_string(), "registry:catalog:*");
    }

    // Rule: Display is the inverse of parse, unknown actions included.
    #[test]
    fn display_round_trips() {
        for text in [
            "repository:library/alpine:pull",
            "repository:a/b:pull,push",
            "repository:localhost:5000/x:delete",
            "repository(plugin):p:pull",
            "repository:a:pull,mystery",
            "repository:a:",
        ] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            "repository:a:pull,,push"
                .parse::<Scope>()
                .unwrap()
                .actions
                .len(),
            2
        );
    }

    // Rule: malformed scopes are errors.
    #[test]
    fn malformed_scopes() {
        for bad in [
            "",
            "repository",
            "repository:alpine",
            ":a:pull",
            "repository::pull",
            "a:b c:pull",
            "a:b:\npull",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
    }

    // Rule: GET/HEAD need pull; writes (and unknown methods) need pull and push.
    #[test]
    fn scope_for_request() {
        for m in [Method::GET, Method::HEAD] {
            assert_eq!(
                Scope::for_request("a/b", &m).to_string(),
                "repository:a/b:pull"
            );
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            let s = Scope::for_request("a/b", &m);
            assert!(s.allows(&Action::Push) && s.allows(&Action::Pull), "{m}");
            assert_eq!(s.to_string(), "repository:a/b:pull,push");
        }
    }

    // Rule: paths map to their scope: repository ones by name, catalog to registry:catalog:*, ping to none.
    #[test]
    fn scope_for_path() {
        let p = RegistryPath::parse("/v2/library/alpine/manifests/latest").unwrap();
        assert_eq!(
            Scope::for_path(&p, &Method::GET).unwrap().to_string(),
            "repository:library/alpine:pull"
        );
        assert_eq!(
            Scope::for_path(&RegistryPath::Catalog, &Method::GET),
            Some(Scope::catalog())
        );
        assert_eq!(Scope::for_path(&RegistryPath::Ping, &Method::GET), None);
    }
}
