//! Phase 7, **upstream auth**, the credential part: which pool member a try at the upstream uses, and what its
//! answer teaches the pool. A 429 or a refused login sets the member aside and a read is retried once with the
//! next one; a write keeps its first member whatever happens (an upload is never moved between identities).
//! Selection and set-aside rules are in `credentials`; the token dance under each try in `upstream_auth`.

use std::time::Instant;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use mirrorgate_registry::{ratelimit_remaining, ratelimit_window, retry_after};

use crate::attempt::Attempt;
use crate::body::{empty, GatewayBody};
use crate::credentials::{Choice, Pool, SetAsideCause};
use crate::error::ProxyError;
use crate::upstream_auth::{credential_id, TokenFetchError};

impl Attempt<'_> {
    /// Sends the request with a member of the endpoint's credential pool (or anonymously when it has none).
    /// `idempotent` requests may switch members once; every member set aside is
    /// [`ProxyError::CredentialsExhausted`].
    pub async fn send_pooled(
        &self,
        body: GatewayBody,
        replayable: bool,
        idempotent: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (gw, endpoint, route) = (self.ctx.gw, self.endpoint, &self.ctx.route.label);
        let members = &endpoint.credentials;
        // The catalog lists every repository an account can see: never with the gateway's accounts.
        if members.is_empty() || !self.with_credentials {
            return self.send_with_auth(None, body, replayable).await;
        }
        let pool = Pool {
            state: &gw.pools,
            metrics: &gw.metrics.credentials,
            route,
            origin: &endpoint.origin,
            members,
        };
        let mut choice = if idempotent {
            pool.pick(Instant::now())
        } else {
            pool.pick_for_write()
        };
        let mut body = Some(body);
        let mut switched = false;
        loop {
            let index = match choice {
                Choice::Use(i) => i,
                Choice::Exhausted { retry_after } => {
                    return Err(ProxyError::CredentialsExhausted {
                        route: route.clone(),
                        retry_after,
                    })
                }
            };
            let Some(member) = members.get(index) else {
                return Err(ProxyError::Internal(format!(
                    "credential pool pick {index} out of {}",
                    members.len()
                )));
            };
            pool.metrics.request(route, &member.name);
            let sent = body.take().unwrap_or_else(empty);
            let result = self.send_with_auth(Some(member), sent, replayable).await;
            let (cause, wait) = match &result {
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    pool.metrics.throttled(route, &member.name);
                    let h = resp.headers();
                    (
                        SetAsideCause::RateLimited,
                        retry_after(h).or_else(|| ratelimit_window(h)),
                    )
                }
                Ok(resp) => {
                    if let Some(n) = ratelimit_remaining(resp.headers()) {
                        pool.observe_remaining(index, n);
                    }
                    pool.succeeded(index);
                    return result;
                }
                Err(ProxyError::UpstreamToken {
                    source: TokenFetchError::Status(status),
                    ..
                }) if *status == StatusCode::UNAUTHORIZED || *status == StatusCode::FORBIDDEN => {
                    // The realm no longer accepts this login (password changed): its tokens go too.
                    if let Some(id) = credential_id(endpoint, member) {
                        gw.tokens.invalidate_credential(&id);
                    }
                    (SetAsideCause::LoginRefused, None)
                }
                Err(_) => return result,
            };
            pool.set_aside(index, cause, wait, Instant::now());
            if !idempotent || switched {
                return result;
            }
            switched = true;
            choice = pool.pick(Instant::now());
            if matches!(choice, Choice::Exhausted { .. }) {
                // Nobody left to retry with: this answer (the upstream's 429, the realm's refusal) is the
                // client's; the next request meets the exhausted pool.
                return result;
            }
        }
    }
}
