//! The HTTP/1.1 layer of the client listener, spoken to over raw sockets: persistent
//! connections and pipelining, request bodies by length and chunked, `Expect: 100-continue`,
//! `HEAD`, HTTP/1.0, refusals of malformed requests, and a long-poll whose client hangs up.

#[macro_use]
mod common;

use std::time::Duration;

use common::raw::Raw;
use common::{Backend, TestServer};
use serde_json::json;

const VERSIONS: &str = "/_matrix/client/versions";

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

#[tokio::test]
async fn one_connection_serves_many_requests_including_pipelined_ones() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut raw = Raw::open(&server).await;
    raw.send(get(VERSIONS).as_bytes()).await;
    let first = raw.answer(false).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.json()["versions"].is_array());
    assert!(first.header("date").is_some(), "{}", first.head);
    // Three requests in one write, answered in order on the same connection.
    let pipelined = format!("{}{}{}", get(VERSIONS), get("/_matrix/client/v3/nowhere"), get(VERSIONS));
    raw.send(pipelined.as_bytes()).await;
    assert_eq!(raw.answer(false).await.status, 200);
    let missing = raw.answer(false).await;
    assert_eq!((missing.status, missing.json()["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    assert_eq!(raw.answer(false).await.status, 200);
    // `Connection: close` is honoured after the answer.
    raw.send(format!("GET {VERSIONS} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes()).await;
    let last = raw.answer(false).await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(raw.closed().await && raw.unread().is_empty());
}

#[tokio::test]
async fn head_and_http_1_0() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut raw = Raw::open(&server).await;
    raw.send(format!("HEAD {VERSIONS} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).await;
    let head = raw.answer(true).await;
    assert_eq!(head.status, 200);
    let length: usize = head.header("content-length").expect("HEAD carries the length").parse().unwrap();
    // No body followed: the next answer on the connection starts right away.
    raw.send(get(VERSIONS).as_bytes()).await;
    let full = raw.answer(false).await;
    assert_eq!(full.body.len(), length);

    // HTTP/1.0 without keep-alive: one answer, then the server closes.
    let mut raw = Raw::open(&server).await;
    raw.send(format!("GET {VERSIONS} HTTP/1.0\r\n\r\n").as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200);
    assert!(answer.json()["versions"].is_array());
    assert!(raw.closed().await);
    // With keep-alive it stays open.
    let mut raw = Raw::open(&server).await;
    raw.send(format!("GET {VERSIONS} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes()).await;
    assert_eq!(raw.answer(false).await.header("connection"), Some("keep-alive"));
    raw.send(format!("GET {VERSIONS} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes()).await;
    assert_eq!(raw.answer(false).await.status, 200);
}

#[tokio::test]
async fn request_bodies_by_length_chunked_and_after_100_continue() {
    let server = TestServer::start(Backend::Sqlite).await;
    let register = |user: &str| {
        json!({ "username": user, "password": "a long enough password", "auth": { "type": "m.login.dummy" } })
            .to_string()
    };
    let mut raw = Raw::open(&server).await;

    // Chunked, in three chunks with an extension and a trailer.
    let body = register("chunky");
    let (a, b) = body.split_at(10);
    let (b, c) = b.split_at(7);
    let chunked = format!(
        "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n{:X}\r\n{c}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len(),
        c.len()
    );
    raw.send(chunked.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.json()["user_id"].as_str().unwrap().starts_with("@chunky:"));

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let body = register("patient");
    raw.send(
        format!(
            "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let interim = raw.answer(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    // The body in two writes, with a pause between them.
    let (a, b) = body.split_at(5);
    raw.send(a.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send(b.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.json()["user_id"].as_str().unwrap().starts_with("@patient:"));

    // The same connection still works.
    raw.send(get(VERSIONS).as_bytes()).await;
    assert_eq!(raw.answer(false).await.status, 200);

    // A request refused without its body (no access token) gets its final answer and no
    // `100 Continue`: the client never has to send the body. The connection then ends, since
    // the unsent body cannot be told apart from a next request.
    let mut raw = Raw::open(&server).await;
    raw.send(
        b"POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
          Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
    )
    .await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(answer.json()["errcode"], "M_MISSING_TOKEN");
    assert_eq!(answer.header("connection"), Some("close"));
}

#[tokio::test]
async fn malformed_requests_get_matrix_errors_and_a_closed_connection() {
    let server = TestServer::start(Backend::Sqlite).await;
    let cases: Vec<(String, u16)> = vec![
        ("GARBAGE\r\n\r\n".to_owned(), 400),
        (format!("GET {VERSIONS} HTTP/1.1\r\nNo colon here\r\n\r\n"), 400),
        (format!("POST {VERSIONS} HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), 400),
        (format!("POST {VERSIONS} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400),
        (format!("POST {VERSIONS} HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501),
        (format!("GET {VERSIONS} HTTP/1.1\r\n{}\r\n", "X-Many: v\r\n".repeat(101)), 431),
        (format!("GET {VERSIONS} HTTP/1.1\r\nX-Big: {}\r\n\r\n", "v".repeat(70 * 1024)), 431),
    ];
    for (request, status) in cases {
        let mut raw = Raw::open(&server).await;
        raw.send(request.as_bytes()).await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, status, "{}: {answer:?}", request.lines().next().unwrap());
        let body = answer.json();
        assert!(body["errcode"].is_string() && body["error"].is_string(), "{body}");
        assert!(raw.closed().await);
    }

    // A malformed chunked body reaches the handler as an error; the connection then ends.
    let mut raw = Raw::open(&server).await;
    raw.send(b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let answer = raw.answer(false).await;
    assert!((400..500).contains(&answer.status), "{answer:?}");
    assert!(raw.closed().await);

    // The server is unharmed.
    let mut raw = Raw::open(&server).await;
    raw.send(get(VERSIONS).as_bytes()).await;
    assert_eq!(raw.answer(false).await.status, 200);
}

/// Chunk framing that a proxy could read differently (a line ended by a bare LF, a size with a
/// sign) is refused, and nothing the body carried takes effect: here a registration that the
/// same body, framed correctly, performs.
#[tokio::test]
async fn ambiguous_chunk_framing_is_refused_and_has_no_effect() {
    let server = TestServer::start(Backend::Sqlite).await;
    let register = |user: &str| {
        json!({ "username": user, "password": common::PASSWORD, "auth": { "type": "m.login.dummy" } }).to_string()
    };
    let head = "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let available = |user: &'static str| {
        let server = &server;
        async move {
            let (status, body) = server.get(&format!("/_matrix/client/v3/register/available?username={user}")).await;
            (status, body["available"] == true)
        }
    };

    for (user, framing) in [("barelf", "{:x}\n{}\r\n0\r\n\r\n"), ("plus", "+{:x}\r\n{}\r\n0\r\n\r\n")] {
        let body = register(user);
        let body = framing.replacen("{:x}", &format!("{:x}", body.len()), 1).replacen("{}", &body, 1);
        let mut raw = Raw::open(&server).await;
        raw.send(format!("{head}{body}").as_bytes()).await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, 400, "{user}: {answer:?}");
        assert!(raw.closed().await, "{user}");
        assert_eq!(available(user).await, (200, true), "{user} was registered");
    }

    // The same request, framed correctly, registers.
    let body = register("crlf");
    let mut raw = Raw::open(&server).await;
    raw.send(format!("{head}{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()).await;
    assert_eq!(raw.answer(false).await.status, 200);
    assert_eq!(available("crlf").await.0, 400, "crlf was not registered");
}

#[tokio::test]
async fn a_long_poll_whose_client_hangs_up_is_dropped() {
    let server = TestServer::start(Backend::Sqlite).await;
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let sync = format!(
        "GET /_matrix/client/v3/sync?since={since}&timeout=60000 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.access_token
    );
    // Many long-polls that hang up at once: each must end on the server, which stays responsive
    // and keeps no file descriptor for them.
    let pid = server.pid().expect("pid");
    // Sockets only: SQLite connections the pool opens meanwhile take files (three each).
    let fds = || {
        let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
        dir.filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))).count()
    };
    let before = fds();
    let mut polls = Vec::new();
    for _ in 0..50 {
        let mut raw = Raw::open(&server).await;
        raw.send(sync.as_bytes()).await;
        polls.push(raw);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fds() >= before + 50, "the server holds the long-polls");
    drop(polls);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // (A few more sockets may be connections that were being accepted.)
    while fds() > before + 10 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fds() <= before + 10, "connections of hung-up long-polls were not closed: {} > {before}", fds());

    // A held long-poll still answers when a message arrives.
    let (status, room) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
    assert_eq!(status, 200, "{room}");
    let mut raw = Raw::open(&server).await;
    let (_, body) = alice.get("/_matrix/client/v3/sync").await;
    let since = body["next_batch"].as_str().unwrap().to_owned();
    raw.send(
        format!(
            "GET /_matrix/client/v3/sync?since={since}&timeout=30000 HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\r\n",
            alice.access_token
        )
        .as_bytes(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let room_id = room["room_id"].as_str().unwrap();
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"),
            &json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200);
    let events = &answer.json()["rooms"]["join"][room_id]["timeline"]["events"];
    assert!(events.as_array().is_some_and(|e| e.iter().any(|e| e["content"]["body"] == "hi")), "{events}");
}
