//! Long-running behaviour: a bounded soak of mixed traffic that must not leak memory, file descriptors,
//! threads or connections, and a trace-level run whose log, metrics and `check` output must not contain a
//! single secret (docs: style.md "never logged").
//!
//! The soak lasts `MIRRORGATE_SOAK_SECS` seconds (default 60, what `tests/run` uses; run
//! `MIRRORGATE_SOAK_SECS=600 tests/run -- soak` for the long version). It prints the gateway's samples as a
//! table, so a slow leak shows even when it stays under the thresholds.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    metric, push, runtime, Gateway, OciImage, Pushed, RawRequest, RawResponse, Registry,
    RootClient, TestCa, TokenIssuer, TokenIssuerOptions,
};

const HOST: &str = "docker.test";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Soak length when `MIRRORGATE_SOAK_SECS` is unset.
const DEFAULT_SOAK_SECS: u64 = 60;
/// How often the gateway's process is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Client threads sending fresh-connection requests (plus one on kept-open h2/HTTP/1.1 connections).
const CLIENTS: usize = 4;
/// Descriptors allowed above the warmed-up baseline once the load is gone: idle pooled upstream connections
/// (up to one per concurrent client per endpoint) may legitimately stay open.
const FD_SLACK: usize = 2 * (CLIENTS + 1) + 6;
/// A wrong password at most this often: the per-address lockout (10 failures a minute) must not kick in.
const WRONG_PASSWORD_EVERY: Duration = Duration::from_secs(10);

/// The soak's users (bcrypt cost 5: the subject is leaks, not bcrypt's CPU).
const USERS: [(&str, &str); 2] = [("soak-a", "soak-pw-a"), ("soak-b", "soak-pw-b")];

fn soak_secs() -> u64 {
    std::env::var("MIRRORGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SOAK_SECS)
}

/// The shared stage without its generous `[limits]` (each scenario here writes its own), plus `[auth]` with
/// htpasswd and the token server in every config.
struct Stage {
    base: mirrorgate_e2e::Stage,
}

impl std::ops::Deref for Stage {
    type Target = mirrorgate_e2e::Stage;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Stage {
    fn new(name: &str) -> Self {
        Self {
            base: mirrorgate_e2e::Stage::new(name)
                .limits("")
                .accept(MT_MANIFEST),
        }
    }

    /// `[server]`, the static certificate, `[auth]` with htpasswd and the token server, then `rest`.
    fn config(&self, rest: &str) -> String {
        self.base.config(&format!(
            "[auth]\nhtpasswd = \"htpasswd\"\n\n\
             [auth.token]\nkey = \"token-key.pem\"\nissuer = \"mirrorgate\"\nservice = \"mirrorgate\"\nttl = \"5m\"\n\n{rest}"
        ))
    }

    /// A GET on docker.test asking for OCI manifests, with an optional `Authorization`.
    fn get(&self, path: &str, authorization: Option<&str>) -> RawRequest {
        let req = self.base.get(HOST, path);
        match authorization {
            Some(a) => req.with_header("authorization", a),
            None => req,
        }
    }

    /// A token from the gateway's `/token` for `scope`, with Basic credentials.
    fn token(&self, user: &str, password: &str, scope: &str) -> anyhow::Result<String> {
        let resp = self.http.send(&self.get(
            &format!("/token?service=mirrorgate&scope={scope}"),
            Some(&basic_auth(user, password)),
        ))?;
        anyhow::ensure!(resp.status == 200, "token: {} {}", resp.status, resp.text());
        resp.json()?["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no token in {}", resp.text()))
    }
}

fn repo_of(p: &Pushed) -> &str {
    p.reference.split_once(':').unwrap().0
}

/// One look at the gateway process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    threads: u64,
    requests: u64,
}

fn sample(gw: &Gateway, at: Duration, requests: u64) -> Sample {
    let pid = gw.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    Sample {
        at,
        rss_kib: gw.rss_kib().unwrap(),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count(),
        threads,
        requests,
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// What the clients saw: requests done, and every answer that was not the expected one.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
    wrong: Mutex<Vec<String>>,
    /// Failures of requests in flight while the backend cache died (see [`Tally::record_around_kill`]).
    interrupted: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: &str, expected: u16, got: anyhow::Result<RawResponse>) {
        self.done.fetch_add(1, Ordering::Relaxed);
        match got {
            Ok(resp) => {
                *self
                    .by_status
                    .lock()
                    .unwrap()
                    .entry(resp.status)
                    .or_default() += 1;
                if resp.status != expected {
                    self.wrong.lock().unwrap().push(format!(
                        "{what}: expected {expected}, got {} {}",
                        resp.status,
                        resp.text().chars().take(200).collect::<String>()
                    ));
                }
            }
            Err(e) => self
                .wrong
                .lock()
                .unwrap()
                .push(format!("{what}: transport error {e:#}")),
        }
    }

    /// Like [`Tally::record`], except that a failure of a request that was in flight while the backend cache
    /// was being killed is set aside as interrupted: a blob whose source dies mid-body must end in an error
    /// (never a short 200), and that error is the right answer. Anything that fails outside the kill is wrong.
    fn record_around_kill(
        &self,
        what: &str,
        expected: u16,
        got: anyhow::Result<RawResponse>,
        in_flight: (Instant, Instant),
        kill: &KillWindow,
    ) {
        match got {
            Err(e) if kill.overlaps(in_flight) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                self.interrupted
                    .lock()
                    .unwrap()
                    .push(format!("{what}: {e:#}"));
            }
            got => self.record(what, expected, got),
        }
    }
}

/// When the backend cache was being killed: from just before the SIGKILL until it was reaped.
#[derive(Default)]
struct KillWindow(Mutex<(Option<Instant>, Option<Instant>)>);

impl KillWindow {
    fn begin(&self) {
        self.0.lock().unwrap().0 = Some(Instant::now());
    }

    fn end(&self) {
        self.0.lock().unwrap().1 = Some(Instant::now());
    }

    /// Whether a request in flight from `sent` to `answered` overlapped the kill (still going counts).
    fn overlaps(&self, (sent, answered): (Instant, Instant)) -> bool {
        let (begin, end) = *self.0.lock().unwrap();
        begin.is_some_and(|b| b <= answered) && end.is_none_or(|e| sent <= e)
    }
}

// Mixed traffic (manifest and blob GETs with Basic and Bearer, HEADs, /v2/ pings, 404s, 401s, kept-open h2 and
// HTTP/1.1 connections) against auth + limits + two endpoints, one of which dies halfway: every answer is the
// expected one, RSS shows no growth trend (last-quarter median ≤ first-quarter median × 1.3 + 8 MiB), open
// descriptors return near the warmed-up baseline and `mirrorgate_connections_active` to 0 once clients close.
#[test]
fn soak_mixed_traffic_has_no_leaks() {
    let secs = soak_secs();
    let s = Stage::new("soak");
    let mut cache = Registry::open(s.t.path(), "cache").unwrap();
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "soak", "latest", 512 * 1024).unwrap();
    let pushed = push(&image, &cache, "library/soak:latest", None).unwrap();
    push(&image, &upstream, "library/soak:latest", None).unwrap();
    let blob_size = image.layers[0].size;
    let users: Vec<(&str, &str, u32)> = USERS.iter().map(|(u, p)| (*u, *p, 5)).collect();
    Htpasswd::create(&s.t.path().join("htpasswd"), &users).unwrap();
    let names: Vec<String> = USERS.iter().map(|(u, _)| format!("{u:?}")).collect();
    let rest = format!(
        "[[tenant]]\nname = \"soakers\"\nusers = [{users}]\nallow = [\"docker.test/library/*\"]\n\
         requests_per_second = 5000\nburst = 5000\nconcurrent_requests = 64\nbytes_per_second = \"1GiB\"\n\n\
         [limits]\nrequests_per_second = 5000\nburst = 5000\nbytes_per_second = \"1GiB\"\n\n\
         [[route]]\nhost = \"docker.test\"\nupstream = {up:?}\nendpoints = [{cache:?}]\nanonymous = false\n",
        users = names.join(", "),
        up = upstream.url(),
        cache = cache.url(),
    );
    let gw = Gateway::start(s.t.path(), &s.config(&rest)).unwrap();

    let repo = repo_of(&pushed).to_string();
    let manifest = format!("/v2/{repo}/manifests/latest");
    let missing = format!("/v2/{repo}/manifests/no-such-tag");
    let blob = format!("/v2/{repo}/blobs/{}", image.layer_digest());
    let scope = format!("repository:{repo}:pull");

    // Warm up every path once (credential cache, token key, upstream pools), then take the baseline.
    let tally = Tally::default();
    let basic = basic_auth(USERS[0].0, USERS[0].1);
    let token = s.token(USERS[1].0, USERS[1].1, &scope).unwrap();
    let bearer = format!("Bearer {token}");
    for (path, auth, expected) in [
        (manifest.as_str(), Some(basic.as_str()), 200),
        (blob.as_str(), Some(bearer.as_str()), 200),
        ("/v2/", Some(basic.as_str()), 200),
        (missing.as_str(), Some(basic.as_str()), 404),
        (manifest.as_str(), None, 401),
    ] {
        tally.record("warm-up", expected, s.http.send(&s.get(path, auth)));
    }
    assert!(
        tally.wrong.lock().unwrap().is_empty(),
        "warm-up: {:?}\n{}",
        tally.wrong.lock().unwrap(),
        gw.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let baseline = sample(&gw, Duration::ZERO, 0);

    let stop = AtomicBool::new(false);
    let kill = KillWindow::default();
    let soak = Duration::from_secs(secs);
    let mut samples = vec![baseline];
    let mut cache_killed_at = None;
    std::thread::scope(|scope_| {
        for c in 0..CLIENTS {
            let (s, tally, stop, kill) = (&s, &tally, &stop, &kill);
            let (manifest, missing, blob, scope) = (&manifest, &missing, &blob, &scope);
            scope_.spawn(move || {
                let (user, password) = USERS[c % USERS.len()];
                let basic = basic_auth(user, password);
                let mut bearer = format!("Bearer {}", s.token(user, password, scope).unwrap());
                let mut token_at = Instant::now();
                let mut wrong_at = Instant::now();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Fresh tokens now and then: `/token` is part of the mix, and a long soak outlives the TTL.
                    if token_at.elapsed() > Duration::from_secs(60) {
                        match s.token(user, password, scope) {
                            Ok(t) => bearer = format!("Bearer {t}"),
                            Err(e) => tally.record("token", 200, Err(e)),
                        }
                        token_at = Instant::now();
                    }
                    let (what, req, expected) = match i % 9 {
                        0 => ("manifest basic", s.get(manifest, Some(&basic)), 200),
                        1 => ("blob bearer", s.get(blob, Some(&bearer)), 200),
                        2 => ("ping basic", s.get("/v2/", Some(&basic)), 200),
                        3 => ("manifest bearer", s.get(manifest, Some(&bearer)), 200),
                        4 => ("missing tag", s.get(missing, Some(&basic)), 404),
                        5 => ("no credentials", s.get(manifest, None), 401),
                        6 => {
                            let mut r = s.get(blob, Some(&basic));
                            r.method = http::Method::HEAD;
                            ("blob HEAD", r, 200)
                        }
                        7 if c == 0 && wrong_at.elapsed() > WRONG_PASSWORD_EVERY => {
                            wrong_at = Instant::now();
                            let a = basic_auth(user, "not-the-password");
                            ("wrong password", s.get(manifest, Some(&a)), 401)
                        }
                        7 => ("forged bearer", s.get(manifest, Some("Bearer a.b.c")), 401),
                        _ => ("blob h2", s.get(blob, Some(&basic)).with_h2(), 200),
                    };
                    let sent = Instant::now();
                    let got = match s.http.send(&req) {
                        Ok(r)
                            if r.status == 200
                                && req.method == http::Method::GET
                                && what.starts_with("blob")
                                && r.body.len() as u64 != blob_size =>
                        {
                            Err(anyhow::anyhow!(
                                "short blob presented as a 200: {} of {blob_size} bytes",
                                r.body.len()
                            ))
                        }
                        got => got,
                    };
                    tally.record_around_kill(what, expected, got, (sent, Instant::now()), kill);
                    i += 1;
                }
            });
        }
        // Kept-open connections: pings without credentials (401) on h2 and HTTP/1.1, reopened every 50.
        {
            let (s, tally, stop) = (&s, &tally, &stop);
            scope_.spawn(move || {
                let client = RootClient::from_pem(&s.ca.ca_pem()).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut conns = [
                        client.keep_open(s.ports.https, HOST, true),
                        client.keep_open(s.ports.https, HOST, false),
                    ];
                    for _ in 0..50 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        for conn in conns.iter_mut() {
                            let status = match conn {
                                Ok(c) => c.get("/v2/"),
                                Err(e) => Err(anyhow::anyhow!("{e:#}")),
                            };
                            n += 1;
                            tally.done.fetch_add(1, Ordering::Relaxed);
                            match status {
                                Ok(401) => {}
                                Ok(other) => tally
                                    .wrong
                                    .lock()
                                    .unwrap()
                                    .push(format!("kept-open ping: expected 401, got {other}")),
                                Err(e) => tally
                                    .wrong
                                    .lock()
                                    .unwrap()
                                    .push(format!("kept-open ping {n}: {e:#}")),
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        // The sampler (this thread); the backend cache dies halfway, so the rest runs on fallbacks.
        while t0.elapsed() < soak {
            std::thread::sleep(SAMPLE_EVERY);
            if cache_killed_at.is_none() && t0.elapsed() >= soak / 2 {
                kill.begin();
                cache.stop();
                kill.end();
                cache_killed_at = Some(t0.elapsed());
            }
            samples.push(sample(
                &gw,
                t0.elapsed(),
                tally.done.load(Ordering::Relaxed),
            ));
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Load is gone and every client connection closed: descriptors and active connections must come back.
    let settle = Instant::now();
    let mut after;
    let mut active;
    loop {
        after = sample(&gw, t0.elapsed(), tally.done.load(Ordering::Relaxed));
        active = metric(
            &s.metrics(),
            "mirrorgate_connections_active",
            &["listener=\"https\""],
        );
        if (after.fds <= baseline.fds + FD_SLACK && active == 0.0)
            || settle.elapsed() > Duration::from_secs(15)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut table = String::from("    t(s)  rss(MiB)   fds  threads  requests\n");
    for x in samples.iter().chain(std::iter::once(&after)) {
        table.push_str(&format!(
            "{:>8.1}  {:>8.1}  {:>4}  {:>7}  {:>8}\n",
            x.at.as_secs_f64(),
            x.rss_kib as f64 / 1024.0,
            x.fds,
            x.threads,
            x.requests
        ));
    }
    let requests = tally.done.load(Ordering::Relaxed);
    let interrupted = tally.interrupted.lock().unwrap();
    eprintln!(
        "soak of {secs} s: {requests} requests ({:.0}/s), statuses {:?}, cache killed at {cache_killed_at:?} \
         (interrupted: {:?}); after load: {active} active https connections, {} fds (baseline {})\n{table}",
        requests as f64 / secs.max(1) as f64,
        tally.by_status.lock().unwrap(),
        *interrupted,
        after.fds,
        baseline.fds,
    );
    // Each client thread has one request in flight at a time, so the kill can interrupt at most one each.
    assert!(
        interrupted.len() <= CLIENTS,
        "{} requests failed around the cache's death, more than the {CLIENTS} that can be in flight: {:?}",
        interrupted.len(),
        *interrupted
    );

    let wrong = tally.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} of {requests} answers were not the expected ones; first ones:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let quarter = (samples.len() / 4).max(1);
    let first = median(samples[..quarter].iter().map(|x| x.rss_kib).collect());
    let last = median(
        samples[samples.len() - quarter..]
            .iter()
            .map(|x| x.rss_kib)
            .collect(),
    );
    let allowed = first as f64 * 1.3 + 8.0 * 1024.0;
    assert!(
        (last as f64) <= allowed,
        "RSS grew: last-quarter median {last} KiB > first-quarter median {first} KiB × 1.3 + 8 MiB\n{table}"
    );
    let first_threads = samples[..quarter].iter().map(|x| x.threads).max().unwrap();
    let last_threads = median(
        samples[samples.len() - quarter..]
            .iter()
            .map(|x| x.threads)
            .collect(),
    );
    assert!(
        last_threads <= first_threads + 8,
        "threads grew: first quarter at most {first_threads}, last quarter median {last_threads}\n{table}"
    );
    assert!(
        after.fds <= baseline.fds + FD_SLACK,
        "{} fds 15 s after the load stopped; warmed-up baseline {} (+{FD_SLACK} allowed for idle upstream \
         connections)\n{table}",
        after.fds,
        baseline.fds
    );
    assert_eq!(
        active, 0.0,
        "mirrorgate_connections_active{{listener=\"https\"}} stayed at {active} after every client closed"
    );
}

/// Secrets this scenario plants; none may show up anywhere the gateway writes.
const UPSTREAM_PASSWORD: &str = "S3cr3t-upstream";
const UPSTREAM_USER: &str = "puller";
const ALICE: (&str, &str) = ("alice", "Alice-Marker-9d41c7");
const BOB: (&str, &str) = ("bob", "Bob-Marker-77e02b");
const WRONG_PASSWORD: &str = "Wrong-Marker-31337f";
const FORGED_TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.Forged-Marker-c0ffee.c2lnbmF0dXJl";
const PUSHER: (&str, &str) = ("pusher", "Pusher-Marker-5150aa");

/// `POST /token` with a form body (containerd's `grant_type=password`): status and body.
fn post_form(ca: &TestCa, port: u16, path: &str, form: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    let mut cfg = ca.client_config()?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let form = form.to_string();
    let path = path.to_string();
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls_pki_types::ServerName::try_from(HOST.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header(http::header::HOST, format!("{HOST}:{port}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(form)))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .context("timed out")??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// Every place in `text` where one of `secrets` occurs, as `label in where: …context…`.
fn find_secrets(where_: &str, text: &str, secrets: &[(String, String)]) -> Vec<String> {
    let mut hits = Vec::new();
    for (label, secret) in secrets {
        if let Some(at) = text.find(secret.as_str()) {
            let from = text[..at]
                .char_indices()
                .rev()
                .nth(80)
                .map_or(0, |(i, _)| i);
            let to = (at + secret.len() + 80).min(text.len());
            let to = (to..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            hits.push(format!(
                "{label} in {where_} ({} times): …{}…",
                text.matches(secret.as_str()).count(),
                &text[from..to]
            ));
        }
    }
    hits
}

/// JWT-shaped strings (`eyJ…` header, two dots) in `text`: an upstream token the test cannot know exactly.
fn jwt_like(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .filter(|w| w.starts_with("eyJ") && w.matches('.').count() == 2 && w.len() > 40)
        .map(|w| w.chars().take(60).collect())
        .collect()
}

// With RUST_LOG=trace, upstream credentials, htpasswd users, Basic and Bearer requests (good and bad), the
// token endpoint by GET and POST, and a token key on disk: the gateway's whole log, `/metrics` and
// `mirrorgate check` contain none of the passwords, their Basic encodings, the tokens (or their signatures),
// nor any line of the token key's PEM body.
#[test]
fn secrets_never_appear_in_logs_metrics_or_check_output() {
    let s = Stage::new("secrets");
    let issuer = TokenIssuer::start(
        &s.t.sub("issuer").unwrap(),
        TokenIssuerOptions {
            users: vec![
                (UPSTREAM_USER.into(), UPSTREAM_PASSWORD.into()),
                (PUSHER.0.into(), PUSHER.1.into()),
            ],
            anonymous_pull: false,
            ..Default::default()
        },
    )
    .unwrap();
    let upstream = Registry::token(s.t.path(), "upstream", &issuer).unwrap();
    let image =
        OciImage::write_layout(&s.t.sub("image").unwrap(), "hello", "latest", 32 * 1024).unwrap();
    let pushed = push(&image, &upstream, "library/hello:latest", Some(PUSHER)).unwrap();
    Htpasswd::create(
        &s.t.path().join("htpasswd"),
        &[(ALICE.0, ALICE.1, 5), (BOB.0, BOB.1, 5)],
    )
    .unwrap();
    let rest = format!(
        "[[tenant]]\nname = \"team\"\nusers = [\"alice\", \"bob\"]\nallow = [\"docker.test/library/*\"]\n\n\
         [limits]\nrequests_per_second = 1000\nburst = 1000\nbytes_per_second = \"1GiB\"\n\n\
         [[route]]\nhost = \"docker.test\"\nupstream = {up:?}\nanonymous = false\n\
         upstream_username = {UPSTREAM_USER:?}\nupstream_password = {UPSTREAM_PASSWORD:?}\n",
        up = upstream.url(),
    );
    let mut gw =
        Gateway::start_with_env(s.t.path(), &s.config(&rest), &[("RUST_LOG", "trace")]).unwrap();

    let repo = repo_of(&pushed).to_string();
    let manifest = format!("/v2/{repo}/manifests/latest");
    let blob = format!("/v2/{repo}/blobs/{}", image.layer_digest());
    let scope = format!("repository:{repo}:pull");
    let alice = basic_auth(ALICE.0, ALICE.1);
    let statuses = std::cell::RefCell::new(Vec::new());
    let send = |what: &str, req: RawRequest| {
        let resp = s.http.send(&req).unwrap();
        statuses
            .borrow_mut()
            .push(format!("{what}={}", resp.status));
        resp
    };

    assert_eq!(
        send("basic manifest", s.get(&manifest, Some(&alice))).status,
        200
    );
    assert_eq!(send("basic blob", s.get(&blob, Some(&alice))).status, 200);
    let get_token = s.token(BOB.0, BOB.1, &scope).unwrap();
    let bearer = format!("Bearer {get_token}");
    assert_eq!(
        send("bearer manifest", s.get(&manifest, Some(&bearer))).status,
        200
    );
    assert_eq!(
        send("bearer blob h2", s.get(&blob, Some(&bearer)).with_h2()).status,
        200
    );
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", ALICE.0)
        .append_pair("password", ALICE.1)
        .append_pair("service", "mirrorgate")
        .append_pair("scope", &scope)
        .append_pair("client_id", "e2e")
        .finish();
    let (post_status, post_body) = post_form(&s.ca, s.ports.https, "/token", &form).unwrap();
    statuses
        .borrow_mut()
        .push(format!("POST /token={post_status}"));
    let post_token = serde_json::from_str::<serde_json::Value>(&post_body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string));
    if let Some(t) = &post_token {
        let b = format!("Bearer {t}");
        assert_eq!(
            send("post-token manifest", s.get(&manifest, Some(&b))).status,
            200
        );
    }
    let wrong = basic_auth(ALICE.0, WRONG_PASSWORD);
    assert_eq!(
        send("wrong password", s.get(&manifest, Some(&wrong))).status,
        401
    );
    let forged = format!("Bearer {FORGED_TOKEN}");
    assert_eq!(
        send("forged bearer", s.get(&manifest, Some(&forged))).status,
        401
    );
    let wrong_token = send(
        "token wrong password",
        s.get(
            &format!("/token?service=mirrorgate&scope={scope}"),
            Some(&wrong),
        ),
    );
    assert_eq!(wrong_token.status, 401, "{}", wrong_token.text());
    assert!(
        issuer.count(&scope, Some(UPSTREAM_USER)) >= 1,
        "the gateway never used its upstream credentials; the scenario would prove nothing"
    );

    let metrics = s.metrics();
    let check = Gateway::check(gw.config_path()).unwrap();
    let check_text = format!("{}\n{}", check.stdout, check.stderr);
    gw.stop().unwrap();
    let log = gw.log();
    assert!(
        log.contains("TRACE"),
        "the gateway did not log at trace level; the scenario would prove little"
    );
    // Positive control: the scan sees the requests (user names are not secrets and are logged).
    assert!(
        log.contains(ALICE.0) && log.contains(BOB.0),
        "the access log does not name alice and bob; is the scan looking at the right log?"
    );

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut secrets: Vec<(String, String)> = vec![
        ("upstream password".into(), UPSTREAM_PASSWORD.into()),
        (
            "upstream Basic".into(),
            b64(&format!("{UPSTREAM_USER}:{UPSTREAM_PASSWORD}")),
        ),
        ("alice's password".into(), ALICE.1.into()),
        (
            "alice's Basic".into(),
            b64(&format!("{}:{}", ALICE.0, ALICE.1)),
        ),
        ("bob's password".into(), BOB.1.into()),
        ("bob's Basic".into(), b64(&format!("{}:{}", BOB.0, BOB.1))),
        ("a wrong password".into(), WRONG_PASSWORD.into()),
        (
            "wrong Basic".into(),
            b64(&format!("{}:{WRONG_PASSWORD}", ALICE.0)),
        ),
        ("a forged token".into(), "Forged-Marker-c0ffee".into()),
        ("GET /token token".into(), get_token.clone()),
        (
            "GET /token token signature".into(),
            get_token.rsplit('.').next().unwrap().to_string(),
        ),
    ];
    if let Some(t) = &post_token {
        secrets.push(("POST /token token".into(), t.clone()));
        secrets.push((
            "POST /token token signature".into(),
            t.rsplit('.').next().unwrap().to_string(),
        ));
    }
    let key_pem = std::fs::read_to_string(s.t.path().join("token-key.pem")).unwrap();
    let body_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(!body_lines.is_empty(), "token-key.pem has no PEM body");
    for (i, l) in body_lines.iter().enumerate() {
        secrets.push((format!("token key PEM line {}", i + 1), l.to_string()));
    }

    let mut hits = Vec::new();
    for (where_, text) in [
        ("the gateway log", log.as_str()),
        ("/metrics", metrics.as_str()),
        ("mirrorgate check output", check_text.as_str()),
    ] {
        hits.extend(find_secrets(where_, text, &secrets));
        for jwt in jwt_like(text) {
            hits.push(format!("a JWT-shaped token in {where_}: {jwt}…"));
        }
    }
    eprintln!(
        "secrets scenario: {:?}; log {} bytes ({} lines), metrics {} bytes, check exit {:?}",
        statuses.borrow(),
        log.len(),
        log.lines().count(),
        metrics.len(),
        check.status.code()
    );
    assert!(
        hits.is_empty(),
        "secrets found ({}):\n{}",
        hits.len(),
        hits.join("\n")
    );
}
