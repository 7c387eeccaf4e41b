//! The outbound HTTP proxy: upstream, token-realm and redirect connections go through it when the config (or,
//! when the config says nothing, `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`) asks for one.
//!
//! https targets are tunnelled with `CONNECT` (hyper-util's `Tunnel`): TLS to the upstream runs inside the tunnel
//! and is verified end to end exactly as without a proxy. http targets are sent to the proxy in absolute form
//! (the connection is marked proxied, so hyper keeps the full URI), with `Proxy-Authorization` on each request.
//! Hosts and networks in `no_proxy` are reached directly. A proxy that answers `CONNECT` with 407 or any other
//! refusal is an upstream failure ([`ProxyRefused`]) and is logged as the proxy's refusal.
//!
//! Through the proxy the proxy resolves names, so the SSRF guard of untrusted URLs (redirect targets, token
//! realms) can only refuse private IP literals here; the proxy's own ACL must refuse private destinations.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::{HeaderValue, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use mirrorgate_config::{OutboundProxy, RouteProxy, ServerConfig};
use tokio::net::TcpStream;

use crate::connect::{is_private, PrivateAddress};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The proxy refused to open a tunnel (407 without or with wrong credentials, 403 from its ACL, …).
#[derive(Debug, thiserror::Error)]
#[error("the outbound proxy {proxy} refused CONNECT to {target}: {reason}")]
pub struct ProxyRefused {
    pub proxy: String,
    pub target: String,
    pub reason: String,
}

/// Whether a failed upstream request was refused by the outbound proxy, found anywhere in its source chain.
pub fn refused_by_proxy<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ProxyRefused> {
    mirrorgate_report::find_source::<ProxyRefused>(error)
}

/// Which targets go through which proxy, and with what credentials.
pub struct Egress {
    matcher: Matcher,
    /// `Proxy-Authorization` from the config's credentials (URL credentials of the environment come from the
    /// matcher).
    auth: Option<HeaderValue>,
}

impl Egress {
    /// The settings for one route: its own `upstream_proxy`, else `[server]`'s, else the environment's (only
    /// when `[server]` names neither a proxy nor `no_proxy`). `None`: everything direct.
    pub fn for_route(server: &ServerConfig, route: &RouteProxy) -> Option<Arc<Egress>> {
        let configured = |url: &url::Url, proxy: Option<&OutboundProxy>| {
            let no = server
                .no_proxy
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|e| e.strip_prefix('*').unwrap_or(e))
                .collect::<Vec<_>>()
                .join(",");
            let url = url.as_str().trim_end_matches('/').to_owned();
            let auth = proxy
                .and_then(|p| p.credentials.as_ref())
                .and_then(|c| basic(&c.username, c.password.expose()));
            Arc::new(Egress {
                matcher: Matcher::builder()
                    .http(url.clone())
                    .https(url)
                    .no(no)
                    .build(),
                auth,
            })
        };
        match route {
            RouteProxy::Direct => None,
            RouteProxy::Via(url) => Some(configured(url, server.upstream_proxy.as_ref())),
            RouteProxy::Inherit => match (&server.upstream_proxy, &server.no_proxy) {
                (Some(p), _) => Some(configured(&p.url, Some(p))),
                (None, Some(_)) => None,
                (None, None) => from_env(),
            },
        }
    }

    /// The proxy to reach `dst` through and the credentials for it, or `None` for a direct connection.
    pub fn intercept(&self, dst: &Uri) -> Option<(Uri, Option<HeaderValue>)> {
        let i = self.matcher.intercept(dst)?;
        let auth = self.auth.clone().or_else(|| i.basic_auth().cloned());
        Some((i.uri().clone(), auth))
    }
}

fn from_env() -> Option<Arc<Egress>> {
    let any = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    any.then(|| {
        Arc::new(Egress {
            matcher: Matcher::from_env(),
            auth: None,
        })
    })
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A connector that dials `direct` for targets the proxy does not take, and the proxy (over a plain
/// [`HttpConnector`]: the proxy is configured, so trusted) for the others.
#[derive(Clone)]
pub struct ProxyConnector<D> {
    direct: D,
    via: HttpConnector,
    egress: Option<Arc<Egress>>,
    /// Refuse private IP-literal targets before handing them to the proxy (the untrusted client).
    guard_literals: bool,
}

impl<D> ProxyConnector<D> {
    pub fn new(
        direct: D,
        via: HttpConnector,
        egress: Option<Arc<Egress>>,
        guard_literals: bool,
    ) -> Self {
        ProxyConnector {
            direct,
            via,
            egress,
            guard_literals,
        }
    }
}

impl<D> tower_service::Service<Uri> for ProxyConnector<D>
where
    D: tower_service::Service<Uri, Response = TokioIo<TcpStream>> + Clone + Send + 'static,
    D::Future: Send + 'static,
    D::Error: Into<BoxError>,
{
    type Response = ProxyStream;
    type Error = BoxError;
    type Future = BoxFuture<Result<ProxyStream, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.direct.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let Some((proxy, auth)) = self.egress.as_ref().and_then(|e| e.intercept(&dst)) else {
            let connecting = self.direct.call(dst);
            return Box::pin(async move {
                let io = connecting.await.map_err(Into::into)?;
                Ok(ProxyStream { io, proxied: false })
            });
        };
        let host = dst.host().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        if self.guard_literals && literal.is_ok_and(is_private) {
            let host = host.to_string();
            return Box::pin(async move { Err(Box::new(PrivateAddress { host }) as BoxError) });
        }
        if dst.scheme_str() == Some("https") {
            let mut tunnel = Tunnel::new(proxy.clone(), self.via.clone());
            if let Some(a) = auth {
                tunnel = tunnel.with_auth(a);
            }
            let target = dst.authority().map(ToString::to_string).unwrap_or_default();
            let connecting = tower_service::Service::call(&mut tunnel, dst);
            Box::pin(async move {
                let io = connecting.await.map_err(|e| {
                    let reason = e.to_string();
                    // hyper-util's tunnel errors are not nameable; a refusal is the proxy's answer, anything else
                    // (connect failure, I/O) is the network's and keeps its own chain.
                    if reason.contains("proxy authorization required")
                        || reason.contains("unsuccessful")
                    {
                        Box::new(ProxyRefused {
                            proxy: proxy.to_string(),
                            target,
                            reason: reason.trim_start_matches("tunnel error: ").to_owned(),
                        }) as BoxError
                    } else {
                        Box::new(e) as BoxError
                    }
                })?;
                Ok(ProxyStream { io, proxied: false })
            })
        } else {
            let connecting = tower_service::Service::call(&mut self.via, proxy);
            Box::pin(async move {
                let io = connecting.await.map_err(|e| Box::new(e) as BoxError)?;
                Ok(ProxyStream { io, proxied: true })
            })
        }
    }
}

/// A TCP stream to the target or the proxy; `proxied` marks an absolute-form (http through the proxy)
/// connection, so hyper keeps the full URI in the request line.
pub struct ProxyStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for ProxyStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl Read for ProxyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for ProxyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(proxy: Option<&str>, no_proxy: Option<&[&str]>) -> ServerConfig {
        let text = format!(
            "[server]\nhttps = \"127.0.0.1:8443\"\n{}{}\n[[route]]\nhost = \"a.test\"\nupstream = \"http://127.0.0.1:1\"\n",
            proxy.map_or(String::new(), |p| format!("upstream_proxy = {p:?}\nupstream_proxy_username = \"u\"\nupstream_proxy_password = \"p\"\n")),
            no_proxy.map_or(String::new(), |n| format!("no_proxy = {n:?}\n")),
        );
        mirrorgate_config::parse(std::path::Path::new("/tmp/x.toml"), &text)
            .unwrap()
            .server
    }

    fn via(e: &Option<Arc<Egress>>, dst: &str) -> Option<String> {
        e.as_ref()
            .and_then(|e| e.intercept(&dst.parse().unwrap()))
            .map(|(u, _)| u.to_string())
    }

    // Pins the choice of proxy: `[server]`'s for every target but `no_proxy` hosts (suffix and CIDR forms),
    // a route's own URL, `"none"`, and the credentials sent as Basic.
    #[test]
    fn which_targets_go_through_which_proxy() {
        let s = server(
            Some("http://proxy.test:3128"),
            Some(&["*.corp.test", "10.0.0.0/8", "direct.test"]),
        );
        let e = Egress::for_route(&s, &RouteProxy::Inherit);
        assert_eq!(
            via(&e, "https://registry.test/v2/").as_deref(),
            Some("http://proxy.test:3128/")
        );
        assert_eq!(via(&e, "https://a.corp.test/v2/"), None);
        assert_eq!(via(&e, "http://10.1.2.3:5000/v2/"), None);
        assert_eq!(via(&e, "https://direct.test/v2/"), None);
        let auth = e
            .as_ref()
            .and_then(|e| e.intercept(&"https://x.test/".parse().unwrap()))
            .and_then(|(_, a)| a);
        assert_eq!(auth.unwrap().to_str().unwrap(), "Basic dTpw");
        assert!(Egress::for_route(&s, &RouteProxy::Direct).is_none());
        let own = Egress::for_route(
            &s,
            &RouteProxy::Via("http://other.test:8080".parse().unwrap()),
        );
        assert_eq!(
            via(&own, "https://registry.test/").as_deref(),
            Some("http://other.test:8080/")
        );
        // `no_proxy` written without a proxy: the config has spoken, the environment is not read
        let s = server(None, Some(&[]));
        assert!(Egress::for_route(&s, &RouteProxy::Inherit).is_none());
    }
}
