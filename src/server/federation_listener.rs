//! The limits of the HTTPS federation listener (axum-server over hyper and rustls): a cap on
//! open connections and an idle timeout on each, applied to the TCP stream beneath TLS. The
//! request-head timeout is hyper's own (`header_read_timeout`, set where the server is built),
//! which axum-server turns off by default.
//!
//! A connection over the cap is closed at accept, before the TLS handshake costs anything; it
//! holds its slot until it ends, however it ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

/// Accepts a TCP connection if a slot is free, and times it out when idle.
#[derive(Clone)]
pub struct LimitedAcceptor {
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedAcceptor {
    /// At most `max_connections` at once, each closed after `idle` without a byte either way.
    pub fn new(max_connections: usize, idle: Duration) -> Self {
        Self { slots: Arc::new(Semaphore::new(max_connections)), idle }
    }
}

impl<S> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = Limited;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Limited, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            tracing::warn!("federation listener at its connection cap; closing a new connection");
            // Dropping the stream closes it.
            return std::future::ready(Err(io::Error::other("connection cap reached")));
        };
        let _ = stream.set_nodelay(true);
        let mut io = TimeoutStream::new(stream);
        io.set_read_timeout(Some(self.idle));
        io.set_write_timeout(Some(self.idle));
        std::future::ready(Ok((Limited { io: Box::pin(io), _slot: slot }, service)))
    }
}

/// An accepted connection: reads and writes fail with `TimedOut` once one has waited for the
/// idle timeout, and its slot is given back when it is dropped.
pub struct Limited {
    io: Pin<Box<TimeoutStream<TcpStream>>>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_shutdown(cx)
    }
}
