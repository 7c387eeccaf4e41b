//! The audit trail: one JSON line per manifest pull, push or delete and per refused request, for a SIEM.
//!
//! Lines are built where the access log is written (when the response body ends, so the status and the served
//! `Docker-Content-Digest` are known) and handed to a bounded queue; a dedicated writer thread appends them to
//! the file, rotating by size, or to stdout. The request path never waits for the disk: when the queue is full
//! the line is dropped, counted in `mirrorgate_audit_dropped_total` and logged (at most once a minute).
//!
//! What is written: time, client address (after `trusted_proxies`), tenant, user, route, method, action,
//! repository, reference asked for, digest served, status, endpoint, and the refusal's message. Never a
//! credential: no header, password or token reaches a line. A 401 to a request that carried no credentials is
//! the first step of the token dance every client makes, not a refusal of anyone, and is not written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use mirrorgate_auth::Action;
use mirrorgate_config::{AuditConfig, AuditTarget};
use mirrorgate_metrics::Metrics;
use mirrorgate_registry::RequestKind;

use crate::context::RequestFacts;
use crate::error::ProxyError;

/// Lines waiting for the writer; past this they are dropped (a stuck disk must not grow memory or stall).
const QUEUE: usize = 8192;
/// At most one "dropped" warning per this many seconds.
const DROP_WARN_EVERY_SECS: u64 = 60;

/// Why the audit trail could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening audit file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the audit writer thread")]
    Thread(#[source] std::io::Error),
}

/// The sending side; dropping it lets the writer drain the queue and stop.
pub struct AuditLog {
    tx: SyncSender<String>,
    metrics: Arc<Metrics>,
    last_drop_warning: AtomicU64,
}

impl AuditLog {
    /// Opens the target (so a bad path fails at start or reload, not at the first line) and starts the writer.
    pub fn start(config: &AuditConfig, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let mut sink = Sink::open(config)?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || sink.run(&rx))
            .map_err(AuditError::Thread)?;
        Ok(AuditLog {
            tx,
            metrics,
            last_drop_warning: AtomicU64::new(0),
        })
    }

    /// Queues one line; never blocks.
    pub fn record(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.audit_dropped();
                let now = unix_secs();
                let last = self.last_drop_warning.load(Ordering::Relaxed);
                if now >= last + DROP_WARN_EVERY_SECS
                    && self
                        .last_drop_warning
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        "audit writer is behind: lines are being dropped (see mirrorgate_audit_dropped_total)"
                    );
                }
            }
        }
    }
}

/// What one finished request tells the audit trail.
pub struct Entry<'a> {
    pub facts: &'a RequestFacts,
    pub peer: IpAddr,
    pub method: &'a Method,
    pub status: StatusCode,
    /// The answer's `Docker-Content-Digest`.
    pub digest: Option<&'a str>,
    /// Whether the request carried an `Authorization` header.
    pub had_credentials: bool,
}

impl Entry<'_> {
    /// Manifest requests and refusals are written; a credential-less 401 (the token dance's first step) is not.
    pub fn wanted(&self) -> bool {
        match &self.facts.refusal {
            Some(_) => self.status != StatusCode::UNAUTHORIZED || self.had_credentials,
            None => self.facts.kind == Some(RequestKind::Manifest),
        }
    }

    /// The JSON line, without its newline.
    pub fn line(&self) -> String {
        let f = self.facts;
        let action = f.kind.map(|k| Action::for_request(self.method, k).as_str());
        serde_json::json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "client": f.client.unwrap_or(self.peer).to_string(),
            "tenant": f.tenant.as_deref(),
            "user": f.user.as_deref(),
            "route": f.route.as_deref(),
            "method": self.method.as_str(),
            "action": action,
            "repository": f.repository.as_deref(),
            "reference": f.reference.as_deref(),
            "digest": self.digest,
            "status": self.status.as_u16(),
            "endpoint": f.endpoint.as_deref(),
            "refused": f.refusal.as_deref(),
        })
        .to_string()
    }
}

/// The message of a refusal the gateway decided itself (auth, deny rules, limits, bad requests, routing), for
/// the `refused` field; `None` for upstream failures and internal errors, which are not refusals.
pub fn refusal(e: &ProxyError) -> Option<String> {
    match e {
        ProxyError::Registry(_)
        | ProxyError::NoRoute { .. }
        | ProxyError::HostMismatch { .. }
        | ProxyError::NoHost
        | ProxyError::MissingSni { .. } => Some(e.to_string()),
        _ => None,
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The writer thread's side.
enum Sink {
    Stdout,
    File(Rotating),
}

impl Sink {
    fn open(config: &AuditConfig) -> Result<Sink, AuditError> {
        Ok(match &config.target {
            AuditTarget::Stdout => Sink::Stdout,
            AuditTarget::File(path) => {
                Sink::File(Rotating::open(path, config.max_size, config.keep)?)
            }
        })
    }

    fn run(&mut self, rx: &Receiver<String>) {
        while let Ok(line) = rx.recv() {
            let result = match self {
                Sink::Stdout => {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").and_then(|()| out.flush())
                }
                Sink::File(f) => f.write_line(&line),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "writing an audit line failed");
            }
        }
    }
}

/// An append-only file rotated by size: `file` → `file.1` → … → `file.<keep>`, the oldest deleted.
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl Rotating {
    fn open(path: &Path, max_size: u64, keep: u32) -> Result<Rotating, AuditError> {
        let file = append(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file.metadata().map_or(0, |m| m.len());
        Ok(Rotating {
            path: path.to_path_buf(),
            file,
            size,
            max_size,
            keep,
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_size {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.keep).rev() {
                match std::fs::rename(numbered(i), numbered(i + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins rotation: the file never passes max_size (past its first line), older files shift up, and only
    // `keep` of them stay.
    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut r = Rotating::open(&path, 25, 2).unwrap();
        for i in 0..10 {
            r.write_line(&format!("line-{i:04}")).unwrap(); // 10 bytes + newline
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "line-0008\nline-0009\n");
        assert_eq!(
            read(&dir.path().join("audit.jsonl.1")),
            "line-0006\nline-0007\n"
        );
        assert_eq!(
            read(&dir.path().join("audit.jsonl.2")),
            "line-0004\nline-0005\n"
        );
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }

    // Pins which requests are written: manifests and refusals, but not the credential-less 401 challenge.
    #[test]
    fn what_is_written() {
        let manifest = RequestFacts {
            kind: Some(RequestKind::Manifest),
            ..RequestFacts::default()
        };
        let blob = RequestFacts {
            kind: Some(RequestKind::Blob),
            ..RequestFacts::default()
        };
        let refused = RequestFacts {
            kind: Some(RequestKind::Blob),
            refusal: Some("denied".into()),
            ..RequestFacts::default()
        };
        let entry = |facts, status, had_credentials| Entry {
            facts,
            peer: IpAddr::from([127, 0, 0, 1]),
            method: &Method::GET,
            status,
            digest: None,
            had_credentials,
        };
        assert!(entry(&manifest, StatusCode::OK, false).wanted());
        assert!(!entry(&blob, StatusCode::OK, true).wanted());
        assert!(entry(&refused, StatusCode::FORBIDDEN, false).wanted());
        assert!(entry(&refused, StatusCode::UNAUTHORIZED, true).wanted());
        assert!(!entry(&refused, StatusCode::UNAUTHORIZED, false).wanted());
        let line: serde_json::Value =
            serde_json::from_str(&entry(&refused, StatusCode::FORBIDDEN, true).line()).unwrap();
        assert_eq!(line["refused"], "denied");
        assert_eq!(line["action"], "pull");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["status"], 403);
    }
}
