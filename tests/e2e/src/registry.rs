//! Debian's `docker-registry` (distribution 2.8) as the upstream, the backend cache, or both: the same
//! program operators put behind mirrorgate, so scenarios test against real protocol behaviour.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::ca::Leaf;
use crate::env::require;
use crate::oci::OciImage;
use crate::proc::{free_port, wait_for_http, wait_for_port, Proc};
use crate::token::TokenIssuer;

/// How the registry authenticates and where its content comes from.
#[derive(Clone, Debug)]
pub enum RegistryMode {
    /// Anyone may pull and push.
    Open,
    /// Docker token auth: 401 with a Bearer challenge pointing at `realm`; tokens verified against `bundle`.
    Token {
        bundle: PathBuf,
        realm: String,
        service: String,
        issuer: String,
    },
    /// Pull-through cache of `remoteurl` (distribution's `proxy` section); pushes answer 405.
    Proxy {
        remoteurl: String,
        username: Option<String>,
        password: Option<String>,
    },
}

/// A running registry on `127.0.0.1:<port>` with filesystem storage in its own folder, deletes enabled.
pub struct Registry {
    name: String,
    proc: Proc,
    port: u16,
    tls: bool,
    dir: PathBuf,
}

/// What a push put in a registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `repo:tag` inside the registry.
    pub reference: String,
    /// Digest of the top manifest (or index).
    pub manifest_digest: String,
    pub layer_digests: Vec<String>,
}

impl Registry {
    /// Starts `docker-registry serve` in `<dir>/<name>/` and waits until `/v2/` answers.
    pub fn start(
        dir: &Path,
        name: &str,
        mode: RegistryMode,
        tls: Option<&Leaf>,
    ) -> anyhow::Result<Self> {
        require("docker-registry", "docker-registry");
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("storage"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port();
        let mut yml = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\nhttp:\n  addr: 127.0.0.1:{port}\n  \
             secret: e2e-secret-{name}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
            yaml_str(&dir.join("storage").display().to_string()),
        );
        if let Some(leaf) = tls {
            yml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&leaf.cert.display().to_string()),
                yaml_str(&leaf.key.display().to_string())
            ));
        }
        match &mode {
            RegistryMode::Open => {}
            RegistryMode::Token { bundle, realm, service, issuer } => yml.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                yaml_str(realm),
                yaml_str(service),
                yaml_str(issuer),
                yaml_str(&bundle.display().to_string())
            )),
            RegistryMode::Proxy { remoteurl, username, password } => {
                yml.push_str(&format!("proxy:\n  remoteurl: {}\n", yaml_str(remoteurl)));
                if let (Some(u), Some(p)) = (username, password) {
                    yml.push_str(&format!("  username: {}\n  password: {}\n", yaml_str(u), yaml_str(p)));
                }
            }
        }
        let cfg = dir.join("config.yml");
        std::fs::write(&cfg, yml).context("writing the registry config")?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        let mut proc = Proc::spawn(&format!("registry-{name}"), cmd, &dir)?;
        let deadline = Duration::from_secs(20);
        if tls.is_some() {
            wait_for_port(port, deadline)?;
        } else if let Err(e) = wait_for_http(port, "/v2/", &[200, 401], deadline) {
            proc.ensure_running()?;
            return Err(e);
        }
        proc.ensure_running()?;
        Ok(Self {
            name: name.to_string(),
            proc,
            port,
            tls: tls.is_some(),
            dir,
        })
    }

    /// An open registry (no auth).
    pub fn open(dir: &Path, name: &str) -> anyhow::Result<Self> {
        Self::start(dir, name, RegistryMode::Open, None)
    }

    /// A registry trusting `issuer`'s tokens.
    pub fn token(dir: &Path, name: &str, issuer: &TokenIssuer) -> anyhow::Result<Self> {
        let mode = RegistryMode::Token {
            bundle: issuer.cert_bundle().to_path_buf(),
            realm: issuer.realm(),
            service: issuer.service().to_string(),
            issuer: issuer.issuer().to_string(),
        };
        Self::start(dir, name, mode, None)
    }

    /// A pull-through cache of `remoteurl` (which must already be up: distribution panics otherwise).
    pub fn proxy(
        dir: &Path,
        name: &str,
        remoteurl: &str,
        creds: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let mode = RegistryMode::Proxy {
            remoteurl: remoteurl.to_string(),
            username: creds.map(|c| c.0.to_string()),
            password: creds.map(|c| c.1.to_string()),
        };
        Self::start(dir, name, mode, None)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>` (or https), what a route's `upstream`/`endpoints` names.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// How many requests the registry completed whose URI contains `path_part` (from its
    /// `response completed` log lines): proof that something did, or did not, reach it.
    pub fn requests(&self, path_part: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("response completed")
                    && l.contains("http.request.uri=")
                    && l.contains(path_part)
            })
            .count()
    }

    /// Kills the registry (an endpoint going away).
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Quotes a YAML scalar (JSON strings are valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Pushes `image` to `registry` as `reference` (`repo:tag`) with skopeo, keeping every digest
/// (`--preserve-digests`: skopeo would otherwise gzip the uncompressed layers). `creds` are sent as Basic to
/// the registry or its token realm.
pub fn push(
    image: &OciImage,
    registry: &Registry,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> anyhow::Result<Pushed> {
    require("skopeo", "skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if image.is_multi_arch() {
        cmd.arg("--all");
    }
    if let Some((u, p)) = creds {
        cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
    } else {
        cmd.arg("--dest-no-creds");
    }
    cmd.arg(image.oci_ref())
        .arg(format!("docker://{}/{reference}", registry.host()));
    let out = cmd.output().context("running skopeo copy")?;
    if !out.status.success() {
        bail!(
            "skopeo push of {} to {}/{reference} failed: {}\nregistry log tail:\n{}",
            image.oci_ref(),
            registry.host(),
            String::from_utf8_lossy(&out.stderr),
            registry.proc.tail(30)
        );
    }
    Ok(Pushed {
        reference: reference.to_string(),
        manifest_digest: image.top.digest.clone(),
        layer_digests: image.layers.iter().map(|l| l.digest.clone()).collect(),
    })
}
