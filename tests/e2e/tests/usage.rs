//! The usage ledger, end to end: two tenants pull known images through skopeo and the export's blob bytes
//! equal, to the byte, what was sent per tenant, user and repository; totals survive a clean restart and a
//! `kill -9` after a flush; `mirrorgate usage` refuses bad input with exit 2 and changes nothing.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::Htpasswd;
use mirrorgate_e2e::{bin_path, push, Gateway, OciImage, RawRequest, Registry, Stage};

const PASSWORD: &str = "pw";

/// (user, tenant) of the scenario.
const USERS: [(&str, &str); 3] = [("alice", "acme"), ("bob", "acme"), ("carol", "globex")];

/// An image in the upstream and the blob bytes a pull of it sends (config + layer: everything in its
/// layout's `blobs/` except the manifest).
struct Image {
    repo: String,
    blob_bytes: u64,
}

fn upstream_image(s: &Stage, upstream: &Registry, name: &str, layer: usize) -> Image {
    let dir = s.t.sub(&format!("image-{name}")).unwrap();
    let img = OciImage::write_layout(&dir, name, "latest", layer).unwrap();
    let repo = format!("library/{name}");
    push(&img, upstream, &format!("{repo}:latest"), None).unwrap();
    let all: u64 = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    Image {
        repo,
        blob_bytes: all - img.top.size,
    }
}

fn config(s: &Stage, upstream: &Registry) -> String {
    let tenants: String = ["acme", "globex"]
        .iter()
        .map(|t| {
            let users: Vec<String> = USERS
                .iter()
                .filter(|(_, tenant)| tenant == t)
                .map(|(u, _)| format!("{u:?}"))
                .collect();
            format!(
                "[[tenant]]\nname = {t:?}\nusers = [{}]\nallow = [\"docker.test/*\"]\n\n",
                users.join(", ")
            )
        })
        .collect();
    s.config(&format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n[usage]\nstore = \"ledger/usage.db\"\nretention = \"30d\"\n\n{tenants}\
         [[route]]\nhost = \"docker.test\"\nupstream = {:?}\nanonymous = false\n",
        upstream.url()
    ))
}

fn pull(s: &Stage, user: &str, image: &Image, n: usize) {
    let dir = s.t.sub(&format!("pulled-{user}-{n}")).unwrap();
    s.skopeo()
        .creds(user, PASSWORD)
        .pull(
            &format!("{}:latest", s.via("docker.test", &image.repo)),
            &dir,
        )
        .unwrap();
}

fn usage_cli(config: &Path, args: &[&str]) -> Output {
    Command::new(bin_path())
        .arg("usage")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// `mirrorgate usage --by <by> --format json`, as ((tenant, user-or-repository) → blob bytes).
fn blob_bytes_by(config: &Path, by: &str) -> BTreeMap<(String, String), u64> {
    let out = usage_cli(config, &["--by", by, "--format", "json"]);
    assert!(
        out.status.success(),
        "usage export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r["tenant"].as_str().unwrap().to_string(),
                    r[by].as_str().unwrap().to_string(),
                ),
                r["blob_bytes_sent"].as_u64().unwrap(),
            )
        })
        .filter(|(_, bytes)| *bytes > 0)
        .collect()
}

/// Polls the CLI export (which reads the store only) until it shows `want`, for a few flush intervals.
fn wait_for_store(config: &Path, by: &str, want: &BTreeMap<(String, String), u64>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = blob_bytes_by(config, by);
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store never showed the expected totals by {by}:\n got {got:?}\nwant {want:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn key(tenant: &str, second: &str) -> (String, String) {
    (tenant.to_string(), second.to_string())
}

// Pins the ledger's promises end to end: exact blob bytes per tenant, user and repository (the admin /usage
// sees them at once, the CLI within a flush interval), durable across a clean restart and a kill -9 after a
// flush, and the CLI's bad-input exits.
#[test]
fn usage_ledger_counts_exact_bytes_and_survives_restarts() {
    let s = Stage::new("usage");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let alpha = upstream_image(&s, &upstream, "alpha", 3000);
    let beta = upstream_image(&s, &upstream, "beta", 5000);
    let lines: Vec<(&str, &str, u32)> = USERS.iter().map(|(u, _)| (*u, PASSWORD, 5)).collect();
    Htpasswd::create(&s.t.path().join("htpasswd"), &lines).unwrap();
    let toml = config(&s, &upstream);
    let mut gw = Gateway::start(s.t.path(), &toml).unwrap();
    let cfg = gw.config_path().to_path_buf();

    pull(&s, "alice", &alpha, 1);
    pull(&s, "bob", &beta, 1);
    pull(&s, "carol", &alpha, 1);
    pull(&s, "carol", &alpha, 2);

    // The admin export flushes first: exact at once.
    let port = s.ports.admin;
    let resp = s.send(&RawRequest::plain(
        port,
        &format!("127.0.0.1:{port}"),
        "/usage?by=tenant",
    ));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rows = resp.json().unwrap();
    let per_tenant: BTreeMap<String, u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["tenant"].as_str()?.to_string(),
                r["blob_bytes_sent"].as_u64()?,
            ))
        })
        .filter(|(_, b)| *b > 0)
        .collect();
    assert_eq!(
        per_tenant,
        BTreeMap::from([
            ("acme".to_string(), alpha.blob_bytes + beta.blob_bytes),
            ("globex".to_string(), 2 * alpha.blob_bytes),
        ])
    );
    let bad = s.send(&RawRequest::plain(
        port,
        &format!("127.0.0.1:{port}"),
        "/usage?by=week",
    ));
    assert_eq!(bad.status, 400, "{}", bad.text());

    let by_user = BTreeMap::from([
        (key("acme", "alice"), alpha.blob_bytes),
        (key("acme", "bob"), beta.blob_bytes),
        (key("globex", "carol"), 2 * alpha.blob_bytes),
    ]);
    let by_repo = BTreeMap::from([
        (key("acme", &alpha.repo), alpha.blob_bytes),
        (key("acme", &beta.repo), beta.blob_bytes),
        (key("globex", &alpha.repo), 2 * alpha.blob_bytes),
    ]);
    wait_for_store(&cfg, "user", &by_user);
    wait_for_store(&cfg, "repository", &by_repo);

    // A clean restart keeps the totals and adds to them.
    gw.stop().unwrap();
    assert_eq!(blob_bytes_by(&cfg, "user"), by_user);
    let gw = Gateway::start(s.t.path(), &toml).unwrap();
    pull(&s, "carol", &beta, 3);
    let mut by_user = by_user;
    by_user.insert(
        key("globex", "carol"),
        2 * alpha.blob_bytes + beta.blob_bytes,
    );
    // Once the store shows the pull (a flush happened), kill -9 loses nothing of it.
    wait_for_store(&cfg, "user", &by_user);
    let killed = Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(gw);
    assert_eq!(blob_bytes_by(&cfg, "user"), by_user);
    let gw = Gateway::start(s.t.path(), &toml).unwrap();
    assert_eq!(blob_bytes_by(&cfg, "user"), by_user);

    // The CSV form a billing script reads.
    let out = usage_cli(&cfg, &["--by", "tenant", "--format", "csv"]);
    assert!(out.status.success());
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.starts_with("tenant,requests,manifest_pulls,bytes_sent,blob_bytes_sent,"),
        "{csv}"
    );
    let acme: Vec<&str> = csv
        .lines()
        .find(|l| l.starts_with("acme,"))
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(
        acme[4],
        (alpha.blob_bytes + beta.blob_bytes).to_string(),
        "{csv}"
    );
    drop(gw);

    // Bad input: exit 2 with a reason, and an unreadable store is left as it was.
    for (args, says) in [
        (vec!["--by", "week"], "unknown grouping"),
        (
            vec!["--from", "2026-12-31", "--to", "2026-12-01"],
            "range is empty",
        ),
        (vec!["--from", "yesterday"], "not a date"),
        (vec!["--format", "xml"], "unknown format"),
    ] {
        let out = usage_cli(&cfg, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let junk_dir = s.t.sub("junk").unwrap();
    let junk = junk_dir.join("usage.db");
    std::fs::write(&junk, b"this is not a ledger").unwrap();
    let junk_cfg = junk_dir.join("mirrorgate.toml");
    std::fs::write(
        &junk_cfg,
        toml.replace(
            "store = \"ledger/usage.db\"",
            &format!("store = {:?}", junk.display().to_string()),
        ),
    )
    .unwrap();
    std::fs::copy(s.t.path().join("htpasswd"), junk_dir.join("htpasswd")).unwrap();
    let out = usage_cli(&junk_cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the usage store"));
    assert_eq!(std::fs::read(&junk).unwrap(), b"this is not a ledger");
    let out = usage_cli(&junk_dir.join("missing.db"), &[]);
    assert_eq!(out.status.code(), Some(2));
}

// Pins the export's authorization decision: with `[usage] export_token` set, `/usage` answers only the
// right Bearer token — not a loopback client without one, not a wrong one, not the old token after a reload
// changed it — and the token never reaches the log. (Without a token only loopback clients are answered;
// every address here is loopback, so that half is the unit test `usage::tests::export_access`.)
#[test]
fn usage_export_needs_its_token() {
    let s = Stage::new("usage-token");
    let upstream = Registry::open(s.t.path(), "upstream").unwrap();
    let alpha = upstream_image(&s, &upstream, "alpha", 3000);
    let lines: Vec<(&str, &str, u32)> = USERS.iter().map(|(u, _)| (*u, PASSWORD, 5)).collect();
    Htpasswd::create(&s.t.path().join("htpasswd"), &lines).unwrap();
    let old_token = "first-export-token-7f3a9c1e5b";
    let new_token = "second-export-token-2d8e4f6a0c";
    std::fs::write(s.t.path().join("usage-token"), format!("{old_token}\n")).unwrap();
    let toml = config(&s, &upstream).replace(
        "retention = \"30d\"\n",
        "retention = \"30d\"\nexport_token_file = \"usage-token\"\n",
    );
    assert!(toml.contains("export_token_file"), "{toml}");
    let gw = Gateway::start(s.t.path(), &toml).unwrap();
    pull(&s, "alice", &alpha, 1);

    let port = s.ports.admin;
    let export = |auth: Option<&str>| {
        let mut req = RawRequest::plain(port, &format!("127.0.0.1:{port}"), "/usage?by=tenant");
        if let Some(a) = auth {
            req = req.with_header("authorization", a);
        }
        s.send(&req)
    };
    let bearer = |t: &str| format!("Bearer {t}");
    for refused in [
        None,
        Some("Bearer wrong-token-0000000000000"),
        Some("Basic YWxpY2U6cHc="),
    ] {
        let resp = export(refused);
        assert_eq!(resp.status, 401, "{refused:?}: {}", resp.text());
        assert!(resp.header("www-authenticate").is_some(), "{refused:?}");
    }
    let resp = export(Some(&bearer(old_token)));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let acme = resp
        .json()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant"] == "acme")
        .map(|r| r["blob_bytes_sent"].as_u64().unwrap());
    assert_eq!(acme, Some(alpha.blob_bytes));

    // A new token by reload: the old one stops working at once.
    std::fs::write(s.t.path().join("usage-token"), format!("{new_token}\n")).unwrap();
    gw.reload_with(&toml).unwrap();
    assert_eq!(export(Some(&bearer(old_token))).status, 401);
    assert_eq!(export(Some(&bearer(new_token))).status, 200);
    let log = gw.log();
    assert!(
        !log.contains(old_token) && !log.contains(new_token),
        "a token reached the log"
    );
}
