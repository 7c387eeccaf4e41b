//! mirrorgate itself, run the way operators run it: `mirrorgate run -c FILE` as a process, configured only
//! through the documented TOML contract.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::env::bin_path;
use crate::proc::{free_port, wait_for_http, Proc};
use crate::skopeo::Outcome;

/// How long the gateway may take to listen (generous: CI machines are slow, and a cold start may make a
/// self-signed certificate or a token key).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Free loopback ports for the three listeners, and the `[server]` section naming them.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub https: u16,
    pub http: u16,
    pub admin: u16,
}

impl Ports {
    /// Three free ports, all different: [`free_port`] never hands a port out twice in one process, and the
    /// gateway rightly refuses a config naming one address twice.
    pub fn free() -> Self {
        Self {
            https: free_port(),
            http: free_port(),
            admin: free_port(),
        }
    }

    /// `[server]` with https, http and admin on 127.0.0.1.
    pub fn server_toml(&self) -> String {
        format!(
            "[server]\nhttps = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            self.https, self.http, self.admin
        )
    }
}

/// A running gateway; killed on drop, its log printed if the test panicked.
pub struct Gateway {
    proc: Proc,
    config: PathBuf,
    https_port: u16,
    http_port: Option<u16>,
    admin_port: Option<u16>,
}

impl Gateway {
    /// Writes `toml` to `<dir>/mirrorgate.toml` (relative paths in it resolve against `dir`), runs
    /// `mirrorgate run -c` with `RUST_LOG=info`, and waits for the https port and, when an admin listener is
    /// configured, for `/readyz` to answer 200.
    pub fn start(dir: &Path, toml: &str) -> anyhow::Result<Self> {
        Self::start_with_env(dir, toml, &[])
    }

    /// [`Gateway::start`] with extra environment variables (e.g. `*_env` secrets).
    pub fn start_with_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let config = dir.join("mirrorgate.toml");
        std::fs::write(&config, toml).context("writing mirrorgate.toml")?;
        let parsed: toml::Table =
            toml::from_str(toml).context("the test's own config is not TOML")?;
        let port_of = |key: &str| -> anyhow::Result<Option<u16>> {
            match parsed
                .get("server")
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
            {
                Some(addr) => Ok(Some(
                    addr.parse::<SocketAddr>()
                        .with_context(|| format!("server.{key}"))?
                        .port(),
                )),
                None => Ok(None),
            }
        };
        let https_port = port_of("https")?.context("the config needs server.https")?;
        let http_port = port_of("http")?;
        let admin_port = port_of("admin")?;

        let mut cmd = Command::new(bin_path());
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .current_dir(dir)
            .env("RUST_LOG", "info");
        // The gateway honours the proxy variables when its config names no proxy: the machine's own must not
        // reroute a scenario (a scenario that wants them passes them in `env`).
        for k in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn("mirrorgate", cmd, dir)?;
        let start = Instant::now();
        loop {
            proc.ensure_running()?;
            if std::net::TcpStream::connect(("127.0.0.1", https_port)).is_ok() {
                break;
            }
            if start.elapsed() > START_DEADLINE {
                bail!(
                    "mirrorgate did not listen on https port {https_port} within {START_DEADLINE:?}; log tail:\n{}",
                    proc.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(admin) = admin_port {
            let left = START_DEADLINE
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(5));
            if let Err(e) = wait_for_http(admin, "/readyz", &[200], left) {
                bail!(
                    "waiting for admin /readyz: {e:#}; log tail:\n{}",
                    proc.tail(40)
                );
            }
        }
        Ok(Self {
            proc,
            config,
            https_port,
            http_port,
            admin_port,
        })
    }

    /// Runs `mirrorgate check -c <file>` and returns what it said.
    pub fn check(config: &Path) -> anyhow::Result<Outcome> {
        let out = Command::new(bin_path())
            .arg("check")
            .arg("-c")
            .arg(config)
            .output()
            .context("running mirrorgate check")?;
        Ok(Outcome {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// The plain-HTTP listener's port; panics if the config has none (a scenario bug).
    pub fn http_port(&self) -> u16 {
        self.http_port
            .unwrap_or_else(|| panic!("this gateway has no server.http"))
    }

    /// The admin listener's port; panics if the config has none (a scenario bug).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
            .unwrap_or_else(|| panic!("this gateway has no server.admin"))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// How many access-log lines are for a path containing `path_part` and answered `status` (the log is
    /// plain text off a terminal, so `status=200` matches as written).
    pub fn access_count(&self, path_part: &str, status: u16) -> usize {
        let status = format!("status={status}");
        self.log()
            .lines()
            .filter(|l| {
                l.contains("mirrorgate::access") && l.contains(path_part) && l.contains(&status)
            })
            .count()
    }

    /// Resident memory in KiB (`VmRSS` in /proc/<pid>/status).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("reading /proc status")?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line")
    }

    /// Writes `text` as the config, sends SIGHUP and waits (up to 10 s) for the next "config reloaded" line.
    pub fn reload_with(&self, text: &str) -> anyhow::Result<()> {
        let needle = "config reloaded";
        let before = self.log().matches(needle).count();
        crate::stage::rewrite(&self.config, text);
        self.proc.signal("HUP")?;
        let start = Instant::now();
        while self.log().matches(needle).count() <= before {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("no reload within 10 s; log tail:\n{}", self.proc.tail(40));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting (to test what happens to requests in flight).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.proc.signal("TERM")
    }

    /// SIGTERM, then waits up to 30 s for a clean exit; fails if it exits non-zero or hangs.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.signal("TERM")?;
        self.wait_exit(Duration::from_secs(30))
    }

    /// Waits for an exit already asked for; fails if it is not a success.
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let status = self.proc.wait_exit(deadline)?;
        if !status.success() {
            bail!(
                "mirrorgate exited with {status}; log tail:\n{}",
                self.proc.tail(40)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The three listeners never share a port, however many stages a test binary makes.
    #[test]
    fn free_ports_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = Ports::free();
            for port in [p.https, p.http, p.admin] {
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }
}
