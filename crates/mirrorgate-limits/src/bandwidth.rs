//! Bandwidth: response bodies throttled while they stream.
//!
//! Sleeping before a response makes big pulls time out (protocol.md), so the limit is applied to
//! the body stream: headers leave at once, data frames are released slice by slice as token
//! buckets allow. Buckets are shared per user and per tenant total, so a user's parallel layer
//! downloads split one allowance between them.
//!
//! Each stream takes at most one slice (`min(64 KiB, rate/10)`) per reservation. Reservations
//! are queued in the bucket (it may go into debt; the reserving stream sleeps until the debt is
//! paid), so N parallel streams are served round-robin and none can starve the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::admission::Admission;
use crate::quota::QuotaHandle;

/// Largest slice one stream releases per reservation: small enough for fairness between a
/// user's parallel streams, large enough to keep per-frame overhead low.
const MAX_SLICE: u64 = 64 * 1024;
/// Smallest slice, so very low rates do not degenerate into byte-sized frames.
const MIN_SLICE: u64 = 1024;

/// A token bucket in bytes, refilled continuously at `rate` bytes per second.
#[derive(Debug)]
pub struct ByteBucket {
    rate: u64,
    capacity: u64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// May be negative: reserved bytes not yet paid for by elapsed time.
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// A full bucket for `rate` bytes/s (must be > 0) holding 100 ms of traffic (at least a slice).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        let capacity = (rate / 10).max(slice_for(rate));
        Self {
            rate,
            capacity,
            state: Mutex::new(BucketState {
                tokens: capacity as f64,
                last: Instant::now(),
            }),
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` bytes, going into debt if needed; returns how long the caller must wait before
    /// sending them.
    pub fn reserve(&self, n: u64) -> Duration {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refill(&mut state, now);
        state.tokens -= n as f64;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate as f64)
        }
    }

    /// A full bucket behaves exactly like a fresh one, so it can be evicted from its map.
    pub(crate) fn is_full(&self) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refill(&mut state, Instant::now());
        state.tokens >= self.capacity as f64
    }

    fn refill(&self, state: &mut BucketState, now: Instant) {
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate as f64).min(self.capacity as f64);
        state.last = now;
    }
}

fn slice_for(rate: u64) -> u64 {
    (rate / 10).clamp(MIN_SLICE, MAX_SLICE)
}

/// Called with the number of bytes each time a data frame leaves (for metrics).
pub type OnBytes = Arc<dyn Fn(u64) + Send + Sync>;

pin_project! {
    /// A response body released no faster than its buckets allow. It also counts the bytes it
    /// sends towards the tenant's daily quota, reports them to an optional hook, and holds the
    /// request's [`Admission`] so concurrency permits are released when the body ends (or is
    /// dropped, e.g. the client went away).
    pub struct ThrottledBody<B> {
        #[pin]
        inner: B,
        // Made on first need, inside the runtime, and reused: a body that is never throttled
        // never allocates a timer.
        sleep: Option<Pin<Box<Sleep>>>,
        sleeping: bool,
        // Data from `inner` not yet reserved.
        pending: Bytes,
        // A reserved slice waiting for `sleep`.
        ready: Option<Bytes>,
        buckets: Vec<Arc<ByteBucket>>,
        slice: usize,
        quota: Option<QuotaHandle>,
        on_bytes: Option<OnBytes>,
        admission: Option<Admission>,
    }
}

impl<B> ThrottledBody<B> {
    /// Wraps `inner` with the buckets and quota of `admission`, which it keeps alive.
    pub fn new(inner: B, admission: Admission) -> Self {
        let buckets = admission.buckets().to_vec();
        let slowest = buckets.iter().map(|b| b.rate()).min();
        let slice = slowest.map_or(usize::MAX, |rate| {
            usize::try_from(slice_for(rate)).unwrap_or(usize::MAX)
        });
        Self {
            inner,
            sleep: None,
            sleeping: false,
            pending: Bytes::new(),
            ready: None,
            buckets,
            slice,
            quota: admission.quota_handle(),
            on_bytes: None,
            admission: Some(admission),
        }
    }

    /// Calls `hook(n)` for every `n` bytes sent.
    pub fn with_on_bytes(mut self, hook: OnBytes) -> Self {
        self.on_bytes = Some(hook);
        self
    }
}

impl<B> Body for ThrottledBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if this.ready.is_some() {
                if *this.sleeping {
                    if let Some(sleep) = this.sleep.as_mut() {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    *this.sleeping = false;
                }
                if let Some(chunk) = this.ready.take() {
                    account(this.quota, this.on_bytes, chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
            }
            if !this.pending.is_empty() {
                let n = (*this.slice).min(this.pending.len());
                let chunk = this.pending.split_to(n);
                let wait = this
                    .buckets
                    .iter()
                    .map(|b| b.reserve(n as u64))
                    .max()
                    .unwrap_or(Duration::ZERO);
                if !wait.is_zero() {
                    let deadline = Instant::now() + wait;
                    match this.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => *this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    *this.sleeping = true;
                }
                *this.ready = Some(chunk);
                continue;
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    // The body ended: release the permits now, not when hyper drops us.
                    this.admission.take();
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.admission.take();
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if this.buckets.is_empty() => {
                        account(this.quota, this.on_bytes, data.len());
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(data) => *this.pending = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.ready.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered = (self.pending.len() + self.ready.as_ref().map_or(0, Bytes::len)) as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(buffered));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

fn account(quota: &Option<QuotaHandle>, on_bytes: &Option<OnBytes>, n: usize) {
    let n = n as u64;
    if let Some(quota) = quota {
        quota.record(n);
    }
    if let Some(hook) = on_bytes {
        hook(n);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::{Limiter, LimitsSpec, Subject, TenantLimits};

    const MIB: u64 = 1024 * 1024;

    fn limiter() -> Limiter {
        let mut tenants = HashMap::new();
        tenants.insert(
            Arc::from("slow"),
            TenantLimits {
                bytes_per_second: std::num::NonZeroU64::new(2 * MIB),
                ..TenantLimits::default()
            },
        );
        tenants.insert(Arc::from("fast"), TenantLimits::default());
        Limiter::new(LimitsSpec {
            tenants,
            ..LimitsSpec::default()
        })
        .unwrap()
    }

    fn subject(tenant: &str, user: &str) -> Subject {
        Subject::tenant(tenant, Some(user), IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    async fn drain(body: ThrottledBody<Full<Bytes>>) -> (u64, usize, Duration) {
        let start = Instant::now();
        let mut body = std::pin::pin!(body);
        let (mut bytes, mut frames) = (0u64, 0usize);
        while let Some(frame) = body.frame().await {
            bytes += frame.unwrap().into_data().unwrap().len() as u64;
            frames += 1;
        }
        (bytes, frames, start.elapsed())
    }

    // Pins: 4 MiB at 2 MiB/s takes about 2 s (frames split), while another tenant's user is not slowed.
    #[tokio::test]
    async fn body_is_throttled_per_user_and_others_are_not() {
        let limiter = limiter();
        let sent = Arc::new(AtomicU64::new(0));
        let hook_sent = sent.clone();
        let slow = limiter.check_local(&subject("slow", "alice")).unwrap();
        let fast = limiter.check_local(&subject("fast", "bob")).unwrap();
        let body = Full::new(Bytes::from(vec![7u8; 4 * MIB as usize]));
        let slow_body = ThrottledBody::new(body.clone(), slow).with_on_bytes(Arc::new(move |n| {
            hook_sent.fetch_add(n, Ordering::Relaxed);
        }));
        let fast_body = ThrottledBody::new(body, fast);
        let (slow_res, fast_res) = tokio::join!(drain(slow_body), drain(fast_body));
        assert_eq!(slow_res.0, 4 * MIB);
        assert!(slow_res.1 >= 64, "frames were not split: {}", slow_res.1);
        let secs = slow_res.2.as_secs_f64();
        assert!((1.4..3.0).contains(&secs), "throttled body took {secs}s");
        assert_eq!(sent.load(Ordering::Relaxed), 4 * MIB);
        assert_eq!(fast_res.0, 4 * MIB);
        assert!(
            fast_res.2 < Duration::from_millis(300),
            "unthrottled took {:?}",
            fast_res.2
        );
    }

    // Pins: a user's parallel streams share one allowance fairly (both finish near the same time).
    #[tokio::test]
    async fn parallel_streams_share_a_user_bucket_fairly() {
        let limiter = limiter();
        let a = limiter.check_local(&subject("slow", "carol")).unwrap();
        let b = limiter.check_local(&subject("slow", "carol")).unwrap();
        let body = Full::new(Bytes::from(vec![1u8; MIB as usize]));
        let (ra, rb) = tokio::join!(
            drain(ThrottledBody::new(body.clone(), a)),
            drain(ThrottledBody::new(body, b))
        );
        // 2 MiB total at 2 MiB/s: about a second together, not half a second each.
        let (ta, tb) = (ra.2.as_secs_f64(), rb.2.as_secs_f64());
        assert!(
            (0.7..1.6).contains(&ta) && (0.7..1.6).contains(&tb),
            "{ta} {tb}"
        );
        assert!((ta - tb).abs() < 0.2, "unfair: {ta} vs {tb}");
    }

    // Pins: the bucket goes into debt and tells the caller how long to wait.
    #[test]
    fn bucket_reserve_returns_wait_for_debt() {
        let bucket = ByteBucket::new(10 * 1024);
        // Capacity is one slice (1 KiB at this rate): the first slice is free.
        assert_eq!(bucket.reserve(1024), Duration::ZERO);
        let wait = bucket.reserve(5 * 1024);
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(!bucket.is_full());
    }
}
