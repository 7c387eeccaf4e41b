//! Connections as a resource: an idle h2 connection (preface sent, PINGs answered, no stream) is closed after
//! `idle_timeout`; one source address past `max_connections_per_ip` gets its extra connections closed while
//! another loopback address is still served; the admin `/readyz` answers while the https listener is at
//! `max_connections`; heads over 64 KiB are 431 and long URIs 414. Raw bytes over real TLS, loopback only.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorgate_e2e::{metric, route, runtime, RawRequest, Stage, TestCa};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the gateway's https port from `source` (a loopback address), ALPN `alpn`.
async fn tls_from(ca: &TestCa, source: &str, port: u16, alpn: &[u8]) -> std::io::Result<Tls> {
    let mut cfg = ca.client_config().unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    let name = ServerName::try_from("docker.test".to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// Sends `bytes` and reads until the server closes or `wait` runs out: (what came back, closed?).
async fn exchange(tls: &mut Tls, bytes: &[u8], wait: Duration) -> (String, bool) {
    let _ = tls.write_all(bytes).await;
    let _ = tls.flush().await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let closed = loop {
        match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// One GET over HTTP/1.1 from `source`; the status line, if any answer came.
async fn get_from(s: &Stage, source: &str, path: &str) -> Option<String> {
    let mut tls = tls_from(&s.ca, source, s.ports.https, b"http/1.1")
        .await
        .ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.authority("docker.test")
    );
    let (text, _) = exchange(&mut tls, req.as_bytes(), Duration::from_secs(10)).await;
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1.1"))
        .map(str::to_string)
}

/// A loopback "upstream" that counts connections and never answers.
fn counting_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for s in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            kept.push(s);
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

// An h2 client that sends only the preface and SETTINGS, acknowledges the server's SETTINGS and answers every
// PING, but never opens a stream, is closed after idle_timeout (2 s here) — not kept forever by its PING answers.
#[test]
fn idle_h2_connection_is_closed_after_idle_timeout() {
    let s = Stage::new("conn-idle-h2");
    let (up, _) = counting_upstream();
    let _gw = s.gateway_with("idle_timeout = \"2s\"", &route("docker.test", &up, ""));
    let (elapsed, pings) = runtime().block_on(async {
        let mut tls = tls_from(&s.ca, "127.0.0.1", s.ports.https, b"h2")
            .await
            .unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        tls.flush().await.unwrap();
        let started = Instant::now();
        let mut pings = 0;
        loop {
            let mut head = [0u8; 9];
            let read =
                tokio::time::timeout(Duration::from_secs(20), tls.read_exact(&mut head)).await;
            match read {
                Err(_) => panic!("still open after {:?}", started.elapsed()),
                Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                break;
            }
            let (kind, flags) = (head[3], head[4]);
            let reply = match (kind, flags & 1) {
                (4, 0) => Some(vec![0, 0, 0, 4, 1, 0, 0, 0, 0]),
                (6, 0) => {
                    pings += 1;
                    let mut r = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    r.extend_from_slice(&payload);
                    Some(r)
                }
                _ => None,
            };
            if let Some(r) = reply {
                if tls.write_all(&r).await.is_err() {
                    break;
                }
                let _ = tls.flush().await;
            }
        }
        (started.elapsed(), pings)
    });
    println!("idle h2 connection closed after {elapsed:?} ({pings} PINGs answered)");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(12),
        "closed late: {elapsed:?}"
    );
}

// One address may hold max_connections_per_ip (3) connections: the fourth is closed right after accept and
// counted, while 127.0.0.2 is still served; once one of the three closes, 127.0.0.1 is served again.
#[test]
fn connections_past_the_per_ip_cap_are_closed_other_addresses_served() {
    let s = Stage::new("conn-per-ip");
    let (up, _) = counting_upstream();
    let _gw = s.gateway_with("max_connections_per_ip = 3", &route("docker.test", &up, ""));
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                tls_from(&s.ca, "127.0.0.1", s.ports.https, b"http/1.1")
                    .await
                    .unwrap(),
            );
        }
        let fourth = tls_from(&s.ca, "127.0.0.1", s.ports.https, b"http/1.1").await;
        assert!(
            fourth.is_err(),
            "a fourth connection from 127.0.0.1 was served"
        );
        let other = get_from(&s, "127.0.0.2", "/healthz-not-routed").await;
        assert!(other.is_some(), "127.0.0.2 was not served");
        held.pop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            get_from(&s, "127.0.0.1", "/v2/").await.is_some(),
            "a freed place was not reusable"
        );
    });
    let text = s.metrics();
    assert!(
        metric(
            &text,
            "mirrorgate_connections_refused_total",
            &["listener=\"https\"", "reason=\"per_ip\""]
        ) >= 1.0,
        "refusal not counted"
    );
}

// The https listener at max_connections (4): new connections are closed, and the admin listener still answers
// /readyz 200 and /metrics (it is outside the cap).
#[test]
fn admin_answers_while_https_is_at_its_cap() {
    let s = Stage::new("conn-global");
    let (up, _) = counting_upstream();
    let _gw = s.gateway_with("max_connections = 4", &route("docker.test", &up, ""));
    let held = runtime().block_on(async {
        let mut held = Vec::new();
        for i in 0..4 {
            let source = format!("127.0.0.{}", i + 1);
            held.push(
                tls_from(&s.ca, &source, s.ports.https, b"http/1.1")
                    .await
                    .unwrap(),
            );
        }
        assert!(
            get_from(&s, "127.0.0.9", "/v2/").await.is_none(),
            "a connection past max_connections was served"
        );
        held
    });
    let admin = s.ports.admin;
    let ready = s.send(&RawRequest::plain(
        admin,
        &format!("127.0.0.1:{admin}"),
        "/readyz",
    ));
    assert_eq!(ready.status, 200, "{}", ready.text());
    drop(held);
    let text = s.metrics();
    assert!(
        metric(
            &text,
            "mirrorgate_connections_refused_total",
            &["reason=\"global\""]
        ) >= 1.0
    );
}

// Request heads are capped at 64 KiB: a 70 KiB header is 431, a 40 KiB URI gets its precise 414, a 30 KiB
// header still passes the head check (it reaches routing).
#[test]
fn heads_over_64_kib_are_431_long_uris_414() {
    let s = Stage::new("conn-heads");
    let (up, _) = counting_upstream();
    let _gw = s.gateway_with("upstream_timeout = \"1s\"", &route("docker.test", &up, ""));
    let host = s.authority("docker.test");
    let send = |head: String| {
        runtime().block_on(async {
            let mut tls = tls_from(&s.ca, "127.0.0.1", s.ports.https, b"http/1.1")
                .await
                .unwrap();
            exchange(&mut tls, head.as_bytes(), Duration::from_secs(10))
                .await
                .0
        })
    };
    let big = send(format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    ));
    assert!(big.starts_with("HTTP/1.1 431"), "70 KiB header: {big:.80}");
    let long = send(format!(
        "GET /v2/x/manifests/{} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        "a".repeat(40 * 1024)
    ));
    assert!(long.starts_with("HTTP/1.1 414"), "40 KiB URI: {long:.80}");
    let fits = send(format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(30 * 1024)
    ));
    assert!(
        !fits.starts_with("HTTP/1.1 431") && fits.starts_with("HTTP/1.1 "),
        "30 KiB header: {fits:.80}"
    );
}

// Rule (issue: slow readers): a client that reads a large blob slowly costs the gateway a few buffers, not the
// blob: 200 HTTP/1.1 clients reading a 64 MiB blob at about 1 KiB/s keep the gateway's RSS under 40 MiB above
// its idle figure (the kernel's socket buffers hold what the client has not read yet, not the process). The
// figure is printed for the README.
#[test]
fn slow_readers_cost_a_bounded_amount_of_memory() {
    const READERS: usize = 200;
    let s = Stage::new("conn-slow-readers");
    let upstream = mirrorgate_e2e::Registry::open(s.t.path(), "upstream").unwrap();
    let image = mirrorgate_e2e::OciImage::write_layout(
        &s.t.sub("image").unwrap(),
        "big",
        "latest",
        64 << 20,
    )
    .unwrap();
    let pushed = mirrorgate_e2e::push(&image, &upstream, "big/blob:latest", None).unwrap();
    let blob = pushed.layer_digests[0].clone();
    let gw = s.gateway(&route("docker.test", &upstream.url(), ""));
    // warm up: one full pull, so pools and allocator arenas exist before the idle figure is taken
    let one = s.send(&s.get("docker.test", &format!("/v2/big/blob/blobs/{blob}")));
    assert_eq!(one.status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let idle = gw.rss_kib().unwrap();

    let cfg = {
        let mut c = s.ca.client_config().unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let (cfg, port, host) = (cfg.clone(), s.ports.https, s.authority("docker.test"));
            let (stop, started, blob) = (stop.clone(), started.clone(), blob.clone());
            runtime().spawn(async move {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                let name = ServerName::try_from("docker.test".to_string()).ok()?;
                let mut tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .ok()?;
                let head = format!(
                    "GET /v2/big/blob/blobs/{blob} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                );
                tls.write_all(head.as_bytes()).await.ok()?;
                let mut buf = vec![0u8; 1024];
                let mut got = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let n = tls.read(&mut buf).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    if got == 0 {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                    got += n;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Some(got)
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::SeqCst) < READERS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        started.load(Ordering::SeqCst),
        READERS,
        "not every reader got bytes"
    );
    // let every pipe fill up: upstream connection, gateway buffers, socket buffers
    std::thread::sleep(Duration::from_secs(8));
    let loaded = gw.rss_kib().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = runtime().block_on(t);
    }
    let above = loaded.saturating_sub(idle);
    println!(
        "slow readers: {READERS} readers, RSS idle {idle} KiB, loaded {loaded} KiB, {above} KiB above idle ({} KiB each)",
        above / READERS as u64
    );
    assert!(
        above < 40 * 1024,
        "{READERS} slow readers cost {above} KiB above idle ({idle} → {loaded})"
    );
}
