//! A minimal Matrix client-server API client: only what the scenarios need, spec v1.19 paths, no
//! server-specific behaviour. Every request honours `429 M_LIMIT_EXCEEDED` by sleeping
//! `retry_after_ms` (or the `Retry-After` header) and trying again.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use reqwest::Method;
use serde_json::{Value, json};

/// The sync filter the scenarios use: enough timeline for every burst, members lazy-loaded, no
/// presence or account data. Sent inline (a filter JSON object is allowed in the `filter` parameter).
pub const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":100},"state":{"lazy_load_members":true}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}"#;

/// An error answer from the homeserver.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub errcode: String,
    pub error: String,
    pub body: Value,
}

impl ApiError {
    /// The server does not implement the endpoint (404/405 `M_UNRECOGNIZED`, or a bare 404/405).
    pub fn unrecognized(&self) -> bool {
        matches!(self.status, 404 | 405 | 501) && (self.errcode == "M_UNRECOGNIZED" || self.errcode.is_empty())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {} {} {}", self.method, self.path, self.status, self.errcode, self.error)
    }
}

impl std::error::Error for ApiError {}

/// Whether an error chain says "this server does not have that endpoint".
pub fn is_unrecognized(e: &anyhow::Error) -> Option<&ApiError> {
    e.chain().filter_map(|c| c.downcast_ref::<ApiError>()).find(|a| a.unrecognized())
}

/// Counters shared by every request of a run.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// One homeserver, reached through one connection pool: at one base URL, or at several (the
/// processes of one server sharing a database), each session sticking to one of them.
#[derive(Clone)]
pub struct Hs {
    bases: Arc<[Arc<str>]>,
    /// Spreads unauthenticated requests (registrations) over the bases.
    next: Arc<AtomicU64>,
    http: reqwest::Client,
    pub counters: Arc<Counters>,
    /// Cleared when the server rejects the inline sync filter; syncs then go without it.
    filter_ok: Arc<AtomicBool>,
    /// Set when the server refused a registration without a password.
    needs_password: Arc<AtomicBool>,
}

pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

impl Hs {
    /// `base` is a URL, or several separated by commas (processes of one server).
    pub fn new(base: &str) -> Result<Self> {
        Ok(Self {
            bases: base.split(',').map(|b| Arc::from(b.trim().trim_end_matches('/'))).collect(),
            next: Arc::default(),
            http: http_client()?,
            counters: Arc::new(Counters::default()),
            filter_ok: Arc::new(AtomicBool::new(true)),
            needs_password: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The same server and counters through a fresh connection pool (so that a measurement owns its
    /// connections and no idle ones from the set-up are left in the pool).
    pub fn fresh_pool(&self) -> Result<Self> {
        Ok(Self { http: http_client()?, ..self.clone() })
    }

    /// The base URL a session's requests go to: the same one for every request of an access
    /// token (hashed, so that sessions spread evenly over several bases).
    fn base_for(&self, token: Option<&str>) -> &str {
        if self.bases.len() == 1 {
            return &self.bases[0];
        }
        let i = match token {
            Some(t) => {
                t.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
            }
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        &self.bases[(i % self.bases.len() as u64) as usize]
    }

    /// One request; `path` starts with `/_matrix/...` and may carry a query string.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let url = format!("{}{}", self.base_for(token), path);
        // Errors name the path without its query (sync tokens and filters are long).
        let path = path.split('?').next().unwrap_or(path);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let mut rb = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = rb.send().await.with_context(|| format!("{method} {path}: no answer"))?;
            let status = resp.status().as_u16();
            let retry_header = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1000);
            let bytes = resp.bytes().await.with_context(|| format!("{method} {path}: reading the body"))?;
            if (200..300).contains(&status) {
                if bytes.is_empty() {
                    return Ok(json!({}));
                }
                return serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: body is not JSON"));
            }
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let errcode = body["errcode"].as_str().unwrap_or("").to_string();
            if status == 429 && attempts < 1000 {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let ms = body["retry_after_ms"].as_u64().or(retry_header).unwrap_or(500).clamp(10, 30_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            return Err(ApiError {
                method: method.to_string(),
                path: path.to_string(),
                status,
                errcode,
                error: body["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect()),
                body,
            }
            .into());
        }
    }

    /// Registers `localpart` with `m.login.dummy` (without a password unless the server requires
    /// one, so that little password hashing is paid for in set-up), following the user-interactive auth session if the server asks for one.
    pub async fn register(&self, localpart: &str) -> Result<User> {
        let path = "/_matrix/client/v3/register";
        let t = Duration::from_secs(120);
        let mut body = json!({
            "username": localpart,
            "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "myelin-bench",
        });
        if self.needs_password.load(Ordering::Relaxed) {
            body["password"] = json!(format!("pw-{localpart}"));
        }
        let mut answer = self.call(Method::POST, path, None, Some(&body), t).await;
        // Servers that insist on a password (Synapse) get one, from then on.
        if let Err(e) = &answer
            && let Some(api) = e.downcast_ref::<ApiError>()
            && api.status == 400
            && api.errcode == "M_MISSING_PARAM"
            && api.error.contains("password")
        {
            self.needs_password.store(true, Ordering::Relaxed);
            body["password"] = json!(format!("pw-{localpart}"));
            answer = self.call(Method::POST, path, None, Some(&body), t).await;
        }
        if let Err(e) = &answer
            && let Some(api) = e.downcast_ref::<ApiError>()
            && api.status == 401
            && let Some(session) = api.body["session"].as_str()
        {
            body["auth"]["session"] = json!(session);
            answer = self.call(Method::POST, path, None, Some(&body), t).await;
        }
        let v = answer.with_context(|| format!("registering {localpart}"))?;
        let user_id = v["user_id"].as_str().ok_or_else(|| anyhow!("register: no user_id in {v}"))?.to_string();
        let token = v["access_token"].as_str().ok_or_else(|| anyhow!("register: no access_token in {v}"))?.to_string();
        Ok(User { hs: self.clone(), user_id, token })
    }
}

/// A logged-in user.
#[derive(Clone)]
pub struct User {
    pub hs: Hs,
    pub user_id: String,
    pub token: String,
}

const T: Duration = Duration::from_secs(120);

impl User {
    /// This user on another connection pool of the same server.
    pub fn on(&self, hs: &Hs) -> User {
        User { hs: hs.clone(), ..self.clone() }
    }

    /// The part after the first ':' of the user id.
    pub fn server_name(&self) -> &str {
        self.user_id.split_once(':').map(|x| x.1).unwrap_or("")
    }

    async fn call(&self, m: Method, path: &str, body: Option<&Value>, t: Duration) -> Result<Value> {
        self.hs.call(m, path, Some(&self.token), body, t).await
    }

    /// Creates a public room (anyone may join by id) and returns its id.
    pub async fn create_public_room(&self, name: &str) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(&json!({"preset": "public_chat", "name": name, "visibility": "private"})),
                T,
            )
            .await?;
        v["room_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("createRoom: no room_id in {v}"))
    }

    /// Joins a room by id; `via` names servers to join through (for federation).
    pub async fn join(&self, room_id: &str, via: Option<&str>) -> Result<()> {
        let mut path = format!("/_matrix/client/v3/join/{}", enc(room_id));
        if let Some(s) = via {
            // `via` since v1.12; `server_name` for servers that only know the older name.
            path.push_str(&format!("?via={0}&server_name={0}", enc(s)));
        }
        self.call(Method::POST, &path, Some(&json!({})), T).await?;
        Ok(())
    }

    /// Joins a room by id or alias (`POST /join/{roomIdOrAlias}`) and returns the room id the
    /// server answers with; `via` names a server to join through.
    pub async fn join_room(&self, room: &str, via: Option<&str>) -> Result<String> {
        let mut path = format!("/_matrix/client/v3/join/{}", enc(room));
        if let Some(s) = via {
            path.push_str(&format!("?via={0}&server_name={0}", enc(s)));
        }
        let v = self.call(Method::POST, &path, Some(&json!({})), Duration::from_secs(1800)).await?;
        v["room_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("join: no room_id in {v}"))
    }

    /// Bans `user_id` (who need not exist) from a room.
    pub async fn ban(&self, room_id: &str, user_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/ban", enc(room_id));
        self.call(Method::POST, &path, Some(&json!({"user_id": user_id, "reason": "benchmark"})), T).await?;
        Ok(())
    }

    /// Lifts a ban.
    pub async fn unban(&self, room_id: &str, user_id: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/unban", enc(room_id));
        self.call(Method::POST, &path, Some(&json!({"user_id": user_id})), T).await?;
        Ok(())
    }

    /// The content of one current state event.
    pub async fn state_content(&self, room_id: &str, kind: &str, state_key: &str) -> Result<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{}/{}", enc(room_id), enc(kind), enc(state_key));
        self.call(Method::GET, &path, None, T).await
    }

    /// `GET /rooms/{roomId}/state`: the room's current state events.
    pub async fn room_state(&self, room_id: &str) -> Result<Value> {
        let path = format!("/_matrix/client/v3/rooms/{}/state", enc(room_id));
        self.call(Method::GET, &path, None, T).await
    }

    /// Sends an `m.text` message and returns its event id.
    pub async fn send_text(&self, room_id: &str, txn: &str, body: &str) -> Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(room_id), enc(txn));
        let v = self.call(Method::PUT, &path, Some(&json!({"msgtype": "m.text", "body": body})), T).await?;
        v["event_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("send: no event_id in {v}"))
    }

    /// `GET /sync`. `filtered` uses [`SYNC_FILTER`] unless the server refused it once.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, filtered: bool) -> Result<Value> {
        let use_filter = filtered && self.hs.filter_ok.load(Ordering::Relaxed);
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&set_presence=offline");
        if let Some(s) = since {
            path.push_str("&since=");
            path.push_str(&enc(s));
        }
        let base_len = path.len();
        if use_filter {
            path.push_str("&filter=");
            path.push_str(&enc(SYNC_FILTER));
        }
        let t = Duration::from_millis(timeout_ms) + Duration::from_secs(90);
        match self.call(Method::GET, &path, None, t).await {
            Err(e) if use_filter && e.downcast_ref::<ApiError>().is_some_and(|a| a.status == 400) => {
                eprintln!("note: server refused the inline sync filter ({e}); syncing unfiltered");
                self.hs.filter_ok.store(false, Ordering::Relaxed);
                path.truncate(base_len);
                self.call(Method::GET, &path, None, t).await
            }
            r => r,
        }
    }

    /// `POST /createRoom` with any body; returns the room id.
    pub async fn create_room(&self, body: &Value) -> Result<String> {
        let v = self.call(Method::POST, "/_matrix/client/v3/createRoom", Some(body), T).await?;
        v["room_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("createRoom: no room_id in {v}"))
    }

    /// Sends an event of any type and returns its event id.
    pub async fn send_event(&self, room_id: &str, kind: &str, txn: &str, content: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/{}/{}", enc(room_id), enc(kind), enc(txn));
        let v = self.call(Method::PUT, &path, Some(content), T).await?;
        v["event_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("send: no event_id in {v}"))
    }

    /// Sets a state event and returns its event id.
    pub async fn put_state(&self, room_id: &str, kind: &str, state_key: &str, content: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{}/{}", enc(room_id), enc(kind), enc(state_key));
        let v = self.call(Method::PUT, &path, Some(content), T).await?;
        v["event_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("state: no event_id in {v}"))
    }

    /// Sets a global account data event.
    pub async fn put_account_data(&self, kind: &str, content: &Value) -> Result<()> {
        let path = format!("/_matrix/client/v3/user/{}/account_data/{}", enc(&self.user_id), enc(kind));
        self.call(Method::PUT, &path, Some(content), T).await?;
        Ok(())
    }

    /// Uploads a filter (`POST /user/{userId}/filter`) and returns its id.
    pub async fn upload_filter(&self, filter: &Value) -> Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", enc(&self.user_id));
        let v = self.call(Method::POST, &path, Some(filter), T).await?;
        v["filter_id"].as_str().map(str::to_string).ok_or_else(|| anyhow!("filter: no filter_id in {v}"))
    }

    /// `GET /sync` with a given filter (an id or inline JSON) or none.
    pub async fn sync_with(&self, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}&set_presence=offline");
        if let Some(s) = since {
            path.push_str("&since=");
            path.push_str(&enc(s));
        }
        if let Some(f) = filter {
            path.push_str("&filter=");
            path.push_str(&enc(f));
        }
        let t = Duration::from_millis(timeout_ms) + Duration::from_secs(600);
        self.call(Method::GET, &path, None, t).await
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(&self, room_id: &str, from: Option<&str>, limit: u32) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", enc(room_id));
        if let Some(f) = from {
            path.push_str("&from=");
            path.push_str(&enc(f));
        }
        self.call(Method::GET, &path, None, T).await
    }

    /// A simplified sliding sync request (MSC4186, the unstable path Element X uses).
    pub async fn sliding_sync(&self, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Result<Value> {
        let mut path = format!(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout={timeout_ms}&set_presence=offline"
        );
        if let Some(p) = pos {
            path.push_str("&pos=");
            path.push_str(&enc(p));
        }
        let t = Duration::from_millis(timeout_ms) + Duration::from_secs(90);
        self.call(Method::POST, &path, Some(body), t).await
    }

    pub async fn joined_members(&self, room_id: &str) -> Result<usize> {
        let path = format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id));
        let v = self.call(Method::GET, &path, None, T).await?;
        Ok(v["joined"].as_object().map(|o| o.len()).unwrap_or(0))
    }
}
