//! Readiness state, flipped by the parts of the gateway that own each condition and read by `/readyz`.
//!
//! Plain atomics: the flags are written a few times per process lifetime and read on every probe, and
//! no two of them need to change together.

use std::sync::atomic::{AtomicBool, Ordering};

/// What `/readyz` reports. All conditions start unmet; the gateway sets them as it comes up.
#[derive(Debug, Default)]
pub struct Health {
    listeners_bound: AtomicBool,
    config_loaded: AtomicBool,
    certificate_ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// A fresh state with nothing ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// The serving listeners (HTTPS, and HTTP if configured) are bound.
    pub fn set_listeners_bound(&self, bound: bool) {
        self.listeners_bound.store(bound, Ordering::Release);
    }

    /// A valid configuration is in force.
    pub fn set_config_loaded(&self, loaded: bool) {
        self.config_loaded.store(loaded, Ordering::Release);
    }

    /// At least one usable certificate (ACME, file or self-signed default) is installed.
    pub fn set_certificate_ready(&self, ready: bool) {
        self.certificate_ready.store(ready, Ordering::Release);
    }

    /// The process is shutting down: report not ready so load balancers stop sending new traffic
    /// while open requests drain.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    /// The unmet conditions, in a fixed order; empty means ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.draining.load(Ordering::Acquire) {
            missing.push("shutting down");
        }
        if !self.listeners_bound.load(Ordering::Acquire) {
            missing.push("listeners not bound");
        }
        if !self.config_loaded.load(Ordering::Acquire) {
            missing.push("config not loaded");
        }
        if !self.certificate_ready.load(Ordering::Acquire) {
            missing.push("no usable certificate");
        }
        missing
    }

    /// True when every condition is met.
    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: readiness needs listeners, config and a certificate, and reports each one missing.
    #[test]
    fn ready_only_when_all_conditions_hold() {
        let h = Health::new();
        assert_eq!(
            h.missing(),
            [
                "listeners not bound",
                "config not loaded",
                "no usable certificate"
            ]
        );
        h.set_listeners_bound(true);
        h.set_config_loaded(true);
        assert!(!h.is_ready());
        assert_eq!(h.missing(), ["no usable certificate"]);
        h.set_certificate_ready(true);
        assert!(h.is_ready());
    }

    // Rule: draining makes a ready process report not ready.
    #[test]
    fn draining_is_not_ready() {
        let h = Health::new();
        h.set_listeners_bound(true);
        h.set_config_loaded(true);
        h.set_certificate_ready(true);
        h.set_draining(true);
        assert_eq!(h.missing(), ["shutting down"]);
    }
}
