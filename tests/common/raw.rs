//! A raw HTTP/1.1 client connection, for the tests that must control the bytes on the wire
//! (pipelining, chunked bodies, malformed heads, bodies the server refuses part-way), which
//! reqwest deliberately cannot send.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

use super::TestServer;

/// How long any read waits before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One response read off a raw connection.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Status and JSON body (`Null` when the body is not JSON), as the harness's `Resp`.
    pub fn resp(&self) -> super::Resp {
        (self.status, serde_json::from_slice(&self.body).unwrap_or(Value::Null))
    }
}

/// A raw client connection with a read buffer that keeps bytes of later responses.
pub struct Raw {
    reader: OwnedReadHalf,
    /// None once [`Raw::send_in_background`] took it.
    writer: Option<OwnedWriteHalf>,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to the server's client listener.
    pub async fn open(server: &TestServer) -> Self {
        let addr = server.url().trim_start_matches("http://").to_owned();
        let (reader, writer) = TcpStream::connect(addr).await.expect("connect").into_split();
        Self { reader, writer: Some(writer), buf: Vec::new() }
    }

    fn writer(&mut self) -> &mut OwnedWriteHalf {
        self.writer.as_mut().expect("the writer was moved to a background send")
    }

    /// Writes `bytes`, failing the test if the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer().write_all(bytes).await.expect("write");
    }

    /// Writes `bytes`; false if the server already closed (it may refuse a body part-way).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.writer().write_all(bytes).await.is_ok()
    }

    /// Writes `bytes` from a task of its own while the test reads the answer, for bodies the
    /// server may answer before reading them whole. Errors are expected once it has answered
    /// and closed, and are ignored.
    pub fn send_in_background(&mut self, bytes: Vec<u8>) -> JoinHandle<()> {
        let mut writer = self.writer.take().expect("one background send per connection");
        tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
            let _ = writer.flush().await;
            // Kept open until the task is aborted or done: dropping it would half-close.
            std::future::pending::<()>().await;
        })
    }

    /// Reads more bytes; false at end of stream (or a reset, once the server closed).
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(READ_TIMEOUT, self.reader.read(&mut chunk))
            .await
            .expect("no answer within 30 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Whether the server closed the connection (after any bytes already sent).
    pub async fn closed(&mut self) -> bool {
        while self.more().await {}
        true
    }

    /// Bytes read but not yet taken by [`Raw::answer`].
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// Reads one response; `head_only` for the answer to a HEAD request.
    pub async fn answer(&mut self, head_only: bool) -> Answer {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.more().await,
                "connection closed before a full head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf.drain(..end).collect()).unwrap();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let mut answer = Answer { status, head, body: Vec::new() };
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            return answer;
        }
        if let Some(len) = answer.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.more().await, "connection closed mid-body");
            }
            answer.body = self.buf.drain(..len).collect();
        } else if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.more().await, "connection closed mid-body");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.more().await, "connection closed mid-body");
                }
                answer.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            self.closed().await;
            answer.body = std::mem::take(&mut self.buf);
        }
        answer
    }
}

/// Sends `head` and then `body` (from a task of its own, so that an early refusal is read
/// while the body is still being written) on a new connection; returns the answer.
pub async fn request(server: &TestServer, head: &str, body: Vec<u8>) -> Answer {
    let mut raw = Raw::open(server).await;
    raw.send(head.as_bytes()).await;
    let sender = raw.send_in_background(body);
    let answer = raw.answer(false).await;
    sender.abort();
    answer
}

/// `bytes` as chunks of a chunked request body, with the last chunk.
pub fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for chunk in chunks {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}
