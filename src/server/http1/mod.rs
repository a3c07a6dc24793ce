//! HTTP/1.1 for the client-API listener: reads request heads, hands each request to the router,
//! writes the response, and keeps the connection for the next request.
//!
//! Hand-written, around `httparse` (the parser hyper itself uses), for memory: hyper's server
//! gives every connection a read buffer of at least 8 KiB for the connection's whole life, and
//! the parsed request's headers point into it, so a `/sync` long-poll keeps a page of it
//! resident while it waits. With 10,000 waiting `/sync` requests that buffer alone was 4 KiB of
//! the 10 KiB each one cost (heaptrack). Here a connection holds no buffer while a request is
//! in flight or while it is idle: the head is read into a buffer that is dropped once parsed;
//! the URI and header values share one exact-size copy of the head.
//!
//! What it does, as RFC 9112 asks of a server:
//! - request bodies framed by `Content-Length` or `Transfer-Encoding: chunked` (anything else
//!   with a transfer coding is refused), streamed to the handler through a small channel, with
//!   `Expect: 100-continue` answered when the handler first asks for the body (one that answers
//!   without it, say 401 or 413, spares the client sending it);
//! - responses framed by `Content-Length` when the size is known, chunked otherwise (close-
//!   delimited for HTTP/1.0), no body for `HEAD`, 1xx, 204 and 304;
//! - persistent connections and pipelining (the next request's bytes wait in the buffer);
//!   `Connection: close`, and HTTP/1.0 without `keep-alive`, end the connection;
//! - a handler is dropped when its client goes away (a long-poll stops waiting at once);
//! - limits: 64 KiB of head, 100 headers, 30 s to send a head once begun, 300 s idle between
//!   requests, 60 s between two reads of a body. Malformed requests get a Matrix JSON error.
//!
//! The wire format itself (heads, framing, the chunked decoder) is the `myelin-wire` crate, which
//! has no I/O and is fuzzed on its own (`wire/fuzz/`); `differential.rs` checks against hyper's
//! server that a corpus of malformed and smuggling requests is accepted or refused alike.
//!
//! Upgrades, HTTP/2 and TLS are not spoken here: clients reach this port over plain HTTP/1.1,
//! or through a reverse proxy that speaks HTTP/2 and TLS to them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use myelin_wire::{Chunk, ChunkedDecoder, Framing, HEAD_TOO_LARGE, Head, MAX_HEAD, Refusal, has_token, parse_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Time to finish sending a head once its first byte has arrived.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a connection may sit idle between requests: longer than clients keep idle connections
/// in their pools (reqwest 90 s, Synapse 120 s), so that the client is the one that closes and
/// never sends a request on a connection the server is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest pause while a request body is being sent.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest piece of a request body read from the socket at once.
const BODY_CHUNK: usize = 64 * 1024;
/// Response bytes gathered before they are written.
const WRITE_BUFFER: usize = 64 * 1024;
/// First allocation for reading a head; large enough for a browser's request.
const HEAD_BUFFER: usize = 2048;

/// Serves requests on one accepted connection until the client closes it, an error ends it,
/// or `shutdown` is cancelled (a request in flight is answered first).
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Router, shutdown: CancellationToken) {
    // Responses go out in one or a few writes; Nagle's algorithm would only delay the last.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn { stream, buf: Vec::new(), interim: b"" };
    let after = loop {
        // A connection task is as large as its largest state, and a waiting request should keep
        // only what the wait needs: reading the head is boxed (as is writing a response), and
        // the head is used up inside this block (an `async fn` keeps a local until its scope
        // ends, even once it has been moved away).
        let (handler, request) = {
            let head = match Box::pin(read_head(&mut conn, &shutdown)).await {
                Ok(Some(head)) => head,
                Ok(None) => break After::Close,
                Err(refusal) => {
                    let _ = Box::pin(write_refusal(&mut conn, refusal)).await;
                    break After::Linger;
                }
            };
            start(head, &app, peer)
        };
        let handler = std::pin::pin!(handler);
        match serve_request(&mut conn, handler, request, &shutdown).await {
            After::KeepAlive => {}
            after => break after,
        }
        // An idle connection keeps no buffer (unless a pipelined request is already in it).
        conn.release_empty_buffer();
    };
    match after {
        After::Gone | After::KeepAlive => {}
        After::Close => {
            let _ = conn.stream.shutdown().await;
        }
        After::Linger => Box::pin(linger(conn)).await,
    }
}

/// What becomes of a connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// It carries the next request.
    KeepAlive,
    /// It is closed.
    Close,
    /// It is closed, but the client may still be sending a request body nobody read.
    Linger,
    /// The client has gone.
    Gone,
}

/// Closes a connection whose client may still be sending: the write side first, then what
/// arrives is read and discarded for a while. Closing with unread bytes would make the kernel
/// reset the connection, and the client could lose the response it has not read yet.
async fn linger(mut conn: Conn) {
    if conn.stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = vec![0u8; 16 * 1024];
    let mut left = LINGER_BYTES;
    let _ = timeout(LINGER_TIME, async {
        while let Ok(n @ 1..) = conn.stream.read(&mut sink).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Most bytes discarded by [`linger`].
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Longest wait in [`linger`].
const LINGER_TIME: Duration = Duration::from_secs(2);

/// The socket and the bytes read from it but not yet used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The unwritten rest of an interim `100 Continue`. It is written while the handler runs
    /// and may be cut off by the handler's answer; the answer first finishes it, so the two
    /// never interleave.
    interim: &'static [u8],
}

impl Conn {
    /// Writes what is left of an interim response.
    async fn finish_interim(&mut self) -> io::Result<()> {
        while !self.interim.is_empty() {
            let n = self.stream.write(self.interim).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.interim = &self.interim[n..];
        }
        Ok(())
    }

    /// Drops the buffer once everything in it has been used, so that a connection that waits
    /// (for a response or for its next request) keeps no memory for reading.
    fn release_empty_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Reads what the socket has into `buf`; `Ok(0)` at end of stream. Memory is taken only once
    /// bytes are there to read, so a connection waiting to read holds none.
    async fn fill(&mut self) -> io::Result<usize> {
        loop {
            self.stream.readable().await?;
            match self.try_fill() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// One non-blocking read into `buf`. An empty buffer is first read into from the stack: a
    /// socket reports itself readable until a read finds nothing, so the first wait after a
    /// request was read wakes at once, and an allocation made for that read would be kept by
    /// the whole wait of a long-poll.
    fn try_fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            let mut first = [0u8; HEAD_BUFFER];
            let n = self.stream.try_read(&mut first)?;
            self.buf.extend_from_slice(&first[..n]);
            return Ok(n);
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.buf.len().max(HEAD_BUFFER));
        }
        self.stream.try_read_buf(&mut self.buf)
    }
}

/// Waits for the next request head. `Ok(None)`: the connection should close quietly (the
/// client closed it or stayed idle too long, or the server is stopping between requests).
async fn read_head(conn: &mut Conn, shutdown: &CancellationToken) -> Result<Option<Head>, Refusal> {
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    let mut begun = false;
    loop {
        if !conn.buf.is_empty() {
            if let Some((head, len)) = parse_head(&conn.buf)? {
                conn.buf.drain(..len);
                // Not kept while the request runs, unless it holds the start of a body or a
                // pipelined request.
                conn.release_empty_buffer();
                return Ok(Some(head));
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(HEAD_TOO_LARGE);
            }
            if !begun {
                begun = true;
                deadline = Instant::now() + HEADER_TIMEOUT;
            }
        }
        tokio::select! {
            read = conn.fill() => match read {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            },
            () = sleep_until(deadline) => {
                return if begun {
                    Err(Refusal { status: StatusCode::REQUEST_TIMEOUT, error: "Request head not received in time" })
                } else {
                    Ok(None)
                };
            }
            () = shutdown.cancelled(), if !begun => return Ok(None),
        }
    }
}

/// The router's future for one request.
type Handler = tower::util::Oneshot<Router, Request<Body>>;

/// What the connection must remember of a request while the router handles it.
struct InFlight {
    framing: Framing,
    /// Where the body goes, if there is one.
    sender: Option<mpsc::Sender<io::Result<Bytes>>>,
    keep_alive: bool,
    /// With `Expect: 100-continue`: resolves when the handler first polls the body (an error
    /// when it dropped the body unread).
    continue_when: Option<oneshot::Receiver<()>>,
    head_only: bool,
    version: Version,
}

/// Turns a head into the request the router gets (its body fed through a channel) and starts
/// the router's future; nothing is awaited yet.
fn start(head: Head, app: &Router, peer: SocketAddr) -> (Handler, InFlight) {
    let Head { parts, framing, keep_alive, expect_continue } = head;
    let in_flight = |sender, continue_when| InFlight {
        framing,
        sender,
        keep_alive,
        continue_when,
        head_only: parts.method == Method::HEAD,
        version: parts.version,
    };
    let (in_flight, body) = match framing {
        Framing::Empty => (in_flight(None, None), Body::empty()),
        Framing::Length(_) | Framing::Chunked => {
            let (tx, rx) = mpsc::channel(2);
            let remaining = match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            };
            let (wanted, continue_when) = expect_continue.then(oneshot::channel).unzip();
            (in_flight(Some(tx), continue_when), Body::new(IncomingBody { rx, remaining, wanted }))
        }
    };
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(ConnectInfo(peer));
    (app.clone().oneshot(req), in_flight)
}

/// Drives a request's handler, feeding it the body, and writes its response.
///
/// The handler is pinned by the caller and passed by reference, and the head is taken apart
/// before this future starts: what a waiting request keeps is only this future's state, so it
/// holds nothing that the wait does not need.
async fn serve_request(
    conn: &mut Conn,
    handler: Pin<&mut Handler>,
    request: InFlight,
    shutdown: &CancellationToken,
) -> After {
    let InFlight { framing, sender, keep_alive, continue_when, head_only, version } = request;
    let mut body_read = framing == Framing::Empty;
    let response = {
        let reader = read_body_then_watch(conn, framing, sender, continue_when, &mut body_read);
        tokio::select! {
            response = handler => match response {
                Ok(response) => response,
                Err(never) => match never {},
            },
            // The client went away: the caller drops the handler, which cancels it.
            () = reader => return After::Gone,
        }
    };
    // A body the handler left unread would be taken for the next request; the connection ends.
    let keep_alive = keep_alive && body_read && !shutdown.is_cancelled();
    match Box::pin(write_response(conn, response, head_only, version, keep_alive)).await {
        Ok(true) => After::KeepAlive,
        Ok(false) if body_read => After::Close,
        Ok(false) => After::Linger,
        Err(_) => After::Gone,
    }
}

/// Feeds the request body to the handler (first sending `100 Continue` when the client waits
/// for it and the handler asks for the body), then watches the idle socket so that a client
/// that closes its connection is noticed. Completes only when the client has gone.
async fn read_body_then_watch(
    conn: &mut Conn,
    framing: Framing,
    sender: Option<mpsc::Sender<io::Result<Bytes>>>,
    continue_when: Option<oneshot::Receiver<()>>,
    body_read: &mut bool,
) {
    if let Some(wanted) = continue_when {
        if wanted.await.is_err() {
            // The handler answers without the body, which the client has not sent.
            return std::future::pending().await;
        }
        conn.interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        if conn.finish_interim().await.is_err() {
            return;
        }
    }
    if let Some(tx) = sender {
        // Boxed: only requests with a body need its state, not every waiting one.
        match Box::pin(read_body(conn, framing, &tx)).await {
            Ok(()) => *body_read = true,
            Err(BodyError::Gone) => return,
            // The handler answers without the rest; the connection then ends.
            Err(BodyError::Unwanted) => return std::future::pending().await,
            Err(BodyError::Bad(e)) => {
                let _ = tx.send(Err(e)).await;
                return std::future::pending().await;
            }
        }
        // Dropping the sender ends the body.
        conn.release_empty_buffer();
    }
    loop {
        // Bytes of a pipelined request are kept, up to the size of one head; beyond that the
        // socket is left alone until the response is written.
        if conn.buf.len() >= MAX_HEAD {
            return std::future::pending().await;
        }
        match conn.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Why a request body could not be delivered whole.
#[derive(Debug)]
enum BodyError {
    /// The client closed the connection.
    Gone,
    /// The handler dropped the body before its end.
    Unwanted,
    /// The body is malformed or the client stalled; the handler gets this error.
    Bad(io::Error),
}

fn bad_body(msg: &'static str) -> BodyError {
    BodyError::Bad(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// Reads the body of the current request from the connection into `tx`.
async fn read_body(conn: &mut Conn, framing: Framing, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<(), BodyError> {
    match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => read_exact_body(conn, n, tx).await,
        Framing::Chunked => read_chunked_body(conn, tx).await,
    }
}

/// Passes on `n` bytes, first those already buffered, then straight from the socket.
async fn read_exact_body(conn: &mut Conn, mut n: u64, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<(), BodyError> {
    while n > 0 {
        let chunk = if conn.buf.is_empty() {
            let mut chunk = BytesMut::with_capacity(n.min(BODY_CHUNK as u64) as usize);
            match timeout(BODY_READ_TIMEOUT, conn.stream.read_buf(&mut chunk)).await {
                Err(_) => return Err(bad_body("request body stalled")),
                Ok(Ok(0) | Err(_)) => return Err(BodyError::Gone),
                Ok(Ok(_)) => chunk.freeze(),
            }
        } else {
            let take = conn.buf.len().min(n.min(BODY_CHUNK as u64) as usize);
            Bytes::from(conn.buf.drain(..take).collect::<Vec<u8>>())
        };
        n -= chunk.len() as u64;
        tx.send(Ok(chunk)).await.map_err(|_| BodyError::Unwanted)?;
    }
    Ok(())
}

/// Decodes a chunked body as it arrives (framing rules in [`myelin_wire::ChunkedDecoder`]),
/// passing the data on and discarding extensions and trailers.
async fn read_chunked_body(conn: &mut Conn, tx: &mpsc::Sender<io::Result<Bytes>>) -> Result<(), BodyError> {
    let mut decoder = ChunkedDecoder::new();
    loop {
        let (used, next) = decoder.decode(&conn.buf).map_err(|refusal| bad_body(refusal.error))?;
        conn.buf.drain(..used);
        match next {
            Chunk::End => return Ok(()),
            Chunk::Data(n) => read_exact_body(conn, n, tx).await?,
            Chunk::NeedMore => match timeout(BODY_READ_TIMEOUT, conn.fill()).await {
                Err(_) => return Err(bad_body("request body stalled")),
                Ok(Ok(0) | Err(_)) => return Err(BodyError::Gone),
                Ok(Ok(_)) => {}
            },
        }
    }
}

/// A request body arriving from the connection task.
struct IncomingBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// Bytes still to come, when the length was declared.
    remaining: Option<u64>,
    /// Told on the first poll, when the client waits for `100 Continue` before sending.
    wanted: Option<oneshot::Sender<()>>,
}

impl http_body::Body for IncomingBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        if self.remaining == Some(0) {
            return Poll::Ready(None);
        }
        if let Some(wanted) = self.wanted.take() {
            let _ = wanted.send(());
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                if let Some(n) = &mut self.remaining {
                    *n = n.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match self.remaining {
                Some(_) => Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into()))),
                None => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// How the response body is delimited on the wire.
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `response`; returns whether the connection may carry another request.
async fn write_response(
    conn: &mut Conn,
    response: Response<Body>,
    head_only: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    conn.finish_interim().await?;
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    let headers = &mut parts.headers;
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    headers.remove(header::TRANSFER_ENCODING);
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let out = if bodiless {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(header::CONTENT_LENGTH);
        }
        Out::None
    } else if let Some(n) = declared {
        Out::Length(n)
    } else if head_only {
        // The router has already set the length of a `HEAD` answer when it knew it.
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Out::Length(n)
    } else if version == Version::HTTP_11 {
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Out::Chunked
    } else {
        keep_alive = false;
        Out::UntilClose
    };
    if has_token(headers, header::CONNECTION, "close") {
        keep_alive = false;
    }
    if !keep_alive && !headers.contains_key(header::CONNECTION) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if keep_alive && version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if !headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        headers.insert(header::DATE, HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static("")));
    }

    let mut buf = Vec::with_capacity(256 + body.size_hint().exact().map_or(0, |n| n.min(WRITE_BUFFER as u64) as usize));
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    buf.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");

    if head_only || matches!(out, Out::None) {
        conn.stream.write_all(&buf).await?;
        return Ok(keep_alive);
    }
    let mut left = match out {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame.map_err(|e| io::Error::other(e.to_string()))?.into_data() else {
            continue; // trailers are not sent
        };
        if data.is_empty() {
            continue;
        }
        if let Out::Length(_) = out {
            if data.len() as u64 > left {
                // More than the declared length: what was declared is sent, and the connection
                // ends so that the excess cannot be taken for another response.
                data.truncate(left as usize);
                keep_alive = false;
            }
            left -= data.len() as u64;
        }
        if let Out::Chunked = out {
            buf.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if buf.len() + data.len() > WRITE_BUFFER {
            conn.stream.write_all(&buf).await?;
            buf.clear();
            if data.len() >= WRITE_BUFFER / 4 {
                conn.stream.write_all_buf(&mut data).await?;
            }
        }
        if data.has_remaining() {
            buf.extend_from_slice(&data);
        }
        if let Out::Chunked = out {
            buf.extend_from_slice(b"\r\n");
        }
        if left == 0 {
            break;
        }
    }
    match out {
        Out::Chunked => buf.extend_from_slice(b"0\r\n\r\n"),
        // Fewer bytes than declared: the client can only tell from the connection closing.
        Out::Length(_) if left > 0 => keep_alive = false,
        _ => {}
    }
    conn.stream.write_all(&buf).await?;
    Ok(keep_alive)
}

/// Answers a request refused before routing, as a Matrix error (`M_UNKNOWN`: the spec has no
/// errcode for malformed HTTP), and closes the connection.
async fn write_refusal(conn: &mut Conn, refusal: Refusal) -> io::Result<()> {
    let response = crate::error::Error::new(refusal.status, "M_UNKNOWN", refusal.error).into_response();
    write_response(conn, response, false, Version::HTTP_11, false).await.map(drop)
}

#[cfg(test)]
mod differential;
