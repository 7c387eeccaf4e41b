//! What an operator does to a running gateway, done for real: rewrite its config under load (SIGHUP, valid and
//! invalid versions), hand `mirrorgate client-config` output to containerd and podman unchanged except for
//! the site-specific bits it leaves as comments, and create users with `mirrorgate htpasswd` (docs: config.md,
//! protocol.md "Client configuration").

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorgate_e2e::htpasswd::basic_auth;
use mirrorgate_e2e::{
    bin_path, free_port, push, require, rewrite, route, Containerd, Gateway, OciImage, Podman,
    Pushed, RawRequest, Registry, Stage,
};

const HELLO_MANIFEST: &str = "/v2/library/hello/manifests/latest";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The shared stage, asking for OCI manifests on every [`Stage::get`].
fn stage(name: &str) -> Stage {
    Stage::new(name).accept(MT_MANIFEST)
}

/// An open registry holding `library/hello:latest`.
fn upstream(s: &Stage, name: &str) -> (Registry, Pushed) {
    let registry = Registry::open(s.t.path(), name).unwrap();
    let image = OciImage::write_layout(
        &s.t.sub(&format!("image-{name}")).unwrap(),
        "hello",
        "latest",
        16 * 1024,
    )
    .unwrap();
    let pushed = push(&image, &registry, "library/hello:latest", None).unwrap();
    (registry, pushed)
}

/// How many gateway log lines contain `needle`.
fn log_count(gw: &Gateway, needle: &str) -> usize {
    gw.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits until more than `before` log lines contain `needle`; panics after 10 s.
fn wait_log(gw: &Gateway, needle: &str, before: usize) {
    let start = Instant::now();
    while log_count(gw, needle) <= before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no new {needle:?} line within 10 s; log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `mirrorgate <args>` with `stdin` fed in; panics unless it exits 0. Returns stdout.
fn mirrorgate(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(bin_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mirrorgate {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// Reloads are atomic and safe under load: 20 rewrites + SIGHUP alternating valid and invalid versions while 6
// clients pull manifests lose no request; valid versions add and remove the gcr.test route, invalid ones (which
// would also flip it) are refused and change nothing.
#[test]
fn reload_under_load_drops_nothing() {
    let s = stage("op-reload");
    let (a, _) = upstream(&s, "upstream-a");
    let (b, _) = upstream(&s, "upstream-b");
    let docker = route("docker.test", &a.url(), "");
    let gcr = route("gcr.test", &b.url(), "");
    let with_gcr = s.config(&format!("{docker}{gcr}"));
    let without_gcr = s.config(&docker);
    let gw = s.gateway(&docker);
    let gcr_status = || s.http.send(&s.get("gcr.test", HELLO_MANIFEST)).unwrap();
    assert_eq!(gcr_status().status, 421, "gcr.test is not routed yet");

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (http, req, stop) = (
                s.http.clone(),
                s.get("docker.test", HELLO_MANIFEST),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(90) {
                    match http.send(&req) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}: {}", r.status, r.text())),
                        Err(e) => failed.push(format!("{e:#}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let mut routed = false;
    for step in 0..20 {
        let valid = step % 2 == 0;
        // a valid version flips gcr.test; an invalid one carries the flip too, plus an error
        let mut text = if routed { &without_gcr } else { &with_gcr }.clone();
        let needle = if valid {
            "config reloaded"
        } else {
            text = if step % 4 == 1 {
                text.replace("anonymous = true", "anonymous = true\nno_such_key = 1")
            } else {
                text.replace(&format!("{:?}", a.url()), "\"not a url\"")
            };
            "config reload refused"
        };
        let before = log_count(&gw, needle);
        rewrite(gw.config_path(), &text);
        let pid = gw.pid().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
        wait_log(&gw, needle, before);
        if valid {
            routed = !routed;
        }
        let resp = gcr_status();
        let want = if routed { 200 } else { 421 };
        assert_eq!(
            resp.status,
            want,
            "step {step} (valid: {valid}): gcr.test {}",
            resp.text()
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for (i, handle) in load.into_iter().enumerate() {
        let (ok, failed) = handle.join().unwrap();
        assert!(
            failed.is_empty(),
            "load thread {i}: {} failed requests (of {}), first: {}",
            failed.len(),
            ok + failed.len(),
            failed[0]
        );
        assert!(ok > 0, "load thread {i} completed nothing");
        total += ok;
    }
    assert!(total >= 50, "only {total} requests completed under load");
    assert!(log_count(&gw, "config reload refused") >= 10);
    assert!(b.requests(HELLO_MANIFEST) >= 5, "gcr.test never reached B");
}

// `client-config` output drives real clients: containerd pulls with the written hosts.toml (plus the `ca` line
// the output leaves to the operator) and podman with the printed registries.conf, both through the gateway,
// whose direct fallbacks cannot work.
#[test]
fn client_config_outputs_drive_real_clients() {
    let s = stage("op-clientcfg");
    let (up, hello) = upstream(&s, "upstream");
    let registry = format!("upstream.test:{}", up.port());
    let gw_host = format!("docker.test:{}", s.ports.https);
    let gw = s.gateway(&route(
        "docker.test",
        &up.url(),
        &format!("ns = true\nupstreams = {{ {registry:?} = {:?} }}", up.url()),
    ));
    let image = format!("{registry}/library/hello:latest");

    // containerd
    let hosts_dir = s.t.sub("certs.d").unwrap();
    let dir_arg = hosts_dir.display().to_string();
    mirrorgate(
        &[
            "client-config",
            "--for",
            "containerd",
            "--host",
            &gw_host,
            "--upstream",
            &registry,
            "--hosts-dir",
            &dir_arg,
        ],
        "",
    );
    let file = hosts_dir.join(&registry).join("hosts.toml");
    let generated = std::fs::read_to_string(&file).unwrap();
    let parsed: toml::Table = toml::from_str(&generated).unwrap();
    let server_line = format!("server = \"https://{registry}\"");
    assert!(generated.contains(&server_line), "{generated}");
    let mirror_url = format!("https://{gw_host}");
    assert!(
        parsed["host"].get(&mirror_url).is_some(),
        "no [host.\"{mirror_url}\"]:\n{generated}"
    );
    // the operator's two edits: a server that refuses (so only the gateway can serve), and the private CA
    let edited = format!(
        "{}  ca = {:?}\n",
        generated.replace(
            &server_line,
            &format!("server = \"http://127.0.0.1:{}\"", free_port())
        ),
        s.ca.ca_path().display().to_string()
    );
    let reparsed: toml::Table = toml::from_str(&edited).unwrap();
    assert!(
        reparsed["host"][&mirror_url].get("ca").is_some(),
        "{edited}"
    );
    std::fs::write(&file, edited).unwrap();
    let containerd = Containerd::start(s.t.path()).unwrap();
    let out = containerd.pull(&hosts_dir, &image).unwrap();
    assert!(
        out.ok(),
        "ctr pull failed: {}{}\ngateway log:\n{}",
        out.stdout,
        out.stderr,
        gw.log()
    );
    assert_eq!(
        containerd.image_digest(&image).unwrap(),
        hello.manifest_digest
    );
    let served = gw.access_count("/v2/library/hello/manifests/latest", 200);
    assert!(served >= 1, "the gateway did not serve the manifest");

    // podman: the printed registries.conf, used as podman's only registries.conf
    let conf = mirrorgate(
        &[
            "client-config",
            "--for",
            "podman",
            "--host",
            &gw_host,
            "--upstream",
            &registry,
        ],
        "",
    );
    let parsed: toml::Table = toml::from_str(&conf).unwrap();
    let entry = &parsed["registry"].as_array().unwrap()[0];
    let (prefix, location) = (
        entry["prefix"].as_str().unwrap(),
        entry["location"].as_str().unwrap(),
    );
    let mirrors: Vec<&str> = entry["mirror"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["location"].as_str().unwrap())
        .collect();
    assert_eq!((prefix, location), (registry.as_str(), registry.as_str()));
    assert_eq!(mirrors, vec![gw_host.as_str()]);
    let podman = Podman::new(s.t.path(), prefix, location, &mirrors)
        .unwrap()
        .cert_dir(&s.certs);
    // the location is the plain-HTTP upstream spoken to over TLS: only the mirror can serve
    std::fs::write(s.t.path().join("podman").join("registries.conf"), &conf).unwrap();
    let out = podman.pull(&image).unwrap();
    assert!(
        out.ok(),
        "podman pull failed: {}{}\nregistries.conf:\n{conf}\ngateway log:\n{}",
        out.stdout,
        out.stderr,
        gw.log()
    );
    assert_eq!(podman.image_digest(&image).unwrap(), hello.manifest_digest);
    assert!(gw.access_count("/v2/library/hello/manifests/latest", 200) > served);
}

// A user made with `mirrorgate htpasswd --stdin` logs in at the gateway (and a wrong password does not), and
// Apache's `htpasswd -v` accepts the same line: the file is interchangeable with the tool operators know.
#[test]
fn htpasswd_command_output_is_accepted_by_the_gateway() {
    require("htpasswd", "apache2-utils");
    let s = stage("op-htpasswd");
    let file = s.t.path().join("htpasswd");
    let file_arg = file.display().to_string();
    let password = "c0rrect-h0rse";
    mirrorgate(
        &["htpasswd", "-f", &file_arg, "--stdin", "alice"],
        &format!("{password}\n"),
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("alice:$2"),
        "not a bcrypt line: {text:.10}"
    );
    assert!(!text.contains(password));

    let verify = |pw: &str| {
        Command::new("htpasswd")
            .arg("-vb")
            .arg(&file)
            .args(["alice", pw])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(password), "Apache htpasswd rejects the line");
    assert!(!verify("wrong"), "Apache htpasswd accepts any password");

    let _gw = s.gateway(&format!(
        "[auth]\nhtpasswd = \"htpasswd\"\n\n[[tenant]]\nname = \"ops\"\nusers = [\"alice\"]\n\
         allow = [\"docker.test/*\"]\n\n[[route]]\nhost = \"docker.test\"\nupstream = \"http://127.0.0.1:{}\"\n\
         anonymous = false\n",
        free_port()
    ));
    let ping = |auth: Option<String>| {
        let mut req = s.get("docker.test", "/v2/");
        if let Some(a) = auth {
            req = req.with_header("authorization", &a);
        }
        s.http.send(&req).unwrap()
    };
    let resp = ping(Some(basic_auth("alice", password)));
    assert_eq!(resp.status, 200, "{}", resp.text());
    for auth in [Some(basic_auth("alice", "wrong")), None] {
        let resp = ping(auth.clone());
        assert_eq!(resp.status, 401, "{auth:?}: {}", resp.text());
        assert!(resp.header("www-authenticate").is_some());
    }
}

// Reload moves what used to need a restart: the https listener to a new port (the old one stops accepting),
// and the anonymous rate limit (a tight limit answers 429 right after the reload).
#[test]
fn reload_moves_the_listener_and_applies_new_limits() {
    let s = stage("op-reload-listener");
    let (a, _) = upstream(&s, "upstream-a");
    let docker = route("docker.test", &a.url(), "");
    let gw = s.gateway(&docker);
    assert_eq!(
        s.http
            .send(&s.get("docker.test", HELLO_MANIFEST))
            .unwrap()
            .status,
        200
    );

    let new_port = loop {
        let p = free_port();
        if p != s.ports.https && p != s.ports.http && p != s.ports.admin {
            break p;
        }
    };
    let moved = s
        .config(&docker)
        .replace(
            &format!("127.0.0.1:{}\"", s.ports.https),
            &format!("127.0.0.1:{new_port}\""),
        )
        .replace(
            "requests_per_second = 10000\nburst = 10000",
            "requests_per_second = 1\nburst = 1",
        );
    assert!(
        moved.contains(&new_port.to_string()) && moved.contains("burst = 1\n"),
        "{moved}"
    );
    rewrite(gw.config_path(), &moved);
    let pid = gw.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());

    let on_new_port = |path: &str| {
        let req = RawRequest::h1(new_port, "docker.test", path)
            .with_host(&format!("docker.test:{new_port}"))
            .with_header("accept", MT_MANIFEST);
        s.http.send(&req)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match on_new_port(HELLO_MANIFEST) {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("the new listener never answered: {e}\n{}", gw.log()),
        }
    };
    assert_eq!(first.status, 200, "{}", first.text());
    let second = on_new_port(HELLO_MANIFEST).unwrap();
    assert_eq!(
        second.status, 429,
        "the new limit (1 req/s, burst 1) was not applied"
    );
    assert!(second.header("retry-after").is_some());
    assert!(
        s.http.send(&s.get("docker.test", HELLO_MANIFEST)).is_err(),
        "the old listener still accepts connections"
    );
    assert!(gw.log().contains("listener moved"));
}
