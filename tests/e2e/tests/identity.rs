//! The identity rules (design.md "Identity", issue 16) with skopeo, podman and containerd, each from inside
//! and from outside a CIDR tenant: without credentials the office network pulls and everyone else gets a clean
//! 401; a wrong password is refused wherever the client stands (never a pull as the network's tenant); a
//! valid user's credentials win over the network (alice pushes from inside the office); a user without push
//! rights is denied. docker.rs tells the same story with the Docker engine.
//!
//! Every client connects from 127.0.0.1, so "inside" and "outside" are chosen by the CIDR: `127.0.0.0/8`
//! includes it, `127.0.0.2/32` does not.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use mirrorgate_e2e::htpasswd::Htpasswd;
use mirrorgate_e2e::{
    office_team_readers, push, Containerd, Gateway, OciImage, Outcome, Podman, Registry,
};

const ALICE: &str = "alice:pw-alice";
const BOB: &str = "bob:pw-bob";
const WRONG: &str = "alice:not-her-password";

/// Inside the office network (the CIDR covers 127.0.0.1) or outside it.
#[derive(Clone, Copy, PartialEq)]
enum Network {
    Inside,
    Outside,
}

impl Network {
    fn cidr(self) -> &'static str {
        match self {
            Network::Inside => "127.0.0.0/8",
            Network::Outside => "127.0.0.2/32",
        }
    }
}

/// The stage, an upstream holding `library/hello:latest`, the users and the running gateway.
struct Stage {
    base: mirrorgate_e2e::Stage,
    upstream: Registry,
    hello: OciImage,
    gw: Gateway,
    _users: Htpasswd,
}

impl std::ops::Deref for Stage {
    type Target = mirrorgate_e2e::Stage;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Stage {
    /// A gateway with the token server, one private route docker.test → upstream, and three tenants: the
    /// office network (pull `library/*` only), team (alice: pull, and push `team/*`), readers (bob: pull
    /// `library/*` and `team/*`, no push).
    fn new(name: &str, net: Network) -> Self {
        let base = mirrorgate_e2e::Stage::new(name);
        let t = &base.t;
        let upstream = Registry::open(t.path(), "upstream").unwrap();
        let hello =
            OciImage::write_layout(&t.sub("hello").unwrap(), "hello", "latest", 32 * 1024).unwrap();
        push(&hello, &upstream, "library/hello:latest", None).unwrap();
        push(&hello, &upstream, "team/base:latest", None).unwrap();
        let users = Htpasswd::create(
            &t.path().join("htpasswd"),
            &[("alice", "pw-alice", 5), ("bob", "pw-bob", 5)],
        )
        .unwrap();
        let rest = office_team_readers(net.cidr(), &upstream.url());
        let gw = base.gateway(&rest);
        Self {
            base,
            upstream,
            hello,
            gw,
            _users: users,
        }
    }

    /// `docker.test:<port>/<repo>`, an image name through the gateway.
    fn name(&self, repo: &str) -> String {
        format!("{}/{repo}", self.authority("docker.test"))
    }

    /// The gateway's access-log lines so far.
    fn access(&self) -> Vec<String> {
        self.gw
            .log()
            .lines()
            .filter(|l| l.contains("mirrorgate::access"))
            .map(str::to_string)
            .collect()
    }

    /// Runs `attempt` and returns its outcome with the access-log lines it caused.
    fn traced(&self, attempt: impl FnOnce() -> Outcome) -> (Outcome, Vec<String>) {
        let before = self.access().len();
        let out = attempt();
        // the access line is written as the response completes, a moment after the client has it
        std::thread::sleep(std::time::Duration::from_millis(300));
        let lines = self.access().split_off(before);
        (out, lines)
    }

    /// A credential-less pull: inside the office network it succeeds as the office tenant; outside it fails
    /// with 401 challenges only (never a 403: logging in would help).
    fn credential_less_pull(&self, net: Network, pull: impl FnOnce() -> Outcome) {
        let (out, lines) = self.traced(pull);
        let log = lines.join("\n");
        match net {
            Network::Inside => {
                assert!(
                    out.ok(),
                    "credential-less pull inside: {}\n{log}",
                    out.stderr
                );
                assert!(
                    lines
                        .iter()
                        .any(|l| l.contains("/manifests/") && l.contains("tenant=\"office\"")),
                    "the manifest was not served to the office tenant:\n{log}"
                );
            }
            Network::Outside => {
                assert!(!out.ok(), "credential-less pull outside succeeded:\n{log}");
                assert!(
                    lines.iter().any(|l| l.contains("status=401")),
                    "no 401:\n{log}"
                );
                assert!(
                    !lines.iter().any(|l| l.contains("status=403")),
                    "a credential-less client got 403:\n{log}"
                );
                assert!(
                    !lines
                        .iter()
                        .any(|l| l.contains("/manifests/") && l.contains("status=200")),
                    "a manifest was served:\n{log}"
                );
            }
        }
    }

    /// A pull of `repo` with a wrong password is refused wherever the client stands: 401, nothing served,
    /// and the office tenant never stands in for the refused user.
    fn wrong_password_pull(&self, repo: &str, pull: impl FnOnce() -> Outcome) {
        let upstream_path = format!("/v2/{repo}/manifests/");
        let manifests = self.upstream.requests(&upstream_path);
        let (out, lines) = self.traced(pull);
        let log = lines.join("\n");
        assert!(
            !out.ok(),
            "a wrong password pulled: {}{}\n{log}",
            out.stdout,
            out.stderr
        );
        assert!(
            lines.iter().any(|l| l.contains("status=401")),
            "no 401:\n{log}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("/manifests/") && l.contains("status=200")),
            "a manifest was served to a wrong password:\n{log}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("tenant=\"office\"") && l.contains("status=200")),
            "a wrong password was served as the office network:\n{log}"
        );
        assert_eq!(
            self.upstream.requests(&upstream_path),
            manifests,
            "a wrong password reached the upstream"
        );
    }

    /// alice's push of `team/<repo>` succeeds as alice of tenant team, whatever the network.
    fn alice_pushes(&self, repo: &str, push: impl FnOnce() -> Outcome) {
        let (out, lines) = self.traced(push);
        let log = lines.join("\n");
        assert!(
            out.ok(),
            "alice's push: {}{}\n{log}",
            out.stdout,
            out.stderr
        );
        let manifest = format!("/v2/team/{repo}/manifests/v1");
        assert!(
            lines.iter().any(|l| l.contains("method=PUT")
                && l.contains(&manifest)
                && l.contains("status=201")
                && l.contains("user=\"alice\"")
                && l.contains("tenant=\"team\"")),
            "no PUT of {manifest} as alice:\n{log}"
        );
        assert!(self.upstream.requests(&manifest) >= 1);
    }

    /// bob's push is denied (403 DENIED: a verified user lacking the right) and never reaches the upstream.
    fn bob_is_denied(&self, repo: &str, push: impl FnOnce() -> Outcome) {
        let (out, lines) = self.traced(push);
        let log = lines.join("\n");
        assert!(!out.ok(), "bob pushed: {}\n{log}", out.stdout);
        let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
        // skopeo, podman: 403 DENIED; containerd, whose bearer token for the push scope is narrowed to pull by
        // the token server: the registry protocol's own refusal, 401 insufficient_scope
        assert!(
            said.contains("denied") || said.contains("insufficient_scope"),
            "bob's push: {said}\n{log}"
        );
        // HEADs of blobs are reads bob may make; an upload or a manifest must never reach the upstream
        for part in ["blobs/uploads", "manifests/"] {
            assert_eq!(
                self.upstream.requests(&format!("/v2/team/{repo}/{part}")),
                0,
                "bob's push reached the upstream ({part})"
            );
        }
    }
}

/// The whole story with skopeo: pulls into fresh OCI layouts, pushes from the test image's layout.
fn skopeo_story(name: &str, net: Network) {
    let s = Stage::new(name, net);
    let image = s.via("docker.test", "library/hello:latest");
    let layout = |n: &str| format!("oci:{}:pulled", s.t.sub(n).unwrap().display());
    let skopeo = |creds: Option<&str>| {
        let base = s.skopeo();
        match creds.and_then(|c| c.split_once(':')) {
            Some((user, pass)) => base.creds(user, pass),
            None => base,
        }
    };
    s.credential_less_pull(net, || {
        skopeo(None).copy(&image, &layout("p1"), false).unwrap()
    });
    s.wrong_password_pull("library/hello", || {
        skopeo(Some(WRONG))
            .copy(&image, &layout("p2"), false)
            .unwrap()
    });
    let src = s.hello.oci_ref();
    s.alice_pushes("skopeo", || {
        skopeo(Some(ALICE))
            .push(&src, &s.via("docker.test", "team/skopeo:v1"))
            .unwrap()
    });
    s.bob_is_denied("skopeo-bob", || {
        skopeo(Some(BOB))
            .push(&src, &s.via("docker.test", "team/skopeo-bob:v1"))
            .unwrap()
    });
}

// Pins rules 2 and 1 with skopeo inside the office network: credential-less pull as the office tenant, a wrong
// password refused (not downgraded to the network), alice's credentials win and she pushes, bob is denied.
#[test]
fn skopeo_inside_the_cidr() {
    skopeo_story("id-skopeo-in", Network::Inside);
}

// Pins rules 2 and 3 with skopeo outside it: credential-less pull gets 401 (never 403); the rest as inside.
#[test]
fn skopeo_outside_the_cidr() {
    skopeo_story("id-skopeo-out", Network::Outside);
}

/// The whole story with podman: pulls into its private storage, pushes a retag of the pulled image.
fn podman_story(name: &str, net: Network) {
    let s = Stage::new(name, net);
    let authority = s.authority("docker.test");
    let podman = Podman::new(s.t.path(), &authority, &authority, &[])
        .unwrap()
        .cert_dir(&s.certs);
    let image = s.name("library/hello:latest");
    s.credential_less_pull(net, || podman.pull_as(&image, None).unwrap());
    s.wrong_password_pull("library/hello", || {
        podman.pull_as(&image, Some(WRONG)).unwrap()
    });
    podman
        .pull_as(&image, Some(ALICE))
        .unwrap()
        .check("alice's podman pull")
        .unwrap();
    let mine = s.name("team/podman:v1");
    podman.tag(&image, &mine).unwrap();
    s.alice_pushes("podman", || podman.push_as(&mine, Some(ALICE)).unwrap());
    let bobs = s.name("team/podman-bob:v1");
    podman.tag(&image, &bobs).unwrap();
    s.bob_is_denied("podman-bob", || podman.push_as(&bobs, Some(BOB)).unwrap());
}

// Pins rules 2 and 1 with podman inside the office network (see skopeo_inside_the_cidr).
#[test]
fn podman_inside_the_cidr() {
    podman_story("id-podman-in", Network::Inside);
}

// Pins rules 2 and 3 with podman outside it (see skopeo_outside_the_cidr).
#[test]
fn podman_outside_the_cidr() {
    podman_story("id-podman-out", Network::Outside);
}

/// A `hosts.toml` for the gateway itself (`docker.test:<port>`), trusting the test CA.
fn gateway_hosts_dir(s: &Stage) -> PathBuf {
    let authority = s.authority("docker.test");
    let url = format!("https://{authority}");
    let hosts_dir = s.t.sub("certs.d").unwrap();
    let dir = hosts_dir.join(&authority);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = {url:?}\n\n[host.{url:?}]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  \
             ca = {:?}\n",
            s.ca.ca_path().display().to_string()
        ),
    )
    .unwrap();
    hosts_dir
}

/// The whole story with containerd (`ctr --user`): pulls, pushes a retag of the pulled image.
fn containerd_story(name: &str, net: Network) {
    let s = Stage::new(name, net);
    let hosts = gateway_hosts_dir(&s);
    let ctr = Containerd::start(s.t.path()).unwrap();
    let image = s.name("library/hello:latest");
    s.credential_less_pull(net, || ctr.pull_as(&hosts, &image, None).unwrap());
    // containerd sends credentials only after a 401 and pings no `/v2/` first, so inside the office a pull
    // of what the office may pull never presents them (rule 2 serves it to the network). The wrong password
    // is presented, and refused, for a repository the office may not pull.
    let team = s.name("team/base:latest");
    s.wrong_password_pull("team/base", || {
        ctr.pull_as(&hosts, &team, Some(WRONG)).unwrap()
    });
    ctr.pull_as(&hosts, &image, Some(ALICE))
        .unwrap()
        .check("alice's ctr pull")
        .unwrap();
    let mine = s.name("team/ctr:v1");
    ctr.tag(&image, &mine).unwrap();
    s.alice_pushes("ctr", || ctr.push_as(&hosts, &mine, Some(ALICE)).unwrap());
    let bobs = s.name("team/ctr-bob:v1");
    ctr.tag(&image, &bobs).unwrap();
    s.bob_is_denied("ctr-bob", || ctr.push_as(&hosts, &bobs, Some(BOB)).unwrap());
}

// Pins rules 2 and 1 with containerd inside the office network (see skopeo_inside_the_cidr).
#[test]
fn containerd_inside_the_cidr() {
    containerd_story("id-ctr-in", Network::Inside);
}

// Pins rules 2 and 3 with containerd outside it (see skopeo_outside_the_cidr).
#[test]
fn containerd_outside_the_cidr() {
    containerd_story("id-ctr-out", Network::Outside);
}
