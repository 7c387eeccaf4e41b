//! skopeo as the pulling client: it speaks the registry protocol like containerd and podman do (ping,
//! token dance, manifests by Accept, blobs), and copies into an OCI layout whose digests the test can read.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context};

use crate::env::require;

/// Exit status and output of one skopeo run.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Runs `cmd` to completion and keeps its status and output (skopeo, ctr, podman).
    pub fn run(mut cmd: Command) -> anyhow::Result<Outcome> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        Ok(Outcome {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Fails with skopeo's stderr when it did not succeed.
    pub fn check(self, what: &str) -> anyhow::Result<Self> {
        if !self.ok() {
            bail!("{what} failed ({}): {}", self.status, self.stderr.trim());
        }
        Ok(self)
    }
}

/// A skopeo invocation template: which CA to trust, which credentials to send.
#[derive(Clone, Debug, Default)]
pub struct Skopeo {
    cert_dir: Option<PathBuf>,
    creds: Option<String>,
    insecure: bool,
}

impl Skopeo {
    pub fn new() -> Self {
        require("skopeo", "skopeo");
        Self::default()
    }

    /// Trust the CA in `<dir>/ca.crt` (see [`crate::TestCa::cert_dir`]).
    pub fn cert_dir(mut self, dir: &Path) -> Self {
        self.cert_dir = Some(dir.to_path_buf());
        self
    }

    /// Send `user:pass` (Basic to the registry, or to its token realm).
    pub fn creds(mut self, user: &str, pass: &str) -> Self {
        self.creds = Some(format!("{user}:{pass}"));
        self
    }

    /// Talk to a plain-HTTP or unverified registry (direct upstream checks only, never the gateway).
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "--command-timeout",
            "600s",
            "--override-os",
            "linux",
            "--override-arch",
            "amd64",
        ]);
        cmd
    }

    fn src_flags(&self, cmd: &mut Command, prefix: &str) {
        if let Some(dir) = &self.cert_dir {
            cmd.arg(format!("--{prefix}cert-dir")).arg(dir);
        }
        match &self.creds {
            Some(c) => cmd.arg(format!("--{prefix}creds")).arg(c),
            None => cmd.arg(format!("--{prefix}no-creds")),
        };
        if self.insecure {
            cmd.arg(format!("--{prefix}tls-verify=false"));
        }
    }

    /// `skopeo inspect --raw docker://…`: the manifest bytes as served.
    pub fn inspect_raw(&self, image: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.base();
        cmd.args(["inspect", "--raw"]);
        self.src_flags(&mut cmd, "");
        cmd.arg(image);
        Outcome::run(cmd)
    }

    /// `skopeo copy SRC DEST` (`--all` copies every platform of an index), digests preserved.
    pub fn copy(&self, src: &str, dest: &str, all: bool) -> anyhow::Result<Outcome> {
        let mut cmd = self.base();
        cmd.args([
            "copy",
            "--preserve-digests",
            "--dest-oci-accept-uncompressed-layers",
        ]);
        if all {
            cmd.arg("--all");
        }
        self.src_flags(&mut cmd, "src-");
        cmd.arg(src).arg(dest);
        Outcome::run(cmd)
    }

    /// `skopeo copy SRC DEST` with this template's CA and credentials applied to the destination: a push
    /// (e.g. from an `oci:` layout to `docker://` through the gateway).
    pub fn push(&self, src: &str, dest: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.base();
        cmd.args(["copy", "--preserve-digests"]);
        self.src_flags(&mut cmd, "dest-");
        cmd.arg(src).arg(dest);
        Outcome::run(cmd)
    }

    /// Pulls `image` (`docker://host:port/repo:tag`) into an OCI layout at `dir` (tag `pulled`) and returns
    /// the layer digests it holds; fails with skopeo's stderr if the pull failed.
    pub fn pull(&self, image: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
        self.copy(image, &format!("oci:{}:pulled", dir.display()), false)?
            .check(&format!("pulling {image}"))?;
        layer_digests_in_layout(dir, "pulled")
    }
}

/// Layer digests of the image tagged `tag` in an OCI layout (every platform for an index).
pub fn layer_digests_in_layout(dir: &Path, tag: &str) -> anyhow::Result<Vec<String>> {
    let read = |digest: &str| -> anyhow::Result<serde_json::Value> {
        let p = dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let top = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .with_context(|| format!("tag {tag} not in {}", dir.display()))?;
    let mut todo = vec![top["digest"].as_str().unwrap_or_default().to_string()];
    let mut layers = Vec::new();
    while let Some(d) = todo.pop() {
        let m = read(&d)?;
        if let Some(children) = m["manifests"].as_array() {
            todo.extend(
                children
                    .iter()
                    .rev()
                    .filter_map(|c| c["digest"].as_str().map(str::to_string)),
            );
        }
        if let Some(ls) = m["layers"].as_array() {
            layers.extend(
                ls.iter()
                    .filter_map(|l| l["digest"].as_str().map(str::to_string)),
            );
        }
    }
    Ok(layers)
}
