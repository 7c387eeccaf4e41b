//! What the request path carries from phase to phase: facts about the connection ([`ConnInfo`]), what the log
//! and metrics learn as phases run ([`RequestFacts`]), the request's fixed context once it is routed
//! ([`RequestCtx`]) and what routing decided ([`Plan`]). These types live apart from the phases so every phase
//! module imports them from here and none imports another phase.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Method;
use mirrorgate_auth::Action;
use mirrorgate_registry::{RegistryPath, RequestKind};

use crate::router::CompiledRoute;
use crate::runtime::{Gateway, Runtime};
use crate::upstream::Endpoint;

/// Per-connection facts the request path needs.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The TLS server name the client asked for, if it sent one.
    pub sni: Option<String>,
}

/// What the request path learned, for the access log and metrics (filled as phases run).
#[derive(Debug, Default)]
pub struct RequestFacts {
    pub route: Option<String>,
    pub kind: Option<RequestKind>,
    pub endpoint: Option<String>,
    pub tenant: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    /// The validated repository name as the client wrote it ([`Plan::client_repository`]): the usage
    /// ledger's repository key. `None` for requests that name none (`/v2/`, `/token`, the catalog).
    pub repository: Option<String>,
    /// The client's address after `trusted_proxies` (the audit trail's `client`).
    pub client: Option<IpAddr>,
    /// The tag or digest a manifest request asked for.
    pub reference: Option<String>,
    /// The message of a refusal the gateway decided itself (for the audit trail).
    pub refusal: Option<String>,
    /// The response body counts towards the tenant's daily quota as it streams (it passed admission with a
    /// quota). When false its bytes are added to the quota when it ends, so quota and ledger see the same.
    pub quota_counted: bool,
}

/// The fixed context of a routed request: the state it is served from and who asks for what. Built once by
/// the route phase; every later phase reads it instead of taking its parts as arguments.
pub struct RequestCtx<'a> {
    pub gw: &'a Gateway,
    pub rt: &'a Runtime,
    pub route: &'a CompiledRoute,
    /// The authority the client addressed (`docker.test:8443`): where our token realm and rewritten
    /// `Location`s point.
    pub authority: String,
    /// The client's address after `trusted_proxies`.
    pub client_ip: IpAddr,
    pub method: Method,
    /// What the method asks of the repository, decided once for authorization and for our challenges.
    pub action: Action,
}

/// Everything the route phase decided about one request before it goes upstream.
pub struct Plan {
    /// The parsed request, with the repository name as the upstream knows it.
    pub path: RegistryPath,
    /// The name as the client wrote it and as the upstream knows it.
    pub client_name: Option<String>,
    pub upstream_name: Option<String>,
    /// Endpoints to try, in order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The registry key of a path-prefix or `?ns=` request (`gcr.io`): path-prefix routes re-insert it after
    /// `/v2/` in rewritten URLs, and tenant rules and our tokens name repositories with it in front.
    pub upstream_key: Option<UpstreamKey>,
    /// The query string to forward (`ns`, and `mount`/`from` of an upload start, removed).
    pub query: Option<String>,
    /// A cross-repository blob mount the upload start asked for; forwarded only if the caller may read its
    /// source (set to `None` by the serve loop otherwise).
    pub mount: Option<Mount>,
}

/// `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repository>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub digest: mirrorgate_registry::Digest,
    /// The source as access rules name it (with the registry key in front on path-prefix / `?ns=` requests).
    pub from_client: String,
    /// The source as the upstream knows it (`library/` rule and rewrites applied, path prefix removed).
    pub from_upstream: String,
}

/// How the client named a registry other than the route's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamKey {
    /// `/v2/gcr.io/foo/...`: the key is part of the path the client sees.
    PathPrefix(String),
    /// `/v2/foo/...?ns=gcr.io`: the key travels in the query; the client's paths carry no prefix.
    Ns(String),
}

impl Plan {
    /// The repository as access rules and our tokens speak of it: with the registry key in front whenever the
    /// request names another registry (`gcr.io/foo/bar`), however it named it — a path prefix and `?ns=` are
    /// two spellings of the same request and must be authorized alike.
    pub fn client_repository(&self) -> Option<String> {
        self.client_name
            .as_ref()
            .map(|n| match self.upstream_key.as_ref() {
                Some(UpstreamKey::PathPrefix(k) | UpstreamKey::Ns(k)) => format!("{k}/{n}"),
                None => n.clone(),
            })
    }

    /// The path prefix to re-insert into URLs mapped back to the client.
    pub fn path_prefix(&self) -> Option<&str> {
        match &self.upstream_key {
            Some(UpstreamKey::PathPrefix(k)) => Some(k),
            _ => None,
        }
    }

    /// The path and query sent to every endpoint.
    pub fn upstream_path_and_query(&self) -> String {
        let mut p = self.path.to_path();
        let mut pairs: Vec<String> = self.query.iter().cloned().collect();
        if let Some(m) = &self.mount {
            let mount: String = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("mount", m.digest.as_str())
                .append_pair("from", &m.from_upstream)
                .finish();
            pairs.push(mount);
        }
        if !pairs.is_empty() {
            p.push('?');
            p.push_str(&pairs.join("&"));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(key: Option<UpstreamKey>) -> Plan {
        Plan {
            path: RegistryPath::Ping,
            client_name: Some("library/foo".into()),
            upstream_name: Some("library/foo".into()),
            endpoints: Vec::new(),
            upstream_key: key,
            query: None,
            mount: None,
        }
    }

    // Pins issue-free naming of the two spellings: `?ns=quay.test` and `/v2/quay.test/...` are authorized as
    // the same repository, and only the path prefix appears in client-visible URLs.
    #[test]
    fn ns_and_path_prefix_name_the_same_repository() {
        let by_prefix = plan(Some(UpstreamKey::PathPrefix("quay.test".into())));
        let by_ns = plan(Some(UpstreamKey::Ns("quay.test".into())));
        assert_eq!(
            by_prefix.client_repository().as_deref(),
            Some("quay.test/library/foo")
        );
        assert_eq!(by_ns.client_repository(), by_prefix.client_repository());
        assert_eq!(by_prefix.path_prefix(), Some("quay.test"));
        assert_eq!(by_ns.path_prefix(), None);
        assert_eq!(
            plan(None).client_repository().as_deref(),
            Some("library/foo")
        );
    }
}
