//! The Docker engine (dockerd 20.10 from Debian) through the gateway, the way an office network and CI use
//! it: daemons with `registry-mirrors` pull as a CIDR tenant without credentials, and users `docker login`,
//! pull and push with their own rights, from inside the tenant's network and from outside it. Pins the
//! identity rules (design.md "Identity") with the one client that only sends credentials after a 401.
//!
//! dockerd always connects from 127.0.0.1, so "inside" and "outside" the network are chosen by the CIDR:
//! `127.0.0.0/8` includes it, `127.0.0.2/32` does not.

// The whole file is test code: a failed unwrap is a failed scenario (clippy only exempts `#[test]` fns).
#![allow(clippy::unwrap_used)]

use mirrorgate_e2e::htpasswd::{basic_auth, Htpasswd};
use mirrorgate_e2e::{office_team_readers, push, Docker, Gateway, OciImage, Pushed, Registry};

const ALICE: (&str, &str) = ("alice", "pw-alice");
const BOB: (&str, &str) = ("bob", "pw-bob");

/// The gateway's shared stage, an upstream holding `library/hello:latest`, and the users.
struct Stage {
    base: mirrorgate_e2e::Stage,
    upstream: Registry,
    hello: Pushed,
    _users: Htpasswd,
}

impl std::ops::Deref for Stage {
    type Target = mirrorgate_e2e::Stage;

    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Stage {
    fn new(name: &str) -> Self {
        let base = mirrorgate_e2e::Stage::new(name);
        let t = &base.t;
        let upstream = Registry::open(t.path(), "upstream").unwrap();
        let image =
            OciImage::write_layout(&t.sub("hello").unwrap(), "hello", "latest", 32 * 1024).unwrap();
        let hello = push(&image, &upstream, "library/hello:latest", None).unwrap();
        let users = Htpasswd::create(
            &t.path().join("htpasswd"),
            &[(ALICE.0, ALICE.1, 5), (BOB.0, BOB.1, 5)],
        )
        .unwrap();
        Self {
            base,
            upstream,
            hello,
            _users: users,
        }
    }

    /// A gateway with the identity scenario's tenants ([`office_team_readers`]) for the office network `cidr`.
    fn gateway(&self, cidr: &str) -> Gateway {
        let rest = office_team_readers(cidr, &self.upstream.url());
        Gateway::start(self.t.path(), &self.config(&rest)).unwrap()
    }

    /// A dockerd mirroring through the gateway and trusting its CA for `docker.test:<port>`.
    fn docker(&self) -> Docker {
        let authority = self.authority("docker.test");
        Docker::start(
            self.t.path(),
            &self.certs.join("ca.crt"),
            &authority,
            &[&authority],
        )
        .unwrap()
    }

    /// `docker.test:<port>/<repo>`, a Docker image reference through the gateway.
    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.authority("docker.test"))
    }
}

/// Fails with the CLI's output and dockerd's log tail unless `docker <args>` succeeded.
fn must(docker: &Docker, what: &str, out: mirrorgate_e2e::Outcome) -> String {
    assert!(
        out.ok(),
        "{what}: {}\n{}\n{}\n--- dockerd log tail ---\n{}",
        out.status,
        out.stdout,
        out.stderr,
        tail(&docker.log())
    );
    out.stdout
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// Pins identity rules 2 and 4 with the real engine: `docker pull hello` goes to the registry mirror, which
// challenges the credential-less `/v2/` ping; dockerd fetches its token anonymously and the CIDR tenant's
// token pulls the image. (docker.io names resolve to nothing here: a success came through the mirror.)
#[test]
fn mirror_pull_as_cidr_tenant() {
    let s = Stage::new("docker-mirror");
    let _gw = s.gateway("127.0.0.0/8");
    let docker = s.docker();
    let before = s.upstream.requests("/v2/library/hello/manifests/");
    let out = docker.run(&["pull", "hello"]).unwrap();
    must(&docker, "docker pull hello via the mirror", out);
    assert!(
        s.upstream.requests("/v2/library/hello/manifests/") > before,
        "the upstream never saw library/hello"
    );
    let ids = docker
        .run(&["image", "inspect", "--format", "{{.Id}}", "hello"])
        .unwrap();
    let id = must(&docker, "docker image inspect hello", ids);
    assert!(id.trim().starts_with("sha256:"), "{id}");
}

/// The login story, the same from inside and outside the office network: a wrong password is refused, alice
/// logs in, pulls and pushes `team/app`, bob logs in and is denied the push.
fn login_pull_push(s: &Stage, docker: &Docker) {
    let registry = s.authority("docker.test");
    let wrong = docker
        .login(&registry, ALICE.0, "not-her-password")
        .unwrap();
    assert!(
        !wrong.ok() && !wrong.stdout.contains("Login Succeeded"),
        "a wrong password logged in: {}\n{}",
        wrong.stdout,
        wrong.stderr
    );

    let out = docker.login(&registry, ALICE.0, ALICE.1).unwrap();
    let said = must(docker, "alice's docker login", out);
    assert!(said.contains("Login Succeeded"), "{said}");
    let hello = s.reference("library/hello:latest");
    let out = docker.run(&["pull", &hello]).unwrap();
    must(docker, "alice pulls library/hello", out);
    let app = s.reference("team/app:v1");
    let out = docker.run(&["tag", &hello, &app]).unwrap();
    must(docker, "docker tag", out);
    let out = docker.run(&["push", &app]).unwrap();
    must(docker, "alice pushes team/app:v1", out);
    // the upstream holds it now, as alice can see through the gateway
    let resp = s.send(
        &s.get("docker.test", "/v2/team/app/tags/list")
            .with_header("authorization", &basic_auth(ALICE.0, ALICE.1)),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json().unwrap()["tags"][0], "v1");

    let out = docker.login(&registry, BOB.0, BOB.1).unwrap();
    must(docker, "bob's docker login", out);
    let bobs = s.reference("team/bob:v1");
    let out = docker.run(&["tag", &hello, &bobs]).unwrap();
    must(docker, "docker tag", out);
    let refused = docker.run(&["push", &bobs]).unwrap();
    assert!(!refused.ok(), "bob pushed: {}", refused.stdout);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("denied"), "bob's push: {said}");
    assert_eq!(
        s.upstream.requests("/v2/team/bob/manifests/"),
        0,
        "bob's manifest reached the upstream"
    );
    // the layers are the test's own bytes: the pulled image is the one pushed upstream
    assert!(!s.hello.layer_digests.is_empty());
}

// Pins identity rules 1 and 3 from inside a CIDR tenant: `/v2/` challenges dockerd, so `docker login` sends
// the password (a wrong one is refused, "Login Succeeded" never appears), and alice's credentials win over
// the office network: her push succeeds, bob's is denied.
#[test]
fn login_pull_push_inside_the_cidr() {
    let s = Stage::new("docker-inside");
    let _gw = s.gateway("127.0.0.0/8");
    let docker = s.docker();
    login_pull_push(&s, &docker);
}

// The same story from outside the tenant's network: only credentials identify the client.
#[test]
fn login_pull_push_outside_the_cidr() {
    let s = Stage::new("docker-outside");
    let _gw = s.gateway("127.0.0.2/32");
    let docker = s.docker();
    login_pull_push(&s, &docker);
}
