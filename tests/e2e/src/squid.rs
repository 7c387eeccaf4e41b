//! Debian's `squid` on loopback as the corporate outbound proxy: basic proxy auth (`basic_ncsa_auth` over an
//! htpasswd file), loopback clients only, no caching, CONNECT to any port (test upstreams listen on random ports),
//! and an access log the scenarios read to prove which requests went through it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::env::require;
use crate::proc::{free_port, wait_for_port, Proc};

const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";

pub struct Squid {
    _proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Squid {
    /// Starts squid in `<dir>/squid`, accepting `user`/`password` only. squid drops to the `proxy` user, so that
    /// folder is made world-writable and `dir` traversable.
    pub fn start(dir: &Path, user: &str, password: &str) -> anyhow::Result<Self> {
        require("squid", "squid");
        require("htpasswd", "apache2-utils");
        let sq = dir.join("squid");
        std::fs::create_dir_all(&sq).with_context(|| format!("creating {}", sq.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(&sq, std::fs::Permissions::from_mode(0o777))?;
        let passwd = sq.join("passwd");
        let status = Command::new("htpasswd")
            .args(["-c", "-b", "-m"])
            .arg(&passwd)
            .args([user, password])
            .output()
            .context("running htpasswd")?;
        if !status.status.success() {
            bail!(
                "htpasswd failed: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644))?;
        // Test upstreams listen on 127.0.0.1 only, and squid prefers the ::1 that tests/hosts also lists.
        let hosts: String = std::fs::read_to_string("/etc/hosts")
            .context("reading /etc/hosts")?
            .lines()
            .filter(|l| !l.trim_start().starts_with("::1"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(sq.join("hosts"), hosts).context("writing squid's hosts file")?;
        let port = free_port();
        let d = sq.display();
        let conf = format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\naccess_log stdio:{d}/access.log squid\n\
             cache_log {d}/cache.log\nhosts_file {d}/hosts\ncache_store_log none\ncache deny all\ncoredump_dir {d}\n\
             auth_param basic program {NCSA_AUTH} {d}/passwd\nauth_param basic realm mirrorgate-e2e\n\
             acl authed proxy_auth REQUIRED\nacl local src 127.0.0.0/8\n\
             http_access allow local authed\nhttp_access deny all\nshutdown_lifetime 0 seconds\n\
             read_timeout 2 seconds\n"
        );
        let conf_path = sq.join("squid.conf");
        std::fs::write(&conf_path, conf).context("writing squid.conf")?;
        let mut cmd = Command::new("squid");
        cmd.arg("-N").arg("-f").arg(&conf_path);
        let mut proc = Proc::spawn("squid", cmd, &sq)?;
        if let Err(e) = wait_for_port(port, Duration::from_secs(20)) {
            proc.ensure_running()?;
            return Err(e);
        }
        proc.ensure_running()?;
        Ok(Squid {
            _proc: proc,
            port,
            dir: sq,
        })
    }

    /// `http://127.0.0.1:<port>`, what `upstream_proxy` names.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits up to 15 s for a line of the access log containing `needle`. squid logs a `CONNECT` when the tunnel
    /// closes, which its 2 s `read_timeout` forces once the gateway's pooled connection goes idle.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if self.access_log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The access log so far: one line per request, `… <status> <bytes> <METHOD> <URL> <user> …`.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}
