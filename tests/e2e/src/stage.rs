//! The set-up every gateway scenario starts from, written once: a scratch folder, a CA and a gateway
//! certificate for the test hosts, clients trusting that CA, free listener ports, and the config contract's
//! fixed part (listeners, static certificate, limits generous enough to stay out of the way). A scenario
//! file adds only what its story is about (auth sections, tenants, routes) through the few options here.
//!
//! Unlike the lower-level helpers, a [`Stage`] panics on a set-up failure (with the whole error chain):
//! it is only ever used from a scenario, where a failed set-up is a failed test, and that keeps every
//! scenario free of `.unwrap()` noise on plumbing.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::ca::{Leaf, TestCa};
use crate::env::{require_hosts, TestDir};
use crate::gateway::{Gateway, Ports};
use crate::http::{HttpCheck, RawRequest, RawResponse};
use crate::skopeo::Skopeo;

/// Every name the stage's gateway certificate covers (all map to loopback in `tests/hosts`).
pub const TEST_HOSTS: &[&str] = &[
    "docker.test",
    "gcr.test",
    "ghcr.test",
    "quay.test",
    "k8s.test",
    "mirror.test",
];

/// A `[limits]` table no scenario reaches: anonymous traffic is limited by default, and most scenarios are
/// not about limits.
pub const GENEROUS_LIMITS: &str =
    "[limits]\nrequests_per_second = 10000\nburst = 10000\nbytes_per_second = \"10GiB\"\n";

/// A scenario's fixed parts. Fields are public so a scenario can reach any of them (the CA for raw TLS, the
/// client cert dir for podman or containerd, the ports for URLs).
pub struct Stage {
    /// The scratch folder: the gateway's config and log, registries, images.
    pub t: TestDir,
    pub ca: TestCa,
    /// The gateway's static certificate, for [`TEST_HOSTS`].
    pub leaf: Leaf,
    /// A folder holding only the CA's `ca.crt` (skopeo's `--src-cert-dir`, podman's `certs.d` shape).
    pub certs: PathBuf,
    pub ports: Ports,
    /// Raw HTTP checks trusting the CA.
    pub http: HttpCheck,
    limits: String,
    accept: Option<String>,
    env: Vec<(String, String)>,
}

impl Stage {
    /// Checks the test hosts resolve, then makes `/tmp/mirrorgate-e2e-<name>-…` with the CA, the gateway
    /// certificate, the client cert dir and three distinct free ports.
    pub fn new(name: &str) -> Self {
        require_hosts();
        let t = must(TestDir::new(name));
        let ca = must(t.sub("ca").and_then(|dir| TestCa::new(&dir)));
        let leaf = must(ca.issue("site", TEST_HOSTS));
        let certs = must(t.sub("client-certs").and_then(|dir| ca.cert_dir(&dir)));
        let http = must(HttpCheck::new(&ca));
        Self {
            t,
            ca,
            leaf,
            certs,
            ports: Ports::free(),
            http,
            limits: GENEROUS_LIMITS.to_string(),
            accept: None,
            env: Vec::new(),
        }
    }

    /// Replaces [`GENEROUS_LIMITS`] in every config with `table` (a whole `[limits]` table, or "" for a
    /// config without one, when the scenario writes its own further down).
    pub fn limits(mut self, table: &str) -> Self {
        self.limits = table.to_string();
        self
    }

    /// Sends `Accept: media_types` with every [`Stage::get`].
    pub fn accept(mut self, media_types: &str) -> Self {
        self.accept = Some(media_types.to_string());
        self
    }

    /// Starts every gateway with `key=value` in its environment (e.g. a finer `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// skopeo trusting the CA (made on demand: only scenarios that pull need the program).
    pub fn skopeo(&self) -> Skopeo {
        Skopeo::new().cert_dir(&self.certs)
    }

    /// `[tls]` naming the static certificate and key.
    pub fn tls_toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            self.leaf.cert.display().to_string(),
            self.leaf.key.display().to_string()
        )
    }

    /// The whole config: `[server]` with the three listeners, `[tls]`, the limits table, then `rest`.
    pub fn config(&self, rest: &str) -> String {
        self.config_with("", rest)
    }

    /// [`Stage::config`] with `server_extra` lines added to `[server]` (e.g. `upstream_timeout`).
    pub fn config_with(&self, server_extra: &str, rest: &str) -> String {
        let mut toml = format!(
            "{}{server_extra}\n{}\n",
            self.ports.server_toml(),
            self.tls_toml()
        );
        if !self.limits.is_empty() {
            toml.push_str(&self.limits);
            toml.push('\n');
        }
        toml.push_str(rest);
        toml
    }

    /// Starts `mirrorgate run` in the scratch folder on [`Stage::config`]`(rest)`.
    pub fn gateway(&self, rest: &str) -> Gateway {
        self.gateway_with("", rest)
    }

    /// Starts `mirrorgate run` on [`Stage::config_with`]`(server_extra, rest)`.
    pub fn gateway_with(&self, server_extra: &str, rest: &str) -> Gateway {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        must(Gateway::start_with_env(
            self.t.path(),
            &self.config_with(server_extra, rest),
            &env,
        ))
    }

    /// `host:<https port>`, what a client puts in `Host`.
    pub fn authority(&self, host: &str) -> String {
        format!("{host}:{}", self.ports.https)
    }

    /// A GET of `path` over TLS + HTTP/1.1 on the https port for `host`: SNI `host`, Host `host:<port>`
    /// (plus the stage's `Accept`, if set).
    pub fn get(&self, host: &str, path: &str) -> RawRequest {
        let req = RawRequest::h1(self.ports.https, host, path).with_host(&self.authority(host));
        match &self.accept {
            Some(accept) => req.with_header("accept", accept),
            None => req,
        }
    }

    /// Sends `req` with the CA-trusting client.
    pub fn send(&self, req: &RawRequest) -> RawResponse {
        must(self.http.send(req))
    }

    /// The admin listener's `/metrics` text; panics unless it answers 200.
    pub fn metrics(&self) -> String {
        let port = self.ports.admin;
        let resp = self.send(&RawRequest::plain(
            port,
            &format!("127.0.0.1:{port}"),
            "/metrics",
        ));
        assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
        resp.text()
    }

    /// `docker://<host>:<https port>/<repo>`, an image reference through the gateway.
    pub fn via(&self, host: &str, repo: &str) -> String {
        format!("docker://{}/{repo}", self.authority(host))
    }
}

/// A set-up step's result, or a panic with the whole error chain.
fn must<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("setting up the stage: {e:#}"))
}

/// `sha256:<hex>` of `bytes`, the OCI digest form.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Replaces a file the way ConfigMaps and editors do (`<path>.new` written, then renamed over it), so no
/// reader ever sees half a file. Panics on failure.
pub fn rewrite(path: &Path, text: &str) {
    let replace = || -> anyhow::Result<()> {
        let tmp = path.with_extension("toml.new");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
    };
    if let Err(e) = replace() {
        panic!("rewriting {}: {e:#}", path.display());
    }
}

/// The identity scenario's auth and tenants (`identity.rs`, `docker.rs`): htpasswd plus the token server, the
/// office network `cidr` (pull `library/*` only), team (alice: pull, and push `team/*`), readers (bob: pull
/// `library/*` and `team/*`, no push), and one private route docker.test → `upstream`.
pub fn office_team_readers(cidr: &str, upstream: &str) -> String {
    format!(
        r#"
[auth]
htpasswd = "htpasswd"

[auth.token]
key = "token-key.pem"

[[tenant]]
name = "office"
cidrs = [{cidr:?}]
allow = ["docker.test/library/*"]

[[tenant]]
name = "team"
users = ["alice"]
allow = ["docker.test/library/*", "push:docker.test/team/*"]

[[tenant]]
name = "readers"
users = ["bob"]
allow = ["docker.test/library/*", "docker.test/team/*"]

[[route]]
host = "docker.test"
upstream = {upstream:?}
anonymous = false
"#
    )
}

/// An anonymous `[[route]]` for `host` served by `upstream`, plus `extra` `key = value` lines.
pub fn route(host: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\nhost = {host:?}\nupstream = {upstream:?}\nanonymous = true\n{extra}\n\n")
}

/// A `[[route]]` for `host` made of the given `key = value` lines (routes without a single `upstream`),
/// anonymous unless a line says otherwise.
pub fn route_lines(host: &str, lines: &[String]) -> String {
    let anonymous = if lines.iter().any(|l| l.starts_with("anonymous")) {
        ""
    } else {
        "anonymous = true\n"
    };
    format!(
        "[[route]]\nhost = {host:?}\n{anonymous}{}\n\n",
        lines.join("\n")
    )
}

/// `key = "value"` (a TOML basic string).
pub fn kv(key: &str, value: &str) -> String {
    format!("{key} = {value:?}")
}

/// `endpoints = ["…", …]`, the route's URLs tried in order before its upstream ("" for none).
pub fn endpoints(urls: &[String]) -> String {
    if urls.is_empty() {
        return String::new();
    }
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("endpoints = [{}]", list.join(", "))
}

/// The sum of every sample of `name` in Prometheus text whose label set contains each of `labels`
/// (`key="value"` strings).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A route is anonymous by default, and a line saying otherwise is not contradicted.
    #[test]
    fn route_lines_anonymous_unless_overridden() {
        let open: toml::Table =
            toml::from_str(&route_lines("a.test", &[kv("upstream", "http://u")])).unwrap();
        assert_eq!(open["route"][0]["anonymous"].as_bool(), Some(true));
        let closed: toml::Table =
            toml::from_str(&route_lines("a.test", &["anonymous = false".into()])).unwrap();
        assert_eq!(closed["route"][0]["anonymous"].as_bool(), Some(false));
    }

    // route() with endpoints is one valid table listing them in order; without, no endpoints key at all.
    #[test]
    fn route_with_and_without_endpoints() {
        let eps = endpoints(&["http://a".into(), "http://b".into()]);
        let t: toml::Table = toml::from_str(&route("d.test", "http://u", &eps)).unwrap();
        let r = &t["route"][0];
        assert_eq!(r["upstream"].as_str(), Some("http://u"));
        assert_eq!(
            r["endpoints"].as_array().unwrap(),
            &vec![toml::Value::from("http://a"), toml::Value::from("http://b")]
        );
        let bare: toml::Table =
            toml::from_str(&route("d.test", "http://u", &endpoints(&[]))).unwrap();
        assert!(bare["route"][0].get("endpoints").is_none());
    }

    // Only samples of exactly `name` with every wanted label are summed; comments are skipped.
    #[test]
    fn metric_sums_matching_samples() {
        let text =
            "# HELP x_total x\nx_total{kind=\"blob\",a=\"1\"} 2\nx_total{kind=\"manifest\"} 5\n\
                    x_total_more{kind=\"blob\"} 100\nx_total 1\n";
        assert_eq!(metric(text, "x_total", &["kind=\"blob\""]), 2.0);
        assert_eq!(metric(text, "x_total", &[]), 8.0);
    }

    // rewrite replaces the whole file and leaves no temporary behind.
    #[test]
    fn rewrite_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrorgate.toml");
        std::fs::write(&path, "old").unwrap();
        rewrite(&path, "new");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!dir.path().join("mirrorgate.toml.new").exists());
    }

    // The digest form is the one registries use.
    #[test]
    fn sha256_is_oci_digest_form() {
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
