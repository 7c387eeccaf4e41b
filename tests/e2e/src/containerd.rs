//! containerd as the pulling client, the way a Kubernetes node pulls: its own daemon (root, state and socket in
//! the test's folder, so the machine's containerd is never touched) driven by `ctr`, with mirrors configured
//! through `hosts.toml` files. It is the client that sends `?ns=<registry>` to a mirror.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::env::require;
use crate::proc::Proc;
use crate::skopeo::Outcome;

/// How long the daemon may take to create its socket.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The containerd namespace the scenarios pull into (kept apart from `default` and `k8s.io`).
const NAMESPACE: &str = "mirrorgate-e2e";

/// A running `containerd --config <dir>/config.toml`; killed on drop.
pub struct Containerd {
    proc: Proc,
    socket: PathBuf,
}

impl Containerd {
    /// Starts a private containerd under `<dir>/containerd/` (must run as root). The CRI plugin and the
    /// snapshotters that need kernel support are disabled: pulls use the `native` snapshotter.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        require("containerd", "containerd");
        require("ctr", "containerd");
        let base = dir.join("containerd");
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let socket = base.join("containerd.sock");
        let path = |p: &str| crate::toml_str(&base.join(p).display().to_string());
        let config = format!(
            "version = 2\nroot = {root}\nstate = {state}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\n\
             [grpc]\n  address = {sock}\n\n[ttrpc]\n  address = {ttrpc}\n\n[debug]\n  level = \"debug\"\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = path("root"),
            state = path("state"),
            sock = crate::toml_str(&socket.display().to_string()),
            ttrpc = path("containerd.sock.ttrpc"),
            opt = path("opt"),
        );
        let cfg = base.join("config.toml");
        std::fs::write(&cfg, config).context("writing containerd's config.toml")?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg);
        let mut proc = Proc::spawn("containerd", cmd, &base)?;
        let start = Instant::now();
        loop {
            proc.ensure_running()?;
            if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break;
            }
            if start.elapsed() > START_DEADLINE {
                bail!(
                    "containerd did not create {} within {START_DEADLINE:?}; log tail:\n{}",
                    socket.display(),
                    proc.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { proc, socket })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// `ctr images pull --hosts-dir <hosts_dir> <image>` for linux/amd64, unpacked with the native
    /// snapshotter. `image` is a full reference (`host:port/repo:tag`).
    pub fn pull(&self, hosts_dir: &Path, image: &str) -> anyhow::Result<Outcome> {
        self.pull_as(hosts_dir, image, None)
    }

    /// [`Containerd::pull`] sending `user` (`name:password`, ctr's `--user`) to every host that asks.
    pub fn pull_as(
        &self,
        hosts_dir: &Path,
        image: &str,
        user: Option<&str>,
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.ctr();
        cmd.args([
            "images",
            "pull",
            "--platform",
            "linux/amd64",
            "--snapshotter",
            "native",
        ]);
        Self::remote_flags(&mut cmd, hosts_dir, user);
        cmd.arg(image);
        Outcome::run(cmd)
    }

    /// `ctr images tag <image> <new>`; fails with ctr's stderr.
    pub fn tag(&self, image: &str, new: &str) -> anyhow::Result<()> {
        let mut cmd = self.ctr();
        cmd.args(["images", "tag", "--force", image, new]);
        Outcome::run(cmd)?.check("ctr images tag")?;
        Ok(())
    }

    /// `ctr images push --hosts-dir <hosts_dir> [--user <user>] <image>` (linux/amd64 content only).
    pub fn push_as(
        &self,
        hosts_dir: &Path,
        image: &str,
        user: Option<&str>,
    ) -> anyhow::Result<Outcome> {
        let mut cmd = self.ctr();
        cmd.args(["images", "push", "--platform", "linux/amd64"]);
        Self::remote_flags(&mut cmd, hosts_dir, user);
        cmd.arg(image);
        Outcome::run(cmd)
    }

    fn remote_flags(cmd: &mut Command, hosts_dir: &Path, user: Option<&str>) {
        cmd.arg("--hosts-dir").arg(hosts_dir);
        if let Some(user) = user {
            cmd.arg("--user").arg(user);
        }
    }

    /// The digest containerd recorded for `image` (`ctr images ls`), i.e. what the pull resolved.
    pub fn image_digest(&self, image: &str) -> anyhow::Result<String> {
        let mut cmd = self.ctr();
        cmd.args(["images", "ls"]);
        let out = Outcome::run(cmd)?.check("ctr images ls")?;
        out.stdout
            .lines()
            .find_map(|l| {
                let mut cols = l.split_whitespace();
                (cols.next() == Some(image))
                    .then(|| cols.find(|c| c.starts_with("sha256:")).map(str::to_string))
                    .flatten()
            })
            .with_context(|| format!("{image} not in `ctr images ls`:\n{}", out.stdout))
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE]);
        cmd
    }
}
