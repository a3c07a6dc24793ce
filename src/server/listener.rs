//! The client-API listener: accepts TCP connections (up to `listen.client_max_connections` at
//! once) and serves the router on each of them with the HTTP/1.1 layer in [`super::http1`],
//! until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `app` on `listener` until `shutdown` completes, then lets every connection finish
/// its request in flight (callers bound that wait). At most `max_connections` are served at
/// once: one more is closed as soon as it is accepted, so that connections cannot use up the
/// file descriptors the database and media store need.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>, max_connections: usize) {
    let stopping = CancellationToken::new();
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, max_connections, "client listener at its connection cap; closing a new connection");
            drop(stream);
            continue;
        };
        let connection = super::http1::serve_connection(stream, addr, app.clone(), stopping.clone());
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

/// Errors of `accept` that concern one connection are skipped; others (such as running out of
/// file descriptors) are logged and retried after a pause, as `axum::serve` does.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
