//! podman as the pulling client, the way CRI-O and podman hosts pull: mirrors come from a `registries.conf`
//! (`[[registry.mirror]]`), and everything podman keeps (storage, run state, auth file, policy) lives in the
//! test's folder, so the machine's own podman configuration is neither read nor changed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::env::require;
use crate::skopeo::Outcome;

/// A private podman set-up: `registries.conf`, signature policy, storage root and run root under one folder.
pub struct Podman {
    dir: PathBuf,
    cert_dir: Option<PathBuf>,
    creds: Option<String>,
    /// podman refuses a run root longer than 50 characters, so it lives in its own short `/tmp` folder.
    runroot: tempfile::TempDir,
}

impl Podman {
    /// Prepares `<dir>/podman/` with an accept-anything signature policy and a `registries.conf` that has one
    /// `[[registry]]` for `prefix` served from `location` (plain HTTP allowed there) and `mirrors` tried
    /// first, over verified TLS.
    pub fn new(dir: &Path, prefix: &str, location: &str, mirrors: &[&str]) -> anyhow::Result<Self> {
        require("podman", "podman");
        let dir = dir.join("podman");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut conf = format!(
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n\n[[registry]]\nprefix = {}\n\
             location = {}\ninsecure = true\n",
            crate::toml_str(prefix),
            crate::toml_str(location)
        );
        for m in mirrors {
            conf.push_str(&format!(
                "\n[[registry.mirror]]\nlocation = {}\ninsecure = false\n",
                crate::toml_str(m)
            ));
        }
        std::fs::write(dir.join("registries.conf"), conf).context("writing registries.conf")?;
        std::fs::write(
            dir.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .context("writing policy.json")?;
        std::fs::write(dir.join("auth.json"), "{}").context("writing auth.json")?;
        let runroot = tempfile::Builder::new()
            .prefix("mg-podman-")
            .tempdir_in("/tmp")
            .context("making podman's run root")?;
        Ok(Self {
            dir,
            cert_dir: None,
            creds: None,
            runroot,
        })
    }

    /// Trust the CA in `<dir>/ca.crt` for every registry and mirror (see [`crate::TestCa::cert_dir`]).
    pub fn cert_dir(mut self, dir: &Path) -> Self {
        self.cert_dir = Some(dir.to_path_buf());
        self
    }

    /// Send `user:pass` with every pull (`--creds`).
    pub fn creds(mut self, user: &str, pass: &str) -> Self {
        self.creds = Some(format!("{user}:{pass}"));
        self
    }

    /// `podman pull <image>` for linux/amd64 with the private configuration.
    pub fn pull(&self, image: &str) -> anyhow::Result<Outcome> {
        self.pull_as(image, self.creds.as_deref())
    }

    /// [`Podman::pull`] sending `creds` (`user:pass`) instead of the template's, or none at all.
    pub fn pull_as(&self, image: &str, creds: Option<&str>) -> anyhow::Result<Outcome> {
        let mut cmd = self.base();
        cmd.args(["pull", "--platform", "linux/amd64"])
            .arg("--signature-policy")
            .arg(self.dir.join("policy.json"));
        self.remote_flags(&mut cmd, creds);
        cmd.arg(image);
        Outcome::run(cmd)
    }

    /// `podman tag <image> <new>`; fails with podman's stderr.
    pub fn tag(&self, image: &str, new: &str) -> anyhow::Result<()> {
        let mut cmd = self.base();
        cmd.args(["tag", image, new]);
        Outcome::run(cmd)?.check("podman tag")?;
        Ok(())
    }

    /// `podman push <image>` (a local image, to the registry its name says) sending `creds` (`user:pass`).
    pub fn push_as(&self, image: &str, creds: Option<&str>) -> anyhow::Result<Outcome> {
        let mut cmd = self.base();
        cmd.arg("push");
        self.remote_flags(&mut cmd, creds);
        cmd.arg(image);
        Outcome::run(cmd)
    }

    /// The private auth file, the CA and the credentials, as every command that talks to a registry takes them.
    fn remote_flags(&self, cmd: &mut Command, creds: Option<&str>) {
        cmd.arg("--authfile").arg(self.dir.join("auth.json"));
        if let Some(certs) = &self.cert_dir {
            cmd.arg("--cert-dir").arg(certs);
        }
        if let Some(creds) = creds {
            cmd.arg("--creds").arg(creds);
        }
    }

    /// `podman image inspect --format {{.Digest}} <image>`: the manifest digest podman pulled.
    pub fn image_digest(&self, image: &str) -> anyhow::Result<String> {
        let mut cmd = self.base();
        cmd.args(["image", "inspect", "--format", "{{.Digest}}", image]);
        let out = Outcome::run(cmd)?.check("podman image inspect")?;
        Ok(out.stdout.trim().to_string())
    }

    fn base(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env(
            "CONTAINERS_REGISTRIES_CONF",
            self.dir.join("registries.conf"),
        )
        .env("REGISTRY_AUTH_FILE", self.dir.join("auth.json"))
        .env("TMPDIR", &self.dir)
        .arg("--root")
        .arg(self.dir.join("root"))
        .arg("--runroot")
        .arg(self.runroot.path())
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "file",
            "--cgroup-manager",
            "cgroupfs",
        ]);
        cmd
    }
}
