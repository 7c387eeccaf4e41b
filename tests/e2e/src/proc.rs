//! Child processes that cannot outlive their test, and the waits that make start-up deterministic.

use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free TCP port on 127.0.0.1 (bound, then released: the usual small race, acceptable on a test machine).
///
/// A port is never handed out twice in one test process: tests run in parallel, and the kernel may give the same
/// ephemeral port to two `bind(0)` calls once the first socket is closed.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        let mut seen = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, deadline: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listened on 127.0.0.1:{port} within {deadline:?}")
}

/// Waits until a plain-HTTP `GET http://127.0.0.1:<port><path>` answers with one of `statuses`.
/// Returns the status seen.
pub fn wait_for_http(
    port: u16,
    path: &str,
    statuses: &[u16],
    deadline: Duration,
) -> anyhow::Result<u16> {
    let start = Instant::now();
    let mut last = String::from("no answer");
    while start.elapsed() < deadline {
        match crate::http::plain_get_status(port, path) {
            Ok(s) if statuses.contains(&s) => return Ok(s),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("http://127.0.0.1:{port}{path} did not answer {statuses:?} within {deadline:?} (last: {last})")
}

/// A child process owned by a test: killed and reaped on drop, its stdout and stderr in one log file in the
/// test's folder. When the test is panicking, the log's tail is printed so CI output shows why.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("cloning the log handle")?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Fails if the process has already exited (it crashed during start-up), quoting its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().context("polling the child")? {
                bail!(
                    "{} exited early with {status}; log:\n{}",
                    self.name,
                    self.tail(60)
                );
            }
        }
        Ok(())
    }

    /// Sends `signal` (e.g. "TERM") with kill(1); the workspace forbids unsafe code, so no libc::kill.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits for the process to exit, up to `deadline`; kills it after that and fails.
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already reaped", self.name)
        };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().context("polling the child")? {
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                bail!("{} did not exit within {deadline:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills (SIGKILL) and reaps now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        // Read at most the last 256 KiB: logs of big pulls can be long.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}), last 80 lines -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                self.tail(80),
                self.name
            );
        }
    }
}

/// Serves HTTP/1.1 on `listener` with `handle(state, request)` for every request, on the shared runtime, until
/// the returned task is aborted: the accept loop the test servers (token issuer, rate-limiting front) share.
pub(crate) fn spawn_http1<S, F, Fut, B>(
    listener: tokio::net::TcpListener,
    state: std::sync::Arc<S>,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    S: Send + Sync + 'static,
    F: Fn(std::sync::Arc<S>, http::Request<hyper::body::Incoming>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = Result<http::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    crate::env::runtime().spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (state, handle) = (state.clone(), handle.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle.clone()(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Output goes to the log file and a dropped process is reaped.
    #[test]
    fn proc_logs_and_is_killed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello-from-child; exec sleep 60"]);
        let mut p = Proc::spawn("sleeper", cmd, dir.path()).unwrap();
        let start = Instant::now();
        while !p.log().contains("hello-from-child") && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(p.log().contains("hello-from-child"));
        p.ensure_running().unwrap();
        let pid = p.pid();
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} survived its Proc"
        );
    }

    // SIGTERM is delivered and the exit is observed.
    #[test]
    fn signal_term_stops_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        let mut p = Proc::spawn("sleeper", cmd, dir.path()).unwrap();
        p.signal("TERM").unwrap();
        let status = p.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
    }

    // A port with no listener is reported as such, within the deadline.
    #[test]
    fn wait_for_port_times_out_on_a_dead_port() {
        let port = free_port();
        assert!(wait_for_port(port, Duration::from_millis(300)).is_err());
    }
}
