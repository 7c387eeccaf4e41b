//! The [`Metrics`] value: one registry, every `mirrorgate_*` family, and typed helpers to record events.
//!
//! Families follow Prometheus naming: base units (seconds, bytes), counters end in `_total`, timestamps
//! are Unix seconds. Labels that could grow without bound (tenant, user) go through a cap; the route label
//! is whatever configured route host the caller passes, never a path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::credential_metrics::{CredentialMetrics, CREDENTIAL_FAMILIES};
use crate::error::MetricsError;
use mirrorgate_limits::{LimitKind, LimitScope};
use mirrorgate_registry::RequestKind;

use crate::labels::{
    kind_label, method_label, status_class, AuthFailureReason, LabelCap, Outcome, TokenResult,
    ANONYMOUS_LABEL, DISABLED_LABEL,
};

/// Latency buckets from 1 ms to 10 min: a cached manifest answers in milliseconds, a multi-gigabyte layer
/// through a throttled tenant can take minutes, and both must land in a real bucket, not `+Inf`.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Knobs for label cardinality. The defaults suit a gateway with up to a thousand tenants.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// Add `mirrorgate_user_*` series labelled by user name. Off by default: with many users this is
    /// the biggest cardinality cost, and user names may be personal data.
    pub per_user_labels: bool,
    /// Distinct user label values kept before the rest read as `"other"`.
    pub max_users: usize,
    /// Label request and byte counters by tenant. On by default; when off the label reads `"all"`.
    pub tenant_labels: bool,
    /// Distinct tenant label values kept before the rest read as `"other"`.
    pub max_tenants: usize,
    /// The `version` label of `mirrorgate_build_info`.
    pub version: String,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            per_user_labels: false,
            max_users: 1000,
            tenant_labels: true,
            max_tenants: 1000,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Who asked for what, for [`Metrics::request_done`].
#[derive(Debug, Clone, Copy)]
pub struct RequestLabels<'a> {
    /// The configured route host that served the request, or [`crate::UNROUTED_LABEL`].
    pub route: &'a str,
    /// The tenant, or `None` for anonymous requests.
    pub tenant: Option<&'a str>,
    /// The authenticated user; only used when per-user labels are on.
    pub user: Option<&'a str>,
    /// The request method.
    pub method: &'a http::Method,
    /// What the request was for; `None` when it was no registry request (unparsable path, local pages).
    pub kind: Option<RequestKind>,
}

/// Counts one open connection; dropping it closes the count. Hold it for the connection's lifetime.
#[derive(Debug)]
#[must_use = "the connection counts as active only while the guard lives"]
pub struct ConnectionGuard {
    active: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Every metric family mirrorgate exposes, in its own registry. Share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    names: Vec<&'static str>,
    tenants: Option<LabelCap>,
    users: Option<LabelCap>,

    requests: IntCounterVec,
    request_duration: HistogramVec,
    response_bytes: IntCounterVec,
    request_bytes: IntCounterVec,
    user_requests: IntCounterVec,
    user_response_bytes: IntCounterVec,

    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_fallbacks: IntCounterVec,
    upstream_endpoint_up: IntGaugeVec,
    upstream_tokens: IntCounterVec,
    upstream_ratelimit_remaining: IntGaugeVec,

    auth_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    limiter_keys: IntGaugeVec,

    connections_active: IntGaugeVec,
    connections: IntCounterVec,
    tls_handshake_errors: IntCounterVec,
    connections_refused: IntCounterVec,
    certificate_expiry: GaugeVec,
    acme_renewals: IntCounterVec,

    config_reloads: IntCounterVec,
    config_last_reload_success: Gauge,

    /// Upstream credential pool families (`credential_metrics`).
    pub credentials: CredentialMetrics,
    audit_dropped: IntCounterVec,
}

/// Registers families and remembers their names (for [`Metrics::family_names`]).
struct Builder {
    registry: Registry,
    names: Vec<&'static str>,
}

impl Builder {
    fn register<C: Collector + Clone + 'static>(
        &mut self,
        name: &'static str,
        made: Result<C, prometheus::Error>,
    ) -> Result<C, MetricsError> {
        let wrap = |source| MetricsError::Register {
            name: name.to_owned(),
            source,
        };
        let collector = made.map_err(wrap)?;
        self.registry
            .register(Box::new(collector.clone()))
            .map_err(wrap)?;
        self.names.push(name);
        Ok(collector)
    }

    fn counter(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn int_gauge(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        self.register(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
        self.register(name, HistogramVec::new(opts, labels))
    }
}

impl Metrics {
    /// Builds every family in a fresh registry (plus the process collector on Linux).
    pub fn new(options: MetricsOptions) -> Result<Arc<Self>, MetricsError> {
        let mut b = Builder {
            registry: Registry::new(),
            names: Vec::new(),
        };

        let requests = b.counter(
            "mirrorgate_requests_total",
            "Client requests answered, by route, tenant, method, status class and kind.",
            &["route", "tenant", "method", "status_class", "kind"],
        )?;
        let request_duration = b.histogram(
            "mirrorgate_request_duration_seconds",
            "Time from request head to the end of the response body, by route and kind.",
            &["route", "kind"],
        )?;
        let response_bytes = b.counter(
            "mirrorgate_response_bytes_total",
            "Response body bytes sent to clients.",
            &["route", "tenant"],
        )?;
        let request_bytes = b.counter(
            "mirrorgate_request_bytes_total",
            "Request body bytes received from clients.",
            &["route", "tenant"],
        )?;
        let user_requests = b.counter(
            "mirrorgate_user_requests_total",
            "Client requests by user (only with per-user labels on; users past the cap read as other).",
            &["route", "tenant", "user"],
        )?;
        let user_response_bytes = b.counter(
            "mirrorgate_user_response_bytes_total",
            "Response body bytes by user (only with per-user labels on).",
            &["route", "tenant", "user"],
        )?;

        let upstream_requests = b.counter(
            "mirrorgate_upstream_requests_total",
            "Requests sent upstream, by route, endpoint and status class (error: no response).",
            &["route", "endpoint", "status_class"],
        )?;
        let upstream_duration = b.histogram(
            "mirrorgate_upstream_duration_seconds",
            "Time until the upstream response head arrived.",
            &["route", "endpoint"],
        )?;
        let upstream_fallbacks = b.counter(
            "mirrorgate_upstream_fallbacks_total",
            "Times a request moved on from an endpoint to the next one.",
            &["route", "from_endpoint"],
        )?;
        let upstream_endpoint_up = b.int_gauge(
            "mirrorgate_upstream_endpoint_up",
            "1 while the endpoint is considered healthy, 0 while it is skipped.",
            &["route", "endpoint"],
        )?;
        let upstream_tokens = b.counter(
            "mirrorgate_upstream_token_requests_total",
            "Upstream Bearer tokens needed, by where they came from.",
            &["route", "result"],
        )?;
        let upstream_ratelimit_remaining = b.int_gauge(
            "mirrorgate_upstream_ratelimit_remaining",
            "Last ratelimit-remaining value the upstream reported (Docker Hub pull budget).",
            &["route"],
        )?;

        let auth_failures = b.counter(
            "mirrorgate_auth_failures_total",
            "Client requests refused by authentication or authorization.",
            &["reason"],
        )?;
        let rate_limited = b.counter(
            "mirrorgate_rate_limited_total",
            "Client requests held back by a limit, by limit and scope.",
            &["limit", "scope"],
        )?;
        let limiter_keys = b.int_gauge(
            "mirrorgate_limiter_keys",
            "Keys (users, tenants, addresses) a limiter currently tracks.",
            &["limiter"],
        )?;

        let connections_active = b.int_gauge(
            "mirrorgate_connections_active",
            "Connections open now.",
            &["listener"],
        )?;
        let connections = b.counter(
            "mirrorgate_connections_total",
            "Connections accepted.",
            &["listener"],
        )?;
        let connections_refused = b.counter(
            "mirrorgate_connections_refused_total",
            "Connections closed right after accept because a connection cap was reached.",
            &["listener", "reason"],
        )?;
        let tls_handshake_errors = b.counter(
            "mirrorgate_tls_handshake_errors_total",
            "TLS handshakes that failed.",
            &["listener", "reason"],
        )?;
        let certificate_expiry = b.register(
            "mirrorgate_certificate_expiry_timestamp_seconds",
            GaugeVec::new(
                Opts::new(
                    "mirrorgate_certificate_expiry_timestamp_seconds",
                    "Unix time when the certificate served for the host stops being valid.",
                ),
                &["host"],
            ),
        )?;
        let acme_renewals = b.counter(
            "mirrorgate_acme_renewals_total",
            "ACME certificate orders, by result.",
            &["result"],
        )?;

        let config_reloads = b.counter(
            "mirrorgate_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        )?;
        let config_last_reload_success = b.register(
            "mirrorgate_config_last_reload_success_timestamp_seconds",
            Gauge::new(
                "mirrorgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration load or reload that succeeded.",
            ),
        )?;
        let audit_dropped = b.counter(
            "mirrorgate_audit_dropped_total",
            "Audit lines dropped because the writer fell behind (the request was served; its line is lost).",
            &[],
        )?;
        let build_info = b.int_gauge(
            "mirrorgate_build_info",
            "Always 1; the labels say which build is running.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[options.version.as_str()])
            .set(1);

        // Process metrics keep their standard names (process_cpu_seconds_total, ...) so stock dashboards
        // and alerts apply; they are not part of `names`, which lists mirrorgate's own families.
        #[cfg(target_os = "linux")]
        b.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(|source| MetricsError::Register {
                name: "process_*".to_owned(),
                source,
            })?;

        // Series for closed label sets start at zero, so rate() and alerts see the first event.
        for reason in [
            AuthFailureReason::MissingCredentials,
            AuthFailureReason::Malformed,
            AuthFailureReason::UnknownUser,
            AuthFailureReason::BadPassword,
            AuthFailureReason::InvalidToken,
            AuthFailureReason::ExpiredToken,
            AuthFailureReason::Forbidden,
            AuthFailureReason::BadApiToken,
            AuthFailureReason::ExpiredApiToken,
            AuthFailureReason::RevokedApiToken,
        ] {
            auth_failures.with_label_values(&[reason.as_str()]);
        }
        for limit in [
            LimitKind::RequestRate,
            LimitKind::Concurrency,
            LimitKind::Quota,
            LimitKind::Unavailable,
            LimitKind::AuthFailures,
        ] {
            for scope in [LimitScope::User, LimitScope::Tenant, LimitScope::Ip] {
                rate_limited.with_label_values(&[limit.as_str(), scope.as_str()]);
            }
        }
        for outcome in [Outcome::Success, Outcome::Failure] {
            config_reloads.with_label_values(&[outcome.as_str()]);
            acme_renewals.with_label_values(&[outcome.as_str()]);
        }

        let credentials = CredentialMetrics::register(&b.registry)?;
        b.names.extend(CREDENTIAL_FAMILIES);

        let Builder { registry, names } = b;
        Ok(Arc::new(Self {
            registry,
            names,
            tenants: options
                .tenant_labels
                .then(|| LabelCap::new(options.max_tenants)),
            users: options
                .per_user_labels
                .then(|| LabelCap::new(options.max_users)),
            requests,
            request_duration,
            response_bytes,
            request_bytes,
            user_requests,
            user_response_bytes,
            upstream_requests,
            upstream_duration,
            upstream_fallbacks,
            upstream_endpoint_up,
            upstream_tokens,
            upstream_ratelimit_remaining,
            auth_failures,
            rate_limited,
            limiter_keys,
            connections_active,
            connections,
            tls_handshake_errors,
            connections_refused,
            certificate_expiry,
            acme_renewals,
            config_reloads,
            config_last_reload_success,
            credentials,
            audit_dropped,
        }))
    }

    /// The registry, for a crate that owns metrics of its own and registers them next to these.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Names of the `mirrorgate_*` families defined here (process metrics not included).
    pub fn family_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Everything in the registry, in the Prometheus text exposition format 0.0.4.
    pub fn encode_text(&self) -> Result<String, MetricsError> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(MetricsError::Encode)
    }

    fn tenant_label<'a>(&self, tenant: Option<&'a str>) -> &'a str {
        match (&self.tenants, tenant) {
            (None, _) => DISABLED_LABEL,
            (Some(_), None) => ANONYMOUS_LABEL,
            (Some(cap), Some(t)) => cap.admit(t),
        }
    }

    /// Records one finished client request: call it once, when the response body has been sent (or the
    /// client went away), so the duration and byte counts are final.
    pub fn request_done(
        &self,
        labels: &RequestLabels<'_>,
        status: u16,
        elapsed: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let tenant = self.tenant_label(labels.tenant);
        let kind = kind_label(labels.kind);
        self.requests
            .with_label_values(&[
                labels.route,
                tenant,
                method_label(labels.method),
                status_class(status),
                kind,
            ])
            .inc();
        self.request_duration
            .with_label_values(&[labels.route, kind])
            .observe(elapsed.as_secs_f64());
        self.response_bytes
            .with_label_values(&[labels.route, tenant])
            .inc_by(bytes_out);
        self.request_bytes
            .with_label_values(&[labels.route, tenant])
            .inc_by(bytes_in);
        if let (Some(cap), Some(user)) = (&self.users, labels.user) {
            let user = cap.admit(user);
            self.user_requests
                .with_label_values(&[labels.route, tenant, user])
                .inc();
            self.user_response_bytes
                .with_label_values(&[labels.route, tenant, user])
                .inc_by(bytes_out);
        }
    }

    /// Records one upstream exchange. `status` is `None` when no response came back (connect error,
    /// timeout, TLS failure); that counts under `status_class="error"`.
    pub fn upstream_done(
        &self,
        route: &str,
        endpoint: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let class = status.map_or("error", status_class);
        self.upstream_requests
            .with_label_values(&[route, endpoint, class])
            .inc();
        self.upstream_duration
            .with_label_values(&[route, endpoint])
            .observe(elapsed.as_secs_f64());
    }

    /// Records that a request gave up on `from_endpoint` and moved to the next endpoint.
    pub fn upstream_fallback(&self, route: &str, from_endpoint: &str) {
        self.upstream_fallbacks
            .with_label_values(&[route, from_endpoint])
            .inc();
    }

    /// Sets an endpoint's health as the upstream pool sees it.
    pub fn set_endpoint_up(&self, route: &str, endpoint: &str, up: bool) {
        self.upstream_endpoint_up
            .with_label_values(&[route, endpoint])
            .set(i64::from(up));
    }

    /// Records where an upstream Bearer token came from.
    pub fn upstream_token(&self, route: &str, result: TokenResult) {
        self.upstream_tokens
            .with_label_values(&[route, result.as_str()])
            .inc();
    }

    /// Stores the `ratelimit-remaining` budget an upstream (Docker Hub) reported last.
    pub fn set_upstream_ratelimit_remaining(&self, route: &str, remaining: u64) {
        self.upstream_ratelimit_remaining
            .with_label_values(&[route])
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    /// Records a refused authentication or authorization.
    pub fn auth_failure(&self, reason: AuthFailureReason) {
        self.auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Records a request held back by a limit.
    pub fn rate_limited(&self, limit: LimitKind, scope: LimitScope) {
        self.rate_limited
            .with_label_values(&[limit.as_str(), scope.as_str()])
            .inc();
    }

    /// Stores how many keys a limiter tracks (its memory footprint). `limiter` is a fixed name chosen
    /// in code, such as `"user_requests"`.
    pub fn set_limiter_keys(&self, limiter: &'static str, keys: usize) {
        self.limiter_keys
            .with_label_values(&[limiter])
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// Counts an accepted connection on `listener` (`"https"`, `"http"`, `"admin"`); it counts as active
    /// until the returned guard drops.
    pub fn connection_opened(&self, listener: &'static str) -> ConnectionGuard {
        self.connections.with_label_values(&[listener]).inc();
        let active = self.connections_active.with_label_values(&[listener]);
        active.inc();
        ConnectionGuard { active }
    }

    /// Counts a connection closed right after accept. `reason` is a fixed name chosen in code (`"per_ip"`,
    /// `"global"`).
    pub fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Records a failed TLS handshake. `reason` is a fixed name chosen in code (`"no_certificate"`,
    /// `"protocol"`, `"timeout"`, `"io"`), never error text.
    pub fn tls_handshake_error(&self, listener: &'static str, reason: &'static str) {
        self.tls_handshake_errors
            .with_label_values(&[listener, reason])
            .inc();
    }

    /// Stores when the certificate served for `host` (a configured name) expires.
    pub fn set_certificate_expiry(&self, host: &str, not_after: SystemTime) {
        self.certificate_expiry
            .with_label_values(&[host])
            .set(unix_seconds(not_after));
    }

    /// Drops the expiry series of a host that is no longer served, so it does not alert forever.
    pub fn forget_certificate(&self, host: &str) {
        // An error only means the series never existed, which is the state we want.
        let _ = self.certificate_expiry.remove_label_values(&[host]);
    }

    /// Records an ACME order's result.
    pub fn acme_renewal(&self, outcome: Outcome) {
        self.acme_renewals
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts an audit line the bounded queue had no room for.
    pub fn audit_dropped(&self) {
        self.audit_dropped.with_label_values::<&str>(&[]).inc();
    }

    /// Records a configuration load or reload; a success also stamps the last-success time.
    pub fn config_reload(&self, outcome: Outcome) {
        self.config_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
        if outcome == Outcome::Success {
            self.config_last_reload_success
                .set(unix_seconds(SystemTime::now()));
        }
    }
}

/// Seconds since the Unix epoch; times before it (a bogus certificate) read as negative.
fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::labels::{OVERFLOW_LABEL, UNROUTED_LABEL};

    /// One sample line of the text exposition.
    #[derive(Debug, Clone)]
    pub(crate) struct Sample {
        pub(crate) name: String,
        pub(crate) labels: BTreeMap<String, String>,
        pub(crate) value: f64,
    }

    /// Parses the sample lines of a text exposition (comments skipped), unescaping label values.
    pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).expect("sample line has a name");
            let name = line[..name_end].to_owned();
            let mut labels = BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                let mut consumed = body.len();
                loop {
                    let mut key = String::new();
                    while let Some(&(i, c)) = chars.peek() {
                        chars.next();
                        if c == '}' {
                            consumed = i + 1;
                            break;
                        }
                        if c == '=' {
                            break;
                        }
                        if c != ',' {
                            key.push(c);
                        }
                    }
                    if key.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "in {line}");
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => panic!("dangling escape in {line}"),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(key, value);
                }
                rest = &body[consumed..];
            }
            let value = rest
                .split_whitespace()
                .next()
                .expect("sample has a value")
                .parse::<f64>()
                .expect("sample value is a number");
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        samples
    }

    /// The value of the one sample named `name` whose labels include all of `want`.
    pub(crate) fn value_of(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<_> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {want:?} matched {hits:?}");
        hits.first().map(|s| s.value)
    }

    fn label_values(samples: &[Sample], name: &str, label: &str) -> BTreeSet<String> {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }

    fn exposition(m: &Metrics) -> Vec<Sample> {
        parse_exposition(&m.encode_text().unwrap())
    }

    fn get(route: &'static str) -> RequestLabels<'static> {
        RequestLabels {
            route,
            tenant: Some("acme"),
            user: Some("alice"),
            method: &http::Method::GET,
            kind: Some(RequestKind::Blob),
        }
    }

    /// Calls every helper once, so every family has at least one series. The returned guard keeps one
    /// `https` connection open.
    fn exercise_all(m: &Metrics) -> ConnectionGuard {
        m.credentials.set_remaining("docker.example", "hub-1", 5);
        m.credentials.set_available("docker.example", "hub-1", true);
        m.credentials.request("docker.example", "hub-1");
        m.credentials.throttled("docker.example", "hub-1");
        m.audit_dropped();
        m.request_done(
            &get("docker.example"),
            200,
            Duration::from_millis(30),
            0,
            1234,
        );
        m.upstream_done(
            "docker.example",
            "http://cache:5000",
            Some(502),
            Duration::from_millis(5),
        );
        m.upstream_done(
            "docker.example",
            "https://registry-1.docker.io",
            None,
            Duration::from_secs(2),
        );
        m.upstream_fallback("docker.example", "http://cache:5000");
        m.set_endpoint_up("docker.example", "http://cache:5000", false);
        m.set_endpoint_up("docker.example", "https://registry-1.docker.io", true);
        m.upstream_token("docker.example", TokenResult::CacheHit);
        m.upstream_token("docker.example", TokenResult::Fetched);
        m.set_upstream_ratelimit_remaining("docker.example", 97);
        m.auth_failure(AuthFailureReason::BadPassword);
        m.rate_limited(LimitKind::RequestRate, LimitScope::User);
        m.set_limiter_keys("user_requests", 12);
        let conn = m.connection_opened("https");
        m.tls_handshake_error("https", "no_certificate");
        m.connection_refused("https", "per_ip");
        m.set_certificate_expiry(
            "docker.example",
            UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        );
        m.acme_renewal(Outcome::Success);
        m.config_reload(Outcome::Success);
        conn
    }

    // Rule: each helper feeds its family with the documented label names and values.
    #[test]
    fn helpers_expose_expected_series() {
        let m = Metrics::new(MetricsOptions::default()).unwrap();
        let _conn = exercise_all(&m);
        m.request_done(
            &RequestLabels {
                route: UNROUTED_LABEL,
                tenant: None,
                user: None,
                method: &http::Method::from_bytes(b"BREW").unwrap(),
                kind: None,
            },
            404,
            Duration::from_micros(200),
            7,
            9,
        );
        let s = exposition(&m);

        let req = [
            ("route", "docker.example"),
            ("tenant", "acme"),
            ("method", "GET"),
            ("status_class", "2xx"),
            ("kind", "blob"),
        ];
        assert_eq!(value_of(&s, "mirrorgate_requests_total", &req), Some(1.0));
        let odd = [
            ("route", "unrouted"),
            ("tenant", "anonymous"),
            ("method", "OTHER"),
            ("status_class", "4xx"),
            ("kind", "other"),
        ];
        assert_eq!(value_of(&s, "mirrorgate_requests_total", &odd), Some(1.0));
        let rk = [("route", "docker.example"), ("kind", "blob")];
        assert_eq!(
            value_of(&s, "mirrorgate_request_duration_seconds_count", &rk),
            Some(1.0)
        );
        let le = [
            ("route", "docker.example"),
            ("kind", "blob"),
            ("le", "0.025"),
        ];
        assert_eq!(
            value_of(&s, "mirrorgate_request_duration_seconds_bucket", &le),
            Some(0.0)
        );
        let le = [
            ("route", "docker.example"),
            ("kind", "blob"),
            ("le", "0.05"),
        ];
        assert_eq!(
            value_of(&s, "mirrorgate_request_duration_seconds_bucket", &le),
            Some(1.0)
        );
        let rt = [("route", "docker.example"), ("tenant", "acme")];
        assert_eq!(
            value_of(&s, "mirrorgate_response_bytes_total", &rt),
            Some(1234.0)
        );
        let rt = [("route", "unrouted"), ("tenant", "anonymous")];
        assert_eq!(
            value_of(&s, "mirrorgate_request_bytes_total", &rt),
            Some(7.0)
        );

        let up = [("endpoint", "http://cache:5000"), ("status_class", "5xx")];
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_requests_total", &up),
            Some(1.0)
        );
        let up = [
            ("endpoint", "https://registry-1.docker.io"),
            ("status_class", "error"),
        ];
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_requests_total", &up),
            Some(1.0)
        );
        let fb = [
            ("route", "docker.example"),
            ("from_endpoint", "http://cache:5000"),
        ];
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_fallbacks_total", &fb),
            Some(1.0)
        );
        let ep = [("endpoint", "http://cache:5000")];
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_endpoint_up", &ep),
            Some(0.0)
        );
        let ep = [("endpoint", "https://registry-1.docker.io")];
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_endpoint_up", &ep),
            Some(1.0)
        );
        assert_eq!(
            label_values(&s, "mirrorgate_upstream_token_requests_total", "result"),
            BTreeSet::from(["cache_hit".to_owned(), "fetched".to_owned()])
        );
        assert_eq!(
            value_of(&s, "mirrorgate_upstream_ratelimit_remaining", &[]),
            Some(97.0)
        );
        let af = [("reason", "bad_password")];
        assert_eq!(
            value_of(&s, "mirrorgate_auth_failures_total", &af),
            Some(1.0)
        );
        // Closed label sets start at zero.
        let af = [("reason", "expired_token")];
        assert_eq!(
            value_of(&s, "mirrorgate_auth_failures_total", &af),
            Some(0.0)
        );
        let rl = [("limit", "request_rate"), ("scope", "user")];
        assert_eq!(
            value_of(&s, "mirrorgate_rate_limited_total", &rl),
            Some(1.0)
        );
        let rl = [("limit", "quota"), ("scope", "tenant")];
        assert_eq!(
            value_of(&s, "mirrorgate_rate_limited_total", &rl),
            Some(0.0)
        );
        let lk = [("limiter", "user_requests")];
        assert_eq!(value_of(&s, "mirrorgate_limiter_keys", &lk), Some(12.0));
        let https = [("listener", "https")];
        assert_eq!(
            value_of(&s, "mirrorgate_connections_active", &https),
            Some(1.0)
        );
        assert_eq!(
            value_of(&s, "mirrorgate_connections_total", &https),
            Some(1.0)
        );
        let tls = [("listener", "https"), ("reason", "no_certificate")];
        assert_eq!(
            value_of(&s, "mirrorgate_tls_handshake_errors_total", &tls),
            Some(1.0)
        );
        let host = [("host", "docker.example")];
        assert_eq!(
            value_of(&s, "mirrorgate_certificate_expiry_timestamp_seconds", &host),
            Some(1_900_000_000.0)
        );
        let ok = [("result", "success")];
        assert_eq!(
            value_of(&s, "mirrorgate_acme_renewals_total", &ok),
            Some(1.0)
        );
        assert_eq!(
            value_of(&s, "mirrorgate_config_reloads_total", &ok),
            Some(1.0)
        );
        let last = value_of(
            &s,
            "mirrorgate_config_last_reload_success_timestamp_seconds",
            &[],
        )
        .unwrap();
        assert!(last > 1_600_000_000.0, "reload stamp {last}");
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        assert_eq!(value_of(&s, "mirrorgate_build_info", &version), Some(1.0));
    }

    // Rule: every family is named mirrorgate_*, is exposed once used, and process metrics are present.
    #[test]
    fn every_family_is_prefixed_and_exposed() {
        let m = Metrics::new(MetricsOptions {
            per_user_labels: true,
            ..MetricsOptions::default()
        })
        .unwrap();
        let _conn = exercise_all(&m);
        let text = m.encode_text().unwrap();
        let typed: BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(m.family_names().len(), 29);
        for name in m.family_names() {
            assert!(name.starts_with("mirrorgate_"), "{name}");
            assert!(typed.contains(name), "{name} not exposed");
        }
        for name in &typed {
            assert!(
                name.starts_with("mirrorgate_") || name.starts_with("process_"),
                "unexpected family {name}"
            );
        }
        #[cfg(target_os = "linux")]
        assert!(typed.contains("process_resident_memory_bytes"));
    }

    // Rule: per-user series exist only when opted in, and users past the cap read as "other".
    #[test]
    fn per_user_labels_are_opt_in_and_capped() {
        let off = Metrics::new(MetricsOptions::default()).unwrap();
        off.request_done(&get("r"), 200, Duration::ZERO, 0, 1);
        let s = exposition(&off);
        assert!(s.iter().all(|x| !x.name.starts_with("mirrorgate_user_")));

        let on = Metrics::new(MetricsOptions {
            per_user_labels: true,
            max_users: 2,
            ..MetricsOptions::default()
        })
        .unwrap();
        for user in ["alice", "bob", "carol", "dave", "alice"] {
            let labels = RequestLabels {
                user: Some(user),
                ..get("r")
            };
            on.request_done(&labels, 200, Duration::ZERO, 0, 10);
        }
        let s = exposition(&on);
        assert_eq!(
            label_values(&s, "mirrorgate_user_requests_total", "user"),
            BTreeSet::from([
                "alice".to_owned(),
                "bob".to_owned(),
                OVERFLOW_LABEL.to_owned()
            ])
        );
        let alice = [("user", "alice")];
        assert_eq!(
            value_of(&s, "mirrorgate_user_requests_total", &alice),
            Some(2.0)
        );
        let other = [("user", OVERFLOW_LABEL)];
        assert_eq!(
            value_of(&s, "mirrorgate_user_requests_total", &other),
            Some(2.0)
        );
        assert_eq!(
            value_of(&s, "mirrorgate_user_response_bytes_total", &other),
            Some(20.0)
        );
    }

    // Rule: tenant labels are capped (overflow "other"), anonymous has its own value, and can be turned off.
    #[test]
    fn tenant_labels_are_capped_or_disabled() {
        let m = Metrics::new(MetricsOptions {
            max_tenants: 1,
            ..MetricsOptions::default()
        })
        .unwrap();
        for tenant in [Some("t1"), Some("t2"), None] {
            let labels = RequestLabels { tenant, ..get("r") };
            m.request_done(&labels, 200, Duration::ZERO, 0, 0);
        }
        assert_eq!(
            label_values(&exposition(&m), "mirrorgate_requests_total", "tenant"),
            BTreeSet::from(["t1".to_owned(), "other".to_owned(), "anonymous".to_owned()])
        );

        let off = Metrics::new(MetricsOptions {
            tenant_labels: false,
            ..MetricsOptions::default()
        })
        .unwrap();
        off.request_done(&get("r"), 200, Duration::ZERO, 0, 0);
        assert_eq!(
            label_values(
                &exposition(&off),
                "mirrorgate_response_bytes_total",
                "tenant"
            ),
            BTreeSet::from([DISABLED_LABEL.to_owned()])
        );
    }

    // Rule: the duration histogram spans 1 ms to 10 min, so slow blob pulls land in a real bucket.
    #[test]
    fn duration_buckets_span_ms_to_minutes() {
        let m = Metrics::new(MetricsOptions::default()).unwrap();
        m.request_done(&get("r"), 200, Duration::from_secs(400), 0, 0);
        let s = exposition(&m);
        let bounds = label_values(&s, "mirrorgate_request_duration_seconds_bucket", "le");
        assert!(
            bounds.contains("0.001") && bounds.contains("600"),
            "{bounds:?}"
        );
        let le300 = [("le", "300")];
        let le600 = [("le", "600")];
        let name = "mirrorgate_request_duration_seconds_bucket";
        assert_eq!(value_of(&s, name, &le300), Some(0.0));
        assert_eq!(value_of(&s, name, &le600), Some(1.0));
    }

    // Rule: the active-connection gauge follows the guard's lifetime.
    #[test]
    fn connection_guard_counts_active() {
        let m = Metrics::new(MetricsOptions::default()).unwrap();
        let https = [("listener", "https")];
        let a = m.connection_opened("https");
        let b = m.connection_opened("https");
        let s = exposition(&m);
        assert_eq!(
            value_of(&s, "mirrorgate_connections_active", &https),
            Some(2.0)
        );
        drop(a);
        drop(b);
        let s = exposition(&m);
        assert_eq!(
            value_of(&s, "mirrorgate_connections_active", &https),
            Some(0.0)
        );
        assert_eq!(
            value_of(&s, "mirrorgate_connections_total", &https),
            Some(2.0)
        );
    }

    // Rule: a host that is no longer served loses its certificate expiry series.
    #[test]
    fn forgotten_certificate_disappears() {
        let m = Metrics::new(MetricsOptions::default()).unwrap();
        m.set_certificate_expiry("a.example", SystemTime::now());
        m.set_certificate_expiry("b.example", SystemTime::now());
        m.forget_certificate("a.example");
        m.forget_certificate("never.example");
        let hosts = label_values(
            &exposition(&m),
            "mirrorgate_certificate_expiry_timestamp_seconds",
            "host",
        );
        assert_eq!(hosts, BTreeSet::from(["b.example".to_owned()]));
    }

    // Rule: the exposition passes `promtool check metrics` (format and naming lint) with no complaint.
    #[test]
    fn promtool_accepts_exposition() {
        let m = Metrics::new(MetricsOptions {
            per_user_labels: true,
            ..MetricsOptions::default()
        })
        .unwrap();
        let _conn = exercise_all(&m);
        let text = m.encode_text().unwrap();
        let out = promtool(&["check", "metrics"], Some(&text));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
            "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }

    /// Every `mirrorgate_*` metric name in a PromQL expression, histogram suffixes stripped.
    fn metric_names_in(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("mirrorgate_") {
            // Skip matches inside a longer identifier (e.g. a label value like `my_mirrorgate_x`).
            let preceded = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !preceded {
                let name = &tail[..len];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name);
                names.push(base.to_owned());
            }
            rest = &tail[len..];
        }
        names
    }

    fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    // Rule: the expression scanner strips histogram suffixes and ignores longer identifiers.
    #[test]
    fn metric_name_scanner() {
        let expr = "histogram_quantile(0.9, sum by (le) (rate(mirrorgate_request_duration_seconds_bucket[5m]))) / x_mirrorgate_fake";
        assert_eq!(
            metric_names_in(expr),
            ["mirrorgate_request_duration_seconds"]
        );
    }

    /// Runs promtool, failing loudly (never skipping) when it is not installed.
    fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = match Command::new("promtool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!(
                "promtool is required for this test and could not be run ({e}); \
                 install it with `apt-get install -y prometheus`"
            ),
        };
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    fn dashboard() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/grafana/mirrorgate.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    // Rule: every dashboard panel query is valid PromQL (checked by promtool as recording rules).
    #[test]
    fn dashboard_queries_parse_as_promql() {
        let mut exprs = Vec::new();
        collect_exprs(&dashboard()["panels"], &mut exprs);
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, expr) in exprs.iter().enumerate() {
            // Grafana variables become what Grafana would put there.
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$route", ".*")
                .replace("$tenant", ".*");
            // A JSON string is a valid YAML double-quoted scalar.
            let quoted = serde_json::to_string(&promql).unwrap();
            rules.push_str(&format!(
                "      - record: dashboard:expr_{i}\n        expr: {quoted}\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dashboard.rules.yml");
        std::fs::write(&file, &rules).unwrap();
        let out = promtool(&["check", "rules", file.to_str().unwrap()], None);
        assert!(
            out.status.success(),
            "promtool check rules failed:\n{}\n{}\nrules:\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Rule: every mirrorgate_* metric the Grafana dashboard queries exists in the registry.
    #[test]
    fn dashboard_references_only_known_metrics() {
        let mut exprs = Vec::new();
        collect_exprs(&dashboard(), &mut exprs);
        assert!(exprs.len() >= 12, "only {} expressions", exprs.len());

        let m = Metrics::new(MetricsOptions::default()).unwrap();
        let known: BTreeSet<&str> = m.family_names().iter().copied().collect();
        let mut referenced = BTreeSet::new();
        for expr in &exprs {
            for name in metric_names_in(expr) {
                assert!(
                    known.contains(name.as_str()),
                    "unknown metric {name} in `{expr}`"
                );
                referenced.insert(name);
            }
        }
        // The dashboard should cover the families an operator looks at, not just a few.
        assert!(referenced.len() >= 15, "dashboard uses only {referenced:?}");
    }
}
