//! Polling a small file for changes and handing each new version to a loader.
//!
//! Polling, not inotify: Kubernetes Secret and ConfigMap mounts replace a symlink to a new directory, which
//! inotify watches on the old file never see. The content is read on every poll (the files are small), so a
//! same-size rewrite within one mtime tick is seen too. A version the loader refuses is logged once and the
//! current state stays in force.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::error::AuthError;

/// Polls `path` every `interval` until `cancel` fires and calls `apply` with its bytes (which should do
/// nothing when they did not change). With `missing_is_empty`, a missing file is passed as empty bytes.
pub(crate) async fn poll(
    path: &Path,
    what: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    missing_is_empty: bool,
    apply: impl Fn(&[u8]) -> Result<bool, AuthError>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_failed: Option<[u8; 32]> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if missing_is_empty && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "{what} unreadable; keeping the current version");
                continue;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if last_failed == Some(hash) {
            continue;
        }
        match apply(&bytes) {
            Ok(_) => last_failed = None,
            Err(error) => {
                tracing::warn!(%error, "{what} reload failed; keeping the current version");
                last_failed = Some(hash);
            }
        }
    }
}
