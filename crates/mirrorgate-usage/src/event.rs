//! One finished response, as the request path hands it over, and the counts it adds to its ledger row.

use std::sync::Arc;

use time::Date;

/// The name a row gets when its part is unknown: an anonymous caller (no tenant, no user) or a request that
/// names no repository (`/v2/`, `/token`, the catalog).
pub const NONE: &str = "-";

/// Where repositories past [`crate::MAX_REPOSITORIES_PER_TENANT_DAY`] are counted.
pub const OTHER_REPOSITORY: &str = "other";

/// What a finished request was, as far as billing cares. The request path decides it from the request kind,
/// the method and the status (`mirrorgate-proxy`'s `usage` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// `GET` of a manifest that succeeded.
    ManifestPull,
    /// `GET` of a blob: its bytes are the blob bytes sent.
    BlobPull,
    /// `PUT` of a manifest that succeeded: one push.
    Push,
    /// A blob upload request: its request body counts as bytes received.
    Upload,
    /// Anything else (`HEAD`, tags, ping, token, refusals): one request, nothing more.
    Other,
}

/// One response whose body ended (fully sent, or aborted after `bytes_sent` bytes).
#[derive(Debug, Clone)]
pub struct Event {
    /// The UTC day the response ended on.
    pub day: Date,
    pub tenant: Option<Arc<str>>,
    /// The user or API token name.
    pub user: Option<Arc<str>>,
    pub route: String,
    /// The validated repository name as the client wrote it (with a registry key in front on path-prefix and
    /// `?ns=` routes); never a raw path.
    pub repository: Option<String>,
    pub activity: Activity,
    pub status: u16,
    /// Response body bytes the client actually received.
    pub bytes_sent: u64,
    /// Request body bytes (the declared `Content-Length` of a request that was answered).
    pub bytes_received: u64,
}

/// The ledger row's key: UTC day, tenant, user, route, repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub day: Date,
    pub tenant: String,
    pub user: String,
    pub route: String,
    pub repository: String,
}

/// The names of [`Counts`]' fields, in field order: the store's column names and the export's headers.
pub(crate) const COUNTER_COLUMNS: [&str; 9] = [
    "requests",
    "manifest_pulls",
    "bytes_sent",
    "blob_bytes_sent",
    "blob_bytes_from_cache",
    "pushes",
    "bytes_received",
    "throttled",
    "denied",
];

/// The counters of one ledger row. Every field only ever grows, so rows from several flushes (or replicas)
/// add up field by field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    pub manifest_pulls: u64,
    /// Response body bytes of every answer (manifests, blobs, tag lists, errors), as received by the client:
    /// what a tenant's `bytes_per_day` quota counts.
    pub bytes_sent: u64,
    /// Response body bytes of blob `GET`s, as received by the client (an aborted pull counts what was sent).
    pub blob_bytes_sent: u64,
    /// The part of `blob_bytes_sent` served from the built-in cache. Always 0 until the cache exists; kept so
    /// the schema does not change when it lands.
    pub blob_bytes_from_cache: u64,
    pub pushes: u64,
    pub bytes_received: u64,
    /// Answers with status 429 (a limit or quota refused the request).
    pub throttled: u64,
    /// Answers with status 403 (authorization refused the request).
    pub denied: u64,
}

impl Counts {
    /// The counts one event adds.
    pub fn of(event: &Event) -> Counts {
        let ok = (200..300).contains(&event.status);
        let mut c = Counts {
            requests: 1,
            bytes_sent: event.bytes_sent,
            throttled: u64::from(event.status == 429),
            denied: u64::from(event.status == 403),
            ..Counts::default()
        };
        match event.activity {
            Activity::ManifestPull => c.manifest_pulls = u64::from(ok),
            Activity::BlobPull if ok => c.blob_bytes_sent = event.bytes_sent,
            Activity::Push => {
                c.pushes = u64::from(ok);
                c.bytes_received = if ok { event.bytes_received } else { 0 };
            }
            Activity::Upload if ok => c.bytes_received = event.bytes_received,
            Activity::BlobPull | Activity::Upload | Activity::Other => {}
        }
        c
    }

    /// The counters in [`COUNTER_COLUMNS`] order (the shared store keeps one hash field per counter).
    pub(crate) fn fields(&self) -> [u64; 9] {
        [
            self.requests,
            self.manifest_pulls,
            self.bytes_sent,
            self.blob_bytes_sent,
            self.blob_bytes_from_cache,
            self.pushes,
            self.bytes_received,
            self.throttled,
            self.denied,
        ]
    }

    /// Adds `n` to the counter at `index` in [`COUNTER_COLUMNS`] order (an unknown index adds nothing).
    pub(crate) fn add_field(&mut self, index: usize, n: u64) {
        let mut one = [0u64; 9];
        if let Some(slot) = one.get_mut(index) {
            *slot = n;
        }
        self.add(&Counts {
            requests: one[0],
            manifest_pulls: one[1],
            bytes_sent: one[2],
            blob_bytes_sent: one[3],
            blob_bytes_from_cache: one[4],
            pushes: one[5],
            bytes_received: one[6],
            throttled: one[7],
            denied: one[8],
        });
    }

    /// Adds `other` field by field (saturating: a counter never wraps).
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.manifest_pulls = self.manifest_pulls.saturating_add(other.manifest_pulls);
        self.bytes_sent = self.bytes_sent.saturating_add(other.bytes_sent);
        self.blob_bytes_sent = self.blob_bytes_sent.saturating_add(other.blob_bytes_sent);
        self.blob_bytes_from_cache = self
            .blob_bytes_from_cache
            .saturating_add(other.blob_bytes_from_cache);
        self.pushes = self.pushes.saturating_add(other.pushes);
        self.bytes_received = self.bytes_received.saturating_add(other.bytes_received);
        self.throttled = self.throttled.saturating_add(other.throttled);
        self.denied = self.denied.saturating_add(other.denied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(activity: Activity, status: u16, sent: u64, received: u64) -> Event {
        Event {
            day: time::macros::date!(2026 - 12 - 01),
            tenant: Some("acme".into()),
            user: Some("alice".into()),
            route: "docker.test".into(),
            repository: Some("library/alpine".into()),
            activity,
            status,
            bytes_sent: sent,
            bytes_received: received,
        }
    }

    // Pins what each kind of answer adds: blob bytes only for successful blob GETs (partial bytes of an aborted
    // pull included), pulls and pushes only when they succeeded, 429 and 403 counted whatever the activity.
    #[test]
    fn counts_follow_the_activity_and_status() {
        let c = Counts::of(&event(Activity::BlobPull, 200, 1234, 0));
        assert_eq!((c.requests, c.blob_bytes_sent), (1, 1234));
        let c = Counts::of(&event(Activity::BlobPull, 404, 90, 0));
        assert_eq!((c.blob_bytes_sent, c.bytes_sent), (0, 90));
        let c = Counts::of(&event(Activity::ManifestPull, 200, 500, 0));
        assert_eq!((c.manifest_pulls, c.blob_bytes_sent), (1, 0));
        let c = Counts::of(&event(Activity::ManifestPull, 429, 0, 0));
        assert_eq!((c.manifest_pulls, c.throttled), (0, 1));
        let c = Counts::of(&event(Activity::Other, 403, 0, 0));
        assert_eq!((c.requests, c.denied), (1, 1));
        let c = Counts::of(&event(Activity::Push, 201, 0, 700));
        assert_eq!((c.pushes, c.bytes_received), (1, 700));
        let c = Counts::of(&event(Activity::Upload, 202, 0, 4096));
        assert_eq!(c.bytes_received, 4096);
        let mut total = Counts::default();
        total.add(&Counts::of(&event(Activity::BlobPull, 200, 10, 0)));
        total.add(&Counts::of(&event(Activity::BlobPull, 206, 5, 0)));
        assert_eq!((total.requests, total.blob_bytes_sent), (2, 15));
    }
}
