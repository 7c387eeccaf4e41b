//! Free space of the filesystem holding the cache (statvfs through rustix: the workspace forbids `unsafe`).

use std::path::Path;

/// Bytes available to an unprivileged writer on the filesystem of `path`; `None` if it cannot be asked (the
/// caller then does not evict for space: never evict everything on a failing syscall).
pub(crate) fn available(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    // Pins that the free-space probe works on the machine's filesystem (min_free depends on it).
    #[test]
    fn reports_some_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::available(dir.path()).unwrap() > 0);
    }
}
