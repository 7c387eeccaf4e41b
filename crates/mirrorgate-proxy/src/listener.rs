//! What every listener shares: the accept loop (https, http and admin), connection caps checked right after
//! accept, and the per-connection driver that closes idle connections and drains on stop.
//!
//! Connections are file descriptors; a client that parks thousands of idle sockets (an h2 preface and PING
//! answers are enough to look alive) would otherwise starve real clients and the admin probes. So: a global
//! and a per-source-address cap on the public listeners, an idle timeout for connections with no request in
//! flight, and the admin listener outside both caps.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pause after a failed `accept` (typically out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a connection closed for idleness may take to say goodbye (h2 GOAWAY and its PING) before it is
/// dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// File descriptors kept out of the connection budget: the admin listener, upstream pools' spare sockets,
/// config, certificate and htpasswd reads, logs.
const RESERVED_FDS: u64 = 256;

/// Accepts on `listener` until `stop`, handing every connection to `on_accept`. Accept errors (EMFILE and
/// friends) back off instead of spinning.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    stop: &CancellationToken,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => on_accept(tcp, peer),
            Err(error) => {
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// After `stop`: asks every connection to finish (their drivers watch `drain`) and waits up to `grace`.
pub(crate) async fn drain(
    tracker: &TaskTracker,
    drain: &CancellationToken,
    name: &'static str,
    grace: Duration,
) {
    drain.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => tracing::info!(listener = name, "all connections drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, ?grace, "grace period over; closing remaining connections")
        }
    }
}

/// Why a connection was closed right after accept (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` (or the file-descriptor budget) reached.
    Global,
    /// `max_connections_per_ip` reached for this source address.
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Global => "global",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// Open connections of the public listeners (https and http together), in total and per source address.
/// The caps are read from the current config at every accept, so a reload changes them for new connections.
#[derive(Debug)]
pub struct ConnectionCaps {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// What the file-descriptor limit leaves for client connections (each may hold an upstream socket too).
    fd_budget: usize,
}

impl ConnectionCaps {
    /// Caps for a process whose RLIMIT_NOFILE soft limit is `nofile` (`None`: unknown or unlimited).
    pub fn new(nofile: Option<u64>) -> Arc<Self> {
        let fd_budget = nofile.map_or(usize::MAX, |n| {
            usize::try_from(n.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX)
        });
        Arc::new(ConnectionCaps {
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            fd_budget,
        })
    }

    /// Counts a new connection from `ip`, or says which cap it would break.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: u32,
        max_per_ip: u32,
    ) -> Result<ConnectionPermit, Refusal> {
        let max_total = usize::try_from(max_total)
            .unwrap_or(usize::MAX)
            .min(self.fd_budget);
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Global);
        }
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= usize::try_from(max_per_ip).unwrap_or(usize::MAX) {
            let empty = *n == 0;
            drop(n);
            if empty {
                self.per_ip.remove_if(&ip, |_, n| *n == 0);
            }
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        drop(n);
        Ok(ConnectionPermit {
            caps: self.clone(),
            ip,
        })
    }

    /// Connections counted now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One counted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(mut n) = self.caps.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.caps.per_ip.remove_if(&self.ip, |_, n| *n == 0);
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    active: AtomicUsize,
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request in flight until the guard drops (keep it in the response body, so a response that is
    /// still streaming counts as activity).
    pub(crate) fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
        }
    }

    /// How long the connection has had no request in flight (`None` while one is).
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }
}

/// A request in flight (see [`Activity::busy`]).
#[derive(Debug)]
pub(crate) struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.activity;
        a.idle_since_ms.store(a.now_ms(), Ordering::Release);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection is asked to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The listener stops: requests in flight complete (the listener's grace bounds the wait).
    Drain,
    /// No request in flight for the idle timeout: the connection gets [`IDLE_CLOSE_GRACE`] to say goodbye.
    Idle,
}

impl Close {
    /// How long the connection may still run after being asked to finish.
    pub(crate) fn grace(self) -> Option<Duration> {
        match self {
            Close::Drain => None,
            Close::Idle => Some(IDLE_CLOSE_GRACE),
        }
    }
}

/// Resolves when the connection should be asked to finish (hyper's `graceful_shutdown`): when `drain` fires,
/// or once it has had no request in flight for `idle_timeout`. The caller races it against the connection.
pub(crate) async fn close_signal(
    activity: &Activity,
    idle_timeout: Duration,
    drain: &CancellationToken,
) -> Close {
    loop {
        let wake = match activity.idle_for() {
            Some(idle) => idle_timeout.saturating_sub(idle),
            None => idle_timeout,
        };
        tokio::select! {
            () = drain.cancelled() => return Close::Drain,
            () = tokio::time::sleep(wake) => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                    return Close::Idle;
                }
            }
        }
    }
}

/// Serves one connection to its end (`$conn`: a hyper connection future), asking it to finish on
/// [`close_signal`]. Evaluates to `Option<its output>`: `None` when an idle connection outlived its grace.
macro_rules! drive {
    ($conn:expr, $activity:expr, $idle:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => Some(r),
            why = $crate::listener::close_signal($activity, $idle, $drain) => {
                conn.as_mut().graceful_shutdown();
                match why.grace() {
                    None => Some(conn.await),
                    Some(grace) => tokio::time::timeout(grace, conn).await.ok(),
                }
            }
        }
    }};
}
pub(crate) use drive;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Pins the caps: per address first, then global; a dropped permit frees its place; other addresses are
    // unaffected by one address at its cap.
    #[test]
    fn caps_count_per_address_and_in_total() {
        let caps = ConnectionCaps::new(None);
        let a: Vec<_> = (0..2)
            .map(|_| caps.admit(ip("127.0.0.1"), 3, 2).unwrap())
            .collect();
        assert_eq!(
            caps.admit(ip("127.0.0.1"), 3, 2).unwrap_err(),
            Refusal::PerIp
        );
        let b = caps.admit(ip("127.0.0.2"), 3, 2).unwrap();
        assert_eq!(
            caps.admit(ip("127.0.0.3"), 3, 2).unwrap_err(),
            Refusal::Global
        );
        assert_eq!(caps.open(), 3);
        drop(a);
        drop(b);
        assert_eq!(caps.open(), 0);
        assert!(caps.per_ip.is_empty());
        assert!(caps.admit(ip("127.0.0.1"), 3, 2).is_ok());
    }

    // Pins the file-descriptor headroom: the budget is half of what the soft limit leaves after the reserve.
    #[test]
    fn fd_budget_caps_below_max_connections() {
        let caps = ConnectionCaps::new(Some(RESERVED_FDS + 4));
        let _p: Vec<_> = (0..2)
            .map(|i| caps.admit(ip(&format!("10.0.0.{i}")), 1000, 1000).unwrap())
            .collect();
        assert_eq!(
            caps.admit(ip("10.0.0.9"), 1000, 1000).unwrap_err(),
            Refusal::Global
        );
    }

    // Pins idleness: none while a request is in flight, measured from the end of the last one.
    #[tokio::test]
    async fn activity_measures_idle_time() {
        let a = Activity::new();
        let busy = a.busy();
        assert_eq!(a.idle_for(), None);
        drop(busy);
        assert!(a.idle_for().unwrap() < Duration::from_secs(1));
    }
}
