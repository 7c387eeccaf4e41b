//! The hook through which certificate life events reach metrics, without this crate knowing
//! about Prometheus.

use std::time::SystemTime;

use crate::error::TlsError;

/// Receives certificate events; the binary implements it with Prometheus gauges and counters.
/// Both methods default to doing nothing, so an implementation picks what it needs.
pub trait CertEvents: Send + Sync + 'static {
    /// A certificate covering `host` is now being served; `not_after` is its expiry.
    fn on_loaded(&self, host: &str, not_after: SystemTime) {
        let _ = (host, not_after);
    }

    /// An ACME issuance or renewal attempt ended, successfully or not.
    fn on_renewal(&self, result: Result<(), &TlsError>) {
        let _ = result;
    }
}

/// The default: ignore every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEvents;

impl CertEvents for NoEvents {}

/// Reports every host of a freshly served certificate.
pub(crate) fn report_loaded(events: &dyn CertEvents, info: &crate::material::LeafInfo) {
    for host in &info.hosts {
        events.on_loaded(host, info.not_after);
    }
}
