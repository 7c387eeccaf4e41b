//! The usage ledger across replicas and against the daily quota: two gateways sharing a real redis-server add
//! up in one ledger (the export shows the sum, nothing counted twice), keep counting while Redis is down and
//! hand the held counts over when it is back; and a tenant's `bytes_per_day` refusal comes exactly when the
//! ledger's count for the day reaches it, also after a restart.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{
    bin_path, free_port, metric, push, require, wait_for_port, Gateway, OciImage, Ports, Proc,
    Pushed, RawRequest, Registry, Stage, GENEROUS_LIMITS,
};

const PASSWORD: &str = "pw";

/// An upstream holding one image whose layer is `layer_bytes` long.
struct Upstream {
    registry: Registry,
    image: Pushed,
    layer_bytes: u64,
}

impl Upstream {
    fn new(s: &Stage, layer_bytes: usize) -> Self {
        let registry = Registry::open(s.t.path(), "upstream").unwrap();
        let img = OciImage::write_layout(&s.t.sub("image").unwrap(), "app", "latest", layer_bytes)
            .unwrap();
        let image = push(&img, &registry, "library/app:latest", None).unwrap();
        Upstream {
            registry,
            image,
            layer_bytes: img.layers[0].size,
        }
    }

    fn blob_path(&self) -> String {
        format!("/v2/library/app/blobs/{}", self.image.layer_digests[0])
    }
}

/// Starts a gateway in `dir` on `ports`: tenant `acme` (user `u`, `tenant_extra` lines), `[limits]` extras,
/// one private route to the upstream.
fn gateway(
    s: &Stage,
    up: &Upstream,
    dir: &Path,
    ports: &Ports,
    tenant_extra: &str,
    limits: &str,
) -> Gateway {
    Htpasswd::create(&dir.join("htpasswd"), &[("u", PASSWORD, 5)]).unwrap();
    let toml = format!(
        "{server}\n{tls}\n[auth]\nhtpasswd = \"htpasswd\"\n\n{GENEROUS_LIMITS}{limits}\n\n\
         [[tenant]]\nname = \"acme\"\nusers = [\"u\"]\nallow = [\"docker.test/*\"]\n{tenant_extra}\n\n\
         [[route]]\nhost = \"docker.test\"\nupstream = {up:?}\nanonymous = false\n",
        server = ports.server_toml(),
        tls = s.tls_toml(),
        up = up.registry.url(),
    );
    Gateway::start(dir, &toml).unwrap()
}

/// One blob GET as `u`; (status, body bytes received).
fn get_blob(s: &Stage, port: u16, up: &Upstream) -> (u16, u64) {
    let req = RawRequest::h1(port, "docker.test", &up.blob_path())
        .with_host(&format!("docker.test:{port}"))
        .with_header("authorization", &basic_auth("u", PASSWORD));
    let resp = s.http.send(&req).unwrap();
    (resp.status, resp.body.len() as u64)
}

/// `mirrorgate usage -c <config> --by tenant --format json`: acme's (blob_bytes_sent, bytes_sent, requests).
fn cli_acme(config: &Path) -> (u64, u64, u64) {
    let out = Command::new(bin_path())
        .args(["usage", "--by", "tenant", "--format", "json", "-c"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "usage export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == "acme")
        .map_or((0, 0, 0), |r| {
            (
                r["blob_bytes_sent"].as_u64().unwrap(),
                r["bytes_sent"].as_u64().unwrap(),
                r["requests"].as_u64().unwrap(),
            )
        })
}

/// Polls the CLI export until acme's blob bytes are `want`, then checks they stay there past two more flush
/// intervals (nothing arrives twice).
fn settles_at(config: &Path, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli_acme(config).0 != want {
        assert!(
            Instant::now() < deadline,
            "the shared ledger never showed {want} blob bytes for acme: {:?}",
            cli_acme(config)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(cli_acme(config).0, want, "counted twice");
}

fn redis_cmd(port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir);
    cmd
}

fn admin_metrics(s: &Stage, port: u16) -> String {
    s.send(&RawRequest::plain(
        port,
        &format!("127.0.0.1:{port}"),
        "/metrics",
    ))
    .text()
}

// Pins shared mode end to end: blob pulls spread over two gateways show up once, summed, in the export of
// either config (which reads Redis); with Redis killed both keep serving, say so (mirrorgate_usage_redis_up
// 0, a log line) and hold their counts; once Redis is back (its append-only file kept the earlier sum) the
// held counts arrive, once.
#[test]
fn two_replicas_share_the_ledger_through_redis() {
    require("redis-server", "redis-server");
    let s = Stage::new("usage-shared");
    let up = Upstream::new(&s, 3000);
    let redis_port = free_port();
    let redis_dir = s.t.sub("redis").unwrap();
    let mut redis = Proc::spawn("redis", redis_cmd(redis_port, &redis_dir), s.t.path()).unwrap();
    wait_for_port(redis_port, Duration::from_secs(10)).unwrap();
    let limits = format!("redis = \"redis://127.0.0.1:{redis_port}\"");
    let ports = [Ports::free(), Ports::free()];
    let dirs = [s.t.sub("gw1").unwrap(), s.t.sub("gw2").unwrap()];
    let gws: Vec<Gateway> = (0..2)
        .map(|i| gateway(&s, &up, &dirs[i], &ports[i], "", &limits))
        .collect();

    let mut sent = 0;
    for i in 0..5 {
        let (status, bytes) = get_blob(&s, ports[i % 2].https, &up);
        assert_eq!((status, bytes), (200, up.layer_bytes));
        sent += bytes;
    }
    settles_at(gws[0].config_path(), sent);
    assert_eq!(cli_acme(gws[1].config_path()).0, sent);

    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut served = 0;
    while served < 4 {
        assert!(Instant::now() < deadline, "no blob served with redis down");
        let (status, bytes) = get_blob(&s, ports[served % 2].https, &up);
        if status == 200 {
            sent += bytes;
            served += 1;
        }
    }
    for (g, p) in ports.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(
            &admin_metrics(&s, p.admin),
            "mirrorgate_usage_redis_up",
            &[],
        ) != 0.0
        {
            assert!(
                Instant::now() < deadline,
                "gateway {g} never reported redis down"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(gws[g].log().contains("counts kept in memory and retried"));
    }

    let _redis = Proc::spawn("redis", redis_cmd(redis_port, &redis_dir), s.t.path()).unwrap();
    wait_for_port(redis_port, Duration::from_secs(10)).unwrap();
    settles_at(gws[1].config_path(), sent);
    for p in &ports {
        assert_eq!(
            metric(
                &admin_metrics(&s, p.admin),
                "mirrorgate_usage_redis_up",
                &[]
            ),
            1.0
        );
    }
}

// Pins quota and ledger agreement: with bytes_per_day = 2 blobs + 1 byte, and a refused push first (its 403
// body counts in the ledger, and so in the quota, though no admission streamed it), each blob GET is admitted
// exactly while the ledger's bytes_sent for acme today (the admin /usage, which flushes first) is below the
// quota: the third is refused. After a clean restart the day's bytes still count: the next GET is refused.
#[test]
fn quota_refuses_at_the_ledger_count_and_survives_restart() {
    let s = Stage::new("usage-quota");
    let up = Upstream::new(&s, 2000);
    let dir = s.t.sub("gw").unwrap();
    let quota = up.layer_bytes * 2 + 1;
    let extra = format!("bytes_per_day = {quota}");
    let mut gw = gateway(&s, &up, &dir, &s.ports, &extra, "");
    let ledger_bytes = || {
        let port = s.ports.admin;
        let resp = s.send(&RawRequest::plain(
            port,
            &format!("127.0.0.1:{port}"),
            "/usage?by=tenant&tenant=acme",
        ));
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json().unwrap()[0]["bytes_sent"].as_u64().unwrap_or(0)
    };
    let mut push = RawRequest::h1(
        s.ports.https,
        "docker.test",
        "/v2/library/app/blobs/uploads/",
    )
    .with_host(&format!("docker.test:{}", s.ports.https))
    .with_header("authorization", &basic_auth("u", PASSWORD));
    push.method = http::Method::POST;
    let refused = s.send(&push);
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(ledger_bytes() > 0, "the 403 body was not counted");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let before = ledger_bytes();
        let (status, _) = get_blob(&s, s.ports.https, &up);
        statuses.push(status);
        assert_eq!(
            status == 200,
            before < quota,
            "ledger had {before} of {quota} bytes; answered {status} (so far {statuses:?})"
        );
        assert!(status == 200 || status == 429, "{statuses:?}");
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);

    gw.stop().unwrap();
    let _gw = gateway(&s, &up, &dir, &s.ports, &extra, "");
    let (status, _) = get_blob(&s, s.ports.https, &up);
    assert_eq!(status, 429, "a restart handed out a fresh quota");
}
