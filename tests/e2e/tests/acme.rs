//! Certificates from ACME, end to end: a real `mirrorgate run` configured with `[tls.acme]` against a real
//! pebble gets a certificate for every route host (TLS-ALPN-01 and HTTP-01), stores it privately, serves it
//! again after a restart without the CA, renews it while connections stay open, and keeps serving when the
//! CA is gone. Every check uses a client that trusts only pebble's issuing root, so it can only succeed on
//! the certificate ACME delivered, never on the gateway's self-signed fallback.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use mirrorgate_e2e::{
    require_hosts, sha256, Gateway, Pebble, Ports, RootClient, Served, TestDir, GENEROUS_LIMITS,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The route hosts; one ACME certificate must cover both.
const HOSTS: [&str; 2] = ["docker.test", "gcr.test"];
/// How long the first issuance may take (pebble without validation sleeps is fast; this also leaves room
/// for one retry after a failed attempt).
const ISSUE_DEADLINE: Duration = Duration::from_secs(60);
/// What the gateway logs when an ACME attempt fails and it keeps the current certificate.
const FAILED_ATTEMPT: &str = "ACME attempt failed";
/// `[tls] storage`, relative to the config file's folder.
const STORAGE: &str = "certs";

/// A scenario's parts: scratch dir, the gateway's ports, and a pebble validating against them.
struct Stage {
    t: TestDir,
    ports: Ports,
    pebble: Pebble,
    client: RootClient,
}

impl Stage {
    fn new(name: &str, validity: Option<Duration>) -> Self {
        require_hosts();
        let t = TestDir::new(name).unwrap();
        let ports = Ports::free();
        let pebble =
            Pebble::start(&t.sub("pebble").unwrap(), ports.http, ports.https, validity).unwrap();
        let client = pebble.client().unwrap();
        Self {
            t,
            ports,
            pebble,
            client,
        }
    }

    /// The config contract: listeners, ACME with `challenge`, generous anonymous limits (not the subject
    /// here), and anonymous routes for both hosts whose `/v2/` ping the gateway answers itself.
    fn config(&self, challenge: &str) -> String {
        let mut toml = format!(
            "{server}\n{tls}\n{GENEROUS_LIMITS}\n",
            server = self.ports.server_toml(),
            tls = self.pebble.tls_toml(STORAGE, challenge),
        );
        for host in HOSTS {
            toml.push_str(&format!(
                "[[route]]\nhost = {host:?}\nupstream = \"http://127.0.0.1:9\"\nanonymous = true\n\n"
            ));
        }
        toml
    }

    fn gateway(&self, challenge: &str) -> Gateway {
        Gateway::start(self.t.path(), &self.config(challenge)).unwrap()
    }

    /// Waits until `host` is served with a certificate chaining to pebble's root.
    fn wait_issued(&self, gw: &Gateway, host: &str) -> Served {
        match self
            .client
            .wait_trusted(self.ports.https, host, ISSUE_DEADLINE)
        {
            Ok(s) => s,
            Err(e) => panic!(
                "{e:#}\n--- gateway log ---\n{}\n--- pebble log ---\n{}",
                gw.log(),
                self.pebble.log()
            ),
        }
    }

    /// A `GET /v2/` on a fresh trusted connection: the certificate is not only presented but usable.
    fn ping(&self, host: &str) -> u16 {
        let mut conn = self
            .client
            .keep_open(self.ports.https, host, false)
            .unwrap();
        conn.get("/v2/").unwrap()
    }
}

/// The `.pem` under `storage` whose first certificate is `leaf`, with its `.key`'s mode.
fn stored_pair(storage: &Path, leaf: &Served) -> (std::path::PathBuf, u32, u32) {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(storage).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "pem") {
            continue;
        }
        let pem = std::fs::read(&path).unwrap();
        let Some(Ok(first)) = CertificateDer::pem_slice_iter(&pem).next() else {
            continue;
        };
        let fp = sha256(first.as_ref());
        if fp == leaf.leaf {
            let key = path.with_extension("key");
            let key_mode = std::fs::metadata(&key)
                .unwrap_or_else(|e| panic!("{} next to {}: {e}", key.display(), path.display()))
                .permissions()
                .mode()
                & 0o777;
            let pem_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            return (path, pem_mode, key_mode);
        }
        seen.push(path.display().to_string());
    }
    panic!(
        "no .pem under {} holds the served leaf {}; saw {seen:?}",
        storage.display(),
        leaf.leaf
    );
}

/// Issuance with `challenge`: both hosts served with one trusted certificate (leaf + intermediate), the pair
/// stored with a private key file, and requests work over it.
fn issues_for_every_host(name: &str, challenge: &str) {
    let s = Stage::new(name, None);
    let mut gw = s.gateway(challenge);

    let first = s.wait_issued(&gw, HOSTS[0]);
    assert!(
        first.chain_len >= 2,
        "no intermediate in the served chain: {first:?}"
    );
    let second = s.client.handshake(s.ports.https, HOSTS[1]).unwrap();
    assert_eq!(
        first, second,
        "one certificate should cover every route host"
    );
    for host in HOSTS {
        assert_eq!(s.ping(host), 200, "GET /v2/ on {host}");
    }

    let (pem, pem_mode, key_mode) = stored_pair(&s.t.path().join(STORAGE), &first);
    assert_eq!(
        key_mode,
        0o600,
        "the key next to {} is mode {key_mode:o}",
        pem.display()
    );
    assert_eq!(
        pem_mode & 0o022,
        0,
        "{} is writable by others: {pem_mode:o}",
        pem.display()
    );
    gw.stop().unwrap();
}

// TLS-ALPN-01: the gateway answers the validator on its own https port and swaps the certificate in live.
#[test]
fn tls_alpn_01_issues_a_trusted_certificate_for_every_route() {
    issues_for_every_host("acme-alpn", "tls-alpn-01");
}

// HTTP-01: the validator's token fetch is answered on the plain http listener.
#[test]
fn http_01_issues_a_trusted_certificate_for_every_route() {
    issues_for_every_host("acme-http", "http-01");
}

// A stored certificate is served from the first handshake after a restart, without asking the CA (which
// is gone).
#[test]
fn restart_serves_the_stored_certificate_at_once() {
    let mut s = Stage::new("acme-restart", None);
    let mut gw = s.gateway("tls-alpn-01");
    let issued = s.wait_issued(&gw, HOSTS[0]);
    gw.stop().unwrap();
    s.pebble.stop();

    let mut gw = s.gateway("tls-alpn-01");
    for host in HOSTS {
        let served = s
            .client
            .handshake(s.ports.https, host)
            .unwrap_or_else(|e| panic!("{host} right after restart: {e:#}\n{}", gw.log()));
        assert_eq!(
            served, issued,
            "{host} after restart is not the stored certificate"
        );
    }
    assert_eq!(s.ping(HOSTS[1]), 200);
    gw.stop().unwrap();
}

// Renewal swaps the certificate for new connections while open h2 and HTTP/1.1 connections keep working:
// no request fails, no handshake fails, and new handshakes see a new certificate at least once.
#[test]
fn renewal_swaps_live_without_breaking_open_connections() {
    let validity = Duration::from_secs(30);
    let s = Stage::new("acme-renew", Some(validity));
    let mut gw = s.gateway("tls-alpn-01");
    let first = s.wait_issued(&gw, HOSTS[0]);

    let mut h2 = s.client.keep_open(s.ports.https, HOSTS[0], true).unwrap();
    let mut h1 = s.client.keep_open(s.ports.https, HOSTS[1], false).unwrap();
    let mut leaves = BTreeSet::from([first.leaf.clone()]);
    let mut requests = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        for (name, conn) in [("h2", &mut h2), ("http/1.1", &mut h1)] {
            let status = conn.get("/v2/").unwrap_or_else(|e| {
                panic!(
                    "{name} request {requests} failed after {:?}: {e:#}\n{}",
                    start.elapsed(),
                    gw.log()
                )
            });
            assert_eq!(status, 200, "{name} request {requests}");
        }
        requests += 1;
        for host in HOSTS {
            let served = s.client.handshake(s.ports.https, host).unwrap_or_else(|e| {
                panic!(
                    "new connection to {host} after {:?}: {e:#}\n{}",
                    start.elapsed(),
                    gw.log()
                )
            });
            leaves.insert(served.leaf);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, conn) in [("h2", &h2), ("http/1.1", &h1)] {
        assert_eq!(
            conn.served(),
            &first,
            "the {name} connection was opened on the first certificate"
        );
    }
    assert!(
        leaves.len() >= 2,
        "no renewal seen in 40 s with a {validity:?} certificate ({requests} rounds); gateway log:\n{}",
        gw.log()
    );
    gw.stop().unwrap();
}

// With the CA gone, a due renewal fails and the gateway keeps running and serving the certificate it has.
#[test]
fn ca_outage_keeps_the_current_certificate() {
    let validity = Duration::from_secs(24);
    let mut s = Stage::new("acme-outage", Some(validity));
    let mut gw = s.gateway("tls-alpn-01");
    let issued = s.wait_issued(&gw, HOSTS[0]);
    let issued_at = Instant::now();
    let failures_before = gw.log().matches(FAILED_ATTEMPT).count();
    s.pebble.stop();

    // Renewal is due at 2/3 of the lifetime; wait past it so an attempt against the dead CA has happened.
    let due = validity.mul_f64(2.0 / 3.0) + Duration::from_secs(3);
    let deadline = issued_at + due + Duration::from_secs(10);
    while gw.log().matches(FAILED_ATTEMPT).count() == failures_before {
        assert!(
            Instant::now() < deadline,
            "no failed renewal attempt logged {due:?} after issuance; gateway log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for host in HOSTS {
        let served = s.client.handshake(s.ports.https, host).unwrap();
        assert_eq!(served, issued, "{host} during the outage");
    }
    assert_eq!(s.ping(HOSTS[0]), 200);
    gw.stop().unwrap();
}
