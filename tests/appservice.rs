//! Application services (issue #20) over real HTTP, on SQLite and PostgreSQL: a real appservice
//! framework (mautrix-python's `mautrix.appservice`, `tests/nio/appservice_mautrix.py`) and, for
//! counting transactions exactly, a tiny axum receiver in this file that records every
//! transaction it is sent and can be down, failing, or hanging on request.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use common::{Backend, Client, TestServer, free_port, myelin_command, run_nio_script, send, set_config};
use serde_json::{Value, json};

/// Runs `$name(backend)` on both backends.
macro_rules! as_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

as_tests!(
    outage_of_50_events_delivered_exactly_once_in_order,
    sigkill_mid_transaction_resends_the_same_txn_id,
    bad_registrations_stop_start_up,
    masquerading_registration_login_and_exclusive_namespaces,
    ping_answers_duration_and_the_spec_errors,
    queries_third_party_lookups_and_network_directory,
    ephemeral_typing_receipts_and_to_device,
    mautrix_appservice_bridges_a_room,
);

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Every transaction attempt: (txn id, body).
    attempts: Vec<(String, Value)>,
    /// Transactions answered 200, each id once (a repeat of a delivered id is recorded in
    /// `repeats`, as an appservice would ignore it).
    delivered: Vec<(String, Value)>,
    repeats: Vec<String>,
    pings: Vec<Value>,
}

struct RecvState {
    hs_token: String,
    as_token: String,
    hs_url: String,
    mode: AtomicU8,
    seen: Mutex<Seen>,
}

/// The test's own appservice: records transactions; `mode` makes it fail (500) or hang.
struct Receiver {
    port: u16,
    state: Arc<RecvState>,
    stop: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

fn authorised(state: &RecvState, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", state.hs_token))
}

async fn on_transaction(
    State(state): State<Arc<RecvState>>,
    UrlPath(txn): UrlPath<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    if !authorised(&state, &headers) {
        return (StatusCode::FORBIDDEN, axum::Json(json!({"errcode": "M_FORBIDDEN"})));
    }
    state.seen.lock().unwrap().attempts.push((txn.clone(), body.clone()));
    match state.mode.load(Ordering::SeqCst) {
        FAIL => return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"errcode": "M_UNKNOWN"}))),
        HANG => std::future::pending::<()>().await,
        _ => {}
    }
    let mut seen = state.seen.lock().unwrap();
    if seen.delivered.iter().any(|(t, _)| *t == txn) {
        seen.repeats.push(txn);
    } else {
        seen.delivered.push((txn, body));
    }
    (StatusCode::OK, axum::Json(json!({})))
}

async fn on_ping(
    State(state): State<Arc<RecvState>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (StatusCode, String) {
    if !authorised(&state, &headers) {
        return (StatusCode::FORBIDDEN, "{}".into());
    }
    state.seen.lock().unwrap().pings.push(body);
    match state.mode.load(Ordering::SeqCst) {
        FAIL => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"errcode":"M_UNKNOWN","error":"broken"}"#.into()),
        HANG => std::future::pending().await,
        _ => (StatusCode::OK, "{}".into()),
    }
}

async fn on_protocol(UrlPath(protocol): UrlPath<String>) -> (StatusCode, axum::Json<Value>) {
    if protocol != "tgnet" {
        return (StatusCode::NOT_FOUND, axum::Json(json!({})));
    }
    (
        StatusCode::OK,
        axum::Json(json!({
            "user_fields": ["name"], "location_fields": ["room"], "icon": "mxc://example.org/icon",
            "field_types": {
                "name": {"regexp": ".*", "placeholder": "someone"},
                "room": {"regexp": ".*", "placeholder": "somewhere"},
            },
            "instances": [{"network_id": "tgnet", "desc": "The test network", "fields": {}}],
        })),
    )
}

async fn on_location(
    UrlPath(protocol): UrlPath<String>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> axum::Json<Value> {
    axum::Json(json!([{ "alias": "#bridge_found:example.org", "protocol": protocol, "fields": q }]))
}

async fn on_user(
    UrlPath(protocol): UrlPath<String>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> axum::Json<Value> {
    axum::Json(json!([{ "userid": "@bridge_found:example.org", "protocol": protocol, "fields": q }]))
}

async fn on_reverse_location(Query(q): Query<std::collections::BTreeMap<String, String>>) -> axum::Json<Value> {
    axum::Json(json!([{ "alias": q["alias"], "protocol": "tgnet", "fields": {"room": "general"} }]))
}

async fn on_reverse_user(Query(q): Query<std::collections::BTreeMap<String, String>>) -> axum::Json<Value> {
    axum::Json(json!([{ "userid": q["userid"], "protocol": "tgnet", "fields": {"name": "someone"} }]))
}

/// An alias query: the appservice creates the portal room with that alias, as a bridge does.
async fn on_room_query(State(state): State<Arc<RecvState>>, UrlPath(alias): UrlPath<String>) -> StatusCode {
    let localpart = alias.trim_start_matches('#').split(':').next().unwrap_or_default().to_owned();
    let (status, body) = send(
        common::http_client()
            .post(format!("{}/_matrix/client/v3/createRoom", state.hs_url))
            .bearer_auth(&state.as_token)
            .json(&json!({ "room_alias_name": localpart, "preset": "public_chat" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    StatusCode::OK
}

impl Receiver {
    fn new(port: u16, hs_token: &str, as_token: &str, hs_url: &str) -> Self {
        let state = Arc::new(RecvState {
            hs_token: hs_token.into(),
            as_token: as_token.into(),
            hs_url: hs_url.into(),
            mode: AtomicU8::new(OK),
            seen: Mutex::default(),
        });
        Self { port, state, stop: None }
    }

    /// Starts listening (again) on its port.
    async fn start(&mut self) {
        let app = axum::Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(on_transaction))
            .route("/_matrix/app/v1/ping", post(on_ping))
            .route("/_matrix/app/v1/thirdparty/protocol/{p}", get(on_protocol))
            .route("/_matrix/app/v1/thirdparty/location/{p}", get(on_location))
            .route("/_matrix/app/v1/thirdparty/user/{p}", get(on_user))
            .route("/_matrix/app/v1/thirdparty/location", get(on_reverse_location))
            .route("/_matrix/app/v1/thirdparty/user", get(on_reverse_user))
            .route("/_matrix/app/v1/rooms/{alias}", get(on_room_query))
            .with_state(self.state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("binding the receiver");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        self.stop = Some((tx, task));
    }

    /// Stops listening: connections are refused from now on (idle ones are closed).
    async fn stop(&mut self) {
        if let Some((tx, task)) = self.stop.take() {
            let _ = tx.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap())
    }

    /// The events of delivered transactions, in delivery order.
    fn delivered_events(&self) -> Vec<Value> {
        self.seen(|s| {
            s.delivered.iter().flat_map(|(_, b)| b["events"].as_array().cloned().unwrap_or_default()).collect()
        })
    }

    /// Waits until `f` holds for what was seen.
    async fn wait_for(&self, what: &str, f: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.seen(&f) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn events_of(body: &Value) -> Vec<Value> {
    body["events"].as_array().cloned().unwrap_or_default()
}

fn has_event(s: &Seen, pred: impl Fn(&Value) -> bool) -> bool {
    s.delivered.iter().any(|(_, b)| events_of(b).iter().any(&pred))
}

/// One registration file's values.
struct Reg {
    id: String,
    as_token: String,
    hs_token: String,
    port: u16,
}

impl Reg {
    fn new(id: &str) -> Self {
        let r: u64 = rand::random();
        Self {
            id: id.into(),
            as_token: format!("as_{id}_{r:x}"),
            hs_token: format!("hs_{id}_{r:x}"),
            port: free_port(),
        }
    }

    /// A mautrix-style registration (the shape mautrix-telegram's `-g` writes).
    fn yaml(&self, sender: &str, users: &str, extra: &str) -> String {
        format!(
            "id: {id}\nurl: http://127.0.0.1:{port}\nas_token: {as_token}\nhs_token: {hs_token}\n\
             sender_localpart: {sender}\nrate_limited: false\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '{users}'\n\
             \x20 aliases:\n    - exclusive: true\n      regex: '#bridge_.*'\n  rooms: []\n\
             protocols: [tgnet]\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n\
             org.matrix.msc3202: true\n{extra}",
            id = self.id,
            port = self.port,
            as_token = self.as_token,
            hs_token = self.hs_token,
        )
    }
}

/// A running server with one registered appservice (`bridge`, users `@bridge_.*`, aliases
/// `#bridge_.*`, sender `@bridgebot`) and its receiver (started).
struct Fixture {
    server: TestServer,
    reg: Reg,
    recv: Receiver,
    _dir: tempfile::TempDir,
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn fixture(backend: Backend, extra_files: &[(&str, String)], tweak: impl FnOnce(&mut toml::Table)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let reg = Reg::new("bridge");
    let mut files = vec![write_file(dir.path(), "bridge.yaml", &reg.yaml("bridgebot", "@bridge_.*", ""))];
    for (name, text) in extra_files {
        files.push(write_file(dir.path(), name, text));
    }
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let server = TestServer::start_with(backend, |c| {
        set_config(c, "appservice.registration_files", toml::Value::Array(files.into_iter().map(Into::into).collect()));
        set_config(c, "appservice.retry_min_ms", 50);
        set_config(c, "appservice.retry_max_ms", 400);
        set_config(c, "appservice.request_timeout_ms", 3000);
        tweak(c);
    })
    .await;
    let mut recv = Receiver::new(reg.port, &reg.hs_token, &reg.as_token, &server.url());
    recv.start().await;
    Fixture { server, reg, recv, _dir: dir }
}

impl Fixture {
    /// A request made with the appservice's `as_token`, as `user` when given (`?user_id=`).
    fn as_request(&self, method: reqwest::Method, path: &str, user: Option<&str>) -> reqwest::RequestBuilder {
        let mut url = format!("{}{path}", self.server.url());
        if let Some(u) = user {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str(&format!("user_id={}", u.replace('@', "%40").replace(':', "%3A")));
        }
        common::http_client().request(method, url).bearer_auth(&self.reg.as_token)
    }

    async fn as_call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.as_request(method, path, user);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, body) = send(req).await;
        (status, body)
    }

    /// Registers `@<localpart>` for the appservice (no login).
    async fn as_register(&self, localpart: &str) -> String {
        let (status, body) = self
            .as_call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["user_id"].as_str().unwrap().to_owned()
    }

    /// Alice's room with the appservice's user `@bridge_bob` joined; returns once the receiver
    /// has been sent the join.
    async fn bridged_room(&self) -> (Client, String, String) {
        let alice = self.server.register("alice").await;
        let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
        assert_eq!(status, 200, "{body}");
        let room = body["room_id"].as_str().unwrap().to_owned();
        let bob = self.as_register("bridge_bob").await;
        let (status, body) =
            alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({"user_id": bob})).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .as_call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(&bob),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let bob2 = bob.clone();
        self.recv
            .wait_for("the bridge user's join", move |s| {
                has_event(s, |e| {
                    e["type"] == "m.room.member" && e["state_key"] == bob2 && e["content"]["membership"] == "join"
                })
            })
            .await;
        (alice, room, bob)
    }
}

async fn send_text(client: &Client, room: &str, txn: &str, body: &str) -> String {
    let (status, res) = client
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            &json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    res["event_id"].as_str().unwrap().to_owned()
}

/// The issue's outage case: the appservice is down while 50 events happen; when it is back it
/// receives every one of them exactly once, in order. Also: invites to namespace users and
/// events of rooms where one is joined are sent, with `Authorization: Bearer <hs_token>`.
async fn outage_of_50_events_delivered_exactly_once_in_order(backend: Backend) {
    let mut fx = fixture(backend, &[], |_| {}).await;
    let (alice, room, bob) = fx.bridged_room().await;
    fx.recv.wait_for("the invite", |s| has_event(s, |e| e["content"]["membership"] == "invite")).await;
    assert!(has_event(&fx.recv.state.seen.lock().unwrap(), |e| e["state_key"] == bob.as_str()));

    fx.recv.stop().await;
    let mut sent = Vec::new();
    for i in 0..50 {
        sent.push(send_text(&alice, &room, &format!("outage{i}"), &format!("during the outage {i}")).await);
    }
    // Let the sender fail a few times and back off.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let back = Instant::now();
    fx.recv.start().await;
    let last = sent.last().unwrap().clone();
    fx.recv.wait_for("the 50th event", move |s| has_event(s, |e| e["event_id"] == last.as_str())).await;
    eprintln!("appservice back: all 50 events delivered {} ms after it listened again", back.elapsed().as_millis());

    let events = fx.recv.delivered_events();
    let received: Vec<String> = events
        .iter()
        .filter(|e| e["content"]["body"].as_str().is_some_and(|b| b.starts_with("during the outage")))
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, sent, "every event exactly once, in order");
    for e in &events {
        // Client-format events.
        assert!(e["room_id"].is_string() && e["sender"].is_string() && e["origin_server_ts"].is_u64(), "{e}");
        assert!(e.get("auth_events").is_none() && e.get("signatures").is_none(), "{e}");
    }
    fx.recv.seen(|s| {
        assert!(s.repeats.is_empty(), "no transaction repeated after a 200: {:?}", s.repeats);
        let ids: std::collections::BTreeSet<_> = s.delivered.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(ids.len(), s.delivered.len(), "transaction ids are unique");
        assert!(s.delivered.iter().all(|(_, b)| events_of(b).len() <= 100));
    });
}

/// Myelin SIGKILLed while a transaction is in flight sends the same transaction id (and body)
/// again after restart, so the appservice deduplicates it.
async fn sigkill_mid_transaction_resends_the_same_txn_id(backend: Backend) {
    let mut fx = fixture(backend, &[], |_| {}).await;
    let (alice, room, _) = fx.bridged_room().await;
    fx.recv.set_mode(HANG);
    let event = send_text(&alice, &room, "crash", "in flight when killed").await;
    let e = event.clone();
    fx.recv
        .wait_for("the transaction in flight", move |s| {
            s.attempts.iter().any(|(_, b)| events_of(b).iter().any(|x| x["event_id"] == e.as_str()))
        })
        .await;
    let (txn, body) = fx.recv.seen(|s| s.attempts.last().cloned().unwrap());
    // Queued behind the transaction in flight: it must not join that transaction's id (a
    // sender that packed again after the crash instead of replaying the stored body would
    // put it there, and the appservice, deduplicating by id, would never see it).
    let behind = send_text(&alice, &room, "behind", "queued behind").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.server.kill9();
    fx.recv.set_mode(OK);
    fx.server.start_again().await;
    let t = txn.clone();
    fx.recv.wait_for("the transaction again", move |s| s.delivered.iter().any(|(id, _)| *id == t)).await;
    let (_, again) = fx.recv.seen(|s| s.delivered.iter().find(|(id, _)| *id == txn).cloned().unwrap());
    let ids = |b: &Value| events_of(b).iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&body), "the same transaction");
    assert_eq!(ids(&again), vec![json!(event)]);
    let b = behind.clone();
    fx.recv.wait_for("the event queued behind", move |s| has_event(s, |e| e["event_id"] == b.as_str())).await;
    fx.recv.seen(|s| {
        let (id, _) = s
            .delivered
            .iter()
            .find(|(_, body)| events_of(body).iter().any(|e| e["event_id"] == behind.as_str()))
            .unwrap();
        assert_ne!(*id, txn, "in a transaction of its own");
    });
    // Afterwards delivery goes on, each event once.
    let next = send_text(&alice, &room, "after", "after the restart").await;
    let n = next.clone();
    fx.recv.wait_for("the next event", move |s| has_event(s, |e| e["event_id"] == n.as_str())).await;
    let ids: Vec<Value> = fx.recv.delivered_events().iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(ids.iter().filter(|i| **i == event.as_str()).count(), 1);
    assert_eq!(ids.iter().filter(|i| **i == next.as_str()).count(), 1);
}

/// Runs `myelin serve` with `files` as the registration files; it must exit with an error
/// whose message names `file` and contains `what`.
fn refused(server: &TestServer, files: &[&Path], file: &Path, what: &[&str]) {
    let list =
        format!("[{}]", files.iter().map(|f| format!("{:?}", f.display().to_string())).collect::<Vec<_>>().join(","));
    let mut child = myelin_command()
        .arg("serve")
        .arg("--config")
        .arg(server.config_path())
        .env("MYELIN_APPSERVICE__REGISTRATION_FILES", &list)
        .current_dir(server.dir())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("myelin started with the bad registration {}", file.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "names the file {}: {stderr}", file.display());
    for w in what {
        assert!(stderr.contains(w), "says {w:?}: {stderr}");
    }
}

/// Each bad registration stops start-up with a message naming the file and the field.
async fn bad_registrations_stop_start_up(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    server.register("carol").await;
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = Reg::new("good");
    let good_file = write_file(d, "good.yaml", &good.yaml("goodbot", "@tg_.*", ""));

    let bad_regex = write_file(d, "bad_regex.yaml", &Reg::new("a").yaml("abot", "@bridge_[.*", ""));
    refused(&server, &[&bad_regex], &bad_regex, &["namespaces.users[0].regex", "invalid regex"]);

    let no_token =
        write_file(d, "no_token.yaml", &Reg::new("b").yaml("bbot", "@b_.*", "").replace("as_token:", "not_as_token:"));
    refused(&server, &[&no_token], &no_token, &["`as_token`", "required"]);

    let same_id = write_file(d, "same_id.yaml", &Reg::new("good").yaml("otherbot", "@other_.*", ""));
    refused(&server, &[&good_file, &same_id], &same_id, &["`id`", "good.yaml"]);

    let mut twin = Reg::new("twin");
    twin.as_token = good.as_token.clone();
    let same_token = write_file(d, "same_token.yaml", &twin.yaml("twinbot", "@twin_.*", ""));
    refused(&server, &[&good_file, &same_token], &same_token, &["`as_token`", "good.yaml"]);

    let overlap = write_file(d, "overlap.yaml", &Reg::new("c").yaml("cbot", "@tg_bot_[0-9]+", ""));
    refused(&server, &[&good_file, &overlap], &overlap, &["namespaces.users[0].regex", "overlaps", "good.yaml"]);

    let taken = write_file(d, "taken.yaml", &Reg::new("d").yaml("carol", "@d_.*", ""));
    refused(&server, &[&taken], &taken, &["`sender_localpart`", "already a registered user"]);

    let bad_url =
        write_file(d, "bad_url.yaml", &Reg::new("e").yaml("ebot", "@e_.*", "").replace("url: http://", "url: ftp://"));
    refused(&server, &[&bad_url], &bad_url, &["`url`"]);

    // The good one alone starts, and its sender exists from then on.
    server.set_env("MYELIN_APPSERVICE__REGISTRATION_FILES", &format!("[{:?}]", good_file.display().to_string()));
    server.start_again().await;
    let (status, body) = send(
        common::http_client()
            .get(format!("{}/_matrix/client/v3/account/whoami", server.url()))
            .bearer_auth(&good.as_token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], server.user_id("goodbot"));
    // A restart finds its own sender user and starts again.
    server.restart().await;
}

/// `as_token` auth, `?user_id=` masquerading, registration and login of appservice users,
/// `M_EXCLUSIVE` for ordinary users, rate limits, and `ts` massaging.
async fn masquerading_registration_login_and_exclusive_namespaces(backend: Backend) {
    let fx = fixture(backend, &[], |c| {
        set_config(c, "rate_limits.enabled", true);
        set_config(c, "rate_limits.per_second", 0.1);
        set_config(c, "rate_limits.burst", 3);
    })
    .await;
    let s = &fx.server;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;
    let whoami = "/_matrix/client/v3/account/whoami";

    // The sender exists implicitly.
    let (status, body) = fx.as_call(get.clone(), whoami, None, None).await;
    assert_eq!((status, body["user_id"].clone()), (200, json!(s.user_id("bridgebot"))), "{body}");
    let (status, body) =
        fx.as_call(get.clone(), &format!("/_matrix/client/v3/profile/{}", s.user_id("bridgebot")), None, None).await;
    assert_eq!(status, 200, "{body}");

    // Registration: with a login, with inhibit_login, outside the namespace, without as_token.
    let reg = |name: &str, inhibit: bool| json!({"type": "m.login.application_service", "username": name, "inhibit_login": inhibit});
    let (status, body) =
        fx.as_call(post.clone(), "/_matrix/client/v3/register", None, Some(reg("bridge_alice", false))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], s.user_id("bridge_alice"));
    let token = body["access_token"].as_str().expect("a login").to_owned();
    let (status, me) = send(common::http_client().get(format!("{}{whoami}", s.url())).bearer_auth(&token)).await;
    assert_eq!((status, me["user_id"].clone()), (200, json!(s.user_id("bridge_alice"))));
    let (status, body) =
        fx.as_call(post.clone(), "/_matrix/client/v3/register", None, Some(reg("bridge_quiet", true))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    let (status, body) =
        fx.as_call(post.clone(), "/_matrix/client/v3/register", None, Some(reg("outsider", true))).await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_EXCLUSIVE")), "{body}");
    let alice = s.register("alice").await;
    let (status, body) = alice.post("/_matrix/client/v3/register", &reg("bridge_x", true)).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");

    // Ordinary users cannot take names in the exclusive namespace.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            &json!({"username": "bridge_mallory", "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_EXCLUSIVE")), "{body}");
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=bridge_mallory").await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_EXCLUSIVE")), "{body}");

    // Masquerading.
    let bridge_alice = s.user_id("bridge_alice");
    let (status, body) = fx.as_call(get.clone(), whoami, Some(&bridge_alice), None).await;
    assert_eq!((status, body["user_id"].clone()), (200, json!(bridge_alice)), "{body}");
    assert!(body.get("device_id").is_none(), "no device of the user's: {body}");
    // MSC3202: on one of the user's devices.
    let device = body_device(&fx, &bridge_alice).await;
    let (status, body) =
        fx.as_call(get.clone(), &format!("{whoami}?device_id={device}"), Some(&bridge_alice), None).await;
    assert_eq!((status, body["device_id"].clone()), (200, json!(device)), "{body}");
    let (status, body) =
        fx.as_call(get.clone(), &format!("{whoami}?device_id=NOTMINE"), Some(&bridge_alice), None).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let (status, body) = fx.as_call(get.clone(), whoami, Some(&alice.user_id), None).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let (status, body) = fx.as_call(get.clone(), whoami, Some(&s.user_id("bridge_ghost")), None).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let (status, body) = send(common::http_client().get(format!("{}{whoami}", s.url())).bearer_auth("as_wrong")).await;
    assert_eq!((status, body["errcode"].clone()), (401, json!("M_UNKNOWN_TOKEN")), "{body}");

    // Login as an appservice user.
    let login =
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": bridge_alice}});
    let (status, body) = fx.as_call(post.clone(), "/_matrix/client/v3/login", None, Some(login.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], bridge_alice.as_str());
    let (status, body) = s.post("/_matrix/client/v3/login", &login).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let outside =
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": alice.user_id}});
    let (status, body) = fx.as_call(post.clone(), "/_matrix/client/v3/login", None, Some(outside)).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");

    // Aliases in the exclusive namespace: refused to ordinary users, allowed to the appservice.
    let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({"room_alias_name": "bridge_taken"})).await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_EXCLUSIVE")), "{body}");
    let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#bridge_alias:{}", s.server_name());
    let path = format!("/_matrix/client/v3/directory/room/{}", alias.replace('#', "%23"));
    let (status, body) = alice.put(&path, &json!({"room_id": room})).await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_EXCLUSIVE")), "{body}");
    let (status, body) = fx
        .as_call(
            post.clone(),
            "/_matrix/client/v3/createRoom",
            Some(&bridge_alice),
            Some(json!({"room_alias_name": "bridge_portal"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let portal = body["room_id"].as_str().unwrap().to_owned();

    // Rate limits: the masqueraded users of `rate_limited: false` are exempt, alice is not.
    let mut limited = 0;
    for _ in 0..8 {
        let (status, _) = alice
            .put(&format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id), &json!({"typing": false}))
            .await;
        limited += usize::from(status == 429);
    }
    assert!(limited > 0, "alice is rate limited");
    for _ in 0..8 {
        let path = format!("/_matrix/client/v3/rooms/{portal}/typing/{}", bridge_alice.replace('@', "%40"));
        let (status, body) =
            fx.as_call(reqwest::Method::PUT, &path, Some(&bridge_alice), Some(json!({"typing": false}))).await;
        assert_eq!(status, 200, "{body}");
    }

    // Timestamp massaging: `ts` is honoured for the appservice, ignored for others.
    let (status, body) = send(
        fx.as_request(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{portal}/send/m.room.message/ts1?ts=1234567890000"),
            Some(&bridge_alice),
        )
        .json(&json!({"msgtype": "m.text", "body": "from the past"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["event_id"].as_str().unwrap().to_owned();
    let (status, ev) = fx
        .as_call(get.clone(), &format!("/_matrix/client/v3/rooms/{portal}/event/{id}"), Some(&bridge_alice), None)
        .await;
    assert_eq!((status, ev["origin_server_ts"].clone()), (200, json!(1234567890000u64)), "{ev}");
    let (status, body) = send(
        fx.as_request(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{portal}/state/m.room.topic/?ts=1234567891000"),
            Some(&bridge_alice),
        )
        .json(&json!({"topic": "old"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["event_id"].as_str().unwrap().to_owned();
    let (_, ev) = fx
        .as_call(get.clone(), &format!("/_matrix/client/v3/rooms/{portal}/event/{id}"), Some(&bridge_alice), None)
        .await;
    assert_eq!(ev["origin_server_ts"], 1234567891000u64, "{ev}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = send(
        alice
            .request(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/ts2?ts=1234567890000"),
            )
            .json(&json!({"msgtype": "m.text", "body": "now"})),
    )
    .await;
    if status == 200 {
        let id = body["event_id"].as_str().unwrap();
        let (_, ev) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/event/{id}")).await;
        assert_ne!(ev["origin_server_ts"], 1234567890000u64, "{ev}");
    }
}

/// The first device of `user`, listed with the appservice's token.
async fn body_device(fx: &Fixture, user: &str) -> String {
    let (status, body) = fx.as_call(reqwest::Method::GET, "/_matrix/client/v3/devices", Some(user), None).await;
    assert_eq!(status, 200, "{body}");
    body["devices"][0]["device_id"].as_str().expect("a device").to_owned()
}

/// `POST /appservice/{id}/ping`: `duration_ms`, and each of the spec's errors.
async fn ping_answers_duration_and_the_spec_errors(backend: Backend) {
    let silent = Reg::new("silent");
    let silent_yaml = silent
        .yaml("silentbot", "@silent_.*", "")
        .replace(&format!("url: http://127.0.0.1:{}", silent.port), "url: null")
        .replace("'#bridge_.*'", "'#silent_.*'");
    let mut fx = fixture(backend, &[("silent.yaml", silent_yaml)], |_| {}).await;
    let post = reqwest::Method::POST;
    let ping = "/_matrix/client/v1/appservice/bridge/ping";
    let (status, body) = fx.as_call(post.clone(), ping, None, Some(json!({"transaction_id": "t1"}))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert_eq!(fx.recv.seen(|s| s.pings.clone()), vec![json!({"transaction_id": "t1"})]);

    let (status, body) =
        fx.as_call(post.clone(), "/_matrix/client/v1/appservice/silent/ping", None, Some(json!({}))).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let (status, body) = send(
        common::http_client()
            .post(format!("{}/_matrix/client/v1/appservice/silent/ping", fx.server.url()))
            .bearer_auth(&silent.as_token)
            .json(&json!({})),
    )
    .await;
    assert_eq!((status, body["errcode"].clone()), (400, json!("M_URL_NOT_SET")), "{body}");

    fx.recv.set_mode(FAIL);
    let (status, body) = fx.as_call(post.clone(), ping, None, Some(json!({}))).await;
    assert_eq!(
        (status, body["errcode"].clone(), body["status"].clone()),
        (502, json!("M_BAD_STATUS"), json!(500)),
        "{body}"
    );
    assert!(body["body"].as_str().unwrap().contains("broken"), "{body}");

    fx.recv.set_mode(HANG);
    let started = Instant::now();
    let (status, body) = fx.as_call(post.clone(), ping, None, Some(json!({}))).await;
    assert_eq!((status, body["errcode"].clone()), (504, json!("M_CONNECTION_TIMEOUT")), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(2900));

    fx.recv.stop().await;
    let (status, body) = fx.as_call(post.clone(), ping, None, Some(json!({}))).await;
    assert_eq!((status, body["errcode"].clone()), (502, json!("M_CONNECTION_FAILED")), "{body}");
    let alice = fx.server.register("alice").await;
    let (status, body) = alice.post(ping, &json!({})).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
}

/// Alias queries create portals lazily; third-party lookups are answered from the appservice;
/// `directory/list/appservice` and `publicRooms` with `third_party_instance_id` /
/// `include_all_networks`.
async fn queries_third_party_lookups_and_network_directory(backend: Backend) {
    let fx = fixture(backend, &[], |_| {}).await;
    let s = &fx.server;
    let alice = s.register("alice").await;

    // An alias in the namespace that does not exist yet: the appservice is asked and creates it.
    let alias = format!("#bridge_lazy:{}", s.server_name()).replace('#', "%23");
    let (status, body) = alice.get(&format!("/_matrix/client/v3/directory/room/{alias}")).await;
    assert_eq!(status, 200, "{body}");
    let alias2 = format!("#bridge_joinme:{}", s.server_name()).replace('#', "%23");
    let (status, body) = alice.post(&format!("/_matrix/client/v3/join/{alias2}"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    // Outside the namespace nobody is asked.
    let (status, _) = alice.get(&format!("/_matrix/client/v3/directory/room/%23nothing:{}", s.server_name())).await;
    assert_eq!(status, 404);
    // A user query the appservice answers 404 (the receiver has no users route): not found.
    let (status, body) = alice.get(&format!("/_matrix/client/v3/profile/{}", s.user_id("bridge_nobody"))).await;
    assert_eq!((status, body["errcode"].clone()), (404, json!("M_NOT_FOUND")), "{body}");

    // Third-party lookups.
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tgnet"]["instances"][0]["instance_id"], "bridge|tgnet", "{body}");
    assert_eq!(body["tgnet"]["user_fields"], json!(["name"]));
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/protocol/tgnet").await;
    assert_eq!((status, body["location_fields"].clone()), (200, json!(["room"])), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/protocol/nope").await;
    assert_eq!((status, body["errcode"].clone()), (404, json!("M_NOT_FOUND")), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/location/tgnet?room=general").await;
    assert_eq!((status, body[0]["fields"].clone()), (200, json!({"room": "general"})), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/user/tgnet?name=someone").await;
    assert_eq!((status, body[0]["fields"].clone()), (200, json!({"name": "someone"})), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/location?alias=%23bridge_x:example.org").await;
    assert_eq!((status, body[0]["alias"].clone()), (200, json!("#bridge_x:example.org")), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/thirdparty/user?userid=@bridge_x:example.org").await;
    assert_eq!((status, body[0]["userid"].clone()), (200, json!("@bridge_x:example.org")), "{body}");
    let (status, _) = s.get("/_matrix/client/v3/thirdparty/protocols").await;
    assert_eq!(status, 401);

    // The appservice's network directory.
    let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({"name": "telegram group"})).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/directory/list/appservice/tgnet/{room}");
    let (status, body) = alice.put(&path, &json!({"visibility": "public"})).await;
    assert_eq!((status, body["errcode"].clone()), (403, json!("M_FORBIDDEN")), "{body}");
    let (status, body) = fx.as_call(reqwest::Method::PUT, &path, None, Some(json!({"visibility": "public"}))).await;
    assert_eq!(status, 200, "{body}");
    let listed = |body: &Value| body["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room.as_str());
    let (_, body) = s.post("/_matrix/client/v3/publicRooms", &json!({})).await;
    assert!(!listed(&body), "not in the Matrix directory: {body}");
    let (_, body) = s.post("/_matrix/client/v3/publicRooms", &json!({"third_party_instance_id": "bridge|tgnet"})).await;
    assert!(listed(&body), "{body}");
    let (_, body) = s.post("/_matrix/client/v3/publicRooms", &json!({"third_party_instance_id": "bridge|other"})).await;
    assert!(!listed(&body), "{body}");
    let (_, body) = s.post("/_matrix/client/v3/publicRooms", &json!({"include_all_networks": true})).await;
    assert!(listed(&body), "{body}");
    let (status, _) = fx.as_call(reqwest::Method::PUT, &path, None, Some(json!({"visibility": "private"}))).await;
    assert_eq!(status, 200);
    let (_, body) = s.post("/_matrix/client/v3/publicRooms", &json!({"include_all_networks": true})).await;
    assert!(!listed(&body), "{body}");
}

/// `receive_ephemeral`: typing (also when it times out) and receipts of rooms with the
/// appservice's users, presence of users sharing a room with them, to-device messages for their
/// devices (MSC4203); and MSC3202: device-list changes, one-time key counts and fallback key
/// types of its users' devices, in the transactions.
async fn ephemeral_typing_receipts_and_to_device(backend: Backend) {
    let fx = fixture(backend, &[], |_| {}).await;
    let (alice, room, bob) = fx.bridged_room().await;
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            &json!({"typing": true, "timeout": 1500}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let a = alice.user_id.clone();
    let r = room.clone();
    fx.recv
        .wait_for("typing", move |s| {
            s.delivered.iter().any(|(_, b)| {
                b["ephemeral"].as_array().is_some_and(|e| {
                    e.iter().any(|x| {
                        x["type"] == "m.typing" && x["room_id"] == r.as_str() && x["content"]["user_ids"] == json!([a])
                    })
                }) && b["de.sorunome.msc2409.ephemeral"] == b["ephemeral"]
            })
        })
        .await;
    // Typing that times out ends for the appservice too.
    let r = room.clone();
    fx.recv
        .wait_for("typing timed out", move |s| {
            s.delivered.iter().any(|(_, b)| {
                b["ephemeral"].as_array().is_some_and(|e| {
                    e.iter().any(|x| {
                        x["type"] == "m.typing" && x["room_id"] == r.as_str() && x["content"]["user_ids"] == json!([])
                    })
                })
            })
        })
        .await;
    let event = send_text(&alice, &room, "r1", "read me").await;
    let (status, body) =
        alice.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (a, e) = (alice.user_id.clone(), event.clone());
    fx.recv
        .wait_for("the receipt", move |s| {
            s.delivered.iter().any(|(_, b)| {
                b["ephemeral"].as_array().is_some_and(|x| {
                    x.iter().any(|x| {
                        x["type"] == "m.receipt" && x["content"][e.as_str()]["m.read"][a.as_str()]["ts"].is_u64()
                    })
                })
            })
        })
        .await;
    // Presence of a user sharing a room with the bridge's users.
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", alice.user_id),
            &json!({"presence": "online", "status_msg": "bridging"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let a = alice.user_id.clone();
    fx.recv
        .wait_for("alice's presence", move |s| {
            s.delivered.iter().any(|(_, b)| {
                b["ephemeral"].as_array().is_some_and(|x| {
                    x.iter().any(|p| {
                        p["type"] == "m.presence"
                            && p["sender"] == a.as_str()
                            && p["content"]["status_msg"] == "bridging"
                    })
                })
            })
        })
        .await;
    // A device of the bridge user gets a to-device message.
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": bob}, "device_id": "BRIDGEDEV"});
    let (status, body) = fx.as_call(reqwest::Method::POST, "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!(status, 200, "{body}");
    // MSC3202: the new device is a device-list change of one of the appservice's users.
    let b = bob.clone();
    fx.recv
        .wait_for("the device-list change", move |s| {
            s.delivered.iter().any(|(_, body)| {
                body["org.matrix.msc3202.device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!(b)))
            })
        })
        .await;
    // A one-time key uploaded on that device, by the appservice (MSC3202 `device_id`).
    let path = "/_matrix/client/v3/keys/upload?device_id=BRIDGEDEV";
    let otk = json!({"one_time_keys": {"curve25519:AAAAAQ": "dGhpcyBpcyBhIHRlc3Qga2V5IG9mIDMyIGJ5dGVzISE"}});
    let (status, body) = fx.as_call(reqwest::Method::POST, path, Some(&bob), Some(otk)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/td1",
            &json!({"messages": {bob.as_str(): {"BRIDGEDEV": {"hello": "device"}}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let a = alice.user_id.clone();
    fx.recv
        .wait_for("the to-device message", move |s| {
            s.delivered.iter().any(|(_, b)| {
                b["de.sorunome.msc2409.to_device"].as_array().is_some_and(|x| {
                    x.iter().any(|m| {
                        m["type"] == "m.test"
                            && m["sender"] == a.as_str()
                            && m["to_user_id"] == bob.as_str()
                            && m["to_device_id"] == "BRIDGEDEV"
                            && m["content"]["hello"] == "device"
                    })
                }) && b["org.matrix.msc3202.device_one_time_keys_count"][bob.as_str()]["BRIDGEDEV"]["curve25519"] == 1
                    && b["org.matrix.msc3202.device_unused_fallback_key_types"][bob.as_str()]["BRIDGEDEV"] == json!([])
            })
        })
        .await;
}

/// mautrix-python's appservice framework: it pings through Myelin, registers a puppet, is sent
/// the invite and alice's messages in order, sends with a massaged timestamp, and answers the
/// user query of a profile lookup by creating the user.
async fn mautrix_appservice_bridges_a_room(backend: Backend) {
    let mut fx = fixture(backend, &[], |_| {}).await;
    // mautrix listens on the registration's port itself.
    fx.recv.stop().await;
    let alice = fx.server.register("alice").await;
    let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let state = tempfile::tempdir().unwrap();
    let url = fx.server.url();
    let domain = fx.server.server_name();
    let port = fx.reg.port.to_string();
    let args = [
        url.as_str(),
        domain.as_str(),
        fx.reg.as_token.as_str(),
        fx.reg.hs_token.as_str(),
        "bridgebot",
        "bridge",
        port.as_str(),
        alice.access_token.as_str(),
        room.as_str(),
        state.path().to_str().unwrap(),
    ];
    let (ok, out, stderr) = run_nio_script("appservice_mautrix.py", &args).await;
    assert!(ok, "mautrix scenario failed:\n{stderr}\noutput: {out:?}\nserver log:\n{}", fx.server.log());
    let step = |name: &str| {
        out.iter().find(|v| v["step"] == name).cloned().unwrap_or_else(|| panic!("no step {name}: {out:?}"))
    };
    assert!(step("ping")["duration_ms"].is_u64());
    assert_eq!(step("registered")["whoami"], fx.server.user_id("bridge_puppet"));
    let events = step("events");
    let expected: Vec<String> = (0..5).map(|i| format!("hello bridge {i}")).collect();
    assert_eq!(events["bodies"], json!(expected), "in order, once each");
    assert_eq!(events["own_ts"], 1234567890000u64);
    let lazy = step("lazy_profile");
    assert_eq!(lazy["status"], 200, "{lazy}");
    // What mautrix did is what the server stored.
    let (status, members) = alice.get(&format!("/_matrix/client/v3/rooms/{room}/joined_members")).await;
    assert_eq!(status, 200, "{members}");
    assert!(members["joined"][fx.server.user_id("bridge_puppet")].is_object(), "{members}");
}
