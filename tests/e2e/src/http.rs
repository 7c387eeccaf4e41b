//! Raw HTTP checks against the gateway with every knob a scenario needs to pin: the TLS SNI apart from the
//! `Host` header, the ALPN protocol (h2 or http/1.1) forced, or plain HTTP. Built on hyper's connection API
//! rather than a pooled client, so each check is exactly one fresh connection doing what the test says.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use sha2::{Digest, Sha256};

use crate::ca::TestCa;
use crate::env::runtime;

/// How long one raw check may take before it fails.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// What to send. Build with [`RawRequest::h1`], [`RawRequest::h2`] or [`RawRequest::plain`].
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: http::Method,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// TLS server name; `None` means plain HTTP.
    pub sni: Option<String>,
    /// `Host` header (HTTP/1.1) or `:authority` (h2), port included if wanted.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Force h2 by ALPN (else http/1.1).
    pub h2: bool,
    pub headers: Vec<(String, String)>,
    /// Accept any server certificate (only for checks about what happens with unknown names).
    pub insecure: bool,
    /// The loopback address to connect from (default: whatever the OS picks, 127.0.0.1), so a scenario can
    /// be two clients on two addresses.
    pub source: Option<std::net::Ipv4Addr>,
}

impl RawRequest {
    /// A GET over TLS with ALPN `http/1.1`; SNI and Host both `host` (change either field after).
    pub fn h1(port: u16, host: &str, path: &str) -> Self {
        Self {
            method: http::Method::GET,
            port,
            sni: Some(host.to_string()),
            host: host.to_string(),
            path: path.to_string(),
            h2: false,
            headers: Vec::new(),
            insecure: false,
            source: None,
        }
    }

    /// A GET over TLS with ALPN `h2`.
    pub fn h2(port: u16, host: &str, path: &str) -> Self {
        Self {
            h2: true,
            ..Self::h1(port, host, path)
        }
    }

    /// A GET over plain HTTP/1.1 with the given Host header.
    pub fn plain(port: u16, host: &str, path: &str) -> Self {
        Self {
            sni: None,
            ..Self::h1(port, host, path)
        }
    }

    pub fn with_sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.to_string());
        self
    }

    /// The same request with ALPN `h2` forced.
    pub fn with_h2(mut self) -> Self {
        self.h2 = true;
        self
    }

    pub fn with_host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The same request sent from `source` (a 127.0.0.0/8 address: only loopback, ever).
    pub fn from_source(mut self, source: std::net::Ipv4Addr) -> Self {
        assert!(source.is_loopback(), "{source} is not a loopback address");
        self.source = Some(source);
        self
    }

    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }
}

/// What came back.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", self.text()))
    }

    /// The `code`s of an OCI error body (`{"errors":[{"code":…}]}`); fails if the body is not one.
    pub fn oci_error_codes(&self) -> anyhow::Result<Vec<String>> {
        let v = self.json()?;
        let errors = v["errors"]
            .as_array()
            .with_context(|| format!("no errors array in {v}"))?;
        Ok(errors
            .iter()
            .filter_map(|e| e["code"].as_str().map(str::to_string))
            .collect())
    }
}

/// Sends raw requests trusting one test CA.
#[derive(Clone)]
pub struct HttpCheck {
    tls: rustls::ClientConfig,
}

impl HttpCheck {
    pub fn new(ca: &TestCa) -> anyhow::Result<Self> {
        Ok(Self {
            tls: ca.client_config()?,
        })
    }

    /// Sends one request on a fresh connection and reads the whole body.
    pub fn send(&self, req: &RawRequest) -> anyhow::Result<RawResponse> {
        runtime().block_on(async {
            tokio::time::timeout(CHECK_TIMEOUT, async {
                let (mut resp, version) = self.open(req).await?;
                let body = resp
                    .body_mut()
                    .collect()
                    .await
                    .context("reading the body")?
                    .to_bytes();
                Ok(RawResponse {
                    status: resp.status().as_u16(),
                    version,
                    headers: resp.headers().clone(),
                    body,
                })
            })
            .await
            .with_context(|| format!("{} {} timed out", req.method, req.path))?
        })
    }

    /// Downloads a body slowly: reads `first` bytes, runs `meanwhile` (e.g. SIGTERM the gateway), waits
    /// `pause`, then reads the rest. Returns the status, the byte count and the body's `sha256:` digest.
    pub fn download_with_pause(
        &self,
        req: &RawRequest,
        first: u64,
        pause: Duration,
        meanwhile: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<(u16, u64, String)> {
        runtime().block_on(async {
            let (mut resp, _) = self.open(req).await?;
            let status = resp.status().as_u16();
            let mut hash = Sha256::new();
            let mut n = 0u64;
            let mut meanwhile = Some(meanwhile);
            while let Some(frame) = resp.body_mut().frame().await {
                let frame = frame.with_context(|| format!("body cut after {n} bytes"))?;
                if let Ok(data) = frame.into_data() {
                    hash.update(&data);
                    n += data.len() as u64;
                }
                if n >= first {
                    if let Some(f) = meanwhile.take() {
                        f()?;
                        tokio::time::sleep(pause).await;
                    }
                }
            }
            Ok((status, n, format!("sha256:{:x}", hash.finalize())))
        })
    }

    async fn open(
        &self,
        req: &RawRequest,
    ) -> anyhow::Result<(http::Response<hyper::body::Incoming>, http::Version)> {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], req.port));
        let tcp = match req.source {
            None => tokio::net::TcpStream::connect(target).await,
            Some(source) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((source, 0).into())?;
                socket.connect(target).await
            }
        }
        .with_context(|| format!("connecting to {target} from {:?}", req.source))?;
        let Some(sni) = &req.sni else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .context("http/1.1 handshake")?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(build(req, false)?)
                .await
                .context("sending the request")?;
            return Ok((resp, http::Version::HTTP_11));
        };
        let mut cfg = self.tls.clone();
        if req.insecure {
            cfg.dangerous()
                .set_certificate_verifier(Arc::new(AcceptAnyCert));
        }
        cfg.alpn_protocols = vec![if req.h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = ServerName::try_from(sni.clone()).context("bad SNI")?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with SNI {sni}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if req.h2 {
            if alpn.as_deref() != Some(b"h2") {
                bail!(
                    "server did not choose h2 by ALPN (got {:?})",
                    alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
                );
            }
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .context("h2 handshake")?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(build(req, true)?)
                .await
                .context("sending the request")?;
            Ok((resp, http::Version::HTTP_2))
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .context("http/1.1 handshake")?;
            tokio::spawn(conn);
            let resp = sender
                .send_request(build(req, false)?)
                .await
                .context("sending the request")?;
            Ok((resp, http::Version::HTTP_11))
        }
    }
}

fn build(req: &RawRequest, h2: bool) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    let mut b = http::Request::builder().method(req.method.clone());
    if h2 {
        // h2 carries the host in :authority, taken from an absolute URI.
        b = b
            .uri(format!("https://{}{}", req.host, req.path))
            .version(http::Version::HTTP_2);
    } else {
        b = b
            .uri(req.path.as_str())
            .header(http::header::HOST, req.host.as_str());
    }
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Empty::new()).context("building the request")
}

/// Status of a plain `GET http://127.0.0.1:<port><path>` (used to wait for admin and registry ports).
pub(crate) fn plain_get_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let req = RawRequest::plain(port, &format!("127.0.0.1:{port}"), path);
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let resp = sender.send_request(build(&req, false)?).await?;
            Ok(resp.status().as_u16())
        })
        .await
        .context("timed out")?
    })
}

/// Trusts any certificate: for asserting what a server does with a name it has no certificate for.
#[derive(Debug)]
struct AcceptAnyCert;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls_pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
