//! Blob redirects followed server-side (`blob_redirects = "follow"`): the CDN answer is fetched without any
//! credentials so the bytes pass through limits and byte counts, behind the SSRF guard (loopback, private,
//! link-local and CGNAT targets are refused unless the route sets `danger_allow_private_redirects`).

use std::net::IpAddr;

use http::header;
use http::{Request, Response};
use http_body_util::BodyExt;
use mirrorgate_registry::strip_response_headers;
use url::Url;

use crate::body::{empty, GatewayBody};
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
        check_redirect_target(&target, route.config.danger_allow_private_redirects).await?;
        let req = Request::builder()
            .method(ctx.method.clone())
            .uri(target.as_str())
            .body(empty())
            .map_err(|e| ProxyError::Internal(format!("redirect request: {e}")))?;
        let timeout = ctx.rt.config.server.upstream_timeout;
        let resp = tokio::time::timeout(timeout, route.client.send(req))
            .await
            .map_err(|_| ProxyError::Timeout(timeout))?
            .map_err(|source| {
                ProxyError::Unavailable(EndpointError::Send {
                    origin: redact(&target),
                    source,
                })
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

async fn check_redirect_target(target: &Url, allow_private: bool) -> Result<(), ProxyError> {
    let refuse = |reason| ProxyError::Redirect {
        target: redact(target),
        reason,
    };
    if !matches!(target.scheme(), "http" | "https") {
        return Err(refuse(RedirectRefusal::Scheme));
    }
    if allow_private {
        return Ok(());
    }
    let host = target
        .host_str()
        .ok_or_else(|| refuse(RedirectRefusal::NoHost))?;
    let port = target.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| refuse(RedirectRefusal::Resolve(e.into())))?;
    for addr in addrs {
        if is_private(addr.ip()) {
            return Err(refuse(RedirectRefusal::PrivateAddress));
        }
    }
    Ok(())
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the SSRF guard's address classes.
    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    // Pins that the SSRF guard refuses loopback targets unless the route opts in.
    #[tokio::test]
    async fn loopback_redirects_refused_by_default() {
        let u = Url::parse("http://127.0.0.1:9/blob").unwrap();
        assert!(check_redirect_target(&u, false).await.is_err());
        assert!(check_redirect_target(&u, true).await.is_ok());
        assert!(
            check_redirect_target(&Url::parse("file:///etc/passwd").unwrap(), true)
                .await
                .is_err()
        );
    }
}
