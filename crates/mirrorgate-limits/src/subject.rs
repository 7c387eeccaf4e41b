//! Who is asking, as far as limits care: the subject of one admission decision.

use std::net::IpAddr;
use std::sync::Arc;

/// Who is asking, as far as limits care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The authenticated user, if any.
    pub user: Option<Arc<str>>,
    /// The tenant the request is accounted to, if any (for logs; limits follow `class`).
    pub tenant: Option<Arc<str>>,
    /// The client's address (after trusted-proxy resolution).
    pub ip: IpAddr,
    /// Which limits apply.
    pub class: SubjectClass,
}

/// Which set of limits applies to a [`Subject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectClass {
    /// The named tenant's limits; per-user limits key on `user`, or on `ip` without a user
    /// (tenants recognised by source CIDR).
    Tenant(Arc<str>),
    /// The `[limits]` defaults, per source IP.
    Anonymous,
}

impl Subject {
    /// A request of `tenant`, by `user` when credentials were given.
    pub fn tenant(tenant: impl Into<Arc<str>>, user: Option<&str>, ip: IpAddr) -> Self {
        let tenant = tenant.into();
        Self {
            user: user.map(Arc::from),
            tenant: Some(tenant.clone()),
            ip,
            class: SubjectClass::Tenant(tenant),
        }
    }

    /// An anonymous request from `ip`.
    pub fn anonymous(ip: IpAddr) -> Self {
        Self {
            user: None,
            tenant: None,
            ip,
            class: SubjectClass::Anonymous,
        }
    }
}

/// The per-user key inside a tenant: a user name, or the source IP for credential-less clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum UserKey {
    Name(Arc<str>),
    Ip(IpAddr),
}

impl UserKey {
    pub(crate) fn of(subject: &Subject) -> Self {
        match &subject.user {
            Some(user) => Self::Name(user.clone()),
            None => Self::Ip(subject.ip),
        }
    }

    pub(crate) fn redis_part(&self) -> String {
        match self {
            Self::Name(name) => format!("u:{name}"),
            Self::Ip(ip) => format!("ip:{ip}"),
        }
    }
}
