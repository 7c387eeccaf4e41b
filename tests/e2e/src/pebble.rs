//! pebble, Let's Encrypt's test ACME server, with pebble-challtestsrv as its DNS, plus a TLS client that
//! trusts only pebble's issuing root. Together they show that the gateway's ACME certificates are real: a
//! client that does not trust the gateway's self-signed fallback succeeds only once ACME has delivered.
//!
//! pebble makes new roots at every start, so the root is fetched from its management port; its own API is
//! served with a throw-away certificate made here, which the gateway trusts through `directory_ca`. The
//! validator dials the ports given at start (`httpPort`/`tlsPort`), which are the gateway's listeners, and
//! resolves every name to 127.0.0.1 through challtestsrv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

use crate::env::{require, runtime};
use crate::proc::{free_port, wait_for_port, Proc};

/// How long pebble may take to serve its root after start.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long one handshake or request of [`RootClient`] may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running pebble and its DNS; both killed on drop (their logs printed if the test panicked).
pub struct Pebble {
    pebble: Option<Proc>,
    dns: Option<Proc>,
    acme_port: u16,
    listener_ca: PathBuf,
    root_pem: String,
}

impl Pebble {
    /// Starts challtestsrv and pebble under `dir`; the validator dials `http_port` for HTTP-01 and `tls_port`
    /// for TLS-ALPN-01. `validity` shortens the certificates' lifetime (pebble's `certificateValidityPeriod`,
    /// whole seconds) so renewal can be watched. Panics when a binary is missing.
    pub fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> anyhow::Result<Self> {
        require("pebble", "pebble");
        require("pebble-challtestsrv", "pebble");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (dns_port, dns_mgmt, acme_port, mgmt_port) =
            (free_port(), free_port(), free_port(), free_port());

        let key = rcgen::KeyPair::generate().context("pebble listener key")?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .context("pebble listener params")?
            .self_signed(&key)
            .context("pebble listener certificate")?;
        let listener_ca = dir.join("pebble-listener.pem");
        let listener_key = dir.join("pebble-listener.key");
        std::fs::write(&listener_ca, cert.pem()).context("writing pebble-listener.pem")?;
        std::fs::write(&listener_key, key.serialize_pem())
            .context("writing pebble-listener.key")?;

        let mut settings = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": listener_ca,
            "privateKey": listener_key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        });
        if let Some(v) = validity {
            settings["certificateValidityPeriod"] = serde_json::json!(v.as_secs().max(1));
        }
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({ "pebble": settings }).to_string(),
        )
        .context("writing pebble.json")?;

        // Every listener challtestsrv opens by default is on a fixed port; only DNS is needed, so the
        // others are disabled and management moves to a free port (scenarios run in parallel).
        let mut dns_cmd = Command::new("pebble-challtestsrv");
        dns_cmd
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")]);
        let dns = Proc::spawn("pebble-challtestsrv", dns_cmd, dir)?;
        wait_for_port(dns_mgmt, START_DEADLINE).context("pebble-challtestsrv did not start")?;

        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1");
        let mut pebble = Proc::spawn("pebble", cmd, dir)?;

        let trust = RootClient::from_pem(&cert.pem())?;
        let start = Instant::now();
        let root_pem = loop {
            pebble.ensure_running()?;
            match trust.get_pem(mgmt_port, "/roots/0") {
                Ok(pem) => break pem,
                Err(e) if start.elapsed() > START_DEADLINE => {
                    bail!("pebble did not serve /roots/0 within {START_DEADLINE:?}: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        wait_for_port(acme_port, START_DEADLINE).context("pebble's ACME port")?;
        Ok(Self {
            pebble: Some(pebble),
            dns: Some(dns),
            acme_port,
            listener_ca,
            root_pem,
        })
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The certificate pebble's own API uses, for the gateway's `directory_ca`.
    pub fn listener_ca(&self) -> &Path {
        &self.listener_ca
    }

    /// pebble's issuing root (PEM), the only thing a client needs to trust its certificates.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// A client trusting only [`Pebble::root_pem`].
    pub fn client(&self) -> anyhow::Result<RootClient> {
        RootClient::from_pem(&self.root_pem)
    }

    /// `[tls]` with `storage` and `[tls.acme]` pointing at this pebble with `challenge`
    /// (`"tls-alpn-01"` or `"http-01"`), in the documented config contract.
    pub fn tls_toml(&self, storage: &str, challenge: &str) -> String {
        format!(
            "[tls]\nstorage = {storage:?}\n\n[tls.acme]\ndirectory = {dir:?}\ncontact = [\"mailto:ops@example.test\"]\n\
             challenge = {challenge:?}\ndirectory_ca = {ca:?}\n",
            dir = self.directory(),
            ca = self.listener_ca.display().to_string(),
        )
    }

    /// pebble's log so far.
    pub fn log(&self) -> String {
        self.pebble.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// Kills pebble and its DNS now (the CA goes away, as in an outage).
    pub fn stop(&mut self) {
        for p in [self.pebble.as_mut(), self.dns.as_mut()]
            .into_iter()
            .flatten()
        {
            p.kill();
        }
    }
}

/// What a server presented in one handshake that verified against the client's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// `sha256:<hex>` of the leaf's DER: changes with every issued certificate.
    pub leaf: String,
    /// Certificates sent (leaf + intermediates).
    pub chain_len: usize,
}

/// A TLS client that trusts exactly one root.
#[derive(Clone)]
pub struct RootClient {
    tls: rustls::ClientConfig,
}

impl RootClient {
    /// Trusts every certificate in `pem` (normally one root).
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.context("parsing the root PEM")?)
                .context("adding the root")?;
        }
        if roots.is_empty() {
            bail!("no certificate in the root PEM");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { tls })
    }

    /// One verified handshake with `127.0.0.1:port` for `sni`; fails when the served chain does not lead to
    /// the root or does not name `sni`.
    pub fn handshake(&self, port: u16, sni: &str) -> anyhow::Result<Served> {
        runtime().block_on(async {
            let tls = self.connect(port, sni, b"http/1.1").await?;
            served(&tls)
        })
    }

    /// Repeats [`RootClient::handshake`] until it succeeds (the gateway swapped its self-signed certificate
    /// for a trusted one), failing after `deadline` with the last error.
    pub fn wait_trusted(&self, port: u16, sni: &str, deadline: Duration) -> anyhow::Result<Served> {
        let start = Instant::now();
        loop {
            match self.handshake(port, sni) {
                Ok(s) => return Ok(s),
                Err(e) if start.elapsed() > deadline => {
                    bail!("{sni} on port {port} not trusted within {deadline:?}; last: {e:#}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Opens a connection that stays open for [`KeptConnection::get`]: h2 or HTTP/1.1 by ALPN.
    pub fn keep_open(&self, port: u16, host: &str, h2: bool) -> anyhow::Result<KeptConnection> {
        runtime().block_on(async {
            let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
            let tls = self.connect(port, host, alpn).await?;
            let served = served(&tls)?;
            if tls.get_ref().1.alpn_protocol() != Some(alpn) {
                bail!(
                    "the server did not choose {}",
                    String::from_utf8_lossy(alpn)
                );
            }
            let sender = if h2 {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .context("h2 handshake")?;
                tokio::spawn(conn);
                Sender::H2(sender)
            } else {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .context("http/1.1 handshake")?;
                tokio::spawn(conn);
                Sender::H1(sender)
            };
            Ok(KeptConnection {
                sender,
                authority: format!("{host}:{port}"),
                served,
            })
        })
    }

    /// `GET https://127.0.0.1:<port><path>` with SNI and Host `127.0.0.1`, expecting 200; returns the body.
    fn get_pem(&self, port: u16, path: &str) -> anyhow::Result<String> {
        runtime().block_on(async {
            let tls = self.connect(port, "127.0.0.1", b"http/1.1").await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .context("http/1.1 handshake")?;
            tokio::spawn(conn);
            let req = http::Request::get(path)
                .header(http::header::HOST, format!("127.0.0.1:{port}"))
                .body(Empty::<Bytes>::new())
                .context("building the request")?;
            let resp = tokio::time::timeout(IO_TIMEOUT, sender.send_request(req))
                .await
                .context("timed out")?
                .context("sending the request")?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .context("reading the body")?;
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            if status != http::StatusCode::OK {
                bail!("{path}: {status} {text}");
            }
            Ok(text)
        })
    }

    async fn connect(
        &self,
        port: u16,
        sni: &str,
        alpn: &[u8],
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut cfg = self.tls.clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let name = ServerName::try_from(sni.to_string()).context("bad SNI")?;
        tokio::time::timeout(IO_TIMEOUT, async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with SNI {sni}"))
        })
        .await
        .with_context(|| format!("TLS handshake with SNI {sni} timed out"))?
    }
}

fn served(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> anyhow::Result<Served> {
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("no peer certificates")?;
    let leaf = chain.first().context("empty peer chain")?;
    Ok(Served {
        leaf: format!("sha256:{:x}", Sha256::digest(leaf.as_ref())),
        chain_len: chain.len(),
    })
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// One TLS connection kept open across requests; a request fails if the connection was closed, so a
/// success proves the same connection is still alive.
pub struct KeptConnection {
    sender: Sender,
    authority: String,
    served: Served,
}

impl KeptConnection {
    /// What the server presented when this connection was opened.
    pub fn served(&self) -> &Served {
        &self.served
    }

    /// Sends `GET path` on this connection and returns the status (the body is read and dropped).
    pub fn get(&mut self, path: &str) -> anyhow::Result<u16> {
        let authority = self.authority.clone();
        let sender = &mut self.sender;
        runtime().block_on(async move {
            tokio::time::timeout(IO_TIMEOUT, async move {
                let resp = match sender {
                    Sender::H1(s) => {
                        s.ready().await.context("connection closed")?;
                        let req = http::Request::get(path)
                            .header(http::header::HOST, authority)
                            .body(Empty::new())
                            .context("building the request")?;
                        s.send_request(req).await.context("sending on http/1.1")?
                    }
                    Sender::H2(s) => {
                        s.ready().await.context("connection closed")?;
                        let req = http::Request::get(format!("https://{authority}{path}"))
                            .version(http::Version::HTTP_2)
                            .body(Empty::new())
                            .context("building the request")?;
                        s.send_request(req).await.context("sending on h2")?
                    }
                };
                let status = resp.status().as_u16();
                resp.into_body()
                    .collect()
                    .await
                    .context("reading the body")?;
                Ok(status)
            })
            .await
            .with_context(|| format!("GET {path} timed out"))?
        })
    }
}
