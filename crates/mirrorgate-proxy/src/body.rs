//! Response bodies that stream: an upstream body passes through with an idle timeout, a byte count and a
//! completion hook, never buffered, so a multi-GiB blob costs a few frames of memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The error type of every body the gateway streams.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the gateway handles.
pub type GatewayBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> GatewayBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body from bytes already in memory (errors, local answers).
pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body that stopped without an error but before its end (dropped by the client) or with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Every byte and the end of stream were delivered.
    Complete,
    /// The upstream body failed or stalled past the idle timeout.
    Failed,
    /// The consumer went away first (client disconnect).
    Abandoned,
}

/// Called once when a [`Metered`] body finishes, however it finishes.
pub type OnDone = Box<dyn FnOnce(u64, Completion) + Send + Sync>;

/// The error a stalled body ends with.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for more than {0:?}")]
pub struct IdleTimeout(pub Duration);

pin_project! {
    /// Streams `inner`, failing it when no frame arrives for `idle`, counting data bytes, and calling `on_done`
    /// exactly once: at the end, on error, or on drop.
    pub struct Metered<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        idle: Option<Duration>,
        bytes: u64,
        on_done: Option<OnDone>,
        // Set when the consumer asked `is_end_stream` and heard yes. hyper never polls such a body (a HEAD
        // answer, an empty 201) and just drops it, which is a complete delivery, not an abandoned one.
        end_seen: AtomicBool,
    }

    impl<B> PinnedDrop for Metered<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.on_done.take() {
                let completion = if this.end_seen.load(Ordering::Relaxed) {
                    Completion::Complete
                } else {
                    Completion::Abandoned
                };
                done(*this.bytes, completion);
            }
        }
    }
}

impl<B> Metered<B> {
    pub fn new(inner: B, idle: Option<Duration>, on_done: OnDone) -> Self {
        Metered {
            inner,
            sleep: idle.map(tokio::time::sleep),
            idle,
            bytes: 0,
            on_done: Some(on_done),
            end_seen: AtomicBool::new(false),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                if let (Some(sleep), Some(idle)) = (this.sleep.as_mut().as_pin_mut(), *this.idle) {
                    sleep.reset(Instant::now() + idle);
                }
                // hyper stops polling once `is_end_stream` says so: report completion now, not as a drop.
                if this.inner.is_end_stream() {
                    if let Some(done) = this.on_done.take() {
                        done(*this.bytes, Completion::Complete);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(done) = this.on_done.take() {
                    done(*this.bytes, Completion::Failed);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(done) = this.on_done.take() {
                    done(*this.bytes, Completion::Complete);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
                    if std::future::Future::poll(sleep, cx).is_ready() {
                        if let Some(done) = this.on_done.take() {
                            done(*this.bytes, Completion::Failed);
                        }
                        let idle = this.idle.unwrap_or_default();
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(idle)))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.end_seen.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    // Pins that the completion hook sees every byte and fires exactly once on a normal end.
    #[tokio::test]
    async fn counts_bytes_and_completes_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Metered::new(
            Full::new(Bytes::from_static(b"hello world")),
            Some(Duration::from_secs(5)),
            Box::new(move |n, c| s.lock().unwrap().push((n, c))),
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), 11);
        assert_eq!(*seen.lock().unwrap(), vec![(11, Completion::Complete)]);
    }

    // Pins that a dropped body reports itself abandoned (client disconnect mid-blob).
    #[tokio::test]
    async fn drop_reports_abandoned() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Metered::new(
            Full::new(Bytes::from_static(b"x")),
            None,
            Box::new(move |n, c| s.lock().unwrap().push((n, c))),
        );
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![(0, Completion::Abandoned)]);
    }

    // Pins that an empty body the server only asked `is_end_stream` of (a HEAD answer: hyper never polls it)
    // counts as complete when dropped, so access logs and metrics do not call every HEAD abandoned.
    #[tokio::test]
    async fn empty_body_dropped_after_end_check_is_complete() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Metered::new(
            Empty::<Bytes>::new(),
            None,
            Box::new(move |n, c| s.lock().unwrap().push((n, c))),
        );
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![(0, Completion::Complete)]);
    }

    // Pins the idle timeout: a body that never produces a frame fails instead of hanging forever.
    #[tokio::test(start_paused = true)]
    async fn stalled_body_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Metered::new(
            stream,
            Some(Duration::from_secs(3)),
            Box::new(move |n, c| s.lock().unwrap().push((n, c))),
        );
        let err = body.collect().await.err().unwrap();
        assert!(err.to_string().contains("idle"), "{err}");
        assert_eq!(*seen.lock().unwrap(), vec![(0, Completion::Failed)]);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
