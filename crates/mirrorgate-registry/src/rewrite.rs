//! Response header rewrites: `Location` and `Link` point at the upstream and must point at the gateway (in the
//! client's namespace) instead, and a few headers must not reach clients at all.
//!
//! Pure functions over URLs: the proxy passes in what it sent upstream and what the client sees.

use http::HeaderMap;
use url::Url;

use crate::error::Error;

/// Response headers removed before answering a client: `docker-ratelimit-source` reveals the gateway's egress
/// IP to every client. (Docker Hub's `ratelimit-limit` / `ratelimit-remaining` are passed on untouched.)
pub const STRIPPED_RESPONSE_HEADERS: &[&str] = &["docker-ratelimit-source"];

/// Removes [`STRIPPED_RESPONSE_HEADERS`] from an upstream response's headers.
pub fn strip_response_headers(headers: &mut HeaderMap) {
    for name in STRIPPED_RESPONSE_HEADERS {
        headers.remove(*name);
    }
}

/// How upstream URLs map back into the client's view of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct RewriteContext<'a> {
    /// The upstream the request went to (`https://registry-1.docker.io`, or with a base path
    /// `https://host/prefix` when the registry lives under one).
    pub upstream_base: &'a Url,
    /// The gateway's public origin as the client used it (`https://docker.test:8443`).
    pub gateway: &'a Url,
    /// For path-prefix routes: the key to re-insert after `/v2/` (`gcr.test` gives `/v2/gcr.test/...`).
    pub path_prefix: Option<&'a str>,
    /// `(upstream_name, client_name)` when the repository name was rewritten on the way up
    /// (`library/hello` upstream is `hello` for the client).
    pub name_map: Option<(&'a str, &'a str)>,
}

/// Where a `Location` sends the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocationRewrite {
    /// An upstream `/v2/...` URL, mapped to the gateway: an absolute gateway URL in the client's namespace.
    Local(String),
    /// Somewhere else (a CDN, object storage, or a non-API path on the upstream host): resolved to absolute.
    /// The proxy follows it server-side or passes it on, and never sends the client's credentials there.
    External(Url),
}

/// Rewrites a `Location` header value. Relative values (Google Artifact Registry sends them) are resolved
/// against `request_url`, the URL the request was sent to upstream. Query strings (upload `_state`) are kept;
/// fragments dropped.
pub fn rewrite_location(
    location: &str,
    request_url: &Url,
    ctx: &RewriteContext<'_>,
) -> Result<LocationRewrite, Error> {
    let resolved = request_url.join(location.trim()).map_err(Error::Url)?;
    match map_to_gateway_path(&resolved, ctx) {
        Some(path_and_query) => Ok(LocationRewrite::Local(format!(
            "{}{path_and_query}",
            gateway_origin(ctx)
        ))),
        None => Ok(LocationRewrite::External(resolved)),
    }
}

/// Rewrites a `Link` header value (`<uri>; rel="next"`, possibly several comma-separated links). Upstream URIs
/// are mapped like `Location`: relative ones stay relative (the client resolves them against the gateway),
/// absolute ones become absolute gateway URLs. URIs pointing elsewhere and all parameters are left as sent.
pub fn rewrite_link(
    link: &str,
    request_url: &Url,
    ctx: &RewriteContext<'_>,
) -> Result<String, Error> {
    let mut out = String::with_capacity(link.len() + 16);
    let mut rest = link;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').ok_or(Error::Link)? + open;
        let uri = rest[open + 1..close].trim();
        out.push_str(&rest[..=open]);
        let resolved = request_url.join(uri).map_err(Error::Url)?;
        let is_absolute = Url::parse(uri).is_ok();
        match map_to_gateway_path(&resolved, ctx) {
            Some(path_and_query) if is_absolute => {
                out.push_str(&gateway_origin(ctx));
                out.push_str(&path_and_query);
            }
            Some(path_and_query) => out.push_str(&path_and_query),
            None => out.push_str(uri),
        }
        out.push('>');
        rest = &rest[close + 1..];
    }
    if out.is_empty() && !link.trim().is_empty() {
        return Err(Error::Link);
    }
    out.push_str(rest);
    Ok(out)
}

fn gateway_origin(ctx: &RewriteContext<'_>) -> String {
    ctx.gateway.origin().ascii_serialization()
}

/// The gateway path (with query) for an upstream URL, or `None` if the URL is not an upstream API URL.
fn map_to_gateway_path(url: &Url, ctx: &RewriteContext<'_>) -> Option<String> {
    // Same host and port, whatever the scheme: registries build upload URLs from `X-Forwarded-Proto`, which the
    // gateway sets to `https`, so a plain-http upstream answers with `https://` and its own host:port.
    let same_server = url.host_str() == ctx.upstream_base.host_str()
        && url.port_or_known_default() == ctx.upstream_base.port_or_known_default();
    if !same_server {
        return None;
    }
    let base = ctx.upstream_base.path().trim_end_matches('/');
    let path = url.path().strip_prefix(base)?;
    let after_v2 = if path == "/v2" {
        ""
    } else {
        path.strip_prefix("/v2/")?
    };
    let mut mapped = String::from("/v2/");
    if let Some(prefix) = ctx.path_prefix {
        mapped.push_str(prefix);
        mapped.push('/');
    }
    match ctx.name_map {
        Some((upstream_name, client_name))
            if after_v2 == upstream_name
                || after_v2
                    .strip_prefix(upstream_name)
                    .is_some_and(|rest| rest.starts_with('/')) =>
        {
            mapped.push_str(client_name);
            mapped.push_str(&after_v2[upstream_name.len()..]);
        }
        _ => mapped.push_str(after_v2),
    }
    if let Some(query) = url.query() {
        mapped.push('?');
        mapped.push_str(query);
    }
    Some(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    struct Fixture {
        upstream: Url,
        gateway: Url,
        request: Url,
    }

    fn fixture() -> Fixture {
        Fixture {
            upstream: url("https://registry-1.docker.io"),
            gateway: url("https://docker.test:8443"),
            request: url("https://registry-1.docker.io/v2/library/hello/blobs/uploads/"),
        }
    }

    fn ctx<'a>(
        f: &'a Fixture,
        prefix: Option<&'a str>,
        names: Option<(&'a str, &'a str)>,
    ) -> RewriteContext<'a> {
        RewriteContext {
            upstream_base: &f.upstream,
            gateway: &f.gateway,
            path_prefix: prefix,
            name_map: names,
        }
    }

    // Rule: an absolute upstream upload URL maps to the gateway, the name back to the client's, query kept.
    #[test]
    fn absolute_upload_location() {
        let f = fixture();
        let c = ctx(&f, None, Some(("library/hello", "hello")));
        let got = rewrite_location(
            "https://registry-1.docker.io/v2/library/hello/blobs/uploads/x?_state=abc%3D",
            &f.request,
            &c,
        )
        .unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local(
                "https://docker.test:8443/v2/hello/blobs/uploads/x?_state=abc%3D".into()
            )
        );
    }

    // Rule: relative Locations resolve against the request URL (absolute-path and path-relative forms).
    #[test]
    fn relative_locations() {
        let f = fixture();
        let c = ctx(&f, None, Some(("library/hello", "hello")));
        let got = rewrite_location("/v2/library/hello/blobs/uploads/y", &f.request, &c).unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local("https://docker.test:8443/v2/hello/blobs/uploads/y".into())
        );
        let got = rewrite_location("z?_state=1", &f.request, &c).unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local(
                "https://docker.test:8443/v2/hello/blobs/uploads/z?_state=1".into()
            )
        );
    }

    // Rule: path-prefix routes get their key re-inserted after /v2/.
    #[test]
    fn path_prefix_reinserted() {
        let f = Fixture {
            upstream: url("https://gcr.test"),
            gateway: url("https://mirror.test/"),
            request: url("https://gcr.test/v2/foo/bar/blobs/uploads/"),
        };
        let c = ctx(&f, Some("gcr.test"), None);
        let got = rewrite_location("/v2/foo/bar/blobs/uploads/u1", &f.request, &c).unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local(
                "https://mirror.test/v2/gcr.test/foo/bar/blobs/uploads/u1".into()
            )
        );
    }

    // Rule: another host (a CDN redirect) is External, resolved to absolute and unchanged.
    #[test]
    fn cdn_redirect_is_external() {
        let f = fixture();
        let c = ctx(&f, None, None);
        let cdn = "https://production.cloudflare.docker.com/registry-v2/docker/blobs/sha256/ab/x/data?sig=s";
        assert_eq!(
            rewrite_location(cdn, &f.request, &c).unwrap(),
            LocationRewrite::External(url(cdn))
        );
        // Same host, other port or scheme is another origin.
        let other_port = "https://registry-1.docker.io:444/v2/x";
        assert!(matches!(
            rewrite_location(other_port, &f.request, &c).unwrap(),
            LocationRewrite::External(_)
        ));
        // Same origin, but not an API path: not mapped.
        let non_api = "/blobs/data/123";
        assert!(matches!(
            rewrite_location(non_api, &f.request, &c).unwrap(),
            LocationRewrite::External(_)
        ));
    }

    // Rule: the name map replaces whole name components only, never a longer name sharing the prefix.
    #[test]
    fn name_map_respects_component_boundary() {
        let f = fixture();
        let c = ctx(&f, None, Some(("library/hello", "hello")));
        let got =
            rewrite_location("/v2/library/hello-world/blobs/uploads/q", &f.request, &c).unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local(
                "https://docker.test:8443/v2/library/hello-world/blobs/uploads/q".into()
            )
        );
    }

    // Rule: an upstream with a base path maps only URLs under that base path.
    #[test]
    fn upstream_base_path() {
        let f = Fixture {
            upstream: url("https://git.test/registry/"),
            gateway: url("https://docker.test"),
            request: url("https://git.test/registry/v2/a/blobs/uploads/"),
        };
        let c = ctx(&f, None, None);
        let got = rewrite_location("/registry/v2/a/blobs/uploads/1", &f.request, &c).unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local("https://docker.test/v2/a/blobs/uploads/1".into())
        );
        assert!(matches!(
            rewrite_location("/v2/a/blobs/uploads/1", &f.request, &c).unwrap(),
            LocationRewrite::External(_)
        ));
    }

    // Rule: pagination Links are mapped; relative stays relative, absolute becomes the gateway's URL.
    #[test]
    fn link_rewrites() {
        let f = Fixture {
            upstream: url("https://registry-1.docker.io"),
            gateway: url("https://docker.test:8443"),
            request: url("https://registry-1.docker.io/v2/library/hello/tags/list?n=2"),
        };
        let c = ctx(&f, Some("hub"), Some(("library/hello", "hello")));
        let rel = r#"</v2/library/hello/tags/list?n=2&last=b>; rel="next""#;
        assert_eq!(
            rewrite_link(rel, &f.request, &c).unwrap(),
            r#"</v2/hub/hello/tags/list?n=2&last=b>; rel="next""#
        );
        let abs = r#"<https://registry-1.docker.io/v2/_catalog?n=10&last=x>; rel="next""#;
        assert_eq!(
            rewrite_link(abs, &f.request, &c).unwrap(),
            r#"<https://docker.test:8443/v2/hub/_catalog?n=10&last=x>; rel="next""#
        );
        let elsewhere = r#"<https://docs.test/page>; rel="help", </v2/library/hello/tags/list?last=c>; rel="next""#;
        assert_eq!(
            rewrite_link(elsewhere, &f.request, &c).unwrap(),
            r#"<https://docs.test/page>; rel="help", </v2/hub/hello/tags/list?last=c>; rel="next""#
        );
    }

    // Rule: malformed Link values are errors, never panics.
    #[test]
    fn malformed_links() {
        let f = fixture();
        let c = ctx(&f, None, None);
        for bad in ["</v2/x", "no brackets", "<http://[::1>; rel=next"] {
            assert!(rewrite_link(bad, &f.request, &c).is_err(), "{bad:?}");
        }
        for odd in ["<>", "<é>", "<<>>", ">", "<\u{0}>"] {
            let _ = rewrite_link(odd, &f.request, &c);
        }
    }

    // Rule: docker-ratelimit-source is stripped; ratelimit-limit/remaining pass through.
    #[test]
    fn strips_only_the_listed_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "docker-ratelimit-source",
            HeaderValue::from_static("203.0.113.9"),
        );
        headers.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
        headers.insert(
            "ratelimit-remaining",
            HeaderValue::from_static("99;w=21600"),
        );
        strip_response_headers(&mut headers);
        assert!(headers.get("docker-ratelimit-source").is_none());
        assert_eq!(headers["ratelimit-limit"], "100;w=21600");
        assert_eq!(headers["ratelimit-remaining"], "99;w=21600");
    }

    // Pins that an upload URL built from X-Forwarded-Proto (https scheme, the upstream's own host:port) is mapped
    // back to the gateway instead of being treated as a foreign redirect.
    #[test]
    fn forwarded_proto_scheme_is_still_the_upstream() {
        let upstream = Url::parse("http://127.0.0.1:5000").unwrap();
        let gateway = Url::parse("https://docker.test:8443").unwrap();
        let ctx = RewriteContext {
            upstream_base: &upstream,
            gateway: &gateway,
            path_prefix: None,
            name_map: None,
        };
        let req = Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/").unwrap();
        let got = rewrite_location(
            "https://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x",
            &req,
            &ctx,
        )
        .unwrap();
        assert_eq!(
            got,
            LocationRewrite::Local(
                "https://docker.test:8443/v2/a/blobs/uploads/u1?_state=x".into()
            )
        );
        let other = rewrite_location("https://127.0.0.1:5001/v2/a/blobs/x", &req, &ctx).unwrap();
        assert!(matches!(other, LocationRewrite::External(_)));
    }
}
