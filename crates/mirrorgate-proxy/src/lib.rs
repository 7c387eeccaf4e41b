//! The HTTP side of mirrorgate: TLS and plain listeners, routing by host / path prefix / `?ns=`, and the forward
//! path to upstream registries and backend caches with fallback, the upstream token dance, streaming bodies and
//! response rewrites.
//!
//! Protocol knowledge (paths, names, challenges, tokens, header rewrites) lives in `mirrorgate-registry`; this
//! crate decides *where* and *when* and moves bytes. Read `forward` first: it lists the request phases.

mod admission;
mod body;
mod connect;
mod error;
mod forward;
mod headers;
mod listener;
mod router;
mod runtime;
mod server;
mod specs;
mod token_endpoint;
mod upstream;

pub use body::{BoxError, GatewayBody};
pub use connect::{is_private, refused_by_guard, PrivateAddress};
pub use error::ProxyError;
pub use listener::{ConnectionCaps, Refusal};
pub use runtime::{Gateway, Runtime};
pub use server::{serve_admin, serve_http, serve_https, Http01Responder};
pub use specs::{auth_enabled, auth_spec, limits_spec, tenant_specs};
