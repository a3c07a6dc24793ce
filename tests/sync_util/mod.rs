//! Helpers shared by the sync test files: rooms, messages, `/sync` calls and readers that
//! follow a room through `/sync` (and `/messages` for limited timelines).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use crate::common::enc;
use crate::common::{Client, send};
#[allow(unused_imports)]
pub use crate::common::{create_room, join};

/// Sends one text message; returns its event id.
pub async fn send_text(c: &Client, room: &str, txn: &str, body: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
    let (status, res) = c.put(&path, &json!({ "msgtype": "m.text", "body": body })).await;
    assert_eq!(status, 200, "send: {res}");
    res["event_id"].as_str().unwrap().to_owned()
}

/// Sends `n` messages one after the other (txn ids `{prefix}-{i}`); returns their ids.
pub async fn send_texts(c: &Client, room: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(send_text(c, room, &format!("{prefix}-{i}"), &format!("{prefix} {i}")).await);
    }
    ids
}

/// Sets a state event; returns its id.
pub async fn put_state(c: &Client, room: &str, kind: &str, key: &str, content: Value) -> String {
    let (status, res) = c.put(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}/{key}"), &content).await;
    assert_eq!(status, 200, "state: {res}");
    res["event_id"].as_str().unwrap().to_owned()
}

/// `GET /sync`; panics unless 200.
pub async fn sync(c: &Client, since: Option<&str>, filter: Option<Value>, timeout_ms: u64) -> Value {
    let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
    if let Some(s) = since {
        path.push_str(&format!("&since={}", enc(s)));
    }
    if let Some(f) = filter {
        path.push_str(&format!("&filter={}", enc(&f.to_string())));
    }
    let (status, body) = send(c.request(reqwest::Method::GET, &path)).await;
    assert_eq!(status, 200, "sync: {body}");
    body
}

/// `next_batch` of a sync response.
pub fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().unwrap_or_else(|| panic!("no next_batch in {body}")).to_owned()
}

/// The event ids of a list of events.
pub fn event_ids(events: &Value) -> Vec<String> {
    events.as_array().into_iter().flatten().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

/// The event ids of a joined room's timeline.
pub fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    event_ids(&body["rooms"]["join"][room]["timeline"]["events"])
}

fn message_ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every `m.room.message` of a room in `/messages` order (forwards from the start).
pub async fn all_messages_forward(c: &Client, room: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=50");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (status, page) = c.get(&path).await;
        assert_eq!(status, 200, "messages: {page}");
        out.extend(message_ids(&page["chunk"]));
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = Some(end.to_owned()),
            _ => return out,
        }
    }
}

/// Messages of a room between a sync token (exclusive) and a `prev_batch` (exclusive),
/// oldest first, through `/messages?dir=b`.
pub async fn backfill(c: &Client, room: &str, prev_batch: &str, since: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = prev_batch.to_owned();
    loop {
        let path =
            format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=7&from={}&to={}", enc(&from), enc(since));
        let (status, page) = c.get(&path).await;
        assert_eq!(status, 200, "messages: {page}");
        out.extend(message_ids(&page["chunk"]));
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = end.to_owned(),
            _ => break,
        }
    }
    out.reverse();
    out
}

/// Follows a room through long-polling `/sync` from `token` with a timeline limit, filling
/// limited gaps from `prev_batch`, until `total` messages were seen (or 120 s passed);
/// returns the message ids in the order the client would show them.
pub async fn read_all(c: &Client, room: &str, mut token: String, total: usize, limit: usize) -> Vec<String> {
    let filter = json!({ "room": { "timeline": { "limit": limit } } });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    while seen.len() < total && Instant::now() < deadline {
        let body = sync(c, Some(&token), Some(filter.clone()), 10_000).await;
        let tl = &body["rooms"]["join"][room]["timeline"];
        if tl["limited"] == true {
            seen.extend(backfill(c, room, tl["prev_batch"].as_str().unwrap(), &token).await);
        }
        seen.extend(message_ids(&tl["events"]));
        token = next_batch(&body);
    }
    seen
}

/// Long-polls from `token` until a response satisfies `pred` (other updates, such as presence,
/// may come first); panics after `secs` seconds. Returns that response and the `since` it was
/// requested with.
pub async fn sync_until(c: &Client, mut token: String, secs: u64, pred: impl Fn(&Value) -> bool) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let body = sync(c, Some(&token), None, 5_000).await;
        if pred(&body) {
            return (body, token);
        }
        assert!(Instant::now() < deadline, "no matching sync response within {secs} s; last: {body}");
        token = next_batch(&body);
    }
}
