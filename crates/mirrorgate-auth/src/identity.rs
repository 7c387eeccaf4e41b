//! Who a request is, for authorization, logs, metrics and rate limits.

use std::fmt;
use std::sync::Arc;

use crate::api_tokens::TokenScope;

/// How the client was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// No credentials, on a route that allows anonymous access.
    Anonymous,
    /// htpasswd user and password.
    Basic,
    /// A token from our own token endpoint.
    Bearer,
    /// No credentials, but the source address is in a tenant's CIDR.
    Network,
    /// An API token as the Basic password.
    ApiToken,
}

impl AuthMethod {
    /// A stable lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Basic => "basic",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Network => "network",
            AuthMethod::ApiToken => "api_token",
        }
    }
}

/// The identified client. Cheap to clone (shared strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The tenant, when the user or network belongs to one.
    pub tenant: Option<Arc<str>>,
    /// The htpasswd user, when one authenticated (directly or through a token).
    pub user: Option<Arc<str>>,
    /// How the client was identified.
    pub method: AuthMethod,
    /// For an API token (directly or through a JWT issued to one): its own scope, which narrows the
    /// tenant's rules. `None` for everyone else.
    pub scope: Option<Arc<TokenScope>>,
}

impl Identity {
    /// An anonymous client.
    pub fn anonymous() -> Self {
        Identity {
            tenant: None,
            user: None,
            method: AuthMethod::Anonymous,
            scope: None,
        }
    }

    /// True for clients without a user: anonymous, network, or an anonymous token.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none() && self.tenant.is_none()
    }
}

impl fmt::Display for Identity {
    /// `tenant/user`, `tenant`, `user`, or `anonymous`: what access logs show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.tenant, &self.user) {
            (Some(t), Some(u)) => write!(f, "{t}/{u}"),
            (Some(t), None) => f.write_str(t),
            (None, Some(u)) => f.write_str(u),
            (None, None) => f.write_str("anonymous"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the log form names tenant and user, or says anonymous.
    #[test]
    fn display_forms() {
        let full = Identity {
            tenant: Some("acme".into()),
            user: Some("alice".into()),
            method: AuthMethod::Basic,
            scope: None,
        };
        assert_eq!(full.to_string(), "acme/alice");
        let net = Identity {
            tenant: Some("acme".into()),
            user: None,
            method: AuthMethod::Network,
            scope: None,
        };
        assert_eq!(net.to_string(), "acme");
        assert_eq!(Identity::anonymous().to_string(), "anonymous");
        assert!(Identity::anonymous().is_anonymous() && !net.is_anonymous());
    }
}
