//! The Docker engine (Debian's `docker.io`, dockerd 20.10) as a client: the most used one, and the only one
//! that treats mirrors differently (`registry-mirrors` never sends credentials, and `docker login` decides
//! from the `/v2/` answer whether credentials are needed at all).
//!
//! dockerd runs without systemd, as root, in a mount namespace of its own nested in the test's (`unshare -m`),
//! where a private folder is bind-mounted over `/etc/docker`: `certs.d/<authority>/ca.crt` then trusts the
//! gateway's CA and the machine's `/etc/docker` is never touched, nor seen by any other process. Its data and
//! exec roots live in the test's folder (the exec root and socket in a short `/tmp` folder: unix socket paths
//! are limited to 107 bytes). dockerd starts its own containerd; both are stopped on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::env::require;
use crate::proc::Proc;
use crate::skopeo::Outcome;

/// How long dockerd may take to answer on its socket.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long dockerd may take to stop (it stops its containerd first).
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// The Debian CLI (another `docker` may come first on `PATH`).
const CLI: &str = "/usr/bin/docker";

/// One dockerd at a time per test binary: each is heavy on a small machine, and the scenarios are sequential
/// stories anyway.
static TURN: Mutex<()> = Mutex::new(());

/// A running private dockerd and a CLI configuration of its own; stopped (with its containerd) on drop.
pub struct Docker {
    proc: Proc,
    socket: PathBuf,
    exec_root: PathBuf,
    config: PathBuf,
    _short: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Docker {
    /// Starts dockerd under `<dir>/docker/` with `https://<mirror>` as its registry mirror, trusting
    /// `ca_cert` for every authority in `trusted` (`host:port`, as the client names the registry).
    pub fn start(
        dir: &Path,
        ca_cert: &Path,
        mirror: &str,
        trusted: &[&str],
    ) -> anyhow::Result<Self> {
        require("dockerd", "docker.io");
        require("unshare", "util-linux");
        if !Path::new(CLI).is_file() {
            bail!("missing {CLI}: apt-get install docker.io (tests/run installs it)");
        }
        if !Path::new("/etc/docker").is_dir() {
            bail!("/etc/docker is missing: the private one is bind-mounted over it (docker.io creates it)");
        }
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let base = dir.join("docker");
        let etc = base.join("etc");
        for t in trusted {
            let certs = etc.join("certs.d").join(t);
            std::fs::create_dir_all(&certs)
                .with_context(|| format!("creating {}", certs.display()))?;
            std::fs::copy(ca_cert, certs.join("ca.crt"))
                .with_context(|| format!("copying the CA into {}", certs.display()))?;
        }
        let config = base.join("cli");
        std::fs::create_dir_all(&config).context("creating the CLI config folder")?;
        let short = tempfile::Builder::new()
            .prefix("mg-dk-")
            .tempdir_in("/tmp")
            .context("making dockerd's short exec root")?;
        let exec_root = short.path().join("x");
        let socket = short.path().join("d.sock");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/docker && shift && exec "$@""#)
            .arg("sh")
            .arg(&etc)
            .arg("dockerd")
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(short.path().join("d.pid"))
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
                "--debug",
            ])
            .arg("--registry-mirror")
            .arg(format!("https://{mirror}"));
        let proc = Proc::spawn("dockerd", cmd, &base)?;
        let mut docker = Self {
            proc,
            socket,
            exec_root,
            config,
            _short: short,
            _turn: turn,
        };
        docker.wait_ready()?;
        Ok(docker)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            self.proc.ensure_running()?;
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
                && self.run(&["version"]).is_ok_and(|o| o.ok())
            {
                return Ok(());
            }
            if start.elapsed() > START_DEADLINE {
                bail!(
                    "dockerd did not answer on {} within {START_DEADLINE:?}; log tail:\n{}",
                    self.socket.display(),
                    self.proc.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// `docker <args>` against this daemon, with this instance's CLI config (its logins).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Outcome> {
        Outcome::run(self.cli(args))
    }

    /// `docker login -u user --password-stdin registry`. Succeeded only when the CLI says so.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> anyhow::Result<Outcome> {
        let mut cmd = self.cli(&["login", "-u", user, "--password-stdin", registry]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning docker login")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(password.as_bytes())
                .context("writing the password to docker login")?;
        }
        let out = child
            .wait_with_output()
            .context("waiting for docker login")?;
        Ok(Outcome {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CLI);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config)
            .args(args);
        cmd
    }

    /// dockerd's own containerd, when its pid file is there.
    fn containerd_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.exec_root.join("containerd/containerd.pid"))
            .ok()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
    }
}

impl Drop for Docker {
    /// SIGTERM lets dockerd stop its containerd; whatever is still alive after [`STOP_DEADLINE`] is killed.
    fn drop(&mut self) {
        let containerd = self.containerd_pid();
        let stopped =
            self.proc.signal("TERM").is_ok() && self.proc.wait_exit(STOP_DEADLINE).is_ok();
        if let Some(pid) = containerd {
            let comm = std::fs::read_to_string(Path::new("/proc").join(&pid).join("comm"));
            if comm.is_ok_and(|c| c.trim() == "containerd") {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        if !stopped {
            self.proc.kill();
        }
    }
}
