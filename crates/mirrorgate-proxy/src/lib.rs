//! The HTTP side of mirrorgate: TLS and plain listeners, routing by host / path prefix / `?ns=`, and the forward
//! path to upstream registries and backend caches with fallback, the upstream token dance, streaming bodies and
//! response rewrites.
//!
//! Protocol knowledge (paths, names, challenges, tokens, header rewrites) lives in `mirrorgate-registry`; this
//! crate decides *where* and *when* and moves bytes. Read `forward` first: it lists the request phases.
//!
//! Modules, in the order a request meets them:
//! - `listener`, `server`, `plain`: the accept loop, connection caps and idle closing; the TLS listener; the
//!   `:80` redirector and the admin listener; `handle`: one request start to end, logged when its body ends; `framing`: HTTP/1.1 message boundaries as sent (ambiguous framing is
//!   refused); `connect`: the guarded connector for untrusted upstream targets.
//! - `context`: what phases carry (connection facts, request facts, the routed request, the plan).
//! - `router`, `plan`: host → route; path, `?ns=` and path prefix → plan; name rewrites.
//! - `token_endpoint`: the local `/token` answer.
//! - `admission`: identify, authorize, limit.
//! - `cache`, `cache_answer`: answers from and fills of the built-in cache, around the endpoint loop.
//! - `forward`: the phase list and the endpoint loop; `upstream`: clients and endpoint health; `egress`: the
//!   outbound HTTP proxy those clients dial through.
//! - `upstream_auth`: the upstream token dance; `attempt`: one try at one endpoint.
//! - `credentials`, `pool_attempt`: upstream credential pools (selection, set-aside) and a try with a member.
//! - `respond`, `redirect`: the upstream answer becomes the client's.
//! - `usage`: the finished request counted in the usage ledger; the admin `/usage` export.
//! - `audit`: the audit trail of manifest requests and refusals, written off the request path.
//! - `headers`, `body`: header hygiene, streaming bodies; `error`: failures and their one rendering.
//! - `runtime`, `specs`: the state built from a config, and config → auth/limits specs.

mod admission;
mod attempt;
mod audit;
mod body;
mod cache;
mod cache_answer;
mod connect;
mod context;
mod credentials;
mod egress;
mod error;
mod forward;
mod framing;
mod handle;
mod headers;
mod listener;
mod plain;
mod plan;
mod pool_attempt;
mod redirect;
mod respond;
mod router;
mod runtime;
mod server;
mod specs;
mod token_endpoint;
mod upstream;
mod upstream_auth;
mod usage;

pub use audit::{AuditError, AuditLog};
pub use body::{BoxError, GatewayBody};
pub use cache::CacheSetupError;
pub use connect::{is_private, refused_by_guard, PrivateAddress};
pub use egress::{refused_by_proxy, ProxyRefused};
pub use error::{EndpointError, ProxyError, RedirectRefusal, Report};
pub use listener::{ConnectionCaps, Refusal};
pub use plain::{serve_admin, serve_http, Http01Responder};
pub use runtime::{Gateway, Runtime};
pub use server::serve_https;
pub use specs::{auth_enabled, auth_spec, limits_spec, tenant_specs};
pub use upstream_auth::TokenFetchError;
