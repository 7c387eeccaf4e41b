//! The outbound proxy keys: `[server] upstream_proxy`, its credentials, `no_proxy`, and `[[route]] upstream_proxy`.

use url::Url;

use super::{credentials, Validator, S};
use crate::model::{OutboundProxy, RouteProxy};
use crate::raw::RawServer;

/// `http://host:port`: the proxy is spoken to in plain HTTP (TLS to the upstream runs inside the tunnel), and
/// credentials belong in their own keys, not in a URL that ends up in logs.
fn proxy_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "`{s}`: the proxy is reached with http:// (https targets are tunnelled through it with CONNECT)"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("`{s}` names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{s}`: put proxy credentials in upstream_proxy_username/_password (or their _env/_file forms), not in the URL"
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("`{s}`: a proxy URL has no path or query"));
    }
    Ok(url)
}

pub(super) fn server_proxy(v: &mut Validator<'_>, raw: &S<RawServer>) -> Option<OutboundProxy> {
    let r = raw.get_ref();
    let creds = credentials(
        v,
        raw,
        "server.upstream_proxy_username",
        [
            &r.upstream_proxy_username,
            &r.upstream_proxy_username_env,
            &r.upstream_proxy_username_file,
        ],
        "server.upstream_proxy_password",
        [
            &r.upstream_proxy_password,
            &r.upstream_proxy_password_env,
            &r.upstream_proxy_password_file,
        ],
    );
    let Some(at) = &r.upstream_proxy else {
        if creds.is_some() {
            v.err(
                raw,
                "server.upstream_proxy_username",
                "proxy credentials without server.upstream_proxy",
            );
        }
        return None;
    };
    let url = v.check(at, "server.upstream_proxy", |s| proxy_url(s))?;
    Some(OutboundProxy {
        url,
        credentials: creds,
    })
}

/// Entries as `NO_PROXY` takes them, one per item: `host` (and its subdomains), `*.suffix` / `.suffix`, an
/// address, a CIDR, or `*` for everything.
pub(super) fn no_proxy(v: &mut Validator<'_>, raw: &Option<S<Vec<String>>>) -> Option<Vec<String>> {
    let at = raw.as_ref()?;
    let mut out = Vec::new();
    for entry in at.get_ref() {
        let e = entry.trim();
        if e.is_empty() || e.contains([',', ' ', '/']) && e.parse::<ipnet::IpNet>().is_err() {
            v.err(
                at,
                "server.no_proxy",
                format!("`{entry}`: write a host, `*.suffix`, an address or a CIDR, one per entry"),
            );
            continue;
        }
        out.push(e.to_ascii_lowercase());
    }
    Some(out)
}

pub(super) fn route_proxy(v: &mut Validator<'_>, raw: &Option<S<String>>, key: &str) -> RouteProxy {
    match raw {
        None => RouteProxy::Inherit,
        Some(at) if at.get_ref() == "none" => RouteProxy::Direct,
        Some(at) => v
            .check(at, key, |s| proxy_url(s))
            .map_or(RouteProxy::Inherit, RouteProxy::Via),
    }
}
