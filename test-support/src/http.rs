//! The one HTTP client of the test crates (`tests/` and `federation-tests`): requests to a
//! homeserver's client API as a user or anonymously, answered as `(status, JSON body)` so that a
//! test asserts on both.
//!
//! Unlike the load generator's client (`bench/src/client.rs`), nothing here retries or hides an
//! answer: a 429 or a 500 is what the test sees. That is why the benchmark keeps its own.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use crate::enc;

/// The response of one request: status and body (JSON, or the text as a JSON string when the
/// body is not JSON, or `null` when empty).
pub type Resp = (u16, Value);

/// The password [`register`] gives every account.
pub const PASSWORD: &str = "correct horse battery staple";

/// Installs rustls' ring provider once per test process (reqwest is built without one).
pub fn init_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client with a timeout, so a hung server fails the test instead of hanging CI.
pub fn http_client() -> reqwest::Client {
    init_crypto();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("building reqwest client")
}

/// Sends a request and reads the whole answer; panics when no answer comes.
pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    try_send(req).await.expect("HTTP request failed")
}

/// Sends a request and reads the whole answer; `None` when there is none (the server is being
/// killed, the connection broke).
pub async fn try_send(req: reqwest::RequestBuilder) -> Option<Resp> {
    let res = req.send().await.ok()?;
    let status = res.status().as_u16();
    let text = res.text().await.ok()?;
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Some((status, body))
}

/// A transaction id unique in this process and across its runs (a restarted server keeps the
/// ids it has seen).
fn next_txn() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("t{nanos}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Registers `localpart` on the server at `base` with [`PASSWORD`] (open registration,
/// `m.login.dummy`) and returns the logged-in client. Panics unless the server answers 200.
pub async fn register(http: &reqwest::Client, base: &str, localpart: &str) -> Client {
    let body = json!({
        "username": localpart,
        "password": PASSWORD,
        "auth": { "type": "m.login.dummy" },
    });
    let (status, body) = send(http.post(format!("{base}/_matrix/client/v3/register")).json(&body)).await;
    assert_eq!(status, 200, "register {localpart}: {body}");
    Client::from_login(http, base, &body, PASSWORD)
}

/// A logged-in user on one device.
#[derive(Clone)]
pub struct Client {
    /// Full user id.
    pub user_id: String,
    /// Access token of this device.
    pub access_token: String,
    /// Device id (`""` for a session made with [`Client::new`]).
    pub device_id: String,
    /// The password the account was created or logged in with (`""` when not known).
    pub password: String,
    /// Client API base URL (`http://127.0.0.1:port`).
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for an existing session on any homeserver (Synapse's, say).
    pub fn new(base: String, access_token: String, user_id: String) -> Self {
        Self { user_id, access_token, device_id: String::new(), password: String::new(), base, http: http_client() }
    }

    /// A client from a `/register` or `/login` answer of the server at `base`.
    pub fn from_login(http: &reqwest::Client, base: &str, body: &Value, password: &str) -> Self {
        let field = |name: &str| body[name].as_str().unwrap_or_else(|| panic!("no {name} in {body}")).to_owned();
        Self {
            user_id: field("user_id"),
            access_token: field("access_token"),
            device_id: field("device_id"),
            password: password.to_owned(),
            base: base.to_owned(),
            http: http.clone(),
        }
    }

    /// The same session talking to another server process (or a load balancer) at `base`.
    pub fn via(&self, base: &str) -> Client {
        Client { base: base.to_owned(), ..self.clone() }
    }

    /// A request to `path` carrying this client's `Authorization: Bearer` header.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.access_token)
    }

    /// Authenticated GET.
    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(reqwest::Method::GET, path)).await
    }

    /// Authenticated POST with a JSON body (a `Value` or a reference to one).
    pub async fn post(&self, path: &str, body: impl Serialize) -> Resp {
        send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// Authenticated PUT with a JSON body.
    pub async fn put(&self, path: &str, body: impl Serialize) -> Resp {
        send(self.request(reqwest::Method::PUT, path).json(&body)).await
    }

    /// PUT that may get no answer at all (the server is being killed): `None` then.
    pub async fn try_put(&self, path: &str, body: impl Serialize) -> Option<Resp> {
        try_send(self.request(reqwest::Method::PUT, path).json(&body)).await
    }

    /// Authenticated DELETE with a JSON body.
    pub async fn delete(&self, path: &str, body: impl Serialize) -> Resp {
        send(self.request(reqwest::Method::DELETE, path).json(&body)).await
    }

    /// The `m.login.password` UIA stage for this user, continuing `session`.
    pub fn password_auth(&self, session: &str) -> Value {
        json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": self.user_id },
            "password": self.password,
            "session": session,
        })
    }

    /// Runs a UIA-protected request: first without `auth` (expecting 401 with a session), then
    /// with the password stage. Returns the final response.
    pub async fn with_password_uia(&self, method: reqwest::Method, path: &str, mut body: Value) -> Resp {
        let (status, first) = send(self.request(method.clone(), path).json(&body)).await;
        assert_eq!(status, 401, "expected a UIA challenge from {path}: {first}");
        let session = first["session"].as_str().expect("UIA session").to_owned();
        body["auth"] = self.password_auth(&session);
        send(self.request(method, path).json(&body)).await
    }

    /// Creates a public room; returns its id.
    pub async fn create_public_room(&self) -> String {
        let (s, b) =
            self.post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "fed" })).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Creates a private room (`private_chat`: invite only); returns its id.
    pub async fn create_private_room(&self) -> String {
        let (s, b) =
            self.post("/_matrix/client/v3/createRoom", json!({ "preset": "private_chat", "name": "private" })).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Invites `guest`, who sees the invite in `/sync` and joins without naming a server (as a
    /// client accepting an invite does); then waits until this user sees the join.
    pub async fn invite_and_join(&self, guest: &Client, room: &str) {
        let (s, body) = self
            .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(room)), json!({ "user_id": guest.user_id }))
            .await;
        assert_eq!(s, 200, "{} invites {}: {body}", self.user_id, guest.user_id);
        let rid = room.to_owned();
        sync_until(guest, Duration::from_secs(30), "the invite", |s| !s["rooms"]["invite"][&rid].is_null()).await;
        let (s, body) = guest.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
        assert_eq!(s, 200, "{} joins after the invite: {body}", guest.user_id);
        wait_until(Duration::from_secs(30), &format!("{} joined, seen by {}", guest.user_id, self.user_id), || async {
            self.membership(room, &guest.user_id).await.as_deref() == Some("join")
        })
        .await;
    }

    /// Joins through `via`; returns (status, body).
    pub async fn join_via(&self, room: &str, via: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)), json!({})).await
    }

    /// Joins `room` through `via` (asserting 200), then waits until `host`, a user of the room's
    /// server, sees the join.
    pub async fn join_via_seen_by(&self, room: &str, via: &str, host: &Client) {
        let (s, body) = self.join_via(room, via).await;
        assert_eq!(s, 200, "{} joining {room} through {via}: {body}", self.user_id);
        let what = format!("{} joined, seen by {}", self.user_id, host.user_id);
        wait_until(Duration::from_secs(30), &what, || async {
            host.membership(room, &self.user_id).await.as_deref() == Some("join")
        })
        .await;
    }

    /// Sends a text message; returns its event id.
    pub async fn say(&self, room: &str, body: &str) -> String {
        let txn = next_txn();
        let (s, b) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
                json!({ "msgtype": "m.text", "body": body }),
            )
            .await;
        assert_eq!(s, 200, "send: {b}");
        b["event_id"].as_str().expect("event_id").to_owned()
    }

    /// The room timeline (oldest first) as seen by this user: up to 1000 events.
    pub async fn timeline(&self, room: &str) -> Vec<Value> {
        let (s, b) = self.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000", enc(room))).await;
        if s != 200 {
            return Vec::new();
        }
        let mut evs: Vec<Value> = b["chunk"].as_array().cloned().unwrap_or_default();
        evs.reverse();
        evs
    }

    /// Bodies of the m.room.message events in the timeline, in order.
    pub async fn messages(&self, room: &str) -> Vec<String> {
        self.timeline(room)
            .await
            .into_iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }

    /// Event ids of the timeline, in order.
    pub async fn event_ids(&self, room: &str) -> Vec<String> {
        self.timeline(room).await.into_iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
    }

    /// The membership of `user` in the room's current state, as this user sees it.
    pub async fn membership(&self, room: &str, user: &str) -> Option<String> {
        let (s, b) =
            self.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(room), enc(user))).await;
        if s != 200 {
            return None;
        }
        b["membership"].as_str().map(str::to_owned)
    }

    /// The current state as (type, state_key, event_id) sorted.
    pub async fn state(&self, room: &str) -> Vec<(String, String, String)> {
        let (s, b) = self.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room))).await;
        assert_eq!(s, 200, "state: {b}");
        let mut out: Vec<(String, String, String)> = b
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_owned(),
                    e["state_key"].as_str().unwrap_or("").to_owned(),
                    e["event_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the elapsed time.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/sync` until some response satisfies `found`.
pub async fn sync_until(client: &Client, timeout: Duration, what: &str, found: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(s)),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (s, body) = client.get(&path).await;
        assert_eq!(s, 200, "sync: {body}");
        if found(&body) {
            return;
        }
        since = body["next_batch"].as_str().map(str::to_owned);
        assert!(start.elapsed() < timeout, "timed out waiting for {what} on {}", client.user_id);
    }
}
