//! What a scenario needs from the machine: the real programs, the test host names, the gateway binary, a
//! scratch folder and one shared async runtime.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;

/// Panics unless `binary` is on `PATH`. A scenario that silently skipped when skopeo is missing would make a
/// green run meaningless, so the message says how to get it instead.
pub fn require(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| is_executable(&dir.join(binary))))
        .unwrap_or(false);
    if !found {
        panic!("missing {binary}: apt-get install {package} (tests/run installs it)");
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Panics unless `docker.test` resolves to 127.0.0.1, which is true only inside the mount namespace that
/// `tests/run` sets up (the machine's own `/etc/hosts` is never edited).
pub fn require_hosts() {
    use std::net::ToSocketAddrs;
    let resolved: Vec<_> = ("docker.test", 1)
        .to_socket_addrs()
        .map(|addrs| addrs.collect())
        .unwrap_or_default();
    if !resolved
        .iter()
        .any(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST)
    {
        panic!(
            "docker.test does not resolve to 127.0.0.1 (got {resolved:?}): run through tests/run, which mounts \
             tests/hosts over /etc/hosts in a private mount namespace"
        );
    }
}

/// The mirrorgate binary under test: `$MIRRORGATE_BIN` (set by `tests/run`), else the workspace's
/// `target/debug/mirrorgate`. Panics when it does not exist, naming the command that builds it.
pub fn bin_path() -> PathBuf {
    let path = std::env::var_os("MIRRORGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/mirrorgate")
        });
    if !is_executable(&path) {
        panic!(
            "mirrorgate binary not found at {}: run `cargo build -p mirrorgate` or set MIRRORGATE_BIN \
             (tests/run does both)",
            path.display()
        );
    }
    path
}

/// One multi-threaded runtime for the whole test binary: the token issuer serves on it and the blocking
/// HTTP helpers `block_on` it, so scenarios stay plain sequential `#[test]` functions.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build the test runtime: {e}"),
        }
    })
}

/// A scratch folder for one scenario: every process log, config, certificate and image lives here.
/// Removed on drop, unless `MIRRORGATE_E2E_KEEP=1` (then its path is printed, for a post-mortem).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Makes `/tmp/mirrorgate-e2e-<name>-XXXX`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mirrorgate-e2e-{name}-"))
            .tempdir()
            .context("creating the test's temp dir")?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A sub-folder, created if missing.
    pub fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("MIRRORGATE_E2E_KEEP").is_some_and(|v| v == "1") {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A missing program is a loud failure that names the package, never a skip.
    #[test]
    fn require_panics_with_the_package_name() {
        let err = std::panic::catch_unwind(|| require("surely-not-a-real-binary-xyz", "pkg-xyz"))
            .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("apt-get install pkg-xyz"), "{msg}");
    }

    // Programs on PATH are found.
    #[test]
    fn require_finds_sh() {
        require("sh", "dash");
    }
}
