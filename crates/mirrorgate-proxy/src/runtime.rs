//! The state requests are served from: an immutable [`Runtime`] built from one validated config, swapped whole
//! on reload (arc-swap) so a request finishes on the config it started with, and the [`Gateway`] that holds the
//! current runtime plus what must survive reloads (upstream token cache, learned challenges, metrics).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use dashmap::DashMap;
use mirrorgate_config::{Config, RouteProxy};
use mirrorgate_metrics::Metrics;
use mirrorgate_registry::{TokenCache, UpstreamAuthScheme};

use crate::audit::AuditLog;
use crate::credentials::CredentialPools;
use crate::egress::Egress;
use crate::error::ProxyError;
use crate::router::{CompiledRoute, Router};
use crate::upstream::UpstreamClient;

/// Everything derived from one config.
pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
}

impl Runtime {
    /// Compiles `config`: one upstream client per distinct `upstream_ca` (clients pool connections, so routes
    /// with the same trust share one pool).
    pub fn build(config: Arc<Config>) -> Result<Runtime, ProxyError> {
        // Keyed by trust and by outbound proxy: routes differing in either never share a pooled connection.
        let mut clients: HashMap<(Option<PathBuf>, RouteProxy), UpstreamClient> = HashMap::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let key = (route.upstream_ca.clone(), route.upstream_proxy.clone());
            let client = match clients.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let c = UpstreamClient::new(
                        route.upstream_ca.as_deref(),
                        config.server.connect_timeout,
                        Egress::for_route(&config.server, &route.upstream_proxy),
                    )?;
                    clients.insert(key, c.clone());
                    c
                }
            };
            routes.push(CompiledRoute::new(route.clone(), client).with_deny()?);
        }
        Ok(Runtime {
            router: Router::new(routes),
            config,
        })
    }
}

/// The serving state shared by every listener.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    /// Upstream tokens outlive reloads: a reload must not cause a token storm against Docker Hub.
    pub tokens: TokenCache,
    /// Challenges learned per upstream origin, so later requests attach a token before the first try.
    pub schemes: DashMap<String, UpstreamAuthScheme>,
    /// Upstream credential pool state (headroom, set-aside times) outlives reloads that keep a member's name.
    pub pools: CredentialPools,
    pub metrics: Arc<Metrics>,
    /// Client authentication; `None` when the config has no `[auth]` and no tenants (every route open).
    pub auth: Option<Arc<mirrorgate_auth::Authenticator>>,
    /// Limits keep their state across reloads that do not change them (a reload must not hand everyone a fresh
    /// burst); a reload that changes limit values swaps in a new limiter.
    limiter: ArcSwap<mirrorgate_limits::Limiter>,
    /// The built-in cache, opened once at start when the config has `[cache]` (its store outlives reloads).
    cache: std::sync::OnceLock<Arc<crate::cache::GatewayCache>>,
    /// The usage ledger, set once at start (see [`Gateway::set_usage`]); unset in tests that do not count.
    usage: OnceLock<Arc<mirrorgate_usage::Ledger>>,
    /// The audit trail, when `[audit]` is configured; swapped on reload when its settings change.
    audit: ArcSwapOption<AuditLog>,
}

impl Gateway {
    pub fn new(
        runtime: Runtime,
        metrics: Arc<Metrics>,
        auth: Option<Arc<mirrorgate_auth::Authenticator>>,
        limiter: Arc<mirrorgate_limits::Limiter>,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            tokens: TokenCache::default(),
            schemes: DashMap::new(),
            pools: CredentialPools::default(),
            metrics,
            auth,
            limiter: ArcSwap::new(limiter),
            cache: std::sync::OnceLock::new(),
            usage: OnceLock::new(),
            audit: ArcSwapOption::empty(),
        })
    }

    /// The runtime a new request is served with.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The limiter new requests are checked against.
    pub fn limiter(&self) -> Arc<mirrorgate_limits::Limiter> {
        self.limiter.load_full()
    }

    /// Swaps in a limiter built from changed limit values; admissions already granted keep their permits.
    pub fn replace_limiter(&self, limiter: Arc<mirrorgate_limits::Limiter>) {
        self.limiter.store(limiter);
    }

    /// Opens the built-in cache described by `config` (if it has `[cache]`) and serves from it from now on.
    /// Called once at start; a second call keeps the first store.
    pub fn open_cache(
        &self,
        config: &mirrorgate_config::Config,
    ) -> Result<(), crate::cache::CacheSetupError> {
        if let Some(c) = crate::cache::GatewayCache::open(config, &self.metrics)? {
            let _ = self.cache.set(Arc::new(c));
        }
        Ok(())
    }

    /// The built-in cache, when one is configured.
    pub(crate) fn cache(&self) -> Option<&Arc<crate::cache::GatewayCache>> {
        self.cache.get()
    }

    /// Attaches the usage ledger finished requests are counted in (the first call wins).
    pub fn set_usage(&self, ledger: Arc<mirrorgate_usage::Ledger>) {
        let _ = self.usage.set(ledger);
    }

    /// The usage ledger, once attached.
    pub fn usage(&self) -> Option<&Arc<mirrorgate_usage::Ledger>> {
        self.usage.get()
    }

    /// The audit trail requests are written to, if any.
    pub fn audit(&self) -> Option<Arc<AuditLog>> {
        self.audit.load_full()
    }

    /// Sets or replaces the audit trail; the old writer drains its queue and stops.
    pub fn set_audit(&self, audit: Option<Arc<AuditLog>>) {
        self.audit.store(audit);
    }

    /// Swaps in a new runtime; requests already running keep theirs. Pool state of members the new config no
    /// longer has is dropped (see [`CredentialPools::retain`]).
    pub fn replace(&self, runtime: Runtime) {
        self.pools
            .retain(&runtime.router, &self.metrics.credentials);
        self.runtime.store(Arc::new(runtime));
    }
}
