//! Differential test of the HTTP/1.1 layer against hyper's server.
//!
//! The same echo router is served by [`super::serve_connection`] and by hyper (through
//! `axum::serve`), each on a loopback port. Every request of a corpus of malformed and classic
//! request-smuggling cases is sent to both as raw bytes, followed by a pipelined `GET /ping`;
//! both must accept or refuse each request alike and see the same requests in the same bytes
//! (a framing read differently shows up as a different body or an extra `/ping`).
//!
//! Where Myelin deliberately refuses what hyper accepts (RFC 9112 lets a server refuse each of
//! them, and a server behind a proxy should), the case is in `STRICTER` and only Myelin's
//! refusal is asserted.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a server made of one connection's bytes: one entry per response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A 2xx with its body (the echoed request body, or `pong`).
    Ok(String),
    /// A 4xx or 5xx: the request was refused (by the HTTP layer or because its body was bad).
    Refused,
}

fn router() -> Router {
    Router::new()
        .route(
            "/echo",
            routing::post(|body: Body| async move {
                match axum::body::to_bytes(body, 1 << 20).await {
                    Ok(bytes) => (http::StatusCode::OK, bytes),
                    Err(_) => (http::StatusCode::BAD_REQUEST, bytes::Bytes::from_static(b"bad body")),
                }
            }),
        )
        .route("/ping", routing::get(|| async { "pong" }))
}

async fn myelin_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { return };
            tokio::spawn(super::serve_connection(stream, peer, app.clone(), CancellationToken::new()));
        }
    });
    addr
}

async fn hyper_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router()).await });
    addr
}

/// Sends `request` and a pipelined `GET /ping` (which asks to close), and reads what comes back
/// until the server closes or stays silent for a second.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<Seen> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    stream.write_all(&bytes).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    responses(&received)
}

/// Splits a byte stream into responses; bodies are framed by `Content-Length` (both servers
/// send it for these small answers).
fn responses(mut bytes: &[u8]) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().expect("a length"));
        let body = &bytes[end + 4..(end + 4 + length).min(bytes.len())];
        seen.push(if (200..300).contains(&status) {
            Seen::Ok(String::from_utf8_lossy(body).into_owned())
        } else {
            Seen::Refused
        });
        bytes = &bytes[(end + 4 + length).min(bytes.len())..];
    }
    seen
}

fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /echo HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}").into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    post("Transfer-Encoding: chunked\r\n", body)
}

/// Requests both servers must answer alike.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("content-length body", post("Content-Length: 5\r\n", "hello")),
        ("repeated equal content-length", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")),
        ("conflicting content-length", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")),
        ("content-length list", post("Content-Length: 5, 5\r\n", "hello")),
        ("signed content-length", post("Content-Length: +5\r\n", "hello")),
        ("negative content-length", post("Content-Length: -5\r\n", "hello")),
        ("hex content-length", post("Content-Length: 0x5\r\n", "hello")),
        ("content-length overflow", post("Content-Length: 99999999999999999999999\r\n", "hello")),
        ("space before colon", post("Content-Length : 5\r\n", "hello")),
        ("obsolete line folding", post("X-A: a\r\n b\r\nContent-Length: 5\r\n", "hello")),
        ("bare LF head", b"POST /echo HTTP/1.1\nHost: a\nContent-Length: 5\n\nhello".to_vec()),
        ("chunked body", chunked("5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, upper-case hex", chunked("A\r\n0123456789\r\n0\r\n\r\n")),
        ("chunked, extension", chunked("5;name=\"v\"\r\nhello\r\n0\r\n\r\n")),
        ("chunked, whitespace before CRLF", chunked("5 \t\r\nhello\r\n0\r\n\r\n")),
        ("chunked, leading zeros", chunked("0000000000000000005\r\nhello\r\n0\r\n\r\n")),
        ("chunked, trailer", chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")),
        ("chunked, bare LF after size", chunked("5\nhello\r\n0\r\n\r\n")),
        ("chunked, bare LF after data", chunked("5\r\nhello\n0\r\n\r\n")),
        ("chunked, bare LF after last chunk", chunked("5\r\nhello\r\n0\n\r\n")),
        ("chunked, bare CR after size", chunked("5\rhello\r\n0\r\n\r\n")),
        ("chunked, CR in extension", chunked("5;a\rb\r\nhello\r\n0\r\n\r\n")),
        ("chunked, LF in extension", chunked("5;a\nb\r\nhello\r\n0\r\n\r\n")),
        ("chunked, plus sign", chunked("+5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, minus sign", chunked("-5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, 0x prefix", chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, leading space", chunked(" 5\r\nhello\r\n0\r\n\r\n")),
        ("chunked, underscore", chunked("5_0\r\nhello\r\n0\r\n\r\n")),
        ("chunked, empty size", chunked("\r\nhello\r\n0\r\n\r\n")),
        ("chunked, size overflow", chunked("10000000000000005\r\nhello\r\n0\r\n\r\n")),
        ("chunked, data longer than size", chunked("3\r\nhello\r\n0\r\n\r\n")),
        ("chunked, data shorter than size", chunked("7\r\nhello\r\n0\r\n\r\n")),
        ("transfer-encoding not chunked", post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello")),
        ("chunked not last", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n")),
        ("xchunked", post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n")),
        ("transfer-encoding in HTTP/1.0", {
            b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec()
        }),
        ("space in target", b"POST /echo x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        ("NUL in header value", post("X-A: a\0b\r\nContent-Length: 5\r\n", "hello")),
    ]
}

/// Requests Myelin refuses and hyper accepts, and why refusing is right.
const STRICTER: &[(&str, &str, &str)] = &[
    // RFC 9112 6.3: a server MAY reject a message with both; they are the classic CL.TE/TE.CL
    // smuggling pair, and hyper's choice (Transfer-Encoding wins) is the one a proxy may not make.
    ("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "5\r\nhello\r\n0\r\n\r\n", "CL and TE together"),
    // RFC 9112 7: chunked must not be applied more than once.
    ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n", "chunked twice"),
    // hyper takes any line before the final empty one as a trailer, so a request line after a
    // last chunk missing its CRLF is swallowed as one; here trailers must be header fields.
    ("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n", "request as trailer"),
];

#[tokio::test]
async fn malformed_requests_are_refused_as_hyper_refuses_them() {
    let (myelin, hyper) = (myelin_server().await, hyper_server().await);
    let cases = corpus();
    let results = futures::future::join_all(cases.iter().map(|(name, request)| async move {
        let (ours, theirs) = tokio::join!(exchange(myelin, request), exchange(hyper, request));
        (*name, ours, theirs)
    }))
    .await;
    let mut differences = Vec::new();
    for (name, ours, theirs) in results {
        assert!(!theirs.is_empty(), "{name}: hyper answered nothing");
        if ours != theirs {
            differences.push(format!("{name}: myelin {ours:?}, hyper {theirs:?}"));
        }
    }
    assert!(differences.is_empty(), "answered differently:\n{}", differences.join("\n"));

    // The accepted cases really were accepted (the comparison above would pass if both refused
    // everything).
    let accepted = ["content-length body", "chunked body", "chunked, trailer", "chunked, extension"];
    for (name, request) in cases.iter().filter(|(name, _)| accepted.contains(name)) {
        assert_eq!(exchange(myelin, request).await, [Seen::Ok("hello".into()), Seen::Ok("pong".into())], "{name}");
    }

    for (headers, body, why) in STRICTER {
        let seen = exchange(myelin, &post(headers, body)).await;
        assert_eq!(seen, [Seen::Refused], "{why}");
    }
}
