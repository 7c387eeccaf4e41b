//! Host → route, the first routing decision. Exact hosts are a hash lookup; wildcards (`*.docker.example`) are
//! few and checked in order after that. Path-prefix and `?ns=` decisions happen later, in `forward`, because
//! they need the parsed path.

use std::collections::HashMap;
use std::sync::Arc;

use mirrorgate_auth::DenyRules;
use mirrorgate_config::{HostPattern, Route};
use mirrorgate_registry::Rewrites;

use crate::error::ProxyError;
use crate::upstream::{Endpoint, UpstreamClient};

/// One configured route, compiled for serving.
pub struct CompiledRoute {
    pub config: Route,
    /// The route's host pattern as written, the `route` label in logs and metrics.
    pub label: String,
    pub client: UpstreamClient,
    /// `endpoints` in order, then `upstream` last.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Upstreams a path-prefix or `?ns=` request may name.
    pub named_upstreams: HashMap<String, Arc<Endpoint>>,
    pub rewrites: Rewrites,
    /// The route's own deny rules, for every client (tenants add theirs).
    pub deny: DenyRules,
}

impl CompiledRoute {
    pub fn new(config: Route, client: UpstreamClient) -> Self {
        let mut endpoints: Vec<Arc<Endpoint>> = config
            .endpoints
            .iter()
            .map(|u| Arc::new(Endpoint::new(u.clone(), Vec::new())))
            .collect();
        if let Some(up) = &config.upstream {
            endpoints.push(Arc::new(Endpoint::new(
                up.url.clone(),
                up.credentials.clone(),
            )));
        }
        let named_upstreams = config
            .upstreams
            .iter()
            .map(|(name, up)| {
                let ep = Endpoint::new(up.url.clone(), up.credentials.clone());
                (name.clone(), Arc::new(ep))
            })
            .collect();
        let rewrites = Rewrites::new(config.rewrite.clone());
        CompiledRoute {
            label: config.host.to_string(),
            config,
            client,
            endpoints,
            named_upstreams,
            rewrites,
            deny: DenyRules::default(),
        }
    }

    /// With the route's `deny` list parsed (refused before serving when a pattern is bad).
    pub fn with_deny(mut self) -> Result<Self, ProxyError> {
        self.deny = DenyRules::new(&self.config.deny).map_err(|reason| ProxyError::RouteDeny {
            route: self.label.clone(),
            reason,
        })?;
        Ok(self)
    }
}

/// All routes of one config.
#[derive(Default)]
pub struct Router {
    exact: HashMap<String, Arc<CompiledRoute>>,
    wildcards: Vec<Arc<CompiledRoute>>,
}

impl Router {
    pub fn new(routes: Vec<CompiledRoute>) -> Self {
        let mut router = Router::default();
        for r in routes {
            let r = Arc::new(r);
            match &r.config.host {
                HostPattern::Exact(h) => {
                    router.exact.insert(h.clone(), r.clone());
                }
                HostPattern::Wildcard(_) => router.wildcards.push(r.clone()),
            }
        }
        router
    }

    /// The route serving `host` (lower-case, no port).
    pub fn lookup(&self, host: &str) -> Result<&Arc<CompiledRoute>, ProxyError> {
        self.exact
            .get(host)
            .or_else(|| self.wildcards.iter().find(|r| r.config.host.matches(host)))
            .ok_or_else(|| ProxyError::NoRoute {
                host: host.to_string(),
            })
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<CompiledRoute>> {
        self.exact.values().chain(self.wildcards.iter())
    }
}

/// The host name of an authority (`Host` header or `:authority`), lower-cased, without port or trailing dot.
pub fn host_of(authority: &str) -> Option<String> {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        // IPv6 literal.
        rest.split_once(']').map(|(h, _)| h)?
    } else {
        a.rsplit_once(':').map_or(a, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        })
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins host normalisation: ports and case never change which route serves a request.
    #[test]
    fn host_of_strips_port_and_case() {
        assert_eq!(host_of("Docker.Test:8443").as_deref(), Some("docker.test"));
        assert_eq!(host_of("docker.test.").as_deref(), Some("docker.test"));
        assert_eq!(host_of("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(host_of("").as_deref(), None);
    }
}
