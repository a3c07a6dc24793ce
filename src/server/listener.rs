//! The client-API listener: accepts TCP connections and serves the router on each of them.
//!
//! This is `axum::serve` written out, for one difference: the connections speak HTTP/1 only.
//! `axum::serve` uses hyper-util's auto-detecting builder, which first reads the 24-byte
//! HTTP/2 preface into a buffer of its own and hands it back to hyper. hyper's read buffer then
//! holds those 24 bytes when it reserves its usual 8 KiB for the rest of the request, so it grows
//! to 16 KiB on every connection, and a `/sync` long-poll holds that for its whole wait (a third
//! of the heap of 3,000 waiting `/sync` requests, heaptrack). Clients speak HTTP/1.1 to a
//! plain-text port (HTTP/2 comes with TLS and ALPN, at the reverse proxy), as they do to Synapse.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1::Builder;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` completes, then lets every connection finish
/// its request in flight (callers bound that wait).
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let builder = Builder::new();
    let graceful = GracefulShutdown::new();
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
        // Handlers read the peer address through axum's `ConnectInfo`, as under `axum::serve`.
        let service = app.clone().map_request(move |req: http::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(addr));
            req
        });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
