//! HTTP/1.1 message framing as the client sent it, read beside hyper: a request carrying both `Content-Length`
//! and `Transfer-Encoding` is the classic smuggling shape (RFC 9112 §6.1: "ought to be handled as an error"),
//! and Envoy refuses it by default. hyper accepts it — it drops the `Content-Length` before the request reaches
//! any service and decodes the body as chunked — so by the time the request path sees it, nothing says it was
//! ambiguous. [`FramingGuard`] wraps the client connection's read side, follows the message boundaries
//! (heads, `Content-Length` bodies, chunked bodies with trailers) and records one verdict per request head, in
//! order; the service pops the verdict for each HTTP/1 request and answers an ambiguous one with 400 and
//! `Connection: close` before it is routed, so it never reaches an endpoint.
//!
//! The scan is a state machine over bytes already read (no extra buffering beyond one head, no copies of
//! bodies). It turns itself off for HTTP/2 (the connection preface) and on anything it cannot follow; hyper then
//! refuses or closes such a connection itself, so a verdict is never attributed to the wrong request.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The heads of one connection's requests, in order: `true` for an ambiguous one.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    fn push(&self, ambiguous: bool) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(ambiguous);
        }
    }

    /// The verdict of the next HTTP/1 request hyper hands to the service (false when the scan was off).
    pub fn next_is_ambiguous(&self) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|mut q| q.pop_front())
            .unwrap_or(false)
    }
}

/// What the scanner expects next.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A request head, collected up to its blank line.
    Head(Vec<u8>),
    /// The rest of a `Content-Length` body.
    Body(u64),
    /// A chunk-size line (with extensions), collected up to its LF.
    ChunkSize(Vec<u8>),
    /// Chunk data plus its CRLF.
    ChunkData(u64),
    /// Trailer lines after the last chunk, collected up to a blank line.
    Trailers(Vec<u8>),
    /// Not following this connection any more (HTTP/2, or framing hyper will refuse).
    Off,
}

/// Longer heads are refused by hyper (431) anyway; the scan stops rather than buffer more.
const MAX_SCANNED_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 4 * 1024;

/// Follows message boundaries and records a verdict per head.
struct Scanner {
    state: State,
    verdicts: Verdicts,
}

impl Scanner {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = match state {
                State::Off => return,
                State::Head(mut buf) => {
                    let (done, used) =
                        collect_until(&mut buf, bytes, b"\r\n\r\n", MAX_SCANNED_HEAD);
                    match done {
                        Collected::More => (State::Head(buf), used),
                        Collected::TooLong => (State::Off, used),
                        // Blank lines before a request line are ignored by hyper (RFC 9112 §2.2).
                        Collected::Done if buf.len() == 4 && buf.starts_with(b"\r\n") => {
                            buf.drain(..2);
                            (State::Head(buf), used)
                        }
                        Collected::Done => (self.after_head(&buf), used),
                    }
                }
                State::Body(left) => {
                    let n = left.min(bytes.len() as u64);
                    let next = if n == left {
                        new_head()
                    } else {
                        State::Body(left - n)
                    };
                    (next, usize::try_from(n).unwrap_or(bytes.len()))
                }
                State::ChunkSize(mut line) => {
                    let (done, used) = collect_until(&mut line, bytes, b"\n", MAX_LINE);
                    match done {
                        Collected::More => (State::ChunkSize(line), used),
                        Collected::TooLong => (State::Off, used),
                        Collected::Done => match chunk_size(&line) {
                            Some(0) => (State::Trailers(Vec::new()), used),
                            Some(size) => (State::ChunkData(size.saturating_add(2)), used),
                            None => (State::Off, used),
                        },
                    }
                }
                State::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    let next = if n == left {
                        State::ChunkSize(Vec::new())
                    } else {
                        State::ChunkData(left - n)
                    };
                    (next, usize::try_from(n).unwrap_or(bytes.len()))
                }
                State::Trailers(mut buf) => {
                    // The trailer section ends at an empty line: right away (`\r\n`) or after fields.
                    let (done, used) = collect_until(&mut buf, bytes, b"\n", MAX_SCANNED_HEAD);
                    match done {
                        Collected::More => (State::Trailers(buf), used),
                        Collected::TooLong => (State::Off, used),
                        Collected::Done if buf == b"\r\n" || buf == b"\n" => (new_head(), used),
                        Collected::Done => (State::Trailers(Vec::new()), used),
                    }
                }
            };
            self.state = next;
            bytes = &bytes[used..];
        }
    }

    /// Records the head's verdict and picks how its body is framed.
    fn after_head(&mut self, head: &[u8]) -> State {
        if head.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut length: Option<u64> = None;
        let mut has_length = false;
        let mut chunked = false;
        for line in head.split(|b| *b == b'\n').skip(1) {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = &line[..colon];
            let value = String::from_utf8_lossy(&line[colon + 1..]);
            let value = value.trim();
            if name.eq_ignore_ascii_case(b"content-length") {
                has_length = true;
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
        }
        let ambiguous = has_length && chunked;
        self.verdicts.push(ambiguous);
        if ambiguous {
            // hyper closes the connection after an ambiguous request: nothing after it is a request.
            return State::Off;
        }
        if chunked {
            return State::ChunkSize(Vec::new());
        }
        match (has_length, length) {
            (false, _) | (true, Some(0)) => new_head(),
            (true, Some(n)) => State::Body(n),
            // An unreadable length: hyper answers 400 and closes.
            (true, None) => State::Off,
        }
    }
}

fn new_head() -> State {
    State::Head(Vec::new())
}

enum Collected {
    Done,
    More,
    TooLong,
}

/// Appends bytes to `buf` up to and including the first `end` (which may straddle reads); returns how many
/// bytes of `input` were used.
fn collect_until(buf: &mut Vec<u8>, input: &[u8], end: &[u8], max: usize) -> (Collected, usize) {
    for (i, b) in input.iter().enumerate() {
        buf.push(*b);
        if buf.ends_with(end) {
            return (Collected::Done, i + 1);
        }
        if buf.len() > max {
            return (Collected::TooLong, i + 1);
        }
    }
    (Collected::More, input.len())
}

/// The size of a chunk-size line (`1a;ext=x\r\n`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text.trim_end().split(';').next()?.trim();
    u64::from_str_radix(size, 16).ok()
}

/// A client connection whose reads are scanned for HTTP/1.1 framing (see the module docs).
pub struct FramingGuard<IO> {
    inner: IO,
    scanner: Scanner,
}

impl<IO> FramingGuard<IO> {
    /// Wraps `inner`; verdicts go to `verdicts`.
    pub fn new(inner: IO, verdicts: Verdicts) -> Self {
        FramingGuard {
            inner,
            scanner: Scanner {
                state: new_head(),
                verdicts,
            },
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(chunks: &[&[u8]]) -> Vec<bool> {
        let verdicts = Verdicts::default();
        let mut s = Scanner {
            state: new_head(),
            verdicts: verdicts.clone(),
        };
        for c in chunks {
            s.feed(c);
        }
        let mut out = Vec::new();
        while let Ok(Some(v)) = verdicts.0.lock().map(|mut q| q.pop_front()) {
            out.push(v);
        }
        out
    }

    // Pins the smuggling shape in both orders, and that a plain request is not flagged.
    #[test]
    fn content_length_with_transfer_encoding_is_ambiguous() {
        let cl_te = b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let te_cl = b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts_of(&[cl_te]), vec![true]);
        assert_eq!(verdicts_of(&[te_cl]), vec![true]);
        assert_eq!(
            verdicts_of(&[b"GET /v2/ HTTP/1.1\r\nHost: h\r\n\r\n"]),
            vec![false]
        );
    }

    // Pins that verdicts stay aligned with requests across bodies of both framings, pipelining and reads split
    // at every byte: the third request is the ambiguous one, whatever the read boundaries.
    #[test]
    fn verdicts_follow_message_boundaries() {
        let stream: &[u8] = b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nxx\
PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer-A: x\r\n\r\n\
POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts_of(&[stream]), vec![false, false, true]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts_of(&bytes), vec![false, false, true]);
        let sevens: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(verdicts_of(&sevens), vec![false, false, true]);
    }

    // Pins that HTTP/2 turns the scan off: binary frames are never read as heads.
    #[test]
    fn http2_preface_stops_the_scan() {
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.extend_from_slice(b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(verdicts_of(&[&h2]), Vec::<bool>::new());
    }
}
