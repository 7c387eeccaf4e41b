//! Metrics of the built-in cache, registered next to the gateway's own families (in [`Metrics::registry`]) by
//! [`CacheMetrics::register`] when the config has a `[cache]`, so a gateway without one exposes none of them.
//!
//! Labels: `route` (a configured route label) and `kind` (`manifest` or `blob`) on hits and misses; the store
//! figures are process-wide (one store serves every route).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::MetricsError;
use crate::metrics::Metrics;

/// The `mirrorgate_cache_*` families.
#[derive(Clone)]
pub struct CacheMetrics {
    hits: IntCounterVec,
    misses: IntCounterVec,
    stale_serves: IntCounterVec,
    hit_bytes: IntCounterVec,
    evictions: IntCounter,
    fill_errors: IntCounter,
    bytes: IntGauge,
    entries: IntGauge,
}

/// Whether the cache answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    Manifest,
    Blob,
}

impl CacheKind {
    fn as_str(self) -> &'static str {
        match self {
            CacheKind::Manifest => "manifest",
            CacheKind::Blob => "blob",
        }
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    made: Result<C, prometheus::Error>,
) -> Result<C, MetricsError> {
    let wrap = |source| MetricsError::Register {
        name: name.to_owned(),
        source,
    };
    let c = made.map_err(wrap)?;
    registry.register(Box::new(c.clone())).map_err(wrap)?;
    Ok(c)
}

impl CacheMetrics {
    /// Registers the cache families in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Result<CacheMetrics, MetricsError> {
        let r = metrics.registry();
        let labels = &["route", "kind"];
        let vec = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), labels);
        Ok(CacheMetrics {
            hits: register(
                r,
                "mirrorgate_cache_hits_total",
                vec(
                    "mirrorgate_cache_hits_total",
                    "Requests answered from the cache",
                ),
            )?,
            misses: register(
                r,
                "mirrorgate_cache_misses_total",
                vec(
                    "mirrorgate_cache_misses_total",
                    "Cacheable requests the cache could not answer (fetched upstream)",
                ),
            )?,
            stale_serves: register(
                r,
                "mirrorgate_cache_stale_serves_total",
                IntCounterVec::new(
                    Opts::new(
                        "mirrorgate_cache_stale_serves_total",
                        "Tag manifests served past tag_ttl because every endpoint failed (stale_if_error)",
                    ),
                    &["route"],
                ),
            )?,
            hit_bytes: register(
                r,
                "mirrorgate_cache_hit_bytes_total",
                IntCounterVec::new(
                    Opts::new(
                        "mirrorgate_cache_hit_bytes_total",
                        "Bytes answered from the cache (upstream bytes saved), as announced in Content-Length",
                    ),
                    &["route"],
                ),
            )?,
            evictions: register(
                r,
                "mirrorgate_cache_evictions_total",
                IntCounter::new(
                    "mirrorgate_cache_evictions_total",
                    "Entries removed to stay under max_size or above min_free",
                ),
            )?,
            fill_errors: register(
                r,
                "mirrorgate_cache_fill_errors_total",
                IntCounter::new(
                    "mirrorgate_cache_fill_errors_total",
                    "Fills that did not become an entry (upstream error, wrong digest, truncation, disk)",
                ),
            )?,
            bytes: register(
                r,
                "mirrorgate_cache_bytes",
                IntGauge::new("mirrorgate_cache_bytes", "Bytes held in cache entries"),
            )?,
            entries: register(
                r,
                "mirrorgate_cache_entries",
                IntGauge::new("mirrorgate_cache_entries", "Entries in the cache"),
            )?,
        })
    }

    pub fn hit(&self, route: &str, kind: CacheKind) {
        self.hits.with_label_values(&[route, kind.as_str()]).inc();
    }

    pub fn miss(&self, route: &str, kind: CacheKind) {
        self.misses.with_label_values(&[route, kind.as_str()]).inc();
    }

    /// A tag's last manifest was served because upstream failed.
    pub fn stale_served(&self, route: &str) {
        self.stale_serves.with_label_values(&[route]).inc();
    }

    /// `bytes` of a body were answered from the cache instead of upstream.
    pub fn hit_bytes(&self, route: &str, bytes: u64) {
        self.hit_bytes.with_label_values(&[route]).inc_by(bytes);
    }

    pub fn evicted(&self, n: u64) {
        self.evictions.inc_by(n);
    }

    pub fn fill_failed(&self) {
        self.fill_errors.inc();
    }

    pub fn set_size(&self, bytes: u64, entries: u64) {
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricsOptions;

    // Pins the cache family names and labels as dashboards will query them.
    #[test]
    fn cache_families_render() {
        let m = Metrics::new(MetricsOptions::default()).unwrap();
        let c = CacheMetrics::register(&m).unwrap();
        c.hit("docker.test", CacheKind::Blob);
        c.miss("docker.test", CacheKind::Manifest);
        c.evicted(2);
        c.fill_failed();
        c.stale_served("docker.test");
        c.hit_bytes("docker.test", 4096);
        c.set_size(10, 1);
        let text = m.encode_text().unwrap();
        for line in [
            "mirrorgate_cache_hits_total{kind=\"blob\",route=\"docker.test\"} 1",
            "mirrorgate_cache_misses_total{kind=\"manifest\",route=\"docker.test\"} 1",
            "mirrorgate_cache_evictions_total 2",
            "mirrorgate_cache_stale_serves_total{route=\"docker.test\"} 1",
            "mirrorgate_cache_hit_bytes_total{route=\"docker.test\"} 4096",
            "mirrorgate_cache_fill_errors_total 1",
            "mirrorgate_cache_bytes 10",
            "mirrorgate_cache_entries 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
