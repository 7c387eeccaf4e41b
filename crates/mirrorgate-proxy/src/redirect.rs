//! Blob redirects followed server-side (`blob_redirects = "follow"`): the CDN answer is fetched without any
//! credentials so the bytes pass through limits and byte counts, behind the SSRF guard: the untrusted client's
//! connector refuses loopback, private, link-local and CGNAT addresses at connect time, unless the route sets
//! `danger_allow_private_redirects`.

use http::header;
use http::{Request, Response};
use http_body_util::BodyExt;
use mirrorgate_registry::strip_response_headers;
use url::Url;

use crate::body::{empty, GatewayBody};
use crate::connect::refused_by_guard;
use crate::context::RequestCtx;
use crate::error::{EndpointError, ProxyError, RedirectRefusal};
use crate::headers;
use crate::upstream_auth::redact;

/// Redirect hops followed before giving up.
const MAX_HOPS: usize = 5;

/// Fetches a blob redirect target (and the redirects it answers with, up to [`MAX_HOPS`]).
pub async fn follow_redirect(
    ctx: &RequestCtx<'_>,
    mut target: Url,
) -> Result<Response<GatewayBody>, ProxyError> {
    let route = ctx.route;
    for _ in 0..MAX_HOPS {
        check_redirect_target(&target)?;
        let req = Request::builder()
            .method(ctx.method.clone())
            .uri(target.as_str())
            .body(empty())
            .map_err(|e| ProxyError::Internal(format!("redirect request: {e}")))?;
        let timeout = ctx.rt.config.server.upstream_timeout;
        let allow_private = route.config.danger_allow_private_redirects;
        let resp = tokio::time::timeout(timeout, route.client.send_untrusted(req, allow_private))
            .await
            .map_err(|_| ProxyError::Timeout(timeout))?
            .map_err(|source| {
                if refused_by_guard(&source).is_some() {
                    ProxyError::Redirect {
                        target: redact(&target),
                        reason: RedirectRefusal::PrivateAddress,
                    }
                } else {
                    ProxyError::Unavailable(EndpointError::Send {
                        origin: redact(&target),
                        source,
                    })
                }
            })?;
        if resp.status().is_redirection() {
            if let Some(next) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| target.join(l).ok())
            {
                target = next;
                continue;
            }
        }
        let (mut parts, body) = resp.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        strip_response_headers(&mut parts.headers);
        mirrorgate_registry::strip_cdn_headers(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed(),
        ));
    }
    Err(ProxyError::Redirect {
        target: redact(&target),
        reason: RedirectRefusal::TooManyHops,
    })
}

/// Only http(s) targets are followed; which addresses may be reached is decided when connecting (the guarded
/// connector in `connect`), so a name cannot resolve to a public address here and to loopback there.
fn check_redirect_target(target: &Url) -> Result<(), ProxyError> {
    if matches!(target.scheme(), "http" | "https") {
        Ok(())
    } else {
        Err(ProxyError::Redirect {
            target: redact(target),
            reason: RedirectRefusal::Scheme,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins that only http(s) redirect targets are followed.
    #[test]
    fn only_http_targets() {
        assert!(check_redirect_target(&Url::parse("https://cdn.example/blob").unwrap()).is_ok());
        for bad in ["file:///etc/passwd", "gopher://x/", "ftp://x/"] {
            assert!(
                check_redirect_target(&Url::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
