//! Denial-of-service hardening, probed over real HTTP: password hashing under a flood of
//! logins, and a request that used to panic inside ruma's deserializer.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{Backend, TestServer};
use serde_json::{Value, json};

/// A value of kB from `/proc/<pid>/status`, e.g. `VmHWM` (the peak resident set).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// Concurrent wrong-password logins for a real account: each needs an argon2 hash of 19 MiB.
/// Unbounded, 100 of them took a server from 78 MiB to 1.6 GiB; with one hash per core at a time
/// the peak grows by a few hashes' worth.
/// Every answer is 403 (wrong password) or 429 with `retry_after_ms` (waited too long for a
/// turn), never a dropped connection.
#[tokio::test]
async fn concurrent_wrong_password_logins_keep_memory_bounded() {
    const LOGINS: usize = 64;
    let server = TestServer::start(Backend::Sqlite).await;
    server.register("alice").await;
    let pid = server.pid().expect("server pid");
    let wrong = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": "not the password",
    });
    // Warm up: the allocator's arenas now hold what sequential hashes need.
    for _ in 0..3 {
        let (status, body) = server.post("/_matrix/client/v3/login", &wrong).await;
        assert_eq!(status, 403, "{body}");
    }
    let before = proc_status_kb(pid, "VmHWM");
    let started = Instant::now();
    let answers = futures::future::join_all((0..LOGINS).map(|_| server.post("/_matrix/client/v3/login", &wrong))).await;
    let elapsed = started.elapsed();
    let after = proc_status_kb(pid, "VmHWM");
    let (mut forbidden, mut limited) = (0, 0);
    for (status, body) in &answers {
        match (status, body["errcode"].as_str()) {
            (403, Some("M_FORBIDDEN")) => forbidden += 1,
            (429, Some("M_LIMIT_EXCEEDED")) => {
                assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
                limited += 1;
            }
            _ => panic!("unexpected answer {status} {body}"),
        }
    }
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!(
        "{LOGINS} concurrent wrong-password logins: {forbidden} x 403, {limited} x 429 in {elapsed:?}; \
         peak RSS {} MiB -> {} MiB (+{grown_mib} MiB)",
        before / 1024,
        after / 1024
    );
    // 19 MiB per hash. Unbounded, this grew by 408 MiB on a 2-core machine (threads started
    // together, hashes overlapping); one hash per core grew it by ~20 MiB. The margin is for
    // allocator slack on a loaded machine.
    assert!(grown_mib < 150, "peak RSS grew by {grown_mib} MiB during {LOGINS} concurrent logins");
    // The account still logs in.
    server.login("alice", common::PASSWORD).await;
}

/// `POST /login` without `"type"` panicked inside ruma's `LoginInfo` deserializer, which dropped
/// the connection without an answer. Now it is 400 `M_BAD_JSON`, and the same connection serves
/// the next request.
#[tokio::test]
async fn login_without_type_is_a_matrix_error_and_the_connection_lives_on() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut raw = Raw::open(&server).await;
    let body = json!({ "identifier": { "type": "m.id.user", "user": "alice" }, "password": "x" }).to_string();
    let head = format!(
        "POST /_matrix/client/v3/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw.send(head.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["errcode"], "M_BAD_JSON", "{answer:?}");
    raw.send(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let next = raw.answer(false).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert!(next.json()["versions"].is_array());
    // The server is still up for everyone else, too.
    let (status, body): (u16, Value) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200, "{body}");
}

/// The client listener holds at most `listen.client_max_connections` connections: one more is
/// closed at once, and there is room again when one ends (it had no cap).
#[tokio::test]
async fn client_listener_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CAP: usize = 6;
    let server =
        TestServer::start_with(Backend::Sqlite, |c| common::set_config(c, "listen.client_max_connections", CAP as i64))
            .await;
    let addr = server.url().trim_start_matches("http://").to_owned();
    let versions = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\n\r\n";
    // Whether a new connection is served: the start of a 200, or a close (EOF or reset).
    let try_one = |addr: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if stream.write_all(versions).await.is_err() {
            return None;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < 12 {
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return None,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("neither an answer nor a close within 10 s"),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        Some(stream)
    };
    // The harness's own HTTP client may keep a pooled connection: fill up the cap with raw
    // connections, each one served, until one is closed unanswered.
    let mut held = Vec::new();
    while let Some(stream) = try_one(addr.clone()).await {
        held.push(stream);
        assert!(held.len() <= CAP, "{} connections served with a cap of {CAP}", held.len());
    }
    assert!(held.len() + 2 >= CAP, "only {} of {CAP} connections were served", held.len());
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(try_one(addr).await.is_some(), "room again once the others closed");
}
