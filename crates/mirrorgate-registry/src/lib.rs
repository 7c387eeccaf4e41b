//! The OCI distribution protocol as the gateway needs to know it, as a pure library: no sockets, no clocks
//! beyond token expiry, no configuration. `mirrorgate-proxy` does the I/O and asks this crate what a request
//! means, what to send upstream, and how to answer.
//!
//! Why a crate of its own: every rule here was learned from a client or a registry misbehaving (encoded
//! slashes in names, relative `Location`s, tokens that are per repository, challenges with commas in quotes).
//! Keeping them in one place, each pinned by a test, keeps the proxy about streaming and policy.
//!
//! Contents, in request order:
//! - [`RegistryPath`] (`path`), over the name/tag/digest grammars (`reference`): what a `/v2/…` path asks for.
//! - `names`: Docker Hub's `library/` rule and k3s-style regex [`Rewrites`].
//! - [`Scope`] (`scope`): what a request needs from a token.
//! - `challenge`: `WWW-Authenticate` parsing and writing.
//! - `token`: upstream token requests, responses and the single-flight [`TokenCache`].
//! - `manifest`: the manifest `Accept` list; `manifest_refs`: the digests a manifest references.
//! - `rewrite`: `Location` / `Link` rewrites and headers that must not reach clients.
//! - [`RegistryError`] (`error`): every refusal, rendered into an OCI error response in one place.
//! - `wire`: one-line facts (API version header, ping body, Docker Hub's names, CDN headers, rate-limit headers).

mod challenge;
mod error;
mod manifest;
mod manifest_refs;
mod names;
mod path;
mod reference;
mod rewrite;
mod scope;
mod token;
mod wire;

pub use challenge::{
    basic_challenge, bearer_challenge, parse_challenges, BearerChallenge, Challenge,
    UpstreamAuthScheme,
};
pub use error::{Error, ErrorCode, RegistryError};
pub use manifest::{manifest_accept, MANIFEST_ACCEPT};
pub use manifest_refs::manifest_references;
pub use names::{docker_hub_library, Rewrites};
pub use path::{split_prefix, RegistryPath, RequestKind};
pub use reference::{Digest, Reference, RepositoryName, Tag};
pub use rewrite::{
    rewrite_link, rewrite_location, strip_response_headers, LocationRewrite, RewriteContext,
    STRIPPED_RESPONSE_HEADERS,
};
pub use scope::{Action, Scope};
pub use token::{
    token_request_url, CacheOutcome, TokenCache, TokenCacheStats, TokenDeadline, TokenKey,
    TokenResponse, UpstreamToken,
};
pub use wire::{
    api_version, is_docker_hub, ratelimit_remaining, ratelimit_window, retry_after,
    strip_cdn_headers, API_VERSION_HEADER, CDN_RESPONSE_HEADERS, DOCKER_HUB_HOSTS, PING_BODY,
};
