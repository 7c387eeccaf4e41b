//! The SSRF guard where it cannot be raced: at connect time.
//!
//! A URL the gateway did not get from its config — a blob redirect's `Location`, a token realm learned from a
//! challenge — may name a host that resolves to a public address when checked and to 127.0.0.1 a moment later
//! (DNS rebinding). Checking the name first and letting the connector resolve it again is therefore no guard.
//! Here the resolver itself drops loopback, private, link-local, CGNAT and unspecified addresses, and the
//! connector refuses such IP literals, so the addresses connected to are exactly the ones that were checked.
//!
//! Only the untrusted client of [`crate::upstream::UpstreamClient`] uses the guard: configured upstreams and
//! endpoints are trusted as written (operators point routes at 127.0.0.1 and private backends on purpose).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The boxed error hyper's connector stack passes along.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A connection refused by the guard: the destination is (or resolves only to) an address class the gateway
/// never reaches on behalf of an untrusted URL.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to loopback, private, link-local or unspecified addresses")]
pub struct PrivateAddress {
    pub host: String,
}

/// Whether `ip` is an address an untrusted URL must not reach: loopback, RFC 1918, link-local (cloud metadata),
/// CGNAT 100.64/10, unspecified, broadcast, IPv6 unique-local, and IPv4-mapped forms of those.
pub fn is_private(ip: IpAddr) -> bool {
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

/// Whether a failed upstream request was refused by the guard (rather than failing to connect), found anywhere
/// in its source chain.
pub fn refused_by_guard<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a PrivateAddress> {
    mirrorgate_report::find_source::<PrivateAddress>(error)
}

/// Name → addresses. The system resolver in production; a test double in tests.
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>>;
}

/// `getaddrinfo` through tokio's blocking pool, what hyper's own resolver does.
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A resolver for [`HttpConnector`] that answers only public addresses: one lookup, filtered, and those very
/// addresses are what the connector dials.
#[derive(Clone)]
pub struct PublicOnlyResolver {
    lookup: Arc<dyn Lookup>,
}

impl PublicOnlyResolver {
    pub fn new(lookup: Arc<dyn Lookup>) -> Self {
        PublicOnlyResolver { lookup }
    }
}

impl tower_service::Service<Name> for PublicOnlyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all = lookup.lookup(&host).await?;
            let public: Vec<SocketAddr> = all
                .into_iter()
                .filter(|ip| !is_private(*ip))
                // Port 0: the connector puts the URL's port in.
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if public.is_empty() {
                return Err(Box::new(PrivateAddress { host }) as BoxError);
            }
            Ok(public.into_iter())
        })
    }
}

/// [`HttpConnector`] with the [`PublicOnlyResolver`], refusing private IP literals too (the connector dials
/// literals without asking the resolver).
#[derive(Clone)]
pub struct PublicOnlyConnector {
    inner: HttpConnector<PublicOnlyResolver>,
}

impl PublicOnlyConnector {
    pub fn new(inner: HttpConnector<PublicOnlyResolver>) -> Self {
        PublicOnlyConnector { inner }
    }
}

impl tower_service::Service<Uri> for PublicOnlyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let host = dst.host().unwrap_or_default();
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        if literal.is_ok_and(is_private) {
            let host = host.to_string();
            return Box::pin(async move { Err(Box::new(PrivateAddress { host }) as BoxError) });
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use super::*;

    /// DNS rebinding: the first answer is public, every later one is 127.0.0.1.
    struct Rebinding {
        calls: AtomicUsize,
    }

    impl Lookup for Rebinding {
        fn lookup(&self, _host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let ip: IpAddr = if n == 0 {
                // TEST-NET-1: public by our rules, routed nowhere.
                "192.0.2.1".parse().unwrap()
            } else {
                "127.0.0.1".parse().unwrap()
            };
            Box::pin(async move { Ok(vec![ip]) })
        }
    }

    /// A loopback listener counting the connections it accepts.
    async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        (port, seen)
    }

    fn guarded_client(lookup: Arc<dyn Lookup>) -> Client<PublicOnlyConnector, Empty<bytes::Bytes>> {
        let mut http = HttpConnector::new_with_resolver(PublicOnlyResolver::new(lookup));
        http.set_connect_timeout(Some(Duration::from_millis(300)));
        Client::builder(TokioExecutor::new()).build(PublicOnlyConnector::new(http))
    }

    fn get(url: &str) -> http::Request<Empty<bytes::Bytes>> {
        http::Request::get(url).body(Empty::new()).unwrap()
    }

    // Pins the guard's address classes.
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
            "255.255.255.255",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    // Pins DNS-rebinding safety: a name answering a public address first and 127.0.0.1 next never gets a
    // connection to loopback, on any request; the same name through an unguarded connector does (control).
    #[tokio::test]
    async fn rebinding_name_never_reaches_loopback() {
        let (port, seen) = counting_listener().await;
        let lookup = Arc::new(Rebinding {
            calls: AtomicUsize::new(0),
        });
        let client = guarded_client(lookup.clone());
        let url = format!("http://rebind.test:{port}/blob");
        for _ in 0..3 {
            let err = client.request(get(&url)).await.unwrap_err();
            assert!(err.is_connect(), "{err:?}");
        }
        assert!(lookup.calls.load(Ordering::SeqCst) >= 3);
        let err = client.request(get(&url)).await.unwrap_err();
        assert!(refused_by_guard(&err).is_some(), "{err:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            seen.load(Ordering::SeqCst),
            0,
            "connected to loopback through a rebinding name"
        );

        // control: the listener does count a connection made to it
        let plain: Client<HttpConnector, Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let _ = plain
            .request(get(&format!("http://127.0.0.1:{port}/")))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    // Pins that private IP literals (v4, v6, mapped) are refused without a lookup and without a connection.
    #[tokio::test]
    async fn private_literals_are_refused() {
        let (port, seen) = counting_listener().await;
        let lookup = Arc::new(Rebinding {
            calls: AtomicUsize::new(0),
        });
        let client = guarded_client(lookup.clone());
        for host in ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"] {
            let err = client
                .request(get(&format!("http://{host}:{port}/")))
                .await
                .unwrap_err();
            assert!(refused_by_guard(&err).is_some(), "{host}: {err:?}");
        }
        assert_eq!(lookup.calls.load(Ordering::SeqCst), 0);
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    // Pins that a mixed answer keeps only its public addresses (they are the only ones dialled).
    #[tokio::test]
    async fn mixed_answers_keep_public_addresses_only() {
        struct Mixed;
        impl Lookup for Mixed {
            fn lookup(&self, _host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
                Box::pin(async {
                    Ok(vec![
                        "127.0.0.1".parse().unwrap(),
                        "203.0.113.7".parse().unwrap(),
                        "10.0.0.1".parse().unwrap(),
                    ])
                })
            }
        }
        let mut resolver = PublicOnlyResolver::new(Arc::new(Mixed));
        let addrs: Vec<SocketAddr> =
            tower_service::Service::call(&mut resolver, "cdn.test".parse().unwrap())
                .await
                .unwrap()
                .collect();
        assert_eq!(addrs, vec!["203.0.113.7:0".parse().unwrap()]);
    }
}
