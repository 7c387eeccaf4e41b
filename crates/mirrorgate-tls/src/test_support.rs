//! Helpers shared by this crate's tests: a loopback TLS echo server and a client that reports
//! which certificate it was served.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::resolver::CertResolver;
use crate::server::server_config;

/// Serves `resolver` on a loopback port, echoing whatever each connection sends.
pub(crate) async fn echo_server(resolver: Arc<CertResolver>) -> SocketAddr {
    echo_server_on("127.0.0.1:0".parse().unwrap(), resolver).await
}

/// Like [`echo_server`], on a chosen address.
pub(crate) async fn echo_server_on(addr: SocketAddr, resolver: Arc<CertResolver>) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config(resolver).unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a TLS connection to `addr` for `sni`, trusting only `roots`.
pub(crate) async fn connect(
    addr: SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented on `stream`.
pub(crate) fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Sends a line and expects it echoed: proves the connection still works.
pub(crate) async fn ping(stream: &mut TlsStream<TcpStream>) {
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// A loopback port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running pebble ACME server with its pebble-challtestsrv DNS, both killed on drop.
pub(crate) struct Pebble {
    _dns: tokio::process::Child,
    _pebble: tokio::process::Child,
    /// The ACME directory URL.
    pub directory: url::Url,
    /// PEM file of the certificate pebble's own HTTPS uses (for `directory_ca`).
    pub listener_ca: std::path::PathBuf,
    /// pebble's issuing root, as clients must trust it.
    pub root: CertificateDer<'static>,
    /// The ports pebble's validator dials for HTTP-01 and TLS-ALPN-01.
    pub http_port: u16,
    pub tls_port: u16,
}

impl Pebble {
    /// Starts challtestsrv and pebble on free loopback ports under `dir`. A missing binary
    /// panics with the package to install: these tests never skip silently.
    pub(crate) async fn start(dir: &std::path::Path) -> Pebble {
        for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install the Debian package `pebble` (apt-get install -y pebble)"
            );
        }
        let (dns_port, chall_mgmt, acme_port, mgmt_port, http_port, tls_port) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );

        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let listener_ca = dir.join("pebble-listener.pem");
        std::fs::write(&listener_ca, cert.pem()).unwrap();
        std::fs::write(dir.join("pebble-listener.key"), key.serialize_pem()).unwrap();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": listener_ca,
                "privateKey": dir.join("pebble-listener.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let dns = tokio::process::Command::new("/usr/bin/pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pebble = tokio::process::Command::new("/usr/bin/pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        let ca = CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap();
        let mut root_pem = None;
        for _ in 0..100 {
            if let Ok(body) = https_get(mgmt_port, "/roots/0", &ca).await {
                root_pem = Some(body);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let root_pem = root_pem.expect("pebble did not start (see pebble.log)");
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", acme_port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Pebble {
            _dns: dns,
            _pebble: pebble,
            directory: format!("https://127.0.0.1:{acme_port}/dir")
                .parse()
                .unwrap(),
            listener_ca,
            root,
            http_port,
            tls_port,
        }
    }
}

use rustls::pki_types::pem::PemObject;

/// A minimal HTTPS GET to 127.0.0.1 (HTTP/1.0, so the body is simply the rest of the stream).
async fn https_get(
    port: u16,
    path: &str,
    ca: &CertificateDer<'static>,
) -> Result<String, std::io::Error> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut store = RootCertStore::empty();
    store.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    // Go closes without close_notify sometimes; what was read is still complete for HTTP/1.0.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!("bad response: {response}"))),
    }
}

/// Answers HTTP-01 requests on `port` from `tokens` (404 for anything else).
pub(crate) async fn http01_responder(port: u16, tokens: crate::Http01Tokens) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let response = match tokens.respond(&path) {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
}
