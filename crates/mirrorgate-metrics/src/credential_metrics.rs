//! Upstream credential pool metrics: per credential *name* (never the secret or the username), its last reported
//! headroom, whether it is in use or set aside, and what it was asked and refused. A block of its own so the
//! pool's families can be read (and changed) apart from the request families.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::error::MetricsError;

/// The families of the upstream credential pools.
#[derive(Debug, Clone)]
pub struct CredentialMetrics {
    remaining: IntGaugeVec,
    available: IntGaugeVec,
    requests: IntCounterVec,
    throttled: IntCounterVec,
}

/// Family names, in registration order.
pub(crate) const CREDENTIAL_FAMILIES: [&str; 4] = [
    "mirrorgate_upstream_credential_remaining",
    "mirrorgate_upstream_credential_available",
    "mirrorgate_upstream_credential_requests_total",
    "mirrorgate_upstream_credential_throttled_total",
];

const LABELS: &[&str] = &["route", "credential"];

impl CredentialMetrics {
    /// Builds the families and registers them in `registry`.
    pub(crate) fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let [remaining_name, available_name, requests_name, throttled_name] = CREDENTIAL_FAMILIES;
        let wrap = |name: &str| {
            let name = name.to_owned();
            move |source| MetricsError::Register { name, source }
        };
        let gauge = |name: &'static str, help: &str| -> Result<IntGaugeVec, MetricsError> {
            let g = IntGaugeVec::new(Opts::new(name, help), LABELS).map_err(wrap(name))?;
            registry.register(Box::new(g.clone())).map_err(wrap(name))?;
            Ok(g)
        };
        let counter = |name: &'static str, help: &str| -> Result<IntCounterVec, MetricsError> {
            let c = IntCounterVec::new(Opts::new(name, help), LABELS).map_err(wrap(name))?;
            registry.register(Box::new(c.clone())).map_err(wrap(name))?;
            Ok(c)
        };
        Ok(CredentialMetrics {
            remaining: gauge(
                remaining_name,
                "Last ratelimit-remaining the upstream reported for this pool credential.",
            )?,
            available: gauge(
                available_name,
                "1 while the pool credential is used, 0 while it is set aside (rate limited or refused).",
            )?,
            requests: counter(
                requests_name,
                "Upstream requests sent with this pool credential.",
            )?,
            throttled: counter(
                throttled_name,
                "Upstream 429 answers to this pool credential.",
            )?,
        })
    }

    /// Stores the headroom the upstream reported for `credential`.
    pub fn set_remaining(&self, route: &str, credential: &str, remaining: u64) {
        self.remaining
            .with_label_values(&[route, credential])
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    /// Marks `credential` as in use (`true`) or set aside.
    pub fn set_available(&self, route: &str, credential: &str, available: bool) {
        self.available
            .with_label_values(&[route, credential])
            .set(i64::from(available));
    }

    /// Counts one upstream request sent with `credential`.
    pub fn request(&self, route: &str, credential: &str) {
        self.requests.with_label_values(&[route, credential]).inc();
    }

    /// Drops every series of `credential` on `route`: a member removed from the config must not stay on the
    /// dashboards (an `available 0` left behind would keep an alert firing for an account that is gone).
    pub fn forget(&self, route: &str, credential: &str) {
        let labels = [route, credential];
        let _ = self.remaining.remove_label_values(&labels);
        let _ = self.available.remove_label_values(&labels);
        let _ = self.requests.remove_label_values(&labels);
        let _ = self.throttled.remove_label_values(&labels);
    }

    /// Counts one upstream 429 to `credential`.
    pub fn throttled(&self, route: &str, credential: &str) {
        self.throttled.with_label_values(&[route, credential]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pins the pool families: labelled by route and credential name, exposed under their documented names.
    #[test]
    fn credential_families_are_exposed() {
        let registry = Registry::new();
        let m = CredentialMetrics::register(&registry).unwrap();
        m.set_remaining("docker.test", "hub-1", 7);
        m.set_available("docker.test", "hub-1", false);
        m.request("docker.test", "hub-1");
        m.throttled("docker.test", "hub-1");
        let families = registry.gather();
        for name in CREDENTIAL_FAMILIES {
            let f = families.iter().find(|f| f.name() == name);
            let f = f.unwrap_or_else(|| panic!("{name} missing"));
            let labels: Vec<(&str, &str)> = f.get_metric()[0]
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            assert_eq!(labels, [("credential", "hub-1"), ("route", "docker.test")]);
        }
        assert!(CredentialMetrics::register(&registry).is_err());
    }
}
